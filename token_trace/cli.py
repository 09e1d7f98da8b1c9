"""The `token-trace` command: attribute a prompt, print the top nodes, optionally save the results.

Heavy imports (torch, TransformerLens, SAELens) happen inside `main`, after the arguments are
parsed, so `token-trace --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

#: Kept in step with `token_trace.loading.DEFAULT_MODEL` / `BUNDLED_MODEL` by a test; written out
#: here so that `--help` needs no import of the library.
DEFAULT_MODEL = "gpt2-small"
BUNDLED_MODEL = "ioi-demo"
SHOWN_COLUMNS = ["layer", "position", "token", "node_type", "feature", "activation", "attribution"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="token-trace",
        description="Attribute a model's prediction on a prompt to SAE features and error nodes.",
        epilog="Many prompts from a file: token-trace dataset --help.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("text", help="the prompt")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"TransformerLens model name; {BUNDLED_MODEL} is bundled and works offline",
    )
    parser.add_argument("--saes", default=None, help="SAELens release (default: the model's)")
    parser.add_argument("--answer", default=None, help="score log p(answer | prompt)")
    parser.add_argument("--contrast", default=None, help="score logit(answer) - logit(contrast)")
    parser.add_argument("--loss", action="store_true", help="score the prompt's mean loss")
    parser.add_argument("--method", choices=["atp", "ig"], default="atp")
    parser.add_argument("--ig-steps", type=int, default=10, help="steps for --method ig")
    parser.add_argument("--baseline", default=None, help="counterfactual prompt, same length")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--top", type=int, default=20, help="how many nodes to print (0: all)")
    parser.add_argument("--exclude-bos", action="store_true", help="rank without BOS nodes")
    parser.add_argument("--csv", default=None, help="write the full node table as CSV")
    parser.add_argument("--parquet", default=None, help="write the full node table as Parquet")
    parser.add_argument(
        "--save", default=None, help="write the whole Trace (Trace.load reads it back)"
    )
    parser.add_argument(
        "--graph", default=None, help="write the pruned graph as Neuronpedia graph JSON (AtP only)"
    )
    parser.add_argument(
        "--max-nodes", type=int, default=200, help="graph: nodes of largest |attribution| kept"
    )
    parser.add_argument("--node-threshold", type=float, default=0.8, help="graph: node pruning")
    parser.add_argument("--edge-threshold", type=float, default=0.98, help="graph: edge pruning")
    parser.add_argument(
        "--upload",
        action="store_true",
        help="upload the --graph file to Neuronpedia and print its URL (key: $NEURONPEDIA_API_KEY)",
    )
    return parser.parse_args(argv)


def for_the_shell(message: str) -> str:
    """Library messages name Python arguments; say the command's own flags instead."""
    return message.replace(f"the bundled model {BUNDLED_MODEL!r}", f"--model {BUNDLED_MODEL}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["dataset"]:
        from token_trace.datasets.command import main as dataset_main

        return dataset_main(argv[1:])
    args = parse_args(argv)
    if args.top < 0:
        print("token-trace: --top must be 0 (all nodes) or more.", file=sys.stderr)
        return 2
    if args.graph and (args.method != "atp" or args.loss):
        print("token-trace: --graph needs --method atp and a token metric.", file=sys.stderr)
        return 2
    if args.upload and not args.graph:
        print("token-trace: --upload needs --graph FILE, the file it uploads.", file=sys.stderr)
        return 2
    if args.upload:
        from token_trace.neuronpedia_upload import MissingKeyError, UploadError, resolve_key

        try:
            key = resolve_key()
        except MissingKeyError as err:
            print(f"token-trace: {err}", file=sys.stderr)
            return 2

    import pandas as pd

    from token_trace.graph import compute_graph
    from token_trace.loading import LoadError
    from token_trace.neuronpedia_graph import file_slug
    from token_trace.pipeline import trace

    request = {
        "answer": args.answer,
        "contrast": args.contrast,
        "baseline_text": args.baseline,
        "device": args.device,
    }
    graph = None
    try:
        if args.graph:
            graph = compute_graph(
                args.text,
                args.model,
                args.saes,
                max_nodes=args.max_nodes,
                node_threshold=args.node_threshold,
                edge_threshold=args.edge_threshold,
                **request,
            )
            result = graph.trace
        else:
            result = trace(
                args.text,
                args.model,
                args.saes,
                metric="loss" if args.loss else None,
                method=args.method,
                ig_steps=args.ig_steps,
                **request,
            )
    except (ValueError, LoadError) as err:
        print(f"token-trace: {for_the_shell(str(err))}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"token-trace: warning: {warning}", file=sys.stderr)
    print(f"{result.metric.description} = {result.metric.value:.4f}")
    shown = result.top_nodes(args.top, exclude_bos=args.exclude_bos)
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


if __name__ == "__main__":
    sys.exit(main())
