"""A transaction log's valid lines, kept in a temporary DuckDB database instead of in memory.

Validation appends each chunk's valid lines as it goes (:meth:`TransactionLines.append`) and the
RFM SQL (:func:`flows.features.rfm_table`) reads them from there, so a run holds one chunk of the
log at a time, not the log: at 10^7 lines a log validated whole took 3.2 GiB (issue 12). DuckDB
keeps its buffer within :data:`flows.scratch.MEMORY_LIMIT` and spills beyond it beside the file.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from flows.scratch import ScratchDatabase
from schemas.transactions import line_amounts

#: The lines' columns as the RFM SQL reads them (``flows/sql/rfm_lines.sql``), plus the row number.
_COLUMNS = (
    ("row_number", "BIGINT"),
    ("customer_id", "VARCHAR"),
    ("invoice_id", "VARCHAR"),
    ("timestamp", "TIMESTAMP"),
    ("amount", "DOUBLE"),
)


class TransactionLines:
    """Valid transaction lines in a DuckDB file of a temporary folder
    (:class:`flows.scratch.ScratchDatabase`), removed by :meth:`close` or when the object is
    garbage-collected."""

    def __init__(self) -> None:
        self._scratch = ScratchDatabase("lines")
        self.path: Path = self._scratch.path
        self._con: duckdb.DuckDBPyConnection | None = self._scratch.connect()
        columns = ", ".join(f'"{name}" {kind}' for name, kind in _COLUMNS)
        # A temporary table: DuckDB spills it uncompressed beside the file beyond its buffer,
        # where a stored one is compressed at every checkpoint (at 10^7 lines validate took
        # 9.0 s, not 15.4, and the RFM SQL reading it back 6.8 s, not 5.7).
        self._con.execute(f"CREATE TEMP TABLE lines ({columns})")
        self.has_invoice = False
        self._count = 0

    def append(self, valid: pd.DataFrame) -> None:
        """Add a chunk of validated lines (index: source row numbers; ``customer_id``,
        ``timestamp``, and ``amount`` or ``quantity`` and ``unit_price``, optionally ``invoice_id``)."""
        if not len(valid):
            return
        self.has_invoice = self.has_invoice or "invoice_id" in valid.columns
        chunk = pd.DataFrame(
            {
                "row_number": valid.index.to_numpy(np.int64),
                "customer_id": valid["customer_id"],
                "invoice_id": valid["invoice_id"] if "invoice_id" in valid.columns else "",
                "timestamp": valid["timestamp"],  # naive: the schema coerces offsets to UTC
                "amount": line_amounts(valid),
            }
        )
        con = self._connection()
        con.register("chunk", chunk)
        try:
            con.execute("INSERT INTO lines SELECT * FROM chunk")
        finally:
            con.unregister("chunk")
        self._count += len(chunk)

    def __len__(self) -> int:
        return self._count

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The open connection to the lines (table ``lines``), for the RFM SQL."""
        return self._connection()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise ValueError("TransactionLines: the lines were closed")
        return self._con

    def time_range(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """The first and last line's timestamp (None without lines)."""
        row = self._connection().execute('SELECT min("timestamp"), max("timestamp") FROM lines').fetchone()
        if row is None or row[0] is None:
            return None
        return pd.Timestamp(row[0]), pd.Timestamp(row[1])

    def default_as_of(self) -> date | None:
        """The day after the last line (None without lines): see :func:`flows.features.default_as_of`."""
        span = self.time_range()
        return None if span is None else (span[1].normalize() + timedelta(days=1)).date()

    def to_frame(self) -> pd.DataFrame:
        """Every line in source order (for small logs and tests), indexed by row number."""
        frame = self._connection().execute("SELECT * FROM lines ORDER BY row_number").df()
        return frame.set_index(pd.Index(frame.pop("row_number"), name="row"))

    def close(self) -> None:
        """Close the database and remove its folder."""
        if self._con is not None:
            self._con.close()
            self._con = None
        self._scratch.remove()

    def without_rows(self) -> TransactionLines:
        """Release the lines (see :meth:`schemas.ValidationOutcome.without_rows`): this object,
        closed, still says how many lines there were."""
        self.close()
        return self
