"""EM with values missing at random (Ghahramani & Jordan 1994, "Supervised learning from
incomplete data via an EM approach").

A sample with missing features (NaN) is scored by the marginal density of its observed features:
for a Gaussian that is the sub-vector of the mean and the sub-matrix of the covariance. In the
M-step each component fills the missing part with its conditional expectation given the observed
part, ``mu_m + S_mo S_oo^-1 (x_o - mu_o)``, and adds the conditional covariance
``S_mm - S_mo S_oo^-1 S_om`` to the second moments, so EM ascends the observed-data likelihood.

Rows are grouped by their pattern of missing features; complete rows keep the chunked fast path
of :mod:`gmm_engine.statistics`, and the work here is one pass over each pattern's rows per
component (a Cholesky factor of an observed sub-matrix per pattern and component).

With ``resolution`` the objective averages each component's joint log-density over the observed
values' rounding cells: ``log N_o(x_o) - sum_{a in o} P_aa r_a / 2`` (``P`` the component's
precision, ``r`` the cells' variances); its M-step adds ``r`` only along the observed features,
which here is done by taking ``r`` off the missing features' second moments (the M-step then adds
``r`` to every feature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .covariance import _ILL_DEFINED, LOG_2PI, CovarianceModel
from .statistics import MixtureParameters, SufficientStatistics, log_normalise_


@dataclass(frozen=True)
class MissingPatterns:
    """The rows of a matrix grouped by which features are missing.

    Attributes
    ----------
    complete : ndarray of int
        Rows with every feature observed.
    rows, observed, missing : list of ndarray of int
        Per pattern: its rows, and the indices of the observed and of the missing features.
    """

    complete: np.ndarray
    rows: list[np.ndarray]
    observed: list[np.ndarray]
    missing: list[np.ndarray]

    @property
    def n_incomplete(self) -> int:
        return int(sum(r.size for r in self.rows))


def find_patterns(X: np.ndarray) -> MissingPatterns | None:
    """Group the rows of ``X`` by pattern of NaN; None when no value is missing."""
    nan = np.isnan(X)
    incomplete = nan.any(axis=1)
    if not incomplete.any():
        return None
    idx = np.flatnonzero(incomplete)
    keys, inverse = np.unique(nan[idx], axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(keys) + 1))
    d = X.shape[1]
    features = np.arange(d)
    return MissingPatterns(
        complete=np.flatnonzero(~incomplete),
        rows=[idx[order[bounds[p] : bounds[p + 1]]] for p in range(len(keys))],
        observed=[features[~key] for key in keys],
        missing=[features[key] for key in keys],
    )


#: Rows of one pattern handled at once: bounds the (k, features, rows) temporaries to a few MiB.
_ROWS_PER_BLOCK = 8192


def _observed_factors(full_cov: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse lower Cholesky factors of every component's observed sub-matrix ``S_oo``,
    shape (k, |o|, |o|), and ``log det L`` per component (k,)."""
    try:
        L = np.linalg.cholesky(full_cov[:, o[:, None], o[None, :]])
    except np.linalg.LinAlgError as exc:
        raise ValueError(_ILL_DEFINED) from exc
    diagonal = np.diagonal(L, axis1=1, axis2=2)
    if not np.all(diagonal > 0):
        raise ValueError(_ILL_DEFINED)
    return np.linalg.inv(L), np.log(diagonal).sum(axis=1)


def _blocks(n: int) -> list[slice]:
    return [slice(i, min(i + _ROWS_PER_BLOCK, n)) for i in range(0, n, _ROWS_PER_BLOCK)]


def _pattern_terms(
    XoT: np.ndarray,
    o: np.ndarray,
    params: MixtureParameters,
    L_inv: np.ndarray,
    log_det: np.ndarray,
    precision_diagonal: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """For rows ``XoT`` (|o|, n_b) of one pattern (observed features, centred): the weighted
    log-probabilities ``log w_k + log N_o(x_o | k)`` (k, n_b) and the whitened residuals
    ``L_k^-1 (x_o - mu_ko)`` (k, |o|, n_b)."""
    Z = L_inv @ XoT[None, :, :]
    Z -= L_inv @ params.means_c[:, o, None]
    const = params.log_weights - 0.5 * o.size * LOG_2PI - log_det
    if precision_diagonal is not None:
        # _precision_diagonal gives one exactly when the parameters have a rounding variance.
        assert params.rounding_variance is not None
        const = const - 0.5 * precision_diagonal[:, o] @ params.rounding_variance[o]
    LT = np.einsum("kin,kin->kn", Z, Z)
    LT *= -0.5
    LT += const[:, None]
    return LT, Z


def _precision_diagonal(model: CovarianceModel, params: MixtureParameters) -> np.ndarray | None:
    if params.rounding_variance is None:
        return None
    k, d = params.means_c.shape
    return model.precision_diagonal(params.prec_chol, k, d)


def missing_statistics(
    model: CovarianceModel,
    patterns: MissingPatterns,
    X: np.ndarray,
    shift: np.ndarray,
    sample_weight: np.ndarray | None,
    params: MixtureParameters,
    full_cov: np.ndarray,
) -> tuple[SufficientStatistics, np.ndarray]:
    """E-step on the incomplete rows and their share of the M-step totals.

    Returns the totals in the layout of :func:`gmm_engine.statistics.em_statistics` (summed with
    the complete rows' totals) and the summed expected second moments ``sum_i E[x_i x_i^T]``,
    shape (d, d), which ``tied`` needs as its data second moment.
    """
    k, d = params.means_c.shape
    rounding = params.rounding_variance
    prec_diag = _precision_diagonal(model, params)
    nk = np.zeros(k)
    first = np.zeros((k, d))
    second = np.zeros((k, d, d))
    ll = 0.0
    total = 0.0
    for rows, o, m in zip(patterns.rows, patterns.observed, patterns.missing, strict=True):
        L_inv, log_det = _observed_factors(full_cov, o)
        A = L_inv @ full_cov[:, o[:, None], m[None, :]]  # L^-1 S_om, (k, |o|, |m|)
        AT = np.swapaxes(A, 1, 2)
        conditional = full_cov[:, m[:, None], m[None, :]] - AT @ A  # S_mm - S_mo S_oo^-1 S_om
        if rounding is not None:
            conditional -= np.diag(rounding[m])
        mass_pattern = np.zeros(k)
        oo = np.zeros((k, o.size, o.size))
        om = np.zeros((k, o.size, m.size))
        mm = np.zeros((k, m.size, m.size))
        for block in _blocks(rows.size):
            r_rows = rows[block]
            XoT = X[np.ix_(r_rows, o)].T - shift[o][:, None]  # (|o|, n_b)
            RT, Z = _pattern_terms(XoT, o, params, L_inv, log_det, prec_diag)
            log_density = log_normalise_(RT)
            w = None if sample_weight is None else sample_weight[r_rows]
            ll += float(log_density.sum() if w is None else log_density @ w)
            total += float(r_rows.size if w is None else w.sum())
            if w is not None:
                RT *= w
            filled = AT @ Z  # conditional expectation of the missing part, (k, |m|, n_b)
            filled += params.means_c[:, m, None]
            mass_pattern += RT.sum(axis=1)
            first[:, o] += RT @ XoT.T
            first[:, m] += np.einsum("kmn,kn->km", filled, RT)
            weighted_o = RT[:, None, :] * XoT[None, :, :]  # (k, |o|, n_b)
            oo += weighted_o @ XoT.T
            om += weighted_o @ np.swapaxes(filled, 1, 2)
            mm += (filled * RT[:, None, :]) @ np.swapaxes(filled, 1, 2)
        nk += mass_pattern
        mm += mass_pattern[:, None, None] * conditional
        second[:, o[:, None], o[None, :]] += oo
        second[:, o[:, None], m[None, :]] += om
        second[:, m[:, None], o[None, :]] += np.swapaxes(om, 1, 2)
        second[:, m[:, None], m[None, :]] += mm
    sums = np.hstack([nk[:, None], first, model.second_order_of_matrices(second)])
    return SufficientStatistics(sums, ll, total), second.sum(axis=0)


def missing_log_prob(
    model: CovarianceModel,
    patterns: MissingPatterns,
    X: np.ndarray,
    shift: np.ndarray,
    params: MixtureParameters,
    full_cov: np.ndarray,
    reduce,
) -> None:
    """Call ``reduce(rows, LT)`` for the rows of every pattern (as
    :func:`gmm_engine.statistics.map_weighted_log_prob` does for complete rows)."""
    prec_diag = _precision_diagonal(model, params)
    for rows, o in zip(patterns.rows, patterns.observed, strict=True):
        L_inv, log_det = _observed_factors(full_cov, o)
        for block in _blocks(rows.size):
            XoT = X[np.ix_(rows[block], o)].T - shift[o][:, None]
            LT, _ = _pattern_terms(XoT, o, params, L_inv, log_det, prec_diag)
            reduce(rows[block], LT)
