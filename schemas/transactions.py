"""Pandera model of a transaction log (one row per invoice line), after column mapping."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from schemas.checks import MAGNITUDE_RULE, is_finite, is_not_blank, is_not_in_future, is_within_magnitude


class Transactions(pa.DataFrameModel):
    """One invoice line.

    Rules that are *not* rejects (they are documented data rules applied when features are computed):
    a missing ``customer_id`` (the line cannot be attributed, so it is left out) and cancellations
    (invoice id starting with the cancellation prefix, or a negative quantity or amount: they reduce
    monetary value but do not count as purchases).
    A value that cannot be read (a date that is not a date, a price that is not a number, a negative
    unit price) rejects the row, and so does a value that cannot be true: a quantity, price or amount
    that is not finite or larger in magnitude than 1e12 (``magnitude_at_most(1e12)``), or a timestamp
    more than a day after the moment of validation (``not_in_future``). A zero amount is kept.
    """

    invoice_id: Series[str] = pa.Field(nullable=False, coerce=True)
    customer_id: Series[str] = pa.Field(nullable=True, coerce=True)
    timestamp: Series[pd.Timestamp] = pa.Field(nullable=False, coerce=True)
    quantity: Series[float] | None = pa.Field(nullable=False, coerce=True)
    unit_price: Series[float] | None = pa.Field(nullable=False, coerce=True, ge=0)
    amount: Series[float] | None = pa.Field(nullable=False, coerce=True)

    @pa.check("invoice_id", name="not_blank")
    @classmethod
    def _not_blank(cls, series: Series[str]) -> Series[bool]:
        return is_not_blank(series)

    @pa.check("quantity", "unit_price", "amount", name="finite")
    @classmethod
    def _finite(cls, series: Series[float]) -> Series[bool]:
        return is_finite(series)

    @pa.check("quantity", "unit_price", "amount", name=MAGNITUDE_RULE)
    @classmethod
    def _magnitude(cls, series: Series[float]) -> Series[bool]:
        return is_within_magnitude(series)

    @pa.check("timestamp", name="not_in_future")
    @classmethod
    def _not_in_future(cls, series: Series[pd.Timestamp]) -> Series[bool]:
        return is_not_in_future(series)

    class Config:
        strict = "filter"
