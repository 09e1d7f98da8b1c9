"""A finished dataset run: its counts and speed, and readers of the tables in its folder.

Apart from `run` (which makes one) so that the report, which reads one, never imports the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads

from token_trace.datasets.layout import RunDir
from token_trace.datasets.settings import DatasetSettings


@dataclass(frozen=True)
class DatasetResult:
    """A finished dataset run: counts, speed, and readers of the tables in `out_dir`."""

    out_dir: Path
    settings: DatasetSettings
    n_prompts: int
    n_ok: int
    n_errors: int
    n_shards: int
    #: Shards found finished in `out_dir` and skipped (a resumed run).
    resumed_shards: int
    #: Prompts attributed by this call, and their rate over the attribution time.
    prompts_run: int
    prompts_per_second: float
    #: One row per shard run by this call: prompts, seconds, peak memory of its worker, device.
    shards: pd.DataFrame

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.out_dir)

    def prompts(self) -> pd.DataFrame:
        """One row per prompt, in file order: status, error, metric value, tokens..."""
        table = read_shards(self.run_dir.shard_files("prompts"))
        return table.sort_values("row", kind="stable").reset_index(drop=True)

    def nodes(
        self, prompt_ids: list[str] | None = None, columns: list[str] | None = None
    ) -> pd.DataFrame:
        """Node rows of all prompts, or of `prompt_ids` only (read without loading the rest)."""
        return read_shards(self.run_dir.shard_files("nodes"), prompt_ids, columns)

    def features(self) -> pd.DataFrame:
        """The aggregate per (SAE, feature) and per error layer (see `aggregate`)."""
        return pd.read_parquet(self.run_dir.features)

    def graph_nodes(self, prompt_ids: list[str] | None = None) -> pd.DataFrame:
        """Each prompt's pruned graph nodes (runs with `graph=True`)."""
        return read_shards(self.run_dir.shard_files("graph_nodes"), prompt_ids)

    def graph_edges(self, prompt_ids: list[str] | None = None) -> pd.DataFrame:
        """Each prompt's pruned graph edges (runs with `graph=True`)."""
        return read_shards(self.run_dir.shard_files("graph_edges"), prompt_ids)

    def aggregate_graph(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The graph over all prompts: (nodes, edges), positions summed, means over prompts."""
        return (
            pd.read_parquet(self.run_dir.graph_aggregate_nodes),
            pd.read_parquet(self.run_dir.graph_aggregate_edges),
        )


def read_shards(
    files: list[Path], prompt_ids: list[str] | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """Finished shard files as one table (files of unfinished shards are never read)."""
    if not files:
        raise FileNotFoundError("This run has no finished shards yet.")
    dataset = pads.dataset([str(path) for path in files], format="parquet")
    where = None if prompt_ids is None else pads.field("prompt_id").isin(list(prompt_ids))
    return dataset.to_table(columns=columns, filter=where).to_pandas()
