"""MLflow as fraudops uses it: which store, one client per process, runs nested under an execution.

Lineage, never "the newest file": runs are tagged with the step and execution that made them. Every
client call that can meet a transient error goes through :func:`call` (retried per call, never per step).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from fraudops import __version__, process, retries
from fraudops.config import Settings
from fraudops.errors import FraudopsError
from fraudops.workspace.layout import MLFLOW_ARTIFACTS, MLFLOW_DB
from fraudops.workspace.storage import Storage

T = TypeVar("T")

STEP_TAG, EXECUTION_TAG = "fraudops.step", "fraudops.execution_id"


def tracking_uri(settings: Settings) -> str:
    """The configured URI, or a SQLite file in a local workspace (the seed's choice)."""
    if settings.registry.tracking_uri:
        return settings.registry.tracking_uri
    storage = Storage.of(settings)
    if not storage.is_local:
        raise FraudopsError(
            f"workspace {storage.uri()} is remote: set registry.tracking_uri (e.g. http://mlflow:5000 or "
            "postgresql://…), SQLite cannot live in an object store"
        )
    db = Path(storage.path(MLFLOW_DB)).resolve()
    if db.exists():
        _relocate(str(db), str(db.parent), settings.registry.experiment)
    return f"sqlite:///{db}"


_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


@functools.cache
def _relocate(db: str, root: str, experiment: str) -> None:
    """Point a local store's artifact paths at the workspace where it now is.

    MLflow records absolute artifact paths; a workspace copied or moved elsewhere would otherwise read
    from, and write into, the old folder. The old root is read off the experiment's artifact location
    (``<root>/prod_outputs/mlflow``) and replaced in every artifact column, in one transaction.
    """
    import sqlite3

    suffix = "/" + MLFLOW_ARTIFACTS
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return
        row = con.execute(
            "SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)
        ).fetchone()
        location = str(row[0]) if row and row[0] else ""
        old = location.removeprefix("file://").removesuffix(suffix)
        if not location.endswith(suffix) or old == root:
            return
        for table, column in _ARTIFACT_COLUMNS:
            if table not in tables:
                continue
            for before, after in ((f"file://{old}/", f"file://{root}/"), (f"{old}/", f"{root}/")):
                con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE substr({column}, 1, ?) = ?",
                    (after, len(before) + 1, len(before), before),
                )


def artifact_root(settings: Settings) -> str:
    storage = Storage.of(settings)
    return (
        storage.uri(MLFLOW_ARTIFACTS)
        if not storage.is_local
        else Path(storage.path(MLFLOW_ARTIFACTS)).resolve().as_uri()
    )


@functools.cache
def _check_reachable(uri: str) -> None:
    """Fail fast, once per process and server, on a tracking server that does not answer (a failure is not
    cached; MLflow's own retries cover a server that goes away later)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
    except requests.RequestException as e:
        raise FraudopsError(f"MLflow tracking server {uri} cannot be reached: {e}") from e


def client(settings: Settings) -> Any:
    """An MlflowClient on the workspace's tracking store (checked to be reachable)."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(settings)
    _check_reachable(uri)
    process.use_s3_endpoint(Storage.of(settings).endpoint_url)
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        return MlflowClient(uri, uri)
    except MlflowException as e:  # a store MLflow refuses (e.g. a plain folder: the retired file store)
        raise FraudopsError(f"registry.tracking_uri {uri!r}: {e.message}") from e


def experiment_id(settings: Settings) -> str:
    c = client(settings)
    name = settings.registry.experiment
    exp = call(settings, "experiment", lambda: c.get_experiment_by_name(name))
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(c.create_experiment(name, artifact_location=artifact_root(settings)))
    except Exception:  # created meanwhile (another process, or an attempt whose answer was lost)
        exp = call(settings, "experiment", lambda: c.get_experiment_by_name(name))
        if exp is None:
            raise
        return str(exp.experiment_id)


@functools.cache
def git_commit() -> str | None:
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def run_tags(step: str, execution_id: str | None) -> dict[str, str]:
    tags = {STEP_TAG: step, "fraudops.version": __version__}
    if execution_id:
        tags[EXECUTION_TAG] = execution_id
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    return tags


@contextlib.contextmanager
def step_run(
    settings: Settings,
    step: str,
    execution_id: str | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[Any]:
    """An MLflow run for one step (nested under the execution's run when there is one); ``resume_run_id``
    reopens a run an interrupted process left (when it still exists) instead of starting one."""
    import mlflow

    if resume_run_id:
        c = client(settings)
        if call(settings, "run", lambda: _find_run(c, resume_run_id)):
            with mlflow.start_run(run_id=resume_run_id) as run:
                yield run
            return
    exp = experiment_id(settings)
    tags = {**run_tags(step, execution_id), **(tags or {})}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(experiment_id=exp, run_name=run_name or step, tags=tags) as run:
        yield run


def _find_run(c: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        c.get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def call(settings: Settings, what: str, fn: Callable[[], T]) -> T:
    """One tracking call, retried on transient errors by the running step's policy (default: the pipeline
    settings')."""
    policy = retries.current(retries.RetryPolicy(settings.pipeline.retries, settings.pipeline.retry_backoff))
    return retries.call(fn, policy, f"tracking: {what}")


def flat_metrics(prefix: str, d: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``d`` as MLflow metrics named ``prefix + key``."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in d.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON values (dates, numpy numbers and the like as text)."""
    return json.loads(json.dumps(obj, default=str))
