"""Bad input and numerically awkward data: clear errors, never silent NaN.

"A message naming the argument" is checked as the argument's name appearing as a word in the
error message (``X``, ``sample_weight``, ``n_components``, ...). For collapsed or emptied
components the issue allows either a documented rule (finite parameters) or a clear error; the
tests accept both, but reject NaN/inf anywhere in the fitted model and numpy's "invalid value"
RuntimeWarnings (the usual sign that a NaN was produced and then papered over).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from gmm_engine import ConvergenceWarning, GaussianMixture, NotFittedError, select_model

COV_TYPES = ("full", "tied", "diag", "spherical")


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    with threadpool_limits(limits=1):
        yield


def names(arg: str) -> str:
    """Regex: ``arg`` as a whole word."""
    return rf"(?<![A-Za-z0-9_]){re.escape(arg)}(?![A-Za-z0-9_])"


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(0)
    return np.vstack([rng.normal(0, 1, (40, 2)), rng.normal(6, 1, (40, 2))])


@pytest.fixture(scope="module")
def fitted(X):
    return GaussianMixture(2, random_state=0).fit(X)


# --------------------------------------------------------------------------- X
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_X_is_rejected_in_fit(X, bad):
    Xb = X.copy()
    Xb[7, 1] = bad
    with pytest.raises(ValueError, match=names("X")) as info:
        GaussianMixture(2).fit(Xb)
    assert re.search(r"nan|inf|finite", str(info.value), re.IGNORECASE)


@pytest.mark.parametrize(
    "method", ["predict", "predict_proba", "score_samples", "score", "bic", "aic", "icl"]
)
def test_non_finite_X_is_rejected_after_fit(fitted, X, method):
    Xb = X.copy()
    Xb[3, 0] = np.nan
    with pytest.raises(ValueError, match=names("X")):
        getattr(fitted, method)(Xb)


@pytest.mark.parametrize(
    "shape_maker",
    [
        pytest.param(lambda X: X[:, 0], id="1-D"),
        pytest.param(lambda X: X[None, :, :], id="3-D"),
        pytest.param(lambda X: X[:0], id="no-rows"),
        pytest.param(lambda X: X[:, :0], id="no-columns"),
    ],
)
def test_wrongly_shaped_X_is_rejected(X, shape_maker):
    with pytest.raises(ValueError, match=names("X")):
        GaussianMixture(1).fit(shape_maker(X))


def test_non_numeric_X_is_rejected():
    with pytest.raises(ValueError, match=names("X")):
        GaussianMixture(1).fit(np.array([["a", "b"], ["c", "d"], ["e", "f"]]))


def test_wrong_number_of_features_after_fit(fitted, X):
    X3 = np.column_stack([X, X[:, 0]])
    for method in ("predict", "predict_proba", "score_samples", "score"):
        with pytest.raises(ValueError, match=r"feature"):
            getattr(fitted, method)(X3)


def test_more_components_than_samples(X):
    with pytest.raises(ValueError, match=names("n_components")):
        GaussianMixture(5).fit(X[:4])


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": -2}, "n_components"),
        ({"n_components": 2.5}, "n_components"),
        ({"covariance_type": "VVX"}, "covariance_type"),
        ({"tol": -1e-3}, "tol"),
        ({"reg_covar": -1e-6}, "reg_covar"),
        ({"max_iter": -1}, "max_iter"),
        ({"n_init": 0}, "n_init"),
        ({"init_params": "hierarchical"}, "init_params"),
        ({"weights_init": [0.5, 0.6]}, "weights_init"),
        ({"weights_init": [1.5, -0.5]}, "weights_init"),
        ({"weights_init": [1.0]}, "weights_init"),
        ({"means_init": np.zeros((3, 2))}, "means_init"),
        ({"means_init": np.zeros((2, 3))}, "means_init"),
        ({"precisions_init": np.ones((2, 3, 3))}, "precisions_init"),
        ({"precisions_init": np.stack([np.eye(2), -np.eye(2)])}, "precisions_init"),
    ],
)
def test_bad_parameter_is_named(X, kwargs, arg):
    params = {"n_components": 2} | kwargs
    with pytest.raises(ValueError, match=names(arg)):
        GaussianMixture(**params).fit(X)


@pytest.mark.parametrize(
    "cov_type, bad",
    [
        ("tied", np.ones((2, 2, 2))),
        ("diag", -np.ones((2, 2))),
        ("spherical", np.array([1.0, 0.0])),
        ("spherical", np.ones((2, 2))),
    ],
)
def test_bad_precisions_init_per_covariance_type(X, cov_type, bad):
    with pytest.raises(ValueError, match=names("precisions_init")):
        GaussianMixture(2, covariance_type=cov_type, precisions_init=bad).fit(X)


def test_sample_needs_a_positive_count(fitted):
    with pytest.raises(ValueError, match=names("n_samples")):
        fitted.sample(0)


# --------------------------------------------------------------------------- sample_weight
@pytest.mark.parametrize(
    "make_weights",
    [
        pytest.param(lambda n: np.r_[-1.0, np.ones(n - 1)], id="negative"),
        pytest.param(lambda n: np.zeros(n), id="all-zero"),
        pytest.param(lambda n: np.ones(n - 1), id="wrong-length"),
        pytest.param(lambda n: np.r_[np.nan, np.ones(n - 1)], id="nan"),
        pytest.param(lambda n: np.r_[np.inf, np.ones(n - 1)], id="inf"),
        pytest.param(lambda n: np.ones((n, 2)), id="2-D"),
    ],
)
def test_bad_sample_weight_is_named(X, fitted, make_weights):
    w = make_weights(len(X))
    with pytest.raises(ValueError, match=names("sample_weight")):
        GaussianMixture(2).fit(X, sample_weight=w)
    for method in ("score", "bic", "aic", "icl"):
        with pytest.raises(ValueError, match=names("sample_weight")):
            getattr(fitted, method)(X, sample_weight=w)


def test_fewer_weighted_samples_than_components(X):
    """Rows with zero weight do not count as samples for n_components <= n_samples.

    Integer weights must behave like repeated rows, and np.repeat(X, w) here has 2 rows, for
    which fitting 3 components raises; the weighted fit must raise the same way.
    """
    w = np.zeros(len(X))
    w[:2] = 1.0
    with pytest.raises(ValueError, match=names("n_components")):
        GaussianMixture(3).fit(X, sample_weight=w)


# --------------------------------------------------------------------------- not fitted
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda gm, X: gm.predict(X), id="predict"),
        pytest.param(lambda gm, X: gm.predict_proba(X), id="predict_proba"),
        pytest.param(lambda gm, X: gm.score_samples(X), id="score_samples"),
        pytest.param(lambda gm, X: gm.score(X), id="score"),
        pytest.param(lambda gm, X: gm.bic(X), id="bic"),
        pytest.param(lambda gm, X: gm.aic(X), id="aic"),
        pytest.param(lambda gm, X: gm.icl(X), id="icl"),
        pytest.param(lambda gm, X: gm.sample(3), id="sample"),
    ],
)
def test_use_before_fit_raises_not_fitted(X, call):
    gm = GaussianMixture(2)
    with pytest.raises(NotFittedError, match=r"fit") as info:
        call(gm, X)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AttributeError)
    assert not hasattr(gm, "means_")


def test_failed_fit_leaves_no_half_fitted_model(X):
    gm = GaussianMixture(2)
    Xb = X.copy()
    Xb[0, 0] = np.nan
    with pytest.raises(ValueError):
        gm.fit(Xb)
    with pytest.raises(NotFittedError):
        gm.predict(X)


# --------------------------------------------------------------------------- collapsed components
def fit_or_clear_error(gm: GaussianMixture, X, **kw):
    """Fit; return the model, or None after a ValueError with a useful message.

    Fails on NaN/inf anywhere and on numpy "invalid value" RuntimeWarnings.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            gm.fit(X, **kw)
        except ValueError as exc:
            message = str(exc)
            assert len(message) > 20, message
            assert re.search(r"component|covariance|collaps|singular|reg_covar|degenerate", message, re.I), (
                message
            )
            return None
    invalid = [
        w for w in caught if issubclass(w.category, RuntimeWarning) and "invalid value" in str(w.message)
    ]
    assert not invalid, [str(w.message) for w in invalid]
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        value = np.asarray(getattr(gm, name))
        assert np.all(np.isfinite(value)), f"{name} has non-finite values: {value}"
    assert np.isfinite(gm.lower_bound_)
    assert np.all(np.isfinite(gm.lower_bounds_))
    assert gm.weights_.sum() == pytest.approx(1.0, abs=1e-9)
    proba = gm.predict_proba(X)
    assert np.all(np.isfinite(proba))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert np.all(np.isfinite(gm.score_samples(X)))
    for crit in ("bic", "aic", "icl"):
        assert np.isfinite(getattr(gm, crit)(X)), crit
    return gm


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("reg_covar", [1e-6, 0.0])
def test_duplicated_points_never_give_nan(cov_type, reg_covar):
    """Five distinct 2-D points, each repeated 20 times, fitted with 3 components."""
    base = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, 1.0], [5.0, 5.0], [-2.0, 4.0]])
    X = np.repeat(base, 20, axis=0)
    gm = GaussianMixture(3, covariance_type=cov_type, reg_covar=reg_covar, random_state=0, max_iter=200)
    fit_or_clear_error(gm, X)


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("init_params", ["kmeans", "ward", "k-means++", "random", "random_from_data"])
def test_more_components_than_distinct_points(cov_type, init_params):
    X = np.repeat(np.array([[0.0, 1.0], [2.0, 2.0], [4.0, -1.0]]), 10, axis=0)
    gm = GaussianMixture(5, covariance_type=cov_type, init_params=init_params, random_state=1, max_iter=100)
    fit_or_clear_error(gm, X)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_component_started_far_from_all_data_empties_without_nan(cov_type):
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(0, 1, (60, 2)), rng.normal(8, 1, (60, 2))])
    means = np.array([[0.0, 0.0], [8.0, 8.0], [1e4, -1e4]])
    prec = {
        "full": np.stack([np.eye(2)] * 3),
        "tied": np.eye(2),
        "diag": np.ones((3, 2)),
        "spherical": np.ones(3),
    }[cov_type]
    gm = GaussianMixture(3, covariance_type=cov_type, means_init=means, precisions_init=prec, max_iter=50)
    gm = fit_or_clear_error(gm, X)
    if gm is not None:
        # the two real clusters are still found
        real = np.sort(gm.means_[np.argsort(gm.weights_)[-2:], 0])
        np.testing.assert_allclose(real, [0.0, 8.0], atol=0.5)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_single_outlier_component_stays_finite(cov_type):
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(0, 1, (80, 2)), [[50.0, 50.0]]])
    gm = GaussianMixture(2, covariance_type=cov_type, random_state=0, max_iter=100)
    fit_or_clear_error(gm, X)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_constant_feature_is_handled(cov_type):
    rng = np.random.default_rng(4)
    X = np.column_stack([rng.normal(size=100), np.full(100, 3.0)])
    gm = GaussianMixture(2, covariance_type=cov_type, random_state=0)
    fit_or_clear_error(gm, X)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_all_rows_identical(cov_type):
    X = np.full((30, 2), 7.0)
    gm = GaussianMixture(1, covariance_type=cov_type)
    fit_or_clear_error(gm, X)


def test_float32_with_large_offset_works():
    """float32 data far from the origin (e.g. timestamps, large amounts) still fits sensibly."""
    rng = np.random.default_rng(5)
    X = (1.0e5 + np.vstack([rng.normal(0, 1, (100, 2)), rng.normal(6, 1, (100, 2))])).astype(np.float32)
    for cov_type in COV_TYPES:
        gm = fit_or_clear_error(GaussianMixture(2, covariance_type=cov_type, random_state=0), X)
        assert gm is not None, "well-separated float32 data must fit"
        np.testing.assert_allclose(np.sort(gm.means_[:, 0]) - 1.0e5, [0.0, 6.0], atol=0.5)
        assert gm.predict(X).shape == (200,)


def test_convergence_warning_is_scikit_learns_and_is_raised_on_max_iter(X):
    """One warning filter silences this engine and scikit-learn alike."""
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning

    assert ConvergenceWarning is SklearnConvergenceWarning
    with pytest.warns(SklearnConvergenceWarning, match="max_iter=1"):
        GaussianMixture(2, max_iter=1, tol=0.0, random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GaussianMixture(2, max_iter=200, random_state=0).fit(X)


# --------------------------------------------------------------------------- select_model input
def test_select_model_rejects_bad_arguments(X):
    with pytest.raises(ValueError, match=names("criterion")):
        select_model(X, n_components=[1, 2], criterion="dic")
    with pytest.raises(ValueError, match=names("covariance_types")):
        select_model(X, n_components=[1, 2], covariance_types=("full", "VVX"))
    with pytest.raises(ValueError, match=names("n_components")):
        select_model(X, n_components=[])
    with pytest.raises(ValueError, match=names("n_components")):
        select_model(X, n_components=[0, 1])
    with pytest.raises(ValueError, match=names("X")):
        select_model(np.r_[X, [[np.nan, 0.0]]], n_components=[1, 2])
    with pytest.raises(ValueError, match=names("sample_weight")):
        select_model(X, n_components=[1, 2], sample_weight=-np.ones(len(X)))


@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_fit_and_predict_never_modify_the_callers_array(d, covariance_type):
    X = np.random.default_rng(3).normal(size=(200, d)) + 50.0
    w = np.ones(200)
    original, original_w = X.copy(), w.copy()
    gm = GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X, sample_weight=w)
    gm.predict_proba(X)
    gm.score_samples(X)
    np.testing.assert_array_equal(X, original)
    np.testing.assert_array_equal(w, original_w)
