"""All the data of a model selection, kept on a cluster's workers (:class:`gmm_engine.FullData`).

Model selection fits its candidates on a sample in the client; what it asks of all the data (the
candidates' criteria, the chosen one's refit, the data's scale) is summed here over partitions on
the workers, so the rows never travel back. The partitions are arrays already on the workers
(:meth:`ClusterData.scatter`) or callables that read them there (:class:`ParquetPartition`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
from distributed import Client, Future

from gmm_engine import DataMoments, GaussianMixture, ScoreTotals
from gmm_engine.data import RowBlocks, ScoresOfMany, std_from_moments
from gmm_engine.threads import single_threaded_blas

from .em import (
    PartitionError,
    PartitionsLostError,
    _first_line,
    _gather_on_cluster,
    _load,
    _moments_task,
    added,
    labels,
    refit_with,
)


def _scores_many_task(partition, label: str, models: list[GaussianMixture]) -> ScoresOfMany:
    """On a worker: every model's score totals on one partition, read once for all."""
    X = _load(partition, label)
    try:
        # One BLAS limit for the whole task: threadpoolctl takes 3-10 ms to set one, which each
        # model's scoring would otherwise pay (1,600 times for 40 models on 40 partitions).
        with single_threaded_blas():
            return ScoresOfMany.of(X, models)
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
    bounds : sequence of (int, int), optional
        Each partition's rows (start, stop) among all the rows, when they are consecutive runs
        of one array (see :attr:`bounds`).

    A partition held in a worker's memory is lost with its worker. Made by :meth:`scatter`, the
    data can send such partitions again from the client's array and repeat the pass (``retries``
    times per pass; ``on_retry(message)`` is told), so a run survives a worker's death with the
    result it would have had; otherwise :class:`~gmm_cluster.em.PartitionsLostError` ends the pass.
    """

    def __init__(
        self,
        client: Client,
        partitions: Sequence,
        shape: tuple[int, int] | None = None,
        bounds: Sequence[tuple[int, int]] | None = None,
    ):
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
        self._source: RowBlocks | None = None
        self._bounds: list[tuple[int, int]] = [(int(a), int(b)) for a, b in bounds or []]
        if self._bounds and (
            len(self._bounds) != len(self.partitions)
            or self._bounds[0][0] != 0
            or self._bounds[-1][1] != self._n
            or any(b != a for (_, b), (a, _) in zip(self._bounds, self._bounds[1:], strict=False))
        ):
            raise ValueError("bounds must be one consecutive run of rows per partition, covering all rows")
        self.retries = 0
        self.on_retry: Callable[[str], None] | None = None
        self.resent = 0  # partitions sent again after a worker's death

    @classmethod
    def scatter(
        cls,
        client: Client,
        X: RowBlocks,
        rows_per_partition: int,
        *,
        retries: int = 2,
        on_retry: Callable[[str], None] | None = None,
    ) -> ClusterData:
        """Send ``X`` to the workers in blocks of ``rows_per_partition`` rows, spread over them.

        Blocks go one at a time, so the client never holds a second copy of more than one block.
        ``X`` is kept (not copied) to send a block again when its worker dies: it must not change.
        It is an (n, d) float array, or anything whose row slices are (a matrix in a file,
        :class:`gmm_engine.data.RowBlocks`), read a block at a time.
        """
        if isinstance(X, np.ndarray):
            X = np.asarray(X, dtype=np.float64)
        shape = tuple(int(s) for s in X.shape)
        if len(shape) != 2 or shape[0] == 0:
            raise ValueError(f"X must be a non-empty 2-D array, got shape {shape}")
        n = shape[0]
        size = max(1, int(rows_per_partition))
        bounds = [(start, min(start + size, n)) for start in range(0, n, size)]
        data = cls(client, [_send(client, X, a, b) for a, b in bounds], shape=(shape[0], shape[1]))
        data._source, data._bounds = X, bounds
        data.retries, data.on_retry = int(retries), on_retry
        return data

    @property
    def n_samples(self) -> int:
        return self._n

    @property
    def n_features(self) -> int:
        return self._d

    @property
    def total_weight(self) -> float:
        return float(self._n)

    @property
    def n_partitions(self) -> int:
        return len(self.partitions)

    def _sum(self, task, *args):
        """``task``'s results over the partitions, added in partition order (see :meth:`map`)."""
        return added(self.map(task, *args))

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """Each partition's rows (start, stop) in the array :meth:`scatter` sent (or as given);
        empty for partitions read on the workers."""
        return list(self._bounds)

    def map(
        self, task, *args, which: Sequence[int] | None = None, own: Sequence[tuple] | None = None
    ) -> list:
        """``task(partition, label, *own[j], *args)`` run on the workers for the partitions
        ``which[j]`` (default all, ``own`` then one tuple per partition); the results in that
        order. Partitions lost with their worker are sent again and the pass repeated (see the
        class), so ``task`` must give the same result when run again (a file it writes is
        replaced whole)."""
        chosen = list(range(len(self.partitions))) if which is None else [int(i) for i in which]
        for attempt in range(self.retries + 1):
            names = labels(self.partitions)
            parts = [self.partitions[i] for i in chosen]
            try:
                return _gather_on_cluster(self.client, parts, task, args, own, [names[i] for i in chosen])
            except PartitionsLostError as exc:
                if self._source is None or attempt == self.retries:
                    raise
                for i in (chosen[j] for j in exc.lost):
                    a, b = self._bounds[i]
                    self.partitions[i] = _send(self.client, self._source, a, b)
                self.resent += len(exc.lost)
                if self.on_retry is not None:
                    lost = " and ".join(names[chosen[j]] for j in exc.lost)
                    self.on_retry(
                        f"partition {lost} lost with its worker: sent again from the client, the pass "
                        f"repeated (retry {attempt + 1} of {self.retries})"
                    )
        raise AssertionError("unreachable")  # the loop returns or raises

    def scores(self, model: GaussianMixture) -> ScoreTotals:
        return self.scores_many([model])[0]

    def scores_many(self, models: Sequence[GaussianMixture]) -> list[ScoreTotals]:
        """Every model's scores in one pass: one task per partition for all the models (the
        models travel with each task: a grid of 40 candidates is a few hundred KiB)."""
        if not models:
            return []
        return list(self._sum(_scores_many_task, list(models)).totals)

    def refit(self, model: GaussianMixture) -> GaussianMixture:
        """EM on all the partitions from ``model``'s start (see :func:`refit_on_partitions`);
        an E-step that loses a partition is repeated once it is sent again, so the iterations
        are those of an undisturbed fit."""
        return refit_with(copy.deepcopy(model), self._sum)

    def moments(self, shift: np.ndarray) -> DataMoments:
        """Total weight, first and second moments of all the rows centred at ``shift``."""
        return self._sum(_moments_task, np.asarray(shift, dtype=np.float64))

    def observed_std(self) -> np.ndarray:
        if self._std is None:
            self._std = std_from_moments(self.moments, self._d)
        return self._std

    def release(self) -> None:
        """Drop the scattered partitions from the workers' memory (and the client's array)."""
        futures = [p for p in self.partitions if isinstance(p, Future)]
        if futures:
            self.client.cancel(futures)
        self._source = None

    def __repr__(self) -> str:
        return f"ClusterData({self._n:,} rows in {len(self.partitions)} partitions)"


def _send(client: Client, X: RowBlocks, start: int, stop: int) -> Future:
    block = np.asarray(X[start:stop], dtype=np.float64)
    if not np.isfinite(block).all():
        raise ValueError("X has missing or infinite values; partitions take complete rows only")
    # hash=False: equal blocks (a constant feature) must still be two partitions.
    return client.scatter(block, hash=False)


def rows_per_partition(n_samples: int, n_workers: int, max_rows: int) -> int:
    """Rows per partition: at most ``max_rows``, and at least two partitions per worker when the
    data allow it, so a slow or replaced worker holds up a small share of an iteration."""
    wanted = max(1, math.ceil(n_samples / max(1, max_rows)), 2 * max(1, n_workers))
    return max(1, math.ceil(n_samples / wanted))
