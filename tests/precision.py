"""How far one run's nodes and edges are from a reference run's (bfloat16 model against float32).

Shared by the precision test and `benchmarks/bench_bf16.py`, so the README's numbers and the
test's bars are the same measurement. Nodes are matched by (hook, position, feature) and edges by
(source, target); a node or edge present in only one run counts as 0 in the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from token_trace.graph import Graph

NODE_KEY = ["hook_name", "position", "feature"]


@dataclass(frozen=True)
class NodeAgreement:
    """Node attributions of a run against the reference's."""

    max_error: float  # max |a - a_ref| over all nodes, relative to the largest |a_ref|
    mean_error: float  # the mean of the same
    top_relative_error: float  # max |a - a_ref| / |a_ref| over the reference's top-k nodes
    top_overlap: float  # share of the reference's top-k nodes in the run's top-k
    changed_active: int  # nodes (active features) present in only one of the two runs
    n_nodes: int


@dataclass(frozen=True)
class EdgeAgreement:
    """Graph edges of a run against the reference's. Edges between candidate nodes both runs
    kept are compared weight by weight; the candidates themselves (the top `max_nodes` by
    |attribution|) may differ where two nodes are nearly tied."""

    max_error: float  # max |w - w_ref| over the common edges, relative to the largest |w_ref|
    mean_error: float  # the mean of the same
    sign_agreement: float  # share of the reference's top-k common edges by |w| with the same sign
    candidate_overlap: float  # Jaccard overlap of the two runs' candidate node ids
    kept_overlap: float  # Jaccard overlap of the two pruned graphs' node ids
    n_edges: int  # common edges


def node_agreement(reference: pd.DataFrame, other: pd.DataFrame, k: int = 20) -> NodeAgreement:
    merged = reference[[*NODE_KEY, "attribution"]].merge(
        other[[*NODE_KEY, "attribution"]], on=NODE_KEY, how="outer", suffixes=("_ref", "")
    )
    changed = int(merged.isna().any(axis=1).sum())
    ref = merged["attribution_ref"].fillna(0.0).to_numpy(np.float64)
    run = merged["attribution"].fillna(0.0).to_numpy(np.float64)
    scale = np.abs(ref).max()
    error = np.abs(run - ref) / scale
    top_ref = np.argsort(-np.abs(ref))[:k]
    top_run = np.argsort(-np.abs(run))[:k]
    return NodeAgreement(
        max_error=float(error.max()),
        mean_error=float(error.mean()),
        top_relative_error=float((np.abs(run - ref)[top_ref] / np.abs(ref[top_ref])).max()),
        top_overlap=len(set(top_ref) & set(top_run)) / k,
        changed_active=changed,
        n_nodes=len(merged),
    )


def edge_agreement(reference: Graph, other: Graph, k: int = 100) -> EdgeAgreement:
    key = ["source", "target"]
    merged = reference.candidate_edges[[*key, "weight"]].merge(
        other.candidate_edges[[*key, "weight"]], on=key, suffixes=("_ref", "")
    )
    ref = merged["weight_ref"].to_numpy(np.float64)
    run = merged["weight"].to_numpy(np.float64)
    error = np.abs(run - ref) / np.abs(ref).max()
    top = np.argsort(-np.abs(ref))[:k]
    return EdgeAgreement(
        max_error=float(error.max()),
        mean_error=float(error.mean()),
        sign_agreement=float((np.sign(run[top]) == np.sign(ref[top])).mean()),
        candidate_overlap=_jaccard(reference.candidate_nodes, other.candidate_nodes),
        kept_overlap=_jaccard(reference.nodes, other.nodes),
        n_edges=len(merged),
    )


def _jaccard(a: pd.DataFrame, b: pd.DataFrame) -> float:
    first, second = set(a["node_id"]), set(b["node_id"])
    return len(first & second) / len(first | second)
