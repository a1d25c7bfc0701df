"""All the data of a model selection, kept on a cluster's workers (:class:`gmm_engine.FullData`).

Model selection fits its candidates on a sample in the client; what it asks of all the data (the
candidates' criteria, the chosen one's refit, the data's scale) is summed here over partitions on
the workers, so the rows never travel back. The partitions are arrays already on the workers
(:meth:`ClusterData.scatter`) or callables that read them there (:class:`ParquetPartition`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from distributed import Client, Future

from gmm_engine import DataMoments, GaussianMixture, ScoreTotals, partition_scores

from .em import (
    PartitionError,
    _first_line,
    _load,
    _moments_task,
    _sum_on_cluster,
    labels,
    refit_on_partitions,
)


def _scores_task(partition, label: str, model: GaussianMixture) -> ScoreTotals:
    """On a worker: one partition's log-likelihood and hard-assignment entropy under ``model``."""
    X = _load(partition, label)
    try:
        return partition_scores(model, X)
    except ValueError as exc:
        raise PartitionError(f"partition {label}: {_first_line(exc)}") from None


def _shape_task(partition, label: str) -> tuple[int, int]:
    X = _load(partition, label)
    return int(X.shape[0]), int(X.shape[1])


class ClusterData:
    """Data split in partitions on a ``dask.distributed`` cluster, as model selection needs it.

    Parameters
    ----------
    client : distributed.Client
    partitions : sequence
        Futures of (n_i, d) float arrays held by the workers (see :meth:`scatter`), or picklable
        callables a worker calls to read its partition (:class:`ParquetPartition`). Complete
        rows only, unweighted.
    shape : (int, int), optional
        Rows in all and features; read on the workers when not given.
    """

    def __init__(self, client: Client, partitions: Sequence, shape: tuple[int, int] | None = None):
        self.client = client
        self.partitions = list(partitions)
        if not self.partitions:
            raise ValueError("ClusterData needs at least one partition")
        if shape is None:
            futures = [
                client.submit(_shape_task, part, name, pure=False)
                for part, name in zip(self.partitions, labels(self.partitions), strict=True)
            ]
            shapes = client.gather(futures)
            widths = {d for _, d in shapes}
            if len(widths) != 1:
                raise PartitionError(f"the partitions have different numbers of features: {sorted(widths)}")
            shape = (sum(n for n, _ in shapes), widths.pop())
        self._n, self._d = int(shape[0]), int(shape[1])
        self._std: np.ndarray | None = None

    @classmethod
    def scatter(cls, client: Client, X: np.ndarray, rows_per_partition: int) -> ClusterData:
        """Send ``X`` to the workers in blocks of ``rows_per_partition`` rows, spread over them.

        Blocks go one at a time, so the client never holds a second copy of more than one block.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"X must be a non-empty 2-D array, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("X has missing or infinite values; partitions take complete rows only")
        n = X.shape[0]
        size = max(1, int(rows_per_partition))
        futures: list[Future] = []
        for start in range(0, n, size):
            # hash=False: equal blocks (a constant feature) must still be two partitions.
            futures.append(client.scatter(X[start : start + size], hash=False))
        return cls(client, futures, shape=X.shape)

    @property
    def n_samples(self) -> int:
        return self._n

    @property
    def total_weight(self) -> float:
        return float(self._n)

    @property
    def n_partitions(self) -> int:
        return len(self.partitions)

    def scores(self, model: GaussianMixture) -> ScoreTotals:
        return _sum_on_cluster(self.client, self.partitions, _scores_task, model)

    def refit(self, model: GaussianMixture) -> GaussianMixture:
        return refit_on_partitions(self.client, self.partitions, model)

    def moments(self, shift: np.ndarray) -> DataMoments:
        """Total weight, first and second moments of all the rows centred at ``shift``."""
        return _sum_on_cluster(
            self.client, self.partitions, _moments_task, np.asarray(shift, dtype=np.float64)
        )

    def observed_std(self) -> np.ndarray:
        if self._std is None:
            # Two passes: the mean first, then the moments about it (no cancellation).
            first = self.moments(np.zeros(self._d))
            mean = first.first / first.total_weight
            about = self.moments(mean)
            var = np.diag(about.second) / about.total_weight - (about.first / about.total_weight) ** 2
            std = np.sqrt(np.maximum(var, 0.0))
            self._std = np.where(std > 0, std, 1.0)
        return self._std

    def release(self) -> None:
        """Drop the scattered partitions from the workers' memory."""
        futures = [p for p in self.partitions if isinstance(p, Future)]
        if futures:
            self.client.cancel(futures)

    def __repr__(self) -> str:
        return f"ClusterData({self._n:,} rows in {len(self.partitions)} partitions)"


def rows_per_partition(n_samples: int, n_workers: int, max_rows: int) -> int:
    """Rows per partition: at most ``max_rows``, and at least two partitions per worker when the
    data allow it, so a slow or replaced worker holds up a small share of an iteration."""
    wanted = max(1, math.ceil(n_samples / max(1, max_rows)), 2 * max(1, n_workers))
    return max(1, math.ceil(n_samples / wanted))
