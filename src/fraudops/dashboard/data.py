"""What the dashboard shows, read from where the pipeline keeps it: MLflow (executions, registry, decision
runs) and the workspace (monitoring history, decision, report, batch outputs, captured traffic).

Reads are cached so that pages answer fast: MLflow answers for ``ttl`` seconds, workspace tables until
their files change (same names, sizes and modification times).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import polars as pl

from fraudops.batch.scoring import FLAG, PROBABILITY
from fraudops.config import Settings
from fraudops.data.schema import AMOUNT, CUSTOMER, TERMINAL, TX_ID, TX_TIME, role_columns
from fraudops.monitoring import history as monitoring_history
from fraudops.pipeline.history import History, effective_status
from fraudops.tracking import registry
from fraudops.tracking.client import call, client, experiment_id
from fraudops.workspace import layout
from fraudops.workspace.storage import Storage

log = logging.getLogger("fraudops.dashboard")

CAPTURE = "prod_outputs/capture"
"""Captured online traffic (hourly Parquet files under this folder), when the serving side writes it."""
REASONS = ("reason_1", "reason_2", "reason_3")
SCORE_NAMES = (PROBABILITY, "probability")
KEY = "_key"
"""The transaction id as text: how pages, verdicts and files of different id types refer to a transaction."""


class Cache:
    """Values keyed by a signature (e.g. of the files they were read from: reread when it changes), or
    without one kept for ``ttl`` seconds and then refreshed in the background while the old value is
    served (stale-while-revalidate: a page never waits for MLflow once it has answered once)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.lock = threading.Lock()
        self.values: dict[str, tuple[float, Any, Any]] = {}
        self.refreshing: set[str] = set()

    def get(self, name: str, make: Callable[[], Any], key: Any = None) -> Any:
        with self.lock:
            hit = self.values.get(name)
            if hit is not None and key is None and time.monotonic() - hit[0] >= self.ttl:
                if name not in self.refreshing:
                    self.refreshing.add(name)
                    threading.Thread(target=self._refresh, args=(name, make), daemon=True).start()
                return hit[2]
        if hit is not None and hit[1] == key:
            return hit[2]
        value = make()
        with self.lock:
            self.values[name] = (time.monotonic(), key, value)
        return value

    def _refresh(self, name: str, make: Callable[[], Any]) -> None:
        try:
            value = make()
            with self.lock:
                self.values[name] = (time.monotonic(), None, value)
        except Exception:  # the old value stays; the next request tries again
            log.warning("dashboard: refreshing %s failed", name, exc_info=True)
        finally:
            with self.lock:
                self.refreshing.discard(name)


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def mlflow_run_url(base: str | None, experiment: str, run_id: str) -> str | None:
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}" if base else None


def executions(
    settings: Settings, storage: Storage, mlflow_url: str | None, limit: int = 50
) -> list[dict[str, Any]]:
    """Executions, newest first, with their steps, durations and MLflow links."""
    from fraudops.workspace.lock import lock_holder

    hist = History(settings)
    holder = lock_holder(storage)
    out = []
    for run in hist.search(limit=limit):
        rec = hist.record(run, full=False)
        rec["status"] = effective_status(rec, holder)
        rec["url"] = mlflow_run_url(mlflow_url, run.info.experiment_id, run.info.run_id)
        out.append(rec)
    return out


def champion(settings: Settings, mlflow_url: str | None) -> dict[str, Any]:
    """The aliases, the registered versions (newest first) and the promotion and rollback decisions."""
    described = registry.describe(settings)
    decisions = []
    if registry.store_exists(settings):
        c = client(settings)
        exp = experiment_id(settings)
        runs = call(
            settings,
            "decision runs",
            lambda: c.search_runs(
                [exp], filter_string="tags.decision LIKE '%'", order_by=["attributes.start_time DESC"]
            ),
        )
        for run in runs:
            tags, metrics = run.data.tags, run.data.metrics
            decisions.append(
                {
                    "when": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run.info.start_time / 1000)),
                    "step": tags.get("fraudops.step", ""),
                    "decision": tags.get("decision"),
                    "reasons": [r for r in tags.get("decision.reasons", "").split("; ") if r],
                    "challenger_ap": _finite(metrics.get("challenger.average_precision")),
                    "champion_ap": _finite(metrics.get("champion.average_precision")),
                    "url": mlflow_run_url(mlflow_url, exp, run.info.run_id),
                }
            )
    return {**described, "decisions": decisions}


def _signature(storage: Storage, files: list[str]) -> tuple[Any, ...]:
    out = []
    for rel in files:
        info = storage.info(rel)
        out.append((rel, info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("ETag")))
    return tuple(out)


def monitoring(storage: Storage, cache: Cache) -> dict[str, Any]:
    """The monitoring history as rows (newest first) and as chart series (runs and days)."""
    files = [layout.MONITORING_HISTORY] if storage.exists(layout.MONITORING_HISTORY) else []
    return cache.get("monitoring", lambda: _monitoring(storage), _signature(storage, files))


def _epoch(iso: str | None) -> float | None:
    import datetime as dt

    if not iso:
        return None
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _monitoring(storage: Storage) -> dict[str, Any]:
    table = monitoring_history.read(storage)
    if not table.height:
        return {"runs": [], "series": {}, "days": []}
    runs = [
        {k: _finite(v) for k, v in r.items() if k not in ("features", "days")}
        for r in table.iter_rows(named=True)
    ]
    xs = [_epoch(r["monitored_at"]) for r in runs]

    def col(name: str) -> list[Any]:
        return [_finite(r.get(name)) for r in runs]

    series = {
        "x": xs,
        "drift_share": col("drift_share"),
        "score_psi": col("score_psi"),
        "realized_ap": col("realized_average_precision"),
        "estimated_ap": col("estimated_average_precision"),
        "estimated_ap_low": col("estimated_average_precision_low"),
        "estimated_ap_high": col("estimated_average_precision_high"),
        "retrain": [1 if r.get("retraining_required") == "YES" else 0 for r in runs],
    }
    days: dict[str, dict[str, Any]] = {}
    if "days" in table.columns:
        for per_run in table["days"].to_list():
            for d in per_run or []:
                days[d["day"]] = {k: _finite(v) for k, v in d.items()}  # a later run's figures win
    day_rows = [days[k] for k in sorted(days)]
    day_series = {
        "x": [_epoch(d["day"] + "T00:00:00+00:00") for d in day_rows],
        "alerts": [d["alerts"] for d in day_rows],
        "estimated_ap": [d["est_average_precision"] for d in day_rows],
        "realized_ap": [d["realized_average_precision"] for d in day_rows],
    }
    return {"runs": runs[::-1], "series": series, "day_series": day_series, "days": day_rows[::-1]}


def latest_decision(storage: Storage) -> dict[str, Any] | None:
    if not storage.exists(layout.DECISION_JSON):
        return None
    return dict(json.loads(storage.read_bytes(layout.DECISION_JSON)))


def report(storage: Storage) -> str | None:
    return storage.read_bytes(layout.REPORT_HTML).decode() if storage.exists(layout.REPORT_HTML) else None


# ------------------------------------------------------------------------------------------ alerts


def scored_files(storage: Storage) -> list[str]:
    """Batch outputs (not their rejects files) and captured traffic files."""
    out = [
        rel
        for rel in storage.ls(layout.PREDICTIONS, (".parquet", ".csv"))
        if ".out." in rel.rsplit("/", 1)[-1]
    ]
    capture = storage.path(CAPTURE)
    if storage.fs.isdir(capture):
        root = storage.path("").rstrip("/")
        for path in sorted(storage.fs.find(capture)):
            if path.endswith(".parquet") and not path.rsplit("/", 1)[-1].startswith("."):
                out.append(path[len(root) :].lstrip("/"))
    return out


def _canonical(frame: pl.DataFrame, settings: Settings, source: str) -> pl.DataFrame:
    frame = frame.rename({k: v for k, v in role_columns(settings.data).items() if k in frame.columns})
    score = next((c for c in SCORE_NAMES if c in frame.columns), None)
    if score is None:
        return pl.DataFrame()
    if score != PROBABILITY:
        frame = frame.rename({score: PROBABILITY})
    if FLAG not in frame.columns:
        return pl.DataFrame()
    if TX_ID not in frame.columns and "transaction_id" in frame.columns:
        frame = frame.rename({"transaction_id": TX_ID})
    if TX_TIME not in frame.columns and "timestamp" in frame.columns:
        frame = frame.rename({"timestamp": TX_TIME})
    if TX_ID not in frame.columns:
        return pl.DataFrame()
    if TX_TIME in frame.columns and frame.schema[TX_TIME] == pl.String:
        frame = frame.with_columns(pl.col(TX_TIME).str.to_datetime(strict=False))
    return frame.with_columns(
        pl.col(TX_ID).cast(pl.String).alias(KEY), pl.col(FLAG).cast(pl.Int8), pl.lit(source).alias("source")
    )


def find(scored_rows: pl.DataFrame, tx: str) -> dict[str, Any] | None:
    """The scored row of transaction ``tx`` (its id as text), or None."""
    rows = scored_rows.filter(pl.col(KEY) == tx) if scored_rows.height else scored_rows
    return rows.row(0, named=True) if rows.height else None


def scored(storage: Storage, settings: Settings, cache: Cache) -> pl.DataFrame:
    """Every scored transaction of the batch outputs and the capture (canonical names; the newest row of
    a transaction wins), cached until the files change."""
    files = scored_files(storage)

    def load() -> pl.DataFrame:
        frames = []
        for rel in files:
            source = "capture" if rel.startswith(CAPTURE) else rel.rsplit("/", 1)[-1]
            frame = _canonical(storage.read_frame(rel), settings, source)
            if frame.height:
                frames.append(frame)
        if not frames:
            return pl.DataFrame()
        both = pl.concat(frames, how="diagonal_relaxed")
        return both.unique(KEY, keep="last", maintain_order=True)

    result: pl.DataFrame = cache.get("scored", load, _signature(storage, files))
    return result


def alert_queue(scored_rows: pl.DataFrame, verdicts: pl.DataFrame, limit: int) -> list[dict[str, Any]]:
    """The latest alerts without a verdict, highest score first."""
    if not scored_rows.height:
        return []
    alerts = scored_rows.filter(pl.col(FLAG) == 1)
    if verdicts.height:
        alerts = alerts.filter(~pl.col(KEY).is_in(verdicts["transaction_id"].implode()))
    keep = [
        c
        for c in (KEY, TX_TIME, CUSTOMER, TERMINAL, AMOUNT, PROBABILITY, *REASONS, "source")
        if c in alerts.columns
    ]
    top = alerts.sort(PROBABILITY, descending=True).head(limit).select(keep)
    return [
        {
            "id": r[KEY],
            "time": str(r.get(TX_TIME) or ""),
            "card": r.get(CUSTOMER),
            "terminal": r.get(TERMINAL),
            "amount": r.get(AMOUNT),
            "score": r[PROBABILITY],
            "reasons": [r[c] for c in REASONS if r.get(c)],
            "source": r["source"],
        }
        for r in top.iter_rows(named=True)
    ]


def card_transactions(scored_rows: pl.DataFrame, card: Any, limit: int = 10) -> list[dict[str, Any]]:
    """The card's most recent scored transactions, newest first."""
    if not scored_rows.height or CUSTOMER not in scored_rows.columns:
        return []
    rows = scored_rows.filter(pl.col(CUSTOMER) == card)
    if TX_TIME in rows.columns:
        rows = rows.sort(TX_TIME, descending=True)
    keep = [c for c in (KEY, TX_TIME, TERMINAL, AMOUNT, PROBABILITY, FLAG) if c in rows.columns]
    return [
        {
            "id": r[KEY],
            "time": str(r.get(TX_TIME) or ""),
            "terminal": r.get(TERMINAL),
            "amount": r.get(AMOUNT),
            "score": r[PROBABILITY],
            "alert": bool(r[FLAG]),
        }
        for r in rows.head(limit).select(keep).iter_rows(named=True)
    ]
