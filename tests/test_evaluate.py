"""Metrics, threshold choice, CP@k and known-card removal against hand-computed values."""

from __future__ import annotations

import datetime as dt
import io
import math
import warnings

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from fraudops.config import ThresholdConfig
from fraudops.modeling.evaluate import (
    METRIC_NAMES,
    average_precision,
    card_precision_at_k,
    choose_threshold,
    confusion_at,
    evaluate,
    expected_cost,
    recall_at_fpr,
    remove_known_compromised,
    roc_auc,
)
from fraudops.modeling.plots import plot_confusion, plot_importances, plot_pr_curve, plot_roc_curve

# --------------------------------------------------------------------------------- ranking metrics

# Distinct scores, already in decreasing order; 3 frauds (ranks 1, 3, 5) and 5 genuine.
P8 = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
Y8 = [1, 0, 1, 0, 1, 0, 0, 0]


def test_average_precision_by_hand():
    # precision at each fraud's rank: 1/1, 2/3, 3/5 -> AP = (1 + 2/3 + 3/5) / 3 = 34/45
    assert average_precision(Y8, P8) == pytest.approx(34 / 45)
    # a tie is one threshold: flagging both rows gives precision 1/2 at recall 1 -> AP = 0.5
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


def test_roc_auc_by_hand():
    # fraud-over-genuine pairs: rank 1 beats 5 genuine, rank 3 beats 4 (ranks 4,6,7,8), rank 5 beats 3
    # -> (5 + 4 + 3) / (3 * 5) = 12/15 = 0.8
    assert roc_auc(Y8, P8) == pytest.approx(0.8)
    # a tied pair counts one half
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


# 4 frauds, 4 genuine; the 0.6 tie holds a fraud and a genuine row.
Y_TIE = [1, 1, 0, 1, 0, 1, 0, 0]
P_TIE = [0.9, 0.8, 0.7, 0.6, 0.6, 0.5, 0.4, 0.1]


def test_recall_at_fpr_with_ties():
    # thresholds (tp, fp): 0.9 (1,0)  0.8 (2,0)  0.7 (2,1)  0.6 (3,2)  0.5 (4,2)  0.4 (4,3)  0.1 (4,4)
    # FPR <= 0.25 allows fp <= 1: best is tp = 2 -> 2/4. Splitting the 0.6 tie would wrongly give 3/4.
    assert recall_at_fpr(Y_TIE, P_TIE, 0.25) == pytest.approx(0.5)
    # FPR <= 0.5 allows fp <= 2: threshold 0.5 -> tp = 4 -> recall 1
    assert recall_at_fpr(Y_TIE, P_TIE, 0.5) == pytest.approx(1.0)
    # FPR 0 exactly: threshold 0.8 -> 2/4
    assert recall_at_fpr(Y_TIE, P_TIE, 0.0) == pytest.approx(0.5)
    # the top score shared by a fraud and a genuine row: only flagging nothing keeps fp = 0
    assert recall_at_fpr([1, 0, 0], [0.9, 0.9, 0.1], 0.4) == 0.0


def test_one_class_gives_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for y in ([0, 0, 0], [1, 1, 1], []):
            p = [0.1, 0.5, 0.9][: len(y)]
            assert math.isnan(roc_auc(y, p))
            assert math.isnan(average_precision(y, p))
            assert math.isnan(recall_at_fpr(y, p))
        m = evaluate([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.9], 0.5, costs=(100.0, 2.0))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["average_precision"])
    assert m["fp"] == 1 and m["precision"] == 0.0 and m["recall"] == 0.0 and m["fraud_rate"] == 0.0


def test_ranking_metrics_match_sklearn_on_random_data():
    rng = np.random.default_rng(7)
    for _ in range(5):
        y = (rng.random(400) < 0.1).astype(int)
        p = np.round(rng.random(400) * 0.6 + 0.4 * y * rng.random(400), 2)  # rounding makes ties
        assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
        fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
        for target in (0.0, 0.01, 0.05, 0.2):
            assert recall_at_fpr(y, p, target) == pytest.approx(tpr[fpr <= target].max(), abs=1e-12)


# ----------------------------------------------------------------------------------- at a threshold

Y_C = [1, 1, 0, 1, 0, 0, 1, 0]
P_C = [0.9, 0.6, 0.6, 0.3, 0.2, 0.7, 0.5, 0.1]


def test_confusion_at_by_hand():
    # p >= 0.5 flags rows 0,1,2,5,6 (0.5 itself is flagged): frauds 0,1,6 -> tp 3; genuine 2,5 -> fp 2;
    # fraud 3 missed -> fn 1; genuine 4,7 -> tn 2
    c = confusion_at(Y_C, P_C, 0.5)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (3, 2, 2, 1)
    assert c["precision"] == pytest.approx(3 / 5)  # tp / (tp + fp)
    assert c["recall"] == pytest.approx(3 / 4)  # tp / (tp + fn)
    assert c["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))  # 2tp / (2tp + fp + fn) = 6/9
    # nothing flagged: precision, recall and F1 are 0, not NaN
    c = confusion_at(Y_C, P_C, 0.95)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (0, 0, 4, 4)
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)


def test_expected_cost_by_hand():
    # same rule as above: fn 1 x 100 + fp 2 x 2 = 104; per transaction 104 / 8 = 13
    total, per_tx = expected_cost(Y_C, P_C, 0.5, 100.0, 2.0)
    assert total == pytest.approx(104.0)
    assert per_tx == pytest.approx(13.0)


# -------------------------------------------------------------------------------- threshold choice

# 4 frauds, 6 genuine; the 0.7 tie holds a fraud and a genuine row.
P_V = [0.95, 0.9, 0.8, 0.7, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
Y_V = [1, 1, 0, 1, 0, 0, 1, 0, 0, 0]
# threshold:   0.95 0.9 0.8 0.7 0.6 0.5 0.4 0.3 0.2
# tp:            1   2   2   3   3   4   4   4   4
# fp:            0   0   1   2   3   3   4   5   6
# alerts:        1   2   3   5   6   7   8   9  10


def test_min_cost_threshold_by_hand():
    # cost = (4 - tp) x 10 + fp x 3: 30 20 23 16 19 9 12 15 18 -> minimum 9 at 0.5
    cfg = ThresholdConfig(strategy="min_cost", cost_missed_fraud=10, cost_false_alert=3)
    t, info = choose_threshold(Y_V, P_V, cfg, n_days=2)
    assert t == 0.5
    assert info["strategy"] == "min_cost" and info["value"] == pytest.approx(9.0)
    assert info["expected_cost"] == pytest.approx(expected_cost(Y_V, P_V, t, 10, 3)[0])
    assert info["recall"] == 1.0 and info["alerts"] == 7
    # cost = (4 - tp) x 4.5 + fp x 3: 13.5 9 12 10.5 13.5 9 12 15 18 -> 9 at 0.9 and 0.5; the higher wins
    cfg = ThresholdConfig(strategy="min_cost", cost_missed_fraud=4.5, cost_false_alert=3)
    assert choose_threshold(Y_V, P_V, cfg, n_days=2)[0] == 0.9


def test_target_fpr_threshold_by_hand():
    # 6 genuine rows. FPR <= 0.2 -> fp <= 1 -> lowest such threshold is 0.8 (FPR 1/6)
    t, info = choose_threshold(Y_V, P_V, ThresholdConfig(strategy="target_fpr", target_fpr=0.2), n_days=2)
    assert t == 0.8 and info["value"] == pytest.approx(1 / 6) and info["satisfied"]
    # FPR <= 0.34 -> fp <= 2 -> 0.7, taking the whole tie (FPR 2/6)
    t, info = choose_threshold(Y_V, P_V, ThresholdConfig(strategy="target_fpr", target_fpr=0.34), n_days=2)
    assert t == 0.7 and info["value"] == pytest.approx(2 / 6)
    # FPR <= 0.5 -> fp <= 3 -> 0.5 (fp 3 at both 0.6 and 0.5; the lower has the higher recall)
    t, _ = choose_threshold(Y_V, P_V, ThresholdConfig(strategy="target_fpr", target_fpr=0.5), n_days=2)
    assert t == 0.5
    # unreachable (the top tie alone has FPR 1): the top score, flagged as not satisfied
    t, info = choose_threshold([1, 0], [0.5, 0.5], ThresholdConfig(strategy="target_fpr"), n_days=1)
    assert t == 0.5 and not info["satisfied"]


def test_alert_budget_threshold_by_hand():
    # 2 days x 2 alerts a day -> alerts <= 4 -> 0.8 (3 alerts; 0.7 would give 5) -> 1.5 a day
    cfg = ThresholdConfig(strategy="alert_budget", alerts_per_day=2)
    t, info = choose_threshold(Y_V, P_V, cfg, n_days=2)
    assert t == 0.8 and info["value"] == pytest.approx(1.5) and info["satisfied"]
    # 2 days x 3 a day -> alerts <= 6 -> 0.6 (exactly 6) -> 3.0 a day
    cfg = ThresholdConfig(strategy="alert_budget", alerts_per_day=3)
    t, info = choose_threshold(Y_V, P_V, cfg, n_days=2)
    assert t == 0.6 and info["value"] == pytest.approx(3.0)
    # half a day of data, 3 a day -> alerts <= 1.5 -> 0.95
    assert choose_threshold(Y_V, P_V, cfg, n_days=0.5)[0] == 0.95
    with pytest.raises(ValueError, match="n_days"):
        choose_threshold(Y_V, P_V, cfg, n_days=0)


def test_threshold_strategies_match_brute_force():
    rng = np.random.default_rng(3)
    y = (rng.random(80) < 0.2).astype(int)
    p = np.round(rng.random(80), 1)  # many ties
    cands = np.unique(p)
    for cfg, n_days in [
        (ThresholdConfig(strategy="min_cost", cost_missed_fraud=20, cost_false_alert=1), 4),
        (ThresholdConfig(strategy="target_fpr", target_fpr=0.15), 4),
        (ThresholdConfig(strategy="alert_budget", alerts_per_day=5), 4),
    ]:
        t, _ = choose_threshold(y, p, cfg, n_days)
        if cfg.strategy == "min_cost":
            costs = [expected_cost(y, p, c, 20, 1)[0] for c in cands]
            expected = max(c for c, v in zip(cands, costs, strict=True) if v == min(costs))
        elif cfg.strategy == "target_fpr":
            expected = min(c for c in cands if confusion_at(y, p, c)["fp"] / (y == 0).sum() <= 0.15)
        else:
            expected = min(c for c in cands if (p >= c).sum() / n_days <= 5)
        assert t == expected, cfg.strategy


# -------------------------------------------------------------------------------------------- CP@k


def _at(day: int, hh: int = 12, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime(2018, 8, 7 + day, hh, mm, ss)


def _cp_frame() -> pl.DataFrame:
    rows = [
        # day 1: A .9 fraud; B .8 genuine + .1 fraud (card B: score .8, fraudulent); C .3 fraud
        ("A", _at(1), 0.9, 1),
        ("B", _at(1, 8), 0.8, 0),
        ("B", _at(1, 23, 59, 59), 0.1, 1),
        ("C", _at(1), 0.3, 1),
        # day 2: A and B (detected on day 1) rank first but must be removed; D .7 genuine, C .6 fraud,
        # E .2 fraud
        ("A", _at(2, 0, 0, 0), 0.95, 1),
        ("B", _at(2), 0.9, 1),
        ("D", _at(2), 0.7, 0),
        ("C", _at(2), 0.6, 1),
        ("E", _at(2), 0.2, 1),
        # day 3: C was detected on day 2; only E remains (< k cards): E .4 fraud + .3 genuine
        ("C", _at(3), 0.99, 1),
        ("E", _at(3, 1), 0.3, 0),
        ("E", _at(3, 2), 0.4, 1),
    ]
    return pl.DataFrame(rows, schema=["CUSTOMER_ID", "TX_DATETIME", "score", "TX_FRAUD"], orient="row")


def test_card_precision_at_k_by_hand():
    mean, per_day = card_precision_at_k(_cp_frame(), 2)
    # day 1: top 2 = A, B, both fraudulent -> 2/2 = 1.0; detected {A, B} (C, a fraud outside the top 2,
    #        is not detected)
    # day 2: without A, B: D .7, C .6, E .2 -> top 2 = D, C -> 1/2 = 0.5 (keeping A, B would give 1.0);
    #        detected += {C}
    # day 3: without C: only E (fraudulent) -> 1 / k = 1/2 = 0.5 (not 1/1: we divide by k)
    assert per_day == pytest.approx([1.0, 0.5, 0.5])
    assert mean == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    # k = 1: day 1 A -> 1; day 2 B (.9, fraud; only A was detected) -> 1; day 3 C (.99) -> 1
    assert card_precision_at_k(_cp_frame(), 1)[1] == pytest.approx([1.0, 1.0, 1.0])


def test_card_precision_at_k_ties_rows_order_and_empty():
    df = _cp_frame()
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=1)
    assert card_precision_at_k(shuffled, 2) == card_precision_at_k(df, 2)
    # equal scores: the smaller card id ranks first -> "a" (genuine) is taken with k = 1
    tie = pl.DataFrame(
        {"CUSTOMER_ID": ["b", "a"], "TX_DATETIME": [_at(1)] * 2, "score": [0.5, 0.5], "TX_FRAUD": [1, 0]}
    )
    assert card_precision_at_k(tie, 1) == (0.0, [0.0])
    mean, per_day = card_precision_at_k(df.head(0), 2)
    assert math.isnan(mean) and per_day == []


# --------------------------------------------------------------------------- known-compromised cards


def _d(month: int, day: int, hh: int = 12, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime(2018, month, day, hh, mm, ss)


SCHEMA = ["CUSTOMER_ID", "TX_DATETIME", "TX_FRAUD"]


def test_remove_known_compromised_calendar_edges():
    # training 07-25 .. 07-31: card 1 has a fraud, card 6 only genuine transactions
    train = pl.DataFrame(
        [(1, _d(7, 26), 1), (6, _d(7, 30), 0), (1, _d(7, 27), 0)], schema=SCHEMA, orient="row"
    )
    # delay gap 08-01 .. 08-07: card 2 fraud late on 08-01 (known from 08-01 + 8 = 08-09),
    # card 3 fraud at midnight on 08-02 (known from 08-10)
    gap = pl.DataFrame([(2, _d(8, 1, 23, 59, 59), 1), (3, _d(8, 2, 0, 0, 0), 1)], schema=SCHEMA, orient="row")
    test = pl.DataFrame(
        [
            (1, _d(8, 8), 0),  # 0 removed: fraud in training
            (2, _d(8, 8, 23, 59, 59), 0),  # 1 kept: D - 8 = 07-31 < 08-01
            (2, _d(8, 9, 0, 0, 0), 1),  # 2 removed: D - 8 = 08-01, the fraud's day (the exact boundary)
            (3, _d(8, 9, 12), 0),  # 3 kept: D - 8 = 08-01 < 08-02
            (3, _d(8, 10, 0, 0, 1), 0),  # 4 removed: D - 8 = 08-02
            (4, _d(8, 8, 9), 1),  # 5 kept: its own fraud is not known on its day
            (4, _d(8, 15, 23), 0),  # 6 kept: D - 8 = 08-07 < 08-08
            (4, _d(8, 16, 0, 30), 0),  # 7 removed: D - 8 = 08-08, the day of card 4's test fraud
            (6, _d(8, 12), 0),  # 8 kept: never a fraud
        ],
        schema=SCHEMA,
        orient="row",
    ).with_row_index("row")
    kept = remove_known_compromised(test, train, 7, gap_df=gap)
    assert kept["row"].to_list() == [1, 3, 5, 6, 8]
    assert kept.columns == test.columns
    # without the gap's labels only cards 1 (training) and 4 (its own test fraud) are known
    assert remove_known_compromised(test, train, 7)["row"].to_list() == [1, 2, 3, 4, 5, 6, 8]
    # no delay: a fraud is known from the next day -> cards 2 and 3 on every test day, card 4 from 08-09
    assert remove_known_compromised(test, train, 0, gap_df=gap)["row"].to_list() == [5, 8]


# ---------------------------------------------------------------------------------------- evaluate


def test_evaluate_flat_dict_with_card_precision():
    df = _cp_frame()
    y, p = df["TX_FRAUD"].to_numpy(), df["score"].to_numpy()
    cfg = ThresholdConfig(cost_missed_fraud=100, cost_false_alert=2)
    m = evaluate(y, p, 0.5, costs=cfg, frame=df.drop("score", "TX_FRAUD"), k=2)
    assert set(m) == {*METRIC_NAMES, "card_precision_at_2"}
    assert all(isinstance(v, float) for v in m.values())
    assert m["card_precision_at_2"] == pytest.approx(2 / 3)
    # 12 rows, 9 frauds. p >= 0.5 flags frauds A .9, A .95, B .9, C .6, C .99 -> tp 5 and genuine B .8,
    # D .7 -> fp 2; frauds B .1, C .3, E .2, E .4 missed -> fn 4; genuine E .3 -> tn 1
    assert (m["n_rows"], m["n_frauds"], m["fraud_rate"]) == (12.0, 9.0, pytest.approx(9 / 12))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (5.0, 2.0, 4.0, 1.0)
    # fn 4 x 100 + fp 2 x 2 = 404; per transaction 404 / 12
    assert m["expected_cost"] == pytest.approx(404.0)
    assert m["cost_per_tx"] == pytest.approx(404 / 12)
    assert m["threshold"] == 0.5
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    # same costs as a mapping or a pair; no CP@k without customer / time columns
    assert evaluate(y, p, 0.5, costs={"cost_missed_fraud": 100, "cost_false_alert": 2}) == {
        k: v for k, v in m.items() if k != "card_precision_at_2"
    }
    assert "card_precision_at_100" not in evaluate(y, p, 0.5, costs=(100, 2), frame=df.select("score"))


# ------------------------------------------------------------------------------------------- plots


def test_plots_return_savable_figures():
    from matplotlib.figure import Figure

    figs = [
        plot_pr_curve(Y8, P8),
        plot_roc_curve(Y8, P8),
        plot_confusion(confusion_at(Y_C, P_C, 0.5)),
        plot_importances(["a", "b", "c"], [0.2, -0.5, 0.1]),
        plot_pr_curve([0, 0], [0.1, 0.2]),  # one class: an empty plot, no error
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert buf.getvalue().startswith(b"\x89PNG")
