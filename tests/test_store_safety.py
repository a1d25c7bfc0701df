"""Nothing lost, nothing silently wrong, as a user would meet it: a results path that is a symbolic
link, an analyst who opened the results read-write, a write-ahead log that does not belong, a path
that is not a results file, a run killed while drawing its report, a disk that fills during the
copy, and an error message that says where the bad value came from."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
from conftest import make_customer_table

from flows.cli import main
from flows.pipeline import segment_customers
from flows.runlock import lock_path
from flows.store import StoreBusyError, publishing

pytestmark = pytest.mark.slow

COLUMNS = {"customer_id": "Customer Ref"}
FEATURES = ["spend score", "visit score"]


@pytest.fixture()
def customers_csv(tmp_path) -> Path:
    table, _ = make_customer_table(n_per_segment=150)
    path = tmp_path / "customers.csv"
    table.to_csv(path, index=False)
    return path


def run_flow(csv: Path, db: Path | str, **extra) -> dict:
    params = dict(
        input_path=str(csv),
        input_kind="customers",
        columns=COLUMNS,
        features=FEATURES,
        k_max=3,
        n_init=1,
        covariance_types=["full"],
        database=str(db),
        reports_dir=str(Path(db).parent / "reports"),
        trigger="test",
    )
    return segment_customers(**{**params, **extra})


def runs(db: Path) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT run_id, status, failed_stage FROM runs ORDER BY run_id").fetchall()


def cli_run(
    csv: Path, db: Path, env: dict | None = None, preexec=None, extra: tuple = ()
) -> subprocess.CompletedProcess:
    """`segment run` in a subprocess against the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL

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
        "3",
        "--n-init",
        "1",
        "--covariance-types",
        "full",
        "--database",
        str(db),
        "--reports",
        str(db.parent / "reports"),
        *extra,
    ]
    return subprocess.run(
        cmd,
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec,
    )


def analyst_writing(db: Path) -> subprocess.Popen:
    """An analyst's session opened read-write (no read_only=True) that has written a table of its own."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import duckdb, sys
            con = duckdb.connect({str(db)!r})
            con.execute("CREATE TABLE my_notes AS SELECT 42 AS answer")
            print("open", flush=True)
            sys.stdin.readline()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_a_symlinked_database_is_published_through_the_link(prefect_harness, customers_csv, tmp_path):
    target = tmp_path / "store" / "segments.duckdb"
    target.parent.mkdir()
    link = tmp_path / "current.duckdb"
    link.symlink_to(target)
    assert lock_path(link) == lock_path(target)  # the same lock, whichever path a run is given
    first = run_flow(customers_csv, link)
    second = run_flow(customers_csv, target)
    third = run_flow(customers_csv, link)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert [first["run_id"], second["run_id"], third["run_id"]] == [1, 2, 3]
    assert runs(target) == [(1, "success", None), (2, "success", None), (3, "success", None)]
    assert not list(tmp_path.glob(".current.duckdb.*")) and not list(
        target.parent.glob(".segments.duckdb.*.tmp")
    )


def test_an_analyst_session_opened_for_writing_stops_the_run_with_what_to_do(
    prefect_harness, customers_csv, tmp_path
):
    db = tmp_path / "segments.duckdb"
    run_flow(customers_csv, db)
    published = db.read_bytes()
    config = tmp_path / "wait.toml"
    config.write_text("[output]\nwriter_wait_minutes = 0.05\n")
    analyst = analyst_writing(db)
    try:
        result = cli_run(customers_csv, db, extra=("--config", str(config)))
        assert result.returncode == 1, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"segment: error: {db.resolve()}: open for writing by pid {analyst.pid} (")
        assert "open it read-only (segment sql" in last and "waited 0.05 min" in last
        assert "Traceback" not in result.stderr
        assert db.read_bytes() == published  # nothing was published under the session
    finally:
        analyst.kill()  # the session dies without a checkpoint: its log stays beside the file
        analyst.wait()
    assert Path(f"{db}.wal").exists()
    # The next run replays the killed session's log (it belongs to this file) and goes on.
    summary = run_flow(customers_csv, db)
    assert summary["run_id"] == 2 and not Path(f"{db}.wal").exists()
    assert runs(db)[-1] == (2, "success", None)


def test_a_session_that_opens_for_writing_while_a_run_publishes_is_waited_for(tmp_path):
    """The check before the move: no file is replaced under a live writer, and the copy goes."""
    db = tmp_path / "segments.duckdb"
    with publishing(db) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    published = db.read_bytes()
    analyst = analyst_writing(db)
    try:
        with (
            pytest.raises(StoreBusyError, match=rf"open for writing by pid {analyst.pid} .*read-only"),
            publishing(db, writer_wait_seconds=0.5) as con,
        ):
            con.execute("INSERT INTO t VALUES (2)")
    finally:
        analyst.kill()
        analyst.wait()
    assert db.read_bytes() == published and not list(tmp_path.glob(".segments.duckdb.*.tmp"))


def test_a_write_ahead_log_that_does_not_belong_is_set_aside(prefect_harness, customers_csv, tmp_path):
    """The issue's sequence: a session writes, the file is replaced under it (as runs did before
    they waited for writers), the session dies. Every reader then failed until someone deleted the
    log by hand; now the next run sets it aside and readers open the file again."""
    db = tmp_path / "segments.duckdb"
    run_flow(customers_csv, db)
    analyst = analyst_writing(db)
    copy = tmp_path / "replacement.duckdb"
    shutil.copyfile(db, copy)
    with duckdb.connect(str(copy)) as con:
        con.execute("CREATE TABLE newer AS SELECT 1 AS x")
        con.execute("CHECKPOINT")
    os.replace(copy, db)
    analyst.kill()
    analyst.wait()
    with pytest.raises(duckdb.IOException, match="WAL checkpoint iteration does not match"):
        duckdb.connect(str(db), read_only=True)
    summary = run_flow(customers_csv, db)
    assert summary["run_id"] == 2
    with duckdb.connect(str(db), read_only=True) as con:  # readers open it again
        assert con.execute("SELECT count(*) FROM runs WHERE status = 'success'").fetchall() == [(2,)]
    assert not Path(f"{db}.wal").exists()
    assert len(list(tmp_path.glob("segments.duckdb.wal.set-aside-*"))) == 1


@pytest.mark.parametrize("kind", ["csv", "sqlite", "input"])
def test_a_database_path_that_is_not_a_results_file(customers_csv, tmp_path, capsys, kind):
    if kind == "csv":
        db = tmp_path / "data.csv"
        db.write_text("a,b\n1,2\n")
    elif kind == "sqlite":
        db = tmp_path / "app.db"
        with sqlite3.connect(db) as lite:
            lite.execute("CREATE TABLE t (x)")
    else:
        db = customers_csv
    before = db.read_bytes()
    code = main(
        [
            "run",
            "--input",
            str(customers_csv),
            "--kind",
            "customers",
            "--column",
            "customer_id=Customer Ref",
            "--features",
            ",".join(FEATURES),
            "--database",
            str(db),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    expected = {
        "csv": r"data\.csv: not a DuckDB file \(it looks like text \(CSV\?\)\); "
        r"output\.database \(--database\) must name",
        "sqlite": r"app\.db: not a DuckDB file \(it looks like an SQLite database\)",
        "input": r"output\.database is the input file \(.*customers\.csv\): "
        r"the results go to a file of their own",
    }[kind]
    assert err.startswith("segment: error: ") and __import__("re").search(expected, err), err
    assert db.read_bytes() == before


def test_a_run_killed_while_drawing_its_report_is_marked_by_the_next(
    prefect_harness, customers_csv, tmp_path
):
    db = tmp_path / "segments.duckdb"
    killed = cli_run(customers_csv, db, env={"SEGMENT_FAULT": "report"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert runs(db) == [(1, "success", None)]  # published before the report
    run_flow(customers_csv, db)
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(
            "SELECT status, failed_stage, report_path, error FROM runs WHERE run_id = 1"
        ).fetchone()
    assert row[:3] == ("success", "report", None)
    assert row[3].startswith("results published, report not rendered: the process (pid ")
    assert "ended while drawing it (found by run 2)" in row[3]


def test_a_disk_that_fills_during_the_copy(prefect_harness, customers_csv, tmp_path):
    """A file-size limit makes the copy fail as a full disk does: the partial copy goes at once, and
    the next run records the run as failed with the disk's error (not as killed)."""
    db = tmp_path / "segments.duckdb"
    run_flow(customers_csv, db)
    published = db.read_bytes()
    limit = len(published) // 2

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = cli_run(customers_csv, db, preexec=small_disk)
    assert full.returncode == 1, full.stderr[-3000:]
    assert "File too large" in full.stderr.strip().splitlines()[-1]
    assert db.read_bytes() == published
    assert not list(tmp_path.glob(".segments.duckdb.*.tmp")), "the partial copy was left behind"
    summary = run_flow(customers_csv, db)
    assert summary["run_id"] == 3
    with duckdb.connect(str(db), read_only=True) as con:
        status, stage, error = con.execute(
            "SELECT status, failed_stage, error FROM runs WHERE run_id = 2"
        ).fetchone()
    assert (
        (status, stage) == ("failed", "write") and "File too large" in error and "recorded by run 3" in error
    )
