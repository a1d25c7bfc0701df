"""The DuckDB results store: schema, whole-run publication, views, failed and killed runs, open readers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import pandas as pd
import pytest

from flows.duck import quote_identifier, quote_qualified
from flows.run_files import run_ids_on_disk
from flows.runlock import database_lock
from flows.store import (
    TABLES,
    VIEWS,
    RunRecord,
    fail_run,
    feature_scaler_table,
    finish_run,
    start_run,
)


class Journal:
    """Stands in for the run lock's journal where the lock itself is not under test."""

    def __init__(self, previous=None):
        self.previous = previous
        self.content = {}

    def note(self, **fields):
        self.content.update(fields)


def start(db, trigger="test", journal=None):
    return start_run(
        db,
        journal or Journal(),
        trigger=trigger,
        input_name="in.csv",
        input_kind="customers",
        parameters={"model": {"k_max": 2}},
        seed=0,
        code_version="test",
    )


def record(n_customers=3, k=2, assignments=None) -> RunRecord:
    ids = [f"c{i}" for i in range(n_customers)]
    probs = np.full((n_customers, k), 1.0 / k)
    frame = (
        assignments
        if assignments is not None
        else pd.DataFrame(
            {
                "customer_id": ids,
                "segment_id": np.ones(n_customers, dtype=int),
                "probability": probs[:, 0],
                "log_density": np.linspace(-3, -1, n_customers),
                **{f"p_{j + 1}": probs[:, j] for j in range(k)},
            }
        )
    )
    return RunRecord(
        as_of=None,
        rows_loaded=n_customers + 1,
        rows_rejected=1,
        rows_excluded={"x": 0},
        customers=n_customers,
        features=["f"],
        n_components=k,
        covariance_type="diag",
        criterion="bic",
        bic=10.0,
        aic=9.0,
        icl=float("nan"),
        log_likelihood=-4.0,
        report_path="r/index.html",
        candidates=[
            {
                "n_components": j,
                "covariance_type": "diag",
                "bic": 10.0 + j,
                "aic": 9.0,
                "icl": np.nan,
                "status": "ok",
                "reason": "",
                "selected": j == k,
                "converged": True,
                "n_iter": 3,
                "n_parameters": 2 * j,
                "log_likelihood": -4.0,
                "mean_log_likelihood": -1.0,
                "seconds": 0.1,
            }
            for j in (1, k)
        ],
        segments=pd.DataFrame(
            {
                "segment_id": [1, 2],
                "weight": [0.5, 0.5],
                "customer_count": [n_customers, 0],
                "mean_probability": [0.5, np.nan],
                "model_mean": [[0.0], [1.0]],
                "model_covariance": [[1.0], [2.0]],
            }
        ),
        segment_features=pd.DataFrame(
            {
                "segment_id": [1, 2],
                "feature_index": [1, 1],
                "feature": ["f", "f"],
                "unit": ["u", "u"],
                "mean": [1.0, 2.0],
                "std": [0.1, 0.2],
                "centre": [1.0, 2.0],
                "spread_low": [0.5, 1.5],
                "spread_high": [1.5, 2.5],
            }
        ),
        feature_scalers=feature_scaler_table(["f"], ["u"], ["log1p"], np.array([1.0]), np.array([2.0])),
        assignments=frame,
        rejects=pd.DataFrame(
            {
                "source": ["in.csv"],
                "row_number": [4],
                "column_name": ["f"],
                "rule": ["finite"],
                "value": pd.Series([None], dtype=object),
            }
        ),
    )


def test_quote_identifier_handles_any_name():
    assert quote_identifier('we"ird name') == '"we""ird name"'
    assert quote_qualified("sales.lines") == '"sales"."lines"'
    con = duckdb.connect()
    name = 'Robert"); DROP TABLE x; --'
    con.execute(f"CREATE TABLE t ({quote_identifier(name)} INTEGER)")
    assert [r[0] for r in con.execute("DESCRIBE t").fetchall()] == [name]
    with pytest.raises(ValueError):
        quote_identifier("")


def test_a_run_appears_in_the_views_only_when_it_succeeded(tmp_path):
    db = tmp_path / "out" / "segments.duckdb"
    first = start(db)
    assert first.run_id == 1
    assert not db.exists(), "nothing is published before the run ends"
    finish_run(db, first, record())
    with duckdb.connect(str(db), read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert set(TABLES) | set(VIEWS) <= tables
        run = con.execute(
            "SELECT status, trigger, n_components, icl, rows_excluded, finished_at IS NOT NULL FROM runs"
        ).fetchone()
        assert run[:4] == ("success", "test", 2, None) and json.loads(run[4]) == {"x": 0} and run[5]
        assert con.execute("SELECT count(*), sum(customer_count) FROM current_segments").fetchone() == (2, 3)
        assert con.execute(
            "SELECT probabilities FROM current_assignments WHERE customer_id = 'c0'"
        ).fetchone()[0] == [0.5, 0.5]
        assert con.execute("SELECT row_number, value FROM rejected_rows").fetchall() == [(4, None)]
        assert con.execute("SELECT count(*) FROM model_candidates WHERE selected").fetchone()[0] == 1
        assert con.execute("SELECT feature, mean FROM segment_profiles ORDER BY segment_id").fetchall() == [
            ("f", 1.0),
            ("f", 2.0),
        ]
        assert con.execute("SELECT transform, scaler_scale FROM feature_scalers").fetchall() == [
            ("log1p", 2.0)
        ]
    # A second, failed run does not replace the current one and keeps no rows but its rejects.
    second = start(db)
    assert second.run_id == 2
    fail_run(db, second, "validate", "too many rejects", rejects=record().rejects, rows_loaded=4)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT run_id FROM latest_run").fetchall() == [(1,)]
        assert con.execute(
            "SELECT status, failed_stage, error, rows_rejected FROM runs WHERE run_id = 2"
        ).fetchone() == ("failed", "validate", "too many rejects", 1)
        assert con.execute("SELECT count(*) FROM assignments WHERE run_id = 2").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM rejected_rows WHERE run_id = 2").fetchone()[0] == 1


def test_retention_keeps_the_newest_runs_whole_and_every_summary(tmp_path):
    db = tmp_path / "s.duckdb"
    finish_run(db, start(db), record(), keep_runs=2)  # 1
    fail_run(db, start(db), "validate", "too many rejects", rejects=record().rejects, rows_loaded=4)  # 2
    for _ in range(2):  # 3, 4: two successful runs kept, so 1 and 2 lose their details
        finish_run(db, start(db), record(), keep_runs=2)

    def state():
        with duckdb.connect(str(db), read_only=True) as con:
            return {
                "assignments": con.execute("SELECT DISTINCT run_id FROM assignments ORDER BY 1").fetchall(),
                "rejects": con.execute("SELECT DISTINCT run_id FROM rejected_rows ORDER BY 1").fetchall(),
                "pruned": con.execute(
                    "SELECT run_id FROM runs WHERE pruned_at IS NOT NULL ORDER BY 1"
                ).fetchall(),
                "history": con.execute("SELECT DISTINCT run_id FROM segment_history ORDER BY 1").fetchall(),
                "candidates": con.execute("SELECT count(DISTINCT run_id) FROM model_candidates").fetchone()[
                    0
                ],
            }

    assert state() == {
        "assignments": [(3,), (4,)],
        "rejects": [(3,), (4,)],
        "pruned": [(1,), (2,)],
        "history": [(1,), (3,), (4,)],
        "candidates": 3,
    }
    finish_run(db, start(db), record(), keep_runs=2)  # 5
    after = state()
    assert after["assignments"] == after["rejects"] == [(4,), (5,)]
    assert after["pruned"] == [(1,), (2,), (3,)] and after["history"] == [(1,), (3,), (4,), (5,)]
    # keep_runs = 0 (the default) keeps everything from then on.
    finish_run(db, start(db), record())  # 6
    assert state()["assignments"] == [(4,), (5,), (6,)]


def test_a_run_that_fails_after_its_publication_stays_published(tmp_path):
    db = tmp_path / "s.duckdb"
    run = start(db)
    finish_run(db, run, record())
    fail_run(db, run, "write", "syncing the folder failed")  # no duplicate key, no second row
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT run_id, status, error FROM runs").fetchall() == [(1, "success", None)]


def test_a_write_that_fails_midway_leaves_the_published_file_untouched(tmp_path):
    db = tmp_path / "s.duckdb"
    finish_run(db, start(db), record())
    before = db.read_bytes()
    broken = record()
    # A NULL customer id stops the assignments' file after every other table is inserted.
    broken.assignments = broken.assignments.assign(customer_id=pd.Series([None, "a", "b"], dtype=object))
    with pytest.raises(ValueError, match="assignments of run 2: 1 rows leave one of customer_id"):
        finish_run(db, start(db), broken)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.duckdb", "s.runs"], "the private copy is removed"
    assert run_ids_on_disk(tmp_path / "s.runs") == {1}


def test_a_killed_predecessor_is_recorded_once_and_its_id_not_reused(tmp_path):
    db = tmp_path / "s.duckdb"
    finish_run(db, start(db), record())
    # Run 2 claimed its id, reached "select" and was killed: its journal is what the lock file kept.
    journal = Journal()
    killed = start(db, journal=journal)
    journal.note(stage="select", pid=4242)
    left_behind = dict(journal.content)
    third = start(db, journal=Journal(previous=left_behind))
    assert (killed.run_id, third.run_id) == (2, 3)
    finish_run(db, third, record(), killed=left_behind)
    finish_run(db, start(db, journal=Journal(previous=left_behind)), record(), killed=left_behind)
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT run_id, status, failed_stage, error FROM runs ORDER BY run_id").fetchall()
    assert [r[:3] for r in rows] == [
        (1, "success", None),
        (2, "killed", "select"),
        (3, "success", None),
        (4, "success", None),
    ]
    assert "pid 4242" in rows[1][3] and "found by run 3" in rows[1][3]


def test_a_reader_holding_the_file_neither_blocks_the_write_nor_sees_it_half_done(tmp_path):
    db = tmp_path / "s.duckdb"
    finish_run(db, start(db), record())
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import duckdb, sys
            con = duckdb.connect({str(db)!r}, read_only=True)
            count = lambda: con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
            print(count(), flush=True)
            sys.stdin.readline()
            print(count(), flush=True)   # still the snapshot it opened
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "1"
        with database_lock(db, 5) as journal:
            finish_run(db, start(db, journal=journal), record())
        out, _ = reader.communicate("go\n", timeout=30)
        assert out.strip() == "1"
    finally:
        if reader.poll() is None:
            reader.kill()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs WHERE status = 'success'").fetchall()[0][0] == 2
