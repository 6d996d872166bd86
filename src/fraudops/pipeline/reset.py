"""``fraudops reset``: empty a workspace, keeping its fraudops.yaml (the seed's "clean up MLflow").

A local workspace's MLflow store is a file in it and goes with the rest. A tracking store outside the
workspace (``registry.tracking_uri``: a server, PostgreSQL) is shared: only this workspace's part of it is
deleted — the runs of its experiment and the model versions registered from them — and only when the
experiment is this workspace's (its artifact location is in this workspace); other experiments are never
touched.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from fraudops.config import Settings
from fraudops.workspace.layout import RESET_PATHS, STATE_DIR
from fraudops.workspace.lock import WorkspaceLock
from fraudops.workspace.storage import Storage


@dataclasses.dataclass
class RemoteTargets:
    """This workspace's part of a tracking store outside it."""

    store: str
    experiment: str
    run_ids: list[str] = dataclasses.field(default_factory=list)
    versions: list[str] = dataclasses.field(default_factory=list)
    whole_model: bool = False
    """No version of the registered model comes from another experiment: the model itself goes."""
    refused: str | None = None
    """Why the experiment is left alone (it belongs to another workspace)."""

    def describe(self) -> str:
        if self.refused:
            return f"nothing in the tracking store {self.store}: {self.refused}"
        what = f"{len(self.run_ids)} run(s) of experiment {self.experiment!r}"
        if self.versions:
            what += f", model version(s) {', '.join(self.versions)}"
            what += " (the registered model with them)" if self.whole_model else ""
        return f"in the tracking store {self.store}: {what}"

    @property
    def empty(self) -> bool:
        return not self.run_ids and not self.versions


def reset_targets(storage: Storage) -> list[str]:
    """What `fraudops reset` deletes in the workspace: data, outputs, the local MLflow store and artifacts."""
    return [rel for rel in RESET_PATHS if storage.exists(rel)]


def _all_runs(c: Any, settings: Settings, experiment_id: str) -> list[str]:
    from fraudops.tracking.client import call

    ids: list[str] = []
    token = None
    while True:
        page = call(
            settings,
            "search runs",
            functools.partial(c.search_runs, [experiment_id], max_results=1000, page_token=token),
        )
        ids += [r.info.run_id for r in page]
        token = page.token
        if not token:
            return ids


def remote_targets(settings: Settings) -> RemoteTargets | None:
    """This workspace's runs and model versions in a tracking store outside it; None for a local store."""
    if not settings.registry.tracking_uri:
        return None
    from fraudops.tracking.client import artifact_root, call, client

    c = client(settings)
    name = settings.registry.experiment
    out = RemoteTargets(settings.registry.tracking_uri, name)
    exp = call(settings, "experiment", lambda: c.get_experiment_by_name(name))
    if exp is None:
        return out
    mine = artifact_root(settings).rstrip("/")
    if str(exp.artifact_location or "").rstrip("/") != mine:
        out.refused = (
            f"experiment {name!r} keeps its artifacts in {exp.artifact_location}, not in this workspace "
            f"({mine}): it belongs to another workspace"
        )
        return out
    out.run_ids = _all_runs(c, settings, str(exp.experiment_id))
    runs = set(out.run_ids)
    model = settings.registry.model_name
    versions = call(settings, "versions", lambda: c.search_model_versions(f"name = '{model}'"))
    out.versions = sorted((str(v.version) for v in versions if v.run_id in runs), key=int)
    out.whole_model = bool(versions) and len(out.versions) == len(versions)
    return out


def _delete_remote(settings: Settings, targets: RemoteTargets) -> None:
    from fraudops.tracking.client import call, client

    if targets.refused:
        return
    c = client(settings)
    model = settings.registry.model_name
    if targets.whole_model:
        call(settings, "delete model", lambda: c.delete_registered_model(model))
    else:
        for v in targets.versions:
            call(settings, f"delete version {v}", functools.partial(c.delete_model_version, model, v))
    for run_id in targets.run_ids:
        call(settings, f"delete run {run_id}", functools.partial(c.delete_run, run_id))


def reset(settings: Settings, storage: Storage, remote: RemoteTargets | None = None) -> list[str]:
    """Empty a workspace (keeping fraudops.yaml) — the seed's manual "clean up MLflow" procedure.

    Refused while an execution holds the workspace. Returns what was deleted. ``remote`` (from
    :func:`remote_targets`, shown to the user first) is this workspace's part of a tracking store outside it.
    """
    targets = reset_targets(storage)
    with WorkspaceLock(storage, "reset", timeout=0):
        if remote is not None:
            _delete_remote(settings, remote)
        for rel in targets:
            storage.delete(rel, recursive=True)
    storage.delete(STATE_DIR, recursive=True)
    storage.init_layout()
    if remote is not None and not remote.refused and not remote.empty:
        targets.append(remote.describe())
    return targets
