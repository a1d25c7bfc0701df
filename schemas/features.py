"""Pandera model of the RFM feature table computed from a transaction log."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from schemas.checks import is_finite


class RFMFeatures(pa.DataFrameModel):
    """One customer's recency, frequency and monetary value as of the run's as-of date."""

    customer_id: Series[str] = pa.Field(nullable=False, unique=True)
    recency_days: Series[float] = pa.Field(ge=0, nullable=False, coerce=True)
    frequency: Series[float] = pa.Field(ge=1, nullable=False, coerce=True)
    monetary: Series[float] = pa.Field(ge=0, nullable=False, coerce=True)

    class Config:
        strict = "filter"

    @pa.check("monetary", name="finite")
    @classmethod
    def _finite(cls, series: Series[float]) -> pd.Series:
        return is_finite(series)
