"""The monitoring report: the numbers a page shows, computed here; the page itself is a Jinja2 template.

Self-contained (inline CSS, charts as inline SVG or base64 PNG), so it opens offline. In order: the
decision (YES / NO, the reasons that fired, notes), the data judged and the reference, key numbers,
performance on current data, the per-feature statistics, PSI per feature, reference-vs-current histograms
(on at most ``PLOT_SAMPLE`` sampled rows per side), the score distributions and, with labels, the
precision-recall curve on current data.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import numpy as np
import polars as pl

from fraudops.config import MonitorConfig
from fraudops.modeling import plots
from fraudops.monitoring import estimate
from fraudops.monitoring.decision import Decision
from fraudops.monitoring.history import SUMMARY_COLUMNS
from fraudops.monitoring.stats import DRIFT_COLUMNS

PLOT_SAMPLE = 100_000
"""Rows sampled (per side) for the report's histograms."""

_REF_COLOR, _CUR_COLOR = "#2c7fb8", "#e6550d"
_SVG = {"width": 270, "height": 130, "left": 6, "right": 6, "top": 34, "bottom": 18}


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fraudops.monitoring", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("report.html.j2")


def _floats(x: Any) -> np.ndarray:
    if isinstance(x, pl.Series):
        return x.cast(pl.Float64).to_numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def _sample(x: Any, n: int = PLOT_SAMPLE, seed: int = 0) -> np.ndarray:
    a = _floats(x)
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


def histogram(feature: str, ref: np.ndarray, cur: np.ndarray, subtitle: str, drifted: bool) -> dict[str, Any]:
    """What the template draws for one feature: reference and current shares per bin as two step lines."""
    out: dict[str, Any] = {**_SVG, "feature": feature, "subtitle": subtitle, "drifted": drifted}
    edges = _hist_edges(ref, cur, 40)
    out["reference"] = out["current"] = None
    if edges is None:
        return out
    r_share, c_share = _shares(ref, edges), _shares(cur, edges)
    y_max = max(float(r_share.max()), float(c_share.max()), 1e-12)
    w, h = _SVG["width"], _SVG["height"]
    left, right, top, bottom = _SVG["left"], _SVG["right"], _SVG["top"], _SVG["bottom"]
    xs = left + (edges - edges[0]) / (edges[-1] - edges[0]) * (w - left - right)
    base = h - bottom

    def points(share: np.ndarray) -> str:
        ys = base - share / y_max * (base - top)
        pts = [f"{xs[0]:.1f},{base:.1f}"]
        for i, y in enumerate(ys):
            pts += [f"{xs[i]:.1f},{y:.1f}", f"{xs[i + 1]:.1f},{y:.1f}"]
        pts.append(f"{xs[-1]:.1f},{base:.1f}")
        return " ".join(pts)

    out.update(
        base=base,
        reference=points(r_share),
        current=points(c_share),
        low=f"{edges[0]:.4g}",
        high=f"{edges[-1]:.4g}",
    )
    return out


def psi_bars(table: pl.DataFrame, threshold: float) -> tuple[list[dict[str, Any]], float]:
    """PSI per feature as bar widths (% of the largest), largest first, and where the threshold falls."""
    t = table.with_columns(pl.col("psi").fill_nan(None)).sort("psi", descending=True, nulls_last=True)
    values = [v for v in t["psi"].to_list() if v is not None]
    scale = max([threshold * 1.25, *values]) if values else threshold * 1.25
    bars = [
        {
            "feature": row["feature"],
            "psi": row["psi"],
            "drifted": bool(row["drift_detected"]),
            "width": 0.0 if row["psi"] is None else min(100.0, row["psi"] / scale * 100),
        }
        for row in t.iter_rows(named=True)
    ]
    return bars, min(100.0, threshold / scale * 100)


def score_chart(ref_scores: Any, cur_scores: Any) -> str:
    ref, cur = _sample(ref_scores), _sample(cur_scores, seed=1)
    edges = _hist_edges(ref, cur, 50, clip=False)
    fig = plots.figure(7.5, 3.2)
    ax = fig.add_subplot()
    if edges is not None:
        for data, color, label in ((ref, _REF_COLOR, "reference"), (cur, _CUR_COLOR, "current")):
            ax.stairs(_shares(data, edges), edges, color=color, label=label, linewidth=1.3)
        ax.set_yscale("log")
        ax.legend()
    ax.set(xlabel="score", ylabel="share of rows (log)", title="Model score distribution")
    return plots.png_img(fig)


def trend_chart(trend: pl.DataFrame) -> str | None:
    """The monitoring history over runs: drift share, and realized against estimated AP with its band."""
    if trend.height < 2:
        return None
    x = np.arange(1, trend.height + 1)
    fig = plots.figure(7.5, 3.2)
    ax = fig.add_subplot()
    col = {c: _floats(trend[c]) for c in trend.columns if trend.schema[c].is_numeric()}
    ax.fill_between(
        x,
        col["estimated_average_precision_low"],
        col["estimated_average_precision_high"],
        color=_CUR_COLOR,
        alpha=0.2,
        label="estimated AP band",
    )
    ax.plot(x, col["estimated_average_precision"], color=_CUR_COLOR, marker="o", label="estimated AP")
    ax.plot(x, col["realized_average_precision"], color=_REF_COLOR, marker="s", label="realized AP")
    ax.plot(x, col["drift_share"], color="#777777", linestyle="--", label="drift share")
    ax.set(xlabel="monitoring run", ylabel="value", title="Monitoring history", ylim=(0, 1))
    ax.legend(fontsize=7)
    return plots.png_img(fig)


def _trend_rows(trend: pl.DataFrame, last: int = 20) -> list[dict[str, Any]]:
    """The last runs' figures, the columns ``fraudops monitor history`` shows."""
    keep = [c for c in SUMMARY_COLUMNS if c in trend.columns]
    return list(trend.select(keep).tail(last).iter_rows(named=True)) if trend.height else []


def _sampled(frame: pl.DataFrame, seed: int) -> pl.DataFrame:
    return frame.sample(n=PLOT_SAMPLE, seed=seed) if frame.height > PLOT_SAMPLE else frame


def html_report(
    decision: Decision,
    drift_table: pl.DataFrame,
    reference: pl.DataFrame,
    current: pl.DataFrame,
    features: Sequence[str],
    ref_scores: Any,
    cur_scores: Any,
    perf: Mapping[str, Any] | None,
    y: Any = None,
    *,
    cfg: MonitorConfig | None = None,
    title: str = "fraudops monitoring report",
    estimated: Mapping[str, Any] | None = None,
    days: Sequence[dict[str, Any]] = (),
    trend: pl.DataFrame | None = None,
) -> str:
    """The report page. ``ref_scores`` / ``cur_scores`` / ``perf`` may be None (section left out); with
    labels ``y`` (NaN = unlabelled, aligned with ``cur_scores``) the PR curve is drawn."""
    cfg = cfg or MonitorConfig()
    shown = [f for f in features if f in reference.columns and f in current.columns]
    histograms = []
    if drift_table.height and shown:
        ref_s, cur_s = _sampled(reference.select(shown), 0), _sampled(current.select(shown), 1)
        info = {row["feature"]: row for row in drift_table.iter_rows(named=True)}
        for f in shown:
            row = info.get(f)
            subtitle = (
                f"PSI {row['psi']:.4g} · W {row['wasserstein']:.4g} · KS {row['ks_statistic']:.4g}"
                if row
                else ""
            )
            histograms.append(
                histogram(
                    f, _sample(ref_s[f]), _sample(cur_s[f]), subtitle, bool(row and row["drift_detected"])
                )
            )
    bars, threshold_at = psi_bars(drift_table, cfg.psi_threshold) if drift_table.height else ([], 0.0)
    pr = None
    if y is not None and cur_scores is not None:
        labels = _floats(y)
        known = labels[~np.isnan(labels)]
        if known.size and 0 < known.sum() < known.size:
            pr = plots.png_img(
                plots.plot_pr_curve(labels, cur_scores, title="Precision-recall on current labelled data")
            )
    trend = trend if trend is not None else pl.DataFrame()
    covered, compared = estimate.coverage(list(days)) if days else (0, 0)
    return _template().render(
        title=title,
        estimated=[(k, v) for k, v in (estimated or {}).items()],
        days=list(days),
        coverage=(covered, compared),
        band=f"{cfg.estimate_band:.0%}",
        trend_chart=trend_chart(trend) if trend.height else None,
        trend_rows=_trend_rows(trend),
        decision=decision,
        performance=[(k, v) for k, v in (perf or {}).items() if not isinstance(v, list | dict)],
        drift_columns=[c for c in DRIFT_COLUMNS if c in drift_table.columns],
        drift_rows=list(drift_table.iter_rows(named=True)),
        psi_bars=bars,
        psi_threshold=f"{cfg.psi_threshold:g}",
        psi_threshold_at=threshold_at,
        histograms=histograms,
        plot_sample=PLOT_SAMPLE,
        score_chart=score_chart(ref_scores, cur_scores)
        if ref_scores is not None and cur_scores is not None
        else None,
        pr_chart=pr,
    )
