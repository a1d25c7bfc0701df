"""Discrete data in the engine: the resolution floor, the covariance prior (MAP EM), grid extension.

Counts, rounded amounts and spikes of identical values make a plain Gaussian mixture collapse
(a component on one repeated value has no lower bound on its variance). ``resolution`` averages
each component's log-density over the rounding cell a recorded value stands for, and
``covariance_prior="data"`` is mclust's conjugate prior; with either, the objective is bounded and
EM ascends it at every iteration, with ``reg_covar=0`` too.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gmm_engine import ConvergenceWarning, GaussianMixture, NoAcceptableModelError, select_model
from gmm_engine.covariance import COVARIANCE_MODELS, COVARIANCE_TYPES

TYPES = list(COVARIANCE_TYPES)


def quiet_fit(gm: GaussianMixture, X, **kw) -> GaussianMixture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gm.fit(X, **kw)


def spiky_counts(n: int = 600, seed: int = 0) -> np.ndarray:
    """Two count features; half of the customers bought exactly once (a spike at 1)."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([1 + rng.poisson(4.0, n), rng.poisson(20.0, n)]).astype(np.float64)
    X[: n // 2, 0] = 1.0
    return X


@st.composite
def discrete_data(draw):
    n = draw(st.integers(20, 200))
    d = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    X = np.round(rng.gamma(1.0, 3.0, size=(n, d)))
    X[: n // 2, 0] = 1.0  # a spike holding half of the rows
    X[n // 2 : n // 2 + 3] = 9.0  # and a point mass of 3 rows in every feature
    return X


@given(
    X=discrete_data(),
    cov_type=st.sampled_from(TYPES),
    k=st.integers(1, 5),
    resolution=st.sampled_from([None, 1.0]),
    prior=st.sampled_from([None, "data"]),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_regularised_objective_never_decreases(X, cov_type, k, resolution, prior):
    """With a resolution or a prior, EM ascends its objective even at reg_covar=0 on spiky data."""
    if resolution is None and prior is None:
        resolution = 1.0  # the unregularised case can collapse; test_engine_properties covers it
    gm = GaussianMixture(
        k,
        covariance_type=cov_type,
        reg_covar=0.0,
        resolution=resolution,
        covariance_prior=prior,
        tol=0.0,
        max_iter=40,
        random_state=0,
    )
    quiet_fit(gm, X)
    bounds = np.array(gm.lower_bounds_)
    assert np.all(np.isfinite(bounds))
    assert np.all(np.diff(bounds) >= -1e-9 * np.maximum(1.0, np.abs(bounds[1:])))


@pytest.mark.parametrize("cov_type", TYPES)
def test_no_component_is_narrower_than_the_rounding_cell(cov_type):
    X = spiky_counts()
    gm = quiet_fit(
        GaussianMixture(
            4, covariance_type=cov_type, reg_covar=0.0, resolution=[1.0, 1.0], random_state=0, max_iter=300
        ),
        X,
    )
    k, d = gm.means_.shape
    full = COVARIANCE_MODELS[cov_type].full_covariances(gm.covariances_, k, d)
    variances = np.diagonal(full, axis1=1, axis2=2)
    floor = 1.0 / 12.0
    if cov_type == "spherical":
        assert np.all(variances >= floor - 1e-12)  # the mean of the per-feature floors
    else:
        assert np.all(variances >= floor - 1e-12)
    np.testing.assert_allclose(gm.rounding_variance_, [floor, floor])


def test_the_spike_becomes_one_legitimate_component():
    """Without regularisation a component sits on the spike with variance reg_covar; with the
    resolution it keeps 1/12 and holds the one-time buyers."""
    X = spiky_counts()
    plain = quiet_fit(GaussianMixture(3, random_state=0, max_iter=300), X)
    assert plain.covariances_[:, 0, 0].min() < 1e-4  # collapsed onto the spike
    gm = quiet_fit(GaussianMixture(3, random_state=0, max_iter=300, resolution=[1.0, 1.0]), X)
    j = int(np.argmin(np.abs(gm.means_[:, 0] - 1.0)))
    # On the spike, a variance just above the cell's 1/12 (it borrows a few customers at 2).
    assert gm.means_[j, 0] == pytest.approx(1.0, abs=0.01)
    assert 1.0 / 12.0 <= gm.covariances_[j, 0, 0] < 1.1 / 12.0
    assert gm.weights_[j] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("cov_type", TYPES)
def test_scores_are_the_cell_averaged_log_density(cov_type):
    """score_samples = log sum_k w_k N(x | k) exp(-tr(P_k R) / 2), R = diag(resolution**2 / 12)."""
    X = spiky_counts(300)
    resolution = np.array([1.0, 2.0])
    gm = quiet_fit(GaussianMixture(3, covariance_type=cov_type, resolution=resolution, random_state=1), X)
    k, d = gm.means_.shape
    full = COVARIANCE_MODELS[cov_type].full_covariances(gm.covariances_, k, d)
    R = np.diag(resolution**2 / 12.0)
    log_terms = np.empty((X.shape[0], k))
    for j in range(k):
        P = np.linalg.inv(full[j])
        diff = X - gm.means_[j]
        _, logdet = np.linalg.slogdet(full[j])
        log_terms[:, j] = (
            np.log(gm.weights_[j])
            - 0.5 * (d * np.log(2 * np.pi) + logdet)
            - 0.5 * np.einsum("ni,ij,nj->n", diff, P, diff)
            - 0.5 * np.trace(P @ R)
        )
    expected = np.logaddexp.reduce(log_terms, axis=1)
    np.testing.assert_allclose(gm.score_samples(X), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gm.predict_proba(X), np.exp(log_terms - expected[:, None]), atol=1e-9)
    assert gm.score(X) == pytest.approx(expected.mean())


@pytest.mark.parametrize("cov_type", TYPES)
def test_zero_resolution_changes_nothing(cov_type):
    """A resolution of 0 marks continuous features: bitwise the fit without one."""
    X = np.random.default_rng(3).standard_normal((400, 3))
    a = quiet_fit(GaussianMixture(3, covariance_type=cov_type, random_state=0), X)
    b = quiet_fit(GaussianMixture(3, covariance_type=cov_type, random_state=0, resolution=[0.0, 0.0, 0.0]), X)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.lower_bounds_ == b.lower_bounds_ and b.rounding_variance_ is None


@pytest.mark.parametrize("cov_type", TYPES)
def test_per_feature_reg_covar_equal_to_the_scalar_is_the_scalar(cov_type):
    X = np.random.default_rng(4).standard_normal((300, 2))
    a = quiet_fit(GaussianMixture(2, covariance_type=cov_type, reg_covar=0.05, random_state=0), X)
    b = quiet_fit(GaussianMixture(2, covariance_type=cov_type, reg_covar=[0.05, 0.05], random_state=0), X)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-12)
    # and a larger floor on one feature only lifts that feature's variances
    c = quiet_fit(GaussianMixture(2, covariance_type="diag", reg_covar=[0.05, 5.0], random_state=0), X)
    assert c.covariances_[:, 1].min() >= 5.0 and c.covariances_[:, 0].max() < 5.0


def smallest_variance_near(gm: GaussianMixture, point: float) -> float:
    k, d = gm.means_.shape
    full = COVARIANCE_MODELS[gm.covariance_type].full_covariances(gm.covariances_, k, d)
    j = int(np.argmin(np.abs(gm.means_[:, 0] - point)))
    return float(np.linalg.eigvalsh(full[j])[0])


@pytest.mark.parametrize("cov_type", ["full", "diag", "spherical"])  # tied shares one covariance
def test_prior_keeps_a_small_point_mass_from_collapsing(cov_type):
    """Eight identical customers: maximum likelihood collapses onto them, the prior does not."""
    rng = np.random.default_rng(5)
    X = np.vstack([rng.standard_normal((300, 2)), np.full((8, 2), 6.0)])
    start = {
        "means_init": np.array([[0.0, 0.0], [6.0, 6.0]]),
        "weights_init": np.array([0.97, 0.03]),
        "reg_covar": 1e-9,
        "random_state": 0,
        "covariance_type": cov_type,
    }
    ml = quiet_fit(GaussianMixture(2, **start), X)
    assert smallest_variance_near(ml, 6.0) < 1e-6
    gm = quiet_fit(GaussianMixture(2, covariance_prior="data", **start), X)
    # A MAP variance of the prior's order, scale / (n_k + dof + 2 or d + 1), with n_k = 8.
    assert smallest_variance_near(gm, 6.0) > 0.02
    assert gm.degrees_of_freedom_prior_ == 4.0


def test_map_covariance_is_the_closed_form_on_one_component():
    """k = 1, full: the MAP covariance is (n S + scale) / (n + dof + d + 1), scale = cov(X)."""
    X = np.random.default_rng(6).standard_normal((50, 3)) * [1.0, 2.0, 0.5]
    gm = GaussianMixture(1, reg_covar=0.0, covariance_prior="data", degrees_of_freedom_prior=7.0).fit(X)
    S = np.cov(X, rowvar=False, bias=True)
    expected = (50 * S + S) / (50 + 7.0 + 3 + 1)
    np.testing.assert_allclose(gm.covariances_[0], expected, rtol=1e-10)
    np.testing.assert_allclose(gm.covariance_prior_, S, rtol=1e-10)


def test_bad_resolution_and_prior_are_named():
    X = np.random.default_rng(0).standard_normal((30, 2))
    with pytest.raises(ValueError, match=r"resolution must be a number or have shape \(2,\)"):
        GaussianMixture(2, resolution=[1.0, 1.0, 1.0]).fit(X)
    with pytest.raises(ValueError, match="resolution must hold finite numbers >= 0"):
        GaussianMixture(2, resolution=[1.0, -1.0]).fit(X)
    with pytest.raises(ValueError, match="reg_covar must be a number or have shape"):
        GaussianMixture(2, reg_covar=[1e-6]).fit(X)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "'covariance_prior' parameter of GaussianMixture must be a str among {'data'} or None"
        ),
    ):
        GaussianMixture(2, covariance_prior="mclust").fit(X)
    with pytest.raises(ValueError, match="degrees_of_freedom_prior"):
        GaussianMixture(2, covariance_prior="data", degrees_of_freedom_prior=-1.0).fit(X)


# --------------------------------------------------------------------------- grid extension
def blobs(k: int, n_per: int = 150, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-30, 30, size=(k, 2))
    return np.vstack([c + rng.standard_normal((n_per, 2)) for c in centres])


def test_best_at_the_edge_extends_the_grid_until_it_is_interior():
    X = blobs(5)
    result = select_model(X, range(1, 4), ["full"], n_init=2, random_state=0, k_limit=10)
    assert result.best.n_components == 5
    assert result.k_max_given == 3 and result.k_max_tried == 6 and result.extended
    assert not result.at_edge and not result.at_limit
    assert result.grid_note() == "best at the edge of k = 1..3; extended to 6"
    assert [r["n_components"] for r in result.table] == [1, 2, 3, 4, 5, 6]


def test_extension_stops_at_the_limit_and_says_so():
    X = blobs(5)
    result = select_model(X, range(1, 4), ["full"], n_init=2, random_state=0, k_limit=4)
    assert result.best.n_components == 4 and result.k_max_tried == 4
    assert result.at_edge and result.at_limit
    assert "extended to 4, the limit, and still at the edge" in result.grid_note()
    plain = select_model(X, range(1, 4), ["full"], n_init=2, random_state=0)
    assert plain.k_max_tried == 3 and plain.at_limit
    assert plain.grid_note() == "best at the edge of k = 1..3, which is also the limit"


def test_an_interior_choice_is_not_extended():
    X = blobs(2)
    result = select_model(X, range(1, 6), ["full", "diag"], n_init=2, random_state=0, k_limit=10)
    assert result.best.n_components == 2 and result.k_max_tried == 5
    assert not result.extended and result.grid_note() == ""


def test_progress_counts_the_extension_fits():
    X = blobs(4)
    calls = []
    select_model(
        X,
        range(1, 3),
        ["full"],
        n_init=1,
        random_state=0,
        k_limit=8,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert [c[0] for c in calls] == list(range(1, len(calls) + 1))
    assert calls[-1][0] == calls[-1][1] == 5  # k = 1..5: best 4 is interior


def test_no_acceptable_model_carries_the_table():
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0]]), 3, axis=0)
    with pytest.raises(NoAcceptableModelError) as info:
        select_model(X, [2], ["full"], n_init=1, random_state=0)
    assert info.value.table and info.value.table[0]["status"] in ("failed", "degenerate")
    assert isinstance(info.value, ValueError)


def test_selection_with_resolution_and_prior_sets_nothing_aside_on_a_count_spike():
    """The case the degenerate guard used to catch: with the floor and the prior, every
    candidate on a count feature with a 50% spike is acceptable, and the spike is one segment."""
    X = spiky_counts(800, seed=2)
    plain = select_model(X, range(1, 6), TYPES, n_init=2, random_state=0)
    assert any(r["status"] != "ok" for r in plain.table)
    result = select_model(
        X,
        range(1, 6),
        TYPES,
        n_init=2,
        random_state=0,
        resolution=[1.0, 1.0],
        covariance_prior="data",
        k_limit=10,
    )
    assert all(r["status"] == "ok" for r in result.table)
    gm = result.best
    on_spike = np.abs(gm.means_[:, 0] - 1.0) < 0.05
    assert on_spike.sum() >= 1 and gm.weights_[on_spike].sum() == pytest.approx(0.5, abs=0.05)
