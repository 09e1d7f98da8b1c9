"""Call a running token-trace app from Python with `gradio_client`.

Start the app first (`python app.py`, or use a Space id such as `user/token-trace` as URL), then:

    python examples/client.py                        # GPT-2 small, IOI prompt, logit difference
    python examples/client.py --demo                 # the bundled offline model's first example
    python examples/client.py --text "The capital of France is" --answer " Paris" --top-k 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from gradio_client import Client
from gradio_client.exceptions import AppError

DEMO_PROMPTS = Path(__file__).resolve().parent / "demo_prompts.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:7860/")
    parser.add_argument("--model", default="gpt2-small")
    parser.add_argument(
        "--text", default="When John and Mary went to the shops, John gave the bag to"
    )
    parser.add_argument("--answer", default=" Mary")
    parser.add_argument("--contrast", default=" John")
    parser.add_argument("--layers", default="", help="comma-separated SAE ids; empty: all")
    parser.add_argument("--method", default="atp", choices=["atp", "ig"])
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--demo", action="store_true", help="the bundled model's first example")
    args = parser.parse_args()
    if args.demo:
        example = json.loads(DEMO_PROMPTS.read_text())[0]
        args.model, args.text = "ioi-demo", example["text"]
        args.answer, args.contrast = example.get("answer") or "", example.get("contrast") or ""

    try:
        client = Client(args.url, verbose=False)
    except Exception as error:  # httpx and gradio_client raise many types for "not there"
        sys.exit(
            f"Could not reach a token-trace app at {args.url} ({error}). Start `python app.py`."
        )
    request = {
        "text": args.text,
        "model": args.model,
        "layers": args.layers,
        "answer": args.answer,
        "contrast": args.contrast,
        "method": args.method,
    }
    try:
        run = client.predict(**request, api_name="/summary")
        nodes = pd.DataFrame(client.predict(**request, top_k=args.top_k, api_name="/attribute"))
    except AppError as error:  # the app's own message: bad input, or a model it cannot load
        hint = "" if args.demo else " (offline? try --demo, the bundled model)"
        sys.exit(f"token-trace: {error}{hint}")
    for warning in run.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)

    print(f"{run['metric_description']} = {run['metric_value']:+.4f}")
    top = ", ".join(f"{p['token']!r} {p['probability']:.1%}" for p in run["top_predictions"][:5])
    print(f"top predictions: {top}")
    columns = ["layer", "position", "token", "node_type", "feature", "activation", "attribution"]
    print(nodes[columns].to_string(index=False))


if __name__ == "__main__":
    main()
