"""``fraudops serve``: the real-time endpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from fraudops.cli.base import WorkspaceOpt, handle_errors
from fraudops.workspace import open_workspace


@handle_errors
def serve(
    workspace: WorkspaceOpt = ".",
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port, 8080).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: serve.workers).")] = None,
    alias: Annotated[str, typer.Option(help="Registry alias to serve and follow.")] = "champion",
) -> None:
    """Serve the champion over HTTP (SageMaker and MLflow scoring protocols); follows the alias live."""
    from fraudops.serving.app import run

    settings, _ = open_workspace(workspace)
    run(settings, host=host, port=port, workers=workers, alias=alias)
