"""A run's assignments computed and written by the cluster's workers, a partition at a time.

On a cluster (``compute.cluster``) the customers' model matrix is already on the workers
(:func:`flows.stages.distribute`). In stage ``assign`` each partition's task gives back its
customers' most probable segments and the segments' profile totals (:func:`assign_on_cluster`).
In stage ``write`` each worker computes its partition's memberships and log-densities, builds and
validates its customers' rows (``schemas.Assignments``) and writes them as one Parquet part of
the run's assignments (:class:`ClusterAssignments`). What travels to a worker is its customers'
ids (as bytes), the segment each was given (after tracking) and the held flags; a row count
comes back.

The workers write into a staging folder (:func:`flows.run_files.staging_root`, out of every
view's reach); the client moves the parts into the run's folder once every partition is written,
inside the publication's block. A run whose write fails or is killed leaves no part visible: the
next publication removes what it staged (``flows.run_files.clear_staging``).

The workers must see the results folder at the path the client does (a LocalCluster's do; a
remote cluster's need it on a shared filesystem). The client checks first, with a file only it
has written: when a worker does not see it, the client computes and writes the assignments
itself, as without a cluster, and says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flows import run_files
from flows.cluster import blind_workers
from flows.duck import connect
from flows.faults import fault_point
from flows.features import FeatureMatrix
from flows.segments import (
    AssignmentRows,
    Memberships,
    SegmentResult,
    assign_rows,
    assignment_table,
    segment_result,
)
from flows.store import ASSIGNMENT_CHUNK_ROWS, write_assignment_part, write_assignments
from flows.text_file import TextBlock, TextFile
from reports.profiles import MembershipTotals
from schemas import Assignments

if TYPE_CHECKING:
    from gmm_cluster import ClusterData


def _write_partition(
    X: np.ndarray,
    label: str,
    first_part: int,
    customer_ids: np.ndarray | TextBlock,
    result: SegmentResult,
    staging: str,
    run_id: int,
) -> int:
    """On a worker: the assignments of one partition's customers (rows ``X`` in model space,
    ``result`` cut to them) written under ``staging`` as parts ``first_part``, ``first_part + 1``,
    ... of :data:`flows.store.ASSIGNMENT_CHUNK_ROWS` customers each (so a worker holds one part's
    rows at a time, as the run's process would); how many rows were written."""
    mine = replace(result, memberships=replace(result.memberships, X_model=X))
    n = X.shape[0]
    with closing(connect()) as con:
        for j, start in enumerate(range(0, n, ASSIGNMENT_CHUNK_ROWS)):
            rows = slice(start, min(start + ASSIGNMENT_CHUNK_ROWS, n))
            frame = Assignments.validate(assignment_table(mine, customer_ids, None, rows))
            write_assignment_part(con, Path(staging), run_id, first_part + j, frame)
    return n


def _assign_partition(X: np.ndarray, label: str, model, scaler) -> tuple[np.ndarray, MembershipTotals]:
    """On a worker: one partition's most probable components and membership totals."""
    return assign_rows(model, X, lambda block, _: scaler.inverse_transform(block))


def assign_on_cluster(model, features: FeatureMatrix, data: ClusterData) -> SegmentResult:
    """:func:`flows.segments.assign_segments` with the E-step over all customers on the workers
    that hold them: each partition's components (8 bytes a customer) and its membership totals
    (k x d numbers) come back; the profiles' totals are summed in partition order."""
    bounds = _covering(data, features.n_customers)
    k, d = model.means_.shape
    labels = np.empty(features.n_customers, dtype=np.int64)
    totals = MembershipTotals.zeros(k, d)
    for (start, stop), (mine, their_totals) in zip(
        bounds, data.map(_assign_partition, model, features.scaler), strict=True
    ):
        labels[start:stop] = mine
        totals = totals + their_totals
    memberships = Memberships(model, features.X_model, np.arange(k, dtype=np.int64))
    return segment_result(model, memberships, labels, totals)


def _covering(data: ClusterData, n: int) -> list[tuple[int, int]]:
    """The rows (start, stop) of each of ``data``'s partitions, checked to cover ``n`` customers."""
    bounds = data.bounds
    if not bounds or bounds[-1][1] != n:
        raise ValueError("the cluster's partitions do not cover this run's customers")
    return bounds


@dataclass(frozen=True, eq=False)
class ClusterAssignments:
    """Every customer's assignment row, written by the workers that hold the customers
    (:class:`flows.store.PartWriter`).

    Parameters
    ----------
    data : gmm_cluster.ClusterData
        The customers' model matrix on the workers, scattered from the run's matrix (its
        ``bounds`` say which customers each partition holds).
    result : SegmentResult
        The segments given (after tracking), in the order of the customers.
    customer_ids : ndarray or TextFile
        The customers' ids, in the same order.
    warn : callable, optional
        Told (one line) when the workers cannot see the results folder and the client writes.
    """

    data: ClusterData
    result: SegmentResult
    customer_ids: np.ndarray | TextFile
    warn: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return int(self.result.labels.shape[0])

    def write_parts(self, root: Path, run_id: int) -> None:
        """Write part ``i`` of the assignments on the worker holding partition ``i``, a few
        partitions at a time (so the client holds the ids of those only), then move the parts
        into the run's folder."""
        bounds = _covering(self.data, len(self))
        staging = run_files.staging_root(root)
        # Only the assignments' staged parts: the staging folder may also hold the rows the
        # workers validated, from which dask computes a lost partition again.
        parts = run_files.run_file(staging, "assignments", run_id).parent.parent
        run_files.remove_staged(parts)
        written = 0
        try:
            blind = blind_workers(self.data.client, staging)
            if blind:
                if self.warn is not None:
                    self.warn(
                        f"{blind} of the cluster's workers do not see the results folder {root}: the "
                        "assignments are computed and written here instead (share the folder with the "
                        "workers at the same path to have them write)"
                    )
                write_assignments(root, run_id, AssignmentRows(self.result, self.customer_ids))
                return
            fault_point("cluster-write")
            # One partition a worker at a time: the run holds those partitions' ids only.
            wave = len(self.data.client.scheduler_info().get("workers", {})) or 1
            parts_each = max(-(-(b - a) // ASSIGNMENT_CHUNK_ROWS) for a, b in bounds)
            for lo in range(0, len(bounds), wave):
                which = list(range(lo, min(lo + wave, len(bounds))))
                own = [(i * parts_each, self._ids(*bounds[i]), self._cut(*bounds[i])) for i in which]
                written += sum(self.data.map(_write_partition, str(staging), run_id, which=which, own=own))
            if written != len(self):
                raise RuntimeError(f"the workers wrote {written:,} assignments of {len(self):,} customers")
            self._move(staging, root, run_id)
        finally:
            run_files.remove_staged(parts)

    def _ids(self, start: int, stop: int) -> np.ndarray | TextBlock:
        """Customers ``start:stop``'s ids as they travel: their bytes, when kept in a file."""
        if isinstance(self.customer_ids, TextFile):
            return self.customer_ids.block(start, stop)
        return self.customer_ids[start:stop]

    def _cut(self, start: int, stop: int) -> SegmentResult:
        """The result for the customers ``start:stop``, without the matrix (the worker has it)."""
        result = self.result
        return replace(
            result,
            labels=result.labels[start:stop],
            held=None if result.held is None else result.held[start:stop],
            memberships=replace(result.memberships, X_model=np.empty((0, result.means.shape[1]))),
        )

    @staticmethod
    def _move(staging: Path, root: Path, run_id: int) -> None:
        """The staged parts into the run's folder (renames on one filesystem), synced."""
        source = run_files.run_file(staging, "assignments", run_id).parent
        target = run_files.run_file(root, "assignments", run_id).parent
        target.mkdir(parents=True, exist_ok=True)
        for part in sorted(source.glob("part-*.parquet")):
            os.replace(part, target / part.name)
        run_files.fsync(target)
