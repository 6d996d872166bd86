"""Monitoring: data drift, score drift, performance on labelled current data, and the retraining decision.

This part of the module is the pure computational core: arrays and frames in, numbers, tables, CSV and
HTML out. Nothing here reads storage or logs anywhere.

Statistics (reference = the champion's training-time data, current = production data)
----------------------------------------------------------------------------------------
Every statistic of a column is computed from ONE sort of each side (:func:`column_drift`):

* **PSI** (population stability index): bins are the reference's quantiles at 1/bins, 2/bins, ...
  (numpy's default linear interpolation), deduplicated, with open-ended outer bins ``(-inf, q1]`` and
  ``(q_last, +inf)``; bins are right-closed, ``(q_i, q_i+1]``. Nothing is dropped: a current value
  below the reference minimum lands in the first bin, one above the maximum in the last (the seed
  system dropped them, so a current sample entirely out of range gave PSI 0). A constant reference
  column gets three bins: ``< c``, ``== c``, ``> c``. Missing values (null, NaN, +-inf) form one more
  bin, so a jump in the missing share is drift too. Proportions below ``PSI_EPSILON`` (1e-4) are
  raised to it (an empty bin would give ``ln 0``). ``PSI = sum((c - r) * ln(c / r))``.
* **KS**: two-sample Kolmogorov-Smirnov statistic ``sup |F_ref - F_cur|`` with the asymptotic
  p-value of ``scipy.stats.ks_2samp(method="asymp")`` (``kstwo.sf(d, round(n m / (n + m)))``). SciPy
  evaluates part of that tail (``2.2 <= n_eff d^2 < 370``, p between ~1e-320 and ~0.02) with an exact
  sum that costs ~0.5 s per column at a million rows; above ``KS_EXACT_N`` effective rows that part is
  computed with the Maag-Dicaire approximation ``2 exp(-(6 n d + 1)^2 / (18 n))``, within 0.5 % of
  SciPy for p > 1e-10 (and only further out in tails that no threshold cares about).
* **Wasserstein**: the 1-D Wasserstein-1 distance (``scipy.stats.wasserstein_distance``) divided by
  the reference's standard deviation (population, ddof = 0, as Evidently does). A constant reference
  (std 0) is normalised by its mean absolute value instead, or by 1 when that is 0 too.

KS and Wasserstein ignore missing values (their counts are reported). They come from a single merge of
the two sorted samples: one ``searchsorted`` places every reference value among the current ones, the
step function ``F_ref - F_cur`` is evaluated along the merged order, its maximum absolute value over the
ends of tie groups is the KS statistic and its integral is the Wasserstein distance (in exact integer
arithmetic up to the final division). Columns run in a thread pool: polars' sort and numpy's
searchsorted and array arithmetic release the GIL. Sorting and merging run on int64 keys that order
like the floats (a bit trick, see ``_order_keys``), about 25 % faster than on the floats themselves.

Drift rule per feature (:func:`drift_table`): ``psi >= psi_threshold`` OR ``wasserstein >=
wasserstein_threshold`` OR, only when the smaller sample has fewer than ``large_sample`` values,
``ks_pvalue < ks_pvalue`` (on big samples a p-value flags shifts too small to matter).

Retraining decision
-------------------
:func:`decide` answers YES when at least one of these fires, and lists every one that did:

1. performance decay (only when the current labelled data is sufficient, see :func:`performance`):
   current AP < reference AP x (1 - ap_tolerance), or current recall < reference recall x
   (1 - recall_tolerance). The reference is the champion's held-out TEST metrics from promotion time,
   never in-sample training metrics. Doing better than the reference never fires.
2. feature drift: the share of drifted features (:func:`drift_table`) >= drift_share.
3. score drift: PSI of the model's scores >= score_psi_threshold.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import kstwo

from fraudops.config import FraudopsError, MonitorConfig, Settings
from fraudops.model import FraudModel
from fraudops.storage import Storage

PSI_EPSILON = 1e-4
"""Floor of a bin's proportion in PSI, so that empty bins give a large but finite contribution."""

KS_EXACT_N = 10_000
"""Above this effective sample size ``n m / (n + m)`` the slow SciPy tail branch is approximated."""

PLOT_SAMPLE = 100_000
"""Rows sampled (per side) for the report's histograms."""

DRIFT_COLUMNS = (
    "feature",
    "ks_statistic",
    "ks_pvalue",
    "psi",
    "wasserstein",
    "drift_detected",
    "reason",
    "n_ref",
    "n_cur",
    "missing_ref",
    "missing_cur",
)
"""Columns of :func:`drift_table`. ``n_*`` count finite values, ``missing_*`` nulls, NaNs and +-inf."""

DECISION_CSV_COLUMNS = (
    "retraining_required",
    "reasons",
    "drift_share",
    "n_drifted",
    "n_features",
    "score_psi",
    "performance_status",
    "current_average_precision",
    "reference_average_precision",
    "current_recall",
    "reference_recall",
    "drifted_features",
)


# ------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class ColumnDrift:
    """Every drift statistic of one column; see the module docstring for the definitions."""

    ks_statistic: float
    ks_pvalue: float
    psi: float
    wasserstein: float
    n_ref: int
    n_cur: int
    missing_ref: int
    missing_cur: int


def _as_float_array(x: Any) -> np.ndarray:
    """A 1-D float64 array; nulls (polars / pandas) become NaN."""
    if isinstance(x, pl.Series):
        if not (x.dtype.is_numeric() or x.dtype == pl.Boolean):
            raise TypeError(f"column {x.name!r} is not numeric ({x.dtype})")
        return x.cast(pl.Float64).to_numpy()
    if hasattr(x, "to_numpy") and not isinstance(x, np.ndarray):  # pandas, incl. nullable dtypes
        return np.asarray(x.to_numpy(dtype=np.float64, na_value=np.nan)).ravel()
    return np.asarray(x, dtype=np.float64).ravel()


_LOW63 = np.int64(0x7FFFFFFFFFFFFFFF)


def _order_keys(x: np.ndarray) -> np.ndarray:
    """int64 keys that sort like the float64 values (IEEE-754 total order: -NaN < -inf < ... < -0.0 <
    +0.0 < ... < +inf < NaN). The map is its own inverse. Integer sorts and binary searches are about
    25 % faster than float ones, which must treat NaN specially."""
    v = x.view(np.int64)
    return v ^ ((v >> 63) & _LOW63)


_KEY_NEG_INF = int(_order_keys(np.array([-np.inf]))[0])
_KEY_POS_INF = int(_order_keys(np.array([np.inf]))[0])


@dataclass(frozen=True)
class _Sorted:
    """One side of a column, sorted once: finite values, their order keys, and the missing count."""

    values: np.ndarray
    keys: np.ndarray
    missing: int

    @property
    def size(self) -> int:
        return int(self.values.size)


def _sorted_finite(x: Any, multithreaded: bool = True) -> _Sorted:
    """Sort once (polars, on the int64 order keys) and split off the missing values (null, NaN, +-inf),
    which sit at the two ends of the key order. ``multithreaded=False`` when the caller already runs
    columns in parallel."""
    values = np.ascontiguousarray(_as_float_array(x))
    keys = pl.Series(_order_keys(values)).sort(multithreaded=multithreaded).to_numpy()
    lo = int(np.searchsorted(keys, _KEY_NEG_INF, side="right"))
    hi = int(np.searchsorted(keys, _KEY_POS_INF, side="left"))
    finite = keys[lo:hi]
    return _Sorted(_order_keys(finite).view(np.float64), finite, keys.size - (hi - lo))


def _quantiles_sorted(s: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """numpy's default (linear) quantiles of an already sorted array, without another O(n) pass."""
    pos = qs * (s.size - 1)
    i = np.floor(pos).astype(np.int64)
    j = np.minimum(i + 1, s.size - 1)
    return s[i] + (pos - i) * (s[j] - s[i])


def _bin_counts(s: np.ndarray, edges: np.ndarray, side: str | Sequence[str]) -> np.ndarray:
    """Counts of sorted ``s`` in the bins cut at ``edges``; ``side='right'`` puts a value equal to an
    edge in the bin to its left."""
    sides = [side] * edges.size if isinstance(side, str) else list(side)
    cuts = [int(np.searchsorted(s, e, side=sd)) for e, sd in zip(edges, sides, strict=True)]
    return np.diff(np.asarray([0, *cuts, s.size], dtype=np.int64))


def _psi_sorted(ref: _Sorted, cur: _Sorted, bins: int) -> float:
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    r, c, r_missing, c_missing = ref.values, cur.values, ref.missing, cur.missing
    n_r, n_c = r.size + r_missing, c.size + c_missing
    if n_r == 0 or n_c == 0:
        return math.nan
    if r.size == 0:  # reference entirely missing: one bin for all finite values
        rc, cc = np.array([0]), np.array([c.size])
    elif r[0] == r[-1]:  # constant reference: below / equal / above
        edges = np.array([r[0], r[0]])
        rc, cc = _bin_counts(r, edges, ("left", "right")), _bin_counts(c, edges, ("left", "right"))
    else:
        edges = np.unique(_quantiles_sorted(r, np.arange(1, bins) / bins))
        rc, cc = _bin_counts(r, edges, "right"), _bin_counts(c, edges, "right")
    rp = np.maximum(np.append(rc, r_missing) / n_r, PSI_EPSILON)
    cp = np.maximum(np.append(cc, c_missing) / n_c, PSI_EPSILON)
    return float(np.sum((cp - rp) * np.log(cp / rp)))


def _ks_pvalue(d: float, n_ref: int, n_cur: int) -> float:
    """Asymptotic two-sided p-value as in ``scipy.stats.ks_2samp(method="asymp")``."""
    if n_ref == 0 or n_cur == 0 or math.isnan(d):
        return math.nan
    big, small = max(n_ref, n_cur), min(n_ref, n_cur)
    en = float(np.round(big * small / (big + small)))
    if en > KS_EXACT_N and 2.2 <= en * d * d < 370.0 and d < 0.5:
        # SciPy's branch here is 2 * smirnov(en, d), an exact sum over ~en terms (slow at large n)
        return float(min(1.0, 2.0 * math.exp(-((6.0 * en * d + 1.0) ** 2) / (18.0 * en))))
    return float(np.clip(kstwo.sf(d, en), 0.0, 1.0))


def _merge_stats(ref: _Sorted, cur: _Sorted) -> tuple[float, float]:
    """``(KS statistic, Wasserstein-1 distance)`` of two sorted, finite, non-empty samples."""
    r, c = ref.values, cur.values
    n, m = r.size, c.size
    total = n + m
    # position of each reference value in the merged order (on the keys; ties: reference first, and
    # -0.0 before +0.0, which the float gaps below still treat as one tie group)
    pos = np.searchsorted(cur.keys, ref.keys, side="left")
    pos += np.arange(n, dtype=pos.dtype)
    is_ref = np.zeros(total, dtype=bool)
    is_ref[pos] = True
    merged = np.empty(total, dtype=np.float64)
    merged[pos] = r
    merged[~is_ref] = c
    # n m (F_ref - F_cur) just after merged[k], in exact integers: with r_k = refs among the first
    # k + 1 values, r_k m - (k + 1 - r_k) n = r_k (n + m) - (k + 1) n
    diff = is_ref.astype(np.int64)
    np.cumsum(diff, out=diff)
    diff *= total
    diff -= np.arange(n, n * (total + 1), n, dtype=np.int64)
    np.abs(diff, out=diff)
    head = diff[:-1]
    gaps = np.diff(merged)
    # inside a tie group the running value is not a CDF value: only the group's last position counts
    # (gap > 0); the last position overall has both CDFs at 1.
    ks = int(np.max(head, where=gaps > 0, initial=0)) / (n * m)
    wasserstein = float(np.dot(head.astype(np.float64), gaps)) / (n * m)
    return ks, wasserstein


def _scale(r: np.ndarray) -> float:
    std = float(np.std(r))
    if std > 0:
        return std
    mean_abs = float(np.mean(np.abs(r)))
    return mean_abs if mean_abs > 0 else 1.0


def _column_drift_sorted(ref: _Sorted, cur: _Sorted, bins: int) -> ColumnDrift:
    psi_value = _psi_sorted(ref, cur, bins)
    if ref.size and cur.size:
        d, w = _merge_stats(ref, cur)
        p = _ks_pvalue(d, ref.size, cur.size)
        w /= _scale(ref.values)
    else:
        d = p = w = math.nan
    return ColumnDrift(d, p, psi_value, w, ref.size, cur.size, ref.missing, cur.missing)


def column_drift(ref: Any, cur: Any, bins: int = 10) -> ColumnDrift:
    """KS, PSI and normalised Wasserstein of one column from a single sort of each side.

    Accepts anything array-like (numpy, list, polars or pandas Series). With no finite value on one
    side, KS and Wasserstein are NaN; PSI still sees the missing-value bin.
    """
    return _column_drift_sorted(_sorted_finite(ref), _sorted_finite(cur), bins)


def psi(ref: Any, cur: Any, bins: int = 10) -> float:
    """Population stability index of ``cur`` against ``ref`` (quantile bins of the reference, open
    outer bins, a bin for missing values, proportions floored at ``PSI_EPSILON``; see module docs)."""
    return _psi_sorted(_sorted_finite(ref), _sorted_finite(cur), bins)


def ks(ref: Any, cur: Any) -> tuple[float, float]:
    """``(statistic, p-value)`` of the two-sample KS test on the finite values (p-value as
    ``scipy.stats.ks_2samp(method="asymp")``); NaNs when a side has no finite value."""
    r, c = _sorted_finite(ref), _sorted_finite(cur)
    if not (r.size and c.size):
        return math.nan, math.nan
    d, _ = _merge_stats(r, c)
    return d, _ks_pvalue(d, r.size, c.size)


def wasserstein_norm(ref: Any, cur: Any) -> float:
    """Wasserstein-1 distance of the finite values divided by the reference's std (ddof 0); a
    constant reference is divided by its mean absolute value, or 1 if that is 0. NaN if a side is empty."""
    r, c = _sorted_finite(ref), _sorted_finite(cur)
    if not (r.size and c.size):
        return math.nan
    return _merge_stats(r, c)[1] / _scale(r.values)


# ------------------------------------------------------------------------------------ drift table


def _verdict(stats: ColumnDrift, cfg: MonitorConfig) -> tuple[bool, str]:
    reasons = []
    if stats.psi >= cfg.psi_threshold:
        reasons.append(f"psi {stats.psi:.3f} >= {cfg.psi_threshold:g}")
    if stats.wasserstein >= cfg.wasserstein_threshold:
        reasons.append(f"wasserstein {stats.wasserstein:.3f} >= {cfg.wasserstein_threshold:g} std")
    n_min = min(stats.n_ref, stats.n_cur)
    if n_min < cfg.large_sample and stats.ks_pvalue < cfg.ks_pvalue:
        reasons.append(
            f"ks p-value {stats.ks_pvalue:.2g} < {cfg.ks_pvalue:g} (n {n_min:,} < {cfg.large_sample:,})"
        )
    return bool(reasons), "; ".join(reasons)


def _default_jobs(n_tasks: int) -> int:
    return max(1, min(n_tasks, os.cpu_count() or 1))


def drift_table(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    features: Sequence[str],
    cfg: MonitorConfig,
    *,
    n_jobs: int | None = None,
) -> pl.DataFrame:
    """One row per feature: KS statistic and p-value, PSI, normalised Wasserstein, verdict and reason.

    A feature has drifted when ``psi >= cfg.psi_threshold`` OR ``wasserstein >=
    cfg.wasserstein_threshold`` (in reference standard deviations) OR — only when the smaller side has
    fewer than ``cfg.large_sample`` finite values — ``ks_pvalue < cfg.ks_pvalue``. On large samples a
    KS p-value flags shifts too small to matter, so there only the two effect sizes (PSI, Wasserstein)
    decide; the p-value is still reported. ``reason`` names every rule that fired (empty if none).

    Columns: ``DRIFT_COLUMNS`` (``n_*`` = finite values, ``missing_*`` = null / NaN / +-inf counts).
    Features run in a thread pool of ``n_jobs`` threads (default: one per CPU).
    """
    features = list(features)
    for name, frame in (("reference", reference), ("current", current)):
        absent = [f for f in features if f not in frame.columns]
        if absent:
            raise ValueError(f"{name} data lacks feature column(s): {', '.join(absent)}")

    jobs = n_jobs or _default_jobs(len(features))
    parallel = jobs > 1 and len(features) > 1

    def one(feature: str) -> ColumnDrift:
        r = _sorted_finite(reference.get_column(feature), multithreaded=not parallel)
        c = _sorted_finite(current.get_column(feature), multithreaded=not parallel)
        return _column_drift_sorted(r, c, cfg.bins)

    if parallel:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="drift") as pool:
            results = list(pool.map(one, features))
    else:
        results = [one(f) for f in features]

    rows: dict[str, list[Any]] = {c: [] for c in DRIFT_COLUMNS}
    for feature, stats in zip(features, results, strict=True):
        drifted, reason = _verdict(stats, cfg)
        rows["feature"].append(feature)
        for key, value in asdict(stats).items():
            rows[key].append(value)
        rows["drift_detected"].append(drifted)
        rows["reason"].append(reason)
    schema = {
        "feature": pl.String,
        "ks_statistic": pl.Float64,
        "ks_pvalue": pl.Float64,
        "psi": pl.Float64,
        "wasserstein": pl.Float64,
        "drift_detected": pl.Boolean,
        "reason": pl.String,
        "n_ref": pl.Int64,
        "n_cur": pl.Int64,
        "missing_ref": pl.Int64,
        "missing_cur": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)


def score_drift(ref_scores: Any, cur_scores: Any, cfg: MonitorConfig) -> dict[str, Any]:
    """Drift of the model's score distribution: PSI, KS, normalised Wasserstein, and ``drifted`` =
    ``psi >= cfg.score_psi_threshold`` (the only rule used for scores)."""
    stats = column_drift(ref_scores, cur_scores, cfg.bins)
    return {
        "psi": stats.psi,
        "ks_statistic": stats.ks_statistic,
        "ks_pvalue": stats.ks_pvalue,
        "wasserstein": stats.wasserstein,
        "n_ref": stats.n_ref,
        "n_cur": stats.n_cur,
        "drifted": bool(stats.psi >= cfg.score_psi_threshold),
        "threshold": cfg.score_psi_threshold,
    }


# ------------------------------------------------------------------------------------ performance


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
    :mod:`fraudops.evaluate`.

    ``y`` = labels (1 fraud, 0 genuine; NaN = not labelled yet, such rows are left out), ``p`` =
    scores (no NaN), alert rule ``p >= threshold``. ``status`` is ``"ok"``, or ``"insufficient data"`` when
    there are fewer than ``cfg.min_rows`` labelled rows or ``cfg.min_frauds`` frauds: the numbers are
    still reported but :func:`decide` takes no decision on them. When ``frame`` (rows aligned with y
    and p) has the customer and timestamp columns, card precision @ ``k`` is added.
    """
    from fraudops import evaluate as ev
    from fraudops.data import CUSTOMER, TX_TIME

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


# ------------------------------------------------------------------------------------ decision


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def decide(
    drift: pl.DataFrame,
    score: Mapping[str, Any] | None,
    perf: Mapping[str, Any] | None,
    reference_metrics: Mapping[str, Any],
    cfg: MonitorConfig,
) -> dict[str, Any]:
    """The retraining decision: ``{"retraining_required": "YES"/"NO", "reasons": [...], "notes": [...],
    ...numbers}``. Rules are in the module docstring; ``reasons`` lists every rule that fired with its
    numbers, ``notes`` what was not assessed and why (e.g. too little labelled data)."""
    reasons: list[str] = []
    notes: list[str] = []

    # 1. performance decay, against the champion's held-out test metrics
    ref_ap = _num(reference_metrics.get("average_precision"))
    ref_recall = _num(reference_metrics.get("recall"))
    cur_ap = _num(perf.get("average_precision")) if perf else math.nan
    cur_recall = _num(perf.get("recall")) if perf else math.nan
    perf_status = str(perf.get("status", "ok")) if perf else "no labelled data"
    if perf is None:
        notes.append("performance not assessed: no labelled current data")
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
    score_psi = _num(score.get("psi")) if score else math.nan
    if score_psi >= cfg.score_psi_threshold:
        reasons.append(
            f"score drift: PSI of the model's scores {score_psi:.3f} >= {cfg.score_psi_threshold:g}"
        )
    elif score is None:
        notes.append("score drift not assessed: no scores")

    return {
        "retraining_required": "YES" if reasons else "NO",
        "reasons": reasons,
        "notes": notes,
        "drift_share": share,
        "n_drifted": len(drifted),
        "n_features": n_features,
        "drifted_features": drifted,
        "score_psi": score_psi,
        "performance_status": perf_status,
        "current_average_precision": cur_ap,
        "reference_average_precision": ref_ap,
        "current_recall": cur_recall,
        "reference_recall": ref_recall,
    }


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value)
    return str(value)


def decision_csv(decision: Mapping[str, Any]) -> str:
    """The decision as a two-line CSV; the first column is ``retraining_required`` (YES / NO), as the
    seed's retraining Lambda reads ``rows[1][0]``; then ``reasons`` joined with "; " and key numbers."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(DECISION_CSV_COLUMNS)
    writer.writerow([_csv_value(decision.get(col)) for col in DECISION_CSV_COLUMNS])
    return buf.getvalue()


# ------------------------------------------------------------------------------------ HTML report

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
.decision{border-radius:8px;padding:1rem 1.5rem;margin:1rem 0}
.decision.yes{background:#fde8e8;border:2px solid #c0392b}
.decision.no{background:#e8f6ec;border:2px solid #27ae60}
.verdict{font-size:2.4rem;font-weight:700}.yes .verdict{color:#c0392b}.no .verdict{color:#1e8449}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}tr.drift td{background:#fdecea}
.muted{color:#666}img{max-width:100%;height:auto}
.bars{display:grid;grid-template-columns:max-content 1fr max-content;gap:2px 8px;align-items:center;
font-size:.8rem;max-width:900px}
.track{position:relative;height:12px;background:#f4f4f4}
.bar{height:12px;background:#2c7fb8}.bar.drift{background:#c0392b}
.thr{position:absolute;top:-2px;bottom:-2px;border-left:2px dashed #555}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:8px}
.grid svg{width:100%;height:auto;border:1px solid #eee}
.ref{color:#2c7fb8;font-weight:600}.cur{color:#e6550d;font-weight:600}
"""

_REF_COLOR, _CUR_COLOR, _DRIFT_COLOR = "#2c7fb8", "#e6550d", "#c0392b"


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "—"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return html.escape(str(value))


def _kv_table(items: Sequence[tuple[str, Any]]) -> str:
    rows = "".join(f'<tr><th class="l">{html.escape(k)}</th><td>{_fmt(v)}</td></tr>' for k, v in items)
    return f"<table>{rows}</table>"


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any, dpi: int = 90) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="chart" src="data:image/png;base64,{data}">'


def _finite(x: Any) -> np.ndarray:
    a = _as_float_array(x)
    return a[np.isfinite(a)]


def _sample(x: Any, n: int = PLOT_SAMPLE, seed: int = 0) -> np.ndarray:
    a = _as_float_array(x)
    if a.size > n:
        a = a[np.random.default_rng(seed).choice(a.size, size=n, replace=False)]
    return a[np.isfinite(a)]


def _hist_edges(ref: np.ndarray, cur: np.ndarray, bins: int, clip: bool = True) -> np.ndarray | None:
    """Common bin edges: the pooled 0.5-99.5 % quantile range (``clip``) or the full range."""
    both = np.concatenate([ref, cur])
    if both.size == 0:
        return None
    lo, hi = np.quantile(both, [0.005, 0.995]) if clip else (both.min(), both.max())
    if not hi > lo:
        lo, hi = float(both.min()), float(both.max())
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _shares(data: np.ndarray, edges: np.ndarray) -> np.ndarray:
    if data.size == 0:
        return np.zeros(edges.size - 1)
    counts, _ = np.histogram(np.clip(data, edges[0], edges[-1]), edges)
    return counts / data.size


def _svg_histogram(feature: str, ref: np.ndarray, cur: np.ndarray, subtitle: str, drifted: bool) -> str:
    """A small inline SVG: reference and current shares per bin as two step lines."""
    w, h, left, right, top, bottom = 270, 130, 6, 6, 34, 18
    edges = _hist_edges(ref, cur, 40)
    title_color = _DRIFT_COLOR if drifted else "#222"
    head = (
        f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(feature)}">'
        f'<text x="{left}" y="13" font-size="11" font-weight="600" fill="{title_color}">'
        f"{html.escape(feature)}</text>"
        f'<text x="{left}" y="26" font-size="9" fill="#555">{html.escape(subtitle)}</text>'
    )
    if edges is None:
        return head + f'<text x="{left}" y="70" font-size="10" fill="#888">no finite values</text></svg>'
    r_share, c_share = _shares(ref, edges), _shares(cur, edges)
    y_max = max(float(r_share.max()), float(c_share.max()), 1e-12)
    xs = left + (edges - edges[0]) / (edges[-1] - edges[0]) * (w - left - right)
    base = h - bottom

    def path(share: np.ndarray) -> str:
        ys = base - share / y_max * (base - top)
        pts = [f"{xs[0]:.1f},{base:.1f}"]
        for i, y in enumerate(ys):
            pts.append(f"{xs[i]:.1f},{y:.1f}")
            pts.append(f"{xs[i + 1]:.1f},{y:.1f}")
        pts.append(f"{xs[-1]:.1f},{base:.1f}")
        return " ".join(pts)

    return (
        head
        + f'<line x1="{left}" y1="{base}" x2="{w - right}" y2="{base}" stroke="#aaa"/>'
        + f'<polyline points="{path(r_share)}" fill="none" stroke="{_REF_COLOR}" stroke-width="1.3"/>'
        + f'<polyline points="{path(c_share)}" fill="none" stroke="{_CUR_COLOR}" stroke-width="1.3"/>'
        + f'<text x="{left}" y="{h - 4}" font-size="9" fill="#555">{edges[0]:.4g}</text>'
        + f'<text x="{w - right}" y="{h - 4}" font-size="9" fill="#555" text-anchor="end">'
        + f"{edges[-1]:.4g}</text>"
        + "</svg>"
    )


def _psi_bars(table: pl.DataFrame, threshold: float) -> str:
    """PSI per feature as horizontal CSS bars, largest first, with the threshold as a dashed line."""
    t = table.with_columns(pl.col("psi").fill_nan(None)).sort("psi", descending=True, nulls_last=True)
    values = [v for v in t["psi"].to_list() if v is not None]
    scale = max([threshold * 1.25, *values]) if values else threshold * 1.25
    thr = min(100.0, threshold / scale * 100)
    cells = []
    for row in t.iter_rows(named=True):
        value = row["psi"]
        width = 0.0 if value is None else min(100.0, value / scale * 100)
        cls = "bar drift" if row["drift_detected"] else "bar"
        cells.append(
            f"<span>{html.escape(row['feature'])}</span>"
            f'<div class="track"><div class="{cls}" style="width:{width:.2f}%"></div>'
            f'<div class="thr" style="left:{thr:.2f}%"></div></div>'
            f"<span>{_fmt(value)}</span>"
        )
    legend = (
        f'<p class="muted">Dashed line: PSI threshold {threshold:g}. Red: drift detected by any rule '
        "(PSI, Wasserstein or, on small samples, the KS p-value).</p>"
    )
    return legend + '<div class="bars">' + "".join(cells) + "</div>"


def _score_chart(ref_scores: Any, cur_scores: Any) -> str:
    ref, cur = _sample(ref_scores), _sample(cur_scores, seed=1)
    edges = _hist_edges(ref, cur, 50, clip=False)
    fig = _figure(7.5, 3.2)
    ax = fig.add_axes((0.09, 0.17, 0.88, 0.72))
    if edges is not None:
        for data, color, label in ((ref, _REF_COLOR, "reference"), (cur, _CUR_COLOR, "current")):
            ax.stairs(_shares(data, edges), edges, color=color, label=label, linewidth=1.3)
        ax.set_yscale("log")
        ax.legend()
    ax.set(xlabel="score", ylabel="share of rows (log)", title="Model score distribution")
    return _png(fig)


def _pr_chart(y: Any, p: Any, max_points: int = 2000) -> str | None:
    """Precision-recall curve on all labelled rows, drawn with at most ``max_points`` points."""
    from sklearn.metrics import precision_recall_curve

    from fraudops import evaluate as ev

    ya = np.asarray(y, dtype=np.float64).ravel()
    pa = np.asarray(p, dtype=np.float64).ravel()
    keep = ~np.isnan(ya)
    ya, pa = ya[keep].astype(np.int8), pa[keep]
    if not (ya.size and 0 < ya.sum() < ya.size):
        return None
    precision, recall, _ = precision_recall_curve(ya, pa)
    if precision.size > max_points:
        idx = np.unique(np.linspace(0, precision.size - 1, max_points).astype(np.int64))
        precision, recall = precision[idx], recall[idx]
    fig = _figure(5.5, 4.0)
    ax = fig.add_axes((0.13, 0.12, 0.82, 0.8))
    ax.step(recall, precision, where="post", label=f"AP = {ev.average_precision(ya, pa):.3f}")
    ax.axhline(ya.mean(), color="grey", linestyle="--", label=f"fraud rate = {ya.mean():.4f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("Precision-recall on current labelled data")
    ax.legend(loc="upper right")
    return _png(fig)


def html_report(
    decision: Mapping[str, Any],
    drift_table: pl.DataFrame,
    reference: pl.DataFrame,
    current: pl.DataFrame,
    features: Sequence[str],
    ref_scores: Any,
    cur_scores: Any,
    perf: Mapping[str, Any] | None,
    y: Any = None,
    p: Any = None,
    *,
    cfg: MonitorConfig | None = None,
    title: str = "fraudops monitoring report",
) -> str:
    """A self-contained HTML page: inline CSS, charts as inline SVG, CSS bars or base64 PNGs (matplotlib,
    Agg); nothing is fetched. In order: the decision (YES / NO, the reasons that fired, notes), key
    numbers, performance on current data, the per-feature statistics table, PSI per feature,
    reference-vs-current histograms per feature (on at most ``PLOT_SAMPLE`` sampled rows per side), the
    score distributions and, when labels ``y`` and scores ``p`` are given, the precision-recall curve
    on current data. ``ref_scores`` / ``cur_scores`` / ``perf`` may be None (section left out);
    ``cfg`` gives the PSI threshold drawn on the PSI chart."""
    features = list(features)
    yes = decision.get("retraining_required") == "YES"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<div class="decision {"yes" if yes else "no"}">',
        f'<div class="verdict">Retraining required: {"YES" if yes else "NO"}</div>',
    ]
    reasons = list(decision.get("reasons") or [])
    if reasons:
        parts.append("<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in reasons) + "</ul>")
    else:
        parts.append("<p>No rule fired.</p>")
    notes = list(decision.get("notes") or [])
    if notes:
        parts.append('<ul class="muted">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</div>")

    parts.append("<h2>Key numbers</h2>")
    parts.append(
        _kv_table(
            [
                ("drifted features", f"{decision.get('n_drifted', 0)} of {decision.get('n_features', 0)}"),
                ("drift share", _num(decision.get("drift_share"))),
                ("score PSI", _num(decision.get("score_psi"))),
                ("performance status", decision.get("performance_status", "")),
                ("average precision (current)", _num(decision.get("current_average_precision"))),
                ("average precision (reference, test)", _num(decision.get("reference_average_precision"))),
                ("recall (current)", _num(decision.get("current_recall"))),
                ("recall (reference, test)", _num(decision.get("reference_recall"))),
                ("reference rows", reference.height),
                ("current rows", current.height),
            ]
        )
    )
    if perf:
        parts.append("<h2>Performance on current labelled data</h2>")
        parts.append(_kv_table([(k, v) for k, v in perf.items() if not isinstance(v, (list, dict))]))

    parts.append("<h2>Per-feature drift</h2>")
    cols = [c for c in DRIFT_COLUMNS if c in drift_table.columns]

    def cls(c: str) -> str:
        return ' class="l"' if c in ("feature", "reason") else ""

    head = "".join(f"<th{cls(c)}>{html.escape(c)}</th>" for c in cols)
    body = []
    for row in drift_table.iter_rows(named=True):
        cells = "".join(f"<td{cls(c)}>{_fmt(row[c])}</td>" for c in cols)
        row_class = ' class="drift"' if row.get("drift_detected") else ""
        body.append(f"<tr{row_class}>{cells}</tr>")
    parts.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")

    if drift_table.height:
        parts.append("<h2>PSI per feature</h2>")
        parts.append(_psi_bars(drift_table, (cfg or MonitorConfig()).psi_threshold))
        shown = [f for f in features if f in reference.columns and f in current.columns]
        if shown:
            ref_s = reference.select(shown)
            cur_s = current.select(shown)
            if ref_s.height > PLOT_SAMPLE:
                ref_s = ref_s.sample(n=PLOT_SAMPLE, seed=0)
            if cur_s.height > PLOT_SAMPLE:
                cur_s = cur_s.sample(n=PLOT_SAMPLE, seed=1)
            info = {row["feature"]: row for row in drift_table.iter_rows(named=True)}
            charts = []
            for f in shown:
                row = info.get(f)
                subtitle = (
                    f"PSI {_fmt(row['psi'])} · W {_fmt(row['wasserstein'])} · KS {_fmt(row['ks_statistic'])}"
                    if row
                    else ""
                )
                drifted = bool(row and row["drift_detected"])
                charts.append(_svg_histogram(f, _finite(ref_s[f]), _finite(cur_s[f]), subtitle, drifted))
            parts.append("<h2>Reference vs current distributions</h2>")
            parts.append(
                '<p class="muted">Share of rows per bin: <span class="ref">reference</span> vs '
                f'<span class="cur">current</span>; up to {PLOT_SAMPLE:,} sampled rows per side, range '
                "clipped to the pooled 0.5-99.5 % quantiles (values beyond fall in the end bins); "
                "red title = drift detected.</p>"
            )
            parts.append('<div class="grid">' + "".join(charts) + "</div>")

    if ref_scores is not None and cur_scores is not None:
        parts.append("<h2>Model scores</h2>")
        parts.append(_score_chart(ref_scores, cur_scores))

    if y is not None and p is not None:
        chart = _pr_chart(y, p)
        if chart:
            parts.append("<h2>Precision-recall (current data)</h2>")
            parts.append(chart)
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------ the step

OUTPUTS = "monitoring_outputs"
DRIFT_CSV = f"{OUTPUTS}/drift/drift_metrics.csv"
PERFORMANCE_CSV = f"{OUTPUTS}/metrics/performance_metrics.csv"
REFERENCE_METRICS_JSON = f"{OUTPUTS}/metrics/reference_metrics.json"
CURRENT_METRICS_JSON = f"{OUTPUTS}/metrics/current_metrics.json"
DECISION_CSV = f"{OUTPUTS}/retraining_decision/retrain_decision.csv"
DECISION_JSON = f"{OUTPUTS}/retraining_decision/retrain_decision.json"
REPORT_HTML = f"{OUTPUTS}/report.html"


def load_current(storage: Storage, settings: Settings, model: FraudModel) -> pl.DataFrame:
    """Every file of monitoring_inputs/current_data/, validated; extra or missing columns are errors."""
    from fraudops import data

    files = data.table_files(storage, data.CURRENT)
    if not files:
        raise FraudopsError(f"no current data in {storage.uri(data.CURRENT)}: add CSV or Parquet files there")
    expected = {*data.ROLES.values(), data.ROW_ERROR}
    kind_features = settings.data.kind == "features"
    if kind_features:
        expected |= set(model.feature_names)
    frames, problems = [], []
    for rel in files:
        v = data.load_table(
            storage, rel, settings.data, feature_columns=model.feature_names if kind_features else None
        )
        problems += v.problems
        if not v.problems:
            problems += [
                data.Problem(storage.uri(rel), c, "unexpected column (not in the champion's input schema)")
                for c in v.frame.columns
                if c not in expected
            ]
        frames.append(v.valid)
    if problems:
        raise data.DataValidationError(problems)
    return pl.concat(frames, how="diagonal_relaxed")


def performance_rows(perf: Mapping[str, Any] | None, reference: Mapping[str, Any]) -> pl.DataFrame:
    """performance_metrics.csv: each metric on current data beside the champion's held-out value."""
    names = ["average_precision", "roc_auc", "recall", "precision", "f1", "recall_at_1pct_fpr"]
    names += [k for k in reference if k.startswith("card_precision_at_")]
    rows = []
    for name in names:
        cur = _num((perf or {}).get(name))
        ref = _num(reference.get(name))
        rows.append({"metric": name, "reference": ref, "current": cur, "change": cur - ref})
    status = (perf or {}).get("status", "no labels")
    return pl.DataFrame(rows).with_columns(pl.lit(status).alias("status"))


def monitor_step(
    settings: Settings,
    storage: Storage,
    *,
    execution_id: str | None = None,
    parent_run_id: str | None = None,
    previous: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """The pipeline's monitor step: current data vs the champion's reference, and a retraining decision.

    Everything is computed before anything is written, so bad input leaves the previous outputs as they
    were; each output file is replaced atomically.
    """
    import mlflow

    from fraudops import data, evaluate, features, registry

    cfg = settings.monitor
    version, model = registry.champion_model(settings)
    if not storage.exists(registry.REFERENCE_META) or not storage.exists(registry.REFERENCE_DATA):
        raise FraudopsError(
            f"no monitoring reference in {storage.uri(registry.REFERENCE_DIR)}: run select_champion"
        )
    meta = storage.read_json(registry.REFERENCE_META)
    if int(meta["version"]) != version:
        raise FraudopsError(
            f"the monitoring reference {storage.uri(registry.REFERENCE_META)} is for version "
            f"{meta['version']} but the champion is version {version}: run select_champion (or champion "
            "rollback) to refresh it"
        )
    reference = storage.read_frame(registry.REFERENCE_DATA)
    current = load_current(storage, settings, model)
    if settings.data.kind == "transactions":
        history = data.load_folder(storage, [data.RAW], settings.data, labelled_only=False)
        current = features.features_for(current, history, settings.features)
    names = model.feature_names
    scores = model.predict_proba(current)
    drift = drift_table(reference, current, names, cfg)
    score = score_drift(reference["score"].to_numpy(), scores, cfg)
    y = None
    perf = None
    if data.LABEL in current.columns and current[data.LABEL].is_not_null().any():
        y = current[data.LABEL].cast(pl.Float64).to_numpy()
        judged = np.arange(current.height)
        if settings.data.kind == "transactions":
            # as in the champion's test metrics: cards already known to be compromised are left out
            rows = current.with_columns(pl.int_range(pl.len()).alias("_row"))
            kept = evaluate.remove_known_compromised(
                rows.filter(pl.col(data.LABEL).is_not_null()),
                history.filter(pl.col(data.LABEL).is_not_null()),
                settings.features.delay_days,
            )
            unlabelled = rows.filter(pl.col(data.LABEL).is_null())
            judged = np.sort(np.concatenate([kept["_row"].to_numpy(), unlabelled["_row"].to_numpy()]))
        perf = performance(
            y[judged], scores[judged], model.threshold, current[judged], cfg=cfg, k=settings.train.top_k
        )
    decision = decide(drift, score, perf, meta["metrics"], cfg)
    decision.update(
        {
            "model_version": version,
            "current_rows": current.height,
            "monitored_at": dt.datetime.now(dt.UTC).isoformat(),
        }
    )
    report = html_report(
        decision,
        drift,
        reference,
        current,
        names,
        reference["score"].to_numpy(),
        scores,
        perf,
        y,
        scores,
        cfg=cfg,
    )
    perf_table = performance_rows(perf, meta["metrics"])

    storage.write_frame(DRIFT_CSV, drift)
    storage.write_frame(PERFORMANCE_CSV, perf_table)
    storage.write_json(REFERENCE_METRICS_JSON, {"model_version": version, "metrics": meta["metrics"]})
    storage.write_json(
        CURRENT_METRICS_JSON, {"model_version": version, "performance": perf, "score_drift": score}
    )
    storage.write_text(REPORT_HTML, report)
    storage.write_json(DECISION_JSON, decision)
    storage.write_text(DECISION_CSV, decision_csv(decision))  # last: the trigger acts on this file

    with registry.step_run(settings, "monitor", execution_id, parent_run_id) as run:
        mlflow.log_params(
            {"model_version": version, "current_rows": current.height, "n_features": len(names)}
        )
        mlflow.log_metrics(
            {
                k: v
                for k, v in {
                    "drift_share": decision["drift_share"],
                    "n_drifted": decision["n_drifted"],
                    "score_psi": score["psi"],
                    **{f"current_{k}": _num(v) for k, v in (perf or {}).items() if k != "status"},
                }.items()
                if math.isfinite(_num(v))
            }
        )
        mlflow.set_tags(
            {
                "retraining_required": decision["retraining_required"],
                "reasons": "; ".join(decision["reasons"])[:5000],
            }
        )
        mlflow.log_text(report, "report.html")
        mlflow.log_text(drift.write_csv(), "drift_metrics.csv")
        mlflow.log_text(perf_table.write_csv(), "performance_metrics.csv")
        mlflow.log_dict(registry.json_safe(decision), "retrain_decision.json")
        run_id = run.info.run_id
    return {
        "retraining_required": decision["retraining_required"],
        "reasons": decision["reasons"],
        "drifted_features": decision["n_drifted"],
        "features": decision["n_features"],
        "score_psi": round(_num(score["psi"]), 4),
        "performance": (perf or {}).get("status", "no labels"),
        "current_average_precision": round(_num(decision["current_average_precision"]), 4),
        "report": storage.uri(REPORT_HTML),
        "decision_file": storage.uri(DECISION_CSV),
        "run_id": run_id,
    }
