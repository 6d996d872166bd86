"""Running the exported state machines in moto's Step Functions interpreter (moto 5, execute_state_machine).

What CloudFormation would do at deployment (fill the ``${Name}`` placeholders) is done here with test
values; the SageMaker Task states, which moto cannot run, are replaced by Lambda tasks that record the
parameters the job would have been created with (moto's Lambda without Docker echoes its payload). Every
other field of those states (Retry, Catch, ResultPath, Next) is kept, and every other state is run as
exported.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import time
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import requests
from moto import mock_aws

REGION = "us-east-1"
ACCOUNT = "123456789012"
WORKSPACE_URL = "s3://fraudops-test/fraudops"
VALUES = {
    "ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fraudops:latest",
    "SageMakerRoleArn": f"arn:aws:iam::{ACCOUNT}:role/fraudops-sagemaker",
    "WorkspaceUrl": WORKSPACE_URL,
    "TrackingUri": "http://mlflow.internal:5000",
    "TrainingInstanceType": "ml.m5.xlarge",
    "ProcessingInstanceType": "ml.m5.large",
    "VolumeSizeInGB": "30",
    "MaxRuntimeInSeconds": "14400",
}
MOTO_CONFIG: Any = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
SAGEMAKER = "arn:aws:states:::sagemaker:"
LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"


@contextlib.contextmanager
def mocked() -> Iterator[None]:
    """moto's AWS with the Step Functions interpreter on, and its StartExecution integration fixed.

    moto 5.2 hands a Task's PascalCase parameters (``StateMachineArn``, ``Input``) to boto3 unchanged, so
    ``arn:aws:states:::states:startExecution[.sync:2]`` fails with ``States.Runtime`` / ``KeyError``
    (getmoto/moto#10076, open; fixes proposed in #10094 and #10101): the conversion LocalStack's interpreter
    does (moto's is a port of it) was reduced to a no-op. This restores it for that one integration, from
    botocore's own Step Functions model, for the duration of the block.
    """
    import botocore
    import botocore.session
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_sfn as sfn_service,
    )

    model = botocore.session.get_session().get_service_model("stepfunctions")
    operations = {botocore.xform_name(name): model.operation_model(name) for name in model.operation_names}
    cls = sfn_service.StateTaskServiceSfn
    own_parameters, own_response = cls._normalise_parameters, cls._normalise_response

    def parameters(
        self: Any, parameters: dict, boto_service_name: Any = None, service_action_name: Any = None
    ) -> None:
        own_parameters(self, parameters, boto_service_name, service_action_name)  # Input as JSON text
        action = service_action_name or self._get_boto_service_action()
        self._to_boto_request(parameters, operations[action].input_shape)

    def response(
        self: Any, response: Any, boto_service_name: Any = None, service_action_name: Any = None
    ) -> None:
        action = service_action_name or self._get_boto_service_action()
        self._from_boto_response(response, operations[action].output_shape)

    cls._normalise_parameters, cls._normalise_response = parameters, response  # type: ignore[method-assign]
    try:
        with mock_aws(config=MOTO_CONFIG):
            yield
    finally:
        cls._normalise_parameters, cls._normalise_response = own_parameters, own_response  # type: ignore[method-assign]


def substitute(obj: Any, values: dict[str, str]) -> Any:
    """CloudFormation's DefinitionSubstitutions: every ``${Name}`` with a value is replaced."""
    if isinstance(obj, dict):
        return {k: substitute(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, values) for v in obj]
    if isinstance(obj, str):
        return re.sub(r"\$\{([A-Za-z0-9]+)\}", lambda m: values.get(m.group(1), m.group(0)), obj)
    return obj


def recording_variant(definition: dict[str, Any], recorder_arn: str) -> dict[str, Any]:
    """The definition with each SageMaker Task calling the recorder Lambda with the job's parameters."""
    variant = copy.deepcopy(definition)
    for name, state in variant["States"].items():
        if state["Type"] == "Task" and state["Resource"].startswith(SAGEMAKER):
            state["Parameters"] = {
                "FunctionName": recorder_arn,
                "Payload": {"state": name, "resource": state["Resource"], "job": state["Parameters"]},
            }
            state["Resource"] = LAMBDA_INVOKE
    return variant


def role() -> str:
    iam = boto3.client("iam", region_name=REGION)
    try:
        return str(iam.get_role(RoleName="fraudops-test")["Role"]["Arn"])
    except iam.exceptions.NoSuchEntityException:
        return str(iam.create_role(RoleName="fraudops-test", AssumeRolePolicyDocument="{}")["Role"]["Arn"])


def lambda_function(name: str) -> str:
    """A function in moto's Lambda (no Docker: an invocation answers its payload, or a queued result)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("index.py", "def handler(event, context):\n    return event\n")
    client = boto3.client("lambda", region_name=REGION)
    return str(
        client.create_function(
            FunctionName=name,
            Runtime="python3.12",
            Role=role(),
            Handler="index.handler",
            Code={"ZipFile": buf.getvalue()},
        )["FunctionArn"]
    )


def queue_lambda_results(*results: Any) -> None:
    """The next invocations of any moto Lambda answer ``results``, in order (moto's documented test hook)."""
    resp = requests.post(
        "http://motoapi.amazonaws.com/moto-api/static/lambda-simple/response",
        json={"results": [json.dumps(r) for r in results], "region": REGION},
        timeout=10,
    )
    assert resp.status_code == 201, resp.text


def create_state_machine(name: str, definition: dict[str, Any]) -> str:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    return str(
        sfn.create_state_machine(name=name, definition=json.dumps(definition), roleArn=role())[
            "stateMachineArn"
        ]
    )


def wait(execution_arn: str, timeout: float = 60) -> dict[str, Any]:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    deadline = time.monotonic() + timeout
    while True:
        desc = sfn.describe_execution(executionArn=execution_arn)
        if desc["status"] != "RUNNING":
            return dict(desc)
        assert time.monotonic() < deadline, f"{execution_arn} still running after {timeout} s"
        time.sleep(0.02)


def run(
    state_machine_arn: str, inp: dict[str, Any], name: str | None = None
) -> tuple[dict[str, Any], list[Any]]:
    """Start an execution, wait for its end; (its description, its history events)."""
    sfn = boto3.client("stepfunctions", region_name=REGION)
    name = name or uuid.uuid4().hex  # moto's interpreter names every unnamed execution "None"
    arn = sfn.start_execution(stateMachineArn=state_machine_arn, input=json.dumps(inp), name=name)[
        "executionArn"
    ]
    desc = wait(arn)
    return desc, history(arn)


def history(execution_arn: str) -> list[Any]:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    return list(sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"])


def entered(events: list[Any], kind: str | None = None) -> list[str]:
    """Names of the states entered, in order (``kind`` e.g. "Task" for Task states only)."""
    return [
        e["stateEnteredEventDetails"]["name"]
        for e in events
        if e["type"].endswith("StateEntered") and (kind is None or e["type"] == f"{kind}StateEntered")
    ]


def recorded_jobs(events: list[Any]) -> list[dict[str, Any]]:
    """The recorder's payloads, in order: {"state", "resource", "job": the evaluated job parameters}."""
    out = []
    for e in events:
        if e["type"] == "TaskScheduled":
            params = json.loads(e["taskScheduledEventDetails"]["parameters"])
            if isinstance(params.get("Payload"), dict) and "job" in params["Payload"]:
                out.append(params["Payload"])
    return out
