"""A short readable label for each feature node, wherever a feature appears (node tables, graphs,
a dataset's features).

Two sources, one column:
- bundled releases (the offline `ioi-demo`): built from the feature cards shipped with its
  weights, with no network and no retraining: the tokens it fires on most and the tokens it
  promotes most, e.g. `"Mary", " John" → promotes " Mary"` (`card_label`);
- SAEs Neuronpedia hosts (`SAERecord.neuronpedia_id`): the feature's best explanation
  (`token_trace.explanations`), from the disk cache, and from Neuronpedia only with
  `online=True`.

Error nodes, token embeddings, the metric and features neither source knows get "". Neuronpedia's
explanation wins where both exist.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from token_trace.explanations import Neuronpedia, explanations
from token_trace.nodes import LABEL_COLUMN


class SAERecord(Protocol):
    """What labels need of an SAE (`records.SAERecord` has it; `records` imports this module)."""

    hook_name: str
    release: str | None
    neuronpedia_id: str | None


#: Top-activating tokens and promoted tokens a card label names.
CARD_TOKENS = 3
CARD_PROMOTED = 2


def card_label(card: Mapping[str, Any]) -> str:
    """`"Mary", " John" → promotes " Mary"`: the distinct tokens of the card's top-activating
    contexts (strongest first) and the tokens whose logits it raises most."""
    contexts = sorted(card.get("contexts") or (), key=lambda c: -float(c["activation"]))
    firing = list(dict.fromkeys(c["tokens"][c["index"]] for c in contexts))[:CARD_TOKENS]
    promoted = [token for token, effect in card.get("top_logits") or () if effect > 0]
    parts = [", ".join(map(_quoted, firing))] if firing else []
    if promoted:
        parts.append("→ promotes " + ", ".join(map(_quoted, promoted[:CARD_PROMOTED])))
    return " ".join(parts)


def labels_for(
    nodes: pd.DataFrame,
    saes: Sequence[SAERecord],
    *,
    online: bool = False,
    neuronpedia: Neuronpedia | None = None,
) -> pd.Series:
    """One label per row of `nodes` (any frame with `hook_name`, `feature` and `node_type`:
    a trace's nodes, a graph's, a dataset's features), aligned with its index; "" where none.

    `saes` are the run's SAE records (`Trace.saes`). With `online`, features Neuronpedia hosts
    that the cache lacks are fetched (at most `neuronpedia.max_fetch`, largest |attribution|
    first when the frame has that column, else in row order); without it nothing touches the
    network. Network trouble only leaves labels empty.
    """
    missing = {"hook_name", "feature", "node_type"} - set(nodes.columns)
    if missing:
        raise ValueError(f"labels_for needs the columns {sorted(missing)} in the node frame.")
    out = np.full(len(nodes), "", dtype=object)
    is_feature = nodes["node_type"].astype(str).to_numpy() == "feature"
    hooks = nodes["hook_name"].astype(object).to_numpy()
    features = nodes["feature"].to_numpy(dtype=np.int64)
    hosted: list[tuple[str, np.ndarray]] = []
    for record in saes:
        rows = np.flatnonzero(is_feature & (hooks == record.hook_name))
        if rows.size == 0:
            continue
        local = _bundled_labels(record.release, record.hook_name)
        known = rows[(features[rows] >= 0) & (features[rows] < local.size)]
        out[known] = local[features[known]]
        if record.neuronpedia_id:
            hosted.append((record.neuronpedia_id, rows))
    if hosted:
        _add_explanations(out, nodes, features, hosted, online, neuronpedia)
    return pd.Series(out, index=nodes.index, name=LABEL_COLUMN, dtype="str")


def _add_explanations(
    out: np.ndarray,
    nodes: pd.DataFrame,
    features: np.ndarray,
    hosted: list[tuple[str, np.ndarray]],
    online: bool,
    neuronpedia: Neuronpedia | None,
) -> None:
    """Write Neuronpedia's explanations over `out` where it has one."""
    rows = np.concatenate([r for _, r in hosted])
    ids = np.concatenate([np.full(r.size, nid, dtype=object) for nid, r in hosted])
    if "attribution" in nodes.columns:
        weight = np.abs(nodes["attribution"].to_numpy(dtype=np.float64)[rows])
        order = np.argsort(-np.nan_to_num(weight), kind="stable")
    else:
        order = np.argsort(rows, kind="stable")
    wanted = pd.DataFrame({"nid": ids[order], "feature": features[rows[order]], "row": rows[order]})
    unique = wanted.drop_duplicates(["nid", "feature"])
    found = explanations(
        zip(unique["nid"], unique["feature"]), online=online, neuronpedia=neuronpedia
    ).labels
    answered = pd.DataFrame(
        [(nid, feature, label) for (nid, feature), label in found.items() if label],
        columns=["nid", "feature", "label"],
    )
    hits = wanted.merge(answered.astype({"feature": np.int64}), on=["nid", "feature"])
    out[hits["row"].to_numpy()] = hits["label"].to_numpy(dtype=object)


@functools.lru_cache(maxsize=64)
def _bundled_labels(release: str | None, hook_name: str) -> np.ndarray:
    """Every card label of one bundled SAE, by feature index (empty for other releases)."""
    from token_trace.loading import feature_card  # loading imports TransformerLens

    labels = []
    while (card := feature_card(release, hook_name, len(labels))) is not None:
        labels.append(card_label(card))
    return np.asarray(labels, dtype=object)


def _quoted(token: str) -> str:
    """A token in double quotes, escapes visible (so leading spaces and newlines show)."""
    return json.dumps(token, ensure_ascii=False)
