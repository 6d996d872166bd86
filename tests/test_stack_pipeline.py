"""The production topology for real: a workspace on S3 (moto's S3 API server), MLflow on a tracking server
over PostgreSQL with its artifacts on S3 — all three started by the tests (``conftest.py``).

The demo runs every command's path (init, simulate, run, trigger, executions) as a user would, in its own
process; then a rollback, the endpoint's hot reload, ``reset`` on the remote store, and a pipeline that
meets PostgreSQL restarts.
"""

from __future__ import annotations

import os
import posixpath
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from fraudops.workspace import load_settings
from fraudops.workspace.storage import Storage
from helpers import dask_run_workspace
from servers import MlflowServer, Postgres

FRAUDOPS = [sys.executable, "-m", "fraudops.cli"]


def fraudops(*args: str, timeout: float = 600, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FRAUDOPS, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env={**os.environ, "COLUMNS": "250"},
        check=False,
    )


def client(settings: Any) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(settings.registry.tracking_uri, settings.registry.tracking_uri)


@pytest.mark.slow
def test_demo_on_s3_with_mlflow_on_postgres_then_rollback_reload_and_reset(
    stack_env: str, mlflow_server: MlflowServer
) -> None:
    from fraudops.serving.metrics import Metrics
    from fraudops.serving.reload import ModelHolder
    from fraudops.tracking import registry

    ws = stack_env
    demo = fraudops("demo", ws, "--customers", "300", "--trees", "20")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    for text in ("1. go-live", "2. four weeks later", "3. retraining trigger", "done in"):
        assert text in demo.stdout
    listing = fraudops("executions", "list", "-w", ws)
    assert listing.returncode == 0 and listing.stdout.count("SUCCEEDED") >= 3, listing.stdout

    settings = load_settings(ws)
    storage = Storage.of(settings)
    assert settings.registry.tracking_uri == mlflow_server.uri
    assert storage.ls("prod_outputs/predictions"), "batch scoring wrote nothing to S3"
    assert storage.exists("monitoring_outputs/retraining_decision/retrain_decision.csv")
    aliases = registry.aliases(settings)
    assert aliases["champion"] == 2 and aliases["previous_champion"] == 1, aliases
    c = client(settings)
    champion = c.get_model_version(settings.registry.model_name, "2")
    exp = c.get_experiment_by_name(settings.registry.experiment)
    assert exp.artifact_location == storage.uri("prod_outputs/mlflow")  # artifacts in the workspace on S3
    assert c.get_run(champion.run_id).info.artifact_uri.startswith(storage.uri("prod_outputs/mlflow"))

    # the endpoint's hot reload follows the champion alias through a rollback
    holder = ModelHolder(settings, "champion", Metrics())
    assert holder.check() and holder.scorer is not None and holder.scorer.version == "2"
    back = fraudops("champion", "rollback", "-w", ws, "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    assert registry.aliases(settings)["champion"] == 1
    assert holder.check() and holder.scorer.version == "1" and holder.reloads == 2

    # reset on the remote store: this workspace's runs and versions only, after confirmation
    other = Storage(f"{ws}-other")
    other.write_text("fraudops.yaml", "")
    declined = fraudops("reset", "-w", ws, input="n\n")
    assert declined.returncode == 1 and "run(s) of experiment" in declined.stdout, declined.stdout
    assert len(c.search_runs([exp.experiment_id])) > 0
    # another workspace on the same server and experiment name is refused: not its experiment
    foreign = fraudops("reset", "-w", f"{ws}-other", "--yes")
    assert foreign.returncode == 0 and "belongs to another workspace" in foreign.stderr, foreign.stderr
    assert len(c.search_runs([exp.experiment_id])) > 0
    done = fraudops("reset", "-w", ws, "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert c.search_runs([exp.experiment_id]) == []
    assert c.search_model_versions(f"name = '{settings.registry.model_name}'") == []
    assert registry.aliases(settings) == {}
    assert c.get_experiment_by_name("Default") is not None  # other experiments untouched
    assert storage.exists("fraudops.yaml") and not storage.ls("prod_outputs/predictions")


@pytest.mark.slow
def test_pipeline_survives_postgres_restarts(stack_env: str, postgres: Postgres, monkeypatch: Any) -> None:
    """PostgreSQL behind the tracking server goes down (2 s) and comes back three times while `fraudops run`
    trains, registers and promotes: each tracking call is retried, so the execution succeeds, or fails
    cleanly and `--resume` completes it; never two versions for one train run."""
    from fraudops import demo as demo_module

    ws = stack_env
    settings, storage, t = demo_module.create(ws, customers=300, trees=20, force=False)
    df, _ = demo_module.simulate(settings)
    demo_module.stage_go_live(storage, settings, df, t)

    proc = subprocess.Popen(
        [*FRAUDOPS, "run", "-w", ws],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "FRAUDOPS_PIPELINE__RETRY_BACKOFF": "1", "FRAUDOPS_PIPELINE__RETRIES": "4"},
    )
    outages: list[float] = []

    def outages_while_running() -> None:
        time.sleep(3)
        for _ in range(3):
            if proc.poll() is not None:
                return
            postgres.stop()
            time.sleep(2)
            postgres.start()
            outages.append(time.time())
            time.sleep(3)

    chaos = threading.Thread(target=outages_while_running)
    chaos.start()
    out, _ = proc.communicate(timeout=600)
    chaos.join()
    assert outages, f"the run ended before PostgreSQL could be restarted:\n{out}"
    print(f"{len(outages)} outage(s); exit {proc.returncode}; retried calls: {out.count('transient error')}")
    print("\n".join(line for line in out.splitlines() if "transient" in line or "FAILED" in line)[-3000:])
    if proc.returncode != 0:
        assert "Traceback" not in out, out
        resumed = fraudops("run", "-w", ws, "--resume", "last")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    listing = fraudops("executions", "list", "-w", ws)
    assert "SUCCEEDED" in listing.stdout, listing.stdout

    from fraudops.tracking import registry

    settings = load_settings(ws)
    assert registry.aliases(settings).get("champion") == 1
    c = client(settings)
    versions = c.search_model_versions(f"name = '{settings.registry.model_name}'")
    assert len({v.run_id for v in versions}) == len(versions) == 1


@pytest.mark.slow
def test_fraudops_run_with_the_dask_engine_and_the_workspace_on_s3(stack_env: str) -> None:
    """`fraudops run` starting its own LocalCluster, with the workspace on the S3 API server and MLflow on
    the tracking server: the workers read and write the bucket, training runs on xgboost.dask."""
    scored = dask_run_workspace(
        stack_env, "{engine: dask, workers: 2, worker_memory_limit: 1GB, train_in_memory_rows: 1000}"
    )
    proc = fraudops("run", "-w", stack_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    settings = load_settings(stack_env)
    storage = Storage.of(settings)
    outputs = storage.ls("prod_outputs/predictions")
    assert len(outputs) == 2 and not [rel for rel in outputs if posixpath.basename(rel).startswith(".")]
    assert sum(storage.read_frame(rel).height for rel in outputs) == scored
    c = client(settings)
    runs = c.search_runs(
        [c.get_experiment_by_name(settings.registry.experiment).experiment_id], "params.candidate = 'xgboost'"
    )
    assert [r.data.params["trained_on"] for r in runs] == ["dask"]


def test_init_simulate_import_and_config_on_s3(s3_bucket: str, tmp_path: Any) -> None:
    """The data commands on a workspace in a bucket, through the CLI as a user runs it."""
    from typer.testing import CliRunner

    from fraudops import cli as cli_module

    ws = f"{s3_bucket}/ws"
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(cli_module.build(), list(args), catch_exceptions=False)

    assert invoke("init", ws).exit_code == 0
    sim = invoke("data", "simulate", "-w", ws, "--customers", "50", "--terminals", "100", "--days", "5")
    assert sim.exit_code == 0, sim.output
    storage = Storage(ws)
    days = storage.ls("data/raw", (".parquet",))
    assert len(days) == 5 and days[0] == "data/raw/2018-04-01.parquet"
    first = storage.read_frame(days[0])
    extra = tmp_path / "extra.csv"
    first.with_columns(first["TX_DATETIME"].dt.offset_by("10d")).write_csv(extra)
    imported = invoke("data", "import", str(extra), "-w", ws)
    assert imported.exit_code == 0, imported.output
    assert storage.read_frame("data/raw/extra.csv").height == first.height
    config = invoke("config", "-w", ws)
    assert config.exit_code == 0 and "endpoint_url" in config.output
