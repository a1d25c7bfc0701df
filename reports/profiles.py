"""Per-segment statistics of the features in original units (segment profiles)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class SegmentProfiles:
    """Size and feature statistics of every segment, in original units.

    Attributes
    ----------
    segment_ids : list of int, length n_segments
    counts : ndarray of shape (n_segments,)
        Customers assigned to each segment.
    shares : ndarray of shape (n_segments,)
        ``counts / counts.sum()``.
    mean, median, q25, q75 : ndarray of shape (n_segments, n_features)
        NaN for a segment without customers.
    overall_median : ndarray of shape (n_features,)
        Median over all customers, the reference line of the profiles figure.
    """

    segment_ids: list[int]
    counts: np.ndarray
    shares: np.ndarray
    mean: np.ndarray
    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    overall_median: np.ndarray


def segment_profiles(X_original: np.ndarray, labels: np.ndarray,
                     segment_ids: Sequence[int]) -> SegmentProfiles:
    """Group customers by assigned segment and summarise every feature.

    Parameters
    ----------
    X_original : ndarray of shape (n_customers, n_features)
    labels : ndarray of shape (n_customers,)
        Component index ``0..n_segments-1`` of each customer.
    segment_ids : sequence of int, length n_segments

    Returns
    -------
    SegmentProfiles
    """
    X = np.asarray(X_original, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k, d = len(segment_ids), X.shape[1]
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    # One stable sort turns each segment into a contiguous block, so quantiles need no masks.
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    stats = np.full((4, k, d), np.nan, dtype=np.float64)
    for c in range(k):
        block = X[order[bounds[c]:bounds[c + 1]]]
        if len(block):
            stats[0, c] = block.mean(axis=0)
            stats[1:, c] = np.percentile(block, [50, 25, 75], axis=0)
    total = counts.sum()
    return SegmentProfiles(
        segment_ids=[int(s) for s in segment_ids],
        counts=counts,
        shares=counts / total if total else np.zeros(k),
        mean=stats[0], median=stats[1], q25=stats[2], q75=stats[3],
        overall_median=np.median(X, axis=0),
    )
