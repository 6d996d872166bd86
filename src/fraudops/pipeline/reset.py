"""``fraudops reset``: empty a workspace, keeping its fraudops.yaml (the seed's "clean up MLflow")."""

from __future__ import annotations

from fraudops.config import Settings
from fraudops.workspace.layout import RESET_PATHS, STATE_DIR
from fraudops.workspace.lock import WorkspaceLock
from fraudops.workspace.storage import Storage


def reset_targets(storage: Storage) -> list[str]:
    """What `fraudops reset` deletes: data, outputs, the workspace's MLflow store and artifacts."""
    return [rel for rel in RESET_PATHS if storage.exists(rel)]


def reset(settings: Settings, storage: Storage) -> list[str]:
    """Empty a workspace (keeping fraudops.yaml) — the seed's manual "clean up MLflow" procedure.

    Refused while an execution holds the workspace. Returns what was deleted. A tracking store outside the
    workspace (registry.tracking_uri) is left alone.
    """
    targets = reset_targets(storage)
    with WorkspaceLock(storage, "reset", timeout=0):
        for rel in targets:
            storage.delete(rel, recursive=True)
    storage.delete(STATE_DIR, recursive=True)
    storage.init_layout()
    return targets
