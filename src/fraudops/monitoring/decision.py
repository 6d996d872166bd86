"""The retraining decision: which rules fired, with their numbers, and what could not be assessed.

:func:`decide` answers YES when at least one of these fires, and lists every one that did:

1. performance decay (only when the current labelled data is sufficient, see
   :func:`~fraudops.monitoring.performance.performance`): current AP < reference AP x (1 - ap_tolerance), or
   current recall < reference recall x (1 - recall_tolerance). The reference is the champion's held-out TEST
   metrics from promotion time, never in-sample training metrics. Doing better never fires.
1b. estimated performance decay (``estimated_decay``, only while the labels are insufficient): the AP
   estimated from the calibrated scores (:mod:`~fraudops.monitoring.estimate`) of the current rows <
   the AP estimated the same way on the reference window x (1 - estimated_ap_tolerance). Like with like:
   both are estimates over all rows. ``estimated_metrics`` names the figures that are estimates.
2. feature drift: the share of drifted features (:func:`~fraudops.monitoring.stats.drift_table`) >=
   drift_share.
3. score drift: PSI of the model's scores >= score_psi_threshold.

The data judged is only what the champion never saw (rows newer than its reference window); with none,
or too little of it, the decision is NO with the reason "insufficient data", never an "ok".
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

from fraudops.config import MonitorConfig
from fraudops.monitoring.performance import NO_LABELS, num

INSUFFICIENT = "insufficient data"


class Span(BaseModel):
    """The data judged and the reference it was compared with: time span and row counts."""

    window_start: str | None = None
    window_end: str | None = None
    n_rows: int = 0
    n_labelled: int = 0
    reference_start: str | None = None
    reference_end: str | None = None
    reference_rows: int = 0


class Decision(Span):
    """retrain_decision.json; its first fields are the CSV's columns (first: retraining_required)."""

    model_config = ConfigDict(extra="forbid")

    retraining_required: Literal["YES", "NO"]
    status: Literal["ok", "insufficient data"]
    reasons: list[str]
    notes: list[str]
    drift_share: float | None
    n_drifted: int
    n_features: int
    drifted_features: list[str]
    score_psi: float | None
    performance_status: str
    current_average_precision: float | None
    reference_average_precision: float | None
    current_recall: float | None
    reference_recall: float | None
    estimated_average_precision: float | None = None
    estimated_average_precision_low: float | None = None
    estimated_average_precision_high: float | None = None
    estimated_reference_average_precision: float | None = None
    estimated_precision: float | None = None
    estimated_recall: float | None = None
    alerts: int | None = None
    estimated_metrics: list[str] = []
    performance_source: Literal["realized", "estimated", "none"] = "none"
    model_version: int | None = None
    monitored_at: str | None = None


CSV_COLUMNS = (
    "retraining_required",
    "reasons",
    "status",
    "drift_share",
    "n_drifted",
    "n_features",
    "score_psi",
    "performance_status",
    "current_average_precision",
    "reference_average_precision",
    "current_recall",
    "reference_recall",
    "performance_source",
    "estimated_average_precision",
    "estimated_reference_average_precision",
    "estimated_metrics",
    "window_start",
    "window_end",
    "n_rows",
    "reference_start",
    "reference_end",
    "reference_rows",
    "drifted_features",
)


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def insufficient(span: Span, why: str, n_features: int, reference_metrics: Mapping[str, Any]) -> Decision:
    """NO, because there is nothing (or too little) the champion has not seen: said as the reason."""
    return Decision(
        **span.model_dump(),
        retraining_required="NO",
        status=INSUFFICIENT,
        reasons=[f"{INSUFFICIENT}: {why}"],
        notes=[],
        drift_share=None,
        n_drifted=0,
        n_features=n_features,
        drifted_features=[],
        score_psi=None,
        performance_status=INSUFFICIENT,
        current_average_precision=None,
        reference_average_precision=_finite(num(reference_metrics.get("average_precision"))),
        current_recall=None,
        reference_recall=_finite(num(reference_metrics.get("recall"))),
    )


def decide(
    drift: pl.DataFrame,
    score: Mapping[str, Any] | None,
    perf: Mapping[str, Any] | None,
    reference_metrics: Mapping[str, Any],
    cfg: MonitorConfig,
    span: Span | None = None,
    estimated: Mapping[str, Any] | None = None,
    estimated_reference: Mapping[str, Any] | None = None,
) -> Decision:
    """The decision: ``reasons`` lists every rule that fired with its numbers, ``notes`` what was not
    assessed and why (e.g. too little labelled data)."""
    reasons: list[str] = []
    notes: list[str] = []
    # 1. performance decay, against the champion's held-out test metrics
    ref_ap = num(reference_metrics.get("average_precision"))
    ref_recall = num(reference_metrics.get("recall"))
    cur_ap = num(perf.get("average_precision")) if perf else math.nan
    cur_recall = num(perf.get("recall")) if perf else math.nan
    perf_status = str(perf.get("status", "ok")) if perf else NO_LABELS
    if perf is None:
        notes.append("performance not assessed: no labelled current data newer than the reference")
    elif perf_status != "ok":
        detail = perf.get("status_detail") or f"{perf.get('n_rows')} rows, {perf.get('n_frauds')} frauds"
        notes.append(f"performance not assessed: {perf_status} ({detail})")
    else:
        for name, cur, ref, tol in (
            ("average precision", cur_ap, ref_ap, cfg.ap_tolerance),
            ("recall", cur_recall, ref_recall, cfg.recall_tolerance),
        ):
            if math.isnan(ref) or math.isnan(cur):
                notes.append(f"{name} not compared: current {cur:.4f}, reference {ref:.4f}")
                continue
            floor = ref * (1.0 - tol)
            if cur < floor:
                reasons.append(
                    f"performance decay: {name} {cur:.4f} < reference {ref:.4f} x (1 - {tol:g}) = {floor:.4f}"
                )
            elif cur > ref:
                notes.append(f"{name} {cur:.4f} is better than the reference {ref:.4f} (not a trigger)")
    realized_ok = perf is not None and perf_status == "ok"
    est = _estimates(estimated, estimated_reference)
    if not realized_ok and estimated:
        est_ap, ref_est = est["estimated_average_precision"], est["estimated_reference_average_precision"]
        band = f"band {num(estimated.get('est_average_precision_low')):.4f}-"
        band += f"{num(estimated.get('est_average_precision_high')):.4f}"
        if not cfg.estimated_decay:
            notes.append("estimated performance not used for the decision (monitor.estimated_decay: false)")
        elif est_ap is None or ref_est is None:
            notes.append("estimated average precision not compared: undefined (no alerts or no frauds)")
        else:
            floor = ref_est * (1.0 - cfg.estimated_ap_tolerance)
            if est_ap < floor:
                reasons.append(
                    f"estimated performance decay (CBPE, no labels yet): estimated average precision "
                    f"{est_ap:.4f} ({band}) < estimated on the reference window {ref_est:.4f} x "
                    f"(1 - {cfg.estimated_ap_tolerance:g}) = {floor:.4f}"
                )
            else:
                notes.append(
                    f"estimated average precision {est_ap:.4f} ({band}) vs {ref_est:.4f} estimated on the "
                    "reference window: no decay (estimates assume no concept drift)"
                )
    source = "realized" if realized_ok else ("estimated" if estimated else "none")
    # 2. share of drifted features
    n_features = drift.height
    drifted = drift.filter(pl.col("drift_detected"))["feature"].to_list() if n_features else []
    share = len(drifted) / n_features if n_features else 0.0
    if n_features and share >= cfg.drift_share:
        shown = ", ".join(drifted[:10]) + (f" and {len(drifted) - 10} more" if len(drifted) > 10 else "")
        reasons.append(
            f"feature drift: {len(drifted)} of {n_features} features drifted "
            f"({share:.0%} >= {cfg.drift_share:.0%}): {shown}"
        )
    elif drifted:
        notes.append(f"{len(drifted)} of {n_features} features drifted ({share:.0%} < {cfg.drift_share:.0%})")
    # 3. score distribution
    score_psi = num(score.get("psi")) if score else math.nan
    if score_psi >= cfg.score_psi_threshold:
        reasons.append(
            f"score drift: PSI of the model's scores {score_psi:.3f} >= {cfg.score_psi_threshold:g}"
        )
    elif score is None:
        notes.append("score drift not assessed: no scores")
    return Decision(
        **(span or Span()).model_dump(),
        retraining_required="YES" if reasons else "NO",
        status="ok",
        reasons=reasons,
        notes=notes,
        drift_share=share,
        n_drifted=len(drifted),
        n_features=n_features,
        drifted_features=drifted,
        score_psi=_finite(score_psi),
        performance_status=perf_status,
        current_average_precision=_finite(cur_ap),
        reference_average_precision=_finite(ref_ap),
        current_recall=_finite(cur_recall),
        reference_recall=_finite(ref_recall),
        performance_source=source,
        **est,
    )


def _estimates(estimated: Mapping[str, Any] | None, reference: Mapping[str, Any] | None) -> dict[str, Any]:
    """The decision's estimated figures and which metrics they are (all estimated ones are named)."""
    if not estimated:
        return {}
    out: dict[str, Any] = {
        "estimated_average_precision": _finite(num(estimated.get("est_average_precision"))),
        "estimated_average_precision_low": _finite(num(estimated.get("est_average_precision_low"))),
        "estimated_average_precision_high": _finite(num(estimated.get("est_average_precision_high"))),
        "estimated_reference_average_precision": _finite(num((reference or {}).get("est_average_precision"))),
        "estimated_precision": _finite(num(estimated.get("est_precision"))),
        "estimated_recall": _finite(num(estimated.get("est_recall"))),
        "alerts": int(num(estimated.get("alerts"))),
    }
    out["estimated_metrics"] = [
        k.removeprefix("estimated_") for k, v in out.items() if k.startswith("estimated_") and v is not None
    ]
    return out


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value)
    return str(value)


def decision_csv(decision: Decision) -> str:
    """The decision as a two-line CSV; the first column is ``retraining_required`` (YES / NO), as the
    seed's retraining Lambda reads ``rows[1][0]``; then ``reasons`` joined with "; " and key numbers."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    values = decision.model_dump()
    writer.writerow([_csv_value(values.get(col)) for col in CSV_COLUMNS])
    return buf.getvalue()
