"""Models in the common space: one run's mixture in the features after transform, before standardisation.

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
both runs every segment gets a new id (see :mod:`tracking.ids`).

Also the previous run's model as a warm start for this run's EM (:func:`warm_start_init`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from constants import TRANSFORMS
from gmm_engine import ALL_COVARIANCE_TYPES, covariance_layout


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
            raise ValueError(
                f"TrackedModel.segment_ids: expected {k} distinct ids, got {self.segment_ids.tolist()}"
            )
        if np.any(self.segment_ids < 1):
            raise ValueError("TrackedModel.segment_ids: ids must be >= 1")
        for name in ("feature_names", "transforms", "feature_units"):
            if len(getattr(self, name)) != d:
                raise ValueError(
                    f"TrackedModel.{name}: expected {d} entries (one per feature), "
                    f"got {len(getattr(self, name))}"
                )
        if len(set(self.feature_names)) != d:
            raise ValueError(
                f"TrackedModel.feature_names: names must be unique, got {list(self.feature_names)}"
            )
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
            self,
            means=self.means[:, order],
            covariances=self.covariances[:, order][:, :, order],
            feature_names=tuple(names),
            transforms=tuple(self.transforms[j] for j in order),
            feature_units=tuple(self.feature_units[j] for j in order),
        )

    def centres(self) -> np.ndarray:
        """Component means mapped back to original units, shape (k, d) (``expm1`` for log1p)."""
        out = self.means.copy()
        log1p = np.array([t == "log1p" for t in self.transforms])
        out[:, log1p] = np.expm1(out[:, log1p])
        return out


def common_model(
    weights: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    scaler_mean: np.ndarray,
    scaler_scale: np.ndarray,
    *,
    feature_names: Sequence[str],
    transforms: Sequence[str],
    covariance_type: str,
    feature_units: Sequence[str] = (),
    segment_ids: Sequence[int] | np.ndarray | None = None,
    run_id: int | str | None = None,
) -> TrackedModel:
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
        raise ValueError(
            f"common_model: scaler_mean and scaler_scale need shape ({d},), "
            f"got {mean.shape} and {scale.shape}"
        )
    if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        raise ValueError("common_model: every scaler_scale must be finite and > 0")
    cov = np.asarray(covariances, dtype=np.float64)
    if cov.size != k * d * d:
        raise ValueError(f"common_model: covariances need {k} x {d} x {d} values, got shape {cov.shape}")
    cov = cov.reshape(k, d, d)
    return TrackedModel(
        weights=w,
        means=m * scale + mean,
        covariances=cov * np.outer(scale, scale),
        segment_ids=np.arange(1, k + 1) if segment_ids is None else np.asarray(segment_ids),
        feature_names=tuple(feature_names),
        transforms=tuple(transforms),
        covariance_type=covariance_type,
        feature_units=tuple(feature_units),
        run_id=run_id,
    )


def same_features(
    names_a: Sequence[str], transforms_a: Sequence[str], names_b: Sequence[str], transforms_b: Sequence[str]
) -> bool:
    """True when two runs use the same features with the same transforms (in any order)."""
    return sorted(zip(map(str, names_a), map(str, transforms_a), strict=True)) == sorted(
        zip(map(str, names_b), map(str, transforms_b), strict=True)
    )


def comparable(previous: TrackedModel, current: TrackedModel) -> bool:
    """True when both models live in the same common space: same features, same transforms."""
    return same_features(
        previous.feature_names, previous.transforms, current.feature_names, current.transforms
    )


def warm_start_init(
    previous: TrackedModel,
    scaler_mean: np.ndarray,
    scaler_scale: np.ndarray,
    covariance_type: str,
    *,
    feature_names: Sequence[str],
    transforms: Sequence[str],
) -> dict[str, Any]:
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
        raise ValueError(
            "warm_start_init: the feature set or a transform changed since the previous run; "
            "start EM from scratch"
        )
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
        precisions = 0.5 * (
            precisions + np.swapaxes(precisions, -1, -2)
        )  # exact symmetry for the engine's check
    return {"weights_init": weights, "means_init": means, "precisions_init": precisions}
