"""Benchmark of batch inference end to end against the bare model's predict on the same rows.

A features-kind Parquet file (Kaggle-like: ``Time``, 30 feature columns ``V1..V29, Amount``, ``Class``;
synthetic, written in row groups) of ``--rows`` rows (1 M by default) is scored by
:func:`fraudops.batch.scoring.score_file`, what the ``batch_inference`` step runs for each file: read by
record batches → ``data.validate`` → ``FraudModel.predict_proba`` → Parquet output written chunk by chunk
and renamed into place. The model is a 300-tree XGBoost ``FraudModel`` trained on a synthetic sample,
saved and loaded the way the registry does, given ``train.n_jobs`` = 2 threads like the step.

In the same process, the baseline is the bare booster's ``inplace_predict`` on the whole file's rows
already in memory as one C-ordered float32 matrix (``nthread=2``); timed runs of the two alternate.
Reported: median rows/s of each, their ratio, CPU seconds of each, and the peak RSS of a first,
untimed end-to-end run (before the baseline loads the whole file) next to the file's size in memory.
Prints a markdown table for the README, writes benchmarks/results/batch.json, and exits non-zero when a
target is missed:
end to end ≥ 300 000 rows/s and ≥ 0.5 × the bare predict throughput.

    uv run python benchmarks/bench_batch.py --runs 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from common import finish, machine
from fraudops.batch.scoring import output_name, score_file
from fraudops.modeling import model as models
from fraudops.workspace import init_workspace
from fraudops.workspace.storage import Storage

TARGET_ROWS_PER_SECOND = 300_000
TARGET_RATIO = 0.5
N_FEATURES = 30
FEATURES = [f"V{i}" for i in range(1, N_FEATURES)] + ["Amount"]
RESULTS = Path(__file__).parent / "results" / "batch.json"
INPUT = "prod_inputs/transactions.parquet"


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic(rows: int, seed: int, start: int = 0) -> pl.DataFrame:
    """Kaggle-like rows: Time (s), V1..V29 ~ N(0, 1), Amount >= 0, Class ~ 1 % fraud driven by a few V's."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((rows, N_FEATURES - 1))
    amount = np.round(rng.lognormal(3.5, 1.2, rows), 2)
    logit = -5.5 + 1.4 * v[:, 0] - 1.1 * v[:, 3] + 0.8 * v[:, 10] * v[:, 11] + 0.3 * np.log1p(amount)
    fraud = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    cols: dict[str, Any] = {"Time": np.arange(start, start + rows, dtype=np.float64) * 0.17}
    cols.update({f"V{i + 1}": v[:, i] for i in range(N_FEATURES - 1)})
    cols["Amount"] = amount
    cols["Class"] = fraud
    return pl.DataFrame(cols)


def write_input(path: str, rows: int, row_group: int, seed: int) -> None:
    """The input file, generated and written one row group at a time (bounded memory)."""
    writer = None
    for i, start in enumerate(range(0, rows, row_group)):
        table = synthetic(min(row_group, rows - start), seed + 1 + i, start).to_arrow()
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=row_group)
    assert writer is not None
    writer.close()


def train_model(folder: Path, rows: int, trees: int, seed: int) -> tuple[models.FraudModel, dict[str, Any]]:
    """A 300-tree XGBoost FraudModel on a synthetic sample, saved and loaded as the registry does."""
    import xgboost

    df = synthetic(rows, seed)
    x = df.select(FEATURES).to_numpy().astype(np.float32)
    y = df["Class"].to_numpy()
    params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "max_depth": 6,
        "eta": 0.05,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "nthread": 2,
        "seed": seed,
    }
    started = time.perf_counter()
    booster = xgboost.train(params, xgboost.DMatrix(x, label=y), num_boost_round=trees)
    seconds = time.perf_counter() - started
    models.XGBoostModel(FEATURES, 0.5, info={"n_estimators": trees}, booster=booster).save(folder)
    model = models.load(folder)  # what modeling.registry.load_version returns: nthread=1
    leaves = [t.count("leaf=") for t in booster.get_dump()]
    info = {
        "trees": booster.num_boosted_rounds(),
        "max_depth": params["max_depth"],
        "mean_leaves_per_tree": float(np.mean(leaves)),
        "train_rows": rows,
        "train_frauds": int(y.sum()),
        "train_seconds": seconds,
    }
    return model, info


def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fraudops-bench-batch-") as tmp:
        return bench_in(args, tmp)


def bench_in(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    ws = Path(tmp) / "ws"
    ws.mkdir()
    (ws / "fraudops.yaml").write_text(
        "data: {kind: features}\n"
        f"batch: {{chunk_rows: {args.chunk_rows}}}\n"
        f"train: {{n_jobs: {args.threads}}}\n"
    )
    settings, _ = init_workspace(str(ws))
    storage = Storage(settings.workspace)

    print(f"training a {args.trees}-tree model on {args.train_rows:,} rows…", file=sys.stderr)
    loaded, model_info = train_model(Path(tmp) / "model", args.train_rows, args.trees, args.seed)
    model = loaded.with_threads(settings.train.n_jobs)  # as batch_step does

    print(f"writing {args.rows:,} rows in row groups of {args.row_group:,}…", file=sys.stderr)
    write_input(storage.path(INPUT), args.rows, args.row_group, args.seed)
    file_mb = storage.size(INPUT) / 2**20
    in_memory_mb = args.rows * (N_FEATURES + 2) * 8 / 2**20

    # an untimed first run, before anything else is in memory: its peak RSS is the step's footprint
    rss_before = current_rss_mb()
    result = score_file(storage, INPUT, model, settings, version=1)
    peak_rss = rss_mb()
    assert result.rows == args.rows, result
    out = storage.path(output_name(INPUT))
    out_meta = pq.ParquetFile(out).metadata
    assert out_meta.num_rows == args.rows

    # the baseline: the bare booster on the same rows, all in memory; timed runs alternate with the
    # end-to-end ones so that both see the same machine (other work on a shared box comes and goes)
    x = np.ascontiguousarray(
        pl.read_parquet(storage.path(INPUT), columns=FEATURES).to_numpy(), dtype=np.float32
    )
    booster = loaded.booster.copy()
    booster.set_param({"nthread": args.threads})
    times, cpus, bare_times, bare_cpus = [], [], [], []
    for i in range(args.runs):
        started, cpu = time.perf_counter(), cpu_seconds()
        result = score_file(storage, INPUT, model, settings, version=1)
        times.append(time.perf_counter() - started)
        cpus.append(cpu_seconds() - cpu)
        started, cpu = time.perf_counter(), cpu_seconds()
        p_bare = booster.inplace_predict(x, validate_features=False)
        bare_times.append(time.perf_counter() - started)
        bare_cpus.append(cpu_seconds() - cpu)
        print(
            f"run {i + 1}/{args.runs}: end to end {times[-1]:.2f} s ({args.rows / times[-1]:,.0f} rows/s), "
            f"bare predict {bare_times[-1]:.2f} s ({args.rows / bare_times[-1]:,.0f} rows/s)",
            file=sys.stderr,
        )
    scored = pl.read_parquet(out, columns=["fraud_probability"])["fraud_probability"].to_numpy()
    max_diff = float(np.max(np.abs(scored - p_bare.astype(np.float64))))

    median, bare_median = statistics.median(times), statistics.median(bare_times)
    e2e, bare = args.rows / median, args.rows / bare_median
    return {
        "rows": args.rows,
        "features": N_FEATURES,
        "row_group_rows": args.row_group,
        "chunk_rows": args.chunk_rows,
        "threads": args.threads,
        "model": model_info,
        "input_file_mb": file_mb,
        "input_in_memory_mb": in_memory_mb,
        "output_file_mb": os.path.getsize(out) / 2**20,
        "output_row_groups": out_meta.num_row_groups,
        "end_to_end_seconds": times,
        "end_to_end_median_seconds": median,
        "end_to_end_rows_per_second": e2e,
        "end_to_end_cpu_seconds": cpus,
        "end_to_end_median_cpu_seconds": statistics.median(cpus),
        "bare_predict_seconds": bare_times,
        "bare_predict_cpu_seconds": bare_cpus,
        "bare_predict_median_cpu_seconds": statistics.median(bare_cpus),
        "bare_predict_median_seconds": bare_median,
        "bare_predict_rows_per_second": bare,
        "ratio": e2e / bare,
        "rss_before_scoring_mb": rss_before,
        "peak_rss_scoring_mb": peak_rss,
        "max_abs_diff_vs_bare_predict": max_diff,
        "flagged": result.flagged,
        "load_average": os.getloadavg(),
    }


def markdown(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"| batch inference, {r['rows']:,} rows × {r['features']} features, {r['model']['trees']} trees, "
            f"{r['threads']} threads | value |",
            "| --- | ---: |",
            "| end to end (read → validate → predict → write Parquet) | "
            f"{r['end_to_end_rows_per_second']:,.0f} rows/s "
            f"({r['end_to_end_median_seconds']:.2f} s) |",
            f"| bare `inplace_predict`, rows in memory | {r['bare_predict_rows_per_second']:,.0f} rows/s "
            f"({r['bare_predict_median_seconds']:.2f} s) |",
            f"| end to end / bare predict | {r['ratio']:.2f} |",
            f"| CPU seconds, end to end / bare predict | {r['end_to_end_median_cpu_seconds']:.2f} / "
            f"{r['bare_predict_median_cpu_seconds']:.2f} |",
            f"| peak RSS while scoring (before: {r['rss_before_scoring_mb']:,.0f} MB; the file in memory: "
            f"{r['input_in_memory_mb']:,.0f} MB) | {r['peak_rss_scoring_mb']:,.0f} MB |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--row-group", type=int, default=100_000, help="rows per row group of the input")
    parser.add_argument("--chunk-rows", type=int, default=250_000, help="batch.chunk_rows")
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--train-rows", type=int, default=30_000)
    parser.add_argument("--threads", type=int, default=2, help="train.n_jobs and the baseline's nthread")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    r = bench(args)
    failures = []
    if r["end_to_end_rows_per_second"] < TARGET_ROWS_PER_SECOND:
        failures.append(
            f"end to end {r['end_to_end_rows_per_second']:,.0f} rows/s < {TARGET_ROWS_PER_SECOND:,}"
        )
    if r["ratio"] < TARGET_RATIO:
        failures.append(f"end to end / bare predict {r['ratio']:.2f} < {TARGET_RATIO}")
    if r["max_abs_diff_vs_bare_predict"] > 1e-6:
        failures.append(f"scores differ from the bare predict by {r['max_abs_diff_vs_bare_predict']:.2g}")

    print(f"\n{markdown(r)}\n")
    load = ", ".join(f"{x:.1f}" for x in r["load_average"])
    print(
        f"model: {r['model']['trees']} trees, {r['model']['mean_leaves_per_tree']:.1f} leaves a tree on "
        f"average; input {r['input_file_mb']:,.0f} MB on disk, output {r['output_file_mb']:,.0f} MB "
        f"({r['output_row_groups']} row groups); load average {load}"
    )
    result = {
        "benchmark": "batch",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **r,
        "targets": {"rows_per_second": TARGET_ROWS_PER_SECOND, "ratio": TARGET_RATIO},
        "ok": not failures,
        "failures": failures,
        "machine": machine("numpy", "polars", "pyarrow", "xgboost"),
    }
    return finish(args.output, result, failures)


if __name__ == "__main__":
    sys.exit(main())
