"""The bundled offline demo: a small IOI transformer, its residual-stream SAEs and feature cards.

Everything loads from files shipped in `weights/`, with no network: the model through
`HookedTransformer`, the SAEs through SAELens's own `SAE.load_from_disk`, the same code path as a
downloaded release. Only loading is installed; the code that wrote those files lives in the
repository's `training/` folder (`python -m training.train` from the repository root).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from sae_lens import SAE
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerFast

from token_trace.demo.model import CONFIG_FILE, MODEL_NAME, load_model
from token_trace.demo.tokenizer import load_tokenizer
from token_trace.hook_names import residual_hooks

DEMO_MODEL_NAME = MODEL_NAME
WEIGHTS_DIR = Path(__file__).parent / "weights"

__all__ = [
    "DEMO_MODEL_NAME",
    "WEIGHTS_DIR",
    "demo_hook_names",
    "feature_card",
    "load_demo_model",
    "load_demo_saes",
    "load_demo_tokenizer",
]


def demo_hook_names() -> list[str]:
    """The hook points that have an SAE, in layer order (as in GPT-2 small's `res-jb` release)."""
    n_layers = json.loads((WEIGHTS_DIR / CONFIG_FILE).read_text())["n_layers"]
    return residual_hooks(n_layers)


def load_demo_tokenizer() -> PreTrainedTokenizerFast:
    """The demo's word-level tokenizer as a Hugging Face tokenizer."""
    return load_tokenizer(WEIGHTS_DIR / "tokenizer.json")


def load_demo_model(device: str = "cpu", dtype: str = "float32") -> HookedTransformer:
    """The trained demo transformer, in eval mode; `to_tokens` prepends BOS as for GPT-2."""
    return load_model(WEIGHTS_DIR, load_demo_tokenizer(), device=device, dtype=dtype)


def load_demo_saes(device: str = "cpu", dtype: str = "float32") -> dict[str, SAE]:
    """One SAE per hook point, keyed by hook name, in layer order."""
    return {
        name: SAE.load_from_disk(WEIGHTS_DIR / "saes" / name, device=device, dtype=dtype)
        for name in demo_hook_names()
    }


@functools.cache
def _cards(hook_name: str) -> dict[str, Any] | None:
    path = WEIGHTS_DIR / "feature_cards" / f"{hook_name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def feature_card(hook_name: str, feature: int) -> dict[str, Any] | None:
    """The offline card of one feature, or None for an unknown hook or feature index.

    Keys: `hook_name`, `feature`, `density` (fraction of held-out tokens where it fires, BOS
    excluded), `bos_activation`, `top_logits` ([token, logit increase] pairs), and `contexts`
    (each `{"tokens": [...], "index": i, "activation": a}`, `tokens[i]` being the activating one).
    """
    cards = _cards(hook_name)
    if cards is None or not 0 <= feature < len(cards["features"]):
        return None
    return {"hook_name": hook_name, "feature": feature, **cards["features"][feature]}
