"""The pipeline, declared once as data: the seed's Step Functions state machine.

Steps run in order (train → register → select_champion → batch_inference → monitor). An execution's
input is the seed's ``{"run": X}``: X = ``all`` or a step name chooses where it starts, and it runs to the
end (``"only": true`` runs that one step). Each step declares what it hands over (its result model), which
earlier results it consumes, the retry policy of its I/O calls and the workspace folders it reads and
writes. :data:`PIPELINE` is what ``fraudops run`` executes and what ``fraudops export aws`` turns into a
state machine.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fraudops.batch.step import BatchResult, batch_step
from fraudops.context import StepContext, StepResult
from fraudops.errors import FraudopsError
from fraudops.modeling.train import TrainResult
from fraudops.modeling.tune import train_step_tuned
from fraudops.monitoring.step import MonitorResult, monitor_step
from fraudops.promotion.champion import ChampionResult, select_champion_step
from fraudops.promotion.register import RegisterResult, register_step
from fraudops.retries import RetryPolicy
from fraudops.workspace.layout import (
    CURRENT,
    MONITORING,
    MONITORING_HISTORY_DIR,
    PREDICTIONS,
    PROD_INPUTS,
    RAW,
    REFERENCE_DIR,
)

ALL = "all"
INPUT_KEYS = ("run", "triggered_by", "reason", "only")
TRIGGER_INPUT = {"run": ALL, "triggered_by": "monitoring", "reason": "auto_retraining"}
"""What the retraining trigger starts (the seed's second state machine)."""
SCHEDULE_INPUT = {"run": "batch_inference", "triggered_by": "schedule", "reason": "weekly"}
"""What the weekly schedule starts (score the week's batch, then monitor) before the trigger runs."""

Job = Literal["training", "processing", "transform"]


@dataclasses.dataclass(frozen=True)
class Step:
    """One state of the pipeline."""

    name: str
    run: Callable[[StepContext], StepResult]
    result: type[StepResult]
    doc: str
    job: Job
    """The SageMaker job kind the step runs as on AWS (training, processing, batch transform)."""
    consumes: tuple[str, ...] = ()
    """Earlier steps whose results this one reads (from this execution, or the one resumed)."""
    retry: RetryPolicy | None = None
    """Retries of each I/O call of the step; None = ``pipeline.retries`` / ``pipeline.retry_backoff``."""
    reads: tuple[str, ...] = ()
    """Workspace folders the step reads (on AWS, the inputs its SageMaker job downloads)."""
    writes: tuple[str, ...] = ()
    """Workspace folders the step writes (on AWS, the outputs its SageMaker job uploads)."""


@dataclasses.dataclass(frozen=True)
class Pipeline:
    steps: tuple[Step, ...]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def entry_points(self) -> list[str]:
        return [ALL, *self.names]

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def plan(self, inp: dict[str, Any]) -> list[str]:
        """The steps an input runs, in order."""
        run = inp["run"]
        if run == ALL:
            return self.names
        return [run] if inp.get("only") else self.names[self.names.index(run) :]

    def result(self, name: str, outputs: dict[str, Any]) -> StepResult:
        """A stored result read back with its step's model (a hand-over when an execution resumes)."""
        kind = self.step(name).result if name in self.names else StepResult
        try:
            return kind.model_validate(outputs)
        except ValueError:
            return StepResult.model_validate({"run_id": outputs.get("run_id")})


PIPELINE = Pipeline(
    steps=(
        Step(
            "train",
            train_step_tuned,
            TrainResult,
            "fit the candidates on a time split (tuned first when tune.before_train), pick one on "
            "validation, test it, log the run",
            job="training",
            reads=(RAW, CURRENT),
        ),
        Step(
            "register",
            register_step,
            RegisterResult,
            "register the trained model as a new version, aliased challenger",
            job="processing",
            consumes=("train",),
        ),
        Step(
            "select_champion",
            select_champion_step,
            ChampionResult,
            "score challenger and champion on the latest window, promote by the rule",
            job="processing",
            reads=(RAW, CURRENT),
            writes=(REFERENCE_DIR,),
        ),
        Step(
            "batch_inference",
            batch_step,
            BatchResult,
            "score every file of prod_inputs/ with the champion",
            job="transform",
            reads=(PROD_INPUTS, RAW, CURRENT),
            writes=(PREDICTIONS,),
        ),
        Step(
            "monitor",
            monitor_step,
            MonitorResult,
            "drift and performance on data the champion never saw, the retraining decision",
            job="processing",
            reads=(RAW, CURRENT, PROD_INPUTS, REFERENCE_DIR, MONITORING_HISTORY_DIR),
            writes=(MONITORING,),
        ),
    )
)


def read_input(text: str) -> tuple[Any, str]:
    """``--input`` value: JSON text, ``@file.json`` or the path of a JSON file → (parsed JSON, its source)."""
    raw = text.strip()
    source = "--input"
    path: Path | None = None
    if raw.startswith("@"):
        path = Path(raw[1:])
    elif raw and raw[0] not in '{["' and Path(raw).is_file():
        path = Path(raw)
    if path is not None:
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise FraudopsError(f"--input: cannot read {path}: {getattr(e, 'strerror', None) or e}") from e
        source = str(path)
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        hint = "" if path else " (or give @FILE / the path of a JSON file)"
        raise FraudopsError(
            f"{source} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}{hint}; "
            f'expected e.g. {{"run": "all"}}'
        ) from e
    return obj, source


def validate_input(
    obj: Any, source: str = "execution input", pipeline: Pipeline = PIPELINE
) -> dict[str, Any]:
    """The seed's ``{"run": X}``; a missing or unknown ``run`` is an error (the seed fell through)."""
    valid = ", ".join(pipeline.entry_points)
    if not isinstance(obj, dict):
        raise FraudopsError(f'{source} must be a JSON object like {{"run": "all"}}, got {type(obj).__name__}')
    unknown = sorted(set(obj) - set(INPUT_KEYS))
    if unknown:
        raise FraudopsError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(INPUT_KEYS)})")
    if "run" not in obj:
        raise FraudopsError(f'{source} has no "run" key: give {{"run": X}} with X one of {valid}')
    run = obj["run"]
    if not isinstance(run, str) or run not in pipeline.entry_points:
        raise FraudopsError(f'{source}: unknown "run" value {json.dumps(run)}: expected one of {valid}')
    for key in ("triggered_by", "reason"):
        if key in obj and not isinstance(obj[key], str):
            raise FraudopsError(f"{source}: {key} must be a string, got {json.dumps(obj[key])}")
    if "only" in obj and not isinstance(obj["only"], bool):
        raise FraudopsError(f"{source}: only must be true or false, got {json.dumps(obj['only'])}")
    if obj.get("only") and run == ALL:
        raise FraudopsError(f'{source}: "only" needs a step name, not "all"')
    return dict(obj)
