"""Crashes, open readers, determinism and hostile names: real runs lose nothing and say what happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from conftest import make_customer_table

from flows.pipeline import segment_customers
from flows.run_files import root_for, run_ids_on_disk

pytestmark = pytest.mark.slow

COLUMNS = {"customer_id": "Customer Ref"}
FEATURES = ["spend score", "visit score"]


def run_flow(csv: Path, db: Path, **extra):
    params = dict(
        input_path=str(csv),
        input_kind="customers",
        columns=COLUMNS,
        features=FEATURES,
        k_max=4,
        n_init=2,
        database=str(db),
        reports_dir=str(db.parent / "reports"),
        trigger="test",
    )
    return segment_customers(**{**params, **extra})


def killed_cli_run(
    csv: Path, db: Path, fault: str, tmpdir: Path | None = None
) -> subprocess.CompletedProcess:
    """`segment run` in a subprocess that SIGKILLs itself at the named fault point (its temporary
    files in ``tmpdir`` when given)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "SEGMENT_FAULT": fault, "PREFECT_API_URL": PREFECT_API_URL.value()}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "--input",
        str(csv),
        "--kind",
        "customers",
        "--column",
        "customer_id=Customer Ref",
        "--features",
        ",".join(FEATURES),
        "--k-max",
        "4",
        "--n-init",
        "2",
        "--database",
        str(db),
        "--reports",
        str(db.parent / "reports"),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def runs(db: Path) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT run_id, status, failed_stage FROM runs ORDER BY run_id").fetchall()


@pytest.fixture()
def customers_csv(tmp_path) -> Path:
    table, _ = make_customer_table(n_per_segment=300)
    path = tmp_path / "customers.csv"
    table.to_csv(path, index=False)
    return path


def test_runs_killed_during_fit_and_during_write_leave_no_partial_run(
    prefect_harness, customers_csv, tmp_path, caplog
):
    db = tmp_path / "out" / "segments.duckdb"
    run_flow(customers_csv, db)
    published = db.read_bytes()

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    during_fit = killed_cli_run(customers_csv, db, "fit", scratch)
    assert during_fit.returncode == -signal.SIGKILL, during_fit.stderr[-2000:]
    assert db.read_bytes() == published, "a run killed during the fit changed the results file"
    left_by_2 = list(scratch.glob("segment-matrix-*/X_model.npy"))
    assert len(left_by_2) == 1, "a killed run leaves its model matrix behind ..."
    assert len(list(scratch.glob("segment-matrix-*/texts.utf8"))) == 1, "... and its customers' ids"

    during_write = killed_cli_run(customers_csv, db, "write", scratch)
    assert during_write.returncode == -signal.SIGKILL, during_write.stderr[-2000:]
    assert db.read_bytes() == published, "a run killed during the write changed the results file"
    assert list(db.parent.glob(".segments.duckdb.*.tmp")), "the killed write had a private copy in progress"
    assert runs(db) == [(1, "success", None)]
    # It had written its assignments' file: there, complete, and not shown by the published file.
    assert run_ids_on_disk(root_for(db)) == {1, 3}
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT DISTINCT run_id FROM assignments").fetchall() == [(1,)]

    left_by_3 = list(scratch.glob("segment-matrix-*/X_model.npy"))
    assert len(left_by_3) == 1 and left_by_3 != left_by_2, "... which the next run removes"
    summary = run_flow(customers_csv, db)
    assert summary["run_id"] == 4
    assert not list(scratch.iterdir())
    assert "the model matrix or ids run 3 left behind" in caplog.text
    assert runs(db) == [
        (1, "success", None),
        (2, "killed", "select"),
        (3, "killed", "write"),
        (4, "success", None),
    ]
    # The log names each killed run (it once said "run None was killed during stage None").
    assert "run 2 was killed during stage select; recorded now" in caplog.text
    assert "run 3 was killed during stage write; recorded now" in caplog.text
    assert not list(db.parent.glob(".segments.duckdb.*.tmp")), "stale private copies are removed"
    assert run_ids_on_disk(root_for(db)) == {1, 4}, "the killed run's files are removed"
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT run_id FROM latest_run").fetchall() == [(4,)]
        for table in ("segments", "assignments", "model_candidates"):
            killed_rows = con.execute(f"SELECT count(*) FROM {table} WHERE run_id IN (2, 3)").fetchall()[0][0]
            assert killed_rows == 0, table
        error = con.execute("SELECT error FROM runs WHERE run_id = 3").fetchall()[0][0]
    assert "ended without finishing" in error and "'write'" in error


def test_an_analyst_holding_the_file_open_across_a_whole_run(prefect_harness, customers_csv, tmp_path):
    db = tmp_path / "segments.duckdb"
    run_flow(customers_csv, db, k_min=3, k_max=3)
    # The analyst's session: one read-only connection, querying every 20 ms until told to stop.
    analyst = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import duckdb, json, select, sys
            con = duckdb.connect({str(db)!r}, read_only=True)
            seen = set()
            print("open", flush=True)
            while not select.select([sys.stdin], [], [], 0.02)[0]:
                runs = con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
                segs = con.execute("SELECT run_id, count(*) FROM current_segments GROUP BY run_id").fetchall()
                seen.add((runs, tuple(map(tuple, segs))))
            print(json.dumps(sorted(seen)), flush=True)
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert analyst.stdout.readline().strip() == "open"
        summary = run_flow(customers_csv, db, k_min=2, k_max=2)
        out, err = analyst.communicate("stop\n", timeout=60)
    finally:
        if analyst.poll() is None:
            analyst.kill()
    assert analyst.returncode == 0, err
    seen = json.loads(out.strip().splitlines()[-1])
    # The open session saw one consistent snapshot the whole time: run 1 and its 3 segments.
    assert seen == [[1, [[1, 3]]]]
    assert summary["run_id"] == 2
    with duckdb.connect(str(db), read_only=True) as con:  # a new session sees the new run, whole
        assert con.execute("SELECT run_id, count(*) FROM current_segments GROUP BY run_id").fetchall() == [
            (2, 2)
        ]


def test_same_input_configuration_and_seed_give_identical_assignments(
    prefect_harness, customers_csv, tmp_path
):
    db = tmp_path / "segments.duckdb"
    run_flow(customers_csv, db, seed=11)
    run_flow(customers_csv, db, seed=11)
    with duckdb.connect(str(db), read_only=True) as con:
        a, b = (
            con.execute(
                "SELECT customer_id, segment_id, probability, probabilities, log_density FROM assignments "
                "WHERE run_id = ? ORDER BY customer_id",
                [run_id],
            ).df()
            for run_id in (1, 2)
        )
    pd.testing.assert_frame_equal(a, b)


def test_hostile_column_and_feature_names(prefect_harness, tmp_path):
    evil_id = 'x"; DROP TABLE runs; --'
    table, _ = make_customer_table(n_per_segment=150)
    table.columns = [evil_id, "<script>alert(1)</script>", "spend'); DELETE FROM segments; --"]
    csv = tmp_path / "evil.csv"
    table.to_csv(csv, index=False)
    db = tmp_path / "segments.duckdb"
    features = list(table.columns[1:])
    summary = segment_customers(
        input_path=str(csv),
        input_kind="customers",
        columns={"customer_id": evil_id},
        features=features,
        k_max=3,
        n_init=1,
        database=str(db),
        reports_dir=str(tmp_path / "reports"),
        trigger="test",
    )
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(1,)]
        assert con.execute("SELECT count(*) FROM segments").fetchall()[0][0] == summary["n_components"]
        assert {r[0] for r in con.execute("SELECT DISTINCT feature FROM segment_profiles").fetchall()} == set(
            features
        )
    html = Path(summary["report"]).read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    # A table name from configuration is quoted, never executed.
    source = tmp_path / "source.duckdb"
    with duckdb.connect(str(source)) as con:
        con.execute("CREATE TABLE customers AS SELECT * FROM read_csv(?)", [str(csv)])
    with pytest.raises(Exception, match="customers; DROP TABLE customers"):
        segment_customers(
            input_path=str(source),
            input_kind="customers",
            input_table="customers; DROP TABLE customers",
            columns={"customer_id": evil_id},
            features=features,
            database=str(db),
            trigger="test",
        )
    with duckdb.connect(str(source), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM customers").fetchall()[0][0] == len(table)


def test_a_report_that_fails_after_publication_keeps_the_results(
    prefect_harness, customers_csv, tmp_path, monkeypatch
):
    import reports

    def broken(*args, **kwargs):
        raise OSError("disk full while writing the report")

    monkeypatch.setattr(reports, "render_report", broken)
    db = tmp_path / "segments.duckdb"
    with pytest.raises(OSError, match="disk full"):
        run_flow(customers_csv, db)
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT run_id, status, failed_stage, error, report_path FROM runs").fetchall()
        assignments = con.execute("SELECT count(*) FROM current_assignments").fetchall()[0][0]
    assert rows == [
        (
            1,
            "success",
            "report",
            "results published, report not rendered: disk full while writing the report",
            None,
        )
    ]
    assert assignments == 900
    monkeypatch.undo()
    assert run_flow(customers_csv, db)["run_id"] == 2  # the id was not claimed twice
