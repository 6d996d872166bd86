"""Benchmark reason codes, data capture and the shadow challenger on ``fraudops serve`` (issue 13).

    uv run python benchmarks/bench_capture.py [--workspace DIR] [--duration 10] [--runs 3]

1. The 300-tree, 30-feature champion of ``bench_serve.py`` (built or reused in DIR) and a challenger
   (version 2, other trees) for the shadow.
2. Reason codes in-process: the CPU cost of one alert row's reasons (exact TreeSHAP tables) against
   XGBoost's own ``pred_contribs``, p50/p99 over 300 rows.
3. Reason codes over HTTP: ``wrk`` at concurrency 1 on POST /predict, single transactions sent with
   ``"explain": true`` (every answer carries reasons, as an alert's does) against the same bodies with
   ``"explain": false``: the p99 added (target ≤ 2 ms).
4. Capture and shadow at saturation: ``wrk`` at concurrency 16, single transactions on /predict, against
   the server without capture, with capture (sampling 1) and with capture + shadow challenger; the
   throughput lost (target ≤ 10 %). Runs alternate between the servers; the median of ``--runs``.

One worker; the server pinned to CPU 0 and wrk to CPU 1 (``taskset``), keep-alive connections. Prints the
figures with the machine's load (``uptime``), writes benchmarks/results/capture.json, exits non-zero when a
target is missed. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_serve import build_large_workspace, champion
from common import finish, machine
from loadgen import WRK_LUA, free_port, start, stop, wait_ready, wrk

RESULTS = Path(__file__).parent / "results" / "capture.json"
TARGET_REASON_P99_MS = 2.0
TARGET_THROUGHPUT_LOSS = 0.10


def ensure_challenger(root: Path) -> None:
    """Version 2, registered (alias challenger), from other trees."""
    from fraudops.context import StepContext
    from fraudops.modeling.train import train_step
    from fraudops.promotion.register import register_step
    from fraudops.tracking import registry
    from fraudops.workspace import load_settings
    from fraudops.workspace.storage import Storage

    settings = load_settings(str(root))
    if registry.version_by_alias(settings, "challenger") is not None:
        return
    settings.train.seed = 7
    storage = Storage(settings.workspace)
    run = train_step(StepContext(settings, storage))
    register_step(StepContext(settings, storage, handed={"train": run}))


def reason_costs(model: Any, rows: np.ndarray) -> dict[str, Any]:
    """CPU milliseconds of one row's reasons: fraudops' TreeSHAP tables vs XGBoost pred_contribs."""
    import xgboost

    from fraudops.modeling.explain import Explainer

    t0 = time.perf_counter()
    explainer = Explainer(model)
    build = time.perf_counter() - t0
    ours, theirs = [], []
    for i in range(300):
        x = np.ascontiguousarray(rows[i : i + 1])
        t = time.process_time()
        explainer.selected(x, np.ones(1, bool))
        ours.append(time.process_time() - t)
        if i < 30:
            t = time.process_time()
            model.booster.predict(xgboost.DMatrix(x, nthread=1), pred_contribs=True)
            theirs.append(time.process_time() - t)
    pct = lambda v, q: round(float(np.percentile(v, q)) * 1000, 3)  # noqa: E731
    return {
        "tables_build_s": round(build, 2),
        "tables_mb": round(explainer.treeshap.table.nbytes / 1e6, 1) if explainer.treeshap else None,
        "fraudops_cpu_ms_p50": pct(ours, 50),
        "fraudops_cpu_ms_p99": pct(ours, 99),
        "xgboost_pred_contribs_cpu_ms_p50": pct(theirs, 50),
    }


def bodies(rows: np.ndarray, features: list[str], path: Path, explain: bool | None) -> None:
    lines = []
    for r in rows[:64].tolist():
        rec: dict[str, Any] = dict(zip(features, r, strict=True))
        if explain is not None:
            rec["explain"] = explain
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")


def serve(root: Path, log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "fraudops.cli", "serve", "-w", str(root)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDOPS_", "PROMETHEUS_"))}
    proc = start(cmd, {**base, **env}, log, cpu="0")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log)
    return proc, url


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", help="reuse (or build) the champion here; default: a temporary folder")
    ap.add_argument("--rows", type=int, default=12_000, help="rows of the synthetic training table")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per measurement")
    ap.add_argument("--runs", type=int, default=3, help="alternating runs per server (the median is kept)")
    ap.add_argument("--no-check", action="store_true", help="exit 0 even when a target is missed")
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise SystemExit("wrk and taskset are needed: apt-get install -y wrk util-linux")
    tmp = tempfile.TemporaryDirectory(prefix="bench-capture-")
    root = Path(args.workspace) if args.workspace else Path(tmp.name) / "ws"
    try:
        _, model, _ = champion(root)
    except Exception:  # no workspace or no champion yet
        build_large_workspace(root, args.rows)
        _, model, _ = champion(root)
    ensure_challenger(root)
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(400, 30)).astype(np.float32)
    rows[:, -1] = np.abs(rows[:, -1]) * 100
    out: dict[str, Any] = {"load_before": load(), "reasons_in_process": reason_costs(model, rows)}
    work = Path(tmp.name)
    script = work / "bodies.lua"
    script.write_text(WRK_LUA)
    files = {k: work / f"{k}.jsonl" for k in ("plain", "explain_on", "explain_off")}
    features = list(model.feature_names)
    bodies(rows, features, files["plain"], None)
    bodies(rows, features, files["explain_on"], True)
    bodies(rows, features, files["explain_off"], False)
    capture = {"FRAUDOPS_SERVE__CAPTURE__ENABLED": "true", "FRAUDOPS_SERVE__CAPTURE__FLUSH_SECONDS": "5"}
    servers = {
        "plain": {},
        "capture": capture,
        "capture_shadow": {**capture, "FRAUDOPS_SERVE__SHADOW": "challenger"},
    }
    started = {}
    try:
        for name, env in servers.items():
            started[name] = serve(root, work / f"{name}.log", **env)
        url = started["plain"][1]
        wrk(url + "/predict", script, 16, 2, env={"WRK_BODIES": str(files["plain"])})  # warm-up
        c1: dict[str, list[dict[str, float]]] = {"explain_off": [], "explain_on": []}
        c16: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for _ in range(args.runs):
            for kind in c1:
                c1[kind].append(
                    wrk(url + "/predict", script, 1, args.duration, env={"WRK_BODIES": str(files[kind])})
                )
            for name in servers:
                c16[name].append(
                    wrk(
                        started[name][1] + "/predict",
                        script,
                        16,
                        args.duration,
                        env={"WRK_BODIES": str(files["plain"])},
                    )
                )
    finally:
        for proc, _ in started.values():
            stop(proc)
    med = lambda runs, key: round(statistics.median(r[key] for r in runs), 3)  # noqa: E731
    out["reasons_http_c1"] = {
        k: {m: med(v, m) for m in ("req_per_s", "p50_ms", "p99_ms")} for k, v in c1.items()
    }
    added = out["reasons_http_c1"]["explain_on"]["p99_ms"] - out["reasons_http_c1"]["explain_off"]["p99_ms"]
    out["reasons_p99_added_ms"] = round(added, 3)
    out["saturation_c16"] = {
        k: {m: med(v, m) for m in ("req_per_s", "p50_ms", "p99_ms")} for k, v in c16.items()
    }
    base = out["saturation_c16"]["plain"]["req_per_s"]
    out["throughput_loss"] = {
        k: round(1 - out["saturation_c16"][k]["req_per_s"] / base, 4) for k in ("capture", "capture_shadow")
    }
    out["errors"] = sum(r["errors"] for runs in [*c1.values(), *c16.values()] for r in runs)
    out["load_after"] = load()
    out["machine"] = machine("xgboost", "numpy", "polars", wrk="/usr/bin/wrk", runs=args.runs)
    print(json.dumps(out, indent=2))
    failures = []
    if added > TARGET_REASON_P99_MS:
        failures.append(f"reason codes add {added:.2f} ms p99 (target ≤ {TARGET_REASON_P99_MS})")
    for k, loss in out["throughput_loss"].items():
        if loss > TARGET_THROUGHPUT_LOSS:
            failures.append(f"{k} loses {loss:.1%} throughput (target ≤ {TARGET_THROUGHPUT_LOSS:.0%})")
    if out["errors"]:
        failures.append(f"{out['errors']} request errors")
    return finish(RESULTS, out, [] if args.no_check else failures)


if __name__ == "__main__":
    sys.exit(main())
