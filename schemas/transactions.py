"""Pandera model of a transaction log (one row per invoice line), after column mapping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from schemas.checks import (
    MAGNITUDE_RULE,
    MAX_MAGNITUDE,
    is_finite,
    is_not_blank,
    is_not_in_future,
    is_within_magnitude,
)
from schemas.validation import empty_rejects


class Transactions(pa.DataFrameModel):
    """One invoice line (``invoice_id`` is optional: a log without one counts purchase days or lines).

    Rules that are *not* rejects (they are documented data rules applied when features are computed):
    a missing ``customer_id`` (the line cannot be attributed, so it is left out) and cancellations
    (invoice id starting with the cancellation prefix, or a negative quantity or amount: they reduce
    monetary value but do not count as purchases).
    A value that cannot be read (a date that is not a date, a price that is not a number, a negative
    unit price) rejects the row, and so does a value that cannot be true: a quantity, price or amount
    that is not finite or larger in magnitude than 1e12 (``magnitude_at_most(1e12)``), or a timestamp
    more than a day after the moment of validation (``not_in_future``). A zero amount is kept.
    """

    invoice_id: Series[str] | None = pa.Field(nullable=False, coerce=True)
    customer_id: Series[str] = pa.Field(nullable=True, coerce=True)
    timestamp: Series[pd.Timestamp] = pa.Field(nullable=False, coerce=True)
    quantity: Series[float] | None = pa.Field(nullable=False, coerce=True)
    unit_price: Series[float] | None = pa.Field(nullable=False, coerce=True, ge=0)
    amount: Series[float] | None = pa.Field(nullable=False, coerce=True)

    @pa.check("invoice_id", name="not_blank")
    @classmethod
    def _not_blank(cls, series: Series[str]) -> pd.Series:
        return is_not_blank(series)

    @pa.check("quantity", "unit_price", "amount", name="finite")
    @classmethod
    def _finite(cls, series: Series[float]) -> pd.Series:
        return is_finite(series)

    @pa.check("quantity", "unit_price", "amount", name=MAGNITUDE_RULE)
    @classmethod
    def _magnitude(cls, series: Series[float]) -> pd.Series:
        return is_within_magnitude(series)

    @pa.check("timestamp", name="not_in_future")
    @classmethod
    def _not_in_future(cls, series: Series[pd.Timestamp]) -> pd.Series:
        return is_not_in_future(series)

    class Config:
        strict = "filter"


def line_amounts(lines: pd.DataFrame) -> np.ndarray:
    """Each line's amount: ``amount``, or ``quantity`` x ``unit_price`` (float64)."""
    if "amount" in lines.columns:
        return lines["amount"].to_numpy(dtype=np.float64)
    return lines["quantity"].to_numpy(dtype=np.float64) * lines["unit_price"].to_numpy(dtype=np.float64)


def line_amount_rejects(
    valid: pd.DataFrame, source: str, source_columns: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lines whose amount, quantity x unit price, is larger than the magnitude rule allows.

    Each factor may pass on its own (1e12 x 1e12 is 1e24): the amount is what a customer's spend
    adds up, so the rule applies to it too. Returns the lines that pass and one reject record per
    failing line, column ``<quantity> x <unit price>`` under the source's names.
    """
    if "amount" in valid.columns or not {"quantity", "unit_price"} <= set(valid.columns):
        return valid, empty_rejects()
    amount = line_amounts(valid)
    bad = ~(abs(amount) <= MAX_MAGNITUDE)
    name = f"{source_columns.get('quantity', 'quantity')} x {source_columns.get('unit_price', 'unit_price')}"
    rejects = pd.DataFrame(
        {
            "source": source,
            "row_number": valid.index[bad].to_numpy(dtype="int64"),
            "column_name": name,
            "rule": MAGNITUDE_RULE,
            "value": pd.Series([f"{v:g}" for v in amount[bad]], dtype=object),
        },
        columns=["source", "row_number", "column_name", "rule", "value"],
    )
    return valid[~bad], rejects
