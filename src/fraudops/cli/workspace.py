"""Workspace commands: version, init, config, reset, the MLflow UI."""

from __future__ import annotations

import contextlib
import enum
import subprocess
import sys
from typing import Annotated

import typer
import yaml

from fraudops import __version__
from fraudops.cli.base import WorkspaceOpt, handle_errors
from fraudops.cli.render import console, err_console
from fraudops.workspace import Storage, init_workspace, load_settings, open_workspace


class DataKind(enum.StrEnum):
    transactions = "transactions"
    features = "features"


@handle_errors
def version() -> None:
    """Print the fraudops version."""
    console.print(f"fraudops {__version__}")


@handle_errors
def init(
    path: Annotated[str, typer.Argument(help="Folder or fsspec URL (s3://bucket/prefix).")] = ".",
    kind: Annotated[
        DataKind | None,
        typer.Option(
            help="Data kind of a new workspace: raw card transactions (the default) or an already-engineered "
            "features table such as Kaggle's creditcard.csv (writes the Kaggle column mapping).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create a workspace: a documented fraudops.yaml and the seed bucket's folder layout."""
    settings, created = init_workspace(path, kind.value if kind else None)
    storage = Storage.of(settings)
    verb = "created" if created else "kept existing"
    console.print(f"workspace [bold]{storage.uri()}[/]: {verb} fraudops.yaml, folders ready")
    if settings.data.kind == "features":
        console.print(f"next: [bold]fraudops -w {path} data import FILE[/] (e.g. creditcard.csv)")
    else:
        console.print(
            f"next: [bold]fraudops -w {path} data simulate[/] or [bold]fraudops -w {path} data import FILE[/]"
        )


@handle_errors
def show_config(workspace: WorkspaceOpt = ".") -> None:
    """Print the effective configuration (file + environment) as YAML."""
    settings = load_settings(workspace)
    dumped = settings.model_dump(mode="json")
    console.print(yaml.safe_dump(dumped, sort_keys=False), highlight=False)


@handle_errors
def reset(
    workspace: WorkspaceOpt = ".",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Empty a workspace: data, outputs, MLflow runs, models and artifacts (fraudops.yaml is kept)."""
    from fraudops.pipeline.reset import remote_targets, reset_targets
    from fraudops.pipeline.reset import reset as reset_workspace

    settings, storage = open_workspace(workspace)
    targets = reset_targets(storage)
    remote = remote_targets(settings)
    if remote is not None and remote.refused:
        err_console.print(f"note: {remote.describe()}", highlight=False)
    if not targets and (remote is None or remote.empty):
        console.print(f"{storage.uri()} holds nothing to delete")
        return
    if targets:
        console.print(f"in {storage.uri()} this deletes: {', '.join(targets)}", highlight=False)
    if remote is not None and not remote.refused and not remote.empty:
        console.print(f"and {remote.describe()}", highlight=False)
    if not yes:
        typer.confirm("Delete them?", abort=True)
    deleted = reset_workspace(settings, storage, remote)
    console.print(f"deleted {', '.join(deleted)}; fraudops.yaml kept, empty folders ready", highlight=False)


@handle_errors
def ui(
    workspace: WorkspaceOpt = ".",
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the workspace's tracking store (executions, runs, models)."""
    from fraudops.tracking.client import experiment_id, tracking_uri

    settings, _ = open_workspace(workspace)
    uri = tracking_uri(settings)
    if uri.startswith(("http://", "https://")):
        console.print(f"the tracking server is {uri}: open it in a browser")
        return
    experiment_id(settings)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    cmd += ["--host", host, "--port", str(port), "--workers", "1"]
    console.print(
        f"MLflow UI on [bold]http://{host}:{port}[/] (Ctrl-C stops it); tracking store {uri}", highlight=False
    )
    with contextlib.suppress(KeyboardInterrupt):
        raise typer.Exit(subprocess.call(cmd))
