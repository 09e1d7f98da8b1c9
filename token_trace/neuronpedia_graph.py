"""A `Graph` as Neuronpedia's attribution-graph JSON, the format its graph viewer reads and uploads.

Top level `metadata`, `qParams`, `nodes`, `links`. Node ids, `jsNodeId`, `feature_type` strings and
the encoding of a feature's (layer, index) in its `feature` field follow circuit-tracer's writer,
the reference for the viewer: a feature's `feature` is the Cantor pairing of its layer and index,
and with `metadata.feature_details.neuronpedia_source_set` (e.g. `res-jb`) the viewer opens the
dashboard `{scan}/{layer}-{source set}/{index}`. Layers are residual depths, which for GPT-2's
res-jb SAEs are Neuronpedia's own layer names (`blocks.11.hook_resid_post` is `12-res-jb`).

Node `influence` is the cumulative share of influence at that node's rank (nodes sorted by
influence, largest first), as circuit-tracer writes it for the viewer's pruning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from token_trace.nodes import LABEL_COLUMN

if TYPE_CHECKING:
    from token_trace.graph import Graph
    from token_trace.records import Trace

SCHEMA_VERSION = 1
#: Neuronpedia's node types, as its viewer knows them.
FEATURE_TYPES = {
    "embedding": "embedding",
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "metric": "logit",
}


def cantor_pair(layer: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The viewer's single integer for (layer, feature index)."""
    return (layer + index) * (layer + index + 1) // 2 + index


def source_set(graph: Graph) -> tuple[str | None, str | None]:
    """The Neuronpedia model id (`scan`) and source set (`res-jb`) shared by all the graph's SAEs,
    read from their Neuronpedia ids (`gpt2-small/6-res-jb`); Nones where they have none or differ.
    """
    ids = {record.layer: record.neuronpedia_id for record in graph.trace.saes}
    parsed = set()
    for layer, neuronpedia_id in ids.items():
        if neuronpedia_id is None or "/" not in neuronpedia_id:
            return None, None
        scan, sae = neuronpedia_id.split("/", 1)
        prefix = f"{layer}-"
        if not sae.startswith(prefix):
            return scan, None
        parsed.add((scan, sae.removeprefix(prefix)))
    if len(parsed) != 1:
        return None, None
    ((scan, source),) = parsed
    return scan, source


def _cumulative_influence(influence: np.ndarray) -> np.ndarray:
    order = np.argsort(-influence, kind="stable")
    total = influence.sum()
    cumulative = np.cumsum(influence[order]) / (total if total > 0 else 1.0)
    out = np.empty_like(cumulative)
    out[order] = cumulative
    return out


def _metric_label(result: Trace) -> str:
    return f"{result.metric.description} = {result.metric.value:.4g}"


def _labels(nodes: pd.DataFrame, is_feature: np.ndarray) -> np.ndarray:
    """The features' labels (`Graph.with_labels`) as their `clerp`, the text the viewer shows."""
    if LABEL_COLUMN not in nodes.columns:
        return np.full(len(nodes), "", dtype=object)
    return np.where(is_feature, nodes[LABEL_COLUMN].fillna("").to_numpy(dtype=object), "").astype(
        object
    )


def _target_probability(result: Trace) -> float:
    """The model's probability of the metric's target token (0 when it is not among the top)."""
    by_token = {p.token: p.probability for p in result.top_predictions}
    return float(by_token.get(result.prompt.target, 0.0))


def graph_json(graph: Graph, slug: str | None = None) -> dict[str, Any]:
    """The graph (its kept nodes and edges) in Neuronpedia's attribution-graph format."""
    result = graph.trace
    nodes = graph.nodes
    scan, source = source_set(graph)
    kind = nodes["node_type"].astype(str).to_numpy()
    layer = nodes["layer"].to_numpy()
    feature = nodes["feature"].to_numpy()
    position = nodes["position"].to_numpy()
    token_ids = np.asarray(result.prompt.token_ids)
    cumulative = _cumulative_influence(nodes["influence"].to_numpy())
    layer_names = np.where(kind == "embedding", "E", layer.astype(str))
    is_feature = kind == "feature"
    is_sae = is_feature | (kind == "error")
    feature_field = np.where(
        is_feature,
        cantor_pair(layer, np.maximum(feature, 0)),
        np.where(kind == "embedding", position, feature),
    )
    js_ids = np.select(
        [kind == "feature", kind == "error", kind == "embedding"],
        [
            pd.Series(layer_names).astype(str) + "_" + pd.Series(feature).astype(str) + "-0",
            pd.Series(layer_names).astype(str) + "_-1-" + pd.Series(position).astype(str),
            "E_"
            + pd.Series(token_ids[np.clip(position, 0, len(token_ids) - 1)]).astype(str)
            + "-"
            + pd.Series(position).astype(str),
        ],
        default="L_" + pd.Series(feature).astype(str) + "-" + pd.Series(position).astype(str),
    )
    table = pd.DataFrame(
        {
            "node_id": nodes["node_id"].to_numpy(dtype=object),
            "feature": pd.Series(feature_field, dtype=object).where(kind != "error", None),
            "layer": layer_names.astype(object),
            "ctx_idx": position.astype(int),
            "feature_type": pd.Series(kind).map(FEATURE_TYPES).to_numpy(dtype=object),
            "jsNodeId": js_ids.astype(object),
            "clerp": np.where(kind == "metric", _metric_label(result), _labels(nodes, is_feature)),
            "influence": cumulative.astype(float),
            "activation": nodes["activation"].where(pd.Series(is_sae), None).astype(object),
            "is_target_logit": kind == "metric",
            "token_prob": np.where(kind == "metric", _target_probability(result), 0.0),
        }
    )
    entries = table.to_dict(orient="records")
    links = graph.edges[["source", "target", "weight"]].astype({"weight": float})
    prompt = result.prompt.text if result.prompt.text is not None else "".join(result.prompt.tokens)
    metadata: dict[str, Any] = {
        "slug": slug or "token-trace-graph",
        "scan": scan or result.model,
        "prompt_tokens": list(result.prompt.tokens),
        "prompt": prompt,
        "node_threshold": graph.node_threshold,
        "schema_version": SCHEMA_VERSION,
        "info": {
            "generator": {"name": "token-trace"},
            "metric": result.metric.description,
            "baseline": result.baseline,
            "error_share": graph.error_share,
        },
        "pruning_settings": {
            "node_threshold": graph.node_threshold,
            "edge_threshold": graph.edge_threshold,
        },
        "generation_settings": {"max_nodes": graph.max_nodes, "method": result.method},
    }
    if source is not None:
        metadata["feature_details"] = {"neuronpedia_source_set": source}
    return {
        "metadata": metadata,
        "qParams": {
            "pinnedIds": [],
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": entries,
        "links": links.to_dict(orient="records"),
    }
