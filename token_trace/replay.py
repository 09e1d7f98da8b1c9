"""What a finished `Trace` ran on, rebuilt: model, SAEs, tokens, metric and baseline.

Checks that go back to the model after a run (real ablations, the edges of a graph) need the exact
inputs of that run. A trace records them (token ids, the metric's positions and token ids, the
counterfactual's token ids, each SAE's release), so they can be rebuilt without the original call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from sae_lens import SAE

from token_trace import loading
from token_trace.backend import Model
from token_trace.metrics import Metric, rebuild
from token_trace.records import Trace


@dataclass(frozen=True)
class Replay:
    """A trace's model input `[1, T]`, its metric, and its counterfactual input (or None)."""

    tokens: torch.Tensor
    metric: Metric
    baseline_tokens: torch.Tensor | None


def model_and_saes(
    result: Trace,
    model: Model | None = None,
    saes: Mapping[str, SAE] | None = None,
    device: str | None = None,
) -> tuple[Model, Mapping[str, SAE]]:
    """The trace's model and SAEs: the ones given, else loaded by name (cached) from its records,
    the model as the class that ran it (`Trace.backend`).

    SAEs the trace has no release for (a caller's own) must be given.
    """
    if saes is None:
        missing = [record.hook_name for record in result.saes if record.release is None]
        if missing:
            raise ValueError(f"The trace has no release for the SAEs at {missing}; pass saes=.")
        specs = [loading.SAESpec(record.release, record.sae_id) for record in result.saes]
        if model is None:
            model = loading.load_model(
                result.model, device, release=specs[0].release, backend=result.backend
            )
        saes = loading.load_saes(specs, device=str(model.cfg.device))
    elif model is None:
        model = loading.load_model(result.model, device, backend=result.backend)
    return model, saes


def replay(result: Trace, model: Model) -> Replay:
    """The trace's inputs on `model`'s device. Custom metric callables cannot be rebuilt."""
    tokens = torch.tensor([result.prompt.token_ids], device=model.cfg.device)
    metric = rebuild(
        result.metric.name,
        result.metric.description,
        result.metric.positions,
        result.metric.token_ids,
        tokens,
    )
    baseline = result.baseline_token_ids
    baseline_tokens = None if baseline is None else torch.tensor([baseline], device=tokens.device)
    return Replay(tokens, metric, baseline_tokens)
