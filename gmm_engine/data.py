"""All the data a model is scored and refitted on, wherever it lives.

Model selection fits its candidates on a sample held in memory, then scores every candidate on
all the data and refits the chosen one on it. Those two passes are all it needs of the whole
data, so they go through :class:`FullData`: :class:`InMemoryData` for one array, and
``gmm_cluster.ClusterData`` for partitions on a ``dask.distributed`` cluster, which sums
per-partition totals (:func:`gmm_engine.external.partition_scores`,
:func:`~gmm_engine.external.partition_statistics`) instead of moving the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ._validation import check_sample_weight
from .mixture import GaussianMixture
from .statistics import ScoreTotals


@runtime_checkable
class FullData(Protocol):
    """What model selection needs of all the data besides its sample."""

    @property
    def n_samples(self) -> int:
        """Number of samples (rows)."""

    @property
    def total_weight(self) -> float:
        """Sum of the sample weights (``n_samples`` when unweighted)."""

    def scores(self, model: GaussianMixture) -> ScoreTotals:
        """A fitted model's log-likelihood and hard-assignment entropy over all the data."""

    def scores_many(self, models: Sequence[GaussianMixture]) -> list[ScoreTotals]:
        """:meth:`scores` of several fitted models (one pass over partitioned data for all)."""

    def refit(self, model: GaussianMixture) -> GaussianMixture:
        """EM on all the data from ``model``'s ``weights_init``, ``means_init`` and
        ``precisions_init`` (as ``fit`` starts); returns the fitted estimator."""

    def observed_std(self) -> np.ndarray:
        """Each feature's (weighted) standard deviation over its observed values (1 for a
        constant feature), the scale the degeneracy rule compares variances with."""


@dataclass(frozen=True, eq=False)
class InMemoryData:
    """All the data as one float array (``X``, optional ``sample_weight``), used in place (not
    copied, not checked again: the estimator's methods check what they are given)."""

    X: np.ndarray
    sample_weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        X = np.asarray(self.X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (samples, features), got {X.ndim} dimension(s)")
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "sample_weight", check_sample_weight(self.sample_weight, X.shape[0]))

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def total_weight(self) -> float:
        w = self.sample_weight
        return float(self.X.shape[0] if w is None else w.sum())

    def scores(self, model: GaussianMixture) -> ScoreTotals:
        return model._score_totals(model._check_X_predict(self.X), self.sample_weight)

    def scores_many(self, models: Sequence[GaussianMixture]) -> list[ScoreTotals]:
        return [self.scores(model) for model in models]

    def refit(self, model: GaussianMixture) -> GaussianMixture:
        return model.fit(self.X, sample_weight=self.sample_weight)

    def observed_std(self) -> np.ndarray:
        from .selection import observed_std

        return observed_std(self.X, self.sample_weight)
