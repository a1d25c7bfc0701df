"""``segment sql``: analysts' SQL on the results file, read-only, with the DuckDB the project installs.

DuckDB's own shell must match the file's storage version, and ``pip install duckdb`` ships no
shell (the ``duckdb-cli`` package on PyPI is an older DuckDB that cannot read these files). This
command gives the same two ways in, on the installed DuckDB: one query (``segment sql "SELECT
..."``) or a prompt (``segment sql``). The connection is read-only, so it never holds a write lock
a nightly run would wait for, and a run that publishes meanwhile does not disturb it.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TextIO

import duckdb

from flows.duck import connect, file_kind
from flows.run_files import relocated_views

PROMPT, CONTINUED = "segments> ", "     ...> "
HELP = """Statements end with ';' and may span lines. Read-only: the file is never changed.
  .tables        tables and views (see docs/results-database.md)
  .examples      where the example queries are
  .quit, .exit   leave (or Ctrl-D)"""


def open_results(database: str | Path) -> duckdb.DuckDBPyConnection:
    """The published results file, read-only; a one-line ValueError when it is not there or not DuckDB.

    When the results folder was moved since the last run, the per-customer views are pointed at
    the runs' files beside the file for this session (the next run makes it permanent)."""
    path = Path(database)
    if not path.exists():
        raise ValueError(f"{path}: no results file yet (run `segment run` first, or give --database)")
    kind = file_kind(path)
    if kind != "duckdb":
        raise ValueError(f"{path}: not a DuckDB results file (it looks like {kind})")
    con = connect(path, read_only=True)
    relocated_views(con, path)
    return con


def run_statement(con: duckdb.DuckDBPyConnection, sql: str, out: TextIO, *, csv: bool = False) -> None:
    """Run one statement and print its result: DuckDB's own box table (long results show their
    first and last rows and the count), or with ``csv`` every row as CSV."""
    relation = con.sql(sql)
    if relation is None:  # a statement without a result (SET, PRAGMA ...)
        return
    if csv:
        relation.df().to_csv(out, index=False)
    else:
        out.write(str(relation))


def query(database: str | Path, sql: str, out: TextIO | None = None, *, csv: bool = False) -> None:
    """``segment sql "..."``: run the statements in ``sql`` (separated by ';'), print each result
    (to ``out``, default standard output)."""
    out = out or sys.stdout
    with open_results(database) as con:
        for statement in _statements(sql):
            run_statement(con, statement, out, csv=csv)


def shell(database: str | Path, inp: TextIO | None = None, out: TextIO | None = None) -> int:
    """``segment sql``: a read-only prompt on ``inp`` (default standard input). An error is printed
    in one line and the prompt goes on."""
    inp, out = inp or sys.stdin, out or sys.stdout
    interactive = inp.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    with open_results(database) as con:
        if interactive:
            out.write(f"{Path(database)} (read-only). .help for help, .quit to leave.\n")
        buffer: list[str] = []
        while True:
            line = _read(PROMPT if not buffer else CONTINUED, inp, out, interactive)
            if line is None:
                break
            stripped = line.strip()
            if not buffer and stripped.startswith("."):
                if stripped in (".quit", ".exit"):
                    break
                out.write(_dot_command(con, stripped) + "\n")
                continue
            buffer.append(line)
            if stripped.endswith(";"):
                for statement in _statements("\n".join(buffer)):
                    try:
                        run_statement(con, statement, out)
                    except duckdb.Error as exc:
                        out.write(f"Error: {str(exc).strip().splitlines()[0]}\n")
                buffer = []
    return 0


def _read(prompt: str, inp: TextIO, out: TextIO, interactive: bool) -> str | None:
    if interactive and inp is sys.stdin:
        try:
            return input(prompt)
        except EOFError:
            out.write("\n")
            return None
    line = inp.readline()
    return None if line == "" else line.rstrip("\n")


def _dot_command(con: duckdb.DuckDBPyConnection, command: str) -> str:
    if command == ".help":
        return HELP
    if command == ".tables":
        rows = con.execute(
            "SELECT table_name, table_type FROM information_schema.tables ORDER BY table_type, table_name"
        ).fetchall()
        return "\n".join(f"{name:<24} {'view' if kind == 'VIEW' else 'table'}" for name, kind in rows)
    if command == ".examples":
        examples = Path(__file__).resolve().parent / "sql" / "examples.sql"
        return f"{examples} (and docs/results-database.md's queries 1-15)"
    return f"unknown command {command}; .help lists them"


def _statements(sql: str) -> list[str]:
    """Split on ';' at the end of a statement, leaving semicolons inside quotes alone."""
    statements = duckdb.extract_statements(sql)
    return [s.query for s in statements]
