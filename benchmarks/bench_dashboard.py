"""Dashboard page latency on a demo workspace padded to 50 executions and 50 monitoring runs.

The workspace is padded in place (executions recorded in MLflow as copies of the demo's own, monitoring
history rows repeated with earlier times), so pass a copy or let the script make a fresh demo. The
dashboard runs as its own process; each page is requested ``--requests`` times in turn after one warm-up
request; p50 / p95 per page, and /health as the server's floor on the same machine at the same time.
Target: every page's p95 <= 300 ms.

    uv run python benchmarks/bench_dashboard.py [--workspace demo-copy] [--requests 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from common import finish, machine
from fraudops.monitoring import history as monitoring_history
from fraudops.pipeline.history import History
from fraudops.workspace import load_settings
from fraudops.workspace.storage import Storage
from loadgen import free_port

PAGES = ("/", "/executions", "/champion", "/monitoring", "/decision", "/alerts", "/report")
TARGET_MS = 300.0


def pad_executions(workspace: str, n: int) -> int:
    settings = load_settings(workspace)
    hist = History(settings)
    records = [hist.record(r, full=False) for r in hist.search(limit=n)]
    i = 0
    while len(records) + i < n:
        rec = {**records[i % len(records)], "id": uuid.uuid4().hex, "host": "bench", "pid": 0}
        rec["run_id"] = hist.create(rec)
        hist.finish(rec)
        i += 1
    return len(hist.search(limit=n + 10))


def pad_history(workspace: str, n: int) -> int:
    storage = Storage(load_settings(workspace).workspace)
    table = monitoring_history.read(storage)
    rows = table.to_dicts()
    padded = []
    for k in range(max(0, n - len(rows))):
        row = dict(rows[k % len(rows)])
        at = dt.datetime.fromisoformat(row["monitored_at"]) - dt.timedelta(hours=k + 1)
        row["monitored_at"] = at.isoformat()
        padded.append(row)
    full = pl.concat([pl.DataFrame(padded, schema=table.schema), table]) if padded else table
    monitoring_history.write(storage, full.sort("monitored_at"))
    return full.height


def measure(workspace: str, requests: int) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fraudops.cli", "dashboard", "-w", workspace, "--port", str(port)],
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(300):
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            out = {}
            for page in (*PAGES, "/health"):
                assert client.get(page).status_code == 200, page  # warm-up (first MLflow query, imports)
                times = []
                for _ in range(requests):
                    t0 = time.perf_counter()
                    r = client.get(page)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200
                times.sort()
                out[page] = {
                    "p50_ms": round(statistics.median(times), 1),
                    "p95_ms": round(times[max(0, int(0.95 * len(times)) - 1)], 1),
                    "max_ms": round(times[-1], 1),
                }
            return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", help="a demo workspace to pad (modified); default: a fresh small demo")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--executions", type=int, default=50)
    ap.add_argument("--runs", type=int, default=50, help="monitoring runs")
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/dashboard.json"))
    args = ap.parse_args()
    workspace = args.workspace
    if workspace is None:
        workspace = str(Path(tempfile.mkdtemp()) / "demo")
        subprocess.run([sys.executable, "-m", "fraudops.cli", "demo", workspace], check=True)
    n_exec = pad_executions(workspace, args.executions)
    n_runs = pad_history(workspace, args.runs)
    load = os.getloadavg()
    pages = measure(workspace, args.requests)
    for page, fig in pages.items():
        print(f"{page:12s} p50 {fig['p50_ms']:7.1f} ms  p95 {fig['p95_ms']:7.1f} ms", file=sys.stderr)
    failures = [
        f"{page} p95 {fig['p95_ms']} ms > {TARGET_MS:g} ms"
        for page, fig in pages.items()
        if fig["p95_ms"] > TARGET_MS
    ]
    result = {
        "machine": machine("starlette", "uvicorn", "mlflow", load_before=load, load_after=os.getloadavg()),
        "executions": n_exec,
        "monitoring_runs": n_runs,
        "requests_per_page": args.requests,
        "pages": pages,
    }
    return finish(args.output, result, failures)


if __name__ == "__main__":
    sys.exit(main())
