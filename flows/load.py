"""Loading input data (CSV, Parquet, a DuckDB table or query) through DuckDB into a DataFrame."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from flows.config import InputSettings
from flows.duck import quote_identifier, quote_qualified


class InputError(ValueError):
    """The input cannot be read as configured; the message names the file and what is wrong."""


@dataclass(frozen=True)
class LoadedInput:
    """Rows read from the input, with canonical column names.

    Attributes
    ----------
    frame : DataFrame
        One row per input row; columns are the canonical names (``customer_id``, ``timestamp`` ...)
        or, for a customer table, ``customer_id`` plus the feature columns under their own names.
        The index is the 1-based row number in the source (data rows, header not counted).
    source : str
        What was read, for messages and the ``rejected_rows`` table (a path, ``path:table`` or ``path:query``).
    source_columns : dict
        Canonical column name -> the column's name in the source, to name columns in errors and rejects.
    """

    frame: pd.DataFrame
    source: str
    source_columns: dict[str, str] = field(default_factory=dict)


_CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt", ".csv.zst", ".tsv.gz", ".txt.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_DUCKDB_SUFFIXES = (".duckdb", ".db", ".ddb")


def source_format(path: str) -> str:
    """``"csv"``, ``"parquet"`` or ``"duckdb"`` from the file name; InputError for anything else."""
    name = path.lower()
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_DUCKDB_SUFFIXES):
        return "duckdb"
    raise InputError(
        f"{path}: unknown input format; expected a .csv/.csv.gz/.tsv, .parquet or .duckdb file"
    )


def wanted_columns(settings: InputSettings, features: list[str]) -> dict[str, str]:
    """Canonical name -> source column for every column the run needs (nothing else is read)."""
    if settings.kind == "transactions":
        return dict(settings.columns)
    wanted = {"customer_id": settings.columns.get("customer_id", "customer_id")}
    for feature in features:
        wanted[feature] = settings.columns.get(feature, feature)
    return wanted


def load_input(settings: InputSettings, features: list[str]) -> LoadedInput:
    """Read the configured input into a DataFrame with canonical column names.

    CSV columns are read as text so that a malformed value becomes a per-row validation reject
    instead of failing the whole read; Parquet and DuckDB columns keep their types. Customer ids
    are text, trimmed, with the ``.0`` that spreadsheet exports append to integer ids removed.

    Parameters
    ----------
    settings : InputSettings
        Path, kind, optional table or query, and the column mapping.
    features : list of str
        Feature columns of a customer table (ignored for a transaction log).

    Raises
    ------
    InputError
        Missing file, unknown format, missing column, or a table/query DuckDB cannot run.
    """
    path = settings.path
    if not Path(path).exists():
        raise InputError(f"{path}: input file not found")
    fmt = source_format(path)
    columns = wanted_columns(settings, features)
    source = path
    con = duckdb.connect()
    try:
        if fmt == "duckdb":
            con.execute("ATTACH ? AS src (READ_ONLY)", [path])
            con.execute("USE src")
            if settings.query:
                relation_sql = f"({settings.query})"
                source = f"{path}:query"
            elif settings.table:
                relation_sql = quote_qualified(settings.table)
                source = f"{path}:{settings.table}"
            else:
                raise InputError(f"{path}: a DuckDB input needs input.table or input.query")
        else:
            # The Python relation API binds the path as a value (a view definition cannot take parameters).
            try:
                relation = (
                    con.read_csv(path, header=True, all_varchar=True)
                    if fmt == "csv"
                    else con.read_parquet(path)
                )
            except duckdb.Error as exc:
                raise InputError(f"{path}: cannot read input ({_first_line(exc)})") from None
            relation.create_view("input")
            relation_sql = f"({settings.query})" if settings.query else "input"
            if settings.query:
                source = f"{path}:query"
        try:
            available = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation_sql} AS r").fetchall()]
        except duckdb.Error as exc:
            raise InputError(f"{source}: cannot read input ({_first_line(exc)})") from None
        missing = [f"{src!r} (for {canon})" for canon, src in columns.items() if src not in available]
        if missing:
            raise InputError(
                f"{source}: column {', '.join(missing)} not found; the input has {available}; "
                "map your column names in [input.columns]"
            )
        select_list = []
        for canon, src in columns.items():
            expr = quote_identifier(src)
            if canon == "customer_id":
                expr = _customer_id_sql(expr)
            select_list.append(f"{expr} AS {quote_identifier(canon)}")
        try:
            frame = con.execute(f"SELECT {', '.join(select_list)} FROM {relation_sql} AS r").df()
        except duckdb.Error as exc:
            raise InputError(f"{source}: cannot read input ({_first_line(exc)})") from None
    finally:
        con.close()
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="row")
    return LoadedInput(frame=frame, source=source, source_columns=columns)


def _customer_id_sql(expr: str) -> str:
    """SQL turning a customer-id column of any type into trimmed text (NULL when empty)."""
    text = f"trim(CAST({expr} AS VARCHAR))"
    return (
        f"CASE WHEN {text} = '' THEN NULL "
        f"WHEN regexp_full_match({text}, '-?[0-9]+\\.0+') THEN split_part({text}, '.', 1) "
        f"ELSE {text} END"
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
