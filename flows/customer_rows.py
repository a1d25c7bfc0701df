"""A customer table's rows as validation passes them, kept in a temporary DuckDB database.

Validation hands every chunk's rows here as it goes (:meth:`ValidCustomers.add`): each row's
number and id, and the valid rows' features. Repeated ids are then found in SQL, and the valid
customers are read back in order of id by DuckDB's sort, which spills to disk beyond its buffer
(:meth:`ValidCustomers.read`). A run so holds one chunk of the table while validating, and
nothing per customer afterwards: their ids and features go from the sort straight to files.
Validated in memory and put in id order with numpy, 10^7 customers x 4 features took 0.85 GiB
(issue 12).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from flows import run_files
from flows.duck import sql_literal
from flows.matrix_file import MatrixFile
from flows.scratch import ScratchDatabase
from flows.text_file import TextFile, TextWriter
from schemas.customers import CustomerRows
from schemas.validation import TEXT_DTYPE

#: Vectors of 2,048 rows DuckDB hands over at a time when the customers are read back.
_FETCH_VECTORS = 64

#: DuckDB's buffer while it sorts the customers (it spills to disk beyond it): with 128 MB the
#: sort of 10^7 customers x 4 features adds 0.19 GiB to the process, with 256 MB 0.32 GiB.
SORT_MEMORY = "128MB"


class ValidCustomers:
    """A customer table's rows (:class:`schemas.customers.CustomerRowSink`) in a DuckDB file of a
    temporary folder, removed by :meth:`close` or when the object is garbage-collected.

    Parameters
    ----------
    names : list of str
        The feature columns, in order.
    """

    def __init__(self, names: list[str]):
        self.names = list(names)
        self._scratch = ScratchDatabase("customers")
        self.path: Path = self._scratch.path
        self._con: duckdb.DuckDBPyConnection | None = self._scratch.connect()
        values = "".join(f", v{j} DOUBLE" for j in range(len(self.names)))
        self._con.execute(
            f"CREATE TABLE rows (row_number BIGINT, customer_id VARCHAR, valid BOOLEAN{values})"
        )
        self._repeated: tuple[np.ndarray, np.ndarray] | None = None
        self._count: int | None = None
        self._files_folder: run_files.StagedFolder | None = None  # over_files' folder
        self.files: list[str] = []  # over_files' files

    def add(self, row_numbers: np.ndarray, ids: np.ndarray, valid: np.ndarray, values: np.ndarray) -> None:
        """One chunk's rows (see :class:`schemas.customers.CustomerRowSink`)."""
        if not len(row_numbers):
            return
        self._repeated = self._count = None
        con = self._connection()
        con.register("chunk", row_frame(row_numbers, ids, valid, values, len(self.names)))
        try:
            con.execute(f"INSERT INTO rows {row_select('chunk', len(self.names))}")
        finally:
            con.unregister("chunk")

    @classmethod
    def over_files(cls, names: list[str], files: list[str], folder: Path) -> ValidCustomers:
        """The rows of Parquet files written by :class:`flows.partition_validation.PartRows` (a
        cluster's workers validating their partitions), read where they are: DuckDB finds the
        repeated ids and sorts the customers from the files, no row passes through Python, and
        nothing is copied (a copy into the database took 3.9 s at 10^7 customers).
        ``folder``, which holds the files, is removed with the rows (:meth:`close`, or when they
        are let go of) unless handed over (:meth:`keep_files`); until then the publication's
        clearing of the staging folder leaves it (:class:`flows.run_files.StagedFolder`)."""
        rows = cls(names)
        rows._files_folder = run_files.StagedFolder(folder)
        rows.files = list(files)
        con = rows._connection()
        con.execute("DROP TABLE rows")
        columns = "".join(f", v{j}" for j in range(len(rows.names)))
        if files:
            listed = ", ".join(sql_literal(f) for f in files)
            con.execute(
                "CREATE VIEW rows AS SELECT row_number, customer_id, valid"
                f"{columns} FROM read_parquet([{listed}])"
            )
        else:
            values = "".join(f", v{j} DOUBLE" for j in range(len(rows.names)))
            con.execute(f"CREATE TABLE rows (row_number BIGINT, customer_id VARCHAR, valid BOOLEAN{values})")
        return rows

    def repeated(self) -> tuple[np.ndarray, np.ndarray]:
        """Source numbers and ids of the rows whose id was added more than once, by row number."""
        if self._repeated is None:
            con = self._connection()
            # The repeated ids, found once: every later query leaves their rows out by this table.
            con.execute(
                "CREATE OR REPLACE TABLE repeated AS SELECT customer_id FROM rows "
                "WHERE customer_id IS NOT NULL GROUP BY customer_id HAVING count(*) > 1"
            )
            frame = con.execute(
                "SELECT row_number, customer_id FROM rows "
                "WHERE customer_id IN (SELECT customer_id FROM repeated) ORDER BY row_number"
            ).df()
            self._repeated = (
                frame["row_number"].to_numpy(dtype=np.int64),
                np.asarray(frame["customer_id"].to_numpy(dtype=object), dtype=TEXT_DTYPE),
            )
        return self._repeated

    @property
    def _kept(self) -> str:
        """The valid customers' rows, as a FROM clause: valid rows whose id is not repeated."""
        self.repeated()
        return "FROM rows WHERE valid AND customer_id NOT IN (SELECT customer_id FROM repeated)"

    def __len__(self) -> int:
        """Valid customers: valid rows whose id is not repeated."""
        if self._count is None:
            self._count = int(self._scalar(f"SELECT count(*) {self._kept}"))
        return self._count

    @property
    def has_blanks(self) -> bool:
        """Whether some valid customer has a blank feature."""
        if not self.names:
            return False
        blank = " OR ".join(f"v{j} IS NULL" for j in range(len(self.names)))
        return bool(self._scalar(f"SELECT count(*) > 0 {self._kept} AND ({blank})"))

    def _scalar(self, sql: str):
        row = self._connection().execute(sql).fetchall()
        return row[0][0]

    def read(self, in_file: bool = True) -> CustomerRows:
        """The valid customers in order of id (compared as text, code point by code point, as
        numpy compares them; no two have the same id).

        ``in_file``: the features go to a :class:`~flows.matrix_file.MatrixFile` and the ids to a
        :class:`~flows.text_file.TextFile` as they come, the process holding one fetched chunk of
        them; otherwise into arrays."""
        n, d = len(self), len(self.names)
        ids: TextWriter | np.ndarray = TextWriter() if in_file else np.empty(n, dtype=TEXT_DTYPE)
        values = "".join(f", v{j}" for j in range(d))
        at = 0
        try:
            with self._sorted(f"customer_id{values}") as result:

                def blocks():
                    nonlocal at
                    while at < n:
                        chunk = result.fetch_df_chunk(_FETCH_VECTORS)
                        if not len(chunk):
                            break
                        m = len(chunk)
                        if isinstance(ids, TextWriter):
                            ids.append(chunk["customer_id"].tolist())  # DuckDB's str objects as they are
                        else:
                            ids[at : at + m] = chunk["customer_id"].to_numpy(dtype=object)
                        block = chunk[[f"v{j}" for j in range(d)]].to_numpy(dtype=np.float64, na_value=np.nan)
                        del chunk
                        at += m
                        yield block.reshape(m, d)

                features: MatrixFile | np.ndarray
                if in_file:
                    features = MatrixFile.from_blocks(blocks(), (n, d))
                else:
                    features = np.empty((n, d), dtype=np.float64)
                    start = 0
                    for block in blocks():
                        features[start : start + len(block)] = block
                        start += len(block)
        except BaseException:
            if isinstance(ids, TextWriter):
                ids.abandon()
            raise
        if at != n:
            raise RuntimeError(f"DuckDB gave {at} of the {n} valid customers")
        if isinstance(ids, TextWriter):
            return CustomerRows(ids.finish(), features, list(self.names))
        return CustomerRows(ids, features, list(self.names))

    @contextmanager
    def _sorted(self, columns: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """DuckDB's result of the valid customers' ``columns`` in order of id, sorted within a
        buffer of its own, smaller than the database's (see :data:`SORT_MEMORY`)."""
        con = self._connection()
        limit = self._scalar("SELECT current_setting('memory_limit')")
        con.execute(f"SET memory_limit = '{SORT_MEMORY}'")
        try:
            yield con.execute(f"SELECT {columns} {self._kept} ORDER BY customer_id")
        finally:
            con.execute(f"SET memory_limit = '{limit}'")

    def read_ids(self) -> TextFile:
        """The valid customers' ids alone, in the order of :meth:`read`, into a
        :class:`~flows.text_file.TextFile` as they come from DuckDB's sort."""
        n = len(self)
        ids = TextWriter()
        at = 0
        try:
            with self._sorted("customer_id") as result:
                while at < n:
                    chunk = result.fetch_df_chunk(_FETCH_VECTORS)
                    if not len(chunk):
                        break
                    ids.append(chunk["customer_id"].tolist())
                    at += len(chunk)
        except BaseException:
            ids.abandon()
            raise
        if at != n:
            ids.abandon()
            raise RuntimeError(f"DuckDB gave {at} of the {n} valid customers")
        return ids.finish()

    def kept_where(self, repeated_file: str | Path) -> str:
        """Write the repeated ids to the Parquet file ``repeated_file``; the SQL condition that
        keeps a row of :attr:`files` (a valid row whose id is not repeated), for readers of the
        files elsewhere (a cluster's workers)."""
        self.repeated()
        self._connection().execute(f"COPY repeated TO {sql_literal(repeated_file)} (FORMAT parquet)")
        return (
            "valid AND customer_id NOT IN "
            f"(SELECT customer_id FROM read_parquet({sql_literal(repeated_file)}))"
        )

    def keep_files(self) -> run_files.StagedFolder | None:
        """Hand over :meth:`over_files`' folder (called to remove it, else removed when let go
        of): the files then outlive :meth:`close` and this object, for readers that may need
        them again (a cluster's workers reading a lost partition again)."""
        handed, self._files_folder = self._files_folder, None
        return handed

    def to_frame(self) -> pd.DataFrame:
        """Every valid customer in order of id, indexed by row number (``customer_id`` as text and
        the features as float64): for small tables and tests."""
        values = "".join(f", v{j} AS {_quoted(name)}" for j, name in enumerate(self.names))
        frame = (
            self._connection()
            .execute(f"SELECT row_number, customer_id{values} {self._kept} ORDER BY customer_id")
            .df()
        )
        frame = frame.set_index(pd.Index(frame.pop("row_number").to_numpy(dtype=np.int64), name="row"))
        frame["customer_id"] = frame["customer_id"].astype("str")
        return frame.astype(dict.fromkeys(self.names, np.float64))

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise ValueError("ValidCustomers: the rows were closed")
        return self._con

    def close(self) -> None:
        """Close the database and remove its folder (and the files of :meth:`over_files`)."""
        if self._con is not None:
            self._con.close()
            self._con = None
        self._scratch.remove()
        if self._files_folder is not None:
            self._files_folder()

    def without_rows(self) -> ValidCustomers:
        """Release the rows (see :meth:`schemas.ValidationOutcome.without_rows`): this object,
        closed, still says how many valid customers there were."""
        if self._con is not None:
            len(self)  # counted before the rows go
        self.close()
        return self


def row_frame(
    row_numbers: np.ndarray, ids: np.ndarray, valid: np.ndarray, values: np.ndarray, d: int
) -> pd.DataFrame:
    """A chunk's rows as DuckDB scans them: ``row_number``, ``customer_id`` (Python strings),
    ``valid`` and ``v0 .. v{d-1}`` (NaN in the rows that are not valid)."""
    n = len(row_numbers)
    full = np.full((n, d), np.nan)
    full[valid] = values
    return pd.DataFrame(
        {
            "row_number": np.asarray(row_numbers, dtype=np.int64),
            "customer_id": pd.Series(np.asarray(ids, dtype=object), dtype=object),
            "valid": np.asarray(valid, dtype=bool),
            **{f"v{j}": full[:, j] for j in range(d)},
        },
        copy=False,
    )


def row_select(relation: str, d: int) -> str:
    """The SELECT of a table ``rows``'s columns from :func:`row_frame`'s ``relation``: a NaN
    feature of a valid row is a blank, NULL as SQL sees a blank."""
    columns = "".join(f", CASE WHEN isnan(v{j}) THEN NULL ELSE v{j} END AS v{j}" for j in range(d))
    # A chunk whose ids are all missing has an object column DuckDB cannot type as text alone.
    return f"SELECT row_number, CAST(customer_id AS VARCHAR) AS customer_id, valid{columns} FROM {relation}"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
