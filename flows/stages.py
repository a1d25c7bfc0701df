"""The pipeline's stages as plain functions (the Prefect tasks in flows.pipeline are thin calls to these)."""

from __future__ import annotations

import logging
import math
import subprocess
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pandera.engines.pandas_engine import DateTime

from flows.choice import ModelChoice, PreviousStructure, choose_model
from flows.cluster_assignments import ClusterAssignments, assign_on_cluster
from flows.config import Settings
from flows.customer_rows import ValidCustomers
from flows.features import (
    RULE_LABELS,
    FeatureError,
    FeatureMatrix,
    default_as_of,
    feature_matrix,
    rfm_table,
)
from flows.lines import TransactionLines
from flows.load import LoadedInput
from flows.matrix_file import MatrixFile
from flows.segments import AssignmentRows, SegmentResult, assign_segments, feature_profiles, segment_table
from flows.store import RunRecord, feature_scaler_table
from flows.text_file import TextFile
from schemas import (
    RFMFeatures,
    Transactions,
    ValidationOutcome,
    customer_table_schema,
    validate_rows,
)
from schemas.customers import CustomerRows, validate_customer_chunks
from schemas.dates import DateEvidence, date_parsing
from schemas.transactions import line_amount_rejects
from schemas.validation import WHOLE_ROW, blank_text_as_missing, empty_rejects
from tracking import same_features

if TYPE_CHECKING:
    from distributed import Client

    from flows.continuity import TrackingRecord
    from gmm_cluster import ClusterData
    from gmm_engine import FullData, SelectionResult


#: Customers the report's figures of customers' values draw when the run does not hold them all
#: (the density curves' histograms and the scatter's points; sizes and profiles count everyone).
REPORT_SAMPLE = 200_000


class TooManyRejectsError(ValueError):
    """More rows failed validation than the configured share allows; the run stops."""

    def __init__(self, message: str, outcome: ValidationOutcome):
        super().__init__(message)
        self.outcome = outcome


def validate_input(
    loaded: LoadedInput, settings: Settings, client: Client | None = None
) -> ValidationOutcome:
    """Validate the loaded rows with the schema of their kind; stop when rejects exceed the allowed share.

    Rows the CSV reader already set aside (``loaded.rejects``) count as rejected rows too.
    Partitions the load left unread (``loaded.partition_select``) are validated on the workers
    of ``client`` (:mod:`flows.partition_validation`).

    Raises
    ------
    TooManyRejectsError
        When the share of rejected rows is above ``rules.max_reject_share``; carries the outcome so
        the rejects can still be stored.
    """
    read_as: dict[str, str] = {}
    if settings.input.kind == "transactions":
        outcome, read_as = _validate_lines(loaded, settings)
    elif loaded.partition_select is not None:
        from flows.partition_validation import validate_on_cluster

        if client is None:
            raise ValueError("partitions left unread are validated on a cluster: no client was given")
        outcome = validate_on_cluster(client, loaded, settings)
    else:
        # A chunk at a time: the Python objects Pandera works on exist for one chunk only, and
        # the rows go to DuckDB as they come (issue 12).
        features = settings.features
        may_be_blank = [c for c in features.columns if features.missing_rule(c) == "model"]
        rows = ValidCustomers(features.columns)
        try:
            rejects = validate_customer_chunks(
                (blank_text_as_missing(chunk, features.columns) for chunk in loaded.chunks(release=True)),
                rows,
                customer_table_schema(features.columns, features.transforms, may_be_blank, unique_ids=False),
                features.columns,
                features.max_missing_share,
                loaded.source,
                loaded.source_columns,
            )
        except BaseException:
            rows.close()
            raise
        outcome = ValidationOutcome(valid=rows, rejects=rejects, n_rows=loaded.n_read)
    if len(loaded.rejects):
        rejects = pd.concat([loaded.rejects, outcome.rejects], ignore_index=True)
        rejects = rejects.sort_values(["row_number", "column_name"], kind="stable", ignore_index=True)
        outcome = ValidationOutcome(valid=outcome.valid, rejects=rejects, n_rows=loaded.n_rows)
    # A partitioned input's rejects name their partition and their row in it.
    outcome = replace(outcome, rejects=loaded.rows_by_file(outcome.rejects), read_as=read_as)
    limit = settings.rules.max_reject_share
    if outcome.reject_share > limit:
        first = outcome.rejects.iloc[0]
        where = "the whole row" if first["column_name"] == WHOLE_ROW else f"column {first['column_name']!r}"
        of_file = "" if first["source"] == loaded.source else f" of {first['source']}"
        raise TooManyRejectsError(
            f"{loaded.source}: {outcome.n_rejected_rows} of {outcome.n_rows} rows "
            f"({outcome.reject_share:.1%}) fail validation, more than the allowed {limit:.1%} "
            f"(rules.max_reject_share); first: row {first['row_number']}{of_file}, {where}, "
            f"rule {first['rule']}, value {first['value']!r}{_reject_hint(outcome.rejects)}; "
            "all are in rejected_rows",
            outcome,
        )
    return outcome


def _validate_lines(loaded: LoadedInput, settings: Settings) -> tuple[ValidationOutcome, dict[str, str]]:
    """A transaction log validated a chunk at a time, its valid lines appended to DuckDB as they
    come (:class:`flows.lines.TransactionLines`): a run holds one chunk's Python objects and the
    input's remaining blocks, never the log as a frame (3.2 GiB at 10^7 lines; issue 12)."""
    schema = Transactions.to_schema()
    read_as: dict[str, str] = {}
    if not pd.api.types.is_datetime64_any_dtype(loaded.dtypes["timestamp"]):
        # Text dates: day and month first are told apart from the data (or input.date_format),
        # from every date of the column, read a block at a time before any line is validated.
        column = loaded.source_columns.get("timestamp", "timestamp")
        if settings.input.date_format:
            parsing = date_parsing(
                pd.Series([], dtype=object), column, loaded.source, settings.input.date_format
            )
        else:
            evidence = DateEvidence()
            for stamps in loaded.column_chunks("timestamp"):
                evidence = evidence + DateEvidence.of(stamps)
            parsing = evidence.parsing(column, loaded.source)
        if parsing.to_datetime_kwargs:
            schema = schema.update_column(
                "timestamp",
                # pandera's own dataclass decorator hides DateTime's fields from mypy.
                dtype=DateTime(to_datetime_kwargs=parsing.to_datetime_kwargs),  # type: ignore[call-arg]
            )
        read_as = parsing.record()
    lines = TransactionLines()
    rejects = []
    try:
        for chunk in loaded.chunks(release=True):
            chunk = blank_text_as_missing(chunk, ("quantity", "unit_price", "amount"))
            outcome = validate_rows(chunk, schema, loaded.source, loaded.source_columns)
            del chunk
            assert isinstance(outcome.valid, pd.DataFrame)  # validate_rows keeps the frame's rows as a frame
            valid, more = line_amount_rejects(outcome.valid, loaded.source, loaded.source_columns)
            rejects += [part for part in (outcome.rejects, more) if len(part)]
            lines.append(valid)
    except BaseException:
        lines.close()
        raise
    found = (
        pd.concat(rejects, ignore_index=True).sort_values(
            ["row_number", "column_name"], kind="stable", ignore_index=True
        )
        if rejects
        else empty_rejects()
    )
    return ValidationOutcome(valid=lines, rejects=found, n_rows=loaded.n_read), read_as


def _reject_hint(rejects: pd.DataFrame) -> str:
    """Advice for the reject patterns that have one likely cause (a separator, an encoding)."""
    rules = rejects["rule"].value_counts()
    top = str(rules.index[0]) if len(rules) else ""
    if top in ("csv_missing_columns", "csv_too_many_columns"):
        return (
            " (rows with another number of fields than the header: garbage lines, "
            "or a separator other than the header's)"
        )
    if top == "csv_invalid_encoding":
        return " (the file is not UTF-8: convert it, e.g. iconv -f latin1 -t utf-8)"
    return ""


def compute_features(
    valid: pd.DataFrame | CustomerRows | ValidCustomers | TransactionLines,
    settings: Settings,
    keep_original: bool = True,
) -> FeatureMatrix:
    """Per-customer features in original units plus the standardised model matrix.

    ``valid``: the valid rows (:attr:`ValidationOutcome.valid`): a transaction log's lines (as
    :class:`flows.lines.TransactionLines`, or a DataFrame), or a customer table's rows (as
    :class:`flows.customer_rows.ValidCustomers`, a DataFrame with ``customer_id`` and the feature
    columns, or :class:`CustomerRows`).
    ``keep_original=False``: the matrix holds no values in original units; a
    :class:`CustomerRows`' feature array is handed over, transformed in place, and a
    :class:`ValidCustomers`' features go to a file and the model matrix with them (unless some
    are blank: see :meth:`FeatureMatrix.in_file`) (:func:`flows.features.feature_matrix`)."""
    names = list(settings.features.columns)
    units = [settings.unit_of(n) for n in names]
    transforms = [settings.transform_of(n) for n in names]
    as_of, counts = settings.rules.as_of, None
    if settings.input.kind == "transactions":
        # A log's lines: in DuckDB (a run) or a frame.
        assert not isinstance(valid, (CustomerRows, ValidCustomers))
        as_of = as_of or default_as_of(valid)
        purchase = settings.rules.purchase
        assert purchase is not None  # Settings sets it for a transaction log
        table, counts = rfm_table(valid, as_of, settings.rules.cancellation_prefix, purchase)
        if table.empty:
            if isinstance(valid, TransactionLines):
                span = valid.time_range()
                assert span is not None  # default_as_of found a line
                first, last = span
            else:
                first, last = valid["timestamp"].min(), valid["timestamp"].max()
            raise FeatureError(
                f"no purchase falls before the as-of date {as_of} (the valid lines run from "
                f"{first:%Y-%m-%d} to {last:%Y-%m-%d}): choose a later --as-of (rules.as_of)"
            )
        valid = RFMFeatures.validate(table)  # one row per customer, as a customer table's
    assert not isinstance(valid, TransactionLines)  # by now a customer table's rows (or the RFM table)
    if isinstance(valid, ValidCustomers):
        rows = valid.read(in_file=not keep_original and not valid.has_blanks)
    elif isinstance(valid, CustomerRows):
        rows = valid
    else:
        rows = CustomerRows.from_frame(valid, names)
    try:
        return feature_matrix(
            rows.customer_ids,
            rows.features,
            names,
            units,
            transforms,
            settings.features.standardize,
            as_of=as_of,
            counts=counts,
            resolution=settings.features.resolution == "auto",
            keep_original=keep_original,
        )
    except BaseException:
        # Files read from ValidCustomers go now, not when the error (which a run's state may
        # keep) is dropped.
        for held in (rows.customer_ids, rows.features):
            if isinstance(held, (TextFile, MatrixFile)):
                held.remove()
        raise


def select_segments(
    features: FeatureMatrix,
    settings: Settings,
    progress: Callable[[int, int], None] | None = None,
    previous_k: int | None = None,
    data: FullData | None = None,
) -> SelectionResult:
    """Run gmm_engine.select_model over the configured grid; returns its SelectionResult.

    The engine sets aside a component holding fewer than d + 1 customers (d features), so k segments
    need at least k * (d + 1) customers. When the data support fewer segments than ``model.k_max``
    the grid is cut to what they support, with a warning; when they do not support ``model.k_min``
    the run stops with a message saying how many customers there are and how many are needed.

    The grid reaches at least one segment past ``previous_k`` (the previous run's number), so that
    keeping the previous structure is never a choice at the grid's edge; when the best candidate
    sits at the edge the engine extends the grid up to ``model.k_limit`` (default 2 x k_max).
    Every feature's resolution (``features.resolution``) floors the segments' variances.
    ``data``: where the candidates are scored and the chosen one refitted (the customers on a
    cluster's workers, :func:`distribute`); default all customers
    (:meth:`~flows.features.FeatureMatrix.full_data`: in memory, or read from the matrix's file a
    block at a time, the candidates then fitted on the sample the engine would have drawn).

    Raises
    ------
    ValueError
        Too few customers for ``model.k_min`` segments, or no candidate of the grid could be fitted.
    """
    from gmm_engine import NoAcceptableModelError, sample_rows, select_model

    m = settings.model
    n, d = features.X_model.shape
    per_segment = d + 1
    supported = n // per_segment
    if supported < m.k_min:
        raise ValueError(
            f"only {n:,} customer{'s' if n != 1 else ''} to segment: with {d} feature{'s' if d != 1 else ''} "
            f"a segment needs at least {per_segment} customers, so model.k_min = {m.k_min} needs "
            f"{m.k_min * per_segment:,}"
        )
    k_limit = min(settings.k_limit, supported)
    k_max = min(m.k_max, supported)
    if previous_k is not None and m.k_min < m.k_max and m.k_min <= previous_k <= settings.k_limit:
        k_max = min(max(k_max, previous_k + 1), k_limit)
    if supported < m.k_max:
        run_logger().warning(
            "only %s customers for %d features: trying at most %d segments instead of model.k_max = %d "
            "(each segment needs at least %d customers)",
            f"{n:,}",
            d,
            k_max,
            m.k_max,
            per_segment,
        )
    X_model = features.X_model
    if isinstance(X_model, MatrixFile):
        # Only the engine's sample is read into memory; every pass over all customers reads the
        # file a block at a time (or runs on the cluster's copy).
        rows = sample_rows(n, m.max_samples, m.seed)
        X_model = X_model[rows if rows is not None else slice(None)]
        if rows is not None:
            data = data if data is not None else features.full_data()
    try:
        return select_model(
            X_model,
            n_components=range(m.k_min, k_max + 1),
            covariance_types=tuple(m.covariance_types),
            criterion=m.criterion,
            n_init=m.n_init,
            random_state=m.seed,
            max_iter=m.max_iter,
            tol=m.tol,
            reg_covar=m.reg_covar,
            resolution=features.resolution,
            covariance_prior=covariance_prior(settings, features),
            max_samples=m.max_samples,
            k_limit=k_limit,
            progress=progress,
            # Blank features (customer tables, features.missing = "model") are missing at random.
            missing="marginalize" if features.has_missing else "error",
            data=data,
        )
    except NoAcceptableModelError as exc:
        # The engine lists every candidate's reason; the first one is enough for a one-line error.
        first = exc.table[0]
        raise ValueError(
            f"no model could be fitted to {n:,} customers x {d} features: every candidate of "
            f"k = {m.k_min}..{k_max} was degenerate or failed (first: k={first['n_components']} "
            f"{first['covariance_type']}: {first['reason']}); too few distinct customers for these "
            "settings: lower model.k_min/k_max or use fewer features"
        ) from None


def previous_k(previous, features: FeatureMatrix) -> int | None:
    """The previous run's number of segments when this run could keep its structure (same
    features and transforms), else None."""
    if previous is None or not same_features(
        features.names, features.transforms, previous.model.feature_names, previous.model.transforms
    ):
        return None
    return previous.model.n_segments


def covariance_prior(settings: Settings, features: FeatureMatrix) -> str | None:
    """The engine's ``covariance_prior`` for this run: ``model.covariance_prior``, where "auto"
    means the prior for discrete data (a feature with a spike) and none for continuous data."""
    setting = settings.model.covariance_prior
    if setting == "auto":
        assert features.resolution is not None  # FeatureMatrix fills it in
        return "data" if np.any(features.resolution > 0) else None
    return None if setting == "none" else "data"


def choose(
    selection,
    features: FeatureMatrix,
    previous,
    settings: Settings,
    fresh: bool = False,
    data: FullData | None = None,
) -> ModelChoice:
    """Keep the previous run's structure or switch to the best fresh candidate (:mod:`flows.choice`);
    ``data`` as for :func:`select_segments`."""
    m = settings.model
    structure = None if previous is None else PreviousStructure(run_id=previous.run_id, model=previous.model)
    return choose_model(
        selection,
        features,
        structure,
        switch_margin=m.switch_margin,
        fresh=fresh,
        tol=m.tol,
        reg_covar=m.reg_covar,
        max_iter=m.max_iter,
        allowed=(m.k_min, settings.k_limit, tuple(m.covariance_types)),
        data=data,
    )


def distribute(
    features: FeatureMatrix, client: Client, settings: Settings, on_retry: Callable[[str], None] | None = None
) -> ClusterData:
    """Send the customers' model matrix to the cluster's workers, in partitions of at most
    ``compute.partition_rows`` customers (at least two per worker), for the passes over all
    customers of :func:`select_segments` and :func:`choose`. A partition lost with its worker is
    sent again from ``features.X_model`` and the pass repeated, twice per pass at most, and
    ``on_retry`` is told.

    Raises
    ------
    ValueError
        Some customers have blank features: EM on partitions takes complete rows only.
    """
    from flows.cluster import partition_rows
    from gmm_cluster import ClusterData

    if features.has_missing:
        assert isinstance(features.X_model, np.ndarray)  # blanks stay in memory (FeatureMatrix.in_file)
        gaps = int(np.isnan(features.X_model).any(axis=1).sum())
        raise ValueError(
            f"compute.cluster: {gaps:,} customers have blank features, and the cluster takes complete rows "
            "only; reject them (features.missing = 'reject') or run without a cluster"
        )
    rows = partition_rows(client, features.n_customers, settings.compute.partition_rows)
    return ClusterData.scatter(client, features.X_model, rows, on_retry=on_retry)


def features_on_workers(valid, client: Client | None) -> bool:
    """Whether the cluster's workers compute the features (:mod:`flows.partition_features`):
    they validated the rows (:func:`workers_read_input`), and there are two customers or more
    and no blank feature (the run's process then says why not, as without the workers)."""
    return (
        client is not None
        and isinstance(valid, ValidCustomers)
        and bool(valid.files)
        and len(valid) >= 2
        and not valid.has_blanks
    )


def workers_read_input(client: Client, settings: Settings, warn: Callable[[str], None]) -> bool:
    """Whether the cluster's workers read and validate the input (:mod:`flows.partition_validation`):
    a customer table in Parquet partitions, read without a query, that every worker sees along
    with the staging folder beside the results database (``warn`` is told when one does not)."""
    from flows import partitions
    from flows.partition_validation import staging_folder, workers_read_partitions

    given = settings.input
    if given.kind != "customers" or given.query or not partitions.is_partitioned(given.path):
        return False
    files = partitions.partition_files(given.path)
    return workers_read_partitions(client, files, staging_folder(settings.output.database), warn)


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run (so the line shows in the UI), else this module's."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run context (plain function calls in tests and scripts)
        return logging.getLogger(__name__)


def fit_segments(model, features: FeatureMatrix, cluster: ClusterData | None = None) -> SegmentResult:
    """Apply the chosen model to every customer (segments, log-density, expanded covariances;
    see :func:`flows.segments.assign_segments`), on the workers of ``cluster`` when given
    (:func:`flows.cluster_assignments.assign_on_cluster`)."""
    if cluster is not None:
        return assign_on_cluster(model, features, cluster)
    return assign_segments(model, features)


def selected_row(table: list[dict[str, Any]]) -> dict[str, Any]:
    """The selection-table row marked ``selected``."""
    return next(row for row in table if row.get("selected"))


def build_record(
    *,
    loaded: LoadedInput,
    outcome: ValidationOutcome,
    features: FeatureMatrix,
    choice: ModelChoice,
    segments: SegmentResult,
    tracking: TrackingRecord | None = None,
    report_path: str | None,
    cluster: ClusterData | None = None,
) -> RunRecord:
    """Collect a successful run's rows for :func:`flows.store.finish_run` (``tracking``: what
    changed since the previous run, :func:`flows.continuity.tracking_record`; ``cluster``: the
    customers on a cluster's workers, which then compute and write the assignments)."""
    chosen = choice.chosen
    missing = features.missing_counts if features.has_missing else None
    assignments: AssignmentRows | ClusterAssignments
    if cluster is not None:
        assert missing is None  # distribute() refuses blank features
        assignments = ClusterAssignments(cluster, segments, features.customer_ids, run_logger().warning)
    else:
        # Built and validated chunk by chunk as the store writes them.
        assignments = AssignmentRows(segments, features.customer_ids, missing)
    return RunRecord(
        as_of=features.as_of,
        rows_loaded=outcome.n_rows,
        rows_rejected=outcome.n_rejected_rows,
        rows_excluded=dict(features.counts),
        customers=features.n_customers,
        features=list(features.names),
        n_components=int(chosen["n_components"]),
        covariance_type=str(chosen["covariance_type"]),
        criterion=choice.criterion,
        bic=float(chosen["bic"]),
        aic=float(chosen["aic"]),
        icl=float(chosen["icl"]),
        log_likelihood=float(chosen["log_likelihood"]),
        report_path=report_path,
        candidates=choice.table,
        decision=choice.decision,
        decision_note=choice.note,
        fresh_value=choice.fresh_value,
        previous_value=choice.previous_value,
        k_max_tried=choice.k_max_tried,
        grid_note=choice.grid_note,
        customers_with_gaps=0 if missing is None else int(np.count_nonzero(missing)),
        segments=segment_table(segments),
        segment_features=feature_profiles(segments, features),
        feature_scalers=feature_scaler_table(
            features.names,
            features.units,
            features.transforms,
            features.scaler.mean,
            features.scaler.scale,
            features.resolution,
            features.spike_value,
            features.spike_share,
        ),
        assignments=assignments,
        rejects=outcome.rejects,
        tracking=tracking,
    )


def report_data(
    *,
    run_id: int,
    settings: Settings,
    loaded: LoadedInput,
    outcome: ValidationOutcome,
    features: FeatureMatrix,
    choice: ModelChoice,
    segments: SegmentResult,
    drift: dict[str, Any] | None = None,
):
    """The reports.ReportData of a run, from the same in-memory objects that were stored
    (``drift``: the report's section on what changed, :meth:`tracking.RunDrift.report_drift`)."""
    from reports import ReportData

    as_of = f" (as of {features.as_of})" if features.as_of else ""
    sizes = ", ".join(
        f"{sid}: {n:,}"
        for sid, n in zip(segments.segment_ids.tolist(), segments.customer_counts.tolist(), strict=True)
    )
    summary = {
        "Run": str(run_id),
        "Input": loaded.source,
        "Input kind": settings.input.kind,
        "As of": str(features.as_of) if features.as_of else "-",
        "Rows loaded": f"{outcome.n_rows:,}",
        "Rows rejected": f"{outcome.n_rejected_rows:,}",
        "Customers segmented": f"{features.n_customers:,}",
        "Chosen model": f"{segments.n_segments} segments, {segments.covariance_type} covariance "
        f"({choice.criterion.upper()})",
        "How it was chosen": choice.note,
        "Segment sizes": sizes,
        "Seed": str(settings.model.seed),
    }
    reasons = outcome.reject_reasons
    if reasons:
        summary["Why rows were rejected"] = "; ".join(reasons)
    if choice.grid_note:
        summary["Model grid"] = choice.grid_note
    X_model, sample = report_sample(features, settings.model.seed)
    spikes = discrete_features_note(features)
    if spikes:
        summary["Discrete features"] = spikes
    gaps = missing_features_note(features)
    if gaps:
        summary["Blank features"] = gaps
    for rule, count in features.counts.items():
        label = RULE_LABELS.get(rule, rule.replace("_", " "))
        summary[label[0].upper() + label[1:]] = f"{count:,}"
    return ReportData(
        run_id=str(run_id),
        title=f"Customer segments, run {run_id}{as_of}",
        feature_names=list(features.names),
        feature_units=list(features.units),
        feature_transforms=list(features.transforms),
        scaler_mean=features.scaler.mean,
        scaler_scale=features.scaler.scale,
        value_range=features.value_range,
        X_model=X_model,
        sample_rows=sample,
        covariance_type=segments.covariance_type,
        weights=segments.weights,
        means=segments.means,
        covariances=segments.covariances,
        segment_ids=[int(s) for s in segments.segment_ids],
        labels=segments.labels,
        max_probability=segments.probability,
        totals=segments.totals,
        lower_bounds=list(segments.lower_bounds),
        selection=[clean_row(r) for r in choice.table],
        criterion=choice.criterion,
        summary=summary,
        choice_note=" ".join(
            part for part in (choice.note, choice.grid_note and f"Grid: {choice.grid_note}.") if part
        ),
        drift=drift,
    )


def report_sample(features: FeatureMatrix, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The model matrix the report draws: all of it when held in memory, else (in a file) a
    seeded sample of at most :data:`REPORT_SAMPLE` customers and their positions."""
    X_model = features.X_model
    if not isinstance(X_model, MatrixFile):
        return X_model, None
    n = features.n_customers
    if n <= REPORT_SAMPLE:
        return X_model[:], None
    rows = np.sort(np.random.default_rng(seed).choice(n, size=REPORT_SAMPLE, replace=False))
    return X_model[rows], rows


def missing_features_note(features: FeatureMatrix) -> str:
    """How many customers were segmented with blank features, and which (``""`` when none)."""
    if not features.has_missing:
        return ""
    missing = features.missing_counts
    with_gaps = int(np.count_nonzero(missing))
    assert isinstance(features.X_model, np.ndarray)  # blanks stay in memory (FeatureMatrix.in_file)
    blank = np.isnan(features.X_model).sum(axis=0)
    per_feature = ", ".join(f"{name} {int(n):,}" for name, n in zip(features.names, blank, strict=True) if n)
    return (
        f"{with_gaps:,} of {features.n_customers:,} customers ({with_gaps / features.n_customers:.1%}) were "
        f"segmented on the features they have (blank: {per_feature}); assignments.missing_features "
        f"says how many each customer lacks"
    )


def discrete_features_note(features: FeatureMatrix) -> str:
    """The features with a spike and their resolution, for the report (``""`` when none has one)."""
    resolution, spike_value, spike_share = features.resolution, features.spike_value, features.spike_share
    # FeatureMatrix fills them in.
    assert resolution is not None and spike_value is not None and spike_share is not None
    parts = []
    for j, name in enumerate(features.names):
        if resolution[j] > 0:
            unit = f" ({features.units[j]})" if features.units[j] else ""
            parts.append(
                f"{name}: {spike_share[j]:.1%} of customers "
                f"at exactly {spike_value[j]:g}{unit}, "
                f"next value {resolution[j]:.3g} standard deviations away; no segment is narrower "
                f"along it than that spacing allows (variance spacing²/12)"
            )
    return "; ".join(parts)


def clean_row(row: dict[str, Any]) -> dict[str, Any]:
    """A selection-table row with plain Python values (numpy scalars unwrapped, NaN as None)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[key] = value
    return out


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout (``0.1.0+g1a2b3c4``)."""
    try:
        version = metadata.version("segmentation")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+g{sha}" if sha else version
