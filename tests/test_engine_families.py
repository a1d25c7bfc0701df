"""mclust's fourteen covariance models (issue 11, part 3).

Reference values are mclust's own (R 4.2, mclust 6.0 from Debian's r-cran-mclust), printed by
``mclustBIC(faithful, G = 1:4)``, ``mclustBIC(iris[, 1:4], G = 2:3)`` and
``nVarParams(model, d = 4, G = 3)``; R is not needed to run these tests.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import assert_em_ascends
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_iris
from test_selection import load_faithful
from threadpoolctl import threadpool_limits

from gmm_engine import GaussianMixture, full_covariances, n_parameters, select_model
from gmm_engine.covariance import MCLUST_MODELS

#: mclust's nVarParams(model, d = 4, G = 3).
MCLUST_VAR_PARAMS = {
    "EII": 1,
    "VII": 3,
    "EEI": 4,
    "VEI": 6,
    "EVI": 10,
    "VVI": 12,
    "EEE": 10,
    "VEE": 12,
    "EVE": 16,
    "VVE": 18,
    "EEV": 22,
    "VEV": 24,
    "EVV": 28,
    "VVV": 30,
}
#: mclust's BIC (its sign: higher is better) with 2 components.
MCLUST_BIC_FAITHFUL_2 = {
    "EII": -3452.998,
    "VII": -3458.305,
    "EEI": -2354.601,
    "VEI": -2350.607,
    "EVI": -2352.618,
    "VVI": -2346.065,
    "EEE": -2325.220,
    "VEE": -2322.972,
    "EVE": -2324.273,
    "VVE": -2320.433,
    "EEV": -2329.115,
    "VEV": -2325.416,
    "EVV": -2327.598,
    "VVV": -2322.192,
}
MCLUST_BIC_IRIS_2 = {
    "EII": -1123.412,
    "VII": -1012.235,
    "EEI": -1042.968,
    "VEI": -956.282,
    "EVI": -1007.308,
    "VVI": -857.551,
    "EEE": -688.097,
    "VEE": -656.327,
    "EVE": -657.226,
    "VVE": -605.184,
    "EEV": -644.600,
    "VEV": -561.728,
    "EVV": -658.331,
    "VVV": -574.018,
}
MCLUST_BIC_IRIS_3 = {
    "EII": -878.765,
    "VII": -853.814,
    "EEI": -813.050,
    "VEI": -779.157,
    "EVI": -797.834,
    "VVI": -744.638,
    "EEE": -632.965,
    "VEE": -605.398,
    "EVE": -666.549,
    "VVE": -636.426,
    "EEV": -644.781,
    "VEV": -562.552,
    "EVV": -656.036,
    "VVV": -580.840,
}


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    with threadpool_limits(limits=1):
        yield


def best_bic(X: np.ndarray, model: str, k: int, n_init: int = 10) -> tuple[float, GaussianMixture]:
    """mclust's sign: -bic; the best of ``n_init`` starts, EM run to a tight tolerance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(
            k, covariance_type=model, reg_covar=0.0, tol=1e-9, max_iter=1000, n_init=n_init, random_state=0
        ).fit(X)
    return -gm.bic(X), gm


def test_parameter_counts_are_mclusts():
    assert set(MCLUST_MODELS) == set(MCLUST_VAR_PARAMS)
    for model, count in MCLUST_VAR_PARAMS.items():
        assert n_parameters(model, 3, 4) == count + 3 * 4 + 2  # plus means and weights


@pytest.mark.parametrize("model", MCLUST_MODELS)
def test_faithful_and_iris_with_two_components_match_mclusts_bic(model):
    """Two components are a well-defined optimum: the same BIC as mclust to 0.01 (VVE: ours
    finds a higher likelihood, mclust's iterations stop earlier)."""
    for X, reference in ((load_faithful(), MCLUST_BIC_FAITHFUL_2), (load_iris().data, MCLUST_BIC_IRIS_2)):
        bic, _ = best_bic(X, model, 2)
        if model == "VVE":
            assert reference[model] - 0.01 <= bic <= reference[model] + 1.0
        else:
            assert bic == pytest.approx(reference[model], abs=0.01)


def test_iris_with_three_components_is_never_worse_than_mclust():
    X = load_iris().data
    for model in MCLUST_MODELS:
        bic, _ = best_bic(X, model, 3)
        assert bic >= MCLUST_BIC_IRIS_3[model] - 0.01, model


def test_fitted_covariances_have_the_models_structure():
    """Volume, shape and orientation equal or not across components, as the name says."""
    X = load_iris().data
    for model in ("EII", "EEI", "EVI", "VEI", "VEE", "EVE", "VVE", "EEV", "VEV", "EVV"):
        _, gm = best_bic(X, model, 3, n_init=2)
        S = full_covariances(gm.covariances_, model, 3, 4)
        values, vectors = np.linalg.eigh(S)
        volume = np.exp(np.log(values).mean(axis=1))
        shape = values / volume[:, None]
        axis_aligned = np.allclose(S, np.stack([np.diag(np.diag(s)) for s in S]), atol=1e-12)
        assert axis_aligned == (model[2] == "I"), model
        if model[0] == "E":
            np.testing.assert_allclose(volume, volume[0], rtol=1e-8, err_msg=model)
        if model[1] == "E":
            np.testing.assert_allclose(shape, shape[:1].repeat(3, axis=0), rtol=1e-6, err_msg=model)
        if model[1] == "I":
            np.testing.assert_allclose(shape, 1.0, rtol=1e-8, err_msg=model)
        if model[2] == "E":
            # One orientation: every covariance commutes with every other.
            for a in S:
                for b in S:
                    np.testing.assert_allclose(a @ b, b @ a, atol=1e-8 * np.abs(a @ b).max(), err_msg=model)


@pytest.mark.parametrize(
    "alias, name", [("VVV", "full"), ("EEE", "tied"), ("VVI", "diag"), ("VII", "spherical")]
)
def test_mclust_names_of_scikit_learns_four_are_the_same_models(alias, name):
    X = load_faithful()
    a = GaussianMixture(3, covariance_type=alias, random_state=0).fit(X)
    b = GaussianMixture(3, covariance_type=name, random_state=0).fit(X)
    np.testing.assert_array_equal(a.covariances_, b.covariances_)
    assert a.bic(X) == b.bic(X)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    model=st.sampled_from(MCLUST_MODELS),
    k=st.integers(1, 3),
    d=st.integers(2, 3),
    extra=st.sampled_from(["none", "resolution", "missing"]),
)
def test_em_never_decreases_the_objective_for_every_model(seed, model, k, d, extra):
    """Each model's M-step maximises (or, iterated, increases) the expected complete-data
    objective, so EM ascends, also with a resolution and with missing values."""
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.multivariate_normal(rng.normal(0, 4, d), np.eye(d) + 0.5, 70) for _ in range(3)])
    kwargs = {}
    if extra == "resolution":
        X = np.round(X * 2) / 2
        kwargs["resolution"] = 0.5
    if extra == "missing":
        X[rng.random(X.shape) < 0.1] = np.nan
        X[np.isnan(X).all(axis=1), 0] = 0.0
        kwargs["missing"] = "marginalize"
    gm = GaussianMixture(
        k, covariance_type=model, reg_covar=0.0, tol=1e-10, max_iter=60, random_state=seed, **kwargs
    )
    assert_em_ascends(gm, X, rel=1e-9)


def test_selection_over_all_fourteen_chooses_mclusts_model_for_old_faithful():
    result = select_model(
        load_faithful(),
        n_components=range(1, 5),
        covariance_types=MCLUST_MODELS,
        n_init=5,
        random_state=0,
        reg_covar=0.0,
        tol=1e-6,
    )
    assert (result.best.n_components, result.best.covariance_type) == (3, "EEE")
    assert len(result.table) == 4 * 14


@pytest.mark.parametrize("model", ["EII", "EVI", "VEE", "EVE", "VEV", "EVV"])
def test_the_conjugate_prior_gives_map_em_for_every_model(model):
    """MAP EM: the bound (log-likelihood plus log prior) never decreases; a spike of identical
    values keeps a variance of the prior's order instead of collapsing."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (200, 2)), np.tile([4.0, 4.0], (30, 1))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(
            2,
            covariance_type=model,
            covariance_prior="data",
            reg_covar=0.0,
            tol=1e-10,
            max_iter=200,
            random_state=0,
        ).fit(X)
    lb = np.asarray(gm.lower_bounds_)
    assert np.all(np.diff(lb) >= -1e-9 * np.abs(lb[:-1]))
    S = full_covariances(gm.covariances_, model, 2, 2)
    assert np.linalg.eigvalsh(S).min() > 1e-3
