"""The engine holds BLAS to one thread while it runs, from any number of threads, and restores it."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from gmm_engine import select_model


def blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_blas_limit_is_restored_after_parallel_selection():
    before = blas_threads()
    seen = []
    X = np.random.default_rng(0).normal(size=(3000, 3))
    select_model(
        X,
        range(1, 4),
        ("full", "diag"),
        n_init=2,
        n_jobs=2,
        progress=lambda done, total: seen.append(blas_threads()),
    )
    assert seen and all(all(n == 1 for n in threads) for threads in seen)
    assert blas_threads() == before
