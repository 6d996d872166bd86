"""Reason codes: why a transaction scored high, per feature, in words a fraud analyst reads.

Contributions are additive in the model's margin (log-odds): per row, the feature contributions plus the
bias sum to the margin. XGBoost: exact TreeSHAP, the values of ``Booster.predict(..., pred_contribs=True)``
(what ``shap.TreeExplainer`` itself calls), evaluated by :mod:`fraudops.modeling.treeshap` from tables
precomputed at load (a few times faster a row than XGBoost's call, which remains the fallback when the
trees are too deep); logistic regression: coefficient x standardised value, the bias being the intercept.
A row's reasons are its (at most) three features with the largest positive contribution — the ones that
pushed the score up — each with its value, its contribution and a sentence.

"Usual" values are the **medians of the training rows** (:func:`usual_values`, stored in the model's
``info`` when it is trained, so batch, serve and the shadow challenger read the same numbers with the
model). The median rather than the mean: a typical transaction, not one pulled by the fraud bursts and the
long tail of amounts the model learned to flag. A model trained before this carries none; its sentences
then leave "usual" out.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from fraudops.data.schema import AMOUNT
from fraudops.features.definitions import (
    AMOUNT_RATIO,
    AMOUNT_ZSCORE,
    NB_TX_1HOUR,
    NEW_TERMINAL,
    NO_PREV_SECONDS,
    SECONDS_SINCE_PREV,
)
from fraudops.modeling.model import FraudModel, LogisticModel, XGBoostModel
from fraudops.modeling.treeshap import TreeShap, Unsupported

log = logging.getLogger("fraudops.explain")

USUAL = "usual"  # FraudModel.info key: {feature: training median}
DELAY = "label_delay_days"  # FraudModel.info key: the terminal windows' label delay (transactions kind)
TOP = 3

_CUSTOMER_COUNT = re.compile(r"CUSTOMER_ID_NB_TX_(\d+)DAY_WINDOW")
_CUSTOMER_AVG = re.compile(r"CUSTOMER_ID_AVG_AMOUNT_(\d+)DAY_WINDOW")
_TERMINAL_COUNT = re.compile(r"TERMINAL_ID_NB_TX_(\d+)DAY_WINDOW")
_TERMINAL_RISK = re.compile(r"TERMINAL_ID_RISK_(\d+)DAY_WINDOW")

Phrase = Callable[[float], str]  # a feature's value -> words


def usual_values(names: list[str], x: np.ndarray) -> dict[str, float]:
    """The training median of each feature (what the reasons call "usual"), a column at a time (a float64
    copy of one column, not of the matrix)."""
    return {n: float(np.median(np.asarray(x[:, j], dtype=np.float64))) for j, n in enumerate(names)}


def _xgboost_contributions(model: XGBoostModel, x: np.ndarray) -> np.ndarray:
    import xgboost

    matrix = xgboost.DMatrix(x, nthread=1)
    return np.asarray(model.booster.predict(matrix, pred_contribs=True), dtype=np.float64)


def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e6 else f"{v:,.0f}"


def _money(v: float) -> str:
    return f"{v:,.2f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def _days(n: int) -> str:
    return "day" if n == 1 else f"{n} days"


def _phrases(name: str, delay: int | None) -> tuple[Phrase, Phrase | None]:
    """(words for a value, words for the usual value or None to leave it out) of one feature."""
    back = f"up to {delay} days ago" if delay is not None else "before the label delay"
    if name == AMOUNT:
        return (lambda v: f"amount {_money(v)}"), _money
    if name == "TX_DURING_WEEKEND":
        return (lambda v: "made on a weekend" if v >= 0.5 else "made on a weekday"), None
    if name == "TX_DURING_NIGHT":
        return (lambda v: "made at night (00:00-06:59)" if v >= 0.5 else "made in the daytime"), None
    if name == NEW_TERMINAL:
        return (
            lambda v: (
                "at a terminal this card has not used in the last 30 days"
                if v >= 0.5
                else "at a terminal this card used in the last 30 days"
            )
        ), None
    if name == NB_TX_1HOUR:
        return (lambda v: f"{_num(v)} transactions on this card in the last hour"), _num
    if name == SECONDS_SINCE_PREV:
        return (
            lambda v: (
                "no other transaction on this card in the previous 30 days"
                if v >= NO_PREV_SECONDS
                else f"{_duration(v)} since this card's previous transaction"
            )
        ), _duration
    if name == AMOUNT_RATIO:
        return (lambda v: f"amount {v:.1f}x this card's 30-day average"), (lambda v: f"{v:.1f}x")
    if name == AMOUNT_ZSCORE:
        return (
            lambda v: f"amount {v:+.1f} standard deviations from this card's 30-day average"
        ), lambda v: f"{v:+.1f}"
    if m := _CUSTOMER_COUNT.fullmatch(name):
        n = int(m[1])
        return (lambda v: f"{_num(v)} transactions on this card in the last {_days(n)}"), _num
    if m := _CUSTOMER_AVG.fullmatch(name):
        n = int(m[1])
        return (lambda v: f"average amount {_money(v)} on this card over the last {_days(n)}"), _money
    if m := _TERMINAL_COUNT.fullmatch(name):
        n = int(m[1])
        return (lambda v: f"{_num(v)} transactions at this terminal in the {_days(n)} {back}"), _num
    if m := _TERMINAL_RISK.fullmatch(name):
        n = int(m[1])
        return (
            lambda v: f"{v:.0%} of this terminal's transactions were fraud in the {_days(n)} {back}"
        ), lambda v: f"{v:.0%}"
    return (lambda v: f"{name} = {v:.4g}"), (lambda v: f"{v:.4g}")


@dataclasses.dataclass(frozen=True)
class Reason:
    feature: str
    value: float
    contribution: float
    usual: float | None
    text: str

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "feature": self.feature,
            "value": self.value,
            "contribution": round(self.contribution, 6),
            "text": self.text,
        }
        if self.usual is not None:
            out["usual"] = self.usual
        return out


class Explainer:
    """A model's reason codes: contributions, the top positive ones, and their sentences."""

    def __init__(self, model: FraudModel) -> None:
        self.model = model
        usual = model.info.get(USUAL) or {}
        delay = model.info.get(DELAY)
        self.usual = [usual.get(n) for n in model.feature_names]
        self.phrases = [_phrases(n, delay) for n in model.feature_names]
        self.treeshap: TreeShap | None = None
        if isinstance(model, XGBoostModel):
            try:
                self.treeshap = TreeShap(model.booster, len(model.feature_names))
            except Unsupported as e:
                log.warning("reason codes by XGBoost's pred_contribs (slower): %s", e)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-row contributions to the margin, float64 of shape (rows, features + 1); the last column is
        the bias. Each row sums to the model's margin (log-odds)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        model = self.model
        if isinstance(model, LogisticModel):
            z = (x.astype(np.float64) - model.mean) / model.scale * model.coef
            return np.concatenate([z, np.full((len(x), 1), model.intercept)], axis=1)
        if self.treeshap is not None:
            return self.treeshap.contributions(x)
        if isinstance(model, XGBoostModel):
            return _xgboost_contributions(model, x)
        raise TypeError(f"no contributions for model kind {model.kind}")

    def text(self, j: int, value: float) -> str:
        say, say_usual = self.phrases[j]
        usual = self.usual[j]
        words = say(value)
        return f"{words}, usual {say_usual(usual)}" if say_usual is not None and usual is not None else words

    def reasons(self, x: np.ndarray, top: int = TOP) -> list[list[Reason]]:
        """Each row's reasons, strongest first: its features with the largest positive contributions."""
        if len(x) == 0:
            return []
        contrib = self.contributions(x)[:, :-1]
        order = np.argsort(-contrib, axis=1, kind="stable")[:, :top]
        names = self.model.feature_names
        out = []
        for i, row in enumerate(order.tolist()):
            items = []
            for j in row:
                c = float(contrib[i, j])
                if c <= 0:
                    break
                v = float(x[i, j])
                items.append(Reason(names[j], v, c, self.usual[j], self.text(j, v)))
            out.append(items)
        return out

    def selected(self, x: np.ndarray, rows: np.ndarray) -> dict[int, list[dict[str, Any]]]:
        """Reasons (as JSON-ready dicts) of the rows where ``rows`` (bool) is set, by row number; only
        those rows are explained."""
        picked = np.flatnonzero(rows)
        if picked.size == 0:
            return {}
        found = self.reasons(x[picked])
        return {int(i): [r.as_dict() for r in rs] for i, rs in zip(picked.tolist(), found, strict=True)}
