"""SAEs spliced into the forward pass, as a pass-through that leaves the model unchanged.

At each hook the SAE's features `f` and error `e` become leaf tensors, so autograd reports
`dm/df` and `dm/de` directly, and they can be edited (ablated, patched) before the model reads them.
The hook's output is `x + (out - out.detach())` with `out = decode(f) + e`: its value is exactly the
model's own activation `x` (or the edited one), and the gradient that flows upstream is the model's
true gradient rather than one through the SAE's Jacobian (a known trap of detached error terms).

The engine does not need this (it reads true gradients directly); it exists to check the engine
against an independent computation and to run real ablations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from sae_lens import SAE

from token_trace.backend import Model
from token_trace.hooks import hooked

#: Called per hook with (hook_name, features, error); returns the values the model should read.
Edit = Callable[[str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SpliceLeaves:
    """Feature and error leaves of the last run, `[batch, pos, d_sae]` and `[batch, pos, d_in]`."""

    features: dict[str, torch.Tensor] = field(default_factory=dict)
    errors: dict[str, torch.Tensor] = field(default_factory=dict)


@contextmanager
def spliced(
    model: Model,
    saes: Mapping[str, SAE],
    edit: Edit | None = None,
    *,
    keep_leaves: bool = True,
) -> Iterator[SpliceLeaves]:
    """Run the model with every SAE in `saes` spliced in at its hook (see the module docstring).

    `keep_leaves=False` keeps no leaves (the yielded record stays empty), so a large batch holds
    one hook's `[batch, pos, d_sae]` features at a time instead of every hook's.
    """
    leaves = SpliceLeaves()

    def splice(x: torch.Tensor, name: str) -> torch.Tensor:
        sae = saes[name]
        flat = x.reshape(*x.shape[:2], -1).to(sae.dtype)
        with torch.no_grad():
            features = sae.encode(flat)
            error = flat - sae.decode(features)
        features.requires_grad_(True)
        error.requires_grad_(True)
        if keep_leaves:
            leaves.features[name], leaves.errors[name] = features, error
        read_features, read_error = edit(name, features, error) if edit else (features, error)
        out = sae.decode(read_features) + read_error
        clean_out = (sae.decode(features) + error).detach()
        return x + (out - clean_out).to(x.dtype).reshape(x.shape)

    with hooked(model, [(name, splice) for name in saes]):
        yield leaves
