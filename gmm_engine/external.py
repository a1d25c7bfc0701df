"""One partition's share of the EM totals, for data that is not one in-memory array.

A partition (a Parquet file on a worker, a block of a larger file) is a numpy array of complete
rows. :func:`partition_statistics` computes its share of the E-step totals for given parameters;
the shares add up with ``+``, and :meth:`GaussianMixture.refit_from_statistics
<gmm_engine.GaussianMixture.refit_from_statistics>` runs the M-steps on the sums. Only
``k x (1 + d + q)`` numbers (``q`` second-order terms of the covariance type), the
log-likelihood and the weight leave a partition per iteration. numpy and the engine only, so a
worker needs nothing else.
"""

from __future__ import annotations

import numpy as np

from . import statistics as st
from .covariance import COVARIANCE_MODELS
from .statistics import DataMoments, MixtureParameters, ScoreTotals, SufficientStatistics

__all__ = [
    "DataMoments",
    "MixtureParameters",
    "ScoreTotals",
    "SufficientStatistics",
    "partition_moments",
    "partition_scores",
    "partition_statistics",
]


def _checked(X, shift, sample_weight) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    X = np.asarray(X, dtype=np.float64)
    shift = np.asarray(shift, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"a partition must be a 2-D array (rows, features), got {X.ndim} dimension(s)")
    if shift.shape != (X.shape[1],):
        raise ValueError(f"the partition has {X.shape[1]} features, the shift {shift.shape}")
    finite = np.isfinite(X)
    if not finite.all():
        bad = ~finite.all(axis=1)
        kind = "missing values (NaN)" if np.isnan(X).any() else "infinite values"
        raise ValueError(
            f"the partition has {kind} in {int(bad.sum())} of {X.shape[0]} rows (first: row "
            f"{int(np.argmax(bad))}); EM on partitions takes complete rows only"
        )
    w = None
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (X.shape[0],) or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"sample_weight must be {X.shape[0]} finite non-negative numbers")
    return X, shift, w


def partition_statistics(
    X,
    covariance_type: str,
    params: MixtureParameters,
    shift,
    sample_weight=None,
) -> SufficientStatistics:
    """E-step on one partition ``X`` (n, d) of complete rows: its share of the M-step totals.

    ``params`` and ``shift`` are what :meth:`GaussianMixture.refit_from_statistics` passes to its
    ``statistics`` callable. An empty partition gives zeros. Raises ValueError on NaN or infinity.
    """
    X, shift, w = _checked(X, shift, sample_weight)
    model = COVARIANCE_MODELS[covariance_type]
    k, d = params.means_c.shape
    if X.shape[1] != d:
        raise ValueError(f"the partition has {X.shape[1]} features, the model {d}")
    if X.shape[0] == 0:
        return SufficientStatistics(np.zeros((k, 1 + d + model.n_second_order(d))), 0.0, 0.0)
    return st.em_statistics(model, st.centred_transposed(X, shift), w, params)


def partition_moments(X, shift, sample_weight=None) -> DataMoments:
    """Total weight, first (d,) and second (d, d) moments of one partition centred at ``shift``."""
    X, shift, w = _checked(X, shift, sample_weight)
    d = X.shape[1]
    if X.shape[0] == 0:
        return DataMoments(0.0, np.zeros(d), np.zeros((d, d)))
    XcT = st.centred_transposed(X, shift)
    total = float(X.shape[0] if w is None else w.sum())
    first = XcT.sum(axis=1) if w is None else XcT @ w
    return DataMoments(total, first, st.data_second_moment(XcT, w))


def partition_scores(model, X, sample_weight=None) -> ScoreTotals:
    """A fitted :class:`~gmm_engine.GaussianMixture`'s log-likelihood and hard-assignment entropy
    on one partition ``X`` of complete rows; summed over partitions,
    :func:`gmm_engine.selection.criteria_from_totals` turns them into BIC, AIC and ICL."""
    X = np.asarray(X, dtype=np.float64)
    X, _, w = _checked(X, np.zeros(X.shape[-1] if X.ndim else 0), sample_weight)
    if X.shape[0] == 0:
        return ScoreTotals(0.0, 0.0, 0.0)
    return model._score_totals(model._check_X_predict(X), w)
