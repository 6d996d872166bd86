"""Fraud-detection metrics and the threshold choice: pure functions, data in, data out.

Conventions used everywhere in this module:

- ``y`` holds labels (1 = fraud, 0 = genuine), ``p`` scores (higher = more suspicious).
- The decision rule is ``p >= threshold``. Every threshold this module picks is one of the score
  values, so tied scores are always flagged (or not) together.
- Ranking metrics (ROC AUC, average precision, recall at a false-positive rate) return NaN, without
  raising or warning, when only one class is present: the caller decides what that means.
- Calendar days are the dates of the timestamps (``TX_DATETIME``); a numeric time column is read as
  seconds since a midnight (day = ``seconds // 86 400``), as the simulator's ``TX_TIME_SECONDS``.

The metric names returned by :func:`evaluate` are the project's stable names (see ``METRIC_NAMES``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from fraudops.config import ThresholdConfig
from fraudops.data.schema import CUSTOMER, LABEL, TX_TIME

METRIC_NAMES: tuple[str, ...] = (
    "roc_auc",
    "average_precision",
    "recall_at_1pct_fpr",
    "precision",
    "recall",
    "f1",
    "tp",
    "fp",
    "tn",
    "fn",
    "threshold",
    "expected_cost",
    "cost_per_tx",
    "fraud_rate",
    "n_rows",
    "n_frauds",
)
"""Keys of :func:`evaluate`'s result; ``card_precision_at_{k}`` is added when a frame is given."""

SECONDS_PER_DAY = 86_400


def cp_at_k_name(k: int) -> str:
    """The metric name of card precision at k, e.g. ``card_precision_at_100``."""
    return f"card_precision_at_{k}"


# --------------------------------------------------------------------------------------------- inputs


def as_arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int8 0/1 and scores as float64, both 1-D and of equal length; bad input raises."""
    ya = np.asarray(y).ravel()
    pa = np.asarray(p, dtype=np.float64).ravel()
    if ya.shape != pa.shape:
        raise ValueError(f"labels and scores differ in length: {ya.size} vs {pa.size}")
    if ya.dtype == bool:
        ya = ya.astype(np.int8)
    if ya.size and not np.isin(ya, (0, 1)).all():
        raise ValueError("labels must be 0 (genuine) or 1 (fraud)")
    if np.isnan(pa).any():
        raise ValueError("scores contain NaN")
    return ya.astype(np.int8), pa


def both_classes(y: np.ndarray) -> bool:
    return y.size > 0 and 0 < int(y.sum()) < y.size


def _operating_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct score as a threshold, highest first, with its true and false positives.

    ``thresholds[i]`` flags all rows with ``p >= thresholds[i]``; ``tp[i]`` / ``fp[i]`` count them.
    One sort and two cumulative sums: O(n log n) for all candidates together.
    """
    order = np.argsort(-p, kind="stable")
    ps = p[order]
    ys = y[order].astype(np.int64)
    tp_cum = np.cumsum(ys)
    fp_cum = np.arange(1, ys.size + 1) - tp_cum
    # last position of each run of equal scores: a threshold admits the whole run
    ends = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True]) if ps.size else np.empty(0, dtype=np.int64)
    return ps[ends], tp_cum[ends], fp_cum[ends]


def _safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


# ---------------------------------------------------------------------------------------- ranking


def roc_auc(y: Any, p: Any) -> float:
    """Area under the ROC curve (scikit-learn's definition); NaN unless both classes are present."""
    ya, pa = as_arrays(y, p)
    from sklearn.metrics import roc_auc_score  # scikit-learn takes a second to import: only when used

    return float(roc_auc_score(ya, pa)) if both_classes(ya) else math.nan


def average_precision(y: Any, p: Any) -> float:
    """Average precision (scikit-learn's step-wise definition, no interpolation); NaN unless both
    classes are present."""
    ya, pa = as_arrays(y, p)
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(ya, pa)) if both_classes(ya) else math.nan


def recall_at_fpr(y: Any, p: Any, fpr: float = 0.01) -> float:
    """The best recall reachable with a false-positive rate <= ``fpr``.

    Thresholds are the distinct scores (rule ``p >= t``), so tied scores enter together: a tie group
    that would push the FPR over ``fpr`` cannot be taken partly. Flagging nothing (recall 0) is
    always allowed. NaN unless both classes are present.
    """
    ya, pa = as_arrays(y, p)
    if not both_classes(ya):
        return math.nan
    _, tp, fp = _operating_points(ya, pa)
    n_pos = int(ya.sum())
    n_neg = ya.size - n_pos
    ok = fp <= fpr * n_neg * (1 + 1e-12)  # tolerance for fpr * n_neg landing just below an integer
    return float(tp[ok].max()) / n_pos if ok.any() else 0.0


# -------------------------------------------------------------------------------- at a threshold


def confusion_at(y: Any, p: Any, threshold: float) -> dict[str, float]:
    """Confusion counts and precision / recall / F1 for the rule ``p >= threshold``.

    Counts are ints; precision, recall and F1 are 0 where their denominator is 0.
    """
    ya, pa = as_arrays(y, p)
    flagged = pa >= threshold
    pos = ya == 1
    tp = int(np.count_nonzero(flagged & pos))
    fp = int(np.count_nonzero(flagged & ~pos))
    fn = int(np.count_nonzero(~flagged & pos))
    tn = int(ya.size - tp - fp - fn)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)  # = 2PR / (P + R), 0 when tp = 0
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "precision": precision, "recall": recall, "f1": f1}


def expected_cost(
    y: Any, p: Any, threshold: float, cost_missed_fraud: float, cost_false_alert: float
) -> tuple[float, float]:
    """``(total cost, cost per transaction)`` of the rule ``p >= threshold``.

    total = missed frauds (fn) x ``cost_missed_fraud`` + false alerts (fp) x ``cost_false_alert``;
    caught frauds and untouched genuine transactions cost nothing. Per transaction = total / rows
    (NaN with no rows).
    """
    c = confusion_at(y, p, threshold)
    total = c["fn"] * float(cost_missed_fraud) + c["fp"] * float(cost_false_alert)
    n = c["tp"] + c["fp"] + c["tn"] + c["fn"]
    return total, (total / n if n else math.nan)


# ------------------------------------------------------------------------------- threshold choice


def choose_threshold(y: Any, p: Any, cfg: ThresholdConfig, n_days: float) -> tuple[float, dict[str, Any]]:
    """Pick the decision threshold on validation data (y, p) with ``cfg.strategy``.

    Candidates are the distinct score values (rule ``p >= t``), all evaluated at once.

    - ``min_cost``: the threshold with the lowest expected cost (``expected_cost``); among equal
      costs the highest threshold (fewest alerts). Flagging nothing is not a candidate: the result
      always flags at least the top score's rows (``info["cost_flag_none"]`` shows that option's cost).
    - ``target_fpr``: the lowest threshold whose false-positive rate is <= ``cfg.target_fpr``.
    - ``alert_budget``: the lowest threshold whose alerts per day (flagged rows / ``n_days``) are
      <= ``cfg.alerts_per_day``; ``n_days`` is how many days the validation data spans.

    When no candidate meets a target (the top score's tie group alone exceeds it) the highest score
    is returned and ``info["satisfied"]`` is False. ``info`` holds ``strategy``, ``target``, ``value``
    (the cost, FPR or alerts per day reached), ``satisfied`` and the operating point (alerts, alerts per
    day, tp, fp, precision, recall, fpr, expected cost).
    """
    ya, pa = as_arrays(y, p)
    if ya.size == 0:
        raise ValueError("cannot choose a threshold without validation rows")
    if not n_days > 0:
        raise ValueError(f"n_days must be > 0, got {n_days}")
    thresholds, tp, fp = _operating_points(ya, pa)
    n_pos = int(ya.sum())
    n_neg = ya.size - n_pos
    alerts = tp + fp
    cost = (n_pos - tp) * float(cfg.cost_missed_fraud) + fp * float(cfg.cost_false_alert)
    fpr = fp / n_neg if n_neg else np.zeros(fp.shape)

    info: dict[str, Any] = {"strategy": cfg.strategy}
    if cfg.strategy == "min_cost":
        i = int(np.argmin(cost))  # first minimum = highest threshold among ties
        info.update(target=None, value=float(cost[i]), satisfied=True)
        info["cost_flag_none"] = n_pos * float(cfg.cost_missed_fraud)
    else:
        if cfg.strategy == "target_fpr":
            target = float(cfg.target_fpr)
            reached = fpr
            ok = fp <= target * n_neg * (1 + 1e-12)
        elif cfg.strategy == "alert_budget":
            target = float(cfg.alerts_per_day)
            reached = alerts / float(n_days)
            ok = alerts <= target * float(n_days) * (1 + 1e-12)
        else:  # pragma: no cover - the config's Literal rules this out
            raise ValueError(f"unknown threshold strategy {cfg.strategy!r}")
        # both quantities grow as the threshold falls, so the feasible candidates are a prefix
        i = int(np.flatnonzero(ok)[-1]) if ok.any() else 0
        info.update(target=target, value=float(reached[i]), satisfied=bool(ok.any()))

    info.update(
        threshold=float(thresholds[i]),
        alerts=int(alerts[i]),
        alerts_per_day=float(alerts[i]) / float(n_days),
        tp=int(tp[i]),
        fp=int(fp[i]),
        precision=_safe_div(tp[i], alerts[i]),
        recall=_safe_div(tp[i], n_pos),
        fpr=float(fpr[i]),
        expected_cost=float(cost[i]),
        cost_per_tx=float(cost[i]) / ya.size,
        n_days=float(n_days),
    )
    return float(thresholds[i]), info


# ------------------------------------------------------------------------------ card-level metrics


def _day_expr(df: pl.DataFrame, time: str) -> pl.Expr:
    """Calendar day of each row: the date of a datetime / date column, or seconds // 86 400."""
    dtype = df.schema[time]
    if dtype == pl.Date:
        return pl.col(time)
    if isinstance(dtype, pl.Datetime):
        return pl.col(time).dt.date()
    if dtype.is_numeric():
        return (pl.col(time) // SECONDS_PER_DAY).cast(pl.Int64)
    raise TypeError(f"column {time!r} must be a datetime, date or seconds, not {dtype}")


def _require(df: pl.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}")
    for c in cols:
        if df[c].null_count():
            raise ValueError(f"{what}: column {c!r} has nulls")


def card_precision_at_k(
    df: pl.DataFrame,
    k: int,
    *,
    score: str = "score",
    label: str = LABEL,
    customer: str = CUSTOMER,
    time: str = TX_TIME,
) -> tuple[float, list[float]]:
    """The handbook's card precision @ k: ``(mean over days, per-day values in day order)``.

    For each calendar day present in ``df``, in order:

    1. drop every transaction of the cards already *detected* on earlier days;
    2. give each remaining card its highest score that day, and mark it fraudulent if any of its
       transactions that day is a fraud;
    3. rank the cards by that score, highest first (ties: smaller card id first, for determinism),
       and take the top ``k``;
    4. the day's value is (fraudulent cards in the top k) / ``k``. The divisor is ``k`` even when
       fewer than ``k`` cards remain that day, as in the handbook: an investigation team with
       capacity k that gets fewer cards does not earn a higher precision for it;
    5. the fraudulent cards of that top k are *detected*: removed from all later days. Cards of the
       top k without a fraud that day are not removed.

    Days without transactions are not counted. No rows gives ``(nan, [])``.
    """
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    _require(df, (score, label, customer, time), "card precision @ k")
    if df.height == 0:
        return math.nan, []
    per_card = (
        df.lazy()
        .select(
            _day_expr(df, time).alias("_day"),
            pl.col(customer).alias("_card"),
            pl.col(score).cast(pl.Float64).alias("_score"),
            pl.col(label).cast(pl.Int8).alias("_fraud"),
        )
        .group_by("_day", "_card")
        .agg(pl.col("_score").max(), pl.col("_fraud").max())
        .sort("_day", "_score", "_card", descending=[False, True, False])
        .collect()
    )
    detected: set[Any] = set()
    per_day: list[float] = []
    for day_frame in per_card.partition_by("_day", maintain_order=True):
        cards = day_frame["_card"].to_list()
        frauds = day_frame["_fraud"].to_list()
        top = [(c, f) for c, f in zip(cards, frauds, strict=True) if c not in detected][:k]
        found = [c for c, f in top if f == 1]
        per_day.append(len(found) / k)
        detected.update(found)
    return float(np.mean(per_day)), per_day


def remove_known_compromised(
    test_df: pl.DataFrame,
    train_df: pl.DataFrame,
    delay_days: int,
    *,
    gap_df: pl.DataFrame | None = None,
    label: str = LABEL,
    customer: str = CUSTOMER,
    time: str = TX_TIME,
) -> pl.DataFrame:
    """``test_df`` without the transactions of cards already known to be compromised on their day.

    A card is known on test day D (calendar day) if it had a fraud anywhere in ``train_df``, or a
    fraud in the labelled data after training — ``gap_df`` (the label-delay gap between training and
    test; pass it, else the first test days miss those labels) and ``test_df`` itself — on a calendar
    day <= D - (delay_days + 1). With the handbook's 7-day delay that is D - 8: a fraud on day D - 8 is
    known on day D, one on D - 7 is not yet. Only whole days matter, not times of day.

    Rows and their order are otherwise unchanged.
    """
    if delay_days < 0:
        raise ValueError(f"delay_days must be >= 0, got {delay_days}")
    cols = (label, customer, time)
    _require(test_df, cols, "test set")
    _require(train_df, (label, customer), "training set")
    known_always = (
        train_df.filter(pl.col(label) == 1).select(pl.col(customer).cast(test_df.schema[customer])).unique()
    )

    later = [test_df.select(cols)]
    if gap_df is not None:
        _require(gap_df, cols, "gap set")
        later.insert(0, gap_df.select(cols).cast({customer: test_df.schema[customer]}))
    # each post-training fraud becomes known (delay_days + 1) days after its calendar day
    known_from = (
        pl.concat([f.select(_day_expr(f, time).alias("_day"), customer, label) for f in later])
        .filter(pl.col(label) == 1)
        .group_by(customer)
        .agg((pl.col("_day").min() + _day_offset(test_df, time, delay_days + 1)).alias("_known_from"))
    )
    return (
        test_df.with_columns(_day_expr(test_df, time).alias("_day"))
        .join(known_always, on=customer, how="anti", maintain_order="left")
        .join(known_from, on=customer, how="left", maintain_order="left")
        .filter(pl.col("_known_from").is_null() | (pl.col("_day") < pl.col("_known_from")))
        .drop("_day", "_known_from")
    )


def _day_offset(df: pl.DataFrame, time: str, days: int) -> Any:
    """``days`` in the unit of :func:`_day_expr`'s values (a timedelta for dates, an int otherwise)."""
    dtype = df.schema[time]
    return dt.timedelta(days=days) if dtype == pl.Date or isinstance(dtype, pl.Datetime) else days


# ------------------------------------------------------------------------------------- everything


def _costs(costs: Any) -> tuple[float, float]:
    """(cost_missed_fraud, cost_false_alert) from a ThresholdConfig, a mapping or a pair."""
    if isinstance(costs, ThresholdConfig):
        return float(costs.cost_missed_fraud), float(costs.cost_false_alert)
    if isinstance(costs, Mapping):
        return float(costs["cost_missed_fraud"]), float(costs["cost_false_alert"])
    missed, false_alert = costs
    return float(missed), float(false_alert)


def evaluate(
    y: Any,
    p: Any,
    threshold: float,
    *,
    costs: ThresholdConfig | Mapping[str, float] | tuple[float, float],
    frame: pl.DataFrame | None = None,
    k: int = 100,
    customer: str = CUSTOMER,
    time: str = TX_TIME,
) -> dict[str, float]:
    """Every test-window metric in one flat dict of floats, keyed by ``METRIC_NAMES``.

    ``costs`` gives ``cost_missed_fraud`` and ``cost_false_alert`` (a ThresholdConfig, a mapping or a
    pair, in that order). When ``frame`` (rows aligned with y and p) has the customer and time
    columns, ``card_precision_at_{k}`` is added, computed with y and p as labels and scores.
    Ranking metrics are NaN when only one class is present.
    """
    ya, pa = as_arrays(y, p)
    missed, false_alert = _costs(costs)
    conf = confusion_at(ya, pa, threshold)
    total, per_tx = expected_cost(ya, pa, threshold, missed, false_alert)
    n_rows = ya.size
    n_frauds = int(ya.sum())
    out: dict[str, float] = {
        "roc_auc": roc_auc(ya, pa),
        "average_precision": average_precision(ya, pa),
        "recall_at_1pct_fpr": recall_at_fpr(ya, pa, 0.01),
        **{name: float(conf[name]) for name in ("precision", "recall", "f1", "tp", "fp", "tn", "fn")},
        "threshold": float(threshold),
        "expected_cost": float(total),
        "cost_per_tx": float(per_tx),
        "fraud_rate": n_frauds / n_rows if n_rows else math.nan,
        "n_rows": float(n_rows),
        "n_frauds": float(n_frauds),
    }
    if frame is not None and customer in frame.columns and time in frame.columns:
        if frame.height != n_rows:
            raise ValueError(f"frame has {frame.height} rows, labels and scores {n_rows}")
        cards = frame.select(customer, time).with_columns(pl.Series("_score", pa), pl.Series("_label", ya))
        out[cp_at_k_name(k)], _ = card_precision_at_k(
            cards, k, score="_score", label="_label", customer=customer, time=time
        )
    return out
