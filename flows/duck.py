"""DuckDB helpers shared by loading, features and the store: identifier quoting and SQL files."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_SQL_DIR = Path(__file__).resolve().parent / "sql"


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
