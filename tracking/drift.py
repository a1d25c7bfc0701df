"""Drift of one run against the previous successful run: mean shifts, flags, and the one call per run.

:func:`compare_runs` matches ids (:mod:`tracking.ids`), aligns the customers of both runs
(:mod:`tracking.customers`), classifies the MONIC transitions (:mod:`tracking.transitions`) and
measures how far each segment moved (:func:`mean_shift`); the result is a :class:`RunDrift`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from constants import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_JACCARD, DEFAULT_MOVED_THRESHOLD
from tracking.common_space import TrackedModel, comparable
from tracking.customers import (
    CustomerOverlap,
    align_customers,
    as_text,
    customer_overlap,
    hold_segments,
    integers,
    migration_table,
    moved_share,
)
from tracking.distance import bhattacharyya
from tracking.ids import SegmentMatch, match_segments
from tracking.summary import what_changed
from tracking.transitions import Transition, TransitionThresholds, classify_transitions

# --------------------------------------------------------------------------- mean shift and flags
_SHIFT_COLUMNS = [
    "segment_id",
    "feature_index",
    "feature",
    "transform",
    "unit",
    "previous_mean",
    "current_mean",
    "shift",
    "shift_sd",
    "previous_centre",
    "current_centre",
    "distance_sd",
    "bhattacharyya",
]


def mean_shift(previous: TrackedModel, current: TrackedModel) -> pd.DataFrame:
    """How far each segment id present in both models moved, per feature, in the common space.

    Parameters
    ----------
    previous, current : TrackedModel
        With their real (matched) segment ids; features may be in another order.

    Returns
    -------
    DataFrame, one row per shared segment id x feature (in the previous run's feature order):
    ``previous_mean``, ``current_mean`` and ``shift`` (current - previous) in transformed units
    (days, log(1 + GBP), ...); ``shift_sd`` = shift / the previous segment's standard deviation of
    that feature; ``previous_centre``, ``current_centre`` in original units; ``distance_sd`` the
    Mahalanobis distance of the new mean under the previous segment's covariance (the same on every
    row of a segment: how many of its own standard deviations the segment moved); and the
    ``bhattacharyya`` distance of the two Gaussians. Empty when the feature sets differ.
    """
    if not comparable(previous, current):
        return pd.DataFrame({c: [] for c in _SHIFT_COLUMNS})
    cur = current.reordered(previous.feature_names)
    shared = sorted(set(previous.segment_ids.tolist()) & set(cur.segment_ids.tolist()))
    if not shared:
        return pd.DataFrame({c: [] for c in _SHIFT_COLUMNS})
    ip = np.array([int(np.flatnonzero(previous.segment_ids == s)[0]) for s in shared])
    ic = np.array([int(np.flatnonzero(cur.segment_ids == s)[0]) for s in shared])
    d = previous.n_features
    m0, m1 = previous.means[ip], cur.means[ic]
    shift = m1 - m0
    sd = np.sqrt(np.diagonal(previous.covariances[ip], axis1=1, axis2=2))
    L = np.linalg.cholesky(previous.covariances[ip])
    distance = np.sqrt((np.linalg.solve(L, shift[..., None])[..., 0] ** 2).sum(axis=1))
    bd = np.array(
        [
            bhattacharyya(previous.means[a], previous.covariances[a], cur.means[b], cur.covariances[b])
            for a, b in zip(ip, ic, strict=True)
        ]
    )
    n = len(shared)
    return pd.DataFrame(
        {
            "segment_id": np.repeat(np.array(shared, dtype=np.int64), d),
            "feature_index": np.tile(np.arange(1, d + 1, dtype=np.int64), n),
            "feature": np.tile(np.array(previous.feature_names, dtype=object), n),
            "transform": np.tile(np.array(previous.transforms, dtype=object), n),
            "unit": np.tile(np.array(previous.feature_units, dtype=object), n),
            "previous_mean": m0.ravel(),
            "current_mean": m1.ravel(),
            "shift": shift.ravel(),
            "shift_sd": (shift / sd).ravel(),
            "previous_centre": previous.centres()[ip].ravel(),
            "current_centre": cur.centres()[ic].ravel(),
            "distance_sd": np.repeat(distance, d),
            "bhattacharyya": np.repeat(bd, d),
        }
    )


def drift_flags(
    previous: TrackedModel | None,
    current: TrackedModel,
    moved: float,
    *,
    moved_threshold: float = DEFAULT_MOVED_THRESHOLD,
) -> list[str]:
    """Short warnings for analysts; empty when nothing crossed a line.

    Flags: the number of segments changed (``"k changed 4 -> 5"``), the covariance type changed
    (``"covariance type changed full -> diag"``), the features or transforms changed (ids then
    matched by customer overlap), and ``moved`` (share of customers in both runs who changed
    segment) above ``moved_threshold`` (``"31% of customers changed segment (threshold 20%)"``).
    """
    if not 0.0 <= moved_threshold <= 1.0:
        raise ValueError(f"drift_flags: moved_threshold must lie in [0, 1], got {moved_threshold}")
    if previous is None:
        return []
    flags = []
    if previous.n_segments != current.n_segments:
        flags.append(f"k changed {previous.n_segments} -> {current.n_segments}")
    if previous.covariance_type != current.covariance_type:
        flags.append(f"covariance type changed {previous.covariance_type} -> {current.covariance_type}")
    if not comparable(previous, current):

        def show(m: TrackedModel) -> str:
            return ", ".join(
                f"log1p({n})" if t == "log1p" else n
                for n, t in zip(m.feature_names, m.transforms, strict=True)
            )

        flags.append(
            f"features changed ({show(previous)} -> {show(current)}); ids matched by customer overlap"
        )
    if np.isfinite(moved) and moved > moved_threshold:
        flags.append(f"{moved:.0%} of customers changed segment (threshold {moved_threshold:.0%})")
    return flags


# --------------------------------------------------------------------------- one call per run
@dataclass(frozen=True, eq=False)
class RunDrift:
    """Everything tracking says about one run compared with the previous successful run.

    Attributes
    ----------
    match : SegmentMatch
    model : TrackedModel
        The current model with its matched ids.
    customer_ids : ndarray of shape (n_customers,), str
        This run's customers, in the order given to :func:`compare_runs`.
    customer_segments : ndarray of shape (n_customers,)
        Segment id of each of them (a property: made when read, from the components).
    customer_components : ndarray of shape (n_customers,)
        The same segments as component indices of the current model (``match.segment_ids`` of it
        is ``customer_segments``): the most probable component unless held.
    previous : TrackedModel or None
    overlap : CustomerOverlap or None
        Customers in both runs, segments as ids (None on the first run or without previous assignments).
    migration : DataFrame (``from_segment``, ``to_segment``, ``customers``)
    transitions : list of Transition
    moved_share : float
    shifts : DataFrame (see :func:`mean_shift`)
    flags : list of str
    moved_threshold, max_distance : float
        The settings used (shown in the summary).
    held : ndarray of shape (n_customers,), bool, or None
        Customers kept in their previous segment although the model favours another, by no more
        than ``hold_odds`` to 1 (see :func:`hold_segments`); None when the rule was not applied.
    hold_odds : float
    """

    match: SegmentMatch
    model: TrackedModel
    customer_ids: np.ndarray
    customer_components: np.ndarray
    previous: TrackedModel | None
    overlap: CustomerOverlap | None
    migration: pd.DataFrame
    transitions: list[Transition]
    moved_share: float
    shifts: pd.DataFrame
    flags: list[str]
    moved_threshold: float = DEFAULT_MOVED_THRESHOLD
    max_distance: float = DEFAULT_MAX_DISTANCE
    held: np.ndarray | None = None
    hold_odds: float = 1.0

    @property
    def customer_segments(self) -> np.ndarray:
        # Made when read: a run keeps one array per customer for it, not two (issue 12).
        return self.match.segment_ids[self.customer_components]

    @property
    def held_count(self) -> int:
        return 0 if self.held is None else int(self.held.sum())

    @property
    def previous_run_id(self) -> int | str | None:
        return None if self.previous is None else self.previous.run_id

    def summary(self) -> str:
        """The plain-text 'what changed' summary (:func:`what_changed`)."""
        return what_changed(self)

    def report_drift(self) -> dict[str, Any] | None:
        """The ``ReportData.drift`` dict, or None on the first run (no previous run to compare)."""
        if self.previous is None:
            return None
        return {
            "previous_run_id": self.previous_run_id,
            "previous_segment_ids": sorted(int(v) for v in self.previous.segment_ids),
            "migration": self.migration.to_dict("records"),
            "transitions": [t.as_dict() for t in self.transitions],
            "what_changed": self.summary(),
            "flags": list(self.flags),
        }


def compare_runs(
    previous: TrackedModel | None,
    current: TrackedModel,
    *,
    max_id_used: int,
    current_customers: Sequence[Any] | np.ndarray,
    current_components: Sequence[int] | np.ndarray,
    previous_customers: Sequence[Any] | np.ndarray | None = None,
    previous_segments: Sequence[int] | np.ndarray | None = None,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    min_jaccard: float = DEFAULT_MIN_JACCARD,
    thresholds: TransitionThresholds = TransitionThresholds(),  # noqa: B008 (a frozen dataclass)
    moved_threshold: float = DEFAULT_MOVED_THRESHOLD,
    probabilities: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
    hold_odds: float = 1.0,
    alignment: tuple[np.ndarray, np.ndarray] | None = None,
) -> RunDrift:
    """Match ids, then measure drift, for one run against the previous successful run.

    Parameters
    ----------
    previous : TrackedModel or None
        The previous successful run's model with its ids (None on the first run).
    current : TrackedModel
        This run's model (ids ignored).
    max_id_used : int
        The largest segment id ever given before this run (0 before the first).
    current_customers, current_components : arrays of shape (n,)
        This run's customers and the component index (0..k-1) of their most probable segment.
    previous_customers, previous_segments : arrays of shape (n_prev,), optional
        The previous run's assignments (segment ids). Without them, migration, transitions and the
        moved share are empty / NaN.
    max_distance, min_jaccard, thresholds, moved_threshold
        See :func:`match_segments`, :func:`classify_transitions`, :func:`drift_flags`.
    probabilities : ndarray of shape (n, k), or callable, optional
        This run's membership probabilities, needed for ``hold_odds`` (a callable gives those of
        the customers at the positions it is passed, :func:`hold_segments`).
    hold_odds : float, default 1
        Customers in both runs keep their previous segment (when it survived with its id) unless
        their most probable segment is more than this many times as probable
        (:func:`hold_segments`); 1 gives every customer their most probable segment. Ids are
        matched on the most probable segments; migration, transitions and the moved share
        describe the segments given.
    alignment : (ip, ic), optional
        :func:`align_customers` of the previous run's customers and these (or any join giving
        the same positions, such as the pipeline's in SQL), when the caller computed it;
        ``previous_customers`` may then be None.
    """
    components = np.asarray(current_components, dtype=np.int64).reshape(-1)
    if len(current_customers) != components.size:
        raise ValueError("compare_runs: current_customers and current_components differ in length")
    if components.size and (components.min() < 0 or components.max() >= current.n_segments):
        raise ValueError(f"compare_runs: current_components must lie in 0..{current.n_segments - 1}")
    overlap = None
    known = previous_customers is not None or alignment is not None
    if previous is not None and previous_segments is not None and known:
        if alignment is None:
            assert previous_customers is not None
            alignment = align_customers(previous_customers, current_customers)  # once: it is the slow part
        overlap = customer_overlap(
            previous_customers, previous_segments, current_customers, components, alignment
        )
    else:
        alignment = None
    match = match_segments(
        previous,
        current,
        max_id_used,
        max_distance=max_distance,
        min_jaccard=min_jaccard,
        overlap=None if overlap is None else overlap.pair_counts(),
    )
    model = current.with_ids(match.segment_ids)
    held = None
    if overlap is not None and probabilities is not None and hold_odds > 1.0:
        # An overlap exists only with the previous run's customers and segments.
        assert previous_segments is not None and alignment is not None
        components, held = _held_components(
            components, probabilities, hold_odds, match.segment_ids, previous_segments, alignment
        )
        overlap = customer_overlap(
            previous_customers, previous_segments, current_customers, components, alignment
        )
    if overlap is not None:
        assert previous is not None  # an overlap exists only with a previous run
        # The customers in both runs counted by (previous id, component), the components then
        # given their ids: nothing per customer (issue 12).
        from_ids, to_components, counts = overlap.pair_counts()
        pairs = (from_ids, np.asarray(match.segment_ids, dtype=np.int64)[to_components], counts)
        migration = migration_table(pairs=pairs)
        prev_all = overlap.previous_all  # every previous customer's segment, as given
        transitions = classify_transitions(
            thresholds=thresholds,
            pairs=pairs,
            previous_counts={int(s): int(np.sum(prev_all == s)) for s in previous.segment_ids},
            current_counts={
                int(s): int(n)
                for s, n in zip(
                    match.segment_ids, np.bincount(components, minlength=current.n_segments), strict=True
                )
            },
        )
        moved = moved_share(pairs=pairs)
    else:
        migration, transitions, moved = migration_table([], []), [], float("nan")
    shifts = mean_shift(previous, model) if previous is not None else mean_shift(model, model).iloc[0:0]
    return RunDrift(
        match=match,
        model=model,
        customer_ids=as_text(current_customers),
        customer_components=components,
        previous=previous,
        overlap=overlap,
        migration=migration,
        transitions=transitions,
        moved_share=moved,
        shifts=shifts,
        flags=drift_flags(previous, model, moved, moved_threshold=moved_threshold),
        moved_threshold=moved_threshold,
        max_distance=max_distance,
        held=held,
        hold_odds=float(hold_odds) if held is not None else 1.0,
    )


def _held_components(
    components: np.ndarray,
    probabilities: np.ndarray | Callable[[np.ndarray], np.ndarray],
    hold_odds: float,
    segment_ids: np.ndarray,
    previous_segments,
    alignment: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hold_segments` for this run's customers, given the previous run's segments and
    :func:`align_customers` of the two runs' customers."""
    if not callable(probabilities):
        probabilities = np.asarray(probabilities, dtype=np.float64)
        shape = (components.size, segment_ids.size)
        if probabilities.shape != shape:
            got = probabilities.shape
            raise ValueError(f"compare_runs: probabilities must have shape {shape}, got {got}")
    ip, ic = alignment
    # Component carrying each previous id in this run (-1: retired, so there is nothing to keep),
    # looked up in a table indexed by id.
    ids = np.asarray(segment_ids, dtype=np.int64)
    previous_ids = integers(previous_segments)
    top = int(max(ids.max(initial=0), previous_ids.max(initial=0)))
    component_of = np.full(top + 1, -1, dtype=np.int64)
    component_of[ids] = np.arange(ids.size)
    every = probabilities

    def rows_of(rows: np.ndarray) -> np.ndarray:
        return every(rows) if callable(every) else every[rows]

    # The customers in both runs a block at a time: the run holds the segments given and who was
    # held, not each customer's previous component besides (issue 12).
    given = np.array(components, dtype=np.int64, copy=True)
    held = np.zeros(given.size, dtype=bool)
    for lo in range(0, ic.size, _HOLD_CUSTOMERS):
        at = ic[lo : lo + _HOLD_CUSTOMERS]

        def block_rows(rows: np.ndarray, at: np.ndarray = at) -> np.ndarray:
            return rows_of(at[rows])

        given[at], held[at] = hold_segments(
            given[at], block_rows, component_of[previous_ids[ip[lo : lo + _HOLD_CUSTOMERS]]], hold_odds
        )
    return given, held


#: Customers in both runs whose segments :func:`_held_components` decides at a time.
_HOLD_CUSTOMERS = 1 << 20
