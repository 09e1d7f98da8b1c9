"""A `Graph` as Neuronpedia's attribution-graph JSON, the file its graph viewer reads and uploads.

Top level `metadata`, `qParams`, `nodes`, `links`. Node ids, `jsNodeId`, `feature_type` strings,
the fields of each node and the encoding of a feature's (layer, index) in its `feature` field
follow circuit-tracer's writer (`circuit_tracer/frontend/graph_models.py`), the reference for the
viewer: a feature's `feature` is the Cantor pairing of its layer and index, an error's is -1, and
with `metadata.feature_details.neuronpedia_source_set` (e.g. `res-jb`) the viewer opens the
dashboard `{scan}/{layer}-{source set}/{index}`. The graph's layers are residual depths; the
file writes Neuronpedia's own layer names, the depths shifted by one offset per graph (0 for
GPT-2's res-jb, where `blocks.11.hook_resid_post` is `12-res-jb`; 1 for Gemma Scope, where
`blocks.5.hook_resid_post` is `5-gemmascope-res-16k`).

What the viewer reads, and so what this file guarantees:
- it parses the file with the browser's `JSON.parse`, so `dumps` writes strict JSON (null,
  never NaN or Infinity);
- it takes the logit node's target from `Output "<token>" (p=<prob>)` (between the quotes, and
  after `(p=`), so that node's `clerp` says exactly that, with the model's real probability;
  what the metric is goes to `metadata.info`;
- it hides every node whose `influence` exceeds its pruning slider, which starts at
  `metadata.node_threshold`. A node's `influence` is the cumulative share of influence at its
  rank among all candidate nodes (nodes sorted by influence, largest first), as circuit-tracer
  computes it. Pruning keeps, as circuit-tracer's does, the nodes up to the first rank whose
  share reaches the threshold, so the last kept node's share can pass it a little: the file's
  `node_threshold` is the share the kept nodes reach (never below the threshold asked for, which
  `pruning_settings` records), and every kept node is visible at the viewer's default.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from token_trace.nodes import LABEL_COLUMN
from token_trace.records import Trace


class Graph(Protocol):
    """What the file is written from (`graph.Graph` has it; `graph` imports this module, so the
    graph is described by shape, not by import)."""

    trace: Trace
    nodes: pd.DataFrame
    edges: pd.DataFrame
    candidate_nodes: pd.DataFrame
    max_nodes: int | None
    node_threshold: float | None
    edge_threshold: float | None

    @property
    def error_share(self) -> float: ...


SCHEMA_VERSION = 1
#: Neuronpedia's node types, as its viewer knows them.
FEATURE_TYPES = {
    "embedding": "embedding",
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "metric": "logit",
}
DEFAULT_SLUG = "token-trace-graph"


def cantor_pair(layer: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The viewer's single integer for (layer, feature index)."""
    return (layer + index) * (layer + index + 1) // 2 + index


def source_set(graph: Graph) -> tuple[str | None, str | None, int]:
    """The Neuronpedia model id (`scan`) and source set (`res-jb`) shared by all the graph's SAEs,
    read from their Neuronpedia ids (`gpt2-small/6-res-jb`), and how far the graph's layers
    (residual depths) sit above Neuronpedia's layer names: 0 for res-jb, whose
    `blocks.11.hook_resid_post` is `12-res-jb`; 1 for Gemma Scope, whose
    `blocks.5.hook_resid_post` (depth 6) is `5-gemmascope-res-16k`. Nones (and 0) where the SAEs
    have no ids or disagree.
    """
    parsed = set()
    for record in graph.trace.saes:
        neuronpedia_id = record.neuronpedia_id
        if neuronpedia_id is None or "/" not in neuronpedia_id:
            return None, None, 0
        scan, sae = neuronpedia_id.split("/", 1)
        named = re.fullmatch(r"(\d+)-(.+)", sae)
        if named is None:
            return scan, None, 0
        parsed.add((scan, named.group(2), record.layer - int(named.group(1))))
    if len(parsed) != 1:
        return None, None, 0
    ((scan, source, offset),) = parsed
    return scan, source, offset


def file_slug(path: str | Path) -> str:
    """The slug a graph file is saved under: its name, lower case, runs of other characters as
    one `-` (Neuronpedia takes letters, digits, `_` and `-`)."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", Path(path).stem.lower()).strip("-")
    return slug or DEFAULT_SLUG


def cumulative_influence(influence: np.ndarray) -> np.ndarray:
    """Each node's cumulative share of the total influence at its rank, largest first."""
    order = np.argsort(-influence, kind="stable")
    total = influence.sum()
    cumulative = np.cumsum(influence[order]) / (total if total > 0 else 1.0)
    out = np.empty_like(cumulative)
    out[order] = cumulative
    return out


def logit_clerp(token: str, probability: float) -> str:
    """The logit node's label in the one form the viewer parses (circuit-tracer's)."""
    return f'Output "{token}" (p={probability:.3f})'


def _finite_or_none(values: pd.Series) -> np.ndarray:
    """Numbers as Python floats, anything missing or infinite as None (JSON's null)."""
    numbers = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
    return np.where(np.isfinite(numbers), numbers.astype(object), None)


def _model_input(result: Trace) -> str:
    """The text the model read, as its tokens spell it (BOS left out, as in circuit-tracer's
    `prompt`): the same tokens as `prompt_tokens`, whatever was given."""
    tokens = list(result.prompt.tokens)
    if result.prompt.bos_position == 0:
        tokens = tokens[1:]
    return "".join(tokens)


def _generator() -> dict[str, str]:
    try:
        version = package_metadata.version("token-trace")
    except package_metadata.PackageNotFoundError:  # run from a source tree, not installed
        version = "unknown"
    return {"name": "token-trace", "version": version}


def _info(graph: Graph, probability: float | None) -> dict[str, Any]:
    result = graph.trace
    metric = result.metric
    return {
        "description": (
            f"{metric.description} = {metric.value:.4g}, attributed to SAE features and errors "
            f"by attribution patching ({result.baseline} baseline); error nodes carry "
            f"{graph.error_share:.0%} of the kept nodes' influence."
        ),
        "generator": _generator(),
        "metric": {
            "name": metric.name,
            "description": metric.description,
            "value": metric.value if math.isfinite(metric.value) else None,
            "baseline_value": metric.baseline_value,
            "target": result.prompt.target,
            "target_probability": probability,
        },
        "model": result.model,
        "baseline": result.baseline,
        "baseline_text": result.baseline_text,
        "error_share": graph.error_share,
    }


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    """Neuronpedia's schema types these settings as numbers: leave unset ones out."""
    return {name: value for name, value in values.items() if value is not None}


def graph_json(
    graph: Graph,
    slug: str | None = None,
    *,
    pinned: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The graph (its kept nodes and edges) in Neuronpedia's attribution-graph format.

    `pinned`: node ids to pin in the viewer's subgraph (`qParams.pinnedIds`); those the pruning
    dropped are left out. `labels`: node id -> label, shown as the feature nodes' `clerp` (by
    default the nodes' own `label` column, where `Graph.with_labels` wrote one).
    """
    result = graph.trace
    nodes = graph.nodes
    if labels is None and LABEL_COLUMN in nodes.columns:
        labels = dict(zip(nodes["node_id"], nodes[LABEL_COLUMN].fillna("")))
    labels = labels or {}
    scan, source, offset = source_set(graph)
    kind = nodes["node_type"].astype(str).to_numpy()
    # Layers as Neuronpedia names them, so that the viewer opens each feature's own dashboard.
    layer = nodes["layer"].to_numpy() - np.where(kind == "embedding", 0, offset)
    feature = nodes["feature"].to_numpy()
    position = nodes["position"].to_numpy()
    node_id = nodes["node_id"].to_numpy(dtype=object)
    token_ids = np.asarray(result.prompt.token_ids)
    candidates = graph.candidate_nodes
    shares = pd.Series(
        cumulative_influence(candidates["influence"].to_numpy(dtype=float)),
        index=candidates["node_id"],
    )
    influence = shares.reindex(node_id).to_numpy()
    is_metric = kind == "metric"
    is_feature = kind == "feature"
    is_sae = is_feature | (kind == "error")
    probability = result.metric.target_probability
    layer_names = pd.Series(np.where(kind == "embedding", "E", layer.astype(str)))
    # Ids as circuit-tracer writes them, `{layer}_{feature}_{position}` in the file's layers
    # (the graph's own ids when the offset is 0); links and pins are translated with them.
    file_ids = np.where(
        kind == "embedding",
        node_id,
        layer_names + "_" + pd.Series(feature).astype(str) + "_" + pd.Series(position).astype(str),
    ).astype(object)
    renamed = dict(zip(node_id, file_ids))
    feature_field = np.select(
        [is_feature, kind == "error", kind == "embedding"],
        [cantor_pair(layer, np.maximum(feature, 0)), -1, position],
        default=feature,
    )
    positions = pd.Series(position).astype(str)
    js_ids = np.select(
        [is_feature, kind == "error", kind == "embedding"],
        [
            layer_names + "_" + pd.Series(feature).astype(str) + "-0",
            layer_names + "_-1-" + positions,
            "E_"
            + pd.Series(token_ids[np.clip(position, 0, len(token_ids) - 1)]).astype(str)
            + "-"
            + positions,
        ],
        default="L_" + pd.Series(feature).astype(str) + "-" + positions,
    )
    target = result.prompt.target or result.metric.description
    clerps = pd.Series(node_id).map(labels).where(is_feature, "").fillna("")
    clerps[is_metric] = logit_clerp(target, probability or 0.0)
    table = pd.DataFrame(
        {
            "node_id": file_ids,
            "feature": feature_field.astype(int),
            "layer": layer_names.to_numpy(dtype=object),
            "ctx_idx": position.astype(int),
            "feature_type": pd.Series(kind).map(FEATURE_TYPES).to_numpy(dtype=object),
            "jsNodeId": js_ids.astype(object),
            "clerp": clerps.astype(str).to_numpy(dtype=object),
            "influence": _finite_or_none(pd.Series(influence).where(~is_metric)),
            "activation": _finite_or_none(nodes["activation"].where(is_sae)),
            "token_prob": np.where(is_metric, probability or 0.0, 0.0),
            "is_target_logit": is_metric,
            "run_idx": 0,
            "reverse_ctx_idx": 0,
        }
    )
    kept_shares = influence[is_sae]
    floor = 1.0 if graph.node_threshold is None else graph.node_threshold
    visible_at = max([floor, *kept_shares[np.isfinite(kept_shares)].tolist()])
    links = graph.edges[["source", "target", "weight"]].astype({"weight": float})
    links = links.assign(source=links["source"].map(renamed), target=links["target"].map(renamed))
    metadata: dict[str, Any] = {
        "slug": slug or DEFAULT_SLUG,
        "scan": scan or result.model,
        "transcoder_list": [],
        "prompt_tokens": list(result.prompt.tokens),
        "prompt": _model_input(result),
        "node_threshold": visible_at,
        "schema_version": SCHEMA_VERSION,
        "info": _info(graph, probability),
        "pruning_settings": _without_none(
            {"node_threshold": graph.node_threshold, "edge_threshold": graph.edge_threshold}
        ),
        "generation_settings": _without_none(
            {"max_nodes": graph.max_nodes, "method": result.method}
        ),
    }
    if source is not None:
        metadata["feature_details"] = {"neuronpedia_source_set": source}
    return {
        "metadata": metadata,
        "qParams": {
            "pinnedIds": [renamed[i] for i in dict.fromkeys(pinned) if i in renamed],
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": table.to_dict(orient="records"),
        "links": links.to_dict(orient="records"),
    }


def dumps(document: Mapping[str, Any]) -> str:
    """Strict JSON, as `JSON.parse` reads it: a NaN or infinity anywhere is an error here, not a
    blank page in the viewer."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False)


def content_slug(document: Mapping[str, Any]) -> str:
    """`token-trace-` and 12 hex digits of the document's hash (its slug left out): a name two
    different graphs never share, and the same graph always gets."""
    unnamed = {**document, "metadata": {**document["metadata"], "slug": ""}}
    return "token-trace-" + hashlib.sha256(dumps(unnamed).encode("utf-8")).hexdigest()[:12]
