"""Each run's bulk rows (assignments, rejected rows) as immutable Parquet files beside the results file.

The results file keeps the small tables; its ``assignments`` and ``rejected_rows`` are views over
``<stem>.runs/<table>/run_id=<N>/part-<i>.parquet`` (one part per chunk of rows), filtered to the
runs the file has published (and not pruned). So publishing a run copies only the small file,
whatever the history holds, and a file of a run that never published (killed, failed to
publish) is invisible, then removed.

The views hold the folder's absolute path: DuckDB resolves a relative path in a view against the
reading process's working directory, not the database's folder (duckdb/duckdb#2342), so a
relative path would fail for a BI tool or a notebook started elsewhere. Every publication writes
the views afresh, so a folder that was moved is right again after its next run; until then
``segment sql`` reads it through temporary views (:func:`relocated_views`).
"""

from __future__ import annotations

import os
import re
import shutil
import weakref
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path

import duckdb

from flows.duck import quote_identifier, sql_literal

#: Column name -> DuckDB type of each bulk table, in the order the views show them.
COLUMNS: Mapping[str, Mapping[str, str]] = {
    "assignments": {
        "run_id": "BIGINT",
        "customer_id": "VARCHAR",
        "segment_id": "INTEGER",
        "probability": "DOUBLE",
        "probabilities": "DOUBLE[]",
        "log_density": "DOUBLE",
        "held": "BOOLEAN",
        "missing_features": "INTEGER",
    },
    "rejected_rows": {
        "run_id": "BIGINT",
        "source": "VARCHAR",
        "row_number": "BIGINT",
        "column_name": "VARCHAR",
        "rule": "VARCHAR",
        "value": "VARCHAR",
    },
}
#: Columns a row may not leave empty (the tables' NOT NULL constraints before they became files).
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "assignments": ("customer_id", "segment_id", "probability", "probabilities", "log_density"),
    "rejected_rows": ("source", "row_number", "column_name", "rule"),
}
#: The runs whose files the views show: published, not killed, not pruned.
VISIBLE_RUNS = "SELECT run_id FROM runs WHERE status <> 'killed' AND pruned_at IS NULL"
_PARTS = "*.parquet"
_STAGING = ".staging"
_RUN_DIR = re.compile(r"run_id=(\d+)")


def root_for(database: Path) -> Path:
    """The folder holding the runs' files of the results file ``database`` (already resolved)."""
    return database.with_name(f"{database.stem}.runs")


def staging_root(root: Path) -> Path:
    """Where parts written by other processes (a cluster's workers) wait, under the same layout
    as ``root``, until the publication moves them into place: no view's glob reaches them."""
    return root / _STAGING


#: Staged folders a run of this process still reads: the rows a cluster's workers validated,
#: from which dask computes a lost partition again until the run releases the partitions.
_HELD: set[Path] = set()


def hold_staged(folder: Path) -> None:
    """Keep ``folder`` (in :func:`staging_root`) from :func:`clear_staging` until
    :func:`remove_staged` removes it."""
    _HELD.add(Path(folder).resolve())


def remove_staged(folder: Path) -> None:
    """Remove a staged folder, and the staging folder once nothing else is staged."""
    folder = Path(folder)
    _HELD.discard(folder.resolve())
    shutil.rmtree(folder, ignore_errors=True)
    if folder.parent.name == _STAGING:
        with suppress(OSError):
            folder.parent.rmdir()  # only when empty


class StagedFolder:
    """A staged folder a run still reads (:func:`hold_staged`), removed when called, or else
    when its last holder lets go of it (or at exit): whoever needs the files holds the object.

    Parameters
    ----------
    folder : Path
        The folder, in :func:`staging_root`.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder)
        hold_staged(self.path)
        self._remove = weakref.finalize(self, remove_staged, self.path)

    def __call__(self) -> None:
        self._remove()


def clear_staging(root: Path) -> None:
    """Remove what a failed or killed run left in ``root``'s staging folder, all but the folders
    a run of this process still reads (:func:`hold_staged`): runs hold the database's run lock,
    so no other process's run is staging files."""
    staging = staging_root(root)
    try:
        entries = list(staging.iterdir())
    except OSError:
        return  # nothing staged
    for entry in entries:
        if entry.resolve() in _HELD:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    with suppress(OSError):
        staging.rmdir()  # only when empty: a held folder is left


def run_file(root: Path, table: str, run_id: int, part: int = 0) -> Path:
    """Where part ``part`` of ``table``'s rows of run ``run_id`` lives."""
    return root / table / f"run_id={run_id}" / f"part-{part:05d}.parquet"


def fsync(path: Path) -> None:
    """Flush a file or a folder (a rename is durable once its folder is synced) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_run_file(
    con: duckdb.DuckDBPyConnection, root: Path, table: str, run_id: int, select_sql: str, part: int = 0
) -> None:
    """Write the rows of ``select_sql`` (a query over this connection giving ``table``'s columns
    without ``run_id``) as part ``part`` of ``table``'s rows of run ``run_id``.

    The file is written under a hidden name, synced and renamed into place, so a reader's glob
    never meets half a file. Rows leaving a required column empty stop the write (ValueError).
    """
    columns = {name: kind for name, kind in COLUMNS[table].items() if name != "run_id"}
    missing = " OR ".join(f"{quote_identifier(c)} IS NULL" for c in REQUIRED[table])
    bad = con.execute(f"SELECT count(*) FROM ({select_sql}) WHERE {missing}").fetchall()[0][0]
    if bad:
        raise ValueError(
            f"{table} of run {run_id}: {bad} rows leave one of {', '.join(REQUIRED[table])} empty; "
            "nothing was published"
        )
    target = run_file(root, table, run_id, part)
    target.parent.mkdir(parents=True, exist_ok=True)
    hidden = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    cast = ", ".join(
        f"CAST({quote_identifier(c)} AS {kind}) AS {quote_identifier(c)}" for c, kind in columns.items()
    )
    target_sql = sql_literal(hidden)
    con.execute(
        f"COPY (SELECT {cast} FROM ({select_sql})) TO {target_sql} (FORMAT parquet, COMPRESSION zstd)"
    )
    fsync(hidden)
    os.replace(hidden, target)
    fsync(target.parent)


def view_sql(root: Path, table: str, *, temporary: bool = False) -> str:
    """``CREATE OR REPLACE VIEW`` of ``table`` over the files under ``root`` (an empty, typed view
    while no run has written one: DuckDB will not bind a glob that matches nothing)."""
    columns = COLUMNS[table]
    names = ", ".join(quote_identifier(c) for c in columns)
    kind = "TEMP VIEW" if temporary else "VIEW"
    head = f"CREATE OR REPLACE {kind} {quote_identifier(table)} AS "
    if not any((root / table).glob(f"run_id=*/{_PARTS}")):
        empty = ", ".join(f"CAST(NULL AS {t}) AS {quote_identifier(c)}" for c, t in columns.items())
        return head + f"SELECT {empty} WHERE false"
    pattern = sql_literal(root / table / f"run_id=*/{_PARTS}")
    return head + (
        f"SELECT {names} FROM read_parquet({pattern}, hive_partitioning = true, "
        "hive_types = {'run_id': BIGINT}, union_by_name = true) "
        f"WHERE run_id IN ({VISIBLE_RUNS})"
    )


def create_views(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """(Re)create the bulk tables' views in the results file over the files under ``root``."""
    for table in COLUMNS:
        con.execute(view_sql(root, table))


def stored_root(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The folder the results file's views read (None: a file from before the runs' folder)."""
    found = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_name = 'run_files_root'"
    ).fetchall()
    if not found:
        return None
    row = con.execute("SELECT root FROM run_files_root").fetchall()
    return Path(row[0][0]) if row else None


def record_root(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    con.execute("CREATE TABLE IF NOT EXISTS run_files_root (root VARCHAR NOT NULL)")
    con.execute("DELETE FROM run_files_root")
    con.execute("INSERT INTO run_files_root VALUES (?)", [str(root)])


def relocated_views(con: duckdb.DuckDBPyConnection, database: Path) -> bool:
    """On a read-only connection to a results file whose folder was moved since its last
    publication, point the bulk views at the files beside it (temporary views, this session only).
    Returns whether it did."""
    root = root_for(database.resolve())
    stored = stored_root(con)
    if stored is None or stored == root or not root.exists():
        return False
    for table in COLUMNS:
        con.execute(view_sql(root, table, temporary=True))
    return True


def run_ids_on_disk(root: Path) -> set[int]:
    """Run ids with a folder under any bulk table."""
    found: set[int] = set()
    for table in COLUMNS:
        folder = root / table
        if folder.is_dir():
            for entry in folder.iterdir():
                match = _RUN_DIR.fullmatch(entry.name)
                if match and entry.is_dir():
                    found.add(int(match.group(1)))
    return found


def remove_runs(root: Path, run_ids: Iterable[int]) -> list[int]:
    """Delete the folders of ``run_ids`` under every bulk table; returns the ids removed."""
    removed = []
    for run_id in sorted(set(run_ids)):
        for table in COLUMNS:
            shutil.rmtree(root / table / f"run_id={run_id}", ignore_errors=True)
        removed.append(run_id)
    return removed


def unwanted_runs(con: duckdb.DuckDBPyConnection, root: Path, keep: Iterable[int] = ()) -> set[int]:
    """Run folders the results file on ``con`` does not show: never published, killed, or
    pruned by retention (``keep``: the run being written now)."""
    visible = {int(r[0]) for r in con.execute(VISIBLE_RUNS).fetchall()}
    return run_ids_on_disk(root) - visible - set(keep)


def migrate_tables(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Move a results file's ``assignments`` and ``rejected_rows`` tables (the layout before the
    runs' folder) into per-run files, leaving views in their place.

    Runs on the publication's private copy: if it dies half way, the published file still has
    its tables and the next run starts the move again (from an emptied folder).
    """
    tables = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' AND table_schema = 'main'"
        ).fetchall()
    }
    for table in COLUMNS:
        if table not in tables:
            continue
        shutil.rmtree(root / table, ignore_errors=True)
        present = {r[0] for r in con.execute(f"DESCRIBE {quote_identifier(table)}").fetchall()}
        select = ", ".join(
            quote_identifier(c) if c in present else f"NULL AS {quote_identifier(c)}"
            for c in COLUMNS[table]
            if c != "run_id"
        )
        run_ids = [
            int(r[0])
            for r in con.execute(f"SELECT DISTINCT run_id FROM {quote_identifier(table)}").fetchall()
        ]
        for run_id in run_ids:
            write_run_file(
                con,
                root,
                table,
                run_id,
                f"SELECT {select} FROM {quote_identifier(table)} WHERE run_id = {run_id}",
            )
        con.execute(f"DROP TABLE {quote_identifier(table)}")
