"""The engine's EM against scikit-learn's GaussianMixture from identical initial parameters.

scikit-learn is a test-only dependency. Both estimators get the same ``weights_init``,
``means_init`` and ``precisions_init`` (so neither runs its own initialisation), the same ``tol``,
``max_iter`` and ``reg_covar``, and ``n_init=1``. The issue's tolerances: converged weights, means
and covariances to 1e-6 relative, the mean log-likelihood to 1e-8. Relative comparisons of arrays
use the array's own scale for entries near zero (``atol = rtol * max|expected|``), because a mean
that happens to be ~0 has no meaningful relative error.

Interpretation of "float32 input works" used here: fitting float32 data gives the maximum
likelihood model of those (exactly representable) values, so the engine fitted on ``X32`` is
compared with scikit-learn fitted on ``X32.astype(float64)``, at tolerances loosened to what a
float32 input can honestly promise (1e-4 on parameters, 1e-6 on the mean log-likelihood).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from threadpoolctl import threadpool_limits

from gmm_engine import ConvergenceWarning, GaussianMixture

COV_TYPES = ("full", "tied", "diag", "spherical")

# (rtol on parameters, rtol on log-likelihood quantities)
TOL64 = (1e-6, 1e-8)
TOL32 = (1e-4, 1e-6)


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    # OpenBLAS threads spin on the tiny triangular solves of scikit-learn's M-step and make the
    # reference fits ~10x slower on a loaded 2-core machine; results do not depend on it.
    with threadpool_limits(limits=1):
        yield


# --------------------------------------------------------------------------- data sets
def _random_spd(rng: np.random.Generator, d: int, scale: float) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.5 * np.eye(d))


def make_data(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic data and a sensible (not perfect) set of starting means.

    ``separated``: three 2-D clusters ten standard deviations apart.
    ``overlapping``: three 3-D clusters whose means are about two standard deviations apart, so EM
    needs many iterations and many responsibilities stay genuinely soft.
    ``one_dim``: a 1-D two-component mixture with unequal variances.
    """
    rng = np.random.default_rng(seed)
    if kind == "separated":
        centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
        sizes = (150, 100, 70)
        X = np.vstack(
            [
                rng.multivariate_normal(c, _random_spd(rng, 2, 1.0), size=s)
                for c, s in zip(centres, sizes, strict=True)
            ]
        )
        start = centres + rng.normal(scale=0.7, size=centres.shape)
    elif kind == "overlapping":
        centres = 1.3 * np.array([[0.0, 0.0, 0.0], [1.2, 0.3, -0.5], [-0.4, 1.1, 0.8]])
        sizes = (160, 120, 100)
        X = np.vstack(
            [
                rng.multivariate_normal(c, _random_spd(rng, 3, 0.5), size=s)
                for c, s in zip(centres, sizes, strict=True)
            ]
        )
        start = X[rng.choice(len(X), size=3, replace=False)]
    elif kind == "one_dim":
        X = np.concatenate([rng.normal(-2.0, 0.6, 180), rng.normal(1.5, 1.4, 120)])[:, None]
        start = np.array([[-1.0], [1.0]])
    else:  # pragma: no cover - test bug
        raise AssertionError(kind)
    return rng.permutation(X), start


def initial_parameters(X: np.ndarray, start: np.ndarray, cov_type: str) -> dict:
    """weights_init / means_init / precisions_init in scikit-learn's shapes for ``cov_type``."""
    k, d = start.shape
    weights = np.linspace(1.0, 2.0, k)
    weights /= weights.sum()
    var = X.var(axis=0)
    cov = np.atleast_2d(np.cov(X, rowvar=False))
    factors = np.linspace(0.6, 1.4, k)  # components start with different spreads
    if cov_type == "full":
        prec = np.stack([np.linalg.inv(cov * f) for f in factors])
    elif cov_type == "tied":
        prec = np.linalg.inv(cov)
    elif cov_type == "diag":
        prec = np.stack([1.0 / (var * f) for f in factors])
    else:
        prec = 1.0 / (var.mean() * factors)
    return {"weights_init": weights, "means_init": start.copy(), "precisions_init": prec}


def fit_pair(X_engine, X_ref, start, cov_type, *, tol, max_iter, reg_covar=1e-6, warm_fits=1):
    params = initial_parameters(X_ref, start, cov_type)
    common = dict(
        n_components=start.shape[0],
        covariance_type=cov_type,
        tol=tol,
        max_iter=max_iter,
        reg_covar=reg_covar,
        n_init=1,
        warm_start=warm_fits > 1,
        random_state=0,
        **params,
    )
    ours = GaussianMixture(**common)
    ref = SkGaussianMixture(**common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=SkConvergenceWarning)
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        for _ in range(warm_fits):
            ours.fit(X_engine)
            ref.fit(X_ref)
    return ours, ref


# --------------------------------------------------------------------------- comparisons
def assert_rel(actual, expected, rtol, name):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{name}: non-finite values {actual}"
    scale = np.max(np.abs(expected)) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=name)


def compare(ours, ref, X_engine, X_ref, tols, *, exact_iterations=True):
    p_tol, ll_tol = tols
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert_rel(getattr(ours, name), getattr(ref, name), p_tol, name)
    assert ours.converged_ == ref.converged_
    if exact_iterations:
        assert ours.n_iter_ == ref.n_iter_
        assert len(ours.lower_bounds_) == len(ref.lower_bounds_) == ref.n_iter_
        assert_rel(ours.lower_bounds_, ref.lower_bounds_, ll_tol, "lower_bounds_")
    assert_rel(ours.lower_bound_, ref.lower_bound_, ll_tol, "lower_bound_")
    assert_rel(ours.score(X_engine), ref.score(X_ref), ll_tol, "score")
    assert_rel(ours.score_samples(X_engine), ref.score_samples(X_ref), ll_tol, "score_samples")
    assert_rel(ours.bic(X_engine), ref.bic(X_ref), ll_tol, "bic")
    assert_rel(ours.aic(X_engine), ref.aic(X_ref), ll_tol, "aic")
    proba = ours.predict_proba(X_engine)
    np.testing.assert_allclose(proba, ref.predict_proba(X_ref), rtol=0, atol=10 * p_tol)
    labels, ref_labels = ours.predict(X_engine), ref.predict(X_ref)
    if exact_iterations:
        np.testing.assert_array_equal(labels, ref_labels)
    else:
        assert np.mean(labels == ref_labels) >= 0.995


DATASETS = ("separated", "overlapping", "one_dim")


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("kind", DATASETS)
def test_converged_fit_matches_sklearn_float64(cov_type, kind):
    X, start = make_data(kind)
    ours, ref = fit_pair(X, X, start, cov_type, tol=1e-7, max_iter=1000)
    assert ref.converged_, "test setup: scikit-learn must converge within max_iter"
    assert ours.n_iter_ >= 2
    compare(ours, ref, X, X, TOL64)


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("kind", DATASETS)
def test_max_iter_capped_fit_matches_sklearn_float64(cov_type, kind):
    X, start = make_data(kind)
    ours, ref = fit_pair(X, X, start, cov_type, tol=1e-12, max_iter=4)
    assert not ref.converged_ and ref.n_iter_ == 4
    assert not ours.converged_
    compare(ours, ref, X, X, TOL64)


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("kind", ("separated", "overlapping"))
@pytest.mark.parametrize("regime", ("converged", "capped"))
def test_float32_input_matches_sklearn_on_same_values(cov_type, kind, regime):
    X64, start = make_data(kind)
    X32 = X64.astype(np.float32)
    X_ref = X32.astype(np.float64)
    tol, max_iter = (1e-7, 1000) if regime == "converged" else (1e-12, 4)
    ours, ref = fit_pair(X32, X_ref, start, cov_type, tol=tol, max_iter=max_iter)
    compare(ours, ref, X32, X_ref, TOL32, exact_iterations=(regime == "capped"))
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(ours, name)))


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_reg_covar_has_sklearn_meaning(cov_type):
    """A large reg_covar (added to the covariance diagonal every M-step) changes the fit the same way."""
    X, start = make_data("overlapping", seed=3)
    ours, ref = fit_pair(X, X, start, cov_type, tol=1e-7, max_iter=1000, reg_covar=0.05)
    compare(ours, ref, X, X, TOL64)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_warm_start_matches_sklearn(cov_type):
    """Three warm-started fits of 3 iterations each: scikit-learn's warm_start semantics."""
    X, start = make_data("overlapping", seed=5)
    ours, ref = fit_pair(X, X, start, cov_type, tol=1e-12, max_iter=3, warm_fits=3)
    compare(ours, ref, X, X, TOL64)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_fit_predict_matches_sklearn_and_own_predict(cov_type):
    X, start = make_data("overlapping", seed=1)
    params = initial_parameters(X, start, cov_type)
    kw = dict(n_components=3, covariance_type=cov_type, tol=1e-7, max_iter=1000, **params)
    labels = GaussianMixture(**kw).fit_predict(X)
    ref_labels = SkGaussianMixture(**kw).fit_predict(X)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(labels, GaussianMixture(**kw).fit(X).predict(X))


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_capped_run_warns_and_reports_not_converged(cov_type):
    X, start = make_data("overlapping", seed=2)
    params = initial_parameters(X, start, cov_type)
    gm = GaussianMixture(3, covariance_type=cov_type, tol=1e-12, max_iter=2, **params)
    with pytest.warns(ConvergenceWarning):
        gm.fit(X)
    assert not gm.converged_
    assert gm.n_iter_ == 2


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_fitted_attribute_shapes_match_sklearn(cov_type):
    X, start = make_data("overlapping", seed=4)
    ours, ref = fit_pair(X, X, start, cov_type, tol=1e-3, max_iter=100)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert np.shape(getattr(ours, name)) == np.shape(getattr(ref, name)), name
    assert ours.n_features_in_ == ref.n_features_in_ == 3
    assert isinstance(ours.n_iter_, (int, np.integer))
    assert isinstance(ours.lower_bound_, (float, np.floating))
    assert len(ours.lower_bounds_) == ours.n_iter_


def test_score_on_held_out_data_matches_sklearn():
    """Scoring rows the model was not fitted on uses the same density."""
    X, start = make_data("separated", seed=8)
    X_new, _ = make_data("separated", seed=9)
    for cov_type in COV_TYPES:
        ours, ref = fit_pair(X, X, start, cov_type, tol=1e-7, max_iter=1000)
        assert_rel(ours.score_samples(X_new), ref.score_samples(X_new), 1e-8, cov_type)
        assert_rel(ours.bic(X_new), ref.bic(X_new), 1e-8, cov_type)
        np.testing.assert_array_equal(ours.predict(X_new), ref.predict(X_new))
