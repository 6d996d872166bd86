"""One loaded model version, ready to answer: the model, its fastest verified runtime, its feature index."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from fraudops.modeling.explain import Explainer
from fraudops.modeling.model import FraudModel, XGBoostModel
from fraudops.serving.protocol import Schema, schema_of
from fraudops.serving.trees import TreeEnsemble, prepare_runtime


@dataclasses.dataclass(frozen=True, eq=False)
class Scorer:
    """One loaded model version, ready to answer; never changed once built (swapped whole on reload)."""

    model: FraudModel
    name: str
    version: str
    alias: str
    run_id: str | None
    loaded_at: float
    trees: TreeEnsemble | None
    small_batch: int
    runtime: dict[str, Any]
    features: list[str] = dataclasses.field(init=False)
    schema: Schema = dataclasses.field(init=False)
    version_header: tuple[bytes, bytes] = dataclasses.field(init=False)
    explainer: Explainer = dataclasses.field(init=False)  # reason codes (tables built once, at load)

    def __post_init__(self) -> None:
        names = list(self.model.feature_names)
        set_ = object.__setattr__
        set_(self, "features", names)
        set_(self, "schema", schema_of(tuple(names)))
        set_(self, "version_header", (b"x-model-version", self.version.encode()))
        set_(self, "explainer", Explainer(self.model))

    @property
    def threshold(self) -> float:
        return float(self.model.threshold)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities float64, decisions bool): the same numbers as FraudModel.predict."""
        if self.trees is not None and x.shape[0] <= self.small_batch:
            assert isinstance(self.model, XGBoostModel)
            p = self.model.calibrate(self.trees.predict(x, self.model.booster))
        else:
            p = self.model.predict_proba(x)
        return p, p >= self.model.threshold


def build_scorer(model: FraudModel, *, name: str, version: str, alias: str, run_id: str | None) -> Scorer:
    trees, small, runtime = prepare_runtime(model)
    return Scorer(
        model=model,
        name=name,
        version=str(version),
        alias=alias,
        run_id=run_id,
        loaded_at=time.time(),
        trees=trees,
        small_batch=small,
        runtime=runtime,
    )
