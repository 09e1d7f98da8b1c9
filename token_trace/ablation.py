"""Real interventions: set nodes to their baseline value, rerun the model, read the metric.

Attribution patching is a first-order estimate; this module measures the thing it estimates, so the
estimate can be checked (in the tests, and by users on their own top nodes). Each batch row ablates
one set of nodes together, so many single-node ablations cost one batched forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import torch
from sae_lens import SAE

from token_trace.backend import Model
from token_trace.hooks import final_residual, logits_at
from token_trace.metrics import Metric
from token_trace.replay import model_and_saes, replay
from token_trace.splice import spliced

if TYPE_CHECKING:
    from token_trace.records import Trace


class Node(NamedTuple):
    """A feature `(hook, position, feature)`, or the error node of a position when feature == -1."""

    hook_name: str
    position: int
    feature: int


def nodes_in(table: pd.DataFrame) -> list[Node]:
    """The nodes of a node table's rows (e.g. `trace.top_nodes(20)`), in row order."""
    return [
        Node(str(hook), int(position), int(feature))
        for hook, position, feature in zip(table["hook_name"], table["position"], table["feature"])
    ]


@torch.no_grad()
def _metric(model: Model, tokens: torch.Tensor, metric: Metric) -> torch.Tensor:
    return metric(logits_at(model, final_residual(model, tokens), metric.positions))


@torch.no_grad()
def sae_leaves(
    model: Model, saes: Mapping[str, SAE], tokens: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every SAE's features `[batch, pos, d_sae]` and errors `[batch, pos, d_in]` on `tokens`
    (the baseline values of a counterfactual run)."""
    with spliced(model, saes) as leaves:
        final_residual(model, tokens)
    return leaves.features, leaves.errors


def ablation_effects(
    model: Model,
    saes: Mapping[str, SAE],
    tokens: torch.Tensor,
    metric: Metric,
    node_sets: Sequence[Sequence[Node]],
    baseline_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """`m(clean) - m(nodes of set k at their baseline value)` for each set k, shape `[K]`.

    The baseline value is 0 (zero ablation) or the node's value on `baseline_tokens`. Other nodes
    keep the value they take in the edited run: SAEs below an edit re-encode what they receive, with
    their error terms recomputed, exactly as in the model with all SAEs spliced in.
    """
    n_sets = len(node_sets)
    batch = tokens.expand(n_sets, -1)
    if baseline_tokens is None:
        base_features = base_errors = None
    else:
        base_features, base_errors = sae_leaves(model, saes, baseline_tokens)

    masks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for row, nodes in enumerate(node_sets):
        for node in nodes:
            if node.hook_name not in saes:
                raise ValueError(f"No SAE at {node.hook_name!r} to ablate a node of.")
            if node.hook_name not in masks:
                sae = saes[node.hook_name]
                feature_mask = torch.zeros(n_sets, tokens.shape[1], sae.cfg.d_sae, dtype=torch.bool)
                masks[node.hook_name] = (
                    feature_mask,
                    torch.zeros(n_sets, tokens.shape[1], dtype=torch.bool),
                )
            feature_mask, error_mask = masks[node.hook_name]
            if node.feature < 0:
                error_mask[row, node.position] = True
            else:
                feature_mask[row, node.position, node.feature] = True

    def edit(
        hook_name: str, features: torch.Tensor, error: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if hook_name not in masks:
            return features, error
        feature_mask, error_mask = (m.to(features.device) for m in masks[hook_name])
        feature_base = 0.0 if base_features is None else base_features[hook_name]
        error_base = 0.0 if base_errors is None else base_errors[hook_name]
        return (
            torch.where(feature_mask, feature_base, features),
            torch.where(error_mask.unsqueeze(-1), error_base, error),
        )

    clean = _metric(model, tokens, metric)
    with torch.no_grad(), spliced(model, saes, edit):
        ablated = metric(logits_at(model, final_residual(model, batch), metric.positions))
    return clean - ablated


def ablate(
    result: Trace,
    node_sets: Sequence[Sequence[Node]],
    *,
    model: Model | None = None,
    saes: Mapping[str, SAE] | None = None,
    device: str | None = None,
) -> np.ndarray:
    """The real effect `m(clean) - m(nodes at baseline)` of each node set, for a finished trace.

    Checks a trace's estimates against the thing they estimate: the prompt, metric and baseline
    are taken from `result` (`token_trace.replay`); the model and SAEs are loaded by name (cached)
    unless given. For custom metrics call `ablation_effects` with the metric itself.
    """
    model, saes = model_and_saes(result, model, saes, device)
    inputs = replay(result, model)
    effects = ablation_effects(
        model, saes, inputs.tokens, inputs.metric, node_sets, inputs.baseline_tokens
    )
    return effects.cpu().numpy()


@dataclass(frozen=True)
class Verification:
    """Estimates of a trace against real interventions: its top nodes one at a time, and each
    SAE layer as a whole (every node of the layer at its baseline)."""

    nodes: pd.DataFrame
    """The top-k nodes (the node table's columns) with `real`, the measured effect."""
    layers: pd.DataFrame
    """Per layer: `hook_name`, `layer`, `estimate` (summed attribution), `real`."""
    sign_agreement: float
    """Share of the top nodes whose estimate has the real effect's sign."""
    rank_correlation: float
    """Spearman correlation of estimates and real effects over the top nodes."""

    @property
    def layers_with_wrong_sign(self) -> list[str]:
        """Layers whose summed estimate and real whole-layer effect disagree in sign."""
        wrong = np.sign(self.layers["estimate"]) != np.sign(self.layers["real"])
        return self.layers.loc[wrong, "hook_name"].astype(str).tolist()


def verify(
    result: Trace,
    k: int = 20,
    *,
    exclude_bos: bool = True,
    model: Model | None = None,
    saes: Mapping[str, SAE] | None = None,
    device: str | None = None,
) -> Verification:
    """Check a trace by real ablations: its `k` largest nodes one at a time, and each SAE layer
    whole, in one batched rerun (one batch row per node set)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    top = result.top_nodes(k, exclude_bos=exclude_bos)
    layer_rows = [result.nodes[result.nodes["hook_name"] == hook] for hook in result.hook_names]
    node_sets = [[node] for node in nodes_in(top)] + [nodes_in(rows) for rows in layer_rows]
    real = ablate(result, node_sets, model=model, saes=saes, device=device)
    top = top.assign(real=real[: len(top)])
    layers = pd.DataFrame(
        {
            "hook_name": result.hook_names,
            "layer": [record.layer for record in result.saes],
            "estimate": [float(rows["attribution"].sum()) for rows in layer_rows],
            "real": real[len(top) :],
        }
    )
    estimate = top["attribution"].to_numpy()
    signs = float((np.sign(estimate) == np.sign(top["real"].to_numpy())).mean())
    ranks = top["real"].rank().corr(top["attribution"].rank()) if len(top) > 1 else 1.0
    return Verification(top, layers, signs, float(ranks))
