"""Features computed by a cluster's workers a partition each (flows.partition_features), against
the run's process computing them from the same validated rows: a real dask LocalCluster, real
Parquet partitions, real DuckDB."""

from __future__ import annotations

import gc
from pathlib import Path

import distributed
import duckdb
import numpy as np
import pandas as pd
import pytest

import flows.features
from flows.config import load_settings
from flows.features import FeatureError
from flows.load import load_input
from flows.partition_features import _read_range, features_on_cluster
from flows.partition_validation import validate_on_cluster
from flows.stages import compute_features, features_on_workers, validate_input
from gmm_cluster import PartitionError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _customers(n: int, seed: int = 3) -> pd.DataFrame:
    """Customers in random id order: a count with a spike of one-time buyers (half of them), a
    spend in cents, a continuous tenure; an id repeated across partitions and a rejected spend."""
    rng = np.random.default_rng(seed)
    visits = np.where(rng.random(n) < 0.5, 1, rng.integers(2, 30, n))
    frame = pd.DataFrame(
        {
            "id": [f"c{i:06d}" for i in rng.permutation(n)],
            "visits": visits.astype(np.int64),
            "spend": np.round(rng.gamma(2.0, 40.0, n) * visits, 2),
            "tenure": rng.normal(500.0, 120.0, n),
        }
    )
    frame.loc[n - 3, "id"] = frame.loc[4, "id"]  # repeated: both rows rejected
    frame.loc[n // 2, "spend"] = -1.0  # log1p's rule
    return frame


def _partitions(frame: pd.DataFrame, folder: Path, parts: int = 3) -> Path:
    folder.mkdir(parents=True)
    with duckdb.connect() as con:
        for i, chunk in enumerate(np.array_split(np.arange(len(frame)), parts)):
            con.register("t", frame.iloc[chunk].reset_index(drop=True))
            con.execute(f"COPY t TO '{folder / f'part-{i}.parquet'}' (FORMAT parquet)")
            con.unregister("t")
    return folder


def _settings(folder: Path, tmp_path: Path, **features):
    return load_settings(
        overrides={
            "input": {"path": str(folder), "kind": "customers", "columns": {"customer_id": "id"}},
            "features": {
                "columns": ["visits", "spend", "tenure"],
                "transforms": {"visits": "log1p", "spend": "log1p"},
                **features,
            },
            "output": {"database": str(tmp_path / "s.duckdb")},
            "compute": {"partition_rows": 700},
        }
    )


def _both(client, settings):
    """The features as the run's process computes them, and as the workers do."""
    here = validate_input(load_input(settings.input, settings.features.columns), settings)
    alone = compute_features(here.valid, settings, keep_original=False).in_file()
    loaded = load_input(settings.input, settings.features.columns, read_partitions=False)
    theirs = validate_on_cluster(client, loaded, settings)
    assert features_on_workers(theirs.valid, client)
    return alone, features_on_cluster(client, theirs.valid, settings), theirs


@pytest.mark.parametrize("screen", [1_000, None])
def test_the_workers_features_are_those_of_the_run_s_process(client, tmp_path, monkeypatch, screen):
    """Ids, model matrix, standardisation, spikes and ranges equal to rounding, with the spikes
    screened on a sample (screen below the customers) or every value counted; each partition
    on the workers holds its consecutive customers of the matrix."""
    if screen is not None:
        monkeypatch.setattr(flows.features, "SPIKE_SCREEN", screen)
    frame = _customers(6_000)
    settings = _settings(_partitions(frame, tmp_path / "parts"), tmp_path)
    alone, (mine, data), outcome = _both(client, settings)
    assert mine.n_customers == alone.n_customers == 6_000 - 3
    assert np.array_equal(np.asarray(mine.customer_ids), np.asarray(alone.customer_ids))
    np.testing.assert_allclose(mine.X_model[:], alone.X_model[:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mine.scaler.mean, alone.scaler.mean, rtol=1e-13)
    np.testing.assert_allclose(mine.scaler.scale, alone.scaler.scale, rtol=1e-12)
    for name in ("resolution", "spike_value", "spike_share", "lowest", "highest"):
        np.testing.assert_allclose(getattr(mine, name), getattr(alone, name), rtol=1e-12, err_msg=name)
    assert mine.spike_share[0] > 0.4 and mine.resolution[0] > 0  # the one-time buyers' spike
    assert mine.resolution[2] == 0  # tenure is continuous
    assert data.n_partitions == 9 and data.bounds[-1][1] == mine.n_customers
    for (start, stop), part in zip(data.bounds, client.gather(data.partitions), strict=True):
        np.testing.assert_array_equal(part, mine.X_model[start:stop])
    for name in outcome.valid.files:  # in id order, so a range read skips row groups
        with duckdb.connect() as con:
            ids = [r[0] for r in con.execute(f"SELECT customer_id FROM read_parquet('{name}')").fetchall()]
        assert len(ids) > 1 and ids == sorted(ids)
    kept = Path(outcome.valid.files[0])
    outcome.valid.close()
    del outcome
    gc.collect()
    assert kept.exists()  # kept for the partitions until they go, whatever else is let go of
    del data
    assert not kept.exists()


def test_a_constant_feature_is_refused_as_in_the_run_s_process(client, tmp_path):
    frame = _customers(1_500)
    frame["tenure"] = 7.0
    settings = _settings(_partitions(frame, tmp_path / "parts"), tmp_path)
    here = validate_input(load_input(settings.input, settings.features.columns), settings)
    with pytest.raises(FeatureError) as alone:
        compute_features(here.valid, settings, keep_original=False)
    loaded = load_input(settings.input, settings.features.columns, read_partitions=False)
    theirs = validate_on_cluster(client, loaded, settings)
    with pytest.raises(FeatureError) as mine:
        features_on_cluster(client, theirs.valid, settings)
    assert str(mine.value) == str(alone.value)
    assert "'tenure' has the same value (7)" in str(mine.value)


def test_blank_features_are_left_to_the_run_s_process(client, tmp_path):
    """Customers with a blank feature (features.missing = "model"): the run's process computes
    the features, and the cluster then refuses them in one line as before."""
    frame = _customers(1_500)
    frame["tenure"] = frame["tenure"].astype("float64")
    frame.loc[10, "tenure"] = np.nan
    settings = _settings(_partitions(frame, tmp_path / "parts"), tmp_path, missing={"tenure": "model"})
    loaded = load_input(settings.input, settings.features.columns, read_partitions=False)
    theirs = validate_on_cluster(client, loaded, settings)
    assert len(theirs.valid) > 2 and not features_on_workers(theirs.valid, client)


def test_rows_gone_from_under_the_run_give_one_line_naming_the_customers_and_folder(tmp_path):
    """A partition read again after its rows' files were removed (by hand: the run keeps them
    until it lets go of the partitions) stops with one line, not DuckDB's traceback."""
    gone = str(tmp_path / "staging" / "validation-x" / "p00000-0.parquet")
    with pytest.raises(PartitionError) as failed:
        _read_range([gone], "valid", "c000100", "c000200", 100, 3)
    message = str(failed.value)
    assert message.startswith(
        "the customers from 'c000100' to 'c000200': their validated rows are gone from "
    )
    assert str(tmp_path / "staging" / "validation-x") in message and "\n" not in message
