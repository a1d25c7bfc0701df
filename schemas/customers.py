"""Pandera model of a customer table: one row per customer with numeric feature columns."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

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
    """Customers' ids and features held compactly (a run at 10^7 customers holds no Python string
    per customer), in order of customer id.

    Attributes
    ----------
    customer_ids : array of shape (n,), :data:`schemas.validation.TEXT_DTYPE`
        An ndarray, or anything whose slices are (texts in a file, read a block at a time).
    features : array of shape (n, d), float64
        NaN where a feature was left blank (and may be). An ndarray, or anything whose row slices
        are (a matrix in a file, read a block at a time).
    names : list of str
        The feature columns (length d).
    """

    customer_ids: Any
    features: Any
    names: list[str]

    def __len__(self) -> int:
        return len(self.customer_ids)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, names: list[str]) -> CustomerRows:
        """Rows from a DataFrame with ``customer_id`` and the ``names`` columns."""
        return cls(
            customer_ids=np.asarray(
                frame["customer_id"].astype(str).to_numpy(dtype=object), dtype=TEXT_DTYPE
            ),
            features=frame[list(names)]
            .to_numpy(dtype=np.float64, na_value=np.nan)
            .reshape(len(frame), len(names)),
            names=list(names),
        )


class CustomerRowSink(Protocol):
    """Where :func:`validate_customer_chunks` puts a customer table's rows as it validates them
    (a run keeps them in DuckDB: ``flows.customer_rows.ValidCustomers``)."""

    def add(self, row_numbers: np.ndarray, ids: np.ndarray, valid: np.ndarray, values: np.ndarray) -> None:
        """One chunk: every row's source number and id (text, NaN where missing), which rows are
        valid (a mask), and the valid rows' features, shape (valid.sum(), d)."""
        ...

    def repeated(self) -> tuple[np.ndarray, np.ndarray]:
        """The source numbers and ids of every row added whose id (not missing) was added more
        than once, all repeats included, in order of row number."""
        ...


@dataclass(frozen=True)
class ChunkChecks:
    """What :func:`check_customer_chunks` found in some chunks of a customer table: the reject
    records of Pandera's rules (``rejects``) and of too many blank features (``missing``)."""

    rejects: pd.DataFrame
    missing: pd.DataFrame

    @classmethod
    def joined(cls, checks: Iterable[ChunkChecks]) -> ChunkChecks:
        """Several parts' records together (a partitioned table's, checked part by part)."""
        found = list(checks)

        def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
            frames = [f for f in frames if len(f)]
            return pd.concat(frames, ignore_index=True) if frames else empty_rejects()

        return cls(concat([c.rejects for c in found]), concat([c.missing for c in found]))


def check_customer_chunks(
    chunks: Iterable[pd.DataFrame],
    rows: CustomerRowSink,
    schema: pa.DataFrameSchema,
    features: list[str],
    max_missing_share: float,
    source: str,
    source_columns: Mapping[str, str] | None = None,
) -> ChunkChecks:
    """Every rule but the unique id checked a chunk at a time, each chunk's rows handed to
    ``rows`` with whether they passed: the first half of :func:`validate_customer_chunks`, which
    a cluster's workers run on their own partitions (arguments as there)."""
    source_columns = dict(source_columns or {})
    d = len(features)
    parts, missing_parts = [], []
    for chunk in chunks:
        outcome = validate_rows(chunk, schema, source, source_columns)
        parts.append(outcome.rejects)
        valid = outcome.valid
        assert isinstance(valid, pd.DataFrame)  # validate_rows keeps the frame's rows as a frame
        valid, missing = missing_feature_rejects(valid, features, max_missing_share, source)
        missing_parts.append(missing)
        passed = chunk.index.isin(valid.index)
        valid = valid.loc[chunk.index[passed]]  # source order, as the chunk has it (made sure)
        rows.add(
            chunk.index.to_numpy(dtype=np.int64),
            as_text_array(chunk["customer_id"].to_numpy(dtype=object, na_value=np.nan)),
            passed,
            valid[features].to_numpy(dtype=np.float64, na_value=np.nan).reshape(-1, d),
        )
        del chunk, valid
    return ChunkChecks.joined(
        ChunkChecks(rejects, missing) for rejects, missing in zip(parts, missing_parts, strict=True)
    )


def with_repeated_ids(
    checks: ChunkChecks,
    rows: CustomerRowSink,
    source: str,
    source_columns: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The second half of :func:`validate_customer_chunks`: every reject record, those of the
    repeated ids ``rows`` finds added, sorted by row number and column."""
    source_columns = dict(source_columns or {})
    parts, missing = [checks.rejects], checks.missing
    numbers, ids = rows.repeated()
    if numbers.size:
        parts.append(
            pd.DataFrame(
                {
                    "source": source,
                    "row_number": numbers.astype(np.int64),
                    "column_name": source_columns.get("customer_id", "customer_id"),
                    "rule": UNIQUE_RULE,
                    "value": pd.Series(ids.astype(object), dtype=object),
                },
                columns=REJECT_COLUMNS,
            )
        )
        # A repeated id's row is rejected for its id, never for its blank features (the
        # whole-table validation's second pass never sees it).
        missing = missing[~missing["row_number"].isin(numbers)]
    found = [part for part in [*parts, missing] if len(part)]
    if not found:
        return empty_rejects()
    return pd.concat(found, ignore_index=True).sort_values(
        ["row_number", "column_name"], kind="stable", ignore_index=True
    )


def validate_customer_chunks(
    chunks: Iterable[pd.DataFrame],
    rows: CustomerRowSink,
    schema: pa.DataFrameSchema,
    features: list[str],
    max_missing_share: float,
    source: str,
    source_columns: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Validate a customer table a chunk at a time, as validating it whole with
    :func:`customer_table_schema` and then :func:`missing_feature_rejects` would.

    Pandera checks each chunk (``schema`` without the unique-id rule), and every row goes to
    ``rows`` as it comes, with whether it passed; repeated ids are found there once all rows are
    in, and every row of a repeated id is rejected, as Pandera's rule does. A row rejected for its
    id is still checked for the other rules, so it may get more records than validating the whole
    table gives (whose second pass skips it), but never one for too many blank features.
    The valid rows are those ``rows`` holds that are valid and whose id is not repeated.

    Parameters
    ----------
    chunks : iterable of DataFrame
        The table's rows in source order (index: row numbers), ``customer_id`` plus ``features``.
    rows : CustomerRowSink
        Takes every chunk's rows; says which ids are repeated.
    schema : DataFrameSchema
        :func:`customer_table_schema` with ``unique_ids=False``.
    max_missing_share : float
        See :func:`missing_feature_rejects`.
    source, source_columns
        See :func:`schemas.validation.validate_rows`.

    Returns
    -------
    DataFrame
        One reject record per failure, sorted by row number and column.
    """
    checks = check_customer_chunks(chunks, rows, schema, features, max_missing_share, source, source_columns)
    return with_repeated_ids(checks, rows, source, source_columns)
