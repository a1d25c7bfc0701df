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
_BLOCK = 1_000_000


def segment_profiles(
    X_original: np.ndarray,
    probabilities: np.ndarray,
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
    X_original : ndarray of shape (n_customers, n_features)
    probabilities : ndarray of shape (n_customers, n_segments)
        Membership probabilities.
    labels : ndarray of shape (n_customers,)
        Component index ``0..n_segments-1`` of the segment each customer is given.
    means : ndarray of shape (n_segments, n_features)
    covariances : ndarray of shape (n_segments, n_features, n_features)
        Model space.
    scaler_mean, scaler_scale : ndarray of shape (n_features,)
    transforms : sequence of str, ``"none"`` or ``"log1p"`` per feature
    segment_ids : sequence of int, length n_segments
    """
    X = np.asarray(X_original, dtype=np.float64)
    R = np.asarray(probabilities, dtype=np.float64)
    k = len(segment_ids)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=k).astype(np.int64)
    total = counts.sum()
    observed = ~np.isnan(X)
    if observed.all():
        mass = R.sum(axis=0)[:, None]
    else:
        # Blank values (customer tables) are left out: each feature's mean is over the customers
        # who have it, weighted by membership.
        mass = R.T @ observed
        X = np.where(observed, X, 0.0)
    safe = np.where(mass > 0, mass, 1.0)
    mean = np.where(mass > 0, (R.T @ X) / safe, np.nan)
    # Squares a block of rows at a time: at 10^7 customers a whole X * X is 320 MiB more.
    squares = sum(
        (R[i : i + _BLOCK].T @ np.square(X[i : i + _BLOCK]) for i in range(0, X.shape[0], _BLOCK)),
        start=np.zeros((k, X.shape[1])),
    )
    second = np.where(mass > 0, squares / safe, np.nan)
    std = np.sqrt(np.clip(second - mean * mean, 0.0, None))
    means = np.asarray(means, dtype=np.float64)
    sd = np.sqrt(np.clip(np.diagonal(np.asarray(covariances, dtype=np.float64), axis1=1, axis2=2), 0.0, None))
    if observed.all():
        lowest, highest, overall = X.min(axis=0), X.max(axis=0), X.mean(axis=0)
    else:
        X_observed = np.where(observed, X, np.nan)
        lowest, highest = np.nanmin(X_observed, axis=0), np.nanmax(X_observed, axis=0)
        overall = np.nanmean(X_observed, axis=0)

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
