"""Names and defaults shared by the pipeline, the reports and tracking.

Each is defined once here: :mod:`flows.config` validates settings against them, :mod:`reports`
checks its inputs with them and :mod:`tracking` uses them as defaults, and none of the three has
to import another for them. Plain values only; this module imports nothing.

Attributes
----------
TRANSFORMS : tuple of str
    Transforms a feature can have before standardisation.
DEFAULT_MAX_DISTANCE, DEFAULT_MIN_JACCARD : float
    When a segment keeps its id (``tracking.max_distance``, ``tracking.min_jaccard``).
DEFAULT_TAU_MATCH, DEFAULT_TAU_SPLIT : float
    MONIC transition thresholds (``tracking.tau_match``, ``tracking.tau_split``).
DEFAULT_MOVED_THRESHOLD : float
    The "share of customers who changed segment" flag (``tracking.moved_threshold``).
"""

#: Transforms a feature can have before standardisation (applied in flows.features).
TRANSFORMS = ("none", "log1p")

#: A current component keeps a previous id only when their Bhattacharyya distance is at most this.
#: exp(-2) = 0.135 is the Bhattacharyya coefficient, so the Bayes error of telling the two Gaussians
#: apart is at most 6.8 %: beyond that they are different segments. For equal covariances it is a
#: move of the mean by 4 of the segment's standard deviations (D = delta**2 / 8); a nightly refit
#: moves a segment by a small fraction of that, and a segment that appears while another vanishes
#: lies much farther away.
DEFAULT_MAX_DISTANCE = 2.0
#: Minimum Jaccard index of two segments' customers for keeping an id when features changed.
DEFAULT_MIN_JACCARD = 0.5
#: MONIC: share of a previous segment's customers for a survival (or an absorption into a merge).
DEFAULT_TAU_MATCH = 0.5
#: MONIC: smallest share a part must receive to count as a piece of a split.
DEFAULT_TAU_SPLIT = 0.25
#: Default of the "share of customers who changed segment" flag.
DEFAULT_MOVED_THRESHOLD = 0.2

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_MIN_JACCARD",
    "DEFAULT_MOVED_THRESHOLD",
    "DEFAULT_TAU_MATCH",
    "DEFAULT_TAU_SPLIT",
    "TRANSFORMS",
]
