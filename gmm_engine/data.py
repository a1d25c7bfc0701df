"""All the data a model is scored and refitted on, wherever it lives.

Model selection fits its candidates on a sample held in memory, then scores every candidate on
all the data and refits the chosen one on it. Those two passes are all it needs of the whole
data, so they go through :class:`FullData`: :class:`InMemoryData` for one array,
:class:`BlockData` for an array read a block of rows at a time (a matrix in a file, so that a
process never holds all of it), and ``gmm_cluster.ClusterData`` for partitions on a
``dask.distributed`` cluster. The last two sum per-block totals
(:func:`gmm_engine.external.partition_scores`,
:func:`~gmm_engine.external.partition_statistics`) instead of holding the rows together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._validation import check_sample_weight
from .external import partition_moments, partition_scores, partition_statistics
from .mixture import GaussianMixture
from .statistics import DataMoments, MixtureParameters, ScoreTotals, SufficientStatistics, default_threads
from .threads import single_threaded_blas


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


#: Rows :class:`BlockData` reads at a time: 2^18 x 8 features are 16 MiB.
BLOCK_ROWS = 1 << 18


@runtime_checkable
class RowBlocks(Protocol):
    """An (n, d) float array read a block of rows at a time (``X[start:stop]`` returns an
    ndarray), such as a matrix in a file that is never read whole."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: Any) -> Any: ...


@dataclass(frozen=True, eq=False)
class BlockData:
    """All the data as an (n, d) array of complete rows read ``block_rows`` rows at a time:
    every pass (the grid's scores, each EM iteration of the refit, the scale) reads each block
    once and adds up its totals, so only one block is held at a time.

    ``X``: anything with ``shape`` whose row slices ``X[a:b]`` are float arrays (a file-backed
    matrix, an ``np.memmap``, an ndarray). Unweighted. ``n_jobs`` blocks are read and summed at
    once, in threads (default: as many as the estimator's E-step uses), and added up in block
    order, so the result does not depend on which finished first. The results are those of
    :class:`InMemoryData` up to the rounding of the sums' order.
    """

    X: RowBlocks
    block_rows: int = BLOCK_ROWS
    n_jobs: int | None = None
    _std: list[np.ndarray] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.X.shape) != 2 or self.X.shape[0] == 0:
            raise ValueError(f"X must be a non-empty 2-D array (samples, features), got shape {self.X.shape}")
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {self.block_rows}")

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def total_weight(self) -> float:
        return float(self.X.shape[0])

    def _block(self, start: int) -> np.ndarray:
        return np.asarray(self.X[start : min(start + self.block_rows, self.n_samples)], dtype=np.float64)

    def summed(self, task: Callable[..., Any], *args, parallel: bool = True) -> Any:
        """``task(block, *args)`` added over the blocks, in block order (``parallel``: blocks in
        threads; off for a task that runs its own threads over a block's chunks)."""
        starts = range(0, self.n_samples, self.block_rows)
        threads = default_threads() if self.n_jobs is None else max(1, int(self.n_jobs))
        threads = threads if parallel else 1

        def share(start: int) -> Any:
            return task(self._block(start), *args)  # read in the thread: one block per thread held

        # One BLAS thread per block: the blocks are the parallel work (as the E-step's chunks).
        with single_threaded_blas():
            if threads == 1 or len(starts) == 1:
                shares = [share(start) for start in starts]
            else:
                with ThreadPoolExecutor(threads) as pool:
                    shares = list(pool.map(share, starts))
        total = shares[0]
        for more in shares[1:]:
            total = total + more
        return total

    def scores(self, model: GaussianMixture) -> ScoreTotals:
        return self.scores_many([model])[0]

    def scores_many(self, models: Sequence[GaussianMixture]) -> list[ScoreTotals]:
        """Every model's scores in one pass: each block is read once for all of them."""
        models = list(models)
        if not models:
            return []
        # Scoring runs its own threads over each block's chunks (GaussianMixture.n_jobs).
        return list(self.summed(ScoresOfMany.of, models, parallel=False).totals)

    def refit(self, model: GaussianMixture) -> GaussianMixture:
        covariance_type = model.covariance_type

        def statistics(params: MixtureParameters, shift: np.ndarray) -> SufficientStatistics:
            return self.summed(partition_statistics, covariance_type, params, shift)

        return model.refit_from_statistics(statistics, moments=self.moments)

    def moments(self, shift: np.ndarray) -> DataMoments:
        """Total weight, first and second moments of all the rows centred at ``shift``."""
        return self.summed(partition_moments, np.asarray(shift, dtype=np.float64))

    def observed_std(self) -> np.ndarray:
        if not self._std:
            self._std.append(std_from_moments(self.moments, int(self.X.shape[1])))
        return self._std[0]


@dataclass(frozen=True)
class ScoresOfMany:
    """Several models' score totals on one or more blocks; adds up model by model."""

    totals: tuple[ScoreTotals, ...]

    def __add__(self, other: ScoresOfMany) -> ScoresOfMany:
        return ScoresOfMany(tuple(a + b for a, b in zip(self.totals, other.totals, strict=True)))

    @classmethod
    def of(cls, block: np.ndarray, models: Sequence[GaussianMixture]) -> ScoresOfMany:
        """Every model's :func:`~gmm_engine.external.partition_scores` on one block."""
        return cls(tuple(partition_scores(model, block) for model in models))


def std_from_moments(moments: Callable[[np.ndarray], DataMoments], d: int) -> np.ndarray:
    """Each feature's standard deviation (1 for a constant feature) from data known only through
    ``moments(shift)``: two passes, the mean first, then the moments about it (no cancellation)."""
    first = moments(np.zeros(d))
    mean = first.first / first.total_weight
    about = moments(mean)
    var = np.diag(about.second) / about.total_weight - (about.first / about.total_weight) ** 2
    std = np.sqrt(np.maximum(var, 0.0))
    return np.where(std > 0, std, 1.0)
