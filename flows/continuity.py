"""Segments that keep their ids from run to run: the previous run read back, this run re-labelled.

The pure matching and drift logic is :mod:`flows.tracking`; this module connects it to the store
(the previous successful run, read-only) and to this run's results, and optionally warm-starts EM
from the previous model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from flows.config import Settings
from flows.features import FeatureMatrix
from flows.segments import SegmentResult
from flows.tracking import (
    RunDrift,
    TrackedModel,
    TransitionThresholds,
    common_model,
    compare_runs,
    same_features,
    warm_start_init,
)
from gmm_engine import VARIANCE_FLOOR, ConvergenceWarning, GaussianMixture, degeneracy_reason


@dataclass(frozen=True, eq=False)
class PreviousRun:
    """The latest successful run as stored: its model with ids, and its customers' segments."""

    run_id: int
    model: TrackedModel
    customer_ids: np.ndarray
    segment_ids: np.ndarray
    max_id_used: int


def load_previous(database: str | Path) -> PreviousRun | None:
    """Read the latest successful run from the published results (read-only); None if there is none."""
    path = Path(database)
    if not path.exists():
        return None
    with duckdb.connect(str(path), read_only=True) as con:
        latest = con.execute("SELECT run_id, covariance_type FROM latest_run").fetchall()
        if not latest:
            return None
        run_id, covariance_type = int(latest[0][0]), str(latest[0][1])
        seg = con.execute(
            "SELECT segment_id, weight, model_mean, model_covariance FROM segments WHERE run_id = ? "
            "ORDER BY segment_id", [run_id]
        ).df()
        scalers = con.execute(
            "SELECT feature, unit, transform, scaler_mean, scaler_scale FROM feature_scalers WHERE run_id = ? "
            "ORDER BY feature_index", [run_id]
        ).df()
        assigned = con.execute(
            "SELECT customer_id, segment_id FROM assignments WHERE run_id = ?", [run_id]
        ).df()
        max_id = int(con.execute("SELECT coalesce(max(segment_id), 0) FROM segments").fetchall()[0][0])
    d = len(scalers)
    model = common_model(
        seg["weight"].to_numpy(np.float64),
        np.stack(seg["model_mean"].to_numpy()).astype(np.float64).reshape(-1, d),
        np.stack(seg["model_covariance"].to_numpy()).astype(np.float64).reshape(-1, d, d),
        scalers["scaler_mean"].to_numpy(np.float64),
        scalers["scaler_scale"].to_numpy(np.float64),
        feature_names=scalers["feature"].tolist(),
        transforms=scalers["transform"].tolist(),
        covariance_type=covariance_type,
        feature_units=scalers["unit"].fillna("").tolist(),
        segment_ids=seg["segment_id"].to_numpy(np.int64),
        run_id=run_id,
    )
    return PreviousRun(
        run_id=run_id,
        model=model,
        customer_ids=assigned["customer_id"].astype(str).to_numpy(),
        segment_ids=assigned["segment_id"].to_numpy(np.int64),
        max_id_used=max_id,
    )


def current_model(segments: SegmentResult, features: FeatureMatrix) -> TrackedModel:
    """This run's model in the common space (ids are placeholders until matched)."""
    return common_model(
        segments.weights, segments.means, segments.covariances, features.scaler.mean, features.scaler.scale,
        feature_names=features.names, transforms=features.transforms,
        covariance_type=segments.covariance_type, feature_units=features.units,
    )


def relabel(segments: SegmentResult, ids: np.ndarray) -> SegmentResult:
    """Give the components their ids and put them in ascending id order (so every per-segment
    array, and each customer's list of probabilities, follows the ids)."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    return replace(
        segments,
        segment_ids=ids[order],
        labels=position[segments.labels],
        probabilities=segments.probabilities[:, order],
        weights=segments.weights[order],
        means=segments.means[order],
        covariances=segments.covariances[order],
    )


def track(
    segments: SegmentResult, features: FeatureMatrix, previous: PreviousRun | None, settings: Settings
) -> tuple[SegmentResult, RunDrift]:
    """Match this run's segments to the previous run's, and return them re-labelled with the drift."""
    t = settings.tracking
    drift = compare_runs(
        None if previous is None else previous.model,
        current_model(segments, features),
        max_id_used=0 if previous is None else previous.max_id_used,
        current_customers=np.asarray(features.customer_ids).astype(str),
        current_components=segments.labels,
        previous_customers=None if previous is None else previous.customer_ids,
        previous_segments=None if previous is None else previous.segment_ids,
        max_distance=t.max_distance,
        min_jaccard=t.min_jaccard,
        thresholds=TransitionThresholds(tau_match=t.tau_match, tau_split=t.tau_split),
        moved_threshold=t.moved_threshold,
    )
    return relabel(segments, drift.match.segment_ids), drift


def warm_start(selection, features: FeatureMatrix, previous: PreviousRun | None, settings: Settings) -> dict[str, Any] | None:
    """Fit the previous run's model again from its own parameters and keep it if it wins.

    EM starts from the previous model (mapped to this run's scaler) with the previous k and
    covariance type. If that fit is not degenerate and scores better on the run's criterion than
    the model chosen from scratch, it replaces the choice in ``selection`` (its table row is
    updated and marked selected). Returns what happened, or None when warm start is off or not
    possible (first run, or the features or transforms changed).
    """
    if not settings.tracking.warm_start or previous is None:
        return None
    if not same_features(features.names, features.transforms, previous.model.feature_names, previous.model.transforms):
        return {"used": False, "reason": "the feature set or a transform changed since the previous run"}
    m = settings.model
    X = features.X_model
    k, ctype = previous.model.n_segments, previous.model.covariance_type
    init = warm_start_init(previous.model, features.scaler.mean, features.scaler.scale, ctype,
                           feature_names=features.names, transforms=features.transforms)
    chosen = next(row for row in selection.table if row["selected"])
    info: dict[str, Any] = {
        "from_run": previous.run_id, "n_components": k, "covariance_type": ctype,
        "cold_choice": {"n_components": chosen["n_components"], "covariance_type": chosen["covariance_type"],
                        selection.criterion: chosen[selection.criterion]},
    }
    row = next((r for r in selection.table if r["n_components"] == k and r["covariance_type"] == ctype), None)
    if row is None:
        return {**info, "used": False, "reason": f"k={k} {ctype} is not in this run's model grid"}
    gm = GaussianMixture(k, covariance_type=ctype, tol=m.tol, reg_covar=m.reg_covar, max_iter=m.max_iter, **init)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm.fit(X)
    except ValueError as exc:
        return {**info, "used": False, "reason": f"warm-started fit failed: {exc}"}
    std = X.std(axis=0)
    # The rule select_model applied to the cold candidates (its defaults: floor, d + 1 customers).
    reason = degeneracy_reason(gm, np.where(std > 0, std, 1.0), float(X.shape[0]), VARIANCE_FLOOR, float(X.shape[1] + 1))
    value = float(getattr(gm, selection.criterion)(X))
    info[selection.criterion] = value
    if reason:
        return {**info, "used": False, "reason": f"warm-started fit degenerate: {reason}"}
    if not value < chosen[selection.criterion]:
        return {**info, "used": False, "reason": f"{selection.criterion.upper()} not better than the cold start"}
    # The warm fit wins: it becomes the choice, in the table too, so every record agrees.
    ll = gm.score_samples(X)
    row.update(
        log_likelihood=float(ll.sum()), mean_log_likelihood=float(ll.mean()), bic=float(gm.bic(X)),
        aic=float(gm.aic(X)), icl=float(gm.icl(X)), converged=bool(gm.converged_), n_iter=int(gm.n_iter_),
        status="ok", reason=f"warm start from run {previous.run_id}",
    )
    chosen["selected"] = False
    row["selected"] = True
    selection.best = gm
    selection.models[(k, ctype)] = gm
    changed = (chosen["n_components"], chosen["covariance_type"]) != (k, ctype)
    return {**info, "used": True, "changed_choice": changed}


@dataclass
class TrackingRecord:
    """What a run stores about its continuity with the previous run."""

    previous_run_id: int | None
    match_method: str
    new_segments: list[int]
    retired_segments: list[int]
    moved_share: float | None
    drift_flags: list[str]
    what_changed: str
    warm_start: dict[str, Any] | None
    migrations: pd.DataFrame
    transitions: pd.DataFrame
    shifts: pd.DataFrame


def tracking_record(drift: RunDrift, warm: dict[str, Any] | None) -> TrackingRecord:
    """The rows and ``runs`` columns a run stores about its drift."""
    previous_id = None if drift.previous is None else int(drift.previous.run_id)
    transitions = pd.DataFrame(
        [
            {"kind": t.kind, "from_segments": [int(v) for v in t.from_ids],
             "to_segments": [int(v) for v in t.to_ids], "share": float(t.share)}
            for t in drift.transitions
        ],
        columns=["kind", "from_segments", "to_segments", "share"],
    )
    moved = drift.moved_share
    return TrackingRecord(
        previous_run_id=previous_id,
        match_method=drift.match.method,
        new_segments=[int(v) for v in drift.match.new_ids],
        retired_segments=[int(v) for v in drift.match.retired_ids],
        moved_share=None if moved is None or not np.isfinite(moved) else float(moved),
        drift_flags=list(drift.flags),
        what_changed=drift.summary(),
        warm_start=warm,
        migrations=drift.migration.astype({"from_segment": "int64", "to_segment": "int64", "customers": "int64"}),
        transitions=transitions,
        shifts=drift.shifts,
    )
