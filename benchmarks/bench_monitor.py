"""Benchmark: fraudops' drift table vs Evidently 0.7's DataDriftPreset on the same data.

    uv run python benchmarks/bench_monitor.py                      # 1 M x 1 M x 30, peer at 1 M (minutes)
    uv run python benchmarks/bench_monitor.py --peer-rows 100000   # quick peer run
    uv run python benchmarks/bench_monitor.py --no-peer            # fraudops only

fraudops: ``monitoring.stats.drift_table`` (KS + PSI + normalised Wasserstein for every feature) on
reference and current polars frames already in memory, ``--runs`` times; the median is reported.

Peer: Evidently 0.7 (needs pandas < 3, fraudops has pandas 3) in its own virtual environment, created
once with ``uv venv /tmp/evidently-env --python 3.11 && uv pip install --python /tmp/evidently-env
"evidently==0.7.*" "pandas<3" pyarrow``; the data goes through Parquet files and a small script run with
that interpreter times ``Report([DataDriftPreset()]).run(...)`` and dumps each column's drift verdict and
the test Evidently chose. The ratio is Evidently's time over fraudops' time on the same rows. For the
columns where Evidently chose "Wasserstein distance (normed)" (numeric, > 1000 reference rows, > 5
distinct values; threshold 0.1) its verdicts are compared with fraudops' Wasserstein verdict (same
statistic, same threshold). If the environment cannot be built, the peer is skipped with a message.

Exit status: 1 when the fraudops median exceeds ``--max-seconds`` (10) or the ratio is below
``--min-ratio`` (20), else 0. Results: a markdown table on stdout, JSON in benchmarks/results/monitor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fraudops.config import MonitorConfig
from fraudops.monitoring import decision as decisions
from fraudops.monitoring import report, stats

RESULTS = Path(__file__).resolve().parent / "results" / "monitor.json"
DEFAULT_ENV = "/tmp/evidently-env"

# what happens to each column of the current data (index -> shift); the rest is unchanged
KINDS = ("normal", "lognormal", "exponential", "poisson", "uniform")
SHIFTS: dict[int, tuple[str, float]] = {
    12: ("mean", 0.02),  # trivial: KS p-value ~0 at 1 M rows, effect sizes tiny -> not drift
    13: ("mean", 0.02),
    14: ("mean", 0.02),
    15: ("mean", 0.08),  # just below the Wasserstein threshold 0.1
    16: ("mean", 0.08),
    17: ("mean", 0.12),  # just above it
    18: ("mean", 0.12),
    19: ("mean", 0.3),
    20: ("mean", 0.3),
    21: ("mean", 0.3),
    22: ("scale", 1.5),
    23: ("scale", 1.5),
    24: ("outliers", 0.03),  # 3 % of current rows at twice the reference maximum
    25: ("outliers", 0.03),
    26: ("binary", 0.15),  # a 0/1 flag, rate 0.10 -> 0.15
    27: ("missing", 0.05),  # 1 % missing -> 5 % missing, values unchanged
}


def make_data(rows: int, n_features: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, str]]:
    """Reference and current frames, ``rows`` each, plus a description of each column's change."""
    rng = np.random.default_rng(seed)
    ref_cols: dict[str, np.ndarray] = {}
    cur_cols: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}

    def draw(kind: str, n: int) -> np.ndarray:
        if kind == "normal":
            return rng.normal(0.0, 1.0, n)
        if kind == "lognormal":
            return rng.lognormal(3.5, 1.0, n)  # amount-like, heavy right tail
        if kind == "exponential":
            return rng.exponential(2.0, n)
        if kind == "poisson":
            return rng.poisson(4.0, n).astype(np.float64)  # counts: many ties
        return rng.uniform(-1.0, 1.0, n)

    for i in range(n_features):
        name = f"f{i:02d}"
        kind = KINDS[i % len(KINDS)]
        how, amount = SHIFTS.get(i, ("none", 0.0))
        if how == "binary":
            ref = (rng.random(rows) < 0.10).astype(np.float64)
            cur = (rng.random(rows) < amount).astype(np.float64)
            kind = "binary"
        else:
            ref, cur = draw(kind, rows), draw(kind, rows)
        std = float(ref.std())
        if how == "mean":
            cur = cur + amount * std
        elif how == "scale":
            cur = cur.mean() + (cur - cur.mean()) * amount
        elif how == "outliers":
            hit = rng.random(rows) < amount
            cur[hit] = 2 * float(ref.max())
        elif how == "missing":
            ref[rng.random(rows) < 0.01] = np.nan
            cur[rng.random(rows) < amount] = np.nan
        ref_cols[name], cur_cols[name] = ref, cur
        notes[name] = f"{kind}, {how}" + (f" {amount:g}" if how != "none" else "")
    return pl.DataFrame(ref_cols), pl.DataFrame(cur_cols), notes


def time_fraudops(
    ref: pl.DataFrame, cur: pl.DataFrame, features: list[str], cfg: MonitorConfig, runs: int, jobs: int | None
) -> tuple[list[float], list[float], pl.DataFrame]:
    """Wall-clock and CPU seconds (all threads) of each drift_table run, and the last table."""
    times, cpu, table = [], [], None
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        table = stats.drift_table(ref, cur, features, cfg, n_jobs=jobs)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert table is not None
    return times, cpu, table


# ------------------------------------------------------------------------------------------ peer

PEER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import pandas as pd
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref_path, cur_path, out_path, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ref = pd.read_parquet(ref_path)
    cur = pd.read_parquet(cur_path)
    columns = list(ref.columns)
    definition = DataDefinition(numerical_columns=columns)
    dataset_seconds, run_seconds, snapshot = [], [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        ref_ds = Dataset.from_pandas(ref, data_definition=definition)
        cur_ds = Dataset.from_pandas(cur, data_definition=definition)
        t1 = time.perf_counter()
        snapshot = Report([DataDriftPreset()]).run(current_data=cur_ds, reference_data=ref_ds)
        t2 = time.perf_counter()
        dataset_seconds.append(t1 - t0)
        run_seconds.append(t2 - t1)
    result = {"version": evidently.__version__, "pandas": pd.__version__, "rows_ref": len(ref),
              "rows_cur": len(cur), "dataset_seconds": dataset_seconds, "run_seconds": run_seconds,
              "columns": {}, "dataset": None}
    for m in snapshot.dict()["metrics"]:
        cfg = m.get("config", {})
        kind = cfg.get("type", "")
        if kind.endswith("ValueDrift"):
            method, threshold, value = cfg["method"], cfg["threshold"], m["value"]
            # p-value tests flag drift below the threshold, distances at or above it
            drift = value < threshold if "p_value" in method.lower() else value >= threshold
            result["columns"][cfg["column"]] = {"method": method, "threshold": threshold, "value": value,
                                                "drift": bool(drift)}
        elif kind.endswith("DriftedColumnsCount"):
            result["dataset"] = {"drift_share": cfg.get("drift_share"), **m["value"]}
    with open(out_path, "w") as f:
        json.dump(result, f)
    """
)


def peer_python(env: str, build: bool) -> tuple[str | None, str]:
    """The Evidently environment's interpreter (built if needed and allowed), or None and why not."""
    py = Path(env) / "bin" / "python"
    check = [str(py), "-c", "import evidently, pandas, pyarrow; print(evidently.__version__)"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(py), "ok"
    if not build:
        return None, f"no working Evidently environment at {env} (--no-build-peer given)"
    uv = shutil.which("uv")
    if uv is None:
        return None, "uv not found on PATH: cannot build the Evidently environment"
    print(f"building the Evidently environment in {env} (once) ...", file=sys.stderr)
    steps = [
        [uv, "venv", env, "--python", "3.11"],
        [uv, "pip", "install", "--python", str(py), "evidently==0.7.*", "pandas<3", "pyarrow"],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return (
                None,
                f"building the Evidently environment failed: {' '.join(step[:3])}: {' | '.join(tail)}",
            )
    if subprocess.run(check, capture_output=True).returncode != 0:
        return None, f"the Evidently environment at {env} was built but cannot import evidently"
    return str(py), "ok"


def run_peer(py: str, ref: pl.DataFrame, cur: pl.DataFrame, runs: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        ref_path, cur_path = Path(tmp, "reference.parquet"), Path(tmp, "current.parquet")
        out_path, script = Path(tmp, "peer.json"), Path(tmp, "peer.py")
        ref.write_parquet(ref_path)
        cur.write_parquet(cur_path)
        script.write_text(PEER_SCRIPT)
        cmd = [py, str(script), str(ref_path), str(cur_path), str(out_path), str(runs)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"Evidently script failed:\n{proc.stderr[-2000:]}")
        return json.loads(out_path.read_text())


def compare(table: pl.DataFrame, peer: dict[str, Any], cfg: MonitorConfig) -> list[dict[str, Any]]:
    rows = []
    for r in table.iter_rows(named=True):
        ev = peer["columns"].get(r["feature"])
        if ev is None:
            continue
        same_test = ev["method"].lower().startswith("wasserstein")
        ours_w = bool(r["wasserstein"] >= cfg.wasserstein_threshold)
        rows.append(
            {
                "feature": r["feature"],
                "evidently_method": ev["method"],
                "evidently_value": ev["value"],
                "evidently_drift": ev["drift"],
                "fraudops_wasserstein": r["wasserstein"],
                "fraudops_wasserstein_drift": ours_w,
                "fraudops_psi": r["psi"],
                "fraudops_drift": r["drift_detected"],
                "fraudops_reason": r["reason"],
                "same_test": same_test,
                "agree": (ours_w == ev["drift"]) if same_test else None,
                "abs_diff": abs(r["wasserstein"] - ev["value"]) if same_test else None,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="reference rows = current rows")
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3, help="fraudops runs (median reported)")
    ap.add_argument("--jobs", type=int, default=None, help="threads for drift_table (default: CPUs)")
    ap.add_argument("--peer-rows", type=int, default=1_000_000, help="rows per side given to Evidently")
    ap.add_argument("--peer-runs", type=int, default=1)
    ap.add_argument("--peer-timeout", type=float, default=3600.0, help="seconds")
    ap.add_argument("--no-peer", action="store_true", help="skip Evidently")
    ap.add_argument("--evidently-env", default=DEFAULT_ENV)
    ap.add_argument("--no-build-peer", action="store_true", help="do not create the Evidently env")
    ap.add_argument("--max-seconds", type=float, default=10.0)
    ap.add_argument("--min-ratio", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    cfg = MonitorConfig()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    ref, cur, notes = make_data(args.rows, args.features, args.seed)
    features = list(ref.columns)
    elapsed = time.perf_counter() - t0
    print(f"data: {args.rows:,} x {args.rows:,} rows x {len(features)} features in {elapsed:.1f} s")

    times, cpu, table = time_fraudops(ref, cur, features, cfg, args.runs, args.jobs)
    median = statistics.median(times)
    print(
        f"fraudops drift_table: runs {', '.join(f'{t:.2f}' for t in times)} s, median {median:.2f} s "
        f"(CPU {statistics.median(cpu):.2f} s over all threads; load average {os.getloadavg()[0]:.1f})"
    )

    # the HTML report on the same data (decision, tables, charts on <= 100 k sampled rows)
    score_rng = np.random.default_rng(args.seed + 1)
    ref_scores = score_rng.beta(0.3, 20.0, args.rows)
    cur_scores = score_rng.beta(0.3, 16.0, args.rows)
    score = stats.score_drift(ref_scores, cur_scores, cfg)
    decision = decisions.decide(table, score, None, {"average_precision": 0.7, "recall": 0.6}, cfg)
    import matplotlib.backends.backend_agg  # noqa: F401 - import once, outside the timed call

    t1 = time.perf_counter()
    page = report.html_report(decision, table, ref, cur, features, ref_scores, cur_scores, None, cfg=cfg)
    report_seconds = time.perf_counter() - t1
    print(f"html_report: {report_seconds:.2f} s, {len(page) / 1e6:.1f} MB")

    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "polars": pl.__version__,
            "load_average_before": load_before,
        },
        "rows": args.rows,
        "features": len(features),
        "columns": notes,
        "fraudops": {
            "runs": times,
            "cpu_seconds": cpu,
            "median_seconds": median,
            "jobs": args.jobs or os.cpu_count(),
        },
        "html_report_seconds": report_seconds,
        "decision": decision.model_dump(include={"retraining_required", "reasons", "drift_share"}),
        "peer": None,
    }

    ok = median <= args.max_seconds
    ratio = None
    if args.no_peer:
        print("peer: skipped (--no-peer)")
    else:
        py, why = peer_python(args.evidently_env, build=not args.no_build_peer)
        if py is None:
            print(f"peer: SKIPPED — {why}")
            result["peer"] = {"skipped": why}
        else:
            n = min(args.peer_rows, args.rows)
            pref, pcur = (ref, cur) if n == args.rows else (ref.head(n), cur.head(n))
            if n == args.rows:
                ours_times, ours_table = times, table
            else:
                ours_times, _, ours_table = time_fraudops(pref, pcur, features, cfg, args.runs, args.jobs)
            ours = statistics.median(ours_times)
            print(f"Evidently DataDriftPreset at {n:,} x {n:,} rows, {args.peer_runs} run(s) ...")
            try:
                peer = run_peer(py, pref, pcur, args.peer_runs, args.peer_timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                print(f"peer: FAILED — {e}")
                result["peer"] = {"failed": str(e)}
                ok = False
            else:
                peer_median = statistics.median(peer["run_seconds"])
                ratio = peer_median / ours
                rows = compare(ours_table, peer, cfg)
                same = [r for r in rows if r["same_test"]]
                agree = sum(bool(r["agree"]) for r in same)
                result["peer"] = {
                    **{k: v for k, v in peer.items() if k != "columns"},
                    "rows": n,
                    "median_seconds": peer_median,
                    "fraudops_runs_same_rows": ours_times,
                    "fraudops_median_same_rows": ours,
                    "ratio": ratio,
                    "verdicts": rows,
                    "verdicts_compared": len(same),
                    "verdicts_agree": agree,
                    "max_abs_wasserstein_diff": max((r["abs_diff"] for r in same), default=None),
                }
                ok = ok and ratio >= args.min_ratio
                print_markdown(args, len(features), median, n, ours, peer, peer_median, ratio, rows, notes)
    if ratio is None:
        print(f"\n| drift on {len(features)} numeric features | rows (reference x current) | median time |")
        print("| --- | --- | --- |")
        print(f"| fraudops `drift_table` | {args.rows:,} x {args.rows:,} | {median:.2f} s |")

    result["load_average_after"] = os.getloadavg()
    result["pass"] = ok
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"\nJSON: {args.out}")
    if not ok:
        print(
            f"FAIL: fraudops median {median:.2f} s (max {args.max_seconds:g})"
            + (f", ratio {ratio:.1f}x (min {args.min_ratio:g})" if ratio is not None else ""),
            file=sys.stderr,
        )
    return 0 if ok else 1


def print_markdown(
    args: argparse.Namespace,
    n_features: int,
    median: float,
    peer_rows: int,
    ours_same_rows: float,
    peer: dict[str, Any],
    peer_median: float,
    ratio: float,
    rows: list[dict[str, Any]],
    notes: dict[str, str],
) -> None:
    print()
    print(f"| drift on {n_features} numeric features | rows (reference x current) | median time | |")
    print("| --- | --- | --- | --- |")
    size = f"{args.rows:,} x {args.rows:,}"
    print(f"| fraudops `drift_table` (KS + PSI + Wasserstein) | {size} | {median:.2f} s | |")
    if peer_rows != args.rows:
        print(f"| fraudops `drift_table` | {peer_rows:,} x {peer_rows:,} | {ours_same_rows:.2f} s | |")
    print(
        f"| Evidently {peer['version']} `DataDriftPreset` | {peer_rows:,} x {peer_rows:,} | "
        f"{peer_median:.1f} s | **{ratio:.0f}x** slower |"
    )
    same = [r for r in rows if r["same_test"]]
    agree = sum(bool(r["agree"]) for r in same)
    print(
        f"\nPer-column verdicts: Evidently chose Wasserstein (normed, threshold 0.1) for {len(same)} of "
        f"{len(rows)} columns; fraudops' Wasserstein verdict agrees on {agree} of {len(same)}."
    )
    print(
        "\n| feature | change | Evidently test | Evidently value | fraudops W | Evidently drift "
        "| fraudops W drift | fraudops drift (all rules) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        flag = "" if r["agree"] is None else ("" if r["agree"] else " **differs**")
        reason = f" ({r['fraudops_reason']})" if r["fraudops_reason"] else ""
        print(
            f"| {r['feature']} | {notes.get(r['feature'], '')} | {r['evidently_method']} "
            f"| {r['evidently_value']:.4f} | {r['fraudops_wasserstein']:.4f} | {r['evidently_drift']} "
            f"| {r['fraudops_wasserstein_drift']}{flag} | {r['fraudops_drift']}{reason} |"
        )


if __name__ == "__main__":
    sys.exit(main())
