"""Circuit faithfulness against circuit size on the bundled model, for three ways to pick nodes.

    python benchmarks/bench_faithfulness.py [--prompts 16] [--baseline counterfactual|zero]

Held-out IOI prompts from examples/ioi_dataset.jsonl (sentence shapes and name pairs the model
never saw in training), metric logit(answer) - logit(contrast), and as counterfactual the same
prompt with the two names swapped. For each prompt and each order ("attribution": largest
|attribution| first; "influence": largest influence in the graph of every node; "greedy": pruning
by real runs, `token_trace.circuit.greedy_order`), `faithfulness_curve` measures
`(m(C) - m(empty)) / (m(M) - m(empty))` for circuits of the first k nodes, every node outside C at
its counterfactual value. Prints the mean and median over prompts per size, the smallest size
whose mean reaches 80%, the median over prompts of each prompt's own smallest size reaching 80%,
and what graphs pruned at a few settings keep (`compute_graph`'s default first): node count and
faithfulness.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from token_trace import faithfulness_curve, graph_from_trace, loading, trace  # noqa: E402
from token_trace.circuit import smallest_faithful  # noqa: E402
from token_trace.options import GraphOptions  # noqa: E402

SIZES = (5, 10, 20, 50, 100, 150, 200, 300, 400, 500, 1000, "all")
DEFAULT = GraphOptions()
#: Graph settings (max_nodes, node_threshold, edge_threshold, baseline_sources) whose kept nodes
#: are checked; the first is `compute_graph`'s default, the second the default before it.
PRUNINGS = (
    (DEFAULT.max_nodes, DEFAULT.node_threshold, DEFAULT.edge_threshold, DEFAULT.baseline_sources),
    (200, 0.8, 0.98, False),
    (None, 0.8, 0.98, False),
    (None, 0.9, 0.98, False),
    (None, 0.95, 0.99, False),
    (None, 0.99, None, False),
    (500, 0.95, 0.99, False),
    (200, 0.8, 0.98, True),
    (None, 0.8, 0.98, True),
    (None, 0.9, 0.98, True),
    (None, 0.95, 0.99, True),
    (300, 0.9, 0.98, True),
    (500, 0.95, 0.98, True),
    (500, 0.95, 0.99, True),
    (1000, 0.9, 0.98, True),
)
ORDERS = ("attribution", "influence", "greedy")
TARGET = 0.8


def swapped(text: str, first: str, second: str) -> str:
    """`text` with every whole-word `first` and `second` exchanged."""
    names = {first: second, second: first}
    return re.sub(rf"\b({re.escape(first)}|{re.escape(second)})\b", lambda m: names[m[1]], text)


def records(n: int) -> list[dict]:
    lines = (ROOT / "examples" / "ioi_dataset.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--baseline", choices=["counterfactual", "zero"], default="counterfactual")
    parser.add_argument("--orders", nargs="+", default=list(ORDERS), choices=ORDERS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = loading.load_model("ioi-demo", "cpu")
    saes = loading.load_saes(loading.resolve_sae_specs(None, "ioi-demo"), device="cpu")

    curves, graphs, seconds = [], [], {order: 0.0 for order in args.orders}
    for record in records(args.prompts):
        answer, contrast = record["answer"], record["contrast"]
        baseline = None
        if args.baseline == "counterfactual":
            baseline = swapped(record["text"], answer.strip(), contrast.strip())
        result = trace(
            record["text"],
            model,
            saes,
            answer=answer,
            contrast=contrast,
            baseline_text=baseline,
        )
        start = time.perf_counter()
        full = graph_from_trace(
            result, model=model, saes=saes, max_nodes=None, node_threshold=None, edge_threshold=None
        )
        graph_seconds = time.perf_counter() - start
        graphs_by_size = {}
        for order in args.orders:
            start = time.perf_counter()
            curve = faithfulness_curve(
                result, SIZES, order, graph=full, model=model, saes=saes, complement=True
            )
            seconds[order] += time.perf_counter() - start
            curves.append(curve.assign(prompt=record["id"], n_nodes=len(result.nodes)))
        seconds["influence"] = seconds.get("influence", 0.0) + graph_seconds
        for max_nodes, node_threshold, edge_threshold, sources in PRUNINGS:
            graph = full if max_nodes is None else graphs_by_size.get(max_nodes)
            if graph is None:
                graph = graphs_by_size[max_nodes] = graph_from_trace(
                    result, model=model, saes=saes, max_nodes=max_nodes
                )
            pruned = graph.prune(node_threshold, edge_threshold, baseline_sources=sources)
            check = pruned.faithfulness(model=model, saes=saes)
            graphs.append(
                {
                    "prompt": record["id"],
                    "setting": (max_nodes or "all", node_threshold, edge_threshold, sources),
                    "kept SAE nodes": check.n_nodes,
                    "faithfulness": check.faithfulness,
                    "complement": check.complement_faithfulness,
                }
            )
        print(
            f"{record['id']}: {len(result.nodes)} nodes, m = {result.metric.value:.2f}, "
            f"m(counterfactual) = {result.metric.baseline_value}",
            flush=True,
        )

    table = pd.concat(curves, ignore_index=True)
    # "all" differs per prompt; label it as such for the summary.
    table["size"] = np.where(table["size"] == table["n_nodes"], -1, table["size"])
    summary = table.groupby(["order", "size"]).agg(
        mean=("faithfulness", "mean"),
        median=("faithfulness", "median"),
        q25=("faithfulness", lambda v: v.quantile(0.25)),
        complement_mean=("complement_faithfulness", "mean"),
    )
    summary = summary.reset_index()
    summary["size"] = summary["size"].map(lambda s: "all" if s == -1 else s)
    print(f"\n{args.prompts} prompts, baseline {args.baseline}; faithfulness by circuit size")
    print(summary.round(3).to_string(index=False))
    print(f"\nsmallest size reaching {TARGET:.0%}:")
    for order in args.orders:
        rows = table[table["order"] == order]
        mean_curve = rows.groupby("size")["faithfulness"].mean().reset_index()
        mean_curve = mean_curve[mean_curve["size"] > 0]
        per_prompt = [
            smallest_faithful(part[part["size"] > 0], TARGET) for _, part in rows.groupby("prompt")
        ]
        reached = [size for size in per_prompt if size is not None]
        print(
            f"  {order:12s} mean curve: {smallest_faithful(mean_curve, TARGET)}; per prompt "
            f"median {np.median(reached) if reached else None} "
            f"({len(reached)}/{len(per_prompt)} prompts reach it below 'all'); "
            f"{seconds[order] / args.prompts:.2f} s per prompt"
        )
    graphs = pd.DataFrame(graphs)
    print(
        "\ngraphs' kept nodes as circuits, "
        "(max_nodes, node_threshold, edge_threshold, baseline_sources):"
    )
    print(
        graphs.groupby("setting", sort=False)
        .agg(
            kept=("kept SAE nodes", "median"),
            faithfulness_mean=("faithfulness", "mean"),
            faithfulness_median=("faithfulness", "median"),
            complement_mean=("complement", "mean"),
        )
        .round(3)
        .to_string()
    )
    print(f"mean nodes per prompt: {table.groupby('prompt')['n_nodes'].first().mean():.0f}")


if __name__ == "__main__":
    main()
