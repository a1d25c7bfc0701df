"""Pandera model of a customer table: one row per customer with numeric feature columns."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from schemas.checks import MAGNITUDE_RULE, is_finite, is_not_blank, is_within_magnitude
from schemas.validation import REJECT_COLUMNS, WHOLE_ROW


class CustomerTable(pa.DataFrameModel):
    """One customer. The feature columns are chosen in configuration; see :func:`customer_table_schema`."""

    customer_id: Series[str] = pa.Field(nullable=False, unique=True, coerce=True)

    @pa.check("customer_id", name="not_blank")
    @classmethod
    def _not_blank(cls, series: Series[str]) -> pd.Series:
        return is_not_blank(series)

    class Config:
        strict = "filter"


def customer_table_schema(
    features: list[str], transforms: Mapping[str, str], may_be_blank: Collection[str] = ()
) -> pa.DataFrameSchema:
    """The :class:`CustomerTable` schema extended with one numeric column per feature.

    Every feature is a finite number no larger in magnitude than 1e12; a feature that is
    log1p-transformed must also be >= 0. A feature in ``may_be_blank`` may be blank (the value is
    missing: the customer is segmented on their other features); the others may not.
    """
    columns = {}
    for feature in features:
        checks = [pa.Check(is_finite, name="finite"), pa.Check(is_within_magnitude, name=MAGNITUDE_RULE)]
        if transforms.get(feature, "none") == "log1p":
            checks.append(pa.Check.ge(0))
        columns[feature] = pa.Column(
            float, nullable=feature in may_be_blank, coerce=True, checks=checks, name=feature
        )
    return CustomerTable.to_schema().add_columns(columns)


#: Rule name of a customer rejected for having too many blank features.
TOO_MANY_MISSING_RULE = "too_many_missing"


def missing_feature_rejects(
    valid: pd.DataFrame, features: list[str], max_share: float, source: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customers with more than ``max_share`` of their features blank, as reject records.

    Returns the rows that pass and one record per failing row (the whole row, the value saying
    which features are blank).
    """
    blank = valid[list(features)].isna().to_numpy()
    bad = blank.sum(axis=1) > max_share * len(features)
    names = np.asarray(features, dtype=object)
    rejects = pd.DataFrame(
        {
            "source": source,
            "row_number": valid.index[bad].to_numpy(dtype="int64"),
            "column_name": WHOLE_ROW,
            "rule": TOO_MANY_MISSING_RULE,
            "value": pd.Series(
                [f"{int(row.sum())} of {len(features)} blank: {', '.join(names[row])}" for row in blank[bad]],
                dtype=object,
            ),
        },
        columns=REJECT_COLUMNS,
    )
    return valid[~bad], rejects
