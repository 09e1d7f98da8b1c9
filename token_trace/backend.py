"""The seam between token-trace and the class that runs a model: HookedTransformer or
TransformerBridge.

TransformerLens 3 offers two classes with the same hook names and config fields:
`HookedTransformer` (its own implementation; deprecated in 3, removed in 4) and
`TransformerBridge` (the Hugging Face model itself with hook points inserted; after
`enable_compatibility_mode()` it has HookedTransformer's folded and centred weights). Almost all
token-trace needs from a model they share: `cfg` (`n_layers`, `n_ctx`, `d_vocab`, `device`,
`model_name`), the tokenizer and `to_tokens` / `to_str_tokens`, `hook_dict`, `hooks()`,
`ln_final`, `W_U` / `b_U` and `blocks`. That is the `Model` protocol below.

What differs lives here and nowhere else, one `_Runner` per class:

- running part of the model. HookedTransformer takes `start_at_layer` / `stop_at_layer`. The
  bridge delegates its layer loop to Hugging Face and refuses `start_at_layer`; running its
  blocks one by one is not exact either (measured on a GPT-NeoX model: 1e-3 off, its blocks read
  rotary embeddings the parent model computes). So the bridge runs its whole Hugging Face
  forward on placeholder ids, with the residual stream entering the first block wanted put in
  by a forward pre-hook, and stops before the block (or final norm) after the last one by
  raising the bridge's own `StopAtLayerException`, which its forward catches and returns. The
  blocks below the start run too, on the placeholders, and are thrown away: exact for every
  architecture the bridge runs, at the cost of those blocks' forward.
- a block's MLP on its own (`apply_mlp` in HookedTransformer, the `mlp` submodule in the bridge),
  and the architecture's name (`original_architecture` / `architecture`).
- hooks. The bridge tells a hook function the hook point's canonical name (`blocks.3.hook_in`
  for `blocks.3.hook_resid_pre`), so every hook function here is handed the name it was
  registered under instead; and the bridge's `hook_dict` is rebuilt on every read, so its hooks
  are added in one call that reads it twice, not once per hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import torch
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.exceptions import StopAtLayerException


class Model(Protocol):
    """What token-trace reads from a model, whichever TransformerLens class runs it."""

    cfg: Any
    tokenizer: Any
    blocks: Any
    ln_final: Any

    @property
    def hook_dict(self) -> Mapping[str, HookPoint]: ...

    @property
    def W_U(self) -> torch.Tensor: ...

    @property
    def b_U(self) -> torch.Tensor: ...

    def hooks(self, fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = ...) -> Any: ...

    def to_tokens(self, input: Any, prepend_bos: Any = ..., *args: Any, **kwargs: Any) -> Any: ...

    def to_str_tokens(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> Any: ...


#: The classes that can run a model, by the name the `backend` option gives them.
CLASSES: dict[str, type] = {"hooked": HookedTransformer, "bridge": TransformerBridge}


def backend_of(model: Any) -> str:
    """The backend name of a model object, or a TypeError naming what is accepted."""
    for name, cls in CLASSES.items():
        if isinstance(model, cls):
            return name
    raise TypeError(
        f"model must be a model name, a HookedTransformer or a TransformerBridge; got "
        f"{type(model).__name__}."
    )


def is_model(value: Any) -> bool:
    """Whether `value` is a model object (rather than a model's name)."""
    return isinstance(value, tuple(CLASSES.values()))


#: A forward hook: (activation, the hook name it was registered under) -> replacement or None.
HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]


def hooks(model: Model, fwd_hooks: Sequence[tuple[str, HookFn]]) -> AbstractContextManager[Any]:
    """Add forward hooks for the duration of a `with` block (see `token_trace.hooks.hooked`)."""
    return _runner(model).hooks(model, fwd_hooks)


def run(model: Model, inputs: torch.Tensor, start: int | None, stop: int) -> torch.Tensor:
    """The residual stream entering block `stop` (`cfg.n_layers`: leaving the last block),
    `[batch, pos, d_model]`. `inputs` are token ids (`start` None) or the residual stream
    entering block `start`. The caller holds the model's lock (see `token_trace.hooks`)."""
    return _runner(model).run(model, inputs, start, stop)


def mlp(model: Model, block: Any, resid_mid: torch.Tensor) -> torch.Tensor:
    """A pre-norm block's MLP branch on its middle residual stream: `mlp(ln2(resid_mid))`."""
    return _runner(model).mlp(block, resid_mid)


def architecture(model: Model) -> str | None:
    """The Hugging Face architecture name (`GPT2LMHeadModel`), where the model records one."""
    return _runner(model).architecture(model)


class _Runner(Protocol):
    def hooks(
        self, model: Any, fwd_hooks: Sequence[tuple[str, HookFn]]
    ) -> AbstractContextManager[Any]: ...

    def run(
        self, model: Any, inputs: torch.Tensor, start: int | None, stop: int
    ) -> torch.Tensor: ...

    def mlp(self, block: Any, resid_mid: torch.Tensor) -> torch.Tensor: ...

    def architecture(self, model: Any) -> str | None: ...


class _HookedRunner:
    """HookedTransformer: its own `hooks()` and `start_at_layer` / `stop_at_layer`."""

    def hooks(
        self, model: Any, fwd_hooks: Sequence[tuple[str, HookFn]]
    ) -> AbstractContextManager[Any]:
        return model.hooks(fwd_hooks=[(name, _named(name, fn)) for name, fn in fwd_hooks])

    def run(self, model: Any, inputs: torch.Tensor, start: int | None, stop: int) -> torch.Tensor:
        return model(inputs, start_at_layer=start, stop_at_layer=stop)

    def mlp(self, block: Any, resid_mid: torch.Tensor) -> torch.Tensor:
        return block.apply_mlp(block.ln2(resid_mid))

    def architecture(self, model: Any) -> str | None:
        return model.cfg.original_architecture


class _BridgeRunner:
    """TransformerBridge: its Hugging Face forward, fed and stopped by module pre-hooks."""

    def hooks(
        self, model: Any, fwd_hooks: Sequence[tuple[str, HookFn]]
    ) -> AbstractContextManager[Any]:
        """All the hooks as one filter and one function that calls each registered function
        with its own name: the bridge rebuilds `hook_dict` (its aliases) on every read, about
        9 ms for a 12-layer model, and its `hooks()` reads it once per hook given by name."""
        if not fwd_hooks:
            return contextlib.nullcontext()
        points = model.hook_dict
        by_point: dict[int, list[tuple[str, HookFn]]] = {}
        for name, fn in fwd_hooks:
            if name not in points:
                raise ValueError(f"The model has no hook point {name!r}.")
            by_point.setdefault(id(points[name]), []).append((name, fn))

        def wanted(name: str) -> bool:
            return name in points and id(points[name]) in by_point

        def call_each(act: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            for name, fn in by_point[id(hook)]:
                out = fn(act, name)
                act = act if out is None else out
            return act

        return model.hooks(fwd_hooks=[(wanted, call_each)])

    def run(self, model: Any, inputs: torch.Tensor, start: int | None, stop: int) -> torch.Tensor:
        n_layers = model.cfg.n_layers
        if not 0 <= stop <= n_layers or (start is not None and not 0 <= start <= stop):
            raise ValueError(f"Cannot run blocks {start} to {stop} of {n_layers}.")
        if start is not None and start == stop:
            return inputs  # no block between: the identity
        stopped: list[torch.Tensor] = []

        def stop_here(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            stopped.append(_hidden_states(args, kwargs))
            raise StopAtLayerException(stopped[0])

        ids = inputs
        if start is not None:  # placeholder ids: block `start` reads `inputs` instead
            ids = torch.zeros(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                _pre_hook(model.blocks[stop] if stop < n_layers else model.ln_final, stop_here)
            )
            if start is not None:
                stack.enter_context(_pre_hook(model.blocks[start], _feed(inputs)))
            model(ids, return_type=None)
        if not stopped:
            raise RuntimeError(f"{type(model).__name__}'s forward never reached block {stop}.")
        return stopped[0]

    def mlp(self, block: Any, resid_mid: torch.Tensor) -> torch.Tensor:
        return block.mlp(block.ln2(resid_mid))

    def architecture(self, model: Any) -> str | None:
        return getattr(model.cfg, "architecture", None)


def _named(name: str, fn: HookFn) -> Callable[[torch.Tensor, HookPoint], torch.Tensor | None]:
    def hook(act: torch.Tensor, hook: HookPoint) -> torch.Tensor | None:
        return fn(act, name)

    return hook


def _runner(model: Any) -> _Runner:
    return _BridgeRunner() if isinstance(model, TransformerBridge) else _HookedRunner()


@contextmanager
def _pre_hook(module: torch.nn.Module, hook: Callable[..., Any]) -> Iterator[None]:
    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _hidden_states(args: tuple, kwargs: dict) -> torch.Tensor:
    """The residual stream a Hugging Face block (or final norm) is called with."""
    return args[0] if args else kwargs["hidden_states"]


def _feed(residual: torch.Tensor) -> Callable[..., tuple[tuple, dict]]:
    """A pre-hook that replaces a block's input with `residual` (its hooks then read it)."""

    def feed(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (residual.to(args[0].dtype), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": residual.to(kwargs["hidden_states"].dtype)}

    return feed
