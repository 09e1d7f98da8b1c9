"""Writing files so that no reader ever sees half of one.

Every file token-trace writes (saved traces, graph JSON, the app's downloads, a dataset run's
shards) is written under a temporary name in the same folder and then renamed, which is atomic
on one filesystem: a crash or a concurrent reader finds the old file or the whole new one. The
temporary name starts with a dot and carries the process and thread, so concurrent writers of
the same file never share one, and readers of a folder (pyarrow skips dot files) ignore it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

#: What a stopped writer leaves behind (`Path.glob` pattern); safe to delete once it is gone.
PARTIAL_GLOB = ".*.partial"


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call `write(temporary path)`, then rename the result to `path`."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        write(partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def write_parquet(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    import pyarrow.parquet as pq

    return write_atomically(path, lambda partial: pq.write_table(table, partial))
