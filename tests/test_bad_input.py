"""Bad input through the real flow: a one-line error naming file, column, row and rule, or a run that
goes on without the bad rows (recorded in ``rejected_rows``); earlier results stay intact either way."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_customer_table

from flows.pipeline import segment_customers

pytestmark = pytest.mark.slow

#: A small, fast grid: every run here costs ~1-2 s under the shared Prefect harness.
FAST = dict(k_max=2, covariance_types=["diag"], n_init=1)
CUSTOMERS = dict(input_kind="customers", columns={"customer_id": "id"}, features=["x", "y"])
TRANSACTIONS = dict(columns={"customer_id": "cid", "invoice_id": "inv", "timestamp": "ts", "amount": "amt"})


@dataclass
class Store:
    """The results database shared by this module's runs, with the first (good) run's rows."""

    db: Path
    reports: Path
    run1_segments: pd.DataFrame
    run1_assignments: pd.DataFrame


def customer_rows(n: int = 60, seed: int = 3) -> pd.DataFrame:
    """``n`` customers (ids k0..) with two well-spread numeric features."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": [f"k{i}" for i in range(n)],
            "x": rng.normal(10, 3, n).round(4),
            "y": rng.normal(5, 2, n).round(4),
        }
    )


def transaction_rows(n_customers: int = 40, seed: int = 5) -> pd.DataFrame:
    """A small transaction log: customers with 1-6 invoices of varying amounts in 2011."""
    rng = np.random.default_rng(seed)
    rows = []
    invoice = 0
    for c in range(n_customers):
        for _ in range(int(rng.integers(1, 7))):
            invoice += 1
            day = pd.Timestamp("2011-01-01") + pd.Timedelta(days=int(rng.integers(0, 330)))
            rows.append(
                {
                    "cid": f"c{c}",
                    "inv": f"i{invoice}",
                    "ts": f"{day:%Y-%m-%d} 10:00",
                    "amt": round(float(rng.gamma(2.0, 20.0)), 2),
                }
            )
    return pd.DataFrame(rows)


def write_csv(path: Path, frame: pd.DataFrame, sep: str = ",") -> Path:
    frame.to_csv(path, index=False, sep=sep)
    return path


def write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    """Parquet written by DuckDB (pyarrow is not a dependency)."""
    with duckdb.connect() as con:
        con.register("frame", frame)
        con.execute(f"COPY frame TO '{path}' (FORMAT parquet)")
    return path


def snapshot(db: Path) -> dict[str, object]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {
            "current": con.execute("SELECT * FROM current_segments ORDER BY segment_id").df(),
            "run1_segments": con.execute("SELECT * FROM segments WHERE run_id = 1 ORDER BY segment_id").df(),
            "run1_assignments": con.execute(
                "SELECT * FROM assignments WHERE run_id = 1 ORDER BY customer_id"
            ).df(),
            "max_run": con.execute("SELECT max(run_id) FROM runs").fetchone()[0],
        }


@pytest.fixture(scope="module")
def store(prefect_harness, tmp_path_factory) -> Store:
    """One good customer-table run (run 1) into the database every bad run of this module then uses."""
    folder = tmp_path_factory.mktemp("bad_input")
    table, _ = make_customer_table(n_per_segment=100)
    path = write_csv(folder / "good.csv", table)
    db = folder / "segments.duckdb"
    summary = segment_customers(
        input_path=str(path),
        input_kind="customers",
        columns={"customer_id": "Customer Ref"},
        features=["spend score", "visit score"],
        k_max=3,
        covariance_types=["diag"],
        n_init=1,
        database=str(db),
        reports_dir=str(folder / "reports"),
        trigger="test",
    )
    assert summary["run_id"] == 1
    snap = snapshot(db)
    assert len(snap["run1_segments"]) == summary["n_components"] and len(snap["run1_assignments"]) == 300
    return Store(db, folder / "reports", snap["run1_segments"], snap["run1_assignments"])


def _run(store: Store, path: Path | str, params: dict) -> dict:
    return segment_customers(
        input_path=str(path),
        database=str(store.db),
        reports_dir=str(store.reports),
        trigger="test",
        **{**FAST, **params},
    )


def _assert_run1_intact(store: Store, after: dict) -> None:
    pd.testing.assert_frame_equal(after["run1_segments"], store.run1_segments)
    pd.testing.assert_frame_equal(after["run1_assignments"], store.run1_assignments)


def expect_stop(store: Store, path: Path | str, params: dict, stage: str, *patterns: str) -> str:
    """Run, expect a failure whose one-line message matches every pattern; check the stored results."""
    before = snapshot(store.db)
    with pytest.raises(Exception) as info:
        _run(store, path, params)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    assert message.startswith(str(path)) or stage not in ("load", "validate"), message
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    after = snapshot(store.db)
    assert after["max_run"] == before["max_run"] + 1
    with duckdb.connect(str(store.db), read_only=True) as con:
        status, failed_stage, error = con.execute(
            "SELECT status, failed_stage, error FROM runs WHERE run_id = ?", [after["max_run"]]
        ).fetchone()
        assert (
            con.execute("SELECT count(*) FROM assignments WHERE run_id = ?", [after["max_run"]]).fetchone()[0]
            == 0
        )
    assert (status, failed_stage, error) == ("failed", stage, message.strip())
    pd.testing.assert_frame_equal(after["current"], before["current"])
    _assert_run1_intact(store, after)
    return message


def expect_rejects(store: Store, path: Path | str, params: dict) -> tuple[dict, pd.DataFrame]:
    """Run, expect success; return the summary and the run's rejected_rows (run 1 checked intact)."""
    summary = _run(store, path, params)
    after = snapshot(store.db)
    assert after["current"]["run_id"].unique().tolist() == [summary["run_id"]]
    _assert_run1_intact(store, after)
    with duckdb.connect(str(store.db), read_only=True) as con:
        rejects = con.execute(
            "SELECT source, row_number, column_name, rule, value FROM rejected_rows WHERE run_id = ? "
            "ORDER BY row_number, column_name",
            [summary["run_id"]],
        ).df()
        status, rows_rejected = con.execute(
            "SELECT status, rows_rejected FROM runs WHERE run_id = ?", [summary["run_id"]]
        ).fetchone()
    assert (
        status == "success" and rows_rejected == rejects["row_number"].nunique() == summary["rows_rejected"]
    )
    assert (rejects["source"] == str(path)).all()
    # The console and the report say why, most common rule first, with an example each.
    per_rule = rejects.groupby(["rule", "column_name"])["row_number"].nunique()
    reasons = summary["reject_reasons"]
    assert len(reasons) == min(3, len(per_rule)) + (len(per_rule) > 3)
    for reason in reasons[:3]:
        assert any(
            reason.startswith(f"{rule} on ") and f": {n:,} row" in reason and "(e.g. row " in reason
            for (rule, _), n in per_rule.items()
        ), reason
    if reasons:
        assert f": {per_rule.max():,} row" in reasons[0]
    html = Path(summary["report"]).read_text()
    assert ("Why rows were rejected" in html) is bool(reasons)
    return summary, rejects


def cells(rejects: pd.DataFrame) -> set[tuple[int, str, str]]:
    return set(zip(rejects["row_number"], rejects["column_name"], rejects["rule"], strict=True))


# --- files that cannot be read at all ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["customers", "transactions"])
def test_missing_file(store, tmp_path, kind):
    params = CUSTOMERS if kind == "customers" else TRANSACTIONS
    expect_stop(store, tmp_path / "nowhere.csv", params, "load", r"nowhere\.csv: input file not found$")


@pytest.mark.parametrize("name", ["empty.csv", "empty.csv.gz", "empty.parquet"])
def test_empty_file(store, tmp_path, name):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb"):
            pass
    else:
        path.write_bytes(b"")
    expect_stop(store, path, CUSTOMERS, "load", r"the file is empty", r"expected a header line and data rows")


@pytest.mark.parametrize("kind", ["customers", "transactions"])
def test_header_only_csv(store, tmp_path, kind):
    frame = customer_rows() if kind == "customers" else transaction_rows()
    path = write_csv(tmp_path / "header.csv", frame.head(0))
    params = CUSTOMERS if kind == "customers" else TRANSACTIONS
    expect_stop(store, path, params, "load", r"no data rows \(the input has only a header line, columns \[")


def test_parquet_without_rows(store, tmp_path):
    path = write_parquet(tmp_path / "none.parquet", customer_rows().head(0))
    expect_stop(store, path, CUSTOMERS, "load", r"no data rows \(the input has no rows")


def test_file_that_is_not_parquet(store, tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("id,x,y\nk1,1,2\n")
    expect_stop(store, path, CUSTOMERS, "load", r"fake\.parquet: not a Parquet file \(it looks like text")


def test_an_sqlite_file_as_input_is_named_and_nothing_is_downloaded(store, tmp_path):
    """DuckDB would try to download its SQLite scanner over the network for this file."""
    import sqlite3

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as lite:
        lite.execute("CREATE TABLE customers (id TEXT, x REAL, y REAL)")
    expect_stop(
        store,
        path,
        {**CUSTOMERS, "input_table": "customers"},
        "load",
        r"app\.db: not a DuckDB file \(it looks like an SQLite database\)$",
    )


def test_a_repeated_column_is_refused_naming_both_positions(store, tmp_path):
    frame = transaction_rows()
    path = tmp_path / "twice.csv"
    path.write_text(
        "cid,inv,ts,amt,cid\n"
        + "".join(f"{r.cid},{r.inv},{r.ts},{r.amt},x{i}\n" for i, r in enumerate(frame.itertuples()))
    )
    expect_stop(
        store,
        path,
        TRANSACTIONS,
        "load",
        r"twice\.csv: column 'cid' \(for customer_id\) appears 2 times, as columns 1, 5",
    )


@pytest.mark.parametrize(
    "kind, drop, expected",
    [
        ("customers", "y", r"column 'y' \(for y\) not found; the input has columns \['id', 'x'\]"),
        (
            "transactions",
            "ts",
            r"column 'ts' \(for timestamp\) not found; the input has columns \['cid', 'inv', 'amt'\]",
        ),
    ],
)
def test_required_column_missing(store, tmp_path, kind, drop, expected):
    frame = customer_rows() if kind == "customers" else transaction_rows()
    path = write_csv(tmp_path / "cols.csv", frame.drop(columns=drop))
    params = CUSTOMERS if kind == "customers" else TRANSACTIONS
    expect_stop(store, path, params, "load", expected, r"\[input\.columns\]")


# --- rows that are rejected while the run goes on ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_text_in_a_numeric_column(store, tmp_path, fmt):
    frame = customer_rows().astype({"x": object})
    frame.loc[4, "x"] = "12,5 EUR"
    path = (write_csv if fmt == "csv" else write_parquet)(tmp_path / f"text.{fmt}", frame)
    summary, rejects = expect_rejects(store, path, CUSTOMERS)
    assert cells(rejects) == {(5, "x", "coerce_dtype('float64')")} and rejects["value"].tolist() == [
        "12,5 EUR"
    ]
    assert summary["customers"] == 59


def test_text_in_a_transaction_amount(store, tmp_path):
    frame = transaction_rows().astype({"amt": object})
    frame.loc[2, "amt"] = "twelve"
    summary, rejects = expect_rejects(store, write_csv(tmp_path / "t.csv", frame), TRANSACTIONS)
    assert cells(rejects) == {(3, "amt", "coerce_dtype('float64')")}


def _nan_inf_and_blank_file(tmp_path: Path, fmt: str) -> Path:
    frame = customer_rows(n=100)
    frame.loc[[1, 2, 3, 4], "x"] = [np.nan, np.inf, -np.inf, np.nan]
    frame.loc[5, "y"] = np.nan
    if fmt == "csv":
        path = tmp_path / "nan.csv"
        text = write_csv(path, frame).read_text()
        # pandas writes NaN as an empty field: make one of them a literal NaN, one a blank with spaces
        lines = text.splitlines()
        lines[2] = lines[2].replace("k1,,", "k1,NaN,")
        lines[5] = lines[5].replace("k4,,", "k4,  ,")
        path.write_text("\n".join(lines) + "\n")
        return path
    return write_parquet(tmp_path / "nan.parquet", frame)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_infinities_are_rejected_and_blank_features_segmented(store, tmp_path, fmt):
    """features.missing = "model" (the default): a blank or NaN feature is missing, not wrong."""
    path = _nan_inf_and_blank_file(tmp_path, fmt)
    summary, rejects = expect_rejects(store, path, {**CUSTOMERS, "max_reject_share": 0.1})
    # The CSV's field of spaces (k4) is blank, as Parquet's null is.
    assert cells(rejects) == {(3, "x", "finite"), (4, "x", "finite")}
    assert summary["customers"] == 100 - len(cells(rejects))
    assert summary["customers_with_gaps"] == 3
    with duckdb.connect(str(store.db), read_only=True) as con:
        gaps = con.execute(
            "SELECT customer_id FROM assignments WHERE run_id = ? AND missing_features = 1 "
            "ORDER BY customer_id",
            [summary["run_id"]],
        ).fetchall()
    assert [g[0] for g in gaps] == ["k1", "k4", "k5"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_nan_inf_and_blank_values_are_rejected_when_missing_is_reject(store, tmp_path, fmt):
    path = _nan_inf_and_blank_file(tmp_path, fmt)
    config = tmp_path / "reject.toml"
    config.write_text('[features]\nmissing = "reject"\n')
    summary, rejects = expect_rejects(
        store, path, {**CUSTOMERS, "max_reject_share": 0.1, "config_path": str(config)}
    )
    assert cells(rejects) == {
        (2, "x", "not_nullable"),
        (3, "x", "finite"),
        (4, "x", "finite"),
        (5, "x", "not_nullable"),  # CSV: a field of spaces is blank too
        (6, "y", "not_nullable"),
    }
    assert summary["rows_loaded"] == 100 and summary["customers"] == 95


def test_nan_inf_and_blank_transaction_amounts(store, tmp_path):
    frame = transaction_rows().astype({"amt": object})
    frame.loc[[0, 1, 2, 4], "amt"] = ["NaN", "inf", "", "   "]
    frame.loc[3, "ts"] = ""
    summary, rejects = expect_rejects(
        store, write_csv(tmp_path / "t.csv", frame), {**TRANSACTIONS, "max_reject_share": 0.1}
    )
    assert cells(rejects) == {
        (1, "amt", "not_nullable"),
        (2, "amt", "finite"),
        (3, "amt", "not_nullable"),
        (4, "ts", "not_nullable"),
        (5, "amt", "not_nullable"),  # a field of spaces is blank, not "not a number"
    }


def test_negative_zero_and_absurd_amounts(store, tmp_path):
    frame = transaction_rows().astype({"amt": object})
    n = len(frame)
    frame.loc[0, "amt"] = "1e300"  # absurd: rejected
    frame.loc[1, "amt"] = "-1e300"  # absurd: rejected
    frame.loc[2, "amt"] = "2e12"  # above the 1e12 bound: rejected
    frame.loc[3, "amt"] = "0"  # a free line: kept, still a purchase
    frame.loc[4, "amt"] = "-15.5"  # a return: kept, lowers net spend (documented data rule)
    summary, rejects = expect_rejects(
        store, write_csv(tmp_path / "amounts.csv", frame), {**TRANSACTIONS, "max_reject_share": 0.1}
    )
    assert cells(rejects) == {
        (1, "amt", "magnitude_at_most(1e12)"),
        (2, "amt", "magnitude_at_most(1e12)"),
        (3, "amt", "magnitude_at_most(1e12)"),
    }
    assert [float(v) for v in rejects["value"]] == [1e300, -1e300, 2e12]
    assert summary["rows_loaded"] == n
    with duckdb.connect(str(store.db), read_only=True) as con:
        excluded = con.execute(
            "SELECT rows_excluded FROM runs WHERE run_id = ?", [summary["run_id"]]
        ).fetchone()[0]
        assert '"cancellation_lines": 1' in excluded
        monetary = con.execute(
            "SELECT max(centre) FROM segment_features WHERE run_id = ? AND feature = 'monetary'",
            [summary["run_id"]],
        ).fetchone()[0]
    assert np.isfinite(monetary) and monetary < 1e6


def test_an_absurd_amount_from_quantity_times_price(store, tmp_path):
    """Each factor passes the 1e12 bound on its own; their product, the line's amount, does not."""
    frame = transaction_rows().drop(columns="amt").assign(qty="2", price="3.5")
    frame.loc[0, ["qty", "price"]] = ["999999999999", "999999999999"]
    columns = {
        "customer_id": "cid",
        "invoice_id": "inv",
        "timestamp": "ts",
        "quantity": "qty",
        "unit_price": "price",
    }
    summary, rejects = expect_rejects(
        store, write_csv(tmp_path / "qp.csv", frame), {"columns": columns, "max_reject_share": 0.1}
    )
    assert cells(rejects) == {(1, "qty x price", "magnitude_at_most(1e12)")}
    assert rejects["value"].tolist() == ["1e+24"]
    with duckdb.connect(str(store.db), read_only=True) as con:
        top = con.execute(
            "SELECT max(centre) FROM segment_features WHERE run_id = ? AND feature = 'monetary'",
            [summary["run_id"]],
        ).fetchone()[0]
    assert top < 1e6


def test_absurd_and_negative_customer_features(store, tmp_path):
    frame = customer_rows(n=100).astype({"x": object})
    frame.loc[0, "x"] = "1e300"
    frame.loc[1, "y"] = -2.0  # y is log1p-transformed below: must be >= 0
    summary, rejects = expect_rejects(
        store,
        write_csv(tmp_path / "c.csv", frame),
        {**CUSTOMERS, "transforms": {"y": "log1p"}},
    )
    assert cells(rejects) == {(1, "x", "magnitude_at_most(1e12)"), (2, "y", "greater_than_or_equal_to(0)")}


def test_future_and_unparsable_dates(store, tmp_path):
    frame = transaction_rows()
    frame.loc[0, "ts"] = "2099-01-01 10:00"  # in the future: rejected, would move the as-of date
    frame.loc[1, "ts"] = "yesterday"
    frame.loc[2, "ts"] = "2011-02-30 10:00"  # no such day
    frame.loc[3, "ts"] = "2011-13-01"
    summary, rejects = expect_rejects(
        store, write_csv(tmp_path / "dates.csv", frame), {**TRANSACTIONS, "max_reject_share": 0.1}
    )
    assert cells(rejects) == {
        (1, "ts", "not_in_future"),
        (2, "ts", "coerce_dtype('datetime64[ns]')"),
        (3, "ts", "coerce_dtype('datetime64[ns]')"),
        (4, "ts", "coerce_dtype('datetime64[ns]')"),
    }
    assert summary["as_of"] < "2012-01-01"  # the day after the last *valid* line


def test_dates_after_an_explicit_as_of_are_left_out_by_the_data_rule(store, tmp_path):
    frame = transaction_rows()
    summary, rejects = expect_rejects(
        store,
        write_csv(tmp_path / "asof.csv", frame),
        {**TRANSACTIONS, "as_of": "2011-07-01"},
    )
    assert rejects.empty and summary["as_of"] == "2011-07-01"
    later = int((pd.to_datetime(frame["ts"]) >= "2011-07-01").sum())
    with duckdb.connect(str(store.db), read_only=True) as con:
        excluded = con.execute(
            "SELECT rows_excluded->>'$.lines_after_as_of' FROM runs WHERE run_id = ?", [summary["run_id"]]
        ).fetchone()[0]
    assert int(excluded) == later > 0


def day_first(frame: pd.DataFrame, order: str = "%d/%m/%Y %H:%M") -> pd.DataFrame:
    return frame.assign(ts=pd.to_datetime(frame["ts"]).dt.strftime(order))


def test_day_first_dates_are_read_as_day_first(store, tmp_path):
    """01/12/2010 is 1 December where the file also holds 13/12/2010: never 12 January."""
    frame = day_first(transaction_rows())
    assert frame["ts"].str.slice(0, 2).astype(int).max() > 12
    summary, rejects = expect_rejects(store, write_csv(tmp_path / "eu.csv", frame), TRANSACTIONS)
    expected = (pd.to_datetime(transaction_rows()["ts"]).max().normalize() + pd.Timedelta(days=1)).date()
    assert rejects.empty and summary["as_of"] == str(expected)
    with duckdb.connect(str(store.db), read_only=True) as con:
        order = con.execute(
            "SELECT parameters->>'$.input.date_order' FROM runs WHERE run_id = ?", [summary["run_id"]]
        ).fetchone()[0]
    assert order == "day_first"


def test_dates_that_do_not_settle_the_order_are_refused(store, tmp_path):
    frame = transaction_rows()
    stamps = pd.to_datetime(frame["ts"])
    frame["ts"] = [f"{min(t.day, 12):02d}/{t.month:02d}/{t.year} 10:00" for t in stamps]  # every field <= 12
    expect_stop(
        store,
        write_csv(tmp_path / "amb.csv", frame),
        TRANSACTIONS,
        "validate",
        r"column 'ts' has dates such as '\d\d/\d\d/2011 10:00' that read as day first or month first",
        r"set input\.date_format, e\.g\. '%d/%m/%Y %H:%M'",
    )


def test_a_column_mixing_day_first_and_month_first_is_refused(store, tmp_path):
    frame = transaction_rows()
    frame.loc[0, "ts"] = "13/01/2011 10:00"
    frame.loc[1, "ts"] = "01/13/2011 10:00"
    frame.loc[2:, "ts"] = pd.to_datetime(frame.loc[2:, "ts"]).dt.strftime("%d/%m/%Y %H:%M")
    expect_stop(
        store,
        write_csv(tmp_path / "mixed.csv", frame),
        TRANSACTIONS,
        "validate",
        r"column 'ts' mixes day-first and month-first dates \(row 1: '13/01/2011 10:00' has a day first, "
        r"row 2: '01/13/2011 10:00' a month first\)",
    )


def test_a_date_format_settles_ambiguous_dates(store, tmp_path):
    frame = transaction_rows()
    stamps = pd.to_datetime(frame["ts"])
    frame["ts"] = [f"{t.month:02d}/{min(t.day, 12):02d}/{t.year} 10:00" for t in stamps]
    config = tmp_path / "us.toml"
    config.write_text('[input]\ndate_format = "%m/%d/%Y %H:%M"\n')
    summary, rejects = expect_rejects(
        store, write_csv(tmp_path / "us.csv", frame), {**TRANSACTIONS, "config_path": str(config)}
    )
    assert rejects.empty and summary["as_of"] > "2011-10-01"
    with duckdb.connect(str(store.db), read_only=True) as con:
        recorded = con.execute(
            "SELECT parameters->>'$.input.date_format' FROM runs WHERE run_id = ?", [summary["run_id"]]
        ).fetchone()[0]
    assert recorded == "%m/%d/%Y %H:%M"


def test_an_as_of_before_every_purchase_or_out_of_range(store, tmp_path):
    path = write_csv(tmp_path / "t.csv", transaction_rows())
    expect_stop(
        store,
        path,
        {**TRANSACTIONS, "as_of": "1900-01-01"},
        "features",
        r"^no purchase falls before the as-of date 1900-01-01 \(the valid lines run from 2011-01-\d\d to "
        r"2011-1\d-\d\d\): choose a later --as-of",
    )
    from flows.config import ConfigError

    before = snapshot(store.db)["max_run"]
    with pytest.raises(ConfigError, match=r"rules\.as_of: 9999-12-31 is out of range: dates from 1678-01-01"):
        _run(store, path, {**TRANSACTIONS, "as_of": "9999-12-31"})
    assert snapshot(store.db)["max_run"] == before  # refused before a run exists


def test_duplicate_customer_ids(store, tmp_path):
    frame = customer_rows()
    frame.loc[10, "id"] = "k3"
    summary, rejects = expect_rejects(store, write_csv(tmp_path / "dup.csv", frame), CUSTOMERS)
    assert cells(rejects) == {(4, "id", "field_uniqueness"), (11, "id", "field_uniqueness")}
    assert summary["customers"] == 58


# --- separators and encodings -------------------------------------------------------------------


@pytest.mark.parametrize("sep", [";", "\t"])
def test_other_separators_are_detected_from_the_header(store, tmp_path, sep):
    frame = customer_rows().astype({"x": object})
    frame.loc[5, "x"] = "bad"  # a reject proves rows are split into the right columns
    summary, rejects = expect_rejects(store, write_csv(tmp_path / "sep.csv", frame, sep=sep), CUSTOMERS)
    assert summary["rows_loaded"] == 60 and cells(rejects) == {(6, "x", "coerce_dtype('float64')")}


def test_rows_with_another_separator_than_the_header(store, tmp_path):
    frame = customer_rows()
    text = "id,x,y\n" + "".join(f"{r.id};{r.x};{r.y}\n" for r in frame.itertuples())
    path = tmp_path / "mixed.csv"
    path.write_text(text)
    expect_stop(
        store,
        path,
        CUSTOMERS,
        "validate",
        r"60 of 60 rows \(100\.0%\) fail validation",
        r"first: row 1, the whole row, rule csv_missing_columns",
        r"value 'k0;",
        r"separator other than the header's",
        r"all are in rejected_rows",
    )
    with duckdb.connect(str(store.db), read_only=True) as con:
        stored = con.execute(
            "SELECT count(*), min(row_number), max(row_number), any_value(column_name) FROM rejected_rows "
            "WHERE run_id = (SELECT max(run_id) FROM runs)"
        ).fetchone()
    assert stored == (60, 1, 60, "(row)")


def test_header_that_splits_into_no_known_column(store, tmp_path):
    path = tmp_path / "spaces.csv"
    path.write_text("id x y\nk1 1 2\nk2 3 4\n")
    expect_stop(
        store,
        path,
        CUSTOMERS,
        "load",
        r"column 'id' \(for customer_id\), 'x' \(for x\), 'y' \(for y\) not found",
        r"the input has columns \['id x y'\]",
        r"read as a single column",
    )


@pytest.mark.parametrize("kind", ["customers", "transactions"])
def test_bytes_that_are_not_utf8_reject_their_row(store, tmp_path, kind):
    frame = customer_rows() if kind == "customers" else transaction_rows()
    params = CUSTOMERS if kind == "customers" else TRANSACTIONS
    path = write_csv(tmp_path / "latin1.csv", frame)
    lines = path.read_bytes().split(b"\n")
    lines[7] = lines[7].replace(b",", "\xe9,".encode("latin-1"), 1)  # data row 7: a Latin-1 'é' in column 1
    path.write_bytes(b"\n".join(lines))
    summary, rejects = expect_rejects(store, path, params)
    assert cells(rejects) == {(7, frame.columns[0], "csv_invalid_encoding")}
    assert summary["rows_loaded"] == len(frame)


def test_a_file_that_is_not_utf8_stops_with_advice(store, tmp_path):
    frame = customer_rows()
    frame["id"] = [f"Müller{i}" for i in range(len(frame))]
    path = tmp_path / "latin1.csv"
    path.write_bytes(frame.to_csv(index=False).encode("latin-1"))
    expect_stop(
        store,
        path,
        CUSTOMERS,
        "validate",
        r"60 of 60 rows",
        r"first: row 1, column 'id', rule csv_invalid_encoding",
        r"the file is not UTF-8: convert it",
    )


@pytest.mark.parametrize("share, fails", [(0.05, True), (0.15, False)])
def test_a_file_that_is_ten_percent_garbage(store, tmp_path, share, fails):
    frame = customer_rows(n=100)
    lines = frame.to_csv(index=False).splitlines()
    garbage = ["#### export interrupted ####", "k??,,,,", "<html><body>502</body></html>", "x", ",,"] * 2
    for i, junk in zip(range(5, 101, 10), garbage, strict=True):  # 10 of 100 data rows
        lines[i] = junk
    path = tmp_path / "garbage.csv"
    path.write_text("\n".join(lines) + "\n")
    params = {**CUSTOMERS, "max_reject_share": share}
    if fails:
        expect_stop(
            store,
            path,
            params,
            "validate",
            r"10 of 100 rows \(10\.0%\) fail validation",
            r"more than the allowed 5\.0% \(rules\.max_reject_share\)",
            r"first: row 5,",
        )
    else:
        summary, rejects = expect_rejects(store, path, params)
        assert sorted(rejects["row_number"].unique()) == list(range(5, 101, 10))
        assert summary["customers"] == 90 and summary["rows_rejected"] == 10


# --- data that cannot be segmented --------------------------------------------------------------


def test_feature_with_zero_variance(store, tmp_path):
    frame = customer_rows().assign(y=4.0)
    expect_stop(
        store,
        write_csv(tmp_path / "flat.csv", frame),
        CUSTOMERS,
        "features",
        r"feature 'y' has the same value \(4\) for every one of the 60 customers",
        r"drop it from features\.columns",
    )


def test_fewer_customers_than_segments_cuts_the_grid(store, tmp_path, caplog):
    frame = customer_rows(n=7)
    summary, _ = expect_rejects(store, write_csv(tmp_path / "seven.csv", frame), {**CUSTOMERS, "k_max": 5})
    assert summary["n_components"] <= 2
    assert "trying at most 2 segments instead of model.k_max = 5" in caplog.text
    with duckdb.connect(str(store.db), read_only=True) as con:
        assert (
            con.execute(
                "SELECT max(n_components) FROM model_candidates WHERE run_id = ?", [summary["run_id"]]
            ).fetchone()[0]
            == 2
        )


def test_fewer_customers_than_k_min(store, tmp_path):
    expect_stop(
        store,
        write_csv(tmp_path / "few.csv", customer_rows(n=5)),
        {**CUSTOMERS, "k_min": 2, "k_max": 4},
        "select",
        r"only 5 customers to segment: with 2 features a segment needs at least 3 customers, "
        r"so model\.k_min = 2 needs 6",
    )


@pytest.mark.parametrize("kind", ["customers", "transactions"])
def test_a_single_customer(store, tmp_path, kind):
    if kind == "customers":
        path, params = write_csv(tmp_path / "one.csv", customer_rows(n=1)), CUSTOMERS
    else:
        path = write_csv(tmp_path / "one.csv", transaction_rows().query("cid == 'c1'"))
        params = TRANSACTIONS
    expect_stop(store, path, params, "features", r"only 1 customer \((k0|c1)\) is left to segment")


# --- the command line: one line without --debug, tracebacks with it -----------------------------


@pytest.mark.parametrize("debug", [False, True])
def test_cli_shows_a_traceback_only_with_debug(store, tmp_path, debug):
    from prefect.settings import PREFECT_API_URL

    path = write_csv(tmp_path / "flat.csv", customer_rows().assign(y=4.0))
    # As if exported from a service's environment: --debug must still show every traceback.
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "SEGMENT_HIDE_TRACEBACKS": "1",
    }
    argv = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "--input",
        str(path),
        "--kind",
        "customers",
        "--column",
        "customer_id=id",
        "--features",
        "x,y",
        "--k-max",
        "2",
        "--n-init",
        "1",
        "--database",
        str(store.db),
        "--reports",
        str(store.reports),
    ] + (["--debug"] if debug else [])
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("segment: error:")]
    assert errors == [
        "segment: error: feature 'y' has the same value (4) for every one of the 60 customers, "
        "so it cannot separate segments; drop it from features.columns"
    ]
    assert ("Traceback (most recent call last)" in done.stderr) is debug
    assert ("in feature_matrix" in done.stderr) is debug  # the error's own frames
    if debug:  # Prefect's log lines keep theirs too, not only the final error
        assert done.stderr.count("Traceback (most recent call last)") >= 2
    else:  # the error is said once: Prefect's own lines about the failure stay off the terminal
        assert (done.stderr + done.stdout).count("has the same value (4)") == 1, done.stderr
    assert "Traceback" not in done.stdout
    _assert_run1_intact(store, snapshot(store.db))
