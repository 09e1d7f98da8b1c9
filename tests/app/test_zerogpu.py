"""The GPU handler as ZeroGPU runs it: in a worker forked after the weights were loaded, with its
arguments, result and errors pickled across (see `tests/zerogpu.py`, run in a fresh
interpreter with one OpenMP thread)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_the_forked_handler_returns_the_in_process_result_and_user_errors() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tests.zerogpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(f"ZeroGPU emulation: {time.perf_counter() - start:.1f} s in all")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "hang" not in report, report["hang"]
    assert report["good"] == "ok" and report["equal"], report
    # the worker used the weights loaded before the fork: it loaded nothing itself
    assert report["child_loads_after_good"] == report["parent_loads"]
    assert report["child_loads_after_bad"] == report["parent_loads"]
    assert report["parent_loads"]["models"] == 1
    # a rejected request comes back as the user's message, and the worker keeps serving
    assert report["bad"] == "error", report
    assert "needs single-token answers" in report["bad_message"]
    assert report["worker_exit"] == 0
