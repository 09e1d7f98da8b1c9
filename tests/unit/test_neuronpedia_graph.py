"""The graph file against the real viewers: circuit-tracer's pydantic models of the format, the
viewers' own parsing rules (ported line by line below), strict JSON, and the model's real
probability of the target."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from tests.helpers import PROMPT, res_jb_saes
from token_trace import trace
from token_trace.graph import graph_from_trace
from token_trace.neuronpedia_graph import dumps
from token_trace.options import DEFAULT_NODE_THRESHOLD
from token_trace.records import Trace

# --------------------------------------------------------------------------- circuit-tracer
# Written from circuit-tracer's `circuit_tracer/frontend/graph_models.py` (safety-research/
# circuit-tracer @ 196e2ce): the models its writer and local viewer server use. Validated with
# `strict=True`, so a field is accepted only with the JSON type the model names (no null for an
# int, no "3" for a number).


class Metadata(BaseModel):
    slug: str
    scan: str
    transcoder_list: list[str]
    prompt_tokens: list[str]
    prompt: str
    node_threshold: float | None = None
    schema_version: int | None = 1


class QParams(BaseModel):
    pinnedIds: list[str]
    supernodes: list[list[str]]
    linkType: str
    clickedId: str
    sg_pos: str


class Node(BaseModel):
    node_id: str
    feature: int
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None


class Link(BaseModel):
    source: str
    target: str
    weight: float


class Model(BaseModel):
    metadata: Metadata
    qParams: QParams
    nodes: list[Node]
    links: list[Link]


# --------------------------------------------------------------------------- the viewers' rules
# Ported from Neuronpedia's viewer, `apps/webapp/app/[modelId]/graph/utils.ts` (read at
# zazer0/neuronpedia @ 01ad4b4, a mirror of hijohnnylin/neuronpedia): `addVirtualDiff`,
# `formatCLTGraphData`, `shouldShowNodeForInfluenceThreshold`, `filterNodes`; and from
# circuit-tracer's local viewer, `circuit_tracer/frontend/assets/attribution_graph/util-cg.js`
# (`formatData`; read at the fork vibhusapra/circuit-tracer @ 8b6d10a).


def js_number(text: str) -> float:
    """JavaScript's unary `+` on a string (`Number(text)`)."""
    if not text.strip():
        return 0.0
    try:
        return float(text)
    except ValueError:
        return math.nan


def logit_token(clerp: str) -> str | None:
    """`d.logitToken = d.clerp?.split('"')[1]?.split('" k(p=')[0]` (both viewers)."""
    parts = clerp.split('"')
    return parts[1].split('" k(p=')[0] if len(parts) > 1 else None


def logit_pct(clerp: str) -> float:
    """`d.logitPct = +d.clerp.split('(p=')[1].split(')')[0]` (both viewers); a clerp without
    `(p=` throws there (`split` of undefined), an IndexError here."""
    return js_number(clerp.split("(p=")[1].split(")")[0])


def max_layer(nodes: list[dict]) -> float:
    """`d3.max(nodes.filter(d => d.feature_type !== 'logit'), d => +d.layer)`: NaN ('E') is
    skipped; Neuronpedia throws 'No layer found' when the result is falsy."""
    layers = [js_number(n["layer"]) for n in nodes if n["feature_type"] != "logit"]
    return max((v for v in layers if not math.isnan(v)), default=math.nan)


def neuronpedia_shows(node: dict, threshold: float, pinned=(), clicked=None) -> bool:
    """`shouldShowNodeForInfluenceThreshold` (the slider at `threshold`); `nodeId` is `node_id`
    for every scan but Anthropic's own models."""
    if node["feature_type"] in ("embedding", "logit"):
        return True
    if node["node_id"] in pinned or node["node_id"] == clicked:
        return True
    if node.get("influence") is not None and threshold is not None:
        return node["influence"] <= threshold
    return True


def circuit_tracer_shows(node: dict, threshold: float, pinned=()) -> bool:
    """util-cg.js: `d.feature_type === 'embedding' || d.feature_type === 'logit' ||
    d.influence <= parseFloat(visState.pruningThreshold) || pinnedIds.includes(d.nodeId)`
    (a missing influence compares false)."""
    influence = node.get("influence")
    return (
        node["feature_type"] in ("embedding", "logit")
        or (influence is not None and influence <= threshold)
        or node["node_id"] in pinned
    )


# --------------------------------------------------------------------------- tests


def refuse(constant: str) -> None:
    raise AssertionError(f"the file holds {constant}, which JSON.parse refuses")


@pytest.fixture(scope="module")
def written(ioi_graph, tmp_path_factory) -> tuple[str, dict]:
    path = ioi_graph.save_neuronpedia(tmp_path_factory.mktemp("graph") / "IOI graph.json")
    text = path.read_text()
    return text, json.loads(text, parse_constant=refuse)


def test_the_file_is_strict_json_and_fits_circuit_tracers_models(ioi_graph, written):
    text, document = written
    assert text == dumps(ioi_graph.to_neuronpedia("ioi-graph"))  # the one strict writer
    Model.model_validate(document, strict=True)
    assert document["metadata"]["slug"] == "ioi-graph"
    assert document["metadata"]["transcoder_list"] == []
    # the dict the app's API returns holds no NaN either
    json.dumps(ioi_graph.to_neuronpedia(), allow_nan=False)
    errors = [n for n in document["nodes"] if n["feature_type"] == "mlp reconstruction error"]
    assert errors and all(n["feature"] == -1 for n in errors)
    tokens = [n for n in document["nodes"] if n["feature_type"] == "embedding"]
    assert tokens and all(n["activation"] is None for n in tokens)


def test_the_viewers_read_every_node_as_the_graph_says(ioi_graph, written):
    _, document = written
    meta, nodes = document["metadata"], document["nodes"]
    ids = {n["node_id"] for n in nodes}
    assert len(ids) == len(nodes) == len(ioi_graph.nodes)
    assert all(link["source"] in ids and link["target"] in ids for link in document["links"])
    assert len(document["links"]) == len(ioi_graph.edges)
    assert max_layer(nodes)  # Neuronpedia: `if (!maxLayer) throw new Error('No layer found')`
    for node in nodes:
        assert isinstance(node["feature"], int) and not isinstance(node["feature"], bool)
        if node["feature_type"] in ("embedding", "mlp reconstruction error"):
            assert isinstance(meta["prompt_tokens"][node["ctx_idx"]], str)
    assert {n["feature_type"] for n in nodes if "error" in n["feature_type"]} == {
        "mlp reconstruction error"
    }
    # the prompt is what the model read, spelled by the same tokens (BOS left out)
    assert meta["prompt"] == "".join(meta["prompt_tokens"][1:])
    assert meta["prompt_tokens"][0] == "<|endoftext|>"


def test_the_logit_node_names_the_target_and_its_real_probability(ioi_graph, written, model):
    _, document = written
    (logit,) = [n for n in document["nodes"] if n["feature_type"] == "logit"]
    result = ioi_graph.trace
    with torch.no_grad():
        logits = model(torch.tensor([result.prompt.token_ids]))[0, -1]
    answer = model.to_single_token(" Mary")
    expected = float(logits.softmax(-1)[answer])
    assert logit["is_target_logit"] and logit["feature"] == answer
    assert logit_token(logit["clerp"]) == " Mary"
    assert logit_pct(logit["clerp"]) == pytest.approx(expected, abs=5e-4)
    assert logit["token_prob"] == pytest.approx(expected, rel=1e-4)
    # the defect this guards against: the target is outside the recorded top predictions
    assert " Mary" not in {p.token for p in result.top_predictions}
    # what the metric is lives in metadata.info, not in the clerp
    info = document["metadata"]["info"]
    assert info["metric"]["description"] == "logit(' Mary') - logit(' John')"
    assert info["metric"]["value"] == pytest.approx(result.metric.value)
    assert info["generator"]["name"] == "token-trace"


def test_at_the_files_threshold_every_kept_node_is_visible(ioi_graph, written):
    _, document = written
    nodes, threshold = document["nodes"], document["metadata"]["node_threshold"]
    assert all(neuronpedia_shows(node, threshold) for node in nodes)
    assert all(circuit_tracer_shows(node, threshold) for node in nodes)
    # the slider starts where the kept nodes end: at least the pruning threshold asked for,
    # and exactly the share the last kept node reaches (a tighter slider hides it)
    asked = document["metadata"]["pruning_settings"]["node_threshold"]
    sae = [n for n in nodes if n["feature_type"] not in ("embedding", "logit")]
    last = max(n["influence"] for n in sae)
    assert asked == DEFAULT_NODE_THRESHOLD and threshold == max(asked, last)
    assert not all(neuronpedia_shows(node, last - 1e-9) for node in nodes)


def test_influence_is_the_cumulative_share_among_all_candidates(ioi_graph, written):
    _, document = written
    candidates = ioi_graph.candidate_nodes.set_index("node_id")["influence"].to_numpy()
    by_id = ioi_graph.candidate_nodes.set_index("node_id")["influence"]
    assert len(candidates) > len(ioi_graph.nodes)  # pruning dropped some
    for node in document["nodes"]:
        if node["feature_type"] == "logit":
            assert node["influence"] is None
            continue
        own = by_id[node["node_id"]]
        # at its rank: all larger nodes, itself, and (ties rank in any order) some equal ones
        least = (candidates[candidates > own].sum() + own) / candidates.sum()
        most = candidates[candidates >= own].sum() / candidates.sum()
        assert least * (1 - 1e-9) <= node["influence"] <= most * (1 + 1e-9)


def test_labels_and_pinned_nodes_reach_the_viewer(ioi_graph):
    feature_ids = ioi_graph.nodes.loc[ioi_graph.nodes["node_type"] == "feature", "node_id"]
    first, second = feature_ids.iloc[0], feature_ids.iloc[1]
    error_id = ioi_graph.nodes.loc[ioi_graph.nodes["node_type"] == "error", "node_id"].iloc[0]
    dropped = sorted(set(ioi_graph.candidate_nodes["node_id"]) - set(ioi_graph.nodes["node_id"]))
    labels = {first: "names after 'and'", error_id: "ignored: the viewer labels errors itself"}
    document = ioi_graph.to_neuronpedia(
        "ioi", pinned=[second, dropped[0], first, second], labels=labels
    )
    assert document["qParams"]["pinnedIds"] == [second, first]
    by_id = {n["node_id"]: n for n in document["nodes"]}
    assert by_id[first]["clerp"] == "names after 'and'"
    assert by_id[second]["clerp"] == "" and by_id[error_id]["clerp"] == ""
    QParams.model_validate(document["qParams"], strict=True)


def test_a_default_metric_graph_carries_the_probability_of_the_last_token(model):
    """The log-probability metric: the model's probability of the prompt's last token, read
    again from a plain forward pass."""
    saes = res_jb_saes(model)
    result = trace(PROMPT, model, saes)
    graph = graph_from_trace(result, model=model, saes=saes, max_nodes=30)
    (logit,) = [n for n in graph.to_neuronpedia()["nodes"] if n["feature_type"] == "logit"]
    with torch.no_grad():
        logits = model(torch.tensor([result.prompt.token_ids]))[0, -1]
    target = result.metric.token_ids[0]
    assert logit["token_prob"] == pytest.approx(float(logits.softmax(-1)[target]), rel=1e-4)
    assert logit_token(logit["clerp"]) == result.prompt.target == " to"


def test_a_trace_saved_before_the_probability_was_recorded_still_gets_it(ioi_graph, model):
    saved = json.loads(ioi_graph.trace.to_json())
    del saved["metric"]["target_probability"]  # the layout of earlier files
    old = Trace.from_json(json.dumps(saved))
    assert old.metric.target_probability is None
    again = graph_from_trace(old, model=model, saes=res_jb_saes(model), max_nodes=60)
    probability = again.trace.metric.target_probability
    assert probability == pytest.approx(ioi_graph.trace.metric.target_probability, rel=1e-6)
    assert again.trace == replace(old, metric=replace(old.metric, target_probability=probability))


def test_nothing_missing_becomes_nan(ioi_graph):
    """A node table with a missing activation (and an infinite one) still writes strict JSON."""
    nodes = ioi_graph.nodes.copy()
    features = np.flatnonzero((nodes["node_type"] == "feature").to_numpy())
    nodes.loc[features[0], "activation"] = np.nan
    nodes.loc[features[1], "activation"] = np.inf
    document = replace(ioi_graph, nodes=nodes).to_neuronpedia()
    json.dumps(document, allow_nan=False)
    by_id = {n["node_id"]: n for n in document["nodes"]}
    assert by_id[nodes.loc[features[0], "node_id"]]["activation"] is None
    assert by_id[nodes.loc[features[1], "node_id"]]["activation"] is None
