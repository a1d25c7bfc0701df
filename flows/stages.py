"""The pipeline's stages as plain functions (the Prefect tasks in flows.pipeline are thin calls to these)."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flows.config import Settings
from flows.features import RULE_LABELS, FeatureMatrix, build_feature_matrix, default_as_of, rfm_table
from flows.load import LoadedInput
from flows.segments import SegmentResult, assignment_table, assign_segments, feature_profiles, segment_table
from flows.store import RunRecord, feature_scaler_table
from schemas import Assignments, RFMFeatures, Transactions, ValidationOutcome, customer_table_schema, validate_rows

STAGES = ("load", "validate", "features", "select", "fit", "write", "report")


class TooManyRejectsError(ValueError):
    """More rows failed validation than the configured share allows; the run stops."""

    def __init__(self, message: str, outcome: ValidationOutcome):
        super().__init__(message)
        self.outcome = outcome


def validate_input(loaded: LoadedInput, settings: Settings) -> ValidationOutcome:
    """Validate the loaded rows with the schema of their kind; stop when rejects exceed the allowed share.

    Raises
    ------
    TooManyRejectsError
        When the share of rejected rows is above ``rules.max_reject_share``; carries the outcome so
        the rejects can still be stored.
    """
    if settings.input.kind == "transactions":
        schema = Transactions.to_schema()
    else:
        schema = customer_table_schema(settings.features.columns, settings.features.transforms)
    outcome = validate_rows(loaded.frame, schema, loaded.source, loaded.source_columns)
    limit = settings.rules.max_reject_share
    if outcome.reject_share > limit:
        first = outcome.rejects.iloc[0]
        raise TooManyRejectsError(
            f"{loaded.source}: {outcome.n_rejected_rows} of {outcome.n_rows} rows "
            f"({outcome.reject_share:.1%}) fail validation, more than the allowed {limit:.1%} "
            f"(rules.max_reject_share); first: row {first['row_number']}, column {first['column_name']!r}, "
            f"rule {first['rule']}, value {first['value']!r}; all are in rejected_rows",
            outcome,
        )
    return outcome


def compute_features(valid: pd.DataFrame, settings: Settings) -> FeatureMatrix:
    """Per-customer features in original units plus the standardised model matrix."""
    names = list(settings.features.columns)
    units = [settings.unit_of(n) for n in names]
    transforms = [settings.transform_of(n) for n in names]
    if settings.input.kind == "transactions":
        as_of = settings.rules.as_of or default_as_of(valid)
        table, counts = rfm_table(valid, as_of, settings.rules.cancellation_prefix)
        table = RFMFeatures.validate(table)
        return build_feature_matrix(
            table, names, units, transforms, settings.features.standardize, as_of, counts
        )
    return build_feature_matrix(
        valid.reset_index(drop=True), names, units, transforms, settings.features.standardize,
        as_of=settings.rules.as_of,
    )


def select_segments(
    X_model: np.ndarray, settings: Settings, progress: Callable[[int, int], None] | None = None
):
    """Run gmm_engine.select_model over the configured grid; returns its SelectionResult."""
    from gmm_engine import select_model

    m = settings.model
    k_max = min(m.k_max, X_model.shape[0])
    if k_max < m.k_min:
        raise ValueError(
            f"only {X_model.shape[0]} customers: too few for k_min = {m.k_min} segments (model.k_min)"
        )
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
        max_samples=m.max_samples,
        progress=progress,
    )


def fit_segments(model, features: FeatureMatrix) -> SegmentResult:
    """Apply the chosen model to every customer (memberships, log-density, expanded covariances)."""
    return assign_segments(model, features.X_model)


def selected_row(table: list[dict[str, Any]]) -> dict[str, Any]:
    """The selection-table row marked ``selected``."""
    return next(row for row in table if row.get("selected"))


def build_record(
    *,
    loaded: LoadedInput,
    outcome: ValidationOutcome,
    features: FeatureMatrix,
    selection,
    segments: SegmentResult,
    report_path: str | None,
) -> RunRecord:
    """Collect a successful run's rows for :func:`flows.store.finish_run`."""
    chosen = selected_row(selection.table)
    assignments = assignment_table(segments, features.customer_ids)
    Assignments.validate(assignments)
    return RunRecord(
        as_of=features.as_of,
        rows_loaded=outcome.n_rows,
        rows_rejected=outcome.n_rejected_rows,
        rows_excluded=dict(features.counts),
        customers=features.n_customers,
        features=list(features.names),
        n_components=int(chosen["n_components"]),
        covariance_type=str(chosen["covariance_type"]),
        criterion=selection.criterion,
        bic=float(chosen["bic"]),
        aic=float(chosen["aic"]),
        icl=float(chosen["icl"]),
        log_likelihood=float(chosen["log_likelihood"]),
        report_path=report_path,
        candidates=selection.table,
        segments=segment_table(segments),
        segment_features=feature_profiles(segments, features),
        feature_scalers=feature_scaler_table(
            features.names, features.units, features.transforms, features.scaler.mean, features.scaler.scale
        ),
        assignments=assignments,
        rejects=outcome.rejects,
    )


def report_data(
    *,
    run_id: int,
    settings: Settings,
    loaded: LoadedInput,
    outcome: ValidationOutcome,
    features: FeatureMatrix,
    selection,
    segments: SegmentResult,
):
    """The reports.ReportData of a run, from the same in-memory objects that were stored."""
    from reports import ReportData

    as_of = f" (as of {features.as_of})" if features.as_of else ""
    sizes = ", ".join(
        f"{sid}: {n:,}" for sid, n in zip(segments.segment_ids.tolist(), segments.customer_counts.tolist())
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
        f"({selection.criterion.upper()})",
        "Segment sizes": sizes,
        "Seed": str(settings.model.seed),
    }
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
        X_original=features.X_original,
        X_model=features.X_model,
        covariance_type=segments.covariance_type,
        weights=segments.weights,
        means=segments.means,
        covariances=segments.covariances,
        segment_ids=[int(s) for s in segments.segment_ids],
        labels=segments.labels,
        max_probability=segments.max_probability,
        lower_bounds=list(segments.lower_bounds),
        selection=[clean_row(r) for r in selection.table],
        criterion=selection.criterion,
        summary=summary,
    )


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
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+g{sha}" if sha else version
