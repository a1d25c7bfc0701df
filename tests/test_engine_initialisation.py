"""The Ward start (``init_params="ward"``): seeded, independent of row order, spike-aware.

``ward_labels`` is tested directly (the starting partition), and through ``GaussianMixture``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gmm_engine import ConvergenceWarning, GaussianMixture, initialisation
from gmm_engine.initialisation import kmeans_labels, ward_labels


def blob_and_spike(distance: float = 4.5, spike: int = 150, n: int = 2000, seed: int = 0) -> np.ndarray:
    """A standard normal blob of ``n`` rows, then ``spike`` identical rows at (distance, 0)."""
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(size=(n, 2)), np.tile([distance, 0.0], (spike, 1))])


def isolates(labels: np.ndarray, rows: np.ndarray) -> bool:
    """Whether ``rows`` share one label that holds few other rows (at most a quarter as many)."""
    own = np.unique(labels[rows])
    return own.size == 1 and np.sum(labels == own[0]) <= 1.25 * rows.size


def test_same_seed_gives_the_same_partition_and_another_seed_another_subsample():
    X = blob_and_spike()  # 2,150 rows: more than the 2,000 agglomerated, so the seed draws them
    a = ward_labels(X, 4, np.random.default_rng(7))
    np.testing.assert_array_equal(a, ward_labels(X, 4, np.random.default_rng(7)))
    assert a.shape == (X.shape[0],) and set(np.unique(a)) <= set(range(4))
    others = [ward_labels(X, 4, np.random.default_rng(s)) for s in range(3)]
    assert any(not np.array_equal(a, b) for b in others)


def test_every_row_agglomerated_needs_no_seed():
    X = blob_and_spike(n=300, spike=20)
    np.testing.assert_array_equal(
        ward_labels(X, 3, np.random.default_rng(0)), ward_labels(X, 3, np.random.default_rng(99))
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_partition_does_not_depend_on_row_order(weighted):
    X = blob_and_spike()
    w = np.random.default_rng(3).integers(1, 4, X.shape[0]).astype(float) if weighted else None
    perm = np.random.default_rng(5).permutation(X.shape[0])
    a = ward_labels(X, 5, np.random.default_rng(11), w)
    b = ward_labels(X[perm], 5, np.random.default_rng(11), None if w is None else w[perm])
    np.testing.assert_array_equal(a[perm], b)


def test_fit_does_not_depend_on_row_order():
    X = blob_and_spike(n=600, spike=40)
    perm = np.random.default_rng(5).permutation(X.shape[0])
    kw = dict(init_params="ward", random_state=2, resolution=[0.05, 0.05], tol=1e-8, max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = GaussianMixture(3, **kw).fit(X)
        b = GaussianMixture(3, **kw).fit(X[perm])
    np.testing.assert_allclose(a.means_, b.means_, atol=1e-8)
    np.testing.assert_allclose(a.weights_, b.weights_, atol=1e-10)
    assert a.n_iter_ == b.n_iter_


def test_finds_a_planted_spike_that_kmeans_mixes_with_the_blob():
    """150 identical rows 4.5 standard deviations from a blob of 2,000: Ward's start gives them
    a cluster of their own (they merge at distance 0, then as one heavy point); k-means' start
    moves the second centre into the blob's tail and splits the blob instead."""
    X = blob_and_spike()
    spike = np.arange(2000, X.shape[0])
    seeds = range(5)
    assert all(isolates(ward_labels(X, 2, np.random.default_rng(s)), spike) for s in seeds)
    assert not any(isolates(kmeans_labels(X, 2, np.random.default_rng(s)), spike) for s in seeds)


def test_weights_draw_the_subsample_and_zero_weight_rows_still_get_a_label():
    X = blob_and_spike()
    w = np.ones(X.shape[0])
    w[:100] = 0.0
    labels = ward_labels(X, 3, np.random.default_rng(0), w, max_samples=500)
    assert labels.shape == (X.shape[0],) and labels.min() >= 0 and labels.max() < 3


def test_more_clusters_than_distinct_rows_fits_without_nan():
    X = np.repeat(np.array([[0.0, 1.0], [2.0, 2.0], [4.0, -1.0]]), 10, axis=0)
    labels = ward_labels(X, 5, np.random.default_rng(0))
    assert set(np.unique(labels)) <= set(range(5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(5, init_params="ward", random_state=0, reg_covar=1e-3).fit(X)
    assert np.all(np.isfinite(gm.means_)) and np.all(np.isfinite(gm.covariances_))


@st.composite
def rows_with_repeats(draw):
    """Small data sets on a coarse grid (many identical rows), with a seed, k and a subsample size."""
    seed = draw(st.integers(0, 2**31 - 1))
    n = draw(st.integers(5, 120))
    d = draw(st.integers(1, 3))
    rng = np.random.default_rng(seed)
    X = rng.integers(0, draw(st.integers(1, 6)), size=(n, d)).astype(float)
    return X, draw(st.integers(1, 6)), draw(st.integers(2, 150)), seed


@given(case=rows_with_repeats())
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_identical_rows_share_a_label_in_any_row_order(case):
    """Invariants of the start: labels lie in 0..k-1, identical rows get the same label, and a
    permutation of the rows permutes the labels with them."""
    X, k, max_samples, seed = case
    labels = ward_labels(X, k, np.random.default_rng(seed), max_samples=max_samples)
    assert labels.shape == (X.shape[0],) and labels.min() >= 0 and labels.max() < k
    _, group = np.unique(X, axis=0, return_inverse=True)
    group = group.ravel()
    for g in np.unique(group):
        assert np.unique(labels[group == g]).size == 1
    perm = np.random.default_rng(seed + 1).permutation(X.shape[0])
    shuffled = ward_labels(X[perm], k, np.random.default_rng(seed), max_samples=max_samples)
    np.testing.assert_array_equal(labels[perm], shuffled)


@st.composite
def points_and_centres(draw):
    """Rows (some on a coarse grid, so distances tie) and k centres, some of them rows."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n, d, k = draw(st.integers(1, 3000)), draw(st.integers(1, 5)), draw(st.integers(1, 9))
    X = rng.normal(size=(n, d)) * draw(st.sampled_from([1e-3, 1.0, 1e4]))
    if draw(st.booleans()):
        X = np.round(X)
    centres = X[rng.integers(0, n, size=k)] if draw(st.booleans()) else rng.normal(size=(k, d))
    return X, centres, draw(st.integers(1, 700))


@given(case=points_and_centres())
@settings(max_examples=60, deadline=None, derandomize=True)
def test_nearest_centre_in_blocks_is_the_argmin_of_the_whole_distance_matrix(case):
    """k-means' labels are made a block of rows at a time; ties and rounding must come out as
    in one (n, k) matrix, so the starting partitions (and every fit) stay the same."""
    X, centres, block = case
    x_sq = np.einsum("ij,ij->i", X, X)
    whole = np.argmin(initialisation._sq_distances(X, centres, x_sq), axis=1)
    default = initialisation._nearest(X, centres, x_sq)
    kept = initialisation._NEAREST_ROWS
    initialisation._NEAREST_ROWS = block
    try:
        blocked = initialisation._nearest(X, centres, x_sq)
    finally:
        initialisation._NEAREST_ROWS = kept
    np.testing.assert_array_equal(default, whole)
    np.testing.assert_array_equal(blocked, whole)


def test_a_callable_start_gives_each_rows_component():
    """``init_params`` as a callable: the labels it gives are the start, and a callable that
    gives k-means' labels fits exactly as ``init_params="kmeans"``."""
    X = blob_and_spike()
    seen = {}

    def start(rows, k, rng, sample_weight):
        seen.update(rows=rows.shape, k=k, rng=type(rng))
        return kmeans_labels(rows, k, rng, sample_weight)

    given_start = GaussianMixture(3, init_params=start, random_state=4).fit(X)
    named = GaussianMixture(3, init_params="kmeans", random_state=4).fit(X)
    assert seen == {"rows": X.shape, "k": 3, "rng": np.random.Generator}
    np.testing.assert_array_equal(given_start.means_, named.means_)
    np.testing.assert_array_equal(given_start.covariances_, named.covariances_)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (lambda n: np.zeros(n - 1, dtype=int), r"must give each of the \d+ rows an integer component"),
        (lambda n: np.zeros(n), r"returned float64"),
        (lambda n: np.full(n, 3), r"components 3\.\.3; they must be in 0\.\.2"),
        (lambda n: np.full(n, -1), r"must be in 0\.\.2"),
    ],
)
def test_a_callable_start_with_wrong_labels_is_refused(labels, message):
    X = blob_and_spike(n=200, spike=10)
    with pytest.raises(ValueError, match=message):
        GaussianMixture(3, init_params=lambda rows, k, rng, w: labels(len(rows))).fit(X)
