"""The shadow comparison: served model vs shadow model on the endpoint's live traffic (its captured rows).

Read by ``fraudops shadow report`` and recorded by select_champion as evidence for a challenger that was
shadow-scored (it does not change the promotion rule). Labels come from ``monitoring_inputs/current_data/``
by transaction id; average precision is given once the labelled rows hold both classes.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from pydantic import BaseModel

from fraudops.config import Settings
from fraudops.data import capture as files
from fraudops.data.loading import load_folder
from fraudops.data.schema import LABEL, TX_ID
from fraudops.modeling import evaluate
from fraudops.workspace.layout import CURRENT
from fraudops.workspace.storage import Storage


class ShadowComparison(BaseModel):
    """Served (champion) vs shadow (challenger) on the same captured rows."""

    rows: int
    served_versions: list[int]
    shadow_versions: list[int]
    first_captured: str | None
    last_captured: str | None
    correlation: float | None  # Pearson, probabilities
    rank_correlation: float | None  # Spearman
    served_alerts: int
    shadow_alerts: int
    both_alerts: int
    alert_overlap: float | None  # both / either (Jaccard); None without alerts
    labelled_rows: int
    frauds: int
    served_average_precision: float | None
    shadow_average_precision: float | None


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def compare(
    captured: pl.DataFrame, labels: pl.DataFrame | None, shadow_version: int | None = None
) -> ShadowComparison:
    """The comparison over the captured rows the shadow scored (of ``shadow_version`` when given)."""
    rows = captured.filter(pl.col(files.SHADOW_PROBABILITY).is_not_null()) if captured.height else captured
    if rows.height and shadow_version is not None:
        rows = rows.filter(pl.col(files.SHADOW_VERSION) == shadow_version)
    p = rows[files.PROBABILITY].to_numpy() if rows.height else np.empty(0)
    q = rows[files.SHADOW_PROBABILITY].to_numpy() if rows.height else np.empty(0)
    a = rows[files.FLAG].to_numpy().astype(bool) if rows.height else np.empty(0, bool)
    b = rows[files.SHADOW_FLAG].to_numpy().astype(bool) if rows.height else np.empty(0, bool)
    either = int(np.sum(a | b))
    y = None
    if labels is not None and labels.height and rows.height:
        known = labels.select(pl.col(TX_ID).cast(pl.String), pl.col(LABEL).cast(pl.Float64)).unique(TX_ID)
        y = rows.select(TX_ID).join(known, on=TX_ID, how="left", maintain_order="left")[LABEL].to_numpy()
    lab = ~np.isnan(y) if y is not None else np.zeros(len(p), bool)
    ranks = _corr(pl.Series(p).rank().to_numpy(), pl.Series(q).rank().to_numpy()) if len(p) else None
    return ShadowComparison(
        rows=rows.height,
        served_versions=sorted(rows[files.VERSION].unique().to_list()) if rows.height else [],
        shadow_versions=sorted(rows[files.SHADOW_VERSION].unique().to_list()) if rows.height else [],
        first_captured=str(rows[files.CAPTURED_AT].min()) if rows.height else None,
        last_captured=str(rows[files.CAPTURED_AT].max()) if rows.height else None,
        correlation=_corr(p, q),
        rank_correlation=ranks,
        served_alerts=int(a.sum()),
        shadow_alerts=int(b.sum()),
        both_alerts=int(np.sum(a & b)),
        alert_overlap=int(np.sum(a & b)) / either if either else None,
        labelled_rows=int(lab.sum()),
        frauds=int(np.nansum(y)) if y is not None else 0,
        served_average_precision=_finite(evaluate.average_precision(y[lab], p[lab]))
        if y is not None
        else None,
        shadow_average_precision=_finite(evaluate.average_precision(y[lab], q[lab]))
        if y is not None
        else None,
    )


def shadow_comparison(
    storage: Storage, settings: Settings, shadow_version: int | None = None
) -> ShadowComparison:
    """The comparison over everything captured, with the labels of current_data/."""
    captured = files.load_captured(storage)
    labels = None
    if captured.height and settings.data.columns.transaction_id:
        found = load_folder(storage, [CURRENT], settings.data, labelled_only=True)
        labels = found if found.height and TX_ID in found.columns else None
    return compare(captured, labels, shadow_version)


def live_summary(c: ShadowComparison) -> str:
    """One line: what the shadow comparison found."""

    def show(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    return (
        f"live shadow on {c.rows:,} captured rows: score correlation {show(c.correlation)} (rank "
        f"{show(c.rank_correlation)}), alerts served {c.served_alerts} / shadow {c.shadow_alerts} / both "
        f"{c.both_alerts} (overlap {show(c.alert_overlap)}), AP on {c.labelled_rows:,} labelled rows "
        f"served {show(c.served_average_precision)} vs shadow {show(c.shadow_average_precision)}"
    )
