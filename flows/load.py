"""Loading input data (CSV, Parquet, a DuckDB table or query) through DuckDB into a DataFrame."""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from flows.config import InputSettings
from flows.duck import KIND_WORDS, connect, file_kind, quote_identifier, quote_qualified, sql_literal
from flows.scratch import MEMORY_LIMIT, ScratchDatabase
from schemas.validation import TEXT_DTYPE, WHOLE_ROW, empty_rejects


class InputError(ValueError):
    """The input cannot be read as configured; the message names the file and what is wrong."""


#: Rows fetched from DuckDB at a time (a multiple of its 2,048-row vectors): the Python objects
#: pandas makes of a chunk's text live only while the chunk is turned into compact columns.
FETCH_ROWS = 100 * 2048

#: The pandas type of a text column in :meth:`LoadedInput.to_frame` (``str``, NaN where missing).
_TEXT = pd.StringDtype(na_value=np.nan)


class InputRows:
    """A file input's rows, read once by DuckDB into a table of a temporary database
    (:class:`flows.scratch.ScratchDatabase`) and read back a block at a time: a run holds one
    block of the input, not the input (at 10^7 lines, 0.7 GiB in the load stage; issue 12)."""

    def __init__(self, scratch: ScratchDatabase, names: list[str], n_rows: int, block_rows: int):
        self._scratch = scratch
        self.names = list(names)
        self.n_rows = n_rows
        self.block_rows = block_rows

    @property
    def n_blocks(self) -> int:
        """Blocks of at most ``block_rows`` rows (0 once released)."""
        return 0 if self.released else -(-self.n_rows // self.block_rows)

    @property
    def released(self) -> bool:
        return self._scratch.removed

    @property
    def folder(self):
        """The temporary folder of the rows' database."""
        return self._scratch.folder

    def blocks(self, names: list[str] | None = None) -> Iterator[dict[str, np.ndarray | pd.Series]]:
        """The rows' blocks in source order (``names``: only these columns), as
        :attr:`LoadedInput.blocks` holds them; nothing when released."""
        names = self.names if names is None else names
        for chunk, text in self.fetched(names):
            yield _block_of(chunk, names, text)

    def fetched(self, names: list[str]) -> Iterator[tuple[pd.DataFrame, set[str]]]:
        """The rows as DuckDB fetches them, a block at a time, with the names of the text columns."""
        if self.released:
            return
        # A scan in order needs little buffer: what it caches of the table would only add up.
        con = self._scratch.connect(read_only=True, memory_limit="64MB")
        try:
            result = con.execute(f"SELECT {', '.join(map(quote_identifier, names))} FROM rows")
            text = _text_columns(result, names)
            while True:
                chunk = result.fetch_df_chunk(self.block_rows // 2048)
                if len(chunk) == 0:
                    break
                yield chunk, text
        finally:
            con.close()

    def release(self) -> None:
        """Remove the rows' database."""
        self._scratch.remove()


@dataclass(frozen=True)
class LoadedInput:
    """Rows read from the input, with canonical column names, held compactly in blocks of rows.

    Attributes
    ----------
    blocks : list of dict
        Consecutive blocks of rows in source order, each mapping a canonical column name to its
        values: text as a numpy array of :data:`schemas.validation.TEXT_DTYPE` (NaN where missing),
        anything else as the pandas Series DuckDB gave (a float, integer, date or timestamp column
        keeps its type). The canonical names are ``customer_id``, ``timestamp`` ... or, for a
        customer table, ``customer_id`` plus the feature columns under their own names.
    dtypes : dict
        Canonical column name -> the pandas dtype the column has in :meth:`to_frame`.
    row_numbers : RowNumbers
        The 1-based row number in the source of each row (data rows, header not counted), read a
        slice at a time.
    source : str
        What was read, for messages and the ``rejected_rows`` table (a path, ``path:table`` or
        ``path:query``).
    source_columns : dict
        Canonical column name -> the column's name in the source, to name columns in errors and rejects.
    rejects : DataFrame
        Rows the CSV reader could not split into the header's columns (wrong number of fields, bytes
        that are not UTF-8, broken quoting), one record per row in the ``rejected_rows`` layout
        (``source``, ``row_number``, ``column_name``, ``rule``, ``value``); they are not in ``blocks``.
    rows_read : int or None
        Rows read once the rows are released (:meth:`without_rows`); None while they are held.
    spilled : InputRows or None
        Where a file input's rows are (``blocks`` is then empty): on disk, read back a block at a
        time by :meth:`chunks` and the other readers. None for a query's rows, held in ``blocks``.
    partition_select : str or None
        For partitions left where they are (``load_input(..., read_partitions=False)``: no rows
        held, ``rows_read`` their count): the SELECT list giving the canonical columns from one
        partition's ``read_parquet`` aliased ``r`` (see :func:`partition_frames`).
    partitions : list of (str, int)
        A partitioned Parquet input's files and their row counts, in the order their rows are
        numbered (:mod:`flows.partitions`); empty for one file or a query.
    """

    blocks: list[dict[str, np.ndarray | pd.Series]]
    dtypes: dict[str, Any]
    row_numbers: RowNumbers
    source: str
    source_columns: dict[str, str] = field(default_factory=dict)
    rejects: pd.DataFrame = field(default_factory=lambda: empty_rejects())
    rows_read: int | None = None
    partitions: list[tuple[str, int]] = field(default_factory=list)
    spilled: InputRows | None = None
    partition_select: str | None = None

    def rows_by_file(self, rejects: pd.DataFrame) -> pd.DataFrame:
        """Reject records with each one's partition as ``source`` and its row there as
        ``row_number`` (unchanged for an input that is not partitioned)."""
        if not self.partitions:
            return rejects
        from flows.partitions import rows_by_file

        files, counts = zip(*self.partitions, strict=True)
        return rows_by_file(rejects, list(files), list(counts))

    @property
    def n_rows(self) -> int:
        """Data rows in the source: the rows read plus the rows the reader rejected."""
        return self.n_read + (int(self.rejects["row_number"].nunique()) if len(self.rejects) else 0)

    @property
    def n_read(self) -> int:
        """Rows read (those the CSV reader rejected not counted), also once they are released."""
        return len(self.row_numbers) if self.rows_read is None else self.rows_read

    def text_column(self, name: str) -> np.ndarray:
        """A text column's values for every row, in source order (numpy text, NaN where missing)."""
        if not isinstance(self.dtypes[name], pd.StringDtype):
            raise TypeError(f"column {name!r} is not text (it is {self.dtypes[name]})")
        parts = [np.asarray(block[name]) for block in self._blocks([name])]
        return np.concatenate(parts) if parts else np.empty(0, dtype=TEXT_DTYPE)

    @property
    def n_blocks(self) -> int:
        """Blocks of rows still held (in memory, or on disk when spilled)."""
        return self.spilled.n_blocks if self.spilled is not None else len(self.blocks)

    def _blocks(self, names: list[str] | None = None) -> Iterator[dict[str, np.ndarray | pd.Series]]:
        if self.spilled is not None:
            yield from self.spilled.blocks(names)
        else:
            yield from self.blocks

    def chunks(self, release: bool = False) -> Iterator[pd.DataFrame]:
        """The rows a block at a time, as DataFrames indexed by source row number (``row``); text
        columns become pandas text columns (Python strings, one block's worth at a time).

        ``release``: each block is dropped from this input as it is yielded, so that a caller
        building something of its own from the rows never holds them twice (issue 12); the input
        is left without its rows (its row numbers and columns kept, as :meth:`without_rows`)."""
        if self.spilled is not None:
            start = 0
            names = list(self.dtypes)
            for chunk, text in self.spilled.fetched(names):
                frame = _chunk_frame(chunk, names, text, self.row_numbers[start : start + len(chunk)])
                del chunk
                yield frame
                start += len(frame)
            if release:
                self.spilled.release()
            return
        start = at = 0
        while at < len(self.blocks):
            block = self.blocks[at]
            if release:
                del self.blocks[at]
            else:
                at += 1
            size = len(next(iter(block.values())))
            frame = self._frame(block, self.row_numbers[start : start + size])
            del block
            yield frame
            start += size

    def column_chunks(self, name: str) -> Iterator[pd.Series]:
        """One column a block at a time, as a Series indexed by source row number (``row``), its
        text as pandas text (see :meth:`chunks`); the blocks are kept."""
        start = 0
        for block in self._blocks([name]):
            values = block[name]
            size = len(values)
            if isinstance(values, np.ndarray):
                series = pd.Series(values.astype(object), dtype=self.dtypes[name])
            else:
                series = values.reset_index(drop=True)
            series.index = pd.Index(self.row_numbers[start : start + size], name="row")
            yield series
            start += size

    def to_frame(self) -> pd.DataFrame:
        """All rows as one DataFrame (see :meth:`chunks`): for small inputs, a transaction log, tests."""
        if not self.n_blocks:
            empty = {
                name: np.empty(0, dtype=TEXT_DTYPE)
                if isinstance(dtype, pd.StringDtype)
                else pd.Series([], dtype=dtype)
                for name, dtype in self.dtypes.items()
            }
            return self._frame(empty, self.row_numbers[:0])  # no rows, or rows released
        frames = list(self.chunks())
        return pd.concat(frames) if len(frames) > 1 else frames[0]

    def _frame(self, block: dict[str, np.ndarray | pd.Series], rows: np.ndarray) -> pd.DataFrame:
        data = {}
        for name, values in block.items():
            if isinstance(values, np.ndarray):
                data[name] = pd.Series(values.astype(object), dtype=self.dtypes[name])
            else:
                data[name] = values.reset_index(drop=True)
        frame = pd.DataFrame(data, columns=list(self.dtypes))
        frame.index = pd.Index(rows, name="row")
        return frame

    def without_rows(self) -> LoadedInput:
        """The same description of the input with its rows released (its columns and their types
        kept), so that a run does not hold a second copy of every input row once validation has
        its own."""
        if self.spilled is not None:
            self.spilled.release()
        return replace(self, blocks=[], row_numbers=RowNumbers(0), rows_read=self.n_read, spilled=None)


#: Separators tried on the header line of a CSV file (then any other punctuation in it).
_DELIMITERS = (",", ";", "\t", "|")


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
    raise InputError(f"{path}: unknown input format; expected a .csv/.csv.gz/.tsv, .parquet or .duckdb file")


def wanted_columns(settings: InputSettings, features: list[str]) -> dict[str, str]:
    """Canonical name -> source column for every column the run needs (nothing else is read)."""
    if settings.kind == "transactions":
        return dict(settings.columns)
    wanted = {"customer_id": settings.columns.get("customer_id", "customer_id")}
    for feature in features:
        wanted[feature] = settings.columns.get(feature, feature)
    return wanted


def load_input(settings: InputSettings, features: list[str], read_partitions: bool = True) -> LoadedInput:
    """Read the configured input into blocks of rows with canonical column names.

    The input is a CSV, Parquet or DuckDB file, or a folder or glob of Parquet partitions read as
    one table (:mod:`flows.partitions`). CSV columns are read as text so that a malformed value
    becomes a per-row validation reject instead of failing the whole read; Parquet and DuckDB
    columns keep their types. Customer ids are text, trimmed, with the ``.0`` that spreadsheet
    exports append to integer ids removed.

    Parameters
    ----------
    settings : InputSettings
        Path, kind, optional table or query, and the column mapping.
    features : list of str
        Feature columns of a customer table (ignored for a transaction log).

    A CSV file's separator is chosen from its header line (the one that yields the configured column
    names; see :func:`detect_delimiter`). CSV rows that cannot be split into the header's columns, or
    that hold bytes which are not UTF-8, are set aside by DuckDB's reader and returned in
    ``LoadedInput.rejects`` (validation adds them to the run's rejects and reject budget).

    ``read_partitions=False``: Parquet partitions read without a query are checked and described
    but not read: a cluster's workers read them (:attr:`LoadedInput.partition_select`).

    Raises
    ------
    InputError
        Missing, empty or header-only file, unknown format, missing column, a table/query DuckDB
        cannot run, or a partition that is empty or has other columns than the first.
    """
    from flows import partitions as parts

    path = settings.path
    files = parts.partition_files(path) if parts.is_partitioned(path) else None
    known = path.lower().endswith(_CSV_SUFFIXES + _PARQUET_SUFFIXES + _DUCKDB_SUFFIXES)
    if files is None and not known and not Path(path).exists():
        raise InputError(f"{path}: input file not found (nor a folder or glob of Parquet partitions)")
    fmt = "parquet" if files is not None else source_format(path)
    if files is None:
        check_file(path, fmt)
    counts: list[int] = []
    columns = wanted_columns(settings, features)
    source = path
    reader_rejects = empty_rejects()
    spilled: InputRows | None = None
    con = connect()
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
            # A view definition cannot take parameters, so the path goes in as an escaped literal.
            if fmt == "csv":
                delimiter = detect_delimiter(path, list(columns.values()))
                options = "header = true, all_varchar = true, store_rejects = true"
                if delimiter is not None:
                    options += f", delim = {sql_literal(delimiter)}"
                reader = f"read_csv({sql_literal(path)}, {options})"
            elif files is not None:
                counts = parts.check_partitions(con, files)
                reader = parts.reader_sql(files)
            else:
                reader = f"read_parquet({sql_literal(path)})"
            # With a query, read the file now: the query then runs with file access switched off.
            kind = "TABLE" if settings.query else "VIEW"
            try:
                con.execute(f"CREATE {kind} input AS SELECT * FROM {reader}")
            except duckdb.Error as exc:
                raise InputError(f"{path}: cannot read input ({_first_line(exc)})") from None
            relation_sql = f"({settings.query})" if settings.query else "input"
            if settings.query:
                source = f"{path}:query"
        if settings.query:
            # input.query is SQL from configuration or a flow parameter: it may read its input and
            # nothing else (no ATTACH of the results file, no COPY TO, no other files), for good.
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        try:
            available = [
                row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {relation_sql} AS r").fetchall()
            ]
        except duckdb.Error as exc:
            raise InputError(f"{source}: cannot read input ({_first_line(exc)})") from None
        if not settings.query:
            # DuckDB renames a repeated CSV/Parquet column (CustomerID, CustomerID_1): use the names
            # the file itself holds, so a repeated one is refused rather than silently the first.
            first_file = path if files is None else files[0]
            names = _file_column_names(con, fmt, first_file, delimiter if fmt == "csv" else None)
            available = names if names is not None else available
        _refuse_repeated_columns(source, available, columns)
        missing = [f"{src!r} (for {canon})" for canon, src in columns.items() if src not in available]
        if missing:
            hint = ""
            if fmt == "csv" and len(available) == 1:
                hint = (
                    "; the header was read as a single column: separate the columns with ',', ';', tab or '|'"
                )
            first = next(canon for canon, src in columns.items() if src not in available)
            raise InputError(
                f"{source}: column {', '.join(missing)} not found; the input has columns {available}{hint}; "
                f"map your column names with --column {first}=YOUR_COLUMN (repeatable) or in [input.columns]"
            )
        select_list = []
        for canon, src in columns.items():
            expr = quote_identifier(src)
            if canon == "customer_id":
                expr = _customer_id_sql(expr)
            select_list.append(f"{expr} AS {quote_identifier(canon)}")
        select = f"SELECT {', '.join(select_list)} FROM {relation_sql} AS r"
        partition_select: str | None = None
        partitioned: list[tuple[str, int]] = []
        blocks: list[dict[str, np.ndarray | pd.Series]]
        try:
            if files is not None and not settings.query and not read_partitions:
                # The column types as the blocks will have them: from the first rows.
                _, dtypes = _fetch_blocks(con.execute(f"{select} LIMIT {FETCH_ROWS}"), list(columns))
                blocks = []
                n_read = sum(counts)
                partition_select = ", ".join(select_list)
                partitioned = list(zip(files, counts, strict=True))
            elif settings.query:
                # A query runs without file access: its rows are fetched into memory.
                result = con.execute(select)
                blocks, dtypes = _fetch_blocks(result, list(columns))
                n_read = sum(len(next(iter(block.values()))) for block in blocks)
            else:
                blocks, (spilled, dtypes) = [], _spill(con, select, list(columns))
                n_read = spilled.n_rows
            if fmt == "csv":
                reader_rejects = _reader_rejects(con, source)
        except duckdb.Error as exc:
            raise InputError(f"{source}: cannot read input ({_first_line(exc)})") from None
    finally:
        con.close()
    if n_read == 0 and len(reader_rejects) == 0:
        what = "only a header line" if fmt == "csv" else "no rows"
        raise InputError(f"{source}: no data rows (the input has {what}, columns {available})")
    if partition_select is not None:
        return LoadedInput(
            blocks=[],
            dtypes=dtypes,
            row_numbers=RowNumbers(0),
            source=source,
            source_columns=columns,
            rows_read=n_read,
            partitions=partitioned,
            partition_select=partition_select,
        )
    return LoadedInput(
        blocks=blocks,
        dtypes=dtypes,
        row_numbers=_kept_row_numbers(n_read, reader_rejects, settings.query is None),
        source=source,
        source_columns=columns,
        rejects=reader_rejects,
        # A query's rows are not the files' rows: only a plain read is numbered by file.
        partitions=[] if files is None or settings.query else list(zip(files, counts, strict=True)),
        spilled=spilled,
    )


def _fetch_blocks(
    result: duckdb.DuckDBPyConnection, names: list[str]
) -> tuple[list[dict[str, np.ndarray | pd.Series]], dict[str, Any]]:
    """All rows of ``result`` in blocks of :data:`FETCH_ROWS` rows (see :class:`LoadedInput`):
    no column is ever held whole as Python objects, and no block is copied again."""
    blocks: list[dict[str, np.ndarray | pd.Series]] = []
    text = _text_columns(result, names)
    dtypes: dict[str, Any] = {}
    while True:
        chunk = result.fetch_df_chunk(FETCH_ROWS // 2048)
        if not dtypes:
            dtypes = {name: _TEXT if name in text else chunk[name].dtype for name in names}
        if len(chunk) == 0:
            break
        blocks.append(_block_of(chunk, names, text))
    return blocks, dtypes


def _spill(con: duckdb.DuckDBPyConnection, select: str, names: list[str]) -> tuple[InputRows, dict[str, Any]]:
    """Run ``select`` into a table of a temporary DuckDB file: the rows and their columns' types."""
    scratch = ScratchDatabase("input")
    try:
        # DuckDB's buffer within the scratch databases' limit, spilling beside the file: left at
        # its default (80 % of the machine) the copy of 3 x 10^7 customers x 4 features held
        # 1.1 GiB, against 0.3 GiB so and in the same time (issue 12).
        con.execute(f"SET memory_limit = {sql_literal(MEMORY_LIMIT)}")
        con.execute(f"SET temp_directory = {sql_literal(str(scratch.folder / 'spill'))}")
        con.execute(f"ATTACH {sql_literal(str(scratch.path))} AS spill")
        try:
            con.execute(f"CREATE TABLE spill.rows AS {select}")
            row = con.execute("SELECT count(*) FROM spill.rows").fetchone()
            # The column types as the blocks will have them: from the first rows.
            first = con.execute(f"SELECT * FROM spill.rows LIMIT {FETCH_ROWS}")
            _, dtypes = _fetch_blocks(first, names)
        finally:
            con.execute("DETACH spill")
    except BaseException:
        scratch.remove()
        raise
    assert row is not None  # count(*) returns one row
    return InputRows(scratch, names, int(row[0]), FETCH_ROWS), dtypes


def _chunk_frame(chunk: pd.DataFrame, names: list[str], text: set[str], rows: np.ndarray) -> pd.DataFrame:
    """A chunk DuckDB fetched as :meth:`LoadedInput.chunks` yields it: straight to pandas text,
    the same frame as going through a compact block without two conversions of every text."""
    frame = pd.DataFrame(
        {name: chunk[name].astype(_TEXT) if name in text else chunk[name] for name in names},
        columns=names,
    )
    frame.index = pd.Index(rows, name="row")
    return frame


def partition_frames(path: str, select_list: str, names: list[str], first_row: int) -> Iterator[pd.DataFrame]:
    """One Parquet partition's rows as :meth:`LoadedInput.chunks` gives a table's, a chunk at a
    time: ``select_list`` is :attr:`LoadedInput.partition_select`, the rows numbered from
    ``first_row + 1`` (their numbers among all the partitions' rows).

    Raises
    ------
    InputError
        The partition cannot be read.
    """
    # On a worker of 2 GiB: DuckDB's buffer within the scratch databases' limit, not 80 % of it.
    con = connect(config={"memory_limit": MEMORY_LIMIT, "threads": 1})
    try:
        try:
            result = con.execute(f"SELECT {select_list} FROM read_parquet({sql_literal(path)}) AS r")
        except duckdb.Error as exc:
            raise InputError(f"{path}: cannot read partition ({_first_line(exc)})") from None
        text = _text_columns(result, names)
        at = first_row + 1
        while True:
            try:
                chunk = result.fetch_df_chunk(FETCH_ROWS // 2048)
            except duckdb.Error as exc:
                raise InputError(f"{path}: cannot read partition ({_first_line(exc)})") from None
            if len(chunk) == 0:
                return
            rows = np.arange(at, at + len(chunk), dtype=np.int64)
            at += len(chunk)
            yield _chunk_frame(chunk, names, text, rows)
    finally:
        con.close()


def _text_columns(result: duckdb.DuckDBPyConnection, names: list[str]) -> set[str]:
    # Text by DuckDB's type, not by pandas': a VARCHAR column that is all NULL (or has no rows)
    # comes back as object.
    types = {d[0]: str(d[1]) for d in result.description}
    return {name for name in names if types.get(name) == "VARCHAR"}


def _block_of(chunk: pd.DataFrame, names: list[str], text: set[str]) -> dict[str, np.ndarray | pd.Series]:
    """A fetched chunk as a block: text as compact numpy text, anything else as DuckDB gave it."""
    block: dict[str, np.ndarray | pd.Series] = {}
    for name in names:
        column = chunk[name]
        if name in text:
            block[name] = np.asarray(column.to_numpy(dtype=object, na_value=np.nan), dtype=TEXT_DTYPE)
        else:
            block[name] = column.reset_index(drop=True)
    return block


#: What :func:`flows.duck.file_kind` may find in a file of each input format.
_EXPECTED_KINDS = {"csv": ("text", "gzip", "binary"), "parquet": ("parquet",), "duckdb": ("duckdb",)}


def _file_column_names(
    con: duckdb.DuckDBPyConnection, fmt: str, path: str, delimiter: str | None
) -> list[str] | None:
    """The column names as the file holds them, repeats included (None when not known)."""
    if fmt == "csv":
        header = _header_line(path)
        if header is None:
            return None
        try:
            fields = next(csv.reader([header], delimiter=delimiter or ","))
        except (csv.Error, StopIteration):
            return None
        return [f.strip() for f in fields]
    if fmt == "parquet":
        rows = con.execute("SELECT name, num_children FROM parquet_schema(?)", [path]).fetchall()

        # Depth-first: the root, then each top-level column followed by its nested children.
        def after(i: int) -> int:
            end = i + 1
            for _ in range(int(rows[i][1] or 0)):
                end = after(end)
            return end

        names, i = [], 1
        for _ in range(int(rows[0][1] or 0)):
            names.append(rows[i][0])
            i = after(i)
        return names
    return None


def _refuse_repeated_columns(source: str, available: list[str], columns: dict[str, str]) -> None:
    """InputError when a column the run reads appears more than once in the input."""
    for canon, name in columns.items():
        positions = [i + 1 for i, found in enumerate(available) if found == name]
        if len(positions) > 1:
            where = ", ".join(str(p) for p in positions)
            raise InputError(
                f"{source}: column {name!r} (for {canon}) appears {len(positions)} times, "
                f"as columns {where}; "
                "rename or drop the repeats so that it is clear which one to use"
            )


def check_file(path: str, fmt: str | None = None) -> None:
    """Stop with a one-line InputError when ``path`` is missing, not a file, empty, or holds
    another kind of file than its name says (an SQLite database named ``.db``: DuckDB would try
    to download a reader for it).

    An empty file (0 bytes, or a compressed file that holds 0 bytes) has no header and no rows;
    DuckDB's CSV sniffer would fail on it with an unhelpful message.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: input file not found")
    if not p.is_file():
        raise InputError(f"{path}: not a file")
    if p.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes); expected a header line and data rows")
    kind = file_kind(p)
    if fmt is not None and kind not in _EXPECTED_KINDS[fmt]:
        name = {"csv": "a CSV file", "parquet": "a Parquet file", "duckdb": "a DuckDB file"}[fmt]
        raise InputError(f"{path}: not {name} (it looks like {KIND_WORDS[kind]})")
    if path.lower().endswith(".gz"):
        try:
            with gzip.open(p, "rb") as fh:
                empty = fh.read(1) == b""
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: not a readable gzip file ({_first_line(exc)})") from None
        if empty:
            raise InputError(
                f"{path}: the file is empty (no bytes after decompression); "
                "expected a header line and data rows"
            )


def detect_delimiter(path: str, wanted: list[str]) -> str | None:
    """The separator that splits the CSV header into the most of the ``wanted`` column names.

    ``,``, ``;``, tab and ``|`` are tried, then any other punctuation found in the header line. None
    when no separator yields a wanted name (DuckDB's sniffer then decides) or the header cannot be
    read (e.g. a compression this function does not open). Choosing by the wanted names rather than
    by DuckDB's sniffer keeps a file readable when a share of its rows are garbage, which can make the
    sniffer settle on a single column.
    """
    header = _header_line(path)
    if header is None:
        return None
    others = sorted(
        {ch for ch in header if not ch.isalnum() and ch not in "\"' _-.\r\n" and ch not in _DELIMITERS}
    )
    best, best_key = None, (0, 0)
    for delimiter in (*_DELIMITERS, *others):
        try:
            fields = next(csv.reader([header], delimiter=delimiter))
        except (csv.Error, StopIteration):
            continue
        names = {f.strip() for f in fields}
        key = (sum(1 for w in wanted if w in names), len(fields))
        if key[0] > 0 and key > best_key:
            best, best_key = delimiter, key
    return best


def _header_line(path: str) -> str | None:
    lower = path.lower()
    try:
        if lower.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                raw = fh.readline(1 << 20)
        elif lower.endswith((".csv", ".tsv", ".txt")):
            with open(path, "rb") as fh:
                raw = fh.readline(1 << 20)
        else:
            return None
    except (OSError, EOFError, zlib.error):
        return None
    return raw.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def _reader_rejects(con: duckdb.DuckDBPyConnection, source: str) -> pd.DataFrame:
    """Rows DuckDB's CSV reader set aside in its latest scan (``store_rejects``), as reject records.

    DuckDB's ``line`` counts records from the header (1), so the data row is ``line - 1`` even when
    quoted fields span lines.
    """
    found = con.execute(
        """
        SELECT DISTINCT ON (line) line - 1 AS row_number, column_name, error_type, csv_line
        FROM reject_errors
        WHERE scan_id = (SELECT max(scan_id) FROM reject_scans)
        ORDER BY line, column_idx
        """
    ).fetchall()
    if not found:
        return empty_rejects()
    return pd.DataFrame(
        {
            "source": source,
            "row_number": np.array([r[0] for r in found], dtype=np.int64),
            "column_name": [_reader_column(r[1], r[2]) for r in found],
            "rule": ["csv_" + str(r[2]).strip().lower().replace(" ", "_") for r in found],
            "value": pd.Series([r[3] for r in found], dtype=object),
        },
        columns=["source", "row_number", "column_name", "rule", "value"],
    )


def _reader_column(name: str | None, error_type: str) -> str:
    # A wrong field count concerns the row, not the column DuckDB happened to stop at.
    if name is None or str(error_type).upper() in ("TOO MANY COLUMNS", "MISSING COLUMNS"):
        return WHOLE_ROW
    return str(name)


@dataclass(frozen=True)
class RowNumbers:
    """The 1-based source row numbers of ``n`` rows read: 1, 2, ... without the numbers in
    ``skipped`` (sorted, unique: the rows the CSV reader set aside), computed a slice at a time.
    Held as an array they took 8 bytes a row, the validate stage's largest per-row cost (80 MB at
    10^7 rows; issue 12)."""

    n: int
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(self.n)
        if step != 1:
            raise IndexError("row numbers are read in consecutive slices")
        kept = np.arange(start, max(start, stop), dtype=np.int64)
        if not self.skipped.size:
            return kept + 1
        # Row i of the skipped ones comes after skipped[i] - 1 - i kept rows: the j-th kept row's
        # number is j + 1 plus the skipped rows that come before it.
        before = self.skipped - 1 - np.arange(self.skipped.size, dtype=np.int64)
        return kept + 1 + np.searchsorted(before, kept, side="right")


def _kept_row_numbers(n_kept: int, rejects: pd.DataFrame, in_source_order: bool) -> RowNumbers:
    """1-based source row numbers of the rows read, given the rows the reader rejected."""
    if not in_source_order or len(rejects) == 0:
        return RowNumbers(n_kept)
    return RowNumbers(n_kept, np.unique(rejects["row_number"].to_numpy(dtype=np.int64)))


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
