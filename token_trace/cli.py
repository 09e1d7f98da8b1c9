"""The `token-trace` command: attribute a prompt, print the top nodes, optionally save the results.

Its options are the library's records (`token_trace.options`), so every flag's default and check
is the library's own, and every argument is checked before anything loads. Heavy imports (torch,
TransformerLens, SAELens) happen after that, so `token-trace --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from token_trace import options
from token_trace.options import (
    BUNDLED_MODEL,
    DEFAULT_MODEL,
    GraphOptions,
    PromptSpec,
    TraceOptions,
    whole_number,
)
from token_trace.shell import parser, refuse

PROG = "token-trace"
SHOWN_COLUMNS = ["layer", "position", "token", "node_type", "feature", "activation", "attribution"]

__all__ = ["BUNDLED_MODEL", "DEFAULT_MODEL", "main", "parse_args"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    cli = parser(
        PROG,
        "Attribute a model's prediction on a prompt to SAE features and error nodes.",
        "Many prompts from a file: token-trace dataset --help.",
    )
    cli.add_argument("text", help="the prompt")
    cli.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"TransformerLens model name; {BUNDLED_MODEL} is bundled and works offline "
        f"(default: {DEFAULT_MODEL})",
    )
    cli.add_argument("--saes", default=None, help="SAELens release (default: the model's)")
    options.add_arguments(cli, PromptSpec)
    options.add_arguments(cli, TraceOptions)
    cli.add_argument("--top", default="20", help="how many nodes to print (0: all; default: 20)")
    cli.add_argument("--exclude-bos", action="store_true", help="rank without BOS nodes")
    cli.add_argument("--csv", default=None, help="write the full node table as CSV")
    cli.add_argument("--parquet", default=None, help="write the full node table as Parquet")
    cli.add_argument("--save", default=None, help="write the whole Trace (Trace.load reads it)")
    cli.add_argument(
        "--graph", default=None, help="write the pruned graph as Neuronpedia graph JSON (AtP only)"
    )
    options.add_arguments(cli, GraphOptions)
    cli.add_argument(
        "--upload",
        action="store_true",
        help="upload the --graph file to Neuronpedia and print its URL (key: $NEURONPEDIA_API_KEY)",
    )
    return cli.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["dataset"]:
        from token_trace.datasets.command import main as dataset_main

        return dataset_main(argv[1:])
    args = parse_args(argv)
    try:  # every argument is checked here, before the seconds of loading below
        top = whole_number(args.top, "--top", 0)
        prompt = options.from_arguments(PromptSpec, args)
        chosen = options.from_arguments(TraceOptions, args)
        graph_options = options.from_arguments(GraphOptions, args)
        if args.graph:
            chosen.check_graphable()
        if args.upload and not args.graph:
            raise ValueError("--upload needs --graph FILE, the file it uploads.")
        key = _upload_key() if args.upload else None
    except ValueError as error:
        return refuse(PROG, error)
    prompt = PromptSpec(args.text, prompt.answer, prompt.contrast, prompt.counterfactual)

    import pandas as pd

    from token_trace.graph import graph_of
    from token_trace.loading import LoadError
    from token_trace.neuronpedia_graph import file_slug
    from token_trace.neuronpedia_upload import UploadError
    from token_trace.pipeline import resolve, run_traces

    graph = None
    try:
        loaded = resolve(args.model, args.saes, chosen)
        if args.graph:
            graph = graph_of(prompt, loaded, chosen, graph_options)
            result = graph.trace
        else:
            (result,), _ = run_traces([prompt], loaded, chosen)
    except (ValueError, LoadError) as error:
        return refuse(PROG, error)
    for warning in result.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    print(f"{result.metric.description} = {result.metric.value:.4f}")
    shown = result.top_nodes(top, exclude_bos=args.exclude_bos)
    print(f"{len(result.nodes)} nodes; top {len(shown)} by |attribution|:")
    with pd.option_context("display.width", 120, "display.max_columns", None):
        print(shown[SHOWN_COLUMNS].to_string(index=False))
    if args.csv:
        result.nodes.to_csv(args.csv, index=False)
    if args.parquet:
        result.nodes.to_parquet(args.parquet, index=False)
    if args.save:
        result.save(args.save)
    if graph is not None:
        graph.save_neuronpedia(args.graph)
        print(
            f"graph: {len(graph.nodes)} nodes, {len(graph.edges)} edges "
            f"(of {len(graph.candidate_edges)} computed), error share {graph.error_share:.0%} "
            f"-> {args.graph}"
        )
        if args.upload:
            try:
                url = graph.upload_to_neuronpedia(key, slug=file_slug(args.graph))
            except (UploadError, ValueError) as err:
                print(f"token-trace: upload failed: {err}", file=sys.stderr)
                return 1
            print(f"neuronpedia: {url}")
    return 0


def _upload_key() -> str:
    """The Neuronpedia key, asked for before any work (a missing one is a ValueError)."""
    from token_trace.neuronpedia_upload import MissingKeyError, resolve_key

    try:
        return resolve_key()
    except MissingKeyError as error:
        raise ValueError(str(error)) from None


if __name__ == "__main__":
    sys.exit(main())
