"""Benchmark ``fraudops.features.add_features`` on data the size of the handbook's simulation.

    uv run python benchmarks/bench_features.py [--runs 3] [--duckdb-python /tmp/duckenv/bin/python]

Data: ``fraudops.data.simulate.simulate(SimulateConfig())`` when that works, otherwise an equivalent numpy
synthesis of simulator.md (5 000 customers, 10 000 terminals, 183 days, ~1.75-1.8 M transactions,
~0.8 % fraud). Each run is a fresh child process (the data is read from parquet before the clock
starts); its peak RSS is the child's ``ru_maxrss`` (Python + polars + data + features).

Measured: fraudops with every feature (the target: median <= 10 s and peak RSS <= 3 GB, else the exit
code is 1), fraudops with the handbook's 15 only, and, when a Python with ``duckdb`` is found, DuckDB
SQL window functions computing the same 15 (same windows, ties and delay, output in input order),
checked against fraudops' values. Results: a markdown table on stdout and
``benchmarks/results/features.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "features.json"
DEFAULT_DUCKDB_PYTHON = "/tmp/duckenv/bin/python"
LIMIT_SECONDS = 10.0
LIMIT_RSS_MB = 3 * 1024
US_DAY = 86_400_000_000


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- data


def synthesise(n_customers: int = 5000, n_terminals: int = 10000, n_days: int = 183, seed: int = 0):
    """simulator.md's algorithm, vectorised (shape and statistics only; not fraudops' simulator)."""
    import datetime as dt

    import numpy as np
    import polars as pl
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    cxy = rng.uniform(0, 100, (n_customers, 2))
    mean = rng.uniform(5, 100, n_customers)
    lam = rng.uniform(0, 4, n_customers)
    txy = rng.uniform(0, 100, (n_terminals, 2))
    near = cKDTree(txy).query_ball_point(cxy, r=5.0)
    counts = np.array([len(a) for a in near])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flat = np.concatenate([np.asarray(a, dtype=np.int64) for a in near])
    per_day = rng.poisson(np.repeat(lam[:, None], n_days, 1)).ravel()
    cust = np.repeat(np.repeat(np.arange(n_customers), n_days), per_day)
    day = np.repeat(np.tile(np.arange(n_days), n_customers), per_day)
    tod = rng.normal(43_200, 20_000, cust.size).astype(np.int64)
    keep = (tod > 0) & (tod < 86_400) & (counts[cust] > 0)
    cust, day, tod = cust[keep], day[keep], tod[keep]
    amount = rng.normal(mean[cust], mean[cust] / 2)
    neg = amount < 0
    amount[neg] = rng.uniform(0, 2 * mean[cust[neg]])
    amount = np.round(amount, 2)
    term = flat[offsets[cust] + (rng.random(cust.size) * counts[cust]).astype(np.int64)]
    secs = day * 86_400 + tod
    order = np.argsort(secs, kind="stable")
    cust, day, secs, amount, term = cust[order], day[order], secs[order], amount[order], term[order]
    scenario = np.zeros(cust.size, np.int8)
    scenario[amount > 220] = 1
    bad_terminals = np.zeros((n_terminals, n_days + 28), bool)
    for d in range(n_days):
        for t in rng.choice(n_terminals, 2, replace=False):
            bad_terminals[t, d : d + 28] = True
    scenario[bad_terminals[term, day]] = 2
    bad_cards = np.zeros((n_customers, n_days + 14), bool)
    for d in range(n_days):
        for c in rng.choice(n_customers, 3, replace=False):
            bad_cards[c, d : d + 14] = True
    s3 = bad_cards[cust, day] & (rng.random(cust.size) < 1 / 3)
    amount[s3] = np.round(amount[s3] * 5, 2)
    scenario[s3] = 3
    start = np.datetime64(dt.datetime(2018, 4, 1), "us")
    return pl.DataFrame(
        {
            "TRANSACTION_ID": np.arange(cust.size),
            "TX_DATETIME": start + secs.astype("timedelta64[s]"),
            "CUSTOMER_ID": cust,
            "TERMINAL_ID": term,
            "TX_AMOUNT": amount,
            "TX_TIME_SECONDS": secs,
            "TX_TIME_DAYS": day,
            "TX_FRAUD": (scenario > 0).astype(np.int8),
            "TX_FRAUD_SCENARIO": scenario,
        }
    )


def make_data(args: argparse.Namespace):
    """(frame, source description)."""
    import polars as pl

    if not args.synthetic:
        try:
            from fraudops.config import SimulateConfig
            from fraudops.data.simulate import simulate

            cfg = SimulateConfig(
                n_customers=args.customers, n_terminals=args.terminals, n_days=args.days, seed=args.seed
            )
            out = simulate(cfg)
            if not isinstance(out, pl.DataFrame):
                out = pl.from_pandas(out) if hasattr(out, "to_numpy") else pl.DataFrame(out)
            needed = {"TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"}
            if needed <= set(out.columns) and out.height:
                return out, "fraudops.data.simulate.simulate"
            print(
                f"note: simulate() returned columns {out.columns}; using the numpy synthesis", file=sys.stderr
            )
        except Exception as e:  # the simulator is optional here
            print(
                f"note: fraudops.data.simulate unavailable ({type(e).__name__}: {e}); numpy synthesis",
                file=sys.stderr,
            )
    frame = synthesise(args.customers, args.terminals, args.days, args.seed)
    return frame, "numpy synthesis of simulator.md (benchmarks/bench_features.py)"


# ---------------------------------------------------------------- children (one per run)


def child_polars(data: str, extra: bool) -> dict:
    import polars as pl

    from fraudops.config import FeaturesConfig
    from fraudops.features import add_features

    tx = pl.read_parquet(data)
    cfg = FeaturesConfig(extra=extra)
    rss_before, cpu0 = peak_rss_mb(), cpu_seconds()
    t0 = time.perf_counter()
    out = add_features(tx, cfg)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu0,
        "rows": out.height,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
    }


def duckdb_sql(delay: int = 7, windows: tuple[int, ...] = (1, 7, 30)) -> str:
    """The handbook's 15 in SQL, same definitions as fraudops.features (integer microseconds)."""
    cust_cols, term_cols, risk_cols, defs = [], [], [], []
    for n in windows:
        cust_cols += [
            f"COUNT(*) OVER c{n} AS CUSTOMER_ID_NB_TX_{n}DAY_WINDOW",
            f"AVG(TX_AMOUNT) OVER c{n} AS CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW",
        ]
        term_cols += [f"COUNT(*) OVER t{n} AS _n{n}", f"SUM(_y) OVER t{n} AS _f{n}"]
        risk_cols += [
            f"CAST(COALESCE(_n{n}, 0) AS INTEGER) AS TERMINAL_ID_NB_TX_{n}DAY_WINDOW",
            f"CASE WHEN _n{n} > 0 THEN _f{n} / _n{n} ELSE 0.0 END AS TERMINAL_ID_RISK_{n}DAY_WINDOW",
        ]
        defs += [
            f"c{n} AS (PARTITION BY CUSTOMER_ID ORDER BY _us "
            f"RANGE BETWEEN {n * US_DAY - 1} PRECEDING AND CURRENT ROW)",
            f"t{n} AS (PARTITION BY TERMINAL_ID ORDER BY _us "
            f"RANGE BETWEEN {(n + delay) * US_DAY - 1} PRECEDING AND {delay * US_DAY} PRECEDING)",
        ]
    inner = ",\n  ".join(
        [
            "*",
            "CAST(isodow(TX_DATETIME) >= 6 AS TINYINT) AS TX_DURING_WEEKEND",
            "CAST(hour(TX_DATETIME) <= 6 AS TINYINT) AS TX_DURING_NIGHT",
            *cust_cols,
            *term_cols,
        ]
    )
    drop = ", ".join(["_us", "_y", "_row"] + [f"_n{n}, _f{n}" for n in windows])
    return (
        f"WITH b AS (SELECT *, epoch_us(TX_DATETIME) AS _us, CAST(COALESCE(TX_FRAUD, 0) AS INTEGER) AS _y, "
        f"row_number() OVER () AS _row FROM tx),\n"
        f"w AS (SELECT {inner}\nFROM b\nWINDOW {', '.join(defs)})\n"
        f"SELECT * EXCLUDE ({drop}), {', '.join(risk_cols)} FROM w ORDER BY _row"
    )


def child_duckdb(data: str, out: str | None) -> dict:
    import duckdb

    con = duckdb.connect()
    con.execute(f"CREATE TABLE tx AS SELECT * FROM read_parquet('{data}')")
    rss_before, cpu0 = peak_rss_mb(), cpu_seconds()
    t0 = time.perf_counter()
    table = con.sql(duckdb_sql()).fetch_arrow_table()
    seconds = time.perf_counter() - t0
    result = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu0,
        "rows": table.num_rows,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "duckdb_version": duckdb.__version__,
    }
    if out:
        import pyarrow.parquet as pq

        pq.write_table(table, out)
    return result


# ---------------------------------------------------------------- driver


def run_child(python: str, mode: str, data: str, extra_args: list[str]) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--child", mode, "--data", data, *extra_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(name: str, features: int, runs: list[dict]) -> dict:
    secs = [r["seconds"] for r in runs]
    med = statistics.median(secs)
    rows = runs[0]["rows"]
    return {
        "engine": name,
        "features": features,
        "rows": rows,
        "runs": len(runs),
        "median_seconds": med,
        "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
        "min_seconds": min(secs),
        "max_seconds": max(secs),
        "rows_per_second": rows / med,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "rss_before_mb": max(r["rss_before_mb"] for r in runs),
        "all_seconds": secs,
    }


def check_duckdb_matches(data: str, duck_out: str) -> float:
    """Largest absolute difference between DuckDB's and fraudops' 15 features (rows must align)."""
    import numpy as np
    import polars as pl

    from fraudops.config import FeaturesConfig
    from fraudops.features import add_features, handbook_feature_names

    cfg = FeaturesConfig(extra=False)
    ours = add_features(pl.read_parquet(data), cfg)
    theirs = pl.read_parquet(duck_out)
    names = handbook_feature_names(cfg)
    assert ours["TRANSACTION_ID"].equals(theirs["TRANSACTION_ID"]), "DuckDB rows in another order"
    a = ours.select(names).to_numpy().astype(float)
    b = theirs.select(names).to_numpy().astype(float)
    return float(np.abs(a - b).max())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--customers", type=int, default=5000)
    p.add_argument("--terminals", type=int, default=10000)
    p.add_argument("--days", type=int, default=183)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic", action="store_true", help="no fraudops simulator: numpy synthesis")
    p.add_argument("--duckdb-python", default=DEFAULT_DUCKDB_PYTHON, help="a Python with duckdb installed")
    p.add_argument("--no-duckdb", action="store_true")
    p.add_argument("--output", default=str(RESULTS))
    p.add_argument("--child", choices=["polars-all", "polars-15", "duckdb"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        if args.child == "duckdb":
            result = child_duckdb(args.data, args.out)
        else:
            result = child_polars(args.data, extra=args.child == "polars-all")
        print(json.dumps(result))
        return 0

    import polars as pl

    from fraudops.config import FeaturesConfig
    from fraudops.features import feature_names

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        frame, source = make_data(args)
        gen_seconds = time.perf_counter() - t0
        data = os.path.join(tmp, "tx.parquet")
        frame.write_parquet(data)
        n_rows, fraud_rate = frame.height, float(frame["TX_FRAUD"].cast(pl.Float64).mean() or 0.0)
        print(
            f"data: {n_rows:,} transactions, fraud rate {fraud_rate:.4f}, from {source} ({gen_seconds:.1f} s)"
        )
        del frame

        rows = []
        for mode, cfg in (("polars-all", FeaturesConfig()), ("polars-15", FeaturesConfig(extra=False))):
            runs = [run_child(sys.executable, mode, data, []) for _ in range(args.runs)]
            rows.append(summarise(f"fraudops (polars {pl.__version__})", len(feature_names(cfg)), runs))
            print(f"{mode}: {[round(r['seconds'], 2) for r in runs]} s", file=sys.stderr)

        duck_note = None
        duck_python = Path(args.duckdb_python)
        if args.no_duckdb:
            duck_note = "DuckDB skipped (--no-duckdb)"
        elif not duck_python.exists():
            duck_note = f"DuckDB skipped: no Python at {duck_python} (see --duckdb-python)"
        else:
            try:
                duck_out = os.path.join(tmp, "duck.parquet")
                runs = [
                    run_child(str(duck_python), "duckdb", data, ["--out", duck_out] if i == 0 else [])
                    for i in range(args.runs)
                ]
                version = runs[0].get("duckdb_version", "?")
                rows.append(summarise(f"DuckDB {version} SQL", 15, runs))
                print(f"duckdb: {[round(r['seconds'], 2) for r in runs]} s", file=sys.stderr)
                diff = check_duckdb_matches(data, duck_out)
                duck_note = f"DuckDB's 15 features equal fraudops' (max abs difference {diff:.2e})"
                if diff > 1e-6:
                    duck_note = f"WARNING: DuckDB and fraudops differ (max abs difference {diff:.3g})"
            except Exception as e:  # the comparison is optional
                duck_note = f"DuckDB run failed: {e}"

    load = os.getloadavg()
    target = rows[0]
    ok = target["median_seconds"] <= LIMIT_SECONDS and target["peak_rss_mb"] <= LIMIT_RSS_MB
    lines = [
        f"add_features on {n_rows:,} transactions, {os.cpu_count()} CPU, median of {args.runs} runs "
        "(fresh process each; peak RSS includes the loaded data; CPU s = user + system, all threads; "
        f"1-min load average at the end {load[0]:.1f}):",
        "",
        "| engine | features | median s | rows/s | CPU s | peak RSS (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['features']} | {r['median_seconds']:.2f} | "
            f"{r['rows_per_second'] / 1e6:.2f} M | {r['median_cpu_seconds']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    duck = next((r for r in rows if r["engine"].startswith("DuckDB")), None)
    ratio = None
    if duck:
        ratio = duck["median_seconds"] / rows[1]["median_seconds"]
        lines += ["", f"DuckDB / fraudops time for the same 15 features: {ratio:.2f}x."]
    if duck_note:
        lines += ["", duck_note]
    lines += [
        "",
        f"Target (all features): median <= {LIMIT_SECONDS:.0f} s and peak RSS <= {LIMIT_RSS_MB} MB: "
        + ("met" if ok else "NOT MET"),
    ]
    print("\n".join(lines))

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "rows": n_rows,
        "fraud_rate": fraud_rate,
        "data_source": source,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "results": rows,
        "duckdb_over_fraudops_15": ratio,
        "duckdb_note": duck_note,
        "limits": {"median_seconds": LIMIT_SECONDS, "peak_rss_mb": LIMIT_RSS_MB},
        "ok": ok,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nsaved {out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
