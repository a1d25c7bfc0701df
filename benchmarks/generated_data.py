"""Generated data shared by the engine benchmarks (imported by the scripts beside it)."""

from __future__ import annotations

import numpy as np


def make_blobs(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """k anisotropic Gaussian blobs with unequal sizes, offset from the origin."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(k, d)) + 10.0
    mix = rng.dirichlet(np.full(k, 3.0))
    labels = rng.choice(k, size=n, p=mix)
    transforms = rng.normal(size=(k, d, d)) / np.sqrt(d) + np.eye(d)
    z = rng.standard_normal((n, d))
    return centres[labels] + np.einsum("nd,nde->ne", z, transforms[labels])
