"""Estimated against measured peak memory on the CPU, for a trace and a graph at a few lengths.

Each case runs in a fresh interpreter (peak resident memory, `VmHWM`, counts everything the
process ever held: PyTorch's allocations are invisible to tracemalloc) that loads a model and its
SAEs, runs `compute_graph` (an attribution-patching trace, then the edges of its 200 largest
nodes) on a prompt of random tokens of the given length, and prints its peak next to
`token_trace.memory.estimate` for the same shapes:

    python benchmarks/bench_memory.py              # fake-hub GPT-2 and Pythia, ioi-demo
    python benchmarks/bench_memory.py --gpt2-shaped 64 128   # also GPT-2 small's real shape
    python benchmarks/bench_memory.py --runtime    # the process before loading anything
    python benchmarks/bench_memory.py --table      # the README's estimate per preset and device

The fake-hub models (tests/fake_hub.py) are GPT-2 small and Pythia-70m at width 64 with 128
features per SAE, loaded from a fake Hugging Face cache by the real loaders; the GPT-2-shaped
model is `bench_attribution.py`'s (random weights, 13 SAEs of 24,576 features, calibrated).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (release, lengths) of the fake-hub and bundled cases.
CASES = {
    "gpt2-small-res-jb": (16, 64, 256),
    "pythia-70m-deduped-res-sm": (16, 64, 256),
    "ioi-demo": (16, 64),
}
MAX_NODES = 200


def peak_bytes() -> int:
    """This process's peak resident memory: Linux's `VmHWM`, the high-water mark of this
    program's own address space. `ru_maxrss` is not: Linux carries it over from the forking
    parent across `exec`, so a case started from a large process (a test session holding other
    models) would report the parent's size (a test measured 3.26 GB for a 0.73 GB case)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(release: str, length: int, gpt2_shaped: bool) -> dict[str, object]:
    """Inside the fresh interpreter: load, run the graph, report peak and estimate."""
    import torch

    from token_trace import loading, memory
    from token_trace.graph import compute_graph

    torch.manual_seed(length)
    if gpt2_shaped:
        from benchmarks.bench_attribution import calibrate, gpt2_shaped_model, random_saes

        model, saes = gpt2_shaped_model("cpu"), random_saes("cpu")
        calibrate(model, saes, length)
    else:
        model = loading.load_model(loading.release_model(release), "cpu", release=release)
        specs = [loading.SAESpec(release, i) for i in loading.release_sae_ids(release)]
        saes = loading.load_saes(specs, "cpu")
    high = min(model.cfg.d_vocab, 1000)
    tokens = torch.randint(1, high, (1, length))
    compute_graph(tokens, model, saes, max_nodes=MAX_NODES)
    found = memory.estimate(
        memory.ModelShape.of(model),
        [memory.SAEShape.of(sae) for sae in saes.values()],
        length,
        max_nodes=MAX_NODES,
    )
    return {"measured": peak_bytes(), "estimate": found.total, "parts": found.describe()}


def runtime_child() -> dict[str, object]:
    import token_trace.app.service
    import token_trace.graph  # noqa: F401

    return {"measured": peak_bytes()}


def run_fresh(args: list[str], env: dict[str, str] | None = None) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(hub_env: dict[str, str], gpt2_lengths: list[int]) -> list[dict[str, object]]:
    rows = []
    for release, lengths in CASES.items():
        for length in lengths:
            rows.append({"case": release, "tokens": length,
                         **run_fresh(["case", release, str(length)], hub_env)})  # fmt: skip
    for length in gpt2_lengths:
        rows.append({"case": "GPT-2-shaped", "tokens": length,
                     **run_fresh(["gpt2", "gpt2-shaped", str(length)])})  # fmt: skip
    return rows


def print_rows(rows: list[dict[str, object]]) -> None:
    gib = 2**30
    print("| case | tokens | measured peak | estimate | estimate / measured | estimate's parts |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        ratio = row["estimate"] / row["measured"]
        print(f"| {row['case']} | {row['tokens']} | {row['measured'] / gib:.2f} GiB | "
              f"{row['estimate'] / gib:.2f} GiB | {ratio:.2f} | {row['parts']} |")  # fmt: skip


# --------------------------------------------------------------------------- the README's table

#: The SAEs of the README's table for releases with several widths per hook: the 16k ones.
TABLE_SAES = {
    "gemma-scope-2b-pt-res-canonical": lambda i: "/width_16k/" in i,  # 26 SAEs, one per layer
    "gemma-scope-2-270m-pt-res": lambda i: "_width_16k_l0_medium" in i,  # layers 5, 9, 12, 15
}


def table() -> None:
    """Estimates per preset and device, at TOKEN_TRACE_MAX_TOKENS's default with a graph of
    DEFAULT_MAX_NODES. GPT-2's and Pythia's shapes come from their real `config.json` values
    (tests/fake_hub.py's configs at full width) in a scratch cache, through TransformerLens's
    own config conversion; SAE widths from `memory.sae_shapes` offline."""
    with tempfile.TemporaryDirectory() as home:
        write_real_configs(Path(home) / "hub")
        env = {**os.environ, "HF_HOME": home, "HF_HUB_CACHE": str(Path(home) / "hub"),
               "HF_HUB_OFFLINE": "1"}  # fmt: skip
        done = subprocess.run([sys.executable, __file__, "--child", "table"], env=env, cwd=ROOT,
                              capture_output=True, text=True, check=True)  # fmt: skip
        print(done.stdout)


def write_real_configs(hub_cache: Path) -> None:
    from tests.fake_hub import GPT2_REPO, PYTHIA_REPO, _json, gpt2_config, put_repo, pythia_config

    gpt2 = {**gpt2_config(), "n_embd": 768, "n_head": 12}
    pythia = {**pythia_config(), "hidden_size": 512, "num_attention_heads": 8,
              "intermediate_size": 2048}  # fmt: skip
    put_repo(hub_cache, GPT2_REPO, {"config.json": _json(gpt2)})
    put_repo(hub_cache, PYTHIA_REPO, {"config.json": _json(pythia)})


def table_child() -> None:
    from token_trace import loading, memory
    from token_trace.app.requests import DEFAULT_MAX_TOKENS
    from token_trace.options import DEFAULT_MAX_NODES

    devices = [("CPU Space, 16 GB", "cpu", 16 * memory.GIB),
               ("ZeroGPU slice, 69.5 GiB", "cuda", memory.ZEROGPU_BYTES),
               ("24 GB GPU", "cuda", 24 * memory.GIB)]  # fmt: skip
    releases = ["gpt2-small-res-jb", "gpt2-small-res_sll-ajt", "pythia-70m-deduped-res-sm",
                "ioi-demo", *TABLE_SAES]  # fmt: skip
    print(f"| preset (SAEs) | {' | '.join(name for name, _, _ in devices)} |")
    print("| --- |" + " --- |" * len(devices))
    for release in releases:
        ids = [i for i in loading.release_sae_ids(release) if TABLE_SAES.get(release, bool)(i)]
        model = memory.model_shape(loading.release_model(release), release)
        shapes = memory.sae_shapes(release, ids, model.d_model)
        cells = []
        for _, device, budget in devices:
            n_tokens = min(DEFAULT_MAX_TOKENS, 64 if release == "ioi-demo" else DEFAULT_MAX_TOKENS)
            found = memory.estimate(model, shapes, n_tokens, device=device,
                                    model_dtype=loading.model_dtype("auto", device),
                                    max_nodes=DEFAULT_MAX_NODES)  # fmt: skip
            verdict = "fits" if found.total <= budget else "**does not fit**"
            cells.append(f"{found.describe()}: {verdict}")
        print(f"| {release} ({len(ids)}) | {' | '.join(cells)} |")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        kind, *rest = sys.argv[2:]
        if kind == "runtime":
            print(json.dumps(runtime_child()))
        elif kind == "table":
            table_child()
        else:
            release, length = rest
            print(json.dumps(child(release, int(length), kind == "gpt2")))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpt2-shaped", type=int, nargs="*", default=[], metavar="TOKENS")
    parser.add_argument("--runtime", action="store_true")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.runtime:
        print(f"before loading: {run_fresh(['runtime'])['measured'] / 2**30:.2f} GiB")
        return
    if args.table:
        table()
        return
    from tests.fake_hub import build_fake_hub

    with tempfile.TemporaryDirectory() as home:
        hub = build_fake_hub(Path(home))
        print_rows(measure(hub.env(), args.gpt2_shaped))


if __name__ == "__main__":
    main()
