"""HookedTransformer against TransformerBridge: agreement and seconds, on the fake GPT-2.

    python benchmarks/bench_backends.py [--repeats 7]

Builds the fake Hugging Face cache of `tests/fake_hub.py` (GPT-2's 12 layers and vocabulary,
64 wide, with `gpt2-small-res-jb`'s 13 SAEs of 128 features) in a temporary folder and measures in
a fresh interpreter that loads only from it (HF_HUB_OFFLINE=1). Both backends load through their
real code with the release's processing. On the first 16 and 64 tokens of the fake corpus it
times, per backend, one attribution-patching trace, one integrated-gradients trace (10 steps)
and one graph (200 nodes), each the median of `--repeats` runs taken in turn, after a warm-up;
and prints the largest |hooked - bridge| of the node attributions and of the edge weights, with
the largest |value| for scale. The fake model is tiny, so the seconds are mostly per-call
overhead rather than matrix work: read them as the bridge's fixed cost per pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKENDS = ("hooked", "bridge")
LENGTHS = (16, 64)


def measure(repeats: int) -> dict:
    """Runs inside the offline interpreter."""
    import numpy as np

    from tests.fake_hub import CORPUS
    from token_trace import compute_graph, trace
    from token_trace.loading import load_model, load_saes, resolve_sae_specs

    models = {name: load_model("gpt2-small", "cpu", backend=name) for name in BACKENDS}
    saes = load_saes(resolve_sae_specs("gpt2-small-res-jb", "gpt2-small"), "cpu")
    ids = models["hooked"].to_tokens(" ".join(CORPUS))
    runs = {
        "atp": lambda tokens, model: trace(tokens, model, saes),
        "ig": lambda tokens, model: trace(tokens, model, saes, method="ig", ig_steps=10),
        "graph": lambda tokens, model: compute_graph(tokens, model, saes, max_nodes=200),
    }
    out: dict = {"seconds": {}, "agreement": {}}
    for length in LENGTHS:
        tokens = ids[:, :length]
        for run, call in runs.items():
            results = {name: call(tokens, model) for name, model in models.items()}  # warm-up
            times: dict[str, list[float]] = {name: [] for name in BACKENDS}
            for _ in range(repeats):
                for name, model in models.items():
                    start = time.perf_counter()
                    call(tokens, model)
                    times[name].append(time.perf_counter() - start)
            for name in BACKENDS:
                out["seconds"][f"{run} {length} {name}"] = statistics.median(times[name])
            if run == "graph":
                hooked, bridge = (results[n].candidate_edges["weight"] for n in BACKENDS)
            else:
                hooked, bridge = (results[n].nodes["attribution"] for n in BACKENDS)
            out["agreement"][f"{run} {length}"] = {
                "max_abs_diff": float(np.abs(hooked.to_numpy() - bridge.to_numpy()).max()),
                "max_abs": float(np.abs(hooked.to_numpy()).max()),
                "count": len(hooked),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.repeats)))
        return
    from tests.fake_hub import build_fake_hub

    with tempfile.TemporaryDirectory() as folder:
        hub = build_fake_hub(Path(folder))
        done = subprocess.run(
            [sys.executable, __file__, "--measure", "--repeats", str(args.repeats)],
            env=hub.env(),
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"median of {args.repeats} runs, seconds (fake GPT-2, 2 CPU threads)")
    for key, seconds in facts["seconds"].items():
        print(f"  {key:<20} {seconds:.3f}")
    print("agreement: max |hooked - bridge| (max |hooked|, values compared)")
    for key, row in facts["agreement"].items():
        print(f"  {key:<10} {row['max_abs_diff']:.2e} ({row['max_abs']:.3g}, {row['count']})")


if __name__ == "__main__":
    main()
