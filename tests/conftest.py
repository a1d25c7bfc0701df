"""Shared test fixtures: ONE Prefect test harness for the session, small real data files."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "online_retail.csv.gz"


@pytest.fixture(scope="session")
def prefect_harness():
    """A Prefect test server for the whole session (starting one costs ~12 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def retail_sample_csv(tmp_path_factory) -> Path:
    """The first 30,000 lines of the embedded Online Retail file, as an uncompressed CSV."""
    path = tmp_path_factory.mktemp("retail") / "retail_sample.csv"
    con = duckdb.connect()
    rel = con.read_csv(str(SAMPLE), header=True, all_varchar=True).limit(30_000)
    rel.write_csv(str(path), header=True)
    con.close()
    return path


def make_customer_table(n_per_segment: int = 400, seed: int = 7) -> tuple[pd.DataFrame, np.ndarray]:
    """Customers drawn from 3 well-separated Gaussian segments in 2 features; returns (table, true labels)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [8.0, 1.0], [2.0, 9.0]])
    scales = np.array([[1.0, 0.6], [0.8, 1.2], [1.1, 0.9]])
    labels = np.repeat(np.arange(3), n_per_segment)
    X = centres[labels] + rng.standard_normal((labels.size, 2)) * scales[labels]
    order = rng.permutation(labels.size)
    table = pd.DataFrame(
        {
            "Customer Ref": [f"K{i:05d}" for i in range(labels.size)],
            "spend score": X[order, 0],
            "visit score": X[order, 1],
        }
    )
    return table, labels[order]


@pytest.fixture()
def customer_table_csv(tmp_path) -> tuple[Path, np.ndarray]:
    """A generated customer table with known segments, saved as CSV with user-style column names."""
    table, labels = make_customer_table()
    path = tmp_path / "customers.csv"
    table.to_csv(path, index=False)
    return path, labels
