"""The Step Functions state machines, generated from the declared pipeline (Amazon States Language).

* **pipeline** — the seed's state machine: a Choice on ``$.run`` picks the first step (``all`` or a step
  name; anything else ends in the Fail state ``invalid input``, which names the valid values); one Task per
  step runs the fraudops image as a SageMaker job (``.sync``: the state waits for the job), a Choice after
  each step ends the execution when ``"only": true``, and the execution input passes through every state
  unchanged (each job receives it whole). A failed job ends in ``<step> failed`` with the job's failure as
  the cause. Step kinds map to integrations: ``training`` → CreateTrainingJob, ``processing`` and
  ``transform`` → CreateProcessingJob (batch_inference scores whole files with validation, rejects and the
  predictions layout of the local step; Batch Transform would split files into /invocations requests).
* **trigger** — the seed's retraining state machine: a Lambda reads the decision; on YES it starts the
  pipeline with :data:`~fraudops.pipeline.graph.TRIGGER_INPUT`, under an execution name made from the
  decision's hash, so one decision starts one retraining (a second start is refused by Step Functions and
  ends in ``already handled``); on NO it succeeds.
* **weekly** — what the schedule starts: the pipeline with
  :data:`~fraudops.pipeline.graph.SCHEDULE_INPUT` (batch_inference → monitor), waiting for it, then the
  trigger.

Retries: a SageMaker API call that fails (throttling, a 5xx) is retried by the step's declared policy
(:attr:`~fraudops.pipeline.graph.Step.retry`, else the ``pipeline.retries`` / ``pipeline.retry_backoff``
defaults; the interval doubles). A job that ran and failed is never started again: the house rule that a
step is never retried whole (it may have created runs or versions). A job's name is a hash of the
execution's name and the time the state was entered, the same for every retry of that entry, so a retried
create can never start a second job.

Values known only at deployment (ARNs, the image, the workspace URL, instance types) are ``${Name}``
placeholders that CloudFormation fills from the template's ``DefinitionSubstitutions``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from fraudops.aws.contract import (
    CONFIG_CHANNEL,
    NAME_MAX,
    MlPaths,
    channel_name,
    job_name_prefix,
)
from fraudops.config import PipelineConfig
from fraudops.errors import FraudopsError
from fraudops.pipeline import graph
from fraudops.retries import RetryPolicy
from fraudops.workspace.layout import CONFIG_FILE, SAGEMAKER_OUTPUTS

# substitutions (the template's DefinitionSubstitutions)
IMAGE, ROLE, WORKSPACE, TRACKING = "ImageUri", "SageMakerRoleArn", "WorkspaceUrl", "TrackingUri"
TRAINING_INSTANCE, PROCESSING_INSTANCE = "TrainingInstanceType", "ProcessingInstanceType"
VOLUME, MAX_RUNTIME = "VolumeSizeInGB", "MaxRuntimeInSeconds"
PIPELINE_ARN, TRIGGER_ARN, DECISION_FUNCTION = "PipelineArn", "TriggerArn", "DecisionFunctionArn"

TRACKING_ENV = "FRAUDOPS_REGISTRY__TRACKING_URI"
"""registry.tracking_uri, given to every job (the setting's environment variable)."""

TRAINING_JOB = "arn:aws:states:::sagemaker:createTrainingJob.sync"
PROCESSING_JOB = "arn:aws:states:::sagemaker:createProcessingJob.sync"
INTEGRATION: dict[str, str] = {
    "training": TRAINING_JOB,
    "processing": PROCESSING_JOB,
    "transform": PROCESSING_JOB,
}
"""The Step Functions integration of each job kind."""
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
START_EXECUTION = "arn:aws:states:::states:startExecution"
START_EXECUTION_SYNC = "arn:aws:states:::states:startExecution.sync:2"

SAGEMAKER_API_ERROR = "SageMaker.AmazonSageMakerException"
"""A failing SageMaker API call, in Step Functions (a job that ran and failed is States.TaskFailed)."""
LAMBDA_SERVICE_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
SFN_SERVICE_ERRORS = ["StepFunctions.SdkClientException", "StepFunctions.AWSStepFunctionsException"]
ALREADY_STARTED = "StepFunctions.ExecutionAlreadyExistsException"

ROUTE, INVALID, SUCCEEDED = "route", "invalid input", "succeeded"
INVALID_ERROR, STEP_ERROR = "InvalidInput", "StepFailed"
READ_DECISION, DECIDE, START = "read decision", "retraining required?", "start retraining"
STARTED, HANDLED, NO_RETRAINING = "retraining started", "already handled", "no retraining"
SCORE_AND_MONITOR, ACT = "score and monitor", "act on the decision"

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9]+)\}")


def sub(name: str) -> str:
    """A placeholder CloudFormation replaces at deployment."""
    return "${" + name + "}"


def placeholders(obj: Any) -> set[str]:
    """The names of every ``${Name}`` placeholder in a definition."""
    if isinstance(obj, dict):
        return set().union(*(placeholders(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(placeholders(v) for v in obj)) if obj else set()
    return set(_PLACEHOLDER.findall(obj)) if isinstance(obj, str) else set()


def failed_state(step: str) -> str:
    return f"{step} failed"


def after_state(step: str) -> str:
    return f"after {step}"


def _s3(rel: str, folder: bool = True) -> str:
    return f"{sub(WORKSPACE)}/{rel}" + ("/" if folder else "")


def _number(name: str) -> str:
    """A numeric parameter: substitutions are text, the job wants a number."""
    return f"States.StringToJson('{sub(name)}')"


def _job_name(step: str) -> str:
    prefix = job_name_prefix(step)
    if len(prefix) + 32 > NAME_MAX:
        raise FraudopsError(
            f"step name {step!r} is too long for a SageMaker job name ({NAME_MAX} characters)"
        )
    entry = "States.Format('{}{}', $$.Execution.Name, $$.State.EnteredTime)"
    return f"States.Format('{prefix}{{}}', States.Hash({entry}, 'MD5'))"


def _common(step: graph.Step) -> dict[str, Any]:
    return {
        "RoleArn": sub(ROLE),
        "Environment": {TRACKING_ENV: sub(TRACKING)},
        "StoppingCondition": {"MaxRuntimeInSeconds.$": _number(MAX_RUNTIME)},
        "Tags": [
            {"Key": "fraudops:step", "Value": step.name},
            {"Key": "fraudops:execution", "Value.$": "$$.Execution.Name"},
        ],
    }


def _training(step: graph.Step) -> dict[str, Any]:
    def channel(name: str, uri: str) -> dict[str, Any]:
        source = {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        return {"ChannelName": name, "DataSource": {"S3DataSource": source}}

    return {
        "TrainingJobName.$": _job_name(step.name),
        "AlgorithmSpecification": {"TrainingImage": sub(IMAGE), "TrainingInputMode": "File"},
        "HyperParameters": {
            "step": step.name,
            "execution.$": "$$.Execution.Name",
            "input.$": "States.JsonToString($)",
            "workspace": sub(WORKSPACE),
        },
        "InputDataConfig": [channel(channel_name(f), _s3(f)) for f in step.reads]
        + [channel(CONFIG_CHANNEL, _s3(CONFIG_FILE, folder=False))],
        "OutputDataConfig": {"S3OutputPath": _s3(SAGEMAKER_OUTPUTS)},
        "ResourceConfig": {
            "InstanceCount": 1,
            "InstanceType": sub(TRAINING_INSTANCE),
            "VolumeSizeInGB.$": _number(VOLUME),
        },
        **_common(step),
    }


def _processing(step: graph.Step) -> dict[str, Any]:
    ml = MlPaths()

    def s3_input(name: str, uri: str, local: str) -> dict[str, Any]:
        return {
            "InputName": name,
            "S3Input": {
                "S3Uri": uri,
                "LocalPath": local,
                "S3DataType": "S3Prefix",
                "S3InputMode": "File",
                "S3DataDistributionType": "FullyReplicated",
            },
        }

    args = (
        f"States.Array('process', '{step.name}', '--execution', $$.Execution.Name, "
        f"'--input', States.JsonToString($), '--workspace-url', '{sub(WORKSPACE)}')"
    )
    params: dict[str, Any] = {
        "ProcessingJobName.$": _job_name(step.name),
        "AppSpecification": {"ImageUri": sub(IMAGE), "ContainerArguments.$": args},
        "ProcessingInputs": [
            s3_input(channel_name(f), _s3(f), (ml.processing_workspace / f).as_posix()) for f in step.reads
        ]
        + [s3_input(CONFIG_CHANNEL, _s3(CONFIG_FILE, folder=False), ml.processing_config.as_posix())],
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": sub(PROCESSING_INSTANCE),
                "VolumeSizeInGB.$": _number(VOLUME),
            }
        },
        **_common(step),
    }
    if step.writes:
        params["ProcessingOutputConfig"] = {
            "Outputs": [
                {
                    "OutputName": channel_name(f),
                    "S3Output": {
                        "S3Uri": _s3(f, folder=False),
                        "LocalPath": (ml.processing_workspace / f).as_posix(),
                        "S3UploadMode": "EndOfJob",
                    },
                }
                for f in step.writes
            ]
        }
    return params


def retry_policy(step: graph.Step) -> RetryPolicy:
    """The step's declared policy, else the ``pipeline`` settings' defaults."""
    defaults = PipelineConfig()
    return step.retry or RetryPolicy(defaults.retries, defaults.retry_backoff)


def _task(step: graph.Step, next_state: str) -> dict[str, Any]:
    policy = retry_policy(step)
    parameters = _training(step) if INTEGRATION[step.job] == TRAINING_JOB else _processing(step)
    task: dict[str, Any] = {
        "Type": "Task",
        "Comment": step.doc,
        "Resource": INTEGRATION[step.job],
        "Parameters": parameters,
        "ResultPath": None,
    }
    if policy.retries:
        task["Retry"] = [
            {
                "ErrorEquals": [SAGEMAKER_API_ERROR],
                "IntervalSeconds": max(1, math.ceil(policy.backoff)),
                "MaxAttempts": policy.retries,
                "BackoffRate": 2.0,
            }
        ]
    task["Catch"] = [
        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": failed_state(step.name)}
    ]
    task["Next"] = next_state
    return task


def _only() -> dict[str, Any]:
    """``"only": true`` (a missing key is tested first: comparing a missing path is an error)."""
    return {"And": [{"Variable": "$.only", "IsPresent": True}, {"Variable": "$.only", "BooleanEquals": True}]}


def pipeline_definition(pipeline: graph.Pipeline | None = None) -> dict[str, Any]:
    """The pipeline state machine of ``pipeline`` (default: the one ``fraudops run`` executes)."""
    pipeline = pipeline or graph.PIPELINE
    valid = ", ".join(pipeline.entry_points)
    choices: list[dict[str, Any]] = [
        {"Not": {"Variable": "$.run", "IsPresent": True}, "Next": INVALID},
        {"And": [{"Variable": "$.run", "StringEquals": graph.ALL}, *_only()["And"]], "Next": INVALID},
    ]
    choices += [
        {"Variable": "$.run", "StringEquals": entry, "Next": pipeline.plan({"run": entry})[0]}
        for entry in pipeline.entry_points
    ]
    states: dict[str, Any] = {ROUTE: {"Type": "Choice", "Choices": choices, "Default": INVALID}}
    names = pipeline.names
    for i, step in enumerate(pipeline.steps):
        last = i == len(names) - 1
        states[step.name] = _task(step, SUCCEEDED if last else after_state(step.name))
        if not last:
            states[after_state(step.name)] = {
                "Type": "Choice",
                "Choices": [{**_only(), "Next": SUCCEEDED}],
                "Default": names[i + 1],
            }
    for step in pipeline.steps:
        states[failed_state(step.name)] = {"Type": "Fail", "Error": STEP_ERROR, "CausePath": "$.error.Cause"}
    states[INVALID] = {
        "Type": "Fail",
        "Error": INVALID_ERROR,
        "Cause": f'the execution input needs "run": one of {valid} (and "only": true only with a step name), '
        'e.g. {"run": "all"}',
    }
    states[SUCCEEDED] = {"Type": "Succeed"}
    return {
        "Comment": "fraudops pipeline: " + " → ".join(names) + '; input {"run": X} picks the first step',
        "StartAt": ROUTE,
        "States": states,
    }


def trigger_definition() -> dict[str, Any]:
    """The retraining state machine: decision → YES: start the pipeline once per decision; NO: succeed."""
    return {
        "Comment": "fraudops retraining trigger: read the monitor's decision; on YES start the pipeline with "
        "the seed's input, once per decision",
        "StartAt": READ_DECISION,
        "States": {
            READ_DECISION: {
                "Type": "Task",
                "Resource": LAMBDA_INVOKE,
                "Parameters": {"FunctionName": sub(DECISION_FUNCTION), "Payload": {}},
                "ResultSelector": {
                    "retraining_required.$": "$.Payload.retraining_required",
                    "reasons.$": "$.Payload.reasons",
                    "key.$": "$.Payload.key",
                    "file.$": "$.Payload.file",
                },
                "ResultPath": "$.decision",
                "Retry": [
                    {
                        "ErrorEquals": LAMBDA_SERVICE_ERRORS,
                        "IntervalSeconds": 2,
                        "MaxAttempts": 3,
                        "BackoffRate": 2.0,
                    }
                ],
                "Next": DECIDE,
            },
            DECIDE: {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.decision.retraining_required", "StringEquals": "YES", "Next": START}
                ],
                "Default": NO_RETRAINING,
            },
            START: {
                "Type": "Task",
                "Resource": START_EXECUTION,
                "Parameters": {
                    "StateMachineArn": sub(PIPELINE_ARN),
                    "Name.$": "States.Format('retrain-{}', $.decision.key)",
                    "Input": dict(graph.TRIGGER_INPUT),
                },
                "ResultSelector": {"execution.$": "$.ExecutionArn"},
                "ResultPath": "$.started",
                "Retry": [
                    {
                        "ErrorEquals": SFN_SERVICE_ERRORS,
                        "IntervalSeconds": 2,
                        "MaxAttempts": 3,
                        "BackoffRate": 2.0,
                    }
                ],
                "Catch": [{"ErrorEquals": [ALREADY_STARTED], "ResultPath": "$.already", "Next": HANDLED}],
                "Next": STARTED,
            },
            STARTED: {"Type": "Succeed"},
            HANDLED: {"Type": "Succeed", "Comment": "this decision started a retraining before"},
            NO_RETRAINING: {"Type": "Succeed"},
        },
    }


def weekly_definition() -> dict[str, Any]:
    """What the weekly schedule starts: the pipeline from batch_inference (to its end), then the trigger."""
    return {
        "Comment": "fraudops weekly: score the batch and monitor, then the retraining trigger",
        "StartAt": SCORE_AND_MONITOR,
        "States": {
            SCORE_AND_MONITOR: {
                "Type": "Task",
                "Resource": START_EXECUTION_SYNC,
                "Parameters": {"StateMachineArn": sub(PIPELINE_ARN), "Input": dict(graph.SCHEDULE_INPUT)},
                "ResultPath": None,
                "Next": ACT,
            },
            ACT: {
                "Type": "Task",
                "Resource": START_EXECUTION_SYNC,
                "Parameters": {"StateMachineArn": sub(TRIGGER_ARN), "Input": {}},
                "ResultPath": None,
                "End": True,
            },
        },
    }
