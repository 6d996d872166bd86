"""The model as an MLflow pyfunc, so that ``mlflow models serve`` gives the same numbers as fraudops."""

from __future__ import annotations

import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from fraudops import __version__
from fraudops.modeling import model as models

ARTIFACT = "fraud_model"


class FraudPyfunc(PythonModel):
    """MLflow pyfunc wrapper: returns fraud_probability and is_fraud, not bare class labels."""

    def __init__(self, model: models.FraudModel | None = None) -> None:
        self.model = model

    def load_context(self, context: Any) -> None:
        self.model = models.load(context.artifacts[ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        assert self.model is not None
        p, flag = self.model.predict(model_input)
        return pd.DataFrame({"fraud_probability": p, "is_fraud": flag.astype(np.int64)})


def requirements() -> list[str]:
    packages = ("mlflow", "numpy", "pandas", "polars", "scikit-learn", "xgboost")
    return [f"{p}=={version(p)}" for p in packages] + [f"fraudops=={__version__}"]


def log_model(model: models.FraudModel, input_example: pd.DataFrame) -> None:
    """Log ``model`` into the active run as ``model``: preprocessing and threshold inside, with signature
    and input example."""
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = Path(tmp) / ARTIFACT
        model.save(folder)
        signature = infer_signature(input_example, FraudPyfunc(model).predict(None, input_example))
        mlflow.pyfunc.log_model(
            name="model",
            python_model=FraudPyfunc(),
            artifacts={ARTIFACT: str(folder)},
            signature=signature,
            input_example=input_example,
            pip_requirements=requirements(),
        )


def artifact_folder(version_folder: Path) -> Path:
    """Where a downloaded version keeps the saved model."""
    return version_folder / "artifacts" / ARTIFACT
