"""Pandera model of a customer table: one row per customer with numeric feature columns."""

from __future__ import annotations

from collections.abc import Mapping

import pandera.pandas as pa
from pandera.typing import Series

from schemas.checks import MAGNITUDE_RULE, is_finite, is_not_blank, is_within_magnitude


class CustomerTable(pa.DataFrameModel):
    """One customer. The feature columns are chosen in configuration; see :func:`customer_table_schema`."""

    customer_id: Series[str] = pa.Field(nullable=False, unique=True, coerce=True)

    @pa.check("customer_id", name="not_blank")
    @classmethod
    def _not_blank(cls, series: Series[str]) -> Series[bool]:
        return is_not_blank(series)

    class Config:
        strict = "filter"


def customer_table_schema(features: list[str], transforms: Mapping[str, str]) -> pa.DataFrameSchema:
    """The :class:`CustomerTable` schema extended with one numeric column per feature.

    Every feature is a finite number no larger in magnitude than 1e12; a feature that is log1p-transformed must also be >= 0.
    """
    columns = {}
    for feature in features:
        checks = [pa.Check(is_finite, name="finite"), pa.Check(is_within_magnitude, name=MAGNITUDE_RULE)]
        if transforms.get(feature, "none") == "log1p":
            checks.append(pa.Check.ge(0))
        columns[feature] = pa.Column(float, nullable=False, coerce=True, checks=checks, name=feature)
    return CustomerTable.to_schema().add_columns(columns)
