"""``fraudops export aws OUTDIR``: every file of the AWS deployment, generated from the declared pipeline.

The ``*.asl.json`` files are the state machines exactly as the template embeds them (``${Name}``
placeholders included), for review and for linting on their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fraudops.aws import bundle, states, template
from fraudops.pipeline import graph

PIPELINE_ASL, TRIGGER_ASL, WEEKLY_ASL, TEMPLATE = (
    "pipeline.asl.json",
    "trigger.asl.json",
    "weekly.asl.json",
    "template.yaml",
)


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def write(outdir: Path, pipeline: graph.Pipeline | None = None) -> list[tuple[Path, str]]:
    """Write the deployment for ``pipeline`` (default: the one ``fraudops run`` executes) into ``outdir``;
    returns each file with what it holds."""
    pipeline = pipeline or graph.PIPELINE
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("fraudops-lambda-*.zip"):
        old.unlink()
    zip_name, zip_bytes = bundle.lambda_zip()
    files: list[tuple[str, str | bytes, str]] = [
        (PIPELINE_ASL, _json(states.pipeline_definition(pipeline)), "the pipeline state machine"),
        (TRIGGER_ASL, _json(states.trigger_definition()), "the retraining trigger state machine"),
        (WEEKLY_ASL, _json(states.weekly_definition()), "the weekly run: batch → monitor → trigger"),
        (TEMPLATE, template.to_yaml(template.template(zip_name, pipeline)), "the CloudFormation template"),
        (zip_name, zip_bytes, "the Lambda bundle (upload to LambdaCodeBucket)"),
    ]
    out = []
    for name, content, what in files:
        path = outdir / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        out.append((path, what))
    return out
