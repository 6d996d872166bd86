"""Estimated performance before the labels arrive (confidence-based performance estimation, CBPE).

With calibrated scores, a row scored p is a fraud with probability p. Sampling labels from the scores many
times gives the distribution of what the precision, recall and average precision at the threshold would be
once the labels arrive: its mean is the estimate (for precision, the exact expectation: the mean score of
the alerts), its central ``band`` share the uncertainty band. The alert volume is known exactly (rows
scored >= threshold).

This holds while the relation between inputs and fraud stays as it was at calibration (covariate shift
only). Under concept drift — a new fraud pattern the model scores low — the scores no longer say how
likely a row is a fraud and the estimate is too optimistic: realized metrics are the only truth then, and
they replace the estimate wherever labels exist.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fraudops.modeling import evaluate as ev

METRICS = ("precision", "recall", "average_precision")
_CHUNK_CELLS = 4_000_000
"""Sampled labels held at once (rows x samples), to bound memory on large windows."""


def _sampled_metrics(p: np.ndarray, threshold: float, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Precision, recall and AP at ``threshold`` for ``samples`` label draws y ~ Bernoulli(p)."""
    order = np.argsort(-p, kind="stable")
    ps = p[order]
    n = ps.size
    alerts = int(np.count_nonzero(ps >= threshold))
    ends = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True])  # tie groups enter together, as in sklearn's AP
    seen = ends + 1.0
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    step = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, samples, step):
        k = min(step, samples - start)
        y = rng.random((k, n)) < ps  # one row per draw
        tp = np.cumsum(y, axis=1, dtype=np.int64)
        positives = tp[:, -1].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            tp_g = tp[:, ends].astype(np.float64)
            gained = np.diff(tp_g, axis=1, prepend=0.0)
            ap = (gained * (tp_g / seen)).sum(axis=1) / positives
            caught = tp[:, alerts - 1].astype(np.float64) if alerts else np.zeros(k)
            out["precision"].append(caught / alerts if alerts else np.full(k, np.nan))
            out["recall"].append(caught / positives)
        out["average_precision"].append(ap)
    return {m: np.concatenate(v) for m, v in out.items()}


def estimate(
    p: Any, threshold: float, *, samples: int = 200, band: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """``est_<metric>``, ``est_<metric>_low`` / ``_high`` (the band) for precision, recall and average
    precision, plus ``alerts`` and ``expected_frauds``; NaN where a metric is undefined (no rows, or no
    sampled fraud)."""
    pa = np.asarray(p, dtype=np.float64).ravel()
    out: dict[str, float] = {
        "n_rows": float(pa.size),
        "alerts": float(np.count_nonzero(pa >= threshold)),
        "expected_frauds": float(pa.sum()),
    }
    if pa.size == 0:
        return out | {f"est_{m}{s}": math.nan for m in METRICS for s in ("", "_low", "_high")}
    drawn = _sampled_metrics(pa, threshold, samples, seed)
    lo, hi = (1.0 - band) / 2.0, 1.0 - (1.0 - band) / 2.0
    for m, values in drawn.items():
        v = values[np.isfinite(values)]
        if v.size == 0:
            out |= {f"est_{m}": math.nan, f"est_{m}_low": math.nan, f"est_{m}_high": math.nan}
            continue
        out[f"est_{m}"] = float(v.mean())
        out[f"est_{m}_low"], out[f"est_{m}_high"] = (float(q) for q in np.quantile(v, [lo, hi]))
    if out["alerts"]:  # exact: the expected share of frauds among the alerts
        out["est_precision"] = float(pa[pa >= threshold].mean())
    return out


def realized(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """The same metrics on labelled rows (NaN where undefined)."""
    conf = ev.confusion_at(y, p, threshold)
    alerts = conf["tp"] + conf["fp"]
    frauds = conf["tp"] + conf["fn"]
    return {
        "precision": conf["precision"] if alerts else math.nan,
        "recall": conf["recall"] if frauds else math.nan,
        "average_precision": ev.average_precision(y, p),
    }


def within(value: float, low: float, high: float) -> bool | None:
    """Whether a realized value lies in the band (None when either is undefined)."""
    if any(math.isnan(x) for x in (value, low, high)):
        return None
    return low - 1e-12 <= value <= high + 1e-12


def daily(
    days: list[str], p: np.ndarray, y: np.ndarray | None, threshold: float, *, samples: int, band: float
) -> list[dict[str, Any]]:
    """Per monitored window (a calendar day): rows, alerts, the estimates with their bands and, for a day
    whose rows are all labelled, the realized metrics and whether each lies in its band.

    Fraud comes in bursts (a compromised card or terminal), so labels are not independent given the
    scores and the days vary more than independent draws say. Each band is therefore widened by how far
    the realized values of the *earlier* fully labelled days fell from their estimates (the root mean
    square of (realized - estimate) / half-band, when above 1; ``<metric>_band_scale``): learned only from
    the past, as labels arrive, never from the day itself.
    """
    labels = np.full(p.size, np.nan) if y is None else np.asarray(y, dtype=np.float64)
    day_arr = np.asarray(days)
    errors: dict[str, list[float]] = {m: [] for m in METRICS}
    out = []
    for i, day in enumerate(sorted(set(days))):
        m = day_arr == day
        row: dict[str, Any] = {"day": day, **estimate(p[m], threshold, samples=samples, band=band, seed=i)}
        known = labels[m]
        row["n_labelled"] = int(np.count_nonzero(~np.isnan(known)))
        full = row["n_labelled"] == known.size and known.size > 0
        got = realized(known.astype(np.int8), p[m], threshold) if full else {}
        for metric in METRICS:
            est, low, high = (row[f"est_{metric}{s}"] for s in ("", "_low", "_high"))
            past = errors[metric]
            scale = max(1.0, math.sqrt(sum(e * e for e in past) / len(past))) if past else 1.0
            low, high = est - scale * (est - low), est + scale * (high - est)
            row[f"est_{metric}_low"], row[f"est_{metric}_high"] = low, high
            row[f"{metric}_band_scale"] = scale
            value = got.get(metric, math.nan)
            row[f"realized_{metric}"] = value
            row[f"{metric}_within_band"] = within(value, low, high)
            half = (high - low) / (2.0 * scale)
            if math.isfinite(value) and math.isfinite(est) and half > 0:
                errors[metric].append((value - est) / half)
        out.append(row)
    return out


def coverage(rows: list[dict[str, Any]], metric: str = "average_precision") -> tuple[int, int]:
    """(windows whose realized ``metric`` lies in its band, windows with both): the validation figure."""
    flags = [r[f"{metric}_within_band"] for r in rows if r[f"{metric}_within_band"] is not None]
    return sum(flags), len(flags)
