"""The results store: one DuckDB file, published whole after every run, with views for analysts."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import duckdb
import numpy as np
import pandas as pd

from flows import run_files
from flows.duck import KIND_WORDS, connect, file_kind, quote_identifier, sql_text
from flows.faults import fault_point
from flows.runlock import killed_runs
from schemas.validation import rejected_row_count

TABLES = (
    "runs",
    "model_candidates",
    "segments",
    "segment_features",
    "feature_scalers",
    "assignments",
    "rejected_rows",
    "segment_migrations",
    "segment_transitions",
    "segment_shifts",
    "segment_names",
)
VIEWS = (
    "latest_run",
    "current_segments",
    "segment_profiles",
    "current_assignments",
    "segment_history",
    "current_migration",
)

CANDIDATE_COLUMNS = (
    "n_components",
    "covariance_type",
    "n_parameters",
    "log_likelihood",
    "mean_log_likelihood",
    "bic",
    "aic",
    "icl",
    "converged",
    "n_iter",
    "seconds",
    "status",
    "reason",
    "selected",
    "origin",
)


class StoreBusyError(RuntimeError):
    """Another process has the published results file open for writing (it must only be read)."""


class StoreFileError(ValueError):
    """The results path names something that is not a results database (a CSV, an SQLite file)."""


#: Called with one line when the store does something an operator should know about (a WAL set
#: aside, a wait for another process); the flow points it at its run logger.
Notify = Callable[[str], None]


def results_path(database: str | Path) -> Path:
    """The file a results path stands for: symbolic links followed, so that publication replaces
    the file the link points to and keeps the link (and locks the same file as every other run).

    Raises
    ------
    StoreFileError
        The path exists but is not a DuckDB file, or is not a file; or it holds a glob character.
    """
    path = Path(database).resolve()
    if any(c in str(path) for c in "*?[]{}"):
        # The views find the runs' files with a glob under the file's folder.
        raise StoreFileError(
            f"{database}: the path holds a glob character (* ? [ ] {{ }}), which the views over "
            "the runs' Parquet files cannot use; choose another output.database"
        )
    if path.exists():
        if not path.is_file():
            raise StoreFileError(
                f"{database}: not a file; output.database must name a results file (.duckdb)"
            )
        kind = file_kind(path)
        if kind != "duckdb":
            raise StoreFileError(
                f"{database}: not a DuckDB file (it looks like {KIND_WORDS[kind]}); output.database "
                "(--database) must name the results file, e.g. output/segments.duckdb"
            )
    return path


def _stale_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def writer_pid(path: Path) -> int | None:
    """The process holding the results file open for writing (DuckDB's exclusive lock), or None.

    Only the run that publishes may write; anyone else should open the file read-only, which
    never conflicts with another reader. ``-1`` when DuckDB does not say which process it is.
    """
    if not path.exists():
        return None
    try:
        connect(path, read_only=True).close()
    except duckdb.IOException as exc:
        text = str(exc)
        if "Conflicting lock" not in text:
            return None  # another problem (a WAL that does not belong): not a writer
        found = re.search(r"PID (\d+)", text)
        return int(found.group(1)) if found else -1
    return None


def _process(pid: int) -> str:
    """``pid 1234 (python3 notebook.py)`` as far as /proc tells."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        cmdline = " ".join(raw.split())  # one line, whatever the command held
    except OSError:
        cmdline = ""
    return f"pid {pid}" + (f" ({cmdline[:80]})" if cmdline else "")


def wait_for_writer(
    path: Path, wait_seconds: float, notify: Notify | None = None, poll_seconds: float = 2.0
) -> None:
    """Return once no other process holds the results file open for writing.

    An analyst who opens the file read-write (``duckdb.connect(path)`` without ``read_only``)
    blocks every reader and would be left writing into a file that a run replaces. A run waits up
    to ``wait_seconds`` for such a session to end, then stops with :class:`StoreBusyError` naming
    the process and what to do.
    """
    deadline = time.monotonic() + wait_seconds
    told = False
    while (pid := writer_pid(path)) is not None:
        who = "a process" if pid < 0 else _process(pid)
        if time.monotonic() >= deadline:
            raise StoreBusyError(
                f"{path}: open for writing by {who}; nothing was published. The results file is "
                "replaced at every run and must only be read: close that session and open it "
                "read-only (segment sql, duckdb.connect(path, read_only=True)); this run waited "
                f"{wait_seconds / 60:g} min (output.writer_wait_minutes)"
            )
        if not told and notify is not None:
            notify(
                f"{path} is open for writing by {who}; "
                f"waiting up to {wait_seconds / 60:g} min for it to close"
            )
            told = True
        time.sleep(poll_seconds)


def _settle_wal(path: Path, notify: Notify | None) -> None:
    """Leave no write-ahead log beside the results file that the published file would not accept.

    A ``.wal`` file there was left by a process that wrote to the results file (it should only
    have read it) and ended without a checkpoint. Its changes are replayed into the file when
    DuckDB can (the writer was killed, nobody has the file open); otherwise (readers have it
    open, or the log belongs to a file a run has since replaced, which DuckDB refuses with "WAL
    checkpoint iteration does not match") the log is moved aside, so that the published file
    opens again. Tables written into the results file are not kept (docs/results-database.md says so).
    """
    wal = Path(f"{path}.wal")
    if not wal.exists():
        return
    try:
        with connect(path) as con:
            con.execute("CHECKPOINT")
        if not wal.exists():
            return
        problem = "it was still there after a checkpoint"
    except duckdb.Error as exc:
        problem = str(exc).strip().splitlines()[0]
    aside = wal.with_name(f"{wal.name}.set-aside-{utc_now():%Y%m%dT%H%M%S}")
    os.replace(wal, aside)
    if notify is not None:
        notify(f"{wal} did not belong to the published file ({problem}); moved to {aside.name}")


@contextmanager
def publishing(
    database: str | Path, *, writer_wait_seconds: float = 0.0, notify: Notify | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Write into a private copy of the results file and publish it atomically.

    The results file holds the small tables; each run's bulk rows are Parquet files of their own
    (:mod:`flows.run_files`), written by the block before the publication that makes them
    visible. The published file is copied, the block writes into the copy (one transaction), the
    copy is checkpointed, synced and moved over the published file with ``os.replace``. Analysts who have
    the file open read-only keep reading the snapshot they opened (their file handle still points
    at it) and never block the write; new connections see the new file; nobody ever sees half a
    run. If the process dies before the move, the published file is untouched and the copy is
    removed by the next run; any other failure (a full disk) removes it at once. A process with
    the file open for writing is waited for (``writer_wait_seconds``), before the copy and again
    before the move, since publishing under it would leave its log beside a file it does not
    belong to. A symbolic link is followed: the file it points to is replaced, the link stays.
    Run folders the file does not show (a run that never published, a killed one, one pruned by
    retention) are removed before the copy and again after the move.
    Callers must hold the run lock (``flows.runlock``): it makes this process the only writer.
    """
    path = results_path(database)
    root = run_files.root_for(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_copies(path):
        stale.unlink(missing_ok=True)
        Path(f"{stale}.wal").unlink(missing_ok=True)
    wait_for_writer(path, writer_wait_seconds, notify)
    _settle_wal(path, notify)
    copy = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    con = None
    try:
        if path.exists():
            shutil.copyfile(path, copy)
        con = connect(copy)
        ensure_schema(con, root)
        run_files.remove_runs(root, run_files.unwanted_runs(con, root))
        run_files.clear_staging(root)  # a failed or killed run's parts
        con.execute("BEGIN TRANSACTION")
        yield con
        run_files.create_views(con, root)  # the glob binds once the block wrote the first file
        con.execute("COMMIT")
        fault_point("write")
        con.execute("CHECKPOINT")
        unwanted = run_files.unwanted_runs(con, root)
        con.close()
        run_files.fsync(copy)
        wait_for_writer(path, writer_wait_seconds, notify)
        _settle_wal(path, notify)
        os.replace(copy, path)
        run_files.fsync(path.parent)
        run_files.remove_runs(root, unwanted)
    except BaseException:
        if con is not None:
            with suppress(duckdb.Error):
                con.close()
        copy.unlink(missing_ok=True)
        Path(f"{copy}.wal").unlink(missing_ok=True)
        raise


def ensure_schema(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Create the tables and views if missing (``flows/sql/schema.sql``, ``views.sql``; idempotent).

    ``root`` is the folder of the runs' Parquet files (:func:`flows.run_files.root_for`); a file
    from before it has its ``assignments`` and ``rejected_rows`` tables moved there.
    """
    con.execute(sql_text("schema"))
    run_files.migrate_tables(con, root)
    run_files.create_views(con, root)
    run_files.record_root(con, root)
    con.execute(sql_text("views"))


def utc_now() -> datetime:
    """Current UTC time without tz info (DuckDB TIMESTAMP)."""
    return datetime.now(UTC).replace(tzinfo=None)


def published_max_run_id(database: str | Path) -> int:
    """Largest run id in the published file (0 when there is none yet); read-only."""
    path = results_path(database)
    if not path.exists():
        return 0
    with connect(path, read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "runs" not in tables:
            return 0
        return int(con.execute("SELECT coalesce(max(run_id), 0) FROM runs").fetchall()[0][0])


@dataclass(frozen=True, eq=False)
class StoredRun:
    """The latest successful run's model and customers, as its tables hold them.

    ``segments``: ``segment_id``, ``weight``, ``model_mean``, ``model_covariance`` (model units),
    by segment id; ``scalers``: ``feature``, ``unit``, ``transform``, ``scaler_mean``,
    ``scaler_scale``, in feature order; ``assignments``: the ``read_parquet`` pattern of its
    assignment files (``customer_id``, ``segment_id``, ...: the customers stay in the files, and
    a run joins them with its own in DuckDB, :meth:`flows.continuity.PreviousRun.aligned_with`),
    None when they cannot be read or retention pruned them; ``max_segment_id``: the largest id
    any run has given.
    """

    run_id: int
    covariance_type: str
    segments: pd.DataFrame
    scalers: pd.DataFrame
    assignments: str | None
    max_segment_id: int


def read_latest_run(database: str | Path, notify: Notify | None = None) -> StoredRun | None:
    """The latest successful run from the published results (read-only); None if there is none.

    When its per-customer files are gone (the runs folder was deleted, or not moved with the
    file), ``assignments`` is empty, as after retention, and ``notify`` is told why."""
    path = Path(database)
    if not path.exists():
        return None
    with connect(path, read_only=True) as con:
        run_files.relocated_views(con, path)  # the folder may have moved since it was published
        latest = con.execute("SELECT run_id, covariance_type FROM latest_run").fetchall()
        if not latest:
            return None
        run_id, covariance_type = int(latest[0][0]), str(latest[0][1])
        segments = con.execute(
            "SELECT segment_id, weight, model_mean, model_covariance FROM segments WHERE run_id = ? "
            "ORDER BY segment_id",
            [run_id],
        ).df()
        scalers = con.execute(
            "SELECT feature, unit, transform, scaler_mean, scaler_scale FROM feature_scalers "
            "WHERE run_id = ? ORDER BY feature_index",
            [run_id],
        ).df()
        assignments: str | None = None
        try:
            # The files are read through the view, as an analyst would (a moved folder included).
            stored = con.execute("SELECT count(*) FROM assignments WHERE run_id = ?", [run_id]).fetchall()
            if stored[0][0]:
                root = run_files.root_for(results_path(path))
                assignments = str(run_files.run_file(root, "assignments", run_id).parent / "*.parquet")
        except duckdb.IOException as exc:
            if notify is not None:
                notify(
                    f"run {run_id}'s assignments cannot be read ({str(exc).strip().splitlines()[0]}); "
                    "its customers' moves are not measured this run. Keep the results file and its "
                    f"{run_files.root_for(results_path(path)).name}/ folder together"
                )
        max_id = int(con.execute("SELECT coalesce(max(segment_id), 0) FROM segments").fetchall()[0][0])
    return StoredRun(run_id, covariance_type, segments, scalers, assignments, max_id)


@dataclass
class RunStart:
    """What is known of a run when it starts; written to ``runs`` when it ends (or by the next run)."""

    run_id: int
    trigger: str
    started_at: datetime
    input: str
    input_kind: str
    parameters: dict[str, Any]
    seed: int
    code_version: str
    flow_run_id: str | None = None

    def as_journal(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "trigger": self.trigger,
            "started_at": self.started_at.isoformat(),
            "input": self.input,
            "input_kind": self.input_kind,
            "parameters": self.parameters,
            "seed": self.seed,
            "code_version": self.code_version,
            "flow_run_id": self.flow_run_id,
            "stage": "start",
        }


def start_run(
    database: str | Path,
    journal,
    *,
    trigger: str,
    input_name: str,
    input_kind: str,
    parameters: Mapping[str, Any],
    seed: int,
    code_version: str,
    flow_run_id: str | None = None,
    writer_wait_seconds: float = 0.0,
    notify: Notify | None = None,
) -> RunStart:
    """Give the run its id and journal it in the lock file (nothing is written to the database yet).

    ``journal`` is the :class:`flows.runlock.RunJournal` of the held run lock. The id follows the
    published runs and any run a killed predecessor had claimed. A process that has the results
    open for writing is waited for (``writer_wait_seconds``, then :class:`StoreBusyError`), and a
    write-ahead log it left that the file would not accept is set aside, so that this run and
    every reader can open the file.
    """
    path = results_path(database)
    wait_for_writer(path, writer_wait_seconds, notify)
    _settle_wal(path, notify)
    claimed = max((int(j["run_id"]) for j in killed_runs(journal.previous)), default=0)
    run_id = max(published_max_run_id(path), claimed) + 1
    start = RunStart(
        run_id=run_id,
        trigger=trigger,
        started_at=utc_now(),
        input=input_name,
        input_kind=input_kind,
        parameters=json.loads(json.dumps(dict(parameters), default=str)),
        seed=seed,
        code_version=code_version,
        flow_run_id=flow_run_id,
    )
    # A predecessor that was killed is recorded when this run publishes; if this run is killed
    # too, its journal carries the predecessor on to the next one.
    journal.note(**start.as_journal())
    return start


def _insert_run_row(con: duckdb.DuckDBPyConnection, start: RunStart, status: str, **fields: Any) -> None:
    row = {
        "run_id": start.run_id,
        "trigger": start.trigger,
        "status": status,
        "started_at": start.started_at,
        "input": start.input,
        "input_kind": start.input_kind,
        "parameters": json.dumps(start.parameters, default=str, sort_keys=True),
        "seed": start.seed,
        "code_version": start.code_version,
        "flow_run_id": start.flow_run_id,
        **fields,
    }
    cols = ", ".join(quote_identifier(c) for c in row)
    marks = ", ".join(f"${c}" for c in row)
    con.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", row)


def _record_killed(con: duckdb.DuckDBPyConnection, previous: Mapping[str, Any] | None, found_by: int) -> None:
    """Record in ``runs`` every killed run the journal left behind (each once)."""
    for journal in killed_runs(previous):
        _record_one_killed(con, journal, found_by)


def _record_one_killed(con: duckdb.DuckDBPyConnection, previous: Mapping[str, Any], found_by: int) -> None:
    """Record a run the journal says was not recorded: ``killed``, or ``failed`` with its error
    when it failed but could not publish that (the results file was busy, the disk full)."""
    run_id = int(previous["run_id"])
    if con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]:
        if previous.get("stage") == "report":
            # Its results were published; it died (or failed) drawing the report, which is not there.
            why = previous.get("error") or f"the process (pid {previous.get('pid')}) ended while drawing it"
            con.execute(
                "UPDATE runs SET failed_stage = 'report', report_path = NULL, error = ? "
                "WHERE run_id = ? AND failed_stage IS NULL",
                [f"results published, report not rendered: {why} (found by run {found_by})", run_id],
            )
        return  # otherwise it was published just before it died
    start = RunStart(
        run_id=run_id,
        trigger=str(previous.get("trigger") or "unknown"),
        started_at=datetime.fromisoformat(previous["started_at"]),
        input=str(previous.get("input") or ""),
        input_kind=str(previous.get("input_kind") or ""),
        parameters=previous.get("parameters") or {},
        seed=int(previous.get("seed") or 0),
        code_version=str(previous.get("code_version") or ""),
        flow_run_id=previous.get("flow_run_id"),
    )
    if previous.get("status") == "failed":
        _insert_run_row(
            con,
            start,
            "failed",
            failed_stage=previous.get("failed_stage") or previous.get("stage"),
            error=f"{previous.get('error')} (recorded by run {found_by}: the run could not publish it)",
            finished_at=datetime.fromisoformat(previous["finished_at"])
            if previous.get("finished_at")
            else None,
        )
        return
    _insert_run_row(
        con,
        start,
        "killed",
        failed_stage=previous.get("stage"),
        error=(
            f"the process (pid {previous.get('pid')}) ended without finishing, during stage "
            f"{previous.get('stage')!r}; nothing of it was published (found by run {found_by})"
        ),
    )


@dataclass
class RunRecord:
    """Everything one successful run writes (plain values, ready for the store)."""

    as_of: date | None
    rows_loaded: int
    rows_rejected: int
    rows_excluded: dict[str, int]
    customers: int
    features: list[str]
    n_components: int
    covariance_type: str
    criterion: str
    bic: float
    aic: float
    icl: float
    log_likelihood: float
    report_path: str | None
    candidates: list[dict[str, Any]]
    segments: pd.DataFrame
    segment_features: pd.DataFrame
    feature_scalers: pd.DataFrame
    #: One row per customer: a frame, or rows built a chunk at a time (flows.segments.AssignmentRows)
    assignments: pd.DataFrame | RowChunks | PartWriter
    rejects: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: flows.continuity.TrackingRecord: ids and drift against the previous run (None: not tracked)
    tracking: Any = None
    #: How the model structure was chosen (flows.choice): decision, its sentence, both criterion
    #: values, and the grid actually tried.
    decision: str | None = None
    decision_note: str | None = None
    fresh_value: float | None = None
    previous_value: float | None = None
    k_max_tried: int | None = None
    grid_note: str | None = None
    #: Customers segmented with at least one blank feature (customer tables).
    customers_with_gaps: int = 0


def finish_run(
    database: str | Path,
    start: RunStart,
    record: RunRecord,
    killed: Mapping[str, Any] | None = None,
    keep_runs: int = 0,
    *,
    writer_wait_seconds: float = 0.0,
    notify: Notify | None = None,
) -> None:
    """Publish all of a successful run's rows at once (see :func:`publishing`).

    ``killed`` is a journal left by a killed predecessor, recorded in the same publication.
    ``keep_runs`` > 0 removes, in the same publication, the per-customer rows of runs older than
    the ``keep_runs`` newest successful ones (see :func:`prune_details`).
    """
    with publishing(database, writer_wait_seconds=writer_wait_seconds, notify=notify) as con:
        _record_killed(con, killed, start.run_id)
        if _published(con, start.run_id):
            return  # a retry after the file was already replaced: the run is there, whole
        _insert_children(con, run_files.root_for(results_path(database)), start.run_id, record)
        _insert_run_row(
            con,
            start,
            "success",
            finished_at=utc_now(),
            as_of=record.as_of,
            rows_loaded=record.rows_loaded,
            rows_rejected=record.rows_rejected,
            rows_excluded=json.dumps(record.rows_excluded, sort_keys=True),
            customers=record.customers,
            features=list(record.features),
            n_components=record.n_components,
            covariance_type=record.covariance_type,
            criterion=record.criterion,
            bic=_finite_or_none(record.bic),
            aic=_finite_or_none(record.aic),
            icl=_finite_or_none(record.icl),
            log_likelihood=_finite_or_none(record.log_likelihood),
            report_path=record.report_path,
            decision=record.decision,
            decision_note=record.decision_note,
            fresh_value=_finite_or_none(record.fresh_value),
            previous_value=_finite_or_none(record.previous_value),
            k_max_tried=record.k_max_tried,
            grid_note=record.grid_note or None,
            customers_with_gaps=record.customers_with_gaps,
            **_tracking_columns(record.tracking),
        )
        if keep_runs:
            prune_details(con, keep_runs)


def prune_details(con: duckdb.DuckDBPyConnection, keep_runs: int) -> int:
    """Prune the per-customer rows of runs older than the ``keep_runs`` newest successful runs.

    The runs are marked ``pruned_at``, which hides their assignments and rejected rows at once;
    their files are removed once the publication is in place (:func:`publishing`). Returns how
    many runs were marked now.

    Their summary rows (runs, segments, segment_features, model_candidates, drift tables) stay, so
    segment history and drift remain queryable. The newest successful run is always kept whole:
    the next run compares its customers with it.
    """
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be at least 1, got {keep_runs}")
    kept = con.execute(
        "SELECT run_id FROM runs WHERE status = 'success' ORDER BY run_id DESC LIMIT ?", [keep_runs]
    ).fetchall()
    if len(kept) < keep_runs:
        return 0
    oldest_kept = kept[-1][0]
    pruned = con.execute(
        "UPDATE runs SET pruned_at = ? WHERE run_id < ? AND pruned_at IS NULL", [utc_now(), oldest_kept]
    ).fetchall()
    return int(pruned[0][0]) if pruned else 0


def _published(con: duckdb.DuckDBPyConnection, run_id: int) -> bool:
    return bool(con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0])


def note_report_failure(database: str | Path, run_id: int, message: str, **publish: Any) -> None:
    """A published run whose report could not be rendered: its results stand; say so in ``runs``.

    ``publish`` goes to :func:`publishing` (``writer_wait_seconds``, ``notify``)."""
    with publishing(database, **publish) as con:
        con.execute(
            "UPDATE runs SET failed_stage = 'report', error = ?, report_path = NULL WHERE run_id = ?",
            [f"results published, report not rendered: {message}", run_id],
        )


def fail_run(
    database: str | Path,
    start: RunStart,
    stage: str,
    message: str,
    rejects: pd.DataFrame | None = None,
    rows_loaded: int | None = None,
    killed: Mapping[str, Any] | None = None,
    **publish: Any,
) -> None:
    """Publish a failed run: its ``runs`` row with the failing stage and message, and its rejects.

    A run already published (its write failed after the file was replaced, e.g. syncing the
    folder) stays as published: its results are whole. ``publish`` goes to :func:`publishing`.
    """
    with publishing(database, **publish) as con:
        _record_killed(con, killed, start.run_id)
        if _published(con, start.run_id):
            return
        n_rejected = 0
        if rejects is not None and len(rejects):
            _write_rejects(con, run_files.root_for(results_path(database)), start.run_id, rejects)
            n_rejected = rejected_row_count(rejects)
        _insert_run_row(
            con,
            start,
            "failed",
            failed_stage=stage,
            error=message,
            finished_at=utc_now(),
            rows_rejected=n_rejected,
            rows_loaded=rows_loaded,
        )


def _insert_children(con: duckdb.DuckDBPyConnection, root: Path, run_id: int, record: RunRecord) -> None:
    candidates = pd.DataFrame(
        [{name: row.get(name) for name in CANDIDATE_COLUMNS} for row in record.candidates],
        columns=list(CANDIDATE_COLUMNS),
    )
    for name in ("log_likelihood", "mean_log_likelihood", "bic", "aic", "icl", "seconds"):
        candidates[name] = pd.to_numeric(candidates[name], errors="coerce").astype("float64")
    candidates["reason"] = candidates["reason"].fillna("").astype(str)
    candidates["origin"] = candidates["origin"].fillna("grid").astype(str)
    _insert_frame(con, "model_candidates", run_id, candidates, list(CANDIDATE_COLUMNS))
    _insert_frame(
        con,
        "segments",
        run_id,
        record.segments,
        ["segment_id", "weight", "customer_count", "mean_probability", "model_mean", "model_covariance"],
    )
    _insert_frame(
        con,
        "segment_features",
        run_id,
        record.segment_features,
        [
            "segment_id",
            "feature_index",
            "feature",
            "unit",
            "mean",
            "std",
            "centre",
            "spread_low",
            "spread_high",
        ],
    )
    _insert_frame(
        con,
        "feature_scalers",
        run_id,
        record.feature_scalers,
        [
            "feature_index",
            "feature",
            "unit",
            "transform",
            "scaler_mean",
            "scaler_scale",
            "resolution",
            "spike_value",
            "spike_share",
        ],
    )
    _write_assignments(root, run_id, record.assignments)
    if record.rejects is not None and len(record.rejects):
        _write_rejects(con, root, run_id, record.rejects)
    tracking = record.tracking
    if tracking is not None and tracking.previous_run_id is not None:
        for table, frame in (
            ("segment_migrations", tracking.migrations),
            ("segment_transitions", tracking.transitions),
            ("segment_shifts", tracking.shifts),
        ):
            if len(frame):
                frame = frame.assign(previous_run_id=tracking.previous_run_id)
                _insert_frame(con, table, run_id, frame, list(frame.columns))


def _tracking_columns(tracking: Any) -> dict[str, Any]:
    if tracking is None:
        return {}
    return {
        "previous_run_id": tracking.previous_run_id,
        "match_method": tracking.match_method,
        "new_segments": tracking.new_segments,
        "retired_segments": tracking.retired_segments,
        "moved_share": tracking.moved_share,
        "held_customers": tracking.held_customers,
        "drift_flags": tracking.drift_flags,
        "what_changed": tracking.what_changed,
    }


def name_segment(database: str | Path, segment_id: int, name: str | None, **publish: Any) -> None:
    """Give a stable segment id a name (``None``: remove it), published like a run.

    Callers hold the run lock, so a name never races a run's publication. ``publish`` goes to
    :func:`publishing`.
    """
    with publishing(database, **publish) as con:
        known = con.execute("SELECT count(*) FROM segments WHERE segment_id = ?", [segment_id]).fetchall()[0][
            0
        ]
        if not known:
            ids = [
                r[0] for r in con.execute("SELECT DISTINCT segment_id FROM segments ORDER BY 1").fetchall()
            ]
            raise ValueError(f"{database}: no segment {segment_id} in any run (segment ids: {ids})")
        con.execute("DELETE FROM segment_names WHERE segment_id = ?", [segment_id])
        if name is not None:
            con.execute("INSERT INTO segment_names VALUES (?, ?, ?)", [segment_id, name, utc_now()])


@contextmanager
def _registered(con: duckdb.DuckDBPyConnection, name: str, frame: pd.DataFrame) -> Iterator[str]:
    """Expose ``frame`` to SQL as ``name`` for the duration of the block."""
    con.register(name, frame)
    try:
        yield quote_identifier(name)
    finally:
        # After a failed statement the transaction is aborted and unregistering fails too;
        # the original error is the one worth seeing, and the view dies with the connection.
        with suppress(duckdb.Error):
            con.unregister(name)


def _insert_frame(
    con: duckdb.DuckDBPyConnection, table: str, run_id: int, frame: pd.DataFrame, columns: Sequence[str]
) -> None:
    """INSERT the named columns of ``frame`` (plus run_id) into ``table`` through a registered view."""
    cols = ", ".join(quote_identifier(c) for c in columns)
    with _registered(con, f"_incoming_{table}", frame) as view:
        con.execute(
            f"INSERT INTO {quote_identifier(table)} (run_id, {cols}) SELECT ?, {cols} FROM {view}", [run_id]
        )


#: Customers per Parquet part of a run's assignments: bounds the memory the write takes (each
#: part is built, checked by Pandera and copied by DuckDB whole). Writing 2 x 10^6 customers at
#: k = 5 peaked 382 MiB above the run with 500,000-customer parts, 212 with 200,000, 147 with
#: 100,000 (and took a fifth longer).
ASSIGNMENT_CHUNK_ROWS = 200_000


class RowChunks(Protocol):
    """Rows produced a chunk at a time (:class:`flows.segments.AssignmentRows`)."""

    def chunks(self, size: int) -> Iterator[pd.DataFrame]: ...


@runtime_checkable
class PartWriter(Protocol):
    """Rows that write their own Parquet parts (:class:`flows.cluster_assignments.ClusterAssignments`:
    on a cluster's workers): ``write_parts(root, run_id)`` puts them where
    :func:`flows.run_files.run_file` says, whole or not at all, within the publication's block."""

    def write_parts(self, root: Path, run_id: int) -> None: ...


def _write_assignments(root: Path, run_id: int, rows: pd.DataFrame | RowChunks | PartWriter) -> None:
    """Write a run's assignments as Parquet parts of ``ASSIGNMENT_CHUNK_ROWS`` customers each
    (or as parts the rows write themselves, :class:`PartWriter`)."""
    if isinstance(rows, PartWriter):
        rows.write_parts(root, run_id)
    else:
        write_assignments(root, run_id, rows)


def write_assignments(root: Path, run_id: int, rows: pd.DataFrame | RowChunks) -> None:
    """Write ``rows`` (a frame, or rows built a chunk at a time) as Parquet parts of
    ``ASSIGNMENT_CHUNK_ROWS`` customers each, parts 0, 1, ... of run ``run_id`` under ``root``."""
    if isinstance(rows, pd.DataFrame):
        frame = rows
        chunks: Iterator[pd.DataFrame] | list[pd.DataFrame] = [
            frame.iloc[i : i + ASSIGNMENT_CHUNK_ROWS]
            for i in range(0, max(len(frame), 1), ASSIGNMENT_CHUNK_ROWS)
        ]
    else:
        chunks = rows.chunks(ASSIGNMENT_CHUNK_ROWS)
    # The parts are written through a connection of their own, outside the publication's
    # transaction: a frame registered inside a transaction stays referenced until it commits,
    # so every chunk would stay in memory (20 chunks of about 45 MiB at 10^7 customers).
    # The next chunk is built (an E-step, the Pandera check) in a thread while DuckDB writes
    # this one: one chunk more in memory, the two stages' work side by side.
    pending = iter(chunks)
    with closing(connect()) as part_con, ThreadPoolExecutor(max_workers=1) as ahead:
        following = ahead.submit(next, pending, None)
        part = 0
        while (chunk := following.result()) is not None:
            following = ahead.submit(next, pending, None)
            write_assignment_part(part_con, root, run_id, part, chunk)
            part += 1


def write_assignment_part(
    con: duckdb.DuckDBPyConnection, root: Path, run_id: int, part: int, chunk: pd.DataFrame
) -> None:
    """Write ``chunk`` (rows of :func:`flows.segments.assignment_table`) as part ``part`` of run
    ``run_id``'s assignments under ``root`` (:func:`flows.run_files.write_run_file`)."""
    # Probabilities arrive as p_1..p_k columns: building the list in SQL is far faster than
    # handing DuckDB a column of Python lists.
    prob_cols = [c for c in chunk.columns if c.startswith("p_")]
    prob_list = "[" + ", ".join(quote_identifier(c) for c in prob_cols) + "]"
    held = "held" if "held" in chunk.columns else "NULL"
    missing = "missing_features" if "missing_features" in chunk.columns else "NULL"
    with _registered(con, "_incoming_assignments", chunk) as view:
        run_files.write_run_file(
            con,
            root,
            "assignments",
            run_id,
            f"""
            SELECT customer_id, segment_id, probability, CAST({prob_list} AS DOUBLE[]) AS probabilities,
                   log_density, {held} AS held, {missing} AS missing_features
            FROM {view}
            """,
            part=part,
        )


def _write_rejects(con: duckdb.DuckDBPyConnection, root: Path, run_id: int, rejects: pd.DataFrame) -> None:
    frame = rejects[["source", "row_number", "column_name", "rule", "value"]].copy()
    frame["value"] = frame["value"].astype(object)
    with _registered(con, "_incoming_rejected_rows", frame) as view:
        run_files.write_run_file(
            con,
            root,
            "rejected_rows",
            run_id,
            f"SELECT source, row_number, column_name, rule, value FROM {view}",
        )


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def feature_scaler_table(
    names: Sequence[str],
    units: Sequence[str],
    transforms: Sequence[str],
    mean: np.ndarray,
    scale: np.ndarray,
    resolution: np.ndarray | None = None,
    spike_value: np.ndarray | None = None,
    spike_share: np.ndarray | None = None,
) -> pd.DataFrame:
    """The ``feature_scalers`` rows of a run (one per feature, in model column order).

    ``resolution`` (model units), ``spike_value`` and ``spike_share`` describe each feature's
    spike (:func:`flows.features.feature_resolution`); left out, every feature is continuous.
    """
    d = len(names)

    def column(values: np.ndarray | None, empty: float) -> np.ndarray:
        return np.full(d, empty) if values is None else np.asarray(values, dtype=np.float64)

    return pd.DataFrame(
        {
            "feature_index": np.arange(1, d + 1, dtype=np.int64),
            "feature": list(names),
            "unit": list(units),
            "transform": list(transforms),
            "scaler_mean": np.asarray(mean, dtype=np.float64),
            "scaler_scale": np.asarray(scale, dtype=np.float64),
            "resolution": column(resolution, 0.0),
            # NULL, not NaN, where a feature has no spike (nullable dtype: DuckDB reads NA as NULL).
            "spike_value": pd.array(column(spike_value, np.nan), dtype="Float64"),
            "spike_share": column(spike_share, 0.0),
        }
    )
