"""The champion's performance on labelled current data, beside its held-out test metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from fraudops.config import MonitorConfig
from fraudops.data.schema import CUSTOMER, TX_TIME
from fraudops.modeling import calibration
from fraudops.modeling import evaluate as ev

NO_LABELS = "no labelled data"


def num(value: Any) -> float:
    """A float, NaN for anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def performance(
    y: Any,
    p: Any,
    threshold: float,
    frame: pl.DataFrame | None = None,
    *,
    cfg: MonitorConfig | None = None,
    k: int = 100,
) -> dict[str, Any]:
    """The champion's performance on labelled current data, with the shared metric functions of
    :mod:`fraudops.modeling.evaluate`.

    ``y`` = labels (1 fraud, 0 genuine; NaN = not labelled yet, such rows are left out), ``p`` =
    scores (no NaN), alert rule ``p >= threshold``. ``status`` is ``"ok"``, or ``"insufficient data"`` when
    there are fewer than ``cfg.min_rows`` labelled rows or ``cfg.min_frauds`` frauds: the numbers are
    still reported but :func:`decide` takes no decision on them. When ``frame`` (rows aligned with y
    and p) has the customer and timestamp columns, card precision @ ``k`` is added.
    """
    cfg = cfg or MonitorConfig()
    ya = np.asarray(y, dtype=np.float64).ravel()
    pa = np.asarray(p, dtype=np.float64).ravel()
    if ya.shape != pa.shape:
        raise ValueError(f"labels and scores differ in length: {ya.size} vs {pa.size}")
    labelled = ~np.isnan(ya)
    n_unlabelled = int(ya.size - labelled.sum())
    ya, pa = ya[labelled].astype(np.int8), pa[labelled]
    n_rows, n_frauds = int(ya.size), int(ya.sum())
    enough = n_rows >= cfg.min_rows and n_frauds >= cfg.min_frauds
    out: dict[str, Any] = {
        "status": "ok" if enough else "insufficient data",
        "n_rows": n_rows,
        "n_frauds": n_frauds,
        "n_unlabelled": n_unlabelled,
        "fraud_rate": n_frauds / n_rows if n_rows else math.nan,
        "average_precision": ev.average_precision(ya, pa) if n_rows else math.nan,
        "roc_auc": ev.roc_auc(ya, pa) if n_rows else math.nan,
        "ece": calibration.ece(ya, pa),
        "threshold": float(threshold),
    }
    conf = ev.confusion_at(ya, pa, threshold)
    out.update(
        precision=conf["precision"] if conf["tp"] + conf["fp"] else math.nan,
        recall=conf["recall"] if n_frauds else math.nan,
        alerts=conf["tp"] + conf["fp"],
        tp=conf["tp"],
        fp=conf["fp"],
        fn=conf["fn"],
        tn=conf["tn"],
    )
    if not enough:
        out["status_detail"] = (
            f"{n_rows:,} labelled rows (minimum {cfg.min_rows:,}), "
            f"{n_frauds:,} frauds (minimum {cfg.min_frauds:,})"
        )
    if frame is not None and CUSTOMER in frame.columns and TX_TIME in frame.columns:
        if frame.height != labelled.size:
            raise ValueError(f"frame has {frame.height} rows, labels and scores {labelled.size}")
        cards = frame.filter(pl.Series(labelled)).select(CUSTOMER, TX_TIME)
        cards = cards.with_columns(pl.Series("_score", pa), pl.Series("_label", ya))
        out[ev.cp_at_k_name(k)], _ = ev.card_precision_at_k(cards, k, score="_score", label="_label")
    return out


def performance_rows(perf: Mapping[str, Any] | None, reference: Mapping[str, Any]) -> pl.DataFrame:
    """performance_metrics.csv: each metric on current data beside the champion's held-out value."""
    names = ["average_precision", "roc_auc", "recall", "precision", "f1", "recall_at_1pct_fpr"]
    names += [k for k in reference if k.startswith("card_precision_at_")]
    rows = []
    for name in names:
        cur = num((perf or {}).get(name))
        ref = num(reference.get(name))
        rows.append({"metric": name, "reference": ref, "current": cur, "change": cur - ref})
    status = (perf or {}).get("status", NO_LABELS)
    return pl.DataFrame(rows).with_columns(pl.lit(status).alias("status"))
