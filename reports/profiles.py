"""Segment profiles in original units: one definition of each quantity, used everywhere.

A segment's **size** is the number of customers given it (and their share of all customers); its
**centre** is the model's mean mapped back to original units, with a **spread** of one model
standard deviation either side (asymmetric for log1p features, kept inside the values the feature
takes); its **mean** is the membership-weighted mean of the customers' values. The console, the
report, the Prefect artifact and the ``segments`` / ``segment_features`` tables all use these
(``flows.segments`` stores them); the mixture weight is the model's parameter and is labelled
"model weight" where it is shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class SegmentProfiles:
    """Size and feature profile of every segment, in original units.

    Attributes
    ----------
    segment_ids : list of int, length n_segments
    counts : ndarray of shape (n_segments,)
        Customers given each segment.
    shares : ndarray of shape (n_segments,)
        ``counts / counts.sum()``.
    centre, spread_low, spread_high : ndarray of shape (n_segments, n_features)
        The segment's centre, and centre -/+ one model standard deviation, mapped back to original
        units and clipped to the observed range of the feature.
    mean, std : ndarray of shape (n_segments, n_features)
        Membership-weighted mean and standard deviation of the customers' values (NaN for a
        segment no customer has any probability of).
    overall_mean : ndarray of shape (n_features,)
        Mean over all customers (the weighted means, averaged by the segments' total membership).
    """

    segment_ids: list[int]
    counts: np.ndarray
    shares: np.ndarray
    centre: np.ndarray
    spread_low: np.ndarray
    spread_high: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    overall_mean: np.ndarray


def to_original_units(
    X_model: np.ndarray, scaler_mean: np.ndarray, scaler_scale: np.ndarray, transforms: Sequence[str]
) -> np.ndarray:
    """Model space back to original units: undo the standardisation, then each feature's transform."""
    transformed = np.asarray(X_model, dtype=np.float64) * scaler_scale + scaler_mean
    log1p = np.array([t == "log1p" for t in transforms], dtype=bool)
    return np.where(log1p, np.expm1(transformed), transformed)


#: Rows per block where a per-customer temporary would otherwise span every customer.
_BLOCK = 1 << 16


@dataclass(frozen=True, eq=False)
class MembershipTotals:
    """Membership-weighted totals of every feature, per segment: what the profiles' means and
    standard deviations are made of.

    They add up over blocks of customers, so whoever computes the memberships a block at a time
    can keep these k x d numbers instead of every customer's probabilities (issue 12). A blank
    value (NaN) counts towards no total.

    Attributes
    ----------
    mass : ndarray of shape (n_segments, n_features)
        Total membership of the customers who have the feature.
    first, second : ndarray of shape (n_segments, n_features)
        Membership-weighted sums of the values and of their squares.
    """

    mass: np.ndarray
    first: np.ndarray
    second: np.ndarray

    @classmethod
    def zeros(cls, n_segments: int, n_features: int) -> MembershipTotals:
        return cls(*(np.zeros((n_segments, n_features)) for _ in range(3)))

    @classmethod
    def of(cls, X_original: np.ndarray, probabilities: np.ndarray) -> MembershipTotals:
        """The totals of customers ``X_original`` (n, d) with memberships ``probabilities`` (n, k)."""
        X = np.asarray(X_original, dtype=np.float64)
        R = np.asarray(probabilities, dtype=np.float64)
        totals = cls.zeros(R.shape[1], X.shape[1])
        for start in range(0, X.shape[0], _BLOCK):
            totals.add(X[start : start + _BLOCK], R[start : start + _BLOCK])
        return totals

    def __add__(self, other: MembershipTotals) -> MembershipTotals:
        """The totals of both sets of customers (partitions computed apart)."""
        return MembershipTotals(self.mass + other.mass, self.first + other.first, self.second + other.second)

    def add(self, X_original: np.ndarray, probabilities: np.ndarray) -> None:
        """Add a block of customers (their values, shape (m, d), and memberships, (m, k)) in place."""
        X = np.asarray(X_original, dtype=np.float64)
        R = np.asarray(probabilities, dtype=np.float64)
        observed = ~np.isnan(X)
        if observed.all():
            self.mass[...] += R.sum(axis=0)[:, None]
        else:
            self.mass[...] += R.T @ observed
            X = np.where(observed, X, 0.0)
        self.first[...] += R.T @ X
        self.second[...] += R.T @ np.square(X)

    def reordered(self, order: np.ndarray) -> MembershipTotals:
        """The totals with the segments listed in ``order``."""
        return MembershipTotals(self.mass[order], self.first[order], self.second[order])


def value_range(X_original: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's smallest and largest value, blanks (NaN) left out, a feature at a time
    (nanmin/nanmax of the whole matrix would copy it)."""
    X = np.asarray(X_original, dtype=np.float64)
    columns = range(X.shape[1])
    return np.array([np.nanmin(X[:, j]) for j in columns]), np.array([np.nanmax(X[:, j]) for j in columns])


def segment_profiles(
    value_range: tuple[np.ndarray, np.ndarray],
    totals: MembershipTotals,
    labels: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    scaler_mean: np.ndarray,
    scaler_scale: np.ndarray,
    transforms: Sequence[str],
    segment_ids: Sequence[int] | np.ndarray,
) -> SegmentProfiles:
    """Every segment's size and profile (module docstring for the definitions).

    Parameters
    ----------
    value_range : (lowest, highest), ndarrays of shape (n_features,)
        Each feature's smallest and largest value in original units (:func:`value_range`).
    totals : MembershipTotals
        The customers' membership-weighted totals (:meth:`MembershipTotals.of`).
    labels : ndarray of shape (n_customers,)
        Component index ``0..n_segments-1`` of the segment each customer is given.
    means : ndarray of shape (n_segments, n_features)
    covariances : ndarray of shape (n_segments, n_features, n_features)
        Model space.
    scaler_mean, scaler_scale : ndarray of shape (n_features,)
    transforms : sequence of str, ``"none"`` or ``"log1p"`` per feature
    segment_ids : sequence of int, length n_segments
    """
    k = len(segment_ids)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=k).astype(np.int64)
    total = counts.sum()
    mass = totals.mass
    safe = np.where(mass > 0, mass, 1.0)
    mean = np.where(mass > 0, totals.first / safe, np.nan)
    second = np.where(mass > 0, totals.second / safe, np.nan)
    std = np.sqrt(np.clip(second - mean * mean, 0.0, None))
    means = np.asarray(means, dtype=np.float64)
    sd = np.sqrt(np.clip(np.diagonal(np.asarray(covariances, dtype=np.float64), axis1=1, axis2=2), 0.0, None))
    lowest, highest = (np.asarray(v, dtype=np.float64) for v in value_range)
    all_mass = mass.sum(axis=0)
    overall = np.divide(
        totals.first.sum(axis=0), all_mass, out=np.full(all_mass.shape, np.nan), where=all_mass > 0
    )

    def back(values: np.ndarray) -> np.ndarray:
        return to_original_units(values, scaler_mean, scaler_scale, transforms)

    return SegmentProfiles(
        segment_ids=[int(s) for s in segment_ids],
        counts=counts,
        shares=counts / total if total else np.zeros(k),
        centre=back(means),
        spread_low=np.clip(back(means - sd), lowest, highest),
        spread_high=np.clip(back(means + sd), lowest, highest),
        mean=mean,
        std=std,
        overall_mean=overall,
    )
