"""Pandera models and lazy validation into reject records (real Pandera, no Prefect)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from schemas import (
    REJECT_COLUMNS,
    Assignments,
    RFMFeatures,
    SchemaFailure,
    Transactions,
    customer_table_schema,
    validate_rows,
)

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
        (2, "Price", "-2.0"),
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
