"""Dataset runs on the bundled model with the local engine: per-prompt rows equal single calls,
bad records are recorded and passed, the aggregates equal a pandas computation, runs resume."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import PROMPT, ROOT
from tests.prompt_files import BAD, MAX_TOKENS, mixed_records, write_jsonl
from token_trace import (
    cli,
    compute_graph,
    compute_node_attribution,
    read_prompts,
    run_dataset,
    trace,
)
from token_trace.app import theme
from token_trace.datasets import worker as worker_module
from token_trace.datasets.engines import LocalEngine
from token_trace.datasets.layout import RunDir, RunFolderError

SETTINGS = {
    "model": "ioi-demo",
    "device": "cpu",
    "shard_size": 4,
    "batch_size": 3,
    "max_tokens": MAX_TOKENS,
}
SORT = ["layer", "position", "feature"]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prompts")
    return write_jsonl(folder / "prompts.jsonl", mixed_records(), malformed_after=3)


@pytest.fixture(scope="module")
def finished(prompt_file, tmp_path_factory):
    return run_dataset(
        prompt_file, tmp_path_factory.mktemp("run") / "out", progress=False, **SETTINGS
    )


def comparable(nodes: pd.DataFrame) -> pd.DataFrame:
    """A node table in a fixed row order, text columns as plain strings."""
    table = nodes.drop(columns=["prompt_id"], errors="ignore").sort_values(SORT)
    table = table.reset_index(drop=True)
    for column in ("hook_name", "sae_id", "node_type", "token", "neuronpedia_url"):
        table[column] = table[column].astype(object).where(table[column].notna(), None)
        table[column] = table[column].map(lambda v: None if v is None else str(v))
    return table


def request_of(record: dict) -> dict:
    """A record's fields as the library's arguments (bundled model, CPU)."""
    fields = {name: record.get(name) for name in ("answer", "contrast", "baseline_text")}
    return {"text": record["text"], "model": "ioi-demo", "device": "cpu", **fields}


def single_call(record: dict) -> pd.DataFrame:
    """`compute_node_attribution` on one record: its node table, the run's metadata in attrs."""
    return compute_node_attribution(**request_of(record))


def test_every_record_gets_a_row_and_bad_ones_their_reason(finished):
    prompts = finished.prompts()
    records = mixed_records()
    assert len(prompts) == len(records) + 1  # and the malformed line
    by_id = prompts.set_index("prompt_id")
    for key, (_, word) in BAD.items():
        assert by_id.loc[key, "status"] == "error"
        assert word in by_id.loc[key, "error"], by_id.loc[key, "error"]
    malformed = prompts[prompts["error"].fillna("").str.contains("not valid JSON")]
    assert list(malformed["row"]) == [4]  # the line after the fourth record
    good = [r["id"] for r in records if "id" in r and r["id"].startswith("ioi")]
    assert (by_id.loc[good, "status"] == "ok").all()
    assert (finished.n_ok, finished.n_errors) == (6, len(BAD) + 1)
    assert list(prompts["row"]) == list(range(len(prompts)))
    warned = by_id.loc[good[5], "warnings"]
    assert len(warned) == 1 and "Blorptastic" in warned[0]


def test_each_prompts_rows_equal_a_single_call(finished):
    prompts = finished.prompts().set_index("prompt_id")
    for record in mixed_records():
        if not record.get("id", "").startswith("ioi"):
            continue
        expected = single_call(record)
        got = finished.nodes([record["id"]])
        pd.testing.assert_frame_equal(
            comparable(got), comparable(expected), check_dtype=False, rtol=1e-4, atol=1e-5
        )
        row = prompts.loc[record["id"]]
        assert row["metric_value"] == pytest.approx(expected.attrs["metric_value"], abs=1e-5)
        assert list(row["tokens"]) == list(expected.attrs["tokens"])
        assert row["n_nodes"] == len(expected)
        error_rows = expected["node_type"] == "error"
        assert row["error_attribution"] == pytest.approx(
            expected.loc[error_rows, "attribution"].sum(), abs=1e-4
        )


def test_the_feature_aggregate_equals_a_pandas_computation(finished):
    nodes = finished.nodes()
    ok = finished.prompts().query("status == 'ok'")["prompt_id"]
    keys = ["hook_name", "layer", "feature"]
    nodes["hook_name"] = nodes["hook_name"].astype(str)
    # One column per prompt: each key's attribution summed over positions, 0 where inactive.
    totals = nodes.pivot_table(
        index=keys, columns="prompt_id", values="attribution", aggfunc="sum"
    ).reindex(columns=ok)
    expected = pd.DataFrame(
        {
            "n_prompts_active": totals.notna().sum(axis=1),
            "mean_attribution": totals.fillna(0).mean(axis=1),
            "mean_abs_attribution": totals.abs().fillna(0).mean(axis=1),
        }
    )
    expected["share_of_total"] = (
        expected["mean_abs_attribution"] / expected["mean_abs_attribution"].sum()
    )
    got = finished.features().set_index(keys)
    got.index = got.index.set_levels(got.index.levels[0].astype(str), level=0)
    assert len(got) == len(expected)
    got = got.loc[expected.index]
    for column in expected.columns:
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-5, atol=1e-7)
    for key in expected.sort_values("mean_abs_attribution").index[-3:]:
        column = totals.loc[key].dropna()
        best = column.abs().sort_values(ascending=False).index[:5]
        assert list(got.loc[key, "top_prompt_ids"]) == list(best)
        np.testing.assert_allclose(got.loc[key, "top_attributions"], column[best], rtol=1e-5)
    error_layers = nodes.loc[nodes["node_type"] == "error", "hook_name"].nunique()
    assert (got.reset_index()["feature"] == -1).sum() == error_layers


def test_features_carry_the_labels_a_single_trace_shows_into_the_report(finished):
    features = finished.features()
    record = next(r for r in mixed_records() if r.get("id", "").startswith("ioi"))
    labelled = trace(**request_of(record)).with_labels().nodes
    by_feature = labelled.assign(hook_name=labelled["hook_name"].astype(str)).drop_duplicates(
        ["hook_name", "feature"]
    )
    both = features.merge(by_feature, on=["hook_name", "feature"], suffixes=("", "_trace"))
    assert len(both) > 10 and (both["label"] == both["label_trace"]).all()
    is_error = features["node_type"] == "error"
    assert (features.loc[is_error, "label"] == "").all()
    assert (features.loc[~is_error, "label"] != "").all()
    report = finished.run_dir.report.read_text()
    top = features[~is_error].iloc[0]
    assert html.escape(top["label"]) in report


def test_the_aggregate_can_leave_bos_out(finished, prompt_file, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished.out_dir, out)
    again = run_dataset(prompt_file, out, progress=False, exclude_bos=True, **SETTINGS)
    assert again.prompts_run == 0  # the shards are reused; only the aggregate is rebuilt
    without = again.features()
    bos_nodes = finished.nodes().query("position == 0")
    assert (
        len(bos_nodes)
        and without["n_prompts_active"].sum() < finished.features()["n_prompts_active"].sum()
    )


def test_the_report_colours_signs_as_the_app_does(finished):
    """Red raises the metric and blue lowers it, in the report as on the app's page."""
    html = finished.run_dir.report.read_text()
    figures = re.findall(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', html, re.S)
    (bars,) = json.loads(figures[0])
    features = finished.features()
    top = features[features["node_type"] == "feature"].head(len(bars["marker"]["color"]))
    signs = top["mean_attribution"].to_numpy()[::-1]
    expected = [theme.POSITIVE if value >= 0 else theme.NEGATIVE for value in signs]
    assert bars["marker"]["color"] == expected
    assert theme.POSITIVE in expected and theme.NEGATIVE in expected
    # the report takes the colours from the library, which never imports the app
    code = "import sys, token_trace.datasets.report; print('token_trace.app' in sys.modules)"
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "False"


def test_a_stopped_run_resumes_where_it_stopped(finished, prompt_file, tmp_path):
    out = tmp_path / "stopped"
    shutil.copytree(finished.out_dir, out)
    run_dir = RunDir(out)
    shard_one = pd.read_parquet(run_dir.shard("prompts", 1))
    run_dir.shard("prompts", 1).unlink()  # the run stopped inside shard 1...
    (out / "nodes" / ".shard-00001.parquet.123.partial").write_bytes(b"half a file")
    resumed = run_dataset(prompt_file, out, progress=False, **SETTINGS)
    assert resumed.resumed_shards == finished.n_shards - 1
    assert resumed.prompts_run == len(shard_one)
    assert not list(out.rglob("*.partial"))
    pd.testing.assert_frame_equal(resumed.prompts(), finished.prompts())
    pd.testing.assert_frame_equal(resumed.features(), finished.features(), rtol=1e-6)


def test_a_folder_holding_another_run_is_refused(finished, prompt_file, tmp_path):
    with pytest.raises(RunFolderError, match="shard_size"):
        run_dataset(prompt_file, finished.out_dir, progress=False, **(SETTINGS | {"shard_size": 5}))
    other = write_jsonl(tmp_path / "other.jsonl", mixed_records()[:3])
    with pytest.raises(RunFolderError, match="prompts"):
        run_dataset(other, finished.out_dir, progress=False, **SETTINGS)


def test_a_batch_out_of_memory_is_split_until_it_fits(prompt_file, finished, tmp_path):
    class SmallMemoryWorker(worker_module.ShardWorker):
        """Runs out of memory on any batch of more than one prompt."""

        def _trace(self, records):
            if len(records) > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
            return super()._trace(records)

    settings = worker_module.DatasetSettings.of(**SETTINGS)
    run_dir = RunDir(tmp_path / "oom")
    run_dir.start({"test": True})
    table = read_prompts(prompt_file)
    SmallMemoryWorker(settings, run_dir.root).run(worker_module.Shard.of(0, table))
    prompts = pd.read_parquet(run_dir.shard("prompts", 0))
    expected = finished.prompts()
    assert list(prompts["status"]) == list(expected["status"])
    np.testing.assert_allclose(prompts["metric_value"], expected["metric_value"], atol=1e-5)
    nodes = pd.read_parquet(run_dir.shard("nodes", 0))
    assert len(nodes) == len(finished.nodes())


def test_csv_parquet_and_frames_read_like_jsonl(tmp_path):
    records = [r for r in mixed_records() if r.get("id") != "text-not-string"]
    jsonl = read_prompts(write_jsonl(tmp_path / "p.jsonl", records))
    frame = pd.DataFrame(records)
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_parquet(tmp_path / "p.parquet")
    for source in (tmp_path / "p.csv", tmp_path / "p.parquet", frame, records):
        pd.testing.assert_frame_equal(read_prompts(source), jsonl)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "a"}\n', "no 'text' column"),
        ('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', "must be unique"),
        ("\n", "no records"),
    ],
)
def test_unusable_files_fail_at_once_with_a_reason(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_prompts(path)


def test_an_unknown_file_type_is_named(tmp_path):
    (tmp_path / "p.txt").write_text("When Mary and John went to the store")
    with pytest.raises(ValueError, match=r"'p.txt'.*\.jsonl, \.csv or \.parquet"):
        read_prompts(tmp_path / "p.txt")


def test_the_cli_runs_a_dataset_and_reports_errors_plainly(prompt_file, tmp_path, capsys):
    argv = ["dataset", str(prompt_file), "--out", str(tmp_path / "cli"), "--model", "ioi-demo"]
    argv += ["--device", "cpu", "--max-tokens", str(MAX_TOKENS), "--quiet"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 attributed" in printed and "prompts/s" in printed
    report = (tmp_path / "cli" / "report.html").read_text()
    assert report.count("Top features") == 1 and "not valid JSON" in report
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": ""}, {"text": 3}])
    assert cli.main([*argv[:1], str(bad), "--out", str(tmp_path / "bad"), *argv[4:]]) == 0
    printed = capsys.readouterr().out
    assert "0 attributed, 2 failed" in printed and "No active features" in printed
    assert cli.main(["dataset", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert "No prompt file" in capsys.readouterr().err
    argv = [
        "dataset",
        str(prompt_file),
        "--out",
        str(tmp_path / "x"),
        "--model",
        "gpt-7",
        "--quiet",
    ]
    assert cli.main(argv) == 2
    assert "Unknown model 'gpt-7'" in capsys.readouterr().err


def test_graphs_per_prompt_and_over_the_set(tmp_path):
    records = [r for r in mixed_records() if r.get("id", "").startswith("ioi")][:3]
    path = write_jsonl(tmp_path / "g.jsonl", records)
    options = {"max_nodes": 40, "node_threshold": 0.9, "edge_threshold": 0.99}
    result = run_dataset(
        path, tmp_path / "out", progress=False, graph=True, faithfulness=True, **SETTINGS,
        **options,
    )  # fmt: skip
    report = result.run_dir.report.read_text()
    assert "None: every record was attributed." in report
    prompts = result.prompts().set_index("prompt_id")
    shares = []
    for record in records:
        graph = compute_graph(**request_of(record), **options)
        check = graph.faithfulness()  # each prompt's graph, every other node at its baseline
        row = prompts.loc[record["id"]]
        assert row["graph_faithfulness"] == pytest.approx(check.faithfulness, abs=1e-4)
        assert row["graph_complement_faithfulness"] == pytest.approx(
            check.complement_faithfulness, abs=1e-4
        )
        shares.append(check.faithfulness)
        got = result.graph_edges([record["id"]]).drop(columns="prompt_id")
        got = got.sort_values(["source", "target"]).reset_index(drop=True)
        want = graph.edges.sort_values(["source", "target"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_dtype=False, check_categorical=False)
    # The aggregate graph: positions dropped from the ids, summed per prompt, mean over prompts.
    edges = result.graph_edges()
    for end in ("source", "target"):
        key = edges[end].str.rsplit("_", n=1).str[0]
        edges[end] = key.where(edges[f"{end}_type"] != "metric", "metric")
    per_prompt = edges.groupby(["source", "target", "prompt_id"])["weight"].sum()
    expected = per_prompt.groupby(["source", "target"]).sum() / len(records)
    _, aggregate = result.aggregate_graph()
    got = aggregate.set_index(["source", "target"])["mean_weight"]
    assert len(got) == len(expected)
    np.testing.assert_allclose(got.loc[expected.index], expected, rtol=1e-9)
    assert f"recover a mean {np.mean(shares):.0%}" in report
    with pytest.raises(ValueError, match="pass graph=True"):
        run_dataset(path, tmp_path / "none", progress=False, faithfulness=True, **SETTINGS)


def test_mean_ablation_faithfulness_uses_the_datasets_means(tmp_path):
    """With faithfulness_baseline='mean', every prompt's graph is checked with the nodes outside
    it at their mean over the dataset's prompts (written once to means.pt, read back on resume)."""
    from token_trace import loading, mean_activations

    records = [r for r in mixed_records() if r.get("id", "").startswith("ioi")][:3]
    path = write_jsonl(tmp_path / "m.jsonl", records)
    options = {"max_nodes": 40, "node_threshold": 0.9, "edge_threshold": 0.99}
    chosen = {**SETTINGS, **options, "graph": True, "faithfulness": True}
    out = tmp_path / "out"
    result = run_dataset(path, out, progress=False, faithfulness_baseline="mean", **chosen)
    assert (out / "means.pt").is_file()
    model = loading.load_model("ioi-demo", "cpu")
    saes = loading.load_saes(loading.resolve_sae_specs(None, "ioi-demo"), device="cpu")
    means = mean_activations(model, saes, [r["text"] for r in records])
    prompts = result.prompts().set_index("prompt_id")
    for record in records:
        graph = compute_graph(**request_of(record), **options)
        check = graph.faithfulness(means=means)
        own = graph.faithfulness()
        row = prompts.loc[record["id"]]
        assert row["graph_faithfulness"] == pytest.approx(check.faithfulness, abs=1e-4)
        assert row["graph_faithfulness"] != pytest.approx(own.faithfulness, abs=1e-3)
    assert "its mean over the dataset" in result.run_dir.report.read_text()
    again = run_dataset(path, out, progress=False, faithfulness_baseline="mean", **chosen)
    assert again.prompts_run == 0  # resumed: nothing left to run, the means read back
    with pytest.raises(ValueError, match="applies with faithfulness=True"):
        run_dataset(path, tmp_path / "x", progress=False, faithfulness_baseline="mean",
                    graph=True, **SETTINGS)  # fmt: skip
    with pytest.raises(ValueError, match="Unknown faithfulness baseline"):
        run_dataset(path, tmp_path / "y", progress=False, faithfulness_baseline="median", **chosen)


def test_a_loader_builds_models_the_registries_do_not_know(tmp_path, model, saes):
    texts = [PROMPT, "The capital of France is Paris"]
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": text} for text in texts])
    result = run_dataset(
        path, tmp_path / "out", progress=False, model="tiny", loader="tests.prompt_files:tiny_pair"
    )
    assert result.n_ok == 2
    for index, text in enumerate(texts):
        expected = trace(text, model, saes).nodes
        got = result.nodes([str(index)])
        pd.testing.assert_frame_equal(
            comparable(got), comparable(expected), check_dtype=False, rtol=1e-4, atol=1e-5
        )
    with pytest.raises(ValueError, match="Cannot import the loader"):
        run_dataset(path, tmp_path / "x", progress=False, loader="tests.prompt_files:nothing")
    with pytest.raises(ValueError, match=r"package\.module:function"):
        run_dataset(path, tmp_path / "y", progress=False, loader="tiny_pair")


def test_the_local_engine_refuses_ray_options():
    from token_trace.datasets.engines import engine_named

    assert isinstance(engine_named("local"), LocalEngine)
    with pytest.raises(ValueError, match="Ray engine"):
        engine_named("local", workers=2)
    with pytest.raises(ValueError, match="Ray engine"):
        engine_named("local", memory_per_worker=4.0)
    with pytest.raises(ValueError, match="Unknown engine"):
        engine_named("spark")
