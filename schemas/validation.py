"""Lazy Pandera validation that splits a frame into valid rows and reject records (from failure_cases)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pandera.pandas as pa

#: Text held compactly: numpy's variable-width strings keep up to 15 bytes of text inline in 16
#: bytes a value, where a Python str object takes about 60 (10^7 customer ids: 153 MiB instead of
#: about 700, issue 12). A missing value is NaN, which sorts last and equals nothing.
TEXT_DTYPE = np.dtypes.StringDType(na_object=np.nan)


def as_text_array(values) -> np.ndarray:
    """``values`` as a :data:`TEXT_DTYPE` array, without a copy when they are one already.

    ``np.asarray(a, dtype=TEXT_DTYPE)`` copies an array whose dtype is an equal but distinct
    StringDType instance (each read or concatenation may make one): 0.35 GiB for 10^7 ids."""
    if isinstance(values, np.ndarray) and values.dtype == TEXT_DTYPE:
        return values
    return np.asarray(values, dtype=TEXT_DTYPE)


#: Columns of a reject record, as stored in the ``rejected_rows`` table (plus ``run_id`` there).
REJECT_COLUMNS = ["source", "row_number", "column_name", "rule", "value"]
#: ``column_name`` of a reject that concerns the whole row (a reader reject: too many fields...).
WHOLE_ROW = "(row)"


class SchemaFailure(ValueError):
    """The data fails its schema as a whole (not row by row), e.g. a column of the wrong kind."""


class HeldRows(Protocol):
    """Valid rows held outside a DataFrame by a layer above this one (a run's transaction lines
    in DuckDB): they can be counted and released."""

    def __len__(self) -> int: ...

    def without_rows(self) -> HeldRows: ...


@dataclass(frozen=True)
class ValidationOutcome:
    """Result of :func:`validate_rows`.

    Attributes
    ----------
    valid : DataFrame or HeldRows
        The rows that pass, coerced to the schema's types (index: source row numbers); a run's
        customer table and transaction lines as ``flows.customer_rows.ValidCustomers`` and
        ``flows.lines.TransactionLines`` (held in DuckDB).
    rejects : DataFrame
        One record per failed (row, column, rule): columns :data:`REJECT_COLUMNS`.
    n_rows : int
        Rows given.
    read_as : dict
        How ambiguous text was read, for the run's record (e.g. ``{"date_order": "day_first"}``).
    """

    valid: pd.DataFrame | HeldRows
    rejects: pd.DataFrame
    n_rows: int
    read_as: dict = field(default_factory=dict)

    def without_rows(self) -> ValidationOutcome:
        """The same outcome with ``valid`` emptied (its columns and types kept): what a run keeps
        once the features are computed (counts, rejects and ``read_as`` are unchanged)."""
        if not isinstance(self.valid, pd.DataFrame):
            return replace(self, valid=self.valid.without_rows())
        # head(0) alone would be a view that keeps the full columns alive.
        return replace(self, valid=self.valid.head(0).copy())

    @property
    def n_rejected_rows(self) -> int:
        """Distinct rows with at least one failure."""
        return rejected_row_count(self.rejects)

    @property
    def reject_share(self) -> float:
        """Share of the given rows that were rejected (0 for an empty input)."""
        return self.n_rejected_rows / self.n_rows if self.n_rows else 0.0

    @cached_property
    def reject_reasons(self) -> list[str]:
        """:func:`reject_reasons` of the rejects, computed once for the console, report and artifact."""
        return reject_reasons(self.rejects)


def rejected_row_count(rejects: pd.DataFrame) -> int:
    """Distinct rows among reject records: ``(source, row_number)`` pairs, since a partitioned
    input numbers its rows within each file."""
    if not len(rejects):
        return 0
    return len(rejects[["source", "row_number"]].drop_duplicates())


def reject_reasons(rejects: pd.DataFrame, top: int = 3) -> list[str]:
    """Why rows were rejected, most common rule first: one line per (rule, column) with its count and
    the first example, e.g. ``not_in_future on 'InvoiceDate': 12 rows (e.g. row 5, '2031-01-01')``.

    At most ``top`` lines, plus one saying how many other rules there were.
    """
    if rejects is None or len(rejects) == 0:
        return []
    frame = rejects.sort_values(["source", "row_number"], kind="stable")
    several = frame["source"].nunique() > 1  # a partitioned input: say which file
    groups = frame.groupby(["rule", "column_name"], sort=False)
    # Rows are told apart by source too: a partitioned input numbers rows within each file.
    counts = (
        frame.drop_duplicates(["rule", "column_name", "source", "row_number"])
        .groupby(["rule", "column_name"], sort=False)
        .size()
        .sort_values(ascending=False, kind="stable")
    )
    first = groups.first()
    lines = []
    for rule, column in counts.index[:top]:
        example = first.loc[(rule, column)]
        where = "whole row" if column == WHOLE_ROW else f"{column!r}"
        value = "" if pd.isna(example["value"]) else f", {str(example['value'])[:40]!r}"
        n = int(counts.loc[(rule, column)])
        of_file = f" of {Path(str(example['source'])).name}" if several else ""
        lines.append(
            f"{rule} on {where}: {n:,} row{'s' if n != 1 else ''} "
            f"(e.g. row {int(example['row_number'])}{of_file}{value})"
        )
    if len(counts) > top:
        lines.append(
            f"{len(counts) - top} more rule{'s' if len(counts) - top != 1 else ''} (table rejected_rows)"
        )
    return lines


def validate_rows(
    frame: pd.DataFrame,
    schema: pa.DataFrameSchema | type[pa.DataFrameModel],
    source: str,
    source_columns: Mapping[str, str] | None = None,
) -> ValidationOutcome:
    """Validate ``frame`` lazily; return the valid rows and one reject record per failure.

    Pandera's ``failure_cases`` is the raw material: each case with a row index becomes a reject
    naming the source, the row number (the frame's index), the column under its name in the source,
    the rule (Pandera's check name) and the offending value as text.

    Parameters
    ----------
    frame : DataFrame
        Rows to check; its index holds the source row numbers.
    schema : DataFrameSchema or DataFrameModel class
    source : str
        Name of the input, written into every reject record.
    source_columns : mapping, optional
        Column name in ``frame`` -> column name in the source, so rejects use the user's names.

    Raises
    ------
    SchemaFailure
        When a failure concerns a whole column (e.g. it is missing or its type cannot be used).
    """
    if isinstance(schema, type):
        schema = schema.to_schema()
    source_columns = dict(source_columns or {})
    parts: list[pd.DataFrame] = []
    kept = frame
    # When a column's coercion fails for some cells, Pandera checks that column's other rules on the
    # uncoerced values, so a cell such as the text "NaN" (coerces to NaN, then fails not_nullable)
    # only shows up once the failed cells are gone: validate again on the kept rows until clean.
    for attempt in range(_MAX_PASSES):
        try:
            valid = schema.validate(kept, lazy=True)
            break
        except pa.errors.SchemaErrors as exc:
            cases = exc.failure_cases
        rejects = _row_rejects(cases, source, source_columns, after_rejects=attempt > 0, given=frame)
        if rejects.empty:
            raise SchemaFailure(f"{source}: validation failed without naming a row or column")
        parts.append(rejects)
        kept = kept.drop(index=np.unique(rejects["row_number"].to_numpy()).tolist())
    else:
        raise SchemaFailure(f"{source}: rows still fail validation after {_MAX_PASSES} passes")
    if not parts:
        return ValidationOutcome(valid=valid, rejects=empty_rejects(), n_rows=len(frame))
    rejects = pd.concat(parts, ignore_index=True).sort_values(
        ["row_number", "column_name"], kind="stable", ignore_index=True
    )
    return ValidationOutcome(valid=valid, rejects=rejects, n_rows=len(frame))


#: Validation passes before giving up (each removes the rows the previous one found; 2 are typical).
_MAX_PASSES = 4


def _row_rejects(
    cases: pd.DataFrame,
    source: str,
    source_columns: Mapping[str, str],
    after_rejects: bool,
    given: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Reject records from Pandera's failure_cases; SchemaFailure for a whole-column failure.

    The value is the cell as ``given`` holds it (the text of a CSV file, not the number Pandera
    coerced it to): Pandera reports a cell coerced or not depending on whether another cell of the
    column failed coercion in the same pass, which would make the record depend on its neighbours."""
    row_cases = cases[cases["index"].notna()]
    frame_cases = cases[cases["index"].isna()]
    # A failed coercion is also reported as a dtype failure of the same cell; keep only the first.
    frame_cases = frame_cases[~frame_cases["check"].astype(str).str.startswith("dtype(")]
    if len(frame_cases):
        first = frame_cases.iloc[0]
        # For frame-wide checks (e.g. column_in_dataframe) Pandera puts the column in failure_case.
        name = first["failure_case"] if first["schema_context"] == "DataFrameSchema" else first["column"]
        column = source_columns.get(name, name)
        when = " after removing rejected rows" if after_rejects else " (whole column)"
        raise SchemaFailure(f"{source}: column {column!r} fails rule {first['check']}{when}")
    is_coerce = row_cases["check"].astype(str).str.startswith("coerce_dtype")
    coerce_cells = set(
        zip(row_cases.loc[is_coerce, "index"], row_cases.loc[is_coerce, "column"], strict=True)
    )
    is_dtype_echo = row_cases["check"].astype(str).str.startswith("dtype(") & pd.Series(
        [(i, c) in coerce_cells for i, c in zip(row_cases["index"], row_cases["column"], strict=True)],
        index=row_cases.index,
        dtype=bool,
    )
    row_cases = row_cases[~is_dtype_echo]
    # object dtype keeps None for a missing value (a str column would turn it into NaN)
    values = pd.Series([_as_text(v) for v in row_cases["failure_case"]], dtype=object, index=row_cases.index)
    if given is not None and given.index.is_unique:
        for column, cells in row_cases.groupby("column", sort=False):
            if column in given.columns:
                found = given[column].reindex(cells["index"].to_numpy())
                values.loc[cells.index] = [_as_text(v) for v in found]
    return pd.DataFrame(
        {
            "source": source,
            "row_number": row_cases["index"].astype("int64").to_numpy(),
            "column_name": [source_columns.get(c, c) for c in row_cases["column"]],
            "rule": row_cases["check"].astype(str).to_numpy(),
            "value": values,
        },
        columns=REJECT_COLUMNS,
    )


def _as_text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def empty_rejects() -> pd.DataFrame:
    """A reject table with no rows (the ``rejected_rows`` columns, without ``run_id``)."""
    return pd.DataFrame(
        {
            "source": pd.Series(dtype=object),
            "row_number": pd.Series(dtype="int64"),
            "column_name": pd.Series(dtype=object),
            "rule": pd.Series(dtype=object),
            "value": pd.Series(dtype=object),
        }
    )


def blank_text_as_missing(frame: pd.DataFrame, columns: Collection[str]) -> pd.DataFrame:
    """``frame`` with numeric cells that hold only spaces made missing, as an empty cell is.

    A CSV export often pads a blank field (``"id,x\\nb,  "``); pandera coerces before it checks,
    so without this the cell would be rejected as "not a number" instead of counting as blank (a
    customer table's ``features.missing`` then models it, or the ``nullable`` rule rejects it).
    Numeric columns and tables without such cells are returned as they are.
    """
    cleaned = None
    for name in columns:
        column = frame.get(name)
        if column is None or not (
            pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)
        ):
            continue
        blank = column.astype("string").str.strip().eq("").fillna(False).to_numpy(dtype=bool)
        if blank.any():
            cleaned = frame.copy() if cleaned is None else cleaned
            cleaned[name] = column.mask(blank)
    return frame if cleaned is None else cleaned
