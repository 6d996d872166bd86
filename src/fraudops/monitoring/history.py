"""The monitoring history: one row per monitoring run, appended to a Parquet table in the workspace.

Each run's figures — per-feature drift, score drift, realized and estimated metrics, alerts, the decision
and the per-day estimates — so that the trend is visible (``fraudops monitor history``, the report, the
dashboard). Appending rewrites the table atomically through the workspace storage: a crash leaves the old
table whole.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from fraudops.monitoring.decision import Decision
from fraudops.monitoring.performance import num
from fraudops.workspace import layout
from fraudops.workspace.storage import Storage

SUMMARY_COLUMNS = (
    "monitored_at",
    "model_version",
    "retraining_required",
    "performance_source",
    "drift_share",
    "score_psi",
    "realized_average_precision",
    "estimated_average_precision",
    "estimated_average_precision_low",
    "estimated_average_precision_high",
    "alerts",
    "n_rows",
    "n_labelled",
)
"""What ``fraudops monitor history`` shows by default."""


def history_row(
    decision: Decision,
    drift: pl.DataFrame,
    perf: dict[str, Any] | None,
    estimated: dict[str, Any] | None,
    days: list[dict[str, Any]],
    execution_id: str | None,
) -> dict[str, Any]:
    """One run's figures as a row of the history table."""
    perf = perf or {}
    est = estimated or {}
    features = [
        {
            "feature": r["feature"],
            "psi": num(r.get("psi")),
            "wasserstein": num(r.get("wasserstein")),
            "drifted": bool(r.get("drift_detected")),
        }
        for r in drift.iter_rows(named=True)
    ]
    per_day = [
        {
            "day": d["day"],
            "n_rows": int(d["n_rows"]),
            "n_labelled": int(d["n_labelled"]),
            "alerts": int(d["alerts"]),
            "est_average_precision": d["est_average_precision"],
            "est_average_precision_low": d["est_average_precision_low"],
            "est_average_precision_high": d["est_average_precision_high"],
            "realized_average_precision": d["realized_average_precision"],
        }
        for d in days
    ]
    return {
        "monitored_at": decision.monitored_at,
        "execution_id": execution_id,
        "model_version": decision.model_version,
        "window_start": decision.window_start,
        "window_end": decision.window_end,
        "n_rows": decision.n_rows,
        "n_labelled": decision.n_labelled,
        "retraining_required": decision.retraining_required,
        "status": decision.status,
        "reasons": decision.reasons,
        "performance_source": decision.performance_source,
        "estimated_metrics": decision.estimated_metrics,
        "drift_share": num(decision.drift_share),
        "n_drifted": decision.n_drifted,
        "score_psi": num(decision.score_psi),
        "realized_average_precision": num(perf.get("average_precision")),
        "realized_precision": num(perf.get("precision")),
        "realized_recall": num(perf.get("recall")),
        "realized_ece": num(perf.get("ece")),
        "reference_average_precision": num(decision.reference_average_precision),
        "estimated_average_precision": num(est.get("est_average_precision")),
        "estimated_average_precision_low": num(est.get("est_average_precision_low")),
        "estimated_average_precision_high": num(est.get("est_average_precision_high")),
        "estimated_precision": num(est.get("est_precision")),
        "estimated_recall": num(est.get("est_recall")),
        "estimated_reference_average_precision": num(decision.estimated_reference_average_precision),
        "alerts": int(num(est.get("alerts"))) if est else None,
        "features": features,
        "days": per_day,
    }


def read(storage: Storage) -> pl.DataFrame:
    """The history table, oldest run first (empty when monitoring never ran)."""
    if not storage.exists(layout.MONITORING_HISTORY):
        return pl.DataFrame()
    return storage.read_frame(layout.MONITORING_HISTORY)


def add(table: pl.DataFrame, row: dict[str, Any]) -> pl.DataFrame:
    """``table`` with ``row`` appended (columns added by later versions are null in older rows)."""
    new = pl.DataFrame([row], strict=False)
    return pl.concat([table, new], how="diagonal_relaxed") if table.height else new


def write(storage: Storage, table: pl.DataFrame) -> None:
    """Replace the table atomically (the append: read, :func:`add`, write)."""
    storage.write_frame(layout.MONITORING_HISTORY, table)
