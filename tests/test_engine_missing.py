"""Values missing at random (issue 11, part 2): ``GaussianMixture(missing="marginalize")``.

The reference for every density is scipy's multivariate normal on the observed features (the
marginal of a Gaussian is its sub-vector and sub-matrix); EM is checked for ascent of the
observed-data objective and for consistency with the complete-data fit as n grows.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_em_ascends
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal
from sklearn.utils.estimator_checks import check_estimator
from threadpoolctl import threadpool_limits

from gmm_engine import ConvergenceWarning, GaussianMixture, full_covariances, select_model

COV_TYPES = ("full", "tied", "diag", "spherical")


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    with threadpool_limits(limits=1):
        yield


def two_blobs(n: int, d: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.5 * np.eye(d)
    half = n // 2
    return np.vstack(
        [
            rng.multivariate_normal(np.zeros(d), cov, half),
            rng.multivariate_normal(np.full(d, 5.0), 0.5 * cov + 0.2 * np.eye(d), n - half),
        ]
    )


def delete_at_random(X: np.ndarray, share: float, seed: int = 1) -> np.ndarray:
    """NaN in about ``share`` of the values, at random, keeping one observed value per row."""
    rng = np.random.default_rng(seed)
    out = X.copy()
    out[rng.random(X.shape) < share] = np.nan
    empty = np.isnan(out).all(axis=1)
    keep = rng.integers(0, X.shape[1], size=int(empty.sum()))
    out[np.flatnonzero(empty), keep] = X[np.flatnonzero(empty), keep]
    return out


def fit(gm: GaussianMixture, X, **kw) -> GaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gm.fit(X, **kw)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_without_missing_values_the_fit_is_bitwise_the_default(cov_type):
    X = two_blobs(400)
    plain = GaussianMixture(2, covariance_type=cov_type, random_state=0).fit(X)
    allowed = GaussianMixture(2, covariance_type=cov_type, random_state=0, missing="marginalize").fit(X)
    np.testing.assert_array_equal(plain.means_, allowed.means_)
    np.testing.assert_array_equal(plain.covariances_, allowed.covariances_)
    assert plain.lower_bounds_ == allowed.lower_bounds_
    np.testing.assert_array_equal(plain.score_samples(X), allowed.score_samples(X))


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_scores_of_incomplete_rows_are_the_marginal_mixture_density(cov_type):
    X = delete_at_random(two_blobs(300, d=4), 0.25)
    gm = fit(GaussianMixture(3, covariance_type=cov_type, random_state=0, missing="marginalize"), X)
    covs = full_covariances(gm.covariances_, cov_type, 3, 4)
    expected = np.array(
        [
            np.log(
                sum(
                    w
                    * multivariate_normal(m[~np.isnan(x)], S[np.ix_(~np.isnan(x), ~np.isnan(x))]).pdf(
                        x[~np.isnan(x)]
                    )
                    for w, m, S in zip(gm.weights_, gm.means_, covs, strict=True)
                )
            )
            for x in X
        ]
    )
    np.testing.assert_allclose(gm.score_samples(X), expected, rtol=1e-10, atol=1e-10)
    proba = gm.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(gm.predict(X), proba.argmax(axis=1))
    assert gm.score(X) == pytest.approx(expected.mean(), rel=1e-12)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    d=st.integers(2, 4),
    k=st.integers(1, 3),
    share=st.sampled_from([0.05, 0.2, 0.45]),
    cov_type=st.sampled_from(COV_TYPES),
    resolution=st.sampled_from([None, 0.25]),
)
def test_em_never_decreases_the_observed_data_objective(seed, d, k, share, cov_type, resolution):
    """At reg_covar=0 each iteration's bound (observed-data log-likelihood, cell-averaged with a
    resolution) is >= the last one's, for every covariance type and missingness pattern."""
    X = delete_at_random(two_blobs(160, d=d, seed=seed), share, seed=seed + 1)
    if resolution is not None:
        X = np.round(X / resolution) * resolution
    gm = GaussianMixture(
        k,
        covariance_type=cov_type,
        reg_covar=0.0,
        tol=1e-10,
        max_iter=40,
        random_state=seed,
        missing="marginalize",
        resolution=resolution,
    )
    assert_em_ascends(gm, X)


def test_parameters_approach_the_complete_data_fit_as_n_grows():
    """Values deleted completely at random: the estimate tracks the complete-data one, more
    closely the more customers there are."""
    gaps = []
    for n in (1_000, 30_000):
        X = two_blobs(n, seed=3)
        start = dict(means_init=np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]), weights_init=[0.5, 0.5])
        complete = fit(GaussianMixture(2, random_state=0, max_iter=300, tol=1e-8, **start), X)
        holed = fit(
            GaussianMixture(2, random_state=0, max_iter=300, tol=1e-8, missing="marginalize", **start),
            delete_at_random(X, 0.15, seed=4),
        )
        gaps.append(
            max(
                np.abs(holed.means_ - complete.means_).max(),
                np.abs(holed.covariances_ - complete.covariances_).max(),
                np.abs(holed.weights_ - complete.weights_).max(),
            )
        )
    assert gaps[1] < gaps[0]
    assert gaps[1] < 0.05, gaps


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_integer_weights_equal_repeated_rows_with_missing_values(cov_type):
    X = delete_at_random(two_blobs(120), 0.2)
    w = np.random.default_rng(2).integers(1, 4, size=len(X))
    precisions = {
        "full": np.stack([np.eye(3)] * 2),
        "tied": np.eye(3),
        "diag": np.ones((2, 3)),
        "spherical": np.ones(2),
    }[cov_type]
    # Every initial parameter given: no random choice can differ between the two fits.
    start = dict(
        means_init=np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]),
        weights_init=[0.5, 0.5],
        precisions_init=precisions,
        max_iter=15,
        tol=0.0,
        covariance_type=cov_type,
        missing="marginalize",
    )
    weighted = fit(GaussianMixture(2, **start), X, sample_weight=w.astype(float))
    repeated = fit(GaussianMixture(2, **start), np.repeat(X, w, axis=0))
    np.testing.assert_allclose(weighted.means_, repeated.means_, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(weighted.covariances_, repeated.covariances_, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(weighted.lower_bounds_, repeated.lower_bounds_, rtol=1e-10)


def test_missing_values_are_refused_by_default_and_empty_rows_always():
    X = delete_at_random(two_blobs(100), 0.1)
    with pytest.raises(ValueError, match=r"X contains NaN \(first at row"):
        GaussianMixture(2).fit(X)
    X[7] = np.nan
    with pytest.raises(ValueError, match="X row 7 has every feature missing"):
        GaussianMixture(2, missing="marginalize").fit(X)
    X[7] = 1.0
    gm = GaussianMixture(2, missing="marginalize", random_state=0).fit(X)
    with pytest.raises(ValueError, match="X row 0 has every feature missing"):
        gm.predict(np.full((1, 3), np.nan))
    X[:, 1] = np.nan
    with pytest.raises(ValueError, match="X column 1 is missing"):
        GaussianMixture(2, missing="marginalize").fit(X)
    X[:, 1] = np.inf
    with pytest.raises(ValueError, match="X contains infinity"):
        GaussianMixture(2, missing="marginalize").fit(X)


def test_check_estimator_passes_with_missing_values_allowed():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(GaussianMixture(missing="marginalize"), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert not failed
    assert GaussianMixture(missing="marginalize").__sklearn_tags__().input_tags.allow_nan
    assert not GaussianMixture().__sklearn_tags__().input_tags.allow_nan


def test_select_model_segments_customers_with_gaps_like_complete_ones():
    X = two_blobs(1_000, seed=5)
    truth = np.repeat([0, 1], 500)
    holed = delete_at_random(X, 0.1, seed=6)
    result = select_model(
        holed,
        n_components=range(1, 5),
        covariance_types=["full", "diag"],
        missing="marginalize",
        random_state=0,
    )
    assert result.best.n_components == 2
    labels = result.best.predict(holed)
    agreement = max(np.mean(labels == truth), np.mean(labels != truth))
    incomplete = np.isnan(holed).any(axis=1)
    assert agreement > 0.97
    assert (
        max(
            np.mean(labels[incomplete] == truth[incomplete]), np.mean(labels[incomplete] != truth[incomplete])
        )
        > 0.95
    )
    assert all(np.isfinite(row["bic"]) for row in result.table if row["status"] == "ok")
