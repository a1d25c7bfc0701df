"""Stable segment ids and drift through the real flow: consecutive runs on one results database."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from flows.pipeline import segment_customers

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
        config_path=str(config) if config else None, input_path=str(csv), input_kind="customers",
        columns={"customer_id": "id"}, features=["a", "b"], k_min=2, k_max=5, covariance_types=["full"],
        n_init=2, seed=seed, database=str(tmp_path / "segments.duckdb"), reports_dir=str(tmp_path / "reports"),
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
    assert second["previous_run_id"] == 1 and second["new_segments"] == [] and second["retired_segments"] == []
    after = query(db, "SELECT customer_id, segment_id FROM assignments WHERE run_id = 2")
    joined = before.merge(after, on="customer_id", suffixes=("_1", "_2"))
    assert (joined.segment_id_1 == joined.segment_id_2).mean() > 0.99
    migration = query(db, "SELECT * FROM current_migration")
    assert migration.customers.sum() == len(joined) == 750  # sums to the customers in both runs
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

    history = query(db, "SELECT run_id, segment_id, name, customer_count FROM segment_history WHERE feature_index = 1")
    assert sorted(history.run_id.unique()) == [1, 2, 3]
    assert set(history.query("segment_id == 2").name) == {"Loyal big spenders"}
    assert history.groupby("run_id").segment_id.apply(sorted).to_dict() == {1: [1, 2, 3], 2: [1, 2, 3], 3: [1, 2, 3, 4]}

    report = Path(third["report"])
    html = report.read_text()
    assert "migration.png" in html and "What changed since run 2" in html
    assert (report.parent / "migration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_warm_start_is_recorded_and_retention_keeps_what_it_needs(prefect_harness, tmp_path):
    config = tmp_path / "segment.toml"
    # keep_runs = 1: each run still finds the previous run's customers to warm-start and compare with.
    config.write_text("[tracking]\nwarm_start = true\n[output]\nkeep_runs = 1\n")
    base = customers(200, 3, seed=4)
    run(tmp_path, base, seed=4, config=config)
    second = run(tmp_path, base, seed=5, config=config)
    warm = second["warm_start"]
    assert warm["from_run"] == 1 and warm["n_components"] == 3 and isinstance(warm["used"], bool)
    stored = query(tmp_path / "segments.duckdb", "SELECT warm_start FROM runs WHERE run_id = 2").warm_start[0]
    assert json.loads(stored)["from_run"] == 1
    if warm["used"]:
        assert "changed_choice" in warm
    # The previous model (full) is outside a diag-only grid: reported, not a crash.
    csv = tmp_path / "diag.csv"
    base.to_csv(csv, index=False)
    third = segment_customers(
        config_path=str(config), input_path=str(csv), input_kind="customers", columns={"customer_id": "id"},
        features=["a", "b"], k_min=2, k_max=4, covariance_types=["diag"], n_init=1, seed=6,
        database=str(tmp_path / "segments.duckdb"), reports_dir=str(tmp_path / "reports"), trigger="test",
    )
    assert third["warm_start"]["used"] is False and "not in this run's model grid" in third["warm_start"]["reason"]
    assert third["previous_run_id"] == 2 and third["moved_share"] is not None
    db = tmp_path / "segments.duckdb"
    assert query(db, "SELECT DISTINCT run_id FROM assignments").run_id.tolist() == [3]
    assert query(db, "SELECT run_id FROM runs WHERE pruned_at IS NOT NULL ORDER BY 1").run_id.tolist() == [1, 2]
    assert query(db, "SELECT count(DISTINCT run_id) AS n FROM segment_history").n[0] == 3
