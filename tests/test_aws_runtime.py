"""What runs on AWS, run here: the image's SageMaker entry points on /opt/ml-shaped folders (driven by the job
parameters the exported state machine produced in moto), the Lambda handlers on moto's S3, the Lambda
bundle in a clean interpreter, and the Dockerfile checked as far as it can be without a Docker engine."""

from __future__ import annotations

import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
import typer.main
import yaml
from typer.testing import CliRunner

import aws_helpers as sfn
from fraudops.aws import bundle, export, lambdas, states
from fraudops.aws.contract import ML_ROOT, MlPaths, job_execution_id
from fraudops.cli import build
from fraudops.config import TrainConfig, _unknown_env_keys, parse_settings
from fraudops.errors import FraudopsError
from fraudops.pipeline import graph
from fraudops.pipeline.history import History
from fraudops.pipeline.trigger import read_decision
from fraudops.workspace.layout import (
    CONFIG_FILE,
    CURRENT,
    DECISION_CSV,
    FOLDERS,
    MLFLOW_ARTIFACTS,
    PREDICTIONS,
    PROD_INPUTS,
    RAW,
    REFERENCE_DIR,
)
from fraudops.workspace.storage import Storage
from helpers import SMALL_XGB, kaggle_like

ROOT = Path(__file__).parents[1]
RUNNER = CliRunner()


# --- the Dockerfile, read as the build would run it -------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each step, continuation lines joined, comments dropped."""
    steps: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            op, _, args = pending.strip().partition(" ")
            steps.append((op.upper(), args.strip()))
            pending = ""
    return steps


def entrypoint() -> list[str]:
    return list(json.loads(next(a for op, a in dockerfile() if op == "ENTRYPOINT")))


def resolve(argv: list[str]) -> str:
    """The command ``argv`` runs (argv[0] = the console script) as "group command", resolved and its
    arguments parsed, without running it."""
    assert argv[0] == "fraudops", argv
    cmd: Any = typer.main.get_command(build())
    args, path = argv[1:], []
    while hasattr(cmd, "commands"):  # a group: the next word names its command
        assert args and args[0] in cmd.commands, (
            f"{argv}: {args[:1]} is not a command of {path or 'fraudops'}"
        )
        cmd, path, args = cmd.commands[args[0]], [*path, args[0]], args[1:]
    cmd.make_context(path[-1], list(args))
    return " ".join(path)


def test_the_dockerfile_builds_from_files_that_exist_and_its_entry_points_resolve(tmp_path: Path) -> None:
    steps = dockerfile()
    ops = [op for op, _ in steps]
    assert ops[0] == "FROM" and steps[0][1].startswith("python:3.11")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11"
    # uv: the Makefile's pin
    make_uv = re.search(r"uv==([0-9.]+)", (ROOT / "Makefile").read_text())
    docker_uv = re.search(r"uv==([0-9.]+)", " ".join(a for op, a in steps if op == "RUN"))
    assert make_uv and docker_uv and make_uv.group(1) == docker_uv.group(1)
    # COPY: every source exists and together they are a buildable project (readme, package, lock)
    workdir = Path(next(a for op, a in steps if op == "WORKDIR"))
    image: set[str] = set()
    for op, args in steps:
        if op != "COPY":
            continue
        *sources, dest = shlex.split(args)
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"COPY {src}: no such file in the repository"
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            target = workdir / dest if dest != "./" else workdir
            for f in files:
                rel = f.relative_to(path) if path.is_dir() else Path(f.name)
                if "__pycache__" not in rel.parts and f.suffix != ".pyc":  # .dockerignore
                    image.add((target / rel).as_posix() if path.is_dir() else (target / f.name).as_posix())
    assert f"{workdir}/{pyproject['project']['readme']}" in image
    for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        tracked = subprocess.run(
            ["git", "ls-files", package], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        assert tracked and {f"{workdir}/{t}" for t in tracked} <= image  # every tracked file is copied
    assert f"{workdir}/src/fraudops/aws/container.py" in image
    assert f"{workdir}/src/fraudops/monitoring/templates/report.html.j2" in image
    # uv sync --frozen: the lock is the pyproject's (S3 support is in the default install, no extra)
    sync = next(a for op, a in steps if op == "RUN" and "uv sync" in a)
    assert "--frozen" in sync and "--no-dev" in sync and "--extra" not in sync
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = next(p for p in lock["package"] if p["name"] == "fraudops")["metadata"]
    wanted = pyproject["project"]["dependencies"]
    assert len(locked["requires-dist"]) == len(wanted)
    assert {d["name"] for d in locked["requires-dist"]} == {re.split(r"[<>=\[;]", w)[0] for w in wanted}
    # ENV: every FRAUDOPS_* variable is a setting; the console script is on PATH
    env = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', " ".join(a for op, a in steps if op == "ENV")))
    assert _unknown_env_keys({k: v for k, v in env.items()}) == []
    assert f"{workdir}/.venv/bin" in env["PATH"] and "fraudops" in pyproject["project"]["scripts"]
    assert env["FRAUDOPS_SERVE__PORT"] == next(a for op, a in steps if op == "EXPOSE") == "8080"
    assert not env["FRAUDOPS_WORKSPACE"].startswith(ML_ROOT.as_posix())  # SageMaker mounts over /opt/ml
    # RUN fraudops …: resolves, and works
    init = next(a for op, a in steps if op == "RUN" and a.startswith("fraudops "))
    assert resolve(shlex.split(init)) == "init"
    result = RUNNER.invoke(build(), [*shlex.split(init)[1:-1], str(tmp_path / "ws")])
    assert result.exit_code == 0 and (tmp_path / "ws" / CONFIG_FILE).is_file()
    # ENTRYPOINT + what SageMaker passes: the endpoint (CMD), a training job, a processing job
    assert (
        resolve([*entrypoint(), *json.loads(next(a for op, a in steps if op == "CMD"))]) == "sagemaker serve"
    )
    assert resolve([*entrypoint(), "train"]) == "sagemaker train"
    d = sfn.substitute(states.pipeline_definition(), sfn.VALUES)
    for step in graph.PIPELINE.steps:
        if step.job != "training":
            args = ["process", step.name, "--execution", "e", "--input", "{}", "--workspace-url", "s3://b/p"]
            assert "ContainerArguments.$" in d["States"][step.name]["Parameters"]["AppSpecification"]
            assert resolve([*entrypoint(), *args]) == "sagemaker process"


# --- the entry points on /opt/ml-shaped folders -----------------------------------------------------


class FakeSageMaker:
    """What SageMaker does around a job, on local folders: the workspace "bucket" is a folder, each job gets
    its own /opt/ml-shaped root, inputs are copied in before the container runs and outputs out after."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.monkeypatch, self.n = root, monkeypatch, 0

    def _ml(self) -> Path:
        self.n += 1
        return self.root / f"job-{self.n}" / "opt-ml"

    @staticmethod
    def _download(uri: str, dest: Path) -> None:
        src = Path(uri)
        if uri.endswith("/"):
            shutil.copytree(src, dest, dirs_exist_ok=True)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.name)

    def run(self, job: dict[str, Any]) -> tuple[int, Path, str]:
        """(exit code, the job's /opt/ml, output) of one recorded job."""
        params, ml = job["job"], self._ml()
        for name, value in params["Environment"].items():
            self.monkeypatch.setenv(name, value)
        if job["resource"] == states.TRAINING_JOB:
            for channel in params["InputDataConfig"]:
                self._download(
                    channel["DataSource"]["S3DataSource"]["S3Uri"],
                    MlPaths(ml).channel(channel["ChannelName"]),
                )
            MlPaths(ml).hyperparameters.parent.mkdir(parents=True)
            MlPaths(ml).hyperparameters.write_text(json.dumps(params["HyperParameters"]))
            argv = [*entrypoint(), "train"]
            outputs: list[tuple[Path, Path]] = []
        else:
            local = lambda p: ml / Path(p).relative_to(ML_ROOT)  # noqa: E731
            for inp in params["ProcessingInputs"]:
                self._download(inp["S3Input"]["S3Uri"], local(inp["S3Input"]["LocalPath"]))
            outputs = [
                (local(o["S3Output"]["LocalPath"]), Path(o["S3Output"]["S3Uri"]))
                for o in params.get("ProcessingOutputConfig", {}).get("Outputs", [])
            ]
            for here, _ in outputs:
                here.mkdir(parents=True, exist_ok=True)
            argv = [*entrypoint(), *params["AppSpecification"]["ContainerArguments"]]
        result = RUNNER.invoke(build(), [*argv[1:], "--ml-root", str(ml)])
        for here, there in outputs:  # SageMaker uploads outputs at the end of the job
            shutil.copytree(here, there, dirs_exist_ok=True)
        return result.exit_code, ml, result.output


def _config() -> str:
    xgboost = {**TrainConfig().xgboost, **SMALL_XGB}
    return yaml.safe_dump(
        {
            "data": {"kind": "features"},
            "train": {"candidates": ["xgboost"], "min_frauds": 5, "xgboost": xgboost},
        }
    )


@pytest.mark.slow
def test_the_pipeline_runs_job_by_job_through_the_container_contracts(tmp_path: Path, monkeypatch) -> None:
    """{"run": "all"} in moto gives five jobs' parameters; each runs through the image's entry point on its
    own /opt/ml, with only the folders its parameters download, and hands over through the history."""
    home = tmp_path / "bucket" / "fraudops"  # the workspace s3://bucket/fraudops
    for folder in FOLDERS:  # the layout custom resource's markers
        (home / folder).mkdir(parents=True, exist_ok=True)
        (home / folder / lambdas.KEEP).write_bytes(b"")
    (home / CONFIG_FILE).write_text(_config())
    Storage(str(home)).write_frame(f"{RAW}/creditcard.csv", kaggle_like(4000, 0))
    Storage(str(home)).write_frame(f"{PROD_INPUTS}/week.csv", kaggle_like(600, 5, start=2e6))
    values = {**sfn.VALUES, "WorkspaceUrl": str(home), "TrackingUri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    inp = {"run": "all", "triggered_by": "test", "reason": "contracts"}
    with sfn.mocked():
        recorder = sfn.lambda_function("recorder")
        definition = sfn.recording_variant(sfn.substitute(states.pipeline_definition(), values), recorder)
        _, events = sfn.run(sfn.create_state_machine("pipeline", definition), inp, name="exec-1")
    jobs = sfn.recorded_jobs(events)
    assert [j["state"] for j in jobs] == graph.PIPELINE.names

    sagemaker = FakeSageMaker(tmp_path, monkeypatch)
    results: dict[str, tuple[int, Path, str]] = {}
    for job in jobs:
        if job["state"] == "batch_inference":  # labelled data the champion never saw arrives
            Storage(str(home)).write_frame(f"{CURRENT}/week.csv", kaggle_like(2000, 1, start=1e6, shift=1.5))
        results[job["state"]] = sagemaker.run(job)
        assert results[job["state"]][0] == 0, results[job["state"]][2]

    # training: the result in /opt/ml/model; the model in MLflow, its artifacts in the workspace bucket
    _, ml, _ = results["train"]
    trained = json.loads((MlPaths(ml).model / "result.json").read_text())
    assert trained["status"] == "SUCCEEDED" and trained["execution"] == "exec-1"
    assert not MlPaths(ml).failure.exists()
    artifacts = home / MLFLOW_ARTIFACTS
    assert any(artifacts.rglob("MLmodel")), "model artifacts belong in the workspace's prod_outputs/mlflow/"
    assert not any((tmp_path / "job-1").rglob("MLmodel"))
    # the hand-over: register registered the run this execution trained (found through the history)
    settings = parse_settings(_config(), workspace=str(home), source="test")
    history = History(settings)
    records = {}
    for step in graph.PIPELINE.names:
        (run,) = history.search(limit=5, id_prefix=job_execution_id("exec-1", step))
        records[step] = history.record(run)
        assert records[step]["status"] == "SUCCEEDED"
        assert records[step]["input"] == {
            "run": step,
            "only": True,
            "reason": "Step Functions execution exec-1: contracts",
            "triggered_by": "test",
        }
    assert records["register"]["previous_outputs"] == ["train"]
    assert records["register"]["steps"][0]["outputs"]["source_run_id"] == trained["outputs"]["run_id"]
    # processing outputs went back to the bucket; each job's message names its execution
    assert (home / REFERENCE_DIR / "version-1" / "reference.json").is_file()
    assert (home / PREDICTIONS / "week.out.csv").is_file()
    decision = read_decision(Storage(str(home)))
    assert decision["retraining_required"] == "YES", decision
    for step in ("register", "select_champion", "batch_inference", "monitor"):
        message = json.loads(MlPaths(results[step][1]).message.read_text())
        assert message == {
            "execution_id": job_execution_id("exec-1", step),
            "status": "SUCCEEDED",
            "error": None,
        }
    # a job saw only what its step declares: register downloaded the config alone
    register_ws = MlPaths(results["register"][1]).processing_workspace
    assert sorted(p.name for p in register_ws.iterdir() if not p.name.startswith(".")) == []


def _training_root(tmp_path: Path, hyperparameters: dict[str, str]) -> MlPaths:
    ml = MlPaths(tmp_path / "opt-ml")
    ml.hyperparameters.parent.mkdir(parents=True)
    ml.hyperparameters.write_text(json.dumps(hyperparameters))
    return ml


@pytest.mark.parametrize(
    ("hyperparameters", "reason"),
    [
        ({"step": "train", "execution": "e"}, "missing hyperparameter(s) input, workspace"),
        (
            {"step": "register", "execution": "e", "input": '{"run": "all"}', "workspace": "/w"},
            "step register runs as a SageMaker processing job, not training",
        ),
        (
            {"step": "train", "execution": "e", "input": '{"run": "monitor"}', "workspace": "/w"},
            "step train is not in the plan",
        ),
        (
            {"step": "train", "execution": "e", "input": '{"run": "sometimes"}', "workspace": "/w"},
            'unknown "run" value "sometimes"',
        ),
    ],
)
def test_a_training_job_that_cannot_run_says_why_in_the_failure_file(
    tmp_path, hyperparameters, reason
) -> None:
    ml = _training_root(tmp_path, hyperparameters)
    result = RUNNER.invoke(build(), ["sagemaker", "train", "--ml-root", str(ml.root)])
    assert result.exit_code == 1
    assert reason in ml.failure.read_text()
    assert not (ml.model / "result.json").exists()


def test_a_processing_job_that_cannot_run_says_why_in_its_exit_message(tmp_path: Path) -> None:
    ml = MlPaths(tmp_path / "opt-ml")
    args = ["--execution", "e", "--input", '{"run": "all"}', "--workspace-url", str(tmp_path / "ws")]
    result = RUNNER.invoke(build(), ["sagemaker", "process", "retrain", *args, "--ml-root", str(ml.root)])
    assert result.exit_code == 1
    message = json.loads(ml.message.read_text())
    assert message["status"] == "FAILED" and "unknown step 'retrain'" in message["error"]
    result = RUNNER.invoke(build(), ["sagemaker", "process", "train", *args, "--ml-root", str(ml.root)])
    assert result.exit_code == 1
    assert "runs as a SageMaker training job" in json.loads(ml.message.read_text())["error"]


def test_a_job_whose_hand_over_is_missing_fails_rather_than_guess(tmp_path: Path, monkeypatch) -> None:
    """register after train in the same execution needs train's recorded result; without it, it must not
    register whatever train run is newest."""
    monkeypatch.setenv(states.TRACKING_ENV, f"sqlite:///{tmp_path / 'mlflow.db'}")
    ml = MlPaths(tmp_path / "opt-ml")
    args = ["--execution", "e-1", "--input", '{"run": "all"}', "--workspace-url", str(tmp_path / "ws")]
    result = RUNNER.invoke(build(), ["sagemaker", "process", "register", *args, "--ml-root", str(ml.root)])
    assert result.exit_code == 1
    error = json.loads(ml.message.read_text())["error"]
    assert (
        "consumes the result of train, which has no successful job in Step Functions execution e-1" in error
    )


def test_a_long_failure_is_cut_to_the_1_kb_sagemaker_keeps(tmp_path: Path) -> None:
    ml = _training_root(
        tmp_path,
        {"step": "train", "execution": "e", "input": json.dumps({"run": "x" * 3000}), "workspace": "/w"},
    )
    RUNNER.invoke(build(), ["sagemaker", "train", "--ml-root", str(ml.root)])
    assert 900 < len(ml.failure.read_bytes()) <= 1024


# --- the Lambda handlers on moto's S3 ----------------------------------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_DEFAULT_REGION", sfn.REGION)
    with sfn.mocked():
        client = boto3.client("s3", region_name=sfn.REGION)
        client.create_bucket(Bucket="ws-bucket")
        monkeypatch.setenv(lambdas.BUCKET_ENV, "ws-bucket")
        monkeypatch.setenv(lambdas.KEY_ENV, f"fraudops/{DECISION_CSV}")
        yield client


CSV_YES = b"retraining_required,reasons,status\nYES,feature drift: 40% of features; score drift,ok\n"


def test_the_decision_lambda_reads_the_csv_by_the_local_trigger_s_rules(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket="ws-bucket", Key=f"fraudops/{DECISION_CSV}", Body=CSV_YES)
    out = lambdas.decision_handler({}, None)
    assert out["retraining_required"] == "YES"
    assert out["reasons"] == ["feature drift: 40% of features", "score drift"]
    assert out["file"] == f"s3://ws-bucket/fraudops/{DECISION_CSV}"
    assert re.fullmatch(r"[0-9a-f]{64}", out["key"])
    json.dumps(out)  # the state machine receives it as JSON
    assert lambdas.decision_handler({}, None)["key"] == out["key"]  # the same file: the same decision
    s3.put_object(Bucket="ws-bucket", Key=f"fraudops/{DECISION_CSV}", Body=CSV_YES.replace(b"YES", b"NO"))
    assert lambdas.decision_handler({}, None)["retraining_required"] == "NO"
    # the same bytes, read locally: the same answer
    local = Storage(str(tmp_path))
    local.write_bytes(DECISION_CSV, CSV_YES)
    assert {
        k: v for k, v in read_decision(local).items() if k in ("retraining_required", "reasons", "row")
    } == {k: v for k, v in out.items() if k in ("retraining_required", "reasons", "row")}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "no retraining decision at s3://ws-bucket/fraudops/"),
        (b"decision\nYES\n", "the first column must be retraining_required"),
        (b"retraining_required\nMAYBE\n", "must be YES or NO"),
        (b"\xff\xfe", "is not a readable CSV"),
    ],
)
def test_the_decision_lambda_fails_clearly_on_a_missing_or_bad_file(
    s3: Any, body: bytes | None, message: str
) -> None:
    if body is not None:
        s3.put_object(Bucket="ws-bucket", Key=f"fraudops/{DECISION_CSV}", Body=body)
    with pytest.raises(FraudopsError, match=re.escape(message)):
        lambdas.decision_handler({}, None)


class _Responses(http.server.BaseHTTPRequestHandler):
    """CloudFormation's pre-signed response URL, on loopback."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"content_type": self.headers.get("Content-Type"), **json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def response_url() -> Any:
    _Responses.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Responses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/response"
    server.shutdown()
    server.server_close()


def _event(kind: str, url: str, bucket: str = "ws-bucket") -> dict[str, Any]:
    return {
        "RequestType": kind,
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/fraudops/1",
        "RequestId": "r-1",
        "LogicalResourceId": "WorkspaceLayout",
        "ResourceProperties": {"Bucket": bucket, "Prefix": "fraudops", "Folders": list(FOLDERS)},
    }


def test_the_layout_custom_resource_makes_every_folder_and_answers_cloudformation(s3: Any, response_url: str):
    lambdas.layout_handler(_event("Create", response_url), None)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="ws-bucket")["Contents"]}
    assert keys == {f"fraudops/{f}/{lambdas.KEEP}" for f in FOLDERS}
    (answer,) = _Responses.received
    assert answer["Status"] == "SUCCESS" and answer["PhysicalResourceId"] == "ws-bucket/fraudops"
    assert (answer["RequestId"], answer["LogicalResourceId"], answer["content_type"]) == (
        "r-1",
        "WorkspaceLayout",
        "",
    )
    # Delete keeps the folders (the bucket is retained); a failure is reported, not hidden
    lambdas.layout_handler(
        {**_event("Delete", response_url), "PhysicalResourceId": "ws-bucket/fraudops"}, None
    )
    assert len(s3.list_objects_v2(Bucket="ws-bucket")["Contents"]) == len(FOLDERS)
    lambdas.layout_handler(_event("Create", response_url, bucket="no-such-bucket"), None)
    assert [a["Status"] for a in _Responses.received] == ["SUCCESS", "SUCCESS", "FAILED"]
    assert "NoSuchBucket" in _Responses.received[-1]["Reason"]


# --- the Lambda bundle ------------------------------------------------------------------------------


def test_the_lambda_bundle_is_the_package_s_own_modules_and_runs_without_fraudops_dependencies(
    tmp_path: Path,
):
    name, data = bundle.lambda_zip()
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as z:
        z.extractall(tmp_path / "task")
        for member in z.namelist():
            if member.endswith(".py"):  # byte for byte the installed package's modules
                assert z.read(member) == (bundle.PACKAGE.parent / member).read_bytes(), member
    code = f"""
import json, sys
sys.path.insert(0, {str(tmp_path / "task")!r})
import fraudops.aws.lambdas as handler
loaded = sorted(sys.modules)
heavy = [m for m in ("polars", "pydantic", "mlflow", "numpy", "yaml", "fsspec", "boto3") if m in sys.modules]
files = {{m: getattr(sys.modules[m], "__file__", None) for m in loaded if m.startswith("fraudops")}}
import boto3
from moto import mock_aws
with mock_aws():
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="ws-bucket")
    s3.put_object(Bucket="ws-bucket", Key="k.csv", Body=b"retraining_required\\nYES\\n")
    import os
    os.environ.update({{handler.BUCKET_ENV: "ws-bucket", handler.KEY_ENV: "k.csv"}})
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    out = handler.decision_handler({{}}, None)
import fraudops
report = {{"heavy": heavy, "files": files, "decision": out["retraining_required"]}}
print(json.dumps({{**report, "version": fraudops.__version__}}))
"""
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []  # nothing but the standard library at import
    assert report["files"] and all(f.startswith(str(tmp_path / "task")) for f in report["files"].values())
    assert report["decision"] == "YES"
    assert report["version"] == __import__("fraudops").__version__  # read from the bundle's metadata
    assert re.fullmatch(r"fraudops-lambda-[0-9a-f]{12}\.zip", name) and bundle.lambda_zip() == (name, data)


def test_the_bundle_refuses_a_handler_that_imports_a_third_party_library(monkeypatch, tmp_path: Path) -> None:
    fake = tmp_path / "fraudops" / "aws"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "lambdas.py").write_text("import polars\n")
    monkeypatch.setattr(bundle, "PACKAGE", tmp_path / "fraudops")
    with pytest.raises(FraudopsError, match=r"fraudops\.aws\.lambdas imports polars"):
        bundle.lambda_zip()


def test_the_template_runs_the_bundle_s_handlers(tmp_path: Path) -> None:
    written = dict((p.name, p) for p, _ in export.write(tmp_path))
    tpl = yaml.safe_load(written[export.TEMPLATE].read_text())
    zip_name = next(n for n in written if n.endswith(".zip"))
    with zipfile.ZipFile(written[zip_name]) as z:
        names = set(z.namelist())
    for logical in ("DecisionFunction", "LayoutFunction"):
        module, _, function = tpl["Resources"][logical]["Properties"]["Handler"].rpartition(".")
        assert module.replace(".", "/") + ".py" in names
        assert callable(getattr(lambdas, function))
