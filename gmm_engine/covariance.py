"""Covariance parameterisations: every formula that differs between full, tied, diag and spherical.

Each parameterisation is one object, so adding another (say one of mclust's constrained
models) means adding one class here, not editing the EM loop.

Notation used throughout the engine. For a sample ``x`` (already centred by a fixed shift) the
*design row* is ``phi(x) = [1, x, q(x)]`` where ``q`` holds the second-order terms this
parameterisation needs (``vech(x x^T)`` for full, ``x**2`` for diag, ``|x|**2`` for spherical,
none for tied). The log-density of every component is linear in ``phi(x)`` (plus, for ``tied``,
one per-sample term shared by all components), so the E-step is one matrix product ``Phi @ W``
and the M-step's sufficient statistics are one product ``R.T @ Phi``. Chunks are stored
transposed, (features, samples), so the code reads ``W.T @ PhiT`` and ``RT @ PhiT.T``.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

LOG_2PI = np.log(2.0 * np.pi)

_ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)


def _upper_pairs(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the upper triangle (diagonal included), row by row."""
    return np.triu_indices(d)


def _cholesky_precision(cov: np.ndarray) -> np.ndarray:
    """Upper-triangular ``U`` with ``U @ U.T == inv(cov)`` (scikit-learn's convention)."""
    try:
        cov_chol = linalg.cholesky(cov, lower=True)
    except linalg.LinAlgError as exc:
        raise ValueError(_ILL_DEFINED) from exc
    d = cov.shape[0]
    return linalg.solve_triangular(cov_chol, np.eye(d), lower=True).T


def _cholesky_from_precision(precision: np.ndarray) -> np.ndarray:
    try:
        return linalg.cholesky(precision, lower=True)
    except linalg.LinAlgError as exc:
        raise ValueError("precisions_init must be symmetric positive definite") from exc


class CovarianceModel:
    """Formulas of one covariance parameterisation (abstract)."""

    name: str = ""

    # --- design matrix -------------------------------------------------------------------
    def n_second_order(self, d: int) -> int:
        """Number of second-order columns ``q(x)`` in the design row."""
        raise NotImplementedError

    def fill_second_order(self, XcT: np.ndarray, out: np.ndarray) -> None:
        """Write ``q(x)`` for the samples in the columns of ``XcT`` (d, n) into ``out`` (q, n)."""
        raise NotImplementedError

    def second_order_of_matrices(self, M: np.ndarray) -> np.ndarray:
        """``q`` of summed second-moment matrices ``M`` (k, d, d), shape (k, q): the columns
        ``fill_second_order`` gives, for totals known only as matrices (missing values' EM)."""
        raise NotImplementedError

    # --- parameters ----------------------------------------------------------------------
    def covariances_from_stats(self, nk, means_c, second, reg_covar, data_second):
        """M-step covariances from totals.

        ``nk`` (k,) summed weights, ``means_c`` (k, d) centred means, ``second`` (k, q) summed
        second-order terms, ``data_second`` the data's own total second moment (tied only).
        ``reg_covar`` (a number, or one per feature) is added to the diagonal; ``spherical``
        adds its mean, the amount that maximises the same objective with a single variance.
        """
        raise NotImplementedError

    def m_step(self, nk, means_c, second, reg_covar, data_second, prior=None, previous=None):
        """The M-step's covariances: maximum likelihood, or MAP under ``prior = (scale, dof)``.
        ``previous`` (the last iteration's covariances) is for models whose M-step iterates."""
        covariances = self.covariances_from_stats(nk, means_c, second, reg_covar, data_second)
        if prior is not None:
            covariances = self.map_covariances(covariances, nk, prior[0], prior[1], means_c.shape[1])
        return covariances

    # --- conjugate prior (MAP EM) ----------------------------------------------------------
    def prior_scale(self, data_covariance: np.ndarray, k: int) -> np.ndarray | float:
        """mclust's default prior scale for k components (Fraley & Raftery 2007):
        ``data_covariance / k**(2/d)``, reduced to this type (its diagonal, or their mean)."""
        raise NotImplementedError

    def map_covariances(self, covariances, nk, scale, dof, d):
        """The MAP covariances under an inverse-Wishart prior (inverse-gamma per variance for
        diag and spherical) with ``scale`` and ``dof``, from the maximum-likelihood ones."""
        raise NotImplementedError

    def log_prior(self, prec_chol, scale, dof, k: int, d: int) -> float:
        """Log density of the covariances under that prior, up to a constant."""
        raise NotImplementedError

    def precision_cholesky(self, covariances: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def precision_cholesky_from_precisions(self, precisions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def precisions(self, prec_chol: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def covariances_from_precision_cholesky(self, prec_chol: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def log_det_precision_cholesky(self, prec_chol: np.ndarray, k: int, d: int) -> np.ndarray:
        """``log det U_k`` for every component, shape (k,)."""
        raise NotImplementedError

    def precision_diagonal(self, prec_chol: np.ndarray, k: int, d: int) -> np.ndarray:
        """Diagonal of every component's precision matrix, shape (k, d)."""
        raise NotImplementedError

    def n_covariance_parameters(self, k: int, d: int) -> int:
        raise NotImplementedError

    def full_covariances(self, covariances: np.ndarray, k: int, d: int) -> np.ndarray:
        """The covariances as (k, d, d) matrices."""
        raise NotImplementedError

    def covariance_shape(self, k: int, d: int) -> tuple[int, ...]:
        raise NotImplementedError

    # --- E-step --------------------------------------------------------------------------
    def log_prob_coefficients(self, means_c, prec_chol):
        """Coefficients of the log-density in the design row.

        Returns ``(const (k,), linear (d, k), second (q, k))`` such that
        ``log N(x | k) = const_k + x @ linear[:, k] + q(x) @ second[:, k] + shared(x)``.
        """
        raise NotImplementedError

    def shared_term(self, XcT: np.ndarray, prec_chol: np.ndarray) -> np.ndarray | None:
        """A per-sample log-density term common to all components (shape (n,)), or None."""
        return None

    def needs_data_second_moment(self) -> bool:
        return False

    def validate_precisions_init(self, precisions: np.ndarray, k: int, d: int) -> None:
        shape = self.covariance_shape(k, d)
        if precisions.shape != shape:
            raise ValueError(
                f"precisions_init for covariance_type={self.name!r} must have shape {shape}, "
                f"got {precisions.shape}"
            )


class Full(CovarianceModel):
    """Each component has its own unconstrained covariance (mclust ``VVV``)."""

    name = "full"

    def n_second_order(self, d):
        return d * (d + 1) // 2

    def fill_second_order(self, XcT, out):
        # Row i of the upper triangle: x_i * x_j for j >= i, written in place into contiguous
        # rows (fancy indexing would allocate two (q, n) temporaries).
        d = XcT.shape[0]
        pos = 0
        for i in range(d):
            np.multiply(XcT[i : i + 1], XcT[i:], out=out[pos : pos + d - i])
            pos += d - i

    def second_order_of_matrices(self, M):
        rows, cols = _upper_pairs(M.shape[1])
        return M[:, rows, cols]

    def covariances_from_stats(self, nk, means_c, second, reg_covar, data_second):
        k, d = means_c.shape
        rows, cols = _upper_pairs(d)
        m2 = np.empty((k, d, d))
        m2[:, rows, cols] = second / nk[:, None]
        m2[:, cols, rows] = m2[:, rows, cols]
        cov = m2 - means_c[:, :, None] * means_c[:, None, :]
        cov[:, np.arange(d), np.arange(d)] += reg_covar
        return cov

    def prior_scale(self, data_covariance, k):
        d = data_covariance.shape[0]
        return data_covariance / k ** (2.0 / d)

    def map_covariances(self, covariances, nk, scale, dof, d):
        return (nk[:, None, None] * covariances + scale) / (nk + dof + d + 1)[:, None, None]

    def log_prior(self, prec_chol, scale, dof, k, d):
        # log IW(S | scale, dof) = -(dof + d + 1) / 2 log|S| - tr(scale S^-1) / 2, and
        # log|S| = -2 log det U, tr(scale U U^T) = |scale^1/2 U|^2 summed.
        log_det = self.log_det_precision_cholesky(prec_chol, k, d)
        trace = np.einsum("ij,kjl,kil->k", scale, prec_chol, prec_chol)
        return float(np.sum((dof + d + 1) * log_det - 0.5 * trace))

    def precision_cholesky(self, covariances):
        return np.stack([_cholesky_precision(c) for c in covariances])

    def precision_cholesky_from_precisions(self, precisions):
        return np.stack([_cholesky_from_precision(p) for p in precisions])

    def precisions(self, prec_chol):
        return prec_chol @ np.swapaxes(prec_chol, 1, 2)

    def covariances_from_precision_cholesky(self, prec_chol):
        d = prec_chol.shape[1]
        inv = np.stack([linalg.solve_triangular(u, np.eye(d), lower=False) for u in prec_chol])
        return np.swapaxes(inv, 1, 2) @ inv

    def log_det_precision_cholesky(self, prec_chol, k, d):
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)

    def precision_diagonal(self, prec_chol, k, d):
        # P = U U^T, so P_jj is the squared norm of row j of U.
        return np.einsum("kij,kij->ki", prec_chol, prec_chol)

    def n_covariance_parameters(self, k, d):
        return k * d * (d + 1) // 2

    def full_covariances(self, covariances, k, d):
        return np.array(covariances, dtype=np.float64)

    def covariance_shape(self, k, d):
        return (k, d, d)

    def log_prob_coefficients(self, means_c, prec_chol):
        k, d = means_c.shape
        prec = self.precisions(prec_chol)
        linear = np.einsum("kij,kj->ki", prec, means_c)
        const = (
            -0.5 * d * LOG_2PI
            + self.log_det_precision_cholesky(prec_chol, k, d)
            - 0.5 * np.einsum("ki,ki->k", means_c, linear)
        )
        rows, cols = _upper_pairs(d)
        # x'Px = sum_i P_ii x_i^2 + 2 sum_{i<j} P_ij x_i x_j
        factor = np.where(rows == cols, -0.5, -1.0)
        second = (prec[:, rows, cols] * factor).T
        return const, linear.T, second


class Tied(CovarianceModel):
    """All components share one covariance (mclust ``EEE``)."""

    name = "tied"

    def n_second_order(self, d):
        return 0

    def fill_second_order(self, XcT, out):
        return None

    def second_order_of_matrices(self, M):
        return np.empty((M.shape[0], 0))

    def needs_data_second_moment(self):
        return True

    def covariances_from_stats(self, nk, means_c, second, reg_covar, data_second):
        d = means_c.shape[1]
        cov = data_second - (nk[:, None] * means_c).T @ means_c
        cov /= nk.sum()
        cov[np.arange(d), np.arange(d)] += reg_covar
        return cov

    def prior_scale(self, data_covariance, k):
        d = data_covariance.shape[0]
        return data_covariance / k ** (2.0 / d)

    def map_covariances(self, covariances, nk, scale, dof, d):
        n = nk.sum()
        return (n * covariances + scale) / (n + dof + d + 1)

    def log_prior(self, prec_chol, scale, dof, k, d):
        log_det = np.log(np.diag(prec_chol)).sum()
        trace = np.einsum("ij,jl,il->", scale, prec_chol, prec_chol)
        return float((dof + d + 1) * log_det - 0.5 * trace)

    def precision_cholesky(self, covariances):
        return _cholesky_precision(covariances)

    def precision_cholesky_from_precisions(self, precisions):
        return _cholesky_from_precision(precisions)

    def precisions(self, prec_chol):
        return prec_chol @ prec_chol.T

    def covariances_from_precision_cholesky(self, prec_chol):
        inv = linalg.solve_triangular(prec_chol, np.eye(prec_chol.shape[0]), lower=False)
        return inv.T @ inv

    def log_det_precision_cholesky(self, prec_chol, k, d):
        return np.full(k, np.log(np.diag(prec_chol)).sum())

    def precision_diagonal(self, prec_chol, k, d):
        return np.broadcast_to(np.einsum("ij,ij->i", prec_chol, prec_chol), (k, d))

    def n_covariance_parameters(self, k, d):
        return d * (d + 1) // 2

    def full_covariances(self, covariances, k, d):
        return np.broadcast_to(covariances, (k, d, d)).copy()

    def covariance_shape(self, k, d):
        return (d, d)

    def log_prob_coefficients(self, means_c, prec_chol):
        k, d = means_c.shape
        linear = means_c @ self.precisions(prec_chol)  # (k, d); precision is symmetric
        const = (
            -0.5 * d * LOG_2PI
            + self.log_det_precision_cholesky(prec_chol, k, d)
            - 0.5 * np.einsum("ki,ki->k", means_c, linear)
        )
        return const, linear.T, np.empty((0, k))

    def shared_term(self, XcT, prec_chol):
        y = prec_chol.T @ XcT
        return -0.5 * np.einsum("ji,ji->i", y, y)


class _Elementwise(CovarianceModel):
    """Variances stored as plain numbers (no off-diagonal terms): their Cholesky factors are
    square roots, element by element."""

    def precision_cholesky(self, covariances):
        if np.any(covariances <= 0.0):
            raise ValueError(_ILL_DEFINED)
        return 1.0 / np.sqrt(covariances)

    def precision_cholesky_from_precisions(self, precisions):
        if np.any(precisions <= 0.0):
            raise ValueError("precisions_init must be strictly positive")
        return np.sqrt(precisions)

    def precisions(self, prec_chol):
        return prec_chol**2

    def covariances_from_precision_cholesky(self, prec_chol):
        return 1.0 / prec_chol**2


class Diag(_Elementwise):
    """Each component has its own axis-aligned covariance (mclust ``VVI``)."""

    name = "diag"

    def n_second_order(self, d):
        return d

    def fill_second_order(self, XcT, out):
        np.multiply(XcT, XcT, out=out)

    def second_order_of_matrices(self, M):
        return np.diagonal(M, axis1=1, axis2=2).copy()

    def covariances_from_stats(self, nk, means_c, second, reg_covar, data_second):
        return second / nk[:, None] - means_c**2 + reg_covar

    def log_det_precision_cholesky(self, prec_chol, k, d):
        return np.log(prec_chol).sum(axis=1)

    def prior_scale(self, data_covariance, k):
        d = data_covariance.shape[0]
        return np.diag(data_covariance) / k ** (2.0 / d)

    def map_covariances(self, covariances, nk, scale, dof, d):
        return (nk[:, None] * covariances + scale) / (nk + dof + 2)[:, None]

    def log_prior(self, prec_chol, scale, dof, k, d):
        # An inverse-gamma prior per variance: -(dof + 2) / 2 log s - scale / (2 s).
        prec = prec_chol**2
        return float(np.sum((dof + 2) * np.log(prec_chol) - 0.5 * scale * prec))

    def precision_diagonal(self, prec_chol, k, d):
        return prec_chol**2

    def n_covariance_parameters(self, k, d):
        return k * d

    def full_covariances(self, covariances, k, d):
        out = np.zeros((k, d, d))
        out[:, np.arange(d), np.arange(d)] = covariances
        return out

    def covariance_shape(self, k, d):
        return (k, d)

    def log_prob_coefficients(self, means_c, prec_chol):
        k, d = means_c.shape
        prec = prec_chol**2
        linear = prec * means_c
        const = (
            -0.5 * d * LOG_2PI
            + self.log_det_precision_cholesky(prec_chol, k, d)
            - 0.5 * (linear * means_c).sum(axis=1)
        )
        return const, linear.T, (-0.5 * prec).T


class Spherical(_Elementwise):
    """Each component has its own single variance (mclust ``VII``)."""

    name = "spherical"

    def n_second_order(self, d):
        return 1

    def fill_second_order(self, XcT, out):
        np.einsum("ji,ji->i", XcT, XcT, out=out[0])

    def second_order_of_matrices(self, M):
        return np.trace(M, axis1=1, axis2=2)[:, None]

    def covariances_from_stats(self, nk, means_c, second, reg_covar, data_second):
        d = means_c.shape[1]
        return (second[:, 0] / nk - (means_c**2).sum(axis=1)) / d + np.mean(reg_covar)

    def log_det_precision_cholesky(self, prec_chol, k, d):
        return d * np.log(prec_chol)

    def prior_scale(self, data_covariance, k):
        d = data_covariance.shape[0]
        return float(np.trace(data_covariance)) / d / k ** (2.0 / d)

    def map_covariances(self, covariances, nk, scale, dof, d):
        return (nk * d * covariances + scale) / (nk * d + dof + 2)

    def log_prior(self, prec_chol, scale, dof, k, d):
        return float(np.sum((dof + 2) * np.log(prec_chol) - 0.5 * scale * prec_chol**2))

    def precision_diagonal(self, prec_chol, k, d):
        return np.broadcast_to((prec_chol**2)[:, None], (k, d))

    def n_covariance_parameters(self, k, d):
        return k

    def full_covariances(self, covariances, k, d):
        return covariances[:, None, None] * np.eye(d)[None, :, :]

    def covariance_shape(self, k, d):
        return (k,)

    def log_prob_coefficients(self, means_c, prec_chol):
        k, d = means_c.shape
        prec = prec_chol**2
        linear = prec[:, None] * means_c
        const = (
            -0.5 * d * LOG_2PI
            + self.log_det_precision_cholesky(prec_chol, k, d)
            - 0.5 * (linear * means_c).sum(axis=1)
        )
        return const, linear.T, (-0.5 * prec)[None, :]


_BASE = {m.name: m for m in (Full(), Tied(), Diag(), Spherical())}
#: scikit-learn's four types, the default grid of model selection.
COVARIANCE_TYPES: tuple[str, ...] = tuple(_BASE)
#: mclust's names of those four (Celeux & Govaert's volume-shape-orientation code).
MCLUST_ALIASES = {"VVV": "full", "EEE": "tied", "VVI": "diag", "VII": "spherical"}

from .families import FAMILIES  # noqa: E402  (families build on Full, defined above)

#: Every covariance model by name: scikit-learn's four, and mclust's fourteen (four of them the
#: same models under their mclust names).
COVARIANCE_MODELS: dict[str, CovarianceModel] = {
    **_BASE,
    **{alias: _BASE[name] for alias, name in MCLUST_ALIASES.items()},
    **FAMILIES,
}
#: mclust's fourteen names, in mclust's order.
MCLUST_MODELS: tuple[str, ...] = (
    "EII",
    "VII",
    "EEI",
    "VEI",
    "EVI",
    "VVI",
    "EEE",
    "VEE",
    "EVE",
    "VVE",
    "EEV",
    "VEV",
    "EVV",
    "VVV",
)
#: Every name ``covariance_type`` accepts.
ALL_COVARIANCE_TYPES: tuple[str, ...] = COVARIANCE_TYPES + MCLUST_MODELS


def covariance_layout(covariance_type: str) -> str:
    """How a type's ``covariances_`` are stored: "full" (k, d, d), "tied" (d, d), "diag" (k, d)
    or "spherical" (k,). Every mclust model other than scikit-learn's four is stored full."""
    return getattr(COVARIANCE_MODELS[covariance_type], "layout", COVARIANCE_MODELS[covariance_type].name)


def full_covariances(covariances, covariance_type: str, n_components: int, n_features: int) -> np.ndarray:
    """Any covariance type's ``covariances_`` as full matrices, shape (n_components, d, d).

    Shapes in: full (k, d, d), tied (d, d), diag (k, d), spherical (k,); a flat array of the
    same size (as stored in a table) is accepted.
    """
    if covariance_type not in COVARIANCE_MODELS:
        raise ValueError(
            f"covariance_type must be one of {list(ALL_COVARIANCE_TYPES)}, got {covariance_type!r}"
        )
    model = COVARIANCE_MODELS[covariance_type]
    cov = np.asarray(covariances, dtype=np.float64).reshape(model.covariance_shape(n_components, n_features))
    return model.full_covariances(cov, n_components, n_features)


def n_parameters(covariance_type: str, k: int, d: int) -> int:
    """Free parameters of a k-component mixture in d dimensions (weights, means, covariances)."""
    cov = COVARIANCE_MODELS[covariance_type].n_covariance_parameters(k, d)
    return int(cov + k * d + k - 1)
