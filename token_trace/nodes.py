"""Sparse node tensors -> one tidy DataFrame, and the summaries users want from it.

The frame is built column by column from whole arrays (no Python loop per row): a GPT-2 prompt of
128 tokens has about 80,000 active-feature nodes, and building the table must cost next to nothing
beside the model's matrix work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from token_trace.attribution import Attribution
from token_trace.neuronpedia import BASE_URL


class SAEFields(Protocol):
    """What a node table needs of an SAE (`records.SAERecord` has it; `records` imports this
    module, so the table is described by shape, not by import)."""

    hook_name: str
    sae_id: str
    layer: int
    neuronpedia_id: str | None


class _Prompt(Protocol):
    bos_position: int | None


class NodeSource(Protocol):
    """What the table helpers need of a trace: its node table and BOS position."""

    nodes: pd.DataFrame
    prompt: _Prompt


COLUMNS = [
    "layer",
    "hook_name",
    "sae_id",
    "position",
    "token",
    "node_type",
    "feature",
    "activation",
    "baseline_activation",
    "gradient",
    "attribution",
    "neuronpedia_url",
]

#: The numeric columns a table is built from; every other column follows from them.
VALUE_COLUMNS = ("activation", "baseline_activation", "gradient", "attribution")

#: The optional column of readable feature labels (`token_trace.labels`; "" where none), after
#: `COLUMNS` when present.
LABEL_COLUMN = "label"


def _categorical(names: Sequence[str], codes: np.ndarray) -> pd.Categorical | np.ndarray:
    if len(set(names)) == len(names):
        return pd.Categorical.from_codes(codes, categories=list(names))
    return np.asarray(names, dtype=object)[codes]


def node_table(
    hook_index: np.ndarray,
    position: np.ndarray,
    feature: np.ndarray,
    values: Mapping[str, Sequence[float] | np.ndarray],
    saes: Sequence[SAEFields],
    tokens: Sequence[str],
) -> pd.DataFrame:
    """The node table in `COLUMNS` order, with the same dtypes however it is built.

    `hook_index` indexes `saes`, `position` indexes `tokens`, `feature` is -1 for error nodes, and
    `values` holds the `VALUE_COLUMNS`. The SAE and token columns are derived here, so a table
    rebuilt from a saved trace is identical to the one the engine made.
    """
    hook_index = np.asarray(hook_index, dtype=np.int64)
    position = np.asarray(position, dtype=np.int64)
    feature = np.asarray(feature, dtype=np.int64)
    layer_of_hook = np.array([sae.layer for sae in saes], dtype=np.int64)
    prefixes = np.array(
        [f"{BASE_URL}/{sae.neuronpedia_id}/" if sae.neuronpedia_id else "" for sae in saes],
        dtype=object,
    )[hook_index]
    urls = pd.Series(prefixes, dtype=object) + pd.Series(feature).astype(str).astype(object)
    has_page = (feature >= 0) & (prefixes != "")
    return pd.DataFrame(
        {
            "layer": layer_of_hook[hook_index],
            "hook_name": _categorical([sae.hook_name for sae in saes], hook_index),
            "sae_id": _categorical([sae.sae_id for sae in saes], hook_index),
            "position": position,
            "token": np.asarray(list(tokens), dtype=object)[position],
            "node_type": pd.Categorical.from_codes(
                (feature < 0).astype(np.int8), categories=["feature", "error"]
            ),
            "feature": feature,
            **{name: np.asarray(values[name], dtype=np.float32) for name in VALUE_COLUMNS},
            "neuronpedia_url": urls.where(has_page, None).astype(object),
        }
    )


def node_frame(
    attribution: Attribution, saes: Sequence[SAEFields], tokens: Sequence[str]
) -> pd.DataFrame:
    """One prompt's engine result as a node table, sorted by layer, position, then feature (the
    error node last). Built from whole arrays: no Python loop per row."""
    nodes = attribution.nodes
    hook_index = nodes.hook_index.cpu().numpy()
    position = nodes.position.cpu().numpy()
    feature = nodes.feature.cpu().numpy()
    error_last = np.where(feature < 0, np.iinfo(np.int64).max, feature)
    layer_of_hook = np.array([sae.layer for sae in saes], dtype=np.int64)
    order = np.lexsort((error_last, position, layer_of_hook[hook_index]))
    values = {name: getattr(nodes, name).cpu().numpy()[order] for name in VALUE_COLUMNS}
    return node_table(hook_index[order], position[order], feature[order], values, saes, tokens)


def error_share(nodes: pd.DataFrame) -> float:
    """Share of the SAE nodes' `influence` carried by error nodes: how much of a graph's flow the
    SAEs leave unexplained (0 when nothing carries influence)."""
    sae_nodes = nodes[nodes["node_type"].isin(["feature", "error"])]
    total = float(sae_nodes["influence"].sum())
    errors = float(sae_nodes.loc[sae_nodes["node_type"] == "error", "influence"].sum())
    return errors / total if total > 0 else 0.0


def _table_and_bos(nodes: NodeSource | pd.DataFrame) -> tuple[pd.DataFrame, int | None]:
    """A trace's table and BOS position; for a bare DataFrame from `compute_node_attribution`,
    the BOS position its `attrs` carry (the one place the library still reads them)."""
    if isinstance(nodes, pd.DataFrame):
        return nodes, nodes.attrs.get("bos_position")
    return nodes.nodes, nodes.prompt.bos_position


def without_bos(nodes: NodeSource | pd.DataFrame) -> pd.DataFrame:
    """The node table without the BOS position's rows."""
    df, bos = _table_and_bos(nodes)
    return df if bos is None else df[df["position"] != bos]


def top_nodes(
    nodes: NodeSource | pd.DataFrame,
    k: int = 20,
    *,
    exclude_bos: bool = False,
    node_type: str | None = None,
) -> pd.DataFrame:
    """The k nodes with the largest |attribution| (optionally features or errors only, no BOS).

    `k` = 0 means every node, largest first; a negative `k` is an error.
    """
    if k < 0:
        raise ValueError(f"k must be 0 (every node) or more, got {k}.")
    df = without_bos(nodes) if exclude_bos else _table_and_bos(nodes)[0]
    if node_type is not None:
        df = df[df["node_type"] == node_type]
    return df.loc[df["attribution"].abs().nlargest(k or len(df)).index]


def layer_totals(nodes: NodeSource | pd.DataFrame, *, exclude_bos: bool = False) -> pd.DataFrame:
    """Per SAE layer: summed attribution of its features, of its errors, and the error share.

    Summed over a layer's nodes at all positions, attribution estimates the effect of replacing that
    layer's whole activation by its baseline; `error_share` says how much of that the SAE leaves
    unexplained (|error| / (|features| + |error|)).
    """
    df = without_bos(nodes) if exclude_bos else _table_and_bos(nodes)[0]
    sums = df.pivot_table(
        index=["layer", "hook_name"],
        columns="node_type",
        values="attribution",
        aggfunc="sum",
        fill_value=0.0,
        observed=True,
    ).reindex(columns=["feature", "error"], fill_value=0.0)
    out = pd.DataFrame(
        {
            "features": sums["feature"],
            "error": sums["error"],
            "total": sums["feature"] + sums["error"],
        }
    )
    magnitude = out["features"].abs() + out["error"].abs()
    out["error_share"] = (out["error"].abs() / magnitude.where(magnitude > 0)).fillna(0.0)
    return out.reset_index()


def position_totals(nodes: NodeSource | pd.DataFrame) -> pd.DataFrame:
    """Per token: the mean over SAE layers of the summed attribution of that position's nodes.

    Each layer's sum at a position estimates replacing that position's activation at that layer by
    its baseline; averaging over layers gives one number per token to colour it by.
    """
    df = _table_and_bos(nodes)[0]
    per_layer = df.groupby(["position", "layer"], observed=True)["attribution"].sum()
    totals = per_layer.groupby(level="position").mean()
    tokens = df.drop_duplicates("position").set_index("position")["token"]
    return pd.DataFrame(
        {
            "position": totals.index,
            "token": tokens.loc[totals.index].values,
            "attribution": totals.values,
        }
    )
