"""`run_dataset`: a file of prompts -> a folder of Parquet tables, aggregates and a report."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from token_trace import loading
from token_trace.datasets.aggregate import combine_features, combine_graph
from token_trace.datasets.engines import engine_named
from token_trace.datasets.inputs import PromptSource, fingerprint, read_prompts
from token_trace.datasets.layout import FORMAT_VERSION, RunDir, write_table
from token_trace.datasets.report import write_report
from token_trace.datasets.result import DatasetResult, read_shards
from token_trace.datasets.settings import DatasetSettings
from token_trace.datasets.worker import Shard, ShardWorker
from token_trace.labels import labels_for
from token_trace.nodes import LABEL_COLUMN
from token_trace.records import SAERecord


def run_dataset(
    prompts: PromptSource,
    out_dir: str | Path,
    *,
    engine: str = "local",
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    memory_per_worker: float | None = None,
    progress: bool = True,
    report: bool = True,
    online_labels: bool = False,
    **settings: Any,
) -> DatasetResult:
    """Attribute every prompt of a file (or DataFrame, or list of dicts) and aggregate them.

    Args:
        prompts: a JSONL, CSV or Parquet file with a `text` column and optional `answer`,
            `contrast`, `counterfactual` (older name `baseline_text`) and `id` (unique; else
            the row number is the id).
        out_dir: the output folder (see `layout`). Running again on the same folder resumes: the
            finished shards are skipped. A folder holding another run is refused.
        engine: "local" (in this process) or "ray" (Ray Data; `pip install token-trace[dist]`).
        workers, cpus_per_worker, memory_per_worker: Ray actors, and the CPUs and GiB of memory
            Ray reserves for each (default: one actor per GPU, else one per `cpus_per_worker`
            CPUs; memory unreserved).
        progress: show a progress bar with prompts/s on stderr.
        report: write `report.html`, the top features across the set.
        online_labels: also fetch the top features' explanations from Neuronpedia for the
            `label` column of `features.parquet` (cached ones and the bundled model's card
            labels are always there); network trouble only leaves labels empty.
        **settings: `DatasetSettings.of`'s keywords (model, saes, method, batch_size, graph,
            max_nodes...).

    A record that cannot be attributed (empty, too long, an answer of several tokens, malformed)
    gets status "error" and its reason in the prompts table; the run goes on.
    """
    return run_settings(
        prompts,
        out_dir,
        DatasetSettings.of(**settings),
        engine=engine,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        memory_per_worker=memory_per_worker,
        progress=progress,
        report=report,
        online_labels=online_labels,
    )


def run_settings(
    prompts: PromptSource,
    out_dir: str | Path,
    chosen: DatasetSettings,
    *,
    engine: str = "local",
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    memory_per_worker: float | None = None,
    progress: bool = True,
    report: bool = True,
    online_labels: bool = False,
) -> DatasetResult:
    """`run_dataset` with its settings as a ready record (the command builds one from flags)."""
    table = read_prompts(prompts)
    run_dir = RunDir(out_dir)
    n_shards = math.ceil(len(table) / chosen.shard_size)
    run_dir.start(
        {
            "format": FORMAT_VERSION,
            "settings": chosen.identity(),
            "prompts": {"n_prompts": len(table), "fingerprint": fingerprint(table)},
            "n_shards": n_shards,
        }
    )
    runner = engine_named(engine, workers, cpus_per_worker, memory_per_worker)
    if chosen.faithfulness_baseline == "mean" and not run_dir.means.is_file():
        # Every prompt's graph is checked against the same dataset means: computed here, before
        # any shard, by this process (its model load is the local engine's too); a resumed run
        # has them already and loads no model for them.
        ShardWorker(chosen, run_dir.root).write_means(Shard.of(0, table).records)
    finished = run_dir.finished_shards()
    size = chosen.shard_size
    pending = [
        Shard.of(index, table.iloc[index * size : (index + 1) * size])
        for index in range(n_shards)
        if index not in finished
    ]
    n_pending = sum(len(shard.records) for shard in pending)
    summaries: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(table),
        initial=len(table) - n_pending,
        unit="prompt",
        desc="attributing",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    with bar:
        errors = 0

        def on_shard(summary: dict[str, Any]) -> None:
            nonlocal errors
            summaries.append(summary)
            errors += int(summary["n_prompts"]) - int(summary["n_ok"])
            bar.update(int(summary["n_prompts"]))
            bar.set_postfix(errors=errors)

        runner.run_shards(pending, chosen, run_dir, on_shard)
    seconds = time.perf_counter() - start
    outcomes = read_shards(run_dir.shard_files("prompts"), columns=["status", "graph_nodes"])
    n_ok = int((outcomes["status"] == "ok").sum())
    n_graphs = int(outcomes["graph_nodes"].notna().sum())
    shards_done = sorted(run_dir.finished_shards())
    _aggregate(runner, run_dir, chosen, shards_done, n_ok, n_graphs, online_labels)
    result = DatasetResult(
        out_dir=run_dir.root,
        settings=chosen,
        n_prompts=len(table),
        n_ok=n_ok,
        n_errors=len(table) - n_ok,
        n_shards=n_shards,
        resumed_shards=len(finished),
        prompts_run=n_pending,
        prompts_per_second=n_pending / seconds if pending else 0.0,
        shards=pd.DataFrame(summaries),
    )
    if report:
        write_report(result)
    return result


def _aggregate(
    runner: Any,
    run_dir: RunDir,
    settings: DatasetSettings,
    shards: list[int],
    n_ok: int,
    n_graphs: int,
    online_labels: bool,
) -> None:
    """Write the aggregate tables from the finished shards (each shard read on its own);
    `n_ok` prompts were attributed, `n_graphs` of them have a graph."""
    partials = runner.partials(run_dir, "features", shards, settings.exclude_bos)
    features = combine_features(partials, n_ok)
    labels = labels_for(features, _sae_records(settings, features), online=online_labels)
    write_table(features.assign(**{LABEL_COLUMN: labels}), run_dir.features)
    if settings.graph is not None:
        nodes, edges = combine_graph(
            runner.partials(run_dir, "graph_nodes", shards, settings.exclude_bos),
            runner.partials(run_dir, "graph_edges", shards, settings.exclude_bos),
            n_graphs,
        )
        write_table(nodes, run_dir.graph_aggregate_nodes)
        write_table(edges, run_dir.graph_aggregate_edges)


def _sae_records(settings: DatasetSettings, features: pd.DataFrame) -> list[SAERecord]:
    """The run's SAEs as labels need them, from the release the settings name (SAEs from a
    `loader` have no release to read labels from)."""
    if settings.loader is not None:
        return []
    specs = loading.resolve_sae_specs(settings.saes, settings.model)
    releases = {spec.sae_id: spec.release for spec in specs}
    records = []
    for hook, sae_id, layer in features[["hook_name", "sae_id", "layer"]].drop_duplicates().values:
        release = releases.get(sae_id)
        nid = None if release is None else loading.neuronpedia_id(release, sae_id)
        records.append(SAERecord(hook, sae_id, release, int(layer), nid))
    return records
