"""DuckDB helpers shared by loading, features and the store: connections, file kinds, identifier
quoting and SQL files."""

from __future__ import annotations

import codecs
from functools import cache
from pathlib import Path

import duckdb

_SQL_DIR = Path(__file__).resolve().parent / "sql"

#: Settings of every connection the project opens. DuckDB installs and loads "known" extensions on
#: demand: an SQLite or Postgres file, an https:// path, would make it download a scanner from the
#: network in the middle of a nightly run. Nothing is installed or loaded behind our back.
SAFE_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def connect(
    path: str | Path | None = None, *, read_only: bool = False, config: dict | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (in memory without ``path``) with extension autoloading switched off."""
    con = duckdb.connect(
        ":memory:" if path is None else str(path),
        read_only=read_only,
        config={**SAFE_CONFIG, **(config or {})},
    )
    # A query that runs for seconds (the RFM of a large log) would draw DuckDB's progress bar on
    # the terminal, and into a scheduled run's log (a session setting, not a connect option).
    con.execute("SET enable_progress_bar = false")
    return con


def file_kind(path: str | Path) -> str:
    """What a file holds, from its first bytes: ``duckdb``, ``sqlite``, ``parquet``, ``gzip``,
    ``empty``, ``text`` (CSV or anything readable as text) or ``binary``."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        return "empty"
    if head[8:12] == b"DUCK":
        return "duckdb"
    if head.startswith(b"SQLite format 3\x00"):
        return "sqlite"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    try:
        # Incremental: a character cut at the 64th byte is not an error.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "binary"
    return "binary" if b"\x00" in head else "text"


#: How :func:`file_kind`'s answers read in a message ("it looks like ...").
KIND_WORDS = {
    "sqlite": "an SQLite database",
    "parquet": "a Parquet file",
    "gzip": "a gzip file",
    "empty": "an empty file",
    "text": "text (CSV?)",
    "binary": "a binary file of another kind",
    "duckdb": "a DuckDB file",
}


def quote_identifier(name: str) -> str:
    """Quote ``name`` as a DuckDB identifier (table or column), whatever characters it holds.

    Every identifier that comes from configuration goes through here; values never do (they are bound
    as ``?`` / ``$name`` parameters).
    A double quote inside the name is doubled: a name ``a"b`` is written ``"a""b"``.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"not a usable SQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(name: str) -> str:
    """Quote a possibly schema-qualified table name such as ``sales.orders`` part by part."""
    return ".".join(quote_identifier(part) for part in name.split("."))


@cache
def sql_text(name: str) -> str:
    """The text of ``flows/sql/<name>.sql`` (SQL lives in files beside the code that runs it)."""
    return (_SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


def sql_literal(value: Path | str) -> str:
    """A DuckDB string literal of a text or path (single quotes doubled; standard strings have no
    backslash escapes): for table functions such as ``read_parquet``, which take no bound
    parameters."""
    return "'" + str(value).replace("'", "''") + "'"
