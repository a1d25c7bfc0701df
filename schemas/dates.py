"""Which way round a text date column is written: day first (01/12/2010 = 1 December, as most of the
world writes it), month first (12/01/2010, as the US does) or year first (2010-12-01).

Read without a rule, ``01/12/2010`` silently becomes 12 January. A day or month above 12 settles
the order for a whole column; a column where no date does (every first and second field at most
12), or where some dates say day first and others month first, is refused with a message naming
the column and the option that settles it (``input.date_format``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: ``d/m/y``, ``m/d/y`` or ``y/m/d`` with ``/``, ``.`` or ``-`` between the fields.
_FIELDS = r"^\s*(\d{1,4})[./-](\d{1,2})[./-](\d{1,4})"


class DateOrderError(ValueError):
    """The order of day and month in a date column cannot be told (or is not the same throughout)."""


@dataclass(frozen=True)
class DateParsing:
    """How a text date column is read.

    Attributes
    ----------
    order : str
        ``day_first``, ``month_first``, ``year_first`` (or no slashed dates at all) or ``format``
        (``input.date_format`` given).
    to_datetime_kwargs : dict
        Passed to ``pandas.to_datetime`` by the schema's coercion.
    """

    order: str
    to_datetime_kwargs: dict

    def record(self) -> dict[str, str]:
        """What ``runs.parameters`` records under ``input``."""
        if self.order == "format":
            return {"date_format": str(self.to_datetime_kwargs["format"])}
        return {"date_order": self.order}


def date_parsing(values: pd.Series, column: str, source: str, date_format: str | None = None) -> DateParsing:
    """Decide how to read the dates in ``values`` (text; its index is the source row numbers).

    Parameters
    ----------
    values : Series of str
    column : str
        The column's name in the source, for messages.
    source : str
        The input, for messages.
    date_format : str, optional
        ``input.date_format`` (a ``strftime`` pattern such as ``%d/%m/%Y %H:%M``): used as given.

    Raises
    ------
    DateOrderError
        Day-first and month-first dates in one column, or only dates that could be either.
    """
    if date_format:
        return DateParsing("format", {"format": date_format})
    return DateEvidence.of(values).parsing(column, source)


@dataclass(frozen=True)
class DateEvidence:
    """What a text date column's values say about their order, gathered a chunk at a time: the
    first date (by row) with two leading fields, the first that can only be day first and the
    first that can only be month first, each as (row number, text). Chunks in source order are
    combined with ``+``; :meth:`parsing` decides as :func:`date_parsing` does on the whole column."""

    slashed: tuple[int, str] | None = None
    day_first: tuple[int, str] | None = None
    month_first: tuple[int, str] | None = None

    @classmethod
    def of(cls, values: pd.Series) -> DateEvidence:
        text = values.dropna().astype(str)
        parts = text.str.extract(_FIELDS)
        slashed = parts[0].notna() & (parts[0].str.len() <= 2)
        if not slashed.any():
            return cls()
        first = parts.loc[slashed, 0].astype(np.int64)
        second = parts.loc[slashed, 1].astype(np.int64)

        def first_of(mask: pd.Series) -> tuple[int, str] | None:
            if not mask.any():
                return None
            row = mask.index[mask.to_numpy()][0]
            return int(row), str(text[row])

        return cls(first_of(slashed[slashed]), first_of(first > 12), first_of(second > 12))

    def __add__(self, later: DateEvidence) -> DateEvidence:
        return DateEvidence(
            self.slashed or later.slashed,
            self.day_first or later.day_first,
            self.month_first or later.month_first,
        )

    def parsing(self, column: str, source: str) -> DateParsing:
        """How to read the column (see :func:`date_parsing`)."""
        if self.slashed is None:
            return DateParsing("year_first", {})
        hint = "set input.date_format, e.g. '%d/%m/%Y %H:%M' (day first) or '%m/%d/%Y %H:%M' (month first)"
        if self.day_first and self.month_first:
            (a, a_text), (b, b_text) = self.day_first, self.month_first
            raise DateOrderError(
                f"{source}: column {column!r} mixes day-first and month-first dates (row {a}: {a_text!r} "
                f"has a day first, row {b}: {b_text!r} a month first); {hint}"
            )
        if self.day_first:
            return DateParsing("day_first", {"dayfirst": True})
        if self.month_first:
            return DateParsing("month_first", {"dayfirst": False})
        example = self.slashed[1]
        raise DateOrderError(
            f"{source}: column {column!r} has dates such as {example!r} that read as day first or month "
            f"first, and no date in it (a day above 12) settles which; {hint}"
        )
