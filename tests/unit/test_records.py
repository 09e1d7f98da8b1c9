"""The typed `Trace`: what it holds, that it round-trips exactly, and the DataFrame view of it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import PROMPT
from token_trace import (
    COLUMNS,
    Trace,
    UnknownWordsWarning,
    ablate,
    ablation_effects,
    cli,
    compute_node_attribution,
    loading,
    nodes_in,
    top_nodes,
    trace,
    trace_batch,
)
from token_trace.datasets import command as dataset_command
from token_trace.prompts import prepare_baseline, prepare_prompt, unknown_words


def test_trace_fields_describe_the_run(model, saes):
    result = trace(PROMPT, model, saes, answer=" Mary", contrast=" John")
    assert list(result.nodes.columns) == COLUMNS
    assert result.prompt.text == PROMPT and result.prompt.bos_position == 0
    assert result.prompt.tokens[0] == "<|endoftext|>" and result.prompt.target == " Mary"
    assert result.metric.name == "logit_diff" and result.metric.baseline_value is None
    assert [sae.hook_name for sae in result.saes] == list(saes)
    assert [sae.layer for sae in result.saes] == [0, 1, 2]
    assert result.saes[0].feature_url(7) == "https://www.neuronpedia.org/tiny-test/0-res/7"
    assert result.method == "atp" and result.ig_steps is None and result.baseline == "zero"
    assert result.ig_rule is None
    assert len(result.top_predictions) == 10 and result.warnings == ()


def test_an_ig_trace_records_its_rule_and_old_files_read_as_riemann(model, saes):
    rule = "gauss-legendre"
    result = trace(PROMPT, model, saes, method="ig", ig_steps=2, ig_rule=rule)
    assert result.ig_rule == rule and result.attrs()["ig_rule"] == rule
    old = json.loads(result.to_json())
    del old["ig_rule"]  # written before the rule was recorded
    assert Trace.from_json(json.dumps(old)).ig_rule == "riemann"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"answer": " Mary"},
        {"answer": " Mary", "contrast": " John", "method": "ig", "ig_steps": 3},
        {"answer": " Mary", "method": "ig", "ig_steps": 2, "ig_rule": "gauss-legendre"},
        {"baseline_text": "When Mary and John went to the store , Mary gave a book to"},
        {"metric": "loss"},
    ],
)
def test_json_and_parquet_round_trip_exactly(model, saes, tmp_path, kwargs):
    result = trace(PROMPT, model, saes, **kwargs)
    assert Trace.from_json(result.to_json()) == result
    loaded = Trace.load(result.save(tmp_path / "run.parquet"))
    assert loaded == result
    pd.testing.assert_frame_equal(loaded.nodes, result.nodes, check_exact=True)
    assert loaded.nodes["attribution"].dtype == np.float32
    assert not list(tmp_path.glob(".*partial"))  # written through a temporary name


def test_labels_round_trip_and_unlabelled_traces_stay_unlabelled(model, saes, tmp_path):
    result = trace(PROMPT, model, saes, answer=" Mary")
    texts = ["", 'names → "Mary"', "line\nbreak", "ünïcode 名前"]
    labels = pd.Series([texts[i % 4] for i in range(len(result.nodes))], dtype="str")
    labelled = Trace(**{**vars(result), "nodes": result.nodes.assign(label=labels)})
    assert labelled != result
    for copy in (
        Trace.from_json(labelled.to_json()),
        Trace.load(labelled.save(tmp_path / "labelled.parquet")),
    ):
        assert copy == labelled and copy.nodes["label"].tolist() == labels.tolist()
    assert "label" not in Trace.load(result.save(tmp_path / "plain.parquet")).nodes
    assert "label" not in Trace.from_json(result.to_json()).nodes


def test_a_changed_trace_is_not_equal(model, saes):
    result = trace(PROMPT, model, saes)
    nodes = result.nodes.copy()
    nodes.loc[0, "attribution"] += 1e-3
    assert Trace(**{**vars(result), "nodes": nodes}) != result


def test_load_refuses_other_parquet_files(tmp_path):
    path = tmp_path / "plain.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(path)
    with pytest.raises(ValueError, match="not a saved token-trace Trace"):
        Trace.load(path)


def test_dataframe_attrs_are_filled_from_the_trace(model, saes):
    result = trace(PROMPT, model, saes, answer=" Mary")
    df = compute_node_attribution(PROMPT, model, saes, answer=" Mary")
    pd.testing.assert_frame_equal(df, result.nodes)
    assert df.attrs == result.attrs()
    assert df.attrs["tokens"] == list(result.prompt.tokens)
    assert df.attrs["metric_value"] == result.metric.value


def test_a_batch_returns_one_trace_per_prompt(model, saes):
    other = "When Mary and John went to the store , Mary gave a drink to"
    batch = trace_batch([PROMPT, other], model, saes, answers=[" Mary", " John"])
    alone = trace(other, model, saes, answer=" John")
    assert [t.prompt.text for t in batch] == [PROMPT, other]
    assert batch[1].prompt == alone.prompt and batch[1].metric.name == alone.metric.name
    np.testing.assert_allclose(
        batch[1].nodes["attribution"], alone.nodes["attribution"], rtol=1e-4, atol=1e-6
    )


def test_top_nodes_k(model, saes):
    result = trace(PROMPT, model, saes)
    assert len(top_nodes(result, 0)) == len(result.nodes)  # 0: every node, largest first
    assert len(result.top_nodes(5, exclude_bos=True)) == 5
    assert (result.top_nodes(5, exclude_bos=True)["position"] != 0).all()
    with pytest.raises(ValueError, match="k must be 0"):
        result.top_nodes(-1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"answer": " Mary", "contrast": " John"},
        {"answer": " Mary went"},
        {},
        {"metric": "loss"},
        {"baseline_text": "When Mary and John went to the store , Mary gave a book to"},
    ],
)
def test_ablate_rebuilds_the_run_from_the_trace(model, saes, kwargs):
    """`ablate` takes prompt, metric and baseline from the trace: the same numbers as calling
    `ablation_effects` with the prompt prepared by hand."""
    result = trace(PROMPT, model, saes, **kwargs)
    node_sets = [[node] for node in nodes_in(result.top_nodes(6))] + [nodes_in(result.nodes)]
    prompt = prepare_prompt(model, PROMPT, kwargs.get("answer"), kwargs.get("contrast"),
                            kwargs.get("metric"))  # fmt: skip
    baseline = kwargs.get("baseline_text")
    expected = ablation_effects(
        model,
        saes,
        prompt.tokens,
        prompt.metric,
        node_sets,
        None if baseline is None else prepare_baseline(model, baseline, prompt),
    )
    real = ablate(result, node_sets, model=model, saes=saes)
    np.testing.assert_allclose(real, expected.numpy(), rtol=1e-6)


def test_unknown_words(model, saes):
    with pytest.warns(UnknownWordsWarning, match="'Zorblax'"):
        result = trace(PROMPT + " Zorblax", model, saes)
    assert result.prompt.unknown_words == ("Zorblax",)
    assert "'Zorblax'" in result.warnings[0] and "<unk>" in result.warnings[0]
    with pytest.raises(ValueError, match="does not know"):
        trace(PROMPT, model, saes, answer=" Zorblax")
    with pytest.raises(ValueError, match="does not know"):
        trace(PROMPT, model, saes, answer=" Mary", contrast=" Zorblax")
    with pytest.warns(UnknownWordsWarning, match="counterfactual"):
        trace(PROMPT, model, saes, baseline_text=PROMPT.replace("store", "Zorblax"))


def test_a_literal_unknown_token_is_not_an_unknown_word():
    """The bundled tokenizer keeps `<unk>` as a special token: typed, it is no unknown word."""
    demo = loading.load_model("ioi-demo", "cpu")
    assert "<unk>" not in unknown_words(demo, "When Mary <unk> went")
    assert unknown_words(demo, "When Mary Zorblax went") == ["Zorblax"]


def test_atp_ignores_ig_steps(model, saes):
    atp = trace(PROMPT, model, saes, ig_steps=0)
    assert atp == trace(PROMPT, model, saes)
    with pytest.raises(ValueError, match="at least 1"):
        trace(PROMPT, model, saes, method="ig", ig_steps=0)


def test_cli_help_is_fast_and_names_the_default_model():
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "token_trace.cli", "--help"], capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and "default: gpt2-small" in done.stdout
    assert "ioi-demo" in done.stdout
    assert elapsed < 3, f"--help took {elapsed:.1f} s"
    assert (cli.DEFAULT_MODEL, cli.BUNDLED_MODEL) == (loading.DEFAULT_MODEL, loading.BUNDLED_MODEL)
    assert dataset_command.DEFAULT_MODEL == loading.DEFAULT_MODEL


def test_dataset_help_is_fast_and_lists_the_engines():
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "token_trace.cli", "dataset", "--help"],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and "{local,ray}" in done.stdout
    assert elapsed < 3, f"dataset --help took {elapsed:.1f} s"


def test_cli_load_errors_name_the_flag(monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise loading.LoadError(
            "Could not load model 'gpt2'. Offline, use the bundled model 'ioi-demo', which ships "
            "with token-trace."
        )

    monkeypatch.setattr(loading, "load_model", offline)
    assert cli.main(["When John went", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--model ioi-demo" in err and "model='ioi-demo'" not in err
    assert cli.main(["When John went", "--top", "-1"]) == 2


def test_token_tensor_prompts_have_no_text(model, saes):
    tokens = model.to_tokens(PROMPT)
    result = trace(tokens, model, saes)
    assert result.prompt.text is None and result.prompt.token_ids == tuple(tokens[0, :-1].tolist())
    assert Trace.from_json(result.to_json()) == result
    assert isinstance(torch.tensor(result.prompt.token_ids), torch.Tensor)
