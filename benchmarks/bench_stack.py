"""Benchmark of the production topology against a local folder, in one run.

Starts the stack of ``make stack`` (PostgreSQL, moto's S3 API server and an MLflow server over them, on
loopback; ``tests/servers.py``) and measures, each beside its local peer:

1. the demo (``fraudops demo``, a fresh process each) on a local folder with SQLite vs on
   ``s3://fraudops/…`` with MLflow on PostgreSQL — target: the stack within 2× the local wall time;
2. batch scoring of ``--rows`` features-kind rows (the Parquet file and 300-tree model of
   ``bench_batch.py``) by :func:`fraudops.batch.scoring.score_file` from and to a local folder vs from and
   to S3 — target: S3 throughput ≥ local / 1.5. Beside it, the server's own transfer floor: the same
   bytes moved by s3fs alone (GET of the input, PUT of an output-sized object), so that the part of the S3
   time that is the server's (moto stores and hashes objects in Python) is shown, not guessed;
3. the endpoint's reload check against the remote MLflow: HTTP requests per check while the champion does
   not change — target: ≤ 1.

Writes benchmarks/results/stack.json and exits non-zero when a target is missed.

    uv run python benchmarks/bench_stack.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from bench_batch import INPUT, train_model, write_input
from common import finish, machine
from fraudops.batch.scoring import output_name, score_file
from fraudops.workspace import init_workspace, load_settings
from fraudops.workspace.storage import Storage
from servers import BUCKET, stack

RESULTS = Path(__file__).parent / "results" / "stack.json"
DEMO_RATIO, BATCH_RATIO, RELOAD_REQUESTS = 2.0, 1.5, 1.0


def timed_demo(workspace: str, customers: int, env: dict[str, str]) -> float:
    fraudops = str(Path(sys.executable).with_name("fraudops"))
    started = time.perf_counter()
    out = subprocess.run(
        [fraudops, "demo", workspace, "--customers", str(customers)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"demo on {workspace} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return seconds


def batch_workspace(url: str, chunk_rows: int) -> tuple[Any, Storage]:
    storage = Storage(url)
    storage.write_text("fraudops.yaml", f"data: {{kind: features}}\nbatch: {{chunk_rows: {chunk_rows}}}\n")
    settings, _ = init_workspace(url)
    return settings, Storage.of(settings)


def timed_scoring(storage: Storage, settings: Any, model: Any, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = score_file(storage, INPUT, model, settings, version=1)
        times.append(time.perf_counter() - started)
        assert storage.exists(output_name(INPUT)), result
    return times


def timed_transfer(local: Storage, remote: Storage) -> float:
    """Seconds for s3fs alone to GET the input and PUT the output's bytes (what any client pays)."""
    output = local.path(output_name(INPUT))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        remote.fs.get_file(remote.path(INPUT), os.path.join(folder, "input"))
    remote.fs.put_file(output, remote.path("transfer/output.parquet"))
    return time.perf_counter() - started


def reload_requests(workspace: str, checks: int) -> float:
    """HTTP requests the endpoint's reload check makes per check while the champion stays the same."""
    import requests

    from fraudops.serving.metrics import Metrics
    from fraudops.serving.reload import ModelHolder

    holder = ModelHolder(load_settings(workspace), "champion", Metrics())
    assert holder.check(), holder.last_error
    count = 0
    real = requests.Session.request

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        return real(self, *args, **kwargs)

    requests.Session.request = counting  # type: ignore[method-assign]
    try:
        for _ in range(checks):
            assert holder.check(), holder.last_error
    finally:
        requests.Session.request = real  # type: ignore[method-assign]
    return count / checks


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    r: dict[str, Any] = {}
    with stack(tmp / "stack") as st:
        env = st.env()
        os.environ.update(env)
        if not args.skip_demo:
            local = [timed_demo(str(tmp / f"demo-{i}"), args.customers, {}) for i in range(args.runs)]
            remote = [timed_demo(f"s3://{BUCKET}/demo-{i}", args.customers, env) for i in range(args.runs)]
            r["demo"] = {
                "customers": args.customers,
                "local_seconds": local,
                "stack_seconds": remote,
                "ratio": statistics.median(remote) / statistics.median(local),
            }
            print(f"demo: local {local}, stack {remote}", file=sys.stderr)
            r["reload_requests_per_check"] = reload_requests(f"s3://{BUCKET}/demo-0", args.checks)

        print(f"batch: training the model, writing {args.rows:,} rows…", file=sys.stderr)
        model, info = train_model(tmp / "model", 30_000, 300, 0)
        model = model.with_threads(2)
        settings, local_ws = batch_workspace(str(tmp / "batch"), args.chunk_rows)
        write_input(local_ws.path(INPUT), args.rows, 100_000, 0)
        s3_settings, s3_ws = batch_workspace(f"s3://{BUCKET}/batch", args.chunk_rows)
        s3_ws.fs.put(local_ws.path(INPUT), s3_ws.path(INPUT))
        local_times, s3_times, transfer_times = [], [], []
        for _ in range(args.runs):  # alternate, so that both see the same machine
            local_times += timed_scoring(local_ws, settings, model, 1)
            s3_times += timed_scoring(s3_ws, s3_settings, model, 1)
            transfer_times.append(timed_transfer(local_ws, s3_ws))
        local_rate = args.rows / statistics.median(local_times)
        s3_rate = args.rows / statistics.median(s3_times)
        r["batch"] = {
            "rows": args.rows,
            "input_mb": local_ws.size(INPUT) / 2**20,
            "model": info,
            "local_seconds": local_times,
            "s3_seconds": s3_times,
            "local_rows_per_second": local_rate,
            "s3_rows_per_second": s3_rate,
            "ratio": local_rate / s3_rate,
            "output_mb": local_ws.size(output_name(INPUT)) / 2**20,
            "transfer_seconds": transfer_times,
            "s3_extra_seconds": statistics.median(s3_times) - statistics.median(local_times),
        }
        print(f"batch: local {local_times}, S3 {s3_times}, transfer {transfer_times}", file=sys.stderr)
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="timed runs of each (median reported)")
    parser.add_argument("--customers", type=int, default=5000, help="the demo's simulated cards")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to batch-score")
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument("--checks", type=int, default=20, help="reload checks counted")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fraudops-bench-stack-") as tmp:
        r = bench(args, Path(tmp))
    failures = []
    if "demo" in r:
        print(f"demo on the stack / local: {r['demo']['ratio']:.2f} (target ≤ {DEMO_RATIO})")
        print(f"reload check: {r['reload_requests_per_check']:.2f} request(s) (target ≤ {RELOAD_REQUESTS})")
        if r["demo"]["ratio"] > DEMO_RATIO:
            failures.append(f"demo ratio {r['demo']['ratio']:.2f} > {DEMO_RATIO}")
        if r["reload_requests_per_check"] > RELOAD_REQUESTS:
            failures.append(f"reload check {r['reload_requests_per_check']:.2f} requests > {RELOAD_REQUESTS}")
    b = r["batch"]
    print(
        f"batch scoring {b['rows']:,} rows: local {b['local_rows_per_second']:,.0f} rows/s, "
        f"S3 {b['s3_rows_per_second']:,.0f} rows/s, local / S3 {b['ratio']:.2f} (target ≤ {BATCH_RATIO})"
    )
    floor = statistics.median(b["transfer_seconds"])
    print(
        f"  S3 time over local: {b['s3_extra_seconds']:.1f} s; the server's floor for the same bytes "
        f"({b['input_mb']:.0f} MB in, {b['output_mb']:.0f} MB out): {floor:.1f} s"
    )
    if b["ratio"] > BATCH_RATIO:
        failures.append(f"batch ratio {b['ratio']:.2f} > {BATCH_RATIO}")
    r["machine"] = machine("mlflow", "s3fs", "moto", "psycopg", load_average=os.getloadavg())
    return finish(args.output, r, failures)


if __name__ == "__main__":
    sys.exit(main())
