"""The Prefect flow: one named task per stage (load, validate, features, select, fit, write, report)."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

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
from flows.config import PURCHASE_MEANINGS, Settings
from flows.customer_rows import ValidCustomers
from flows.faults import fault_point
from flows.features import RULE_LABELS
from flows.load import LoadedInput, load_input
from flows.matrix_file import remove_left_behind
from flows.memory import trim_heap
from flows.parameters import RunParameters, takes_run_parameters
from flows.runlock import RunJournal, database_lock, killed_runs
from flows.store import (
    RunRecord,
    RunStart,
    StoreBusyError,
    fail_run,
    finish_run,
    note_report_failure,
    start_run,
    utc_now,
)
from tracking import drift_markdown

if TYPE_CHECKING:
    from distributed import Client

    from flows.choice import ModelChoice
    from flows.features import FeatureMatrix
    from flows.segments import SegmentResult
    from gmm_cluster import ClusterData
    from gmm_engine import SelectionResult
    from schemas import ValidationOutcome
    from tracking import RunDrift


def _transient(task, task_run, state) -> bool:
    """Retry only I/O errors that may pass (locks, flaky disks), never bad input or configuration."""
    try:
        state.result(raise_on_failure=True)
    except (duckdb.IOException, OSError) as exc:
        return not isinstance(exc, FileNotFoundError)
    except Exception:
        return False
    return False


#: Set once a UI artifact could not reach the Prefect server in this process: later ones are
#: skipped rather than each waiting through the client's retries.
_UI_UNREACHABLE: set[str] = set()


def _ui(create, *args, **kwargs):
    """Create or update a Prefect artifact; never fail (or hold up) the run over it.

    Artifacts are how a run speaks to people in the UI; the results go to DuckDB either way. When
    the Prefect server cannot be reached, say so in one line and carry on without artifacts.
    """
    run = str(flow_run.get_id() or "")
    if run in _UI_UNREACHABLE:
        return None
    try:
        return create(*args, **kwargs)
    except Exception as exc:
        _UI_UNREACHABLE.add(run)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        get_run_logger().warning(
            "the Prefect server is unreachable (%s); the run goes on and publishes its results, without "
            "UI artifacts",
            text,
        )
        return None


# Inputs are large DataFrames: hashing them for Prefect's cache would cost more than the stage.
_TASK: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)


def _publish_options(settings: Settings) -> dict[str, Any]:
    """How the store publishes for this run: how long it waits for a writer, where it says so."""
    return {
        "writer_wait_seconds": settings.output.writer_wait_minutes * 60,
        "notify": get_run_logger().warning,
    }


@task(name="start", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, **_TASK)
def start_task(settings: Settings, trigger: str, journal: RunJournal) -> RunStart:
    return start_run(
        settings.output.database,
        journal,
        **_publish_options(settings),
        trigger=trigger,
        input_name=settings.input.path,
        input_kind=settings.input.kind,
        parameters=settings.model_dump(mode="json"),
        seed=settings.model.seed,
        code_version=stages.code_version(),
        flow_run_id=str(flow_run.get_id() or ""),
    )


@task(name="load", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, **_TASK)
def load_task(settings: Settings, client: Client | None = None) -> LoadedInput:
    workers_read = client is not None and stages.workers_read_input(
        client, settings, get_run_logger().warning
    )
    loaded = load_input(settings.input, settings.features.columns, read_partitions=not workers_read)
    if workers_read:
        get_run_logger().info(
            "%s rows in %d partitions of %s, read by the cluster's workers",
            f"{loaded.n_read:,}",
            len(loaded.partitions),
            loaded.source,
        )
    else:
        get_run_logger().info("loaded %s rows from %s", f"{loaded.n_read:,}", loaded.source)
    return loaded


@task(name="validate", **_TASK)
def validate_task(loaded: LoadedInput, settings: Settings, client: Client | None = None) -> ValidationOutcome:
    outcome = stages.validate_input(loaded, settings, client)
    get_run_logger().info(
        "%s rows valid, %s rejected (%.2f%%)",
        f"{len(outcome.valid):,}",
        f"{outcome.n_rejected_rows:,}",
        100 * outcome.reject_share,
    )
    return outcome


@task(name="features", **_TASK)
def features_task(valid, settings: Settings) -> FeatureMatrix:
    # Values in original units are read back from the model matrix a block at a time
    # (FeatureMatrix.original_rows), and from here on the matrix itself is read from a file a
    # block at a time (FeatureMatrix.in_file): the run holds neither (0.3 GiB at 10^7 x 4; issue 12).
    features = stages.compute_features(valid, settings, keep_original=False).in_file()
    logger = get_run_logger()
    logger.info(
        "%s customers x %d features %s", f"{features.n_customers:,}", len(features.names), features.names
    )
    if settings.input.kind == "transactions":
        purchase = settings.rules.purchase
        assert purchase is not None  # Settings sets it for a transaction log
        logger.info("frequency counts %s (rules.purchase = %r)", PURCHASE_MEANINGS[purchase], purchase)
    for rule, count in features.counts.items():
        logger.info("%s: %s", RULE_LABELS.get(rule, rule), f"{count:,}")
    return features


@task(name="features", **_TASK)
def cluster_features_task(valid, client: Client, settings: Settings) -> tuple[FeatureMatrix, ClusterData]:
    from flows.partition_features import features_on_cluster

    features, data = features_on_cluster(client, valid, settings)
    get_run_logger().info(
        "%s customers x %d features %s, computed by the cluster's workers in %d partitions",
        f"{features.n_customers:,}",
        len(features.names),
        features.names,
        data.n_partitions,
    )
    return features, data


def open_cluster(settings: Settings, logger):
    """The run's dask client on ``compute.cluster`` (a context manager: see :mod:`flows.cluster`)."""
    from flows.cluster import ClusterSpec, cluster_client

    compute = settings.compute
    assert compute.cluster is not None
    return cluster_client(
        ClusterSpec.parse(compute.cluster),
        worker_memory=compute.worker_memory,
        timeout=compute.connect_timeout_seconds,
        log=logger.info,
    )


@task(name="distribute", **_TASK)
def distribute_task(features, client: Client, settings: Settings, on_retry) -> ClusterData:
    data = stages.distribute(features, client, settings, on_retry)
    get_run_logger().info(
        "%s customers sent to the cluster's workers in %d partitions",
        f"{data.n_samples:,}",
        data.n_partitions,
    )
    return data


@task(name="previous", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, **_TASK)
def previous_task(database: str, features) -> continuity.PreviousRun | None:
    previous = continuity.load_previous(database, get_run_logger().warning)
    if previous is None:
        return None
    get_run_logger().info("comparing with run %d (%d segments)", previous.run_id, previous.model.n_segments)
    return previous.aligned_with(features, get_run_logger().warning)


@task(name="select", **_TASK)
def select_task(features, settings: Settings, run_id: int, previous, data=None) -> SelectionResult:
    logger = get_run_logger()
    artifact_id = _ui(
        create_progress_artifact,
        0.0,
        key=f"model-selection-run-{run_id}",
        description="Model selection: candidate fits done",
    )
    shown = {"pct": -100.0}

    def progress(done: int, total: int) -> None:
        fault_point("fit")
        pct = 100.0 * done / max(total, 1)
        # Throttled: every call is an API round trip.
        if pct - shown["pct"] >= 10 or done == total:
            shown["pct"] = pct
            logger.info("model selection: %d/%d candidate fits done", done, total)
            if artifact_id is not None:
                _ui(update_progress_artifact, artifact_id, pct)

    selection = stages.select_segments(
        features, settings, progress, previous_k=stages.previous_k(previous, features), data=data
    )
    chosen = stages.selected_row(selection.table)
    logger.info(
        "best fresh model: %d segments, %s covariance (%s = %.1f)",
        chosen["n_components"],
        chosen["covariance_type"],
        selection.criterion.upper(),
        chosen[selection.criterion],
    )
    if selection.grid_note():
        (logger.warning if selection.at_limit else logger.info)("model grid: %s", selection.grid_note())
    return selection


@task(name="choose", **_TASK)
def choose_task(
    selection, features, previous, settings: Settings, fresh: bool, run_id: int, data=None
) -> ModelChoice:
    choice = stages.choose(selection, features, previous, settings, fresh=fresh, data=data)
    get_run_logger().info("%s", choice.note)
    _ui(
        create_table_artifact,
        [stages.clean_row(r) for r in choice.table],
        key=f"model-selection-grid-run-{run_id}",
        description=f"Model-selection grid of run {run_id} ({choice.criterion.upper()}, lower is better)",
    )
    return choice


@task(name="assign", **_TASK)
def assign_task(choice, features, on_cluster=None) -> SegmentResult:
    return stages.fit_segments(choice.model, features, on_cluster)


@task(name="track", **_TASK)
def track_task(segments, features, previous, settings: Settings, choice) -> tuple[SegmentResult, RunDrift]:
    segments, drift = continuity.track(segments, features, previous, settings, choice)
    logger = get_run_logger()
    for line in drift.summary().splitlines():
        logger.info("%s", line)
    for flag in drift.flags:
        logger.warning("drift: %s", flag)
    return segments, drift


@task(name="write", retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, **_TASK)
def write_task(settings: Settings, start: RunStart, record, killed: dict | None) -> None:
    database = settings.output.database
    finish_run(database, start, record, killed, settings.output.keep_runs, **_publish_options(settings))
    for journal in killed_runs(killed):
        how = "failed" if journal.get("status") == "failed" else "was killed"
        get_run_logger().warning(
            "run %s %s during stage %s; recorded now",
            journal.get("run_id"),
            how,
            journal.get("failed_stage") or journal.get("stage"),
        )
    get_run_logger().info("run %d published to %s", start.run_id, database)


@task(name="report", retries=1, retry_delay_seconds=1, retry_condition_fn=_transient, **_TASK)
def report_task(data, out_dir: str) -> str:
    from reports import render_report

    fault_point("report")
    index = render_report(data, out_dir)
    get_run_logger().info("report: %s", index)
    return str(index)


@flow(
    name="segment-customers",
    description="Raw customer data to probabilistic segments in DuckDB and a report.",
)
@takes_run_parameters
def segment_customers(**given: Any) -> dict[str, Any]:
    """Segment customers: every parameter left as None comes from the TOML file at ``config_path``
    (or the built-in defaults, which segment the embedded Online Retail sample).

    The parameters are the fields of ``flows.parameters.RunParameters`` (keyword arguments, as
    Prefect passes them); each one's description and settings key are listed below.

    ``fresh`` chooses the number of segments and the covariance type afresh, instead of keeping
    the previous run's unless a fresh choice is clearly better (``model.switch_margin``): what a
    manual re-segmentation is for.

    ``trigger`` (how the run was started) is recorded in ``runs``; when not given it is ``schedule``
    for a run the Prefect scheduler created, ``manual`` for any other deployment run, else ``cli``.
    Runs on the same database never overlap: a run waits for the one holding the database
    (``output.lock_wait_minutes``), whatever started it.
    """
    logger = get_run_logger()
    parameters = RunParameters.given(given)
    settings = parameters.settings()
    trigger = parameters.trigger or infer_trigger()
    if settings.tracking.warm_start is not None:
        logger.warning(
            "tracking.warm_start is no longer used: every run refits the previous run's model and keeps it "
            "unless a fresh choice is better by model.switch_margin "
            "(use --fresh / fresh=true to choose afresh)"
        )
    with database_lock(
        settings.output.database,
        settings.output.lock_wait_minutes * 60,
        label=f"flow run {flow_run.get_name()!r} ({trigger})",
        on_wait=lambda holder: logger.info(
            "waiting for %s to finish with %s", holder, settings.output.database
        ),
    ) as journal:
        return _segment(settings, trigger, logger, journal, fresh=parameters.fresh)


def infer_trigger() -> str:
    """``schedule``/``manual`` for deployment runs (from the run's ``auto_scheduled`` flag), else ``cli``."""
    if not deployment.get_id():
        return "cli"
    from prefect.client.orchestration import get_client

    try:
        run_id = flow_run.get_id()
        if run_id is None:  # not in a deployment's run; the label is informational
            return "manual"
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(run_id))
    except Exception:  # the label is informational; never fail a run over it
        return "manual"
    return "schedule" if run.auto_scheduled else "manual"


class _StageClock:
    """Bookkeeping of a run's stages: wall time and the process's peak memory during each (for
    benchmarks and the logs; where the peak cannot be reset, the peak so far), the stage under
    way (for the failure record), and the run lock's journal kept at that stage (so that a killed
    run is recorded with it)."""

    def __init__(self, journal: RunJournal):
        self.journal = journal
        self.current = "start"
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.current = name
        self.journal.note(stage=name)
        reset_peak_rss()
        began = time.perf_counter()
        yield
        trim_heap()  # what the stage freed goes back to the system, not into the next stage
        self.seconds[name] = round(time.perf_counter() - began, 3)
        self.peak_mb[name] = round(peak_rss_mb(), 1)


def _segment(
    settings: Settings, trigger: str, logger, journal: RunJournal, fresh: bool = False
) -> dict[str, Any]:
    """The stages of one run, with the run lock held and ``journal`` kept up to date."""
    start = start_task(settings, trigger, journal)
    run_id = start.run_id
    logger.info("run %d started (trigger %s)", run_id, trigger)
    for killed in killed_runs(journal.previous):
        for folder in remove_left_behind(killed.get("scratch") or []):
            logger.info(
                "removed %s, the model matrix or ids run %s left behind", folder, killed.get("run_id")
            )
    clock = _StageClock(journal)
    loaded: LoadedInput | None = None
    outcome: ValidationOutcome | None = None
    report_dir = Path(settings.output.reports) / str(run_id)
    cluster = ExitStack()  # the dask cluster of compute.cluster, held from the start to the write
    features_: FeatureMatrix | None = None
    try:
        client = None
        if settings.compute.cluster is not None:
            with clock.stage("cluster"):
                client = cluster.enter_context(open_cluster(settings, logger))
        with clock.stage("load"):
            loaded = load_task(settings, client)
        with clock.stage("validate"):
            outcome = validate_task(loaded, settings, client)
            start.parameters.setdefault("input", {}).update(outcome.read_as)  # e.g. how dates were read
            # From here on a run holds each customer's values once: the feature matrix (issue 12).
            loaded = loaded.without_rows()
        on_cluster = None
        with clock.stage("features"):
            if stages.features_on_workers(outcome.valid, client):
                # features_on_workers says so
                assert client is not None and isinstance(outcome.valid, ValidCustomers)
                # The rows the workers validated, from which dask computes a lost partition
                # again, stay as long as the cluster: through the write, then removed.
                files = outcome.valid.keep_files()
                if files is not None:
                    cluster.callback(files)
                features_, on_cluster = cluster_features_task(outcome.valid, client, settings)
                client = None
            else:
                features_ = features_task(outcome.valid, settings)
            outcome = outcome.without_rows()
            if features_.scratch_folders:
                # Noted in the journal, so that the next run removes them if this one is killed.
                journal.note(scratch=features_.scratch_folders)
        if client is not None:
            with clock.stage("distribute"):
                # A worker's death, survived in a later stage, is said in the run's log.
                on_cluster = distribute_task(features_, client, settings, logger.warning)
                client = None
        with clock.stage("previous"):
            previous = previous_task(settings.output.database, features_)
        with clock.stage("select"):
            selection = select_task(features_, settings, run_id, previous, on_cluster)
        with clock.stage("choose"):
            choice = choose_task(selection, features_, previous, settings, fresh, run_id, on_cluster)
        with clock.stage("assign"):
            segments = assign_task(choice, features_, on_cluster)
        with clock.stage("track"):
            segments, drift = track_task(segments, features_, previous, settings, choice)
            previous = None  # its customers' keys are of no use past tracking
            # The run keeps what it records and reports of the comparison, not the per-customer
            # arrays it was made of (0.5 GiB at 10^7 customers in both runs; issue 12).
            tracking = continuity.tracking_record(drift)
            drift_report = drift.report_drift()
            drift_text = None if drift.previous is None else drift_markdown(drift)
            del drift
        with clock.stage("write"):
            record = stages.build_record(
                loaded=loaded,
                outcome=outcome,
                features=features_,
                choice=choice,
                segments=segments,
                tracking=tracking,
                report_path=str((report_dir / "index.html").resolve()),
                cluster=on_cluster,  # whose workers write the assignments
            )
            write_task(settings, start, record, journal.previous)
            journal.recorded = True
            on_cluster = None
            cluster.close()
        with clock.stage("report"):
            data = stages.report_data(
                run_id=run_id,
                settings=settings,
                loaded=loaded,
                outcome=outcome,
                features=features_,
                choice=choice,
                segments=segments,
                drift=drift_report,
            )
            report_index = str(Path(report_task(data, str(report_dir))).resolve())
    except Exception as exc:
        cluster.close()
        _record_failure(exc, settings, start, journal, clock.current, loaded, outcome, logger)
        raise
    finally:
        if features_ is not None:
            features_.release()  # the model matrix's file, if it has one

    summary = _run_summary(record, outcome, segments, choice, clock, settings, report_index, run_id)
    markdown = markdown_summary(summary)
    if drift_text is not None:
        markdown += "\n\n" + drift_text
    _ui(
        create_markdown_artifact,
        markdown,
        key=f"segmentation-run-{run_id}",
        description=f"Segmentation run {run_id}",
    )
    return summary


def _record_failure(
    exc: Exception,
    settings: Settings,
    start: RunStart,
    journal: RunJournal,
    stage: str,
    loaded: LoadedInput | None,
    outcome: ValidationOutcome | None,
    logger,
) -> None:
    """Store a failed run (or, when its results were published, the report's failure); when the
    store cannot take it now, leave it in the journal for the next run to record."""
    run_id = start.run_id
    rejects = getattr(getattr(exc, "outcome", None), "rejects", None)
    if rejects is None and outcome is not None:
        rejects = outcome.rejects
    rows_loaded = loaded.n_rows if loaded is not None else None
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    logger.error("run %d failed in stage %s: %s", run_id, stage, message)
    try:
        if journal.recorded:
            # The results are published and stand; only the report is missing.
            note_report_failure(settings.output.database, run_id, message, **_publish_options(settings))
        else:
            fail_run(
                settings.output.database,
                start,
                stage,
                message,
                rejects=rejects,
                rows_loaded=rows_loaded,
                killed=journal.previous,
                **_publish_options(settings),
            )
            journal.recorded = True
    except (StoreBusyError, OSError, duckdb.Error) as store_exc:
        # The results file is busy or the disk full: the failure stays in the run lock's
        # journal, and the next run records it with its error.
        journal.note(status="failed", failed_stage=stage, error=message, finished_at=utc_now().isoformat())
        journal.recorded = False  # a published run whose report failed: the next run notes it
        logger.error(
            "run %d could not record its failure now (%s); the next run records it",
            run_id,
            str(store_exc).strip().splitlines()[0] if str(store_exc).strip() else type(store_exc).__name__,
        )


def _run_summary(
    record: RunRecord,
    outcome: ValidationOutcome,
    segments: SegmentResult,
    choice: ModelChoice,
    clock: _StageClock,
    settings: Settings,
    report_index: str,
    run_id: int,
) -> dict[str, Any]:
    """What the flow returns (and ``segment run`` prints): the stored run in plain values."""
    tracking = record.tracking
    return {
        "run_id": run_id,
        "n_components": record.n_components,
        "covariance_type": record.covariance_type,
        "criterion": record.criterion,
        "criterion_value": getattr(record, record.criterion),
        "as_of": str(record.as_of) if record.as_of else None,
        "rows_loaded": record.rows_loaded,
        "rows_rejected": record.rows_rejected,
        "reject_reasons": outcome.reject_reasons,
        "customers": record.customers,
        "segment_sizes": [
            {
                "segment_id": int(s),
                "customers": int(n),
                "share": float(n) / max(record.customers, 1),
                "weight": float(w),
            }
            for s, n, w in zip(segments.segment_ids, segments.customer_counts, segments.weights, strict=True)
        ],
        "database": str(Path(settings.output.database).resolve()),
        "report": report_index,
        "stage_seconds": clock.seconds,
        "stage_peak_mb": clock.peak_mb,
        "previous_run_id": tracking.previous_run_id,
        "new_segments": tracking.new_segments,
        "retired_segments": tracking.retired_segments,
        "moved_share": tracking.moved_share,
        "held_customers": tracking.held_customers,
        "drift_flags": tracking.drift_flags,
        "decision": choice.decision,
        "decision_note": choice.note,
        "grid_note": choice.grid_note,
        "k_max_tried": choice.k_max_tried,
        "customers_with_gaps": record.customers_with_gaps,
    }


def reset_peak_rss() -> bool:
    """Start this process's peak resident memory (``VmHWM``) again from what it holds now, so
    that the next :func:`peak_rss_mb` is a stage's own peak (Linux: ``clear_refs`` 5); False
    where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux: ``VmHWM`` of /proc/self/status, this process's own high-water mark (``ru_maxrss`` is
    inherited from the parent across fork and exec, so a process started by a large one would
    report the parent's peak). Elsewhere ``ru_maxrss`` (macOS reports bytes)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
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
        *[f"- {reason}" for reason in summary.get("reject_reasons") or []],
        f"**Customers segmented:** {summary['customers']:,}"
        + (
            f" ({summary['customers_with_gaps']:,} with blank features, segmented on the features they have)"
            if summary.get("customers_with_gaps")
            else ""
        ),
        "",
        "| segment | customers | share of customers |",
        "|---:|---:|---:|",
    ]
    for s in summary["segment_sizes"]:
        lines.append(f"| {s['segment_id']} | {s['customers']:,} | {s['share']:.1%} |")
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
