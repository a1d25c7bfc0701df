"""Shared test fixtures: ONE Prefect test harness for the session, small real data files."""

from __future__ import annotations

import os
import warnings
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


def assert_em_ascends(gm, X, rel: float = 1e-10) -> None:
    """Fit ``gm`` (at ``reg_covar=0``) and check that every EM iteration's bound is at least the
    last one's. A fit with a collapsed component (ill-defined covariance, or a component on
    d + 1 samples or fewer, where the bound is dominated by rounding) is no example: hypothesis
    draws another."""
    from hypothesis import assume

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(X)
    except ValueError as exc:
        if "ill-defined empirical covariance" not in str(exc):
            raise
        assume(False)
    assume((gm.weights_ * len(X)).min() > X.shape[1] + 1)
    lb = np.asarray(gm.lower_bounds_)
    assert np.all(np.isfinite(lb))
    assert np.all(np.diff(lb) >= -rel * np.maximum(1.0, np.abs(lb[:-1]))), (
        gm.covariance_type,
        np.diff(lb).min(),
    )
