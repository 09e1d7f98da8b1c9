"""The Ray engine on a local 2-CPU Ray cluster: the same folder as the local engine, to float
rounding (every table, the graphs and the aggregates), and a second run resumes from it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from tests.prompt_files import MAX_TOKENS, mixed_records, write_jsonl
from token_trace import run_dataset

ray = pytest.importorskip("ray", reason="the Ray engine needs token-trace[dist]")
pytestmark = pytest.mark.slow  # a Ray cluster and two actors that import torch

SETTINGS = {
    "model": "ioi-demo",
    "device": "cpu",
    "shard_size": 3,
    "batch_size": 2,
    "max_tokens": MAX_TOKENS,
    "graph": True,
    "max_nodes": 40,
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    path = write_jsonl(folder / "prompts.jsonl", mixed_records(), malformed_after=3)
    on_ray = run_dataset(
        path, folder / "ray", engine="ray", memory_per_worker=0.5, progress=False, **SETTINGS
    )
    local = run_dataset(path, folder / "local", progress=False, **SETTINGS)
    return path, on_ray, local


def sorted_rows(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    table = table.assign(**{c: table[c].astype(str) for c in table if table[c].dtype == "category"})
    return table.sort_values(keys, kind="stable").reset_index(drop=True)


def test_ray_writes_what_the_local_engine_writes(runs):
    _, on_ray, local = runs
    assert (on_ray.n_ok, on_ray.n_errors, on_ray.n_shards) == (local.n_ok, local.n_errors, 4)
    assert not (on_ray.shards["pid"] == os.getpid()).any()  # the shards ran in Ray's actors
    pd.testing.assert_frame_equal(on_ray.prompts(), local.prompts(), rtol=1e-5, atol=1e-6)
    keys = ["prompt_id", "layer", "position", "feature"]
    pd.testing.assert_frame_equal(
        sorted_rows(on_ray.nodes(), keys), sorted_rows(local.nodes(), keys), rtol=1e-4, atol=1e-5
    )
    edge_keys = ["prompt_id", "source", "target"]
    pd.testing.assert_frame_equal(
        sorted_rows(on_ray.graph_edges(), edge_keys),
        sorted_rows(local.graph_edges(), edge_keys),
        rtol=1e-4,
        atol=1e-6,
    )


def test_ray_aggregates_what_the_local_engine_aggregates(runs):
    _, on_ray, local = runs
    feature_keys = ["hook_name", "feature"]
    ray_features = sorted_rows(on_ray.features(), feature_keys)
    local_features = sorted_rows(local.features(), feature_keys)
    numbers = ["n_prompts_active", "mean_attribution", "mean_abs_attribution", "share_of_total"]
    pd.testing.assert_frame_equal(
        ray_features[numbers], local_features[numbers], rtol=1e-4, atol=1e-6
    )
    # The top prompts' values (which prompt wins a tie at the cut may differ with rounding).
    for got, want in zip(ray_features["top_attributions"], local_features["top_attributions"]):
        np.testing.assert_allclose(np.abs(got), np.abs(want), rtol=1e-4, atol=1e-6)
    for got, want in zip(on_ray.aggregate_graph(), local.aggregate_graph()):
        keys = [c for c in got.columns if got[c].dtype == object]
        got, want = sorted_rows(got, keys), sorted_rows(want, keys)
        np.testing.assert_allclose(
            got.select_dtypes("number"), want.select_dtypes("number"), rtol=1e-4, atol=1e-6
        )


def test_a_ray_run_resumes_and_reports_its_workers(runs):
    path, on_ray, _ = runs
    assert on_ray.shards["peak_rss_mb"].gt(100).all()  # each worker holds torch and a model
    again = run_dataset(path, on_ray.out_dir, engine="ray", progress=False, **SETTINGS)
    assert (again.resumed_shards, again.prompts_run) == (on_ray.n_shards, 0)
    pd.testing.assert_frame_equal(again.features(), on_ray.features())
