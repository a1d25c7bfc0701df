"""The engine as a native scikit-learn estimator (issue 11, part 1).

scikit-learn's own conformance suite, the meta-estimators a scikit-learn user reaches for
(``GridSearchCV``, ``Pipeline``, ``clone``), pandas input, ``verbose``, and one set of declarative
parameter rules shared by the estimator and ``select_model``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import check_estimator

from gmm_engine import GaussianMixture, NotFittedError, select_model


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(0)
    return np.vstack([rng.normal(0, 1, (150, 2)), rng.normal(6, 1, (150, 2))])


def _outcomes(estimator) -> dict[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    return {r["check_name"]: r["status"] for r in results}


def test_check_estimator_passes_every_check_scikit_learn_runs_on_its_own():
    ours = _outcomes(GaussianMixture())
    theirs = _outcomes(SklearnGaussianMixture())
    failed = {name for name, status in ours.items() if status == "failed"}
    assert not failed, f"scikit-learn checks failed: {sorted(failed)}"
    # A check may be skipped only where scikit-learn skips it for its own GaussianMixture (today
    # the array-API check, which needs SCIPY_ARRAY_API set before scipy is imported).
    skipped = {name for name, status in ours.items() if status != "passed"}
    assert skipped <= {name for name, status in theirs.items() if status != "passed"}
    assert len(ours) >= 40


def test_grid_search_scores_by_mean_log_likelihood(X):
    search = GridSearchCV(GaussianMixture(random_state=0), {"n_components": [1, 2, 3]}, cv=3).fit(X)
    # Two well-separated blobs: two components beat one on held-out likelihood by a wide margin.
    scores = dict(
        zip(
            [p["n_components"] for p in search.cv_results_["params"]],
            search.cv_results_["mean_test_score"],
            strict=True,
        )
    )
    assert scores[2] > scores[1] + 0.5
    assert search.best_params_["n_components"] in (2, 3)
    best = search.best_estimator_
    assert best.score(X) == pytest.approx(best.score_samples(X).mean(), rel=1e-12)


def test_pipeline_equals_scaling_by_hand(X):
    pipe = make_pipeline(StandardScaler(), GaussianMixture(2, random_state=0)).fit(X)
    Z = StandardScaler().fit_transform(X)
    direct = GaussianMixture(2, random_state=0).fit(Z)
    np.testing.assert_array_equal(pipe.predict(X), direct.predict(Z))
    assert pipe.score(X) == pytest.approx(direct.score(Z), rel=1e-12)


def test_clone_copies_parameters_and_not_the_fit(X):
    gm = GaussianMixture(
        3, covariance_type="diag", reg_covar=np.full(2, 1e-3), resolution=0.5, random_state=7
    ).fit(X)
    twin = clone(gm)
    assert twin.get_params()["n_components"] == 3
    assert twin.get_params()["resolution"] == 0.5
    assert twin.reg_covar is not gm.reg_covar
    np.testing.assert_array_equal(twin.reg_covar, gm.reg_covar)
    assert not hasattr(twin, "means_")
    assert "covariance_type='diag'" in repr(twin)
    twin.set_params(n_components=2)
    assert twin.n_components == 2
    with pytest.raises(ValueError, match="Invalid parameter 'k'"):
        twin.set_params(k=2)


def test_pandas_input_records_and_checks_feature_names(X):
    frame = pd.DataFrame(X, columns=["recency", "monetary"])
    gm = GaussianMixture(2, random_state=0).fit(frame)
    np.testing.assert_array_equal(gm.feature_names_in_, ["recency", "monetary"])
    assert gm.n_features_in_ == 2
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        np.testing.assert_array_equal(gm.predict(frame), gm.predict(X))
    with pytest.raises(ValueError, match="feature names should match"):
        gm.predict(frame.rename(columns={"monetary": "spend"}))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_verbose_prints_scikit_learns_progress_lines(X, capsys):
    GaussianMixture(2, n_init=2, verbose=2, verbose_interval=1, tol=0.0, max_iter=3, random_state=0).fit(X)
    lines = capsys.readouterr().out.splitlines()
    assert [ln for ln in lines if ln.startswith("Initialization ") and ln[15:].isdigit()] == [
        "Initialization 0",
        "Initialization 1",
    ]
    assert sum("Iteration" in ln and "ll change" in ln for ln in lines) == 6
    assert sum(ln.startswith("Initialization did not converge. lower bound") for ln in lines) == 2
    GaussianMixture(2, verbose=0, random_state=0).fit(X)
    assert capsys.readouterr().out == ""


def test_unfitted_use_raises_scikit_learns_not_fitted_error(X):
    assert NotFittedError is SklearnNotFittedError
    with pytest.raises(SklearnNotFittedError):
        GaussianMixture(2).predict(X)
    # A fit that failed is not a fitted model, even though n_features_in_ was already set.
    gm = GaussianMixture(2, means_init=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="means_init"):
        gm.fit(X)
    with pytest.raises(SklearnNotFittedError):
        gm.predict(X)


@pytest.mark.parametrize(
    "name, value",
    [
        ("n_components", "3"),
        ("tol", -1.0),
        ("max_iter", 2.5),
        ("init_params", "agglomerative"),
        ("covariance_type", "VVX"),
        ("n_jobs", 0),
        ("random_state", "seed"),
        ("verbose_interval", 0),
    ],
)
def test_one_rule_set_for_the_estimator_and_select_model(X, name, value):
    """The same bad value is refused by the same declarative rule in both entry points."""
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter of GaussianMixture"):
        GaussianMixture(**{name: value}).fit(X)
    if name in ("tol", "max_iter", "init_params", "n_jobs"):
        with pytest.raises(InvalidParameterError, match=f"'{name}' parameter of select_model"):
            select_model(X, n_components=[1, 2], covariance_types=["full"], **{name: value})


def test_select_model_refuses_bad_grid_arguments_by_name(X):
    with pytest.raises(InvalidParameterError, match="'criterion' parameter of select_model"):
        select_model(X, n_components=[1, 2], criterion="dic")
    with pytest.raises(InvalidParameterError, match="'k_limit' parameter of select_model"):
        select_model(X, n_components=[1, 2], k_limit=0)
    with pytest.raises(ValueError, match="n_components entries must be integers >= 1"):
        select_model(X, n_components=[1, 2.5])


@pytest.mark.parametrize("missing", ["error", "marginalize"])
def test_probabilities_and_density_from_one_pass_equal_the_two_methods(X, missing):
    gm = GaussianMixture(3, covariance_type="full", random_state=0, missing=missing).fit(X)
    Xq = np.asarray(X, dtype=np.float64).copy()
    if missing == "marginalize":
        Xq[::5, 1] = np.nan  # blank values take the marginal density's path
    proba, density = gm.predict_proba_and_density(Xq)
    np.testing.assert_array_equal(proba, gm.predict_proba(Xq))
    np.testing.assert_array_equal(density, gm.score_samples(Xq))
    assert proba.shape == (Xq.shape[0], 3) and density.shape == (Xq.shape[0],)
