"""End to end: the real Prefect flow (test harness), a real DuckDB file, real Pandera, real report files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from conftest import make_customer_table
from sklearn.metrics import adjusted_rand_score

from flows.cli import main
from flows.pipeline import segment_customers
from flows.stages import TooManyRejectsError
from flows.store import TABLES, VIEWS

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "flows" / "sql" / "examples.sql"
RETAIL_COLUMNS = {
    "customer_id": "CustomerID",
    "invoice_id": "InvoiceNo",
    "timestamp": "InvoiceDate",
    "quantity": "Quantity",
    "unit_price": "UnitPrice",
}


def example_queries() -> list[str]:
    text = EXAMPLES.read_text()
    statements = [s.strip() for s in text.split(";\n")]
    return [s for s in statements if s and not all(line.startswith("--") for line in s.splitlines())]


def assert_report_complete(index: Path) -> None:
    html = index.read_text()
    images = re.findall(r'src="([^"]+\.png)"', html)
    assert len(images) >= 3
    for name in images:
        png = index.parent / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.fixture(scope="module")
def retail_run(prefect_harness, retail_sample_csv, tmp_path_factory):
    """One flow run on the 30,000-line Online Retail sample (k_max = 4), shared by the checks below."""
    tmp = tmp_path_factory.mktemp("retail")
    db = tmp / "segments.duckdb"
    summary = segment_customers(
        input_path=str(retail_sample_csv),
        columns=RETAIL_COLUMNS,
        k_max=4,
        n_init=1,
        database=str(db),
        reports_dir=str(tmp / "reports"),
        trigger="test",
    )
    return summary, db, tmp


def test_retail_run_summary_sizes_and_grid_extension(retail_run):
    summary, _, tmp = retail_run
    tried = summary["k_max_tried"]  # k_max = 4, extended (up to 8) while the best sat at the edge
    assert 1 <= summary["n_components"] < tried <= 8 and summary["rows_loaded"] == 30_000
    assert (tried > 4) == bool(summary["grid_note"])
    assert sum(s["customers"] for s in summary["segment_sizes"]) == summary["customers"] > 100
    assert Path(summary["report"]) == (tmp / "reports" / "1" / "index.html").resolve()


def test_retail_run_writes_a_complete_report(retail_run):
    summary, _, _ = retail_run
    assert_report_complete(Path(summary["report"]))


def test_retail_run_creates_every_table_and_view(retail_run):
    _, db, _ = retail_run
    with duckdb.connect(str(db), read_only=True) as con:
        names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert set(TABLES) | set(VIEWS) <= names


def test_retail_run_records_the_run(retail_run):
    summary, db, _ = retail_run
    with duckdb.connect(str(db), read_only=True) as con:
        run = con.execute(
            "SELECT status, trigger, as_of, rows_loaded, customers, n_components, covariance_type, "
            "criterion, "
            "bic IS NOT NULL, seed, code_version, parameters->>'$.model.k_max', report_path, k_max_tried, "
            "decision, grid_note FROM runs"
        ).fetchone()
    assert run[:2] == ("success", "test") and run[3] == 30_000 and run[4] == summary["customers"]
    assert run[5] == summary["n_components"] and run[6] == summary["covariance_type"]
    assert run[7] == "bic" and run[8]
    assert run[9] == 0 and run[10] and run[11] == "4" and run[12] == summary["report"]
    assert run[13:] == (summary["k_max_tried"], "first_run", summary["grid_note"] or None)


def test_retail_run_stores_the_whole_grid_with_one_choice(retail_run):
    summary, db, _ = retail_run
    tried = summary["k_max_tried"]
    with duckdb.connect(str(db), read_only=True) as con:
        # The k values tried x 4 covariance types, exactly one selected, matching runs.
        grid = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE selected) FROM model_candidates"
        ).fetchone()
        origins = dict(con.execute("SELECT origin, count(*) FROM model_candidates GROUP BY 1").fetchall())
        chosen = con.execute(
            "SELECT n_components, covariance_type FROM model_candidates WHERE selected"
        ).fetchone()
    assert grid == (4 * tried, 1)
    assert origins == ({"grid": 16, "extension": 4 * (tried - 4)} if tried > 4 else {"grid": 16})
    assert chosen == (summary["n_components"], summary["covariance_type"])


def test_retail_run_finds_the_frequency_spike(retail_run):
    _, db, _ = retail_run
    with duckdb.connect(str(db), read_only=True) as con:
        scalers = dict(con.execute("SELECT feature, resolution FROM feature_scalers").fetchall())
    # The one-time buyers set frequency's resolution; monetary has none.
    assert len(scalers) == 3 and scalers["frequency"] > 0.1 and scalers["monetary"] == 0.0


def test_retail_run_segments_and_profiles(retail_run):
    summary, db, _ = retail_run
    k = summary["n_components"]
    with duckdb.connect(str(db), read_only=True) as con:
        seg = con.execute(
            "SELECT count(*), sum(weight), sum(customer_count) FROM current_segments"
        ).fetchone()
        profiles = con.execute("SELECT count(*), count(DISTINCT feature) FROM segment_profiles").fetchone()
        low, high = con.execute(
            "SELECT min(centre), max(centre) FROM segment_profiles WHERE feature = 'recency_days'"
        ).fetchone()
    assert seg[0] == k and seg[1] == pytest.approx(1.0) and seg[2] == summary["customers"]
    assert profiles == (3 * k, 3)
    # Profiles are in original units: recency centres lie inside the observed range of days.
    assert 0 <= low <= high <= 400


def test_retail_run_assignments_are_one_per_customer_and_consistent(retail_run):
    summary, db, _ = retail_run
    with duckdb.connect(str(db), read_only=True) as con:
        a = con.execute(
            "SELECT count(*), count(DISTINCT customer_id), max(abs(list_sum(probabilities) - 1)), "
            "bool_and(probability = list_max(probabilities)), bool_and(len(probabilities) = ?), "
            "bool_and(segment_id = list_position(probabilities, probability)) FROM current_assignments",
            [summary["n_components"]],
        ).fetchone()
    assert a[0] == a[1] == summary["customers"] and a[2] < 1e-9 and a[3] and a[4] and a[5]


def test_every_documented_example_query_runs_on_a_real_result_file(retail_run):
    _, db, _ = retail_run
    with duckdb.connect(str(db), read_only=True) as con:
        for sql in example_queries():
            con.execute(sql).fetchall()
        assert con.execute(example_queries()[0]).fetchall()


def test_retail_run_publishes_its_artifacts_to_prefect(retail_run):
    """What the run shows in the Prefect UI (artifact keys carry the run id; this test's run is 1).
    Other tests' runs 1 share the session's server: read this flow run's own artifacts."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    summary, db, _ = retail_run
    with duckdb.connect(str(db), read_only=True) as con:
        flow_run_id = UUID(con.execute("SELECT flow_run_id FROM runs WHERE run_id = 1").fetchall()[0][0])
    with get_client(sync_client=True) as client:
        own = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        artifacts = {a.key: a for a in client.read_artifacts(artifact_filter=own)}
    markdown = artifacts["segmentation-run-1"]
    assert f"{summary['n_components']} segments, {summary['covariance_type']} covariance" in markdown.data
    assert "Rows rejected" in markdown.data and Path(summary["report"]).as_uri() in markdown.data
    grid = artifacts["model-selection-grid-run-1"]
    assert grid.type == "table" and len(json.loads(grid.data)) == 4 * summary["k_max_tried"]
    progress = artifacts["model-selection-run-1"]
    assert progress.type == "progress" and float(progress.data) == 100.0


def test_generated_segments_are_recovered(prefect_harness, customer_table_csv, tmp_path):
    path, truth = customer_table_csv
    db = tmp_path / "segments.duckdb"
    summary = segment_customers(
        input_path=str(path),
        input_kind="customers",
        columns={"customer_id": "Customer Ref"},
        features=["spend score", "visit score"],
        k_max=5,
        n_init=2,
        database=str(db),
        reports_dir=str(tmp_path / "reports"),
        trigger="test",
    )
    assert summary["n_components"] == 3
    with duckdb.connect(str(db), read_only=True) as con:
        got = con.execute("SELECT customer_id, segment_id FROM current_assignments").df()
        profile = con.execute(
            "SELECT feature, unit FROM segment_profiles ORDER BY segment_id, feature_index LIMIT 2"
        ).fetchall()
    order = got.assign(n=got["customer_id"].str[1:].astype(int)).sort_values("n")
    assert adjusted_rand_score(truth, order["segment_id"].to_numpy()) > 0.9
    assert profile == [("spend score", ""), ("visit score", "")]
    assert_report_complete(Path(summary["report"]))


def test_customers_with_blank_features_are_segmented_on_what_they_have(prefect_harness, tmp_path):
    """A customer table with blanks (features.missing = "model", the default): one blank of two is
    segmented, both blank is rejected; the store says how many were blank per customer and run."""
    table, truth = make_customer_table()
    rng = np.random.default_rng(3)
    spend_blank, visit_blank = rng.random(len(table)) < 0.08, rng.random(len(table)) < 0.08
    table.loc[spend_blank, "spend score"] = np.nan
    table.loc[visit_blank, "visit score"] = np.nan
    path = tmp_path / "customers.csv"
    table.to_csv(path, index=False)
    db = tmp_path / "segments.duckdb"
    summary = segment_customers(
        input_path=str(path),
        input_kind="customers",
        columns={"customer_id": "Customer Ref"},
        features=["spend score", "visit score"],
        k_max=5,
        n_init=2,
        database=str(db),
        reports_dir=str(tmp_path / "reports"),
        trigger="test",
    )
    both, one = spend_blank & visit_blank, spend_blank ^ visit_blank
    assert summary["n_components"] == 3
    assert (
        summary["customers"] == len(table) - both.sum() and summary["customers_with_gaps"] == one.sum() > 50
    )
    with duckdb.connect(str(db), read_only=True) as con:
        got = con.execute("SELECT customer_id, segment_id, missing_features FROM current_assignments").df()
        gaps = con.execute("SELECT customers_with_gaps FROM runs").fetchall()
        rejected = con.execute("SELECT DISTINCT rule FROM rejected_rows").fetchall()
    assert gaps == [(one.sum(),)] and rejected == [("too_many_missing",)]
    ids = table["Customer Ref"].to_numpy()
    got = got.set_index("customer_id").loc[ids[~both]]
    assert got["missing_features"].tolist() == one[~both].astype(int).tolist()
    assert adjusted_rand_score(truth[~both], got["segment_id"].to_numpy()) > 0.85
    assert_report_complete(Path(summary["report"]))


def test_too_many_rejects_fail_the_run_and_keep_the_rejects(prefect_harness, tmp_path):
    frame = pd.DataFrame(
        {"id": [f"c{i}" for i in range(40)], "x": np.arange(40.0).astype(object), "y": np.arange(40.0) % 7}
    )
    frame.loc[[3, 9, 17], "x"] = [
        "n/a",
        "twelve",
        "-inf",
    ]  # a blank would be a missing value (features.missing)
    path = tmp_path / "customers.csv"
    frame.to_csv(path, index=False)
    db = tmp_path / "segments.duckdb"
    with pytest.raises(TooManyRejectsError, match=r"3 of 40 rows"):
        segment_customers(
            input_path=str(path),
            input_kind="customers",
            columns={"customer_id": "id"},
            features=["x", "y"],
            k_max=2,
            database=str(db),
            reports_dir=str(tmp_path / "r"),
            trigger="test",
        )
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute(
            "SELECT status, failed_stage, rows_loaded, rows_rejected FROM runs"
        ).fetchone() == ("failed", "validate", 40, 3)
        rejects = con.execute(
            "SELECT source, row_number, column_name, rule, value FROM rejected_rows ORDER BY 2"
        ).fetchall()
        assert [(r[1], r[2]) for r in rejects] == [(4, "x"), (10, "x"), (18, "x")]
        assert rejects[0][0] == str(path) and rejects[0][4] == "n/a"
        assert con.execute("SELECT count(*) FROM current_segments").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM assignments").fetchone()[0] == 0


def test_cli_run_prints_the_model_sizes_and_locations(prefect_harness, customer_table_csv, tmp_path, capsys):
    path, _ = customer_table_csv
    db = tmp_path / "cli.duckdb"
    code = main(
        [
            "run",
            "--input",
            str(path),
            "--kind",
            "customers",
            "--column",
            "customer_id=Customer Ref",
            "--features",
            "spend score,visit score",
            "--k-max",
            "4",
            "--covariance-types",
            "full,diag",
            "--criterion",
            "icl",
            "--n-init",
            "1",
            "--seed",
            "3",
            "--database",
            str(db),
            "--reports",
            str(tmp_path / "reports"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"Run 1: 3 segments, (full|diag) covariance \(chosen by ICL", out)
    assert f"Database: {db.resolve()}" in out and "Report:" in out
    # One line per segment: customers and their share of all customers (which add up to 100 %).
    rows = re.findall(r"^\s+[123]\s+([\d,]+)\s+(\d+\.\d)%$", out, flags=re.M)
    assert len(rows) == 3 and "share of customers" in out
    assert abs(sum(float(share) for _, share in rows) - 100.0) < 0.2
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT trigger, criterion, seed FROM runs").fetchone() == ("cli", "icl", 3)
        assert con.execute("SELECT count(*) FROM model_candidates").fetchone()[0] == 8


def test_cli_rejects_bad_options_before_starting_prefect(tmp_path, capsys):
    assert main(["run", "--k-min", "5", "--k-max", "2", "--database", str(tmp_path / "x.duckdb")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segment: error:") and "k_max" in err and err.count("\n") == 1
    assert not (tmp_path / "x.duckdb").exists()
