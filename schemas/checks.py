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
