"""The scoring model every consumer shares: training writes it, MLflow carries it, batch and serve load it.

A :class:`FraudModel` holds its own preprocessing (standardisation for logistic regression), the
estimator and the operating threshold, so ``fraud_probability`` and ``is_fraud`` are the same numbers in
``mlflow models serve``, ``fraudops batch`` and ``fraudops serve``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import polars as pl

META_FILE = "fraud_model.json"
BOOSTER_FILE = "booster.ubj"
OUTPUTS = ("fraud_probability", "is_fraud")


@dataclasses.dataclass
class FraudModel:
    kind: str  # "logistic_regression" | "xgboost"
    feature_names: list[str]
    threshold: float
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    coef: np.ndarray | None = None
    intercept: float = 0.0
    booster: Any = None  # xgboost.Booster
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def matrix(self, data: pl.DataFrame | pd.DataFrame | np.ndarray) -> np.ndarray:
        """The model's input matrix (float32, columns in training order) from a frame or array."""
        if isinstance(data, np.ndarray):
            return np.asarray(data, dtype=np.float32)
        if isinstance(data, pl.DataFrame):
            return data.select(self.feature_names).to_numpy().astype(np.float32, copy=False)
        return data[self.feature_names].to_numpy(dtype=np.float32)

    def predict_proba(self, data: pl.DataFrame | pd.DataFrame | np.ndarray) -> np.ndarray:
        x = self.matrix(data)
        if self.kind == "logistic_regression":
            assert self.coef is not None and self.mean is not None and self.scale is not None
            z = ((x.astype(np.float64) - self.mean) / self.scale) @ self.coef + self.intercept
            return 1.0 / (1.0 + np.exp(-z))
        return self.booster.inplace_predict(x, validate_features=False).astype(np.float64)

    def predict(self, data: pl.DataFrame | pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.predict_proba(data)
        return p, p >= self.threshold

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": self.kind,
            "feature_names": self.feature_names,
            "threshold": self.threshold,
            "intercept": self.intercept,
            "info": self.info,
        }
        for name in ("mean", "scale", "coef"):
            value = getattr(self, name)
            meta[name] = None if value is None else value.tolist()
        if self.booster is not None:
            self.booster.save_model(str(folder / BOOSTER_FILE))
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> FraudModel:
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        booster = None
        if (folder / BOOSTER_FILE).exists():
            import xgboost

            booster = xgboost.Booster()
            booster.load_model(str(folder / BOOSTER_FILE))
            booster.set_param({"nthread": 1})
        arrays = {
            k: None if meta[k] is None else np.asarray(meta[k], dtype=np.float64)
            for k in ("mean", "scale", "coef")
        }
        return cls(
            kind=meta["kind"],
            feature_names=meta["feature_names"],
            threshold=float(meta["threshold"]),
            intercept=float(meta["intercept"]),
            booster=booster,
            info=meta.get("info", {}),
            **arrays,
        )


class FraudPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: returns fraud_probability and is_fraud, not bare class labels."""

    def load_context(self, context: Any) -> None:
        self.model = FraudModel.load(context.artifacts["fraud_model"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        p, flag = self.model.predict(model_input)
        return pd.DataFrame({"fraud_probability": p, "is_fraud": flag.astype(np.int64)})
