"""`token-trace dataset PROMPTS --out DIR ...`: a dataset run from the shell.

Like the main command, heavy imports wait until the arguments are parsed, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEFAULT_MODEL = "gpt2-small"  # kept in step with token_trace.loading by a test
SHOWN_FEATURES = 15


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="token-trace dataset",
        description=(
            "Attribute every prompt of a JSONL, CSV or Parquet file (a 'text' column; optional "
            "'answer', 'contrast', 'baseline_text', 'id') and aggregate across them. Outputs in "
            "--out: prompts/ and nodes/ (Parquet, one file per shard), features.parquet, "
            "report.html. Running the same command again resumes a stopped run."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("prompts", help="the prompt file (.jsonl, .csv or .parquet)")
    parser.add_argument("--out", required=True, help="output folder (created; resumed if present)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="TransformerLens model name")
    parser.add_argument("--saes", "--release", default=None, help="SAELens release")
    parser.add_argument(
        "--loader",
        default=None,
        help="package.module:function(device) -> (model, {hook: SAE}), for models not in the "
        "registries (importable by every worker)",
    )
    parser.add_argument("--engine", choices=["local", "ray"], default="local")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward/backward")
    parser.add_argument("--shard-size", type=int, default=64, help="prompts per output file")
    parser.add_argument("--method", choices=["atp", "ig"], default="atp")
    parser.add_argument("--ig-steps", type=int, default=10, help="steps for --method ig")
    parser.add_argument("--loss", action="store_true", help="score each prompt's mean loss")
    parser.add_argument("--max-tokens", type=int, default=None, help="longer records are errors")
    parser.add_argument("--graph", action="store_true", help="also each prompt's pruned graph")
    parser.add_argument("--max-nodes", type=int, default=200, help="graph: nodes kept per prompt")
    parser.add_argument("--node-threshold", type=float, default=0.8, help="graph: node pruning")
    parser.add_argument("--edge-threshold", type=float, default=0.98, help="graph: edge pruning")
    parser.add_argument("--exclude-bos", action="store_true", help="aggregate without BOS nodes")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--workers", type=int, default=None, help="ray: actors (default: per GPU)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="ray: CPUs per actor")
    parser.add_argument(
        "--memory-per-worker", type=float, default=None, help="ray: GiB Ray reserves per actor"
    )
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    parser.add_argument(
        "--online-labels", action="store_true", help="fetch feature labels from Neuronpedia"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import pandas as pd

    from token_trace.cli import for_the_shell
    from token_trace.datasets.run import run_dataset
    from token_trace.loading import LoadError

    try:
        result = run_dataset(
            args.prompts,
            args.out,
            engine=args.engine,
            workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            memory_per_worker=args.memory_per_worker,
            progress=not args.quiet,
            report=not args.no_report,
            online_labels=args.online_labels,
            model=args.model,
            saes=args.saes,
            loader=args.loader,
            method=args.method,
            ig_steps=args.ig_steps,
            metric="loss" if args.loss else None,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            max_tokens=args.max_tokens,
            graph=args.graph,
            max_nodes=args.max_nodes,
            node_threshold=args.node_threshold,
            edge_threshold=args.edge_threshold,
            exclude_bos=args.exclude_bos,
            device=args.device,
        )
    except (ValueError, LoadError, ImportError) as error:
        print(f"token-trace dataset: {for_the_shell(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "token-trace dataset: stopped. Finished shards are kept; run the same command again "
            "to resume.",
            file=sys.stderr,
        )
        return 130
    resumed = f", {result.resumed_shards} shards resumed" if result.resumed_shards else ""
    print(
        f"{result.n_prompts} prompts: {result.n_ok} attributed, {result.n_errors} failed"
        f"{resumed}; {result.prompts_per_second:.2f} prompts/s -> {result.out_dir}"
    )
    features = result.features()
    top = features[features["node_type"] == "feature"].head(SHOWN_FEATURES)
    if top.empty:
        print("No active features: no record was attributed (prompts/ holds each reason).")
        return 0
    columns = ["layer", "feature", "mean_attribution", "mean_abs_attribution", "n_prompts_active"]
    with pd.option_context("display.width", 120):
        print(top[columns].to_string(index=False))
    return 0
