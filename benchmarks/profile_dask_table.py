"""Where a feature table build's time goes on the Dask engine: seconds of task time by task name.

    uv run python benchmarks/profile_dask_table.py [--customers 28000] [--days 183] [--workers 2]
        [--runs 3] [--memory-limit 4GB]

Data: the transactions of ``bench_dask.py`` (``--customers`` x ``--days``) as a Parquet file a day in a
workspace's data/raw/. Each run deletes the workspace's feature tables and builds the labelled one
(:func:`fraudops.features.table.labelled`) on a ``LocalCluster`` of ``--workers`` processes (one thread
each, ``--memory-limit`` each), with ``bench_dask.py``'s partition size. Printed per run: the build's wall
time, the CPU seconds of this process and of the workers together, and from Dask's task stream the
seconds of each task name computing and fetching its inputs from another worker (``:transfer``). A profile for
finding the next thing to speed up, not a benchmark: the throughput figures are ``bench_dask.py``'s.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

from bench_dask import Workers, files_setup, make_data
from common import cpu_seconds


def _task_seconds(stream: list[dict]) -> dict[str, float]:
    """Seconds by task name (the part of a key before fraudops' unique suffix) and action."""
    seconds: dict[str, float] = collections.defaultdict(float)
    for task in stream:
        name = str(task["key"]).split("-fraudops-")[0]
        for span in task["startstops"]:
            action = "" if span["action"] == "compute" else f":{span['action']}"
            seconds[name + action] += span["stop"] - span["start"]
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=28000)
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-limit", default="4GB")
    args = parser.parse_args()

    from fraudops import process

    process.configure()
    from distributed import get_task_stream

    from fraudops import compute
    from fraudops.features import table
    from fraudops.workspace.layout import FEATURE_TABLES

    tx = make_data(args.customers, args.days)
    n = tx.height
    with tempfile.TemporaryDirectory(prefix="profile-dask-table-") as tmp:
        settings, storage = files_setup(tx, Path(tmp))
        del tx
        partition_rows = max(50_000, -(-n // (4 * args.workers)))  # as bench_dask.py
        with (
            compute.local_cluster(args.workers, args.memory_limit) as cluster,
            compute.local_client(cluster) as client,
            compute.attach(client, partition_rows=partition_rows) as eng,
        ):
            watch = Workers(eng)  # counts a worker restarted after a build (it kept too much memory)
            for run in range(1, args.runs + 1):
                storage.delete(FEATURE_TABLES, recursive=True)
                here, there = cpu_seconds(), watch.cpu()
                with get_task_stream(client=client) as stream:
                    start = time.perf_counter()
                    table.labelled(storage, settings)
                    wall = time.perf_counter() - start
                print(
                    f"run {run}: {n:,} rows, {wall:.2f} s; CPU s: this process "
                    f"{cpu_seconds() - here:.1f}, the workers together {watch.cpu() - there:.1f}"
                )
                for name, seconds in _task_seconds(stream.data).items():
                    print(f"    {name:32s} {seconds:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
