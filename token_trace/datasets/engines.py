"""Where the shards of a dataset run are computed: in this process, or on a Ray cluster.

Both engines do the same two things with the same code: give every pending shard to a
`ShardWorker` (which writes the shard's files), and compute the aggregation partials shard by
shard (`aggregate.shard_partial`). They differ only in who runs them.

The Ray engine uses Ray Data: a dataset of shards, `map_batches` with `ShardWorker` as an actor
class (the model and SAEs load once per actor, one GPU per actor where the cluster has GPUs), and
the partials as Ray tasks. Its actors write each shard's Parquet files themselves, under the
shard's fixed name, rather than through `Dataset.write_parquet` (whose file names are per task and
random): fixed names are what let a stopped run resume and let both engines produce the same
folder. On a cluster, the output folder must therefore be shared storage that every node mounts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from token_trace.datasets.aggregate import partials_of_batch, shard_partial
from token_trace.datasets.layout import RunDir
from token_trace.datasets.settings import DatasetSettings
from token_trace.datasets.worker import Shard, ShardWorker

OnShard = Callable[[dict[str, Any]], None]


class LocalEngine:
    """Shards one after another in this process (the batch path; a GPU when present)."""

    def run_shards(
        self, shards: Sequence[Shard], settings: DatasetSettings, run_dir: RunDir, on_shard: OnShard
    ) -> None:
        if not shards:
            return
        worker = ShardWorker(settings, run_dir.root)
        for shard in shards:
            on_shard(worker.run(shard))

    def partials(
        self, run_dir: RunDir, kind: str, shards: Sequence[int], exclude_bos: bool
    ) -> list[pd.DataFrame]:
        return [shard_partial(run_dir, kind, shard, exclude_bos) for shard in shards]


class RayEngine:
    """Shards on a Ray cluster: the one `RAY_ADDRESS` (or `ray job submit`) points at, or a local
    one started for the run.

    `workers`: actors, each holding a model (default: one per GPU, else one per
    `cpus_per_worker` CPUs of the cluster).
    """

    def __init__(
        self,
        workers: int | None = None,
        cpus_per_worker: float = 1.0,
        memory_per_worker: float | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}.")
        if cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be positive, got {cpus_per_worker}.")
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        # Ray schedules actors by CPUs and GPUs only unless told their memory: a GPT-2-small
        # worker holds about 4 GiB on a CPU (benchmarks/bench_dataset.py).
        self.memory_bytes = None if memory_per_worker is None else int(memory_per_worker * 2**30)
        self.ray = _import_ray()
        if not self.ray.is_initialized():
            self.ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
        # The run's own progress bar says how far it is; Ray's per-operator bars would repeat it.
        self.ray.data.DataContext.get_current().enable_progress_bars = False

    def run_shards(
        self, shards: Sequence[Shard], settings: DatasetSettings, run_dir: RunDir, on_shard: OnShard
    ) -> None:
        if not shards:
            return
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if settings.device != "cpu" else 0
        workers = (
            self.workers or gpus or max(1, int(resources.get("CPU", 1) / self.cpus_per_worker))
        )
        shard_rows = self.ray.data.from_items(
            [shard.to_row() for shard in shards], override_num_blocks=len(shards)
        )
        summaries = shard_rows.map_batches(
            ShardWorker,
            fn_constructor_kwargs={"settings": settings, "out_dir": str(run_dir.root)},
            batch_size=1,
            batch_format="pandas",
            compute=self.ray.data.ActorPoolStrategy(size=min(workers, len(shards))),
            num_gpus=1 if gpus else 0,
            num_cpus=self.cpus_per_worker,
            memory=self.memory_bytes,
        )
        for summary in summaries.iter_rows():
            on_shard(dict(summary))

    def partials(
        self, run_dir: RunDir, kind: str, shards: Sequence[int], exclude_bos: bool
    ) -> list[pd.DataFrame]:
        if not shards:
            return []
        # One task per CPU at most, each reading its shards one after another: starting a Ray
        # worker costs more than reading a shard.
        cpus = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        items = self.ray.data.from_items(
            [{"shard": shard} for shard in shards], override_num_blocks=min(len(shards), cpus)
        )
        partials = items.map_batches(
            partials_of_batch,
            fn_kwargs={"root": str(run_dir.root), "kind": kind, "exclude_bos": exclude_bos},
            batch_size=None,
            batch_format="pandas",
        )
        # Through Arrow, so the lists come back as plain Python lists (not Arrow-backed columns).
        import pyarrow as pa

        tables = [t for t in self.ray.get(partials.to_arrow_refs()) if t.num_rows]
        return [pa.concat_tables(tables, promote_options="default").to_pandas()] if tables else []


def engine_named(
    name: str,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    memory_per_worker: float | None = None,
) -> LocalEngine | RayEngine:
    if name == "local":
        if workers is not None or memory_per_worker is not None:
            raise ValueError(
                "workers= and memory_per_worker= are for the Ray engine; the local engine runs "
                "in this process."
            )
        return LocalEngine()
    if name == "ray":
        return RayEngine(workers, cpus_per_worker, memory_per_worker)
    raise ValueError(f"Unknown engine {name!r}: use 'local' or 'ray'.")


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise ImportError(
            "The Ray engine needs Ray Data: pip install 'token-trace[dist]' "
            "(or pip install 'ray[data]')."
        ) from error
    return ray
