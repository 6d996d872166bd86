"""The workspace: a folder or object-store prefix laid out like the seed's bucket, with its fraudops.yaml."""

from __future__ import annotations

from fraudops.config import Settings, default_yaml, parse_settings
from fraudops.errors import ConfigError
from fraudops.workspace.layout import CONFIG_FILE
from fraudops.workspace.storage import Storage

__all__ = ["Storage", "init_workspace", "load_settings", "open_workspace"]


def load_settings(workspace: str) -> Settings:
    """The settings of an existing workspace (its fraudops.yaml plus the environment)."""
    storage = Storage(workspace)
    if not storage.exists(CONFIG_FILE):
        raise ConfigError(
            f"{storage.uri()} is not a fraudops workspace (no {CONFIG_FILE}): run `fraudops init {workspace}`"
        )
    where = storage.uri(CONFIG_FILE)
    try:
        text = storage.read_text(CONFIG_FILE)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not a text file (UTF-8): {e.reason} at byte {e.start}") from e
    except OSError as e:  # a directory, unreadable, …
        raise ConfigError(f"{where} cannot be read: {e.strerror or e}") from e
    return parse_settings(text, workspace=storage.url, source=where)


def open_workspace(workspace: str) -> tuple[Settings, Storage]:
    """Settings and storage of an existing workspace."""
    settings = load_settings(workspace)
    return settings, Storage(settings.workspace)


def init_workspace(workspace: str) -> tuple[Settings, bool]:
    """Create the seed bucket's layout and a documented fraudops.yaml (kept if present)."""
    storage = Storage(workspace)
    created = not storage.exists(CONFIG_FILE)
    if created:
        storage.write_text(CONFIG_FILE, default_yaml())
    settings = load_settings(workspace)
    storage.init_layout()
    return settings, created
