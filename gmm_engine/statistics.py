"""Chunked E-step and the sufficient statistics an M-step needs, as sums over chunks of samples.

``chunk_statistics`` is the unit of work: it takes one chunk of samples and the current
parameters and returns additive totals (``SufficientStatistics``). In-memory fitting sums it over
chunks of one array; a distributed engine can sum it over partitions on workers. Memory stays at
a few chunk-sized buffers whatever the number of samples.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .covariance import CovarianceModel

# Per-chunk arrays are laid out (features, samples): reductions over the k components then run
# over k contiguous rows, which is several times faster than numpy's reduction along axis 1.
# Target size of one chunk's design matrix: about 4 MiB, large enough for BLAS to run at speed,
# small enough to keep memory flat and leave room for one chunk per thread.
_CHUNK_BYTES = 4 * 2**20


def chunk_rows(n_columns: int) -> int:
    """Samples per chunk so that a float64 (n_columns, samples) buffer is about 4 MiB."""
    return max(1024, _CHUNK_BYTES // (8 * max(n_columns, 1)))


def default_threads() -> int:
    """Chunks processed at once: numpy releases the GIL in every kernel used per chunk."""
    return max(1, min(2, os.cpu_count() or 1))


@dataclass
class MixtureParameters:
    """Parameters in centred coordinates (``x - shift``), the form the E-step uses.

    ``rounding_variance`` (d,), when given, is the variance of each feature's rounding cell
    (``resolution**2 / 12``): every component's log-density is then averaged over the cell a
    recorded value stands for, which subtracts ``0.5 * sum_j P_jj * rounding_variance_j`` (``P`` the
    component's precision) from it. The M-step that maximises this objective adds
    ``rounding_variance`` to the covariance diagonal, so EM ascends it exactly.
    """

    log_weights: np.ndarray  # (k,)
    means_c: np.ndarray  # (k, d)
    prec_chol: np.ndarray  # shape depends on the covariance type
    rounding_variance: np.ndarray | None = None  # (d,)


@dataclass
class SufficientStatistics:
    """Additive totals of one or more chunks.

    Attributes
    ----------
    sums : ndarray of shape (n_components, 1 + n_features + q)
        ``R.T @ Phi`` with responsibilities ``R`` (n, k) already multiplied by the sample weights:
        column 0 is the summed responsibility, then the weighted sums of ``x`` and of the
        second-order terms.
    log_likelihood : float
        Weighted sum of the per-sample mixture log-density.
    total_weight : float
        Sum of the sample weights.
    """

    sums: np.ndarray
    log_likelihood: float
    total_weight: float

    def __add__(self, other: SufficientStatistics) -> SufficientStatistics:
        return SufficientStatistics(
            self.sums + other.sums,
            self.log_likelihood + other.log_likelihood,
            self.total_weight + other.total_weight,
        )


@dataclass
class DataMoments:
    """Additive totals of the data alone, for samples centred at a shift: total weight,
    ``sum_i w_i x_i`` (d,) and ``sum_i w_i x_i x_i^T`` (d, d). What the pooled-scatter covariance
    types and the covariance prior need besides :class:`SufficientStatistics`."""

    total_weight: float
    first: np.ndarray
    second: np.ndarray

    def __add__(self, other: DataMoments) -> DataMoments:
        return DataMoments(
            self.total_weight + other.total_weight, self.first + other.first, self.second + other.second
        )

    def scatter_about_mean(self) -> np.ndarray:
        """``sum_i w_i (x_i - mean)(x_i - mean)^T``: the second moment about the data's own mean."""
        return self.second - np.outer(self.first, self.first) / self.total_weight


@dataclass
class ScoreTotals:
    """Additive totals a fitted model's criteria are made of, over one or more partitions.

    Attributes
    ----------
    log_likelihood : float
        Weighted sum of the per-sample mixture log-density.
    entropy : float
        ``-sum_i w_i log max_k tau_ik``: the entropy of the hard assignment that ICL adds.
    total_weight : float
        Sum of the sample weights.
    """

    log_likelihood: float
    entropy: float
    total_weight: float

    def __add__(self, other: ScoreTotals) -> ScoreTotals:
        return ScoreTotals(
            self.log_likelihood + other.log_likelihood,
            self.entropy + other.entropy,
            self.total_weight + other.total_weight,
        )


def design_matrix(model: CovarianceModel, XcT: np.ndarray) -> np.ndarray:
    """``Phi.T``: rows ``[1, x, q(x)]`` stacked as (p, n) for the centred samples ``XcT`` (d, n)."""
    d, n = XcT.shape
    p = 1 + d + model.n_second_order(d)
    phiT = np.empty((p, n), dtype=np.float64)
    phiT[0] = 1.0
    phiT[1 : 1 + d] = XcT
    model.fill_second_order(XcT, phiT[1 + d :])
    return phiT


def coefficient_matrix(model: CovarianceModel, params: MixtureParameters) -> np.ndarray:
    """``W`` of shape (p, k) with ``W.T @ Phi.T`` = weighted log-probabilities (k, n), apart
    from the per-sample shared term of ``tied``."""
    const, linear, second = model.log_prob_coefficients(params.means_c, params.prec_chol)
    if params.rounding_variance is not None:
        k, d = params.means_c.shape
        const = const - 0.5 * (model.precision_diagonal(params.prec_chol, k, d) @ params.rounding_variance)
    return np.vstack([(const + params.log_weights)[None, :], linear, second])


def log_normalise_(LT: np.ndarray) -> np.ndarray:
    """Turn weighted log-probabilities (k, n) into responsibilities in place; return the
    per-sample log-density (n,).

    A max-shifted logsumexp over the components: several times faster than scipy's.
    """
    m = LT.max(axis=0)
    LT -= m
    np.exp(LT, out=LT)
    s = LT.sum(axis=0)
    LT /= s
    np.log(s, out=s)
    s += m
    return s


def _centred_T(X_chunk: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((X_chunk - shift).T)


def _weighted_log_prob(model, phiT, XcT, W, prec_chol) -> np.ndarray:
    LT = W.T @ phiT
    shared = model.shared_term(XcT, prec_chol)
    if shared is not None:
        LT += shared
    return LT


def chunk_statistics(
    model: CovarianceModel,
    XcT: np.ndarray,
    weight_chunk: np.ndarray | None,
    params: MixtureParameters,
    W: np.ndarray | None = None,
) -> SufficientStatistics:
    """E-step on one chunk of centred samples ``XcT`` (d, n) and its share of the M-step totals."""
    if W is None:
        W = coefficient_matrix(model, params)
    phiT = design_matrix(model, XcT)
    RT = _weighted_log_prob(model, phiT, XcT, W, params.prec_chol)
    log_density = log_normalise_(RT)
    if weight_chunk is None:
        ll = float(log_density.sum())
        total = float(XcT.shape[1])
    else:
        ll = float(log_density @ weight_chunk)
        total = float(weight_chunk.sum())
        RT *= weight_chunk
    return SufficientStatistics(RT @ phiT.T, ll, total)


def _chunks(n: int, rows: int) -> list[slice]:
    return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]


def _map_chunks(fn, slices: list[slice], n_threads: int) -> list:
    """``[fn(sl) for sl in slices]``, on up to ``n_threads`` threads, results in chunk order
    (so sums over them are bitwise the same whatever the thread count)."""
    if n_threads <= 1 or len(slices) < 2:
        return [fn(sl) for sl in slices]
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        return list(pool.map(fn, slices))


def _ordered_sum(parts: list):
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def centred_transposed(X: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``(X - shift).T`` as a C-contiguous (d, n) array: the layout EM works in.

    Transposed into a new array first and centred in place, so only one copy of ``X`` is made
    (an explicit copy: for one feature ``X.T`` is already contiguous and would be a view).
    """
    XcT = np.array(X.T, dtype=np.float64, order="C", copy=True)
    XcT -= shift[:, None]
    return XcT


def em_statistics(
    model: CovarianceModel,
    XcT: np.ndarray,
    sample_weight: np.ndarray | None,
    params: MixtureParameters,
    n_threads: int = 1,
) -> SufficientStatistics:
    """Sum of :func:`chunk_statistics` over all chunks of the centred samples ``XcT`` (d, n)."""
    d, n = XcT.shape
    p = 1 + d + model.n_second_order(d)
    W = coefficient_matrix(model, params)

    def one(sl: slice) -> SufficientStatistics:
        w = None if sample_weight is None else sample_weight[sl]
        return chunk_statistics(model, XcT[:, sl], w, params, W)

    return _ordered_sum(_map_chunks(one, _chunks(n, chunk_rows(max(p, W.shape[1]))), n_threads))


def responsibility_statistics(
    model: CovarianceModel,
    XcT: np.ndarray,
    sample_weight: np.ndarray | None,
    resp_for: Callable[[slice], np.ndarray],
) -> np.ndarray:
    """``R.T @ Phi`` for given responsibilities (used to initialise from a partition)."""
    d, n = XcT.shape
    p = 1 + d + model.n_second_order(d)

    def one(sl: slice) -> np.ndarray:
        R = resp_for(sl)
        if sample_weight is not None:
            R = R * sample_weight[sl][:, None]
        return R.T @ design_matrix(model, XcT[:, sl]).T

    return _ordered_sum(_map_chunks(one, _chunks(n, chunk_rows(p)), 1))


def data_second_moment(XcT: np.ndarray, sample_weight: np.ndarray | None) -> np.ndarray:
    """Weighted ``sum_i w_i x_i x_i^T`` of the centred samples ``XcT`` (d, n), chunk by chunk."""
    d, n = XcT.shape

    def one(sl: slice) -> np.ndarray:
        part = XcT[:, sl]
        weighted = part if sample_weight is None else part * sample_weight[sl]
        return weighted @ part.T

    return _ordered_sum(_map_chunks(one, _chunks(n, chunk_rows(d)), 1))


def map_weighted_log_prob(
    model: CovarianceModel,
    X: np.ndarray,
    shift: np.ndarray,
    params: MixtureParameters,
    reduce: Callable[[slice, np.ndarray], None],
    n_threads: int = 1,
) -> None:
    """Call ``reduce(rows, LT)`` for every chunk, ``LT[k, i] = log w_k + log N(x_i | k)``.

    ``reduce`` writes its result for those rows (disjoint per chunk, so threads may run it).
    """
    n, d = X.shape
    p = 1 + d + model.n_second_order(d)
    W = coefficient_matrix(model, params)

    def one(sl: slice) -> None:
        XcT = _centred_T(X[sl], shift)
        phiT = design_matrix(model, XcT)
        reduce(sl, _weighted_log_prob(model, phiT, XcT, W, params.prec_chol))

    _map_chunks(one, _chunks(n, chunk_rows(max(p, W.shape[1]))), n_threads)
