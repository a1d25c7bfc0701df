"""Keep BLAS single-threaded inside the engine, which parallelises over chunks itself.

The per-chunk products are skinny ((k, n) x (n, p) with k, p < 100). Multi-threaded OpenBLAS
gains nothing on them and, on a busy 2-core machine, was measured 5-70x slower than one thread
(benchmarks/engine_vs_sklearn.py); the engine runs chunks on its own threads instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from threadpoolctl import threadpool_limits


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread for the duration of the block (restored afterwards)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield
