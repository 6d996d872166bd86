"""A crash at any point leaves a state the next run completes: kill -9 at every registry call of a promotion
and of a rollback; leftovers of killed writers; a workspace copied elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from fraudops.config import SimulateConfig
from fraudops.context import StepContext, StepResult
from fraudops.data import simulate
from fraudops.data.schema import to_file_columns
from fraudops.modeling.train import train_step
from fraudops.promotion import reference
from fraudops.promotion.champion import select_champion_step
from fraudops.promotion.journal import CHANGE_TAG
from fraudops.promotion.register import register_step
from fraudops.tracking import registry
from fraudops.tracking.client import client, experiment_id, tracking_uri
from fraudops.workspace import init_workspace, load_settings
from fraudops.workspace.layout import PREDICTIONS, RAW
from fraudops.workspace.storage import TEMP_MARK, Storage
from helpers import small_xgboost

MUTATING = (
    "create_run",
    "log_batch",
    "log_text",
    "log_dict",
    "log_artifact",
    "log_artifacts",
    "set_tag",
    "set_terminated",
    "set_registered_model_tag",
    "delete_registered_model_tag",
    "set_model_version_tag",
    "set_registered_model_alias",
    "delete_registered_model_alias",
)
"""Every MlflowClient call that changes the store (MLflow's fluent API goes through these too)."""

RUNNER = textwrap.dedent(
    """
    # One warm interpreter (MLflow alone takes seconds to import) forks a real process for each run: the
    # child runs the fraudops command; with "kill_at" it SIGKILLs itself just before that store-changing call
    # inside the target step. Runs of one job are sequential, two jobs run at a time.
    import dataclasses, json, os, signal, sys
    from mlflow.tracking.client import MlflowClient
    import fraudops.cli, fraudops.pipeline.graph, fraudops.promotion.champion
    import mlflow.store.tracking.sqlalchemy_store, mlflow.store.model_registry.sqlalchemy_store, xgboost
    from fraudops.workspace.storage import Storage
    from fraudops.promotion import champion
    from fraudops.pipeline import graph

    def child(run):
        state = {"active": False, "n": 0}

        def counting(name, orig):
            def call(*a, **k):
                if state["active"]:
                    state["n"] += 1
                    with open(run["log"], "a") as f:
                        f.write(f"{state['n']} {name}\\n")
                    if state["n"] == run["kill_at"]:
                        os.kill(os.getpid(), signal.SIGKILL)
                return orig(*a, **k)
            return call

        for name in MUTATING:
            if hasattr(MlflowClient, name):
                setattr(MlflowClient, name, counting(name, getattr(MlflowClient, name)))
        Storage.write_bytes = counting("storage.write_bytes", Storage.write_bytes)

        def active(fn):
            def step(ctx):
                state["active"] = True
                try:
                    return fn(ctx)
                finally:
                    state["active"] = False
            return step

        champion.rollback = active(champion.rollback)
        graph.PIPELINE = graph.Pipeline(tuple(
            dataclasses.replace(s, run=active(s.run)) if s.name == run["target"] else s
            for s in graph.PIPELINE.steps
        ))
        out = os.open(run["log"] + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(out, 2)
        sys.argv = ["fraudops", *run["args"]]
        try:
            fraudops.cli.main()
        except SystemExit as e:
            os._exit(e.code if isinstance(e.code, int) else 1)
        os._exit(0)

    def start(run):
        pid = os.fork()
        if pid == 0:
            child(run)
        return pid

    jobs = json.load(open(sys.argv[1]))
    results = {}
    running = {}
    queue = [(name, list(runs)) for name, runs in jobs.items()]
    while queue or running:
        while queue and len(running) < 2:
            name, runs = queue.pop(0)
            running[start(runs[0])] = (name, runs)
        pid, status = os.wait()
        name, runs = running.pop(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        results.setdefault(name, []).append(code)
        if runs[1:]:
            running[start(runs[1])] = (name, runs[1:])
    json.dump(results, open(sys.argv[2], "w"))
    """
).replace("MUTATING", repr(MUTATING))

SELECT = ["run", "--input", '{"run": "select_champion", "only": true}']
ROLLBACK = ["champion", "rollback", "--yes"]
RESUME = ["run", "--resume", "last"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDOPS_")}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def _run_all(tmp: Path, jobs: dict[str, list[dict[str, Any]]]) -> dict[str, list[int]]:
    """Run each job's commands (forked from one warm interpreter); their exit codes (-9: killed)."""
    script, spec, out = tmp / "runner.py", tmp / "jobs.json", tmp / "results.json"
    script.write_text(RUNNER)
    spec.write_text(json.dumps(jobs))
    proc = subprocess.run(
        [sys.executable, str(script), str(spec), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _run(ws: Path, args: list[str], target: str = "", kill_at: int = 0) -> dict[str, Any]:
    return {"args": [*args, "-w", str(ws)], "target": target, "kill_at": kill_at, "log": f"{ws}.calls"}


def _calls(ws: Path) -> list[str]:
    log = Path(f"{ws}.calls")
    return log.read_text().splitlines() if log.exists() else []


def _state(ws: Path) -> dict[str, Any]:
    """Aliases, decision tags, pending change, finished decision runs per change, the champion's reference."""
    settings = load_settings(str(ws))
    c = client(settings)  # tracking and registry both on this workspace's store (threads share globals)
    aliases = registry.aliases(settings)
    tags = {
        v: c.get_model_version(settings.registry.model_name, str(v)).tags.get(registry.DECISION_TAG)
        for v in (1, 2)
    }
    runs = c.search_runs([experiment_id(settings)], filter_string=f"tags.`{CHANGE_TAG}` != ''")
    finished: dict[str, int] = {}
    for r in runs:
        if r.info.status == "FINISHED":
            key = r.data.tags["decision"]
            finished[key] = finished.get(key, 0) + 1
    storage = Storage(str(ws))
    champion = aliases.get(registry.CHAMPION)
    ref = reference.read(storage, champion)[0].version if champion else None
    return {
        "aliases": aliases,
        "tags": tags,
        "pending": registry.pending(settings),
        "decisions": finished,
        "reference": ref,
    }


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``challenger``: champion 1 and challenger 2 (a tie that wins: min_improvement 0);
    ``promoted``: the same after the promotion (champion 2, previous 1)."""
    root = tmp_path_factory.mktemp("recovery")
    ws = root / "challenger"
    ws.mkdir()
    (ws / "fraudops.yaml").write_text(
        "registry: {min_improvement: 0.0}\n"
        "train: {candidates: [xgboost], min_frauds: 5, n_jobs: 1, train_days: 14, "
        "xgboost: {n_estimators: 20, max_depth: 3, early_stopping_rounds: 5}}\n"
    )
    settings, _ = init_workspace(str(ws))
    storage = Storage(settings.workspace)
    df = simulate.simulate(SimulateConfig(n_customers=300, n_terminals=600, n_days=50))
    for day, frame in simulate.iter_days(df):
        storage.write_frame(f"{RAW}/{simulate.day_file_name(day)}", to_file_columns(frame, settings.data))
    small_xgboost(settings)
    for _ in range(2):
        run = train_step(StepContext(settings, storage))
        register_step(StepContext(settings, storage, handed={"train": StepResult(run_id=run.run_id)}))
        if registry.aliases(settings).get(registry.CHAMPION) is None:
            select_champion_step(StepContext(settings, storage))
    assert registry.aliases(settings) == {registry.CHAMPION: 1, registry.CHALLENGER: 2}
    promoted = root / "promoted"
    shutil.copytree(ws, promoted)
    p_settings = load_settings(str(promoted))
    assert select_champion_step(StepContext(p_settings, Storage(p_settings.workspace))).decision == "promoted"
    return {"challenger": ws, "promoted": promoted}


BEFORE_PROMOTION = {"aliases": {"champion": 1, "challenger": 2}, "tags": {1: "promoted", 2: None}}
AFTER_PROMOTION = {
    "aliases": {"champion": 2, "previous_champion": 1},
    "tags": {1: "promoted", 2: "promoted"},
    "pending": None,
    "decisions": {"promoted": 2},
    "reference": 2,
}
AFTER_ROLLBACK = {
    "aliases": {"champion": 1, "previous_champion": 2},
    "tags": {1: "rolled_back_to", 2: "promoted"},
    "pending": None,
    "decisions": {"promoted": 2, "rollback": 1},
    "reference": 1,
}


def _kill_everywhere(
    template: Path, tmp: Path, target: str, args: list[str], after: dict[str, list[str]]
) -> dict:
    """Copies of ``template`` killed at each store-changing call of ``target`` in turn; each killed copy is
    copied again for every follow-up command in ``after`` ({name: args}), which then runs on its copy.
    Returns {k: {name: workspace}} and the calls of an uninterrupted run."""
    dry = tmp / "dry-run"
    shutil.copytree(template, dry)
    assert _run_all(tmp, {"dry": [_run(dry, args, target, kill_at=10**6)]}) == {"dry": [0]}
    calls = _calls(dry)
    killed = {}
    for k in range(1, len(calls) + 1):
        shutil.copytree(template, tmp / f"killed-{k}")
        killed[f"k{k}"] = [_run(tmp / f"killed-{k}", args, target, kill_at=k)]
    codes = _run_all(tmp, killed)
    copies: dict[int, dict[str, Path]] = {}
    jobs = {}
    for k in range(1, len(calls) + 1):
        ws = tmp / f"killed-{k}"
        assert codes[f"k{k}"] == [-signal.SIGKILL] and len(_calls(ws)) == k, (k, codes[f"k{k}"], _calls(ws))
        copies[k] = {}
        for name, follow in after.items():
            copy = tmp / f"killed-{k}-{name}"
            shutil.copytree(ws, copy)
            copies[k][name] = copy
            jobs[f"k{k}-{name}"] = [_run(copy, follow)]
    codes = _run_all(tmp, jobs)
    assert all(c == [0] for c in codes.values()), {j: c for j, c in codes.items() if c != [0]}
    return {"workspaces": copies, "calls": calls}


@pytest.mark.slow
def test_promotion_killed_at_every_registry_call(templates, tmp_path):
    """After a kill at any store-changing call of select_champion, ``--resume`` ends in the promotion, once;
    a fresh run instead finds the registry either untouched (killed before the change was recorded) or
    promoted, never in between. (`monitor` is the fresh run: any registry step completes a pending change.)"""
    out = _kill_everywhere(
        templates["challenger"], tmp_path, "select_champion", SELECT, {"resume": RESUME, "fresh": ["monitor"]}
    )
    for k, ws in out["workspaces"].items():
        assert _state(ws["resume"]) == AFTER_PROMOTION, k
        state = _state(ws["fresh"])
        if state["aliases"] == BEFORE_PROMOTION["aliases"]:
            assert state["tags"] == BEFORE_PROMOTION["tags"] and state["pending"] is None, (k, state)
            assert state["reference"] == 1 and state["decisions"] == {"promoted": 1}, (k, state)
        else:
            assert state == AFTER_PROMOTION, (k, state)
    names = [c.split()[1] for c in out["calls"]]
    assert names.index("set_registered_model_tag") < names.index("set_registered_model_alias")  # intent first
    assert len(names) >= 12, names


@pytest.mark.slow
def test_rollback_killed_at_every_registry_call_is_completed_not_repeated(templates, tmp_path):
    out = _kill_everywhere(templates["promoted"], tmp_path, "rollback", ROLLBACK, {"again": ROLLBACK})
    for k, ws in out["workspaces"].items():
        assert _state(ws["again"]) == AFTER_ROLLBACK, k  # rolled back once: not back and forth


# ------------------------------------------------------------------------------------ leftovers, copies


def test_a_crashed_writers_temporary_files_are_removed_by_the_owning_step(tmp_path):
    storage = Storage(str(tmp_path))
    storage.write_text(f"{PREDICTIONS}/kept.out.csv", "a\n1\n")
    leftover = f"{PREDICTIONS}/.day.out.parquet{TEMP_MARK}0123"
    storage.write_text(leftover, "half")
    nested = f"monitoring_outputs/metrics/.x.json{TEMP_MARK}9"
    storage.write_text(nested, "{")
    assert storage.ls(PREDICTIONS) == [f"{PREDICTIONS}/kept.out.csv"]  # never listed
    assert sorted(Path(p).name for p in storage.remove_leftovers(PREDICTIONS)) == [Path(leftover).name]
    assert not storage.exists(leftover) and storage.exists(f"{PREDICTIONS}/kept.out.csv")
    assert storage.exists(nested)  # another step's folder is left to that step
    assert len(storage.remove_leftovers("monitoring_outputs")) == 1


def test_a_copied_workspace_keeps_working_and_never_writes_into_the_original(templates, tmp_path):
    original = templates["challenger"]
    before = sorted(p.relative_to(original).as_posix() for p in original.rglob("*") if p.is_file())
    before_db = (original / "mlflow.db").read_bytes()
    copy = tmp_path / "moved" / "ws"
    shutil.copytree(original, copy)
    assert _run_all(tmp_path, {"select": [_run(copy, SELECT)]}) == {"select": [0]}
    assert registry.aliases(load_settings(str(copy)))[registry.CHAMPION] == 2
    after = sorted(p.relative_to(original).as_posix() for p in original.rglob("*") if p.is_file())
    assert after == before and (original / "mlflow.db").read_bytes() == before_db
    settings = load_settings(str(copy))
    client = MlflowClient(tracking_uri(settings))
    exp = client.get_experiment_by_name(settings.registry.experiment)
    assert exp.artifact_location == (copy / "prod_outputs" / "mlflow").resolve().as_uri()
    assert all(str(copy.resolve()) in r.info.artifact_uri for r in client.search_runs([exp.experiment_id]))


def test_serving_a_workspace_without_a_model_creates_no_store(tmp_path):
    from fraudops.serving.metrics import Metrics
    from fraudops.serving.reload import ModelHolder

    settings, _ = init_workspace(str(tmp_path / "ws"))
    holder = ModelHolder(settings, "champion", Metrics())
    assert holder.check() is False and "no version" in json.dumps(holder.last_error)
    assert not (tmp_path / "ws" / "mlflow.db").exists()
