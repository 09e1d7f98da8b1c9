"""What leaves the app as data: JSON records for the API, and files for the download buttons."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from token_trace.app.requests import Settings
from token_trace.files import write_atomically
from token_trace.graph import Graph
from token_trace.records import Trace


def records(df: pd.DataFrame) -> list[dict[str, object]]:
    """A node table as JSON-ready records with the library's column names, values exact.

    Column-wise `tolist()` turns float32 into Python floats without rounding (unlike `to_json`)
    and categoricals into their strings; missing values (no Neuronpedia page) become None.
    """
    columns = {
        name: df[name].astype(object).where(df[name].notna(), None).tolist() for name in df.columns
    }
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def summary(result: Trace) -> dict[str, object]:
    """The run's metadata for `/summary`: the flat `df.attrs` keys the API has always returned,
    the node count, and the per-token totals used for colouring."""
    return {
        **result.attrs(),
        "n_nodes": len(result.nodes),
        "position_totals": result.position_totals()["attribution"].astype(float).tolist(),
    }


#: Request folders kept in the export directory; older ones are removed (bounded disk use on a
#: long-running Space). A download link stays valid while its folder is among the newest.
MAX_EXPORT_FOLDERS = 64


def request_folder(directory: Path, settings: Settings) -> Path:
    """The request's export folder, marked as just used; the least recently used folders beyond
    `MAX_EXPORT_FOLDERS` are deleted."""
    folder = directory / settings.key()
    folder.mkdir(parents=True, exist_ok=True)
    folder.touch()  # its modification time says when it was last used
    folders = sorted(
        (path for path in directory.iterdir() if path.is_dir()),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for stale in folders[MAX_EXPORT_FOLDERS:]:
        shutil.rmtree(stale, ignore_errors=True)
    return folder


def write_exports(settings: Settings, result: Trace, directory: Path) -> dict[str, Path]:
    """The node table as CSV and Parquet, the whole trace (Parquet, `Trace.load` reads it), and
    the settings + library call as JSON.

    Files go to `directory/<settings key>/` and are written once per request (results are
    deterministic), each through a temporary file so a concurrent reader never sees half a file.
    """
    folder = request_folder(directory, settings)
    meta = {
        "settings": asdict(settings),
        "library_call": {k: v for k, v in settings.library_kwargs().items() if v is not None},
        "run": result.metadata(),
    }
    writers = {
        "csv": ("token-trace-nodes.csv", lambda path: result.nodes.to_csv(path, index=False)),
        "parquet": (
            "token-trace-nodes.parquet",
            lambda path: result.nodes.to_parquet(path, index=False),
        ),
        "trace": ("token-trace.trace.parquet", result.save),
        "json": (
            "token-trace-settings.json",
            lambda path: path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n"),
        ),
    }
    paths = {}
    for kind, (name, write) in writers.items():
        paths[kind] = folder / name
        if not paths[kind].exists():
            write_atomically(paths[kind], write)
    return paths


def write_graph(
    settings: Settings, graph: Graph, directory: Path, pinned: Sequence[str] = ()
) -> Path:
    """The pruned graph as Neuronpedia JSON with its pinned nodes (`qParams.pinnedIds`), once
    per request, thresholds and pins (atomic write)."""
    folder = request_folder(directory, settings)
    name = f"token-trace-graph-{graph.max_nodes}-{graph.node_threshold}-{graph.edge_threshold}"
    if pinned:
        name += "-pins-" + hashlib.sha256(",".join(pinned).encode()).hexdigest()[:10]
    path = folder / f"{name.replace('.', 'p')}.json"
    if not path.exists():
        graph.save_neuronpedia(path, slug=f"token-trace-{settings.key()}", pinned=pinned)
    return path
