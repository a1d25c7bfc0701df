"""Pandera models and lazy validation into reject records (real Pandera, no Prefect)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.customer_rows import ValidCustomers
from flows.partition_validation import PartRows
from schemas import (
    REJECT_COLUMNS,
    Assignments,
    RFMFeatures,
    SchemaFailure,
    Transactions,
    customer_table_schema,
    validate_rows,
)
from schemas.customers import (
    ChunkChecks,
    check_customer_chunks,
    missing_feature_rejects,
    validate_customer_chunks,
    with_repeated_ids,
)
from schemas.validation import blank_text_as_missing

MAPPING = {
    "invoice_id": "Invoice",
    "customer_id": "Cust",
    "timestamp": "When",
    "quantity": "Qty",
    "unit_price": "Price",
}


def lines(**overrides) -> pd.DataFrame:
    base = {
        "invoice_id": ["1001", "1001", "1002", "C1003", "1004"],
        "customer_id": ["a", "a", None, "b", "c"],
        "timestamp": ["2011-01-01 10:00:00"] * 5,
        "quantity": ["2", "1", "5", "-1", "3"],
        "unit_price": ["1.5", "2.0", "1.0", "2.0", "4.0"],
    }
    base.update(overrides)
    frame = pd.DataFrame(base)
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame


def test_clean_transactions_pass_and_are_coerced():
    outcome = validate_rows(lines(), Transactions, "t.csv", MAPPING)
    assert outcome.rejects.empty
    assert len(outcome.valid) == 5
    assert outcome.valid["quantity"].dtype == np.float64
    assert str(outcome.valid["timestamp"].dtype).startswith("datetime64")
    # A missing customer is a data rule applied later, not a reject.
    assert outcome.valid["customer_id"].isna().sum() == 1


def test_every_failing_cell_becomes_a_reject_with_the_users_column_name():
    frame = lines(
        timestamp=["2011-01-01 10:00:00", "not a date", "2011-01-01 10:00:00", None, "2011-01-01"],
        quantity=["2", "1", "x", "-1", "inf"],
        unit_price=["1.5", "-2", "1.0", "2.0", "4.0"],
    )
    outcome = validate_rows(frame, Transactions, "t.csv", MAPPING)
    got = {(r.row_number, r.column_name, r.value) for r in outcome.rejects.itertuples()}
    assert got == {
        (2, "When", "not a date"),
        (2, "Price", "-2"),  # as the file has it, not as coerced
        (3, "Qty", "x"),
        (4, "When", None),
        (5, "Qty", "inf"),
    }
    assert list(outcome.rejects.columns) == REJECT_COLUMNS
    assert set(outcome.rejects["source"]) == {"t.csv"}
    rules = dict(
        zip(
            zip(outcome.rejects.row_number, outcome.rejects.column_name, strict=True),
            outcome.rejects.rule,
            strict=True,
        )
    )
    assert rules[(2, "Price")] == "greater_than_or_equal_to(0)"
    assert rules[(4, "When")] == "not_nullable"
    assert rules[(5, "Qty")] == "finite"
    assert rules[(3, "Qty")].startswith("coerce_dtype")
    assert list(outcome.valid.index) == [1]
    assert outcome.n_rejected_rows == 4
    assert outcome.reject_share == pytest.approx(0.8)


def test_blank_invoice_is_rejected():
    outcome = validate_rows(lines(invoice_id=["1", " ", "2", "3", "4"]), Transactions, "t.csv", MAPPING)
    assert outcome.rejects[["row_number", "column_name", "rule"]].values.tolist() == [
        [2, "Invoice", "not_blank"]
    ]


def test_customer_table_schema_checks_features_and_duplicate_ids():
    schema = customer_table_schema(["spend", "visits"], {"spend": "log1p"})
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "b", "b", "c", "d"],
            "spend": ["1", "2", "3", "-5", "4"],
            "visits": [1, 2, 3, 4, None],
        },
        index=pd.RangeIndex(1, 6),
    )
    outcome = validate_rows(frame, schema, "c.csv", {"customer_id": "id"})
    got = {(r.row_number, r.column_name, r.rule) for r in outcome.rejects.itertuples()}
    assert (2, "id", "field_uniqueness") in got and (3, "id", "field_uniqueness") in got
    assert (4, "spend", "greater_than_or_equal_to(0)") in got
    assert (5, "visits", "not_nullable") in got
    assert list(outcome.valid.index) == [1]


def test_missing_column_is_a_whole_frame_failure_with_a_clear_message():
    frame = lines().drop(columns=["timestamp"])
    with pytest.raises(SchemaFailure, match=r"t.csv: column 'When'"):
        validate_rows(frame, Transactions, "t.csv", MAPPING)


def test_rfm_features_and_assignments_models_reject_impossible_values():
    rfm = pd.DataFrame(
        {"customer_id": ["a", "b"], "recency_days": [3, -1], "frequency": [1, 0], "monetary": [5.0, 1.0]}
    )
    outcome = validate_rows(rfm, RFMFeatures, "features")
    assert set(outcome.rejects["column_name"]) == {"recency_days", "frequency"}
    assignments = pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "segment_id": [1, 0],
            "probability": [0.5, 1.2],
            "log_density": [-1.0, np.inf],
        }
    )
    outcome = validate_rows(assignments, Assignments, "assignments")
    assert set(outcome.rejects["column_name"]) == {"segment_id", "probability", "log_density"}
    assert outcome.valid["customer_id"].tolist() == ["a"]


_NUMBERS = st.sampled_from(["1", "2.5", "-3", "0", "7"])
_CELLS = st.one_of(_NUMBERS, _NUMBERS, st.sampled_from(["", "  ", "x", "inf", "NaN", "2e13", None]))
_IDS = st.sampled_from(["a", "b", "c", "d", "é", "a ", "", None])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(_IDS, _CELLS, _CELLS), min_size=1, max_size=12),
    chunk=st.integers(min_value=1, max_value=13),
    missing=st.sampled_from(["model", "reject"]),
)
def test_a_customer_table_checked_in_chunks_gives_what_checking_it_whole_gives(rows, chunk, missing):
    """Pandera on chunks plus the whole-table id check agrees with Pandera on the whole table,
    whatever the chunk size: the same valid rows (in order of id), the same rejected rows, and
    every reject record of the whole table. A row can get more records in chunks: the whole
    table's second pass (see validate_rows) skips a row already rejected for its id, so a "NaN"
    cell behind it is only reported in chunks."""
    frame = pd.DataFrame(
        {
            "customer_id": pd.Series([r[0] for r in rows], dtype="str"),
            "spend": pd.Series([r[1] for r in rows], dtype="str"),
            "visits": pd.Series([r[2] for r in rows], dtype="str"),
        },
    )
    frame.index = pd.RangeIndex(1, len(rows) + 1)
    frame = blank_text_as_missing(frame, ["spend", "visits"])
    names, transforms = ["spend", "visits"], {"spend": "log1p"}
    may_be_blank = names if missing == "model" else []
    mapping = {"customer_id": "id", "spend": "Spend"}

    whole = validate_rows(frame, customer_table_schema(names, transforms, may_be_blank), "c.csv", mapping)
    valid, extra = missing_feature_rejects(whole.valid, names, 0.5, "c.csv")
    expected = pd.concat([whole.rejects, extra], ignore_index=True)

    rows_ = ValidCustomers(names)
    rejects = validate_customer_chunks(
        (frame.iloc[i : i + chunk] for i in range(0, len(frame), chunk)),
        rows_,
        customer_table_schema(names, transforms, may_be_blank, unique_ids=False),
        names,
        0.5,
        "c.csv",
        mapping,
    )

    def records(table):
        # Not the value: Pandera reports a cell as given or as coerced, depending on the pass.
        return sorted((int(r.row_number), r.column_name, r.rule) for r in table.itertuples())

    got_records, expected_records = records(rejects), records(expected)
    assert set(expected_records) <= set(got_records)
    assert {r[0] for r in got_records} == {r[0] for r in expected_records}
    got = rows_.to_frame()
    valid = valid.iloc[sorted(range(len(valid)), key=lambda i: valid["customer_id"].iloc[i])]  # id order
    assert got.index.tolist() == valid.index.tolist()
    assert got["customer_id"].tolist() == valid["customer_id"].astype(str).tolist()
    np.testing.assert_array_equal(
        got[names].to_numpy(), valid[names].to_numpy(dtype=np.float64, na_value=np.nan)
    )
    read = rows_.read(in_file=False)
    assert read.customer_ids.tolist() == got["customer_id"].tolist()
    np.testing.assert_array_equal(read.features, got[names].to_numpy())
    rows_.close()

    # As a cluster's workers check it (flows.partition_validation): each chunk a partition of
    # its own, its rows written to Parquet, the repeated ids found across them afterwards.
    folder = Path(tempfile.mkdtemp())
    files, checks = [], []
    for k, i in enumerate(range(0, len(frame), chunk)):
        part = PartRows(folder, f"p{k:05d}", len(names))
        schema = customer_table_schema(names, transforms, may_be_blank, unique_ids=False)
        checks.append(
            check_customer_chunks([frame.iloc[i : i + chunk]], part, schema, names, 0.5, "c.csv", mapping)
        )
        part.close()
        files += part.files
    over = ValidCustomers.over_files(names, files, folder)
    pd.testing.assert_frame_equal(
        with_repeated_ids(ChunkChecks.joined(checks), over, "c.csv", mapping), rejects
    )
    pd.testing.assert_frame_equal(over.to_frame(), got)
    over.close()
    assert not folder.exists()


def test_valid_customer_rows_come_in_id_order_across_chunks():
    frame = pd.DataFrame(
        {"customer_id": pd.Series(["b", "a", "d", "c"], dtype="str"), "x": pd.Series(["1", "2", "x", "4"])}
    )
    frame.index = pd.RangeIndex(1, 5)
    rows = ValidCustomers(["x"])
    rejects = validate_customer_chunks(
        [frame.iloc[:2], frame.iloc[2:]],
        rows,
        customer_table_schema(["x"], {}, unique_ids=False),
        ["x"],
        0.5,
        "c.csv",
    )
    got = rows.to_frame()
    assert got["customer_id"].tolist() == ["a", "b", "c"] and got.index.tolist() == [2, 1, 4]
    for in_file in (False, True):
        read = rows.read(in_file=in_file)
        assert read.customer_ids.tolist() == ["a", "b", "c"]
        assert read.features[:, 0].tolist() == [2.0, 1.0, 4.0]
    assert rejects["row_number"].tolist() == [3]
    assert len(rows) == 3 and len(rows.without_rows()) == 3


def test_every_row_of_a_repeated_id_is_rejected_and_never_a_missing_id():
    ids = ["b", None, "a", "b", None, "c", "b", "a ", ""]
    frame = pd.DataFrame(
        {
            "customer_id": pd.Series(ids, dtype="str"),
            "x": pd.Series(["1", "2", "3", "x", "5", "6", "", "8", "9"]),
        }
    )
    frame.index = pd.RangeIndex(1, len(ids) + 1)
    rows = ValidCustomers(["x"])
    rejects = validate_customer_chunks(
        [frame.iloc[:4], frame.iloc[4:]],
        rows,
        customer_table_schema(["x"], {}, unique_ids=False),
        ["x"],
        0.0,  # every blank feature is too many: row 7 is still rejected for its id alone
        "c.csv",
    )
    numbers, repeated = rows.repeated()
    assert numbers.tolist() == [1, 4, 7] and repeated.tolist() == ["b", "b", "b"]
    by_rule = {rule: sorted(group["row_number"]) for rule, group in rejects.groupby("rule")}
    assert by_rule["field_uniqueness"] == [1, 4, 7]
    assert 7 not in by_rule.get("too_many_missing", [])
    # Rows 2 and 5 have no id, row 9 an empty one: Pandera rejects them, never as repeats.
    assert rows.to_frame()["customer_id"].tolist() == ["a", "a ", "c"]
    rows.close()


def test_partitions_whose_first_rows_have_no_id_are_read_with_the_others():
    """A worker's first part can hold no id at all (every one missing): its Parquet column is
    still text, so that the parts are read together (DuckDB takes the first file's types)."""
    frame = pd.DataFrame(
        {"customer_id": pd.Series([None, None, "b", "a"], dtype="str"), "x": pd.Series(["1", "2", "3", "4"])}
    )
    frame.index = pd.RangeIndex(1, 5)
    schema = customer_table_schema(["x"], {}, unique_ids=False)
    folder = Path(tempfile.mkdtemp())
    files, checks = [], []
    for k in range(2):
        part = PartRows(folder, f"p{k:05d}", 1)
        checks.append(
            check_customer_chunks([frame.iloc[2 * k : 2 * k + 2]], part, schema, ["x"], 0.5, "c.csv")
        )
        part.close()
        files += part.files
    rows = ValidCustomers.over_files(["x"], files, folder)
    rejects = with_repeated_ids(ChunkChecks.joined(checks), rows, "c.csv")
    assert rows.to_frame()["customer_id"].tolist() == ["a", "b"]
    assert rejects["row_number"].tolist() == [1, 2]
    rows.close()
