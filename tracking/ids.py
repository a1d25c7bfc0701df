"""Stable segment ids: each current component keeps the id of the previous segment it continues.

Matching is a one-to-one assignment of least total cost: on the Bhattacharyya distance of the
Gaussians in the common space when the features are unchanged, on customer overlap (1 - Jaccard
index) when they changed. Components left unmatched get new ids, never reused; see
:func:`match_segments` for the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from constants import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_JACCARD
from tracking.common_space import TrackedModel, comparable
from tracking.distance import bhattacharyya_matrix

#: How a run's ids were given (:attr:`SegmentMatch.method`).
MATCH_METHODS = ("first_run", "bhattacharyya", "customer_overlap", "none")


@dataclass(frozen=True, eq=False)
class SegmentMatch:
    """Ids of the current components after matching them to the previous run's segments.

    Attributes
    ----------
    segment_ids : ndarray of shape (k_current,)
        Id of each current component (component order).
    previous_index : ndarray of shape (k_current,)
        Index of the previous component whose id it kept, -1 for a new id.
    kept_ids, new_ids, retired_ids : tuple of int, sorted
        Ids carried over, ids given for the first time, previous ids no longer used.
    distances : ndarray of shape (k_previous, k_current)
        ``bhattacharyya``: Bhattacharyya distances; ``customer_overlap``: 1 - Jaccard index of
        the customers; empty for ``first_run`` and ``none``.
    method : str
        ``first_run`` (no previous run), ``bhattacharyya``, ``customer_overlap`` (feature set
        changed) or ``none`` (feature set changed and no customers in both runs: all ids new).
    max_id_used : int
        The largest id ever used, after this run (pass it to the next run).
    """

    segment_ids: np.ndarray
    previous_index: np.ndarray
    kept_ids: tuple[int, ...]
    new_ids: tuple[int, ...]
    retired_ids: tuple[int, ...]
    distances: np.ndarray
    method: str
    max_id_used: int

    @property
    def matched_distance(self) -> np.ndarray:
        """Distance of each current component to the previous one it matched (NaN for new ids)."""
        out = np.full(self.segment_ids.shape[0], np.nan)
        kept = self.previous_index >= 0
        if self.distances.size:
            out[kept] = self.distances[self.previous_index[kept], np.flatnonzero(kept)]
        return out


def _canonical_order(model: TrackedModel, components: np.ndarray) -> np.ndarray:
    """Components ordered by weight (largest first), ties by mean: new ids never depend on EM's order."""
    components = np.asarray(components, dtype=np.int64)
    if components.size == 0:
        return components
    keys = [model.means[components, j] for j in range(model.n_features - 1, -1, -1)]
    return components[np.lexsort(keys + [-model.weights[components]])]


def _assign(cost: np.ndarray, limit: float) -> list[tuple[int, int]]:
    """Optimal one-to-one pairs with cost <= limit.

    Costs are capped at the limit before solving: pairing above it then costs as much as leaving
    both sides unmatched, so a bad pair never pushes a good one out of the optimum.
    """
    if cost.size == 0:
        return []
    rows, cols = linear_sum_assignment(np.minimum(cost, limit))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] <= limit]


def _overlap_counts(
    previous_segments: np.ndarray,
    current_components: np.ndarray,
    counts: np.ndarray,
    previous_ids: np.ndarray,
    k_current: int,
) -> np.ndarray:
    """Counted pairs as a (previous segment, current component) matrix; pairs of unknown segments
    or components are left out. A loop over the pairs that occur (at most k_previous x k)."""
    row = {int(s): i for i, s in enumerate(previous_ids)}
    C = np.zeros((previous_ids.shape[0], k_current), dtype=np.int64)
    for s, c, n in zip(previous_segments.tolist(), current_components.tolist(), counts.tolist(), strict=True):
        if s in row and 0 <= c < k_current:
            C[row[s], c] += n
    return C


def match_segments(
    previous: TrackedModel | None,
    current: TrackedModel,
    max_id_used: int,
    *,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    overlap: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    min_jaccard: float = DEFAULT_MIN_JACCARD,
) -> SegmentMatch:
    """Give each current component the id of the previous segment it continues, or a new id.

    Rule: with the same features and transforms, the Bhattacharyya distance between every
    previous and current Gaussian in the common space is computed and the one-to-one assignment
    of least total distance is solved (``scipy.optimize.linear_sum_assignment``); a pair keeps
    the previous id when its distance is at most ``max_distance``. Otherwise (features changed)
    the same assignment is solved on customer overlap (1 - Jaccard index, pairs with Jaccard >=
    ``min_jaccard``), and without ``overlap`` every id is new. Components left unmatched get new
    ids ``max_id_used + 1, ...`` in order of decreasing weight; previous ids left unmatched are
    retired and never given again.

    Parameters
    ----------
    previous : TrackedModel or None
        The previous successful run's model with its ids (None: first run).
    current : TrackedModel
        This run's model (its segment_ids are ignored).
    max_id_used : int
        The largest id ever given (0 before the first run); must be >= every previous id.
    max_distance : float, default 2.0
        See :data:`DEFAULT_MAX_DISTANCE`.
    overlap : (ndarray, ndarray, ndarray), optional
        The customers in both runs counted by pair (:func:`tracking.pair_counts`): previous
        segment id, current component index (0..k-1) and how many customers go from one to the
        other. Used only when the features changed.
    min_jaccard : float, default 0.5

    Returns
    -------
    SegmentMatch
    """
    if not max_distance >= 0:
        raise ValueError(f"match_segments: max_distance must be >= 0, got {max_distance}")
    max_id_used = int(max_id_used)
    k = current.n_segments
    empty = np.zeros((0, k))
    if previous is None:
        method, pairs, distances = "first_run", [], empty
    else:
        if max_id_used < int(previous.segment_ids.max()):
            raise ValueError(
                f"match_segments: max_id_used ({max_id_used}) is smaller than the previous run's "
                f"largest segment id ({int(previous.segment_ids.max())})"
            )
        if comparable(previous, current):
            aligned = current.reordered(previous.feature_names)
            distances = bhattacharyya_matrix(
                previous.means, previous.covariances, aligned.means, aligned.covariances
            )
            method, pairs = "bhattacharyya", _assign(distances, max_distance)
        elif overlap is not None:
            prev_seg, cur_comp, counts = (np.asarray(a, dtype=np.int64).reshape(-1) for a in overlap)
            if not prev_seg.shape == cur_comp.shape == counts.shape:
                raise ValueError("match_segments: the three overlap arrays must have the same length")
            C = _overlap_counts(prev_seg, cur_comp, counts, previous.segment_ids, k).astype(np.float64)
            union = C.sum(axis=1, keepdims=True) + C.sum(axis=0, keepdims=True) - C
            jaccard = np.divide(C, union, out=np.zeros_like(C), where=union > 0)
            distances = 1.0 - jaccard
            method, pairs = "customer_overlap", _assign(distances, 1.0 - min_jaccard)
        else:
            method, pairs, distances = "none", [], np.ones((previous.n_segments, k))
    ids = np.zeros(k, dtype=np.int64)
    previous_index = np.full(k, -1, dtype=np.int64)
    # pairs is empty without a previous run.
    previous_ids = np.zeros(0, dtype=np.int64) if previous is None else previous.segment_ids
    for r, c in pairs:
        ids[c] = previous_ids[r]
        previous_index[c] = r
    unmatched = _canonical_order(current, np.flatnonzero(previous_index < 0))
    ids[unmatched] = max_id_used + 1 + np.arange(unmatched.size)
    kept = tuple(sorted(int(v) for v in ids[previous_index >= 0]))
    retired = () if previous is None else tuple(sorted(set(previous.segment_ids.tolist()) - set(kept)))
    return SegmentMatch(
        segment_ids=ids,
        previous_index=previous_index,
        kept_ids=kept,
        new_ids=tuple(sorted(int(v) for v in ids[unmatched])),
        retired_ids=retired,
        distances=distances if method in ("bhattacharyya", "customer_overlap") else np.zeros((0, k)),
        method=method,
        max_id_used=max(max_id_used, int(ids.max())),
    )
