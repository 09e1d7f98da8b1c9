"""Run the app's GPU handler the way a ZeroGPU Space does, on the CPU, and report what came back.

On ZeroGPU, `@spaces.GPU` sends each call to a worker process forked from the app's main process:
the weights were loaded in the main process before the fork, the arguments and the result
cross between the processes pickled (through multiprocessing queues), the handler runs in a
thread of the worker, and a `gr.Error` raised there is pickled back and re-raised for the user.
Off ZeroGPU the decorator does nothing, so this module recreates those steps with
`multiprocessing.get_context("fork")` around the real `token_trace.app.service.trace_on_gpu`:

1. load the bundled model and its SAEs in this (parent) process, as `Service.obtain` does, and
   run the handler here once for the expected result;
2. fork a worker that takes requests from a queue and runs the handler in a thread;
3. send it a good request and one the library rejects, and compare what comes back.

It prints one JSON line. Run it in a fresh interpreter with OMP_NUM_THREADS=1
(`python -m tests.zerogpu`): forking a process whose OpenMP pool already ran with several threads
can leave the child waiting forever on that pool, which a test process that ran other tests may
have done; every wait here also has a timeout, so a hang is reported instead of blocking.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gradio as gr
import torch

from token_trace import loading
from token_trace.app import service
from token_trace.app.requests import RequestFields, Settings, make_settings

TEXT = "When Mary and John went to the store, John gave a drink to"
#: Seconds to wait for the worker's answer before calling it a hang.
ANSWER_TIMEOUT = 120


def load_counts() -> dict[str, int]:
    """How many model and SAE loads this process has done (cache misses of the loaders)."""
    return {
        "models": loading._load_model_cached.cache_info().misses,
        "bundled_saes": loading._bundled_saes.cache_info().misses,
    }


def worker(requests: multiprocessing.Queue, answers: multiprocessing.Queue) -> None:
    """The forked worker: each request runs in a thread, its result or `gr.Error` goes back."""
    torch.set_num_threads(1)
    while (settings := requests.get()) is not None:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(service.trace_on_gpu, settings)
        try:
            answers.put(("ok", future.result(), load_counts()))
        except gr.Error as error:
            answers.put(("error", error, load_counts()))
        except Exception as error:  # a bug: ZeroGPU would report only its class name
            answers.put(("crash", f"{type(error).__name__}: {error}", load_counts()))


def ask(requests, answers, settings: Settings) -> tuple[str, Any, dict[str, int]]:
    requests.put(settings)
    return answers.get(timeout=ANSWER_TIMEOUT)


def main() -> None:
    good = make_settings(RequestFields(TEXT, model="ioi-demo", answer=" Mary", contrast=" John"))
    # passes the form's checks; the library refuses a two-token answer with a contrast
    bad = make_settings(
        RequestFields(TEXT, model="ioi-demo", answer=" Mary Mary", contrast=" John")
    )
    service.load_and_check(good, max_tokens=64)  # weights load in the main process
    expected = service.trace_on_gpu(good)
    parent_loads = load_counts()

    context = multiprocessing.get_context("fork")
    requests, answers = context.Queue(), context.Queue()
    process = context.Process(target=worker, args=(requests, answers), daemon=True)
    start = time.perf_counter()
    process.start()
    report: dict[str, Any] = {"parent_loads": parent_loads}
    try:
        kind, value, child_loads = ask(requests, answers, good)
        report["seconds"] = time.perf_counter() - start
        report["good"] = kind
        report["equal"] = kind == "ok" and value.to_json() == expected.to_json()
        report["child_loads_after_good"] = child_loads
        kind, value, child_loads = ask(requests, answers, bad)
        report["bad"] = kind
        report["bad_message"] = value.message if kind == "error" else str(value)
        report["child_loads_after_bad"] = child_loads
        requests.put(None)
        process.join(timeout=30)
        report["worker_exit"] = process.exitcode
    except queue.Empty:
        report["hang"] = f"no answer from the forked worker within {ANSWER_TIMEOUT} s"
    finally:
        if process.is_alive():
            process.kill()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
