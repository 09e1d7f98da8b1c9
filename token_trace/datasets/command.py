"""`token-trace dataset PROMPTS --out DIR ...`: a dataset run from the shell.

Like the main command, heavy imports wait until the arguments are parsed, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from token_trace import options
from token_trace.datasets.settings import ENGINES, DatasetSettings
from token_trace.options import DEFAULT_MODEL, GraphOptions, TraceOptions
from token_trace.shell import parser, refuse

PROG = "token-trace dataset"
SHOWN_FEATURES = 15

__all__ = ["DEFAULT_MODEL", "main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    cli = parser(
        PROG,
        "Attribute every prompt of a JSONL, CSV or Parquet file (a 'text' column; optional "
        "'answer', 'contrast', 'counterfactual', 'id') and aggregate across them. Outputs in "
        "--out: prompts/ and nodes/ (Parquet, one file per shard), features.parquet, "
        "report.html. Running the same command again resumes a stopped run.",
    )
    cli.add_argument("prompts", help="the prompt file (.jsonl, .csv or .parquet)")
    cli.add_argument("--out", required=True, help="output folder (created; resumed if present)")
    options.add_arguments(cli, DatasetSettings)
    options.add_arguments(cli, TraceOptions)
    cli.add_argument("--graph", action="store_true", help="also each prompt's pruned graph")
    options.add_arguments(cli, GraphOptions)
    cli.add_argument("--engine", choices=ENGINES, default="local", help="(default: local)")
    cli.add_argument("--workers", type=int, default=None, help="ray: actors (default: per GPU)")
    cli.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="ray: CPUs per actor (default: 1)"
    )
    cli.add_argument(
        "--memory-per-worker", type=float, default=None, help="ray: GiB Ray reserves per actor"
    )
    cli.add_argument("--no-report", action="store_true", help="skip report.html")
    cli.add_argument(
        "--online-labels", action="store_true", help="fetch feature labels from Neuronpedia"
    )
    cli.add_argument("--quiet", action="store_true", help="no progress bar")
    return cli.parse_args(argv)


def settings_of(args: argparse.Namespace) -> DatasetSettings:
    """The run's settings from the parsed flags; checked here, before anything loads."""
    graph = options.from_arguments(GraphOptions, args) if args.graph else None
    return DatasetSettings(
        trace=options.from_arguments(TraceOptions, args),
        graph=graph,
        **options.arguments_for(DatasetSettings, args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_of(args)
    except ValueError as error:
        return refuse(PROG, error)
    import pandas as pd

    from token_trace.datasets.run import run_settings
    from token_trace.loading import LoadError

    try:
        result = run_settings(
            args.prompts,
            args.out,
            settings,
            engine=args.engine,
            workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            memory_per_worker=args.memory_per_worker,
            progress=not args.quiet,
            report=not args.no_report,
            online_labels=args.online_labels,
        )
    except (ValueError, LoadError, ImportError) as error:
        return refuse(PROG, error)
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
