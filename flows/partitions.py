"""Partitioned Parquet input: a folder of Parquet files, or a glob, read as one table.

Data too large for one file arrives as partitions: a Spark or Hive folder (``part-0000.parquet``
files, possibly under ``key=value`` sub-folders), or what DuckDB's ``COPY ... TO 'folder'
(FORMAT parquet, PARTITION_BY ...)`` writes from a query. Every partition must hold rows and the
same columns with the same types; a run stops on the first one that does not, naming the file.
Rows are numbered within their own file, so a rejected row names its partition and its row there.
"""

from __future__ import annotations

import glob
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from flows.duck import sql_literal
from flows.load import _PARQUET_SUFFIXES, InputError, _first_line, check_file

_GLOB_CHARACTERS = ("*", "?", "[")


def is_partitioned(path: str) -> bool:
    """True when ``path`` names a folder or a glob rather than one file (a file whose name holds
    a glob character is that file)."""
    p = Path(path)
    return p.is_dir() or (not p.exists() and any(c in path for c in _GLOB_CHARACTERS))


def partition_files(path: str) -> list[str]:
    """The Parquet files of a folder (at any depth) or a glob, sorted by path.

    Names starting with ``.`` or ``_`` are skipped, as Spark and Hive do (``_SUCCESS``,
    ``.part-0.parquet.crc``); in a folder only ``.parquet``/``.pq`` files are read.

    Raises
    ------
    InputError
        Nothing matches, or a glob matches a file that is not Parquet by its name.
    """
    root = Path(path)
    if root.is_dir():
        found = [f for f in root.rglob("*") if f.is_file() and f.name.lower().endswith(_PARQUET_SUFFIXES)]
        files = sorted(str(f) for f in found if not _hidden(f.relative_to(root)))
        if not files:
            raise InputError(f"{path}: the folder holds no Parquet file (*.parquet, *.pq)")
        return files
    # In a glob only the file's own name can hide it: the folders are the ones the glob names.
    matched = sorted(
        m for m in glob.glob(path, recursive=True) if Path(m).is_file() and not _hidden(Path(Path(m).name))
    )
    if not matched:
        raise InputError(f"{path}: no file matches")
    for name in matched:
        if not name.lower().endswith(_PARQUET_SUFFIXES):
            raise InputError(f"{name}: not a Parquet file by its name; partitioned input must be Parquet")
    return matched


def _hidden(path: Path) -> bool:
    return any(part.startswith((".", "_")) for part in path.parts if part not in (".", ".."))


def check_partitions(con: duckdb.DuckDBPyConnection, files: list[str]) -> list[int]:
    """Every partition's row count, after checking that each is a Parquet file with rows and the
    first one's columns and types.

    Raises
    ------
    InputError
        Naming the first file that is not Parquet, cannot be read, has no rows, or has other
        columns or types than the first.
    """
    first: list[tuple[str, str]] | None = None
    counts = []
    for name in files:
        check_file(name, "parquet")
        source = f"read_parquet({sql_literal(name)})"
        try:
            columns = [(row[0], row[1]) for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
            rows = con.execute(f"SELECT count(*) FROM {source}").fetchall()[0][0]
        except duckdb.Error as exc:
            raise InputError(f"{name}: cannot read partition ({_first_line(exc)})") from None
        if first is None:
            first = columns
        elif columns != first:
            raise InputError(
                f"{name}: {_difference(columns, first)} than {files[0]}; every partition needs the same"
            )
        if rows == 0:
            raise InputError(f"{name}: an empty partition (no rows); remove it or write it with its rows")
        counts.append(int(rows))
    return counts


def _difference(columns: list[tuple[str, str]], first: list[tuple[str, str]]) -> str:
    """How a partition's columns differ from the first partition's, in words."""
    mine, theirs = dict(columns), dict(first)
    missing = [name for name in theirs if name not in mine]
    if missing:
        return f"column {missing[0]!r} is missing: other columns"
    extra = [name for name in mine if name not in theirs]
    if extra:
        return f"column {extra[0]!r} is extra: other columns"
    for name, kind in columns:
        if theirs[name] != kind:
            return f"column {name!r} is {kind}, not {theirs[name]}: other column types"
    return "the columns come in another order: another column order"


def reader_sql(files: list[str]) -> str:
    """DuckDB's reader of the partitions as one table, rows in file order."""
    return f"read_parquet([{', '.join(sql_literal(name) for name in files)}])"


def rows_by_file(rejects: pd.DataFrame, files: list[str], counts: list[int]) -> pd.DataFrame:
    """Reject records numbered across the partitions (1 = the first file's first row), with each
    one's ``source`` and ``row_number`` now its file and its row within that file."""
    if not len(rejects):
        return rejects
    ends = np.cumsum(np.asarray(counts, dtype=np.int64))
    rows = rejects["row_number"].to_numpy(dtype=np.int64)
    at = np.searchsorted(ends, rows, side="left")  # the partition holding each global row
    starts = np.concatenate([[0], ends[:-1]])
    out = rejects.copy()
    out["source"] = np.asarray(files, dtype=object)[at]
    out["row_number"] = rows - starts[at]
    return out
