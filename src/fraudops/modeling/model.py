"""The scoring model every consumer shares: training writes it, MLflow carries it, batch and serve load it.

A :class:`FraudModel` holds its own preprocessing, the estimator, its calibration map
(:mod:`fraudops.modeling.calibration`) and the operating threshold (on the calibrated probability), so
``fraud_probability`` and ``is_fraud`` are the same numbers in ``mlflow models serve``, ``fraudops batch``
and ``fraudops serve``. One class per estimator kind, behind the one protocol of :class:`FraudModel`;
:func:`load` reads any of them back from the folder :meth:`FraudModel.save` wrote.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import numpy as np
import pandas as pd
import polars as pl

from fraudops.modeling import calibration as cal

META_FILE = "fraud_model.json"
BOOSTER_FILE = "booster.ubj"
OUTPUTS = ("fraud_probability", "is_fraud")

Frame: TypeAlias = pl.DataFrame | pd.DataFrame | np.ndarray


@dataclasses.dataclass
class FraudModel(ABC):
    """What every estimator kind offers: probabilities, the alert rule, saving and loading."""

    kind: ClassVar[str]
    feature_names: list[str]
    threshold: float
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    calibration: dict[str, Any] | None = None

    def matrix(self, data: Frame) -> np.ndarray:
        """The model's input matrix (float32, columns in training order) from a frame or array."""
        if isinstance(data, np.ndarray):
            return np.asarray(data, dtype=np.float32)
        if isinstance(data, pl.DataFrame):
            return data.select(self.feature_names).to_numpy().astype(np.float32, copy=False)
        return data[self.feature_names].to_numpy(dtype=np.float32)

    @abstractmethod
    def raw_proba(self, data: Frame) -> np.ndarray:
        """The estimator's own scores (float64), before calibration."""

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores to calibrated probabilities: the one map batch, serving and monitoring share."""
        return cal.apply(raw, self.calibration)

    def predict_proba(self, data: Frame) -> np.ndarray:
        """Calibrated fraud probabilities (float64)."""
        return self.calibrate(self.raw_proba(data))

    def predict(self, data: Frame) -> tuple[np.ndarray, np.ndarray]:
        p = self.predict_proba(data)
        return p, p >= self.threshold

    @abstractmethod
    def importances(self) -> dict[str, float]:
        """How much each input matters (for plots and the training summary)."""

    def with_threads(self, n_jobs: int) -> FraudModel:
        """A copy that predicts with ``n_jobs`` threads (batch scoring); the original is untouched."""
        return self

    def _meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "feature_names": self.feature_names,
            "threshold": self.threshold,
            "info": self.info,
            "calibration": self.calibration,
        }

    @abstractmethod
    def save(self, folder: str | Path) -> None:
        """Write the model into ``folder`` (created), read back by :func:`load`."""


@dataclasses.dataclass
class LogisticModel(FraudModel):
    """Standardised logistic regression: ``sigmoid(((x - mean) / scale) . coef + intercept)``."""

    kind: ClassVar[str] = "logistic_regression"
    mean: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(0))
    coef: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    intercept: float = 0.0

    def margin(self, x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float64) - self.mean) / self.scale) @ self.coef + self.intercept

    def raw_proba(self, data: Frame) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.margin(self.matrix(data))))

    def importances(self) -> dict[str, float]:
        return {n: float(abs(c)) for n, c in zip(self.feature_names, self.coef, strict=True)}

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            **self._meta(),
            "intercept": self.intercept,
            **{name: getattr(self, name).tolist() for name in ("mean", "scale", "coef")},
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_meta(cls, meta: dict[str, Any], folder: Path) -> LogisticModel:
        return cls(
            feature_names=meta["feature_names"],
            threshold=float(meta["threshold"]),
            info=meta.get("info", {}),
            calibration=meta.get("calibration"),
            intercept=float(meta["intercept"]),
            **{k: np.asarray(meta[k], dtype=np.float64) for k in ("mean", "scale", "coef")},
        )


@dataclasses.dataclass
class XGBoostModel(FraudModel):
    """Gradient-boosted trees (an ``xgboost.Booster``, ``binary:logistic``), predicting on one thread
    unless :meth:`with_threads` says otherwise."""

    kind: ClassVar[str] = "xgboost"
    booster: Any = None

    def raw_proba(self, data: Frame) -> np.ndarray:
        return self.booster.inplace_predict(self.matrix(data), validate_features=False).astype(np.float64)

    def importances(self) -> dict[str, float]:
        gains = self.booster.get_score(importance_type="gain")
        return {n: float(gains.get(f"f{i}", 0.0)) for i, n in enumerate(self.feature_names)}

    def with_threads(self, n_jobs: int) -> XGBoostModel:
        booster = self.booster.copy()
        booster.set_param({"nthread": int(n_jobs)})
        return dataclasses.replace(self, booster=booster)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / BOOSTER_FILE))
        (folder / META_FILE).write_text(json.dumps(self._meta(), indent=2))

    @classmethod
    def from_meta(cls, meta: dict[str, Any], folder: Path) -> XGBoostModel:
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(folder / BOOSTER_FILE))
        booster.set_param({"nthread": 1})
        return cls(
            feature_names=meta["feature_names"],
            threshold=float(meta["threshold"]),
            info=meta.get("info", {}),
            calibration=meta.get("calibration"),
            booster=booster,
        )


KINDS: dict[str, type[LogisticModel] | type[XGBoostModel]] = {
    LogisticModel.kind: LogisticModel,
    XGBoostModel.kind: XGBoostModel,
}


def load(folder: str | Path) -> FraudModel:
    """The model saved in ``folder``, of whatever kind it is."""
    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    kind = KINDS.get(meta.get("kind"))
    if kind is None:
        raise ValueError(f"{folder / META_FILE}: unknown model kind {meta.get('kind')!r}")
    return kind.from_meta(meta, folder)
