"""EM refit of a :class:`gmm_engine.GaussianMixture` on partitions read by dask workers.

Each EM iteration submits one task per partition. A task reads its partition on the worker
(:class:`ParquetPartition`: a Parquet file through DuckDB, standardised), computes
:func:`gmm_engine.partition_statistics` and returns only ``k x (1 + d + q)`` numbers, the
log-likelihood and the weight. The client adds the shares in partition order (so the result does
not depend on which worker finished first) and runs the engine's M-step
(:meth:`GaussianMixture.refit_from_statistics`).

Failures never give a partial model: the estimator passed in is not modified, and a new one is
returned only when every iteration has summed every partition. A worker that dies is replaced
by the cluster and its task re-run elsewhere (the scheduler's ``allowed-failures``); a task that
keeps killing workers ends the fit with :class:`ClusterFitError`. A partition that cannot be read
ends it with :class:`PartitionError` naming the partition.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
from distributed import Client, Future, KilledWorker

from gmm_engine import DataMoments, GaussianMixture, partition_moments, partition_statistics
from gmm_engine.statistics import MixtureParameters, SufficientStatistics

#: A partition: called on a worker, returns its rows as a float (n, d) array of complete rows.
Partition = Callable[[], np.ndarray]


#: How long a failed fit waits for the other partitions' tasks to settle, to name them all.
_SETTLE_SECONDS = 5.0


class PartitionError(ValueError):
    """A partition could not be read or used (missing file or column, non-numeric or missing values)."""


class ClusterFitError(RuntimeError):
    """The fit could not be completed on the cluster (workers lost); nothing was fitted."""


class PartitionsLostError(ClusterFitError):
    """Partitions held in workers' memory were lost with their worker; ``lost`` are their
    indices among the partitions (all of them when dask did not say which)."""

    def __init__(self, message: str, lost: list[int]):
        super().__init__(message)
        self.lost = lost


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


@dataclass(frozen=True, eq=False)
class ParquetPartition:
    """One Parquet file (or glob DuckDB's ``read_parquet`` accepts): ``columns`` as float64,
    standardised as ``(x - mean) / scale`` when those are given (the features' standardisation
    of the model, so every partition is in the model's coordinates)."""

    path: str
    columns: tuple[str, ...]
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "columns", tuple(self.columns))
        d = len(self.columns)
        for name in ("mean", "scale"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.float64)
                if value.shape != (d,) or not np.isfinite(value).all():
                    raise ValueError(f"{name} must be {d} finite numbers (one per column), got {value.shape}")
                object.__setattr__(self, name, value)
        if self.scale is not None and (self.scale <= 0).any():
            raise ValueError("scale must be positive")

    def __str__(self) -> str:
        return self.path

    def __call__(self) -> np.ndarray:
        con = duckdb.connect()
        try:
            try:
                schema = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [self.path]).fetchall()
            except duckdb.Error as exc:
                raise PartitionError(f"partition {self.path}: {_first_line(exc)}") from None
            present = [row[0] for row in schema]
            missing = [c for c in self.columns if c not in present]
            if missing:
                raise PartitionError(
                    f"partition {self.path}: no column {', '.join(map(repr, missing))} "
                    f"(it has {', '.join(map(repr, present))})"
                )
            select = ", ".join(f"CAST({_quoted(c)} AS DOUBLE)" for c in self.columns)
            try:
                arrays = con.execute(f"SELECT {select} FROM read_parquet(?)", [self.path]).fetchnumpy()
            except duckdb.Error as exc:
                raise PartitionError(f"partition {self.path}: {_first_line(exc)}") from None
        finally:
            con.close()
        X = np.empty((len(next(iter(arrays.values()))), len(self.columns)))
        for j, values in enumerate(arrays.values()):
            X[:, j] = np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan)
        if self.mean is not None:
            X -= self.mean
        if self.scale is not None:
            X /= self.scale
        return X


def _load(partition: Partition | np.ndarray, label: str) -> np.ndarray:
    """A partition's rows: the array itself (a scattered block, resolved by dask on the worker)
    or what its reader returns."""
    X = partition if isinstance(partition, np.ndarray) else partition()
    if not isinstance(X, np.ndarray):
        raise PartitionError(f"partition {label}: returned {type(X).__name__}, not a numpy array")
    return X


def _statistics_task(
    partition: Partition, label: str, covariance_type: str, params: MixtureParameters, shift: np.ndarray
) -> SufficientStatistics:
    """On a worker: one partition's share of the EM totals (small: k x (1 + d + q) numbers)."""
    X = _load(partition, label)
    try:
        return partition_statistics(X, covariance_type, params, shift)
    except ValueError as exc:
        raise PartitionError(f"partition {label}: {_first_line(exc)}") from None


def _moments_task(partition: Partition, label: str, shift: np.ndarray) -> DataMoments:
    """On a worker: one partition's total weight and centred second moment (d x d numbers)."""
    X = _load(partition, label)
    try:
        return partition_moments(X, shift)
    except ValueError as exc:
        raise PartitionError(f"partition {label}: {_first_line(exc)}") from None


def _settle(futures: Sequence[Future], timeout: float = _SETTLE_SECONDS) -> None:
    """Wait up to ``timeout`` seconds for ``futures`` to finish. Polled, not ``distributed.wait``:
    called from a thread running an event loop of its own (a Prefect task's), ``wait`` fails
    with "bound to a different event loop"."""
    deadline = time.monotonic() + timeout
    while not all(f.done() for f in futures) and time.monotonic() < deadline:
        time.sleep(0.05)


def labels(parts: Sequence) -> list[str]:
    """How errors name each partition: its reader's name (a Parquet file), or a scattered
    block's place among the partitions."""
    return [
        f"block {i + 1} of {len(parts)}" if isinstance(part, Future) else str(part)
        for i, part in enumerate(parts)
    ]


def _sum_on_cluster(client: Client, parts: Sequence[Partition], task, *args):
    """Run ``task(partition, label, *args)`` for every partition on the cluster; the results'
    sum, added in partition order. Any failure cancels the other tasks and raises; no partial
    sum escapes."""
    return added(_gather_on_cluster(client, parts, task, args))


def added(results: Sequence):
    """The partitions' results added in partition order (so the sum does not depend on which
    worker finished first)."""
    total = results[0]
    for result in results[1:]:
        total = total + result
    return total


def run_on_partitions(
    client: Client,
    parts: Sequence,
    task,
    *args,
    own: Sequence[tuple] | None = None,
    names: Sequence[str] | None = None,
) -> list:
    """``task(part, label, *own[i], *args)`` for every partition ``i`` on the cluster (a part: a
    file's path, a reader, a scattered block); the results in partition order. A failure cancels
    the other tasks and raises the first failing partition's error, or :class:`ClusterFitError`
    when workers kept dying on one (``label``: ``names[i]``, default the part's name)."""
    return _gather_on_cluster(client, parts, task, args, own, names)


def _gather_on_cluster(
    client: Client,
    parts: Sequence[Partition],
    task,
    args: tuple,
    own: Sequence[tuple] | None = None,
    names: Sequence[str] | None = None,
) -> list:
    """Run ``task(partition, label, *own[i], *args)`` for every partition ``i`` on the cluster
    (``own``: each partition's own arguments; ``names``: the labels, default :func:`labels`);
    the results in partition order. Any failure cancels the other tasks and raises (see
    :func:`_sum_on_cluster`)."""
    names = labels(parts) if names is None else list(names)
    own = [()] * len(parts) if own is None else list(own)
    futures = [
        client.submit(task, part, name, *mine, *args, pure=False)
        for part, name, mine in zip(parts, names, own, strict=True)
    ]
    try:
        results = client.gather(futures)
    except KilledWorker as exc:
        # The scheduler counts a worker's death against every task the worker was running, so
        # a partition that kills its worker can take a bystander's task over the limit with it:
        # name every partition whose task failed so (the first to fail may be the bystander).
        _settle(futures)
        by_key = {f.key: name for f, name in zip(futures, names, strict=True)}
        failed = [name for f, name in zip(futures, names, strict=True) if f.status == "error"]
        named = failed or [str(by_key.get(exc.task, exc.task))]
        raise ClusterFitError(
            f"partition {' or '.join(named)}: the workers running it died {exc.allowed_failures + 1} "
            f"times (last {exc.last_worker.address}); the fit was abandoned, nothing was fitted"
        ) from exc
    except CancelledError as exc:
        # A partition held in a worker's memory (scattered) dies with its worker: dask cannot
        # compute it again, and cancels every task that needs it.
        lost = [i for i, part in enumerate(parts) if getattr(part, "status", "") != "finished"]
        lost = lost or list(range(len(parts)))
        raise PartitionsLostError(
            f"partition {' and '.join(names[i] for i in lost)}: lost with the worker that held it in memory "
            f"({_first_line(exc)}); the fit was abandoned, nothing was fitted",
            lost,
        ) from exc
    except Exception:
        # A task raised (a partition that cannot be read or used). Several may fail alike (a
        # model of the wrong width): the first in partition order is reported, whichever failed
        # first, so that the same fault gives the same message.
        _settle(futures)
        first = next((f for f in futures if f.status == "error"), None)
        if first is None:
            raise
        raise first.exception() from None
    finally:
        client.cancel([f for f in futures if not f.done()])
    return list(results)


def refit_on_partitions(
    client: Client,
    partitions: Sequence[Partition],
    model: GaussianMixture,
    *,
    max_iter: int | None = None,
    tol: float | None = None,
) -> GaussianMixture:
    """EM from ``model``'s parameters on data split in ``partitions``, E-steps on the cluster.

    ``model`` is a fitted :class:`GaussianMixture` (say, the one model selection chose on a
    sample), or one with ``weights_init``, ``means_init`` and ``precisions_init``; it starts as
    ``fit`` with ``warm_start=True`` would. ``partitions``: :class:`ParquetPartition` objects, or
    any picklable callables returning a partition's complete rows as an (n, d) array. ``max_iter``
    and ``tol`` replace the model's own (None: keep them).

    Returns a new fitted estimator; ``model`` is not modified. Raises :class:`PartitionError`
    (a partition cannot be read or has missing values) or :class:`ClusterFitError` (workers
    kept dying on a partition). Per partition and iteration, ``k x (1 + d + q)`` numbers travel
    back (``q`` second-order terms: ``d (d + 1) / 2`` for ``full``, ``d`` for ``diag``); the
    pooled-scatter covariance types and ``covariance_prior`` add one first pass of ``d x d``.
    """
    parts = list(partitions)
    if not parts:
        raise ValueError("refit_on_partitions needs at least one partition")
    fitted = copy.deepcopy(model)
    changes = {name: value for name, value in (("max_iter", max_iter), ("tol", tol)) if value is not None}
    if changes:
        fitted.set_params(**changes)
    return refit_with(fitted, lambda task, *args: _sum_on_cluster(client, parts, task, *args))


def refit_with(model: GaussianMixture, summed: Callable[..., Any]) -> GaussianMixture:
    """EM from ``model`` (changed in place and returned) with every E-step and moment pass
    ``summed(task, *args)``: the per-partition ``task`` results added over all partitions."""
    covariance_type = model.covariance_type

    def statistics(params: MixtureParameters, shift: np.ndarray) -> SufficientStatistics:
        return summed(_statistics_task, covariance_type, params, shift)

    def moments(shift: np.ndarray) -> DataMoments:
        return summed(_moments_task, shift)

    return model.refit_from_statistics(statistics, moments=moments)
