"""Graph node ids read back: `{layer}_{feature}_{position}` -> the SAE hook, feature and position.

Interventions and circuit checks take nodes as the ids a graph shows (`node_ids` below:
errors are `{layer}_-1_{position}`, `layer` the SAE record's residual depth), so a user can copy
them from a graph or the app. Every check of an id against the trace (is there an SAE at that
depth, is the feature inside its dictionary, is the position inside the prompt) happens here, with
a message naming the id, before any tensor is touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sae_lens import SAE

from token_trace.records import Trace

#: In place of a position: every position, generated tokens included.
ALL_POSITIONS = "*"
_NODE_ID = re.compile(r"^(-?\d+)_(-1|\d+)_(\d+|\*)$")


@dataclass(frozen=True)
class NodeRef:
    """An SAE node of a trace: a feature (`feature >= 0`) or the error node (`feature == -1`) at
    `hook_name`, at `position` (None: every position)."""

    node_id: str
    hook_name: str
    feature: int
    position: int | None

    @property
    def is_error(self) -> bool:
        return self.feature < 0


def check_syntax(node_id: str) -> None:
    """Raise a ValueError unless `node_id` reads as `{layer}_{feature}_{position or *}`."""
    if not isinstance(node_id, str) or _NODE_ID.match(node_id) is None:
        raise ValueError(
            f"Node {node_id!r} is not a graph node id: use '{{layer}}_{{feature}}_{{position}}' "
            f"(errors '{{layer}}_-1_{{position}}', '{ALL_POSITIONS}' for every position)."
        )


def resolve_node(
    result: Trace,
    saes: Mapping[str, SAE],
    node_id: str,
    *,
    allow_all_positions: bool = False,
) -> NodeRef:
    """The node `node_id` names in `result`, checked against its SAEs and prompt length."""
    check_syntax(node_id)
    layer_text, feature_text, position_text = node_id.split("_")
    layer, feature = int(layer_text), int(feature_text)
    hooks = [record.hook_name for record in result.saes if record.layer == layer]
    if not hooks:
        layers = sorted(record.layer for record in result.saes)
        raise ValueError(
            f"Node {node_id!r}: the trace has no SAE at layer {layer} (it has {layers})."
        )
    if len(hooks) > 1:
        raise ValueError(f"Node {node_id!r}: layer {layer} has several SAEs ({hooks}); ambiguous.")
    (hook,) = hooks
    d_sae = saes[hook].cfg.d_sae
    if feature >= d_sae:
        raise ValueError(
            f"Node {node_id!r}: feature {feature} is outside the SAE at {hook!r} "
            f"({d_sae} features)."
        )
    if position_text == ALL_POSITIONS:
        if not allow_all_positions:
            raise ValueError(f"Node {node_id!r}: '{ALL_POSITIONS}' is not allowed here.")
        return NodeRef(node_id, hook, feature, None)
    position = int(position_text)
    n_tokens = len(result.prompt.token_ids)
    if position >= n_tokens:
        raise ValueError(
            f"Node {node_id!r}: position {position} is past the prompt ({n_tokens} tokens, "
            f"positions 0-{n_tokens - 1})."
        )
    return NodeRef(node_id, hook, feature, position)


def node_ids(layer: np.ndarray, feature: np.ndarray, position: np.ndarray) -> np.ndarray:
    """`{layer}_{feature}_{position}` (errors have feature -1), vectorised: the one place graph
    node ids are written."""
    return (
        pd.Series(layer).astype(str)
        + "_"
        + pd.Series(feature).astype(str)
        + "_"
        + pd.Series(position).astype(str)
    ).to_numpy(dtype=object)
