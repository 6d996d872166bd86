"""Monitoring's computational core: statistics, drift rules, decision, CSV, HTML."""

from __future__ import annotations

import csv
import io
import math
import re

import markupsafe
import numpy as np
import polars as pl
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score

from fraudops.config import MonitorConfig
from fraudops.modeling.evaluate import card_precision_at_k
from fraudops.monitoring.decision import decide, decision_csv
from fraudops.monitoring.performance import performance
from fraudops.monitoring.report import html_report
from fraudops.monitoring.stats import DRIFT_COLUMNS, PSI_EPSILON, column_drift, drift_table, score_drift

EPS = PSI_EPSILON


def psi(ref, cur, bins: int = 10) -> float:
    return column_drift(ref, cur, bins).psi


def ks(ref, cur) -> tuple[float, float]:
    c = column_drift(ref, cur)
    return c.ks_statistic, c.ks_pvalue


def wasserstein_norm(ref, cur) -> float:
    return column_drift(ref, cur).wasserstein


# ----------------------------------------------------------------------------------------------- PSI


def test_psi_hand_computed():
    # reference 1..8, bins=4: quantile edges (linear) at positions q * (8 - 1):
    #   q=.25 -> 1.75 -> 2 + .75 * (3 - 2) = 2.75;  q=.5 -> 3.5 -> 4.5;  q=.75 -> 5.25 -> 6.25
    # bins (-inf, 2.75], (2.75, 4.5], (4.5, 6.25], (6.25, +inf) hold {1,2} {3,4} {5,6} {7,8}: r = .25 each
    # current [1,1,1,1,3,5,7,9] -> {1,1,1,1} {3} {5} {7,9}: c = .5, .125, .125, .25; missing bin 0 and 0
    # PSI = (.5-.25) ln(.5/.25) + 2 * (.125-.25) ln(.125/.25) + 0
    #     = .25 ln 2 + .25 ln 2 = .5 ln 2 = 0.34657...
    ref = np.arange(1, 9, dtype=float)
    cur = np.array([1, 1, 1, 1, 3, 5, 7, 9], dtype=float)
    assert psi(ref, cur, bins=4) == pytest.approx(0.5 * math.log(2), rel=1e-12)
    assert psi(ref, ref, bins=4) == 0.0


@pytest.mark.parametrize("value", [100.0, -100.0])
def test_psi_counts_values_outside_the_reference_range(value):
    # The seed system binned between the reference min and max and dropped the rest: a current sample
    # entirely above (or below) the reference gave PSI 0. Here all 8 values land in the open last
    # (first) bin: c = 1 there, eps elsewhere; r = .25 in each of the 4 bins.
    # PSI = (1 - .25) ln(1/.25) + 3 * (eps - .25) ln(eps/.25)
    #     = .75 * 1.386294 + 3 * .2499 * 7.824046 = 1.039721 + 5.865688 = 6.905409
    ref = np.arange(1, 9, dtype=float)
    cur = np.full(8, value)
    expected = 0.75 * math.log(4) + 3 * (EPS - 0.25) * math.log(EPS / 0.25)
    assert expected == pytest.approx(6.905409, abs=1e-6)
    assert psi(ref, cur, bins=4) == pytest.approx(expected, rel=1e-12)
    # drift_table flags it
    cfg = MonitorConfig()
    table = drift_table(pl.DataFrame({"x": ref}), pl.DataFrame({"x": cur}), ["x"], cfg)
    assert table["drift_detected"][0]
    assert "psi" in table["reason"][0]


def test_psi_constant_reference():
    # constant reference c: bins "< c", "== c", "> c" (+ missing): a shift either way is drift
    ref = np.full(100, 5.0)
    assert psi(ref, np.full(50, 5.0)) == 0.0
    # all current in one empty bin: (1 - eps) ln(1/eps) + (eps - 1) ln(eps/1) = 2 (1 - eps) ln(1e4)
    expected = 2 * (1 - EPS) * math.log(1 / EPS)
    assert psi(ref, np.full(50, 4.0)) == pytest.approx(expected)
    assert psi(ref, np.full(50, 6.0)) == pytest.approx(expected)


def test_psi_missing_values_have_their_own_bin():
    # reference 1..8 (no missing), current [1..6, NaN, NaN]: bins hold 2, 2, 2, 0 -> .25 .25 .25 eps,
    # missing .25 (reference eps). PSI = (eps - .25) ln(eps/.25) + (.25 - eps) ln(.25/eps)
    #                                 = 2 (.25 - eps) ln(.25/eps) = 3.91043
    ref = np.arange(1, 9, dtype=float)
    cur = np.array([1, 2, 3, 4, 5, 6, np.nan, np.nan])
    expected = 2 * (0.25 - EPS) * math.log(0.25 / EPS)
    assert psi(ref, cur, bins=4) == pytest.approx(expected)
    # polars nulls and infinities count as missing too
    cur_pl = pl.Series("x", [1.0, 2, 3, 4, 5, 6, None, float("inf")])
    assert psi(pl.Series("x", ref), cur_pl, bins=4) == pytest.approx(expected)
    # the same share missing on both sides is no drift
    assert psi(np.append(ref, np.nan), np.append(ref, np.nan), bins=4) == 0.0


def test_psi_tied_quantiles_are_deduplicated():
    # 70 % zeros: the lower quantile edges all equal 0 and collapse into one edge
    rng = np.random.default_rng(0)
    ref = np.where(rng.random(10_000) < 0.7, 0.0, rng.exponential(1.0, 10_000))
    cur = np.where(rng.random(10_000) < 0.7, 0.0, rng.exponential(1.0, 10_000))
    value = psi(ref, cur)
    assert 0 <= value < 0.01


# ---------------------------------------------------------------------------------- KS, Wasserstein


@pytest.mark.parametrize(
    ("n_ref", "n_cur", "shift", "decimals"),
    [(50, 80, 0.0, 1), (1000, 1000, 0.1, 2), (3000, 7000, 0.05, None), (9000, 9000, 0.0, 0)],
)
def test_ks_matches_scipy(n_ref, n_cur, shift, decimals):
    rng = np.random.default_rng(n_ref + n_cur)
    ref = rng.normal(0, 1, n_ref)
    cur = rng.normal(shift, 1.2, n_cur)
    if decimals is not None:  # ties within and across samples
        ref, cur = np.round(ref, decimals), np.round(cur, decimals)
    d, p = ks(ref, cur)
    expected = stats.ks_2samp(ref, cur, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_ks_large_sample_pvalue_close_to_scipy():
    # above KS_EXACT_N effective rows, SciPy's slow exact tail is approximated (within 0.5 % for p > 1e-10)
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(0, 1, 40_000), rng.normal(0.03, 1, 40_000)
    d, p = ks(ref, cur)
    expected = stats.ks_2samp(ref, cur, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert 1e-10 < expected.pvalue < 0.05
    assert p == pytest.approx(expected.pvalue, rel=5e-3)


def test_ks_ignores_missing_values():
    ref = np.array([1.0, 2, 3, np.nan, 4])
    cur = np.array([2.5, np.nan, 3.5, 5])
    d, p = ks(ref, cur)
    expected = stats.ks_2samp([1.0, 2, 3, 4], [2.5, 3.5, 5], method="asymp")
    assert (d, p) == pytest.approx((expected.statistic, expected.pvalue))
    assert all(math.isnan(v) for v in ks(ref, [np.nan, np.nan]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wasserstein_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    ref = rng.lognormal(1, 1, 500 + seed * 300)
    cur = np.round(rng.lognormal(1.1, 1, 700), 1)
    expected = stats.wasserstein_distance(ref, cur) / np.std(ref)
    assert wasserstein_norm(ref, cur) == pytest.approx(expected, rel=1e-10)


def test_wasserstein_constant_reference_fallbacks():
    # std 0: divide by the mean absolute value (here 4) ...
    assert wasserstein_norm(np.full(10, 4.0), np.full(10, 5.0)) == pytest.approx(1 / 4)
    # ... or by 1 when that is 0 too
    assert wasserstein_norm(np.zeros(10), np.full(10, 0.5)) == pytest.approx(0.5)


def test_column_drift_shares_one_computation():
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(0, 1, 2000), rng.normal(0.2, 1, 1500)
    c = column_drift(ref, cur, bins=10)
    assert (c.ks_statistic, c.ks_pvalue) == pytest.approx(ks(ref, cur))
    assert c.psi == pytest.approx(psi(ref, cur))
    assert c.wasserstein == pytest.approx(wasserstein_norm(ref, cur))
    assert (c.n_ref, c.n_cur, c.missing_ref, c.missing_cur) == (2000, 1500, 0, 0)


# ----------------------------------------------------------------------------------------- drift table


def _frames(n: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    ref = pl.DataFrame(
        {
            "same": rng.normal(0, 1, n),
            "small_shift": rng.normal(0, 1, n),
            "big_shift": rng.normal(0, 1, n),
            "counts": rng.poisson(3, n),  # an integer column
        }
    )
    cur = pl.DataFrame(
        {
            "same": rng.normal(0, 1, n),
            "small_shift": rng.normal(0.06, 1, n),  # KS p tiny at n = 20 000, effect sizes < thresholds
            "big_shift": rng.normal(1.0, 1, n),
            "counts": rng.poisson(3, n),
        }
    )
    return ref, cur


def test_drift_table_rules_and_large_sample_pvalue_rule():
    ref, cur = _frames(20_000)
    features = ["same", "small_shift", "big_shift", "counts"]
    cfg = MonitorConfig(large_sample=100_000)  # 100 000 > 20 000 rows: the KS p-value counts
    table = drift_table(ref, cur, features, cfg)
    assert table.columns == list(DRIFT_COLUMNS)
    assert table["feature"].to_list() == features
    assert table["drift_detected"].dtype == pl.Boolean
    rows = {r["feature"]: r for r in table.iter_rows(named=True)}
    assert not rows["same"]["drift_detected"] and rows["same"]["reason"] == ""
    small = rows["small_shift"]
    assert small["psi"] < cfg.psi_threshold and small["wasserstein"] < cfg.wasserstein_threshold
    assert small["ks_pvalue"] < cfg.ks_pvalue
    assert small["drift_detected"] and small["reason"].startswith("ks p-value")
    big = rows["big_shift"]
    assert big["drift_detected"] and "psi" in big["reason"] and "wasserstein" in big["reason"]
    assert rows["counts"]["n_ref"] == 20_000

    # with large_sample below the row count the p-value no longer decides: the trivial shift is not drift
    big_sample = cfg.model_copy(update={"large_sample": 10_000})
    table2 = drift_table(ref, cur, features, big_sample)
    rows2 = {r["feature"]: r for r in table2.iter_rows(named=True)}
    assert not rows2["small_shift"]["drift_detected"]
    assert rows2["small_shift"]["ks_pvalue"] == pytest.approx(small["ks_pvalue"])
    assert rows2["big_shift"]["drift_detected"] and "ks" not in rows2["big_shift"]["reason"]


def test_drift_table_threads_give_the_same_result():
    ref, cur = _frames(3000, seed=5)
    features = list(ref.columns)
    one = drift_table(ref, cur, features, MonitorConfig(), n_jobs=1)
    two = drift_table(ref, cur, features, MonitorConfig(), n_jobs=2)
    assert one.equals(two)


def test_drift_table_missing_values_and_errors():
    ref = pl.DataFrame({"x": [1.0, 2.0, None, 4.0, float("nan")], "s": ["a"] * 5})
    cur = pl.DataFrame({"x": [None, None, None, 1.0, 2.0], "s": ["a"] * 5})
    row = drift_table(ref, cur, ["x"], MonitorConfig()).row(0, named=True)
    assert (row["n_ref"], row["missing_ref"], row["n_cur"], row["missing_cur"]) == (3, 2, 2, 3)
    with pytest.raises(ValueError, match="lacks feature"):
        drift_table(ref, cur, ["nope"], MonitorConfig())
    with pytest.raises(TypeError, match="not numeric"):
        drift_table(ref, cur, ["s"], MonitorConfig())
    # a column missing entirely in current: KS / Wasserstein undefined, PSI sees the missing bin
    empty = pl.DataFrame({"x": pl.Series([None] * 5, dtype=pl.Float64)})
    row = drift_table(ref, empty, ["x"], MonitorConfig()).row(0, named=True)
    assert math.isnan(row["ks_statistic"]) and math.isnan(row["wasserstein"])
    assert row["drift_detected"] and "psi" in row["reason"]


def test_score_drift():
    rng = np.random.default_rng(0)
    cfg = MonitorConfig()
    ref = rng.beta(0.5, 20, 5000)
    same = score_drift(ref, rng.beta(0.5, 20, 5000), cfg)
    assert not same["drifted"] and same["psi"] < 0.05
    moved = score_drift(ref, rng.beta(2, 5, 5000), cfg)
    assert moved["drifted"] and moved["psi"] >= cfg.score_psi_threshold
    assert set(moved) >= {"psi", "ks_statistic", "ks_pvalue", "wasserstein", "drifted"}


# ---------------------------------------------------------------------------------------- performance


def _labelled(n: int, frauds: int, seed: int = 0, quality: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.zeros(n)
    y[rng.choice(n, frauds, replace=False)] = 1
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + quality * y - 3)))
    return y, p


def test_performance_ok_and_insufficient():
    cfg = MonitorConfig()
    y, p = _labelled(5000, 100)
    perf = performance(y, p, 0.5, cfg=cfg)
    assert perf["status"] == "ok"
    assert perf["n_rows"] == 5000 and perf["n_frauds"] == 100
    assert perf["average_precision"] == pytest.approx(average_precision_score(y, p))
    assert 0 <= perf["recall"] <= 1 and 0 <= perf["precision"] <= 1
    few = performance(y[:500], p[:500], 0.5, cfg=cfg)
    assert few["status"] == "insufficient data" and "500 labelled rows" in few["status_detail"]
    y2, p2 = _labelled(5000, 10)
    assert performance(y2, p2, 0.5, cfg=cfg)["status"] == "insufficient data"
    # unlabelled rows (NaN) are left out
    y3 = y.copy()
    y3[:100] = np.nan
    perf3 = performance(y3, p, 0.5, cfg=cfg)
    assert perf3["n_rows"] == 4900 and perf3["n_unlabelled"] == 100


# ------------------------------------------------------------------------------------------- decision

REF_METRICS = {"average_precision": 0.60, "recall": 0.50}


def _drift(n_features: int, n_drifted: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "feature": [f"f{i}" for i in range(n_features)],
            "psi": [0.5 if i < n_drifted else 0.01 for i in range(n_features)],
            "drift_detected": [i < n_drifted for i in range(n_features)],
        }
    )


def _perf(ap: float, recall: float, status: str = "ok") -> dict:
    return {"status": status, "average_precision": ap, "recall": recall, "n_rows": 50_000, "n_frauds": 300}


QUIET_SCORE = {"psi": 0.02, "drifted": False}


def test_decide_no_when_nothing_fires():
    d = decide(_drift(10, 1), QUIET_SCORE, _perf(0.58, 0.49), REF_METRICS, MonitorConfig())
    assert d.retraining_required == "NO" and d.reasons == []
    assert d.drift_share == pytest.approx(0.1)


def test_decide_performance_decay_ap():
    # AP 0.50 < 0.60 x (1 - 0.1) = 0.54
    d = decide(_drift(10, 0), QUIET_SCORE, _perf(0.50, 0.50), REF_METRICS, MonitorConfig())
    assert d.retraining_required == "YES"
    assert len(d.reasons) == 1
    assert "average precision 0.5000 < reference 0.6000" in d.reasons[0] and "0.5400" in d.reasons[0]


def test_decide_performance_decay_recall():
    # recall 0.40 < 0.50 x (1 - 0.1) = 0.45
    d = decide(_drift(10, 0), QUIET_SCORE, _perf(0.60, 0.40), REF_METRICS, MonitorConfig())
    assert d.retraining_required == "YES"
    assert len(d.reasons) == 1 and d.reasons[0].startswith("performance decay: recall 0.4000")


def test_decide_feature_drift_share():
    d = decide(_drift(10, 3), QUIET_SCORE, _perf(0.6, 0.5), REF_METRICS, MonitorConfig())
    assert d.retraining_required == "YES"
    assert d.reasons == ["feature drift: 3 of 10 features drifted (30% >= 30%): f0, f1, f2"]
    assert d.drifted_features == ["f0", "f1", "f2"]


def test_decide_score_drift():
    d = decide(_drift(10, 0), {"psi": 0.31}, _perf(0.6, 0.5), REF_METRICS, MonitorConfig())
    assert d.retraining_required == "YES"
    assert d.reasons == ["score drift: PSI of the model's scores 0.310 >= 0.25"]


def test_decide_lists_every_reason():
    d = decide(_drift(4, 4), {"psi": 1.0}, _perf(0.1, 0.1), REF_METRICS, MonitorConfig())
    assert len(d.reasons) == 4


def test_decide_better_than_reference_is_no():
    # the seed retrained when current performance was BETTER than the reference: never here
    d = decide(_drift(10, 0), QUIET_SCORE, _perf(0.95, 0.90), REF_METRICS, MonitorConfig())
    assert d.retraining_required == "NO"
    assert any("better than the reference" in n for n in d.notes)


def test_decide_insufficient_data_ignores_performance():
    perf = _perf(0.01, 0.0, status="insufficient data")
    d = decide(_drift(10, 0), QUIET_SCORE, perf, REF_METRICS, MonitorConfig())
    assert d.retraining_required == "NO"
    assert d.performance_status == "insufficient data"
    assert any("insufficient data" in n for n in d.notes)
    # no labelled data at all
    d = decide(_drift(10, 0), QUIET_SCORE, None, REF_METRICS, MonitorConfig())
    assert d.retraining_required == "NO"


def test_decide_with_real_performance_dict():
    cfg = MonitorConfig()
    y, p = _labelled(20_000, 400, quality=0.5)  # a weak model
    perf = performance(y, p, 0.3, cfg=cfg)
    d = decide(_drift(5, 0), QUIET_SCORE, perf, {"average_precision": 0.9, "recall": 0.9}, cfg)
    assert d.retraining_required == "YES"
    assert all(r.startswith("performance decay") for r in d.reasons) and len(d.reasons) == 2


def test_decision_csv_first_column_is_the_decision():
    d = decide(_drift(10, 5), {"psi": 0.4}, _perf(0.6, 0.5), REF_METRICS, MonitorConfig())
    rows = list(csv.reader(io.StringIO(decision_csv(d))))
    assert len(rows) == 2
    assert rows[0][0] == "retraining_required" and rows[0][1] == "reasons"
    assert rows[1][0] == "YES"  # what the seed's retraining Lambda reads
    assert rows[1][1] == "; ".join(d.reasons)
    record = dict(zip(rows[0], rows[1], strict=True))
    assert float(record["drift_share"]) == pytest.approx(0.5)
    assert float(record["score_psi"]) == pytest.approx(0.4)
    no = decide(_drift(10, 0), QUIET_SCORE, None, REF_METRICS, MonitorConfig())
    assert list(csv.reader(io.StringIO(decision_csv(no))))[1][0] == "NO"


# -------------------------------------------------------------------------------------------- report


def test_html_report_is_self_contained_and_leads_with_the_decision():
    ref, cur = _frames(3000, seed=2)
    features = list(ref.columns)
    cfg = MonitorConfig()
    table = drift_table(ref, cur, features, cfg)
    y, p = _labelled(3000, 60)
    ref_scores = np.random.default_rng(1).beta(0.5, 20, 3000)
    perf = performance(y, p, 0.5, cfg=cfg)
    decision = decide(table, score_drift(ref_scores, p, cfg), perf, REF_METRICS, cfg)
    page = html_report(decision, table, ref, cur, features, ref_scores, p, perf, y)

    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    for src in re.findall(r'src="([^"]*)"', page):
        assert src.startswith("data:image/png;base64,")
    verdict = f"Retraining required: {decision.retraining_required}"
    assert verdict in page
    assert page.index(verdict) < page.index("Per-feature drift")  # the decision comes first
    for reason in decision.reasons:
        assert str(markupsafe.escape(reason)) in page
    for f in features:
        assert f'aria-label="{f}"' in page  # one histogram per feature
    assert "Precision-recall" in page and "Model scores" in page


def test_html_report_without_scores_or_labels():
    ref, cur = _frames(500)
    table = drift_table(ref, cur, ["same"], MonitorConfig())
    decision = decide(table, None, None, {}, MonitorConfig())
    page = html_report(decision, table, ref, cur, ["same"], None, None, None)
    assert "Retraining required: NO" in page
    assert "Model scores" not in page and "Precision-recall" not in page


def test_performance_card_precision_with_a_frame():
    import datetime as dt

    y, p = _labelled(2000, 40, seed=4)
    rng = np.random.default_rng(4)
    start = dt.datetime(2024, 1, 1)
    frame = pl.DataFrame(
        {
            "CUSTOMER_ID": rng.integers(0, 300, 2000),
            "TX_DATETIME": [start + dt.timedelta(hours=int(h)) for h in rng.integers(0, 24 * 5, 2000)],
        }
    )
    perf = performance(y, p, 0.5, frame, cfg=MonitorConfig(min_rows=10, min_frauds=5), k=10)
    expected, _ = card_precision_at_k(
        frame.with_columns(pl.Series("score", p), pl.Series("TX_FRAUD", y.astype(np.int8))), 10
    )
    assert perf["card_precision_at_10"] == pytest.approx(expected)


def test_pandas_input_with_missing_values():
    import pandas as pd

    ref = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], dtype="Float64")
    cur = pd.Series([1, 2, 3, 4, 5, 6, None, None], dtype="Int64")
    assert psi(ref, cur, bins=4) == pytest.approx(2 * (0.25 - EPS) * math.log(0.25 / EPS))


def test_signed_zeros_negative_nan_and_infinities():
    # sorting runs on integer keys of the float bits: -0.0 and +0.0 must still tie, a NaN with the sign
    # bit set and +-inf must count as missing
    neg_nan = -np.abs(np.float64(np.nan))
    assert np.signbit(neg_nan)
    ref = np.array([-0.0, 0.0, 1.0, -0.0, 2.0, 0.0, 3.0, neg_nan, -np.inf])
    cur = np.array([0.0, -0.0, 0.0, 1.5, 2.5, np.inf, np.nan])
    fin_ref, fin_cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    c = column_drift(ref, cur)
    assert (c.n_ref, c.missing_ref, c.n_cur, c.missing_cur) == (7, 2, 5, 2)
    expected = stats.ks_2samp(fin_ref, fin_cur, method="asymp")
    assert (c.ks_statistic, c.ks_pvalue) == pytest.approx((expected.statistic, expected.pvalue))
    w = stats.wasserstein_distance(fin_ref, fin_cur) / np.std(fin_ref)
    assert c.wasserstein == pytest.approx(w)
