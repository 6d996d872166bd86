"""The AWS Lambda handlers: the seed's retraining-decision reader and the bucket-layout custom resource.

Standard library, boto3 (the Lambda Python runtime has it) and the standard-library fraudops modules only:
the Lambda's bundle (:mod:`fraudops.aws.bundle`) carries this module and the fraudops modules it imports,
nothing else. boto3 is imported inside the handlers so that importing this module costs nothing. What they
print goes to the function's CloudWatch log group.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from fraudops.errors import FraudopsError
from fraudops.monitoring.decision_file import parse_decision

BUCKET_ENV, KEY_ENV = "DECISION_BUCKET", "DECISION_KEY"
"""Where the decision handler reads ``retrain_decision.csv`` (set by the template)."""
KEEP = ".keep"
"""The empty object that makes a folder of the layout exist (SageMaker refuses an input with no object)."""


def decision_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The seed's retraining Lambda: the monitor's decision from S3, read by the same rules as ``fraudops
    trigger`` (YES/NO, reasons, and the key that makes one decision start one retraining)."""
    import boto3

    bucket, key = os.environ[BUCKET_ENV], os.environ[KEY_ENV]
    where = f"s3://{bucket}/{key}"
    s3 = boto3.client("s3")
    try:
        obj = s3.get_object(Bucket=bucket, Key=key)
    except s3.exceptions.NoSuchKey as e:
        raise FraudopsError(
            f"no retraining decision at {where}: run the pipeline's monitor step first"
        ) from e
    decision = parse_decision(obj["Body"].read(), where, obj["LastModified"])
    print(
        json.dumps(
            {"decision": decision["retraining_required"], "file": where, "reasons": decision["reasons"]}
        )
    )
    return decision


def marker_keys(prefix: str, folders: list[str]) -> list[str]:
    """The ``.keep`` object of each folder of the layout under ``prefix``."""
    base = prefix.strip("/")
    return [f"{base}/{folder.strip('/')}/{KEEP}" for folder in folders]


def layout_handler(event: dict[str, Any], context: Any) -> None:
    """CloudFormation custom resource: on Create and Update, every folder of the seed's layout gets an empty
    ``.keep`` object (fraudops skips hidden names); on Delete nothing is removed (the bucket is retained)."""
    props = event.get("ResourceProperties") or {}
    physical = event.get("PhysicalResourceId") or f"{props.get('Bucket')}/{props.get('Prefix')}"
    status, reason = "SUCCESS", ""
    try:
        if event["RequestType"] in ("Create", "Update"):
            import boto3

            s3 = boto3.client("s3")
            for key in marker_keys(props["Prefix"], props["Folders"]):
                s3.put_object(Bucket=props["Bucket"], Key=key, Body=b"")
    except Exception as e:
        status, reason = "FAILED", f"{type(e).__name__}: {e}"
        print(json.dumps({"layout": physical, "status": status, "reason": reason}))
    respond(event, status, reason, physical)


def respond(event: dict[str, Any], status: str, reason: str, physical: str) -> None:
    """CloudFormation's custom-resource answer: a PUT of the outcome to the pre-signed ResponseURL."""
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason or status,
            "PhysicalResourceId": physical,
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Data": {},
        }
    ).encode()
    request = urllib.request.Request(
        event["ResponseURL"],
        data=body,
        method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()
