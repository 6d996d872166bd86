"""Benchmark of the transaction simulator on the handbook's published configuration.

Runs ``simulate`` on the default configuration several times, reports the median wall time and the
statistics next to the handbook's published ones, prints a markdown table for the README and writes
everything to benchmarks/results/simulate.json. Exits non-zero if the median time is over the budget
or a statistic is out of tolerance, so CI can run it as a check.

    uv run python benchmarks/bench_simulate.py --runs 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import finish, machine
from fraudops.config import SimulateConfig
from fraudops.data.simulate import simulate, summary

HANDBOOK_SECONDS = 145.0  # the handbook's loop-based generator, on a laptop (docs/simulator.md)
BUDGET_SECONDS = 15.0
RESULTS = Path(__file__).parent / "results" / "simulate.json"


@dataclass(frozen=True)
class Check:
    """A statistic, the handbook's published value and the range that counts as a match."""

    key: str
    label: str
    published: float
    low: float
    high: float
    fmt: Callable[[float], str]

    def ok(self, value: float) -> bool:
        return self.low <= value <= self.high

    def tolerance(self) -> str:
        return f"{self.fmt(self.low)} – {self.fmt(self.high)}"


def _count(v: float) -> str:
    return f"{v:,.0f}"


def _rate(v: float) -> str:
    return f"{100 * v:.3f} %"


def _per_day(v: float) -> str:
    return f"{v:.1f}"


def _relative(key: str, label: str, published: float, rel: float, fmt: Callable[[float], str]) -> Check:
    return Check(key, label, published, published * (1 - rel), published * (1 + rel), fmt)


CHECKS = [
    Check("n_transactions", "transactions", 1_754_155, 1_700_000, 1_810_000, _count),
    Check("n_frauds", "frauds", 14_681, 14_681 * 0.9, 14_681 * 1.1, _count),
    Check("fraud_rate", "fraud rate", 14_681 / 1_754_155, 0.0078, 0.0090, _rate),
    _relative("n_scenario_1", "scenario 1 (amount > 220)", 973, 0.15, _count),
    _relative("n_scenario_2", "scenario 2 (compromised terminals)", 9_077, 0.15, _count),
    _relative("n_scenario_3", "scenario 3 (compromised customers)", 4_631, 0.15, _count),
    Check("n_customers_transacting", "customers transacting", 4_990, 4_950, 5_000, _count),
    _relative("frauds_per_day_after_ramp_up", "frauds a day (after the first 28 days)", 85, 0.15, _per_day),
    Check(
        "compromised_cards_per_day_after_ramp_up",
        "compromised cards a day (after the first 28 days)",
        80,
        70,
        90,
        _per_day,
    ),
]


def run(runs: int, seed: int) -> tuple[list[float], dict[str, Any]]:
    """Time ``runs`` simulations of the default configuration; the statistics are the last run's."""
    cfg = SimulateConfig(seed=seed)
    times = []
    stats: dict[str, Any] = {}
    for i in range(runs):
        start = time.perf_counter()
        df = simulate(cfg)
        times.append(time.perf_counter() - start)
        print(f"run {i + 1}/{runs}: {times[-1]:.2f} s, {df.height:,} rows", file=sys.stderr)
        if i == runs - 1:
            stats = summary(df)
        del df
    return times, stats


def markdown(median: float, stats: dict[str, Any]) -> str:
    """The README table: fraudops next to the handbook's published figures."""
    rows = [
        "| default configuration (5 000 customers, 10 000 terminals, 183 days) | fraudops | handbook |",
        "| --- | ---: | ---: |",
        f"| wall time | {median:.2f} s | ≈ {HANDBOOK_SECONDS:.0f} s |",
        f"| transactions / s | {stats['n_transactions'] / median:,.0f} | "
        f"≈ {1_754_155 / HANDBOOK_SECONDS:,.0f} |",
    ]
    rows += [f"| {c.label} | {c.fmt(stats[c.key])} | {c.fmt(c.published)} |" for c in CHECKS]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="simulations to time (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS, help="max median seconds")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    times, stats = run(args.runs, args.seed)
    median = statistics.median(times)
    checks = [
        {
            "statistic": c.key,
            "fraudops": stats[c.key],
            "published": c.published,
            "tolerance": [c.low, c.high],
            "ok": c.ok(stats[c.key]),
        }
        for c in CHECKS
    ]
    failures = [c["statistic"] for c in checks if not c["ok"]]
    if median > args.budget:
        failures.insert(0, f"median wall time {median:.2f} s > {args.budget:.0f} s")

    width = max(len(c.label) for c in CHECKS)
    print(f"\nmedian of {args.runs} runs: {median:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"{stats['n_transactions'] / median:,.0f} transactions/s; handbook ≈ {HANDBOOK_SECONDS:.0f} s")
    print(f"speed-up over the handbook: ≈ {HANDBOOK_SECONDS / median:.0f}x\n")
    print(f"{'statistic':<{width}}  {'fraudops':>12}  {'published':>12}  {'tolerance':>22}")
    for c, row in zip(CHECKS, checks, strict=True):
        mark = "ok" if row["ok"] else "OUT"
        print(
            f"{c.label:<{width}}  {c.fmt(stats[c.key]):>12}  {c.fmt(c.published):>12}  "
            f"{c.tolerance():>22}  {mark}"
        )
    print(f"\n{markdown(median, stats)}\n")

    max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "benchmark": "simulate",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": SimulateConfig(seed=args.seed).model_dump(mode="json"),
        "runs_seconds": times,
        "median_seconds": median,
        "budget_seconds": args.budget,
        "rows_per_second": stats["n_transactions"] / median,
        "handbook_seconds": HANDBOOK_SECONDS,
        "max_rss_mb": max_rss_mb,
        "statistics": {k: v.isoformat() if isinstance(v, dt.date) else v for k, v in stats.items()},
        "checks": checks,
        "ok": not failures,
        "machine": machine("numpy", "polars"),
    }
    return finish(args.output, result, failures)


if __name__ == "__main__":
    sys.exit(main())
