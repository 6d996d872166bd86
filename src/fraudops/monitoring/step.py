"""The monitor step: data the champion never saw vs its reference, and a retraining decision.

What is judged: the rows of ``monitoring_inputs/current_data/`` (labelled or not) and the production rows
(``monitor.production``: ``prod_inputs/``, the batches to score, unlabelled, as SageMaker Model Monitor
compares captured traffic with its baseline; ``capture``, the endpoint's captured requests in
``prod_outputs/capture/`` with their features as the model saw them; or ``both``) that are newer than the
champion's reference window — for transactions, later than the window's last timestamp (a captured row's
time is when it was scored); for the features kind, not among the rows the champion was trained,
validated or tested on. A row in both current and production data counts once (the labelled one).
Labelled current data also feeds retraining, so without this rule a retrained champion would be judged on
its own training rows. Performance uses the labelled rows judged, drift all of them. With fewer than
``monitor.min_rows`` rows the decision is NO, "insufficient data", with that reason.

Everything is computed before anything is written, so bad input leaves the previous outputs as they were;
each output file is replaced atomically, the decision CSV last (the trigger acts on it).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import polars as pl

from fraudops import compute, features
from fraudops.config import Settings
from fraudops.context import StepContext, StepResult
from fraudops.data.capture import CAPTURED_AT, load_captured
from fraudops.data.loading import load_table, table_files
from fraudops.data.schema import CUSTOMER, LABEL, ROLES, ROW_ERROR, TX_ID, TX_TIME
from fraudops.errors import DataValidationError, Problem
from fraudops.features import table
from fraudops.modeling import evaluate
from fraudops.modeling.model import FraudModel
from fraudops.modeling.registry import champion
from fraudops.monitoring import estimate
from fraudops.monitoring import history as monitoring_history
from fraudops.monitoring.decision import Decision, Span, decide, decision_csv, insufficient
from fraudops.monitoring.performance import num, performance, performance_rows
from fraudops.monitoring.report import html_report
from fraudops.monitoring.stats import drift_table, score_drift
from fraudops.promotion import journal, reference
from fraudops.tracking.client import json_safe, step_run
from fraudops.workspace import layout
from fraudops.workspace.storage import Storage


class MonitorResult(StepResult, Decision):
    """The decision with its reasons, the data judged, and where the report and decision files are."""

    report: str
    decision_file: str


def load_current(storage: Storage, settings: Settings, model: FraudModel) -> pl.DataFrame:
    """Every file of monitoring_inputs/current_data/, validated; extra or missing columns are errors."""
    expected = {*ROLES.values(), ROW_ERROR}
    kind_features = settings.data.kind == "features"
    if kind_features:
        expected |= set(model.feature_names)
    frames, problems = [], []
    for rel in table_files(storage, layout.CURRENT):
        v = load_table(
            storage, rel, settings.data, feature_columns=model.feature_names if kind_features else None
        )
        problems += v.problems
        if not v.problems:
            problems += [
                Problem(storage.uri(rel), c, "unexpected column (not in the champion's input schema)")
                for c in v.frame.columns
                if c not in expected
            ]
        frames.append(v.valid)
    if problems:
        raise DataValidationError(problems)
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def load_production(storage: Storage, settings: Settings, model: FraudModel) -> tuple[pl.DataFrame, int]:
    """The valid rows of the files to score in prod_inputs/ (no labels), and how many rows were invalid
    (batch scoring rejects those; here they are only counted)."""
    kind_features = settings.data.kind == "features"
    frames, invalid = [], 0
    for rel in table_files(storage, layout.PROD_INPUTS):
        v = load_table(
            storage, rel, settings.data, feature_columns=model.feature_names if kind_features else None
        )
        if any(p.n_rows == 0 for p in v.problems):  # a missing column or an empty file: nothing usable
            invalid += v.frame.height
            continue
        invalid += v.rejects.height
        valid = v.valid.drop(LABEL, strict=False)
        keep = [
            c for c in valid.columns if c in ROLES.values() or (kind_features and c in model.feature_names)
        ]
        frames.append(valid.select(keep))
    return (pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()), invalid


def _combine(current: pl.DataFrame, production: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """Current and production rows, a row in both once (the current, possibly labelled, one)."""
    if production.height == 0:
        return current
    if current.height == 0:
        return production.unique(key, keep="first", maintain_order=True)
    both = pl.concat([current, production], how="diagonal_relaxed")
    return both.unique(key, keep="first", maintain_order=True)


def with_captured(rows: pl.DataFrame, captured: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """``rows`` plus the endpoint's captured rows (their features as the model saw them; ``TX_DATETIME`` =
    when they were scored). A captured transaction also in ``rows`` counts once, as the row of ``rows``
    (possibly labelled); rows captured from a model with other inputs are left out."""
    if captured.height == 0 or not set(names) <= set(captured.columns):
        return rows
    captured = captured.drop_nulls(names)
    if TX_ID in rows.columns and rows.height:
        known = rows[TX_ID].cast(pl.String).implode()
        captured = captured.filter(pl.col(TX_ID).is_null() | ~pl.col(TX_ID).is_in(known))
    when = pl.col(CAPTURED_AT).dt.replace_time_zone(None)
    dtype = rows.schema.get(TX_TIME)
    extra = captured.select(
        *names,
        (when.cast(dtype) if isinstance(dtype, pl.Datetime) else when).alias(TX_TIME),
        *([pl.col(TX_ID).cast(rows.schema[TX_ID])] if TX_ID in rows.columns else []),
    )
    return pl.concat([rows, extra], how="diagonal_relaxed") if rows.height else extra


def _newer(
    rows: pl.DataFrame, ref: reference.Reference, seen: pl.Series | None, names: list[str]
) -> pl.DataFrame:
    """The rows the champion never saw (see the module docstring)."""
    if seen is not None:
        hashes = reference.row_hashes(rows, names)
        return rows.filter(~hashes.is_in(seen.implode()))
    if ref.reference_end is None or TX_TIME not in rows.columns:
        return rows
    end = dt.datetime.fromisoformat(ref.reference_end)
    dtype = rows.schema[TX_TIME]
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None and end.tzinfo is not None:
        end = end.astimezone(dt.UTC).replace(tzinfo=None)
    return rows.filter(pl.col(TX_TIME) > pl.lit(end).cast(dtype))


def _span(judged: pl.DataFrame, ref: reference.Reference) -> Span:
    times = judged[TX_TIME] if TX_TIME in judged.columns and judged.height else None
    labelled = int(judged[LABEL].is_not_null().sum()) if LABEL in judged.columns else 0
    return Span(
        window_start=None if times is None else str(times.min()),
        window_end=None if times is None else str(times.max()),
        n_rows=judged.height,
        n_labelled=labelled,
        reference_start=ref.reference_start,
        reference_end=ref.reference_end,
        reference_rows=ref.reference_rows,
    )


def _estimates(
    judged: pl.DataFrame,
    scores: np.ndarray,
    y: np.ndarray | None,
    ref_scores: np.ndarray,
    threshold: float,
    cfg: Any,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """CBPE on the judged rows, on the reference window (like with like for the decision) and per day."""
    kw = {"samples": cfg.estimate_samples, "band": cfg.estimate_band}
    current = estimate.estimate(scores, threshold, **kw)
    on_reference = estimate.estimate(ref_scores, threshold, **kw)
    days: list[dict[str, Any]] = []
    if TX_TIME in judged.columns and isinstance(judged.schema[TX_TIME], pl.Datetime | pl.Date):
        labels = y if y is not None else None
        day_names = judged[TX_TIME].dt.date().cast(pl.String).to_list()
        days = estimate.daily(day_names, scores, labels, threshold, **kw)
    return current, on_reference, days


def _judge(
    ctx: StepContext, model: FraudModel, ref: reference.Reference, ref_data: pl.DataFrame, version: int
) -> tuple[Decision, dict[str, Any], pl.DataFrame, pl.DataFrame | None, np.ndarray | None, np.ndarray | None]:
    """(decision, current metrics, drift table, judged rows, their scores, their labels)."""
    settings, storage, cfg = ctx.settings, ctx.storage, ctx.settings.monitor
    names = model.feature_names
    current = load_current(storage, settings, model)
    production, invalid = (
        load_production(storage, settings, model) if cfg.production != "capture" else (pl.DataFrame(), 0)
    )
    transactions = settings.data.kind == "transactions"
    rows = _combine(current, production, [TX_ID] if transactions else names)
    history: pl.DataFrame | None = None  # data/raw/'s rows, or (Dask engine) the frauds among them
    if transactions and rows.height:
        loaded = table.raw_history(storage, settings)  # on the Dask engine, built by the workers
        if isinstance(loaded, table.FeatureTable):
            eng = compute.current()
            assert eng is not None, "a feature table is built by the Dask engine"
            history = loaded.frauds_of([TX_ID, CUSTOMER, TX_TIME]) if loaded.rows else None
            # a worker reads the rows' look-back a group at a time: this process never holds it
            rows = eng.map(
                loaded.features_over, [rows], settings.features, settings.compute.partition_rows, send=True
            )[0]
        else:
            history = loaded if loaded.height else None
            rows = features.features_for(rows, history, settings.features)
    if cfg.production != "prod_inputs":
        rows = with_captured(rows, load_captured(storage), names)
    judged = _newer(rows, ref, reference.seen_rows(storage, version), names)
    span = _span(judged, ref)
    notes = (
        [f"{invalid:,} invalid rows in prod_inputs/ left out (batch scoring rejects them)"] if invalid else []
    )
    if judged.height < cfg.min_rows:
        after = (
            f"after {ref.reference_end}"
            if transactions and ref.reference_end
            else "the champion has not seen"
        )
        why = (
            f"{judged.height:,} current rows {after} (of {rows.height:,} in current_data/ and prod_inputs/), "
            f"fewer than monitor.min_rows={cfg.min_rows:,}"
        )
        decision = insufficient(span, why, len(names), ref.metrics)
        decision.notes += notes
        return decision, {}, pl.DataFrame(), judged, None, None
    scores = model.predict_proba(judged)
    drift = drift_table(ref_data, judged, names, cfg)
    score = score_drift(ref_data[reference.SCORE].to_numpy(), scores, cfg)
    perf = None
    y = None
    if LABEL in judged.columns and judged[LABEL].is_not_null().any():
        y = judged[LABEL].cast(pl.Float64).to_numpy()
        kept = np.arange(judged.height)
        if transactions:
            # as in the champion's test metrics: cards already known to be compromised are left out
            indexed = judged.with_row_index("_row")
            labelled = indexed.filter(pl.col(LABEL).is_not_null())
            known = pl.concat(
                [h for h in (history, current) if h is not None and LABEL in h.columns],
                how="diagonal_relaxed",
            )
            known = known.filter(pl.col(LABEL).is_not_null() & ~pl.col(TX_ID).is_in(judged[TX_ID].implode()))
            judged_rows = evaluate.remove_known_compromised(labelled, known, settings.features.delay_days)
            unlabelled = indexed.filter(pl.col(LABEL).is_null())
            kept = np.sort(np.concatenate([judged_rows["_row"].to_numpy(), unlabelled["_row"].to_numpy()]))
        perf = performance(
            y[kept], scores[kept], model.threshold, judged[kept], cfg=cfg, k=settings.train.top_k
        )
    est, est_ref, days = _estimates(
        judged, scores, y, ref_data[reference.SCORE].to_numpy(), model.threshold, cfg
    )
    decision = decide(drift, score, perf, ref.metrics, cfg, span, est, est_ref)
    decision.notes += notes
    metrics = {
        "performance": perf,
        "score_drift": score,
        "estimated": est,
        "estimated_reference": est_ref,
        "days": days,
    }
    return decision, metrics, drift, judged, scores, y


def monitor_step(ctx: StepContext) -> MonitorResult:
    """Judge the champion on what it never saw; write drift, performance, the report and the decision."""
    import mlflow

    settings, storage = ctx.settings, ctx.storage
    journal.complete_pending(settings)
    storage.remove_leftovers(layout.MONITORING)
    version, model = champion(settings)
    ref, ref_data = reference.read(storage, version)
    decision, current_metrics, drift, judged, scores, y = _judge(ctx, model, ref, ref_data, version)
    decision.model_version = version
    decision.monitored_at = dt.datetime.now(dt.UTC).isoformat()
    days = current_metrics.pop("days", [])
    row = monitoring_history.history_row(
        decision,
        drift,
        current_metrics.get("performance"),
        current_metrics.get("estimated"),
        days,
        ctx.execution_id,
    )
    trend = monitoring_history.add(monitoring_history.read(storage), row)
    report = html_report(
        decision,
        drift,
        ref_data,
        judged if judged is not None else pl.DataFrame(),
        model.feature_names,
        ref_data[reference.SCORE].to_numpy(),
        scores,
        current_metrics.get("performance"),
        y,
        cfg=settings.monitor,
        estimated=current_metrics.get("estimated"),
        days=days,
        trend=trend,
    )
    perf_table = performance_rows(current_metrics.get("performance"), ref.metrics)
    span = Span.model_validate(decision.model_dump(include=set(Span.model_fields)))
    storage.write_frame(layout.DRIFT_CSV, drift)
    storage.write_frame(layout.PERFORMANCE_CSV, perf_table)
    storage.write_json(layout.REFERENCE_METRICS_JSON, {"model_version": version, "metrics": ref.metrics})
    storage.write_json(
        layout.CURRENT_METRICS_JSON,
        json_safe({"model_version": version, **span.model_dump(), **current_metrics}),
    )
    storage.write_text(layout.REPORT_HTML, report)
    storage.write_frame(layout.ESTIMATED_CSV, pl.DataFrame(days) if days else pl.DataFrame({"day": []}))
    monitoring_history.write(storage, trend)
    storage.write_json(layout.DECISION_JSON, decision.model_dump(mode="json"))
    storage.write_text(layout.DECISION_CSV, decision_csv(decision))  # last: the trigger acts on this file
    perf = current_metrics.get("performance") or {}
    with step_run(settings, "monitor", ctx.execution_id, ctx.parent_run_id) as run:
        mlflow.log_params(
            {"model_version": version, "current_rows": decision.n_rows, "n_features": decision.n_features}
        )
        metrics = {
            "drift_share": num(decision.drift_share),
            "n_drifted": decision.n_drifted,
            "score_psi": num(decision.score_psi),
            "rows_judged": decision.n_rows,
            **{f"current_{k}": num(v) for k, v in perf.items() if k != "status"},
            **{k: num(v) for k, v in (current_metrics.get("estimated") or {}).items()},
            "estimated_reference_average_precision": num(decision.estimated_reference_average_precision),
        }
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if math.isfinite(num(v))})
        mlflow.set_tags(
            {
                "retraining_required": decision.retraining_required,
                "reasons": "; ".join(decision.reasons)[:5000],
            }
        )
        mlflow.log_text(report, "report.html")
        mlflow.log_text(drift.write_csv(), "drift_metrics.csv")
        mlflow.log_text(perf_table.write_csv(), "performance_metrics.csv")
        mlflow.log_dict(decision.model_dump(mode="json"), "retrain_decision.json")
        mlflow.log_dict(json_safe(row), "monitoring_history_row.json")
        run_id = str(run.info.run_id)
    return MonitorResult(
        **decision.model_dump(),
        run_id=run_id,
        report=storage.uri(layout.REPORT_HTML),
        decision_file=storage.uri(layout.DECISION_CSV),
    )
