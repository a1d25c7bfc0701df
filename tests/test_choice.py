"""Segments that hold still, without Prefect: feature resolution, row order, the grid's edge and
the switch margin (flows.features, flows.stages, flows.choice, flows.continuity)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from flows import continuity, stages
from flows.choice import DECISIONS, PreviousStructure, choose_model
from flows.config import load_settings
from flows.features import apply_transforms, build_feature_matrix, feature_resolution, fit_scaler
from gmm_engine import select_model


def counts_table(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    """A customer table with a count (half of the customers at exactly 1) and a spend."""
    rng = np.random.default_rng(seed)
    visits = 1 + rng.poisson(5.0, n)
    visits[: n // 2] = 1
    spend = np.round(np.exp(rng.normal(4.0, 0.8, n)) * (1 + (visits > 1)), 2)
    return pd.DataFrame(
        {"customer_id": [f"c{i:05d}" for i in range(n)], "visits": visits.astype(float), "spend": spend}
    )


def settings_for(**model):
    return load_settings(
        overrides={
            "input": {"path": "customers.csv", "kind": "customers"},
            "features": {"columns": ["visits", "spend"], "transforms": {"visits": "log1p", "spend": "log1p"}},
            "model": {"n_init": 2, "k_max": 5, **model},
        }
    )


def matrix(table: pd.DataFrame, resolution: bool = True):
    return build_feature_matrix(
        table, ["visits", "spend"], ["visits", "EUR"], ["log1p", "log1p"], resolution=resolution
    )


# --------------------------------------------------------------------------- resolution
def test_resolution_of_a_count_is_its_spacing_at_the_spike_in_model_units():
    table = counts_table()
    features = matrix(table)
    scale = features.scaler.scale[0]
    # The spike is at 1 visit; the nearest other value is 2: (log 3 - log 2) / scale.
    assert features.spike_value[0] == 1.0 and features.spike_share[0] == pytest.approx(0.5, abs=0.01)
    assert features.resolution[0] == pytest.approx((np.log(3.0) - np.log(2.0)) / scale, rel=1e-12)
    # Spend has no value that 1% of the customers share: continuous.
    assert (
        features.resolution[1] == 0.0 and np.isnan(features.spike_value[1]) and features.spike_share[1] == 0.0
    )


def test_continuous_features_and_small_spikes_have_no_resolution():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 2))
    X[:4, 0] = 3.0  # four identical values: below 1% of 500 customers
    scaler = fit_scaler(X, ["none", "none"])
    resolution, value, share = feature_resolution(X, scaler)
    assert resolution.tolist() == [0.0, 0.0] and np.isnan(value).all() and share.tolist() == [0.0, 0.0]
    X[:10, 0] = 3.0  # 2%: a spike; the nearest other value sets the spacing
    resolution, value, share = feature_resolution(X, scaler)
    others = np.sort(np.abs(X[10:, 0] - 3.0))[0]
    assert value[0] == 3.0 and share[0] == 0.02 and resolution[0] == pytest.approx(others / scaler.scale[0])


def test_spike_screening_on_a_sample_keeps_every_spike_of_a_large_table():
    """Past 2^17 customers a feature is screened on a sample before every value is counted; a
    spike just over 1% is still found exactly, one just under is not, continuous stays 0."""
    rng = np.random.default_rng(7)
    n = 400_000
    X = rng.standard_normal((n, 3))
    X[rng.permutation(n)[: n // 100 + 1], 0] = 2.0  # 1% + 1 customer: a spike
    X[rng.permutation(n)[: n // 100 - 1], 1] = -1.0  # 1% - 1: none
    scaler = fit_scaler(X, ["none", "none", "none"])
    resolution, value, share = feature_resolution(X, scaler)
    others = np.sort(np.abs(X[X[:, 0] != 2.0, 0] - 2.0))[0]
    assert value[0] == 2.0 and share[0] == (n // 100 + 1) / n
    assert resolution[0] == pytest.approx(others / scaler.scale[0])
    assert resolution[1:].tolist() == [0.0, 0.0] and share[1:].tolist() == [0.0, 0.0]
    # With the threshold lowered to its count, the second feature has a spike too.
    resolution, value, share = feature_resolution(X, scaler, min_customers=n // 100 - 1)
    assert value[1] == -1.0 and share[1] == (n // 100 - 1) / n


def test_features_read_from_a_file_a_block_at_a_time_equal_those_of_the_array(monkeypatch):
    """A matrix in a file (a run's customer table) gives the array's scaler to 1e-12, the same
    spikes and value range exactly, and the same model matrix, in a file of its own; with one
    block the scaler is numpy's mean and std exactly."""
    from flows import features as features_module
    from flows.features import feature_matrix
    from flows.matrix_file import MatrixFile

    rng = np.random.default_rng(11)
    n = 300_000
    X = rng.standard_normal((n, 3))
    X[:, 1] = rng.poisson(0.4, n) + 1.0  # counts: a spike at 1 of about two thirds
    X[rng.permutation(n)[: n // 50], 2] = 0.25  # 2 %: a spike in a continuous feature
    X[:, 2] += 5.0
    ids = np.asarray([f"c{i:07d}" for i in range(n)], dtype=object)
    transforms = ["none", "log1p", "none"]
    args = (["a", "b", "c"], ["", "", ""], transforms)
    one_block = fit_scaler(X[:200_000], transforms)  # within BLOCK_ROWS
    logged = np.log1p(X[:200_000, 1])
    assert one_block.mean[1] == logged.mean() and one_block.scale[1] == logged.std()
    whole = apply_transforms(X, transforms)
    monkeypatch.setattr(features_module, "BLOCK_ROWS", 1 << 16)  # five blocks
    memory = feature_matrix(ids, X.copy(), *args)
    file = MatrixFile.write(X)
    in_file = feature_matrix(ids, file, *args, keep_original=False)
    assert file.removed and isinstance(in_file.X_model, MatrixFile) and in_file.X_original is None
    exact_mean = np.array([math.fsum(whole[:, j]) / n for j in range(3)])
    exact_std = np.sqrt([math.fsum((whole[:, j] - exact_mean[j]) ** 2) / n for j in range(3)])
    np.testing.assert_allclose(in_file.scaler.mean, exact_mean, rtol=1e-13)
    np.testing.assert_allclose(in_file.scaler.scale, exact_std, rtol=1e-13)
    np.testing.assert_array_equal(in_file.scaler.mean, memory.scaler.mean)
    for name in ("resolution", "spike_value", "spike_share", "lowest", "highest"):
        np.testing.assert_array_equal(getattr(in_file, name), getattr(memory, name))
    assert in_file.spike_value[1:].tolist() == [1.0, 5.25] and in_file.resolution[0] == 0.0
    np.testing.assert_array_equal(in_file.X_model[:], memory.X_model)
    in_file.release()


def test_resolution_off_treats_every_feature_as_continuous():
    features = matrix(counts_table(), resolution=False)
    assert features.resolution.tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- row order
def test_the_same_customers_in_another_order_give_the_same_matrix():
    table = counts_table()
    a = matrix(table)
    b = matrix(table.sample(frac=1.0, random_state=3).reset_index(drop=True))
    assert a.customer_ids.tolist() == sorted(table.customer_id) == b.customer_ids.tolist()
    assert np.array_equal(a.X_model, b.X_model) and np.array_equal(a.resolution, b.resolution)


def test_the_same_customers_in_another_order_give_the_same_segments():
    settings = settings_for()
    table = counts_table(600)
    results = []
    for seed in (None, 11):
        frame = table if seed is None else table.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        features = matrix(frame)
        selection = stages.select_segments(features, settings)
        choice = stages.choose(selection, features, None, settings)
        segments = stages.fit_segments(choice.model, features)
        results.append(pd.Series(segments.labels, index=features.customer_ids))
    pd.testing.assert_series_equal(results[0], results[1])


# --------------------------------------------------------------------------- the grid
def four_groups(n_per: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    X = np.vstack([c + rng.standard_normal((n_per, 2)) for c in centres])
    return pd.DataFrame(
        {"customer_id": [f"g{i:04d}" for i in range(len(X))], "visits": X[:, 0], "spend": X[:, 1]}
    )


def plain_matrix(table: pd.DataFrame):
    return build_feature_matrix(table, ["visits", "spend"], ["", ""], ["none", "none"])


def test_a_best_model_at_k_max_extends_the_grid_to_an_interior_choice():
    settings = settings_for(k_max=2, covariance_types=["full"])
    assert settings.k_limit == 4
    selection = stages.select_segments(plain_matrix(four_groups()), settings)
    assert selection.best.n_components == 4 and selection.k_max_tried == 4
    # 4 is the limit (2 x k_max): the choice sits at its edge, and the run gets a drift flag.
    assert selection.at_limit and "the limit" in selection.grid_note()
    wider = settings_for(k_max=2, k_limit=6, covariance_types=["full"])
    selection = stages.select_segments(plain_matrix(four_groups()), wider)
    assert selection.best.n_components == 4 and selection.k_max_tried == 5 and not selection.at_limit
    assert selection.grid_note() == "best at the edge of k = 1..2; extended to 5"


def test_a_choice_still_at_the_limit_is_a_drift_flag():
    settings = settings_for(k_max=2, covariance_types=["full"])
    features = plain_matrix(four_groups())
    selection = stages.select_segments(features, settings)
    choice = stages.choose(selection, features, None, settings)
    segments, drift = continuity.track(
        stages.fit_segments(choice.model, features), features, None, settings, choice
    )
    assert any("edge of the grid even at its limit, k = 4" in flag for flag in drift.flags)
    assert "edge of the grid" in drift.summary()


def test_the_grid_reaches_one_past_the_previous_number_of_segments():
    settings = settings_for(k_max=3, covariance_types=["full"])
    features = plain_matrix(four_groups())
    selection = stages.select_segments(features, settings, previous_k=5)
    assert max(r["n_components"] for r in selection.table) >= 6
    fixed = settings_for(k_min=3, k_max=3, covariance_types=["full"])
    selection = stages.select_segments(features, fixed, previous_k=5)
    assert {r["n_components"] for r in selection.table} == {3}  # a fixed k stays fixed


def test_covariance_prior_auto_follows_the_data():
    settings = settings_for()
    assert stages.covariance_prior(settings, matrix(counts_table())) == "data"
    assert stages.covariance_prior(settings, plain_matrix(four_groups())) is None
    assert stages.covariance_prior(settings_for(covariance_prior="none"), matrix(counts_table())) is None
    assert (
        stages.covariance_prior(settings_for(covariance_prior="data"), plain_matrix(four_groups())) == "data"
    )


# --------------------------------------------------------------------------- the switch margin
def previous_of(features, model, run_id: int = 1) -> PreviousStructure:
    segments = stages.fit_segments(model, features)
    return PreviousStructure(run_id=run_id, model=continuity.current_model(segments, features))


def fresh_selection(features, ks=range(1, 7), types=("full",)):
    return select_model(features.X_model, ks, list(types), n_init=2, random_state=0, k_limit=10)


def test_first_run_and_a_fresh_choice_take_the_best_fresh_model():
    features = plain_matrix(four_groups())
    selection = fresh_selection(features)
    first = choose_model(selection, features, None, switch_margin=10.0)
    assert first.decision == "first_run" and first.model is selection.best and first.previous_value is None
    assert first.note == "First run: 4 full, the best of k = 1..6 by BIC."
    previous = previous_of(features, fresh_selection(features, ks=[3]).best)
    fresh = choose_model(selection, features, previous, switch_margin=10.0, fresh=True)
    assert fresh.decision == "fresh" and fresh.chosen["n_components"] == 4
    assert all(set(DECISIONS) >= {c.decision} for c in (first, fresh))


def test_the_previous_structure_is_kept_within_the_margin():
    features = plain_matrix(four_groups())
    selection = fresh_selection(features)
    previous = previous_of(features, selection.best)
    choice = choose_model(selection, features, previous, switch_margin=10.0)
    assert choice.decision == "kept" and choice.chosen["origin"] == "previous"
    assert choice.chosen["n_components"] == 4 and choice.previous_value is not None
    assert choice.previous_value - choice.fresh_value <= 10.0
    assert sum(r["selected"] for r in choice.table) == 1
    # The selection's own table is not changed: the choice works on copies.
    assert sum(r["selected"] for r in selection.table) == 1 and "origin" not in selection.table[0]


def test_a_fresh_choice_better_by_more_than_the_margin_switches():
    features = plain_matrix(four_groups())
    selection = fresh_selection(features)
    three = fresh_selection(features, ks=[3]).best
    choice = choose_model(selection, features, previous_of(features, three), switch_margin=10.0)
    assert choice.decision == "switched" and choice.chosen["n_components"] == 4
    assert choice.previous_value - choice.fresh_value > 10.0
    assert choice.note.startswith("Switched from run 1's 3 full")
    # With a margin larger than the gain, the three segments are kept.
    gain = choice.previous_value - choice.fresh_value
    kept = choose_model(selection, features, previous_of(features, three), switch_margin=gain + 1.0)
    assert kept.decision == "kept" and kept.chosen["n_components"] == 3


def test_changed_features_or_settings_choose_afresh():
    features = plain_matrix(four_groups())
    selection = fresh_selection(features)
    previous = previous_of(features, selection.best)
    renamed = four_groups().rename(columns={"spend": "basket"})
    other = build_feature_matrix(renamed, ["visits", "basket"], ["", ""], ["none", "none"])
    changed = choose_model(fresh_selection(other), other, previous, switch_margin=10.0)
    assert changed.decision == "features_changed" and "changed since run 1" in changed.note
    outside = choose_model(selection, features, previous, switch_margin=10.0, allowed=(1, 6, ("diag",)))
    assert outside.decision == "previous_unusable" and "outside this run's settings" in outside.note


def stuck_five(features) -> PreviousStructure:
    """A previous 5-segment model caught in a poor optimum: one wide segment over the two bottom
    groups, the two top groups each split in two. EM from its parameters stays there."""
    from gmm_engine import GaussianMixture

    centres = (
        np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]) - features.scaler.mean
    ) / features.scaler.scale
    nudge = np.array([0.05, 0.0])
    means = np.array(
        [
            centres[:2].mean(axis=0),
            centres[2] - nudge,
            centres[2] + nudge,
            centres[3] - nudge,
            centres[3] + nudge,
        ]
    )
    return previous_of(features, GaussianMixture(5, means_init=means, random_state=0).fit(features.X_model))


def test_the_previous_structure_is_judged_by_its_best_fit_not_by_a_stuck_refit():
    features = plain_matrix(four_groups())
    selection = fresh_selection(features)
    previous = stuck_five(features)
    probe = choose_model(selection, features, previous, switch_margin=0.0)
    refit = next(r for r in probe.table if r["origin"] == "previous")["bic"]
    grid_five = next(r for r in probe.table if r["origin"] == "grid" and r["n_components"] == 5)["bic"]
    best = probe.fresh_value
    # The refit from the stuck parameters is far worse than the grid's own five segments, which
    # are only a little worse than the best, four.
    assert refit - grid_five > 100 and 0 < grid_five - best < 100
    assert probe.decision == "switched" and probe.previous_value == grid_five
    # A margin between the two gains: against the stuck refit alone four segments would win; against
    # the best fit of five they do not, so five are kept, with the grid's parameters.
    margin = (grid_five - best) + 0.5 * (refit - grid_five)
    choice = choose_model(selection, features, previous, switch_margin=margin)
    assert choice.decision == "refreshed" and choice.previous_value == pytest.approx(grid_five)
    assert choice.chosen["origin"] == "grid" and choice.chosen["n_components"] == 5
    assert choice.model.n_components == 5 and sum(r["selected"] for r in choice.table) == 1
    assert (
        "fitted afresh (BIC " in choice.note
        and "better than the refit from run 1's parameters by" in choice.note
    )


def test_a_fresh_fit_of_the_same_structure_that_beats_the_refit_is_a_refresh():
    features = plain_matrix(four_groups())
    previous = stuck_five(features)
    choice = choose_model(fresh_selection(features, ks=[5]), features, previous, switch_margin=10.0)
    assert choice.decision == "refreshed" and choice.chosen["origin"] == "grid"
    assert choice.chosen["n_components"] == 5 and choice.previous_value - choice.fresh_value > 10.0
    assert choice.note.startswith("Kept run 1's 5 full, fitted afresh")
    # Within a margin larger than the gain, the refit's parameters stay.
    gain = choice.previous_value - choice.fresh_value
    kept = choose_model(fresh_selection(features, ks=[5]), features, previous, switch_margin=gain + 1.0)
    assert kept.decision == "kept" and kept.chosen["origin"] == "previous"
