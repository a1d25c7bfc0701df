"""Soak: many consecutive runs plus overlapping manual runs on one results database.

Runs ``--runs`` flows one after another in this process (Prefect's temporary server, started
once) and, every ``--overlap-every`` runs, starts two ``segment run`` processes at the same time as
the next in-process run, so three runs contend for the database. Afterwards it checks that every
run is whole (status success, one assignment per customer, one segment row per component, one
selected candidate) and that each table holds exactly the rows the runs wrote, and that no run
folder is left that no published run owns; prints runs completed, failures, seconds and the growth
of the results file and of the runs' Parquet folder.

Usage::

    python benchmarks/soak.py                 # 30 consecutive runs + overlapping triggers
    python benchmarks/soak.py --runs 10 --customers 2000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from flows.run_files import VISIBLE_RUNS, root_for, run_ids_on_disk

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def make_customers(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    centres = np.array([[30.0, 2.0, 80.0], [200.0, 12.0, 900.0], [90.0, 1.0, 20.0], [10.0, 6.0, 300.0]])
    values = centres[labels] * rng.lognormal(0.0, 0.2, size=(n, 3))
    pd.DataFrame(
        {
            "id": [f"c{i:06d}" for i in range(n)],
            "tenure": values[:, 0],
            "visits": values[:, 1],
            "spend": values[:, 2],
        }
    ).to_csv(path, index=False)


def cli_args(csv: Path, db: Path, k_max: int) -> list[str]:
    return [
        "run",
        "--input",
        str(csv),
        "--kind",
        "customers",
        "--column",
        "customer_id=id",
        "--features",
        "tenure,visits,spend",
        "--transform",
        "spend=log1p",
        "--transform",
        "visits=log1p",
        "--k-max",
        str(k_max),
        "--n-init",
        "2",
        "--database",
        str(db),
        "--reports",
        str(db.parent / "reports"),
    ]


def check(db: Path, customers: int) -> dict:
    """Every run whole, and table sizes equal to what the runs wrote."""
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.execute("SELECT run_id, status, n_components FROM runs ORDER BY run_id").fetchall()
        problems = []
        expected = {"segments": 0, "assignments": 0, "model_candidates_selected": 0}
        for run_id, status, k in runs:
            if status != "success":
                problems.append(f"run {run_id}: {status}")
                continue
            n_assign = con.execute("SELECT count(*) FROM assignments WHERE run_id = ?", [run_id]).fetchall()[
                0
            ][0]
            n_seg = con.execute("SELECT count(*) FROM segments WHERE run_id = ?", [run_id]).fetchall()[0][0]
            n_sel = con.execute(
                "SELECT count(*) FROM model_candidates WHERE run_id = ? AND selected", [run_id]
            ).fetchall()[0][0]
            if (n_assign, n_seg, n_sel) != (customers, k, 1):
                problems.append(f"run {run_id}: {n_assign} assignments, {n_seg} segments, {n_sel} selected")
            expected["segments"] += k
            expected["assignments"] += customers
            expected["model_candidates_selected"] += 1
        actual = {
            "segments": con.execute("SELECT count(*) FROM segments").fetchall()[0][0],
            "assignments": con.execute("SELECT count(*) FROM assignments").fetchall()[0][0],
            "model_candidates_selected": con.execute(
                "SELECT count(*) FROM model_candidates WHERE selected"
            ).fetchall()[0][0],
        }
        orphans = con.execute(
            "SELECT count(*) FROM assignments "
            "WHERE run_id NOT IN (SELECT run_id FROM runs WHERE status = 'success')"
        ).fetchall()[0][0]
    if actual != expected:
        problems.append(f"table rows {actual} != rows the runs wrote {expected}")
    if orphans:
        problems.append(f"{orphans} assignment rows belong to no successful run")
    return {"runs": runs, "problems": problems, "rows": actual}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--overlap-every", type=int, default=10)
    parser.add_argument("--customers", type=int, default=5000)
    args = parser.parse_args()

    from flows.pipeline import segment_customers

    work = Path(tempfile.mkdtemp(prefix="segment-soak-"))
    csv, db = work / "customers.csv", work / "segments.duckdb"
    make_customers(csv, args.customers)
    sizes: list[int] = []
    folder_sizes: list[int] = []
    failures = 0
    overlapping = 0
    start = time.perf_counter()
    for i in range(1, args.runs + 1):
        procs = []
        if args.overlap_every and i % args.overlap_every == 0:
            for k_max in (3, 5):
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "flows.cli", *cli_args(csv, db, k_max)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )
        try:
            segment_customers(
                input_path=str(csv),
                input_kind="customers",
                columns={"customer_id": "id"},
                features=["tenure", "visits", "spend"],
                transforms={"spend": "log1p", "visits": "log1p"},
                k_max=4,
                n_init=2,
                database=str(db),
                reports_dir=str(work / "reports"),
                trigger="manual",
            )
        except Exception as exc:  # counted and reported, the soak goes on
            failures += 1
            print(f"run {i} failed: {exc}", file=sys.stderr)
        for p in procs:
            _, err = p.communicate(timeout=600)
            overlapping += 1
            if p.returncode != 0:
                failures += 1
                print(f"overlapping run failed: {err.strip().splitlines()[-1:]}", file=sys.stderr)
        sizes.append(db.stat().st_size)
        folder_sizes.append(sum(f.stat().st_size for f in root_for(db).rglob("*") if f.is_file()))
    seconds = time.perf_counter() - start

    result = check(db, args.customers)
    completed = sum(1 for _, status, _ in result["runs"] if status == "success")
    growth = np.diff([0, *sizes])
    print(f"work folder: {work}")
    print(
        f"runs started: {args.runs} consecutive + {overlapping} overlapping; completed whole: {completed}; "
        f"failures: {failures}; problems: {len(result['problems'])}"
    )
    for problem in result["problems"][:10]:
        print(f"  problem: {problem}")
    print(f"rows: {result['rows']}")
    print(f"seconds: {seconds:.1f} ({seconds / max(len(result['runs']), 1):.2f} per run)")
    per_run = (sizes[-1] - sizes[0]) / max(len(result["runs"]) - 1, 1)
    print(
        f"database: {sizes[0] / 2**20:.2f} MiB after the first step, "
        f"{sizes[-1] / 2**20:.2f} MiB after the last; "
        f"{per_run / 2**10:.0f} KiB per further run on average (the file grows in DuckDB's block "
        f"allocations: largest single step {growth[1:].max() / 2**10:.0f} KiB)"
    )
    print(
        f"runs folder (every run's assignments as Parquet): {folder_sizes[0] / 2**20:.2f} MiB after the "
        f"first step, {folder_sizes[-1] / 2**20:.2f} MiB after the last; assignment rows per MiB: "
        f"{result['rows']['assignments'] / max(folder_sizes[-1] / 2**20, 1e-9):,.0f}"
    )
    leftovers = sorted(p.name for p in work.glob(".segments.duckdb.*"))
    print(f"leftover private copies: {leftovers or 'none'}")
    with duckdb.connect(str(db), read_only=True) as con:
        shown = {int(r[0]) for r in con.execute(VISIBLE_RUNS).fetchall()}
    orphans = sorted(run_ids_on_disk(root_for(db)) - shown)
    print(f"run folders no published run owns: {orphans or 'none'}")
    return 0 if not failures and not result["problems"] and not leftovers and not orphans else 1


if __name__ == "__main__":
    raise SystemExit(main())
