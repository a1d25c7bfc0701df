"""Stable segment ids and drift through the real flow: consecutive runs on one results database."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from flows.continuity import relabel
from flows.pipeline import segment_customers
from flows.segments import SegmentResult

pytestmark = pytest.mark.slow

CENTRES = np.array([[0.0, 0.0], [9.0, 1.0], [2.0, 10.0], [12.0, 12.0]])


def customers(n_per_segment: int, segments: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(segments), n_per_segment)
    X = CENTRES[labels] + rng.standard_normal((labels.size, 2)) * 0.8
    frame = pd.DataFrame({"id": [f"K{i:05d}" for i in range(labels.size)], "a": X[:, 0], "b": X[:, 1]})
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # another row order each run


def run(tmp_path: Path, frame: pd.DataFrame, seed: int, config: Path | None = None) -> dict:
    csv = tmp_path / f"customers_{seed}.csv"
    frame.to_csv(csv, index=False)
    return segment_customers(
        config_path=str(config) if config else None,
        input_path=str(csv),
        input_kind="customers",
        columns={"customer_id": "id"},
        features=["a", "b"],
        k_min=2,
        k_max=5,
        covariance_types=["full"],
        n_init=2,
        seed=seed,
        database=str(tmp_path / "segments.duckdb"),
        reports_dir=str(tmp_path / "reports"),
        trigger="test",
    )


def query(db: Path, sql: str, params=None) -> pd.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).df()


def test_ids_names_migration_and_history_across_runs(prefect_harness, tmp_path):
    db = tmp_path / "segments.duckdb"
    base = customers(250, 3, seed=1)

    first = run(tmp_path, base, seed=1)
    assert first["n_components"] == 3 and first["previous_run_id"] is None
    before = query(db, "SELECT customer_id, segment_id FROM assignments WHERE run_id = 1")
    assert sorted(before.segment_id.unique()) == [1, 2, 3]

    # An analyst names segment 2; the name must follow the id through later runs.
    assert main(["name", "2", "Loyal big spenders", "--database", str(db)]) == 0

    # The same customers, shuffled, refitted with another seed: EM numbers components anew, ids stay.
    second = run(tmp_path, base.sample(frac=1.0, random_state=7), seed=2)
    assert (
        second["previous_run_id"] == 1 and second["new_segments"] == [] and second["retired_segments"] == []
    )
    after = query(db, "SELECT customer_id, segment_id FROM assignments WHERE run_id = 2")
    joined = before.merge(after, on="customer_id", suffixes=("_1", "_2"))
    assert (joined.segment_id_1 == joined.segment_id_2).mean() > 0.99
    migration = query(db, "SELECT * FROM current_migration")
    assert migration.customers.sum() == len(joined) == 750  # sums to the customers in both runs
    # Query 12 of docs/results-database.md: the migration as a matrix of integers, 0 where nobody moved.
    examples = (Path(__file__).resolve().parent.parent / "flows" / "sql" / "examples.sql").read_text()
    start = examples.index("PIVOT", examples.index("-- 12."))
    pivot = query(db, examples[start : examples.index(";", start)])
    counts = pivot.drop(columns="from_segment")
    assert all(str(t).startswith("int") for t in counts.dtypes), counts.dtypes
    assert int(counts.to_numpy().sum()) == 750 and (counts.to_numpy() >= 0).all()
    assert second["moved_share"] < 0.01 and second["drift_flags"] == []
    names = query(db, "SELECT segment_id, name FROM current_segments ORDER BY segment_id")
    assert names.set_index("segment_id").name.to_dict() == {1: None, 2: "Loyal big spenders", 3: None} or (
        names.name.isna().sum() == 2 and names.set_index("segment_id").loc[2, "name"] == "Loyal big spenders"
    )

    # A fourth, well-separated segment appears: exactly one new id, no renames.
    grown = pd.concat([base, customers(250, 4, seed=3).query("a > 10.5 and b > 10.5")], ignore_index=True)
    third = run(tmp_path, grown, seed=3)
    assert third["n_components"] == 4
    assert third["new_segments"] == [4] and third["retired_segments"] == []
    kinds = query(db, "SELECT kind, to_segments FROM segment_transitions WHERE run_id = 3")
    assert [list(t) for t in kinds.query("kind == 'emerged'").to_segments] == [[4]]
    assert sorted(kinds.query("kind == 'survived'").to_segments.map(lambda t: t[0])) == [1, 2, 3]
    assert any("k changed 3 -> 4" in flag for flag in third["drift_flags"])

    history = query(
        db, "SELECT run_id, segment_id, name, customer_count FROM segment_history WHERE feature_index = 1"
    )
    assert sorted(history.run_id.unique()) == [1, 2, 3]
    assert set(history.query("segment_id == 2").name) == {"Loyal big spenders"}
    assert history.groupby("run_id").segment_id.apply(sorted).to_dict() == {
        1: [1, 2, 3],
        2: [1, 2, 3],
        3: [1, 2, 3, 4],
    }

    report = Path(third["report"])
    html = report.read_text()
    assert "migration.png" in html and "What changed since run 2" in html
    assert (report.parent / "migration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_structure_is_kept_unless_a_fresh_choice_is_clearly_better(prefect_harness, tmp_path):
    """model.switch_margin: refit the previous (k, type), switch only on strong evidence; --fresh."""
    db = tmp_path / "segments.duckdb"
    config = tmp_path / "segment.toml"
    # An old key is still accepted (and ignored with a warning); keep_runs = 1 keeps what the
    # next run compares with.
    config.write_text("[tracking]\nwarm_start = true\n[output]\nkeep_runs = 1\n")
    base = customers(200, 3, seed=4)
    first = run(tmp_path, base, seed=4, config=config)
    assert first["decision"] == "first_run" and first["n_components"] == 3

    second = run(tmp_path, base, seed=5, config=config)
    assert second["decision"] == "kept" and second["n_components"] == 3
    assert "Kept run 1's 3 full, refitted" in second["decision_note"]
    assert second["moved_share"] < 0.01
    row = query(
        db, "SELECT decision, fresh_value, previous_value, bic, k_max_tried FROM runs WHERE run_id = 2"
    )
    assert row.decision[0] == "kept" and row.bic[0] == pytest.approx(row.previous_value[0])
    assert row.previous_value[0] - row.fresh_value[0] <= 10.0  # within the margin
    kept = query(
        db,
        "SELECT n_components, covariance_type, origin, selected FROM model_candidates "
        "WHERE run_id = 2 AND selected",
    )
    assert kept.to_dict("records") == [
        {"n_components": 3, "covariance_type": "full", "origin": "previous", "selected": True}
    ]

    # A fourth, well-separated segment: the fresh 4 beats the refitted 3 by far more than 10.
    grown = pd.concat([base, customers(200, 4, seed=6).query("a > 10.5 and b > 10.5")], ignore_index=True)
    third = run(tmp_path, grown, seed=6, config=config)
    assert third["decision"] == "switched" and third["n_components"] == 4
    values = query(db, "SELECT fresh_value, previous_value FROM runs WHERE run_id = 3")
    assert values.previous_value[0] - values.fresh_value[0] > 10.0

    # A manual re-segmentation chooses afresh.
    csv = tmp_path / "grown.csv"
    grown.to_csv(csv, index=False)
    common = dict(
        config_path=str(config),
        input_path=str(csv),
        input_kind="customers",
        columns={"customer_id": "id"},
        features=["a", "b"],
        k_min=2,
        n_init=1,
        seed=7,
        database=str(db),
        reports_dir=str(tmp_path / "reports"),
        trigger="test",
    )
    fourth = segment_customers(**common, k_max=5, covariance_types=["full"], fresh=True)
    assert fourth["decision"] == "fresh" and "Fresh choice asked for" in fourth["decision_note"]
    assert query(db, "SELECT previous_value FROM runs WHERE run_id = 4").previous_value.isna().all()

    # The previous model (full) is outside a diag-only grid: chosen afresh, said why.
    fifth = segment_customers(**common, k_max=4, covariance_types=["diag"])
    assert (
        fifth["decision"] == "previous_unusable" and "outside this run's settings" in fifth["decision_note"]
    )
    assert fifth["previous_run_id"] == 4 and fifth["moved_share"] is not None
    assert query(db, "SELECT DISTINCT run_id FROM assignments").run_id.tolist() == [5]
    assert query(db, "SELECT run_id FROM runs WHERE pruned_at IS NOT NULL ORDER BY 1").run_id.tolist() == [
        1,
        2,
        3,
        4,
    ]
    assert query(db, "SELECT count(DISTINCT run_id) AS n FROM segment_history").n[0] == 5
    html = Path(fifth["report"]).read_text()
    assert "outside this run&#39;s settings" in html


def test_customers_change_segment_only_when_the_model_clearly_places_them_elsewhere(
    prefect_harness, tmp_path
):
    """tracking.hold_odds: a customer near a border keeps last run's segment; the tables say so."""
    db = tmp_path / "segments.duckdb"
    rng = np.random.default_rng(11)
    n = 600
    # Two overlapping segments: many customers sit near the border between them.
    X = np.where(rng.random(n)[:, None] < 0.5, [0.0, 0.0], [2.5, 0.5]) + rng.standard_normal((n, 2)) * 0.8
    frame = pd.DataFrame({"id": [f"H{i:04d}" for i in range(n)], "a": X[:, 0], "b": X[:, 1]})

    def run_on(data: pd.DataFrame, seed: int, hold_odds: float, database: Path) -> dict:
        csv = tmp_path / f"hold_{seed}_{database.stem}.csv"
        data.to_csv(csv, index=False)
        config = tmp_path / f"hold_{hold_odds}.toml"
        config.write_text(f"[tracking]\nhold_odds = {hold_odds}\n")
        return segment_customers(
            config_path=str(config),
            input_path=str(csv),
            input_kind="customers",
            columns={"customer_id": "id"},
            features=["a", "b"],
            k_min=2,
            k_max=2,
            covariance_types=["full"],
            n_init=2,
            seed=seed,
            database=str(database),
            reports_dir=str(tmp_path / "reports"),
            trigger="test",
        )

    nudged = frame.assign(a=frame.a + rng.normal(0.0, 0.3, n), b=frame.b + rng.normal(0.0, 0.3, n))
    results = {}
    for odds, database in ((10.0, db), (1.0, tmp_path / "plain.duckdb")):
        first = run_on(frame, 1, odds, database)
        assert first["held_customers"] is None
        results[odds] = run_on(nudged, 2, odds, database)
    held, plain = results[10.0], results[1.0]
    assert plain["held_customers"] is None and held["held_customers"] > 0
    assert held["moved_share"] < plain["moved_share"]

    rows = query(
        db,
        """
        SELECT a.customer_id, a.segment_id, a.held, a.probability, list_max(a.probabilities) AS best,
               a.probabilities[b.segment_id] AS p_before, b.segment_id AS before
        FROM current_assignments a JOIN assignments b ON b.run_id = 1 AND b.customer_id = a.customer_id
    """,
    )
    assert rows.held.sum() == held["held_customers"]
    assert (
        query(db, "SELECT held_customers FROM runs WHERE run_id = 2").held_customers[0]
        == held["held_customers"]
    )
    kept = rows[rows.held]
    assert (kept.segment_id == kept.before).all() and (kept.probability < kept.best).all()
    assert (kept.best <= 10.0 * kept.probability + 1e-12).all()
    moved = rows[rows.segment_id != rows.before]
    assert (moved.best > 10.0 * moved.p_before).all() and (moved.probability == moved.best).all()
    assert (
        f"{held['held_customers']:,} customers kept their segment"
        in query(db, "SELECT what_changed FROM latest_run").what_changed[0]
    )


def _segments(k: int = 3) -> tuple[SegmentResult, object]:
    """A fitted model's segments for 4 x 150 generated customers, and their features."""
    from flows.features import build_feature_matrix
    from flows.segments import assign_segments
    from gmm_engine import GaussianMixture

    rng = np.random.default_rng(4)
    centres = np.array([[0.0, 0.0], [6.0, 1.0], [1.0, 7.0], [8.0, 8.0]])
    X = np.concatenate([c + rng.normal(size=(150, 2)) for c in centres])
    table = pd.DataFrame({"customer_id": [f"c{i:04d}" for i in range(len(X))], "a": X[:, 0], "b": X[:, 1]})
    features = build_feature_matrix(table, ["a", "b"], ["", ""], ["none", "none"])
    model = GaussianMixture(k, covariance_type="full", random_state=1).fit(features.X_model)
    return assign_segments(model, features), features


def test_assigned_segments_are_the_models_memberships_read_a_block_at_a_time(monkeypatch):
    """assign_segments keeps each customer's most probable segment, its probability and the
    log-density, and sums the profiles' totals, whatever the block size; the memberships are the
    model's, computed again when read."""
    import flows.segments as segments_module
    from reports.profiles import MembershipTotals

    whole, features = _segments(4)
    P = whole.memberships.model.predict_proba(features.X_model)
    np.testing.assert_array_equal(whole.memberships.rows(slice(None)), P)
    np.testing.assert_array_equal(whole.labels, P.argmax(axis=1))
    np.testing.assert_allclose(whole.probability, P.max(axis=1), rtol=1e-15)
    np.testing.assert_allclose(whole.log_density, whole.memberships.model.score_samples(features.X_model))
    expected = MembershipTotals.of(features.X_original, P)
    monkeypatch.setattr(segments_module, "_BLOCK_ROWS", 7)
    blocks, _ = _segments(4)
    np.testing.assert_array_equal(blocks.labels, whole.labels)
    for name in ("mass", "first", "second"):
        np.testing.assert_allclose(getattr(blocks.totals, name), getattr(expected, name), rtol=1e-12)
        np.testing.assert_allclose(getattr(whole.totals, name), getattr(expected, name), rtol=1e-12)


def test_relabel_puts_segments_in_id_order_without_a_copy_of_any_customers_probabilities():
    segments, _ = _segments(3)
    moved = relabel(segments, np.array([7, 2, 5]))
    assert moved.segment_ids.tolist() == [2, 5, 7]
    every = segments.memberships.rows(slice(None))
    np.testing.assert_array_equal(moved.memberships.rows(slice(None)), every[:, [1, 2, 0]])
    np.testing.assert_array_equal(moved.memberships.rows(np.array([5, 0])), every[[5, 0]][:, [1, 2, 0]])
    assert moved.memberships.X_model is segments.memberships.X_model  # read again, not copied
    np.testing.assert_array_equal(moved.means, segments.means[[1, 2, 0]])
    np.testing.assert_array_equal(moved.totals.first, segments.totals.first[[1, 2, 0]])
    # Each customer keeps the segment id it had: component c had id [7, 2, 5][c].
    np.testing.assert_array_equal(moved.segment_ids[moved.labels], np.array([7, 2, 5])[segments.labels])
    np.testing.assert_array_equal(moved.probability, segments.probability)

    kept = relabel(segments, np.array([4, 6, 9]))
    assert kept.segment_ids.tolist() == [4, 6, 9]
    assert kept.labels is segments.labels  # ids already in order: the customers' labels not copied


def test_held_customers_get_the_probability_of_the_segment_they_keep(tmp_path):
    """track with hold_odds: a held customer's ``probability`` is that of the segment kept, read
    from the model again (the run holds no one's full list of probabilities)."""
    from flows.config import load_settings
    from flows.continuity import PreviousRun, current_model, track

    segments, features = _segments(4)
    settings = load_settings()
    first, _ = track(segments, features, None, settings)
    # The previous run put every customer of component 0 in component 1's segment: those near
    # the border stay there with hold_odds. Its assignments are a Parquet file, in another order.
    before = first.segment_ids[np.where(first.labels == 0, 1, first.labels)]
    stored = pd.DataFrame({"customer_id": features.customer_ids.astype(object), "segment_id": before})
    files = tmp_path / "run_id=1"
    files.mkdir()
    with duckdb.connect() as con:
        con.register("stored", stored.iloc[::-1])
        con.execute(f"COPY stored TO '{files / 'part-00000.parquet'}' (FORMAT parquet)")
    previous = PreviousRun(
        run_id=1,
        model=current_model(first, features).with_ids(first.segment_ids),
        max_id_used=int(first.segment_ids.max()),
        assignments=str(files / "*.parquet"),
    )
    odds = settings.tracking.model_copy(update={"hold_odds": 1e6})
    holding = settings.model_copy(update={"tracking": odds})
    tracked, drift = track(segments, features, previous, holding)
    # The pipeline joins the two runs' customers before the model is chosen and keeps only the
    # alignment: tracking gives the same segments from it.
    aligned = previous.aligned_with(features)
    assert aligned.segment_ids is not None and aligned.alignment is not None
    assert aligned.aligned_with(features) is aligned
    again, _ = track(segments, features, aligned, holding)
    np.testing.assert_array_equal(again.labels, tracked.labels)
    np.testing.assert_array_equal(again.held, tracked.held)
    assert tracked.held is not None and 0 < tracked.held.sum() < (first.labels == 0).sum()
    every = tracked.memberships.rows(slice(None))
    np.testing.assert_array_equal(tracked.probability, every[np.arange(len(every)), tracked.labels])
    assert (tracked.probability[tracked.held] < every[tracked.held].max(axis=1)).all()
