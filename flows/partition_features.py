"""The features of a partitioned customer table, computed by a cluster's workers a partition each.

Once the workers have validated the partitions (:mod:`flows.partition_validation`), the valid
rows are in their Parquet files. The run's process sorts the valid customers' ids alone (DuckDB;
the ids are what tracking and the assignments need) and cuts that order into partitions of
consecutive customers, as :func:`flows.stages.distribute` cuts a matrix: ``compute.partition_rows``
at most, at least two a worker. Each worker reads its partition's rows from all the files by
their range of ids, in id order (DuckDB), and keeps them. What the run's process computes over
its matrix (:func:`flows.features.feature_matrix`) is then added up over the partitions: each
feature's count and range (a blank or constant feature is refused with the same message), the
standardisation's sums and squared deviations, and the spikes' counts and neighbours (the
screen's seeded sample of rows comes to the run's process). Each worker standardises its
partition and keeps it for the EM passes (:class:`gmm_cluster.ClusterData`); the run's process
writes the model matrix into its file a partition at a time as it comes back (model selection's
sample, the report), holding one partition at most.

The features and the model are those of the run's process on the same rows, to rounding (the
sums are added per partition). A partition lost with its worker is read again from the files by
dask (the partitions are tasks, not scattered data), in any stage up to the workers' write of
the assignments: the files stay until the run lets go of the partitions (the publication's
clearing of the staging folder leaves them: :class:`flows.run_files.StagedFolder`).
"""

from __future__ import annotations

import weakref
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from flows import features as _features
from flows.cluster import partition_rows
from flows.customer_rows import ValidCustomers
from flows.duck import connect, sql_literal
from flows.features import (
    FeatureMatrix,
    Scaler,
    check_columns,
    column_range,
    feature_resolution,
    scaler_from_sums,
    scaler_mean,
    scaler_squares,
    scaler_sums,
    value_neighbours,
    value_totals,
)
from flows.matrix_file import MatrixFile
from gmm_cluster import ClusterData, PartitionError

if TYPE_CHECKING:
    from distributed import Client

    from flows.config import Settings


def _read_range(files: list[str], kept: str, low: str | None, high: str | None, n: int, d: int) -> np.ndarray:
    """On a worker: the kept rows of ``files`` whose id lies in ``[low, high)`` (None: open), in
    id order, as an (n, d) float64 array of their features."""
    where, params = [f"({kept})"], []
    if low is not None:
        where.append("customer_id >= ?")
        params.append(low)
    if high is not None:
        where.append("customer_id < ?")
        params.append(high)
    listed = ", ".join(sql_literal(f) for f in files)
    columns = ", ".join(f"v{j}" for j in range(d))
    with closing(connect(config={"threads": 1})) as con:
        query = f"SELECT {columns} FROM read_parquet([{listed}]) WHERE {' AND '.join(where)}"
        try:
            arrays = con.execute(f"{query} ORDER BY customer_id", params).fetchnumpy()
        except duckdb.IOException as exc:
            # Read again for a partition lost with its worker, after the files were removed
            # from under the run (the run keeps them until it lets go of the partitions).
            raise PartitionError(
                f"the customers from {low!r} to {high!r}: their validated rows are gone from "
                f"{Path(files[0]).parent} ({str(exc).strip().splitlines()[0]})"
            ) from None
    m = len(arrays["v0"])
    if m != n:
        raise RuntimeError(f"the customers from {low!r} to {high!r}: {m:,} read, {n:,} expected")
    X = np.empty((n, d), dtype=np.float64)
    for j in range(d):
        X[:, j] = np.asarray(arrays[f"v{j}"], dtype=np.float64)
    return X


def _range_task(X: np.ndarray, label: str):
    return column_range(X)


def _sums_task(X: np.ndarray, label: str, transforms: list[str]):
    return scaler_sums(X, transforms)


def _squares_task(X: np.ndarray, label: str, transforms: list[str], mean: np.ndarray) -> np.ndarray:
    return scaler_squares(X, transforms, mean)


def _rows_task(X: np.ndarray, label: str, positions: np.ndarray) -> np.ndarray:
    return X[positions]


def _totals_task(X: np.ndarray, label: str, candidates: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    return value_totals(X, candidates)


def _neighbours_task(X: np.ndarray, label: str, values: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    return value_neighbours(X, values)


def _standardised(X: np.ndarray, scaler: Scaler) -> np.ndarray:
    return scaler.transform(X)


class _Rows:
    """Rows of a :class:`ClusterData` in consecutive partitions, as
    :func:`flows.features.feature_resolution` draws its screen: ``rows[positions]`` (sorted)."""

    def __init__(self, data: ClusterData):
        self.data = data
        self.shape = (data.n_samples, data.n_features)
        self._starts = np.asarray([a for a, _ in data.bounds], dtype=np.int64)

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size > 1 and not bool(np.all(positions[1:] >= positions[:-1])):
            raise ValueError("rows of a cluster's partitions are drawn in order")
        owner = np.searchsorted(self._starts, positions, side="right") - 1
        which = [int(i) for i in np.unique(owner)]
        own = [(positions[owner == i] - self._starts[i],) for i in which]
        parts = self.data.map(_rows_task, which=which, own=own)
        return np.concatenate(parts) if parts else np.empty((0, self.shape[1]))


def features_on_cluster(
    client: Client, valid: ValidCustomers, settings: Settings
) -> tuple[FeatureMatrix, ClusterData]:
    """The run's features (:func:`flows.stages.compute_features` with ``keep_original=False``,
    the matrix in a file) and the same model matrix kept on the workers, computed there a
    partition at a time from the files ``valid`` reads (module docstring).

    ``valid``: rows the workers validated (:meth:`ValidCustomers.over_files`), at least two
    customers, no blank feature. Its files are then kept until the partitions are let go of
    (unless the caller took their removal first, with :meth:`ValidCustomers.keep_files`).

    Raises
    ------
    flows.features.FeatureError
        A feature blank or constant for every customer.
    """
    names = list(settings.features.columns)
    units = [settings.unit_of(n) for n in names]
    transforms = [settings.transform_of(n) for n in names]
    d = len(names)
    n = len(valid)
    assert valid.files and n >= 2, "features_on_cluster takes two or more customers the workers validated"
    ids = valid.read_ids()
    try:
        size = partition_rows(client, n, settings.compute.partition_rows)
        bounds = [(a, min(a + size, n)) for a in range(0, n, size)]
        firsts = [ids.strings(a, a + 1)[0] for a, _ in bounds]
        # The repeated ids go beside the workers' files, where they read them.
        kept = valid.kept_where(str(Path(valid.files[0]).parent / "repeated-ids.parquet"))
        raw = ClusterData(
            client,
            [
                client.submit(
                    _read_range,
                    valid.files,
                    kept,
                    None if i == 0 else firsts[i],
                    firsts[i + 1] if i + 1 < len(bounds) else None,
                    b - a,
                    d,
                    pure=False,
                )
                for i, (a, b) in enumerate(bounds)
            ],
            shape=(n, d),
            bounds=bounds,
        )
        lowest, highest, scaler, spikes = _figures(raw, names, settings)
        model = [client.submit(_standardised, part, scaler, pure=False) for part in raw.partitions]
        # The raw rows go from the workers' memory; dask can read them again for `model`.
        del raw
        X_model = MatrixFile.from_blocks((client.gather(part) for part in model), (n, d))
    except BaseException:
        ids.remove()
        raise
    data = ClusterData(client, model, shape=(n, d), bounds=bounds)
    files = valid.keep_files()
    if files is not None:
        weakref.finalize(data, files)
    features = FeatureMatrix(
        customer_ids=ids,
        names=names,
        units=units,
        transforms=transforms,
        X_original=None,
        X_model=X_model,
        scaler=scaler,
        resolution=spikes[0],
        spike_value=spikes[1],
        spike_share=spikes[2],
        lowest=lowest,
        highest=highest,
    )
    return features, data


def _figures(raw: ClusterData, names: list[str], settings: Settings):
    """What :func:`flows.features.feature_matrix` computes over its matrix, added up over the
    partitions ``raw`` (features in original units): the lowest and highest values, the scaler
    and the spikes (resolution, value, share)."""
    d = len(names)
    n = raw.n_samples
    observed, lowest, highest = np.zeros(d, dtype=np.int64), np.full(d, np.nan), np.full(d, np.nan)
    for seen, low, high in raw.map(_range_task):
        observed += seen
        lowest, highest = np.fmin(lowest, low), np.fmax(highest, high)
    check_columns(names, n, observed, lowest, highest)
    transforms = [settings.transform_of(name) for name in names]
    scaler = _scaler(raw, transforms, settings.features.standardize)
    if settings.features.resolution != "auto":
        spikes = (np.zeros(d), np.full(d, np.nan), np.zeros(d))
    elif n <= _features.SPIKE_SCREEN:
        # Few customers: every value counted, as in the run's process (a few MiB).
        spikes = feature_resolution(np.concatenate(raw.client.gather(raw.partitions)), scaler)
    else:
        spikes = feature_resolution(
            _Rows(raw),
            scaler,
            totals=lambda candidates: _added_totals(raw.map(_totals_task, candidates)),
            neighbours=lambda values: _nearest(raw.map(_neighbours_task, values), d),
        )
    return lowest, highest, scaler, spikes


def _scaler(raw: ClusterData, transforms: list[str], standardize: bool) -> Scaler:
    d = len(transforms)
    if not standardize:
        return Scaler(tuple(transforms), np.zeros(d), np.ones(d))
    count, total = np.zeros(d, dtype=np.int64), np.zeros(d)
    for their_count, their_total in raw.map(_sums_task, transforms):
        count += their_count
        total += their_total
    mean = scaler_mean(count, total)
    squares = np.sum(raw.map(_squares_task, transforms, mean), axis=0)
    return scaler_from_sums(transforms, count, mean, squares)


def _added_totals(parts: list[dict[int, np.ndarray]]) -> dict[int, np.ndarray]:
    total = {j: counts.copy() for j, counts in parts[0].items()}
    for part in parts[1:]:
        for j, counts in part.items():
            total[j] += counts
    return total


def _nearest(parts: list[tuple[np.ndarray, np.ndarray]], d: int) -> tuple[np.ndarray, np.ndarray]:
    below, above = np.full(d, np.nan), np.full(d, np.nan)
    for their_below, their_above in parts:
        below, above = np.fmax(below, their_below), np.fmin(above, their_above)
    return below, above
