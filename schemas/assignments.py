"""Pandera model of the per-customer segment assignments written to DuckDB."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from schemas.checks import is_finite


class Assignments(pa.DataFrameModel):
    """One customer's segment, its membership probability and the log-density (outlier score)."""

    customer_id: Series[str] = pa.Field(nullable=False, unique=True)
    segment_id: Series[int] = pa.Field(ge=1, nullable=False)
    probability: Series[float] = pa.Field(ge=0, le=1, nullable=False)
    log_density: Series[float] = pa.Field(nullable=False)

    @pa.check("log_density", name="finite")
    @classmethod
    def _finite(cls, series: Series[float]) -> pd.Series:
        return is_finite(series)
