"""The pipeline state machine: entry points, history in MLflow, failures, the lock, the trigger, the CLI.

Fast tests substitute fake steps (``graph.PIPELINE`` with the same shape) and record the history in
a real SQLite MLflow store in a temporary workspace; the slow ones run the real stages.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field
from typer.testing import CliRunner

from fraudops import retries
from fraudops.context import StepContext, StepResult
from fraudops.errors import FraudopsError, LockHeldError, StorageError
from fraudops.pipeline import executor, graph
from fraudops.pipeline import trigger as trigger_module
from fraudops.pipeline.graph import PIPELINE, Pipeline, Step
from fraudops.pipeline.history import History
from fraudops.tracking.client import experiment_id, tracking_uri
from fraudops.workspace import init_workspace, load_settings
from fraudops.workspace.layout import DECISION_CSV, LOCK_FILE, TRIGGER_STATE
from fraudops.workspace.lock import WorkspaceLock
from fraudops.workspace.storage import Storage
from helpers import race

NAMES = ["train", "register", "select_champion", "batch_inference", "monitor"]
WS_YAML = "pipeline:\n  retries: 2\n  retry_backoff: 0\n"

# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised (migrated) empty MLflow SQLite file: copying it is much faster than migrating anew."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def ws(tmp_path: Path, mlflow_template: Path) -> str:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "fraudops.yaml").write_text(WS_YAML)
    shutil.copy(mlflow_template, root / "mlflow.db")
    init_workspace(str(root))
    return str(root)


class FakeResult(StepResult):
    step: str
    seen: list[str]
    retraining_required: str | None = None
    reasons: list[str] = Field(default_factory=list)


class Fakes:
    """Fake steps: record calls, return results; ``fail[name]`` = exceptions to raise, one per call;
    ``flaky[name]`` = errors a simulated I/O call of the step meets before it works."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, list[BaseException]] = {}
        self.flaky: dict[str, list[BaseException]] = {}
        self.io_calls: list[str] = []

    def make(self, name: str) -> Any:
        def step(ctx: StepContext) -> FakeResult:
            self.calls.append((name, dict(ctx.handed)))
            assert ctx.execution_id and ctx.parent_run_id
            if self.fail.get(name):
                raise self.fail[name].pop(0)
            if name in self.flaky:

                def io() -> None:
                    self.io_calls.append(name)
                    if self.flaky[name]:
                        raise self.flaky[name].pop(0)

                retries.call(io, retries.current(retries.RetryPolicy(0, 0)), f"{name} I/O")
            out = FakeResult(step=name, seen=sorted(ctx.handed))
            if name == "monitor":
                out.retraining_required, out.reasons = "NO", []
            return out

        return step

    def pipeline(self) -> Pipeline:
        """The real graph's shape (names, order, hand-overs of everything earlier) with fake steps."""
        return Pipeline(
            tuple(
                Step(s.name, self.make(s.name), FakeResult, s.doc, s.job, consumes=tuple(NAMES[:i]))
                for i, s in enumerate(PIPELINE.steps)
            )
        )

    @property
    def order(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    f = Fakes()
    monkeypatch.setattr(graph, "PIPELINE", f.pipeline())
    return f


def run(ws: str, inp: dict[str, Any], **kw: Any) -> dict[str, Any]:
    settings = load_settings(ws)
    return executor.execute(settings, Storage(settings.workspace), inp, **kw)


def stored(ws: str, execution_id: str) -> dict[str, Any]:
    history = History(load_settings(ws))
    return history.record(history.find(execution_id))


def statuses(record: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in record["steps"]}


def parse_input(text: str) -> dict[str, Any]:
    return graph.validate_input(*graph.read_input(text))


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Any:
    from fraudops import cli as cli_module
    from fraudops.cli import render

    monkeypatch.setattr(render.console, "width", 250)
    monkeypatch.setattr(render.err_console, "width", 250)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Any:
        return runner.invoke(cli_module.build(), list(args), input=input, catch_exceptions=False)

    return invoke


# ------------------------------------------------------------------------------------- entry points

EXPECTED = {
    "all": NAMES,
    "train": NAMES,
    "register": NAMES[1:],
    "select_champion": NAMES[2:],
    "batch_inference": NAMES[3:],
    "monitor": NAMES[4:],
}


@pytest.mark.parametrize("entry", list(EXPECTED))
def test_each_entry_point_runs_its_steps_in_order(ws: str, fakes: Fakes, entry: str) -> None:
    rec = run(ws, {"run": entry})
    assert rec["status"] == "SUCCEEDED"
    assert fakes.order == EXPECTED[entry]
    # every step sees the outputs of the steps before it in this execution
    for i, (_, previous) in enumerate(fakes.calls):
        assert sorted(previous) == sorted(EXPECTED[entry][:i])
    back = stored(ws, rec["id"])
    assert back["status"] == "SUCCEEDED"
    assert [s["name"] for s in back["steps"]] == EXPECTED[entry]
    assert all(s["status"] == "SUCCEEDED" and s["duration_s"] is not None for s in back["steps"])
    assert back["steps"][-1]["outputs"]["step"] == EXPECTED[entry][-1]


def test_only_runs_one_step(ws: str, fakes: Fakes) -> None:
    rec = run(ws, {"run": "register", "only": True, "triggered_by": "cli"})
    assert fakes.order == ["register"]
    assert rec["status"] == "SUCCEEDED" and rec["triggered_by"] == "cli"


def test_plan() -> None:
    assert PIPELINE.plan({"run": "all"}) == NAMES
    assert PIPELINE.plan({"run": "select_champion"}) == NAMES[2:]
    assert PIPELINE.plan({"run": "monitor", "only": True}) == ["monitor"]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({}, 'no "run" key'),
        ({"triggered_by": "monitoring"}, 'no "run" key'),
        ({"run": "trian"}, 'unknown "run" value "trian"'),
        ({"run": ""}, 'unknown "run" value'),
        ({"run": None}, 'unknown "run" value null'),
        ({"run": ["all"]}, 'unknown "run" value'),
        ({"run": "all", "rn": 1}, "unknown key(s) rn"),
        ({"run": "all", "only": True}, '"only" needs a step name'),
        ({"run": "train", "only": "yes"}, "only must be true or false"),
        ({"run": "train", "triggered_by": 3}, "triggered_by must be a string"),
        (["all"], "must be a JSON object"),
    ],
)
def test_bad_inputs_are_clear_errors(obj: Any, message: str) -> None:
    with pytest.raises(FraudopsError) as e:
        graph.validate_input(obj)
    assert message in str(e.value)
    if "run" in message:
        assert "all, train, register, select_champion, batch_inference, monitor" in str(e.value)


def test_unknown_run_value_runs_nothing(ws: str, fakes: Fakes, cli: Any) -> None:
    result = cli("run", "-w", ws, "--input", '{"run": "training"}')
    assert result.exit_code == 1
    assert 'unknown "run" value "training"' in result.output
    assert "all, train, register" in result.output
    assert fakes.calls == []
    assert cli("executions", "list", "-w", ws).output.startswith("no executions yet")


def test_input_from_file(ws: str, fakes: Fakes, tmp_path: Path, cli: Any) -> None:
    f = tmp_path / "input.json"
    f.write_text(json.dumps({"run": "batch_inference", "triggered_by": "schedule", "reason": "weekly"}))
    for arg in (f"@{f}", str(f)):
        fakes.calls.clear()
        result = cli("run", "-w", ws, "--input", arg)
        assert result.exit_code == 0, result.output
        assert fakes.order == ["batch_inference", "monitor"]
    rec = parse_input(f"@{f}")
    assert rec == {"run": "batch_inference", "triggered_by": "schedule", "reason": "weekly"}


def test_bad_json_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FraudopsError, match="not valid JSON"):
        parse_input('{"run": all}')
    with pytest.raises(FraudopsError, match="not valid JSON"):
        parse_input("no-such-file.json")
    with pytest.raises(FraudopsError, match="cannot read"):
        parse_input(f"@{tmp_path / 'missing.json'}")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(FraudopsError, match=r"bad\.json is not valid JSON"):
        parse_input(str(bad))


def test_cli_from_only_and_conflicts(ws: str, fakes: Fakes, cli: Any) -> None:
    assert cli("run", "-w", ws, "--from", "select_champion").exit_code == 0
    assert fakes.order == NAMES[2:]
    fakes.calls.clear()
    assert cli("run", "-w", ws, "--only", "monitor", "--input", '{"triggered_by": "cron"}').exit_code == 0
    assert fakes.order == ["monitor"]
    result = cli("run", "-w", ws, "--from", "train", "--input", '{"run": "all"}')
    assert result.exit_code == 1 and "not both" in result.output
    result = cli("run", "-w", ws, "--from", "train", "--only", "monitor")
    assert result.exit_code == 1 and "only one of" in result.output
    result = cli("run", "-w", ws, "--from", "scoring")
    assert result.exit_code == 1 and 'unknown "run" value "scoring"' in result.output


# ------------------------------------------------------------------------------------- failures


def test_failing_step_is_recorded_and_resumed(ws: str, fakes: Fakes, cli: Any) -> None:
    fakes.fail["select_champion"] = [FraudopsError("no challenger to compare")]
    rec = run(ws, {"run": "all"})
    assert rec["status"] == "FAILED"
    assert "no challenger to compare" in rec["error"]
    assert fakes.order == ["train", "register", "select_champion"]  # not retried: a user error
    back = stored(ws, rec["id"])
    assert back["status"] == "FAILED"
    assert statuses(back) == {
        "train": "SUCCEEDED",
        "register": "SUCCEEDED",
        "select_champion": "FAILED",
        "batch_inference": "PENDING",
        "monitor": "PENDING",
    }
    assert back["steps"][0]["outputs"]["step"] == "train"  # earlier outputs stay
    assert "FraudopsError: no challenger to compare" in back["steps"][2]["error"]
    log = History(load_settings(ws)).log_text(back["run_id"])
    assert "step select_champion FAILED" in log and "step train succeeded" in log

    # --from the failed step: a new execution that runs to the end
    fakes.calls.clear()
    result = cli("run", "-w", ws, "--from", "select_champion")
    assert result.exit_code == 0, result.output
    assert fakes.order == NAMES[2:]

    # --resume: continues the failed execution with its earlier outputs
    fakes.fail["batch_inference"] = [RuntimeError("disk on fire")]
    failed = run(ws, {"run": "all"})
    assert failed["status"] == "FAILED"
    fakes.calls.clear()
    result = cli("run", "-w", ws, "--resume", failed["id"][:6])
    assert result.exit_code == 0, result.output
    assert fakes.order == ["batch_inference", "monitor"]
    assert sorted(fakes.calls[0][1]) == ["register", "select_champion", "train"]


def test_failed_cli_exit_code_and_hint(ws: str, fakes: Fakes, cli: Any) -> None:
    fakes.fail["train"] = [FraudopsError("not enough labelled days")]
    result = cli("train", "-w", ws)
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # Rich wraps long lines
    assert "not enough labelled days" in text
    assert "--resume" in text and "--from train" in text


def test_transient_io_is_retried_per_call_never_the_whole_step(ws: str, fakes: Fakes) -> None:
    fakes.flaky["train"] = [ConnectionError("tracking server reset"), TimeoutError("slow disk")]
    rec = run(ws, {"run": "train", "only": True})
    assert rec["status"] == "SUCCEEDED"
    assert fakes.order == ["train"]  # the step ran once: retrying a whole step could duplicate its work
    assert fakes.io_calls == ["train"] * 3
    assert "transient error" in History(load_settings(ws)).log_text(rec["run_id"])


def test_transient_io_gives_up_after_retries(ws: str, fakes: Fakes) -> None:
    fakes.flaky["register"] = [OSError("network unreachable") for _ in range(10)]
    rec = run(ws, {"run": "register", "only": True})
    assert rec["status"] == "FAILED"
    assert fakes.order == ["register"] and fakes.io_calls == ["register"] * 3  # 1 + retries (2)
    assert "OSError: network unreachable" in rec["steps"][0]["error"]


def test_a_step_declares_its_own_retry_policy(ws: str, fakes: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = list(graph.PIPELINE.steps)
    steps[3] = dataclasses.replace(steps[3], retry=retries.RetryPolicy(retries=5, backoff=0))
    monkeypatch.setattr(graph, "PIPELINE", Pipeline(tuple(steps)))
    fakes.flaky["batch_inference"] = [ConnectionError(str(i)) for i in range(5)]
    rec = run(ws, {"run": "batch_inference", "only": True})
    assert rec["status"] == "SUCCEEDED" and fakes.io_calls == ["batch_inference"] * 6


def test_backoff_doubles() -> None:
    slept: list[float] = []
    calls = iter([ConnectionError("a"), ConnectionError("b"), ConnectionError("c"), None])

    def fn() -> str:
        err = next(calls)
        if err:
            raise err
        return "ok"

    assert retries.call(fn, retries.RetryPolicy(3, 0.5), "x", sleep=slept.append) == "ok"
    assert slept == [0.5, 1.0, 2.0]


def test_is_transient() -> None:
    from mlflow.exceptions import MlflowException

    assert retries.is_transient(ConnectionError())
    assert retries.is_transient(TimeoutError())
    assert retries.is_transient(OSError("I/O error"))
    assert retries.is_transient(MlflowException("API request failed: Max retries exceeded with url"))
    assert retries.is_transient(MlflowException("(sqlite3.OperationalError) database is locked"))
    assert not retries.is_transient(
        MlflowException("Registered model not found", error_code="RESOURCE_DOES_NOT_EXIST")
    )
    assert not retries.is_transient(FraudopsError("bad input"))
    assert not retries.is_transient(FileNotFoundError("x"))
    assert not retries.is_transient(StorageError("x: no such file"))
    assert not retries.is_transient(ValueError("x"))
    try:
        try:
            raise ConnectionError("refused")
        except ConnectionError as inner:
            raise FraudopsError("MLflow tracking server cannot be reached") from inner
    except FraudopsError as outer:
        assert retries.is_transient(outer)


# ------------------------------------------------------------------------------------- lock


def test_second_execution_is_refused_while_one_holds_the_lock(ws: str, fakes: Fakes, cli: Any) -> None:
    storage = Storage(ws)
    with WorkspaceLock(storage, "f" * 32, heartbeat=0.05):
        with pytest.raises(LockHeldError) as e:
            run(ws, {"run": "all"})
        assert "another execution is running" in str(e.value) and "ffffffff" in str(e.value)
        assert f"pid {os.getpid()}" in str(e.value)
        result = cli("run", "-w", ws)
        assert result.exit_code == 1 and "another execution is running" in result.output
        # waiting (pipeline.lock_timeout) gives up after the timeout
        settings = load_settings(ws)
        settings.pipeline.lock_timeout = 0.5
        t0 = time.monotonic()
        with pytest.raises(LockHeldError, match=r"waited 0\.5 s"):
            executor.execute(settings, storage, {"run": "all"})
        assert time.monotonic() - t0 >= 0.5
        time.sleep(0.2)
        assert WorkspaceLock(storage, "").read()["heartbeat_epoch"] > time.time() - 1  # refreshed
    assert fakes.calls == []
    assert not storage.exists(LOCK_FILE)  # released
    assert run(ws, {"run": "monitor"})["status"] == "SUCCEEDED"


def test_lock_waits_for_a_holder_that_finishes(ws: str, fakes: Fakes) -> None:
    import threading

    storage = Storage(ws)
    lock = WorkspaceLock(storage, "e" * 32).acquire()
    threading.Timer(0.5, lock.release).start()
    settings = load_settings(ws)
    settings.pipeline.lock_timeout = 10
    assert executor.execute(settings, storage, {"run": "monitor"})["status"] == "SUCCEEDED"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_of_a_dead_process_is_taken_over(ws: str, fakes: Fakes) -> None:
    storage = Storage(ws)
    holder = {
        "execution_id": "d" * 32,
        "pid": _dead_pid(),
        "hostname": socket.gethostname(),
        "token": "t",
        "heartbeat_epoch": time.time(),
    }
    storage.write_json(LOCK_FILE, holder)
    rec = run(ws, {"run": "monitor"})
    assert rec["status"] == "SUCCEEDED"
    assert not storage.exists(LOCK_FILE)


def test_stale_lock_by_heartbeat_age(ws: str) -> None:
    storage = Storage(ws)
    lock = WorkspaceLock(storage, "a" * 32, stale_after=60)
    other_host = {"execution_id": "b" * 32, "pid": 1, "hostname": "elsewhere", "token": "t"}
    assert lock.stale_reason({**other_host, "heartbeat_epoch": time.time() - 5}) is None
    assert "no heartbeat for" in lock.stale_reason({**other_host, "heartbeat_epoch": time.time() - 61})
    mine_alive = {
        **other_host,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "heartbeat_epoch": time.time(),
    }
    assert lock.stale_reason(mine_alive) is None
    assert "is gone" in lock.stale_reason({**mine_alive, "pid": _dead_pid()})


def test_only_one_of_many_contenders_wins(ws: str) -> None:
    storage = Storage(ws)
    locks = [WorkspaceLock(storage, f"{i:032x}", heartbeat=0) for i in range(8)]

    won = race(locks)
    assert sum(won) == 1
    for lock in locks:
        lock.release()
    assert not storage.exists(LOCK_FILE)


# ------------------------------------------------------------------------------------- killed / SIGTERM

CHILD = textwrap.dedent(
    """
    import dataclasses, sys, time
    from pathlib import Path
    from fraudops.context import StepResult
    from fraudops.pipeline import graph
    from fraudops.tracking.client import step_run

    def quick(ctx):
        return StepResult()

    def slow(ctx):
        with step_run(ctx.settings, "batch_inference", ctx.execution_id, ctx.parent_run_id):
            with ctx.storage.open_write("prod_outputs/predictions/scored.csv") as f:
                f.write(b"TRANSACTION_ID,fraud_probability\\n1,0.5\\n")
                Path(sys.argv[2]).write_text("ready")
                time.sleep(120)
                f.write(b"2,0.1\\n")
        return StepResult()

    graph.PIPELINE = graph.Pipeline(tuple(
        dataclasses.replace(s, run=slow if s.name == "batch_inference" else quick, result=StepResult)
        for s in graph.PIPELINE.steps
    ))
    from fraudops.cli import build
    build()(["run", "-w", sys.argv[1]], prog_name="fraudops")
    """
)


def _start_child(ws: str, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, str(script), ws, str(ready)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"child did not reach the slow step: {proc.stdout.read().decode()}")
        time.sleep(0.1)
    return proc, ready


def test_killed_mid_step_leaves_no_partial_output_and_resumes(
    ws: str, fakes: Fakes, tmp_path: Path, cli: Any
) -> None:
    storage = Storage(ws)
    proc, _ = _start_child(ws, tmp_path)
    holder = WorkspaceLock(storage, "").read()
    assert holder["pid"] == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # nothing half-written under the final name; the lock is still there, held by a dead process
    assert not storage.exists("prod_outputs/predictions/scored.csv")
    assert storage.ls("prod_outputs/predictions") == []
    assert storage.exists(LOCK_FILE)
    killed = stored(ws, holder["execution_id"])
    assert killed["status"] == "RUNNING"
    assert statuses(killed)["select_champion"] == "SUCCEEDED"
    assert statuses(killed)["batch_inference"] == "RUNNING"
    listing = cli("executions", "list", "-w", ws).output
    assert "ABORTED (lost)" in listing

    # resume: takes the stale lock over, records the killed execution ABORTED, continues where it stopped
    result = cli("run", "-w", ws, "--resume", "last")
    assert result.exit_code == 0, result.output
    assert fakes.order == ["batch_inference", "monitor"]
    assert sorted(fakes.calls[0][1]) == ["register", "select_champion", "train"]
    killed = stored(ws, holder["execution_id"])
    assert killed["status"] == "ABORTED"
    assert "process ended without recording a status" in killed["error"]
    assert statuses(killed)["batch_inference"] == "ABORTED"
    assert not storage.exists(LOCK_FILE)
    from mlflow import MlflowClient

    settings = load_settings(ws)
    c = MlflowClient(tracking_uri(settings))
    assert c.get_run(killed["run_id"]).info.status == "KILLED"
    step_runs = c.search_runs(
        [experiment_id(settings)], filter_string=f"tags.`mlflow.parentRunId` = '{killed['run_id']}'"
    )
    assert [r.info.status for r in step_runs] == ["KILLED"]  # the killed step's own run is closed too


def test_sigterm_aborts_the_execution(ws: str, tmp_path: Path) -> None:
    storage = Storage(ws)
    proc, _ = _start_child(ws, tmp_path)
    holder = WorkspaceLock(storage, "").read()
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, out
    assert "ABORTED" in out
    rec = stored(ws, holder["execution_id"])
    assert rec["status"] == "ABORTED" and rec["error"] == "SIGTERM"
    assert statuses(rec)["batch_inference"] == "ABORTED"
    assert statuses(rec)["monitor"] == "PENDING"
    assert not storage.exists(LOCK_FILE)  # released
    assert not storage.exists("prod_outputs/predictions/scored.csv")
    from mlflow import MlflowClient

    assert MlflowClient(tracking_uri(load_settings(ws))).get_run(rec["run_id"]).info.status == "KILLED"


def test_keyboard_interrupt_aborts(ws: str, fakes: Fakes) -> None:
    fakes.fail["register"] = [KeyboardInterrupt()]
    rec = run(ws, {"run": "all"})
    assert rec["status"] == "ABORTED"
    assert statuses(stored(ws, rec["id"]))["register"] == "ABORTED"
    assert not Storage(ws).exists(LOCK_FILE)


# ------------------------------------------------------------------------------------- trigger


def write_decision(ws: str, value: str, reasons: str = "feature drift: 5 of 20 features drifted") -> None:
    Storage(ws).write_text(DECISION_CSV, f"retraining_required,reasons,drift_share\n{value},{reasons},0.25\n")


def test_trigger_yes_starts_once(ws: str, fakes: Fakes, cli: Any) -> None:
    write_decision(ws, "YES")
    result = cli("trigger", "-w", ws)
    assert result.exit_code == 0, result.output
    assert "retraining decision: YES" in result.output and "feature drift" in result.output
    assert fakes.order == NAMES
    rec = History(load_settings(ws)).record(History(load_settings(ws)).search()[0])
    assert rec["input"] == {"run": "all", "triggered_by": "monitoring", "reason": "auto_retraining"}
    assert rec["triggered_by"] == "monitoring" and rec["status"] == "SUCCEEDED"

    # the fake monitor step did not rewrite the decision: the same decision is not acted on twice
    fakes.calls.clear()
    result = cli("trigger", "-w", ws)
    assert result.exit_code == 0
    assert "already acted on" in result.output and rec["id"][:8] in result.output
    assert fakes.calls == []
    state = Storage(ws).read_json(TRIGGER_STATE)
    assert state["handled"][-1]["execution_id"] == rec["id"] and state["handled"][-1]["status"] == "SUCCEEDED"

    # --force acts again; a new decision (a later monitoring run) is acted on
    assert cli("trigger", "-w", ws, "--force").exit_code == 0
    assert fakes.order == NAMES
    fakes.calls.clear()
    time.sleep(0.01)
    write_decision(ws, "YES", "score drift: PSI 0.4 >= 0.25")
    assert cli("trigger", "-w", ws).exit_code == 0
    assert fakes.order == NAMES


def test_trigger_no_does_nothing(ws: str, fakes: Fakes, cli: Any) -> None:
    write_decision(ws, "no", "")
    result = cli("trigger", "-w", ws)
    assert result.exit_code == 0
    assert "retraining decision: NO" in result.output and "nothing to do" in result.output
    assert fakes.calls == []


def test_trigger_failed_execution_is_reported(ws: str, fakes: Fakes, cli: Any) -> None:
    write_decision(ws, "YES")
    fakes.fail["train"] = [FraudopsError("no labelled data")]
    result = cli("trigger", "-w", ws)
    assert result.exit_code == 1 and "no labelled data" in result.output
    result = cli("trigger", "-w", ws)
    assert result.exit_code == 0 and "(FAILED)" in result.output and "--force" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no retraining decision at"),
        ("", "first column must be retraining_required"),
        ("decision\nYES\n", "first column must be retraining_required"),
        ("retraining_required,reasons\n", "no decision row"),
        ("retraining_required,reasons\nMAYBE,x\n", "must be YES or NO, found 'MAYBE'"),
        ("retraining_required\n\n", "no decision row"),
    ],
)
def test_trigger_missing_or_malformed_decision(
    ws: str, fakes: Fakes, cli: Any, content: str | None, message: str
) -> None:
    if content is not None:
        Storage(ws).write_text(DECISION_CSV, content)
    result = cli("trigger", "-w", ws)
    assert result.exit_code == 1
    assert message in result.output
    assert fakes.calls == []


def test_decision_with_bom_and_spaces(ws: str) -> None:
    Storage(ws).write_bytes(DECISION_CSV, "\ufeffretraining_required,reasons\n yes ,a; b\n".encode())
    d = trigger_module.read_decision(Storage(ws))
    assert d["retraining_required"] == "YES" and d["reasons"] == ["a", "b"]


# ------------------------------------------------------------------------------------- history output


def test_executions_list_and_show(ws: str, fakes: Fakes, cli: Any) -> None:
    ok = run(ws, {"run": "batch_inference", "triggered_by": "schedule", "reason": "weekly"})
    fakes.fail["register"] = [FraudopsError("run abc is already registered")]
    bad = run(ws, {"run": "all"})
    listing = cli("executions", "list", "-w", ws).output
    assert ok["id"][:8] in listing and bad["id"][:8] in listing
    assert listing.index(bad["id"][:8]) < listing.index(ok["id"][:8])  # newest first
    for text in ("SUCCEEDED", "FAILED", "schedule", "manual", '{"run": "all"}', "2/2", "1/5"):
        assert text in listing

    show = cli("executions", "show", bad["id"][:5], "-w", ws)
    assert show.exit_code == 0, show.output
    out = show.output
    for text in (
        bad["id"],
        "FAILED",
        "train",
        "register",
        "select_champion",
        "PENDING",
        "already registered",
        "step=train",
        "train outputs",
    ):
        assert text in out
    show = cli("executions", "show", ok["id"], "-w", ws, "--logs").output
    assert "logs/execution.log" in show and "step monitor succeeded" in show and "weekly" in show

    result = cli("executions", "show", "0000000000", "-w", ws)
    assert result.exit_code == 1 and "no execution with id" in result.output
    result = cli("executions", "show", "xyz", "-w", ws)
    assert result.exit_code == 1 and "not an execution id" in result.output


def test_history_in_mlflow(ws: str, fakes: Fakes) -> None:
    from mlflow import MlflowClient

    rec = run(ws, {"run": "monitor", "triggered_by": "cron", "reason": "weekly check"})
    c = MlflowClient(tracking_uri(load_settings(ws)))
    r = c.get_run(rec["run_id"])
    tags = r.data.tags
    assert r.info.run_name == f"execution-{rec['id'][:8]}"
    assert r.info.status == "FINISHED"
    assert tags["fraudops.execution"] == "true" and tags["fraudops.execution_id"] == rec["id"]
    assert json.loads(tags["fraudops.input"]) == {
        "run": "monitor",
        "triggered_by": "cron",
        "reason": "weekly check",
    }
    assert tags["fraudops.triggered_by"] == "cron" and tags["fraudops.status"] == "SUCCEEDED"
    assert tags["fraudops.step.monitor.status"] == "SUCCEEDED"
    assert json.loads(tags["fraudops.step.monitor.outputs"])["retraining_required"] == "NO"
    assert "step.monitor.duration_s" in r.data.metrics
    names = {a.path for a in c.list_artifacts(rec["run_id"])} | {
        a.path for a in c.list_artifacts(rec["run_id"], "logs")
    }
    assert {"execution.json", "logs/execution.log"} <= names


def test_ambiguous_prefix(ws: str, fakes: Fakes) -> None:
    settings, storage = load_settings(ws), Storage(ws)
    executor.execute(settings, storage, {"run": "monitor"}, execution_id="abc" + "1" * 29)
    executor.execute(settings, storage, {"run": "monitor"}, execution_id="abc" + "2" * 29)
    with pytest.raises(FraudopsError, match="matches several executions"):
        History(settings).find("abc")
    assert History(settings).find("abc1").data.tags["fraudops.execution_id"].startswith("abc1")


# ------------------------------------------------------------------------------------- reset / demo


def test_reset(ws: str, fakes: Fakes, cli: Any) -> None:
    storage = Storage(ws)
    storage.write_text("data/raw/x.csv", "a\n1\n")
    storage.write_text("prod_outputs/predictions/p.csv", "a\n1\n")
    result = cli("reset", "-w", ws, input="n\n")
    assert result.exit_code == 1 and storage.exists("data/raw/x.csv")  # declined
    with WorkspaceLock(storage, "c" * 32, heartbeat=0):
        result = cli("reset", "-w", ws, "--yes")
        assert result.exit_code == 1 and "another execution is running" in result.output
    assert storage.exists("mlflow.db")
    result = cli("reset", "-w", ws, "--yes")
    assert result.exit_code == 0, result.output
    assert not storage.exists("data/raw/x.csv") and not storage.exists("mlflow.db")
    assert storage.exists("fraudops.yaml") and storage.exists("data/raw") and storage.exists("prod_inputs")


def test_demo_refuses_a_non_empty_folder(tmp_path: Path, cli: Any) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = cli("demo", str(tmp_path / "mine"))
    assert result.exit_code == 1 and "is not empty" in result.output
    result = cli("demo", str(tmp_path / "mine"), "--force")
    assert result.exit_code == 1 and "not a fraudops workspace" in result.output
    assert (tmp_path / "mine" / "notes.txt").exists()


# ------------------------------------------------------------------------------------- real steps


@pytest.mark.slow
def test_real_training_steps_nest_under_the_execution(ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """train → register → select_champion for real, on a small simulation; their runs are nested."""
    from mlflow import MlflowClient

    from fraudops.config import SimulateConfig
    from fraudops.data import simulate
    from fraudops.data.schema import to_file_columns

    settings = load_settings(ws)
    storage = Storage(ws)
    df = simulate.simulate(SimulateConfig(n_customers=600, n_terminals=1200, n_days=75, seed=9))
    for day, frame in simulate.iter_days(df):
        storage.write_frame(f"data/raw/{simulate.day_file_name(day)}", to_file_columns(frame, settings.data))
    settings.train.candidates = ["logistic_regression"]
    settings.train.min_frauds = 5
    monkeypatch.setattr(graph, "PIPELINE", Pipeline(PIPELINE.steps[:3]))
    rec = executor.execute(settings, storage, {"run": "all"})
    assert rec["status"] == "SUCCEEDED", rec["error"]
    out = {s["name"]: s["outputs"] for s in rec["steps"]}
    assert out["register"]["source_run_id"] == out["train"]["run_id"]  # lineage, not "the newest"
    assert out["select_champion"]["decision"] == "promoted"
    c = MlflowClient(tracking_uri(settings))
    children = c.search_runs(
        [experiment_id(settings)], filter_string=f"tags.`mlflow.parentRunId` = '{rec['run_id']}'"
    )
    assert {r.data.tags["fraudops.step"] for r in children} >= {"train", "register", "select_champion"}
    assert all(r.data.tags["fraudops.execution_id"] == rec["id"] for r in children)
    assert all(s["runs"] for s in rec["steps"])


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path, cli: Any) -> None:
    ws = str(tmp_path / "demo")
    result = cli("demo", ws, "--customers", "1000", "--trees", "60")
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("1. go-live", "2. four weeks later", "3. retraining trigger", "champion", "done in"):
        assert text in out
    listing = cli("executions", "list", "-w", ws).output
    assert listing.count("SUCCEEDED") >= 3
    again = cli("demo", ws)
    assert again.exit_code == 1 and "is not empty" in again.output


def test_demo_stages_the_data_in_two_moments(tmp_path: Path) -> None:
    import polars as pl

    from fraudops import demo
    from fraudops.data.schema import LABEL, TX_TIME

    ws = str(tmp_path / "demo")
    settings, storage, t = demo.create(ws, customers=150, trees=10, force=False)
    assert settings.simulate.drift_start == t.drift_start and settings.train.xgboost["n_estimators"] == 10
    df, _ = demo.simulate(settings)

    def days(folder: str) -> tuple[Any, Any, int]:
        frame = pl.concat([storage.read_frame(f) for f in storage.ls(folder)], how="diagonal_relaxed")
        dates = frame[TX_TIME].cast(pl.Datetime).dt.date()
        return dates.min(), dates.max(), frame.height

    info = demo.stage_go_live(storage, settings, df, t)
    assert len(info) == 3
    raw, cur, batch = days("data/raw"), days("monitoring_inputs/current_data"), days("prod_inputs")
    assert raw[1] < cur[0] and cur[1] < batch[0] <= t.drift_start
    assert LABEL not in storage.read_frame(storage.ls("prod_inputs")[0]).columns
    demo.stage_later(storage, settings, df, t)
    raw2, cur2, batch2 = days("data/raw"), days("monitoring_inputs/current_data"), days("prod_inputs")
    assert raw2[1] == cur[1]  # last week joined the history
    assert cur2[0] == t.later[0] < t.drift_start and cur2[1] < batch2[0]  # four labelled weeks, a batch
    assert len(storage.ls("prod_inputs")) == 1
    with pytest.raises(FraudopsError, match="is not empty"):
        demo.create(ws, customers=150, trees=10, force=False)


def test_trigger_that_could_not_start_is_not_remembered(
    ws: str, fakes: Fakes, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_decision(ws, "YES")

    def unreachable(settings: Any) -> None:
        raise FraudopsError("MLflow tracking server http://mlflow:5000 cannot be reached")

    with monkeypatch.context() as m:
        m.setattr(executor, "History", unreachable)
        result = cli("trigger", "-w", ws)
    assert result.exit_code == 1 and "cannot be reached" in result.output
    assert fakes.calls == [] and not Storage(ws).exists(LOCK_FILE)
    result = cli("trigger", "-w", ws)  # the decision was not acted on: the next trigger does
    assert result.exit_code == 0, result.output
    assert fakes.order == NAMES
