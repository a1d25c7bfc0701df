"""gmm_cluster's EM on a dask LocalCluster (two worker processes) with Parquet partitions: the
parameters of the single-machine fit, a lost worker replaced, failures that fit nothing."""

from __future__ import annotations

import copy
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import dask
import distributed
import duckdb
import numpy as np
import pandas as pd
import pytest
from test_engine_external import (
    FIT,
    MEAN,
    SCALE,
    max_difference,
    raw_data,
    refit_in_process,
    split,
    standardised,
    start_model,
)

from gmm_cluster import (
    ClusterData,
    ClusterFitError,
    ParquetPartition,
    PartitionError,
    PartitionsLostError,
    refit_on_partitions,
    rows_per_partition,
)

COLUMNS = ("spend", "visits", "tenure")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    # One lost worker per task is retried; a task that kills a second worker fails the fit.
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def parquet_partitions(tmp_path_factory) -> list[ParquetPartition]:
    folder = tmp_path_factory.mktemp("partitions")
    con = duckdb.connect()
    partitions = []
    for i, rows in enumerate(split(raw_data())):
        frame = pd.DataFrame(rows, columns=list(COLUMNS)).assign(
            customer=[f"C{i}-{j}" for j in range(len(rows))]
        )
        path = folder / f"part-{i}.parquet"
        con.register("frame", frame)
        con.execute(f"COPY frame TO '{path}' (FORMAT parquet)")
        con.unregister("frame")
        partitions.append(ParquetPartition(str(path), COLUMNS, MEAN, SCALE))
    con.close()
    return partitions


@pytest.mark.parametrize("covariance_type", ["full", "diag", "tied"])
def test_cluster_refit_matches_the_single_machine_refit(client, parquet_partitions, covariance_type):
    client.wait_for_workers(2, timeout=60)
    Z = standardised(raw_data())
    start = start_model(Z, covariance_type)
    before = copy.deepcopy(start)
    fitted = refit_on_partitions(client, parquet_partitions, start, **FIT)
    local = refit_in_process(copy.deepcopy(start).set_params(**FIT), split(Z))
    reference = copy.deepcopy(start).set_params(warm_start=True, **FIT).fit(Z)
    assert fitted.n_iter_ == local.n_iter_ == reference.n_iter_
    assert max_difference(fitted, local) < 1e-8
    assert max_difference(fitted, reference) < 1e-8
    np.testing.assert_array_equal(fitted.predict(Z), reference.predict(Z))
    assert max_difference(start, before) == 0 and start.max_iter == before.max_iter  # input untouched


@dataclass(frozen=True)
class KillsItsWorker:
    """A partition whose reading kills the worker process: once (marker file), or every time."""

    inner: ParquetPartition
    marker: str | None = None

    def __str__(self) -> str:
        return str(self.inner)

    def __call__(self) -> np.ndarray:
        if self.marker is None or not os.path.exists(self.marker):
            if self.marker is not None:
                Path(self.marker).touch()
            os._exit(1)
        return self.inner()


def test_a_worker_killed_once_is_replaced_and_the_fit_still_matches(client, parquet_partitions, tmp_path):
    client.wait_for_workers(2, timeout=60)
    Z = standardised(raw_data())
    start = start_model(Z, "full")
    parts = [*parquet_partitions[:2], KillsItsWorker(parquet_partitions[2], str(tmp_path / "killed"))]
    fitted = refit_on_partitions(client, parts, start, **FIT)
    assert (tmp_path / "killed").exists()  # the worker did die
    reference = copy.deepcopy(start).set_params(warm_start=True, **FIT).fit(Z)
    assert max_difference(fitted, reference) < 1e-8


def test_a_partition_that_keeps_killing_workers_fails_the_fit_cleanly(client, parquet_partitions):
    client.wait_for_workers(2, timeout=60)
    start = start_model(standardised(raw_data()), "full")
    before = copy.deepcopy(start)
    parts = [*parquet_partitions[:2], KillsItsWorker(parquet_partitions[2])]
    with pytest.raises(ClusterFitError, match=r"the workers running it died 2 times") as caught:
        refit_on_partitions(client, parts, start, **FIT)
    # The killer is always named; a task that shared its worker may be named beside it (dask
    # counts a worker's death against every task on it).
    assert "part-2.parquet" in str(caught.value) and "\n" not in str(caught.value)
    assert max_difference(start, before) == 0


def test_a_missing_file_or_column_is_a_one_line_error_naming_the_file(client, parquet_partitions, tmp_path):
    client.wait_for_workers(2, timeout=60)
    start = start_model(standardised(raw_data()), "diag")
    missing = ParquetPartition(str(tmp_path / "absent.parquet"), COLUMNS, MEAN, SCALE)
    with pytest.raises(PartitionError) as caught:
        refit_on_partitions(client, [parquet_partitions[0], missing], start)
    assert "absent.parquet" in str(caught.value) and "\n" not in str(caught.value)
    other = ParquetPartition(parquet_partitions[1].path, ("spend", "visits", "age"), MEAN, SCALE)
    with pytest.raises(PartitionError) as caught:
        refit_on_partitions(client, [parquet_partitions[0], other], start)
    message = str(caught.value)
    assert message.startswith(f"partition {parquet_partitions[1].path}: no column 'age'")
    assert "\n" not in message


def test_model_selection_on_cluster_data_matches_the_single_machine_selection(client):
    """Candidates fitted on the same seeded sample in the client; their criteria and the chosen
    one's refit on all the data summed on the workers: the single machine's table and model."""
    from gmm_engine import observed_std, select_model

    client.wait_for_workers(2, timeout=60)
    Z = standardised(raw_data())
    grid = dict(
        n_components=range(1, 5),
        covariance_types=("full", "diag", "tied"),
        n_init=2,
        random_state=7,
        max_samples=700,
        tol=1e-6,
        max_iter=300,
    )
    local = select_model(Z, **grid)
    data = ClusterData.scatter(client, Z, rows_per_partition(Z.shape[0], 2, 400))
    assert data.n_partitions == 4 and data.n_samples == Z.shape[0]
    np.testing.assert_allclose(data.observed_std(), observed_std(Z), rtol=1e-12)
    on_cluster = select_model(Z, **grid, data=data)
    data.release()

    assert len(on_cluster.table) == len(local.table)
    for mine, theirs in zip(on_cluster.table, local.table, strict=True):
        assert (mine["n_components"], mine["covariance_type"], mine["status"], mine["selected"]) == (
            theirs["n_components"],
            theirs["covariance_type"],
            theirs["status"],
            theirs["selected"],
        )
        for name in ("log_likelihood", "bic", "aic", "icl"):
            assert mine[name] == pytest.approx(theirs[name], rel=1e-10, nan_ok=True), name
    chosen = next(row for row in local.table if row["selected"])
    assert chosen["reason"] == ""  # the refit on all the data was kept on both sides
    assert max_difference(on_cluster.best, local.best) < 1e-8


def test_scattered_blocks_are_named_in_errors_and_must_be_complete(client):
    client.wait_for_workers(2, timeout=60)
    Z = standardised(raw_data())
    with pytest.raises(ValueError, match="complete rows"):
        ClusterData.scatter(client, np.where(np.arange(Z.shape[0])[:, None] == 3, np.nan, Z), 500)
    data = ClusterData.scatter(client, Z, 500)
    start = start_model(Z, "diag")
    wrong = start_model(Z[:, :2], "diag")  # two features, the blocks have three
    with pytest.raises(PartitionError, match=r"^partition block 1 of 4: "):
        data.scores(wrong)
    assert data.scores(start).total_weight == Z.shape[0]
    data.release()


def _kill_worker_holding(client, future) -> int:
    """SIGKILL the worker process that holds ``future``'s data; its pid."""
    (address,) = client.who_has([future])[future.key]
    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_block_lost_with_its_worker_is_sent_again_and_the_pass_repeated(client):
    from gmm_engine import InMemoryData

    client.wait_for_workers(2, timeout=60)
    Z = standardised(raw_data())
    start = start_model(Z, "full")
    start.set_params(**FIT)
    said: list[str] = []
    data = ClusterData.scatter(client, Z, 400, retries=1, on_retry=said.append)
    _kill_worker_holding(client, data.partitions[0])
    scores, expected = data.scores(start), InMemoryData(Z).scores(start)
    assert scores.total_weight == expected.total_weight == Z.shape[0]
    assert scores.log_likelihood == pytest.approx(expected.log_likelihood, rel=1e-12)
    assert scores.entropy == pytest.approx(expected.entropy, rel=1e-12)
    assert data.resent >= 1 and len(said) == 1
    assert said[0].startswith("partition block 1 of 4") and "(retry 1 of 1)" in said[0]
    # A loss during the refit: the E-step is repeated, the iterations are an undisturbed fit's.
    client.wait_for_workers(2, timeout=60)
    _kill_worker_holding(client, data.partitions[1])
    assert max_difference(data.refit(copy.deepcopy(start)), refit_in_process(start, split(Z))) < 1e-8
    assert len(said) == 2
    data.release()


def test_without_retries_a_lost_block_ends_the_pass_naming_it(client):
    client.wait_for_workers(2, timeout=60)
    Z = standardised(raw_data())
    data = ClusterData.scatter(client, Z, 400, retries=0)
    _kill_worker_holding(client, data.partitions[2])
    with pytest.raises(
        PartitionsLostError, match=r"block 3 of 4.*lost with the worker that held it in memory"
    ):
        data.scores(start_model(Z, "diag"))
    data.release()
