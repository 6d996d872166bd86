"""Peak memory of ``fraudops data simulate`` as the number of days grows: bounded by a day's rows, not all.

Runs the real command (``python -m fraudops.cli data simulate``) in a fresh process per configuration,
writing one Parquet file per day into a new workspace, and reads the process's peak resident set size
from ``os.wait4`` (ru_maxrss of that process alone). The same customers over ``--days`` (e.g. 60 and 120)
should peak at about the same RSS: the generator keeps the last 14 days (the window of a compromised
card) and the day being written, never the whole simulation. Exits non-zero if the longest run's peak
exceeds the shortest one's by more than ``--max-growth``.

What does grow with the population is the profiles: each customer's terminals within the radius (about
78 per customer for 10 000 terminals on the 100 x 100 square, proportional to ``--terminals``).

    uv run python benchmarks/bench_simulate_memory.py --customers 20000 --days 60 120 240 --runs 3
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

from common import finish, machine
from fraudops.workspace import init_workspace

RESULTS = Path(__file__).parent / "results" / "simulate_memory.json"


def peak_rss(customers: int, terminals: int, days: int) -> tuple[float, float, int]:
    """(peak RSS in MB, wall seconds, files written) of one ``fraudops data simulate`` process."""
    with tempfile.TemporaryDirectory(prefix="fraudops-simmem-") as tmp:
        ws = Path(tmp) / "ws"
        ws.mkdir()
        init_workspace(str(ws))
        cmd = [sys.executable, "-m", "fraudops.cli", "data", "simulate", "--workspace", str(ws)]
        cmd += ["--customers", str(customers), "--terminals", str(terminals), "--days", str(days)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
        files = len(list((ws / "data" / "raw").glob("*.parquet")))
        return usage.ru_maxrss / 1024, seconds, files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument(
        "--terminals",
        type=int,
        default=10_000,
        help="the published 10 000 (more per customer: bigger profiles)",
    )
    parser.add_argument("--days", type=int, nargs="+", default=[60, 120])
    parser.add_argument("--runs", type=int, default=3, help="processes per configuration (median reported)")
    parser.add_argument("--max-growth", type=float, default=1.25, help="longest / shortest peak RSS allowed")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    terminals = args.terminals
    rows: list[dict[str, Any]] = []
    for days in args.days:
        runs = [peak_rss(args.customers, terminals, days) for _ in range(args.runs)]
        row = {
            "days": days,
            "peak_rss_mb": statistics.median(r[0] for r in runs),
            "seconds": statistics.median(r[1] for r in runs),
            "files": runs[0][2],
            "runs": [{"peak_rss_mb": r[0], "seconds": r[1]} for r in runs],
        }
        rows.append(row)
        print(f"{days} days: peak RSS {row['peak_rss_mb']:.0f} MB, {row['seconds']:.1f} s", file=sys.stderr)
    print(f"| {args.customers:,} customers, {terminals:,} terminals | peak RSS (median) | wall time |")
    print("| --- | ---: | ---: |")
    for row in rows:
        print(f"| {row['days']} days | {row['peak_rss_mb']:.0f} MB | {row['seconds']:.1f} s |")
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    failures = [] if growth <= args.max_growth else [f"peak RSS grew {growth:.2f}x > {args.max_growth}x"]
    result = {
        "machine": machine("numpy", "polars", load=os.getloadavg()),
        "customers": args.customers,
        "terminals": terminals,
        "rows": rows,
        "growth": growth,
    }
    return finish(args.output, result, failures)


if __name__ == "__main__":
    sys.exit(main())
