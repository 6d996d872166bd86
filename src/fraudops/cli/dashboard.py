"""``fraudops dashboard``: the web dashboard on localhost."""

from __future__ import annotations

from typing import Annotated

import typer

from fraudops.cli.base import WorkspaceOpt, handle_errors
from fraudops.cli.render import console
from fraudops.workspace import open_workspace


@handle_errors
def dashboard(
    workspace: WorkspaceOpt = ".",
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on (default: dashboard.host).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: dashboard.port, 8090).")] = None,
) -> None:
    """Executions, champion history, monitoring over time and the alert queue in a browser (Ctrl-C stops)."""
    from fraudops.dashboard.app import run

    settings, storage = open_workspace(workspace)
    shown_host, shown_port = host or settings.dashboard.host, port or settings.dashboard.port
    key = " (API key: serve.api_key)" if settings.serve.api_key else ""
    console.print(f"dashboard on [bold]http://{shown_host}:{shown_port}[/]{key}", highlight=False)
    run(settings, storage, host=host, port=port)
