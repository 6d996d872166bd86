"""Training time on a 3-week window of the published configuration (the issue's budget: <= 60 s).

Simulates ``SimulateConfig()`` (about 1.75 M transactions) once, then times
``fraudops.modeling.train.train_models`` with the default settings (train_days = 21, the latest windows the
data allows: features over the lookback, both candidates fitted on fit | validation, refitted on the whole
window, tested) several times, and reports the median wall time, the CPU time and where the time goes. Writes
benchmarks/results/train.json and exits non-zero when the median is over the budget.

    uv run python benchmarks/bench_train.py --runs 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import finish, machine
from fraudops import features
from fraudops.config import Settings, SimulateConfig
from fraudops.data.simulate import simulate
from fraudops.modeling import splits, train

BUDGET_SECONDS = 60.0
RESULTS = Path(__file__).parent / "results" / "train.json"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed train_models runs (median reported)")
    parser.add_argument("--train-days", type=int, default=21, help="training window, days")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed")
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS, help="max median seconds")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    df = simulate(SimulateConfig(seed=args.seed))
    settings = Settings(workspace=".")
    settings.train = settings.train.model_copy(update={"train_days": args.train_days})
    load_before = load_average()

    walls, cpus, runs = [], [], []
    for i in range(args.runs):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = train.train_models(df, settings)
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
        cand = {
            n: {
                "seconds": round(c["seconds"], 2),
                **({"n_estimators": c["n_estimators"]} if "n_estimators" in c else {}),
            }
            for n, c in result.candidates.items()
        }
        runs.append({"wall_seconds": walls[-1], "cpu_seconds": cpus[-1], "candidates": cand})
        print(
            f"run {i + 1}/{args.runs}: {walls[-1]:.1f} s wall, {cpus[-1]:.1f} s CPU; "
            + ", ".join(f"{n} {c['seconds']:.1f} s" for n, c in cand.items()),
            file=sys.stderr,
            flush=True,
        )

    # where the time goes, once: the split (features over the needed history) alone
    t0 = time.perf_counter()
    parts = splits.split(df, settings)
    split_seconds = time.perf_counter() - t0

    median = statistics.median(walls)
    rows = {"fit": parts.fit.height, "valid": parts.valid.height, "test": parts.test.height}
    train_rows = rows["fit"] + rows["valid"]
    n_features = len(features.feature_names(settings.features))
    print(
        f"\ntraining on {args.train_days} days ({train_rows:,} transactions, "
        f"{parts.windows['train_start']}..{parts.windows['train_end']} excl.; test {rows['test']:,}), "
        f"{n_features} features, candidates {', '.join(settings.train.candidates)}"
    )
    print(
        f"median of {args.runs} runs: {median:.1f} s wall (runs: {', '.join(f'{w:.1f}' for w in walls)}), "
        f"{statistics.median(cpus):.1f} s CPU; split + features {split_seconds:.1f} s; "
        f"budget {args.budget:.0f} s; n_jobs {settings.train.n_jobs}; load average {load_before}"
    )
    table = [
        f"| training ({args.train_days} days, {train_rows:,} tx, both candidates) | median wall | budget |",
        "| --- | ---: | ---: |",
        f"| train_models on {os.cpu_count()} CPUs, n_jobs {settings.train.n_jobs} | {median:.1f} s | "
        f"{args.budget:.0f} s |",
    ]
    print("\n" + "\n".join(table) + "\n")

    result_json: dict[str, Any] = {
        "benchmark": "train",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "train_days": args.train_days,
        "windows": parts.windows,
        "rows": rows,
        "n_features": n_features,
        "train_config": settings.train.model_dump(mode="json"),
        "runs": runs,
        "median_seconds": median,
        "median_cpu_seconds": statistics.median(cpus),
        "split_seconds": split_seconds,
        "budget_seconds": args.budget,
        "ok": median <= args.budget,
        "machine": machine(
            "xgboost",
            "scikit-learn",
            "polars",
            load_average_before=load_before,
            load_average_after=load_average(),
            omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
            max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        ),
    }
    failures = [f"median {median:.1f} s > budget {args.budget:.0f} s"] if median > args.budget else []
    return finish(args.output, result_json, failures)


if __name__ == "__main__":
    sys.exit(main())
