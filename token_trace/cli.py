"""The `token-trace` command: attribute a prompt, print the top nodes, optionally save the table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd

from token_trace.loading import DEFAULT_MODEL, LoadError
from token_trace.nodes import top_nodes
from token_trace.pipeline import compute_node_attribution

SHOWN_COLUMNS = ["layer", "position", "token", "node_type", "feature", "activation", "attribution"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="token-trace",
        description="Attribute a model's prediction on a prompt to SAE features and error nodes.",
    )
    parser.add_argument("text", help="the prompt")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name, or ioi-demo offline")
    parser.add_argument("--saes", default=None, help="SAELens release (default: the model's)")
    parser.add_argument("--answer", default=None, help="score log p(answer | prompt)")
    parser.add_argument("--contrast", default=None, help="score logit(answer) - logit(contrast)")
    parser.add_argument("--loss", action="store_true", help="score the prompt's mean loss")
    parser.add_argument("--method", choices=["atp", "ig"], default="atp")
    parser.add_argument("--ig-steps", type=int, default=10)
    parser.add_argument("--baseline", default=None, help="counterfactual prompt, same length")
    parser.add_argument("--device", default=None)
    parser.add_argument("--top", type=int, default=20, help="how many nodes to print")
    parser.add_argument("--exclude-bos", action="store_true", help="rank without BOS nodes")
    parser.add_argument("--csv", default=None, help="write the full node table as CSV")
    parser.add_argument("--parquet", default=None, help="write the full node table as Parquet")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        df = compute_node_attribution(
            args.text,
            args.model,
            args.saes,
            answer=args.answer,
            contrast=args.contrast,
            metric="loss" if args.loss else None,
            method=args.method,
            ig_steps=args.ig_steps,
            baseline_text=args.baseline,
            device=args.device,
        )
    except (ValueError, LoadError) as err:
        print(f"token-trace: {err}", file=sys.stderr)
        return 2
    print(f"{df.attrs['metric_description']} = {df.attrs['metric_value']:.4f}")
    print(f"{len(df)} nodes; top {args.top} by |attribution|:")
    with pd.option_context("display.width", 120, "display.max_columns", None):
        shown = top_nodes(df, args.top, exclude_bos=args.exclude_bos)[SHOWN_COLUMNS]
        print(shown.to_string(index=False))
    if args.csv:
        df.to_csv(args.csv, index=False)
    if args.parquet:
        df.to_parquet(args.parquet, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
