"""Pipeline benchmark: per-stage seconds and peak memory of the full flow on two workloads.

    python benchmarks/pipeline.py                  # both workloads
    python benchmarks/pipeline.py --only retail    # the full Online Retail log (541,909 lines)
    python benchmarks/pipeline.py --only million   # 1,000,000 generated customers x 4 features
    python benchmarks/pipeline.py --only million --second-run   # and a second run that tracks the first
    python benchmarks/pipeline.py --only log --lines 10000000     # a generated transaction log
    python benchmarks/pipeline.py --only million --cluster 2      # model passes on 2 dask workers
    python benchmarks/pipeline.py --only million --prefect-server # against a running Prefect server

Each workload runs in a fresh Python process exactly as ``segment run`` does (Prefect's temporary
local server included), so "total" is what a user waits for, start-up and imports included. Peak
memory is the flow process's peak resident set size after each stage (the Prefect server runs in a
separate process and is reported on its own). With ``--prefect-server`` the flows report to a
``prefect server start`` this script starts beforehand (not counted), as a scheduled run served
by ``segment serve`` does: "other" is then the interpreter, the imports and the flow's own calls
to the server. Targets on a 2-core machine: Online Retail end to end
within 30 s; 1,000,000 customers (k = 1..10, all four covariance types) within 3 minutes and 4 GB.
The generated log (``--only log``, not part of the default) has ``--lines`` invoice lines of about
``lines / 13`` customers (a few buy often, most rarely) over 2011, as Parquet; its target is the
customer table's of issue 12 (2 GiB), since a log of 10^7 customers has 10^8 lines or more.

``--cluster N`` runs the generated customers with ``compute.cluster`` set to a dask LocalCluster of
N worker processes (one thread, ``memory_limit`` 2 GiB each) that this script starts beforehand and
hands to the flow by its tcp:// address (so the flow uses the path of a running scheduler; starting
the cluster is not counted). After each run it prints every worker's peak resident memory
(``VmHWM``, over the runs so far); a worker above its limit, or one replaced (a new pid), fails the
script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = (
    "cluster",
    "load",
    "validate",
    "features",
    "distribute",
    "previous",
    "select",
    "choose",
    "assign",
    "track",
    "write",
    "report",
)

_CHILD = r"""
import json, os, resource, sys, time
t0 = time.perf_counter()
from flows.pipeline import segment_customers
params = json.loads(sys.argv[1])
summary = segment_customers(**params, trigger="manual")
summary["total_seconds"] = time.perf_counter() - t0
summary["server_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print("BENCHMARK " + json.dumps(summary, default=str))
"""


def make_log(path: Path, n_lines: int) -> None:
    """Write a transaction log of ``n_lines`` lines to Parquet with DuckDB (hash-based, so the same
    ``n_lines`` gives the same log): customer ids skewed towards low numbers (customer ``C0000000``
    buys most), one invoice per line, a time in 2011, quantity 1..20 and unit price 0.50..20.49."""
    import duckdb

    customers = max(n_lines // 10, 1)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(
        f"""COPY (
            SELECT 'C' || lpad(CAST(CAST(floor({customers} * pow((hash(i * 31) % 1000003) / 1000003.0, 2))
                       AS BIGINT) AS VARCHAR), 7, '0') AS customer_id,
                   'I' || CAST(i AS VARCHAR) AS invoice_id,
                   TIMESTAMP '2011-01-01' + to_seconds(CAST(hash(i) % 31536000 AS BIGINT)) AS "timestamp",
                   1 + CAST(hash(i * 7) % 20 AS BIGINT) AS quantity,
                   round(0.5 + (hash(i * 13) % 2000) / 100.0, 2) AS unit_price
            FROM range({n_lines}) t(i)
        ) TO '{path}' (FORMAT parquet)"""
    )
    con.close()


def make_million(path: Path, n_customers: int, seed: int = 0, shuffled_ids: bool = False) -> None:
    """Write ``n_customers`` customers drawn from 5 Gaussian segments in 4 features to Parquet
    (via DuckDB). Their ids are ``C<row>`` in row order, or with ``shuffled_ids`` the same ids in
    a seeded random order (a table not kept in id order, as many are)."""
    import duckdb
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 4.0, size=(5, 4))
    labels = rng.choice(5, size=n_customers, p=[0.35, 0.25, 0.2, 0.15, 0.05])
    X = centres[labels] + rng.standard_normal((n_customers, 4)) * rng.uniform(0.5, 1.5, size=(5, 4))[labels]
    frame = pd.DataFrame(X, columns=["f1", "f2", "f3", "f4"])
    order = (
        np.random.default_rng(seed + 1).permutation(n_customers) if shuffled_ids else np.arange(n_customers)
    )
    frame.insert(0, "customer_id", np.char.add("C", order.astype(str)).astype(object))
    con = duckdb.connect()
    con.register("customers", frame)
    con.execute("COPY customers TO ? (FORMAT parquet)", [str(path)])
    con.close()


class PrefectServer:
    """``prefect server start`` on a free loopback port with a home of its own, for
    ``--prefect-server`` (nothing when ``enabled`` is false): while it runs, the flows this script
    starts report to it (``PREFECT_API_URL``), as a scheduled run served by ``segment serve``
    does, instead of each starting Prefect's temporary server."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._proc: subprocess.Popen | None = None
        self._home: tempfile.TemporaryDirectory | None = None
        self._saved: str | None = None

    def __enter__(self) -> PrefectServer:
        if not self.enabled:
            return self
        import socket
        import urllib.request

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}/api"
        self._home = tempfile.TemporaryDirectory(prefix="segment-bench-prefect-")
        env = dict(
            os.environ,
            PREFECT_HOME=self._home.name,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.__exit__()
                raise SystemExit("the Prefect server did not start within 120 s")
            time.sleep(0.5)
        self._saved = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        print(f"(flows report to a running Prefect server at {url}; its start-up is not counted)")
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
            if self._saved is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = self._saved
        if self._home is not None:
            self._home.cleanup()
            self._home = None


def run_flow(params: dict) -> dict:
    """Run the flow in a fresh process; return its summary plus total seconds."""
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(params)], cwd=REPO, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    line = next((out for out in proc.stdout.splitlines() if out.startswith("BENCHMARK ")), None)
    if proc.returncode != 0 or line is None:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"benchmark run failed (exit {proc.returncode})")
    summary = json.loads(line[len("BENCHMARK ") :])
    summary["wall_seconds"] = wall
    summary["flow_peak_mb"] = max(summary["stage_peak_mb"].values())
    return summary


def print_table(title: str, summary: dict, target_seconds: float, target_mb: float | None) -> bool:
    """Print one workload's stages; True when it met its targets."""
    print(f"\n{title}")
    print(
        f"  chosen: {summary['n_components']} segments, {summary['covariance_type']} covariance; "
        f"{summary['customers']:,} customers from {summary['rows_loaded']:,} rows"
    )
    print(f"  {'stage':<10}{'seconds':>10}{'peak MiB':>12}")
    for stage in (s for s in STAGES if s in summary["stage_seconds"]):
        print(
            f"  {stage:<10}{summary['stage_seconds'].get(stage, float('nan')):>10.2f}"
            f"{summary['stage_peak_mb'].get(stage, float('nan')):>12.0f}"
        )
    overhead = summary["wall_seconds"] - sum(summary["stage_seconds"].values())
    print(f"  {'other':<10}{overhead:>10.2f}   (interpreter, imports, Prefect start-up and shutdown)")
    met = summary["wall_seconds"] <= target_seconds
    verdict = "ok" if met else "OVER TARGET"
    print(
        f"  {'total':<10}{summary['wall_seconds']:>10.2f}{summary['flow_peak_mb']:>12.0f}   "
        f"target {target_seconds:.0f} s: {verdict}"
    )
    if target_mb is not None:
        met = met and summary["flow_peak_mb"] <= target_mb
        verdict = "ok" if summary["flow_peak_mb"] <= target_mb else "OVER TARGET"
        print(
            f"  peak memory {summary['flow_peak_mb']:.0f} MiB (flow process), "
            f"target {target_mb:.0f} MiB: {verdict}"
        )
    print(f"  Prefect server process peak: {summary['server_peak_mb']:.0f} MiB")
    return met


class Workers:
    """A LocalCluster of ``n`` worker processes for ``--cluster`` (nothing when ``n`` is None)."""

    LIMIT = 2 * 1024**3

    def __init__(self, n: int | None):
        self.n, self.address, self._cluster, self._client, self._pids = n, None, None, None, {}

    def __enter__(self) -> Workers:
        if self.n:
            import dask
            from distributed import Client, LocalCluster

            from gmm_cluster import WORKER_CONFIG

            with dask.config.set(WORKER_CONFIG):  # as a team would start its workers (docs/operations.md)
                self._cluster = LocalCluster(
                    n_workers=self.n,
                    threads_per_worker=1,
                    processes=True,
                    memory_limit=self.LIMIT,
                    dashboard_address=":0",
                )
            self._client = Client(self._cluster)
            self._client.wait_for_workers(self.n)
            self.address = self._cluster.scheduler_address
            self._pids = self._client.run(os.getpid)
        return self

    def __exit__(self, *exc) -> None:
        if self._client is not None:
            self._client.close()
            self._cluster.close()

    @property
    def peak_mib(self) -> list[float]:
        """Every worker's peak resident memory so far, in MiB."""
        return [v / 2**20 for v in self._client.run(_peak_bytes).values()]

    def report(self) -> bool:
        """Print each worker's peak memory; False when one went over its limit or was replaced."""
        peaks = self._client.run(_peak_bytes)
        pids = self._client.run(os.getpid)
        replaced = sorted(set(self._pids.values()) - set(pids.values()))
        top = max(peaks.values())
        print(
            "  workers' peak MiB: "
            + ", ".join(f"{v / 2**20:,.0f}" for v in peaks.values())
            + f" (limit {self.LIMIT / 2**20:,.0f})"
            + (f"; REPLACED: pids {replaced}" if replaced else "")
        )
        return top <= self.LIMIT and not replaced


def _peak_bytes() -> int:
    """This process's peak resident set size (Linux ``VmHWM``), run on a worker."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["retail", "million", "log"])
    parser.add_argument("--lines", type=int, default=10_000_000, help="lines of the generated log")
    parser.add_argument("--customers", type=int, default=1_000_000, help="size of the generated table")
    parser.add_argument(
        "--second-run",
        action="store_true",
        help="run the generated workload twice into one database (the second compares with the first, as "
        "every nightly run after the first does)",
    )
    parser.add_argument(
        "--cluster",
        type=int,
        metavar="N",
        help="with the generated customers: run the model's passes on a LocalCluster of N workers",
    )
    parser.add_argument(
        "--prefect-server",
        action="store_true",
        help="run the flows against a running Prefect server (as scheduled runs are) instead of each "
        "starting Prefect's temporary server",
    )
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    met = []
    with (
        tempfile.TemporaryDirectory(prefix="segment-bench-") as tmp,
        Workers(args.cluster) as workers,
        PrefectServer(args.prefect_server),
    ):
        tmp_path = Path(tmp)
        if args.only in (None, "retail"):
            summary = run_flow(
                {
                    "database": str(tmp_path / "retail.duckdb"),
                    "reports_dir": str(tmp_path / "reports"),
                }
            )
            met.append(
                print_table(
                    "Online Retail, full log (defaults: k = 1..8, 4 covariance types, n_init = 3)",
                    summary,
                    30,
                    None,
                )
            )
        if args.only in (None, "million"):
            data = tmp_path / "customers.parquet"
            t = time.perf_counter()
            make_million(data, args.customers)
            print(
                f"\n(generated {args.customers:,} customers in {time.perf_counter() - t:.1f} s, not counted)"
            )
            params = {
                "input_path": str(data),
                "input_kind": "customers",
                "columns": {"customer_id": "customer_id"},
                "features": ["f1", "f2", "f3", "f4"],
                "k_min": 1,
                "k_max": 10,
                "database": str(tmp_path / "million.duckdb"),
                "reports_dir": str(tmp_path / "reports"),
            }
            if workers.address:
                params["cluster"] = workers.address
            for run in range(1, 3 if args.second_run else 2):
                summary = run_flow(params)
                met.append(
                    print_table(
                        f"{args.customers:,} customers x 4 features (k = 1..10, 4 covariance types, "
                        "n_init = 3, max_samples = 200,000)"
                        + (f", run {run} on the same database" if args.second_run else "")
                        + (f", on {args.cluster} dask workers" if workers.address else ""),
                        summary,
                        180,
                        4096,
                    )
                )
                if workers.address:
                    met.append(workers.report())
        if args.only == "log":
            data = tmp_path / "log.parquet"
            t = time.perf_counter()
            make_log(data, args.lines)
            print(f"\n(generated {args.lines:,} lines in {time.perf_counter() - t:.1f} s, not counted)")
            columns = {c: c for c in ("customer_id", "invoice_id", "timestamp", "quantity", "unit_price")}
            params = {
                "input_path": str(data),
                "input_kind": "transactions",
                "columns": columns,
                "database": str(tmp_path / "log.duckdb"),
                "reports_dir": str(tmp_path / "reports"),
            }
            summary = run_flow(params)
            met.append(
                print_table(
                    f"{args.lines:,} transaction lines, {summary['customers']:,} customers (RFM, defaults)",
                    summary,
                    180,
                    2048,
                )
            )
    return 0 if all(met) else 1  # a missed target fails the script (it is not part of the test suite)


if __name__ == "__main__":
    sys.exit(main())
