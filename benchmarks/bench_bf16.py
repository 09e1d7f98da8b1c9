"""A bfloat16 model against float32 on the CPU: node attributions, top nodes and graph edges.

    python benchmarks/bench_bf16.py

Runs the fake-hub GPT-2 (gpt2-small-res-jb's 13 SAEs) and Pythia-70m (res-sm's 7 SAEs) models
(tests/fake_hub.py: the real loaders, width 64) and the bundled ioi-demo, each loaded twice
(`model_dtype="float32"` and `"bfloat16"`, the SAEs in float32), on one prompt, and prints
`tests/precision.py`'s comparison: nodes (max and mean |difference| relative to the largest
attribution, the top-20 nodes' largest relative error and overlap) and edges of `compute_graph`
with 200 nodes (max and mean |difference| relative to the largest edge, sign agreement of the
top-100 edges, overlap of candidate and kept nodes).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHOPS = ("When John and Mary went to the shops, John gave the bag to", " Mary")
CASES = {
    "gpt2-small-res-jb": SHOPS,
    "pythia-70m-deduped-res-sm": SHOPS,
    "ioi-demo": ("When Mary and John went to the store, John gave a drink to", " Mary"),
}


def compare() -> None:
    from tests.precision import edge_agreement, node_agreement
    from token_trace import trace
    from token_trace.graph import compute_graph
    from token_trace.loading import release_model

    for release, (text, answer) in CASES.items():
        model, options = release_model(release), {"answer": answer, "device": "cpu"}
        runs = {
            dtype: (
                trace(text, model, release, model_dtype=dtype, **options),
                compute_graph(text, model, release, model_dtype=dtype, **options),
            )
            for dtype in ("float32", "bfloat16")
        }
        (exact, exact_graph), (half, half_graph) = runs["float32"], runs["bfloat16"]
        nodes, edges = (
            node_agreement(exact.nodes, half.nodes),
            edge_agreement(exact_graph, half_graph),
        )
        print(f"{release}: nodes {nodes}\n  edges {edges}", flush=True)


def main() -> None:
    if sys.argv[1:] == ["--child"]:
        compare()
        return
    from tests.fake_hub import build_fake_hub

    with tempfile.TemporaryDirectory() as home:
        hub = build_fake_hub(Path(home))
        subprocess.run([sys.executable, __file__, "--child"], env=hub.env(), cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
