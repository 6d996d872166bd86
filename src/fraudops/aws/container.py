"""The container's SageMaker entry points: one pipeline step per job, on the folders SageMaker hands it.

Each job runs its step as a one-step execution of :data:`~fraudops.pipeline.graph.PIPELINE` (the same
executor as ``fraudops run --only STEP``: the step's retry policy, the history in MLflow, its logs), on a
workspace made of the job's input and output folders, with settings from the workspace's ``fraudops.yaml``
plus the ``FRAUDOPS_*`` environment of the job. ``settings.workspace`` stays the S3 workspace URL, so MLflow
artifacts go to its ``prod_outputs/mlflow/`` and not to the job's disk.

Hand-overs between jobs go through the history: the job of step S in Step Functions execution E records
itself under :func:`~fraudops.aws.contract.job_execution_id` (E, S), and a later step that consumes S's
result (``register`` consumes ``train``) reads it back from there.
"""

from __future__ import annotations

import json
import logging
import tempfile
import traceback
from pathlib import Path
from typing import Any

from fraudops.aws.contract import CONFIG_CHANNEL, MlPaths, channel_name, job_execution_id
from fraudops.config import Settings, parse_settings
from fraudops.context import StepResult
from fraudops.errors import FraudopsError
from fraudops.pipeline import executor, graph
from fraudops.pipeline.history import SUCCEEDED, History
from fraudops.workspace.layout import CONFIG_FILE
from fraudops.workspace.storage import Storage

log = logging.getLogger("fraudops.aws")

FAILURE_MAX = 1024
"""SageMaker keeps the first 1 KB of a job's failure reason and exit message."""


def _config(folder: Path, workspace_url: str) -> Settings:
    """The settings from the ``fraudops.yaml`` found in ``folder`` (the defaults when there is none)."""
    found = sorted(folder.rglob(CONFIG_FILE)) if folder.is_dir() else []
    if not found:
        log.warning("no %s in %s: default settings and the FRAUDOPS_* environment", CONFIG_FILE, folder)
        return parse_settings(None, workspace=workspace_url, source="defaults")
    return parse_settings(found[0].read_text(encoding="utf-8"), workspace=workspace_url, source=str(found[0]))


def _job_input(step: graph.Step, execution: str, input_text: str) -> tuple[dict[str, Any], list[str]]:
    """The one-step input of this job and the plan of the whole Step Functions execution."""
    try:
        raw = json.loads(input_text)
    except json.JSONDecodeError as e:
        raise FraudopsError(f"the Step Functions execution input is not JSON: {e.msg}") from e
    inp = graph.validate_input(raw, "the Step Functions execution input", graph.PIPELINE)
    plan = graph.PIPELINE.plan(inp)
    if step.name not in plan:
        raise FraudopsError(f"step {step.name} is not in the plan of input {input_text} ({' → '.join(plan)})")
    reason = f"Step Functions execution {execution}" + (f": {inp['reason']}" if inp.get("reason") else "")
    job = {"run": step.name, "only": True, "reason": reason}
    if "triggered_by" in inp:
        job["triggered_by"] = inp["triggered_by"]
    return job, plan


def _handed(settings: Settings, step: graph.Step, execution: str, plan: list[str]) -> dict[str, StepResult]:
    """Results of earlier jobs of this execution that the step consumes (none when it started later)."""
    earlier = [name for name in step.consumes if name in plan]
    if not earlier:
        return {}
    history = History(settings)
    handed: dict[str, StepResult] = {}
    for name in earlier:
        runs = history.search(limit=1, id_prefix=job_execution_id(execution, name))
        steps = history.record(runs[0])["steps"] if runs else []
        done = next((s for s in steps if s["name"] == name and s["status"] == SUCCEEDED), None)
        if done is None:
            raise FraudopsError(
                f"step {step.name} consumes the result of {name}, which has no successful job in Step "
                f"Functions execution {execution} (history execution {job_execution_id(execution, name)})"
            )
        handed[name] = graph.PIPELINE.result(name, done["outputs"] or {})
    return handed


def run_step(
    step_name: str,
    root: Path,
    config_dir: Path,
    execution: str,
    input_text: str,
    workspace_url: str,
    job: tuple[str, ...],
    on_event: executor.Event | None = None,
) -> dict[str, Any]:
    """Run one step on the workspace folder ``root``; returns the execution record (any status)."""
    if step_name not in graph.PIPELINE.names:
        raise FraudopsError(f"unknown step {step_name!r}: expected one of {', '.join(graph.PIPELINE.names)}")
    step = graph.PIPELINE.step(step_name)
    if step.job not in job:
        raise FraudopsError(f"step {step.name} runs as a SageMaker {step.job} job, not {' or '.join(job)}")
    inp, plan = _job_input(step, execution, input_text)
    settings = _config(config_dir, workspace_url)
    previous = _handed(settings, step, execution, plan)
    return executor.execute(
        settings,
        Storage(str(root)),
        inp,
        execution_id=job_execution_id(execution, step.name),
        previous=previous,
        on_event=on_event,
    )


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {"execution_id": record["id"], "status": record["status"], "error": record.get("error")}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.encode("utf-8")[:FAILURE_MAX].decode("utf-8", "ignore"), encoding="utf-8")


def _failed(e: BaseException) -> str:
    if isinstance(e, FraudopsError):
        return str(e)
    log.error("%s", "".join(traceback.format_exception(e)).rstrip())
    return f"{type(e).__name__}: {e}"


def train(ml: MlPaths, on_event: executor.Event | None = None) -> int:
    """SageMaker Training: the step named in ``hyperparameters.json`` on the channels it reads; the result
    goes to ``model/result.json``, a failure's reason to ``output/failure``. Returns the exit code."""
    try:
        params = json.loads(ml.hyperparameters.read_text(encoding="utf-8"))
        missing = sorted({"step", "execution", "input", "workspace"} - set(params))
        if missing:
            raise FraudopsError(f"{ml.hyperparameters}: missing hyperparameter(s) {', '.join(missing)}")
        step = graph.PIPELINE.step(params["step"]) if params["step"] in graph.PIPELINE.names else None
        with tempfile.TemporaryDirectory(prefix="fraudops-train-") as tmp:
            root = Path(tmp)
            for folder in step.reads if step else ():
                channel = ml.channel(channel_name(folder))
                if channel.is_dir():
                    (root / folder).parent.mkdir(parents=True, exist_ok=True)
                    (root / folder).symlink_to(channel, target_is_directory=True)
            record = run_step(
                params["step"],
                root,
                ml.channel(CONFIG_CHANNEL),
                params["execution"],
                params["input"],
                params["workspace"],
                ("training",),
                on_event,
            )
    except Exception as e:
        _write(ml.failure, _failed(e))
        return 1
    ml.model.mkdir(parents=True, exist_ok=True)
    outputs = record["steps"][0]["outputs"] if record["steps"] else None
    result = {
        **_summary(record),
        "step": params["step"],
        "execution": params["execution"],
        "outputs": outputs,
    }
    (ml.model / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    if record["status"] != SUCCEEDED:
        _write(ml.failure, record.get("error") or record["status"])
        return 1
    return 0


def process(
    ml: MlPaths,
    step: str,
    execution: str,
    input_text: str,
    workspace_url: str,
    on_event: executor.Event | None = None,
) -> int:
    """SageMaker Processing: ``step`` on ``processing/workspace/`` (inputs downloaded there, outputs uploaded
    from there); a summary goes to ``output/message``. Returns the exit code."""
    try:
        ml.processing_workspace.mkdir(parents=True, exist_ok=True)
        record = run_step(
            step,
            ml.processing_workspace,
            ml.processing_config,
            execution,
            input_text,
            workspace_url,
            ("processing", "transform"),
            on_event,
        )
    except Exception as e:
        _write(ml.message, json.dumps({"status": "FAILED", "error": _failed(e)}))
        return 1
    _write(ml.message, json.dumps(_summary(record), default=str))
    return 0 if record["status"] == SUCCEEDED else 1
