"""Data larger than one process's memory on the Dask engine: features, training, batch scoring and drift,
each worker under a memory limit, the command's process holding only what it reads of the feature tables.

    uv run python benchmarks/bench_dask_large.py --customers 200000 --days 365 --workers 2 \\
        --memory-limit 4GB [--workspace DIR] [--score-days 7] [--reuse-tables] [--trees 100] \\
        [--train-in-memory-rows N]

Data: ``fraudops data simulate --customers N --days D`` (a Parquet file a day, written in bounded memory;
200 000 x 365 is about 70 M transactions), run once into ``--workspace`` (reused when its data/raw/ has
files); the last ``--score-days`` day files are moved to prod_inputs/ without their labels. Then, on a
``LocalCluster`` of ``--workers`` processes (one thread, ``--memory-limit`` each), as the pipeline's steps
do it with ``compute.engine: dask``:

- **features**: the labelled history's feature table built by the workers (:func:`fraudops.features.
  table.build`: pieces read on the workers, shuffled by customer then terminal, parts written there);
- **training**: :func:`fraudops.modeling.train.train_models` on that table, as the train step runs it
  (both candidates; XGBoost with the configured parameters but at most ``--trees`` trees): the workers
  read the windows, the fit window stays on them above ``compute.train_in_memory_rows`` (XGBoost trains
  there with ``xgboost.dask``; logistic regression here on a sample);
- **batch**: the trained model; the history table built by the workers; the prod_inputs/ files' valid
  rows read by the workers (each file's view of the others); every file scored by a task that reads only
  its look-back from the table;
- **drift**: the validation window (read here) as reference, the labelled table's last 7 days as
  current, one task per feature column (:func:`fraudops.monitoring.stats.drift_table`).

Memory, per phase: each worker's peak RSS (its ``VmHWM``, reset before the phase through
``/proc/self/clear_refs``; and its nanny's figure sampled every 0.5 s through the scheduler, which also
sees a worker the nanny restarted for exceeding its limit, counted as ``worker_restarts``; workers that
fraudops restarted while idle after a table build, having kept too much memory, are counted apart as
``workers_replaced``), and this process's ``VmHWM``. The first failing phase stops the run (its error
and the figures so far are reported; exit code 1, also when a worker went over its limit). The local
engine's figure is an **extrapolation**: its features step (``load_labelled`` + ``add_features``, in a
fresh process) is measured on the first ``--probe-days`` (two sizes) and its peak extrapolated linearly
in rows to the whole data set. Results: stdout and ``benchmarks/results/dask_large.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_dask import peak_rss_mb
from common import finish, machine

RESULTS = Path(__file__).resolve().parent / "results" / "dask_large.json"

PROBE = """
import sys, polars as pl
from fraudops.data.loading import load_labelled
from fraudops.features.engine import add_features
from fraudops.workspace import load_settings
from fraudops.workspace.storage import Storage
settings = load_settings(sys.argv[1])
df = load_labelled(Storage(settings.workspace), settings)
featured = add_features(df, settings.features)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(df.height, int(hwm) / 1024)
"""


def simulate(ws: Path, customers: int, days: int, score_days: int) -> None:
    """The data set in ``ws`` (unless there), the last days moved to prod_inputs/ without labels."""
    import polars as pl

    from fraudops.data.schema import LABEL, SCENARIO
    from fraudops.workspace import init_workspace
    from fraudops.workspace.layout import PROD_INPUTS, RAW

    raw = ws / RAW
    if raw.is_dir() and any(raw.iterdir()):
        print(f"reusing {raw}", flush=True)
        return
    ws.mkdir(parents=True, exist_ok=True)
    init_workspace(str(ws))
    cmd = [sys.executable, "-m", "fraudops.cli", "data", "simulate", "--workspace", str(ws)]
    cmd += ["--customers", str(customers), "--days", str(days)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    print(f"simulated in {time.perf_counter() - started:.0f} s", flush=True)
    for path in sorted(raw.glob("*.parquet"))[-score_days:]:
        pl.read_parquet(path).drop(LABEL, SCENARIO).write_parquet(ws / PROD_INPUTS / path.name)
        path.unlink()


def rss_mb() -> float:
    """This process's resident memory now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    """Start this process's VmHWM afresh from its current RSS (Linux >= 4.0), so a phase's peak is its own."""
    Path("/proc/self/clear_refs").write_text("5")


class OverLimit(logging.Handler):
    """Counts the nannies' restarts of workers over their memory limit (a LocalCluster's nannies run in
    this process and log each one)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "exceeded" in record.getMessage()


class Phases:
    """Runs the phases one by one; for each: seconds, every worker's RSS as the phase starts (what the
    phases before left it holding), every worker's peak RSS (its VmHWM, reset before the
    phase; and its nanny's figure sampled every 0.5 s through the scheduler, which survives a restart),
    workers restarted (over their limit; and all the workers replaced by new processes), this process's
    peak. The first failing phase stops the run."""

    def __init__(self, client: Any) -> None:
        self.client, self.results = client, {}
        self._over = OverLimit()
        logging.getLogger("distributed.nanny.memory").addHandler(self._over)
        self._nanny: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            for info in self.client.scheduler_info()["workers"].values():
                name = str(info["name"])
                self._nanny[name] = max(self._nanny.get(name, 0.0), info["metrics"]["memory"] / 2**20)

    def __enter__(self) -> Phases:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def run(self, name: str, fn: Any) -> Any:
        pids = set(self.client.run(os.getpid).values())
        over = self._over.count
        held = sorted(round(v) for v in self.client.run(rss_mb).values())
        self.client.run(reset_peak)
        reset_peak()
        self._nanny.clear()
        started = time.perf_counter()
        error = None
        try:
            value = fn()
        except Exception as e:  # reported with the figures of the phases before
            value, error = None, f"{type(e).__name__}: {e}"
        result: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 1)}
        result["worker_rss_before_mb"] = held
        result["worker_vmhwm_mb"] = sorted(round(v) for v in self.client.run(peak_rss_mb).values())
        result["worker_nanny_peak_mb"] = sorted(round(v) for v in self._nanny.values())
        result["worker_restarts"] = self._over.count - over
        result["workers_replaced"] = len(pids - set(self.client.run(os.getpid).values()))
        result["driver_vmhwm_mb"] = round(peak_rss_mb())
        if error:
            result["error"] = error
        self.results[name] = result
        print(f"{name}: {result}", flush=True)
        if error:
            raise PhaseFailed(name)
        return value


class PhaseFailed(Exception):
    pass


def local_probe(ws: Path, days: list[int]) -> list[tuple[int, float]]:
    """(rows, peak MB) of the local engine's features step on the first ``days`` day files."""
    from fraudops.workspace import init_workspace
    from fraudops.workspace.layout import RAW

    files = sorted((ws / RAW).glob("*.parquet"))
    out = []
    for n in days:
        with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
            init_workspace(tmp)
            for f in files[:n]:
                try:
                    os.link(f, Path(tmp) / RAW / f.name)
                except OSError:  # another filesystem
                    shutil.copy(f, Path(tmp) / RAW / f.name)
            proc = subprocess.run([sys.executable, "-c", PROBE, tmp], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"local engine probe failed: {proc.stderr}")
            rows, mb = proc.stdout.split()
            out.append((int(rows), float(mb)))
            print(f"local engine, first {n} days: {int(rows):,} rows, peak {float(mb):,.0f} MB", flush=True)
    return out


def timed(what: str, out: dict[str, Any], fn: Any) -> Any:
    started = time.perf_counter()
    value = fn()
    out[f"{what}_s"] = round(time.perf_counter() - started, 1)
    print(f"{what}: {out[f'{what}_s']} s", flush=True)
    return value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--score-days", type=int, default=7, help="last days moved to prod_inputs/")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--partition-rows", type=int, default=2_000_000)
    parser.add_argument("--probe-days", type=int, nargs=2, default=[30, 60])
    parser.add_argument(
        "--train-in-memory-rows",
        type=int,
        help="compute.train_in_memory_rows (default: the workspace's): the sample held by this process",
    )
    parser.add_argument(
        "--trees", type=int, default=100, help="XGBoost's most trees (the configured ones: 1000, hours here)"
    )
    parser.add_argument("--workspace", help="kept (and reused) here; default: a temporary folder")
    parser.add_argument(
        "--reuse-tables",
        action="store_true",
        help="keep the workspace's feature tables when their inputs are unchanged (the table phases then "
        "measure reading them, not building them)",
    )
    args = parser.parse_args()

    from fraudops import process

    process.configure()
    import pyarrow.parquet as pq
    from dask.utils import parse_bytes

    from fraudops import compute
    from fraudops.batch.step import peer_history, score_partition
    from fraudops.features import feature_names, table
    from fraudops.modeling.train import FITTED_ROWS, TRAINED_ON, train_models
    from fraudops.monitoring.stats import drift_table
    from fraudops.workspace import load_settings
    from fraudops.workspace.layout import FEATURE_TABLES, PROD_INPUTS
    from fraudops.workspace.storage import Storage

    tmp = None if args.workspace else tempfile.TemporaryDirectory(prefix="bench-dask-large-")
    ws = Path(args.workspace or tmp.name)  # type: ignore[union-attr]
    simulate(ws, args.customers, args.days, args.score_days)
    settings = load_settings(str(ws))
    settings.compute.partition_rows = args.partition_rows
    if args.train_in_memory_rows is not None:
        settings.compute.train_in_memory_rows = args.train_in_memory_rows
    storage = Storage(settings.workspace)
    if not args.reuse_tables:
        storage.delete(FEATURE_TABLES, recursive=True)  # measured from scratch (else reused: same inputs)
    names = feature_names(settings.features)
    out: dict[str, Any] = {"customers": args.customers, "days": args.days, "workers": args.workers}
    out["train_in_memory_rows"] = settings.compute.train_in_memory_rows
    out["tables_reused"] = args.reuse_tables
    out["memory_limit_mb"] = parse_bytes(args.memory_limit) / 2**20
    out["load_before"] = os.getloadavg()
    with (
        compute.local_cluster(args.workers, args.memory_limit) as cluster,
        compute.local_client(cluster) as client,
        compute.attach(client, partition_rows=args.partition_rows) as eng,
        Phases(client) as phases,
    ):
        try:
            labelled = phases.run("features_table", lambda: table.labelled(storage, settings))
            assert isinstance(labelled, table.FeatureTable)
            out["transactions"] = labelled.rows
            out["parts"] = len(labelled.manifest.parts)
            xgb = {**settings.train.xgboost, "n_estimators": args.trees, "early_stopping_rounds": 10}
            settings.train = settings.train.model_copy(update={"xgboost": xgb})
            trained = phases.run("training", lambda: train_models(labelled, settings))
            model = trained.model
            out["training"] = {
                "rows": trained.data["rows"],
                "candidates": {
                    k: {f: v[f] for f in (TRAINED_ON, FITTED_ROWS, "n_estimators", "seconds") if f in v}
                    | {"test_average_precision": v["test"]["average_precision"]}
                    for k, v in trained.candidates.items()
                },
                "chosen": model.kind,
            }

            history = phases.run("history_table", lambda: table.history(storage, settings))
            files = storage.ls(PROD_INPUTS)
            out["scored_rows"] = sum(pq.ParquetFile(storage.path(f)).metadata.num_rows for f in files)

            def batch() -> None:
                peers = peer_history(files, storage, model, settings, eng)
                done = eng.map(
                    score_partition,
                    files,
                    storage,
                    shared={
                        "model": model.with_threads(1),
                        "history": history,
                        "peers": peers,
                        "explainer": None,
                    },
                    settings=settings,
                    version=1,
                    scored_at=dt.datetime.now(dt.UTC),
                    progress=None,
                )
                errors = [error for _, error in done if error is not None]
                if errors:
                    raise RuntimeError("; ".join(errors))

            phases.run("batch", batch)
            last = labelled.days[1]
            current = labelled.window(last - dt.timedelta(days=6), last + dt.timedelta(days=1))
            w = {k: dt.date.fromisoformat(v) for k, v in trained.windows.items()}
            valid = labelled.window(w["valid_start"], w["train_end"])
            drift = phases.run("drift", lambda: drift_table(valid, current, names, settings.monitor))
            out["drift_rows"] = {"reference": valid.height, "current": current.height}
            out["drifted_features"] = int(drift["drift_detected"].sum())
        except PhaseFailed as e:
            out["failed_phase"] = str(e)
    out["phases"] = phases.results
    out["load_after"] = os.getloadavg()

    probe = local_probe(ws, args.probe_days)
    (r1, m1), (r2, m2) = probe
    rows = out.get("transactions") or r2
    slope = (m2 - m1) / (r2 - r1)
    out["local_engine"] = {
        "measured": [{"rows": r, "peak_mb": round(m)} for r, m in probe],
        "mb_per_million_rows": round(slope * 1e6),
        "extrapolated_peak_mb": round(m2 + slope * (rows - r2)),
        "note": "extrapolation: linear in rows from the two measured sizes, not a measurement",
    }
    limit = out["memory_limit_mb"]
    failures = [f"phase {out['failed_phase']} failed"] if "failed_phase" in out else []
    for name, r in out["phases"].items():
        worst = max([*r["worker_vmhwm_mb"], *r["worker_nanny_peak_mb"]], default=0)
        if worst > limit or r["worker_restarts"]:
            failures.append(
                f"{name}: worker peak {worst} MB (limit {limit:.0f}), {r['worker_restarts']} restarts"
            )
    print(json.dumps(out, indent=2, default=str))
    code = finish(RESULTS, {**out, "machine": machine("polars", "dask", "distributed")}, failures)
    if tmp is not None:
        tmp.cleanup()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
