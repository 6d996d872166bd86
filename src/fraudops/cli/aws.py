"""AWS: ``fraudops export aws`` (the deployment, generated) and ``fraudops sagemaker`` (the image's entry
points under SageMaker: ``train``, ``process STEP``, ``serve``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from fraudops.aws.contract import ML_ROOT
from fraudops.cli import serve
from fraudops.cli.base import handle_errors
from fraudops.cli.render import ExecutionPrinter, console, table

export_app = typer.Typer(help="Export the pipeline to a deployment target.", no_args_is_help=True)
sagemaker_app = typer.Typer(
    help="The container's entry points under SageMaker: `train` (training job), `process STEP` "
    "(processing job), `serve` (endpoint). The image's ENTRYPOINT is `fraudops sagemaker`.",
    no_args_is_help=True,
)

MlRootOpt = Annotated[
    Path, typer.Option("--ml-root", help="SageMaker's /opt/ml (another folder for tests and local runs).")
]


def _job_logging() -> None:
    """A job's logging goes to stderr, which SageMaker sends to CloudWatch."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@export_app.command("aws")
@handle_errors
def export_aws(
    outdir: Annotated[Path, typer.Argument(help="Folder to write into (created; files are overwritten).")],
) -> None:
    """Step Functions state machines, the CloudFormation template and the Lambda bundle, from the declared
    pipeline (the README's "Deploy on AWS" says how to deploy them)."""
    from fraudops.aws.export import write

    written = write(outdir)
    console.print(
        table(
            f"AWS deployment ({outdir})",
            [{"file": p.name, "bytes": p.stat().st_size, "holds": what} for p, what in written],
        )
    )
    console.print(
        "next: build and push the image, upload the Lambda bundle, `aws cloudformation deploy` "
        "(README: Deploy on AWS)",
        highlight=False,
    )


@sagemaker_app.command("train")
def sagemaker_train(ml_root: MlRootOpt = ML_ROOT) -> None:
    """SageMaker Training: run the step named in input/config/hyperparameters.json on the job's channels."""
    from fraudops.aws import container
    from fraudops.aws.contract import MlPaths

    _job_logging()
    raise typer.Exit(container.train(MlPaths(ml_root), on_event=ExecutionPrinter()))


@sagemaker_app.command("process")
def sagemaker_process(
    step: Annotated[str, typer.Argument(help="The pipeline step to run.")],
    execution: Annotated[str, typer.Option(help="The Step Functions execution's name.")],
    input_: Annotated[str, typer.Option("--input", help="The Step Functions execution's input (JSON).")],
    workspace_url: Annotated[str, typer.Option(help="The workspace on S3 (s3://bucket/prefix).")],
    ml_root: MlRootOpt = ML_ROOT,
) -> None:
    """SageMaker Processing: run STEP on processing/workspace/ (its inputs and outputs)."""
    from fraudops.aws import container
    from fraudops.aws.contract import MlPaths

    _job_logging()
    code = container.process(
        MlPaths(ml_root), step, execution, input_, workspace_url, on_event=ExecutionPrinter()
    )
    raise typer.Exit(code)


sagemaker_app.command("serve")(serve.serve)
