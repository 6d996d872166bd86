"""Validate the estimated performance (CBPE) on the simulator: is the realized value in the band?

One simulation, a champion trained and calibrated on its first weeks as `fraudops` does (train.train_models),
then every later day is a monitored window: the AP, precision and recall estimated from the calibrated
scores (with the configured band) against the realized values from the day's labels. Run twice: without
drift (target: realized AP within the band in >= 90 % of the days) and with the simulator's drift from
the first monitored day (amounts x1.5 and night bursts of small frauds, a fraud pattern the champion never
saw: concept drift, where the estimate is expected to fail).

    uv run python benchmarks/validate_cbpe.py [--customers 5000] [--days 28]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from common import finish, machine
from fraudops import features
from fraudops.config import Settings, SimulateConfig
from fraudops.data.schema import LABEL, TX_TIME
from fraudops.data.simulate import simulate
from fraudops.demo import demo_xgboost
from fraudops.modeling import train
from fraudops.monitoring import estimate

START = dt.date(2018, 4, 1)
TRAIN_DAYS = 70  # the demo's history


def run(customers: int, days: int, drift: bool, settings: Settings, raw: bool = False) -> dict[str, Any]:
    first_monitored = START + dt.timedelta(days=TRAIN_DAYS)
    cfg = SimulateConfig(
        n_customers=customers,
        n_terminals=2 * customers,
        n_days=TRAIN_DAYS + days,
        seed=0,
        drift_start=first_monitored if drift else None,
    )
    df = simulate(cfg)
    history = df.filter(pl.col(TX_TIME).dt.date() < first_monitored)
    trained = train.train_models(history, settings)
    featured = features.add_features(df, settings.features).filter(
        pl.col(TX_TIME).dt.date() >= first_monitored
    )
    model = trained.model
    if raw:  # the diagnostic: the estimate from the uncalibrated scores
        model.calibration = None
    p = model.predict_proba(featured)
    y = featured[LABEL].cast(pl.Float64).to_numpy()
    t0 = time.perf_counter()
    rows = estimate.daily(
        featured[TX_TIME].dt.date().cast(pl.String).to_list(),
        p,
        y,
        model.threshold,
        samples=settings.monitor.estimate_samples,
        band=settings.monitor.estimate_band,
    )
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {
        "drift": drift,
        "calibration": model.calibration["method"] if model.calibration else "none (raw scores)",
        "test_ece": trained.calibration["test_ece"],
        "test_ece_uncalibrated": trained.calibration["test_ece_uncalibrated"],
        "windows": len(rows),
        "rows_per_window": float(np.mean([r["n_rows"] for r in rows])),
        "estimate_seconds": round(seconds, 2),
    }
    for metric in estimate.METRICS:
        inside, n = estimate.coverage(rows, metric)
        out[f"{metric}_within_band"] = f"{inside}/{n}"
        out[f"{metric}_coverage"] = inside / n if n else None
        est = np.array([r[f"est_{metric}"] for r in rows])
        real = np.array([r[f"realized_{metric}"] for r in rows])
        ok = np.isfinite(est) & np.isfinite(real)
        out[f"{metric}_mean_error"] = float(np.mean(est[ok] - real[ok])) if ok.any() else None
    out["days"] = [
        {
            k: r[k]
            for k in (
                "day",
                "est_average_precision",
                "est_average_precision_low",
                "est_average_precision_high",
                "realized_average_precision",
            )
        }
        for r in rows
    ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--days", type=int, default=28, help="monitored days after the 70 training days")
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/cbpe.json"))
    ap.add_argument("--raw", action="store_true", help="diagnostic: estimate from the uncalibrated scores")
    ap.add_argument("--no-drift-only", action="store_true")
    args = ap.parse_args()
    settings = Settings()
    settings.train.xgboost = demo_xgboost(150)
    settings.train.n_jobs = 2
    cases = (False,) if args.no_drift_only else (False, True)
    results = [run(args.customers, args.days, drift, settings, args.raw) for drift in cases]
    for r in results:
        print(
            f"drift={r['drift']}: AP within band {r['average_precision_within_band']}, "
            f"precision {r['precision_within_band']}, recall {r['recall_within_band']}; "
            f"mean error AP {r['average_precision_mean_error']:+.4f} ({r['calibration']}, test ECE "
            f"{r['test_ece']:.4f} vs {r['test_ece_uncalibrated']:.4f} uncalibrated)",
            file=sys.stderr,
        )
    failures = []
    cov = results[0]["average_precision_coverage"]
    if cov is None or cov < 0.9:
        failures.append(f"without drift, realized AP within band in {cov} of the days (target >= 0.9)")
    return finish(args.output, {"machine": machine("xgboost", "numpy"), "results": results}, failures)


if __name__ == "__main__":
    sys.exit(main())
