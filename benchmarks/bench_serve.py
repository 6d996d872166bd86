"""Benchmark ``fraudops serve`` against a fairly configured ``mlflow models serve`` and its own stack's floor.

    uv run python benchmarks/bench_serve.py [--demo-workspace DIR] [--large-workspace DIR] [--runs 3]

Two models: the champion of ``fraudops demo`` (transactions kind, early-stopped XGBoost; built in DIR
when it has no champion) and a features-kind champion of exactly 300 trees × 30 features (synthetic
data). For each model, one server at a time (never two at once), each alone on CPU ``--server-cpu``
(``taskset``), loaded by ``wrk`` (keep-alive, a Lua script rotating 64 request bodies) on CPU
``--client-cpu``; every server has one worker process and ``OMP_NUM_THREADS=1``:

- ``fraudops``: ``fraudops serve --workers 1``;
- ``floor``: the same uvicorn stack with the same options answering a constant body of the size of
  fraudops' answer and doing nothing else (``serve_floor.py``): what the stack itself can do;
- ``mlflow native``: the same booster (feature names set, ``nthread`` 1) logged with
  ``mlflow.xgboost.log_model`` and served by ``mlflow models serve --env-manager local -w 1``: what a
  user who never heard of fraudops would serve;
- ``mlflow pyfunc``: the pyfunc fraudops registers, served the same way.

Scenarios: 1 and 100 rows per request, concurrency 1 and 16; each ``--runs`` times for ``--duration``
seconds after a ``--warmup`` run, the median reported, with the server process tree's CPU seconds per
request (``/proc``). The answers are checked first: fraudops and the pyfunc byte-identical, the native
flavor's probabilities equal to fraudops'. ``--granian-path DIR`` (``pip install --target DIR granian``)
adds fraudops and the floor on granian (ASGI), measured the same way, without changing the environment.

Prints a markdown table for the README, writes benchmarks/results/serve.json, and exits non-zero when
a target of the issue is missed on the demo champion (single row at concurrency 1: ≥ 85 % of the floor's
throughput, ≥ 7× the native peer, p99 ≤ 1.5 ms; at concurrency 16: ≥ 6× the native peer, p99 ≤ 10 ms).
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from common import finish, machine
from loadgen import WRK_LUA, free_port, post, proc_stats, start, stop, summarize, tree_ticks, wait_ready, wrk

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "serve.json"
LARGE_MODEL_NAME = "bench-serve-model"
LARGE_TREES = 300
LOOPBACK = ["--host", "127.0.0.1", "--port", "{port}"]  # {port}: a free port, per start
SCENARIOS = [(1, 1), (1, 16), (100, 1), (100, 16)]  # (rows per request, concurrency)
SERVERS = ["fraudops", "floor", "mlflow native", "mlflow pyfunc"]
TARGET_FLOOR_SHARE = 0.85
TARGET_C1_RATIO = 7.0
TARGET_C1_P99_MS = 1.5
TARGET_C16_RATIO = 6.0
TARGET_C16_P99_MS = 10.0


# ------------------------------------------------------------------------ pure helpers (unit-tested)


def markdown_table(results: Iterable[dict[str, Any]], servers: list[str]) -> str:
    """One line per model and scenario: each server's req/s and p50 / p99, fraudops' share of the floor
    and its ratio to the native peer, the server CPU per request."""
    head = [
        "model",
        "rows",
        "c",
        *(f"{s} req/s · p50 / p99 ms" for s in servers),
        "fraudops ÷ floor",
        "fraudops ÷ mlflow native",
        f"server CPU ms/request ({' / '.join(servers)})",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * (len(servers) + 3)]
    for r in results:
        cells = [r["model"], str(r["rows"]), str(r["concurrency"])]
        by = r["servers"]
        for s in servers:
            m = by[s]
            cells.append(f"{m['req_per_s']:,.0f} · {m['p50_ms']:.2f} / {m['p99_ms']:.2f}")
        f, floor, native = (
            by.get(s, {}).get("req_per_s", 0.0) for s in ("fraudops", "floor", "mlflow native")
        )
        cells.append(f"{f / floor:.0%}" if floor else "—")
        cells.append(f"{f / native:.1f}×" if native else "— (no answer in a run)")
        cells.append(" / ".join(f"{by[s]['cpu_ms_per_request']:.2f}" for s in servers))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_targets(results: list[dict[str, Any]], model: str) -> dict[str, bool]:
    """The issue's targets, on one model's single-row scenarios."""
    by = {(r["rows"], r["concurrency"]): r["servers"] for r in results if r["model"] == model}
    c1, c16 = by[(1, 1)], by[(1, 16)]
    ratio = lambda s: s["fraudops"]["req_per_s"] / max(s["mlflow native"]["req_per_s"], 1e-9)  # noqa: E731
    return {
        f"{model}, 1 row c=1: >= {TARGET_FLOOR_SHARE:.0%} of the floor": c1["fraudops"]["req_per_s"]
        >= TARGET_FLOOR_SHARE * c1["floor"]["req_per_s"],
        f"{model}, 1 row c=1: >= {TARGET_C1_RATIO:g}x mlflow native": ratio(c1) >= TARGET_C1_RATIO,
        f"{model}, 1 row c=1: p99 <= {TARGET_C1_P99_MS:g} ms": c1["fraudops"]["p99_ms"] <= TARGET_C1_P99_MS,
        f"{model}, 1 row c=16: >= {TARGET_C16_RATIO:g}x mlflow native": ratio(c16) >= TARGET_C16_RATIO,
        f"{model}, 1 row c=16: p99 <= {TARGET_C16_P99_MS:g} ms": c16["fraudops"]["p99_ms"]
        <= TARGET_C16_P99_MS,
    }


# ------------------------------------------------------------------------------------ the models


def build_large_workspace(root: Path, rows: int) -> None:
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
        f"  xgboost: {{n_estimators: {LARGE_TREES}, max_depth: 6, learning_rate: 0.05, subsample: 0.8, "
        "colsample_bytree: 0.8, min_child_weight: 1}\n"  # no early_stopping_rounds: all 300 trees stay
        f"registry:\n  model_name: {LARGE_MODEL_NAME}\n"
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
    print(f"training {LARGE_TREES} trees on {rows:,} rows × 30 features ...", flush=True)
    run = train_step(StepContext(settings, storage))
    register_step(StepContext(settings, storage, handed={"train": run}))
    decision = select_champion_step(StepContext(settings, storage))
    if decision.champion_version is None:
        raise SystemExit(f"the synthetic model was not promoted: {decision.reasons}")


def build_demo_workspace(root: Path) -> None:
    print(f"running `fraudops demo {root}` for the demo's champion ...", flush=True)
    cmd = [sys.executable, "-m", "fraudops.cli", "demo", str(root), "--force"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def champion(root: Path) -> tuple[Any, Any, str]:
    from fraudops.modeling.registry import load_version
    from fraudops.tracking import registry
    from fraudops.workspace import load_settings

    settings = load_settings(str(root))
    mv = registry.version_by_alias(settings, "champion")
    if mv is None:
        raise LookupError(f"no champion in {root}")
    return settings, load_version(settings, mv.version), str(mv.version)


def feature_rows(settings: Any, model: Any, root: Path) -> np.ndarray:
    """Rows of the model's features: the synthetic table (features kind), or the features of the demo's
    latest ten days of transactions (transactions kind)."""
    if settings.data.kind == "features":
        return pl.read_parquet(root / "data/raw/creditcard.parquet").select(model.feature_names).to_numpy()
    from fraudops.features.engine import add_features

    files = sorted((root / "data" / "raw").glob("*.parquet"))[-10:]
    tx = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    x = add_features(tx, settings.features).select(model.feature_names).drop_nulls().to_numpy(order="c")
    return np.asarray(x[np.isfinite(x).all(axis=1)][-4000:], dtype=np.float64)


def log_native(settings: Any, model: Any, rows: np.ndarray) -> str:
    """The same booster, as a user serving it without fraudops would log it: MLflow's xgboost flavor,
    feature names set, one prediction thread. Returns the model URI."""
    import mlflow
    import mlflow.xgboost
    import pandas as pd

    from fraudops.tracking.client import tracking_uri

    booster = model.booster.copy()
    booster.feature_names = list(model.feature_names)
    booster.set_param({"nthread": 1})
    mlflow.set_tracking_uri(tracking_uri(settings))
    mlflow.set_experiment("bench-serve-native-flavor")
    example = pd.DataFrame(rows[:5].astype(np.float64), columns=model.feature_names)
    with mlflow.start_run():
        info = mlflow.xgboost.log_model(
            booster, name="model", input_example=example, pip_requirements=[f"xgboost=={version('xgboost')}"]
        )
    return str(info.model_uri)


def runtime_costs(model: Any) -> dict[str, dict[str, float]]:
    """Microseconds per call of each inference runtime on this model, best of 7, in this process, on one
    thread (XGBoost's DMatrix too: its default is every core, whose threads wait for a busy machine)."""
    import xgboost

    from fraudops.serving.trees import prepare_runtime

    trees, _, _ = prepare_runtime(model)
    booster = model.booster.copy()
    booster.set_param({"nthread": 1})
    rng = np.random.default_rng(3)
    out: dict[str, dict[str, float]] = {}
    for n in (1, 100):
        x = np.ascontiguousarray(rng.normal(size=(n, len(model.feature_names))).astype(np.float32))
        funcs = {
            "xgboost DMatrix predict": lambda x=x: booster.predict(xgboost.DMatrix(x, nthread=1)),
            "xgboost inplace_predict": lambda x=x: booster.inplace_predict(x, validate_features=False),
        }
        if trees is not None:
            funcs["fraudops numpy trees"] = lambda x=x: trees.predict(x, booster)
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


# --------------------------------------------------------------------------------------- servers


def split_body(rows: np.ndarray, features: list[str]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": features, "data": rows.tolist()}}).encode()


def run_wrk(url: str, bodies: Path, script: Path, connections: int, seconds: int, cpu: str, pid: int):
    """One wrk run pinned to ``cpu``; with the server tree's CPU milliseconds per request."""
    before = tree_ticks(proc_stats(), pid)
    r = wrk(url + "/invocations", script, connections, seconds, cpu=cpu, env={"WRK_BODIES": str(bodies)})
    ticks = tree_ticks(proc_stats(), pid) - before
    r["cpu_ms_per_request"] = 1000 * ticks / os.sysconf("SC_CLK_TCK") / max(r["requests"], 1)
    return r


# ------------------------------------------------------------------------------------------- main


class Bench:
    """One model's servers, each started alone, loaded, stopped."""

    def __init__(self, args: argparse.Namespace, logs: Path) -> None:
        self.args = args
        self.logs = logs
        self.script = logs / "post.lua"
        self.script.write_text(WRK_LUA)
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("FRAUDOPS_", "PROMETHEUS_", "MLFLOW_"))
            },
            "OMP_NUM_THREADS": "1",
            # mlflow models serve runs `uvicorn` from PATH: this environment's, also without `uv run`
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }

    def pinned(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with this process on the servers' CPU, where they were measured."""
        everywhere = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(self.args.server_cpu)})
        try:
            return fn(*args)
        finally:
            os.sched_setaffinity(0, everywhere)

    def measure(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        bodies: dict[int, Path],
        scenarios: list[tuple[int, int]],
        probe: Callable[[str], None] | None = None,
    ) -> dict[tuple[int, int], dict[str, float]]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = self.logs / f"{name.replace(' ', '_')}.log"
        proc = start([c.replace("{port}", str(port)) for c in cmd], env, log, cpu=self.args.server_cpu)
        out: dict[tuple[int, int], dict[str, float]] = {}
        try:
            wait_ready(url, proc, log)
            if probe is not None:
                probe(url)
            for rows, conns in scenarios:
                a = self.args
                run_wrk(url, bodies[rows], self.script, conns, a.warmup, a.client_cpu, proc.pid)
                runs = [
                    run_wrk(url, bodies[rows], self.script, conns, a.duration, a.client_cpu, proc.pid)
                    for _ in range(a.runs)
                ]
                out[(rows, conns)] = s = summarize(runs)
                print(
                    f"{time.strftime('%H:%M:%S')} {name:<16} {rows:>3} rows c={conns:<2} "
                    f"{s['req_per_s']:>8,.0f} req/s  "
                    f"p50 {s['p50_ms']:6.2f}  p99 {s['p99_ms']:7.2f} ms  "
                    f"CPU {s['cpu_ms_per_request']:.3f} ms/request  errors {s['errors']:.0f}",
                    flush=True,
                )
        finally:
            stop(proc)
        return out

    def model(self, label: str, root: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        settings, model, model_version = champion(root)
        features = list(model.feature_names)
        rows = feature_rows(settings, model, root)
        rng = np.random.default_rng(7)
        bodies: dict[int, Path] = {}
        for n in (1, 100):
            path = self.logs / f"{label}_bodies_{n}.jsonl"
            starts = rng.integers(0, len(rows) - n, 64)
            path.write_bytes(b"\n".join(split_body(rows[s : s + n], features) for s in starts) + b"\n")
            bodies[n] = path
        check = [split_body(rows[i : i + 1], features) for i in range(100)]
        check += [split_body(rows[lo : lo + 100], features) for lo in range(100, 600, 100)]
        answers: dict[str, list[bytes]] = {}

        def collect(name: str) -> Callable[[str], None]:
            return lambda url: answers.__setitem__(name, [post(url + "/invocations", b) for b in check])

        from fraudops.tracking.client import tracking_uri

        native_uri = log_native(settings, model, rows)
        mlflow_env = {**self.env, "MLFLOW_TRACKING_URI": tracking_uri(settings)}
        py = sys.executable
        mlflow_cmd = [py, "-m", "mlflow", "models", "serve", "--env-manager", "local"]
        mlflow_cmd += ["-h", "127.0.0.1", "-p", "{port}", "-w", "1", "-m"]
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "fraudops": (
                [py, "-m", "fraudops.cli", "serve", "-w", str(root), *LOOPBACK, "--workers", "1"],
                self.env,
            ),
            "floor": ([py, str(HERE / "serve_floor.py"), "--workspace", str(root), "--port", "{port}"], {}),
            "mlflow native": ([*mlflow_cmd, native_uri], mlflow_env),
            "mlflow pyfunc": ([*mlflow_cmd, f"models:/{settings.registry.model_name}@champion"], mlflow_env),
        }
        if self.args.granian_path:
            granian = [py, "-m", "granian", "--interface", "asgi", *LOOPBACK]
            granian += ["--workers", "1", "--loop", "uvloop", "--http", "1", "--no-ws", "--factory"]
            genv = {**self.env, "PYTHONPATH": os.pathsep.join([self.args.granian_path, str(HERE)])}
            commands["fraudops granian"] = (
                [*granian, "fraudops.serving.app:create_app"],
                {**genv, "_FRAUDOPS_SERVE_WORKSPACE": str(root)},
            )
            commands["floor granian"] = ([*granian, "serve_floor:create_floor"], genv)
        print(
            f"{time.strftime('%H:%M:%S')} {label}: "
            f"{model.booster.num_boosted_rounds()} trees × {len(features)} features",
            flush=True,
        )
        measured: dict[str, dict[tuple[int, int], dict[str, float]]] = {}
        only = self.args.only.split(",") if self.args.only else list(commands)
        for name, (cmd, env) in commands.items():
            if name not in only and name != "fraudops":  # the floor answers what fraudops answers
                continue
            if name.startswith("floor"):  # one server per body size: fraudops' answers, byte for byte
                parts = {}
                for n, answer in ((1, answers["fraudops"][0]), (100, answers["fraudops"][-1])):
                    body = self.logs / f"{label}_answer_{n}.json"
                    body.write_bytes(answer)
                    fenv = {**self.env, **env, "BENCH_FLOOR_BODY_FILE": str(body)}
                    extra = [] if "granian" in name else ["--body-file", str(body)]
                    sizes = [sc for sc in SCENARIOS if sc[0] == n]
                    parts.update(self.measure(name, [*cmd, *extra], fenv, bodies, sizes))
                measured[name] = parts
            else:
                probe = collect(name) if name in ("fraudops", "mlflow native", "mlflow pyfunc") else None
                measured[name] = self.measure(name, cmd, env, bodies, SCENARIOS, probe)
        results = [
            {
                "model": label,
                "rows": n,
                "concurrency": c,
                "servers": {name: m[(n, c)] for name, m in measured.items()},
            }
            for n, c in SCENARIOS
        ]
        info = {
            "model_version": model_version,
            "trees": int(model.booster.num_boosted_rounds()),
            "features": len(features),
            "native_model_uri": native_uri,
            "agreement": agreement(answers),
            "commands": {k: " ".join(v[0]) for k, v in commands.items()},
            "runtimes_us": self.pinned(runtime_costs, model),
        }
        return results, info


def agreement(answers: dict[str, list[bytes]]) -> dict[str, Any]:
    """fraudops vs the pyfunc (bytes) and vs the native flavor (probabilities)."""
    if "mlflow native" not in answers or "mlflow pyfunc" not in answers:
        return {}
    ours = [json.loads(a)["predictions"] for a in answers["fraudops"]]
    p_ours = np.array([r["fraud_probability"] for batch in ours for r in batch])
    native = np.array([p for a in answers["mlflow native"] for p in json.loads(a)["predictions"]])
    return {
        "requests": len(ours),
        "rows": len(p_ours),
        "pyfunc_identical_bytes": answers["fraudops"] == answers["mlflow pyfunc"],
        "native_max_abs_probability_difference": float(np.max(np.abs(p_ours - native))),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-workspace", help="the demo's workspace (built when it has no champion)")
    ap.add_argument("--large-workspace", help="the 300 × 30 champion's workspace (built when absent)")
    ap.add_argument("--rows", type=int, default=12_000, help="rows of the synthetic training table")
    ap.add_argument("--duration", type=int, default=3, help="seconds of one measured run")
    ap.add_argument("--runs", type=int, default=3, help="measured runs per server and scenario (median)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of load before the runs")
    ap.add_argument("--server-cpu", default="0", help="the CPU the servers are pinned to")
    ap.add_argument("--client-cpu", default="1", help="the CPU wrk is pinned to")
    ap.add_argument("--granian-path", help="a folder holding granian (pip install --target DIR granian)")
    ap.add_argument("--only", help="comma-separated servers to measure (fraudops always is), no targets")
    ap.add_argument("--no-check", action="store_true", help="exit 0 even when a target is missed")
    args = ap.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y wrk util-linux")

    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    demo_root = Path(args.demo_workspace) if args.demo_workspace else Path(tmp.name) / "demo"
    large_root = Path(args.large_workspace) if args.large_workspace else Path(tmp.name) / "large"
    try:
        champion(demo_root)
    except Exception:
        build_demo_workspace(demo_root)
    try:
        champion(large_root)
    except Exception:
        build_large_workspace(large_root, args.rows)
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {uptime_before}", flush=True)
    t0 = time.monotonic()
    logs = Path(tmp.name) / "logs"
    logs.mkdir()
    bench = Bench(args, logs)
    results: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for label, root in (("demo champion", demo_root), ("300 trees × 30", large_root)):
        rows, info = bench.model(label, root)
        results += rows
        models[label] = info
        print(json.dumps(info["agreement"]), flush=True)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    servers = [s for s in [*SERVERS, "fraudops granian", "floor granian"] if s in results[0]["servers"]]
    table = markdown_table(results, servers)
    checks = check_targets(results, "demo champion") if not args.only else {}
    for label, info in models.items():
        if not (a := info["agreement"]):
            continue
        checks[f"{label}: pyfunc answers byte-identical"] = a["pyfunc_identical_bytes"]
        checks[f"{label}: native probabilities within 1e-6"] = (
            a["native_max_abs_probability_difference"] <= 1e-6
        )
    checks["no failed request"] = all(s["errors"] == 0 for r in results for s in r["servers"].values())
    print(f"\n{table}\n\nuptime before: {uptime_before}\nuptime after:  {uptime_after}")
    print(f"measured in {time.monotonic() - t0:.0f} s")
    print("\n| runtime, one thread (µs per call) | 1 row | 100 rows |\n|---|---:|---:|")
    for label, info in models.items():
        for name, cost in info["runtimes_us"].items():
            print(f"| {label}: {name} | {cost['1_rows_us']:,.0f} | {cost['100_rows_us']:,.0f} |")
    for k, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {k}")
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(
            "mlflow", "xgboost", "uvicorn", "fraudops", uptime_before=uptime_before, uptime_after=uptime_after
        ),
        "setup": {
            "server_cpu": args.server_cpu,
            "client_cpu": args.client_cpu,
            "wrk": "1 thread, keep-alive, 64 rotating bodies",
            "duration_s": args.duration,
            "runs": args.runs,
            "warmup_s": args.warmup,
            "OMP_NUM_THREADS": 1,
        },
        "models": models,
        "results": results,
        "table": table,
        "checks": checks,
    }
    code = finish(RESULTS, report, [] if args.no_check else [k for k, ok in checks.items() if not ok])
    tmp.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
