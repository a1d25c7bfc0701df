"""Stable segment ids across runs, and drift: matching, MONIC transitions, migration, mean shifts, flags.

Plain numpy/scipy/pandas; no DuckDB, no Prefect. The store and the flow call these functions.

The common space
----------------
Two runs standardise their features with different scalers, so their model-space parameters
cannot be compared directly. Every model is therefore mapped to the features **after their
transform and before standardisation** (``x_model * scaler_scale + scaler_mean``): recency in
days, ``log(1 + monetary)``, ... A Gaussian stays a Gaussian under that affine map. It does not
stay one under ``expm1``, so original units (GBP, invoices) are not an honest common space for
``log1p`` features; centres are still shown in original units for people.

Two models are in the same common space when they use the same features with the same transforms
(in any order: columns are re-ordered to the previous run's). When the feature set or a transform
changed, Gaussians are not comparable and ids are matched by **customer overlap** instead (Jaccard
index of the two segments' customers in both runs >= ``min_jaccard``, default 0.5, which means
each of the two segments has more than half of its customers in the other); without customers in
both runs every segment gets a new id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from constants import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_JACCARD,
    DEFAULT_MOVED_THRESHOLD,
    DEFAULT_TAU_MATCH,
    DEFAULT_TAU_SPLIT,
    TRANSFORMS,
)
from gmm_engine import ALL_COVARIANCE_TYPES, covariance_layout

TRANSITION_KINDS = ("survived", "split", "merged", "disappeared", "emerged")
MATCH_METHODS = ("first_run", "bhattacharyya", "customer_overlap", "none")


# --------------------------------------------------------------------------- models in the common space
@dataclass(frozen=True, eq=False)
class TrackedModel:
    """One run's mixture in the common space (features transformed, not standardised).

    Attributes
    ----------
    weights : ndarray of shape (k,)
    means : ndarray of shape (k, d)
    covariances : ndarray of shape (k, d, d)
        Full matrices (tied, diag and spherical expanded).
    segment_ids : ndarray of shape (k,), int64
        Id of each component; ``1..k`` until :func:`match_segments` has given the real ones.
    feature_names, transforms, feature_units : tuple of str, length d
    covariance_type : str
        The fitted model's covariance type (kept for the drift flags).
    run_id : int, str or None
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    segment_ids: np.ndarray
    feature_names: tuple[str, ...]
    transforms: tuple[str, ...]
    covariance_type: str
    feature_units: tuple[str, ...] = ()
    run_id: int | str | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("weights", np.asarray(self.weights, dtype=np.float64).reshape(-1))
        k = self.weights.shape[0]
        put("means", np.asarray(self.means, dtype=np.float64).reshape(k, -1))
        d = self.means.shape[1]
        put("covariances", np.asarray(self.covariances, dtype=np.float64).reshape(k, d, d))
        put("segment_ids", np.asarray(self.segment_ids).astype(np.int64).reshape(-1))
        put("feature_names", tuple(str(v) for v in self.feature_names))
        put("transforms", tuple(str(v) for v in self.transforms))
        put("feature_units", tuple(str(v) for v in self.feature_units) or ("",) * d)
        put("covariance_type", str(self.covariance_type))
        if k < 1:
            raise ValueError("TrackedModel.weights: at least one segment is required")
        if self.segment_ids.shape != (k,) or len(set(self.segment_ids.tolist())) != k:
            raise ValueError(f"TrackedModel.segment_ids: expected {k} distinct ids, got {self.segment_ids.tolist()}")
        if np.any(self.segment_ids < 1):
            raise ValueError("TrackedModel.segment_ids: ids must be >= 1")
        for name in ("feature_names", "transforms", "feature_units"):
            if len(getattr(self, name)) != d:
                raise ValueError(f"TrackedModel.{name}: expected {d} entries (one per feature), got {len(getattr(self, name))}")
        if len(set(self.feature_names)) != d:
            raise ValueError(f"TrackedModel.feature_names: names must be unique, got {list(self.feature_names)}")
        for j, t in enumerate(self.transforms):
            if t not in TRANSFORMS:
                raise ValueError(f"TrackedModel.transforms: entry {j} is {t!r}, expected one of {TRANSFORMS}")
        for name in ("weights", "means", "covariances"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"TrackedModel.{name}: contains NaN or infinite values")

    @property
    def n_segments(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    def with_ids(self, segment_ids: Sequence[int] | np.ndarray) -> TrackedModel:
        """The same model with other segment ids (one per component, in component order)."""
        return replace(self, segment_ids=np.asarray(segment_ids, dtype=np.int64))

    def reordered(self, feature_names: Sequence[str]) -> TrackedModel:
        """The same model with its features in the given order (a permutation of its own)."""
        names = [str(n) for n in feature_names]
        if sorted(names) != sorted(self.feature_names):
            raise ValueError(f"reordered: {names} is not a permutation of {list(self.feature_names)}")
        order = np.array([self.feature_names.index(n) for n in names], dtype=np.int64)
        return replace(
            self, means=self.means[:, order], covariances=self.covariances[:, order][:, :, order],
            feature_names=tuple(names), transforms=tuple(self.transforms[j] for j in order),
            feature_units=tuple(self.feature_units[j] for j in order))

    def centres(self) -> np.ndarray:
        """Component means mapped back to original units, shape (k, d) (``expm1`` for log1p)."""
        out = self.means.copy()
        log1p = np.array([t == "log1p" for t in self.transforms])
        out[:, log1p] = np.expm1(out[:, log1p])
        return out


def common_model(weights: np.ndarray, means: np.ndarray, covariances: np.ndarray,
                 scaler_mean: np.ndarray, scaler_scale: np.ndarray, *,
                 feature_names: Sequence[str], transforms: Sequence[str], covariance_type: str,
                 feature_units: Sequence[str] = (), segment_ids: Sequence[int] | None = None,
                 run_id: int | str | None = None) -> TrackedModel:
    """Map model-space parameters to the common space: ``x = x_model * scaler_scale + scaler_mean``.

    Parameters
    ----------
    weights : array of shape (k,)
    means : array of shape (k, d)
        Model-space (standardised) means, e.g. ``segments.model_mean``.
    covariances : array of shape (k, d, d) or (k, d * d)
        Model-space full covariances (``segments.model_covariance`` is row-major flattened).
    scaler_mean, scaler_scale : arrays of shape (d,)
        ``feature_scalers.scaler_mean`` / ``scaler_scale`` of the same run.
    feature_names, transforms : sequences of str, length d
    covariance_type : str
    feature_units : sequence of str, optional
    segment_ids : sequence of int, optional
        Ids of the components; default ``1..k`` (placeholders until matched).
    run_id : optional

    Returns
    -------
    TrackedModel
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    k = w.shape[0]
    m = np.asarray(means, dtype=np.float64).reshape(k, -1)
    d = m.shape[1]
    mean = np.asarray(scaler_mean, dtype=np.float64).reshape(-1)
    scale = np.asarray(scaler_scale, dtype=np.float64).reshape(-1)
    if mean.shape != (d,) or scale.shape != (d,):
        raise ValueError(f"common_model: scaler_mean and scaler_scale need shape ({d},), got {mean.shape} and {scale.shape}")
    if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        raise ValueError("common_model: every scaler_scale must be finite and > 0")
    cov = np.asarray(covariances, dtype=np.float64)
    if cov.size != k * d * d:
        raise ValueError(f"common_model: covariances need {k} x {d} x {d} values, got shape {cov.shape}")
    cov = cov.reshape(k, d, d)
    return TrackedModel(
        weights=w, means=m * scale + mean, covariances=cov * np.outer(scale, scale),
        segment_ids=np.arange(1, k + 1) if segment_ids is None else segment_ids,
        feature_names=tuple(feature_names), transforms=tuple(transforms),
        covariance_type=covariance_type, feature_units=tuple(feature_units), run_id=run_id)


def same_features(names_a: Sequence[str], transforms_a: Sequence[str],
                  names_b: Sequence[str], transforms_b: Sequence[str]) -> bool:
    """True when two runs use the same features with the same transforms (in any order)."""
    return (sorted(zip(map(str, names_a), map(str, transforms_a)))
            == sorted(zip(map(str, names_b), map(str, transforms_b))))


def comparable(previous: TrackedModel, current: TrackedModel) -> bool:
    """True when both models live in the same common space: same features, same transforms."""
    return same_features(previous.feature_names, previous.transforms, current.feature_names, current.transforms)


def warm_start_init(previous: TrackedModel, scaler_mean: np.ndarray, scaler_scale: np.ndarray,
                    covariance_type: str, *, feature_names: Sequence[str],
                    transforms: Sequence[str]) -> dict[str, np.ndarray]:
    """Initial parameters for ``GaussianMixture(n_components=previous.n_segments, **init)`` from the
    previous run's model, in this run's model space (this run's scaler).

    Only defined when the feature set and transforms are unchanged (``ValueError`` otherwise).
    A full covariance is reduced to the requested type: tied is the weighted average, diag its
    diagonal, spherical the mean of the diagonal.

    Returns
    -------
    dict with ``weights_init`` (k,), ``means_init`` (k, d), ``precisions_init`` (shape of the type).
    """
    names = [str(n) for n in feature_names]
    if not same_features(names, transforms, previous.feature_names, previous.transforms):
        raise ValueError("warm_start_init: the feature set or a transform changed since the previous run; "
                         "start EM from scratch")
    prev = previous.reordered(names)
    mean = np.asarray(scaler_mean, dtype=np.float64)
    scale = np.asarray(scaler_scale, dtype=np.float64)
    means = (prev.means - mean) / scale
    cov = prev.covariances / np.outer(scale, scale)
    weights = prev.weights / prev.weights.sum()
    layout = covariance_layout(covariance_type) if covariance_type in ALL_COVARIANCE_TYPES else None
    if layout == "full":  # full, and mclust's models stored as full matrices
        precisions = np.linalg.inv(cov)
    elif layout == "tied":
        precisions = np.linalg.inv(np.einsum("k,kij->ij", weights, cov))
    elif layout == "diag":
        precisions = 1.0 / np.diagonal(cov, axis1=1, axis2=2)
    elif layout == "spherical":
        precisions = 1.0 / np.diagonal(cov, axis1=1, axis2=2).mean(axis=1)
    else:
        raise ValueError(f"warm_start_init: unknown covariance_type {covariance_type!r}")
    if precisions.ndim >= 2 and precisions.shape[-1] == precisions.shape[-2]:
        precisions = 0.5 * (precisions + np.swapaxes(precisions, -1, -2))  # exact symmetry for the engine's check
    return {"weights_init": weights, "means_init": means, "precisions_init": precisions}


# --------------------------------------------------------------------------- distance between Gaussians
def _cholesky(cov: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        flat = cov.reshape(-1, cov.shape[-2], cov.shape[-1])
        bad = int(np.argmin(np.linalg.eigvalsh(flat)[:, 0]))
        raise ValueError(f"bhattacharyya: {what} covariance number {bad + 1} is not positive definite") from None


def bhattacharyya_matrix(means_a: np.ndarray, covariances_a: np.ndarray,
                         means_b: np.ndarray, covariances_b: np.ndarray) -> np.ndarray:
    """Bhattacharyya distance between every Gaussian of set a and every Gaussian of set b.

    ``D = (m_a - m_b)' S^-1 (m_a - m_b) / 8 + log(det S / sqrt(det S_a det S_b)) / 2`` with
    ``S = (S_a + S_b) / 2``; log-determinants from Cholesky factors. D is 0 for identical
    Gaussians, symmetric, and invariant under any invertible affine map applied to both, so each
    feature is first divided by a common scale to keep the factorisations well conditioned.

    Parameters
    ----------
    means_a : array of shape (ka, d); covariances_a : array of shape (ka, d, d)
    means_b : array of shape (kb, d); covariances_b : array of shape (kb, d, d)

    Returns
    -------
    ndarray of shape (ka, kb), float64, >= 0
    """
    ma = np.atleast_2d(np.asarray(means_a, dtype=np.float64))
    mb = np.atleast_2d(np.asarray(means_b, dtype=np.float64))
    d = ma.shape[1]
    ca = np.asarray(covariances_a, dtype=np.float64).reshape(ma.shape[0], d, d)
    cb = np.asarray(covariances_b, dtype=np.float64).reshape(mb.shape[0], d, d)
    if mb.shape[1] != d:
        raise ValueError(f"bhattacharyya: the two sets have {d} and {mb.shape[1]} features")
    variances = np.concatenate([np.diagonal(ca, axis1=1, axis2=2), np.diagonal(cb, axis1=1, axis2=2)])
    s = np.sqrt(variances.mean(axis=0))
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    ma, mb = ma / s, mb / s
    ca, cb = ca / np.outer(s, s), cb / np.outer(s, s)
    logdet_a = 2.0 * np.log(np.diagonal(_cholesky(ca, "first set's"), axis1=1, axis2=2)).sum(axis=1)
    logdet_b = 2.0 * np.log(np.diagonal(_cholesky(cb, "second set's"), axis1=1, axis2=2)).sum(axis=1)
    L = _cholesky(0.5 * (ca[:, None] + cb[None, :]), "an averaged")  # (ka, kb, d, d)
    diff = ma[:, None, :] - mb[None, :, :]
    y = np.linalg.solve(L, diff[..., None])[..., 0]
    logdet_s = 2.0 * np.log(np.diagonal(L, axis1=2, axis2=3)).sum(axis=2)
    D = 0.125 * np.einsum("abi,abi->ab", y, y) + 0.5 * (logdet_s - 0.5 * (logdet_a[:, None] + logdet_b[None, :]))
    return np.maximum(D, 0.0)  # rounding can leave -1e-16 for identical Gaussians


def bhattacharyya(mean_a: np.ndarray, covariance_a: np.ndarray,
                  mean_b: np.ndarray, covariance_b: np.ndarray) -> float:
    """Bhattacharyya distance between two Gaussians N(mean_a, covariance_a) and N(mean_b, covariance_b)."""
    ma = np.atleast_1d(np.asarray(mean_a, dtype=np.float64))
    d = ma.shape[0]
    return float(bhattacharyya_matrix(ma[None], np.asarray(covariance_a, dtype=np.float64).reshape(1, d, d),
                                      np.atleast_1d(np.asarray(mean_b, dtype=np.float64))[None],
                                      np.asarray(covariance_b, dtype=np.float64).reshape(1, d, d))[0, 0])


# --------------------------------------------------------------------------- stable ids
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
    return [(int(r), int(c)) for r, c in zip(rows, cols) if cost[r, c] <= limit]


def _overlap_counts(previous_segments: np.ndarray, current_components: np.ndarray,
                    previous_ids: np.ndarray, k_current: int) -> np.ndarray:
    row = {int(s): i for i, s in enumerate(previous_ids)}
    C = np.zeros((previous_ids.shape[0], k_current), dtype=np.int64)
    if previous_segments.size == 0:
        return C
    pairs, counts = np.unique(np.stack([previous_segments, current_components], axis=1), axis=0, return_counts=True)
    for (s, c), n in zip(pairs, counts):
        if int(s) in row and 0 <= int(c) < k_current:
            C[row[int(s)], int(c)] += int(n)
    return C


def match_segments(previous: TrackedModel | None, current: TrackedModel, max_id_used: int, *,
                   max_distance: float = DEFAULT_MAX_DISTANCE,
                   overlap: tuple[np.ndarray, np.ndarray] | None = None,
                   min_jaccard: float = DEFAULT_MIN_JACCARD) -> SegmentMatch:
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
    overlap : (ndarray, ndarray), optional
        For customers in both runs, aligned: previous segment id and current component index
        (0..k-1). Used only when the features changed.
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
            raise ValueError(f"match_segments: max_id_used ({max_id_used}) is smaller than the previous run's "
                             f"largest segment id ({int(previous.segment_ids.max())})")
        if comparable(previous, current):
            aligned = current.reordered(previous.feature_names)
            distances = bhattacharyya_matrix(previous.means, previous.covariances,
                                             aligned.means, aligned.covariances)
            method, pairs = "bhattacharyya", _assign(distances, max_distance)
        elif overlap is not None:
            prev_seg = np.asarray(overlap[0], dtype=np.int64)
            cur_comp = np.asarray(overlap[1], dtype=np.int64)
            if prev_seg.shape != cur_comp.shape:
                raise ValueError("match_segments: the two overlap arrays must have the same length")
            C = _overlap_counts(prev_seg, cur_comp, previous.segment_ids, k).astype(np.float64)
            union = C.sum(axis=1, keepdims=True) + C.sum(axis=0, keepdims=True) - C
            jaccard = np.divide(C, union, out=np.zeros_like(C), where=union > 0)
            distances = 1.0 - jaccard
            method, pairs = "customer_overlap", _assign(distances, 1.0 - min_jaccard)
        else:
            method, pairs, distances = "none", [], np.ones((previous.n_segments, k))
    ids = np.zeros(k, dtype=np.int64)
    previous_index = np.full(k, -1, dtype=np.int64)
    for r, c in pairs:
        ids[c] = previous.segment_ids[r]
        previous_index[c] = r
    unmatched = _canonical_order(current, np.flatnonzero(previous_index < 0))
    ids[unmatched] = max_id_used + 1 + np.arange(unmatched.size)
    kept = tuple(sorted(int(v) for v in ids[previous_index >= 0]))
    retired = () if previous is None else tuple(sorted(set(previous.segment_ids.tolist()) - set(kept)))
    return SegmentMatch(
        segment_ids=ids, previous_index=previous_index, kept_ids=kept,
        new_ids=tuple(sorted(int(v) for v in ids[unmatched])), retired_ids=retired,
        distances=distances if method in ("bhattacharyya", "customer_overlap") else np.zeros((0, k)),
        method=method, max_id_used=max(max_id_used, int(ids.max())))


# --------------------------------------------------------------------------- customers of two runs
@dataclass(frozen=True, eq=False)
class CustomerOverlap:
    """Customers present in both runs, aligned.

    Attributes
    ----------
    customer_ids : ndarray of shape (m,), str
    previous_segments, current_segments : ndarray of shape (m,), int64
    entered : int
        Customers only in the current run.
    left : int
        Customers only in the previous run.
    """

    customer_ids: np.ndarray
    previous_segments: np.ndarray
    current_segments: np.ndarray
    entered: int
    left: int


def customer_overlap(previous_customers: Sequence[Any] | np.ndarray, previous_segments: Sequence[int] | np.ndarray,
                     current_customers: Sequence[Any] | np.ndarray, current_segments: Sequence[int] | np.ndarray
                     ) -> CustomerOverlap:
    """Align two runs' assignments on the customers present in both (ids compared as text)."""
    pc = np.asarray(previous_customers).astype(str)
    cc = np.asarray(current_customers).astype(str)
    ps = np.asarray(previous_segments, dtype=np.int64)
    cs = np.asarray(current_segments, dtype=np.int64)
    for name, ids, seg in (("previous", pc, ps), ("current", cc, cs)):
        if ids.shape != seg.shape:
            raise ValueError(f"customer_overlap: {name} customers and segments differ in length ({ids.size} vs {seg.size})")
        if np.unique(ids).size != ids.size:
            raise ValueError(f"customer_overlap: {name} customer ids are not unique")
    common, ip, ic = np.intersect1d(pc, cc, assume_unique=True, return_indices=True)
    return CustomerOverlap(customer_ids=common, previous_segments=ps[ip], current_segments=cs[ic],
                           entered=int(cc.size - common.size), left=int(pc.size - common.size))


def migration_table(previous_ids: Sequence[int] | np.ndarray, current_ids: Sequence[int] | np.ndarray) -> pd.DataFrame:
    """Customers per (previous segment, current segment), stayers included, for customers in both runs.

    Parameters
    ----------
    previous_ids, current_ids : arrays of shape (m,)
        Aligned segment ids of the same customers in the previous and the current run.

    Returns
    -------
    DataFrame with int64 columns ``from_segment``, ``to_segment``, ``customers`` (> 0 only),
    sorted by ``from_segment``, ``to_segment``; ``customers`` sums to m.
    """
    p = np.asarray(previous_ids, dtype=np.int64).reshape(-1)
    c = np.asarray(current_ids, dtype=np.int64).reshape(-1)
    if p.shape != c.shape:
        raise ValueError(f"migration_table: previous_ids and current_ids differ in length ({p.size} vs {c.size})")
    if p.size == 0:
        return pd.DataFrame({"from_segment": np.zeros(0, np.int64), "to_segment": np.zeros(0, np.int64),
                             "customers": np.zeros(0, np.int64)})
    pairs, counts = np.unique(np.stack([p, c], axis=1), axis=0, return_counts=True)
    return pd.DataFrame({"from_segment": pairs[:, 0].astype(np.int64), "to_segment": pairs[:, 1].astype(np.int64),
                         "customers": counts.astype(np.int64)})


def moved_share(previous_ids: Sequence[int] | np.ndarray, current_ids: Sequence[int] | np.ndarray) -> float:
    """Share of the customers in both runs whose segment id changed (NaN when there are none)."""
    p = np.asarray(previous_ids, dtype=np.int64)
    c = np.asarray(current_ids, dtype=np.int64)
    if p.shape != c.shape:
        raise ValueError("moved_share: previous_ids and current_ids differ in length")
    return float(np.mean(p != c)) if p.size else float("nan")


def hold_segments(components: np.ndarray, probabilities: np.ndarray, previous_components: np.ndarray,
                  hold_odds: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep each customer in last run's segment unless the model now favours another by more than
    ``hold_odds`` to 1.

    A customer whose membership probabilities are 0.45 / 0.55 has not changed segment in any sense
    an analyst acts on; flipping them on every refit is noise. The rule is hysteresis on the
    posterior odds: the customer moves only when their most probable segment is more than
    ``hold_odds`` times as probable as the segment they were in (the segment must still exist).

    Parameters
    ----------
    components : ndarray of shape (n,), int
        Each customer's most probable component (0..k-1).
    probabilities : ndarray of shape (n, k)
        Membership probabilities.
    previous_components : ndarray of shape (n,), int
        The component that carries the customer's previous segment id, or -1 (new customer, or
        their segment was retired).
    hold_odds : float >= 1
        1 keeps nothing: every customer takes their most probable segment.

    Returns
    -------
    components : ndarray of shape (n,), int64
        The segment each customer is given.
    held : ndarray of shape (n,), bool
        Customers kept in their previous segment although another is more probable.
    """
    components = np.asarray(components, dtype=np.int64)
    previous_components = np.asarray(previous_components, dtype=np.int64)
    if not hold_odds >= 1.0:
        raise ValueError(f"hold_odds must be at least 1, got {hold_odds!r}")
    rows = np.flatnonzero((previous_components >= 0) & (previous_components != components))
    p = np.asarray(probabilities, dtype=np.float64)
    # Compared as products, not ratios: a previous segment's probability may underflow to 0.
    keep = p[rows, previous_components[rows]] * hold_odds >= p[rows, components[rows]]
    held = np.zeros(components.shape, dtype=bool)
    held[rows[keep]] = True
    return np.where(held, previous_components, components), held


# --------------------------------------------------------------------------- MONIC transitions
@dataclass(frozen=True)
class TransitionThresholds:
    """MONIC thresholds (Spiliopoulou et al., KDD 2006), as shares of customers.

    tau_match : float, default 0.5
        A previous segment survives into (or is absorbed by) the current segment that receives at
        least this share of its customers.
    tau_split : float, default 0.25
        Smallest share a part must receive to count as a piece of a split.
    """

    tau_match: float = DEFAULT_TAU_MATCH
    tau_split: float = DEFAULT_TAU_SPLIT

    def __post_init__(self) -> None:
        if not 0.0 < self.tau_split <= self.tau_match <= 1.0:
            raise ValueError(f"TransitionThresholds: need 0 < tau_split <= tau_match <= 1, "
                             f"got tau_split={self.tau_split}, tau_match={self.tau_match}")


@dataclass(frozen=True)
class Transition:
    """One external transition between the previous and the current run's segments.

    kind : one of ``survived``, ``split``, ``merged``, ``disappeared``, ``emerged``
    from_ids, to_ids : tuple of int (sorted; empty on the missing side)
    share : float, see :func:`classify_transitions`
    """

    kind: str
    from_ids: tuple[int, ...]
    to_ids: tuple[int, ...]
    share: float

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "from_ids": list(self.from_ids), "to_ids": list(self.to_ids),
                "share": self.share}


def classify_transitions(previous_ids: Sequence[int] | np.ndarray, current_ids: Sequence[int] | np.ndarray,
                         thresholds: TransitionThresholds = TransitionThresholds(), *,
                         previous_counts: Mapping[int, int] | None = None,
                         current_counts: Mapping[int, int] | None = None) -> list[Transition]:
    """Classify how the previous run's segments became the current ones, from shared customers (MONIC).

    With ``P[X, Y]`` the share of previous segment X's customers that are now in current segment
    Y, and the thresholds ``tau_match`` (0.5) and ``tau_split`` (0.25):

    - **survived** X -> Y: Y is the only current segment with ``P[X, Y] >= tau_match`` and no other
      previous segment reaches ``tau_match`` into Y. share = ``P[X, Y]``.
    - **merged** {X1, X2, ...} -> Y: two or more previous segments each send ``>= tau_match`` of
      their customers to Y (MONIC's absorption). share = the share of those segments' customers
      that went to Y.
    - **split** X -> {Y1, Y2, ...}: no single current segment takes ``tau_match`` of X, but two or
      more take ``>= tau_split`` each and together ``>= tau_match``. share = their sum.
    - **disappeared** X -> (): none of the above (in particular when no current segment takes
      ``tau_split`` of X, or most of X's customers left). share = the largest ``P[X, Y]``.
    - **emerged** () -> Y: Y is the target of no survival, merge or split; it is formed mostly of
      new customers or of small pieces of previous segments (each previous segment then typically
      contributes less than ``tau_split`` of Y's customers). share = the largest share of Y's
      customers that comes from one previous segment.

    As in MONIC, a segment's share is taken of **all** its customers in its own run
    (``previous_counts`` / ``current_counts``): customers who left count against survival, so a
    segment whose customers mostly left has disappeared even if its few remaining customers moved
    together. Without the counts, shares are taken of the customers in both runs.

    Parameters
    ----------
    previous_ids, current_ids : arrays of shape (m,)
        Aligned segment labels of the customers in both runs (any integer labels).
    thresholds : TransitionThresholds
    previous_counts, current_counts : mapping of segment id to customers, optional
        Every segment of each run with its number of customers in that run (segments without
        shared customers are then classified too). Each must be at least the shared customers.

    Returns
    -------
    list of Transition
        Every previous segment appears in exactly one survived, merged, split or disappeared row;
        every current segment is the target of at least one row or is emerged. Rows follow the
        previous ids, emerged rows last.
    """
    p = np.asarray(previous_ids, dtype=np.int64).reshape(-1)
    c = np.asarray(current_ids, dtype=np.int64).reshape(-1)
    if p.shape != c.shape:
        raise ValueError("classify_transitions: previous_ids and current_ids differ in length")
    prev = np.unique(np.concatenate([p, np.fromiter((previous_counts or {}).keys(), np.int64)]))
    cur = np.unique(np.concatenate([c, np.fromiter((current_counts or {}).keys(), np.int64)]))
    C = np.zeros((prev.size, cur.size), dtype=np.float64)
    np.add.at(C, (np.searchsorted(prev, p), np.searchsorted(cur, c)), 1.0)

    def totals(shared: np.ndarray, ids: np.ndarray, counts: Mapping[int, int] | None, side: str) -> np.ndarray:
        if counts is None:
            return shared
        given = np.array([float(counts.get(int(s), 0)) for s in ids])
        if np.any(given < shared):
            bad = int(ids[np.argmax(given < shared)])
            raise ValueError(f"classify_transitions: {side}_counts[{bad}] is smaller than its customers in both runs")
        return given

    row_total = totals(C.sum(axis=1), prev, previous_counts, "previous")
    col_total = totals(C.sum(axis=0), cur, current_counts, "current")
    P = np.divide(C, row_total[:, None], out=np.zeros_like(C), where=row_total[:, None] > 0)
    Q = np.divide(C, col_total[None, :], out=np.zeros_like(C), where=col_total[None, :] > 0)
    tm, ts = thresholds.tau_match, thresholds.tau_split

    strong = P >= tm
    # A previous segment with two targets at >= tau_match (only possible at an exact 50/50 with
    # tau_match = 0.5) is a split, not a survival into an arbitrary one of them.
    single = strong.sum(axis=1) == 1
    target = np.where(single, P.argmax(axis=1), -1)
    absorbers = {j: np.flatnonzero(target == j) for j in range(cur.size)}

    rows: list[tuple[int, Transition]] = []
    reached = np.zeros(cur.size, dtype=bool)
    for i in range(prev.size):
        if target[i] >= 0:
            j = int(target[i])
            group = absorbers[j]
            reached[j] = True
            if group.size == 1:
                rows.append((i, Transition("survived", (int(prev[i]),), (int(cur[j]),), float(P[i, j]))))
            elif i == group[0]:
                share = float(C[group, j].sum() / row_total[group].sum())
                rows.append((i, Transition("merged", tuple(int(v) for v in prev[group]), (int(cur[j]),), share)))
            continue
        parts = np.flatnonzero(P[i] >= ts)
        if parts.size >= 2 and P[i, parts].sum() >= tm:
            reached[parts] = True
            rows.append((i, Transition("split", (int(prev[i]),), tuple(int(v) for v in cur[parts]),
                                       float(P[i, parts].sum()))))
        else:
            rows.append((i, Transition("disappeared", (int(prev[i]),), (), float(P[i].max()) if P.shape[1] else 0.0)))
    out = [t for _, t in sorted(rows, key=lambda r: r[0])]
    for j in np.flatnonzero(~reached):
        out.append(Transition("emerged", (), (int(cur[j]),), float(Q[:, j].max()) if Q.shape[0] else 0.0))
    return out


def transition_table(transitions: Sequence[Transition]) -> pd.DataFrame:
    """Transitions as a DataFrame: ``kind``, ``from_ids`` (list), ``to_ids`` (list), ``share``."""
    return pd.DataFrame([t.as_dict() for t in transitions], columns=["kind", "from_ids", "to_ids", "share"])


# --------------------------------------------------------------------------- mean shift and flags
_SHIFT_COLUMNS = ["segment_id", "feature_index", "feature", "transform", "unit", "previous_mean", "current_mean",
                  "shift", "shift_sd", "previous_centre", "current_centre", "distance_sd", "bhattacharyya"]


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
    bd = np.array([bhattacharyya(previous.means[a], previous.covariances[a], cur.means[b], cur.covariances[b])
                   for a, b in zip(ip, ic)])
    n = len(shared)
    return pd.DataFrame({
        "segment_id": np.repeat(np.array(shared, dtype=np.int64), d),
        "feature_index": np.tile(np.arange(1, d + 1, dtype=np.int64), n),
        "feature": np.tile(np.array(previous.feature_names, dtype=object), n),
        "transform": np.tile(np.array(previous.transforms, dtype=object), n),
        "unit": np.tile(np.array(previous.feature_units, dtype=object), n),
        "previous_mean": m0.ravel(), "current_mean": m1.ravel(), "shift": shift.ravel(),
        "shift_sd": (shift / sd).ravel(),
        "previous_centre": previous.centres()[ip].ravel(), "current_centre": cur.centres()[ic].ravel(),
        "distance_sd": np.repeat(distance, d), "bhattacharyya": np.repeat(bd, d),
    })


def drift_flags(previous: TrackedModel | None, current: TrackedModel, moved: float, *,
                moved_threshold: float = DEFAULT_MOVED_THRESHOLD) -> list[str]:
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
            return ", ".join(f"log1p({n})" if t == "log1p" else n for n, t in zip(m.feature_names, m.transforms))
        flags.append(f"features changed ({show(previous)} -> {show(current)}); ids matched by customer overlap")
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
        Segment id of each of them.
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
    customer_segments: np.ndarray
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


def compare_runs(previous: TrackedModel | None, current: TrackedModel, *, max_id_used: int,
                 current_customers: Sequence[Any] | np.ndarray, current_components: Sequence[int] | np.ndarray,
                 previous_customers: Sequence[Any] | np.ndarray | None = None,
                 previous_segments: Sequence[int] | np.ndarray | None = None,
                 max_distance: float = DEFAULT_MAX_DISTANCE, min_jaccard: float = DEFAULT_MIN_JACCARD,
                 thresholds: TransitionThresholds = TransitionThresholds(),
                 moved_threshold: float = DEFAULT_MOVED_THRESHOLD,
                 probabilities: np.ndarray | None = None, hold_odds: float = 1.0) -> RunDrift:
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
    probabilities : ndarray of shape (n, k), optional
        This run's membership probabilities, needed for ``hold_odds``.
    hold_odds : float, default 1
        Customers in both runs keep their previous segment (when it survived with its id) unless
        their most probable segment is more than this many times as probable
        (:func:`hold_segments`); 1 gives every customer their most probable segment. Ids are
        matched on the most probable segments; migration, transitions and the moved share
        describe the segments given.
    """
    components = np.asarray(current_components, dtype=np.int64).reshape(-1)
    if np.asarray(current_customers).shape != components.shape:
        raise ValueError("compare_runs: current_customers and current_components differ in length")
    if components.size and (components.min() < 0 or components.max() >= current.n_segments):
        raise ValueError(f"compare_runs: current_components must lie in 0..{current.n_segments - 1}")
    overlap = None
    if previous is not None and previous_customers is not None and previous_segments is not None:
        overlap = customer_overlap(previous_customers, previous_segments, current_customers, components)
    match = match_segments(
        previous, current, max_id_used, max_distance=max_distance, min_jaccard=min_jaccard,
        overlap=None if overlap is None else (overlap.previous_segments, overlap.current_segments))
    model = current.with_ids(match.segment_ids)
    held = None
    if overlap is not None and probabilities is not None and hold_odds > 1.0:
        components, held = _held_components(components, probabilities, hold_odds, match.segment_ids,
                                            previous_customers, previous_segments, current_customers)
        overlap = customer_overlap(previous_customers, previous_segments, current_customers, components)
    if overlap is not None:
        overlap = replace(overlap, current_segments=match.segment_ids[overlap.current_segments])
        migration = migration_table(overlap.previous_segments, overlap.current_segments)
        prev_all = np.asarray(previous_segments, dtype=np.int64)
        transitions = classify_transitions(
            overlap.previous_segments, overlap.current_segments, thresholds,
            previous_counts={int(s): int(np.sum(prev_all == s)) for s in previous.segment_ids},
            current_counts={int(s): int(n) for s, n in zip(match.segment_ids,
                                                           np.bincount(components, minlength=current.n_segments))})
        moved = moved_share(overlap.previous_segments, overlap.current_segments)
    else:
        migration, transitions, moved = migration_table([], []), [], float("nan")
    shifts = mean_shift(previous, model) if previous is not None else mean_shift(model, model).iloc[0:0]
    return RunDrift(match=match, model=model, customer_ids=np.asarray(current_customers).astype(str),
                    customer_segments=match.segment_ids[components], customer_components=components,
                    previous=previous, overlap=overlap, migration=migration, transitions=transitions,
                    moved_share=moved, shifts=shifts,
                    flags=drift_flags(previous, model, moved, moved_threshold=moved_threshold),
                    moved_threshold=moved_threshold, max_distance=max_distance,
                    held=held, hold_odds=float(hold_odds) if held is not None else 1.0)


def _held_components(components: np.ndarray, probabilities: np.ndarray, hold_odds: float,
                     segment_ids: np.ndarray, previous_customers, previous_segments,
                     current_customers) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hold_segments` for this run's customers, given the previous run's assignments."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (components.size, segment_ids.size):
        raise ValueError(f"compare_runs: probabilities must have shape ({components.size}, {segment_ids.size}), "
                         f"got {p.shape}")
    _, ip, ic = np.intersect1d(np.asarray(previous_customers).astype(str), np.asarray(current_customers).astype(str),
                               assume_unique=True, return_indices=True)
    # Component carrying each previous id in this run (-1: retired, so there is nothing to keep).
    ids = np.asarray(segment_ids, dtype=np.int64)
    order = np.argsort(ids)
    previous_ids = np.asarray(previous_segments, dtype=np.int64)[ip]
    at = np.minimum(np.searchsorted(ids[order], previous_ids), ids.size - 1)
    found = ids[order][at] == previous_ids
    previous_components = np.full(components.size, -1, dtype=np.int64)
    previous_components[ic] = np.where(found, order[at], -1)
    return hold_segments(components, p, previous_components, hold_odds)


def drift_markdown(drift: RunDrift) -> str:
    """Markdown for the run's Prefect artifact: the summary, the flags and the migration table."""
    run = drift.previous_run_id
    lines = [f"### What changed since run {run}" if drift.previous is not None else "### Segment ids", ""]
    lines += [f"- {line}" for line in what_changed(drift).splitlines()]
    if drift.flags:
        lines += ["", "**Flags:** " + "; ".join(drift.flags)]
    if not drift.migration.empty:
        lines += ["", "| from segment | to segment | customers |", "|---:|---:|---:|"]
        lines += [f"| {int(r.from_segment)} | {int(r.to_segment)} | {int(r.customers):,} |"
                  for r in drift.migration.itertuples()]
    return "\n".join(lines) + "\n"


def _ids(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def what_changed(drift: RunDrift) -> str:
    """A short plain-text summary (3 to 8 lines) of a :class:`RunDrift`."""
    m, prev, cur = drift.match, drift.previous, drift.model
    if prev is None:
        return "\n".join([
            "First tracked run: no previous run to compare with.",
            f"{cur.n_segments} segments, {cur.covariance_type} covariance; ids {_ids(sorted(m.new_ids))} given.",
            "Later runs keep these ids for the segments they continue.",
            *(["Flags: " + "; ".join(drift.flags) + "."] if drift.flags else []),
        ])
    run = f"run {prev.run_id}" if prev.run_id is not None else "the previous run"
    lines = []
    if drift.overlap is not None:
        o = drift.overlap
        moved = "–" if not np.isfinite(drift.moved_share) else f"{drift.moved_share:.1%}"
        lines.append(f"Since {run}: {o.customer_ids.size:,} customers in both runs ({o.entered:,} new, "
                     f"{o.left:,} gone); {moved} of them changed segment.")
        if drift.held is not None:
            lines.append(f"{drift.held_count:,} customers kept their segment although another is now more "
                         f"probable, by no more than {drift.hold_odds:g} to 1 (tracking.hold_odds).")
    else:
        lines.append(f"Since {run}: no customer assignments to compare.")
    how = {"bhattacharyya": f"matched by Bhattacharyya distance <= {_fmt_num(drift.max_distance)}",
           "customer_overlap": "matched by customer overlap (features changed)",
           "none": "features changed and no shared customers: all ids new",
           "first_run": ""}[m.method]
    lines.append(f"Segments {prev.n_segments} -> {cur.n_segments} ({prev.covariance_type} -> {cur.covariance_type}), "
                 f"{how}: kept {_ids(m.kept_ids)}; new {_ids(m.new_ids)}; retired {_ids(m.retired_ids)}.")
    changes = [t for t in drift.transitions if t.kind != "survived"]
    if drift.transitions and not changes:
        lines.append(f"All {len(drift.transitions)} previous segments survived (MONIC).")
    elif changes:
        words = []
        for t in changes[:4]:
            if t.kind == "split":
                words.append(f"{t.from_ids[0]} split into {_ids(t.to_ids)} ({t.share:.0%})")
            elif t.kind == "merged":
                words.append(f"{_ids(t.from_ids)} merged into {t.to_ids[0]}")
            elif t.kind == "disappeared":
                words.append(f"{t.from_ids[0]} disappeared")
            else:
                words.append(f"{t.to_ids[0]} emerged")
        more = f" (+{len(changes) - 4} more)" if len(changes) > 4 else ""
        lines.append("Transitions: " + "; ".join(words) + more + ".")
    if not drift.shifts.empty:
        per = drift.shifts.loc[drift.shifts["shift_sd"].abs().idxmax()]
        unit = f" {per['unit']}" if per["unit"] else ""
        lines.append(f"Largest move: segment {int(per['segment_id'])} moved {per['distance_sd']:.2f} of its standard "
                     f"deviations; {per['feature']} centre {_fmt_num(per['previous_centre'])} -> "
                     f"{_fmt_num(per['current_centre'])}{unit}.")
    flows = drift.migration[drift.migration["from_segment"] != drift.migration["to_segment"]]
    if not flows.empty:
        top = flows.sort_values(["customers", "from_segment", "to_segment"], ascending=[False, True, True]).head(3)
        lines.append("Largest flows: " + "; ".join(f"{int(r.from_segment)} -> {int(r.to_segment)}: {int(r.customers):,}"
                                                   for r in top.itertuples()) + ".")
    lines.append("Flags: " + "; ".join(drift.flags) + "." if drift.flags else "No drift flags.")
    return "\n".join(lines)


def _fmt_num(value: float) -> str:
    value = float(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
