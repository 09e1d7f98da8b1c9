"""TransformerLens hook names, built and parsed in one place.

SAEs are placed by hook name (`blocks.6.hook_resid_pre`), and several parts of token-trace need to
read a name back: which block a hook sits in (to restart a forward pass there), how deep in the
residual stream it reads (to order SAEs and number layers as Neuronpedia does), and a short label
for charts. Every such rule lives here, so they cannot drift apart.
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_RESIDUAL = re.compile(r"^blocks\.\d+\.hook_resid_(pre|post)$")


def resid_pre(layer: int) -> str:
    """The residual stream entering block `layer`."""
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer: int) -> str:
    """The residual stream leaving block `layer`."""
    return f"blocks.{layer}.hook_resid_post"


def residual_hooks(n_layers: int) -> list[str]:
    """Every residual hook of an `n_layers` model in depth order: each block's input, then the
    last block's output (the layout of GPT-2 small's `res-jb` SAEs and the bundled model's)."""
    return [resid_pre(layer) for layer in range(n_layers)] + [resid_post(n_layers - 1)]


def is_residual(hook_name: str) -> bool:
    """Whether a hook reads the residual stream between blocks (a complete cut of the model)."""
    return _RESIDUAL.match(hook_name) is not None


def block_index(hook_name: str) -> int | None:
    """The block a hook sits in (`blocks.L.*` -> L), or None for hooks outside the blocks."""
    match = _BLOCK.match(hook_name)
    return int(match.group(1)) if match else None


def residual_depth(hook_name: str) -> int:
    """A hook's depth: `blocks.L.*` is L, except `blocks.L.hook_resid_post`, the input of L + 1.

    With this, a residual SAE at resid_post of the last block sorts after every resid_pre, and the
    number matches Neuronpedia's layer names for GPT-2 (`blocks.11.hook_resid_post` is 12-res-jb).
    Hooks outside the blocks get -1.
    """
    block = block_index(hook_name)
    if block is None:
        return -1
    return block + hook_name.endswith(".hook_resid_post")


def short_label(hook_name: str) -> str:
    """A compact, unique label for charts: `blocks.6.hook_resid_pre` -> `6 resid_pre`."""
    return hook_name.removeprefix("blocks.").replace(".hook_", " ").replace("hook_", "")
