"""Sparse node tensors -> one tidy DataFrame, and the summaries users want from it.

The frame is built column by column from whole arrays (no Python loop per row): a GPT-2 prompt of
128 tokens has about 80,000 active-feature nodes, and building the table must cost next to nothing
beside the model's matrix work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from token_trace.attribution import Attribution
from token_trace.neuronpedia import BASE_URL

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
]


@dataclass(frozen=True)
class SAEInfo:
    """What the table says about one SAE: where it reads, its name, and its Neuronpedia id."""

    hook_name: str
    sae_id: str
    layer: int
    neuronpedia_id: str | None


def residual_layer(hook_name: str) -> int:
    """A hook's depth: `blocks.L.*` is L, except `blocks.L.hook_resid_post`, the input of L + 1.

    With this, a residual SAE at resid_post of the last block sorts after every resid_pre, and the
    number matches Neuronpedia's layer names for GPT-2 (`blocks.11.hook_resid_post` is 12-res-jb).
    """
    parts = hook_name.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        return -1
    return int(parts[1]) + (parts[-1] == "hook_resid_post")


def _categorical(names: Sequence[str], codes: np.ndarray) -> pd.Categorical | np.ndarray:
    if len(set(names)) == len(names):
        return pd.Categorical.from_codes(codes, categories=list(names))
    return np.asarray(names, dtype=object)[codes]


def node_frame(
    attribution: Attribution, saes: Sequence[SAEInfo], str_tokens: Sequence[str]
) -> pd.DataFrame:
    """One row per node, sorted by layer, position, then feature (the error node last)."""
    nodes = attribution.nodes
    hook_index = nodes.hook_index.cpu().numpy()
    position = nodes.position.cpu().numpy()
    feature = nodes.feature.cpu().numpy()
    error_last = np.where(feature < 0, np.iinfo(np.int64).max, feature)
    layer_of_hook = np.array([info.layer for info in saes], dtype=np.int64)
    order = np.lexsort((error_last, position, layer_of_hook[hook_index]))
    hook_index, position, feature = hook_index[order], position[order], feature[order]

    frame = pd.DataFrame(
        {
            "layer": layer_of_hook[hook_index],
            "hook_name": _categorical([info.hook_name for info in saes], hook_index),
            "sae_id": _categorical([info.sae_id for info in saes], hook_index),
            "position": position,
            "token": np.asarray(list(str_tokens), dtype=object)[position],
            "node_type": pd.Categorical.from_codes(
                (feature < 0).astype(np.int8), categories=["feature", "error"]
            ),
            "feature": feature,
            "activation": nodes.activation.cpu().numpy()[order],
            "baseline_activation": nodes.baseline_activation.cpu().numpy()[order],
            "gradient": nodes.gradient.cpu().numpy()[order],
            "attribution": nodes.attribution.cpu().numpy()[order],
        }
    )
    if any(info.neuronpedia_id for info in saes):
        prefixes = np.array(
            [f"{BASE_URL}/{info.neuronpedia_id}/" if info.neuronpedia_id else "" for info in saes],
            dtype=object,
        )[hook_index]
        urls = pd.Series(prefixes) + pd.Series(feature).astype(str)
        frame["neuronpedia_url"] = urls.where((feature >= 0) & (prefixes != ""), None)
    return frame


def _without_bos(df: pd.DataFrame) -> pd.DataFrame:
    bos = df.attrs.get("bos_position")
    return df if bos is None else df[df["position"] != bos]


def top_nodes(
    df: pd.DataFrame,
    k: int = 20,
    *,
    exclude_bos: bool = False,
    node_type: str | None = None,
) -> pd.DataFrame:
    """The k nodes with the largest |attribution| (optionally features or errors only, no BOS)."""
    if exclude_bos:
        df = _without_bos(df)
    if node_type is not None:
        df = df[df["node_type"] == node_type]
    return df.loc[df["attribution"].abs().nlargest(k).index]


def layer_totals(df: pd.DataFrame, *, exclude_bos: bool = False) -> pd.DataFrame:
    """Per SAE layer: summed attribution of its features, of its errors, and the error share.

    Summed over a layer's nodes at all positions, attribution estimates the effect of replacing that
    layer's whole activation by its baseline; `error_share` says how much of that the SAE leaves
    unexplained (|error| / (|features| + |error|)).
    """
    if exclude_bos:
        df = _without_bos(df)
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


def position_totals(df: pd.DataFrame) -> pd.DataFrame:
    """Per token: the mean over SAE layers of the summed attribution of that position's nodes.

    Each layer's sum at a position estimates replacing that position's activation at that layer by
    its baseline; averaging over layers gives one number per token to colour it by.
    """
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
