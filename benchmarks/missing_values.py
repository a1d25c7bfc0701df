"""Missing values: what EM with gaps costs against the same data complete.

The same data (n samples, d = 8, k = 8 blobs, as in ``engine_vs_sklearn.py``) are fitted three
times from identical initial parameters, 10 EM iterations each with ``tol=0``: complete (the
reference, ``missing="marginalize"`` on data without NaN, which is the default's fast path), and
with 5 % and 30 % of the values deleted completely at random (``missing="marginalize"``). Printed
per covariance type: seconds per iteration, the ratio to complete data, the share of incomplete
rows and the number of missingness patterns.

Usage::

    python benchmarks/missing_values.py                  # n = 200,000
    python benchmarks/missing_values.py --n 1000000 --types full diag
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from generated_data import make_blobs

from gmm_engine import ConvergenceWarning, GaussianMixture
from gmm_engine.missing import find_patterns

SHARES = (0.05, 0.30)


def delete_at_random(X: np.ndarray, share: float, seed: int = 1) -> np.ndarray:
    """NaN in ``share`` of the values, keeping at least one observed value per row."""
    rng = np.random.default_rng(seed)
    out = X.copy()
    out[rng.random(X.shape) < share] = np.nan
    empty = np.flatnonzero(np.isnan(out).all(axis=1))
    keep = rng.integers(0, X.shape[1], size=empty.size)
    out[empty, keep] = X[empty, keep]
    return out


def seconds_per_iteration(X: np.ndarray, k: int, covariance_type: str, init: dict, iterations: int) -> float:
    gm = GaussianMixture(
        k, covariance_type=covariance_type, tol=0.0, max_iter=iterations, missing="marginalize", **init
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        gm.fit(X)
    return (time.perf_counter() - start) / iterations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--types", nargs="*", default=["full", "tied", "diag", "spherical"])
    args = parser.parse_args()

    X = make_blobs(args.n, args.d, args.k)
    holed = {share: delete_at_random(X, share) for share in SHARES}
    print(f"n={args.n:,} d={args.d} k={args.k}, {args.iterations} EM iterations from identical parameters")
    for share, Xm in holed.items():
        patterns = find_patterns(Xm)
        print(
            f"  {share:.0%} of values missing: {patterns.n_incomplete / args.n:.1%} of rows incomplete, "
            f"{len(patterns.rows)} patterns"
        )
    print(
        f"{'type':>10} {'complete s/it':>14}"
        + "".join(f" {f'{s:.0%} s/it':>10} {'ratio':>6}" for s in SHARES)
    )
    for covariance_type in args.types:
        # Initial parameters from a short fit on complete data, shared by all three runs.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ref = GaussianMixture(args.k, covariance_type=covariance_type, max_iter=3, random_state=0)
            ref.fit(X[:20_000])
        init = {"weights_init": ref.weights_, "means_init": ref.means_, "precisions_init": ref.precisions_}
        base = seconds_per_iteration(X, args.k, covariance_type, init, args.iterations)
        cells = [
            seconds_per_iteration(Xm, args.k, covariance_type, init, args.iterations) for Xm in holed.values()
        ]
        print(
            f"{covariance_type:>10} {base:14.4f}" + "".join(f" {c:10.4f} {c / base:6.1f}" for c in cells),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
