"""From a fitted mixture to segments: memberships, outlier scores and per-segment profiles in
original units."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from flows.features import FeatureMatrix
from flows.matrix_file import MatrixFile
from flows.text_file import TextBlock, TextFile, text_objects
from gmm_engine import full_covariances
from reports.profiles import MembershipTotals, segment_profiles

#: Customers whose memberships are computed at a time (a block of 262,144 x k floats).
_BLOCK_ROWS = 1 << 18


@dataclass(frozen=True, eq=False)
class Memberships:
    """Every customer's membership probabilities, computed from the model when they are read, a
    block of customers at a time, instead of held: n x k floats are 0.4 GiB at 10^7 customers and
    5 segments (issue 12), and the E-step that gives them back costs about 0.1 s a million.

    Attributes
    ----------
    model : gmm_engine.GaussianMixture
        The fitted model.
    X_model : ndarray or MatrixFile of shape (n, d)
        The customers in model space.
    order : ndarray of shape (k,)
        The model's component shown in each column.
    """

    model: Any
    X_model: np.ndarray | MatrixFile
    order: np.ndarray

    def rows(self, index: slice | np.ndarray) -> np.ndarray:
        """The probabilities of the customers ``index`` (a slice or positions), shape (m, k)."""
        P = np.asarray(self.model.predict_proba(self.X_model[index]), dtype=np.float64)
        return self._ordered(P)

    def rows_with_density(self, index: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`rows` and the customers' log-density under the model, from one E-step."""
        P, density = self.model.predict_proba_and_density(self.X_model[index])
        return self._ordered(np.asarray(P, dtype=np.float64)), np.asarray(density, dtype=np.float64)

    def _ordered(self, P: np.ndarray) -> np.ndarray:
        return P if np.array_equal(self.order, np.arange(self.order.size)) else P[:, self.order]

    def reordered(self, order: np.ndarray) -> Memberships:
        """The same memberships with the columns listed in ``order``."""
        return replace(self, order=self.order[np.asarray(order, dtype=np.int64)])


@dataclass(frozen=True, eq=False)
class SegmentResult:
    """The chosen model applied to every customer.

    Attributes
    ----------
    segment_ids : ndarray of shape (k,)
        Displayed id of each component (component index + 1).
    labels : ndarray of shape (n,)
        Component index of each customer's segment (the most probable unless ``held``).
    memberships : Memberships
        Every customer's membership probabilities, columns in component order (computed when read).
    totals : reports.profiles.MembershipTotals
        Membership-weighted feature totals per component (the profiles' means and spreads).
    weights, means, covariances : ndarrays (k,), (k, d), (k, d, d)
        Model-space parameters, covariances expanded to full matrices.
    lower_bounds : list of float
        Mean log-likelihood per EM iteration of the chosen model.
    held : ndarray of shape (n,), bool, or None
        Customers kept in last run's segment although another is more probable
        (``tracking.hold_odds``); ``labels`` then gives the segment kept. None: most probable for all.
    """

    covariance_type: str
    segment_ids: np.ndarray
    labels: np.ndarray
    memberships: Memberships
    totals: MembershipTotals
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    lower_bounds: list[float]
    converged: bool
    n_iter: int
    held: np.ndarray | None = None

    @property
    def n_segments(self) -> int:
        return int(self.weights.shape[0])

    @property
    def customer_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.n_segments).astype(np.int64)

    # Each customer's probability and log-density are computed from the model when read, a
    # block at a time, like the memberships: held, they were 0.15 GiB at 10^7 customers from the
    # assign stage to the write (issue 12), and an E-step gives them back in about 0.1 s a million.

    def probability_of(self, index: slice | np.ndarray) -> np.ndarray:
        """The membership probability of the segment in ``labels`` of the customers ``index``."""
        labels = self.labels[index]
        return self.memberships.rows(index)[np.arange(labels.shape[0]), labels]

    def probability_sums(self) -> np.ndarray:
        """Per component, the sum of its customers' probabilities of it, shape (k,)."""
        k = self.n_segments
        sums = np.zeros(k)
        for rows in _blocks(self.labels.shape[0]):
            sums += np.bincount(self.labels[rows], weights=self.probability_of(rows), minlength=k)
        return sums

    @property
    def probability(self) -> np.ndarray:
        """Every customer's :meth:`probability_of`, shape (n,) (computed when read)."""
        out = np.empty(self.labels.shape[0])
        for rows in _blocks(out.size):
            out[rows] = self.probability_of(rows)
        return out

    @property
    def log_density(self) -> np.ndarray:
        """Every customer's log-density under the model (low = unusual customer), shape (n,)
        (computed when read)."""
        out = np.empty(self.labels.shape[0])
        for rows in _blocks(out.size):
            out[rows] = self.memberships.rows_with_density(rows)[1]
        return out

    def reordered(self, order: np.ndarray) -> SegmentResult:
        """The same result with the components listed in ``order`` (each customer keeps their segment)."""
        order = np.asarray(order, dtype=np.int64)
        position = np.empty_like(order)
        position[order] = np.arange(order.size)
        return replace(
            self,
            segment_ids=self.segment_ids[order],
            labels=position[self.labels],
            memberships=self.memberships.reordered(order),
            totals=self.totals.reordered(order),
            weights=self.weights[order],
            means=self.means[order],
            covariances=self.covariances[order],
        )


def assign_segments(model, features: FeatureMatrix) -> SegmentResult:
    """Apply a fitted gmm_engine.GaussianMixture to every customer of ``features``.

    One pass over the customers, a block at a time: each customer's most probable segment is
    kept, and the memberships are added up into the profiles' totals; the memberships, and with
    them each customer's probability and log-density, are computed again when read
    (:class:`Memberships`, :meth:`SegmentResult.probability_of`).
    """
    k = model.means_.shape[0]
    memberships = Memberships(model, features.X_model, np.arange(k, dtype=np.int64))
    labels, totals = assign_rows(model, features.X_model, lambda _, rows: features.original_rows(rows))
    return segment_result(model, memberships, labels, totals)


def assign_rows(
    model, X_model: np.ndarray | MatrixFile, to_original: Callable[[np.ndarray, slice], np.ndarray]
) -> tuple[np.ndarray, MembershipTotals]:
    """Each row's most probable component under ``model`` and the rows' membership totals, a
    block at a time; ``to_original(X, rows)`` gives the block ``X = X_model[rows]`` in original
    units."""
    n = X_model.shape[0]
    k, d = model.means_.shape
    labels = np.empty(n, dtype=np.int64)
    totals = MembershipTotals.zeros(k, d)
    for rows in _blocks(n):
        X = X_model[rows]
        P = np.asarray(model.predict_proba(X), dtype=np.float64)
        labels[rows] = P.argmax(axis=1)
        totals.add(to_original(X, rows), P)
    return labels, totals


def segment_result(
    model, memberships: Memberships, labels: np.ndarray, totals: MembershipTotals
) -> SegmentResult:
    """The :class:`SegmentResult` of a fitted model, given every customer's component and the totals."""
    k, d = model.means_.shape
    return SegmentResult(
        covariance_type=model.covariance_type,
        segment_ids=np.arange(1, k + 1, dtype=np.int64),
        labels=labels,
        memberships=memberships,
        totals=totals,
        weights=np.asarray(model.weights_, dtype=np.float64),
        means=np.asarray(model.means_, dtype=np.float64),
        covariances=full_covariances(model.covariances_, model.covariance_type, k, d),
        lower_bounds=[float(v) for v in getattr(model, "lower_bounds_", [model.lower_bound_])],
        converged=bool(model.converged_),
        n_iter=int(model.n_iter_),
    )


def _blocks(n: int):
    """Consecutive row slices of :data:`_BLOCK_ROWS` customers covering ``n``."""
    for start in range(0, n, _BLOCK_ROWS):
        yield slice(start, min(start + _BLOCK_ROWS, n))


def segment_table(result: SegmentResult) -> pd.DataFrame:
    """One row per segment: ``segment_id``, ``weight``, ``customer_count``, ``mean_probability``,
    and the model-space ``mean`` vector and flattened ``covariance`` (for reproducing assignments)."""
    counts = result.customer_counts
    sums = result.probability_sums()
    mean_probability = np.divide(sums, counts, out=np.full(result.n_segments, np.nan), where=counts > 0)
    return pd.DataFrame(
        {
            "segment_id": result.segment_ids,
            "weight": result.weights,
            "customer_count": counts,
            "mean_probability": mean_probability,
            "model_mean": [row.tolist() for row in result.means],
            "model_covariance": [c.ravel().tolist() for c in result.covariances],
        }
    )


def feature_profiles(result: SegmentResult, features: FeatureMatrix) -> pd.DataFrame:
    """Per segment and feature, in original units (definitions in :mod:`reports.profiles`, the one
    place they are computed, so the tables and the report agree): membership-weighted ``mean`` and
    ``std``, the segment ``centre`` and a one-standard-deviation band (``spread_low``/``spread_high``;
    asymmetric for log1p features; clipped to the feature's observed range)."""
    profiles = segment_profiles(
        features.value_range,
        result.totals,
        result.labels,
        result.means,
        result.covariances,
        features.scaler.mean,
        features.scaler.scale,
        features.transforms,
        result.segment_ids,
    )
    k, d = profiles.mean.shape
    return pd.DataFrame(
        {
            "segment_id": np.repeat(result.segment_ids, d),
            "feature_index": np.tile(np.arange(1, d + 1, dtype=np.int64), k),
            "feature": np.tile(np.array(features.names, dtype=object), k),
            "unit": np.tile(np.array(features.units, dtype=object), k),
            "mean": profiles.mean.ravel(),
            "std": profiles.std.ravel(),
            "centre": profiles.centre.ravel(),
            "spread_low": profiles.spread_low.ravel(),
            "spread_high": profiles.spread_high.ravel(),
        }
    )


def assignment_table(
    result: SegmentResult,
    customer_ids: np.ndarray | TextFile | TextBlock,
    missing_features: np.ndarray | None = None,
    rows: slice = slice(None),
) -> pd.DataFrame:
    """One row per customer (of ``rows``, default all): ``customer_id``, ``segment_id``,
    ``probability``, ``log_density``, ``held``, ``missing_features`` (how many were blank; 0 when
    not given), then one column ``p_1 .. p_k`` per segment (stored as a list column by the store)."""
    labels = result.labels[rows]
    n = labels.shape[0]
    probabilities, log_density = result.memberships.rows_with_density(rows)
    frame = pd.DataFrame(
        {
            "customer_id": text_objects(customer_ids, rows),
            "segment_id": result.segment_ids[labels],
            "probability": probabilities[np.arange(n), labels],
            "log_density": log_density,
            "held": np.zeros(n, dtype=bool) if result.held is None else result.held[rows],
            "missing_features": (
                np.zeros(n, dtype=np.int32)
                if missing_features is None
                else np.asarray(missing_features[rows], dtype=np.int32)
            ),
        }
    )
    for j, sid in enumerate(result.segment_ids):
        frame[f"p_{sid}"] = probabilities[:, j]
    return frame


@dataclass(frozen=True, eq=False)
class AssignmentRows:
    """Every customer's assignment row, built and validated a chunk at a time as the store writes
    them, so that no frame of all customers' rows (ids as text, k probabilities each) is ever
    held: at 10^7 customers that frame alone took gigabytes."""

    result: SegmentResult
    customer_ids: np.ndarray | TextFile
    missing_features: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.result.labels.shape[0])

    def chunks(self, size: int) -> Iterator[pd.DataFrame]:
        """The rows of ``size`` customers at a time (``Assignments``-validated), in customer order."""
        from schemas import Assignments

        for start in range(0, max(len(self), 1), size):
            frame = assignment_table(
                self.result, self.customer_ids, self.missing_features, slice(start, start + size)
            )
            yield Assignments.validate(frame)
