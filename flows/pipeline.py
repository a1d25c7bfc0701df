"""The Prefect flow: one named task per stage (load, validate, features, select, fit, write, report)."""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run

from flows import continuity, stages
from flows.config import Criterion, CovarianceType, InputKind, Settings, Transform, Trigger, load_settings
from flows.console import hide_tracebacks_if_asked
from flows.faults import fault_point
from flows.features import RULE_LABELS
from flows.load import LoadedInput, load_input
from flows.runlock import RunJournal, database_lock
from flows.store import RunStart, fail_run, finish_run, note_report_failure, start_run
from flows.tracking import drift_markdown


def _transient(task, task_run, state) -> bool:
    """Retry only I/O errors that may pass (locks, flaky disks), never bad input or configuration."""
    try:
        state.result(raise_on_failure=True)
    except (duckdb.IOException, OSError) as exc:
        return not isinstance(exc, FileNotFoundError)
    except Exception:
        return False
    return False


# Inputs are large DataFrames: hashing them for Prefect's cache would cost more than the stage.
_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="start", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, **_TASK)
def start_task(settings: Settings, trigger: str, journal: RunJournal) -> RunStart:
    return start_run(
        settings.output.database,
        journal,
        trigger=trigger,
        input_name=settings.input.path,
        input_kind=settings.input.kind,
        parameters=settings.model_dump(mode="json"),
        seed=settings.model.seed,
        code_version=stages.code_version(),
        flow_run_id=str(flow_run.get_id() or ""),
    )


@task(name="load", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, **_TASK)
def load_task(settings: Settings) -> LoadedInput:
    loaded = load_input(settings.input, settings.features.columns)
    get_run_logger().info("loaded %s rows from %s", f"{len(loaded.frame):,}", loaded.source)
    return loaded


@task(name="validate", **_TASK)
def validate_task(loaded: LoadedInput, settings: Settings):
    outcome = stages.validate_input(loaded, settings)
    get_run_logger().info(
        "%s rows valid, %s rejected (%.2f%%)",
        f"{len(outcome.valid):,}", f"{outcome.n_rejected_rows:,}", 100 * outcome.reject_share,
    )
    return outcome


@task(name="features", **_TASK)
def features_task(valid, settings: Settings):
    features = stages.compute_features(valid, settings)
    logger = get_run_logger()
    logger.info("%s customers x %d features %s", f"{features.n_customers:,}", len(features.names), features.names)
    for rule, count in features.counts.items():
        logger.info("%s: %s", RULE_LABELS.get(rule, rule), f"{count:,}")
    return features


@task(name="previous", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, **_TASK)
def previous_task(database: str):
    previous = continuity.load_previous(database)
    if previous is not None:
        get_run_logger().info("comparing with run %d (%d segments)", previous.run_id, previous.model.n_segments)
    return previous


@task(name="select", **_TASK)
def select_task(features, settings: Settings, run_id: int, previous):
    logger = get_run_logger()
    artifact_id = create_progress_artifact(
        0.0, key=f"model-selection-run-{run_id}", description="Model selection: candidate fits done"
    )
    shown = {"pct": -100.0}

    def progress(done: int, total: int) -> None:
        fault_point("fit")
        pct = 100.0 * done / max(total, 1)
        # Throttled: every call is an API round trip.
        if pct - shown["pct"] >= 10 or done == total:
            shown["pct"] = pct
            logger.info("model selection: %d/%d candidate fits done", done, total)
            try:
                update_progress_artifact(artifact_id, pct)
            except Exception:  # progress display must never fail the fit
                pass

    selection = stages.select_segments(features, settings, progress, previous_k=stages.previous_k(previous, features))
    chosen = stages.selected_row(selection.table)
    logger.info(
        "best fresh model: %d segments, %s covariance (%s = %.1f)",
        chosen["n_components"], chosen["covariance_type"], selection.criterion.upper(), chosen[selection.criterion],
    )
    if selection.grid_note():
        (logger.warning if selection.at_limit else logger.info)("model grid: %s", selection.grid_note())
    return selection


@task(name="choose", **_TASK)
def choose_task(selection, features, previous, settings: Settings, fresh: bool, run_id: int):
    choice = stages.choose(selection, features, previous, settings, fresh=fresh)
    get_run_logger().info("%s", choice.note)
    create_table_artifact(
        [stages.clean_row(r) for r in choice.table],
        key=f"model-selection-grid-run-{run_id}",
        description=f"Model-selection grid of run {run_id} ({choice.criterion.upper()}, lower is better)",
    )
    return choice


@task(name="assign", **_TASK)
def assign_task(choice, features):
    return stages.fit_segments(choice.model, features)


@task(name="track", **_TASK)
def track_task(segments, features, previous, settings: Settings, choice):
    segments, drift = continuity.track(segments, features, previous, settings, choice)
    logger = get_run_logger()
    for line in drift.summary().splitlines():
        logger.info("%s", line)
    for flag in drift.flags:
        logger.warning("drift: %s", flag)
    return segments, drift


@task(name="write", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, **_TASK)
def write_task(database: str, start: RunStart, record, killed: dict | None, keep_runs: int = 0) -> None:
    finish_run(database, start, record, killed, keep_runs)
    if killed:
        get_run_logger().warning(
            "run %s was killed during stage %s; recorded as killed", killed.get("run_id"), killed.get("stage")
        )
    get_run_logger().info("run %d published to %s", start.run_id, database)


@task(name="report", retries=1, retry_delay_seconds=1, retry_condition_fn=_transient, **_TASK)
def report_task(data, out_dir: str) -> str:
    from reports import render_report

    index = render_report(data, out_dir)
    get_run_logger().info("report: %s", index)
    return str(index)


def settings_from_parameters(
    config_path: str | None = None,
    **overrides: Any,
) -> Settings:
    """Merge flow parameters (None = not given) over the TOML file into validated Settings."""
    o = overrides
    nested = {
        "input": {
            "path": o.get("input_path"),
            "kind": o.get("input_kind"),
            "table": o.get("input_table"),
            "query": o.get("input_query"),
            "columns": o.get("columns"),
        },
        "rules": {"as_of": o.get("as_of"), "max_reject_share": o.get("max_reject_share")},
        "features": {"columns": o.get("features"), "transforms": o.get("transforms")},
        "model": {
            "k_min": o.get("k_min"),
            "k_max": o.get("k_max"),
            "covariance_types": o.get("covariance_types"),
            "criterion": o.get("criterion"),
            "n_init": o.get("n_init"),
            "seed": o.get("seed"),
            "max_samples": o.get("max_samples"),
        },
        "output": {"database": o.get("database"), "reports": o.get("reports_dir")},
        "schedule": {"cron": o.get("cron"), "timezone": o.get("timezone")},
    }
    nested = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in nested.items()}
    nested = {k: v for k, v in nested.items() if v}
    return load_settings(config_path, nested)


@flow(name="segment-customers", description="Raw customer data to probabilistic segments in DuckDB and a report.")
def segment_customers(
    config_path: str | None = None,
    input_path: str | None = None,
    input_kind: InputKind | None = None,
    input_table: str | None = None,
    input_query: str | None = None,
    columns: dict[str, str] | None = None,
    features: list[str] | None = None,
    transforms: dict[str, Transform] | None = None,
    as_of: date | None = None,
    k_min: int | None = None,
    k_max: int | None = None,
    covariance_types: list[CovarianceType] | None = None,
    criterion: Criterion | None = None,
    n_init: int | None = None,
    seed: int | None = None,
    max_samples: int | None = None,
    max_reject_share: float | None = None,
    database: str | None = None,
    reports_dir: str | None = None,
    trigger: Trigger | None = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Segment customers: every parameter left as None comes from the TOML file at ``config_path``
    (or the built-in defaults, which segment the embedded Online Retail sample).

    ``fresh`` chooses the number of segments and the covariance type afresh, instead of keeping
    the previous run's unless a fresh choice is clearly better (``model.switch_margin``): what a
    manual re-segmentation is for.

    ``trigger`` (how the run was started) is recorded in ``runs``; when not given it is ``schedule``
    for a run the Prefect scheduler created, ``manual`` for any other deployment run, else ``cli``.
    Runs on the same database never overlap: a run waits for the one holding the database
    (``output.lock_wait_minutes``), whatever started it.
    """
    hide_tracebacks_if_asked()
    logger = get_run_logger()
    settings = settings_from_parameters(
        config_path, input_path=input_path, input_kind=input_kind, input_table=input_table,
        input_query=input_query, columns=columns, features=features, transforms=transforms, as_of=as_of,
        k_min=k_min, k_max=k_max, covariance_types=covariance_types, criterion=criterion, n_init=n_init,
        seed=seed, max_samples=max_samples, max_reject_share=max_reject_share, database=database,
        reports_dir=reports_dir,
    )
    trigger = trigger or infer_trigger()
    if settings.tracking.warm_start is not None:
        logger.warning(
            "tracking.warm_start is no longer used: every run refits the previous run's model and keeps it "
            "unless a fresh choice is better by model.switch_margin (use --fresh / fresh=true to choose afresh)"
        )
    with database_lock(
        settings.output.database,
        settings.output.lock_wait_minutes * 60,
        label=f"flow run {flow_run.get_name()!r} ({trigger})",
        on_wait=lambda holder: logger.info("waiting for %s to finish with %s", holder, settings.output.database),
    ) as journal:
        return _segment(settings, trigger, logger, journal, fresh=fresh)


def infer_trigger() -> str:
    """``schedule``/``manual`` for deployment runs (from the run's ``auto_scheduled`` flag), else ``cli``."""
    if not deployment.get_id():
        return "cli"
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run.get_id())
    except Exception:  # the label is informational; never fail a run over it
        return "manual"
    return "schedule" if run.auto_scheduled else "manual"


def _segment(settings: Settings, trigger: str, logger, journal: RunJournal, fresh: bool = False) -> dict[str, Any]:
    """The stages of one run, with the run lock held and ``journal`` kept up to date."""
    database_path = settings.output.database
    start = start_task(settings, trigger, journal)
    run_id = start.run_id
    logger.info("run %d started (trigger %s)", run_id, trigger)
    seconds: dict[str, float] = {}
    peak_mb: dict[str, float] = {}
    stage = "load"
    outcome = loaded = None
    clock = time.perf_counter()

    def done(finished: str, following: str) -> str:
        # Per-stage wall time and the process's peak memory so far (for benchmarks and the logs).
        nonlocal clock
        now = time.perf_counter()
        seconds[finished] = round(now - clock, 3)
        peak_mb[finished] = round(peak_rss_mb(), 1)
        clock = now
        if following:
            journal.note(stage=following)
        return following

    try:
        loaded = load_task(settings)
        stage = done("load", "validate")
        outcome = validate_task(loaded, settings)
        stage = done("validate", "features")
        features_ = features_task(outcome.valid, settings)
        stage = done("features", "previous")
        previous = previous_task(database_path)
        stage = done("previous", "select")
        selection = select_task(features_, settings, run_id, previous)
        stage = done("select", "choose")
        choice = choose_task(selection, features_, previous, settings, fresh, run_id)
        stage = done("choose", "assign")
        segments = assign_task(choice, features_)
        stage = done("assign", "track")
        segments, drift = track_task(segments, features_, previous, settings, choice)
        stage = done("track", "write")
        report_dir = Path(settings.output.reports) / str(run_id)
        record = stages.build_record(
            loaded=loaded, outcome=outcome, features=features_, choice=choice, segments=segments,
            report_path=str((report_dir / "index.html").resolve()),
        )
        record.tracking = continuity.tracking_record(drift)
        write_task(database_path, start, record, journal.previous, settings.output.keep_runs)
        journal.recorded = True
        stage = done("write", "report")
        data = stages.report_data(
            run_id=run_id, settings=settings, loaded=loaded, outcome=outcome, features=features_,
            choice=choice, segments=segments,
        )
        data = dataclasses.replace(data, drift=drift.report_drift())
        report_index = str(Path(report_task(data, str(report_dir))).resolve())
        done("report", "")
    except Exception as exc:
        rejects = getattr(getattr(exc, "outcome", None), "rejects", None)
        if rejects is None and outcome is not None:
            rejects = outcome.rejects
        rows_loaded = loaded.n_rows if loaded is not None else None
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if journal.recorded:
            # The results are published and stand; only the report is missing.
            note_report_failure(database_path, run_id, message)
        else:
            fail_run(
                database_path, start, stage, message, rejects=rejects, rows_loaded=rows_loaded,
                killed=journal.previous,
            )
            journal.recorded = True
        logger.error("run %d failed in stage %s: %s", run_id, stage, message)
        raise

    summary = {
        "run_id": run_id,
        "n_components": record.n_components,
        "covariance_type": record.covariance_type,
        "criterion": record.criterion,
        "criterion_value": getattr(record, record.criterion),
        "as_of": str(record.as_of) if record.as_of else None,
        "rows_loaded": record.rows_loaded,
        "rows_rejected": record.rows_rejected,
        "customers": record.customers,
        "segment_sizes": [
            {"segment_id": int(s), "customers": int(n), "weight": float(w)}
            for s, n, w in zip(segments.segment_ids, segments.customer_counts, segments.weights)
        ],
        "database": str(Path(database_path).resolve()),
        "report": report_index,
        "stage_seconds": seconds,
        "stage_peak_mb": peak_mb,
        "previous_run_id": record.tracking.previous_run_id,
        "new_segments": record.tracking.new_segments,
        "retired_segments": record.tracking.retired_segments,
        "moved_share": record.tracking.moved_share,
        "drift_flags": record.tracking.drift_flags,
        "decision": choice.decision,
        "decision_note": choice.note,
        "grid_note": choice.grid_note,
        "k_max_tried": choice.k_max_tried,
    }
    try:
        markdown = markdown_summary(summary)
        if drift.previous is not None:
            markdown += "\n\n" + drift_markdown(drift)
        create_markdown_artifact(
            markdown, key=f"segmentation-run-{run_id}", description=f"Segmentation run {run_id}"
        )
    except Exception as exc:  # the run is stored; a UI artifact must not turn it into a failure
        logger.warning("could not publish the run summary artifact: %s", exc)
    return summary


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def markdown_summary(summary: dict[str, Any]) -> str:
    """The run's markdown artifact: chosen model, segment sizes, rejects and report link."""
    lines = [
        f"# Segmentation run {summary['run_id']}",
        "",
        f"**Chosen model:** {summary['n_components']} segments, {summary['covariance_type']} covariance "
        f"({summary['criterion'].upper()} = {summary['criterion_value']:.1f})",
        "",
        f"**As of:** {summary['as_of'] or '-'}  ",
        f"**Rows loaded:** {summary['rows_loaded']:,}  ",
        f"**Rows rejected:** {summary['rows_rejected']:,} (see table `rejected_rows`)  ",
        f"**Customers segmented:** {summary['customers']:,}",
        "",
        "| segment | customers | weight |",
        "|---:|---:|---:|",
    ]
    for s in summary["segment_sizes"]:
        lines.append(f"| {s['segment_id']} | {s['customers']:,} | {s['weight']:.3f} |")
    if summary.get("decision_note"):
        lines += ["", f"**How it was chosen:** {summary['decision_note']}"]
    if summary.get("grid_note"):
        lines += ["", f"**Model grid:** {summary['grid_note']}."]
    lines += [
        "",
        f"**Database:** `{summary['database']}`  ",
        f"**Report:** [{summary['report']}]({Path(summary['report']).as_uri()})",
    ]
    return "\n".join(lines)
