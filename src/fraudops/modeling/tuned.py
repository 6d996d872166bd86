"""The best parameters of the last study (``fraudops tune``): written by tuning, read by training.

The file, ``tuning/best_params.json``, holds ``train`` — changes to the train settings (the candidate,
its parameters) — and what the study was (name, objective, value, trials) so a train run can say where its
parameters came from. Training applies it when ``tune.use_best`` is on and the file exists.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from fraudops.config import Settings, TrainConfig, format_validation_error
from fraudops.errors import FraudopsError
from fraudops.workspace.layout import BEST_PARAMS
from fraudops.workspace.storage import Storage


class BestParams(BaseModel):
    """What ``tuning/best_params.json`` holds."""

    model_config = ConfigDict(extra="forbid")

    study: str
    objective: str
    value: float
    trial: int
    trials_done: int
    train: dict[str, Any]
    """Changes to the train settings: candidates, logistic_c, xgboost."""


def write(storage: Storage, best: BestParams) -> None:
    storage.write_json(BEST_PARAMS, best.model_dump(mode="json"))


def read(storage: Storage) -> BestParams | None:
    """The stored best parameters, None when no study has finished a trial; a damaged file is an error."""
    if not storage.exists(BEST_PARAMS):
        return None
    try:
        return BestParams.model_validate(json.loads(storage.read_text(BEST_PARAMS)))
    except ValueError as e:
        raise FraudopsError(
            f"{storage.uri(BEST_PARAMS)} is not a best-parameters file of fraudops tune ({e}); "
            "delete it or run fraudops tune again"
        ) from e


def apply(settings: Settings, storage: Storage) -> tuple[Settings, BestParams | None]:
    """``settings`` with the tuned train parameters when ``tune.use_best`` and a study has them."""
    best = read(storage) if settings.tune.use_best else None
    if best is None:
        return settings, None
    try:
        train = TrainConfig.model_validate({**settings.train.model_dump(), **best.train})
    except ValidationError as e:
        raise FraudopsError(format_validation_error(e, storage.uri(BEST_PARAMS), prefix="train")) from e
    tuned = settings.model_copy(deep=True)
    tuned.train = train
    return tuned, best
