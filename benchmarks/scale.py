"""Scale benchmark: EM refit on 10^6..3 x 10^7 customers, one machine vs a 2-worker LocalCluster.

    python benchmarks/scale.py                                   # 10^6 and 10^7 customers
    python benchmarks/scale.py --large                           # and 3 x 10^7
    python benchmarks/scale.py --customers 1000000 --partitions 1,4 --no-flow

What it measures (and what it does not):

- Data: customers drawn as in ``pipeline.py``'s ``make_million`` (5 Gaussian segments, 4
  features, same seed, so the first size holds the flow benchmark's customers), written with
  DuckDB as P Parquet files of equal size for every P in ``--partitions``. Generating and writing
  are not counted. The features' standardisation (mean, population standard deviation) and a
  seeded 200,000-row sample (the pipeline's ``model.max_samples``) are taken in this process,
  and a ``GaussianMixture(n_components=5)`` per covariance type (``diag``, ``full``) is fitted on
  the sample: the start model both paths refit from (not counted either).
- Single machine (in-memory engine), a fresh process per size and covariance type: all
  partitions read into one array (one DuckDB ``read_parquet`` over the files, standardised), then
  ``fit`` with ``warm_start=True``, ``max_iter`` iterations, ``tol=0``. Prints load seconds,
  seconds per EM iteration and the process's peak RSS (``VmHWM``).
- Cluster (engine level: ``refit_on_partitions`` reading Parquet files), a fresh process per size, P
  and covariance type: ``LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="2GiB")``,
  then ``gmm_cluster.refit_on_partitions`` with the same start model, ``max_iter`` iterations,
  ``tol=0``; every iteration re-reads every partition on a worker. Prints cluster start-up,
  seconds per EM iteration, the client process's peak RSS (the scheduler runs in it) and every
  worker process's peak RSS; a worker above its ``memory_limit``, or one replaced during the run
  (the nanny restarts a worker it kills), fails the script (exit 1). At the smallest size the
  cluster's parameters are compared with the single machine's (max abs difference).
- From the cluster rows, a least-squares fit of seconds per iteration = a + b x (rows on the
  busiest worker) + c x (partitions), per covariance type, and its projection to 10^8 and 10^9
  customers on 2, 8 and 32 workers (assumptions printed with it).
- The end-to-end flow (``pipeline.py``'s ``run_flow``: model selection over k = 1..10 and four
  covariance types on the 200,000 sample, refit, assignments, store, report) at the sizes in
  ``--flow-sizes``, on one machine and then with ``compute.cluster`` set to the address of a
  LocalCluster of 2 workers (``memory_limit`` 2 GiB) started beforehand (not counted): total and
  stage seconds, the flow process's peak and every worker's peak (a worker over its limit fails
  the script). The cluster runs the passes over all customers (scoring, refits, each customer's
  segment) and writes the assignments, and its workers read and validate the table's
  ``--flow-partitions`` Parquet files (default 8) and compute the features. The flow's table
  holds ``make_million``'s customers with their ids in a seeded random order (``shuffled_ids``):
  a table kept in id order would hide what finding a range of customers costs the workers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FEATURES = ("f1", "f2", "f3", "f4")
COVARIANCE_TYPES = ("diag", "full")
N_COMPONENTS = 5
SAMPLE = 200_000
MEMORY_LIMIT = "2GiB"
MEMORY_LIMIT_BYTES = 2 * 1024**3
N_WORKERS = 2


def _hwm_bytes() -> int:
    """This process's peak resident set size (Linux ``VmHWM``). Not ``ru_maxrss``: a process
    started by ``subprocess`` (vfork + exec) starts with its parent's ``ru_maxrss``."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _peak_mib() -> float:
    return _hwm_bytes() / 1024**2


# ---------------------------------------------------------------------------------------------
# Children (a fresh process per measurement, so its peak RSS is its own)


def _child_single(spec: dict) -> dict:
    from gmm_cluster import ParquetPartition

    out = {"baseline_peak_mib": _peak_mib()}
    t = time.perf_counter()
    X = ParquetPartition(spec["glob"], FEATURES, np.array(spec["mean"]), np.array(spec["scale"]))()
    out["load_seconds"] = time.perf_counter() - t
    out["rows"] = X.shape[0]
    out["load_peak_mib"] = _peak_mib()
    with open(spec["model"], "rb") as fh:
        model = pickle.load(fh)
    model.set_params(warm_start=True, max_iter=spec["max_iter"], tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0: "did not converge" is expected
        t = time.perf_counter()
        model.fit(X)
        out["refit_seconds"] = time.perf_counter() - t
    out["n_iter"] = int(model.n_iter_)
    out["peak_mib"] = _peak_mib()
    np.savez(spec["params"], weights=model.weights_, means=model.means_, covariances=model.covariances_)
    return out


def _worker_peak() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def _child_cluster(spec: dict) -> dict:
    import importlib
    import logging

    import dask
    from distributed import Client, LocalCluster

    from gmm_cluster import WORKER_CONFIG, ClusterFitError, ParquetPartition, refit_on_partitions

    out = {"baseline_peak_mib": _peak_mib()}
    mean, scale = np.array(spec["mean"]), np.array(spec["scale"])
    parts = [ParquetPartition(path, FEATURES, mean, scale) for path in spec["paths"]]
    with open(spec["model"], "rb") as fh:
        model = pickle.load(fh)
    t = time.perf_counter()
    with (
        dask.config.set(WORKER_CONFIG),
        LocalCluster(
            n_workers=N_WORKERS,
            threads_per_worker=1,
            memory_limit=MEMORY_LIMIT,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(importlib.import_module, "gmm_cluster.em")  # imports on the workers: not counted
        out["start_seconds"] = time.perf_counter() - t
        before = set(client.scheduler_info()["workers"])
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fitted = refit_on_partitions(client, parts, model, max_iter=spec["max_iter"], tol=0)
                out["error"] = None
            except ClusterFitError as exc:
                fitted = None
                out["error"] = str(exc)
        out["refit_seconds"] = time.perf_counter() - t
        after = set(client.scheduler_info()["workers"])
        out["workers_replaced"] = len(before - after)
        out["worker_peak_bytes"] = sorted(client.run(_worker_peak).values())
    out["peak_mib"] = _peak_mib()
    if fitted is not None:
        out["n_iter"] = int(fitted.n_iter_)
        np.savez(
            spec["params"], weights=fitted.weights_, means=fitted.means_, covariances=fitted.covariances_
        )
    return out


def run_child(kind: str, spec: dict) -> dict:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(spec)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    line = next((out for out in proc.stdout.splitlines() if out.startswith("SCALE ")), None)
    if proc.returncode != 0 or line is None:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{kind} run failed (exit {proc.returncode})")
    return json.loads(line[len("SCALE ") :])


# ---------------------------------------------------------------------------------------------
# Data


def generate(n_customers: int, seed: int = 0) -> np.ndarray:
    """``pipeline.make_million``'s customers (same draws, same seed), features only."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 4.0, size=(5, 4))
    labels = rng.choice(5, size=n_customers, p=[0.35, 0.25, 0.2, 0.15, 0.05])
    X = centres[labels] + rng.standard_normal((n_customers, 4)) * rng.uniform(0.5, 1.5, size=(5, 4))[labels]
    return X


def write_partitions(X: np.ndarray, folder: Path, n_parts: int) -> list[str]:
    """``n_parts`` Parquet files of equal size (the rows in order), with a ``customer_id``."""
    import duckdb
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, X.shape[0], n_parts + 1).astype(int)
    paths = []
    con = duckdb.connect()
    for i in range(n_parts):
        lo, hi = bounds[i], bounds[i + 1]
        frame = pd.DataFrame(X[lo:hi], columns=list(FEATURES))
        frame.insert(0, "row", np.arange(lo, hi, dtype=np.int64))
        con.register("part", frame)
        path = folder / f"part-{i:04d}.parquet"
        con.execute(
            f"COPY (SELECT 'C' || CAST(row AS VARCHAR) AS customer_id, {', '.join(FEATURES)} FROM part) "
            "TO ? (FORMAT parquet)",
            [str(path)],
        )
        con.unregister("part")
        paths.append(str(path))
    con.close()
    return paths


def start_models(X: np.ndarray, folder: Path, mean: np.ndarray, scale: np.ndarray) -> dict[str, str]:
    """The start model per covariance type, fitted on a seeded 200,000-row sample; pickled."""
    from gmm_engine import GaussianMixture

    rng = np.random.default_rng(1)
    idx = np.sort(rng.choice(X.shape[0], size=min(SAMPLE, X.shape[0]), replace=False))
    sample = (X[idx] - mean) / scale
    paths = {}
    for ct in COVARIANCE_TYPES:
        model = GaussianMixture(n_components=N_COMPONENTS, covariance_type=ct, random_state=0).fit(sample)
        path = folder / f"start-{ct}.pkl"
        with open(path, "wb") as fh:
            pickle.dump(model, fh)
        paths[ct] = str(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Projection


def fit_cost_model(rows: list[dict]) -> tuple[np.ndarray, float]:
    """Least squares of s/iter on [1, rows on the busiest worker, partitions]; coefficients, R^2."""
    A = np.array([[1.0, r["busiest_rows"], r["partitions"]] for r in rows])
    y = np.array([r["s_per_iter"] for r in rows])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    r2 = 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum()) if len(y) > 1 else float("nan")
    return coef, r2


def busiest_rows(n_customers: int, n_parts: int, n_workers: int) -> int:
    """Rows read by the busiest worker per iteration, partitions spread evenly over the workers."""
    return math.ceil(n_parts / n_workers) * math.ceil(n_customers / n_parts)


# ---------------------------------------------------------------------------------------------


def split_into_partitions(path: Path, parts: int) -> Path:
    """The table of ``path`` rewritten as ``parts`` Parquet files of about equal size in a folder
    beside it (in row order); the file is removed."""
    import duckdb

    folder = path.with_suffix("")
    folder.mkdir()
    with duckdb.connect() as con:
        n = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0]
        size = -(-n // parts)
        for i in range(parts):
            con.execute(
                f"COPY (SELECT * FROM read_parquet('{path}') LIMIT {size} OFFSET {i * size}) "
                f"TO '{folder / f'part-{i:03d}.parquet'}' (FORMAT parquet)"
            )
    path.unlink()
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", default="1000000,10000000", help="comma-separated sizes")
    parser.add_argument("--large", action="store_true", help="add 30,000,000 customers")
    parser.add_argument("--partitions", default="1,2,4,8,16", help="partition counts for the table")
    parser.add_argument("--main-partitions", type=int, default=8, help="P of the per-size cluster row")
    parser.add_argument("--max-iter", type=int, default=10)
    parser.add_argument("--flow-sizes", default="1000000,10000000", help="sizes for the end-to-end flow")
    parser.add_argument("--no-flow", action="store_true", help="skip the end-to-end flow runs")
    parser.add_argument(
        "--flow-partitions",
        type=int,
        default=8,
        help="the flow's table as this many Parquet files of a folder (1: one file)",
    )
    parser.add_argument("--iterations-per-fit", type=int, default=50, help="for the projection")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, spec = args.child
        result = (_child_single if kind == "single" else _child_cluster)(json.loads(spec))
        print("SCALE " + json.dumps(result))
        return 0

    sizes = [int(s) for s in args.customers.split(",") if s]
    if args.large and 30_000_000 not in sizes:
        sizes.append(30_000_000)
    part_counts = sorted({int(p) for p in args.partitions.split(",") if p} | {args.main_partitions})
    flow_sizes = [] if args.no_flow else [int(s) for s in args.flow_sizes.split(",") if s]
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; k = {N_COMPONENTS}, d = {len(FEATURES)}, "
        f"{args.max_iter} EM iterations per refit (tol=0); cluster: {N_WORKERS} worker processes x 1 thread, "
        f"memory_limit {MEMORY_LIMIT} each"
    )
    single: dict[tuple[int, str], dict] = {}
    cluster: list[dict] = []
    failures: list[str] = []
    param_diff: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="segment-scale-") as tmp:
        tmp_path = Path(tmp)
        # The flows first, while this process is small, and the table written by a throwaway
        # process: flows before cdd01aa reported ``ru_maxrss``, which a child inherits.
        flows = {}
        if flow_sizes:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from pipeline import Workers, run_flow

            for n in flow_sizes:
                data = tmp_path / f"flow-{n}.parquet"
                t = time.perf_counter()
                subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
                        "from pipeline import make_million; "
                        "make_million(Path(sys.argv[2]), int(sys.argv[3]), shuffled_ids=True)",
                        str(Path(__file__).resolve().parent),
                        str(data),
                        str(n),
                    ],
                    check=True,
                )
                if args.flow_partitions > 1:
                    data = split_into_partitions(data, args.flow_partitions)
                print(
                    f"\nflow, {n:,} customers: table generated in {time.perf_counter() - t:.1f} s "
                    f"(not counted); this process's ru_maxrss, which flows before cdd01aa inherited: "
                    f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
                )
                params = {
                    "input_path": str(data),
                    "input_kind": "customers",
                    "columns": {"customer_id": "customer_id"},
                    "features": list(FEATURES),
                    "k_min": 1,
                    "k_max": 10,
                    "database": str(tmp_path / f"flow-{n}.duckdb"),
                    "reports_dir": str(tmp_path / f"reports-{n}"),
                }
                for path in ("single", "cluster"):
                    with Workers(N_WORKERS if path == "cluster" else None) as workers:
                        if path == "cluster":
                            params = {**params, "database": str(tmp_path / f"flow-{n}-cluster.duckdb")}
                            params["cluster"] = workers.address
                        summary = run_flow(params)
                        st = summary["stage_seconds"]
                        print(
                            f"  {path}: total {summary['wall_seconds']:.1f} s "
                            f"(select {st.get('select', float('nan')):.1f} s), "
                            f"flow process peak {summary['flow_peak_mb']:,.0f} MiB; chosen "
                            f"{summary['n_components']} {summary['covariance_type']}"
                        )
                        if path == "cluster":
                            summary["workers_ok"] = workers.report()
                            summary["worker_peak_mb"] = workers.peak_mib
                            if not summary["workers_ok"]:
                                failures.append(
                                    f"flow on the cluster, {n:,} customers: a worker over its limit"
                                )
                    flows[(n, path)] = summary
                shutil.rmtree(data) if data.is_dir() else data.unlink()
        for n in sizes:
            folder = tmp_path / f"n{n}"
            t = time.perf_counter()
            X = generate(n)
            mean, scale = X.mean(axis=0), X.std(axis=0)
            layouts = {p: write_partitions(X, folder / f"p{p}", p) for p in part_counts}
            gen_seconds = time.perf_counter() - t
            t = time.perf_counter()
            models = start_models(X, folder, mean, scale)
            start_seconds = time.perf_counter() - t
            del X
            mib = sum(os.path.getsize(p) for p in layouts[args.main_partitions]) / 1024**2
            print(
                f"\n{n:,} customers: generated and written as {', '.join(map(str, part_counts))} partitions "
                f"in {gen_seconds:.1f} s ({mib:.0f} MiB of Parquet per layout); start models on "
                f"{min(SAMPLE, n):,} rows in {start_seconds:.1f} s (not counted)"
            )
            base = {"mean": mean.tolist(), "scale": scale.tolist(), "max_iter": args.max_iter}
            for ct in COVARIANCE_TYPES:
                spec = dict(
                    base,
                    glob=str(folder / f"p{args.main_partitions}" / "*.parquet"),
                    model=models[ct],
                    params=str(folder / f"single-{ct}.npz"),
                )
                r = run_child("single", spec)
                r["s_per_iter"] = r["refit_seconds"] / r["n_iter"]
                single[(n, ct)] = r
                print(
                    f"  single machine, {ct:<4}: load {r['load_seconds']:6.2f} s, "
                    f"{r['s_per_iter']:.3f} s/iter, peak RSS {r['peak_mib']:,.0f} MiB "
                    f"(after imports {r['baseline_peak_mib']:.0f}, after load {r['load_peak_mib']:,.0f})"
                )
            for ct in COVARIANCE_TYPES:
                for p in part_counts:
                    spec = dict(
                        base, paths=layouts[p], model=models[ct], params=str(folder / f"cluster-{ct}-{p}.npz")
                    )
                    r = run_child("cluster", spec)
                    peaks = [b / 1024**2 for b in r["worker_peak_bytes"]]
                    over = [b for b in r["worker_peak_bytes"] if b > MEMORY_LIMIT_BYTES]
                    row = {
                        "customers": n,
                        "covariance": ct,
                        "partitions": p,
                        "busiest_rows": busiest_rows(n, p, N_WORKERS),
                        "start_seconds": r["start_seconds"],
                        "refit_seconds": r["refit_seconds"],
                        "client_peak_mib": r["peak_mib"],
                        "worker_peak_mib": peaks,
                        "error": r["error"],
                        "replaced": r["workers_replaced"],
                    }
                    verdict = "within limit"
                    if r["error"] or r["workers_replaced"] or over:
                        verdict = "LIMIT EXCEEDED OR WORKER LOST"
                        failures.append(f"{n:,} customers, {ct}, P = {p}: {r['error'] or verdict}")
                    else:
                        row["s_per_iter"] = r["refit_seconds"] / r["n_iter"]
                        cluster.append(row)
                    s_iter = f"{row['s_per_iter']:.3f}" if "s_per_iter" in row else "  -  "
                    print(
                        f"  cluster, {ct:<4}, P = {p:>3}: start {r['start_seconds']:5.1f} s, "
                        f"{s_iter} s/iter, "
                        f"client peak {r['peak_mib']:,.0f} MiB, workers' peaks "
                        f"{' / '.join(f'{m:,.0f}' for m in peaks)} MiB ({verdict})"
                    )
                    if n == sizes[0] and p == args.main_partitions and r["error"] is None:
                        a = np.load(folder / f"single-{ct}.npz")
                        b = np.load(folder / f"cluster-{ct}-{p}.npz")
                        param_diff[ct] = max(float(np.abs(a[key] - b[key]).max()) for key in a.files)
                        print(
                            f"  cluster vs single machine, {ct}: max abs difference of weights, means and "
                            f"covariances {param_diff[ct]:.1e}"
                        )

    # --- Summary tables ----------------------------------------------------------------------
    print(
        f"\nSingle machine vs cluster (cluster: P = {args.main_partitions} partitions), "
        "seconds per EM iteration"
    )
    print(
        f"  {'customers':>12} {'cov':<5}{'single s/it':>12}{'single peak MiB':>16}"
        f"{'cluster s/it':>13}{'client MiB':>11}{'max worker MiB':>15}"
    )
    for n in sizes:
        for ct in COVARIANCE_TYPES:
            s = single[(n, ct)]
            c = next(
                (
                    r
                    for r in cluster
                    if (r["customers"], r["covariance"], r["partitions"]) == (n, ct, args.main_partitions)
                ),
                None,
            )
            cs = (
                f"{c['s_per_iter']:13.3f}{c['client_peak_mib']:11,.0f}{max(c['worker_peak_mib']):15,.0f}"
                if c
                else "  failed"
            )
            print(f"  {n:>12,} {ct:<5}{s['s_per_iter']:12.3f}{s['peak_mib']:16,.0f}{cs}")

    print("\nCluster: seconds per EM iteration against the number of partitions (same data)")
    print(f"  {'customers':>12} {'cov':<5}" + "".join(f"{'P=' + str(p):>9}" for p in part_counts))
    for n in sizes:
        for ct in COVARIANCE_TYPES:
            cells = []
            for p in part_counts:
                r = next(
                    (r for r in cluster if (r["customers"], r["covariance"], r["partitions"]) == (n, ct, p)),
                    None,
                )
                cells.append(f"{r['s_per_iter']:9.3f}" if r else f"{'failed':>9}")
            print(f"  {n:>12,} {ct:<5}" + "".join(cells))

    if flows:
        print(
            "\nEnd-to-end flow (pipeline.py's run_flow: selection on 200,000, refit, assign, store, report); "
            f"cluster: --cluster to a running LocalCluster of {N_WORKERS} workers, {MEMORY_LIMIT} each"
        )
        shown = ("load", "validate", "features", "select", "choose", "assign", "write")
        print(
            f"  {'customers':>12} {'path':<8}{'total s':>9}"
            + "".join(f"{name:>10}" for name in shown)
            + f"{'peak MiB':>10}{'workers MiB':>13}  chosen"
        )
        for (n, path), s in flows.items():
            st = s["stage_seconds"]
            workers = "/".join(f"{v:,.0f}" for v in s.get("worker_peak_mb", [])) or "-"
            print(
                f"  {n:>12,} {path:<8}{s['wall_seconds']:9.1f}"
                + "".join(f"{st.get(name, float('nan')):10.1f}" for name in shown)
                + f"{s['flow_peak_mb']:10,.0f}{workers:>13}  {s['n_components']} {s['covariance_type']}"
            )
    if sizes:
        project(sizes, args, cluster)

    if failures:
        print("\nFAILED (a worker above its memory limit, or lost):")
        for f in failures:
            print(f"  {f}")
    else:
        print(f"\nNo worker exceeded its {MEMORY_LIMIT} memory limit and none was lost.")
    bad_diff = {ct: d for ct, d in param_diff.items() if not d <= 1e-8}
    if bad_diff:
        print(f"Cluster and single machine parameters differ by more than 1e-8: {bad_diff}")
    return 1 if failures or bad_diff else 0


def project(sizes: list[int], args, cluster: list[dict]) -> None:
    """The least-squares cost model of the cluster rows and its projection to 10^8 and 10^9."""
    print(
        "\nProjection: s/iter = a + b x (rows on the busiest worker) + c x (partitions), least squares "
        "over the cluster rows above.\nAssumptions: time linear in rows; each worker re-reads its "
        "partitions from local disk every iteration (no caching); partitions of the size measured at "
        f"P = {args.main_partitions} of the largest size, spread evenly; the per-partition cost c is "
        "all charged serially (scheduler and client), none of it divided among workers; network "
        "transfer is not measured (one machine; only k x (1 + d + q) numbers travel per partition); "
        "one core per worker. Measured with 2 workers sharing 2 cores with the scheduler and client."
    )
    part_rows = math.ceil(sizes[-1] / args.main_partitions)
    for ct in COVARIANCE_TYPES:
        rows = [r for r in cluster if r["covariance"] == ct]
        if len(rows) < 3:
            print(f"  {ct}: too few measurements to fit")
            continue
        (a, b, c), r2 = fit_cost_model(rows)
        print(
            f"  {ct}: a = {a:.3f} s, b = {b * 1e6:.3f} s per 10^6 rows, c = {c * 1e3:.2f} ms per partition "
            f"(R^2 = {r2:.3f}, {len(rows)} runs)"
        )
        print(
            f"    {'customers':>15}{'partitions':>11}{'workers':>8}{'s/iter':>9}"
            f"{f'{args.iterations_per_fit} iter, min':>15}"
        )
        for target in (100_000_000, 1_000_000_000):
            n_parts = math.ceil(target / part_rows)
            for w in (2, 8, 32):
                t_iter = a + b * busiest_rows(target, n_parts, w) + c * n_parts
                print(
                    f"    {target:>15,}{n_parts:>11,}{w:>8}{t_iter:9.2f}"
                    f"{t_iter * args.iterations_per_fit / 60:15.1f}"
                )


if __name__ == "__main__":
    sys.exit(main())
