"""Temporary DuckDB databases that keep a run's bulk rows on disk rather than in memory."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import duckdb

from flows.duck import connect

#: DuckDB's buffer for a scratch database (it spills to disk beyond it).
MEMORY_LIMIT = "256MB"


class ScratchDatabase:
    """A DuckDB file in a temporary ``segment-<prefix>-*`` folder (the system's temporary folder,
    ``TMPDIR``), removed by :meth:`remove` or when the object is garbage-collected. A run that is
    killed leaves its folder to the system's temporary-file cleaning.
    """

    def __init__(self, prefix: str):
        self.folder = Path(tempfile.mkdtemp(prefix=f"segment-{prefix}-"))
        self.path = self.folder / f"{prefix}.duckdb"
        self._remove = weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)

    def connect(self, read_only: bool = False, memory_limit: str = MEMORY_LIMIT) -> duckdb.DuckDBPyConnection:
        """A connection to the file, its buffer within ``memory_limit``, spilling beside it."""
        return connect(
            self.path,
            read_only=read_only,
            config={"memory_limit": memory_limit, "temp_directory": str(self.folder / "spill")},
        )

    def remove(self) -> None:
        """Remove the folder (every connection to the file must be closed)."""
        self._remove()

    @property
    def removed(self) -> bool:
        return not self._remove.alive
