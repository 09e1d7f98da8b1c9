"""The output folder of a dataset run: where each file goes, how it is written, what is finished.

    DIR/run.json                      settings, the prompts' fingerprint, the shard size
    DIR/prompts/shard-00000.parquet   one row per prompt (status, error, metric value, tokens...)
    DIR/nodes/shard-00000.parquet     every prompt's node rows, with its `prompt_id`
    DIR/graph_nodes/, graph_edges/    with graphs: each prompt's pruned graph
    DIR/features.parquet              the aggregate per (SAE, feature) and per error layer
    DIR/graph_aggregate_nodes.parquet, graph_aggregate_edges.parquet    with graphs
    DIR/means.pt                      with mean-ablation faithfulness: the SAEs' dataset means
    DIR/report.html

Each shard's files are written through temporary names and its prompts file last, so a shard is
finished exactly when its prompts file exists: a run stopped at any moment resumes by skipping
those shards, and never reads half a file. Reading a folder (`pd.read_parquet(DIR / "nodes")`)
streams the shards; filters on `prompt_id` read only the row groups that hold it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from token_trace.files import PARTIAL_GLOB, write_parquet, write_text

FORMAT_VERSION = 1


class RunFolderError(ValueError):
    """The output folder holds a run made with other settings or other prompts."""


class RunDir:
    """Paths and atomic writes inside one run's output folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def manifest(self) -> Path:
        return self.root / "run.json"

    @property
    def features(self) -> Path:
        return self.root / "features.parquet"

    @property
    def graph_aggregate_nodes(self) -> Path:
        return self.root / "graph_aggregate_nodes.parquet"

    @property
    def graph_aggregate_edges(self) -> Path:
        return self.root / "graph_aggregate_edges.parquet"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def means(self) -> Path:
        """The SAEs' mean activations over the prompts (mean-ablation faithfulness)."""
        return self.root / "means.pt"

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def shard(self, table: str, index: int) -> Path:
        return self.root / table / f"shard-{index:05d}.parquet"

    def finished_shards(self) -> set[int]:
        """Shards whose prompts file exists: all their files are complete."""
        folder = self.table_dir("prompts")
        if not folder.is_dir():
            return set()
        return {int(path.stem.split("-")[1]) for path in folder.glob("shard-*.parquet")}

    def shard_files(self, table: str) -> list[Path]:
        """The finished shards' files of `table`, in shard order."""
        return [self.shard(table, index) for index in sorted(self.finished_shards())]

    def start(self, manifest: Mapping[str, Any]) -> None:
        """Create the folder, or check that the run already in it is this one; then clear the
        temporary files a stopped run may have left."""
        existing = self.read_manifest()
        if existing is not None:
            if existing != json.loads(json.dumps(manifest)):
                raise RunFolderError(
                    f"{str(self.root)!r} holds a run with other settings or other prompts "
                    f"({_difference(existing, manifest)}); choose another output folder, or "
                    "delete this one to start over."
                )
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            write_text(self.manifest, json.dumps(manifest, indent=2, sort_keys=True))
        for partial in self.root.rglob(PARTIAL_GLOB):
            partial.unlink(missing_ok=True)

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest.is_file():
            return None
        return json.loads(self.manifest.read_text())


def write_table(frame: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> None:
    """Write a Parquet file in `schema` (inferred when None), creating its folder; atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)


def _difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    new = json.loads(json.dumps(new))
    changed = []
    for key in sorted(set(old) | set(new)):
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            inner = [k for k in set(old[key]) | set(new[key]) if old[key].get(k) != new[key].get(k)]
            changed += [f"{key}.{k}" for k in sorted(inner)]
        elif old.get(key) != new.get(key):
            changed.append(key)
    return "differs in " + ", ".join(changed)
