"""The workspace: a folder or object-store prefix laid out like the seed's bucket, with its fraudops.yaml."""

from __future__ import annotations

from typing import Literal

import yaml

from fraudops.config import DataConfig, Settings, default_yaml, parse_settings
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
    return settings, Storage.of(settings)


Kind = Literal["transactions", "features"]


def config_text(kind: Kind = "transactions") -> str:
    """The documented fraudops.yaml of a new workspace; for the features kind its data section names the
    Kaggle/ULB columns (Time, Amount, Class), so the user sees the mapping the kind uses."""
    text = default_yaml()
    if kind == "transactions":
        return text
    data = DataConfig(kind=kind)
    values = {"kind": data.kind, **data.columns.model_dump()}
    lines = text.splitlines()
    start = lines.index("data:") + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith(" ")), len(lines))
    section = []
    for line in lines[start:end]:
        key, _, rest = line.strip().partition(":")
        if key in values:
            note = rest.partition("  # ")[2]
            dumped = yaml.safe_dump({key: values[key]}, default_flow_style=True, width=1000).strip()[1:-1]
            line = line[: len(line) - len(line.lstrip())] + dumped + (f"  # {note}" if note else "")
        section.append(line)
    return "\n".join([*lines[:start], *section, *lines[end:]]) + "\n"


def init_workspace(workspace: str, kind: Kind | None = None) -> tuple[Settings, bool]:
    """Create the seed bucket's layout and a documented fraudops.yaml for the data kind (transactions
    unless given); an existing fraudops.yaml is kept, and must then be of the kind asked for."""
    storage = Storage(workspace)
    created = not storage.exists(CONFIG_FILE)
    if created:
        storage.write_text(CONFIG_FILE, config_text(kind or "transactions"))
    settings = load_settings(workspace)
    if kind is not None and settings.data.kind != kind:
        raise ConfigError(
            f"{storage.uri(CONFIG_FILE)} exists with data.kind {settings.data.kind!r}, not {kind!r}: "
            "edit it, or init another folder"
        )
    storage.init_layout()
    return settings, created
