"""Intervention and circuit-faithfulness latency on the GPT-2-small-shaped benchmark model.

    python benchmarks/bench_interventions.py [--device cuda] [--length 64]

The model and its 13 SAEs are `bench_attribution.py`'s (GPT-2 small's shape, random weights,
about 50 features firing per token; about a minute to build). One random prompt of `--length`
tokens; the median of `--repeats` runs after a warm-up, with the working memory beyond the weights:

- forward: the plain model, for scale; trace atp: the attribution the edits start from;
- intervene, 1 edit set: one feature at one position set to 3x its value;
- intervene, 1 edit set at every position (`*`);
- intervene_many, 16 edit sets: 16 features, one set each, one batched forward;
- the same two with `generate=8` (greedy, edits applied at every step);
- faithfulness: one node set (the 100 largest) and its complement;
- faithfulness_curve: sizes 10-1000 and all, by |attribution|, one batched forward.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attribution import calibrate, gpt2_shaped_model, random_saes, timed

from token_trace import (
    Edit,
    faithfulness,
    faithfulness_curve,
    intervene,
    intervene_many,
    trace,
)
from token_trace.graph import node_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    model = gpt2_shaped_model(args.device)
    saes = random_saes(args.device)
    calibrate(model, saes, args.length)
    tokens = torch.randint(0, model.cfg.d_vocab, (1, args.length + 1)).to(args.device)
    result = trace(tokens, model, saes)
    features = result.top_nodes(16, exclude_bos=True, node_type="feature")
    ids = list(node_ids(features["layer"], features["feature"], features["position"]))
    values = (3 * features["activation"]).tolist()
    one = [Edit(ids[0], value=values[0])]
    every = [Edit(ids[0].rsplit("_", 1)[0] + "_*", value=values[0])]
    sixteen = [[Edit(i, value=v)] for i, v in zip(ids, values)]
    top_100 = result.top_nodes(100)
    circuit = list(node_ids(top_100["layer"], top_100["feature"], top_100["position"]))
    given = {"model": model, "saes": saes}
    cases = {
        "forward": lambda: model(tokens[:, :-1]),
        "trace atp": lambda: trace(tokens, model, saes),
        "intervene, 1 edit set": lambda: intervene(result, one, **given),
        "intervene, 1 edit set at every position": lambda: intervene(result, every, **given),
        "intervene_many, 16 edit sets": lambda: intervene_many(result, sixteen, **given),
        "intervene, 1 edit set, generate=8": lambda: intervene(result, one, 8, **given),
        "intervene_many, 16 edit sets, generate=8": lambda: intervene_many(
            result, sixteen, 8, **given
        ),
        "faithfulness, 100 nodes (+ complement)": lambda: faithfulness(result, circuit, **given),
        "faithfulness_curve, 8 sizes": lambda: faithfulness_curve(result, **given),
    }
    rows = []
    for name, fn in cases.items():
        with torch.no_grad() if name == "forward" else torch.enable_grad():
            timing = timed(fn, args.repeats, args.device)
        rows.append(
            {
                "case": name,
                "ms": round(timing.seconds * 1000),
                "extra MiB": round(timing.peak_bytes / 2**20),
            }
        )
        print(f"  {name}: {timing.seconds * 1000:.0f} ms", flush=True)
    curve = faithfulness_curve(result, **given)
    print(f"\n{args.length} tokens, {len(result.nodes)} nodes")
    print(pd.DataFrame(rows).to_string(index=False))
    print("\nfaithfulness by |attribution| on this random model (not meaningful, for the record):")
    print(curve[["size", "n_features", "n_errors", "faithfulness"]].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
