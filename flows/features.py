"""Customer features: RFM from a transaction log in DuckDB SQL, and transforms with stored scaler
parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

import numpy as np
import pandas as pd

from flows.config import TRANSFORMS
from flows.duck import sql_text
from flows.lines import TransactionLines
from flows.matrix_file import BLOCK_ROWS, MatrixFile
from flows.text_file import TextFile
from reports.profiles import to_original_units
from schemas.customers import CustomerRows
from schemas.validation import as_text_array

#: What each count of :func:`rfm_table` means, in words for logs and reports.
RULE_LABELS = {
    "lines_without_customer": "lines without a customer id (left out)",
    "lines_after_as_of": "lines on or after the as-of date (left out)",
    "cancellation_lines": "cancellation/return lines (subtracted from spend, not purchases)",
    "customers_without_purchase": "customers with only cancellations (left out)",
}


#: A feature's most common value is a *spike* when at least this share of the customers (and at
#: least d + 1 of them, enough to pin a full covariance) hold exactly that value.
SPIKE_SHARE = 0.01

#: Customers drawn (seeded, with replacement) to screen a feature for a spike before counting
#: every customer's value (:func:`feature_resolution`).
SPIKE_SCREEN = 1 << 17


class FeatureError(ValueError):
    """Features cannot be built (for example no customer is left after the data rules)."""


@dataclass(frozen=True)
class Scaler:
    """Per-feature transform then standardisation: ``X_model = (transform(X) - mean) / scale``.

    Stored with every run so that a customer can be placed in a segment later exactly as in the run.
    """

    transforms: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray

    def transform(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Map features in original units, shape (n, d), to model space: a new C-ordered array,
        or ``out`` (which may be ``X`` itself, to transform it in place).

        A feature at a time: no temporary the size of ``X`` (issue 12)."""
        X = np.asarray(X, dtype=np.float64)
        if out is None:
            out = np.empty(X.shape, dtype=np.float64)
        elif out.shape != X.shape or out.dtype != np.float64:
            raise ValueError(f"Scaler.transform: out must be float64 of shape {X.shape}")
        for j, name in enumerate(self.transforms):
            column = out[:, j]
            if name == "log1p":
                np.log1p(X[:, j], out=column)
            elif name == "none":
                column[...] = X[:, j]
            else:
                raise ValueError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")
            column -= self.mean[j]
            column /= self.scale[j]
        return out

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        """Map model-space points, shape (n, d), back to original units."""
        return to_original_units(Z, self.mean, self.scale, self.transforms)


@dataclass(frozen=True)
class FeatureMatrix:
    """The customers and their features, ready for the engine.

    Attributes
    ----------
    customer_ids : ndarray or TextFile of shape (n_customers,)
        Text customer ids (numpy text, :data:`schemas.validation.TEXT_DTYPE`), in row order of the
        matrices, which is the order of the ids; in a file read a block at a time with the
        matrix (:meth:`in_file`).
    names, units, transforms : list of str
        Per feature (length d).
    X_original : ndarray or MatrixFile of shape (n_customers, d), or None
        Features in original units; NaN where a customer table left a value blank
        (``features.missing = "model"``). None once a run no longer holds them
        (:meth:`without_original_values`): :meth:`original_rows` maps ``X_model`` back.
    X_model : ndarray or MatrixFile of shape (n_customers, d)
        What the model is fitted on (``scaler.transform(X_original)``, NaN where blank); in a
        file read a block at a time once a run no longer needs it whole (:meth:`in_file`).
    scaler : Scaler
    as_of : date or None
        Reference date of recency (transaction logs only).
    counts : dict
        Rows and customers left out by the data rules, by rule.
    resolution : ndarray of shape (d,)
        Spacing of the recorded values at each feature's spike, in model units (0: no spike, a
        continuous feature); see :func:`feature_resolution`.
    spike_value, spike_share : ndarray of shape (d,)
        Each feature's spike in original units and the share of customers on it (NaN and 0
        without a spike).
    lowest, highest : ndarray of shape (d,)
        The smallest and largest value of each feature in original units (blanks left out).
    """

    customer_ids: np.ndarray | TextFile
    names: list[str]
    units: list[str]
    transforms: list[str]
    X_original: np.ndarray | MatrixFile | None
    X_model: np.ndarray | MatrixFile
    scaler: Scaler
    as_of: date | None = None
    counts: dict[str, int] = field(default_factory=dict)
    resolution: np.ndarray | None = None
    spike_value: np.ndarray | None = None
    spike_share: np.ndarray | None = None
    lowest: np.ndarray | None = None
    highest: np.ndarray | None = None

    def __post_init__(self) -> None:
        d = len(self.names)
        for name, empty in (("resolution", 0.0), ("spike_value", np.nan), ("spike_share", 0.0)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full(d, empty))
        if self.lowest is None or self.highest is None:
            if self.X_original is None:
                raise ValueError("FeatureMatrix: lowest and highest are needed without X_original")
            _, lowest, highest = column_range(self.X_original)
            object.__setattr__(self, "lowest", lowest)
            object.__setattr__(self, "highest", highest)

    @property
    def n_customers(self) -> int:
        return int(self.X_model.shape[0])

    @property
    def missing_counts(self) -> np.ndarray:
        """How many features each customer has blank, shape (n_customers,)."""
        if isinstance(self.X_model, MatrixFile):
            return np.zeros(self.n_customers, dtype=np.int64)  # a file holds complete rows only
        return np.isnan(self.X_model).sum(axis=1)

    @property
    def has_missing(self) -> bool:
        return not isinstance(self.X_model, MatrixFile) and bool(np.isnan(self.X_model).any())

    def in_file(self) -> FeatureMatrix:
        """The same features with ``X_model`` moved to a :class:`~flows.matrix_file.MatrixFile`
        and the ids to a :class:`~flows.text_file.TextFile` (and ``X_original`` dropped): from
        model selection on, a run reads them a block of customers at a time, so it holds neither
        (0.3 and 0.15 GiB at 10^7 x 4; issue 12).
        Customers with blank features stay in memory (EM with blanks needs them together): the
        same object is returned then."""
        if self.has_missing:
            return self
        X_model = self.X_model if isinstance(self.X_model, MatrixFile) else MatrixFile.write(self.X_model)
        ids = self.customer_ids
        return replace(
            self,
            X_original=None,
            X_model=X_model,
            customer_ids=ids if isinstance(ids, TextFile) else TextFile.write(ids),
        )

    @property
    def scratch_folders(self) -> list[str]:
        """The temporary folders of the matrix's and the ids' files (none when held in memory)."""
        folders = []
        if isinstance(self.X_model, MatrixFile):
            folders.append(str(self.X_model.path.parent))
        if isinstance(self.customer_ids, TextFile):
            folders.append(str(self.customer_ids.folder))
        return folders

    def full_data(self):
        """All customers as model selection asks for them (:class:`gmm_engine.FullData`): the
        matrix itself when held, else read from its file a block at a time."""
        from gmm_engine import BlockData, InMemoryData

        if isinstance(self.X_model, MatrixFile):
            return BlockData(self.X_model)
        return InMemoryData(self.X_model)

    def release(self) -> None:
        """Remove the matrices' and the ids' files, if they have some (they cannot be read afterwards)."""
        for matrix in (self.X_model, self.X_original):
            if isinstance(matrix, MatrixFile):
                matrix.remove()
        if isinstance(self.customer_ids, TextFile):
            self.customer_ids.remove()

    @property
    def value_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(lowest, highest): each feature's smallest and largest value in original units."""
        assert self.lowest is not None and self.highest is not None  # __post_init__ fills them in
        return self.lowest, self.highest

    def original_rows(self, index: slice | np.ndarray) -> np.ndarray:
        """The customers ``index`` (a slice or positions) in original units, shape (m, d): from
        ``X_original`` when held, else ``X_model`` mapped back (equal to about 1e-15 relative)."""
        if self.X_original is not None:
            return self.X_original[index]
        return self.scaler.inverse_transform(self.X_model[index])

    def without_original_values(self) -> FeatureMatrix:
        """The same features without ``X_original``: from the model fit on, a run needs the values
        in original units only a block of customers at a time (:meth:`original_rows`), and not
        holding them spares n x d floats (0.3 GiB at 10^7 customers x 4 features; issue 12)."""
        return replace(self, X_original=None)


def default_as_of(transactions: pd.DataFrame | TransactionLines) -> date:
    """The day after the last transaction: recency is then reproducible for a given file."""
    if isinstance(transactions, TransactionLines):
        as_of = transactions.default_as_of()
        if as_of is None:
            raise FeatureError("the transaction log has no valid rows")
        return as_of
    if transactions.empty:
        raise FeatureError("the transaction log has no valid rows")
    return (pd.Timestamp(transactions["timestamp"].max()).normalize() + timedelta(days=1)).date()


def rfm_table(
    transactions: pd.DataFrame | TransactionLines,
    as_of: date,
    cancellation_prefix: str = "C",
    purchase: str = "invoice",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """RFM features per customer, computed in DuckDB SQL (``flows/sql/rfm_lines.sql`` and ``rfm.sql``,
    rules documented there).

    Parameters
    ----------
    transactions : DataFrame or TransactionLines
        Validated lines with ``customer_id``, ``timestamp``, either ``amount`` or ``quantity`` and
        ``unit_price``, and (needed when ``purchase`` is "invoice") ``invoice_id``; or the lines a
        run validated a chunk at a time into DuckDB (:class:`flows.lines.TransactionLines`), read
        there out of core.
    as_of : date
        Recency is counted in days from the last purchase to this date; later lines are left out.
    cancellation_prefix : str
        Invoice ids starting with this mark cancellations ("" to rely on negative amounts only).
    purchase : {"invoice", "day", "line"}
        What frequency counts: distinct invoice ids, distinct days the customer bought, or lines.

    Returns
    -------
    features : DataFrame
        Columns ``customer_id``, ``recency_days``, ``frequency``, ``monetary``; sorted by customer id.
    counts : dict
        ``lines_without_customer``, ``lines_after_as_of``, ``cancellation_lines``,
        ``customers_without_purchase``.
    """
    if isinstance(transactions, TransactionLines):
        return _rfm_in_duckdb(transactions, as_of, cancellation_prefix, purchase)
    if purchase == "invoice" and "invoice_id" not in transactions.columns:
        raise ValueError("rfm_table: purchase='invoice' needs an invoice_id column")
    # A frame's lines take the same way: into DuckDB, numbered in their order.
    lines = TransactionLines()
    try:
        lines.append(transactions.reset_index(drop=True))
        return _rfm_in_duckdb(lines, as_of, cancellation_prefix, purchase)
    finally:
        lines.close()


#: What frequency counts distinct values of, per ``rules.purchase``, over the lines' table.
_PURCHASE_SQL = {
    "invoice": "invoice_id",
    "day": "date_trunc('day', \"timestamp\")",
    "line": "row_number",
}


def _rfm_in_duckdb(
    lines: TransactionLines, as_of: date, cancellation_prefix: str, purchase: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`rfm_table` of lines held in DuckDB, through a view of them."""
    if purchase not in _PURCHASE_SQL:
        raise ValueError(f"rfm_table: purchase must be 'invoice', 'day' or 'line', got {purchase!r}")
    if purchase == "invoice" and len(lines) and not lines.has_invoice:
        raise ValueError("rfm_table: purchase='invoice' needs an invoice_id column")
    con = lines.connection()
    con.execute(
        "CREATE OR REPLACE TEMP VIEW transactions AS SELECT customer_id, invoice_id, "
        f'{_PURCHASE_SQL[purchase]} AS purchase, "timestamp", amount FROM lines'
    )
    # Net spend is summed as DECIMAL in rfm.sql: floating-point partial sums combined in a varying
    # order (threads, or lines in another order) would differ in their last bits from run to run.
    con.execute(sql_text("rfm_lines"))
    params = {"as_of": as_of, "cancellation_prefix": cancellation_prefix}
    features = con.execute(sql_text("rfm"), params).df()
    row = con.execute(sql_text("rfm_exclusions"), params).fetchone()
    names = [d[0] for d in con.description]
    assert row is not None  # an aggregate without GROUP BY returns one row
    counts = {name: int(value or 0) for name, value in zip(names, row, strict=True)}
    features["recency_days"] = features["recency_days"].astype(np.float64)
    features["frequency"] = features["frequency"].astype(np.float64)
    features["monetary"] = features["monetary"].astype(np.float64)
    return features, counts


def apply_transforms(X: np.ndarray, transforms: Sequence[str]) -> np.ndarray:
    """Apply each column's transform ("log1p" or "none") to X of shape (n, d); returns a new float64 array."""
    out = np.array(X, dtype=np.float64, copy=True)
    for j, name in enumerate(transforms):
        if name == "log1p":
            out[:, j] = np.log1p(out[:, j])
        elif name != "none":
            raise ValueError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")
    return out


def fit_scaler(X, transforms: Sequence[str], standardize: bool = True) -> Scaler:
    """Learn the standardisation of the transformed features (population standard deviation).

    A feature that is constant over all customers keeps scale 1 so the division stays defined.
    Blank values (NaN) are left out of each feature's mean and deviation. ``X``: an (n, d) array,
    or anything whose row slices are (a matrix in a file), read a block of rows at a time; the
    mean and the squared deviations from it are summed by block, so one block gives numpy's
    ``mean`` and ``std`` exactly. Rows split over several holders (a cluster's partitions) add
    up their :func:`scaler_sums` and :func:`scaler_squares` into :func:`scaler_from_sums`.
    """
    d = X.shape[1]
    if not standardize:
        # An unknown transform fails here too.
        apply_transforms(np.asarray(X[:1], dtype=np.float64), transforms)
        return Scaler(tuple(transforms), np.zeros(d), np.ones(d))
    count, total = scaler_sums(X, transforms)
    mean = scaler_mean(count, total)
    return scaler_from_sums(transforms, count, mean, scaler_squares(X, transforms, mean))


def scaler_sums(X, transforms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each transformed feature's count of values and their sum (blanks left out), shape (d,)."""
    d = X.shape[1]
    count, total = np.zeros(d, dtype=np.int64), np.zeros(d)
    for column, j in _transformed_columns(X, transforms):
        count[j] += column.size
        total[j] += column.sum()
    return count, total


def scaler_mean(count: np.ndarray, total: np.ndarray) -> np.ndarray:
    """The features' means from :func:`scaler_sums` (NaN: no value)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def scaler_squares(X, transforms: Sequence[str], mean: np.ndarray) -> np.ndarray:
    """Each transformed feature's sum of squared deviations from ``mean``, shape (d,)."""
    squares = np.zeros(X.shape[1])
    for column, j in _transformed_columns(X, transforms):
        column -= mean[j]
        squares[j] += np.multiply(column, column, out=column).sum()
    return squares


def scaler_from_sums(
    transforms: Sequence[str], count: np.ndarray, mean: np.ndarray, squares: np.ndarray
) -> Scaler:
    """The standardisation from the features' counts, means and squared deviations."""
    with np.errstate(invalid="ignore"):
        scale = np.where(count > 0, np.sqrt(squares / np.maximum(count, 1)), np.nan)
    scale = np.where(scale > 0, scale, 1.0)
    return Scaler(tuple(transforms), mean, scale)


def _transformed_columns(X, transforms: Sequence[str]):
    """``(values, j)``: each block's feature ``j`` transformed, blanks left out (a new array)."""
    for block in row_blocks(X):
        for j in range(block.shape[1]):  # a feature at a time: no temporary the size of a block
            column = apply_transforms(block[:, j : j + 1], transforms[j : j + 1])[:, 0]
            yield column[~np.isnan(column)], j


def row_blocks(X, block_rows: int | None = None):
    """``X``'s consecutive blocks of ``block_rows`` rows (default :data:`BLOCK_ROWS`) as float64
    arrays (views of an array, reads of a file)."""
    block_rows = block_rows or BLOCK_ROWS
    for start in range(0, X.shape[0], block_rows):
        yield np.asarray(X[start : start + block_rows], dtype=np.float64)


def column_range(X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each feature's count of values and its smallest and largest value (NaN: blank for every
    customer), blanks left out, read a block of rows at a time."""
    d = X.shape[1]
    observed = np.zeros(d, dtype=np.int64)
    lowest, highest = np.full(d, np.nan), np.full(d, np.nan)
    for block in row_blocks(X):
        columns = block.T.copy()  # a feature per row: reductions along contiguous memory (4x faster)
        blank = np.isnan(columns)
        observed += columns.shape[1] - blank.sum(axis=1)
        if blank.any():  # fmin and fmax: a blank never wins (and they are slower)
            low, high = np.fmin.reduce(columns, axis=1), np.fmax.reduce(columns, axis=1)
        else:
            low, high = columns.min(axis=1), columns.max(axis=1)
        lowest, highest = np.fmin(lowest, low), np.fmax(highest, high)
    return observed, lowest, highest


def check_columns(
    names: Sequence[str], n: int, observed: np.ndarray, lowest: np.ndarray, highest: np.ndarray
) -> None:
    """Refuse a feature blank or constant for all ``n`` customers (:func:`column_range`'s figures).

    Raises
    ------
    FeatureError
        A feature with no value, or with the same value for every customer who has one (zero
        variance: nothing to separate on, and the standardised column would be all zeros).
    """
    blank = np.flatnonzero(observed == 0)
    if blank.size:
        raise FeatureError(
            f"feature {names[int(blank[0])]!r} is blank for every one of the {n:,} customers; "
            f"drop it from features.columns"
        )
    constant = np.flatnonzero(highest - lowest == 0)
    if constant.size:
        j = int(constant[0])
        who = "" if observed[j] == n else " who have it"
        raise FeatureError(
            f"feature {names[j]!r} has the same value ({lowest[j]:g}) for every one of the "
            f"{int(observed[j]):,} "
            f"customers{who}, so it cannot separate segments; drop it from features.columns"
        )


def feature_resolution(
    X,
    scaler: Scaler,
    min_customers: int | None = None,
    *,
    screen: int | None = None,
    totals: Callable[[dict[int, np.ndarray]], dict[int, np.ndarray]] | None = None,
    neighbours: Callable[[dict[int, float]], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How finely each feature is recorded where its customers pile up, in model units.

    Counts, whole days and rounded shares put many customers on exactly one value (frequency = 1
    for one-time buyers). A Gaussian fitted to such a spike has no lower bound on its variance;
    the values only say that those customers lie closer to the spike than to the next recorded
    value. So a feature's *resolution* is the distance from its most common value to the nearest
    other recorded value, after the feature's transform and standardisation (a log1p count at a
    spike at 1: ``(log 3 - log 2) / scale``). The engine then keeps every segment's variance along
    the feature at least ``resolution**2 / 12``, the variance of a value rounded to that grid
    (Sheppard's correction). A feature whose most common value is held by fewer than
    ``min_customers`` customers (default: the larger of d + 1 and 1 % of them) has no spike and
    resolution 0: it is treated as continuous, exactly as without this rule.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Features in original units (equal recorded values are equal floats).
    scaler : Scaler
        The run's transforms and standardisation.
    min_customers : int, optional
    screen : int, optional
        Customers drawn to screen for spikes when there are more (default
        :data:`SPIKE_SCREEN`); otherwise every value is counted.
    totals, neighbours : callable, optional
        :func:`value_totals` and :func:`value_neighbours` over all customers (default: over
        ``X``, a block of rows at a time). Rows held elsewhere (a cluster's partitions,
        :mod:`flows.partition_features`) add up their own; ``X`` then only gives the screen's
        rows (``X[positions]``).

    Returns
    -------
    resolution, spike_value, spike_share : ndarrays of shape (d,)
        Resolution in model units (0 without a spike), the spike in original units (NaN without
        one) and the share of customers on it (0 without one).
    """
    n, d = X.shape
    screen = SPIKE_SCREEN if screen is None else int(screen)
    if min_customers is None:
        min_customers = max(d + 1, int(np.ceil(SPIKE_SHARE * n)))
    resolution = np.zeros(d)
    spike_value = np.full(d, np.nan)
    spike_share = np.zeros(d)
    if n <= screen:
        # Few customers: every value counted, a sort per feature.
        tops = [_top_value(np.asarray(X[:, j], dtype=np.float64)) for j in range(d)]
    else:
        tops = _top_values(X, min_customers, screen, totals or (lambda c: value_totals(X, c)))
    spikes = {j: top for j, top in enumerate(tops) if top is not None and top[1] >= min_customers}
    values = {j: value for j, (value, _) in spikes.items()}
    below, above = (neighbours or (lambda v: value_neighbours(X, v)))(values)
    for j, (value, count) in spikes.items():
        around = np.array([value] + [v for v in (below[j], above[j]) if not np.isnan(v)])
        if around.size < 2:
            continue  # the only recorded value: constant, refused before
        model = (
            apply_transforms(around[:, None], scaler.transforms[j : j + 1])[:, 0] - scaler.mean[j]
        ) / scaler.scale[j]
        resolution[j] = float(np.min(np.abs(model[1:] - model[0])))
        spike_value[j] = float(value)
        spike_share[j] = float(count) / n
    return resolution, spike_value, spike_share


def _top_value(column: np.ndarray) -> tuple[float, int] | None:
    """The most common value of ``column`` (the smallest of equally common ones) and its count."""
    values, counts = np.unique(column[~np.isnan(column)], return_counts=True)
    if not values.size:
        return None
    top = int(np.argmax(counts))
    return float(values[top]), int(counts[top])


def _top_values(
    X, min_customers: int, screen: int, totals_of: Callable[[dict[int, np.ndarray]], dict[int, np.ndarray]]
) -> list[tuple[float, int] | None]:
    """Each feature's most common value and its count (None: no value near ``min_customers``).

    Screening a seeded sample first spares a continuous feature the counting (at 10^7 customers
    a sort per feature took 0.4 GiB of temporaries; issue 12): a value held by min_customers of
    the n customers turns up about (min_customers / n) x ``screen`` times in the sample, and
    values the sample holds at least half that often (at 1 % of customers, 18 standard deviations
    below the mean) are then counted exactly over all customers, a block at a time. The most
    common value is among them unless it is held by fewer than ``min_customers``
    (``totals_of(candidates)``: :func:`value_totals` over all customers)."""
    n, d = X.shape
    rows = np.sort(np.random.default_rng(0).integers(0, n, screen))
    sample = np.asarray(X[rows], dtype=np.float64)
    floor = 0.5 * screen * min_customers / n
    candidates: dict[int, np.ndarray] = {}
    for j in range(d):
        values, counts = np.unique(sample[~np.isnan(sample[:, j]), j], return_counts=True)
        if values.size and counts.max() >= floor:
            candidates[j] = values[counts >= floor]
    del sample
    totals = totals_of(candidates)
    out: list[tuple[float, int] | None] = [None] * d
    for j, values in candidates.items():
        top = int(np.argmax(totals[j]))  # the smallest of equally common values: deterministic
        out[j] = (float(values[top]), int(totals[j][top]))
    return out


def value_totals(X, candidates: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """For features ``j`` of ``candidates``: how many rows of ``X`` hold each of the sorted values
    ``candidates[j]``, read a block of rows at a time."""
    totals = {j: np.zeros(c.size, dtype=np.int64) for j, c in candidates.items()}
    if candidates:
        for block in row_blocks(X):
            for j, values in candidates.items():
                at = np.minimum(np.searchsorted(values, block[:, j]), values.size - 1)
                hit = values[at] == block[:, j]
                totals[j] += np.bincount(at[hit], minlength=values.size)
    return totals


def value_neighbours(X, values: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """For features ``j`` of ``values``: the largest recorded value below ``values[j]`` and the
    smallest above it (NaN: none), read a block of rows at a time."""
    d = X.shape[1]
    below, above = np.full(d, np.nan), np.full(d, np.nan)
    if not values:
        return below, above
    for block in row_blocks(X):
        for j, value in values.items():
            column = block[:, j]
            lower, upper = column[column < value], column[column > value]  # NaN is neither
            if lower.size:
                below[j] = np.fmax(below[j], lower.max())
            if upper.size:
                above[j] = np.fmin(above[j], upper.min())
    return below, above


def build_feature_matrix(
    table: pd.DataFrame,
    names: Sequence[str],
    units: Sequence[str],
    transforms: Sequence[str],
    standardize: bool = True,
    as_of: date | None = None,
    counts: dict[str, int] | None = None,
    resolution: bool = True,
) -> FeatureMatrix:
    """Turn a per-customer table (``customer_id`` + feature columns) into the engine's inputs:
    :func:`feature_matrix` of its ids and feature columns."""
    rows = CustomerRows.from_frame(table, list(names))
    return feature_matrix(
        rows.customer_ids,
        rows.features,
        names,
        units,
        transforms,
        standardize,
        as_of,
        counts,
        resolution,
    )


def feature_matrix(
    ids: np.ndarray,
    X: np.ndarray,
    names: Sequence[str],
    units: Sequence[str],
    transforms: Sequence[str],
    standardize: bool = True,
    as_of: date | None = None,
    counts: dict[str, int] | None = None,
    resolution: bool = True,
    keep_original: bool = True,
) -> FeatureMatrix:
    """The engine's inputs from customer ids and their features in original units.

    Customers are put in order of their id first: the model is then fitted on the same rows in
    the same order however the input was sorted, so the same customers give the same segments.
    ``resolution=False`` treats every feature as continuous (see :func:`feature_resolution`).
    ``keep_original=False`` hands ``X`` over: when it is a writeable float64 array in id order it
    is transformed in place into ``X_model`` and ``X_original`` is None (what a run holds from
    here on, :meth:`FeatureMatrix.without_original_values`, without ever holding both).

    Parameters
    ----------
    ids : ndarray or TextFile of shape (n,)
        Text ids (:data:`schemas.validation.TEXT_DTYPE`, or anything numpy turns into it); a
        :class:`~flows.text_file.TextFile` in order of id comes with ``X`` in a file.
    X : ndarray or MatrixFile of shape (n, d)
        Features in original units, NaN where blank. A :class:`~flows.matrix_file.MatrixFile`
        (rows in order of ``ids``) is read a block of rows at a time, and ``X_model`` is then a
        file too; with ``keep_original=False`` its file is removed once ``X_model`` is written.

    Raises
    ------
    FeatureError
        No customer or a single one, or a feature with the same value for every customer (zero
        variance: nothing to separate on, and the standardised column would be all zeros).
    """
    if not isinstance(ids, TextFile):
        ids = as_text_array(ids)
    n = len(ids)
    if n == 0:
        raise FeatureError("no customer is left to segment after validation and the data rules")
    if n == 1:
        raise FeatureError(
            f"only 1 customer ({ids[0]}) is left to segment after validation and the "
            f"data rules; a segment of {len(names)} feature{'s' if len(names) != 1 else ''} needs at least "
            f"{len(names) + 1} customers"
        )
    in_file = isinstance(X, MatrixFile)
    if not in_file:
        X = np.asarray(X, dtype=np.float64)
    # Rows validated a chunk at a time come in id order (in files: put there by DuckDB's sort).
    if not isinstance(ids, TextFile) and not bool(np.all(ids[1:] >= ids[:-1])):
        if in_file:
            raise ValueError("feature_matrix: a matrix in a file must come in order of customer id")
        order = np.argsort(ids, kind="stable")
        ids, X = ids[order], X[order]
        del order
    observed, lowest, highest = column_range(X)
    check_columns(names, n, observed, lowest, highest)
    scaler = fit_scaler(X, transforms, standardize)
    d = len(names)
    spikes = feature_resolution(X, scaler) if resolution else (np.zeros(d), np.full(d, np.nan), np.zeros(d))
    X_model: np.ndarray | MatrixFile
    X_original: np.ndarray | MatrixFile | None
    if isinstance(X, MatrixFile):
        # The model matrix is written a block at a time beside the values in original units.
        X_model = MatrixFile.from_blocks((scaler.transform(block) for block in row_blocks(X)), X.shape)
        X_original = X if keep_original else None
        if not keep_original:
            X.remove()
    elif keep_original:
        X_original, X_model = X, scaler.transform(X)
    else:
        X_original = None
        X_model = scaler.transform(X, out=X if X.flags.writeable and X.flags.c_contiguous else None)
    return FeatureMatrix(
        customer_ids=ids,
        names=list(names),
        units=list(units),
        transforms=list(transforms),
        X_original=X_original,
        X_model=X_model,
        scaler=scaler,
        as_of=as_of,
        counts=dict(counts or {}),
        resolution=spikes[0],
        spike_value=spikes[1],
        spike_share=spikes[2],
        lowest=lowest,
        highest=highest,
    )
