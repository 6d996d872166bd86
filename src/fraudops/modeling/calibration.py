"""Calibrated probabilities: a monotone map from the model's raw scores to fraud probabilities.

The map is fitted on validation scores (the model that produced them never trained on those rows), by
isotonic regression or Platt scaling, whichever has the lower Brier score out of fold on validation, or
none at all when the raw scores' own Brier score there is lower still (XGBoost's probabilities often are
calibrated already, and a map fitted on a few validation days would then only add its own error). It
must not change the ranking: Platt is strictly increasing, and the isotonic step function is blended with
the raw score (``(1 - BLEND) x isotonic + BLEND x raw``) so that distinct raw scores stay distinct and in
order; ranking metrics (AP, ROC AUC, CP@k) are therefore exactly those of the raw scores. :func:`apply` is
the one function every path uses (batch, serving's numpy trees, monitoring, promotion).

Calibration error: expected calibration error (ECE, equal-width bins) and the reliability curve.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BLEND = 1e-4
"""Weight of the raw score in the isotonic map: keeps it strictly increasing (ties would change AP)."""
ECE_BINS = 10
_EPS = 1e-15


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(q) - np.log1p(-q)


def apply(raw: np.ndarray, calibration: dict[str, Any] | None) -> np.ndarray:
    """Calibrated probabilities (float64) of raw scores; ``None`` (models from before calibration) is the
    identity."""
    p = np.asarray(raw, dtype=np.float64)
    if not calibration:
        return p
    method = calibration["method"]
    if method == "none":
        return p
    if method == "isotonic":
        iso = np.interp(p, calibration["x"], calibration["y"])
        return (1.0 - BLEND) * iso + BLEND * p
    if method == "platt":
        return 1.0 / (1.0 + np.exp(-(calibration["a"] * _logit(p) + calibration["b"])))
    raise ValueError(f"unknown calibration method {method!r}")


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
    return {
        "method": "isotonic",
        "x": [float(v) for v in iso.X_thresholds_],
        "y": [float(v) for v in iso.y_thresholds_],
    }


def fit_platt(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(p)[:, None], y)
    a = float(lr.coef_[0][0])
    if not a > 0:  # a decreasing map would reverse the ranking: fall back to the identity slope
        a = 1.0
    return {"method": "platt", "a": a, "b": float(lr.intercept_[0])}


FITTERS = {"isotonic": fit_isotonic, "platt": fit_platt}


def fit(p: Any, y: Any, *, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """The calibration map chosen on validation scores ``p`` and labels ``y``: each method's Brier score
    out of fold (stratified folds) and the raw scores' own (``none``); the best one, refitted on all rows.
    The result records every score."""
    from sklearn.model_selection import StratifiedKFold

    pa = np.asarray(p, dtype=np.float64).ravel()
    ya = np.asarray(y).ravel().astype(np.int64)
    n_pos = int(ya.sum())
    k = max(2, min(folds, n_pos, ya.size - n_pos))
    brier: dict[str, float] = {}
    for name, fitter in FITTERS.items():
        out = np.empty_like(pa)
        for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(pa, ya):
            out[test] = apply(pa[test], fitter(pa[train], ya[train]))
        brier[name] = float(np.mean((out - ya) ** 2))
    brier["none"] = float(np.mean((pa - ya) ** 2))  # out of sample already: no model trained on p's rows
    best = min(brier, key=lambda m: brier[m])
    chosen = {"method": "none"} if best == "none" else FITTERS[best](pa, ya)
    return {**chosen, "validation_brier": brier}


def reliability(y: Any, p: Any, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """The reliability curve: per equal-width score bin with rows, its mean score, fraud rate and count."""
    ya = np.asarray(y, dtype=np.float64).ravel()
    pa = np.asarray(p, dtype=np.float64).ravel()
    idx = np.minimum((pa * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        if n:
            out.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "mean_score": float(pa[m].mean()),
                    "fraud_rate": float(ya[m].mean()),
                    "n": float(n),
                }
            )
    return out


def ece(y: Any, p: Any, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the row-weighted mean |fraud rate - mean score| over equal-width bins
    (NaN without rows)."""
    curve = reliability(y, p, bins)
    total = sum(c["n"] for c in curve)
    if not total:
        return math.nan
    return float(sum(c["n"] * abs(c["fraud_rate"] - c["mean_score"]) for c in curve) / total)
