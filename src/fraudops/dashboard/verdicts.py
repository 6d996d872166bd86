"""Analysts' verdicts on alerts: stored durably (who, when), and turned into labels in current_data/.

Each verdict is appended to ``monitoring_inputs/verdicts/verdicts.parquet`` (the record: transaction, fraud
or genuine, analyst, time, score, where the alert came from), then the labelled transaction is written to
``monitoring_inputs/current_data/analyst_verdicts.parquet`` (one row per transaction, the latest verdict
wins), where monitoring counts it as a realized label and retraining as training data. Both files are
rewritten atomically through the workspace storage; a process-wide lock orders concurrent verdicts.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any, Literal

import polars as pl

from fraudops.batch.scoring import OUTPUT_COLUMNS
from fraudops.config import Settings
from fraudops.data.schema import (
    AMOUNT,
    CUSTOMER,
    LABEL,
    ROLES,
    TERMINAL,
    TX_ID,
    TX_TIME,
    role_columns,
    to_file_columns,
)
from fraudops.errors import FraudopsError
from fraudops.workspace import layout
from fraudops.workspace.storage import Storage

Verdict = Literal["fraud", "genuine"]
REQUIRED = {"transactions": (TX_ID, TX_TIME, CUSTOMER, TERMINAL, AMOUNT), "features": (TX_ID,)}
_LOCK = threading.Lock()


class VerdictError(FraudopsError):
    """A verdict that cannot be recorded (unknown transaction, bad value): the client's mistake."""


def read(storage: Storage) -> pl.DataFrame:
    """Every verdict, oldest first (empty without any)."""
    if not storage.exists(layout.VERDICTS):
        return pl.DataFrame(schema={"transaction_id": pl.String})
    return storage.read_frame(layout.VERDICTS)


def label_row(row: dict[str, Any], settings: Settings, label: int) -> dict[str, Any]:
    """The scored transaction as a labelled current-data row (canonical names): its inputs, no outputs."""
    missing = [c for c in REQUIRED[settings.data.kind] if row.get(c) is None]
    if missing:
        raise VerdictError(
            f"transaction {row.get(TX_ID)}: its scored row lacks {', '.join(missing)}, so it cannot become "
            "a label (keep these columns in the batch outputs: batch.join_columns)"
        )
    skip = {*OUTPUT_COLUMNS, "source", "reason_1", "reason_2", "reason_3", "probability", "_key"}
    keep = (
        {c: v for c, v in row.items() if c in ROLES.values()}
        if settings.data.kind == "transactions"
        else {c: v for c, v in row.items() if c not in skip}
    )
    return {**keep, LABEL: label}


def record(
    storage: Storage, settings: Settings, row: dict[str, Any], verdict: str, analyst: str
) -> dict[str, Any]:
    """Store one verdict on the scored transaction ``row`` (canonical names) and its label; returns the
    stored record."""
    if verdict not in ("fraud", "genuine"):
        raise VerdictError(f"verdict must be 'fraud' or 'genuine', not {verdict!r}")
    analyst = analyst.strip()
    if not analyst or len(analyst) > 100:
        raise VerdictError("analyst: give your name (1-100 characters)")
    label = 1 if verdict == "fraud" else 0
    labelled = label_row(row, settings, label)
    entry = {
        "transaction_id": str(row["_key"]),
        "verdict": verdict,
        "label": label,
        "analyst": analyst,
        "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "score": float(row.get("fraud_probability") or 0.0),
        "source": str(row.get("source") or ""),
    }
    with _LOCK:
        log = read(storage)
        new = pl.DataFrame([entry])
        storage.write_frame(
            layout.VERDICTS, pl.concat([log, new], how="diagonal_relaxed") if log.height else new
        )
        labels = _labels(storage, settings)
        fresh = pl.DataFrame([labelled]).with_columns(pl.col(LABEL).cast(pl.Int64))
        if labels.height:
            labels = labels.filter(pl.col(TX_ID).cast(pl.String) != entry["transaction_id"])
            fresh = fresh.cast({c: labels.schema[c] for c in fresh.columns if c in labels.columns})
            fresh = pl.concat([labels, fresh], how="diagonal_relaxed")
        storage.write_frame(layout.VERDICT_LABELS, to_file_columns(fresh, settings.data))
    return entry


def _labels(storage: Storage, settings: Settings) -> pl.DataFrame:
    if not storage.exists(layout.VERDICT_LABELS):
        return pl.DataFrame()
    frame = storage.read_frame(layout.VERDICT_LABELS)
    return frame.rename({k: v for k, v in role_columns(settings.data).items() if k in frame.columns})
