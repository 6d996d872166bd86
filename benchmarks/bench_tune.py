"""``fraudops tune`` on the handbook protocol: 50 trials within 30 minutes, local engine vs Dask (issue 16).

For each engine a fresh workspace holds one simulation of the published configuration (``--seed``, not one
of bench_quality's seeds 0-4) and the handbook's windows (train 2018-07-25..31, 7-day label delay, 7-day
test); ``fraudops tune --trials N --timeout T`` runs as a real process and its wall time is measured end to
end (loading, features, every trial). The local engine trains each trial with ``train.n_jobs`` threads;
``compute.engine: dask`` runs a trial per worker (a LocalCluster of ``--workers`` one-thread processes).
One run per engine (a run is up to 30 minutes); both in the same invocation, so their ratio is comparable.

Prints a markdown table and the best parameters, writes benchmarks/results/tune.json and exits non-zero
when an engine's run did not finish ``--trials`` trials within 30 minutes.

    uv run python benchmarks/bench_tune.py --seed 8 --trials 50
    uv run python benchmarks/bench_tune.py --seed 8 --trials 6 --engines dask   # a quick look
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
from typing import Any

from common import finish, machine
from fraudops.config import SimulateConfig
from fraudops.data.simulate import simulate
from fraudops.workspace import init_workspace
from fraudops.workspace.layout import BEST_PARAMS, RAW, TUNE_JOURNAL
from fraudops.workspace.storage import Storage

RESULTS = Path(__file__).parent / "results" / "tune.json"
BUDGET_S = 1800.0
CONFIG = """\
train: {{train_start: 2018-07-25, train_days: 7, delay_days: 7, test_days: 7}}
compute: {{engine: {engine}, workers: {workers}}}
"""


def study(ws: Path) -> list[Any]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(ws / TUNE_JOURNAL)))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)


def run_engine(engine: str, workers: int, tx: Any, trials: int, timeout: float, root: Path) -> dict[str, Any]:
    ws = root / engine
    ws.mkdir()
    (ws / "fraudops.yaml").write_text(CONFIG.format(engine=engine, workers=workers))
    settings, _ = init_workspace(str(ws))
    Storage(settings.workspace).write_frame(f"{RAW}/tx.parquet", tx)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDOPS_")}
    cmd = ["fraudops", "tune", "-w", str(ws), "--trials", str(trials), "--timeout", str(timeout)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{engine}: fraudops tune failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    done = [t for t in study(ws) if t.state.name in ("COMPLETE", "PRUNED")]
    complete = [t for t in done if t.state.name == "COMPLETE"]
    best = json.loads((ws / BEST_PARAMS).read_text())
    default = next(t.value for t in complete if t.number == 0)
    finished = max(t.datetime_complete for t in done)
    first = min(t.datetime_start for t in done)
    return {
        "engine": engine,
        "workers": workers if engine == "dask" else None,
        "seconds": round(seconds, 1),
        "trials_seconds": round((finished - first).total_seconds(), 1),
        "trials_done": len(done),
        "trials_pruned": len(done) - len(complete),
        "default_value": default,
        "best_value": best["value"],
        "best_trial": best["trial"],
        "best_train": best["train"],
        "trial_seconds": sorted(
            round((t.datetime_complete - t.datetime_start).total_seconds(), 1) for t in done
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=8, help="simulator seed (bench_quality uses 0-4)")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=BUDGET_S, help="tune --timeout, seconds")
    parser.add_argument("--engines", default="dask,local", help="comma-separated: local, dask")
    parser.add_argument("--workers", type=int, default=2, help="Dask LocalCluster workers")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or set(engines) - {"local", "dask"}:
        parser.error("--engines takes local and/or dask")

    tx = simulate(SimulateConfig(seed=args.seed))
    print(f"seed {args.seed}: {tx.height:,} transactions", file=sys.stderr, flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        for engine in engines:
            run = run_engine(engine, args.workers, tx, args.trials, args.timeout, Path(tmp))
            runs.append(run)
            print(
                json.dumps({k: v for k, v in run.items() if k != "trial_seconds"}),
                file=sys.stderr,
                flush=True,
            )

    print(
        "\n| engine | wall time (load, features, trials) | trials done (pruned) | trials only | "
        "validation AP: configured → best |"
    )
    print("| --- | ---: | ---: | ---: | --- |")
    for r in runs:
        who = f"Dask, {r['workers']} workers" if r["engine"] == "dask" else "local"
        print(
            f"| {who} | {r['seconds'] / 60:.1f} min | {r['trials_done']} ({r['trials_pruned']}) | "
            f"{r['trials_seconds'] / 60:.1f} min | {r['default_value']:.4f} → {r['best_value']:.4f} "
            f"(trial {r['best_trial']}) |"
        )
    by = {r["engine"]: r for r in runs}
    if {"local", "dask"} <= set(by):
        print(f"\nDask / local wall time: {by['dask']['seconds'] / by['local']['seconds']:.2f}")
    failures = [
        f"{r['engine']}: {r['trials_done']} trials in {r['seconds'] / 60:.1f} min"
        for r in runs
        if r["trials_done"] < args.trials or r["seconds"] > BUDGET_S
    ]
    result = {"machine": machine("optuna", "xgboost", "dask"), "seed": args.seed, "runs": runs}
    return finish(args.output, result, failures)


if __name__ == "__main__":
    sys.exit(main())
