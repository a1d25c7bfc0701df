"""The flow with ``compute.cluster``: the real Prefect flow, a real dask LocalCluster (started by
the run, or running beforehand and reached at its tcp:// address) and a real DuckDB file."""

from __future__ import annotations

import math
import os
from pathlib import Path

import dask
import distributed
import duckdb
import numpy as np
import pytest
from conftest import make_customer_table

from flows.pipeline import segment_customers
from gmm_cluster import rows_per_partition

pytestmark = pytest.mark.slow

#: Model selection on a sample (max_samples) below the customers, so that the chosen model is
#: refitted on all of them: the pass that runs on the cluster.
GRID = dict(k_max=4, n_init=1, max_samples=500)


@pytest.fixture(scope="module")
def customers(tmp_path_factory) -> Path:
    table, _ = make_customer_table(n_per_segment=400, seed=11)
    path = tmp_path_factory.mktemp("cluster-input") / "customers.parquet"
    with duckdb.connect() as con:
        con.register("t", table)
        con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    return path


@pytest.fixture
def running_cluster():
    """A cluster running before the runs, as a team's scheduler would be (two worker processes).

    One per test: the tests kill a worker, and the worker's nanny does not always start another
    (seen once in CI: a later wait for two workers then waited for ever)."""
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield cluster, client


def run(customers: Path, db: Path, **given):
    return segment_customers(
        input_path=str(customers),
        input_kind="customers",
        columns={"customer_id": "Customer Ref"},
        features=["spend score", "visit score"],
        database=str(db),
        reports_dir=str(db.parent / "reports"),
        trigger="test",
        **GRID,
        **given,
    )


def published(db: Path, run_id: int):
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.execute(
            "SELECT status, n_components, covariance_type, bic, decision FROM runs WHERE run_id = ?", [run_id]
        ).fetchone()
        candidates = con.execute(
            "SELECT n_components, covariance_type, origin, bic FROM model_candidates WHERE run_id = ? "
            "ORDER BY n_components, covariance_type, origin",
            [run_id],
        ).fetchall()
        assignments = con.execute(
            "SELECT customer_id, segment_id, probability FROM assignments WHERE run_id = ? "
            "ORDER BY customer_id",
            [run_id],
        ).fetchall()
        profiles = con.execute(
            "SELECT segment_id, feature, mean, std FROM segment_features WHERE run_id = ? "
            "ORDER BY segment_id, feature_index",
            [run_id],
        ).fetchall()
    return runs, candidates, assignments, profiles


def assert_same_result(mine, theirs) -> None:
    (runs, candidates, assignments, profiles), (runs_, candidates_, assignments_, profiles_) = mine, theirs
    # The profiles' totals are summed per partition on a cluster: equal to rounding.
    assert [p[:2] for p in profiles] == [p[:2] for p in profiles_]
    np.testing.assert_allclose(
        np.array([p[2:] for p in profiles], dtype=float),
        np.array([p[2:] for p in profiles_], dtype=float),
        rtol=1e-9,
    )
    assert runs[:3] == runs_[:3] and runs[4] == runs_[4]
    assert runs[3] == pytest.approx(runs_[3], rel=1e-10)
    assert [c[:3] for c in candidates] == [c[:3] for c in candidates_]
    np.testing.assert_allclose(
        np.array([c[3] for c in candidates], dtype=float),
        np.array([c[3] for c in candidates_], dtype=float),
        rtol=1e-10,
    )
    assert [a[:2] for a in assignments] == [a[:2] for a in assignments_]
    np.testing.assert_allclose([a[2] for a in assignments], [a[2] for a in assignments_], atol=1e-8)


def test_runs_on_a_local_cluster_give_the_single_machine_results(prefect_harness, customers, tmp_path):
    """A first run and a second one (which refits the first run's model) on a cluster the run
    starts itself: the same candidates, criteria, choice and assignments as in one process."""
    alone, clustered = tmp_path / "alone" / "s.duckdb", tmp_path / "cluster" / "s.duckdb"
    for seed in (0, 4):
        one = run(customers, alone, seed=seed)
        other = run(customers, clustered, seed=seed, cluster="local:2")
        assert one["run_id"] == other["run_id"]
        assert "distribute" in other["stage_seconds"] and "distribute" not in one["stage_seconds"]
        assert_same_result(published(clustered, other["run_id"]), published(alone, one["run_id"]))
    assert other["decision"] in ("kept", "refreshed", "switched")  # the second run chose with a previous
    with duckdb.connect(str(clustered), read_only=True) as con:
        recorded = con.execute(
            "SELECT parameters->>'$.compute.cluster' FROM runs WHERE run_id = 2"
        ).fetchone()
    assert recorded == ("local:2",)
    # The workers wrote the assignments: a part per partition here (the client writes one part
    # per 200,000 customers, so one), and nothing is left in the staging folder.
    customers_ = other["customers"]
    partitions = math.ceil(customers_ / rows_per_partition(customers_, 2, 1_000_000))
    assert partitions == 4
    for folder, parts in ((clustered, partitions), (alone, 1)):
        root = folder.with_name("s.runs")
        assert len(list((root / "assignments" / "run_id=2").glob("*.parquet"))) == parts
        assert not (root / ".staging").exists()


def test_the_workers_assign_every_customer_as_the_run_s_process_would(running_cluster, monkeypatch):
    """The E-step over all customers runs on the workers holding them: the same component for
    every customer, the profiles' totals equal to rounding; the run's process computes none."""
    import flows.cluster_assignments
    import flows.segments
    from flows.features import build_feature_matrix
    from flows.stages import fit_segments
    from gmm_cluster import ClusterData
    from gmm_engine import GaussianMixture

    _, client = running_cluster
    client.wait_for_workers(2, timeout=60)
    table, _ = make_customer_table(n_per_segment=300, seed=5)
    table = table.rename(columns={"Customer Ref": "customer_id"})
    features = build_feature_matrix(table, ["spend score", "visit score"], ["", ""], ["none", "none"])
    model = GaussianMixture(3, covariance_type="diag", random_state=0).fit(features.X_model)
    alone = fit_segments(model, features)

    def not_here(*args, **kwargs):
        raise AssertionError("the run's process computed the memberships")

    for module in (flows.segments, flows.cluster_assignments):
        monkeypatch.setattr(module, "assign_rows", not_here)
    data = ClusterData.scatter(client, features.X_model, 250)
    clustered = fit_segments(model, features, data)
    assert data.n_partitions == 4
    np.testing.assert_array_equal(clustered.labels, alone.labels)
    for name in ("mass", "first", "second"):
        np.testing.assert_allclose(getattr(clustered.totals, name), getattr(alone.totals, name), rtol=1e-12)


def assert_no_trace_of_run_2(db: Path) -> None:
    """Run 1 stays published, run 2 failed in its write, and none of its assignments shows."""
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.execute("SELECT run_id, status, failed_stage FROM runs ORDER BY run_id").fetchall()
        current = con.execute("SELECT DISTINCT run_id FROM current_assignments").fetchall()
        rows = con.execute("SELECT count(*) FROM assignments WHERE run_id = 2").fetchone()
    assert runs == [(1, "success", None), (2, "failed", "write")]
    assert current == [(1,)] and rows == (0,)
    root = db.with_name("s.runs")
    assert not (root / "assignments" / "run_id=2").exists() and not (root / ".staging").exists()


def test_a_worker_killed_before_the_workers_write_is_survived_with_the_same_result(
    prefect_harness, customers, running_cluster, tmp_path, monkeypatch
):
    """The workers compute and write the assignments; one dies as they start. The customers it
    held are sent again (or read from a copy dask made), the parts written, and the run
    publishes what it would have published undisturbed."""
    cluster, client = running_cluster
    client.wait_for_workers(2, timeout=60)
    db, alone = tmp_path / "cluster" / "s.duckdb", tmp_path / "alone" / "s.duckdb"
    run(customers, db, cluster=cluster.scheduler_address)
    run(customers, alone)

    victim = next(iter(client.run(os.getpid).values()))
    monkeypatch.setenv("SEGMENT_FAULT", "cluster-write")
    monkeypatch.setenv("SEGMENT_FAULT_KILL", str(victim))
    second = run(customers, db, cluster=cluster.scheduler_address, seed=9)
    assert victim not in client.run(os.getpid).values()
    undisturbed = run(customers, alone, seed=9)
    assert_same_result(published(db, second["run_id"]), published(alone, undisturbed["run_id"]))


def _fail_the_last_part_when(marker: str) -> None:
    """On a worker: make the write of part 3 fail (as a full disk would) once ``marker`` exists."""
    import flows.cluster_assignments as written

    original = written._write_partition

    def failing(X, label, part, *rest):
        if part == 3 and os.path.exists(marker):
            raise OSError(f"partition {label}: no space left on device (test)")
        return original(X, label, part, *rest)

    written._write_partition = failing


def test_a_write_the_workers_cannot_finish_publishes_nothing_of_the_run(
    prefect_harness, customers, running_cluster, tmp_path
):
    """One worker's write fails after the others wrote their parts: the run fails in its write in
    one line; the parts written never show, and the previous run stays published."""
    cluster, client = running_cluster
    client.wait_for_workers(2, timeout=60)
    marker = tmp_path / "fail-part-3"
    client.run(_fail_the_last_part_when, str(marker))  # before any run: dask keeps the task's function
    db = tmp_path / "s.duckdb"
    run(customers, db, cluster=cluster.scheduler_address)
    marker.touch()
    with pytest.raises(OSError, match=r"^partition block 4 of 4: no space left on device \(test\)$"):
        run(customers, db, cluster=cluster.scheduler_address, seed=9)
    assert_no_trace_of_run_2(db)


def _blind_to_the_client_s_files() -> None:
    """On a worker: see none of the client's files, as a worker on another machine would."""
    import flows.cluster as cluster

    cluster._sees = lambda paths: False


def test_workers_that_do_not_see_the_results_folder_leave_the_write_to_the_client(
    prefect_harness, customers, running_cluster, tmp_path, caplog
):
    """A remote cluster without the results folder shared: the run says so and computes and
    writes the assignments itself, with the same result."""
    cluster, client = running_cluster
    client.wait_for_workers(2, timeout=60)
    client.run(_blind_to_the_client_s_files)
    db, alone = tmp_path / "cluster" / "s.duckdb", tmp_path / "alone" / "s.duckdb"
    first = run(customers, db, cluster=cluster.scheduler_address)
    assert any(
        "2 of the cluster's workers do not see the results folder" in r.getMessage() for r in caplog.records
    )
    parts = list((db.with_name("s.runs") / "assignments" / "run_id=1").glob("*.parquet"))
    assert len(parts) == 1  # the client's one part of up to 200,000 customers, not one per partition
    assert_same_result(published(db, first["run_id"]), published(alone, run(customers, alone)["run_id"]))


def test_a_scheduler_that_does_not_answer_fails_the_run_in_one_line(prefect_harness, customers, tmp_path):
    config = tmp_path / "segment.toml"
    config.write_text("[compute]\nconnect_timeout_seconds = 2\n")
    db = tmp_path / "s.duckdb"
    with pytest.raises(
        Exception, match=r"^compute.cluster tcp://127.0.0.1:9: no dask scheduler answered within 2 s"
    ):
        run(customers, db, config_path=str(config), cluster="tcp://127.0.0.1:9")
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT status, failed_stage FROM runs").fetchall() == [("failed", "cluster")]


def test_customers_with_blank_features_are_refused_on_a_cluster(prefect_harness, tmp_path):
    table, _ = make_customer_table(n_per_segment=100, seed=2)
    table.loc[[3, 50], "visit score"] = np.nan
    path = tmp_path / "gaps.csv"
    table.to_csv(path, index=False)
    db = tmp_path / "s.duckdb"
    with pytest.raises(ValueError, match=r"^compute.cluster: 2 customers have blank features"):
        run(path, db, cluster="local:1")
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT status, failed_stage FROM runs").fetchall() == [("failed", "distribute")]


def test_a_local_cluster_s_workers_run_without_dask_s_malloc_trim_threshold(monkeypatch):
    """dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its workers, which makes the engine's E-steps
    several times slower (gmm_cluster.WORKER_CONFIG), and leaves it in the environment of the
    process that started them, which the next cluster's workers would inherit: the run's own
    cluster starts its workers without it, and gives the process its environment back."""
    from flows.cluster import ClusterSpec, cluster_client

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as an earlier dask cluster leaves it
    with cluster_client(ClusterSpec.parse("local:1")) as client:
        assert set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}
        assert set(client.run(os.environ.get, "OMP_NUM_THREADS").values()) == {"1"}  # dask's others stay
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory) -> Path:
    """The customers in three Parquet partitions of a folder, with rows each rule rejects: a
    blank id (partition 1), an id repeated across partitions 1 and 2, a value beyond the
    magnitude rule and one that is not finite (partition 3)."""
    table, _ = make_customer_table(n_per_segment=400, seed=11)
    folder = tmp_path_factory.mktemp("cluster-partitions") / "customers"
    folder.mkdir()
    table.loc[5, "Customer Ref"] = "  "
    table.loc[700, "Customer Ref"] = table.loc[17, "Customer Ref"]
    table.loc[1000, "spend score"] = 1e13
    table.loc[1100, "visit score"] = np.inf
    with duckdb.connect() as con:
        for i in range(3):
            con.register("t", table.iloc[i * 400 : (i + 1) * 400].reset_index(drop=True))
            con.execute(f"COPY t TO '{folder / f'part-{i}.parquet'}' (FORMAT parquet)")
            con.unregister("t")
    return folder


def rejected(db: Path, run_id: int) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT source, row_number, column_name, rule, value FROM rejected_rows WHERE run_id = ? "
            "ORDER BY source, row_number, column_name, rule",
            [run_id],
        ).fetchall()


def test_partitions_are_validated_by_the_workers_with_the_single_machine_results(
    prefect_harness, partitioned, tmp_path, monkeypatch, caplog
):
    """A folder of partitions on a cluster: the workers read and validate them (the run's
    process never copies the input), with the same rejects, naming each partition and its row,
    the same valid customers and the same model as in one process."""
    alone, clustered = tmp_path / "alone" / "s.duckdb", tmp_path / "cluster" / "s.duckdb"
    one = run(partitioned, alone)
    import flows.load

    def no_copy(*args, **kwargs):
        raise AssertionError("the run's process copied the input")

    monkeypatch.setattr(flows.load, "_spill", no_copy)
    other = run(partitioned, clustered, cluster="local:2")
    assert any("read by the cluster's workers" in r.getMessage() for r in caplog.records)
    # The workers computed the features and kept the model matrix: nothing to send them.
    assert any("computed by the cluster's workers in 4 partitions" in r.getMessage() for r in caplog.records)
    assert "distribute" not in other["stage_seconds"]
    assert other["customers"] == one["customers"] == 1200 - 5  # the repeated id's two rows
    mine, theirs = rejected(clustered, other["run_id"]), rejected(alone, one["run_id"])
    assert mine == theirs
    assert {(Path(source).name, row) for source, row, *_ in mine} == {
        ("part-0.parquet", 6),
        ("part-0.parquet", 18),
        ("part-1.parquet", 301),
        ("part-2.parquet", 201),
        ("part-2.parquet", 301),
    }
    assert_same_result(published(clustered, other["run_id"]), published(alone, one["run_id"]))
    assert not (clustered.with_name("s.runs") / ".staging").exists()


def _blind_to_the_partitions() -> None:
    """On a worker: see neither the input's partitions nor the client's staging folder."""
    import flows.cluster as cluster

    cluster._sees = lambda paths: False


def test_workers_that_do_not_see_the_partitions_leave_them_to_the_client(
    prefect_harness, partitioned, running_cluster, tmp_path, caplog
):
    cluster, client = running_cluster
    client.wait_for_workers(2, timeout=60)
    client.run(_blind_to_the_partitions)
    db, alone = tmp_path / "cluster" / "s.duckdb", tmp_path / "alone" / "s.duckdb"
    mine = run(partitioned, db, cluster=cluster.scheduler_address)
    assert any(
        "2 of the cluster's workers do not see the input's partitions" in r.getMessage()
        for r in caplog.records
    )
    theirs = run(partitioned, alone)
    assert rejected(db, mine["run_id"]) == rejected(alone, theirs["run_id"])
    assert_same_result(published(db, mine["run_id"]), published(alone, theirs["run_id"]))


def test_a_worker_killed_during_model_selection_on_partitions_is_survived(
    prefect_harness, partitioned, running_cluster, tmp_path, monkeypatch
):
    """The workers validated the partitions and hold the features they computed; they die while
    the models are chosen. Dask reads their partitions again from the validated rows' files and
    the run publishes what it would have published undisturbed."""
    cluster, client = running_cluster
    client.wait_for_workers(2, timeout=60)
    # Every worker dies, so some partition is surely lost (dask may put them all on one); a task
    # moved from the first to die to the second then sees two deaths, which is not its fault.
    cluster.scheduler.allowed_failures = 3
    victims = set(client.run(os.getpid).values())
    monkeypatch.setenv("SEGMENT_FAULT", "fit")
    monkeypatch.setenv("SEGMENT_FAULT_KILL", ",".join(map(str, sorted(victims))))
    db, alone = tmp_path / "cluster" / "s.duckdb", tmp_path / "alone" / "s.duckdb"
    mine = run(partitioned, db, cluster=cluster.scheduler_address)
    assert not victims & set(client.run(os.getpid).values())
    assert "distribute" not in mine["stage_seconds"]
    theirs = run(partitioned, alone)
    assert_same_result(published(db, mine["run_id"]), published(alone, theirs["run_id"]))
    assert not (db.with_name("s.runs") / ".staging").exists()


def test_workers_killed_as_the_write_starts_on_features_they_computed_are_survived(
    prefect_harness, partitioned, running_cluster, tmp_path, monkeypatch
):
    """The publication's clearing of the staging folder leaves the rows the workers validated
    while the run holds the partitions computed from them: workers lost as the write of the
    assignments starts (the publication has begun) have dask read their partitions again, and
    the run publishes what it would have published undisturbed; nothing is left staged."""
    cluster, client = running_cluster
    client.wait_for_workers(2, timeout=60)
    db, alone = tmp_path / "cluster" / "s.duckdb", tmp_path / "alone" / "s.duckdb"
    run(partitioned, db, cluster=cluster.scheduler_address)
    run(partitioned, alone)
    # Every worker dies: dask may have put all the partitions on one of them. A task moved from
    # the first to die to the second then sees two deaths, which is not its fault.
    cluster.scheduler.allowed_failures = 3
    victims = set(client.run(os.getpid).values())
    monkeypatch.setenv("SEGMENT_FAULT", "cluster-write")
    monkeypatch.setenv("SEGMENT_FAULT_KILL", ",".join(map(str, sorted(victims))))
    second = run(partitioned, db, cluster=cluster.scheduler_address, seed=9)
    assert not victims & set(client.run(os.getpid).values())
    undisturbed = run(partitioned, alone, seed=9)
    assert_same_result(published(db, second["run_id"]), published(alone, undisturbed["run_id"]))
    assert not (db.with_name("s.runs") / ".staging").exists()
