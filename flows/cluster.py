"""The dask cluster a run uses (``compute.cluster``, ``segment run --cluster``).

``local`` or ``local:N`` starts a ``dask.distributed`` LocalCluster of N worker processes (one
thread each, ``compute.worker_memory`` each) for the run and stops it afterwards;
``tcp://host:port`` connects to a running scheduler, whose workers must have this project
installed (they import ``gmm_engine`` and ``gmm_cluster``). What runs there is described in
:mod:`gmm_cluster`; the rest of the run stays in this process.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed import Client

_LOCAL = re.compile(r"local(?::(\d+))?")
_ADDRESS = re.compile(r"(tcp|tls|ucx|inproc)://\S+")


class ClusterError(RuntimeError):
    """The cluster could not be started or reached; the message is one line naming it."""


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``compute.cluster``: a local cluster of ``workers`` processes (None: one per
    core), or the ``address`` of a running scheduler."""

    workers: int | None = None
    address: str | None = None

    @classmethod
    def parse(cls, text: str) -> ClusterSpec:
        value = text.strip()
        local = _LOCAL.fullmatch(value)
        if local:
            workers = None if local.group(1) is None else int(local.group(1))
            if workers == 0:
                raise ValueError("local:N needs at least one worker (local:1)")
            return cls(workers=workers)
        if _ADDRESS.fullmatch(value):
            return cls(address=value)
        raise ValueError(
            f"not a cluster: {text!r}; use local, local:N (N worker processes on this machine) or a "
            "scheduler's address such as tcp://scheduler:8786"
        )

    @property
    def is_local(self) -> bool:
        return self.address is None

    def __str__(self) -> str:
        if self.address is not None:
            return self.address
        return "local" if self.workers is None else f"local:{self.workers}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def cluster_client(
    spec: ClusterSpec,
    worker_memory: str = "2GiB",
    timeout: float = 30.0,
    log=None,
) -> Iterator[Client]:
    """A ``distributed.Client`` on the cluster ``spec`` describes, closed (and a local cluster
    stopped) on exit.

    ``log`` (default: this module's logger) is told what the run got.

    Raises
    ------
    ClusterError
        The local cluster's workers did not start, or no scheduler answered at the address,
        within ``timeout`` seconds.
    """
    log = log or logging.getLogger(__name__).info
    with _quiet_dask():
        if spec.is_local:
            with _local_cluster(spec, worker_memory, timeout, log) as client:
                yield client
        else:
            with _scheduler(spec, timeout, log) as client:
                yield client


@contextmanager
def _quiet_dask() -> Iterator[None]:
    """dask's loggers at ERROR while the run holds its cluster (restored after): the run's own
    log says what the cluster does, and dask's start-up chatter and its warnings about a busy
    event loop while the client waits for EM sums are noise there."""
    loggers = [
        logging.getLogger(name) for name in ("distributed", "distributed.nanny", "distributed.scheduler")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextmanager
def _local_cluster(spec: ClusterSpec, worker_memory: str, timeout: float, log) -> Iterator[Client]:
    workers = spec.workers or max(1, os.cpu_count() or 1)
    # A worker inherits this process's environment, where an earlier dask nanny in the same
    # process may have left MALLOC_TRIM_THRESHOLD_ ("poisoning the process running the Nanny",
    # dask's docs): it stays out of the environment while the cluster lives, so that a worker
    # the nanny restarts is started without it too.
    inherited = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    try:
        with _started(spec, workers, worker_memory, timeout, log) as client:
            yield client
    finally:
        if inherited is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = inherited


@contextmanager
def _started(spec: ClusterSpec, workers: int, worker_memory: str, timeout: float, log) -> Iterator[Client]:
    import dask
    from distributed import Client, LocalCluster

    from gmm_cluster import WORKER_CONFIG

    cluster = client = None
    try:
        with dask.config.set({"distributed.comm.timeouts.connect": f"{timeout}s", **WORKER_CONFIG}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                memory_limit=worker_memory,
                dashboard_address=":0",  # a free port: never a clash with a running cluster
            )
            client = Client(cluster, timeout=f"{timeout}s")
            client.wait_for_workers(workers, timeout=timeout)
    except (TimeoutError, OSError) as exc:
        _close(client, cluster)
        raise ClusterError(
            f"compute.cluster {spec}: the local cluster did not start ({_first_line(exc)})"
        ) from None
    address = cluster.scheduler_address
    log(f"dask LocalCluster: {workers} worker processes, {worker_memory} each, at {address}")
    try:
        yield client
    finally:
        _close(client, cluster)


@contextmanager
def _scheduler(spec: ClusterSpec, timeout: float, log) -> Iterator[Client]:
    from distributed import Client

    try:
        client = Client(spec.address, timeout=f"{timeout}s")
    except (TimeoutError, OSError, ValueError) as exc:
        raise ClusterError(
            f"compute.cluster {spec}: no dask scheduler answered within {timeout:g} s ({_first_line(exc)})"
        ) from None
    try:
        n = len(client.scheduler_info().get("workers", {}))
        if n == 0:
            with suppress(TimeoutError):
                client.wait_for_workers(1, timeout=timeout)
            n = len(client.scheduler_info().get("workers", {}))
            if n == 0:
                raise ClusterError(
                    f"compute.cluster {spec}: the scheduler has no workers (waited {timeout:g} s)"
                )
        log(f"dask scheduler {spec}: {n} workers")
        yield client
    finally:
        client.close()


def _close(*things) -> None:
    """Close a client and its local cluster; a cluster that is already gone is not an error."""
    for thing in things:
        if thing is not None:
            with suppress(Exception):
                thing.close()


def _sees(paths: list[str]) -> bool:
    """On a worker: whether every one of ``paths`` exists there."""
    return all(os.path.exists(p) for p in paths)


def blind_workers(client: Client, folder: Path, paths: list[str] | None = None) -> int:
    """How many of the cluster's workers do not see ``paths`` and a file this process writes in
    ``folder`` (created): a remote cluster without the folder shared. A worker that cannot
    answer (dying) is not counted: the tasks' retries cover it."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f"probe-{uuid.uuid4().hex}"
    probe.touch()
    try:
        seen = client.run(_sees, [*(paths or []), str(probe)], on_error="return")
    finally:
        probe.unlink(missing_ok=True)
    return sum(ok is False for ok in seen.values())


def partition_rows(client: Client, n_customers: int, max_rows: int) -> int:
    """Customers per partition on ``client``'s workers (:func:`gmm_cluster.rows_per_partition`
    for the workers it has now): at most ``max_rows`` (``compute.partition_rows``), at least two
    partitions a worker."""
    from gmm_cluster import rows_per_partition

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    return rows_per_partition(n_customers, n_workers, max_rows)
