"""Stable segment ids across runs, and drift: matching, MONIC transitions, migration, mean shifts, flags.

Plain numpy/scipy/pandas; no DuckDB, no Prefect. The store and the flow call these functions;
this package imports neither :mod:`flows` nor :mod:`reports` nor :mod:`schemas` (only
:mod:`gmm_engine` and the shared :mod:`constants`).

Modules
-------
common_space
    :class:`TrackedModel` (one run's mixture in the common space), :func:`common_model`,
    :func:`same_features`, :func:`comparable`, :func:`warm_start_init`.
distance
    Bhattacharyya distance between Gaussians.
ids
    :class:`SegmentMatch`, :func:`match_segments`: which segment keeps which id.
customers
    Customers of two runs: :func:`customer_overlap` (:func:`align_customers`,
    :func:`as_text`),
    :func:`migration_table`, :func:`moved_share`, :func:`hold_segments`.
transitions
    MONIC transitions: :func:`classify_transitions`, :func:`transition_table`.
drift
    :func:`mean_shift`, :func:`drift_flags`, and the one call per run, :func:`compare_runs`,
    which returns a :class:`RunDrift`.
summary
    :func:`what_changed` and :func:`drift_markdown`, the text summaries of a :class:`RunDrift`.
"""

from constants import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_JACCARD, DEFAULT_MOVED_THRESHOLD
from tracking.common_space import (
    TrackedModel,
    common_model,
    comparable,
    same_features,
    warm_start_init,
)
from tracking.customers import (
    CustomerOverlap,
    align_customers,
    as_text,
    customer_overlap,
    hold_segments,
    migration_table,
    moved_share,
)
from tracking.distance import bhattacharyya, bhattacharyya_matrix
from tracking.drift import RunDrift, compare_runs, drift_flags, mean_shift
from tracking.ids import MATCH_METHODS, SegmentMatch, match_segments
from tracking.summary import drift_markdown, what_changed
from tracking.transitions import (
    TRANSITION_KINDS,
    Transition,
    TransitionThresholds,
    classify_transitions,
    transition_table,
)

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_MIN_JACCARD",
    "DEFAULT_MOVED_THRESHOLD",
    "MATCH_METHODS",
    "TRANSITION_KINDS",
    "CustomerOverlap",
    "RunDrift",
    "SegmentMatch",
    "TrackedModel",
    "Transition",
    "TransitionThresholds",
    "align_customers",
    "as_text",
    "bhattacharyya",
    "bhattacharyya_matrix",
    "classify_transitions",
    "common_model",
    "comparable",
    "compare_runs",
    "customer_overlap",
    "drift_flags",
    "drift_markdown",
    "hold_segments",
    "match_segments",
    "mean_shift",
    "migration_table",
    "moved_share",
    "same_features",
    "transition_table",
    "warm_start_init",
    "what_changed",
]
