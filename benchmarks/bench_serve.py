"""Benchmark ``fraudops serve`` against ``mlflow models serve`` on the same 300-tree champion.

    uv run python benchmarks/bench_serve.py [--workspace DIR] [--duration 10] [--workers 2]

1. A features-kind workspace with a synthetic 30-feature dataset and an XGBoost champion of exactly
   300 trees (no early stopping), trained, registered and promoted by fraudops (reused if DIR has one).
2. Both servers start on that champion: ``mlflow models serve -m models:/<name>@champion --env-manager
   local`` (one worker, its default) and ``fraudops serve`` (``--workers``, 2 by default: one per core).
3. Both answer the same requests (single rows and 100-row batches); their JSON answers must be equal.
4. ``wrk`` (Debian package ``wrk``; a C load generator, far lighter than a Python client on a 2-core
   machine) loads each server with the same Lua script, rotating through 64 different request bodies:
   single rows at concurrency 1 and 16, 100-row batches at concurrency 1 and 16.
5. In-process costs of the inference runtimes on the same model (XGBoost DMatrix, XGBoost inplace_predict,
   fraudops' numpy trees) at 1, 16 and 100 rows.

Prints a markdown table for the README, writes benchmarks/results/serve.json, and exits non-zero when
the answers differ or a target of the issue is missed (≥ 30× mlflow's single-row throughput with p99 ≤ 5 ms
at concurrency 1, ≥ 10× on 100-row requests). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

RESULTS = Path(__file__).parent / "results" / "serve.json"
MODEL_NAME = "bench-serve-model"
N_TREES = 300
FEATURES = [*(f"V{i}" for i in range(1, 30)), "Amount"]
TARGET_SINGLE = 30.0
TARGET_BATCH = 10.0
TARGET_P99_MS = 5.0
WRK_LUA = r"""
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do bodies[#bodies + 1] = line end
local requests = {}
for i, body in ipairs(bodies) do
  requests[i] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
local i = 0
request = function()
  i = i % #requests + 1
  return requests[i]
end
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f, "errors": %d, "status_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""


# ------------------------------------------------------------------------------------ the champion


def build_workspace(root: Path, rows: int) -> None:
    """A synthetic 30-feature table (Kaggle-like names) and a 300-tree XGBoost champion."""
    from fraudops.context import StepContext
    from fraudops.modeling.train import train_step
    from fraudops.promotion.champion import select_champion_step
    from fraudops.promotion.register import register_step
    from fraudops.workspace import init_workspace
    from fraudops.workspace.storage import Storage

    root.mkdir(parents=True, exist_ok=True)
    (root / "fraudops.yaml").write_text(
        "data:\n  kind: features\n"
        "train:\n  candidates: [xgboost]\n  n_jobs: 2\n"
        f"  xgboost: {{n_estimators: {N_TREES}, max_depth: 6, learning_rate: 0.05, subsample: 0.8, "
        "colsample_bytree: 0.8, min_child_weight: 1}\n"  # no early_stopping_rounds: all 300 trees stay
        f"registry:\n  model_name: {MODEL_NAME}\n"
    )
    settings, _ = init_workspace(str(root))
    storage = Storage(settings.workspace)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 29))
    amount = rng.gamma(2.0, 50.0, rows)
    z = 1.5 * x[:, 0] - x[:, 1] + 0.8 * x[:, 2] * x[:, 3] + 0.5 * np.sin(3 * x[:, 4]) + 0.01 * amount - 5
    y = (rng.random(rows) < 1 / (1 + np.exp(-z))).astype(np.int64)
    cols = {"Time": np.arange(rows, dtype=np.float64), **{f"V{i + 1}": x[:, i] for i in range(29)}}
    storage.write_frame("data/raw/creditcard.parquet", pl.DataFrame({**cols, "Amount": amount, "Class": y}))
    print(f"training {N_TREES} trees on {rows:,} rows × 30 features ...", flush=True)
    run = train_step(StepContext(settings, storage))
    register_step(StepContext(settings, storage, handed={"train": run}))
    decision = select_champion_step(StepContext(settings, storage))
    if decision.champion_version is None:
        raise SystemExit(f"the synthetic model was not promoted: {decision.reasons}")


def champion(root: Path) -> tuple[Any, Any, str]:
    from fraudops.modeling.registry import load_version
    from fraudops.tracking import registry
    from fraudops.workspace import load_settings

    settings = load_settings(str(root))
    mv = registry.version_by_alias(settings, "champion")
    if mv is None:
        raise LookupError("no champion")
    model = load_version(settings, mv.version)
    return settings, model, str(mv.version)


# --------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/ping", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tree_cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (from /proc; Linux only)."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def post(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url + "/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def split_body(rows: np.ndarray) -> bytes:
    return json.dumps({"dataframe_split": {"columns": FEATURES, "data": rows.tolist()}}).encode()


# ------------------------------------------------------------------------------------ measurements


def compare_answers(urls: dict[str, str], rows: np.ndarray, model: Any) -> dict[str, Any]:
    """Both servers on 200 single rows and 6 batches of 100: equal JSON, and equal to the model."""
    bodies = [split_body(rows[i : i + 1]) for i in range(200)]
    bodies += [split_body(rows[lo : lo + 100]) for lo in range(200, 800, 100)]
    answers: dict[str, list[bytes]] = {}
    for name, url in urls.items():
        out = []
        for body in bodies:
            status, text = post(url, body)
            if status != 200:
                raise SystemExit(f"{name} answered {status}: {text[:500]!r}")
            out.append(text)
        answers[name] = out
    a, b = answers["mlflow"], answers["fraudops"]
    parsed_a = [json.loads(t)["predictions"] for t in a]
    parsed_b = [json.loads(t)["predictions"] for t in b]
    p_a = np.array([r["fraud_probability"] for batch in parsed_a for r in batch])
    p_b = np.array([r["fraud_probability"] for batch in parsed_b for r in batch])
    f_a = [r["is_fraud"] for batch in parsed_a for r in batch]
    f_b = [r["is_fraud"] for batch in parsed_b for r in batch]
    reference = model.predict_proba(np.concatenate([rows[:200], rows[200:800]]).astype(np.float32))
    return {
        "rows_compared": len(p_a),
        "requests_compared": len(bodies),
        "identical_json_bytes": a == b,
        "equal_parsed_json": parsed_a == parsed_b,
        "max_abs_probability_difference": float(np.max(np.abs(p_a - p_b))),
        "is_fraud_identical": f_a == f_b,
        "fraudops_equals_FraudModel_predict_proba": bool(np.array_equal(p_b, reference)),
    }


def run_wrk(
    url: str, bodies_file: Path, script: Path, connections: int, seconds: float, pid: int
) -> dict[str, Any]:
    cpu_before = tree_cpu_seconds(pid)
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        url + "/invocations",
    ]
    env = {**os.environ, "WRK_BODIES": str(bodies_file)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    r = json.loads(line.removeprefix("WRKJSON "))
    cpu = tree_cpu_seconds(pid) - cpu_before
    return {
        "server_cpu_ms_per_request": 1000 * cpu / max(r["requests"], 1),
        "requests": r["requests"],
        "req_per_s": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "errors": r["errors"] + r["status_errors"],
    }


def runtime_costs(model: Any) -> dict[str, dict[str, float]]:
    """Microseconds per call, best of several runs, in this process (one thread)."""
    import xgboost

    from fraudops.serving.trees import prepare_runtime

    trees, _, _ = prepare_runtime(model)
    rng = np.random.default_rng(3)
    out: dict[str, dict[str, float]] = {}
    for n in (1, 16, 100):
        x = np.ascontiguousarray(rng.normal(size=(n, 30)).astype(np.float32))
        funcs = {
            "xgboost DMatrix predict": lambda x=x: model.booster.predict(xgboost.DMatrix(x)),
            "xgboost inplace_predict": lambda x=x: model.booster.inplace_predict(x, validate_features=False),
        }
        if trees is not None:
            funcs["fraudops numpy trees"] = lambda x=x: trees.predict(x, model.booster)
        for name, fn in funcs.items():
            fn()
            best = float("inf")
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(20):
                    fn()
                best = min(best, (time.perf_counter() - t0) / 20)
            out.setdefault(name, {})[f"{n}_rows_us"] = round(best * 1e6, 1)
    return out


# ------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", help="reuse (or build) the champion here; default: a temporary folder")
    ap.add_argument("--rows", type=int, default=12_000, help="rows of the synthetic training table")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per scenario and server")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement")
    ap.add_argument("--workers", type=int, default=2, help="fraudops serve worker processes")
    ap.add_argument("--no-check", action="store_true", help="exit 0 even when a target is missed")
    ap.add_argument(
        "--fraudops-extra-path",
        help="a folder put on the fraudops server's PYTHONPATH, e.g. one holding orjson "
        "(pip install --target DIR orjson): measures an optional package without changing the environment",
    )
    args = ap.parse_args()

    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    root = Path(args.workspace) if args.workspace else Path(tmp.name) / "ws"
    try:
        settings, model, model_version = champion(root)
    except Exception:
        build_workspace(root, args.rows)
        settings, model, model_version = champion(root)
    n_trees = int(model.booster.num_boosted_rounds())
    if n_trees != N_TREES or len(model.feature_names) != 30:
        raise SystemExit(
            f"the champion has {n_trees} trees and {len(model.feature_names)} features, not 300/30"
        )
    from fraudops.tracking.client import tracking_uri

    rows = pl.read_parquet(root / "data/raw/creditcard.parquet").select(model.feature_names).to_numpy()
    tracking = tracking_uri(settings)
    logs = Path(tmp.name)
    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FRAUDOPS_", "PROMETHEUS_", "MLFLOW_"))
    }
    ports = {"mlflow": free_port(), "fraudops": free_port()}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    mlflow_cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{MODEL_NAME}@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(ports["mlflow"]),
        "-w",
        "1",
    ]
    fraudops_cmd = [
        sys.executable,
        "-m",
        "fraudops.cli",
        "serve",
        "-w",
        str(root),
        "--host",
        "127.0.0.1",
        "--port",
        str(ports["fraudops"]),
        "--workers",
        str(args.workers),
    ]
    fraudops_env = dict(base_env)
    if args.fraudops_extra_path:
        fraudops_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [args.fraudops_extra_path, os.environ.get("PYTHONPATH")])
        )
    procs = {
        "mlflow": start(mlflow_cmd, {**base_env, "MLFLOW_TRACKING_URI": tracking}, logs / "mlflow.log"),
        "fraudops": start(fraudops_cmd, fraudops_env, logs / "fraudops.log"),
    }
    load_before = os.getloadavg()
    try:
        for name in procs:
            wait_ready(urls[name], procs[name], logs / f"{name}.log")
        time.sleep(3)  # every fraudops worker up (each loads the model on its own)
        print("both servers ready; comparing answers ...", flush=True)
        agreement = compare_answers(urls, rows, model)
        print(json.dumps(agreement, indent=2), flush=True)

        script = logs / "post.lua"
        script.write_text(WRK_LUA)
        rng = np.random.default_rng(7)
        bodies: dict[int, Path] = {}
        for n in (1, 100):
            path = logs / f"bodies_{n}.jsonl"
            starts = rng.integers(0, len(rows) - n, 64)
            path.write_bytes(b"\n".join(split_body(rows[s : s + n]) for s in starts) + b"\n")
            bodies[n] = path
        scenarios = [
            ("single row, concurrency 1", 1, 1),
            ("single row, concurrency 16", 1, 16),
            ("100 rows, concurrency 1", 100, 1),
            ("100 rows, concurrency 16", 100, 16),
        ]
        results = []
        for label, n, conns in scenarios:
            row: dict[str, Any] = {"scenario": label, "rows_per_request": n, "concurrency": conns}
            for name in ("mlflow", "fraudops"):
                run_wrk(urls[name], bodies[n], script, conns, args.warmup, procs[name].pid)
                row[name] = run_wrk(urls[name], bodies[n], script, conns, args.duration, procs[name].pid)
                r = row[name]
                print(
                    f"{label:<28} {name:<9} {r['req_per_s']:>9,.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                    f"p99 {r['p99_ms']:7.2f} ms  CPU {r['server_cpu_ms_per_request']:6.2f} ms/request  "
                    f"errors {r['errors']}",
                    flush=True,
                )
            row["throughput_ratio"] = row["fraudops"]["req_per_s"] / row["mlflow"]["req_per_s"]
            cpu_m, cpu_f = (row[k]["server_cpu_ms_per_request"] for k in ("mlflow", "fraudops"))
            row["cpu_per_request_ratio"] = cpu_m / cpu_f if cpu_f else float("nan")
            results.append(row)
    finally:
        for proc in procs.values():
            stop(proc)
    load_after = os.getloadavg()
    print("in-process inference runtime costs ...", flush=True)
    runtimes = runtime_costs(model)

    by = {(r["rows_per_request"], r["concurrency"]): r for r in results}
    checks = {
        "answers identical (is_fraud equal, probabilities within 1e-6)": agreement["is_fraud_identical"]
        and agreement["max_abs_probability_difference"] <= 1e-6,
        f"single row c=1: >= {TARGET_SINGLE:g}x mlflow": by[(1, 1)]["throughput_ratio"] >= TARGET_SINGLE,
        f"single row c=1: p99 <= {TARGET_P99_MS:g} ms": by[(1, 1)]["fraudops"]["p99_ms"] <= TARGET_P99_MS,
        f"single row c=16: >= {TARGET_SINGLE:g}x mlflow": by[(1, 16)]["throughput_ratio"] >= TARGET_SINGLE,
        f"100 rows c=16: >= {TARGET_BATCH:g}x mlflow": by[(100, 16)]["throughput_ratio"] >= TARGET_BATCH,
        "no failed request": all(r[s]["errors"] == 0 for r in results for s in ("mlflow", "fraudops")),
    }
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "versions": {p: version(p) for p in ("mlflow", "xgboost", "uvicorn", "numpy", "fraudops")},
        "model": {"name": MODEL_NAME, "version": model_version, "trees": n_trees, "features": 30},
        "servers": {"mlflow": " ".join(mlflow_cmd[2:]), "fraudops": " ".join(fraudops_cmd[2:])},
        "load_tool": f"wrk {version_of_wrk()} (1 thread, closed loop, 64 rotating bodies)",
        "fraudops_json_decoder": json_decoder(args.fraudops_extra_path),
        "duration_s": args.duration,
        "agreement": agreement,
        "scenarios": results,
        "runtimes_us": runtimes,
        "checks": checks,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    print(f"\nwrote {RESULTS}")
    failed = [k for k, ok in checks.items() if not ok]
    for k, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")
    tmp.cleanup()
    return 1 if failed and not args.no_check else 0


def json_decoder(extra_path: str | None) -> str:
    code = "import orjson; print('orjson')"
    env = {**os.environ, **({"PYTHONPATH": extra_path} if extra_path else {})}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    ).stdout.strip()


def version_of_wrk() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    words = (out.stdout + out.stderr).split()
    return words[1] if len(words) > 1 else "?"


def print_tables(report: dict[str, Any]) -> None:
    head = [
        "scenario",
        "mlflow req/s",
        "mlflow p50 / p99 ms",
        "fraudops req/s",
        "fraudops p50 / p99 ms",
        "req/s ratio",
        "server CPU ms/request (mlflow / fraudops)",
    ]
    print("\n| " + " | ".join(head) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in report["scenarios"]:
        m, f = r["mlflow"], r["fraudops"]
        print(
            f"| {r['scenario']} | {m['req_per_s']:,.0f} | {m['p50_ms']:.1f} / {m['p99_ms']:.1f} | "
            f"{f['req_per_s']:,.0f} | {f['p50_ms']:.2f} / {f['p99_ms']:.2f} | {r['throughput_ratio']:.0f}× | "
            f"{m['server_cpu_ms_per_request']:.2f} / {f['server_cpu_ms_per_request']:.2f} "
            f"({r['cpu_per_request_ratio']:.0f}×) |"
        )
    print("\n| runtime (one call, µs) | 1 row | 16 rows | 100 rows |")
    print("|---|---:|---:|---:|")
    for name, costs in report["runtimes_us"].items():
        cells = " | ".join(f"{costs[f'{n}_rows_us']:,.0f}" for n in (1, 16, 100))
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    sys.exit(main())
