"""Keep BLAS single-threaded inside the engine, which parallelises over chunks itself.

The per-chunk products are skinny ((k, n) x (n, p) with k, p < 100). Multi-threaded OpenBLAS
gains nothing on them and, on a busy 2-core machine, was measured 5-70x slower than one thread
(benchmarks/engine_vs_sklearn.py); the engine runs chunks on its own threads instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

# The limit is process-wide while fits run on several threads: the first fit to enter sets it,
# the last to leave restores it.
_lock = threading.Lock()
_active = 0
_limiter = None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread while any engine call is running (restored afterwards)."""
    global _active, _limiter
    with _lock:
        if _active == 0:
            _limiter = threadpool_limits(limits=1, user_api="blas")
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None
