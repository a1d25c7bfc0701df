"""mclust's parsimonious covariance models (Celeux & Govaert 1995, "Gaussian parsimonious
clustering models"; Fraley & Raftery 2002).

Every covariance is written ``Sigma_k = lambda_k D_k A_k D_k^T``: volume ``lambda_k``,
orientation ``D_k`` (orthogonal) and shape ``A_k`` (diagonal, ``det A_k = 1``). A model's name
says, for volume, shape and orientation in that order, whether it is Equal across components,
Variable, or the Identity (``I``: no orientation, or spherical). scikit-learn's four types are
four of the fourteen: ``spherical`` = VII, ``diag`` = VVI, ``tied`` = EEE, ``full`` = VVV.

The other ten are fitted here with the E-step of ``full`` (each component has its own matrix,
whatever its constraints) and a constrained M-step from the components' scatter matrices
``W_k = sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T``:

* closed form: EII, EEI, EVI, EEV, EVV (Celeux & Govaert 1995, table 1);
* iterated to convergence within the M-step: VEI, VEE, VEV (alternating volume and shape /
  orientation, as mclust does), and EVE, VVE, whose common orientation is found by the
  majorisation-minimisation of Browne & McNicholas (2014, "Estimating common principal
  components in high dimensions", ADAC 8: 217-226).

``reg_covar`` and a ``resolution``'s rounding variance are added to every ``W_k / n_k`` before
the constraint (for a rounding variance this is exactly the maximiser of the cell-averaged
objective: see :mod:`gmm_engine.mixture`). With ``covariance_prior="data"`` (an inverse-Wishart
prior on every component's covariance) the same constrained M-step of ``W_k + scale`` with
``n_k + dof + d + 1`` is the exact MAP step. Parameter counts are mclust's ``nVarParams``.
"""

from __future__ import annotations

import numpy as np

from .covariance import _ILL_DEFINED, Full

#: Inner iterations of the M-steps that have no closed form, and their relative tolerance.
_INNER_MAX_ITER = 200
_INNER_TOL = 1e-10


def _geometric_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(np.mean(np.log(values), axis=axis))


def _positive(values: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(values)) or np.any(values <= 0.0):
        raise ValueError(_ILL_DEFINED)
    return values


def _eigh(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending, the same order in every component) and eigenvectors of each W_k."""
    values, vectors = np.linalg.eigh(W)
    return _positive(values), vectors


def _volumes_and_shape(values: np.ndarray, nk: np.ndarray) -> np.ndarray:
    """Variable volumes with one shared shape (VEI on the diagonals, VEV on the eigenvalues):
    ``lambda_k * A``, shape (k, d), by alternating the two closed-form updates to convergence."""
    d = values.shape[1]
    lam = values.sum(axis=1) / (d * nk)
    for _ in range(_INNER_MAX_ITER):
        shape = (values / lam[:, None]).sum(axis=0)
        shape /= _geometric_mean(shape)
        new = (values / shape).sum(axis=1) / (d * nk)
        done = np.max(np.abs(new - lam) / lam) < _INNER_TOL
        lam = new
        if done:
            break
    return lam[:, None] * shape[None, :]


def _compose(vectors: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``V diag(values) V^T`` for stacks (k, d, d) and (k, d), kept exactly symmetric."""
    out = (vectors * values[:, None, :]) @ np.swapaxes(vectors, 1, 2)
    return 0.5 * (out + np.swapaxes(out, 1, 2))


class Family(Full):
    """A constrained model stored as full matrices (k, d, d); subclasses give ``constrain``."""

    layout = "full"

    def constrain(self, W: np.ndarray, nk: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        """The covariances maximising ``sum_k -n_k/2 log|S_k| - tr(S_k^-1 W_k)/2`` under the
        model's constraints, from scatter matrices ``W`` (k, d, d) and weights ``nk`` (k,).
        ``previous`` (the covariances of the last iteration) starts the iterated M-steps that
        have local optima, so a step never ends below where it began (EM keeps ascending)."""
        raise NotImplementedError

    def covariances_from_stats(self, nk, means_c, second, reg_covar, data_second):
        return self.m_step(nk, means_c, second, reg_covar, data_second)

    def m_step(self, nk, means_c, second, reg_covar, data_second, prior=None, previous=None):
        # With an inverse-Wishart prior (scale, dof) on every component's covariance the MAP
        # objective is the likelihood's with W_k + scale for W_k and n_k + dof + d + 1 for n_k,
        # so the same constrained M-step gives the exact MAP estimate (Fraley & Raftery 2007).
        W = super().covariances_from_stats(nk, means_c, second, reg_covar, data_second) * nk[:, None, None]
        if prior is None:
            return self.constrain(W, nk, previous)
        scale, dof = prior
        d = means_c.shape[1]
        return self.constrain(W + scale, nk + dof + d + 1, previous)


class EII(Family):
    """Equal volume, spherical: ``lambda I``."""

    name = "EII"

    def constrain(self, W, nk, previous=None):
        k, d, _ = W.shape
        lam = _positive(np.trace(W, axis1=1, axis2=2).sum() / (nk.sum() * d))
        return np.broadcast_to(lam * np.eye(d), (k, d, d)).copy()

    def n_covariance_parameters(self, k, d):
        return 1


class EEI(Family):
    """Equal volume and shape, axis-aligned: one diagonal matrix."""

    name = "EEI"

    def constrain(self, W, nk, previous=None):
        k, d, _ = W.shape
        B = _positive(np.diagonal(W, axis1=1, axis2=2).sum(axis=0) / nk.sum())
        return np.broadcast_to(np.diag(B), (k, d, d)).copy()

    def n_covariance_parameters(self, k, d):
        return d


class EVI(Family):
    """Equal volume, variable shape, axis-aligned."""

    name = "EVI"

    def constrain(self, W, nk, previous=None):
        delta = _positive(np.diagonal(W, axis1=1, axis2=2).copy())
        g = _geometric_mean(delta)
        lam = g.sum() / nk.sum()
        return np.stack([np.diag(row) for row in lam * delta / g[:, None]])

    def n_covariance_parameters(self, k, d):
        return 1 + k * (d - 1)


class VEI(Family):
    """Variable volume, equal shape, axis-aligned (iterated)."""

    name = "VEI"

    def constrain(self, W, nk, previous=None):
        delta = _positive(np.diagonal(W, axis1=1, axis2=2).copy())
        return np.stack([np.diag(row) for row in _volumes_and_shape(delta, nk)])

    def n_covariance_parameters(self, k, d):
        return k + d - 1


class VEE(Family):
    """Variable volume, equal shape and orientation (iterated)."""

    name = "VEE"

    def constrain(self, W, nk, previous=None):
        _, d, _ = W.shape
        lam = _positive(np.trace(W, axis1=1, axis2=2) / (d * nk))
        for _ in range(_INNER_MAX_ITER):
            C = (W / lam[:, None, None]).sum(axis=0)
            sign, logdet = np.linalg.slogdet(C)
            if sign <= 0:
                raise ValueError(_ILL_DEFINED)
            C /= np.exp(logdet / d)
            new = _positive(np.einsum("kij,ji->k", W, np.linalg.inv(C)) / (d * nk))
            done = np.max(np.abs(new - lam) / lam) < _INNER_TOL
            lam = new
            if done:
                break
        C = 0.5 * (C + C.T)
        return lam[:, None, None] * C[None, :, :]

    def n_covariance_parameters(self, k, d):
        return k + d * (d + 1) // 2 - 1


class EEV(Family):
    """Equal volume and shape, variable orientation."""

    name = "EEV"

    def constrain(self, W, nk, previous=None):
        values, vectors = _eigh(W)
        omega = values.sum(axis=0)
        g = _geometric_mean(omega)
        shape = omega / g
        lam = g / nk.sum()
        return _compose(vectors, lam * np.broadcast_to(shape, values.shape))

    def n_covariance_parameters(self, k, d):
        return 1 + (d - 1) + k * d * (d - 1) // 2


class VEV(Family):
    """Variable volume, equal shape, variable orientation (iterated)."""

    name = "VEV"

    def constrain(self, W, nk, previous=None):
        values, vectors = _eigh(W)
        return _compose(vectors, _volumes_and_shape(values, nk))

    def n_covariance_parameters(self, k, d):
        return k + (d - 1) + k * d * (d - 1) // 2


class EVV(Family):
    """Equal volume, variable shape and orientation."""

    name = "EVV"

    def constrain(self, W, nk, previous=None):
        values, _ = _eigh(W)
        g = _geometric_mean(values)  # det(W_k)^(1/d)
        lam = g.sum() / nk.sum()
        out = W * (lam / g)[:, None, None]
        return 0.5 * (out + np.swapaxes(out, 1, 2))

    def n_covariance_parameters(self, k, d):
        return 1 + k * (d * (d + 1) // 2 - 1)


class _CommonOrientation(Family):
    """A common orientation D with variable shapes: EVE and VVE.

    Alternates the shapes (and volumes) for a fixed D, which have a closed form in D's
    coordinates, with Browne & McNicholas's majorisation step for D given them: ``f(D) =
    sum_k tr(W_k D L_k^-1 D^T)`` is, on orthogonal D, a concave function plus a constant
    (``W_k - w_k I`` is negative semi-definite for ``w_k`` the largest eigenvalue of ``W_k``), so
    its linearisation at the current D majorises it and is minimised by the polar factor
    ``D = U V^T`` of ``F = sum_k (w_k I - W_k) D L_k^-1 = U S V^T``.
    """

    def scales(self, rotated: np.ndarray, nk: np.ndarray) -> np.ndarray:
        """The diagonal ``L_k = lambda_k A_k`` (k, d) for fixed D, from ``diag(D^T W_k D)``."""
        raise NotImplementedError

    def constrain(self, W, nk, previous=None):
        k, d, _ = W.shape
        if previous is None:
            _, D = np.linalg.eigh(W.sum(axis=0))
        else:
            # The last iteration's common axes: the eigenvectors of a generic combination of its
            # covariances (one of them alone may have a repeated eigenvalue).
            _, D = np.linalg.eigh(np.einsum("k,kij->ij", np.sqrt(np.arange(1.0, k + 1)), previous))
        top = _eigh(W)[0][:, -1]
        eye = np.eye(d)
        previous = np.inf
        for _ in range(_INNER_MAX_ITER):
            rotated = np.einsum("ji,kjl,li->ki", D, W, D)  # diag(D^T W_k D)
            L = _positive(self.scales(rotated, nk))
            objective = float(np.sum(rotated / L) + np.sum(nk[:, None] * np.log(L)))
            if previous - objective <= _INNER_TOL * abs(objective):
                break
            previous = objective
            F = np.zeros((d, d))
            for j in range(k):
                F += (top[j] * eye - W[j]) @ D / L[j][None, :]
            U, _, Vt = np.linalg.svd(F)
            D = U @ Vt
        return _compose(np.broadcast_to(D, (k, d, d)), L)


class EVE(_CommonOrientation):
    """Equal volume, variable shape, equal orientation (iterated)."""

    name = "EVE"

    def scales(self, rotated, nk):
        g = _geometric_mean(_positive(rotated))
        return (g.sum() / nk.sum()) * rotated / g[:, None]

    def n_covariance_parameters(self, k, d):
        return 1 + k * (d - 1) + d * (d - 1) // 2


class VVE(_CommonOrientation):
    """Variable volume and shape, equal orientation (iterated)."""

    name = "VVE"

    def scales(self, rotated, nk):
        return rotated / nk[:, None]

    def n_covariance_parameters(self, k, d):
        return k * d + d * (d - 1) // 2


#: The ten models beyond scikit-learn's four, by mclust name.
FAMILIES = {m.name: m for m in (EII(), EEI(), EVI(), VEI(), VEE(), EEV(), VEV(), EVV(), EVE(), VVE())}
