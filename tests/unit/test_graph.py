"""Edges of the graph against independent autograd, conservation, pruning, Neuronpedia's format."""

from __future__ import annotations

import json
from functools import partial

import jsonschema
import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import PROMPT, downstream_contributions, random_sae, res_jb_saes
from token_trace import graph as graph_module
from token_trace import trace
from token_trace.graph import compute_graph, graph_from_trace, node_ids
from token_trace.hook_names import residual_depth
from token_trace.hooks import final_residual, logits_at
from token_trace.prompts import prepare_baseline, prepare_prompt

COUNTERFACTUAL = "When Mary and John went to the store , Mary gave a book to"
RUNS = [
    pytest.param({}, id="logprob"),
    pytest.param({"answer": " Mary", "contrast": " John"}, id="logit-diff"),
    pytest.param({"baseline_text": COUNTERFACTUAL}, id="counterfactual"),
]


def full_graph(model, saes, **kwargs):
    result = trace(PROMPT, model, saes, **kwargs)
    graph = graph_from_trace(
        result, model=model, saes=saes, max_nodes=None, node_threshold=None, edge_threshold=None
    )
    return result, graph


@pytest.mark.parametrize("kwargs", RUNS)
def test_outgoing_edges_sum_to_the_attribution(model, saes, kwargs):
    result, graph = full_graph(model, saes, **kwargs)
    nodes = graph.candidate_nodes
    sae_nodes = nodes[nodes["node_type"].isin(["feature", "error"])].set_index("node_id")
    assert len(sae_nodes) == len(result.nodes)  # every node kept
    outgoing = graph.candidate_edges.groupby("source")["weight"].sum()
    outgoing = outgoing.reindex(sae_nodes.index).fillna(0.0).to_numpy()
    attribution = sae_nodes["attribution"].to_numpy()
    relative = np.abs(outgoing - attribution) / np.abs(attribution).max()
    print(f"conservation: max relative error {relative.max():.2e} over {len(attribution)} nodes")
    assert relative.max() < 1e-4


def independent_edges(model, saes, kwargs) -> dict[tuple[str, str], float]:
    """Every edge by autograd through an explicit composition: upstream nodes as leaves
    (`x_u = f_u W_dec + b_dec + e_u`, or the embeddings), the blocks between the hooks, the
    downstream SAE's encode and decode, and each downstream node's contribution with the
    metric's gradient held fixed, `(d_j . g_d) f_j` or `g_d . e_d`."""
    prompt = prepare_prompt(model, PROMPT, kwargs.get("answer"), kwargs.get("contrast"))
    baseline_text = kwargs.get("baseline_text")
    baseline = None if baseline_text is None else prepare_baseline(model, baseline_text, prompt)

    def activations(tokens, with_grads):
        acts = {}

        def keep(act, hook):
            acts[hook.name] = act  # not detached: the gradient must reach every hook

        names = list(dict.fromkeys(["blocks.0.hook_resid_pre", *saes]))
        with torch.set_grad_enabled(with_grads), model.hooks([(n, keep) for n in names]):
            value = prompt.metric(
                logits_at(model, final_residual(model, tokens), prompt.metric.positions)
            )
            grads = (
                torch.autograd.grad(value.sum(), [acts[n] for n in saes]) if with_grads else None
            )
        return acts, grads

    acts, grads = activations(prompt.tokens, True)
    base = None if baseline is None else activations(baseline, False)[0]
    gradient = {name: grad[0].detach() for name, grad in zip(saes, grads)}
    acts = {name: act.detach() for name, act in acts.items()}
    hooks = sorted(saes, key=residual_depth)
    expected = {}
    below = "embedding"
    for hook in hooks:
        sae, depth = saes[hook], residual_depth(hook)
        g = gradient[hook]
        x_d = acts[hook][0].detach()
        f_d = sae.encode(x_d).detach()
        t_idx, j_idx = f_d.nonzero(as_tuple=True)
        if base is not None:
            active = (f_d != 0) | (sae.encode(base[hook][0].detach()) != 0)
            t_idx, j_idx = active.nonzero(as_tuple=True)
        targets = node_ids(np.full(len(t_idx), depth), j_idx.numpy(), t_idx.numpy()).tolist()
        targets += node_ids(np.full(len(g), depth), np.full(len(g), -1), np.arange(len(g))).tolist()

        contributions = partial(downstream_contributions, sae, g, t_idx, j_idx)
        if below == "embedding":
            x0 = acts["blocks.0.hook_resid_pre"][0].detach()
            delta = x0 if base is None else x0 - base["blocks.0.hook_resid_pre"][0]

            def from_embedding(x, depth=depth, contributions=contributions):
                for block in model.blocks[:depth]:
                    x = block(x.unsqueeze(0))[0]
                return contributions(x)

            jac = torch.autograd.functional.jacobian(from_embedding, x0)  # [targets, T, d]
            weights = (jac * delta).sum(-1)
            sources = [f"E_{int(t)}_{s}" for s, t in enumerate(prompt.tokens[0])]
            for k, target in enumerate(targets):
                for s, source in enumerate(sources):
                    expected[(source, target)] = float(weights[k, s])
        else:
            up, up_depth = saes[below], residual_depth(below)
            x_u = acts[below][0].detach()
            f_u = up.encode(x_u).detach()
            e_u = (x_u - up.decode(f_u)).detach()
            if base is None:
                f_base, e_base = torch.zeros_like(f_u), torch.zeros_like(e_u)
            else:
                f_base = up.encode(base[below][0]).detach()
                e_base = base[below][0] - up.decode(f_base)

            def from_upstream(
                f, e, up=up, up_depth=up_depth, depth=depth, contributions=contributions
            ):
                x = (f @ up.W_dec + up.b_dec + e).unsqueeze(0)
                for block in model.blocks[up_depth:depth]:
                    x = block(x)
                return contributions(x[0])

            jac_f, jac_e = torch.autograd.functional.jacobian(from_upstream, (f_u, e_u))
            feature_weights = jac_f * (f_u - f_base)  # [targets, T, d_sae]
            error_weights = (jac_e * (e_u - e_base)).sum(-1)  # [targets, T]
            s_idx, i_idx = ((f_u != 0) | (f_base != 0)).nonzero(as_tuple=True)
            for k, target in enumerate(targets):
                for s, i in zip(s_idx.tolist(), i_idx.tolist()):
                    expected[(f"{up_depth}_{i}_{s}", target)] = float(feature_weights[k, s, i])
                for s in range(len(e_u)):
                    expected[(f"{up_depth}_-1_{s}", target)] = float(error_weights[k, s])
        below = hook
    return expected


@pytest.mark.parametrize("kwargs", RUNS)
def test_every_edge_equals_independent_autograd(model, saes, kwargs):
    _, graph = full_graph(model, saes, **kwargs)
    edges = graph.candidate_edges
    between = edges[edges["target_type"] != "metric"]
    expected = independent_edges(model, saes, kwargs)
    computed = dict(zip(zip(between["source"], between["target"]), between["weight"]))
    scale = max(abs(w) for w in expected.values())
    missing = {key: w for key, w in expected.items() if key not in computed}
    assert set(computed) <= set(expected)
    assert all(abs(w) <= 1e-6 * scale for w in missing.values())  # only exact zeros left out
    errors = [abs(computed[key] - expected[key]) / scale for key in computed]
    print(f"{len(computed)} edges: max error {max(errors):.2e} of the largest edge")
    assert max(errors) < 1e-4


def test_last_hook_feeds_the_metric_with_its_attribution(model, saes):
    result, graph = full_graph(model, saes, answer=" Mary")
    to_metric = graph.candidate_edges[graph.candidate_edges["target_type"] == "metric"]
    last = result.nodes[result.nodes["layer"] == result.nodes["layer"].max()]
    assert len(to_metric) == len(last)
    np.testing.assert_allclose(
        np.sort(to_metric["weight"].to_numpy()), np.sort(last["attribution"].to_numpy()), rtol=1e-6
    )


def test_max_nodes_keeps_the_largest_and_pruning_reuses_the_edges(model, saes):
    result = trace(PROMPT, model, saes, answer=" Mary", contrast=" John")
    graph = graph_from_trace(result, model=model, saes=saes, max_nodes=30)
    sae_nodes = graph.candidate_nodes[graph.candidate_nodes["node_type"].isin(["feature", "error"])]
    assert len(sae_nodes) == 30
    smallest_kept = sae_nodes["attribution"].abs().min()
    assert (result.top_nodes(30)["attribution"].abs() >= smallest_kept).all()
    assert (graph.nodes["node_type"] == "embedding").sum() == len(result.prompt.tokens)
    assert (graph.nodes["node_type"] == "metric").sum() == 1
    assert set(graph.edges["source"]) | set(graph.edges["target"]) <= set(graph.nodes["node_id"])
    loose = graph.prune(None, None)
    tight = graph.prune(0.5, 0.9)
    assert len(tight.nodes) < len(loose.nodes) and len(tight.edges) < len(loose.edges)
    assert len(loose.edges) == len(graph.candidate_edges)
    assert 0.0 <= graph.error_share <= 1.0
    assert graph.nodes["influence"].max() > 0


def test_bad_graph_requests_are_clear_errors(model, saes):
    result = trace(PROMPT, model, saes)
    with pytest.raises(ValueError, match="max_nodes"):
        graph_from_trace(result, model=model, saes=saes, max_nodes=0)
    with pytest.raises(ValueError, match="node_threshold"):
        graph_from_trace(result, model=model, saes=saes, node_threshold=1.5)
    ig = trace(PROMPT, model, saes, method="ig", ig_steps=2)
    with pytest.raises(ValueError, match="attribution-patching"):
        graph_from_trace(ig, model=model, saes=saes)
    mlp = {"blocks.0.hook_mlp_out": next(iter(saes.values()))}
    with pytest.raises(ValueError, match="residual stream"):
        graph_from_trace(trace(PROMPT, model, mlp), model=model, saes=mlp)


# --------------------------------------------------------------------------- Neuronpedia

#: Written from Neuronpedia's documented graph format (shared/METHOD.md): required fields and types.
NEURONPEDIA_GRAPH_SCHEMA = {
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["slug", "scan", "prompt_tokens", "prompt"],
            "properties": {
                "slug": {"type": "string"},
                "scan": {"type": "string"},
                "prompt_tokens": {"type": "array", "items": {"type": "string"}},
                "prompt": {"type": "string"},
                "node_threshold": {"type": ["number", "null"]},
                "schema_version": {"type": "integer"},
                "feature_details": {
                    "type": "object",
                    "properties": {"neuronpedia_source_set": {"type": "string"}},
                },
            },
        },
        "qParams": {
            "type": "object",
            "properties": {
                "pinnedIds": {"type": "array", "items": {"type": "string"}},
                "supernodes": {"type": "array"},
                "linkType": {"type": "string"},
                "clickedId": {"type": "string"},
                "sg_pos": {"type": "string"},
            },
        },
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "node_id",
                    "feature",
                    "layer",
                    "ctx_idx",
                    "feature_type",
                    "jsNodeId",
                    "clerp",
                ],
                "properties": {
                    "node_id": {"type": "string"},
                    "feature": {"type": ["integer", "null"]},
                    "layer": {"type": ["string", "integer"]},
                    "ctx_idx": {"type": "integer"},
                    "feature_type": {"type": "string"},
                    "jsNodeId": {"type": "string"},
                    "clerp": {"type": "string"},
                    "influence": {"type": ["number", "null"]},
                    "activation": {"type": ["number", "null"]},
                    "token_prob": {"type": "number"},
                    "is_target_logit": {"type": "boolean"},
                },
            },
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "target", "weight"],
                "properties": {
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "weight": {"type": "number"},
                },
            },
        },
    },
}


def uncantor(value: int) -> tuple[int, int]:
    """The inverse of the Cantor pairing the viewer decodes a feature node's `feature` with."""
    w = int((np.sqrt(8 * value + 1) - 1) // 2)
    index = value - w * (w + 1) // 2
    return w - index, index


def test_neuronpedia_export_validates_and_points_at_dashboards(model, tmp_path):
    saes = res_jb_saes(model)
    result = trace(PROMPT, model, saes, answer=" Mary", contrast=" John")
    graph = graph_from_trace(result, model=model, saes=saes, max_nodes=60)
    path = graph.save_neuronpedia(tmp_path / "ioi-graph.json")
    exported = json.loads(path.read_text())
    jsonschema.validate(exported, NEURONPEDIA_GRAPH_SCHEMA)
    meta = exported["metadata"]
    assert meta["scan"] == "gpt2-small" and meta["slug"] == "ioi-graph"
    assert meta["feature_details"]["neuronpedia_source_set"] == "res-jb"
    assert meta["prompt_tokens"] == list(result.prompt.tokens)
    ids = {node["node_id"] for node in exported["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in exported["links"])
    kinds = {node["feature_type"] for node in exported["nodes"]}
    assert {"embedding", "logit", "cross layer transcoder"} <= kinds
    assert sum(node.get("is_target_logit", False) for node in exported["nodes"]) == 1

    records = {record.layer: record for record in result.saes}
    features = [n for n in exported["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert features
    for node in features:
        layer, index = uncantor(node["feature"])
        assert str(layer) == node["layer"]
        dashboard = (
            f"https://www.neuronpedia.org/{meta['scan']}/{layer}-"
            f"{meta['feature_details']['neuronpedia_source_set']}/{index}"
        )
        assert dashboard == records[layer].feature_url(index)
        assert node["node_id"] == f"{layer}_{index}_{node['ctx_idx']}"


def test_gemma_scope_naming_is_written_in_neuronpedias_layers(model, tmp_path):
    """Gemma Scope names the SAE at `blocks.L.hook_resid_post` (residual depth L + 1) `L-...`:
    the file shifts its layers, ids, links and pins by that one, so each feature opens its own
    dashboard, as res-jb's do unshifted."""
    saes = {}
    for seed, layer in enumerate((0, 1)):
        hook = f"blocks.{layer}.hook_resid_post"
        sae = random_sae(hook, model.cfg.d_model, 64, seed)
        sae.cfg.metadata.neuronpedia_id = f"gemma-2-2b/{layer}-gemmascope-res-16k"
        saes[hook] = sae
    result = trace(PROMPT, model, saes, answer=" Mary", contrast=" John")
    graph = graph_from_trace(result, model=model, saes=saes, max_nodes=60)
    pinned = graph.nodes[graph.nodes["node_type"] == "feature"]["node_id"].iloc[0]
    exported = json.loads(graph.save_neuronpedia(tmp_path / "g.json", pinned=[pinned]).read_text())
    jsonschema.validate(exported, NEURONPEDIA_GRAPH_SCHEMA)
    assert exported["metadata"]["feature_details"]["neuronpedia_source_set"] == "gemmascope-res-16k"
    records = {record.layer: record for record in result.saes}
    features = [n for n in exported["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert features
    for node in features:
        layer, index = uncantor(node["feature"])
        assert (
            str(layer) == node["layer"] and node["node_id"] == f"{layer}_{index}_{node['ctx_idx']}"
        )
        dashboard = f"https://www.neuronpedia.org/gemma-2-2b/{layer}-gemmascope-res-16k/{index}"
        assert dashboard == records[layer + 1].feature_url(index)  # depth = Neuronpedia's + 1
    ids = {node["node_id"] for node in exported["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in exported["links"])
    assert len(exported["links"]) == len(graph.edges)
    depth, feature, position = pinned.split("_")
    assert exported["qParams"]["pinnedIds"] == [f"{int(depth) - 1}_{feature}_{position}"]


def test_compute_graph_reuses_its_run_and_equals_a_graph_of_the_trace(model, saes):
    graph = compute_graph(PROMPT, model, saes, baseline_text=COUNTERFACTUAL, max_nodes=40)
    again = graph_from_trace(graph.trace, model=model, saes=saes, max_nodes=40)
    pd.testing.assert_frame_equal(
        graph.candidate_edges, again.candidate_edges, check_exact=False, rtol=1e-5, atol=1e-7
    )
    assert list(graph.nodes["node_id"]) == list(again.nodes["node_id"])


def test_encoder_columns_and_autograd_give_the_same_seeds(model, saes, monkeypatch):
    """The seeds written from encoder columns (ReLU/TopK/JumpReLU SAEs) equal the ones autograd
    finds through `sae.encode`, the path every other architecture takes."""
    result = trace(PROMPT, model, saes, baseline_text=COUNTERFACTUAL)
    by_columns = graph_from_trace(result, model=model, saes=saes, max_nodes=80)
    monkeypatch.setattr(graph_module, "LINEAR_WHERE_ACTIVE", frozenset())
    by_autograd = graph_from_trace(result, model=model, saes=saes, max_nodes=80)
    pd.testing.assert_frame_equal(
        by_columns.candidate_edges, by_autograd.candidate_edges, check_exact=False, rtol=1e-4,
        atol=1e-6,
    )  # fmt: skip
