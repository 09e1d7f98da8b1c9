"""Circuit faithfulness against real ablations of the whole dictionary, batched against alone."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import PROMPT
from token_trace import (
    Node,
    ablate,
    ablation_effects,
    faithfulness,
    faithfulness_curve,
    graph_from_trace,
    trace,
)
from token_trace.circuit import greedy_order, smallest_faithful
from token_trace.graph import node_ids
from token_trace.prompts import prepare_baseline, prepare_prompt

COUNTERFACTUAL = "When John and Mary went to the store , Mary gave a book to"
KWARGS = {"answer": " Mary", "contrast": " John"}
BASELINES = [pytest.param(None, id="zero"), pytest.param(COUNTERFACTUAL, id="counterfactual")]


def _trace(model, saes, baseline):
    return trace(PROMPT, model, saes, baseline_text=baseline, **KWARGS)


def _ids(table):
    return list(node_ids(table["layer"], table["feature"], table["position"]))


def _complement_over_the_dictionary(saes, n_pos, table):
    """Every feature of every SAE at every position and every error node, but `table`'s."""
    inside = set(zip(table["hook_name"].astype(str), table["position"], table["feature"]))
    return [
        Node(hook, position, feature)
        for hook, sae in saes.items()
        for position in range(n_pos)
        for feature in range(-1, sae.cfg.d_sae)
        if (hook, position, feature) not in inside
    ]


@pytest.mark.parametrize("baseline", BASELINES)
def test_a_circuit_is_the_model_with_the_whole_dictionary_outside_it_ablated(model, saes, baseline):
    result = _trace(model, saes, baseline)
    chosen = result.top_nodes(30)
    chosen = chosen[chosen["position"] > 0]  # a few positions of every layer
    out = faithfulness(result, _ids(chosen), model=model, saes=saes)

    prompt = prepare_prompt(model, PROMPT, **KWARGS)
    base = None if baseline is None else prepare_baseline(model, baseline, prompt)
    n_pos = prompt.tokens.shape[1]
    outside = _complement_over_the_dictionary(saes, n_pos, chosen)
    everything = _complement_over_the_dictionary(saes, n_pos, chosen[:0])
    assert len(everything) > len(result.nodes)  # the dictionary is more than the table
    effects = ablation_effects(
        model,
        saes,
        prompt.tokens,
        prompt.metric,
        [outside, _nodes(chosen), everything],
        baseline_tokens=base,
    ).numpy()
    clean = result.metric.value
    assert out.n_nodes == len(chosen)
    assert out.metric_full == pytest.approx(clean, abs=1e-5)
    assert out.metric_circuit == pytest.approx(clean - effects[0], abs=1e-5)
    assert out.metric_complement == pytest.approx(clean - effects[1], abs=1e-5)
    assert out.metric_empty == pytest.approx(clean - effects[2], abs=1e-5)
    (by_ablate,) = ablate(result, [_nodes(chosen)], model=model, saes=saes)
    assert out.metric_complement == pytest.approx(clean - by_ablate, abs=1e-5)
    assert 0 < abs(out.faithfulness) < 10 and np.isfinite(out.complement_faithfulness)


def _nodes(table):
    return [Node(r.hook_name, r.position, r.feature) for r in table.itertuples()]


@pytest.mark.parametrize("baseline", BASELINES)
def test_all_nodes_are_exactly_faithful_and_none_exactly_not(model, saes, baseline):
    result = _trace(model, saes, baseline)
    everything = faithfulness(result, _ids(result.nodes), model=model, saes=saes)
    nothing = faithfulness(result, [], model=model, saes=saes)
    assert everything.faithfulness == 1.0
    assert nothing.faithfulness == 0.0
    assert nothing.complement_faithfulness == 1.0  # ablating nothing is the model
    assert everything.metric_full == nothing.metric_full
    assert everything.metric_empty == nothing.metric_empty
    if baseline is not None:  # every node at its counterfactual value is the counterfactual run
        assert nothing.metric_empty == pytest.approx(result.metric.baseline_value, abs=1e-5)


@pytest.mark.parametrize("baseline", BASELINES)
def test_a_batched_curve_equals_each_size_alone(model, saes, baseline):
    result = _trace(model, saes, baseline)
    sizes = (3, 20, 80, "all")
    curve = faithfulness_curve(result, sizes, complement=True, model=model, saes=saes)
    assert curve["size"].tolist() == [3, 20, 80, len(result.nodes)]
    ordered = result.top_nodes(0)
    for row in curve.itertuples():
        alone = faithfulness(result, _ids(ordered.iloc[: row.size]), model=model, saes=saes)
        assert row.metric == pytest.approx(alone.metric_circuit, abs=1e-5)
        assert row.faithfulness == pytest.approx(alone.faithfulness, abs=1e-5)
        assert row.complement_faithfulness == pytest.approx(alone.complement_faithfulness, abs=1e-5)
        assert row.n_errors == int((ordered.iloc[: row.size]["feature"] < 0).sum())
    assert curve["faithfulness"].iloc[-1] == 1.0
    reached = smallest_faithful(curve, 0.5)
    assert reached is None or reached in curve["size"].tolist()


def test_influence_and_custom_orders(model, saes):
    result = _trace(model, saes, None)
    graph = graph_from_trace(
        result, model=model, saes=saes, max_nodes=100, node_threshold=None, edge_threshold=None
    )
    curve = faithfulness_curve(result, (5, 40), "influence", graph=graph, model=model, saes=saes)
    sae_nodes = graph.candidate_nodes[graph.candidate_nodes["node_type"].isin(["feature", "error"])]
    top = sae_nodes.sort_values("influence", ascending=False, kind="stable")["node_id"].tolist()
    for size, value in zip((5, 40), curve["faithfulness"]):
        alone = faithfulness(result, top[:size], model=model, saes=saes)
        assert value == pytest.approx(alone.faithfulness, abs=1e-5)
    custom = faithfulness_curve(result, (5, 40), top, model=model, saes=saes)
    np.testing.assert_allclose(custom["faithfulness"], curve["faithfulness"], atol=1e-5)
    assert (custom["order"] == "custom").all()
    kept = graph.prune(0.8, 0.98)
    via_graph = kept.faithfulness(model=model, saes=saes)
    kept_ids = kept.nodes.loc[kept.nodes["node_type"].isin(["feature", "error"]), "node_id"]
    direct = faithfulness(result, kept_ids.tolist(), model=model, saes=saes)
    assert via_graph == direct


def test_greedy_keeps_the_node_that_holds_the_metric(model, saes):
    """Pool of two: the first round drops the node whose removal leaves the metric closest to
    the model's, so the one kept first is the better circuit of one."""
    result = _trace(model, saes, COUNTERFACTUAL)
    order = greedy_order(result, pool=2, drop=0.5, model=model, saes=saes)
    first_two = _ids(result.top_nodes(2))
    assert sorted(order[:2]) == sorted(first_two)
    assert sorted(order) == sorted(_ids(result.nodes))
    alone = [faithfulness(result, [i], model=model, saes=saes).metric_circuit for i in first_two]
    full = result.metric.value
    best = first_two[int(np.argmin([abs(m - full) for m in alone]))]
    assert order[0] == best


def test_bad_requests_are_refused_clearly(model, saes):
    result = _trace(model, saes, None)
    some = _ids(result.top_nodes(2))
    with pytest.raises(ValueError, match="listed twice"):
        faithfulness(result, [some[0], some[0]], model=model, saes=saes)
    with pytest.raises(ValueError, match="not allowed here"):
        faithfulness(result, ["1_3_*"], model=model, saes=saes)
    with pytest.raises(ValueError, match="not one string"):
        faithfulness(result, some[0], model=model, saes=saes)
    with pytest.raises(ValueError, match="Unknown order"):
        faithfulness_curve(result, order="random", model=model, saes=saes)
    with pytest.raises(ValueError, match="whole numbers"):
        faithfulness_curve(result, (10, -1), model=model, saes=saes)
    with pytest.raises(ValueError, match="list of sizes"):
        faithfulness_curve(result, "all", model=model, saes=saes)


def test_pruning_can_keep_features_switched_on_by_the_counterfactual(model, saes):
    """Features active only on the counterfactual have no incoming edge; with
    `baseline_sources=False` pruning drops them, with True (the default) it keeps them and
    drops nothing else more."""
    result = _trace(model, saes, COUNTERFACTUAL)
    graph = graph_from_trace(
        result, model=model, saes=saes, max_nodes=None, node_threshold=None, edge_threshold=None
    )
    assert graph.baseline_sources and graph.prune(0.9, None).baseline_sources
    default = graph.prune(0.9, None, baseline_sources=False)
    sources = graph.prune(0.9, None, baseline_sources=True)
    assert sources.baseline_sources and not default.baseline_sources
    assert not default.prune(0.9, None).baseline_sources  # re-pruning keeps the graph's choice
    assert set(default.nodes["node_id"]) < set(sources.nodes["node_id"])
    added = sources.nodes[~sources.nodes["node_id"].isin(default.nodes["node_id"])]
    switched_on = added[(added["node_type"] == "feature") & (added["activation"] == 0)]
    assert len(switched_on) and not sources.edges["target"].isin(switched_on["node_id"]).any()
    kept_features = default.nodes[default.nodes["node_type"] == "feature"]
    assert kept_features["node_id"].isin(default.edges["target"]).all()


MEAN_TEXTS = [
    "When Mary and John went to the park , John gave a ball to",
    "The capital of France is Paris",
    PROMPT,
]


def test_mean_ablation_holds_every_hook_at_the_mean_residual(model, saes):
    """`mean_activations` gives each hook's mean residual (decoded mean features plus mean
    error, BOS left out), and with them the empty circuit is the model with every SAE hook set
    to that mean at every position: an independent hook computation."""
    import torch

    from token_trace.circuit import mean_activations
    from token_trace.hooks import final_residual, logits_at

    means = mean_activations(model, saes, MEAN_TEXTS)
    cached = {hook: [] for hook in saes}
    for text in MEAN_TEXTS:
        _, cache = model.run_with_cache(model.to_tokens(text), names_filter=list(saes))
        for hook in saes:
            cached[hook].append(cache[hook][0, 1:])
    for hook, sae in saes.items():
        mean_residual = torch.cat(cached[hook]).mean(0)
        rebuilt = sae.decode(means.features[hook]) + means.errors[hook]
        torch.testing.assert_close(rebuilt, mean_residual, rtol=1e-4, atol=1e-5)
    assert means.n_tokens == sum(model.to_tokens(t).shape[1] - 1 for t in MEAN_TEXTS)

    result = _trace(model, saes, None)
    out = faithfulness(result, _ids(result.top_nodes(20)), model=model, saes=saes, means=means)
    tokens = model.to_tokens(PROMPT)
    prompt = prepare_prompt(model, PROMPT, **KWARGS)

    def to_mean(act, hook):
        return (sae_means[hook.name]).expand_as(act).clone()

    sae_means = {h: saes[h].decode(means.features[h]) + means.errors[h] for h in saes}
    with torch.no_grad(), model.hooks([(hook, to_mean) for hook in saes]):
        residual = final_residual(model, tokens)
        metric = prompt.metric(logits_at(model, residual, prompt.metric.positions))
    assert out.metric_empty == pytest.approx(float(metric), abs=1e-4)
    assert out.metric_full == pytest.approx(result.metric.value, abs=1e-4)
    # the trace's own (zero) baseline gives another empty circuit
    zero = faithfulness(result, _ids(result.top_nodes(20)), model=model, saes=saes)
    assert zero.metric_empty != pytest.approx(out.metric_empty, abs=1e-3)
    with pytest.raises(ValueError, match="at least one prompt"):
        mean_activations(model, saes, [])
