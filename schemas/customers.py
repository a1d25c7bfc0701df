"""Pandera model of a customer table: one row per customer with numeric feature columns."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from schemas.checks import (
    MAGNITUDE_RULE,
    NON_NEGATIVE_RULE,
    is_finite,
    is_non_negative,
    is_not_blank,
    is_within_magnitude,
)
from schemas.validation import (
    REJECT_COLUMNS,
    TEXT_DTYPE,
    WHOLE_ROW,
    as_text_array,
    empty_rejects,
    validate_rows,
)


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
    features: list[str],
    transforms: Mapping[str, str],
    may_be_blank: Collection[str] = (),
    unique_ids: bool = True,
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
            checks.append(pa.Check(is_non_negative, name=NON_NEGATIVE_RULE))
        columns[feature] = pa.Column(
            float, nullable=feature in may_be_blank, coerce=True, checks=checks, name=feature
        )
    schema = CustomerTable.to_schema()
    if not unique_ids:
        schema = schema.update_column("customer_id", unique=False)
    return schema.add_columns(columns)


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


#: Rule name of a repeated customer id (Pandera's name for a ``unique`` column's check).
UNIQUE_RULE = "field_uniqueness"


@dataclass(frozen=True)
class CustomerRows:
    """The valid rows of a customer table, held compactly (a run at 10^7 customers holds no Python
    string per customer); from :func:`validate_customer_chunks` in order of customer id.

    Attributes
    ----------
    customer_ids : ndarray of shape (n,), :data:`schemas.validation.TEXT_DTYPE`
    features : ndarray of shape (n, d), float64
        NaN where a feature was left blank (and may be).
    names : list of str
        The feature columns (length d).
    row_numbers : ndarray of shape (n,), int64
        Each row's number in the source.
    """

    customer_ids: np.ndarray
    features: np.ndarray
    names: list[str]
    row_numbers: np.ndarray

    def __len__(self) -> int:
        return int(self.row_numbers.size)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, names: list[str]) -> CustomerRows:
        """Rows from a DataFrame with ``customer_id`` and the ``names`` columns (index: row numbers)."""
        return cls(
            customer_ids=np.asarray(
                frame["customer_id"].astype(str).to_numpy(dtype=object), dtype=TEXT_DTYPE
            ),
            features=frame[list(names)]
            .to_numpy(dtype=np.float64, na_value=np.nan)
            .reshape(len(frame), len(names)),
            names=list(names),
            row_numbers=(
                np.asarray(frame.index, dtype=np.int64)
                if pd.api.types.is_integer_dtype(frame.index)
                else np.arange(1, len(frame) + 1, dtype=np.int64)
            ),
        )

    def to_frame(self) -> pd.DataFrame:
        """The rows as a DataFrame (``customer_id`` as text, the features as float64, indexed by
        row number): for small tables and tests."""
        frame = pd.DataFrame(self.features, columns=self.names, index=pd.Index(self.row_numbers, name="row"))
        frame.insert(
            0, "customer_id", pd.Series(self.customer_ids.astype(object), index=frame.index, dtype="str")
        )
        return frame

    def without_rows(self) -> CustomerRows:
        """No rows, the same columns."""
        return CustomerRows(
            self.customer_ids[:0].copy(),
            self.features[:0].copy(),
            list(self.names),
            self.row_numbers[:0].copy(),
        )


def repeated_ids(ids: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """True for every row whose id (not missing) appears more than once, all repeats included.

    ``order``: a stable argsort of ``ids``, when the caller has it."""
    order = np.argsort(ids, kind="stable") if order is None else order
    ranked = ids[order]
    same = ranked[1:] == ranked[:-1]  # a missing id (NaN) equals nothing
    del ranked
    repeated = np.zeros(ids.size, dtype=bool)
    repeated[order[1:][same]] = True
    repeated[order[:-1][same]] = True
    return repeated


def validate_customer_chunks(
    chunks: Iterable[pd.DataFrame],
    ids: np.ndarray,
    row_numbers: np.ndarray,
    schema: pa.DataFrameSchema,
    features: list[str],
    max_missing_share: float,
    source: str,
    source_columns: Mapping[str, str] | None = None,
) -> tuple[CustomerRows, pd.DataFrame]:
    """Validate a customer table a chunk at a time: the valid rows and reject records of
    validating it whole with :func:`customer_table_schema` and then :func:`missing_feature_rejects`.

    Pandera checks each chunk (``schema`` without the unique-id rule); the ids are checked for
    repeats on the whole table at once, from ``ids``, and every row of a repeated id is rejected,
    as Pandera's rule does. A row rejected for its id is still checked for the other rules, so it
    may get more records than validating the whole table gives (whose second pass skips it).

    The valid rows come out in order of customer id, the order the model is fitted in. Their
    values are written in source order as the chunks come and put in id order at the end a
    feature at a time, so that a caller that releases each chunk once read (see
    ``LoadedInput.chunks(release=True)``) never holds the input and its valid rows whole at once.

    Parameters
    ----------
    chunks : iterable of DataFrame
        The table's rows in source order (index: row numbers), ``customer_id`` plus ``features``.
    ids, row_numbers : ndarray of shape (n_rows,)
        Every row's id (numpy text, :data:`schemas.validation.TEXT_DTYPE`) and source row number,
        in the order of the chunks.
    schema : DataFrameSchema
        :func:`customer_table_schema` with ``unique_ids=False``.
    max_missing_share : float
        See :func:`missing_feature_rejects`.
    source, source_columns
        See :func:`schemas.validation.validate_rows`.

    Returns
    -------
    rows : CustomerRows
        The valid rows, in order of customer id.
    rejects : DataFrame
        One record per failure, sorted by row number and column.
    """
    source_columns = dict(source_columns or {})
    ids = as_text_array(ids)
    n, d = ids.size, len(features)
    order = np.argsort(ids, kind="stable")
    repeated = repeated_ids(ids, order)
    parts = []
    if repeated.any():
        parts.append(
            pd.DataFrame(
                {
                    "source": source,
                    "row_number": row_numbers[repeated].astype(np.int64),
                    "column_name": source_columns.get("customer_id", "customer_id"),
                    "rule": UNIQUE_RULE,
                    "value": pd.Series(ids[repeated].astype(object), dtype=object),
                },
                columns=REJECT_COLUMNS,
            )
        )
    # The valid rows' values are written in source order as the chunks come, so that the pages
    # they fill are committed as fast as the caller releases the chunks it has read; they are
    # put in id order at the end, a feature at a time (no whole-size temporary, issue 12).
    values = np.empty((n, d), dtype=np.float64)
    kept = np.zeros(n, dtype=bool)  # by position among all rows
    m = start = 0
    for chunk in chunks:
        outcome = validate_rows(chunk, schema, source, source_columns)
        parts.append(outcome.rejects)
        valid = outcome.valid
        assert isinstance(valid, pd.DataFrame)  # validate_rows keeps the frame's rows as a frame
        at = start + chunk.index.get_indexer(valid.index)  # positions among all rows
        valid = valid[~repeated[at]]
        valid, missing = missing_feature_rejects(valid, features, max_missing_share, source)
        parts.append(missing)
        at = start + chunk.index.get_indexer(valid.index)
        block = valid[features].to_numpy(dtype=np.float64, na_value=np.nan).reshape(-1, d)
        ascending = np.argsort(at, kind="stable")  # source order, as validation keeps it (made sure)
        values[m : m + at.size] = block[ascending]
        kept[at] = True
        m += at.size
        start += len(chunk)
    in_id_order = order[kept[order]]  # positions of the valid rows among all rows, in id order
    del order
    slot = np.cumsum(kept, dtype=np.int64)
    slot -= 1  # each valid row's place in ``values``
    take = slot[in_id_order]
    del slot, kept
    for j in range(d):
        values[:m, j] = values[:m, j][take]
    del take
    rows = CustomerRows(ids[in_id_order], values[:m], list(features), np.asarray(row_numbers)[in_id_order])
    found = [part for part in parts if len(part)]
    if not found:
        return rows, empty_rejects()
    rejects = pd.concat(found, ignore_index=True).sort_values(
        ["row_number", "column_name"], kind="stable", ignore_index=True
    )
    return rows, rejects
