"""Segments that keep their ids from run to run: the previous run read back, this run re-labelled.

The pure matching and drift logic is the :mod:`tracking` package; this module connects it to the store
(the previous successful run, read-only) and to this run's results. Whether the previous run's
model structure is kept is :mod:`flows.choice`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from flows.choice import ModelChoice
from flows.config import Settings
from flows.customer_keys import customer_keys, key_array
from flows.features import FeatureMatrix
from flows.segments import SegmentResult
from flows.store import Notify, read_latest_run
from tracking import (
    RunDrift,
    TrackedModel,
    TransitionThresholds,
    align_keys,
    as_text,
    common_model,
    compare_runs,
)


@dataclass(frozen=True, eq=False)
class PreviousRun:
    """The latest successful run as stored: its model with ids, and its customers' segments."""

    run_id: int
    model: TrackedModel
    #: (n, 2) uint64 keys of its customers (:mod:`flows.customer_keys`), not their ids: 16 bytes
    #: a customer instead of a Python string (about 0.6 GiB less at 10^7 customers). None once
    #: they are joined with this run's customers (:func:`aligned_with`).
    customer_keys: np.ndarray | None
    segment_ids: np.ndarray
    max_id_used: int
    #: ``(ip, ic)``: positions of the customers in both runs, in the previous run's and this one's
    #: customers (:func:`tracking.align_keys`); None until :func:`aligned_with` joins them.
    alignment: tuple[np.ndarray, np.ndarray] | None = None

    def aligned_with(self, features: FeatureMatrix) -> PreviousRun:
        """This run joined with the current run's customers: the alignment instead of the keys,
        so that the keys (0.15 GiB at 10^7 customers) and the join's working set are gone before
        the model is even chosen, rather than held until tracking (issue 12)."""
        if self.alignment is not None:
            return self
        assert self.customer_keys is not None  # keys are dropped only once aligned
        alignment = align_keys(self.customer_keys, customer_keys(features.customer_ids))
        return replace(self, customer_keys=None, alignment=alignment)


def load_previous(database: str | Path, notify: Notify | None = None) -> PreviousRun | None:
    """The latest successful run (read from the store, read-only) in the common space; None if
    there is none (``notify``: told when its assignments cannot be read)."""
    stored = read_latest_run(database, notify)
    if stored is None:
        return None
    seg, scalers, assigned = stored.segments, stored.scalers, stored.assignments
    d = len(scalers)
    model = common_model(
        seg["weight"].to_numpy(np.float64),
        np.stack(list(seg["model_mean"])).astype(np.float64).reshape(-1, d),
        np.stack(list(seg["model_covariance"])).astype(np.float64).reshape(-1, d, d),
        scalers["scaler_mean"].to_numpy(np.float64),
        scalers["scaler_scale"].to_numpy(np.float64),
        feature_names=scalers["feature"].tolist(),
        transforms=scalers["transform"].tolist(),
        covariance_type=stored.covariance_type,
        feature_units=scalers["unit"].fillna("").tolist(),
        segment_ids=seg["segment_id"].to_numpy(np.int64),
        run_id=stored.run_id,
    )
    return PreviousRun(
        run_id=stored.run_id,
        model=model,
        customer_keys=key_array(assigned),
        segment_ids=assigned["segment_id"].to_numpy(np.int64),
        max_id_used=stored.max_segment_id,
    )


def current_model(segments: SegmentResult, features: FeatureMatrix) -> TrackedModel:
    """This run's model in the common space (ids are placeholders until matched)."""
    return common_model(
        segments.weights,
        segments.means,
        segments.covariances,
        features.scaler.mean,
        features.scaler.scale,
        feature_names=features.names,
        transforms=features.transforms,
        covariance_type=segments.covariance_type,
        feature_units=features.units,
    )


def relabel(segments: SegmentResult, ids: np.ndarray) -> SegmentResult:
    """Give the components their ids and put them in ascending id order (so every per-segment
    array, and each customer's list of probabilities, follows the ids)."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    return replace(segments.reordered(order), segment_ids=ids[order])


def track(
    segments: SegmentResult,
    features: FeatureMatrix,
    previous: PreviousRun | None,
    settings: Settings,
    choice: ModelChoice | None = None,
) -> tuple[SegmentResult, RunDrift]:
    """Match this run's segments to the previous run's, and return them re-labelled with the drift.

    Customers in both runs keep their previous segment unless the model favours another by more
    than ``tracking.hold_odds`` (:func:`tracking.hold_segments`); ``segments.held`` marks them.
    A model chosen at the edge of a grid that could not be extended further (``choice.at_limit``)
    adds a drift flag: more segments might fit the data better than any the run could try.
    """
    t = settings.tracking
    alignment = None
    if previous is not None:
        alignment = previous.aligned_with(features).alignment
    drift = compare_runs(
        None if previous is None else previous.model,
        current_model(segments, features),
        max_id_used=0 if previous is None else previous.max_id_used,
        current_customers=as_text(features.customer_ids),
        current_components=segments.labels,
        previous_segments=None if previous is None else previous.segment_ids,
        alignment=alignment,
        max_distance=t.max_distance,
        min_jaccard=t.min_jaccard,
        thresholds=TransitionThresholds(tau_match=t.tau_match, tau_split=t.tau_split),
        moved_threshold=t.moved_threshold,
        probabilities=segments.memberships.rows,
        hold_odds=t.hold_odds,
    )
    if drift.held is not None:
        labels = np.asarray(drift.customer_components, dtype=np.int64)
        # Each customer's probability is that of the segment given (computed when read).
        segments = replace(segments, labels=labels, held=drift.held)
    if choice is not None and choice.at_limit:
        flag = (
            f"best model at the edge of the grid even at its limit, k = {choice.k_max_tried} (model.k_limit)"
        )
        drift = replace(drift, flags=[*drift.flags, flag])
    return relabel(segments, drift.match.segment_ids), drift


@dataclass
class TrackingRecord:
    """What a run stores about its continuity with the previous run."""

    previous_run_id: int | None
    match_method: str
    new_segments: list[int]
    retired_segments: list[int]
    moved_share: float | None
    held_customers: int | None
    drift_flags: list[str]
    what_changed: str
    migrations: pd.DataFrame
    transitions: pd.DataFrame
    shifts: pd.DataFrame


def tracking_record(drift: RunDrift) -> TrackingRecord:
    """The rows and ``runs`` columns a run stores about its drift."""
    previous_id = None
    if drift.previous is not None:
        assert drift.previous.run_id is not None  # a previous run comes from the store, with its id
        previous_id = int(drift.previous.run_id)
    transitions = pd.DataFrame(
        [
            {
                "kind": t.kind,
                "from_segments": [int(v) for v in t.from_ids],
                "to_segments": [int(v) for v in t.to_ids],
                "share": float(t.share),
            }
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
        held_customers=None if drift.held is None else drift.held_count,
        drift_flags=list(drift.flags),
        what_changed=drift.summary(),
        migrations=drift.migration.astype(
            {"from_segment": "int64", "to_segment": "int64", "customers": "int64"}
        ),
        transitions=transitions,
        shifts=drift.shifts,
    )
