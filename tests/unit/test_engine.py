"""The engine against independent computations: autograd through a splice, real ablations, IG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import PROMPT
from token_trace import (
    Node,
    ablation_effects,
    attribution,
    compute_node_attribution,
    compute_node_attribution_batch,
    top_nodes,
)
from token_trace.hooks import final_residual, logits_at
from token_trace.prompts import prepare_baseline, prepare_prompt
from token_trace.splice import spliced

COUNTERFACTUAL = "When John and Mary went to the store , Mary gave a book to"


def _spliced_gradients(model, saes, tokens, metric):
    """dm/df and dm/de by autograd through the pass-through splice: an independent computation."""
    with spliced(model, saes) as leaves:
        value = metric(logits_at(model, final_residual(model, tokens), metric.positions))
    names = list(saes)
    grads = torch.autograd.grad(
        value.sum(), [leaves.features[n] for n in names] + [leaves.errors[n] for n in names]
    )
    features = {n: (leaves.features[n][0].detach(), g[0]) for n, g in zip(names, grads)}
    errors = {n: (leaves.errors[n][0].detach(), g[0]) for n, g in zip(names, grads[len(names) :])}
    return value.detach(), features, errors


def test_splice_leaves_logits_and_parameter_gradients_unchanged(model, saes):
    tokens = model.to_tokens(PROMPT)

    def loss_and_grads():
        loss = model(tokens, return_type="loss")
        return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))

    clean_logits = model(tokens).detach()
    clean_loss, clean_grads = loss_and_grads()
    with spliced(model, saes):
        spliced_logits = model(tokens).detach()
        spliced_loss, spliced_grads = loss_and_grads()
    assert torch.equal(clean_logits, spliced_logits)
    assert torch.equal(clean_loss, spliced_loss)
    for clean, spliced_grad in zip(clean_grads, spliced_grads):
        torch.testing.assert_close(clean, spliced_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"answer": " Mary"}, {"answer": " Mary", "contrast": " John"}, {"metric": "loss"}],
)
def test_every_node_equals_autograd_through_the_splice(model, saes, kwargs):
    df = compute_node_attribution(PROMPT, model, saes, **kwargs)
    prompt = prepare_prompt(model, PROMPT, **kwargs)
    value, features, errors = _spliced_gradients(model, saes, prompt.tokens, prompt.metric)
    assert df.attrs["metric_value"] == pytest.approx(float(value[0]), rel=1e-5)

    for hook in saes:
        acts, grads = features[hook]
        layer = df[(df.hook_name == hook) & (df.node_type == "feature")]
        pos, feat = layer.position.to_numpy(), layer.feature.to_numpy()
        active = acts.nonzero().numpy()
        assert sorted(map(tuple, active)) == sorted(zip(pos, feat)), "one row per active feature"
        np.testing.assert_allclose(layer.activation, acts[pos, feat], rtol=1e-5)
        np.testing.assert_allclose(layer.gradient, grads[pos, feat], rtol=1e-4, atol=1e-6)
        expected = (acts * grads)[pos, feat]
        np.testing.assert_allclose(layer.attribution, expected, rtol=1e-4, atol=1e-6)

        err, err_grad = errors[hook]
        err_rows = df[(df.hook_name == hook) & (df.node_type == "error")]
        assert err_rows.position.tolist() == list(range(prompt.tokens.shape[1]))
        np.testing.assert_allclose(err_rows.activation, err.norm(dim=-1), rtol=1e-5)
        np.testing.assert_allclose(
            err_rows.attribution, (err * err_grad).sum(-1), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            err_rows.activation * err_rows.gradient, err_rows.attribution, rtol=1e-4, atol=1e-6
        )


def test_sum_rule_per_layer_and_position(model, saes):
    df = compute_node_attribution(PROMPT, model, saes, answer=" Mary")
    prompt = prepare_prompt(model, PROMPT, answer=" Mary")
    with spliced(model, saes) as leaves:
        value = prompt.metric(
            logits_at(model, final_residual(model, prompt.tokens), prompt.metric.positions)
        )
    grads = torch.autograd.grad(value.sum(), [leaves.errors[h] for h in saes])
    with torch.no_grad():
        cache = model.run_with_cache(prompt.tokens, names_filter=list(saes))[1]
    for hook, g in zip(saes, grads):
        x = cache[hook][0]
        expected = (g[0] * (x - saes[hook].b_dec)).sum(-1).detach()
        got = df[df.hook_name == hook].groupby("position")["attribution"].sum()
        np.testing.assert_allclose(got.to_numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_largest_nodes_match_finite_differences(model, saes):
    """Removing a small fraction eps of a node changes the metric by eps x its attribution.

    (Whole-node ablations on this random, far-from-linear model differ from the linear estimate, as
    they should; agreement with real ablations is tested on the trained bundled model.)
    """
    df = compute_node_attribution(PROMPT, model, saes, answer=" Mary", contrast=" John")
    prompt = prepare_prompt(model, PROMPT, answer=" Mary", contrast=" John")
    eps = 1e-3

    def metric_with(hook_name=None, edit=None) -> float:
        hooks = [(hook_name, edit)] if hook_name else []
        with torch.no_grad(), model.hooks(hooks):
            residual = final_residual(model, prompt.tokens)
            return float(prompt.metric(logits_at(model, residual, prompt.metric.positions))[0])

    clean = metric_with()
    for row in top_nodes(df, 10).itertuples():
        sae = saes[row.hook_name]

        def shrink(act, hook, row=row, sae=sae):
            x = act[0, row.position]
            features = sae.encode(x[None])[0]
            if row.feature < 0:
                node = x - sae.decode(features[None])[0]
            else:
                node = features[row.feature] * sae.W_dec[row.feature]
            act = act.clone()
            act[0, row.position] -= eps * node
            return act

        slope = (clean - metric_with(row.hook_name, shrink)) / eps
        assert slope == pytest.approx(row.attribution, rel=0.02, abs=0.02)


def test_counterfactual_baseline_patches_to_the_other_prompt(model, saes):
    kwargs = {"answer": " Mary", "contrast": " John"}
    df = compute_node_attribution(PROMPT, model, saes, baseline_text=COUNTERFACTUAL, **kwargs)
    prompt = prepare_prompt(model, PROMPT, **kwargs)
    base_tokens = prepare_baseline(model, COUNTERFACTUAL, prompt)
    _, features, errors = _spliced_gradients(model, saes, prompt.tokens, prompt.metric)
    _, base_features, base_errors = _spliced_gradients(model, saes, base_tokens, prompt.metric)
    for hook in saes:
        (acts, grads), (base_acts, _) = features[hook], base_features[hook]
        layer = df[(df.hook_name == hook) & (df.node_type == "feature")]
        pos, feat = layer.position.to_numpy(), layer.feature.to_numpy()
        union = ((acts != 0) | (base_acts != 0)).nonzero().numpy()
        assert sorted(map(tuple, union)) == sorted(zip(pos, feat))
        np.testing.assert_allclose(layer.baseline_activation, base_acts[pos, feat], rtol=1e-5)
        expected = ((acts - base_acts) * grads)[pos, feat]
        np.testing.assert_allclose(layer.attribution, expected, rtol=1e-4, atol=1e-6)
        (err, err_grad), (base_err, _) = errors[hook], base_errors[hook]
        err_rows = df[(df.hook_name == hook) & (df.node_type == "error")]
        np.testing.assert_allclose(
            err_rows.attribution, ((err - base_err) * err_grad).sum(-1), rtol=1e-4, atol=1e-6
        )
    # Patching every node of a layer moves the metric to its value on the counterfactual prompt.
    assert df.attrs["baseline_metric_value"] is not None
    positions = range(prompt.tokens.shape[1])
    hook = "blocks.1.hook_resid_pre"
    layer_nodes = [Node(hook, p, -1) for p in positions] + [
        Node(hook, r.position, r.feature)
        for r in df[(df.hook_name == hook) & (df.node_type == "feature")].itertuples()
    ]
    effect = ablation_effects(
        model, saes, prompt.tokens, prompt.metric, [layer_nodes], baseline_tokens=base_tokens
    )
    expected = df.attrs["metric_value"] - df.attrs["baseline_metric_value"]
    assert float(effect[0]) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def _layer_patch_effect(model, saes, prompt, hook) -> float:
    """Real effect of zeroing every feature and error of one SAE: the hook reads b_dec."""
    sae = saes[hook]
    with torch.no_grad():
        clean = prompt.metric(
            logits_at(model, final_residual(model, prompt.tokens), prompt.metric.positions)
        )
    with torch.no_grad(), model.hooks([(hook, lambda act, hook: sae.b_dec.expand_as(act))]):
        patched = prompt.metric(
            logits_at(model, final_residual(model, prompt.tokens), prompt.metric.positions)
        )
    return float(clean[0] - patched[0])


@pytest.mark.parametrize("rule, few, many", [("riemann", 4, 256), ("gauss-legendre", 2, 16)])
def test_integrated_gradients_converge_to_the_layer_patch_effect(model, saes, rule, few, many):
    kwargs = {"answer": " Mary", "contrast": " John", "ig_rule": rule}
    prompt = prepare_prompt(model, PROMPT, kwargs["answer"], kwargs["contrast"])
    if rule == "riemann":  # its first point is the clean gradient: one step is AtP
        atp = compute_node_attribution(PROMPT, model, saes, answer=" Mary", contrast=" John")
        one_step = compute_node_attribution(PROMPT, model, saes, method="ig", ig_steps=1, **kwargs)
        np.testing.assert_allclose(one_step.attribution, atp.attribution, rtol=1e-4, atol=1e-5)

    errors = {}
    for steps in (few, many):
        df = compute_node_attribution(PROMPT, model, saes, method="ig", ig_steps=steps, **kwargs)
        totals = df.groupby("hook_name", observed=True)["attribution"].sum()
        errors[steps] = [
            abs(totals[hook] - _layer_patch_effect(model, saes, prompt, hook)) for hook in saes
        ]
    for hook_index, hook in enumerate(saes):
        real = _layer_patch_effect(model, saes, prompt, hook)
        assert errors[many][hook_index] < errors[few][hook_index]
        assert errors[many][hook_index] <= 0.05 * abs(real), hook


@pytest.mark.parametrize("points", [1, 2, 3, 5, 8])
def test_gauss_legendre_integrates_polynomials_of_degree_2n_minus_1_exactly(points):
    nodes, weights = attribution.quadrature("gauss-legendre", points)
    assert ((nodes > 0) & (nodes < 1)).all()
    for degree in range(2 * points):
        assert (weights * nodes**degree).sum() == pytest.approx(1 / (degree + 1), rel=1e-12)
    # ...and no more: degree 2n is off by far more than rounding.
    assert abs((weights * nodes ** (2 * points)).sum() - 1 / (2 * points + 1)) > 1e-11
    riemann_nodes, riemann_weights = attribution.quadrature("riemann", points)
    np.testing.assert_array_equal(riemann_nodes, np.arange(points) / points)
    assert riemann_weights.sum() == pytest.approx(1.0)


def test_unknown_ig_rule_is_refused(model, saes):
    with pytest.raises(ValueError, match="Unknown ig_rule 'simpson'"):
        compute_node_attribution(PROMPT, model, saes, method="ig", ig_rule="simpson")


def test_token_tensor_input_matches_text(model, saes):
    tokens = model.to_tokens(PROMPT)
    from_text = compute_node_attribution(PROMPT, model, saes)
    from_ids = compute_node_attribution(tokens, model, saes)
    pd.testing.assert_series_equal(from_text.attribution, from_ids.attribution)


def test_multi_token_answer_sums_log_probs(model, saes):
    answer = " Mary went"
    df = compute_node_attribution(PROMPT, model, saes, answer=answer)
    full = model.to_tokens(PROMPT + answer)
    logprobs = model(full)[0].log_softmax(-1)
    n = full.shape[1]
    expected = logprobs[n - 3, full[0, n - 2]] + logprobs[n - 2, full[0, n - 1]]
    assert df.attrs["metric_value"] == pytest.approx(float(expected), rel=1e-5)
    assert df.position.max() == n - 2  # the last answer token is predicted, never read


def test_loss_metric_is_the_models_loss(model, saes):
    df = compute_node_attribution(PROMPT, model, saes, metric="loss")
    loss = model(model.to_tokens(PROMPT), return_type="loss")
    assert df.attrs["metric_value"] == pytest.approx(float(loss), rel=1e-5)


def test_custom_metric_callable(model, saes):
    def last_logit_of_mary(logits):
        return logits[:, -1, model.to_single_token(" Mary")]

    df = compute_node_attribution(PROMPT, model, saes, metric=last_logit_of_mary)
    logits = model(model.to_tokens(PROMPT))
    assert df.attrs["metric_value"] == pytest.approx(
        float(logits[0, -1, model.to_single_token(" Mary")]), rel=1e-5
    )


#: (text, answer, contrast): different lengths and metrics (logit difference, answer log-prob).
BATCH = [
    (PROMPT, " Mary", " John"),
    ("The capital of France is", " Paris", None),
    ("The cat sat on the mat", " .", None),
]
#: Prompts with the same token count as COUNTERFACTUAL, which each is patched towards.
SAME_LENGTH_BATCH = [
    (PROMPT, " Mary", " John"),
    ("When Mary and John went to the store , John gave a book to", " Mary", " John"),
]


@pytest.mark.parametrize(
    "method, prompts, baseline",
    [("atp", BATCH, False), ("ig", BATCH, False), ("ig", SAME_LENGTH_BATCH, True)],
)
def test_a_padded_batch_equals_each_prompt_alone(model, saes, method, prompts, baseline):
    """Prompts of different lengths and metrics in one batch: each table as if run alone."""
    texts, answers, contrasts = (list(column) for column in zip(*prompts))
    baselines = [COUNTERFACTUAL] * len(texts) if baseline else None
    steps = {"method": method, "ig_steps": 3}
    frames = compute_node_attribution_batch(
        texts,
        model,
        saes,
        answers=answers,
        contrasts=contrasts,
        baseline_texts=baselines,
        **steps,
    )
    assert len({len(model.to_tokens(t)[0]) for t in texts}) > 1 or baseline
    for index, (text, answer, contrast) in enumerate(zip(texts, answers, contrasts)):
        alone = compute_node_attribution(
            text,
            model,
            saes,
            answer=answer,
            contrast=contrast,
            baseline_text=None if baselines is None else baselines[index],
            **steps,
        )
        batched = frames[index]
        assert batched.attrs["tokens"] == alone.attrs["tokens"]
        assert batched.attrs["metric_value"] == pytest.approx(alone.attrs["metric_value"], rel=1e-5)
        top_batched, top_alone = (
            batched.attrs["top_predictions"][0],
            alone.attrs["top_predictions"][0],
        )
        assert top_batched["token"] == top_alone["token"]
        assert top_batched["probability"] == pytest.approx(top_alone["probability"], rel=1e-5)
        pd.testing.assert_frame_equal(
            batched.drop(columns=["activation", "baseline_activation", "gradient", "attribution"]),
            alone.drop(columns=["activation", "baseline_activation", "gradient", "attribution"]),
        )
        for column in ("activation", "baseline_activation", "gradient", "attribution"):
            np.testing.assert_allclose(batched[column], alone[column], rtol=1e-4, atol=1e-5)


def test_batch_errors_name_the_prompt(model, saes):
    with pytest.raises(ValueError, match=r"Prompt 1: .*2 tokens"):
        compute_node_attribution_batch(
            [PROMPT, PROMPT], model, saes, answers=[" Mary", " Mary went"], contrasts=[" John"] * 2
        )
    with pytest.raises(ValueError, match="answers has 1 entries for 2 prompts"):
        compute_node_attribution_batch([PROMPT, PROMPT], model, saes, answers=[" Mary"])
    with pytest.raises(ValueError, match="No prompts"):
        compute_node_attribution_batch([], model, saes)


def test_chunked_node_extraction_equals_one_pass(model, saes, monkeypatch):
    """On a CPU a big batch's nodes are extracted a few positions at a time: the same table (up to
    float rounding, as matrix products over fewer rows block differently)."""
    kwargs = {"answer": " Mary", "contrast": " John", "baseline_text": COUNTERFACTUAL}
    whole = compute_node_attribution(PROMPT, model, saes, **kwargs)
    monkeypatch.setattr(attribution, "CPU_CHUNK_POSITIONS", 5)
    chunked = compute_node_attribution(PROMPT, model, saes, **kwargs)
    pd.testing.assert_frame_equal(chunked, whole, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("limit", [1, 40])
def test_ig_points_in_several_passes_equal_one_pass(model, saes, monkeypatch, limit):
    """On a CPU IG runs a layer's points a few at a time to bound its memory: the same table.
    A limit of 1 token runs each point alone; one of 40 runs this prompt's 9 points 3 at a time."""
    kwargs = {"answer": " Mary", "contrast": " John", "method": "ig", "ig_steps": 10}
    monkeypatch.setattr(attribution, "CPU_IG_TOKENS", 10**9)
    whole = compute_node_attribution(PROMPT, model, saes, **kwargs)
    monkeypatch.setattr(attribution, "CPU_IG_TOKENS", limit)
    split = compute_node_attribution(PROMPT, model, saes, **kwargs)
    pd.testing.assert_frame_equal(split, whole, rtol=1e-4, atol=1e-6)
