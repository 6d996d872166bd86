"""The CloudFormation template of the AWS deployment, built as data from the state machines and the layout.

Resources: the workspace bucket (retained on delete) with the seed's layout (a custom resource puts an empty
``.keep`` in every folder: SageMaker refuses an input prefix that holds no object), the ECR repository of
the image, the three state machines, the decision Lambda, the weekly schedule, the SageMaker model,
endpoint configuration and endpoint (``DeployEndpoint=true``: the endpoint answers /ping only once the
registry has a champion), and one IAM role per principal.

Least privilege: no ``*`` action anywhere, and each role allows only what its own states or code call, on
the resources they call it on. Each state machine role is derived from the ``Resource`` of its Task
states; ``*`` resources appear only for the two calls AWS does not scope to a resource
(``ecr:GetAuthorizationToken``, and ``cloudwatch:PutMetricData``, limited to SageMaker's namespaces).
"""

from __future__ import annotations

from typing import Any

import yaml

from fraudops.aws import lambdas, states
from fraudops.aws.contract import JOB_PREFIX
from fraudops.config import RegistryConfig
from fraudops.errors import FraudopsError
from fraudops.pipeline import graph
from fraudops.workspace.layout import DECISION_CSV, FOLDERS

Json = dict[str, Any]

RUNTIME = "python3.12"
LOG_RETENTION_DAYS = 30
SYNC_JOBS: dict[str, tuple[str, str, str]] = {
    states.TRAINING_JOB: (
        "training-job",
        "TrainingJob",
        "StepFunctionsGetEventsForSageMakerTrainingJobsRule",
    ),
    states.PROCESSING_JOB: (
        "processing-job",
        "ProcessingJob",
        "StepFunctionsGetEventsForSageMakerProcessingJobsRule",
    ),
}
"""Per SageMaker ``.sync`` integration: the job's ARN type, its API noun and the EventBridge rule Step
Functions manages to learn that a job ended."""
SFN_SYNC_RULE = "StepFunctionsGetEventsForStepFunctionsExecutionRule"


def _sub(text: str) -> Json:
    return {"Fn::Sub": text}


def _ref(name: str) -> Json:
    return {"Ref": name}


def _arn(resource: str) -> Json:
    return {"Fn::GetAtt": [resource, "Arn"]}


def _statement(sid: str, actions: list[str], resources: Any, condition: Json | None = None) -> Json:
    out: Json = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resources}
    if condition:
        out["Condition"] = condition
    return out


def _role(service: str, description: str, statements: list[Json], scoped: bool = True) -> Json:
    principal: Json = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    if scoped:  # confused-deputy protection: only this account's state machines / schedules
        principal["Condition"] = {"StringEquals": {"aws:SourceAccount": _ref("AWS::AccountId")}}
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "Description": description,
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [principal]},
            "Policies": [
                {
                    "PolicyName": "fraudops",
                    "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
                }
            ],
        },
    }


def _account_arn(service: str, resource: str) -> Json:
    return _sub(f"arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:${{AWS::AccountId}}:{resource}")


def _object_arn(key: str) -> Json:
    return _sub(f"arn:${{AWS::Partition}}:s3:::${{WorkspaceBucket}}/${{WorkspacePrefix}}/{key}")


BUCKET_ARN = _sub("arn:${AWS::Partition}:s3:::${WorkspaceBucket}")
WORKSPACE_URL = _sub("s3://${WorkspaceBucket}/${WorkspacePrefix}")
IMAGE = {"Fn::If": ["HasImageUri", _ref("ImageUri"), _sub("${ImageRepository.RepositoryUri}:latest")]}


def task_resources(definition: Json) -> set[str]:
    """The ``Resource`` of every Task state of a definition: what its role must allow."""
    return {s["Resource"] for s in definition["States"].values() if s["Type"] == "Task"}


def _pipeline_statements(definition: Json) -> list[Json]:
    used = task_resources(definition)
    unknown = used - set(SYNC_JOBS)
    if unknown:
        raise FraudopsError(f"no IAM permissions known for {', '.join(sorted(unknown))}")
    out = []
    for resource in sorted(used):
        kind, noun, rule = SYNC_JOBS[resource]
        actions = [f"sagemaker:{verb}{noun}" for verb in ("Create", "Describe", "Stop")]
        actions += ["sagemaker:AddTags", "sagemaker:ListTags"]
        out.append(_statement(f"{noun}s", actions, _account_arn("sagemaker", f"{kind}/{JOB_PREFIX}-*")))
        out.append(
            _statement(
                f"{noun}Events",
                ["events:DescribeRule", "events:PutRule", "events:PutTargets"],
                _account_arn("events", f"rule/{rule}"),
            )
        )
    out.append(
        _statement(
            "PassTheJobRole",
            ["iam:PassRole"],
            _arn("SageMakerRole"),
            {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        )
    )
    return out


def _sagemaker_statements() -> list[Json]:
    prefix = ["${WorkspacePrefix}", "${WorkspacePrefix}/*"]
    return [
        _statement("WorkspaceObjects", ["s3:GetObject", "s3:PutObject"], _object_arn("*")),
        _statement(
            "WorkspaceListing",
            ["s3:ListBucket"],
            BUCKET_ARN,
            {"StringLike": {"s3:prefix": [_sub(p) for p in prefix]}},
        ),
        _statement(
            "ImagePull",
            ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            _arn("ImageRepository"),
        ),
        _statement("RegistryLogin", ["ecr:GetAuthorizationToken"], "*"),
        _statement(
            "JobLogs",
            ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
            _account_arn("logs", "log-group:/aws/sagemaker/*"),
        ),
        _statement(
            "JobMetrics",
            ["cloudwatch:PutMetricData"],
            "*",
            {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}},
        ),
    ]


def _logs(group: str) -> Json:
    return _statement(f"{group}Logs", ["logs:CreateLogStream", "logs:PutLogEvents"], _arn(group))


def _function(description: str, handler: str, role: str, group: str, timeout: int, env: Json | None) -> Json:
    props: Json = {
        "Description": description,
        "Runtime": RUNTIME,
        "Handler": f"{lambdas.__name__}.{handler}",
        "Role": _arn(role),
        "Code": {"S3Bucket": _ref("LambdaCodeBucket"), "S3Key": _ref("LambdaCodeKey")},
        "Timeout": timeout,
        "MemorySize": 128,
        "LoggingConfig": {"LogGroup": _ref(group)},
    }
    if env:
        props["Environment"] = {"Variables": env}
    return {"Type": "AWS::Lambda::Function", "Properties": props}


def _log_group(name: str) -> Json:
    return {
        "Type": "AWS::Logs::LogGroup",
        "DeletionPolicy": "Delete",
        "UpdateReplacePolicy": "Delete",
        "Properties": {
            "LogGroupName": _sub(f"/aws/lambda/${{AWS::StackName}}/{name}"),
            "RetentionInDays": LOG_RETENTION_DAYS,
        },
    }


def _state_machine(role: str, definition: Json, values: Json) -> Json:
    missing = states.placeholders(definition) - set(values)
    if missing:
        raise FraudopsError(f"no value for placeholder(s) {', '.join(sorted(missing))}")
    return {
        "Type": "AWS::StepFunctions::StateMachine",
        "Properties": {
            "StateMachineType": "STANDARD",
            "RoleArn": _arn(role),
            "Definition": definition,
            "DefinitionSubstitutions": {k: values[k] for k in sorted(states.placeholders(definition))},
        },
    }


def _parameters() -> Json:
    def text(description: str, default: str | None = None, **kw: Any) -> Json:
        out: Json = {"Type": "String", "Description": description, **kw}
        if default is not None:
            out["Default"] = default
        return out

    instance = r"^ml\.[a-z0-9]+\.[a-z0-9]+$"
    return {
        "BucketName": text(
            "The workspace bucket to create; empty = fraudops-<account>-<region>",
            "",
            AllowedPattern=r"^$|^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        ),
        "WorkspacePrefix": text(
            "The workspace's prefix in the bucket (the workspace is s3://<bucket>/<prefix>)",
            "fraudops",
            AllowedPattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        ),
        "TrackingUri": text(
            "registry.tracking_uri: the MLflow server, reachable from the SageMaker jobs and the endpoint",
            AllowedPattern=r"^https?://\S+$",
        ),
        "RegisteredModelName": text(
            "registry.model_name, served by the endpoint", RegistryConfig().model_name
        ),
        "ImageUri": text("The fraudops image; empty = <this stack's ECR repository>:latest", ""),
        "TrainingInstanceType": text("SageMaker training instance", "ml.m5.xlarge", AllowedPattern=instance),
        "ProcessingInstanceType": text(
            "SageMaker processing instance", "ml.m5.xlarge", AllowedPattern=instance
        ),
        "EndpointInstanceType": text("Real-time endpoint instance", "ml.m5.large", AllowedPattern=instance),
        "VolumeSizeInGB": {
            "Type": "Number",
            "Description": "Disk of a job's instance",
            "Default": 30,
            "MinValue": 1,
            "MaxValue": 512,
        },
        "MaxRuntimeInSeconds": {
            "Type": "Number",
            "Description": "A job's time limit",
            "Default": 14400,
            "MinValue": 60,
            "MaxValue": 432000,
        },
        "ScheduleExpression": text("When the weekly run starts (UTC)", "cron(0 2 ? * MON *)"),
        "ScheduleState": text(
            "The weekly schedule on or off", "ENABLED", AllowedValues=["ENABLED", "DISABLED"]
        ),
        "DeployEndpoint": text(
            "Create the real-time endpoint (needs a champion in the registry: deploy it after the first run)",
            "false",
            AllowedValues=["false", "true"],
        ),
        "LambdaCodeBucket": text("A bucket holding the Lambda bundle (fraudops-lambda-*.zip)"),
        "LambdaCodeKey": text("The Lambda bundle's key in LambdaCodeBucket"),
    }


def template(lambda_key: str, pipeline: graph.Pipeline | None = None) -> Json:
    """The template for ``pipeline`` (default: the declared one), its Lambda bundle named ``lambda_key``."""
    pipeline_def = states.pipeline_definition(pipeline)
    trigger_def, weekly_def = states.trigger_definition(), states.weekly_definition()
    params = _parameters()
    params["LambdaCodeKey"]["Default"] = lambda_key
    values: Json = {
        states.IMAGE: IMAGE,
        states.ROLE: _arn("SageMakerRole"),
        states.WORKSPACE: WORKSPACE_URL,
        states.TRACKING: _ref("TrackingUri"),
        states.TRAINING_INSTANCE: _ref("TrainingInstanceType"),
        states.PROCESSING_INSTANCE: _ref("ProcessingInstanceType"),
        states.VOLUME: _ref("VolumeSizeInGB"),
        states.MAX_RUNTIME: _ref("MaxRuntimeInSeconds"),
        states.PIPELINE_ARN: _ref("PipelineStateMachine"),
        states.TRIGGER_ARN: _ref("TriggerStateMachine"),
        states.DECISION_FUNCTION: _arn("DecisionFunction"),
    }
    retained = {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"}
    markers = [_object_arn(k.split("/", 1)[1]) for k in lambdas.marker_keys("prefix", list(FOLDERS))]
    executions = [
        _account_arn("states", f"execution:${{{sm}.Name}}:*")
        for sm in ("PipelineStateMachine", "TriggerStateMachine")
    ]
    resources: Json = {
        "WorkspaceBucket": {
            "Type": "AWS::S3::Bucket",
            **retained,
            "Properties": {
                "BucketName": {
                    "Fn::If": [
                        "HasBucketName",
                        _ref("BucketName"),
                        _sub("fraudops-${AWS::AccountId}-${AWS::Region}"),
                    ]
                },
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True,
                    "BlockPublicPolicy": True,
                    "IgnorePublicAcls": True,
                    "RestrictPublicBuckets": True,
                },
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                    ]
                },
                "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
            },
        },
        "WorkspaceBucketPolicy": {
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {
                "Bucket": _ref("WorkspaceBucket"),
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "TlsOnly",
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "s3:*",
                            "Resource": [BUCKET_ARN, _sub("arn:${AWS::Partition}:s3:::${WorkspaceBucket}/*")],
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    ],
                },
            },
        },
        "WorkspaceLayout": {
            "Type": "Custom::WorkspaceLayout",
            "Properties": {
                "ServiceToken": _arn("LayoutFunction"),
                "Bucket": _ref("WorkspaceBucket"),
                "Prefix": _ref("WorkspacePrefix"),
                "Folders": list(FOLDERS),
            },
        },
        "ImageRepository": {
            "Type": "AWS::ECR::Repository",
            **retained,
            "Properties": {"ImageScanningConfiguration": {"ScanOnPush": True}},
        },
        "SageMakerRole": _role(
            "sagemaker.amazonaws.com",
            "fraudops SageMaker jobs and endpoint: the workspace, the image, their logs",
            _sagemaker_statements(),
            scoped=False,
        ),
        "PipelineRole": _role(
            "states.amazonaws.com", "fraudops pipeline state machine", _pipeline_statements(pipeline_def)
        ),
        "TriggerRole": _role(
            "states.amazonaws.com",
            "fraudops retraining trigger state machine",
            [
                _statement(
                    "ReadDecision",
                    ["lambda:InvokeFunction"],
                    [_arn("DecisionFunction"), _sub("${DecisionFunction.Arn}:*")],
                ),
                _statement("StartRetraining", ["states:StartExecution"], _ref("PipelineStateMachine")),
            ],
        ),
        "WeeklyRole": _role(
            "states.amazonaws.com",
            "fraudops weekly state machine",
            [
                _statement(
                    "StartRuns",
                    ["states:StartExecution"],
                    [_ref("PipelineStateMachine"), _ref("TriggerStateMachine")],
                ),
                _statement("FollowRuns", ["states:DescribeExecution", "states:StopExecution"], executions),
                _statement(
                    "RunEvents",
                    ["events:DescribeRule", "events:PutRule", "events:PutTargets"],
                    _account_arn("events", f"rule/{SFN_SYNC_RULE}"),
                ),
            ],
        ),
        "SchedulerRole": _role(
            "scheduler.amazonaws.com",
            "fraudops weekly schedule",
            [_statement("StartWeekly", ["states:StartExecution"], _ref("WeeklyStateMachine"))],
        ),
        "DecisionFunctionRole": _role(
            "lambda.amazonaws.com",
            "fraudops decision Lambda: reads retrain_decision.csv",
            [
                _statement("ReadDecision", ["s3:GetObject"], _object_arn(DECISION_CSV)),
                _statement(
                    "MissingDecisionIsNotFound",
                    ["s3:ListBucket"],
                    BUCKET_ARN,
                    {"StringEquals": {"s3:prefix": _sub(f"${{WorkspacePrefix}}/{DECISION_CSV}")}},
                ),
                _logs("DecisionLogGroup"),
            ],
            scoped=False,
        ),
        "LayoutFunctionRole": _role(
            "lambda.amazonaws.com",
            "fraudops layout custom resource: the empty .keep object of each folder",
            [_statement("FolderMarkers", ["s3:PutObject"], markers), _logs("LayoutLogGroup")],
            scoped=False,
        ),
        "DecisionLogGroup": _log_group("decision"),
        "LayoutLogGroup": _log_group("layout"),
        "DecisionFunction": _function(
            "fraudops: the monitor's retraining decision (retrain_decision.csv)",
            lambdas.decision_handler.__name__,
            "DecisionFunctionRole",
            "DecisionLogGroup",
            30,
            {
                lambdas.BUCKET_ENV: _ref("WorkspaceBucket"),
                lambdas.KEY_ENV: _sub(f"${{WorkspacePrefix}}/{DECISION_CSV}"),
            },
        ),
        "LayoutFunction": _function(
            "fraudops: the seed bucket's folders (CloudFormation custom resource)",
            lambdas.layout_handler.__name__,
            "LayoutFunctionRole",
            "LayoutLogGroup",
            60,
            None,
        ),
        "PipelineStateMachine": _state_machine("PipelineRole", pipeline_def, values),
        "TriggerStateMachine": _state_machine("TriggerRole", trigger_def, values),
        "WeeklyStateMachine": _state_machine("WeeklyRole", weekly_def, values),
        "WeeklySchedule": {
            "Type": "AWS::Scheduler::Schedule",
            "Properties": {
                "Description": "fraudops weekly: batch scoring, monitoring, then the retraining trigger",
                "ScheduleExpression": _ref("ScheduleExpression"),
                "ScheduleExpressionTimezone": "UTC",
                "FlexibleTimeWindow": {"Mode": "OFF"},
                "State": _ref("ScheduleState"),
                "Target": {
                    "Arn": _ref("WeeklyStateMachine"),
                    "RoleArn": _arn("SchedulerRole"),
                    "Input": "{}",
                },
            },
        },
        "EndpointModel": {
            "Type": "AWS::SageMaker::Model",
            "Condition": "CreateEndpoint",
            "Properties": {
                "ExecutionRoleArn": _arn("SageMakerRole"),
                "PrimaryContainer": {
                    "Image": IMAGE,
                    "Environment": {
                        states.TRACKING_ENV: _ref("TrackingUri"),
                        "FRAUDOPS_REGISTRY__MODEL_NAME": _ref("RegisteredModelName"),
                    },
                },
            },
        },
        "EndpointConfig": {
            "Type": "AWS::SageMaker::EndpointConfig",
            "Condition": "CreateEndpoint",
            "Properties": {
                "ProductionVariants": [
                    {
                        "VariantName": "champion",
                        "ModelName": {"Fn::GetAtt": ["EndpointModel", "ModelName"]},
                        "InitialInstanceCount": 1,
                        "InstanceType": _ref("EndpointInstanceType"),
                        "InitialVariantWeight": 1.0,
                    }
                ]
            },
        },
        "Endpoint": {
            "Type": "AWS::SageMaker::Endpoint",
            "Condition": "CreateEndpoint",
            "Properties": {"EndpointConfigName": {"Fn::GetAtt": ["EndpointConfig", "EndpointConfigName"]}},
        },
    }
    outputs: Json = {
        "WorkspaceUrl": {"Description": "The workspace (-w for fraudops)", "Value": WORKSPACE_URL},
        "RepositoryUri": {
            "Description": "Push the image here",
            "Value": {"Fn::GetAtt": ["ImageRepository", "RepositoryUri"]},
        },
        "PipelineStateMachineArn": {"Value": _ref("PipelineStateMachine")},
        "TriggerStateMachineArn": {"Value": _ref("TriggerStateMachine")},
        "WeeklyStateMachineArn": {"Value": _ref("WeeklyStateMachine")},
        "EndpointName": {
            "Condition": "CreateEndpoint",
            "Value": {"Fn::GetAtt": ["Endpoint", "EndpointName"]},
        },
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "fraudops on AWS: the pipeline ("
        + " → ".join((pipeline or graph.PIPELINE).names)
        + "), "
        "its retraining trigger, the weekly schedule and the real-time endpoint",
        "Parameters": params,
        "Conditions": {
            "HasBucketName": {"Fn::Not": [{"Fn::Equals": [_ref("BucketName"), ""]}]},
            "HasImageUri": {"Fn::Not": [{"Fn::Equals": [_ref("ImageUri"), ""]}]},
            "CreateEndpoint": {"Fn::Equals": [_ref("DeployEndpoint"), "true"]},
        },
        "Resources": resources,
        "Outputs": outputs,
    }


class _Dumper(yaml.SafeDumper):
    """YAML without anchors and aliases, which CloudFormation rejects (values shared in the dict repeat)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(tpl: Json) -> str:
    """The template as YAML (intrinsic functions in their long form, which every tool reads)."""
    head = "# Generated by `fraudops export aws` from the declared pipeline; regenerate rather than edit.\n"
    return head + yaml.dump(tpl, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
