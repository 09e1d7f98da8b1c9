"""The demo transformer's configuration and its on-disk form (safetensors + JSON config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase

MODEL_NAME = "ioi-demo"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"


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


# The config fields that fully determine the architecture; everything else is a default.
_SAVED_FIELDS = (
    "model_name",
    "n_layers",
    "d_model",
    "n_heads",
    "d_head",
    "d_mlp",
    "n_ctx",
    "d_vocab",
    "act_fn",
    "normalization_type",
    "positional_embedding_type",
    "default_prepend_bos",
    "seed",
)


def save_model(model: HookedTransformer, directory: Path) -> None:
    """Write `model.safetensors` and `model_config.json` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    fields: dict[str, Any] = {name: getattr(model.cfg, name) for name in _SAVED_FIELDS}
    (directory / CONFIG_FILE).write_text(json.dumps(fields, indent=2) + "\n")
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, directory / MODEL_FILE)


def load_model(
    directory: Path, tokenizer: PreTrainedTokenizerBase, device: str = "cpu"
) -> HookedTransformer:
    """Rebuild the model from `directory`, in eval mode on `device`."""
    fields = json.loads((directory / CONFIG_FILE).read_text())
    cfg = HookedTransformerConfig(**fields, device=device)
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.load_state_dict(load_file(directory / MODEL_FILE, device=device))
    return model.eval()
