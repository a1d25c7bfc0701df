"""Retention: results file size and publication time over many runs, keeping all runs or the newest N.

Publishes ``--runs`` runs of ``--customers`` assignments each through the store (``finish_run``, the
same copy-on-write publication a flow run does, without fitting anything) into two databases side
by side: one keeping everything (``output.keep_runs = 0``), one keeping the newest ``--keep`` runs'
per-customer rows. Prints the file size and the publication time after every run, and the ratios.

Usage::

    python benchmarks/retention.py                      # 12 runs x 200,000 customers, keep 2
    python benchmarks/retention.py --runs 20 --customers 50000 --keep 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flows.runlock import database_lock
from flows.store import RunRecord, feature_scaler_table, finish_run, start_run

K = 5


def make_record(customers: int, seed: int) -> RunRecord:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(K), size=customers)
    best = probs.argmax(axis=1)
    assignments = pd.DataFrame(
        {
            "customer_id": [f"c{i:07d}" for i in range(customers)],
            "segment_id": best + 1,
            "probability": probs[np.arange(customers), best],
            "log_density": rng.normal(-4.0, 1.0, customers),
            **{f"p_{j + 1}": probs[:, j] for j in range(K)},
        }
    )
    ids = np.arange(1, K + 1)
    return RunRecord(
        as_of=None,
        rows_loaded=customers,
        rows_rejected=0,
        rows_excluded={},
        customers=customers,
        features=["f"],
        n_components=K,
        covariance_type="diag",
        criterion="bic",
        bic=1.0,
        aic=1.0,
        icl=1.0,
        log_likelihood=-1.0,
        report_path=None,
        candidates=[
            {
                "n_components": K,
                "covariance_type": "diag",
                "bic": 1.0,
                "aic": 1.0,
                "icl": 1.0,
                "status": "ok",
                "reason": "",
                "selected": True,
                "converged": True,
                "n_iter": 1,
                "n_parameters": 2 * K,
                "log_likelihood": -1.0,
                "mean_log_likelihood": -1.0,
                "seconds": 0.0,
            }
        ],
        segments=pd.DataFrame(
            {
                "segment_id": ids,
                "weight": np.full(K, 1.0 / K),
                "customer_count": np.bincount(best, minlength=K),
                "mean_probability": np.full(K, 0.5),
                "model_mean": [[0.0]] * K,
                "model_covariance": [[1.0]] * K,
            }
        ),
        segment_features=pd.DataFrame(
            {
                "segment_id": ids,
                "feature_index": 1,
                "feature": "f",
                "unit": "u",
                "mean": 1.0,
                "std": 1.0,
                "centre": 1.0,
                "spread_low": 0.5,
                "spread_high": 1.5,
            }
        ),
        feature_scalers=feature_scaler_table(["f"], ["u"], ["none"], np.array([0.0]), np.array([1.0])),
        assignments=assignments,
    )


def publish(db: Path, record: RunRecord, keep: int) -> float:
    with database_lock(db, 60) as journal:
        start = start_run(
            db,
            journal,
            trigger="test",
            input_name="bench",
            input_kind="customers",
            parameters={},
            seed=0,
            code_version="bench",
        )
        began = time.perf_counter()
        finish_run(db, start, record, keep_runs=keep)
        seconds = time.perf_counter() - began
        journal.recorded = True  # as the flow does once the run is published
        return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--keep", type=int, default=2)
    args = parser.parse_args()
    if args.keep < 1:
        parser.error("--keep must be at least 1 (0 is the keep-everything reference, always measured)")
    mib = 2.0**20
    with tempfile.TemporaryDirectory() as tmp:
        dbs = {0: Path(tmp) / "all" / "s.duckdb", args.keep: Path(tmp) / "kept" / "s.duckdb"}
        print(f"{args.runs} runs x {args.customers:,} customers (k={K}); keep all vs keep_runs={args.keep}")
        print(f"{'run':>4} {'all MiB':>9} {'kept MiB':>9} {'all s':>7} {'kept s':>7}")
        seconds = {keep: [] for keep in dbs}
        for run in range(1, args.runs + 1):
            record = make_record(args.customers, seed=run)
            for keep, db in dbs.items():
                seconds[keep].append(publish(db, record, keep))
            sizes = {keep: db.stat().st_size / mib for keep, db in dbs.items()}
            print(
                f"{run:>4} {sizes[0]:>9.1f} {sizes[args.keep]:>9.1f} "
                f"{seconds[0][-1]:>7.2f} {seconds[args.keep][-1]:>7.2f}"
            )
        size_all, size_kept = (dbs[k].stat().st_size / mib for k in (0, args.keep))
        print(
            f"final size: keep all {size_all:.1f} MiB, keep {args.keep} {size_kept:.1f} MiB "
            f"({size_all / size_kept:.1f}x smaller)"
        )
        print(
            f"last publication: keep all {seconds[0][-1]:.2f} s, "
            f"keep {args.keep} {seconds[args.keep][-1]:.2f} s "
            f"({seconds[0][-1] / seconds[args.keep][-1]:.1f}x faster)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
