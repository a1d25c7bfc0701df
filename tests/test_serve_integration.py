"""Nightly schedule and manual re-segmentation on a real Prefect server.

Starts `prefect server start` on a free loopback port and `segment serve` in subprocesses, then
drives them as an operator would with `segment trigger`, and reads the results database
read-only. Every process started here is stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SEGMENT = [sys.executable, "-m", "flows.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_until(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _start_server(home: Path, **settings: str) -> tuple[subprocess.Popen, dict]:
    """`prefect server start` on a free loopback port with its own home; returns it once it answers."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_URL": url,
        **settings,
    }
    with open(home / "server.log", "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def healthy():
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        _wait_until(healthy, 120, "the Prefect server to answer")
    except BaseException:
        _stop(proc)
        raise
    return proc, env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server on loopback with its own home and database."""
    # Look for schedules to fill every few seconds instead of every minute.
    proc, env = _start_server(
        tmp_path_factory.mktemp("prefect-home"), PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2"
    )
    try:
        yield env
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def served(server, tmp_path_factory):
    """`segment serve` on a generated customer table, nightly every minute (so one fires in the test)."""
    work = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(7)
    n = 400
    labels = rng.integers(0, 3, n)
    centres = np.array([[20.0, 2.0, 60.0], [200.0, 9.0, 700.0], [60.0, 1.0, 15.0]])
    values = centres[labels] * rng.lognormal(0.0, 0.12, size=(n, 3))
    pd.DataFrame(
        {
            "cust": [f"c{i:04d}" for i in range(n)],
            "spend": values[:, 2],
            "visits": values[:, 1],
            "tenure": values[:, 0],
        }
    ).to_csv(work / "customers.csv", index=False)
    args = [
        "serve",
        "--input",
        str(work / "customers.csv"),
        "--kind",
        "customers",
        "--column",
        "customer_id=cust",
        "--features",
        "spend,visits,tenure",
        "--transform",
        "spend=log1p",
        "--k-max",
        "4",
        "--n-init",
        "2",
        "--database",
        str(work / "seg.duckdb"),
        "--reports",
        str(work / "reports"),
        "--cron",
        "* * * * *",
        "--timezone",
        "Europe/London",
    ]
    # The runs' temporary files in the test's folder: a run the test stops mid-way (Ctrl-C on
    # the serving process while the every-minute schedule runs) leaves its model matrix and ids,
    # which only a next run on the same database would remove.
    scratch = work / "tmp"
    scratch.mkdir()
    with open(work / "serve.log", "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen(
            SEGMENT + args,
            env={**server, "TMPDIR": str(scratch)},
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until(lambda: _deployments(server) >= {"nightly", "manual"}, 90, "both deployments")
        yield {"env": server, "work": work, "db": work / "seg.duckdb", "proc": proc}
    finally:
        _stop(proc)


def _client_call(env, code: str):
    """Run a few lines against the server's API in a fresh interpreter; return its JSON output."""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _deployments(env) -> set[str]:
    code = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    print(json.dumps([d.name for d in c.read_deployments()]))
"""
    try:
        return set(_client_call(env, code))
    except (AssertionError, subprocess.TimeoutExpired, ValueError, IndexError):  # not up yet
        return set()


def _nightly(env) -> dict:
    code = """
import json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter
with get_client(sync_client=True) as c:
    d = c.read_deployment_by_name("segment-customers/nightly")
    runs = c.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [d.id]}))
    print(json.dumps({
        "paused": d.paused,
        "schedules": [[s.schedule.cron, s.schedule.timezone, s.active] for s in d.schedules],
        "runs": [[r.expected_start_time.isoformat(), r.auto_scheduled, r.state.type.value] for r in runs],
    }))
"""
    return _client_call(env, code)


def _flow_run_count(env) -> int:
    """Flow runs of the manual deployment; the every-minute schedule keeps adding its own meanwhile."""
    code = """
import json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
with get_client(sync_client=True) as c:
    manual = c.read_deployment_by_name("segment-customers/manual")
    runs = c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[manual.id])))
    print(json.dumps(len(runs)))
"""
    return _client_call(env, code)


def _trigger(served, *args, wait=True):
    cmd = SEGMENT + ["trigger", *args] + (["--wait", "--timeout", "240"] if wait else [])
    return subprocess.run(
        cmd, env=served["env"], cwd=served["work"], capture_output=True, text=True, timeout=300
    )


def _flow_run_id(stdout: str) -> str:
    first = stdout.splitlines()[0]
    assert first.startswith("Flow run "), stdout
    return first.split()[2]


def _runs(db: Path) -> pd.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.sql("SELECT * FROM runs ORDER BY run_id").df()


def _assignment_count(db: Path, run_id: int) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT count(*) FROM assignments WHERE run_id = ?", [run_id]).fetchall()[0][0]


def test_manual_trigger_with_parameters(served):
    out = _trigger(served, "--k-max", "2", "--covariance-types", "diag", "--fresh")
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = _flow_run_id(out.stdout)
    assert f"/runs/flow-run/{run_id}" in out.stdout
    assert "state: Completed" in out.stdout
    runs = _runs(served["db"])
    row = runs[runs.flow_run_id == run_id].iloc[0]
    assert row.trigger == "manual" and row.status == "success"
    params = json.loads(row.parameters)
    assert params["model"]["k_max"] == 2 and params["model"]["covariance_types"] == ["diag"]
    # k_max = 2, extended (up to 4) while the best model had the most segments tried.
    assert row.covariance_type == "diag" and row.n_components < row.k_max_tried <= 4
    assert row.decision in ("fresh", "first_run")  # --fresh: a manual re-segmentation chooses afresh
    assert _assignment_count(served["db"], int(row.run_id)) == 400


def test_bad_parameters_are_refused_before_a_run_exists(served):
    before = _flow_run_count(served["env"])
    out = _trigger(served, "--k-min", "5", "--k-max", "2", wait=False)
    assert out.returncode == 2
    assert "k_max (2) is smaller than k_min (5)" in out.stderr and "Traceback" not in out.stderr
    out = _trigger(served, "--param", 'covariance_types=["banana"]', wait=False)
    assert out.returncode == 2 and "covariance_types" in out.stderr
    assert _flow_run_count(served["env"]) == before


def test_concurrent_triggers_run_one_after_the_other(served):
    cmd = SEGMENT + ["trigger", "--wait", "--timeout", "240"]
    procs = [
        subprocess.Popen(
            cmd + extra,
            env=served["env"],
            cwd=served["work"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in (["--k-max", "3"], ["--deployment", "nightly", "--k-max", "2"])
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stdout + stderr
    ids = [_flow_run_id(stdout) for stdout, _ in outputs]
    runs = _runs(served["db"]).set_index("flow_run_id")
    a, b = sorted((runs.loc[i] for i in ids), key=lambda r: r.started_at)
    assert a.status == b.status == "success"
    assert a.finished_at <= b.started_at, "the two runs overlapped"
    assert (
        _assignment_count(served["db"], int(a.run_id))
        == _assignment_count(served["db"], int(b.run_id))
        == 400
    )


def test_failed_run_is_visible_and_leaves_results_intact(served):
    db = served["db"]
    # Scheduled runs keep landing meanwhile, so compare the rows of one earlier run, not the view.
    query = "SELECT * FROM segments WHERE run_id = (SELECT run_id FROM latest_run) ORDER BY segment_id"
    with duckdb.connect(str(db), read_only=True) as con:
        earlier = con.execute("SELECT run_id FROM latest_run").fetchall()[0][0]
        before = con.sql(query.replace("(SELECT run_id FROM latest_run)", str(earlier))).df()
    out = _trigger(served, "--input", str(served["work"] / "missing.csv"))
    assert out.returncode == 1
    assert "ended Failed" in out.stderr and "missing.csv" in out.stderr
    runs = _runs(db)
    failed = runs[runs.flow_run_id == _flow_run_id(out.stdout)].iloc[0]
    assert failed.status == "failed" and failed.failed_stage == "load" and "missing.csv" in failed.error
    assert _assignment_count(db, int(failed.run_id)) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        after = con.sql(query.replace("(SELECT run_id FROM latest_run)", str(earlier))).df()
        latest_status = con.execute(
            "SELECT status FROM runs WHERE run_id = (SELECT run_id FROM latest_run)"
        ).fetchall()[0][0]
    pd.testing.assert_frame_equal(before, after)
    assert latest_status == "success"  # the views never point at the failed run
    # The service log says why in one line; the traceback is for the UI (or `serve --debug`).
    # Prefect logs the exception (with its traceback, unless hidden) before "Finished in state Failed".
    log_file = served["work"] / "serve.log"
    _wait_until(
        lambda: (
            "Finished in state Failed('Flow run encountered an exception: InputError" in log_file.read_text()
        ),
        30,
        "the failed run's last lines in the serve log",
    )
    log = log_file.read_text()
    assert (
        f"run {failed.run_id} failed in stage load: {served['work'] / 'missing.csv'}: input file not found"
        in log
    )
    # The error's own traceback would name the loader's frame and end in the exception's class path
    # (the log also holds every scheduled run, so any unrelated Prefect traceback is not ours to judge).
    assert 'flows/load.py", line' not in log and "flows.load.InputError" not in log


def test_nightly_schedule_fires_and_survives_a_restart(served):
    info = _nightly(served["env"])
    assert info["schedules"] == [["* * * * *", "Europe/London", True]] and info["paused"] is False
    scheduled = [r for r in info["runs"] if r[1]]
    assert scheduled, "the scheduler created no runs for the nightly deployment"
    for start, _, _ in scheduled:
        assert start.endswith(":00+00:00") or start.endswith(":00Z"), start  # on the cron's minute marks
    # A scheduled run executes and is recorded as such.
    _wait_until(
        lambda: (_runs(served["db"]).trigger == "schedule").any(), 150, "a run started by the schedule"
    )
    row = _runs(served["db"]).query("trigger == 'schedule'").iloc[0]
    assert row.status in {"success", "running"}

    # Stop the serving process as an operator would (Ctrl-C): the schedule must stay active.
    _stop(served["proc"])
    info = _nightly(served["env"])
    assert info["paused"] is False and info["schedules"][0][2] is True


def test_a_prefect_server_that_stops_mid_run_does_not_fail_the_fit(tmp_path):
    """The server is killed while the model grid is being fitted: the run goes on, publishes its
    results and report, and says in one line that the server is unreachable."""
    home = tmp_path / "home"
    home.mkdir()
    server, env = _start_server(home)
    rng = np.random.default_rng(3)
    pd.DataFrame(
        {"cust": [f"c{i}" for i in range(300)], "a": rng.normal(0, 1, 300), "b": rng.normal(0, 1, 300)}
    ).to_csv(tmp_path / "c.csv", index=False)
    db = tmp_path / "out" / "seg.duckdb"
    log_path = tmp_path / "run.log"
    run = None
    try:
        with open(log_path, "w") as log:
            run = subprocess.Popen(
                SEGMENT
                + [
                    "run",
                    "--input",
                    str(tmp_path / "c.csv"),
                    "--kind",
                    "customers",
                    "--column",
                    "customer_id=cust",
                    "--features",
                    "a,b",
                    "--k-max",
                    "3",
                    "--n-init",
                    "1",
                    "--database",
                    str(db),
                    "--reports",
                    str(tmp_path / "out" / "reports"),
                ],
                env={
                    **env,
                    "SEGMENT_FAULT": "fit",
                    "SEGMENT_FAULT_KILL": str(server.pid),
                    # Fail fast instead of retrying the dead server: the test is about what follows.
                    "PREFECT_CLIENT_MAX_RETRIES": "0",
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

            def published():
                if not db.exists():
                    return False
                try:
                    with duckdb.connect(str(db), read_only=True) as con:
                        return con.execute("SELECT status, report_path FROM runs").fetchall()
                except duckdb.Error:
                    return False

            rows = _wait_until(published, 240, "the run to publish its results")
            assert server.poll() is not None, "the server was not stopped mid-run"
            assert rows[0][0] == "success"
            _wait_until(lambda: Path(rows[0][1]).exists(), 60, "the report")
    finally:
        if run is not None:
            _stop(run)
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    text = log_path.read_text()
    warnings = [line for line in text.splitlines() if "the Prefect server is unreachable" in line]
    assert len(warnings) == 1, text[-3000:]
    assert "the run goes on and publishes its results, without UI artifacts" in warnings[0]
    assert "model selection" in text and "run 1 published to" in text
