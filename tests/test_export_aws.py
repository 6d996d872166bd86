"""`fraudops export aws`: the files, their lint (cfn-lint, statelint), least privilege, and the state machines
executed in moto's Step Functions interpreter against the local pipeline's plans."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import aws_helpers as sfn
from fraudops.aws import export, states, template
from fraudops.aws.contract import MlPaths, channel_name
from fraudops.cli import build
from fraudops.config import PipelineConfig
from fraudops.pipeline import graph
from fraudops.retries import RetryPolicy
from fraudops.workspace.layout import CONFIG_FILE, DECISION_CSV, FOLDERS

RUNNER = CliRunner()


class _Loader(yaml.SafeLoader):
    """The template has no YAML tags (long-form intrinsics), so a plain safe load reads it whole."""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aws") / "out"
    result = RUNNER.invoke(build(), ["export", "aws", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _template(out: Path) -> dict[str, Any]:
    return yaml.load((out / export.TEMPLATE).read_text(), Loader=_Loader)


def _asl(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / name).read_text())


# --- the files -------------------------------------------------------------------------------------------


def test_export_writes_the_state_machines_the_template_and_the_bundle(exported: Path) -> None:
    names = sorted(p.name for p in exported.iterdir())
    zips = [n for n in names if n.endswith(".zip")]
    assert len(zips) == 1 and re.fullmatch(r"fraudops-lambda-[0-9a-f]{12}\.zip", zips[0])
    assert sorted(set(names) - set(zips)) == sorted(
        [export.PIPELINE_ASL, export.TRIGGER_ASL, export.WEEKLY_ASL, export.TEMPLATE]
    )
    tpl = _template(exported)
    res = tpl["Resources"]
    for file, logical in (
        (export.PIPELINE_ASL, "PipelineStateMachine"),
        (export.TRIGGER_ASL, "TriggerStateMachine"),
        (export.WEEKLY_ASL, "WeeklyStateMachine"),
    ):  # the reviewed files are exactly what the template deploys
        assert _asl(exported, file) == res[logical]["Properties"]["Definition"]
    assert tpl["Parameters"]["LambdaCodeKey"]["Default"] == zips[0]
    kinds = {r["Type"] for r in res.values()}
    assert {
        "AWS::S3::Bucket",
        "AWS::ECR::Repository",
        "AWS::StepFunctions::StateMachine",
        "AWS::Lambda::Function",
        "AWS::Scheduler::Schedule",
        "AWS::SageMaker::Model",
        "AWS::SageMaker::EndpointConfig",
        "AWS::SageMaker::Endpoint",
        "Custom::WorkspaceLayout",
    } <= kinds
    assert res["WorkspaceLayout"]["Properties"]["Folders"] == list(FOLDERS)
    for p in ("BucketName", "TrackingUri", "ImageUri", "TrainingInstanceType", "ProcessingInstanceType"):
        assert p in tpl["Parameters"]
    assert "Default" not in tpl["Parameters"]["TrackingUri"]  # no MLflow server is guessed
    env = res["EndpointModel"]["Properties"]["PrimaryContainer"]["Environment"]
    assert env[states.TRACKING_ENV] == {"Ref": "TrackingUri"}


def test_exporting_twice_gives_the_same_bytes(exported: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    export.write(again)
    for p in exported.iterdir():
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name


# --- lint ------------------------------------------------------------------------------------------------


def test_cfn_lint_reports_nothing_on_the_template(exported: Path) -> None:
    from cfnlint.api import ManualArgs, lint

    text = (exported / export.TEMPLATE).read_text()
    matches = lint(text, config=ManualArgs(include_checks=["I"], regions=["us-east-1", "eu-west-1"]))
    assert [str(m) for m in matches] == []
    # the same lint does see a broken definition (a Next to nowhere) and a YAML alias
    tpl = _template(exported)
    broken = copy.deepcopy(tpl)
    broken["Resources"]["PipelineStateMachine"]["Properties"]["Definition"]["StartAt"] = "nowhere"
    found = lint(template.to_yaml(broken), config=ManualArgs(regions=["us-east-1"]))
    assert any(m.rule.id == "E3601" for m in found), [str(m) for m in found]
    aliased = yaml.safe_dump(template.template("bundle.zip"), sort_keys=False)  # shared values: aliases
    assert "*id0" in aliased
    assert any(m.rule.id == "W1101" for m in lint(aliased, config=ManualArgs(regions=["us-east-1"])))


def test_statelint_accepts_the_three_state_machines_and_catches_a_broken_one(exported: Path) -> None:
    from statelint.linter import Linter

    for name in (export.PIPELINE_ASL, export.TRIGGER_ASL, export.WEEKLY_ASL):
        assert Linter.validate(str(exported / name)) == [], name
    broken = _asl(exported, export.PIPELINE_ASL)
    del broken["States"][states.failed_state("register")]
    problems = Linter.validate(broken)
    assert any("register failed" in p for p in problems), problems


# --- least privilege ---------------------------------------------------------------------------------------


def _actions(role: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for policy in role["Properties"]["Policies"]:
        for st in policy["PolicyDocument"]["Statement"]:
            assert st["Effect"] == "Allow"
            out |= set(st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
    return out


def test_iam_roles_allow_only_what_their_states_and_code_call(exported: Path) -> None:
    res = _template(exported)["Resources"]
    roles = {k: v for k, v in res.items() if v["Type"] == "AWS::IAM::Role"}
    for name, role in roles.items():
        assert not any("*" in a for a in _actions(role)), name
    assert _actions(roles["PipelineRole"]) == {
        "sagemaker:CreateTrainingJob",
        "sagemaker:DescribeTrainingJob",
        "sagemaker:StopTrainingJob",
        "sagemaker:CreateProcessingJob",
        "sagemaker:DescribeProcessingJob",
        "sagemaker:StopProcessingJob",
        "sagemaker:AddTags",
        "sagemaker:ListTags",
        "events:PutTargets",
        "events:PutRule",
        "events:DescribeRule",
        "iam:PassRole",
    }
    assert _actions(roles["TriggerRole"]) == {"lambda:InvokeFunction", "states:StartExecution"}
    assert _actions(roles["WeeklyRole"]) == {
        "states:StartExecution",
        "states:DescribeExecution",
        "states:StopExecution",
        "events:PutTargets",
        "events:PutRule",
        "events:DescribeRule",
    }
    assert _actions(roles["SchedulerRole"]) == {"states:StartExecution"}
    assert _actions(roles["DecisionFunctionRole"]) == {
        "s3:GetObject",
        "s3:ListBucket",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    assert _actions(roles["LayoutFunctionRole"]) == {
        "s3:PutObject",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    # scoped: the decision Lambda reads one object; the pipeline starts only fraudops-* jobs
    read = roles["DecisionFunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]
    assert read["Resource"]["Fn::Sub"].endswith(f"${{WorkspacePrefix}}/{DECISION_CSV}")
    sm_statements = roles["PipelineRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    jobs = [s["Resource"]["Fn::Sub"] for s in sm_statements if "sagemaker:CreateTrainingJob" in s["Action"]]
    assert jobs == [
        "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:training-job/fraudops-*"
    ]
    # only `*` resources: the two calls AWS does not scope
    stars = {
        a
        for role in roles.values()
        for policy in role["Properties"]["Policies"]
        for st in policy["PolicyDocument"]["Statement"]
        if st["Resource"] == "*"
        for a in st["Action"]
    }
    assert stars == {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}


def test_a_pipeline_of_processing_jobs_only_gets_no_training_permissions() -> None:
    only_processing = graph.Pipeline(steps=tuple(s for s in graph.PIPELINE.steps if s.job != "training"))
    role = template.template("bundle.zip", only_processing)["Resources"]["PipelineRole"]
    assert not any("Training" in a for a in _actions(role))
    assert "sagemaker:CreateProcessingJob" in _actions(role)


# --- the definition, from the declared graph -----------------------------------------------------------


def test_the_export_reads_the_graph_fraudops_run_executes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No hand-maintained copy: the exporter and the executor read the same object, so a different graph
    gives a different state machine, and `fraudops run`'s plans are the routes of the exported one."""
    src = Path(graph.__file__).parents[1]
    built, named = [], []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Pipeline"
            ):
                built.append(path.relative_to(src).as_posix())
            if (
                path.parent.name == "aws"
                and isinstance(node, ast.Constant)
                and node.value in graph.PIPELINE.names
            ):
                named.append(f"{path.name}: {node.value}")
    assert built == ["pipeline/graph.py"]  # one declaration
    assert named == []  # the AWS package names no step: everything comes from the graph
    smaller = graph.Pipeline(
        steps=(
            dataclasses.replace(graph.PIPELINE.step("batch_inference"), retry=RetryPolicy(7, 3.5)),
            graph.PIPELINE.step("monitor"),
        )
    )
    monkeypatch.setattr(graph, "PIPELINE", smaller)
    result = RUNNER.invoke(build(), ["export", "aws", str(tmp_path)])
    assert result.exit_code == 0, result.output
    d = json.loads((tmp_path / export.PIPELINE_ASL).read_text())
    tasks = [n for n, s in d["States"].items() if s["Type"] == "Task"]
    assert tasks == ["batch_inference", "monitor"]
    routes = {
        c["StringEquals"]: c["Next"] for c in d["States"][states.ROUTE]["Choices"] if "StringEquals" in c
    }
    assert routes == {"all": "batch_inference", "batch_inference": "batch_inference", "monitor": "monitor"}
    retry = d["States"]["batch_inference"]["Retry"][0]
    assert (retry["MaxAttempts"], retry["IntervalSeconds"], retry["BackoffRate"]) == (7, 4, 2.0)


def test_each_step_is_one_task_with_its_integration_retry_and_catch() -> None:
    d = states.pipeline_definition()
    defaults = PipelineConfig()
    for step in graph.PIPELINE.steps:
        task = d["States"][step.name]
        expected = states.TRAINING_JOB if step.job == "training" else states.PROCESSING_JOB
        assert task["Resource"] == expected and task["Resource"].endswith(".sync")
        assert task["ResultPath"] is None  # the execution input passes through unchanged
        assert task["Retry"] == [
            {
                "ErrorEquals": [states.SAGEMAKER_API_ERROR],
                "IntervalSeconds": int(defaults.retry_backoff),
                "MaxAttempts": defaults.retries,
                "BackoffRate": 2.0,
            }
        ]
        assert task["Catch"] == [
            {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": states.failed_state(step.name)}
        ]
        assert d["States"][states.failed_state(step.name)]["Type"] == "Fail"
    cause = d["States"][states.INVALID]["Cause"]
    assert all(f"{e}" in cause for e in graph.PIPELINE.entry_points)


def test_jobs_read_and_write_the_folders_their_step_declares() -> None:
    d = states.pipeline_definition()
    ml = MlPaths()
    for step in graph.PIPELINE.steps:
        params = d["States"][step.name]["Parameters"]
        if step.job == "training":
            channels = {
                c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in params["InputDataConfig"]
            }
            assert channels == {
                **{channel_name(f): f"${{WorkspaceUrl}}/{f}/" for f in step.reads},
                "config": f"${{WorkspaceUrl}}/{CONFIG_FILE}",
            }
            continue
        inputs = {i["S3Input"]["LocalPath"]: i["S3Input"]["S3Uri"] for i in params["ProcessingInputs"]}
        assert inputs == {
            **{(ml.processing_workspace / f).as_posix(): f"${{WorkspaceUrl}}/{f}/" for f in step.reads},
            ml.processing_config.as_posix(): f"${{WorkspaceUrl}}/{CONFIG_FILE}",
        }
        outputs = {
            o["S3Output"]["LocalPath"]: o["S3Output"]["S3Uri"]
            for o in params.get("ProcessingOutputConfig", {}).get("Outputs", [])
        }
        assert outputs == {
            (ml.processing_workspace / f).as_posix(): f"${{WorkspaceUrl}}/{f}" for f in step.writes
        }


# --- executed in moto ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws(exported: Path) -> Any:
    """One moto account for the module's executions: the recorder and decision Lambdas, the pipeline."""
    with sfn.mocked():
        recorder = sfn.lambda_function("recorder")
        decision = sfn.lambda_function("decision")
        yield {
            "recorder": recorder,
            "decision": decision,
            "pipeline": _pipeline(exported, recorder, "pipeline"),
        }


def _pipeline(exported: Path, recorder: str, name: str) -> str:
    definition = sfn.recording_variant(
        sfn.substitute(_asl(exported, export.PIPELINE_ASL), sfn.VALUES), recorder
    )
    return sfn.create_state_machine(name, definition)


@pytest.fixture
def pipeline_sm(aws: dict[str, str]) -> str:
    return aws["pipeline"]


@pytest.mark.parametrize("run", graph.PIPELINE.entry_points)
@pytest.mark.parametrize("only", [False, True])
def test_each_entry_point_visits_exactly_the_steps_the_local_pipeline_runs(
    pipeline_sm: str, run: str, only: bool
):
    inp: dict[str, Any] = {"run": run, "triggered_by": "test"}
    if only:
        if run == graph.ALL:  # the local input check refuses it; the state machine too
            inp["only"] = True
            desc, events = sfn.run(pipeline_sm, inp)
            assert (desc["status"], desc["error"]) == ("FAILED", states.INVALID_ERROR)
            assert sfn.entered(events, "Task") == []
            return
        inp["only"] = True
    plan = graph.PIPELINE.plan(graph.validate_input(inp))
    desc, events = sfn.run(pipeline_sm, inp, name=f"exec-{run}-{only}")
    assert desc["status"] == "SUCCEEDED", desc
    assert sfn.entered(events, "Task") == plan
    assert json.loads(desc["output"]) == inp  # passed through every state unchanged
    jobs = sfn.recorded_jobs(events)
    assert [j["state"] for j in jobs] == plan
    for job in jobs:
        step = graph.PIPELINE.step(job["state"])
        params = job["job"]
        if step.job == "training":
            assert re.fullmatch(r"fraudops-train-[0-9a-f]{32}", params["TrainingJobName"])
            assert params["HyperParameters"] == {
                "step": step.name,
                "execution": f"exec-{run}-{only}",
                "input": json.dumps(inp, separators=(",", ":")),
                "workspace": sfn.WORKSPACE_URL,
            }
            assert params["ResourceConfig"]["VolumeSizeInGB"] == 30
        else:
            assert re.fullmatch(
                rf"fraudops-{step.name.replace('_', '-')}-[0-9a-f]{{32}}", params["ProcessingJobName"]
            )
            assert params["AppSpecification"]["ContainerArguments"] == [
                "process",
                step.name,
                "--execution",
                f"exec-{run}-{only}",
                "--input",
                json.dumps(inp, separators=(",", ":")),
                "--workspace-url",
                sfn.WORKSPACE_URL,
            ]
        assert params["StoppingCondition"] == {"MaxRuntimeInSeconds": 14400}
        assert params["Environment"] == {states.TRACKING_ENV: sfn.VALUES["TrackingUri"]}
        assert {"Key": "fraudops:execution", "Value": f"exec-{run}-{only}"} in params["Tags"]


@pytest.mark.parametrize("inp", [{"run": "retrain"}, {"run": 3}, {"triggered_by": "test"}, {"run": "ALL"}])
def test_an_unknown_or_missing_run_ends_in_the_fail_state_naming_the_valid_values(
    pipeline_sm: str, inp: dict
):
    desc, events = sfn.run(pipeline_sm, inp)
    assert desc["status"] == "FAILED"
    assert desc["error"] == states.INVALID_ERROR
    assert all(e in desc["cause"] for e in graph.PIPELINE.entry_points)
    assert sfn.entered(events) == [states.ROUTE, states.INVALID]


def test_a_failing_job_ends_in_its_failed_state_and_nothing_after_it_runs(exported: Path, aws: dict) -> None:
    definition = sfn.recording_variant(
        sfn.substitute(_asl(exported, export.PIPELINE_ASL), sfn.VALUES), aws["recorder"]
    )
    # select_champion's job cannot start (a call that fails); its Catch and Fail states are as exported
    definition["States"]["select_champion"].update(
        Resource="arn:aws:states:::aws-sdk:s3:getObject", Parameters={"Bucket": "no-such-bucket", "Key": "x"}
    )
    arn = sfn.create_state_machine("pipeline-failing", definition)
    desc, events = sfn.run(arn, {"run": "all"})
    assert desc["status"] == "FAILED"
    assert desc["error"] == states.STEP_ERROR
    assert "NoSuchBucket" in desc["cause"] or "bucket does not exist" in desc["cause"].lower()
    assert sfn.entered(events, "Task") == ["train", "register", "select_champion"]
    assert sfn.entered(events)[-1] == states.failed_state("select_champion")


def _trigger_machines(exported: Path, aws: dict[str, str], name: str) -> tuple[str, str]:
    """(trigger, pipeline) of their own in moto: the pipeline's jobs recorded, the decision a moto Lambda."""
    pipeline = _pipeline(exported, aws["recorder"], f"pipeline-{name}")
    trigger_def = sfn.substitute(
        _asl(exported, export.TRIGGER_ASL),
        {**sfn.VALUES, "PipelineArn": pipeline, "DecisionFunctionArn": aws["decision"]},
    )
    return sfn.create_state_machine(f"trigger-{name}", trigger_def), pipeline


def _pipeline_executions(pipeline: str) -> list[dict[str, Any]]:
    import boto3

    client = boto3.client("stepfunctions", region_name=sfn.REGION)
    out = []
    for e in client.list_executions(stateMachineArn=pipeline)["executions"]:
        desc = sfn.wait(e["executionArn"])
        out.append({**desc, "tasks": sfn.entered(sfn.history(e["executionArn"]), "Task")})
    return out


def _decision(value: str, key: str) -> dict[str, Any]:
    return {
        "retraining_required": value,
        "reasons": ["drift"] if value == "YES" else [],
        "key": key,
        "file": "x",
    }


def test_the_trigger_starts_the_pipeline_with_the_seed_input_on_yes_once_per_decision(
    exported: Path, aws: dict
) -> None:
    trigger, pipeline = _trigger_machines(exported, aws, "yes")
    sfn.queue_lambda_results(_decision("YES", "a" * 64))
    desc, events = sfn.run(trigger, {})
    assert desc["status"] == "SUCCEEDED"
    assert sfn.entered(events) == [states.READ_DECISION, states.DECIDE, states.START, states.STARTED]
    runs = _pipeline_executions(pipeline)
    assert len(runs) == 1
    assert json.loads(runs[0]["input"]) == graph.TRIGGER_INPUT
    assert runs[0]["name"] == "retrain-" + "a" * 64
    assert runs[0]["status"] == "SUCCEEDED" and runs[0]["tasks"] == graph.PIPELINE.names
    # the same decision read again (the trigger run twice): refused by name, nothing started
    sfn.queue_lambda_results(_decision("YES", "a" * 64))
    desc, events = sfn.run(trigger, {})
    assert desc["status"] == "SUCCEEDED"
    assert sfn.entered(events)[-1] == states.HANDLED
    assert len(_pipeline_executions(pipeline)) == 1
    # a new YES decision retrains again
    sfn.queue_lambda_results(_decision("YES", "b" * 64))
    sfn.run(trigger, {})
    assert len(_pipeline_executions(pipeline)) == 2


def test_the_trigger_does_nothing_on_no(exported: Path, aws: dict) -> None:
    trigger, pipeline = _trigger_machines(exported, aws, "no")
    sfn.queue_lambda_results(_decision("NO", "c" * 64))
    desc, events = sfn.run(trigger, {})
    assert desc["status"] == "SUCCEEDED"
    assert sfn.entered(events) == [states.READ_DECISION, states.DECIDE, states.NO_RETRAINING]
    assert _pipeline_executions(pipeline) == []


def test_the_weekly_run_scores_monitors_then_triggers(exported: Path, aws: dict) -> None:
    trigger, pipeline = _trigger_machines(exported, aws, "weekly")
    weekly = sfn.create_state_machine(
        "fraudops-weekly",
        sfn.substitute(_asl(exported, export.WEEKLY_ASL), {"PipelineArn": pipeline, "TriggerArn": trigger}),
    )
    # the two recorded jobs (batch_inference, monitor) answer first, then the decision Lambda
    sfn.queue_lambda_results({"job": "recorded"}, {"job": "recorded"}, _decision("YES", "d" * 64))
    desc, events = sfn.run(weekly, {})
    assert desc["status"] == "SUCCEEDED", desc
    assert sfn.entered(events) == [states.SCORE_AND_MONITOR, states.ACT]
    runs = sorted(_pipeline_executions(pipeline), key=lambda r: r["startDate"])
    assert [json.loads(r["input"]) for r in runs] == [graph.SCHEDULE_INPUT, graph.TRIGGER_INPUT]
    assert runs[0]["tasks"] == graph.PIPELINE.plan(graph.SCHEDULE_INPUT) == ["batch_inference", "monitor"]
    assert runs[1]["tasks"] == graph.PIPELINE.names
