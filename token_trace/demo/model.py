"""The demo transformer's on-disk form (safetensors + JSON config), and loading it for serving.

`training/transformer.py` defines the architecture and writes these files; loading needs only the
config they record, so nothing here depends on how the model was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase

MODEL_NAME = "ioi-demo"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"

# The config fields written to `CONFIG_FILE`: they fully determine the architecture; everything
# else is a default.
CONFIG_FIELDS = (
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


def load_model(
    directory: Path,
    tokenizer: PreTrainedTokenizerBase,
    device: str = "cpu",
    dtype: str = "float32",
) -> HookedTransformer:
    """Rebuild the model from `directory`, in eval mode on `device`, its weights in `dtype`
    (the float32 file is cast as it is copied in)."""
    fields = json.loads((directory / CONFIG_FILE).read_text())
    cfg = HookedTransformerConfig(**fields, device=device, dtype=getattr(torch, dtype))
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.load_state_dict(load_file(directory / MODEL_FILE, device=device))
    return model.eval()
