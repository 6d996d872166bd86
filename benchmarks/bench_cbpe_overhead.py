"""What the estimated performance (CBPE) adds to a monitoring run: its share of the monitor step's time.

Runs the monitor step on a demo workspace (modified: pass a copy) ``--runs`` times with the estimation
timed from inside (every call of ``monitoring.estimate.estimate``); target: <= 10 % of the step.

    uv run python benchmarks/bench_cbpe_overhead.py --workspace demo-copy [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import finish, machine
from fraudops.context import StepContext
from fraudops.monitoring import estimate
from fraudops.monitoring.step import monitor_step
from fraudops.workspace import load_settings
from fraudops.workspace.storage import Storage


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/cbpe_overhead.json"))
    args = ap.parse_args()
    settings = load_settings(args.workspace)
    storage = Storage(settings.workspace)
    spent = [0.0]
    original = estimate.estimate

    def timed(*a: Any, **kw: Any) -> dict[str, float]:
        t0 = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t0

    estimate.estimate = timed  # type: ignore[assignment]
    runs = []
    for _ in range(args.runs):
        spent[0] = 0.0
        t0 = time.perf_counter()
        result = monitor_step(StepContext(settings, storage))
        whole = time.perf_counter() - t0
        runs.append({"step_s": round(whole, 2), "estimate_s": round(spent[0], 3), "share": spent[0] / whole})
        print(f"monitor {whole:.2f} s, estimation {spent[0]:.3f} s ({spent[0] / whole:.1%})", file=sys.stderr)
    share = statistics.median(r["share"] for r in runs)
    out = {"machine": machine("numpy"), "rows_judged": result.n_rows, "runs": runs, "median_share": share}
    return finish(
        args.output, out, [f"estimation {share:.1%} of the monitor step > 10 %"] if share > 0.1 else []
    )


if __name__ == "__main__":
    sys.exit(main())
