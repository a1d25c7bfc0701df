"""mclust's fourteen covariance models: seconds per EM iteration of each.

The same data (n samples, d = 8, k = 8 anisotropic blobs, as in ``engine_vs_sklearn.py``) are
fitted with every model from identical initial weights and means (precisions: the identity), a
few EM iterations each with ``tol=0``. Printed per model: seconds per iteration, the ratio to
``full`` (VVV) in the same run, and the final mean log-likelihood.

Usage::

    python benchmarks/covariance_models.py                 # n = 1,000,000
    python benchmarks/covariance_models.py --n 100000 --iterations 5
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from generated_data import make_blobs

from gmm_engine import MCLUST_MODELS, ConvergenceWarning, GaussianMixture, covariance_layout
from gmm_engine.covariance import COVARIANCE_MODELS


def identity_precisions(model: str, k: int, d: int) -> np.ndarray:
    shape = COVARIANCE_MODELS[model].covariance_shape(k, d)
    layout = covariance_layout(model)
    if layout == "full":
        return np.broadcast_to(np.eye(d), shape).copy()
    if layout == "tied":
        return np.eye(d)
    return np.ones(shape)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()

    X = make_blobs(args.n, args.d, args.k)
    rng = np.random.default_rng(1)
    means = X[rng.choice(args.n, size=args.k, replace=False)]
    weights = np.full(args.k, 1.0 / args.k)
    print(f"n={args.n:,} d={args.d} k={args.k}, {args.iterations} EM iterations from identical parameters")
    print(f"{'model':>6} {'s/iter':>8} {'vs VVV':>7} {'mean log-lik.':>14}")
    rows = []
    for model in MCLUST_MODELS:
        gm = GaussianMixture(
            args.k,
            covariance_type=model,
            tol=0.0,
            max_iter=args.iterations,
            weights_init=weights,
            means_init=means,
            precisions_init=identity_precisions(model, args.k, args.d),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            gm.fit(X)
            seconds = (time.perf_counter() - start) / args.iterations
        rows.append((model, seconds, gm.lower_bound_))
    full = {m: s for m, s, _ in rows}["VVV"]
    for model, seconds, bound in rows:
        print(f"{model:>6} {seconds:8.3f} {seconds / full:7.2f} {bound:14.5f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
