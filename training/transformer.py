"""The demo transformer's architecture, and writing a trained one in the shipped on-disk form.

The form itself (file names, recorded config fields) belongs to `token_trace.demo.model`, whose
`load_model` reads it back; only training needs to build or save a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from token_trace.demo.model import CONFIG_FIELDS, CONFIG_FILE, MODEL_FILE, MODEL_NAME


def demo_config(d_vocab: int, n_layers: int = 3, seed: int = 0) -> HookedTransformerConfig:
    """A small GPT-2-style configuration: learned positions, LayerNorm, GELU MLPs."""
    return HookedTransformerConfig(
        model_name=MODEL_NAME,
        n_layers=n_layers,
        d_model=128,
        n_heads=4,
        d_head=32,
        d_mlp=512,
        n_ctx=64,
        d_vocab=d_vocab,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        default_prepend_bos=True,
        seed=seed,
    )


def save_model(model: HookedTransformer, directory: Path) -> None:
    """Write `model.safetensors` and `model_config.json` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    fields: dict[str, Any] = {name: getattr(model.cfg, name) for name in CONFIG_FIELDS}
    (directory / CONFIG_FILE).write_text(json.dumps(fields, indent=2) + "\n")
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, directory / MODEL_FILE)
