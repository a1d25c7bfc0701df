"""EM with E-step totals from outside the estimator (refit_from_statistics, partition_statistics):
partitions summed in process, against the engine's own fit on the concatenated data. The same
on a dask cluster is tests/test_cluster_em.py."""

from __future__ import annotations

import copy
import functools
import operator
import warnings

import numpy as np
import pytest

from gmm_engine import GaussianMixture, partition_moments, partition_statistics

MEAN = np.array([120.0, 6.0, 400.0])
SCALE = np.array([80.0, 3.0, 250.0])
SIZES = (400, 650, 500)  # three partitions of unequal size


def raw_data(seed: int = 3) -> np.ndarray:
    """Three segments in three features, in raw (unstandardised) units."""
    rng = np.random.default_rng(seed)
    centres = np.array([[-1.0, -1.0, 0.0], [1.5, 0.0, 1.0], [0.0, 2.0, -1.0]])
    labels = rng.integers(0, 3, sum(SIZES))
    Z = centres[labels] + rng.standard_normal((labels.size, 3)) @ np.diag([0.5, 0.7, 0.6])
    return Z * SCALE + MEAN


def standardised(X: np.ndarray) -> np.ndarray:
    Z = X - MEAN
    Z /= SCALE
    return Z


def split(Z: np.ndarray) -> list[np.ndarray]:
    return np.split(Z, np.cumsum(SIZES)[:-1])


def start_model(Z: np.ndarray, covariance_type: str, **kwargs) -> GaussianMixture:
    """What model selection hands over: a few EM iterations on a sample of the data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GaussianMixture(3, covariance_type=covariance_type, random_state=0, max_iter=3, **kwargs).fit(
            Z[::5]
        )


def max_difference(a: GaussianMixture, b: GaussianMixture) -> float:
    return max(
        float(np.max(np.abs(getattr(a, name) - getattr(b, name))))
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_")
    )


def in_process_statistics(parts: list[np.ndarray], covariance_type: str):
    def statistics(params, shift):
        return functools.reduce(
            operator.add, (partition_statistics(P, covariance_type, params, shift) for P in parts)
        )

    def moments(shift):
        return functools.reduce(operator.add, (partition_moments(P, shift) for P in parts))

    return statistics, moments


def refit_in_process(start: GaussianMixture, parts: list[np.ndarray]) -> GaussianMixture:
    statistics, moments = in_process_statistics(parts, start.covariance_type)
    return copy.deepcopy(start).refit_from_statistics(statistics, moments=moments)


FIT = dict(max_iter=300, tol=1e-7)


@pytest.mark.parametrize(
    ("covariance_type", "extra"),
    [
        ("full", {}),
        ("diag", {}),
        ("tied", {}),
        ("spherical", {}),
        ("VEV", {}),
        ("full", {"covariance_prior": "data", "resolution": [0.05, 0.3, 0.0]}),
    ],
)
def test_summed_partitions_give_the_parameters_of_a_warm_fit_on_all_the_data(covariance_type, extra):
    Z = standardised(raw_data())
    start = start_model(Z, covariance_type, **extra)
    start.set_params(**FIT)
    reference = copy.deepcopy(start).set_params(warm_start=True).fit(Z)
    refit = refit_in_process(start, split(Z))
    assert refit.converged_ and reference.converged_
    assert refit.n_iter_ == reference.n_iter_ > 3
    assert max_difference(refit, reference) < 1e-8
    assert refit.lower_bound_ == pytest.approx(reference.lower_bound_, rel=1e-12, abs=1e-12)
    np.testing.assert_array_equal(refit.predict(Z), reference.predict(Z))
    # The starting model is untouched (refit_in_process works on a copy); fit from the same start.
    assert start.n_iter_ <= 3


def test_an_unfitted_estimator_starts_from_its_init_parameters_as_fit_does():
    Z = standardised(raw_data())
    start = start_model(Z, "full")
    init = dict(weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_)
    reference = GaussianMixture(3, covariance_type="full", **init, **FIT).fit(Z)
    statistics, _ = in_process_statistics(split(Z), "full")
    refit = GaussianMixture(3, covariance_type="full", **init, **FIT).refit_from_statistics(statistics)
    assert refit.n_iter_ == reference.n_iter_
    assert max_difference(refit, reference) < 1e-8
    assert refit.n_features_in_ == 3


def test_partitions_with_missing_values_are_refused():
    Z = standardised(raw_data())
    start = start_model(Z, "diag")
    bad = split(Z)
    bad[1] = bad[1].copy()
    bad[1][[5, 9], 2] = np.nan
    statistics, _ = in_process_statistics(bad, "diag")
    before = copy.deepcopy(start.means_)
    with pytest.raises(ValueError, match=r"missing values \(NaN\) in 2 of 650 rows \(first: row 5\)"):
        start.refit_from_statistics(statistics)
    np.testing.assert_array_equal(start.means_, before)  # a failed refit changes nothing


def test_pooled_covariance_types_need_the_moments():
    Z = standardised(raw_data())
    start = start_model(Z, "tied")
    statistics, _ = in_process_statistics(split(Z), "tied")
    with pytest.raises(ValueError, match="covariance_type='tied' needs the data's moments"):
        start.refit_from_statistics(statistics)


def test_statistics_of_the_wrong_shape_are_refused():
    Z = standardised(raw_data())
    start = start_model(Z, "full")
    statistics, _ = in_process_statistics(split(Z), "diag")  # the wrong type's totals
    with (
        np.errstate(all="ignore"),
        pytest.raises(ValueError, match=r"expected finite \(3, 10\) for covariance_type='full'"),
    ):
        start.refit_from_statistics(statistics)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "VEV"])
def test_summed_partition_scores_give_the_criteria_on_all_the_data(covariance_type):
    from gmm_engine import criteria, criteria_from_totals, partition_scores

    Z = standardised(raw_data())
    w = np.random.default_rng(5).random(Z.shape[0])
    model = start_model(Z, covariance_type)
    totals = functools.reduce(
        operator.add,
        (
            partition_scores(model, P, W)
            for P, W in zip(split(Z), np.split(w, np.cumsum(SIZES)[:-1]), strict=True)
        ),
    )
    whole = criteria(model, Z, w)
    summed = criteria_from_totals(model.n_parameters(), totals)
    assert summed.keys() == whole.keys()
    for name, value in whole.items():
        assert summed[name] == pytest.approx(value, rel=1e-12), name
    # ICL is BIC plus twice the entropy of the hard assignment: never below BIC.
    assert whole["icl"] >= whole["bic"]
    assert whole["icl"] == pytest.approx(model.icl(Z, sample_weight=w), rel=1e-12)
    assert whole["bic"] == pytest.approx(model.bic(Z, sample_weight=w), rel=1e-12)
    assert partition_scores(model, Z[:0]).total_weight == 0.0


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_block_data_gives_the_in_memory_scores_refit_and_scale(covariance_type):
    """:class:`BlockData` reads a block of rows at a time (5 blocks of 211 and one of 1 here) and
    adds up their totals: the same numbers as the whole array, up to the sums' rounding."""
    from gmm_engine import BlockData, InMemoryData

    rng = np.random.default_rng(12)
    X = np.vstack([rng.normal(-1.5, 1.0, (600, 3)), rng.normal(2.0, 0.6, (456, 3))])
    start = GaussianMixture(2, covariance_type=covariance_type, random_state=0, max_iter=3).fit(X[::7])
    blocks, whole = BlockData(X, block_rows=211), InMemoryData(X)
    for a, b in zip(blocks.scores_many([start, start]), whole.scores_many([start, start]), strict=True):
        assert a.log_likelihood == pytest.approx(b.log_likelihood, rel=1e-12)
        assert a.entropy == pytest.approx(b.entropy, rel=1e-10, abs=1e-9)
        assert a.total_weight == b.total_weight == X.shape[0]
    np.testing.assert_allclose(blocks.observed_std(), whole.observed_std(), rtol=1e-12)

    def unfitted() -> GaussianMixture:
        return GaussianMixture(
            2,
            covariance_type=covariance_type,
            weights_init=start.weights_,
            means_init=start.means_,
            precisions_init=start.precisions_,
            max_iter=50,
        )

    a, b = blocks.refit(unfitted()), whole.refit(unfitted())
    # Blocks summed in threads are added in block order: the same bits as one thread.
    serial = BlockData(X, block_rows=211, n_jobs=1).refit(unfitted())
    np.testing.assert_array_equal(a.means_, serial.means_)
    assert a.lower_bound_ == serial.lower_bound_
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-9, atol=1e-10)
    assert a.lower_bound_ == pytest.approx(b.lower_bound_, rel=1e-10)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        BlockData(np.empty((0, 3)))
