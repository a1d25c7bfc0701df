"""gmm_cluster: the engine's EM on data partitioned across a ``dask.distributed`` cluster.

The E-step runs on the workers, one task per partition, each returning only its share of the
M-step totals; the client sums them and runs the M-step (:mod:`gmm_cluster.em`). Workers need
numpy, duckdb and :mod:`gmm_engine`; nothing large is gathered to the client.
"""

from .data import ClusterData, rows_per_partition
from .em import ClusterFitError, ParquetPartition, PartitionError, PartitionsLostError, refit_on_partitions

__all__ = [
    "ClusterData",
    "ClusterFitError",
    "ParquetPartition",
    "PartitionError",
    "PartitionsLostError",
    "refit_on_partitions",
    "rows_per_partition",
]
