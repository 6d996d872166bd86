"""``fraudops shadow report``: served vs shadow model on the endpoint's captured traffic."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from fraudops.cli.base import WorkspaceOpt, handle_errors
from fraudops.cli.render import console, table
from fraudops.workspace import open_workspace

shadow_app = typer.Typer(
    help="Compare the served and the shadow model on live traffic.", no_args_is_help=True
)


@handle_errors
def report(
    workspace: WorkspaceOpt = ".",
    version: Annotated[
        int | None, typer.Option(help="Only rows the shadow scored with this version (default: all).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Champion vs challenger on captured requests: score correlation, alert overlap, AP once labelled."""
    from fraudops.promotion.shadow import live_summary, shadow_comparison
    from fraudops.workspace.layout import CAPTURE

    settings, storage = open_workspace(workspace)
    c = shadow_comparison(storage, settings, version)
    if as_json:
        typer.echo(json.dumps(c.model_dump(), indent=2))
        return
    if c.rows == 0:
        console.print(
            f"no shadow-scored rows in {storage.uri(CAPTURE)}: serve with serve.capture.enabled and "
            "serve.shadow (e.g. challenger)"
        )
        raise typer.Exit(1)
    console.print(table("shadow comparison", c.model_dump()))
    console.print(live_summary(c))


shadow_app.command("report")(report)
