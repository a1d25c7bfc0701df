"""A partitioned customer table validated by a cluster's workers, one task per partition.

On a cluster (``compute.cluster``) with a customer table in Parquet partitions (read without
``input.query``), the run's process does not read the rows. The load stage checks the
partitions' columns and counts them (:func:`flows.partitions.check_partitions`); in stage
``validate`` each worker reads a partition with DuckDB (:func:`flows.load.partition_frames`),
checks it with Pandera a chunk at a time (every rule but the unique id:
:func:`schemas.customers.check_customer_chunks`) and writes every row's number, id, verdict and
features as Parquet into a staging folder beside the results database. The run's process reads
those files where they are with DuckDB (:meth:`flows.customer_rows.ValidCustomers.over_files`: no
row passes through Python there), finds the ids repeated across all partitions and puts the
reject records together: the same valid customers and the same records as validating in the
run's process.

The workers must see the partitions and the staging folder at the paths the run's process does
(a LocalCluster's do; a remote cluster's need a shared filesystem). The run checks first with
a file only it has written: when a worker does not see it or the first partition, the run reads
and validates the partitions itself, as without a cluster, and says so.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flows import run_files
from flows.cluster import blind_workers
from flows.customer_rows import ValidCustomers, row_frame, row_select
from flows.duck import connect, sql_literal
from flows.load import LoadedInput, partition_frames
from flows.store import results_path
from schemas.customers import ChunkChecks, check_customer_chunks, customer_table_schema, with_repeated_ids
from schemas.validation import ValidationOutcome, blank_text_as_missing

if TYPE_CHECKING:
    from distributed import Client

    from flows.config import Settings


#: Rows per Parquet row group of the validated rows' files (a chunk of 204,800 makes 25).
ROW_GROUP_ROWS = 8192


@dataclass(frozen=True)
class PartitionRules:
    """What a worker needs to validate a partition as the run's process would (picklable)."""

    select: str  # LoadedInput.partition_select
    names: list[str]  # the canonical columns (LoadedInput.dtypes' order)
    features: list[str]
    transforms: dict[str, str]
    may_be_blank: list[str]
    max_missing_share: float
    source: str
    source_columns: dict[str, str]


@dataclass(frozen=True)
class PartitionChecked:
    """A worker's answer for one partition: its reject records, its rows' files, its row count."""

    checks: ChunkChecks
    files: list[str]
    n_rows: int


class PartRows:
    """On a worker, :class:`schemas.customers.CustomerRowSink` writing each chunk's rows, in id
    order, as a Parquet file ``<stem>-<i>.parquet`` of ``folder`` (the layout
    :meth:`flows.customer_rows.ValidCustomers.over_files` reads). A file appears whole: it is
    written under a hidden name and renamed, and a task run again writes the same names."""

    def __init__(self, folder: str | Path, stem: str, n_features: int):
        self.folder = Path(folder)
        self.stem = stem
        self.d = n_features
        self.files: list[str] = []
        self._con = connect(config={"threads": 1})

    def add(self, row_numbers: np.ndarray, ids: np.ndarray, valid: np.ndarray, values: np.ndarray) -> None:
        if not len(row_numbers):
            return
        target = self.folder / f"{self.stem}-{len(self.files):05d}.parquet"
        hidden = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        self._con.register("chunk", row_frame(row_numbers, ids, valid, values, self.d))
        try:
            # In id order, in small row groups: a worker reading one range of ids from every
            # file (flows.partition_features) then skips the row groups outside it by their
            # statistics (a 1/8 range of 10^7 customers: 0.44 s instead of 0.81 s; 1/100: 0.11
            # instead of 0.68), for 0.03 s a chunk more to sort.
            self._con.execute(
                f"COPY ({row_select('chunk', self.d)} ORDER BY customer_id) TO {sql_literal(hidden)} "
                f"(FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
            )
        finally:
            self._con.unregister("chunk")
        os.replace(hidden, target)
        self.files.append(str(target))

    def repeated(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError("repeated ids are found across all partitions, by the run's process")

    def close(self) -> None:
        self._con.close()


def _validate_partition(
    path: str, label: str, first_row: int, stem: str, rules: PartitionRules, staging: str
) -> PartitionChecked:
    """On a worker: one partition read, checked and its rows written under ``staging``."""
    rows = PartRows(staging, stem, len(rules.features))
    n = 0

    def counted(frames):
        nonlocal n
        for frame in frames:
            n += len(frame)
            yield blank_text_as_missing(frame, rules.features)

    try:
        checks = check_customer_chunks(
            counted(partition_frames(path, rules.select, rules.names, first_row)),
            rows,
            customer_table_schema(rules.features, rules.transforms, rules.may_be_blank, unique_ids=False),
            rules.features,
            rules.max_missing_share,
            rules.source,
            rules.source_columns,
        )
    finally:
        rows.close()
    return PartitionChecked(checks, rows.files, n)


def staging_folder(database: str | Path) -> Path:
    """The results folder's staging folder (:func:`flows.run_files.staging_root`), in which the
    workers write the rows they validated (a folder of their own each run), and which every
    publication clears of what a failed or killed run left. A link to the results file is
    followed, as the publication follows it."""
    return run_files.staging_root(run_files.root_for(results_path(database)))


def workers_read_partitions(
    client: Client, files: list[str], staging: Path, warn: Callable[[str], None]
) -> bool:
    """Whether every worker sees the first partition and a file this process writes in
    ``staging`` (``warn`` is told, in one line, when one does not)."""
    blind = blind_workers(client, staging, [files[0]])
    if blind:
        warn(
            f"{blind} of the cluster's workers do not see the input's partitions or the folder "
            f"{staging.parent}: the partitions are read and validated here instead (share both with "
            "the workers at the same paths to have them validate)"
        )
    return not blind


def validate_on_cluster(client: Client, loaded: LoadedInput, settings: Settings) -> ValidationOutcome:
    """Validate ``loaded``'s partitions (left unread: :attr:`LoadedInput.partition_select`) on
    the cluster's workers, a task per partition (module docstring).

    Raises
    ------
    flows.load.InputError
        A partition could not be read (the first such partition, in partition order).
    gmm_cluster.ClusterFitError
        Workers kept dying on a partition.
    """
    from gmm_cluster import run_on_partitions

    assert loaded.partition_select is not None, "validate_on_cluster takes partitions left unread"
    features = settings.features
    files = [name for name, _ in loaded.partitions]
    counts = np.asarray([count for _, count in loaded.partitions], dtype=np.int64)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    rules = PartitionRules(
        select=loaded.partition_select,
        names=list(loaded.dtypes),
        features=list(features.columns),
        transforms=dict(features.transforms),
        may_be_blank=[c for c in features.columns if features.missing_rule(c) == "model"],
        max_missing_share=float(features.max_missing_share),
        source=loaded.source,
        source_columns=dict(loaded.source_columns),
    )
    # A folder of this run's own: a folder of an earlier run's rows in this process may still
    # be waiting for the garbage collector to remove it.
    staging = staging_folder(settings.output.database) / f"validation-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        own = [(int(first), f"p{i:05d}") for i, first in enumerate(firsts)]
        results: list[PartitionChecked] = run_on_partitions(
            client, files, _validate_partition, rules, str(staging), own=own
        )
        n = sum(r.n_rows for r in results)
        if n != loaded.n_read:
            raise RuntimeError(f"the workers read {n:,} rows of the partitions' {loaded.n_read:,}")
    except BaseException:
        run_files.remove_staged(staging)
        raise
    # The rows stay in the workers' files until the features are read from them, or until the
    # partitions the workers computed from them are released (the folder goes with them, or with
    # the next publication if the run is killed).
    rows = ValidCustomers.over_files(features.columns, [name for r in results for name in r.files], staging)
    try:
        rejects = with_repeated_ids(
            ChunkChecks.joined(r.checks for r in results), rows, loaded.source, loaded.source_columns
        )
    except BaseException:
        rows.close()
        raise
    return ValidationOutcome(valid=rows, rejects=rejects, n_rows=loaded.n_read)
