"""Interventions against hooks written out by hand, real ablations, and one-by-one runs."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.helpers import PROMPT
from token_trace import Edit, Node, ablate, intervene, intervene_many, trace
from token_trace import interventions as interventions_module
from token_trace.hooks import final_residual, logits_at
from token_trace.prompts import prepare_prompt

COUNTERFACTUAL = "When John and Mary went to the store , Mary gave a book to"
KWARGS = {"answer": " Mary", "contrast": " John"}


@pytest.fixture(scope="module")
def result(model, saes):
    return trace(PROMPT, model, saes, **KWARGS)


def _feature_nodes(result, k):
    """The k largest feature nodes (no BOS) as (hook, layer, position, feature, activation)."""
    top = result.top_nodes(k, exclude_bos=True, node_type="feature")
    return list(zip(top.hook_name, top.layer, top.position, top.feature, top.activation))


def _by_hand(model, saes, tokens, changes):
    """Logits `[pos, vocab]` with each `(hook, position or None, feature, new_value_fn)` applied
    by adding `(f_new - f) d_i` at the hook (`f` encoded from what the hook receives, position
    None: every position); errors (`feature == -1`) get `e_new - e` added."""

    def hook_fn(hook_name):
        def add(act, hook):
            sae = saes[hook_name]
            out = act.clone()
            f = sae.encode(act[0])
            e = act[0] - sae.decode(f)
            for name, position, feature, new in changes:
                if name != hook_name:
                    continue
                positions = range(act.shape[1]) if position is None else [position]
                for t in positions:
                    if feature >= 0:
                        out[0, t] += (new(f[t, feature]) - f[t, feature]) * sae.W_dec[feature]
                    else:
                        out[0, t] += new(e[t]) - e[t]
            return out

        return add

    hooks = [(name, hook_fn(name)) for name in dict.fromkeys(c[0] for c in changes)]
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)[0]


def test_edits_equal_a_hook_written_by_hand(model, saes, result):
    (h1, l1, p1, i1, _), (h2, l2, p2, i2, _) = _feature_nodes(result, 2)
    error_hook = "blocks.1.hook_resid_pre"
    edits = [
        Edit(f"{l1}_{i1}_{p1}", value=3.0),
        Edit(f"{l2}_{i2}_{p2}", scale=-2.0),
        Edit(f"2_-1_{p1}", scale=0.5),  # blocks.1.hook_resid_post is layer 2
        Edit(f"1_-1_{p2}", value=0.25),
    ]
    out = intervene(result, edits, model=model, saes=saes)
    changes = [
        (h1, p1, i1, lambda f: torch.tensor(3.0)),
        (h2, p2, i2, lambda f: -2.0 * f),
        ("blocks.1.hook_resid_post", p1, -1, lambda e: 0.5 * e),
        (error_hook, p2, -1, lambda e: e * (0.25 / e.norm())),
    ]
    prompt = prepare_prompt(model, PROMPT, **KWARGS)
    logits = _by_hand(model, saes, prompt.tokens, changes)
    metric = prompt.metric(logits[None, list(prompt.metric.positions)])
    assert out.metric_after == pytest.approx(float(metric[0]), abs=1e-5)
    assert out.metric_before == pytest.approx(result.metric.value, abs=1e-5)
    assert abs(out.metric_after - out.metric_before) > 0.01  # the edits do something
    change = out.logit_change
    assert change.position == prompt.metric.positions[0]
    answer = prompt.metric.token_ids[0]
    assert change.target.token == " Mary"
    assert change.target.after == pytest.approx(float(logits[change.position, answer]), abs=1e-5)
    top_change = max(change.raised[0].change, -change.lowered[0].change)
    assert top_change >= abs(change.target.change) - 1e-6
    probabilities = logits[-1].softmax(-1)
    for prediction in out.predictions_after[:3]:
        token_id = model.to_single_token(prediction.token)
        assert prediction.probability == pytest.approx(float(probabilities[token_id]), abs=1e-5)


def test_an_edit_of_nothing_changes_nothing(model, saes, result):
    (_, layer, position, feature, _) = _feature_nodes(result, 1)[0]
    nothing = [[], [Edit(f"{layer}_{feature}_{position}", scale=1.0)], [Edit("1_-1_*", scale=1)]]
    for out in intervene_many(result, nothing, generate=3, model=model, saes=saes):
        assert out.metric_after == pytest.approx(out.metric_before, abs=1e-6)
        assert out.generated_after == out.generated_before
        assert [p.token for p in out.predictions_after] == [p.token for p in out.predictions_before]
        assert out.logit_change.target.change == pytest.approx(0.0, abs=1e-6)
    first = intervene(result, [], model=model, saes=saes)
    assert [p.token for p in first.predictions_before] == [p.token for p in result.top_predictions]
    assert first.generated_before is None and first.generated_after is None


def test_every_position_edits_the_generated_tokens_too(model, saes, result):
    (hook, layer, _, feature, activation) = _feature_nodes(result, 1)[0]
    value = 4.0 * float(activation)
    n_new = 4
    out = intervene(
        result, [Edit(f"{layer}_{feature}_*", value=value)], n_new, model=model, saes=saes
    )
    tokens = prepare_prompt(model, PROMPT, **KWARGS).tokens
    changes = [(hook, None, feature, lambda f: torch.tensor(value))]
    plain = tokens
    for _ in range(n_new):
        tokens = torch.cat(
            [tokens, _by_hand(model, saes, tokens, changes)[-1].argmax()[None, None]], 1
        )
        with torch.no_grad():
            next_plain = logits_at(model, final_residual(model, plain), None)[0, -1].argmax()
        plain = torch.cat([plain, next_plain[None, None]], 1)
    n_prompt = len(result.prompt.token_ids)
    assert out.generated_after == model.to_string(tokens[0, n_prompt:])
    assert out.generated_before == model.to_string(plain[0, n_prompt:])
    assert out.generated_after != out.generated_before  # the edit is strong enough to show


def test_a_batch_equals_each_edit_set_alone(model, saes, result):
    nodes = _feature_nodes(result, 3)
    edit_sets = [
        [Edit(f"{layer}_{feature}_{position}", scale=0.0)]
        for _, layer, position, feature, _ in nodes
    ]
    edit_sets += [[Edit("0_-1_*", scale=1.5), Edit(f"{nodes[0][1]}_{nodes[0][3]}_*", value=2.0)]]
    batched = intervene_many(result, edit_sets, generate=3, model=model, saes=saes)
    for edits, together in zip(edit_sets, batched):
        alone = intervene(result, edits, generate=3, model=model, saes=saes)
        assert together.edits == alone.edits == tuple(edits)
        assert together.metric_after == pytest.approx(alone.metric_after, abs=1e-5)
        assert together.metric_before == pytest.approx(alone.metric_before, abs=1e-5)
        assert together.generated_after == alone.generated_after
        assert [p.token for p in together.predictions_after] == [
            p.token for p in alone.predictions_after
        ]


def test_patching_to_the_baseline_is_what_ablate_measures(model, saes):
    result = trace(PROMPT, model, saes, baseline_text=COUNTERFACTUAL, **KWARGS)
    top = result.top_nodes(4, exclude_bos=True)
    ids = [f"{r.layer}_{r.feature}_{r.position}" for r in top.itertuples()]
    nodes = [Node(r.hook_name, r.position, r.feature) for r in top.itertuples()]
    outs = intervene_many(
        result,
        [[Edit(i, baseline=True)] for i in ids] + [[Edit(i, baseline=True) for i in ids]],
        model=model,
        saes=saes,
    )
    real = ablate(result, [[node] for node in nodes] + [nodes], model=model, saes=saes)
    for out, effect in zip(outs, real):
        assert out.metric_before - out.metric_after == pytest.approx(float(effect), abs=1e-5)
    # Zero ablation: scale 0 and the zero baseline are the same edit.
    zero = trace(PROMPT, model, saes, **KWARGS)
    by_scale, by_baseline = intervene_many(
        zero, [[Edit(ids[0], scale=0)], [Edit(ids[0], baseline=True)]], model=model, saes=saes
    )
    assert by_scale.metric_after == pytest.approx(by_baseline.metric_after, abs=1e-6)
    (effect,) = ablate(zero, [[nodes[0]]], model=model, saes=saes)
    assert by_scale.metric_before - by_scale.metric_after == pytest.approx(float(effect), abs=1e-5)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda: Edit("9_0_1", value=1.0), "no SAE at layer 9"),
        (lambda: Edit("1_64_1", value=1.0), "feature 64 is outside"),
        (lambda: Edit("1_3_99", value=1.0), "position 99 is past the prompt"),
        (lambda: Edit("1_3", value=1.0), "not a graph node id"),
        (lambda: Edit("E_5_1", value=1.0), "not a graph node id"),
        (lambda: Edit("1_3_1", value=1.0, scale=2.0), "exactly one of"),
        (lambda: Edit("1_3_1"), "exactly one of"),
        (lambda: Edit("1_3_1", scale=2.0, baseline=True), "exactly one of"),
        (lambda: Edit("1_3_1", value=math.nan), "must be finite"),
        (lambda: Edit("1_3_1", scale=math.inf), "must be finite"),
        (lambda: Edit("1_3_1", value="3"), "must be a number"),
        (lambda: Edit("1_-1_1", value=-1.0), "cannot be negative"),
    ],
)
def test_bad_edits_are_refused_clearly(model, saes, result, edit, message):
    with pytest.raises(ValueError, match=message):
        intervene(result, [edit()], model=model, saes=saes)


def test_bad_edit_sets_are_refused_clearly(model, saes, result, monkeypatch):
    def run(edit_sets, generate=0, on=result):
        return intervene_many(on, edit_sets, generate, model=model, saes=saes)

    with pytest.raises(ValueError, match="edited twice"):
        run([[Edit("1_3_1", value=1.0), Edit("1_3_1", scale=2.0)]])
    with pytest.raises(ValueError, match="edited twice"):
        run([[Edit("1_3_1", value=1.0), Edit("1_3_*", scale=2.0)]])
    with pytest.raises(ValueError, match="No edit sets"):
        run([])
    with pytest.raises(ValueError, match="generate must be"):
        run([[]], generate=-1)
    with pytest.raises(ValueError, match="exceed the model's context"):
        run([[]], generate=20)
    with pytest.raises(ValueError, match="Edit records"):
        run([["1_3_1"]])
    monkeypatch.setattr(interventions_module, "MAX_EDITS", 2)
    with pytest.raises(ValueError, match="3 edits in one set; at most 2"):
        run([[Edit(f"1_{i}_1", value=1.0) for i in range(3)]])
    monkeypatch.setattr(interventions_module, "MAX_EDIT_SETS", 2)
    with pytest.raises(ValueError, match="3 edit sets"):
        run([[]] * 3)
    counterfactual = trace(PROMPT, model, saes, baseline_text=COUNTERFACTUAL, **KWARGS)
    with pytest.raises(ValueError, match="no value at generated positions"):
        run([[Edit("1_3_*", baseline=True)]], generate=2, on=counterfactual)


def test_concurrent_calls_never_see_each_others_edits(model, saes, result):
    edit_sets = [[Edit("1_-1_*", scale=s)] for s in (0.0, 0.5, 2.0, 3.0)] * 3
    alone = [intervene(result, edits, model=model, saes=saes).metric_after for edits in edit_sets]
    with ThreadPoolExecutor(4) as pool:
        together = list(
            pool.map(lambda e: intervene(result, e, model=model, saes=saes).metric_after, edit_sets)
        )
    assert together == pytest.approx(alone, abs=1e-6)
    assert len(set(alone[:4])) == 4
