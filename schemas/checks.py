"""Vectorised element-wise predicates used by the Pandera models' named checks."""

from __future__ import annotations

import numpy as np
import pandas as pd


def is_finite(series: pd.Series) -> pd.Series:
    """True where the value is a finite number (nulls pass: they are the ``nullable`` rule's business)."""
    # Values that are not numbers at all are the coercion rule's business: treat them as null here.
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return pd.Series(np.isfinite(values) | np.isnan(values), index=series.index)


def is_not_blank(series: pd.Series) -> pd.Series:
    """True where text is not empty or only spaces."""
    return series.astype(str).str.strip().str.len() > 0


#: Largest magnitude accepted for an amount, price, quantity or feature value. Anything larger is a
#: data error (an overflowed export, a misplaced exponent), and values near 1e300 would overflow to
#: inf in sums and squares.
MAX_MAGNITUDE = 1e12

#: Name of the rule a value above :data:`MAX_MAGNITUDE` fails (as written into ``rejected_rows``).
MAGNITUDE_RULE = "magnitude_at_most(1e12)"


def is_within_magnitude(series: pd.Series) -> pd.Series:
    """True where ``|value| <= MAX_MAGNITUDE`` (nulls, non-numbers and inf are other rules' business)."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        ok = ~(np.abs(values) > MAX_MAGNITUDE) | ~np.isfinite(values)
    return pd.Series(ok, index=series.index)


#: Name of the rule a negative log1p-transformed feature fails (Pandera's name for ``Check.ge(0)``).
NON_NEGATIVE_RULE = "greater_than_or_equal_to(0)"


def is_non_negative(series: pd.Series) -> pd.Series:
    """True where the value is >= 0 (nulls and non-numbers are other rules' business).

    Unlike ``Check.ge(0)`` it never compares text: when every value of a column fails coercion,
    Pandera runs the checks on the text, and ``>=`` on text would fail the whole column."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        return pd.Series(~(values < 0), index=series.index)


def is_not_in_future(series: pd.Series) -> pd.Series:
    """True where a timestamp is not later than one day after now (nulls pass).

    The day of slack covers time-zone offsets between the data's local times and the clock; a
    later timestamp is a data error (a typo'd year, day and month swapped) that would otherwise
    move the default as-of date and every customer's recency.
    """
    stamps = pd.to_datetime(series, errors="coerce")
    now = pd.Timestamp.now(tz="UTC")
    if getattr(stamps.dt, "tz", None) is None:
        now = now.tz_localize(None)
    limit = now + pd.Timedelta(days=1)
    return (stamps <= limit) | stamps.isna()
