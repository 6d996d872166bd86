"""Benchmark the Dask engine against the local one: features and batch scoring, 1 and 2 workers.

    uv run python benchmarks/bench_dask.py [--customers 5000] [--days 183] [--files 8] [--runs 3]
        [--memory-limit 2GB] [--pin]

Data: ``fraudops.data.simulate`` (``--customers`` x ``--days``; the defaults are the handbook's 1.75 M
transactions). Features: ``fraudops.features.add_features`` on every transaction, in this process (local
engine) and on a ``LocalCluster`` of 1 and of 2 worker processes (one thread each, ``--memory-limit``
each; cluster start-up and a warm-up run not timed). Features from files, what the pipeline's steps do:
the transactions as a Parquet file a day in a workspace's data/raw/; the local engine loads and validates
them and computes the features in this process (``load_labelled`` + ``add_features``), the Dask engine
builds the labelled feature table (:func:`fraudops.features.table.labelled`: the workers read, validate,
shuffle, compute and write it as Parquet; deleted before each run). Batch: the featured rows written as
``--files`` Parquet files of a features-kind workspace, scored by the batch step's per-file function
with a small XGBoost model, in this process and as one task per file on the clusters. Each figure is the
median of ``--runs``; throughput = transactions / second; peak memory per worker = the worker
process's ``VmHWM`` after the runs (compared with its limit); cores used = CPU seconds per wall second
over the runs, of this process (the command's, with the LocalCluster's scheduler) and of the workers
(one worker with one task thread may use more than a core: its tasks' I/O threads, Dask's comms).
The ceiling ("2 x 1 worker"): what two workers could reach here with no cost of working together --
two processes, each with its own 1-worker LocalCluster and half the data (the customers of one parity:
their transactions in memory and as a workspace's day files; every other batch file), run the same
three measurements at once, each run starting together (a barrier); a run's time is the later of the
two. ``--pin``: each worker process (every thread of it; a restarted worker is bound again) bound
to a core of its own, as a worker given one CPU on a cluster (a Kubernetes pod with ``cpu: 1``);
one worker can then use one core, not the second one's idle time; this process and the scheduler are not
bound. Results: a markdown table on stdout and ``benchmarks/results/dask.json`` (with the machine load before
and after).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from common import cpu_seconds

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "dask.json"


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (``ru_maxrss`` would report the parent's RSS at the
    fork for a spawned worker, since Linux keeps it across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Workers:
    """The workers' CPU seconds and peak memory, counting the processes fraudops restarts after a table
    build (:meth:`fraudops.compute.Engine.release_memory`, a worker keeping too much): both are read just
    before it releases memory. With ``cores``, worker i is bound to ``cores[i]`` (:func:`pin`), again
    after each release."""

    def __init__(self, eng: Any, cores: list[int] | None = None) -> None:
        self.client = eng.client
        self.ended_cpu = 0.0  # CPU seconds of worker processes that were restarted
        self.peaks: dict[str, float] = {}  # by worker address (a restarted worker gets a new one)
        release = eng.release_memory

        def watched() -> None:
            last = self.client.run(cpu_seconds)
            self._peaks()
            release()
            alive = set(self.client.scheduler_info()["workers"])
            self.ended_cpu += sum(v for a, v in last.items() if a not in alive)
            if cores:  # a restarted worker is a new process, started by the nanny in this one
                pin(self.client, cores)

        eng.release_memory = watched
        if cores:
            pin(self.client, cores)

    def _peaks(self) -> None:
        for a, v in self.client.run(peak_rss_mb).items():
            self.peaks[a] = max(v, self.peaks.get(a, 0.0))

    def cpu(self) -> float:
        return sum(self.client.run(cpu_seconds).values()) + self.ended_cpu

    def peak_mb(self, workers: int) -> list[int]:
        """The ``workers`` highest peaks of the worker processes there were."""
        self._peaks()
        return sorted(round(v) for v in sorted(self.peaks.values())[-workers:])


def pin(client: Any, cores: list[int]) -> None:
    """Bind worker process i to ``cores[i]``, every thread of it (threads it starts later inherit it)."""
    pids = client.run(os.getpid)
    for core, address in zip(cores, sorted(pids), strict=True):
        for tid in os.listdir(f"/proc/{pids[address]}/task"):
            os.sched_setaffinity(int(tid), {core})


def median_seconds(
    fn: Callable[[], Any], runs: int, workers: Workers | None = None
) -> tuple[float, dict[str, float]]:
    """The median wall time of ``runs`` runs, and the cores used over them: CPU seconds per wall second
    of this process (with a LocalCluster's scheduler) and of the workers together."""
    times, here, there = [], 0.0, 0.0
    for _ in range(runs):
        before = workers.cpu() if workers is not None else 0.0
        own, t0 = cpu_seconds(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        here += cpu_seconds() - own
        there += workers.cpu() - before if workers is not None else 0.0
    wall = sum(times)
    return statistics.median(times), {"process": round(here / wall, 2), "workers": round(there / wall, 2)}


def make_data(customers: int, days: int) -> pl.DataFrame:
    from fraudops.config import SimulateConfig
    from fraudops.data.simulate import simulate

    return simulate(SimulateConfig(n_customers=customers, n_terminals=2 * customers, n_days=days))


def batch_setup(featured: pl.DataFrame, files: int, root: Path) -> tuple[Any, Any, Any, list[str]]:
    """A features-kind workspace with the featured rows as Parquet files in prod_inputs/, and a model."""
    from fraudops.config import Settings
    from fraudops.features import feature_names
    from fraudops.modeling.train import fit_xgboost
    from fraudops.workspace.layout import PROD_INPUTS
    from fraudops.workspace.storage import Storage

    names = feature_names()
    settings = Settings(
        workspace=str(root),
        data={
            "kind": "features",
            "feature_columns": names,
            "columns": {"timestamp": None, "amount": None, "transaction_id": "TRANSACTION_ID"},
        },
    )
    storage = Storage(str(root))
    table = featured.select("TRANSACTION_ID", *names, pl.col("TX_FRAUD").alias("Class"))
    sample = table.sample(min(table.height, 200_000), seed=0)
    cfg = settings.train.model_copy(
        update={"xgboost": {**settings.train.xgboost, "n_estimators": 100, "early_stopping_rounds": None}}
    )
    x = sample.select(names).to_numpy().astype(np.float32)
    model = fit_xgboost(x, sample["Class"].to_numpy(), names, cfg)
    size = -(-table.height // files)
    rels = []
    for i in range(files):
        rel = f"{PROD_INPUTS}/part-{i:03d}.parquet"
        storage.write_frame(rel, table.slice(i * size, size).drop("Class"))
        rels.append(rel)
    return settings, storage, model, rels


def files_setup(tx: pl.DataFrame, root: Path) -> tuple[Any, Any]:
    """A transactions workspace with ``tx`` as a Parquet file a day in data/raw/."""
    from fraudops.data.schema import TX_TIME
    from fraudops.workspace import init_workspace
    from fraudops.workspace.layout import RAW
    from fraudops.workspace.storage import Storage

    settings, _ = init_workspace(str(root))
    storage = Storage(str(root))
    for (day,), rows in tx.group_by(pl.col(TX_TIME).dt.date(), maintain_order=True):
        storage.write_frame(f"{RAW}/{day}.parquet", rows)
    return settings, storage


def files_features(settings: Any, storage: Any) -> None:
    """The pipeline's features on the session's engine: the feature table built by the workers (Dask),
    else the rows loaded and featured here."""
    from fraudops import compute
    from fraudops.data.loading import load_labelled
    from fraudops.features import add_features, table
    from fraudops.workspace.layout import FEATURE_TABLES

    if compute.current() is None:
        add_features(load_labelled(storage, settings), settings.features)
        return
    storage.delete(FEATURE_TABLES, recursive=True)
    table.labelled(storage, settings)


def dist_batch(eng: Any, model: Any, rels: list[str], storage: Any, settings: Any, scored_at: Any) -> None:
    """The batch step's fan-out: the model and its explainer once per worker, one task per file."""
    from fraudops.batch.step import score_partition
    from fraudops.modeling.explain import Explainer

    shared = {"model": model, "history": None, "explainer": Explainer(model)}
    done = eng.map(
        score_partition,
        rels,
        storage,
        shared=shared,
        settings=settings,
        version=1,
        scored_at=scored_at,
        progress=None,
    )
    assert all(error is None for _, error in done), done


def solo(job: dict[str, Any], barrier: Any, results: Any) -> None:
    """One half of the ceiling, in its own process: a 1-worker LocalCluster on its half of the data,
    each timed run started at the barrier together with the other half's."""
    from fraudops import compute, process
    from fraudops.features import add_features

    process.configure()
    tx = pl.read_parquet(job["tx"])
    try:
        with (
            compute.local_cluster(1, job["memory_limit"]) as cluster,
            compute.local_client(cluster) as client,
            compute.attach(client, partition_rows=job["partition_rows"]) as eng,
        ):
            watch = Workers(eng, job["cores"])
            batch = (eng, job["model"], job["rels"], job["storage"], job["settings"], job["scored_at"])
            add_features(tx.head(50_000))  # warm-up, as for the clusters of main()
            dist_batch(*batch)
            measured = {
                "features": lambda: add_features(tx),
                "files": lambda: files_features(job["ws_settings"], job["ws_storage"]),
                "batch": lambda: dist_batch(*batch),
            }
            times: dict[str, list[float]] = {}
            cpu: dict[str, dict[str, float]] = {}
            for what, fn in measured.items():
                times[what], own, theirs = [], cpu_seconds(), watch.cpu()
                for _ in range(job["runs"]):
                    barrier.wait()
                    t0 = time.perf_counter()
                    fn()
                    times[what].append(time.perf_counter() - t0)
                cpu[what] = {"process": cpu_seconds() - own, "workers": watch.cpu() - theirs}
            results.put({"times": times, "cpu": cpu, "peaks": watch.peak_mb(1)})
    except BaseException:
        barrier.abort()  # the other half stops waiting
        raise


def ceiling(
    tx: pl.DataFrame,
    batch_job: tuple[Any, Any, Any, list[str]],
    root: Path,
    args: argparse.Namespace,
    cores: list[int] | None,
) -> dict[str, Any]:
    """Two independent 1-worker runs on halves of the data at once (:func:`solo`): the medians of the
    later half's time per run, and the cores both used."""
    import multiprocessing

    from fraudops.data.schema import CUSTOMER

    settings, storage, model, rels = batch_job
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = []
    for part in range(2):
        half = tx.filter(pl.col(CUSTOMER) % 2 == part)
        half.write_parquet(root / f"half-{part}.parquet")
        ws_settings, ws_storage = files_setup(half, root / f"half-{part}")
        job = {
            "tx": root / f"half-{part}.parquet",
            "ws_settings": ws_settings,
            "ws_storage": ws_storage,
            "model": model.with_threads(1),
            "rels": rels[part::2],
            "storage": storage,
            "settings": settings,
            "scored_at": dt.datetime.now(dt.UTC),
            "runs": args.runs,
            "memory_limit": args.memory_limit,
            "partition_rows": max(50_000, -(-half.height // 4)),
            "cores": cores[part : part + 1] if cores else None,
        }
        procs.append(ctx.Process(target=solo, args=(job, barrier, results)))
    for proc in procs:
        proc.start()
    halves: list[dict[str, Any]] = []
    while len(halves) < len(procs):
        try:
            halves.append(results.get(timeout=5))
        except queue.Empty:
            if any(proc.exitcode not in (None, 0) for proc in procs):
                raise RuntimeError("a half of the ceiling failed (its traceback is above)") from None
    for proc in procs:
        proc.join()
    out: dict[str, Any] = {"cores": {}, "worker_peak_rss_mb": sorted(h["peaks"][0] for h in halves)}
    for what in ("features", "files", "batch"):
        later = [max(pair) for pair in zip(*(h["times"][what] for h in halves), strict=True)]
        out[f"{what}_s"] = statistics.median(later)
        out["cores"][what] = {
            k: round(sum(h["cpu"][what][k] for h in halves) / sum(later), 2) for k in ("process", "workers")
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-limit", default="2GB")
    parser.add_argument("--pin", action="store_true", help="bind each worker to a core of its own")
    args = parser.parse_args()

    from fraudops import process

    process.configure()  # as the CLI does: OpenMP threads sleep instead of spinning (workers inherit it)
    from fraudops import compute
    from fraudops.batch.step import score_partition
    from fraudops.features import add_features
    from fraudops.features.engine import add_features as local_add_features
    from fraudops.modeling.explain import Explainer

    load_before = os.getloadavg()
    tx = make_data(args.customers, args.days)
    n = tx.height
    print(
        f"{n:,} transactions ({args.customers} customers x {args.days} days); load {load_before}", flush=True
    )
    featured = local_add_features(tx)
    bound = sorted(os.sched_getaffinity(0)) if args.pin else None  # worker i bound to bound[i]
    out: dict[str, Any] = {
        "transactions": n,
        "customers": args.customers,
        "days": args.days,
        "pinned": args.pin,
    }
    out["local"] = {"features_s": 0.0, "cores": {}}
    out["local"]["features_s"], out["local"]["cores"]["features"] = median_seconds(
        lambda: local_add_features(tx), args.runs
    )
    print(f"local features {out['local']['features_s']:.2f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        ws_settings, ws_storage = files_setup(tx, Path(tmp) / "transactions")
        out["local"]["files_s"], out["local"]["cores"]["files"] = median_seconds(
            lambda: files_features(ws_settings, ws_storage), args.runs
        )
        print(f"local features from files {out['local']['files_s']:.2f} s", flush=True)
        settings, storage, model, rels = batch_setup(featured, args.files, Path(tmp) / "features")
        scored_at = dt.datetime.now(dt.UTC)
        threads_model = model.with_threads(2)

        def local_batch() -> None:  # as the batch step: one explainer for every file
            explainer = Explainer(threads_model)
            for rel in rels:
                _, error = score_partition(
                    rel, storage, threads_model, settings, 1, scored_at, None, None, explainer
                )
                assert error is None, error

        out["local"]["batch_s"], out["local"]["cores"]["batch"] = median_seconds(local_batch, args.runs)
        out["local"]["peak_rss_mb"] = round(peak_rss_mb())
        print(f"local batch {out['local']['batch_s']:.2f} s", flush=True)

        for workers in (1, 2):
            partition_rows = max(50_000, -(-n // (4 * workers)))
            with (
                compute.local_cluster(workers, args.memory_limit) as cluster,
                compute.local_client(cluster) as client,
                compute.attach(client, partition_rows=partition_rows) as eng,
            ):
                watch = Workers(eng, bound[:workers] if bound else None)
                add_features(tx.head(50_000))  # warm-up: imports on the workers
                cores = {}
                feat_s, cores["features"] = median_seconds(lambda: add_features(tx), args.runs, watch)
                files_s, cores["files"] = median_seconds(
                    lambda: files_features(ws_settings, ws_storage), args.runs, watch
                )
                job = (eng, model.with_threads(1), rels, storage, settings, scored_at)
                dist_batch(*job)  # warm-up: the workers import the scoring code
                batch_s, cores["batch"] = median_seconds(lambda job=job: dist_batch(*job), args.runs, watch)
                peaks = watch.peak_mb(workers)
            out[f"dask_{workers}"] = {
                "features_s": feat_s,
                "files_s": files_s,
                "batch_s": batch_s,
                "partition_rows": partition_rows,
                "cores": cores,
                "worker_peak_rss_mb": peaks,
                "worker_memory_limit": args.memory_limit,
            }
            print(
                f"dask {workers} workers: features {feat_s:.2f} s, from files {files_s:.2f} s, "
                f"batch {batch_s:.2f} s, peaks {peaks}, cores used {cores}",
                flush=True,
            )
        out["dask_1x2"] = ceiling(tx, (settings, storage, model, rels), Path(tmp), args, bound)
        print(f"2 x 1 worker (the ceiling): {out['dask_1x2']}", flush=True)
    out["load_before"], out["load_after"] = load_before, os.getloadavg()
    for what in ("features", "files", "batch"):
        local, one, two, apart = (out[k][f"{what}_s"] for k in ("local", "dask_1", "dask_2", "dask_1x2"))
        out[f"{what}_ratios"] = {
            "2_over_1_workers": one / two,
            "2_workers_over_local": local / two,
            "ceiling_over_1_worker": one / apart,
        }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(
        "\n| engine | features s | features tx/s | from files s | from files tx/s | batch s | batch tx/s "
        "| worker peak RSS MB | cores used: this process + workers (features, files, batch) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in ("local", "dask_1", "dask_2", "dask_1x2"):
        r = out[key]
        peaks_txt = ", ".join(map(str, r.get("worker_peak_rss_mb", [r.get("peak_rss_mb")])))
        cells = [f"{r[f'{w}_s']:.2f} | {n / r[f'{w}_s']:,.0f}" for w in ("features", "files", "batch")]
        used = ", ".join(f"{c['process']:.2f} + {c['workers']:.2f}" for c in r["cores"].values())
        print(f"| {key} | {' | '.join(cells)} | {peaks_txt} | {used} |")
    for what in ("features", "files", "batch"):
        ratios = out[f"{what}_ratios"]
        print(
            f"{what}: 2 workers / 1 worker = {ratios['2_over_1_workers']:.2f}x "
            f"(the ceiling, 2 x 1 worker / 1 worker: {ratios['ceiling_over_1_worker']:.2f}x), "
            f"2 workers / local = {ratios['2_workers_over_local']:.2f}x"
        )
    print(f"load before {load_before}, after {out['load_after']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
