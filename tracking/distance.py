"""Distance between Gaussians: the Bhattacharyya distance, for one pair and for two sets.

Used to decide whether a current segment continues a previous one (:mod:`tracking.ids`) and to
report how far a segment moved (:mod:`tracking.drift`).
"""

from __future__ import annotations

import numpy as np


def _cholesky(cov: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        flat = cov.reshape(-1, cov.shape[-2], cov.shape[-1])
        bad = int(np.argmin(np.linalg.eigvalsh(flat)[:, 0]))
        raise ValueError(
            f"bhattacharyya: {what} covariance number {bad + 1} is not positive definite"
        ) from None


def bhattacharyya_matrix(
    means_a: np.ndarray, covariances_a: np.ndarray, means_b: np.ndarray, covariances_b: np.ndarray
) -> np.ndarray:
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
    D = 0.125 * np.einsum("abi,abi->ab", y, y) + 0.5 * (
        logdet_s - 0.5 * (logdet_a[:, None] + logdet_b[None, :])
    )
    return np.maximum(D, 0.0)  # rounding can leave -1e-16 for identical Gaussians


def bhattacharyya(
    mean_a: np.ndarray, covariance_a: np.ndarray, mean_b: np.ndarray, covariance_b: np.ndarray
) -> float:
    """Bhattacharyya distance between two Gaussians N(mean_a, covariance_a) and N(mean_b, covariance_b)."""
    ma = np.atleast_1d(np.asarray(mean_a, dtype=np.float64))
    d = ma.shape[0]
    return float(
        bhattacharyya_matrix(
            ma[None],
            np.asarray(covariance_a, dtype=np.float64).reshape(1, d, d),
            np.atleast_1d(np.asarray(mean_b, dtype=np.float64))[None],
            np.asarray(covariance_b, dtype=np.float64).reshape(1, d, d),
        )[0, 0]
    )
