"""Tests of stable segment ids and drift (the tracking package) with models fitted by gmm_engine."""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.stats import norm
from threadpoolctl import threadpool_limits

import tracking.customers as tracking_customers
import tracking.drift as tracking_drift
from gmm_engine import GaussianMixture
from tracking import (
    DEFAULT_MAX_DISTANCE,
    TrackedModel,
    TransitionThresholds,
    align_customers,
    bhattacharyya,
    bhattacharyya_matrix,
    classify_transitions,
    common_model,
    compare_runs,
    customer_overlap,
    drift_flags,
    drift_markdown,
    hold_segments,
    match_segments,
    mean_shift,
    migration_table,
    moved_share,
    transition_table,
    warm_start_init,
    what_changed,
)

NAMES = ("recency_days", "frequency", "monetary")
UNITS = ("days", "invoices", "GBP")
TRANSFORMS = ("none", "log1p", "log1p")

# Segments in the common space (recency in days, log(1 + invoices), log(1 + GBP)): centre, sd.
BLOBS = {
    "loyal": ((20.0, 2.0, 7.0), (8.0, 0.30, 0.40)),
    "lapsed": ((150.0, 0.7, 5.0), (30.0, 0.25, 0.50)),
    "middle": ((60.0, 1.3, 6.0), (15.0, 0.30, 0.40)),
    "new": ((320.0, 2.6, 3.5), (20.0, 0.20, 0.30)),
    "young": ((5.0, 0.3, 3.0), (3.0, 0.10, 0.20)),
}


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_blas():
    with threadpool_limits(limits=1):
        yield


def blob_data(
    sizes: dict[str, int],
    seed: int,
    *,
    shift: dict[str, tuple[float, float, float]] | None = None,
    centres: dict[str, tuple] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Customers in the common space: (X_transformed, customer ids, true blob name per customer)."""
    rng = np.random.default_rng(seed)
    parts, names = [], []
    for name, n in sizes.items():
        centre, sd = (centres or {}).get(name, BLOBS.get(name))
        centre = np.array(centre) + np.array((shift or {}).get(name, (0.0, 0.0, 0.0)))
        parts.append(centre + rng.standard_normal((n, 3)) * np.array(sd))
        names += [name] * n
    X = np.vstack(parts)
    ids = np.array([f"C{i:05d}" for i in range(X.shape[0])])
    return X, ids, np.array(names)


@functools.cache
def _fit(X_bytes: bytes, shape: tuple[int, int], k: int, seed: int, covariance_type: str):
    X = np.frombuffer(X_bytes).reshape(shape)
    mean, scale = X.mean(axis=0), X.std(axis=0)
    gm = GaussianMixture(k, covariance_type=covariance_type, n_init=10, random_state=seed).fit(
        (X - mean) / scale
    )
    return gm, mean, scale


def fit_run(
    X: np.ndarray, k: int, *, seed: int = 0, run_id: int = 1, covariance_type: str = "full"
) -> tuple[TrackedModel, np.ndarray]:
    """Fit like the pipeline (own scaler per run, model space) and return the common-space model and
    every customer's component index."""
    gm, mean, scale = _fit(np.ascontiguousarray(X).tobytes(), X.shape, k, seed, covariance_type)
    Z = (X - mean) / scale
    from gmm_engine import full_covariances

    model = common_model(
        gm.weights_,
        gm.means_,
        full_covariances(gm.covariances_, covariance_type, k, 3),
        mean,
        scale,
        feature_names=NAMES,
        transforms=TRANSFORMS,
        feature_units=UNITS,
        covariance_type=covariance_type,
        run_id=run_id,
    )
    return model, gm.predict(Z)


def run1(X: np.ndarray, ids: np.ndarray, k: int, *, seed: int = 0):
    """The first tracked run: fit, then number the segments."""
    model, components = fit_run(X, k, seed=seed, run_id=1)
    return compare_runs(None, model, max_id_used=0, current_customers=ids, current_components=components)


def run2(prev, X: np.ndarray, ids: np.ndarray, k: int, *, seed: int = 0, **options):
    """The next run against ``prev`` (a RunDrift), as the flow will call it."""
    model, components = fit_run(X, k, seed=seed, run_id=2)
    return compare_runs(
        prev.model,
        model,
        max_id_used=prev.match.max_id_used,
        current_customers=ids,
        current_components=components,
        previous_customers=prev.customer_ids,
        previous_segments=prev.customer_segments,
        **options,
    )


def ids_by_blob(drift, names: np.ndarray) -> dict[str, int]:
    """The segment id most customers of each true blob got."""
    out = {}
    for name in np.unique(names):
        values, counts = np.unique(drift.customer_segments[names == name], return_counts=True)
        out[str(name)] = int(values[counts.argmax()])
    return out


THREE = {"loyal": 300, "lapsed": 400, "middle": 350}


@pytest.fixture(scope="module")
def base():
    X, ids, names = blob_data(THREE, seed=1)
    return X, ids, names, run1(X, ids, 3)


# --------------------------------------------------------------------------- Bhattacharyya distance
def test_bhattacharyya_is_zero_for_identical_gaussians_and_symmetric():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    S1 = A @ A.T + 0.1 * np.eye(4)
    B = rng.normal(size=(4, 4))
    S2 = B @ B.T + 0.1 * np.eye(4)
    m1, m2 = rng.normal(size=4), rng.normal(size=4)
    assert bhattacharyya(m1, S1, m1, S1) == pytest.approx(0.0, abs=1e-12)
    assert bhattacharyya(m1, S1, m2, S2) == pytest.approx(bhattacharyya(m2, S2, m1, S1), rel=1e-12)
    assert bhattacharyya(m1, S1, m2, S2) > 0.1
    D = bhattacharyya_matrix(np.stack([m1, m2]), np.stack([S1, S2]), np.stack([m1, m2]), np.stack([S1, S2]))
    np.testing.assert_allclose(np.diag(D), 0.0, atol=1e-12)
    np.testing.assert_allclose(D, D.T, rtol=1e-12)


@pytest.mark.parametrize(
    ("m1", "s1", "m2", "s2"), [(0.0, 1.0, 1.0, 1.0), (2.0, 0.5, -1.0, 3.0), (5.0, 2.0, 5.0, 0.1)]
)
def test_bhattacharyya_matches_the_closed_form_and_the_integral_in_one_dimension(m1, s1, m2, s2):
    closed = (m1 - m2) ** 2 / (4 * (s1**2 + s2**2)) + 0.5 * math.log((s1**2 + s2**2) / (2 * s1 * s2))
    # -log of the Bhattacharyya coefficient, integrated numerically.
    coefficient, _ = quad(
        lambda x: math.sqrt(norm.pdf(x, m1, s1) * norm.pdf(x, m2, s2)), -60, 60, points=[m1, m2], limit=200
    )
    got = bhattacharyya([m1], [[s1**2]], [m2], [[s2**2]])
    assert got == pytest.approx(closed, rel=1e-10)
    assert got == pytest.approx(-math.log(coefficient), rel=1e-6)


def test_bhattacharyya_is_invariant_under_an_affine_map_of_both_gaussians():
    rng = np.random.default_rng(3)
    means = rng.normal(size=(3, 3))
    covs = np.stack([a @ a.T + 0.05 * np.eye(3) for a in rng.normal(size=(3, 3, 3))])
    A = np.diag([1000.0, 0.01, 3.0]) @ rng.normal(size=(3, 3))
    b = np.array([5.0, -200.0, 1e4])
    D = bhattacharyya_matrix(means, covs, means[::-1], covs[::-1])
    D_mapped = bhattacharyya_matrix(
        means @ A.T + b, A @ covs @ A.T, (means @ A.T + b)[::-1], (A @ covs @ A.T)[::-1]
    )
    np.testing.assert_allclose(D_mapped, D, rtol=1e-8, atol=1e-10)


def test_bhattacharyya_names_a_covariance_that_is_not_positive_definite():
    bad = np.array([[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="first set's covariance number 1 is not positive definite"):
        bhattacharyya_matrix(np.zeros((1, 2)), bad, np.zeros((1, 2)), np.eye(2)[None])


# --------------------------------------------------------------------------- the common space
def test_common_model_maps_model_space_to_transformed_units():
    weights = np.array([0.4, 0.6])
    means = np.array([[0.0, 1.0], [-1.0, 0.5]])
    cov = np.stack([np.array([[1.0, 0.3], [0.3, 2.0]]), np.eye(2)])
    model = common_model(
        weights,
        means,
        cov.reshape(2, 4),
        np.array([50.0, 6.0]),
        np.array([10.0, 0.5]),
        feature_names=["recency_days", "monetary"],
        transforms=["none", "log1p"],
        covariance_type="full",
    )
    np.testing.assert_allclose(model.means, [[50.0, 6.5], [40.0, 6.25]])
    np.testing.assert_allclose(model.covariances[0], [[100.0, 1.5], [1.5, 0.5]])
    np.testing.assert_allclose(model.centres()[1], [40.0, np.expm1(6.25)])
    assert model.segment_ids.tolist() == [1, 2]


def test_feature_order_does_not_matter_but_a_changed_transform_does(base):
    X, ids, names, first = base
    m = first.model
    reordered = m.reordered(["monetary", "recency_days", "frequency"])
    match = match_segments(m, reordered.with_ids([1, 2, 3]), max_id_used=3)
    assert match.method == "bhattacharyya"
    assert match.segment_ids.tolist() == m.segment_ids.tolist()
    np.testing.assert_allclose(np.diag(match.distances), 0.0, atol=1e-9)
    other = TrackedModel(
        m.weights,
        m.means,
        m.covariances,
        m.segment_ids,
        m.feature_names,
        ("none", "none", "log1p"),
        m.covariance_type,
    )
    assert match_segments(m, other, max_id_used=3).method == "none"
    assert match_segments(m, other, max_id_used=3).new_ids == (4, 5, 6)


# --------------------------------------------------------------------------- stable ids with real fits
def test_first_run_numbers_segments_by_size(base):
    X, ids, names, first = base
    assert first.match.method == "first_run"
    assert sorted(first.model.segment_ids.tolist()) == [1, 2, 3]
    by_blob = ids_by_blob(first, names)
    # lapsed (400) > middle (350) > loyal (300)
    assert by_blob == {"lapsed": 1, "middle": 2, "loyal": 3}
    assert first.report_drift() is None
    assert "First tracked run" in what_changed(first)


def test_refit_on_a_permuted_copy_keeps_every_id(base):
    X, ids, names, first = base
    order = np.random.default_rng(5).permutation(X.shape[0])
    second = run2(first, X[order], ids[order], 3, seed=0)

    # EM numbered the components differently this time, so keeping the ids is the matching's work.
    assert second.match.previous_index.tolist() != [0, 1, 2]
    assert second.match.method == "bhattacharyya"
    assert second.match.new_ids == () and second.match.retired_ids == ()
    assert ids_by_blob(second, names[order]) == ids_by_blob(first, names)
    assert np.all(second.match.matched_distance < 0.05)
    assert second.moved_share < 0.01
    assert second.migration["customers"].sum() == X.shape[0]
    assert second.flags == []
    assert [t.kind for t in second.transitions] == ["survived"] * 3


def test_refit_with_one_segment_shifted_keeps_every_id_and_reports_the_shift(base):
    X, ids, names, first = base
    shift = (15.0, 0.3, 0.4)  # one standard deviation of "middle" in each feature
    X2, _, names2 = blob_data(THREE, seed=2, shift={"middle": shift})
    second = run2(first, X2, ids, 3, seed=4)

    assert second.match.new_ids == () and second.match.retired_ids == ()
    assert ids_by_blob(second, names2) == ids_by_blob(first, names)
    middle = ids_by_blob(first, names)["middle"]
    shifts = second.shifts.set_index(["segment_id", "feature"])["shift"]
    for feature, expected in zip(NAMES, shift, strict=True):
        assert shifts[(middle, feature)] == pytest.approx(expected, rel=0.3)
    per_segment = second.shifts.groupby("segment_id")["distance_sd"].first()
    assert per_segment.idxmax() == middle and per_segment[middle] > 1.0
    assert per_segment.drop(middle).max() < 0.5
    centres = second.shifts.set_index(["segment_id", "feature"])
    assert (
        centres.loc[(middle, "monetary"), "current_centre"]
        > centres.loc[(middle, "monetary"), "previous_centre"]
    )
    assert f"segment {middle} moved" in second.summary()


def test_mean_shift_measures_each_feature_and_the_whole_segment(base):
    X, ids, names, first = base
    m = first.model
    delta = np.array([[0.0, 0.0, 0.0], [10.0, -0.2, 0.3], [0.0, 0.0, 0.0]])
    moved = TrackedModel(
        m.weights,
        m.means + delta,
        m.covariances,
        m.segment_ids,
        NAMES,
        TRANSFORMS,
        "full",
        feature_units=UNITS,
    ).reordered(["monetary", "frequency", "recency_days"])
    table = mean_shift(m, moved)
    assert table["feature"].tolist()[:3] == list(NAMES)  # the previous run's order
    sid = int(m.segment_ids[1])
    rows = table[table.segment_id == sid]
    np.testing.assert_allclose(rows["shift"], delta[1])
    np.testing.assert_allclose(rows["shift_sd"], delta[1] / np.sqrt(np.diag(m.covariances[1])))
    expected = math.sqrt(delta[1] @ np.linalg.solve(m.covariances[1], delta[1]))
    np.testing.assert_allclose(rows["distance_sd"], expected)
    np.testing.assert_allclose(rows["bhattacharyya"], expected**2 / 8)  # equal covariances
    np.testing.assert_allclose(rows["current_centre"].iloc[2], np.expm1(m.means[1, 2] + 0.3))
    assert rows["unit"].tolist() == list(UNITS)
    assert np.all(table.loc[table.segment_id != sid, "shift"] == 0)


def test_adding_a_well_separated_segment_gives_exactly_one_new_id_and_no_renames(base):
    X, ids, names, first = base
    X_new, _, names_new = blob_data({"new": 250}, seed=3)
    X2 = np.vstack([X, X_new])
    ids2 = np.concatenate([ids, [f"N{i:04d}" for i in range(250)]])
    names2 = np.concatenate([names, names_new])
    second = run2(first, X2, ids2, 4)

    assert second.match.new_ids == (4,)
    assert second.match.retired_ids == ()
    assert second.match.kept_ids == (1, 2, 3)
    by_blob = ids_by_blob(second, names2)
    assert by_blob["new"] == 4
    assert {b: by_blob[b] for b in THREE} == ids_by_blob(first, names)
    assert second.overlap.entered == 250 and second.overlap.left == 0
    assert "k changed 3 -> 4" in second.flags
    emerged = [t for t in second.transitions if t.kind == "emerged"]
    assert [t.to_ids for t in emerged] == [(4,)]


def test_removing_a_segment_retires_exactly_one_id(base):
    X, ids, names, first = base
    keep = names != "loyal"
    second = run2(first, X[keep], ids[keep], 2)

    loyal = ids_by_blob(first, names)["loyal"]
    assert second.match.retired_ids == (loyal,)
    assert second.match.new_ids == ()
    assert ids_by_blob(second, names[keep]) == {
        b: i for b, i in ids_by_blob(first, names).items() if b != "loyal"
    }
    assert second.overlap.left == int((~keep).sum())
    assert second.migration["customers"].sum() == int(keep.sum())
    # Its customers left, so MONIC has nothing to follow: the segment disappeared.
    assert any(t.kind == "disappeared" and t.from_ids == (loyal,) for t in second.transitions)
    next_id = match_segments(second.model, first.model, second.match.max_id_used).new_ids
    assert next_id == (4,)  # a retired id is never given again


# Five tight segments; at k = 3 the three "mid" ones (30 days apart) form one segment. Tight
# segments keep EM's optimum unambiguous, so the scenario does not hang on a restart's luck.
_TIGHT = (3.0, 0.06, 0.08)
SUB = {
    "mid_a": ((60.0, 1.3, 6.0), _TIGHT),
    "mid_b": ((90.0, 1.3, 6.0), _TIGHT),
    "mid_c": ((120.0, 1.3, 6.0), _TIGHT),
}
FIVE = {"loyal": 300, "lapsed": 400, "mid_a": 200, "mid_b": 200, "mid_c": 200}


@pytest.fixture(scope="module")
def sub_segments():
    centres = {"loyal": ((20.0, 2.0, 7.0), _TIGHT), "lapsed": ((200.0, 0.7, 5.0), _TIGHT), **SUB}
    X, ids, names = blob_data(FIVE, seed=8, centres=centres)
    return X, ids, names


def test_a_segment_splitting_in_three_is_classified_as_split(sub_segments):
    X, ids, names = sub_segments
    first = run1(X, ids, 3)
    whole = {first.customer_segments[names == n][0] for n in SUB}
    assert len(whole) == 1, "the three sub-segments should form one segment at k = 3"
    second = run2(first, X, ids, 5)

    (split,) = [t for t in second.transitions if t.kind == "split"]
    assert split.from_ids == tuple(whole)
    assert len(split.to_ids) == 3 and split.share > 0.9
    survived = sorted(t.from_ids[0] for t in second.transitions if t.kind == "survived")
    assert survived == sorted(ids_by_blob(first, names)[b] for b in ("loyal", "lapsed"))
    # The middle piece keeps the id; the outer two are new.
    assert len(second.match.new_ids) == 2 and second.match.retired_ids == ()
    assert ids_by_blob(second, names)["mid_b"] == next(iter(whole))
    assert "split into" in second.summary()


def test_three_segments_becoming_one_is_classified_as_merged(sub_segments):
    X, ids, names = sub_segments
    first = run1(X, ids, 5)
    parts = sorted(ids_by_blob(first, names)[n] for n in SUB)
    second = run2(first, X, ids, 3)

    (merged,) = [t for t in second.transitions if t.kind == "merged"]
    assert merged.from_ids == tuple(parts)
    assert merged.share > 0.95
    assert len(second.match.retired_ids) == 2 and second.match.new_ids == ()
    assert merged.to_ids[0] in parts  # the merged segment continues one of the parts' ids
    assert "merged into" in second.summary()
    assert "k changed 5 -> 3" in second.flags


# --------------------------------------------------------------------------- MONIC rules on exact labels
def _labels(pairs: dict[tuple[int, int], int]) -> tuple[np.ndarray, np.ndarray]:
    p, c = [], []
    for (a, b), n in pairs.items():
        p += [a] * n
        c += [b] * n
    return np.array(p), np.array(c)


def test_classify_transitions_follows_the_documented_thresholds():
    p, c = _labels(
        {
            (1, 1): 90,
            (1, 2): 10,  # 1 survives into 1 (0.9)
            (2, 3): 40,
            (2, 4): 35,
            (2, 1): 25,  # 2 splits into 3, 4, 1 (each >= 0.25, together 1.0)
            (3, 5): 60,
            (3, 6): 40,  # 3 and 4 both send >= 0.5 to 5: merged
            (4, 5): 70,
            (4, 7): 30,
            (5, 6): 20,
            (5, 7): 20,
            (5, 8): 20,
            (5, 9): 20,
            (5, 10): 20,  # 5 scatters: disappeared
            (6, 11): 30,
            (6, 12): 20,
            (6, 13): 20,
            (6, 14): 30,  # 6: two parts of 0.3 = 0.6 -> split
        }
    )
    # Every customer is in both runs; current segment 15 has none of them.
    current_counts = {
        **{int(v): int(n) for v, n in zip(*np.unique(c, return_counts=True), strict=True)},
        15: 0,
    }
    rows = classify_transitions(p, c, current_counts=current_counts)
    table = transition_table(rows)
    assert table.columns.tolist() == ["kind", "from_ids", "to_ids", "share"]
    got = {(t.kind, t.from_ids, t.to_ids): round(t.share, 3) for t in rows}
    assert got == {
        ("survived", (1,), (1,)): 0.9,
        ("split", (2,), (1, 3, 4)): 1.0,
        ("merged", (3, 4), (5,)): 0.65,
        ("disappeared", (5,), ()): 0.2,
        ("split", (6,), (11, 14)): 0.6,
        # 2, 6, 7 and 8..10, 12, 13 are reached by nobody at the thresholds; 15 has no shared customer.
        ("emerged", (), (2,)): round(10 / 10, 3),
        ("emerged", (), (6,)): round(40 / 60, 3),
        ("emerged", (), (7,)): round(30 / 50, 3),
        ("emerged", (), (8,)): 1.0,
        ("emerged", (), (9,)): 1.0,
        ("emerged", (), (10,)): 1.0,
        ("emerged", (), (12,)): 1.0,
        ("emerged", (), (13,)): 1.0,
        ("emerged", (), (15,)): 0.0,
    }
    # Stricter thresholds turn the 0.9 survival into a disappearance.
    strict = classify_transitions(p, c, TransitionThresholds(tau_match=0.95, tau_split=0.5))
    assert ("disappeared", (1,), ()) in {(t.kind, t.from_ids, t.to_ids) for t in strict}
    with pytest.raises(ValueError, match="tau_split <= tau_match"):
        TransitionThresholds(tau_match=0.3, tau_split=0.4)


def test_an_exact_half_split_is_a_split_not_a_survival():
    p, c = _labels({(1, 1): 50, (1, 2): 50})
    assert [(t.kind, t.to_ids) for t in classify_transitions(p, c)] == [("split", (1, 2))]


def test_segments_without_shared_customers_disappear_or_emerge():
    rows = classify_transitions([], [], previous_counts={4: 10}, current_counts={9: 0})
    assert [(t.kind, t.from_ids, t.to_ids, t.share) for t in rows] == [
        ("disappeared", (4,), (), 0.0),
        ("emerged", (), (9,), 0.0),
    ]


def test_customers_who_left_count_against_survival_as_in_monic():
    # Segment 3 had 100 customers; the 2 still present moved together into 2, next to 2's own 80.
    p, c = _labels({(1, 1): 50, (2, 2): 80, (3, 2): 2})
    shared_only = classify_transitions(p, c)
    assert ("merged", (2, 3), (2,)) in {(t.kind, t.from_ids, t.to_ids) for t in shared_only}
    rows = classify_transitions(p, c, previous_counts={1: 60, 2: 80, 3: 100}, current_counts={1: 50, 2: 90})
    assert {(t.kind, t.from_ids, t.to_ids): round(t.share, 3) for t in rows} == {
        ("survived", (1,), (1,)): round(50 / 60, 3),
        ("survived", (2,), (2,)): 1.0,
        ("disappeared", (3,), ()): 0.02,
    }
    with pytest.raises(ValueError, match=r"previous_counts\[2\] is smaller than its customers in both runs"):
        classify_transitions(p, c, previous_counts={1: 60, 2: 10, 3: 100})


# --------------------------------------------------------------------------- migration and flags
def test_migration_table_sums_to_the_customers_in_both_runs():
    rng = np.random.default_rng(4)
    previous_customers = np.array([f"K{i}" for i in range(0, 900)])
    current_customers = rng.permutation(np.array([f"K{i}" for i in range(300, 1300)]))
    previous_segments = rng.integers(1, 4, size=900)
    current_segments = rng.integers(1, 5, size=1000)
    overlap = customer_overlap(previous_customers, previous_segments, current_customers, current_segments)
    assert (overlap.entered, overlap.left) == (400, 300)
    assert overlap.customer_ids.size == 600

    table = migration_table(overlap.previous_segments, overlap.current_segments)
    assert table.columns.tolist() == ["from_segment", "to_segment", "customers"]
    assert table["customers"].sum() == 600
    assert (table["customers"] > 0).all()
    # The same counts as a cross-tabulation of the customers joined by id.
    joined = pd.DataFrame({"id": previous_customers, "p": previous_segments}).merge(
        pd.DataFrame({"id": current_customers, "c": current_segments}), on="id"
    )
    expected = joined.groupby(["p", "c"]).size()
    assert (
        dict(zip(zip(table.from_segment, table.to_segment, strict=True), table.customers, strict=True))
        == expected.to_dict()
    )
    stayers = table.loc[table.from_segment == table.to_segment, "customers"].sum()
    assert moved_share(overlap.previous_segments, overlap.current_segments) == pytest.approx(
        1 - stayers / 600
    )
    assert math.isnan(moved_share([], []))
    with pytest.raises(ValueError, match="previous customer ids are not unique"):
        customer_overlap(["a", "a"], [1, 2], ["a"], [1])


def test_drift_flags_name_k_covariance_type_and_the_moved_share(base):
    X, ids, names, first = base
    m = first.model
    other = TrackedModel(
        np.full(4, 0.25), np.zeros((4, 3)), np.stack([np.eye(3)] * 4), [1, 2, 3, 4], NAMES, TRANSFORMS, "diag"
    )
    assert drift_flags(m, other, 0.31) == [
        "k changed 3 -> 4",
        "covariance type changed full -> diag",
        "31% of customers changed segment (threshold 20%)",
    ]
    assert drift_flags(m, m, 0.31, moved_threshold=0.4) == []
    assert drift_flags(m, m, 0.2) == []  # at the threshold is not past it
    assert drift_flags(m, m, float("nan")) == []
    assert drift_flags(None, m, 0.9) == []


def test_changed_features_fall_back_to_customer_overlap(base):
    X, ids, names, first = base
    # The same customers, segmented on monetary without its log1p: Gaussians are not comparable.
    model, components = fit_run(X, 3, seed=2)
    changed = TrackedModel(
        model.weights,
        model.means,
        model.covariances,
        model.segment_ids,
        NAMES,
        ("none", "log1p", "none"),
        "full",
        run_id=2,
    )
    second = compare_runs(
        first.model,
        changed,
        max_id_used=3,
        current_customers=ids,
        current_components=components,
        previous_customers=ids,
        previous_segments=first.customer_segments,
    )
    assert second.match.method == "customer_overlap"
    assert second.match.new_ids == ()
    assert ids_by_blob(second, names) == ids_by_blob(first, names)
    assert second.shifts.empty and mean_shift(first.model, changed).empty
    assert any(f.startswith("features changed") for f in second.flags)
    # Without customers in both runs every id is new.
    alone = compare_runs(
        first.model, changed, max_id_used=3, current_customers=ids, current_components=components
    )
    assert (
        alone.match.method == "none"
        and alone.match.new_ids == (4, 5, 6)
        and alone.match.retired_ids == (1, 2, 3)
    )


def test_a_pair_beyond_max_distance_is_not_matched(base):
    X, ids, names, first = base
    m = first.model
    far = TrackedModel(
        m.weights,
        m.means + np.array([400.0, 0.0, 0.0]),
        m.covariances,
        m.segment_ids,
        NAMES,
        TRANSFORMS,
        "full",
    )
    match = match_segments(m, far, max_id_used=7)
    assert match.new_ids == (8, 9, 10) and match.retired_ids == (1, 2, 3)
    loose = match_segments(m, far, max_id_used=7, max_distance=float(match.distances.max()) + 1)
    assert loose.kept_ids == (1, 2, 3)
    with pytest.raises(ValueError, match="max_id_used \\(2\\) is smaller"):
        match_segments(m, m, max_id_used=2)


def test_what_changed_is_a_short_summary_and_report_drift_carries_it(base):
    X, ids, names, first = base
    X2, _, _ = blob_data(THREE, seed=2, shift={"middle": (15.0, 0.3, 0.4)})
    second = run2(first, X2, ids, 3, moved_threshold=0.0)
    text = what_changed(second)
    lines = text.splitlines()
    assert 3 <= len(lines) <= 8
    assert lines[0].startswith("Since run 1: 1,050 customers in both runs (0 new, 0 gone)")
    assert f"Bhattacharyya distance <= {DEFAULT_MAX_DISTANCE:.2f}" in text
    assert "kept 1, 2, 3; new none; retired none" in text
    assert "of customers changed segment (threshold 0%)" in text
    drift = second.report_drift()
    assert set(drift) >= {"previous_run_id", "migration", "what_changed", "flags"}
    assert drift["previous_run_id"] == 1 and drift["what_changed"] == text
    assert sum(r["customers"] for r in drift["migration"]) == 1050
    markdown = drift_markdown(second)
    assert markdown.startswith("### What changed since run 1\n")
    assert "| from segment | to segment | customers |" in markdown
    assert markdown.count("\n| ") == len(second.migration) + 1


def test_warm_start_from_the_previous_model_recovers_the_same_segments(base):
    X, ids, names, first = base
    X2, _, names2 = blob_data(THREE, seed=6)
    mean, scale = X2.mean(axis=0), X2.std(axis=0)
    Z = (X2 - mean) / scale
    for covariance_type in ("full", "tied", "diag", "spherical"):
        init = warm_start_init(
            first.model, mean, scale, covariance_type, feature_names=NAMES, transforms=TRANSFORMS
        )
        gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0, **init).fit(Z)
        assert gm.converged_
    init = warm_start_init(first.model, mean, scale, "full", feature_names=NAMES, transforms=TRANSFORMS)
    gm = GaussianMixture(3, covariance_type="full", random_state=0, **init).fit(Z)
    # Started from the previous components, component c is still previous segment c.
    labels = gm.predict(Z)
    previous_by_blob = ids_by_blob(first, names)
    for blob, sid in previous_by_blob.items():
        c = int(np.flatnonzero(first.model.segment_ids == sid)[0])
        assert np.mean(labels[names2 == blob] == c) > 0.95
    with pytest.raises(ValueError, match="feature set or a transform changed"):
        warm_start_init(first.model, mean, scale, "full", feature_names=NAMES, transforms=("none",) * 3)


# --------------------------------------------------------------------------- property: relabelling
@functools.cache
def _property_runs():
    X, ids, names = blob_data(THREE, seed=1)
    first = run1(X, ids, 3)
    X_new, _, _ = blob_data({"new": 200, "young": 150, "middle": 150}, seed=9)
    X2 = np.vstack([X, X_new])
    ids2 = np.concatenate([ids, [f"N{i:04d}" for i in range(500)]])
    model, components = fit_run(X2, 5, seed=3)
    return first, model, components, ids2


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(range(5)), st.permutations(range(3)))
def test_relabelling_components_never_changes_the_ids_customers_get(perm_current, perm_previous):
    first, model, components, ids2 = _property_runs()
    baseline = compare_runs(
        first.model,
        model,
        max_id_used=3,
        current_customers=ids2,
        current_components=components,
        previous_customers=first.customer_ids,
        previous_segments=first.customer_segments,
    )
    pc = np.array(perm_current)
    relabelled = TrackedModel(
        model.weights[pc],
        model.means[pc],
        model.covariances[pc],
        model.segment_ids,
        NAMES,
        TRANSFORMS,
        "full",
        feature_units=UNITS,
        run_id=2,
    )
    inverse = np.argsort(pc)  # component c of the original is component inverse[c] of the relabelled model
    pp = np.array(perm_previous)
    previous = first.model
    previous_relabelled = TrackedModel(
        previous.weights[pp],
        previous.means[pp],
        previous.covariances[pp],
        previous.segment_ids[pp],
        NAMES,
        TRANSFORMS,
        "full",
        run_id=1,
    )
    other = compare_runs(
        previous_relabelled,
        relabelled,
        max_id_used=3,
        current_customers=ids2,
        current_components=inverse[components],
        previous_customers=first.customer_ids,
        previous_segments=first.customer_segments,
    )
    np.testing.assert_array_equal(other.customer_segments, baseline.customer_segments)
    assert other.match.new_ids == baseline.match.new_ids == (4, 5)
    assert other.match.retired_ids == baseline.match.retired_ids == ()
    pd.testing.assert_frame_equal(other.migration, baseline.migration)


# ------------------------------------------------------------------------ holding customers in their segment
def test_hold_segments_keeps_a_customer_until_another_segment_is_more_than_hold_odds_as_probable():
    p = np.array(
        [
            [0.45, 0.55, 0.00],  # was 0, now a coin toss: kept
            [0.05, 0.95, 0.00],  # was 0, now 19 to 1 for 1: moves
            [0.0625, 0.625, 0.3125],  # exactly 10 to 1 (exact in binary) is not "more than": kept
            [0.30, 0.70, 0.00],  # new customer (-1): most probable
            [0.20, 0.80, 0.00],  # previous segment retired (-1): most probable
            [0.10, 0.10, 0.80],  # already in the most probable: not "held"
            [0.00, 1.00, 0.00],  # previous segment's probability underflowed to 0: moves
        ]
    )
    components = p.argmax(axis=1)
    previous = np.array([0, 0, 0, -1, -1, 2, 0])
    given, held = hold_segments(components, p, previous, hold_odds=10.0)
    assert given.tolist() == [0, 1, 0, 1, 1, 2, 1]
    assert held.tolist() == [True, False, True, False, False, False, False]
    same, none_held = hold_segments(components, p, previous, hold_odds=1.0)
    assert same.tolist() == components.tolist() and not none_held.any()
    with pytest.raises(ValueError, match="at least 1"):
        hold_segments(components, p, previous, hold_odds=0.5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 60), st.integers(2, 6), st.floats(1.0, 100.0), st.integers(0, 2**32 - 1))
def test_hold_segments_moves_a_customer_only_on_odds_above_hold_odds(n, k, odds, seed):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.5), size=n)
    components = p.argmax(axis=1)
    previous = rng.integers(-1, k, size=n)
    given, held = hold_segments(components, p, previous, hold_odds=odds)
    rows = np.arange(n)
    had = previous >= 0
    # Everyone is in their previous segment or their most probable one.
    assert np.all((given == components) | (given == previous))
    # Held customers: another segment is more probable, by at most the odds.
    assert np.all(p[rows[held], components[held]] <= odds * p[rows[held], previous[held]])
    assert np.all(given[held] == previous[held]) and np.all(components[held] != previous[held])
    # Movers: their new segment is more than `odds` times as probable as the one they left.
    moved = had & (given != previous)
    assert np.all(p[rows[moved], given[moved]] > odds * p[rows[moved], previous[moved]])
    # Larger odds never move more customers.
    given_more, _ = hold_segments(components, p, previous, hold_odds=odds * 2)
    assert np.sum(had & (given_more != previous)) <= np.sum(moved)
    # Read a block of customers at a time through a function, the same customers are held.
    block = tracking_customers._HOLD_BLOCK  # hypothesis runs many examples per monkeypatch fixture
    try:
        tracking_customers._HOLD_BLOCK = 3
        read: list[int] = []

        def rows_of(at: np.ndarray) -> np.ndarray:
            read.append(at.size)
            return p[at]

        given_read, held_read = hold_segments(components, rows_of, previous, hold_odds=odds)
    finally:
        tracking_customers._HOLD_BLOCK = block
    np.testing.assert_array_equal(given_read, given)
    np.testing.assert_array_equal(held_read, held)
    assert max(read, default=0) <= 3 and sum(read) == np.sum(had & (components != previous))


def test_compare_runs_with_hold_odds_moves_only_customers_the_model_clearly_places_elsewhere(
    base, monkeypatch
):
    X, ids, names, first = base
    # Two overlapping segments refitted on fresh noise: customers near their border flip with a
    # plain refit; held, only those the new model places elsewhere by more than 10 to 1 move.
    X2 = X + np.random.default_rng(5).normal(0.0, 1.0, X.shape) * np.array([6.0, 0.15, 0.2])
    model, components = fit_run(X2, 3, seed=3, run_id=2)
    gm, mean, scale = _fit(np.ascontiguousarray(X2).tobytes(), X2.shape, 3, 3, "full")
    proba = gm.predict_proba((X2 - mean) / scale)
    options = dict(
        max_id_used=first.match.max_id_used,
        current_customers=ids,
        current_components=components,
        previous_customers=first.customer_ids,
        previous_segments=first.customer_segments,
    )
    plain = compare_runs(first.model, model, **options)
    held = compare_runs(first.model, model, probabilities=proba, hold_odds=10.0, **options)
    # Decided a block of customers at a time (7 here), the same customers are held.
    monkeypatch.setattr(tracking_drift, "_HOLD_CUSTOMERS", 7)
    in_blocks = compare_runs(first.model, model, probabilities=proba, hold_odds=10.0, **options)
    np.testing.assert_array_equal(in_blocks.held, held.held)
    np.testing.assert_array_equal(in_blocks.customer_components, held.customer_components)
    assert plain.held is None and plain.held_count == 0
    assert held.match.segment_ids.tolist() == plain.match.segment_ids.tolist()  # ids come from the model
    assert held.held_count > 0 and held.moved_share < plain.moved_share
    assert held.moved_share == pytest.approx(
        (plain.moved_share * ids.size - held.held_count) / ids.size
    )  # each held customer is one mover less
    # The segments given: held customers keep their previous id; the tables describe the given segments.
    previous = first.customer_segments
    assert np.all(held.customer_segments[held.held] == previous[held.held])
    assert np.all(plain.customer_segments[held.held] != previous[held.held])
    # The same segments as component indices of this run's model, for the run's labels.
    assert np.array_equal(held.match.segment_ids[held.customer_components], held.customer_segments)
    assert np.array_equal(plain.customer_components, components)
    assert np.sum(held.customer_components != components) == held.held_count
    assert int(held.migration["customers"].sum()) == ids.size
    stayed = held.migration.query("from_segment == to_segment")["customers"].sum()
    assert stayed == np.sum(held.customer_segments == previous)
    assert f"{held.held_count:,} customers kept their segment" in held.summary()
    with pytest.raises(ValueError, match="probabilities must have shape"):
        compare_runs(first.model, model, probabilities=proba[:, :2], hold_odds=10.0, **options)


def test_a_customer_whose_segment_was_retired_takes_their_most_probable_segment(base):
    X, ids, names, first = base
    model, components = fit_run(X, 3, seed=3, run_id=2)
    gm, mean, scale = _fit(np.ascontiguousarray(X).tobytes(), X.shape, 3, 3, "full")
    proba = gm.predict_proba((X - mean) / scale)
    # Every segment moved far away: each previous id is retired, so there is nothing to hold.
    far = TrackedModel(
        model.weights,
        model.means + np.array([400.0, 0.0, 0.0]),
        model.covariances,
        model.segment_ids,
        NAMES,
        TRANSFORMS,
        "full",
    )
    drift = compare_runs(
        first.model,
        far,
        max_id_used=first.match.max_id_used,
        current_customers=ids,
        current_components=components,
        previous_customers=first.customer_ids,
        previous_segments=first.customer_segments,
        probabilities=proba,
        hold_odds=1e6,
    )
    assert drift.match.retired_ids == (1, 2, 3)
    assert drift.held_count == 0
    assert np.array_equal(drift.customer_segments, drift.match.segment_ids[components])


def test_customers_are_aligned_by_id_as_text_in_the_current_order():
    overlap = customer_overlap(
        np.array([10, 20, 30]), [1, 2, 3], np.array(["30", "40", "10"], dtype=object), [7, 8, 9]
    )
    assert overlap.customer_ids.tolist() == ["30", "10"]
    assert overlap.previous_segments.tolist() == [3, 1] and overlap.current_segments.tolist() == [7, 9]
    assert (overlap.entered, overlap.left) == (1, 1)
    ip, ic = align_customers(["b", "a"], np.array(["a", "c", "b"]))
    assert ip.tolist() == [1, 0] and ic.tolist() == [0, 2]
    with pytest.raises(ValueError, match="current customer ids are not unique"):
        align_customers(["a"], ["b", "b"])


@pytest.mark.parametrize("hashes", ["real", "all equal", "unique but wrong", "joined in blocks"])
def test_customer_alignment_is_exact_whatever_the_hashes_do(monkeypatch, hashes):
    """The hash join answers as a join of the ids themselves; when hashes repeat (a repeated id or
    a collision) or pair different ids, the exact path takes over and gives the same answer."""
    import tracking.customers as customers

    rng = np.random.default_rng(11)
    previous = rng.permutation(np.array([f"C{i}" for i in range(0, 3_000)], dtype=object))
    current = rng.permutation(np.array([f"C{i}" for i in range(1_000, 5_000)], dtype=object))
    if hashes == "all equal":
        monkeypatch.setattr(customers.pd.util, "hash_array", lambda a, **kw: np.zeros(len(a), np.uint64))
    elif hashes == "joined in blocks":
        monkeypatch.setattr(customers, "_JOIN_BLOCK", 7)
    elif hashes == "unique but wrong":
        monkeypatch.setattr(
            customers.pd.util, "hash_array", lambda a, **kw: np.arange(len(a), dtype=np.uint64)
        )
    ip, ic = align_customers(previous, current)
    assert np.all(np.diff(ic) > 0)
    assert np.array_equal(previous[ip], current[ic])
    expected = np.flatnonzero(np.isin(current, previous))
    assert np.array_equal(ic, expected)
    with pytest.raises(ValueError, match="previous customer ids are not unique"):
        align_customers(np.append(previous, previous[:1]), current)


def test_migration_table_keeps_negative_and_sparse_ids_apart():
    table = migration_table([5, -1, 5, 40, -1], [3, 3, 3, 100, 7])
    assert table.values.tolist() == [[-1, 3, 1], [-1, 7, 1], [5, 3, 2], [40, 100, 1]]


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=200),
    far=st.booleans(),
)
def test_pair_counts_count_every_pair_a_block_at_a_time(pairs, far):
    """Counted in blocks (3 customers here) and, with ids far apart, by the sparse branch: the
    same table as counting the pairs one by one, and the moved share that follows from it."""
    p = np.array([a for a, _ in pairs], dtype=np.int64) * (10**9 if far else 1)
    c = np.array([b for _, b in pairs], dtype=np.int64) + 5
    # The same pairs read through positions, as the customers of two runs are (the runs' own
    # arrays, in another order, with customers of their own around them).
    order = np.random.default_rng(len(pairs)).permutation(len(pairs))
    previous_all, current_all = np.concatenate([p[order], p[:1]]), np.concatenate([[5, 6], c])
    previous_at, current_at = np.argsort(order), np.arange(2, len(pairs) + 2)
    block = tracking_customers._PAIR_BLOCK
    tracking_customers._PAIR_BLOCK = 3  # hypothesis runs many examples per monkeypatch fixture
    try:
        from_ids, to_ids, counts = tracking_customers.pair_counts(p, c)
        moved = tracking_customers.moved_share(p, c)
        through = tracking_customers.pair_counts(previous_all, current_all, previous_at, current_at)
    finally:
        tracking_customers._PAIR_BLOCK = block
    for got, want in zip(through, (from_ids, to_ids, counts), strict=True):
        np.testing.assert_array_equal(got, want)
    if not far:  # ids and positions held in 32 bits (as a run holds them) count alike
        narrow = tracking_customers.pair_counts(
            *(a.astype(np.int32) for a in (previous_all, current_all, previous_at, current_at))
        )
        for got, want in zip(narrow, (from_ids, to_ids, counts), strict=True):
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, want)
    pairs_ = (from_ids, to_ids, counts)
    assert migration_table(pairs=pairs_).equals(migration_table(p, c))
    if pairs:  # (no segment at all has no transitions to classify)
        assert classify_transitions(pairs=pairs_) == classify_transitions(p, c)
    moved_of_pairs = tracking_customers.moved_share(pairs=pairs_)
    assert moved_of_pairs == moved or (math.isnan(moved) and math.isnan(moved_of_pairs))
    expected: dict[tuple[int, int], int] = {}
    for a, b in zip(p.tolist(), c.tolist(), strict=True):
        expected[(a, b)] = expected.get((a, b), 0) + 1
    assert list(zip(from_ids.tolist(), to_ids.tolist(), strict=True)) == sorted(expected)
    assert counts.tolist() == [expected[k] for k in sorted(expected)]
    if pairs:
        assert moved == pytest.approx(sum(n for (a, b), n in expected.items() if a != b) / len(pairs))
    else:
        assert math.isnan(moved)
