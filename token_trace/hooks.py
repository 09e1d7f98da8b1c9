"""Running a model with temporary hooks, and reading logits at a few positions only.

TransformerLens hooks live on the model's modules, so two threads using one model at once would see
each other's hooks. Every hooked run therefore holds the model's lock: concurrent requests on one
model queue up instead of mixing (on a GPU they would run one after the other anyway).

Works on either TransformerLens class (`token_trace.backend`); hook functions are given the name
they were registered under, which is not always the hook point's own name on a TransformerBridge.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformer_lens.utilities.activation_functions import apply_softcap

from token_trace import backend
from token_trace.backend import HookFn, Model

_locks: weakref.WeakKeyDictionary[Model, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def _fresh_locks_after_fork() -> None:
    """A forked child (ZeroGPU's GPU workers) must not inherit a lock some other thread held."""
    global _locks, _locks_guard
    _locks, _locks_guard = weakref.WeakKeyDictionary(), threading.Lock()


os.register_at_fork(after_in_child=_fresh_locks_after_fork)


def model_lock(model: Model) -> threading.RLock:
    """The one lock that every hooked run of `model` holds."""
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


@contextmanager
def hooked(model: Model, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Add forward hooks for the duration of the block, holding the model's lock."""
    with model_lock(model), backend.hooks(model, fwd_hooks):
        yield


def final_residual(
    model: Model, inputs: torch.Tensor, start_at_layer: int | None = None
) -> torch.Tensor:
    """The residual stream after the last block, `[batch, pos, d_model]`, without unembedding.

    `inputs` are token ids, or the residual stream entering block `start_at_layer`. The run holds
    the model's lock, so no other thread's hooks can fire in it.
    """
    return run_blocks(model, inputs, start_at_layer, model.cfg.n_layers)


def run_blocks(model: Model, inputs: torch.Tensor, start: int | None, stop: int) -> torch.Tensor:
    """The residual stream entering block `stop` (`n_layers`: after the last block), from token
    ids (`start` None) or from the residual stream entering block `start`, under the lock."""
    with model_lock(model):
        return backend.run(model, inputs, start, stop)


def logits_at(
    model: Model, residual: torch.Tensor, positions: Sequence[int] | None
) -> torch.Tensor:
    """Logits `[batch, len(positions), d_vocab]` from the final residual stream (all if None).

    The final norm and the unembedding act on each position alone, so slicing first is exact.
    The product is written out rather than calling `model.unembed`, which copies the transposed
    `W_U` (154 MB for GPT-2) on every call to match Hugging Face's bf16 rounding. Logits come out
    in at least float32, so a bfloat16 model's metric (a log-softmax over the vocabulary) and its
    gradient start in float32.
    """
    if positions is not None:
        residual = residual[:, list(positions)]
    if model.cfg.normalization_type is not None:
        residual = model.ln_final(residual)
    logits = residual @ model.W_U + model.b_U
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)
