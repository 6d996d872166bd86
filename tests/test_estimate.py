"""Estimated performance (CBPE): bands that hold when the scores are calibrated, fail under concept drift,
and the decision and history that use them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from fraudops.config import MonitorConfig
from fraudops.modeling import evaluate
from fraudops.monitoring import estimate
from fraudops.monitoring import history as monitoring_history
from fraudops.monitoring.decision import Span, decide
from fraudops.workspace.layout import MONITORING_HISTORY
from fraudops.workspace.storage import Storage

THRESHOLD = 0.3


def calibrated_scores(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.beta(0.25, 12.0, n)  # about 2 % fraud, a long tail of high scores


def test_estimate_matches_expectations():
    rng = np.random.default_rng(0)
    p = calibrated_scores(5000, rng)
    est = estimate.estimate(p, THRESHOLD, samples=300)
    flagged = p >= THRESHOLD
    assert est["alerts"] == flagged.sum()
    assert est["expected_frauds"] == pytest.approx(p.sum())
    assert est["est_precision"] == pytest.approx(p[flagged].mean())
    assert est["est_recall"] == pytest.approx(p[flagged].sum() / p.sum(), rel=0.1)
    for m in estimate.METRICS:
        assert est[f"est_{m}_low"] <= est[f"est_{m}"] <= est[f"est_{m}_high"]


def test_sampled_average_precision_is_sklearns():
    rng = np.random.default_rng(1)
    p = np.round(calibrated_scores(400, rng), 2)  # rounding makes ties
    drawn = estimate._sampled_metrics(p, THRESHOLD, samples=1, seed=5)
    y = (np.random.default_rng(5).random((1, p.size)) < np.sort(p)[::-1])[0]
    order = np.argsort(-p, kind="stable")
    assert drawn["average_precision"][0] == pytest.approx(evaluate.average_precision(y, p[order]))


def test_realized_values_fall_in_the_band_without_concept_drift_and_out_of_it_with_it():
    rng = np.random.default_rng(2)
    inside = outside = n = 0
    for _ in range(20):
        p = calibrated_scores(3000, rng)
        y = (rng.random(p.size) < p).astype(np.int8)
        est = estimate.estimate(p, THRESHOLD, samples=200)
        inside += bool(
            estimate.within(
                evaluate.average_precision(y, p),
                est["est_average_precision_low"],
                est["est_average_precision_high"],
            )
        )
        # concept drift: a new fraud pattern the model scores low (frauds among the lowest scores)
        y_new = y.copy()
        y_new[np.argsort(p)[: p.size // 15]] = 1
        outside += not estimate.within(
            evaluate.average_precision(y_new, p),
            est["est_average_precision_low"],
            est["est_average_precision_high"],
        )
        n += 1
    assert inside / n >= 0.85, inside
    assert outside / n >= 0.9, outside


def test_daily_windows_compare_only_fully_labelled_days():
    rng = np.random.default_rng(3)
    p = calibrated_scores(600, rng)
    y = (rng.random(600) < p).astype(np.float64)
    y[400:450] = np.nan  # day 3 partly labelled
    days = ["2018-01-01"] * 200 + ["2018-01-02"] * 200 + ["2018-01-03"] * 200
    rows = estimate.daily(days, p, y, THRESHOLD, samples=50, band=0.95)
    assert [r["day"] for r in rows] == ["2018-01-01", "2018-01-02", "2018-01-03"]
    assert [r["n_labelled"] for r in rows] == [200, 200, 150]
    assert np.isfinite(rows[0]["realized_average_precision"]) and np.isnan(
        rows[2]["realized_average_precision"]
    )
    assert rows[2]["average_precision_within_band"] is None
    assert estimate.coverage(rows)[1] == 2


def _decide(est_ap: float, cfg: MonitorConfig) -> object:
    drift = pl.DataFrame({"feature": ["a"], "drift_detected": [False]})
    est = {
        "est_average_precision": est_ap,
        "est_average_precision_low": est_ap - 0.05,
        "est_average_precision_high": est_ap + 0.05,
        "est_precision": 0.5,
        "est_recall": 0.6,
        "alerts": 12,
    }
    return decide(
        drift,
        {"psi": 0.01},
        None,
        {"average_precision": 0.6, "recall": 0.6},
        cfg,
        Span(),
        est,
        {"est_average_precision": 0.7},
    )


def test_the_decision_fires_on_estimated_decay_and_says_what_is_estimated():
    fired = _decide(0.4, MonitorConfig())
    assert fired.retraining_required == "YES"
    assert "estimated performance decay" in fired.reasons[0] and "0.4000" in fired.reasons[0]
    assert fired.performance_source == "estimated"
    assert {"average_precision", "reference_average_precision"} <= set(fired.estimated_metrics)
    calm = _decide(0.65, MonitorConfig())
    assert calm.retraining_required == "NO"
    off = _decide(0.4, MonitorConfig(estimated_decay=False))
    assert off.retraining_required == "NO" and any("estimated_decay: false" in n for n in off.notes)


def test_history_appends_rows_with_nested_figures(tmp_path):
    storage = Storage(str(tmp_path))
    decision = _decide(0.4, MonitorConfig())
    drift = pl.DataFrame(
        {"feature": ["a", "b"], "psi": [0.1, 0.5], "wasserstein": [0.0, 0.2], "drift_detected": [False, True]}
    )
    day = {
        "day": "2018-01-01",
        "n_rows": 10,
        "n_labelled": 0,
        "alerts": 2,
        "est_average_precision": 0.5,
        "est_average_precision_low": 0.4,
        "est_average_precision_high": 0.6,
        "realized_average_precision": float("nan"),
    }
    for i in range(2):
        row = monitoring_history.history_row(
            decision, drift, None, {"est_average_precision": 0.4 + i, "alerts": 3}, [day], f"e{i}"
        )
        monitoring_history.write(storage, monitoring_history.add(monitoring_history.read(storage), row))
    table = monitoring_history.read(storage)
    assert storage.exists(MONITORING_HISTORY)
    assert table["execution_id"].to_list() == ["e0", "e1"]
    assert table["estimated_average_precision"].to_list() == [0.4, 1.4]
    assert table["features"][1].to_list()[1] == {
        "feature": "b",
        "psi": 0.5,
        "wasserstein": 0.2,
        "drifted": True,
    }
    assert table["days"][0][0]["alerts"] == 2
    assert table["retraining_required"].to_list() == ["YES", "YES"]
