"""SageMaker's container contract, as fraudops uses it: where a job finds its inputs and leaves its outputs.

One place for the paths, so that the state machine that starts the jobs (:mod:`fraudops.aws.states`) and
the container that runs them (:mod:`fraudops.aws.container`) cannot disagree:

* **Training** (``docker run IMAGE train``): ``input/config/hyperparameters.json`` (the step, the Step
  Functions execution, its input, the workspace URL), one channel ``input/data/<channel>/`` per workspace
  folder the step reads, plus ``input/data/config/`` with the workspace's ``fraudops.yaml``; the job writes
  ``model/`` (uploaded as ``model.tar.gz``) and, on failure, ``output/failure``.
* **Processing** (``docker run IMAGE process STEP …``): every folder the step reads is downloaded to, and
  every folder it writes is uploaded from, the same relative path under ``processing/workspace/``, so that
  folder is a workspace with the seed's layout; ``fraudops.yaml`` comes in ``processing/config/``; the job
  writes a summary to ``output/message`` (DescribeProcessingJob's ExitMessage).

Paths hang off one root, ``/opt/ml`` in a job and a temporary folder in tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

ML_ROOT = Path("/opt/ml")
CONFIG_CHANNEL = "config"
JOB_PREFIX = "fraudops"
"""Every SageMaker job fraudops starts is named ``fraudops-<step>-<hash>`` (the IAM policies match it)."""
NAME_MAX = 63
"""SageMaker's limit on a job name."""


@dataclasses.dataclass(frozen=True)
class MlPaths:
    """The folders of SageMaker's container contract under ``root``."""

    root: Path = ML_ROOT

    @property
    def hyperparameters(self) -> Path:
        return self.root / "input" / "config" / "hyperparameters.json"

    def channel(self, name: str) -> Path:
        return self.root / "input" / "data" / name

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def failure(self) -> Path:
        return self.root / "output" / "failure"

    @property
    def message(self) -> Path:
        return self.root / "output" / "message"

    @property
    def processing_workspace(self) -> Path:
        return self.root / "processing" / "workspace"

    @property
    def processing_config(self) -> Path:
        return self.root / "processing" / "config"


def channel_name(folder: str) -> str:
    """A workspace folder's training channel, or processing input/output name: ``data/raw`` → ``data-raw``."""
    return folder.strip("/").replace("/", "-")


def job_name_prefix(step: str) -> str:
    """``fraudops-<step>-``: SageMaker job names allow letters, digits and hyphens only."""
    return f"{JOB_PREFIX}-{step.lower().replace('_', '-')}-"


def job_execution_id(execution: str, step: str) -> str:
    """The fraudops execution id of one step's job in a Step Functions execution (hexadecimal, like every
    execution id in the history), so a later job of the same execution finds the results it consumes."""
    return hashlib.sha256(f"{execution}/{step}".encode()).hexdigest()[:32]
