"""What every command shares: the workspace option, user errors as one line, running steps as executions."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from fraudops.cli.render import ExecutionPrinter, err_console
from fraudops.config import Settings
from fraudops.context import StepResult
from fraudops.errors import FraudopsError
from fraudops.workspace.storage import Storage

F = TypeVar("F", bound=Callable[..., Any])
WorkspaceOpt = Annotated[
    str,
    typer.Option("--workspace", "-w", envvar="FRAUDOPS_WORKSPACE", help="Workspace folder or fsspec URL."),
]


def handle_errors(fn: F) -> F:
    """User errors become one red message and exit code 1; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FraudopsError as e:
            err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
            raise typer.Exit(1) from e

    return wrapper  # type: ignore[return-value]


def finish(record: dict[str, Any], workspace: str) -> None:
    """Exit code of an execution: 0 SUCCEEDED, 1 FAILED (with how to resume), 130 ABORTED."""
    short = record["id"][:8]
    if record["status"] == "SUCCEEDED":
        return
    failed = next((s["name"] for s in record["steps"] if s["status"] in ("FAILED", "ABORTED")), None)
    err_console.print(
        f"[bold red]error:[/] execution {short} {record['status']}: {record.get('error')}", highlight=False
    )
    if failed:
        err_console.print(
            f"details: fraudops executions show {short} -w {workspace} --logs; resume: "
            f"fraudops run --resume {short} -w {workspace} (or --from {failed})",
            highlight=False,
        )
    raise typer.Exit(130 if record["status"] == "ABORTED" else 1)


def execute(
    settings: Settings,
    storage: Storage,
    inp: dict[str, Any],
    workspace: str,
    previous: dict[str, StepResult] | None = None,
) -> dict[str, Any]:
    """An execution, printed as it runs; exits non-zero unless it SUCCEEDED."""
    from fraudops.pipeline import executor

    record = executor.execute(settings, storage, inp, previous=previous, on_event=ExecutionPrinter())
    finish(record, workspace)
    return record


def run_one(
    settings: Settings,
    storage: Storage,
    step: str,
    workspace: str,
    previous: dict[str, StepResult] | None = None,
) -> dict[str, Any]:
    """A stage command (train, register, ...) as a one-step pipeline execution; returns its stored outputs."""
    inp = {"run": step, "only": True, "triggered_by": "cli"}
    record = execute(settings, storage, inp, workspace, previous)
    return record["steps"][0]["outputs"] or {}
