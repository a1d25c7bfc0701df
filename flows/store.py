"""The results store: one DuckDB file, a run's rows written in one transaction, views for analysts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from flows.duck import quote_identifier, sql_text

TABLES = (
    "runs",
    "model_candidates",
    "segments",
    "segment_features",
    "feature_scalers",
    "assignments",
    "rejected_rows",
)
VIEWS = ("latest_run", "current_segments", "segment_profiles", "current_assignments")

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
)


class StoreLockedError(RuntimeError):
    """The results database stayed locked by another process (e.g. an analyst's open session)."""


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "lock" in text or "being used by another process" in text


@contextmanager
def connect_for_write(
    database: str | Path, attempts: int = 6, first_delay: float = 0.5, max_delay: float = 8.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the results database for writing, briefly, retrying with backoff while another process holds it.

    DuckDB allows one writing process or many read-only ones per file, so the pipeline keeps the
    file closed except for two short moments (run start and the final write). An analyst with the
    file open delays the write by up to ``sum of the backoff delays`` (about 15 s with the defaults)
    and then the run fails with :class:`StoreLockedError`.
    """
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            con = duckdb.connect(str(path))
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc) or attempt == attempts:
                if _is_lock_error(exc):
                    raise StoreLockedError(
                        f"{path}: still locked by another process after {attempts} attempts; "
                        "close other sessions on the file (read-only sessions also block writers)"
                    ) from None
                raise
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
    try:
        yield con
    finally:
        con.close()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables and views if missing (``flows/sql/schema.sql``; idempotent)."""
    con.execute(sql_text("schema"))


def utc_now() -> datetime:
    """Current UTC time without tz info (DuckDB TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def start_run(
    database: str | Path,
    *,
    trigger: str,
    input_name: str,
    input_kind: str,
    parameters: Mapping[str, Any],
    seed: int,
    code_version: str,
    flow_run_id: str | None = None,
) -> int:
    """Record a new run with status ``running`` in its own short transaction; return its ``run_id``."""
    with connect_for_write(database) as con:
        ensure_schema(con)
        con.execute("BEGIN TRANSACTION")
        run_id = con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchone()[0]
        con.execute(
            """
            INSERT INTO runs (run_id, trigger, status, started_at, input, input_kind, parameters, seed,
                              code_version, flow_run_id)
            VALUES ($run_id, $trigger, 'running', $started_at, $input, $input_kind, $parameters, $seed,
                    $code_version, $flow_run_id)
            """,
            {
                "run_id": run_id,
                "trigger": trigger,
                "started_at": utc_now(),
                "input": input_name,
                "input_kind": input_kind,
                "parameters": json.dumps(parameters, default=str, sort_keys=True),
                "seed": seed,
                "code_version": code_version,
                "flow_run_id": flow_run_id,
            },
        )
        con.execute("COMMIT")
    return int(run_id)


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
    assignments: pd.DataFrame
    rejects: pd.DataFrame = field(default_factory=pd.DataFrame)


def finish_run(database: str | Path, run_id: int, record: RunRecord) -> None:
    """Write all of a run's rows and flip its status to ``success`` in ONE transaction.

    Analysts (who read through the views, which only show successful runs) see all of the run or
    none of it; a process killed before COMMIT leaves only the ``running`` row.
    """
    with connect_for_write(database) as con:
        ensure_schema(con)
        con.execute("BEGIN TRANSACTION")
        try:
            _insert_children(con, run_id, record)
            con.execute(
                """
                UPDATE runs SET status = 'success', finished_at = $finished_at, as_of = $as_of,
                    rows_loaded = $rows_loaded, rows_rejected = $rows_rejected,
                    rows_excluded = $rows_excluded, customers = $customers, features = $features,
                    n_components = $n_components, covariance_type = $covariance_type,
                    criterion = $criterion, bic = $bic, aic = $aic, icl = $icl,
                    log_likelihood = $log_likelihood, report_path = $report_path
                WHERE run_id = $run_id
                """,
                {
                    "run_id": run_id,
                    "finished_at": utc_now(),
                    "as_of": record.as_of,
                    "rows_loaded": record.rows_loaded,
                    "rows_rejected": record.rows_rejected,
                    "rows_excluded": json.dumps(record.rows_excluded, sort_keys=True),
                    "customers": record.customers,
                    "features": list(record.features),
                    "n_components": record.n_components,
                    "covariance_type": record.covariance_type,
                    "criterion": record.criterion,
                    "bic": _finite_or_none(record.bic),
                    "aic": _finite_or_none(record.aic),
                    "icl": _finite_or_none(record.icl),
                    "log_likelihood": _finite_or_none(record.log_likelihood),
                    "report_path": record.report_path,
                },
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def fail_run(
    database: str | Path,
    run_id: int,
    stage: str,
    message: str,
    rejects: pd.DataFrame | None = None,
    rows_loaded: int | None = None,
) -> None:
    """Mark a run ``failed`` with the failing stage and message (and its rejects, if any), in one transaction.

    Rows a failed run wrote earlier are removed so that only the run row and its rejects remain.
    """
    with connect_for_write(database) as con:
        ensure_schema(con)
        con.execute("BEGIN TRANSACTION")
        try:
            for table in TABLES[1:]:
                con.execute(f"DELETE FROM {quote_identifier(table)} WHERE run_id = ?", [run_id])
            n_rejected = 0
            if rejects is not None and len(rejects):
                _insert_rejects(con, run_id, rejects)
                n_rejected = int(rejects["row_number"].nunique())
            con.execute(
                """
                UPDATE runs SET status = 'failed', failed_stage = $stage, error = $error,
                    finished_at = $finished_at, rows_rejected = $rows_rejected,
                    rows_loaded = coalesce($rows_loaded, rows_loaded)
                WHERE run_id = $run_id
                """,
                {
                    "run_id": run_id,
                    "stage": stage,
                    "error": message,
                    "finished_at": utc_now(),
                    "rows_rejected": n_rejected,
                    "rows_loaded": rows_loaded,
                },
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def _insert_children(con: duckdb.DuckDBPyConnection, run_id: int, record: RunRecord) -> None:
    candidates = pd.DataFrame(
        [{name: row.get(name) for name in CANDIDATE_COLUMNS} for row in record.candidates],
        columns=list(CANDIDATE_COLUMNS),
    )
    for name in ("log_likelihood", "mean_log_likelihood", "bic", "aic", "icl", "seconds"):
        candidates[name] = pd.to_numeric(candidates[name], errors="coerce").astype("float64")
    candidates["reason"] = candidates["reason"].fillna("").astype(str)
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
        ["segment_id", "feature_index", "feature", "unit", "mean", "std", "centre", "spread_low", "spread_high"],
    )
    _insert_frame(
        con,
        "feature_scalers",
        run_id,
        record.feature_scalers,
        ["feature_index", "feature", "unit", "transform", "scaler_mean", "scaler_scale"],
    )
    _insert_assignments(con, run_id, record.assignments)
    if record.rejects is not None and len(record.rejects):
        _insert_rejects(con, run_id, record.rejects)


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
        con.execute(f"INSERT INTO {quote_identifier(table)} (run_id, {cols}) SELECT ?, {cols} FROM {view}", [run_id])


def _insert_assignments(con: duckdb.DuckDBPyConnection, run_id: int, frame: pd.DataFrame) -> None:
    # Probabilities arrive as p_1..p_k columns: building the list in SQL is far faster than
    # handing DuckDB a column of Python lists.
    prob_cols = [c for c in frame.columns if c.startswith("p_")]
    prob_list = "[" + ", ".join(quote_identifier(c) for c in prob_cols) + "]"
    with _registered(con, "_incoming_assignments", frame) as view:
        con.execute(
            f"""
            INSERT INTO assignments (run_id, customer_id, segment_id, probability, probabilities, log_density)
            SELECT ?, customer_id, segment_id, probability, CAST({prob_list} AS DOUBLE[]), log_density
            FROM {view}
            """,
            [run_id],
        )


def _insert_rejects(con: duckdb.DuckDBPyConnection, run_id: int, rejects: pd.DataFrame) -> None:
    frame = rejects[["source", "row_number", "column_name", "rule", "value"]].copy()
    frame["value"] = frame["value"].astype(object)
    _insert_frame(con, "rejected_rows", run_id, frame, ["source", "row_number", "column_name", "rule", "value"])


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def feature_scaler_table(names: Sequence[str], units: Sequence[str], transforms: Sequence[str],
                         mean: np.ndarray, scale: np.ndarray) -> pd.DataFrame:
    """The ``feature_scalers`` rows of a run (one per feature, in model column order)."""
    return pd.DataFrame(
        {
            "feature_index": np.arange(1, len(names) + 1, dtype=np.int64),
            "feature": list(names),
            "unit": list(units),
            "transform": list(transforms),
            "scaler_mean": np.asarray(mean, dtype=np.float64),
            "scaler_scale": np.asarray(scale, dtype=np.float64),
        }
    )
