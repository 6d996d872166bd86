"""Charts of a model's results (matplotlib, Agg canvas): logged at training, shown in monitoring reports."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudops.modeling.evaluate import as_arrays, average_precision, both_classes, roc_auc

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figure(width: float = 5.0, height: float = 4.0) -> Figure:
    """A Figure on an Agg canvas, not attached to pyplot: no global backend switch, no GUI, nothing to
    close; save it with ``fig.savefig`` or ``mlflow.log_figure``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_pr_curve(y: Any, p: Any, *, title: str = "Precision-recall", max_points: int = 2000) -> Figure:
    """Precision-recall curve, with the average precision and the fraud-rate baseline; rows without a label
    (NaN) are left out and the curve is drawn with at most ``max_points`` points."""
    from sklearn.metrics import precision_recall_curve

    ya = np.asarray(y, dtype=np.float64).ravel()
    keep = ~np.isnan(ya)
    ya, pa = as_arrays(ya[keep], np.asarray(p, dtype=np.float64).ravel()[keep])
    fig = figure()
    ax = fig.add_subplot()
    if both_classes(ya):
        precision, recall, _ = precision_recall_curve(ya, pa)
        if precision.size > max_points:
            idx = np.unique(np.linspace(0, precision.size - 1, max_points).astype(np.int64))
            precision, recall = precision[idx], recall[idx]
        ax.step(recall, precision, where="post", label=f"AP = {average_precision(ya, pa):.3f}")
        ax.axhline(ya.mean(), color="grey", linestyle="--", label=f"fraud rate = {ya.mean():.4f}")
        ax.legend(loc="upper right")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    return fig


def plot_roc_curve(y: Any, p: Any) -> Figure:
    """ROC curve with its AUC and the chance diagonal."""
    from sklearn.metrics import roc_curve

    ya, pa = as_arrays(y, p)
    fig = figure()
    ax = fig.add_subplot()
    if both_classes(ya):
        fpr, tpr, _ = roc_curve(ya, pa)
        ax.plot(fpr, tpr, label=f"AUC = {roc_auc(ya, pa):.3f}")
        ax.legend(loc="lower right")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("ROC")
    return fig


def plot_confusion(conf: Mapping[str, float]) -> Figure:
    """The 2 x 2 confusion matrix of a :func:`confusion_at` (or :func:`evaluate`) result."""
    matrix = np.array([[conf["tn"], conf["fp"]], [conf["fn"], conf["tp"]]], dtype=float)
    fig = figure(4.0, 3.5)
    ax = fig.add_subplot()
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, f"{int(value):,}", ha="center", va="center")
    ax.set_xticks([0, 1], ["genuine", "fraud"])
    ax.set_yticks([0, 1], ["genuine", "fraud"])
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix")
    return fig


def plot_importances(names: Sequence[str], values: Sequence[float], top: int = 20) -> Figure:
    """Horizontal bars of the ``top`` largest importances (by absolute value), largest on top."""
    vals = np.asarray(values, dtype=float)
    if len(names) != vals.size:
        raise ValueError(f"{len(names)} names but {vals.size} importances")
    order = np.argsort(-np.abs(vals), kind="stable")[:top][::-1]
    fig = figure(6.0, 0.3 * max(len(order), 3) + 1.0)
    ax = fig.add_subplot()
    ax.barh([str(names[i]) for i in order], vals[order])
    ax.set(xlabel="importance", title="Feature importances")
    return fig


def plot_reliability(curves: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Reliability curves (fraud rate against mean score per bin), one line per named curve."""
    fig = figure(5.0, 4.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfect")
    for name, curve in curves.items():
        ax.plot([c["mean_score"] for c in curve], [c["fraud_rate"] for c in curve], marker="o", label=name)
    ax.set(xlabel="mean predicted probability", ylabel="observed fraud rate", title="Reliability")
    ax.legend()
    return fig


def png_img(fig: Figure, dpi: int = 90) -> str:
    """The figure as an ``<img>`` with the PNG inline (a self-contained HTML page fetches nothing)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="chart" src="data:image/png;base64,{data}">'
