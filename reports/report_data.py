"""The plain inputs of a run report (ReportData) and the checks that keep figures honest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# TRANSFORMS: the transforms applied before standardisation, the pipeline's own list.
from constants import TRANSFORMS
from gmm_engine import ALL_COVARIANCE_TYPES, CRITERIA

from .profiles import MembershipTotals


@dataclass(frozen=True, eq=False)
class ReportData:
    """Everything a run report shows, as plain values; nothing here refits a model.

    Array arguments are converted to float64 / int64 ndarrays on construction and their shapes
    are checked against each other, so a figure never receives mismatched inputs.

    Parameters
    ----------
    run_id : str
    title : str
        Heading of the report, e.g. ``"Customer segments, run 3 (as of 2011-12-10)"``.
    feature_names, feature_units, feature_transforms : list of str, each of length n_features
        ``feature_transforms[j]`` is ``"log1p"`` or ``"none"`` (applied before standardisation).
    scaler_mean, scaler_scale : ndarray of shape (n_features,)
        ``X_model = (transform(X_original) - scaler_mean) / scaler_scale``.
    value_range : (lowest, highest), ndarrays of shape (n_features,)
        Each feature's smallest and largest value in original units
        (:func:`reports.profiles.value_range` of the customers' values).
    X_model : ndarray of shape (n_customers, n_features), or (n_sampled, n_features)
        The matrix the model was fitted on (NaN where a value is blank), or the rows
        ``sample_rows`` of it (complete rows) when a run does not hold it whole.
    covariance_type : str
        ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"`` (the chosen model's type).
    weights : ndarray of shape (n_segments,)
    means : ndarray of shape (n_segments, n_features)
        Component means in model space.
    covariances : ndarray of shape (n_segments, n_features, n_features)
        Full covariance matrices in model space (tied/diag/spherical expanded by the caller).
    segment_ids : list of int, length n_segments
        Displayed segment id of each component.
    labels : ndarray of shape (n_customers,)
        Component index ``0..n_segments-1`` of each customer.
    max_probability : ndarray of shape (n_customers,)
        Membership probability of the assigned segment.
    totals : reports.profiles.MembershipTotals
        The customers' membership-weighted feature totals per segment
        (:meth:`~reports.profiles.MembershipTotals.of` their membership probabilities): the
        segments' weighted means.
    lower_bounds : list of float
        Mean log-likelihood after every EM iteration of the chosen model.
    selection : list of dict
        Model-selection table rows (engine contract).
    criterion : str
        ``"bic"``, ``"aic"`` or ``"icl"``.
    summary : dict of str to str
        Short facts shown at the top of ``index.html``.
    choice_note : str, default ""
        How the run came to its model, in a sentence or two (kept the previous run's structure,
        switched, chosen afresh; what happened at the edge of the grid). Shown under
        "Model selection".
    sample_rows : ndarray of shape (n_sampled,) or None, default None
        When given, ``X_model`` holds these customers only (positions among ``labels``, a
        seeded sample): the figures of customers' values draw them; counts and profiles are
        every customer's.
    drift : dict or None, default None
        What changed since the previous successful run (``tracking.RunDrift.report_drift()``);
        when given, the report draws the migration heat-map and a "What changed since run N"
        section. Keys: ``previous_run_id``; ``migration`` (list of dicts ``from_segment``,
        ``to_segment``, ``customers``); ``what_changed`` (plain text); ``flags`` (list of str);
        optional ``previous_segment_ids`` (list of int, default: the migration's from_segment
        values) and ``transitions`` (list of dicts ``kind``, ``from_ids``, ``to_ids``, ``share``).
    """

    run_id: str
    title: str
    feature_names: list[str]
    feature_units: list[str]
    feature_transforms: list[str]
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    value_range: tuple[np.ndarray, np.ndarray]
    X_model: np.ndarray
    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    segment_ids: list[int]
    labels: np.ndarray
    max_probability: np.ndarray
    totals: MembershipTotals
    lower_bounds: list[float]
    selection: list[dict[str, Any]] = field(default_factory=list)
    criterion: str = "bic"
    summary: dict[str, str] = field(default_factory=dict)
    choice_note: str = ""
    drift: dict[str, Any] | None = None
    sample_rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("feature_names", [str(v) for v in self.feature_names])
        put("feature_units", [str(v) for v in self.feature_units])
        put("feature_transforms", [str(v) for v in self.feature_transforms])
        put("segment_ids", [int(v) for v in self.segment_ids])
        put("lower_bounds", [float(v) for v in self.lower_bounds])
        put("selection", [dict(row) for row in self.selection])
        put("summary", {str(k): str(v) for k, v in self.summary.items()})
        put("choice_note", str(self.choice_note))
        if self.drift is not None:
            put("drift", _normalise_drift(self.drift))
        for name in (
            "scaler_mean",
            "scaler_scale",
            "X_model",
            "weights",
            "means",
            "covariances",
            "max_probability",
        ):
            put(name, np.asarray(getattr(self, name), dtype=np.float64))
        lowest, highest = self.value_range
        put("value_range", (np.asarray(lowest, dtype=np.float64), np.asarray(highest, dtype=np.float64)))
        if not isinstance(self.totals, MembershipTotals):
            raise TypeError(f"ReportData.totals: expected MembershipTotals, got {type(self.totals).__name__}")
        labels = np.asarray(self.labels)
        if (
            labels.size
            and not np.issubdtype(labels.dtype, np.integer)
            and not np.all(np.equal(np.mod(labels, 1), 0))
        ):
            raise ValueError("ReportData.labels: component indices must be whole numbers")
        put("labels", labels.astype(np.int64, copy=False))
        if self.sample_rows is not None:
            put("sample_rows", np.asarray(self.sample_rows, dtype=np.int64))
        self._check()

    def _check(self) -> None:
        d = len(self.feature_names)
        k = len(self.segment_ids)
        n = int(self.labels.shape[0]) if self.labels.ndim == 1 else -1
        n_rows = n if self.sample_rows is None else int(self.sample_rows.shape[0])

        def fail(what: str, rule: str) -> None:
            raise ValueError(f"ReportData.{what}: {rule}")

        if d < 1:
            fail("feature_names", "at least one feature is required")
        if k < 1:
            fail("segment_ids", "at least one segment is required")
        if len(set(self.segment_ids)) != k:
            fail("segment_ids", f"ids must be unique, got {self.segment_ids}")
        for name in ("feature_units", "feature_transforms"):
            if len(getattr(self, name)) != d:
                got = len(getattr(self, name))
                fail(name, f"expected {d} entries (one per feature), got {got}")
        for j, t in enumerate(self.feature_transforms):
            if t not in TRANSFORMS:
                fail("feature_transforms", f"entry {j} is {t!r}, expected one of {TRANSFORMS}")
        if self.covariance_type not in ALL_COVARIANCE_TYPES:
            fail("covariance_type", f"{self.covariance_type!r} is not one of {ALL_COVARIANCE_TYPES}")
        if self.criterion not in CRITERIA:
            fail("criterion", f"{self.criterion!r} is not one of {CRITERIA}")
        shapes = {
            "scaler_mean": (d,),
            "scaler_scale": (d,),
            "value_range[0]": (d,),
            "value_range[1]": (d,),
            "weights": (k,),
            "means": (k, d),
            "covariances": (k, d, d),
            "labels": (n,),
            "max_probability": (n,),
            "totals.mass": (k, d),
            "totals.first": (k, d),
            "totals.second": (k, d),
        }
        if self.X_model.ndim != 2 or self.X_model.shape != (n_rows, d):
            rows = "n_customers" if self.sample_rows is None else "n_sampled"
            fail("X_model", f"expected shape ({rows} = {n_rows}, {d}), got {self.X_model.shape}")
        if self.sample_rows is not None:
            if self.sample_rows.ndim != 1 or n_rows < 1:
                fail("sample_rows", "expected a non-empty list of positions")
            if self.sample_rows.min() < 0 or self.sample_rows.max() >= n:
                fail("sample_rows", f"positions must lie in 0..{n - 1}")
            if np.isnan(self.X_model).any():
                fail("X_model", "a sample of customers holds complete rows only")
        if n < 1:
            fail("X_model", "at least one customer is required")
        for name, shape in shapes.items():
            got = np.shape(_attribute(self, name))
            if got != shape:
                fail(name, f"expected shape {shape}, got {got}")
        for name in (
            "scaler_mean",
            "scaler_scale",
            "weights",
            "means",
            "covariances",
            "max_probability",
            "totals.mass",
            "totals.first",
            "totals.second",
        ):
            if not _every_block(lambda a: bool(np.isfinite(a).all()), _attribute(self, name)):
                fail(name, "contains NaN or infinite values")
        # NaN in the features is a blank value (customer tables).
        if not _every_block(lambda a: not np.isinf(a).any(), self.X_model):
            fail("X_model", "contains infinite values")
        for name in ("value_range[0]", "value_range[1]"):
            if not np.isfinite(_attribute(self, name)).all():
                fail(name, "contains NaN or infinite values")
        above = np.flatnonzero(self.value_range[0] > self.value_range[1])
        if above.size:
            fail("value_range", f"lowest above highest for feature {self.feature_names[above[0]]!r}")
        if not _every_block(lambda a: not np.isnan(a).all(axis=1).any(), self.X_model):
            fail("X_model", "every customer needs at least one feature that is not blank")
        if np.any(self.scaler_scale <= 0):
            fail("scaler_scale", "every scale must be > 0")
        if np.any(self.weights < 0) or not np.isclose(self.weights.sum(), 1.0, atol=1e-6):
            fail("weights", f"must be non-negative and sum to 1, sum is {self.weights.sum():.6g}")
        if self.labels.min() < 0 or self.labels.max() >= k:
            fail("labels", f"component indices must lie in 0..{k - 1}")
        if np.any(self.max_probability < 0) or np.any(self.max_probability > 1 + 1e-9):
            fail("max_probability", "probabilities must lie in [0, 1]")
        # Every customer's memberships sum to 1, so a feature's total membership is the number of
        # customers who have it.
        have = (
            [np.count_nonzero(~np.isnan(self.X_model[:, j])) for j in range(d)]
            if self.sample_rows is None
            else [n] * d
        )
        mass = self.totals.mass
        if np.any(mass < 0) or not np.allclose(mass.sum(axis=0), have, rtol=1e-6, atol=1e-6):
            fail("totals", "memberships must be non-negative and sum to 1 for every customer")
        diagonals = np.diagonal(self.covariances, axis1=1, axis2=2)
        if np.any(diagonals <= 0):
            fail("covariances", "every variance (diagonal entry) must be > 0")

    @property
    def drawn_labels(self) -> np.ndarray:
        """The component of each row of ``X_model`` (``labels``, or theirs of ``sample_rows``)."""
        return self.labels if self.sample_rows is None else self.labels[self.sample_rows]

    @property
    def n_customers(self) -> int:
        """Number of customers (of ``labels``; ``X_model`` may hold a sample of them)."""
        return int(self.labels.shape[0])

    @property
    def n_features(self) -> int:
        """Number of features (columns of X)."""
        return len(self.feature_names)

    @property
    def n_segments(self) -> int:
        """Number of segments (mixture components)."""
        return len(self.segment_ids)


def _attribute(data: ReportData, name: str) -> Any:
    """``data``'s attribute ``name``: dotted names followed (``"totals.mass"``), and a trailing
    ``[i]`` taken (``"value_range[0]"``)."""
    name, _, index = name.partition("[")
    value: Any = data
    for part in name.split("."):
        value = getattr(value, part)
    return value[int(index[:-1])] if index else value


_DRIFT_KEYS = ("previous_run_id", "migration", "what_changed", "flags")


def _normalise_drift(drift: Any) -> dict[str, Any]:
    """A checked copy of ReportData.drift with plain types (ints, strs, lists)."""

    def fail(rule: str) -> None:
        raise ValueError(f"ReportData.drift: {rule}")

    if not isinstance(drift, Mapping):
        fail(f"must be a dict, got {type(drift).__name__}")
    for key in _DRIFT_KEYS:
        if key not in drift:
            fail(f"missing key {key!r} (needs {', '.join(_DRIFT_KEYS)})")
    migration = []
    for i, row in enumerate(drift["migration"]):
        try:
            item = {name: int(row[name]) for name in ("from_segment", "to_segment", "customers")}
        except (KeyError, TypeError, ValueError):
            fail(f"migration row {i + 1} needs integer from_segment, to_segment and customers")
        if item["customers"] < 0:
            fail(f"migration row {i + 1}: customers must be >= 0")
        migration.append(item)
    if isinstance(drift["flags"], str):
        fail("flags must be a list of strings, not one string")
    previous_ids = drift.get("previous_segment_ids")
    if previous_ids is None:
        previous_ids = sorted({r["from_segment"] for r in migration})
    transitions = []
    for i, row in enumerate(drift.get("transitions") or []):
        try:
            transitions.append(
                {
                    "kind": str(row["kind"]),
                    "from_ids": [int(v) for v in row["from_ids"]],
                    "to_ids": [int(v) for v in row["to_ids"]],
                    "share": float(row["share"]),
                }
            )
        except (KeyError, TypeError, ValueError):
            fail(f"transitions row {i + 1} needs kind, from_ids, to_ids and share")
    return {
        "previous_run_id": str(drift["previous_run_id"]),
        "migration": migration,
        "what_changed": str(drift["what_changed"]),
        "flags": [str(f) for f in drift["flags"]],
        "previous_segment_ids": [int(v) for v in previous_ids],
        "transitions": transitions,
    }


#: Customers checked at a time by :meth:`ReportData._check`.
_CHECK_ROWS = 1 << 16


def _every_block(check, *arrays: np.ndarray) -> bool:
    """True when ``check`` holds for every block of rows of ``arrays`` (checked a block at a
    time: no temporary the size of every customer's values, 0.1-0.4 GiB each at 10^7)."""
    n = arrays[0].shape[0]
    return all(check(*(a[lo : lo + _CHECK_ROWS] for a in arrays)) for lo in range(0, max(n, 1), _CHECK_ROWS))
