"""Publication and retention: does a run's publication cost grow with the runs before it?

Publishes ``--runs`` runs of ``--customers`` assignments each through the store (``finish_run``, the
same copy-on-write publication a flow run does, without fitting anything) into two databases side
by side: one keeping everything (``output.keep_runs = 0``), one keeping the newest ``--keep`` runs'
per-customer rows. Prints, after every run, the size of the results file (what a publication
copies), of the runs' Parquet folder (never copied) and the publication time; then the verdict:
one more run published alternately into the database as it was after its first run and into the
full one, five times each (medians; issue 12: within 20 % of each other), and the reference, the
time to copy the whole history once, which is what every publication did before the runs' folder.

Usage::

    python benchmarks/retention.py                      # 12 runs x 200,000 customers, keep 2
    python benchmarks/retention.py --runs 31 --customers 1000000   # issue 12's measurement
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flows.run_files import root_for
from flows.runlock import database_lock
from flows.store import RunRecord, feature_scaler_table, finish_run, start_run

K = 5
REPEATS = 5


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


def folder_mib(folder: Path) -> float:
    return (
        sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2.0**20 if folder.exists() else 0.0
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--keep", type=int, default=2)
    args = parser.parse_args()
    if args.keep < 1:
        parser.error("--keep must be at least 1 (0 is the keep-everything reference, always measured)")
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    mib = 2.0**20
    with tempfile.TemporaryDirectory() as tmp:
        dbs = {0: Path(tmp) / "all" / "s.duckdb", args.keep: Path(tmp) / "kept" / "s.duckdb"}
        print(f"{args.runs} runs x {args.customers:,} customers (k={K}); keep all vs keep_runs={args.keep}")
        print(
            f"{'run':>4} {'all: file MiB':>14} {'runs MiB':>9} {'s':>6}   "
            f"{'kept: file MiB':>15} {'runs MiB':>9} {'s':>6}"
        )
        seconds: dict[int, list[float]] = {keep: [] for keep in dbs}
        first_state = Path(tmp) / "after-run-1"
        for run in range(1, args.runs + 1):
            record = make_record(args.customers, seed=run)
            for keep, db in dbs.items():
                seconds[keep].append(publish(db, record, keep))
            cells = [
                f"{db.stat().st_size / mib:>{14 + i}.1f} {folder_mib(root_for(db)):>9.1f} "
                f"{seconds[keep][-1]:>6.2f}"
                for i, (keep, db) in enumerate(dbs.items())
            ]
            print(f"{run:>4} " + "   ".join(cells))
            if run == 1:
                shutil.copytree(dbs[0].parent, first_state)
        for keep, db in dbs.items():
            name = "keep all" if keep == 0 else f"keep {keep}"
            print(
                f"{name}: results file {db.stat().st_size / mib:.1f} MiB, "
                f"runs folder {folder_mib(root_for(db)):.1f} MiB"
            )
        # The verdict, robust to a noisy machine: publish the same run alternately into a copy of
        # the database as it was after its first run and into the full one (5 times each; the
        # early copy restored every time), and compare the medians.
        early_copy = Path(tmp) / "early"
        record = make_record(args.customers, seed=0)
        timings: dict[str, list[float]] = {"early": [], "late": []}
        for _ in range(REPEATS):
            shutil.rmtree(early_copy, ignore_errors=True)
            shutil.copytree(first_state, early_copy)
            timings["early"].append(publish(early_copy / "s.duckdb", record, 0))
            timings["late"].append(publish(dbs[0], record, 0))
        early, late = (float(np.median(timings[w])) for w in ("early", "late"))
        print(
            f"publication of a {args.customers:,}-customer run after 1 earlier run: {early:.2f} s, after "
            f"{args.runs}-{args.runs + REPEATS - 1}: {late:.2f} s (medians of {REPEATS}, interleaved): "
            f"{late / early:.2f}x (target: within 20 %)"
        )
        # The reference: the layout before the runs' folder copied every run's rows at every
        # publication. Copying the history's bytes once shows what that costs by now.
        began = time.perf_counter()
        shutil.copytree(root_for(dbs[0]), Path(tmp) / "history-copy")
        copy_seconds = time.perf_counter() - began
        print(
            f"reference: copying the whole history ({folder_mib(root_for(dbs[0])):.1f} MiB, what a "
            f"publication copied before the runs' folder) takes {copy_seconds:.2f} s alone, "
            f"{copy_seconds / late:.1f}x a publication now"
        )
        worst = max(late / early, early / late)
    return 0 if worst <= 1.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
