"""Model commands: train, tune, register, select-champion, and ``fraudops champion show|rollback``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from fraudops.cli.base import WorkspaceOpt, handle_errors, run_one
from fraudops.cli.render import console, err_console, print_outputs, progress, table
from fraudops.config import updated
from fraudops.context import StepResult
from fraudops.workspace import open_workspace

champion_app = typer.Typer(help="Show or roll back the champion model.", no_args_is_help=True)


@handle_errors
def train(
    workspace: WorkspaceOpt = ".",
    train_start: Annotated[
        dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="First training day (default: latest).")
    ] = None,
    train_days: Annotated[int | None, typer.Option(help="Training window, days.")] = None,
    delay_days: Annotated[
        int | None, typer.Option(help="Label-delay gap between training and test, days.")
    ] = None,
    test_days: Annotated[int | None, typer.Option(help="Test window, days.")] = None,
) -> None:
    """Train the candidates on a time split, pick the best, log everything to MLflow."""
    settings, storage = open_workspace(workspace)
    overrides = {
        "train_start": train_start.date() if train_start else None,
        "train_days": train_days,
        "delay_days": delay_days,
        "test_days": test_days,
    }
    changes = {k: v for k, v in overrides.items() if v is not None}
    settings.train = updated(settings.train, changes, "train")
    print_outputs("trained", run_one(settings, storage, "train", workspace))


@handle_errors
def tune(
    workspace: WorkspaceOpt = ".",
    trials: Annotated[
        int | None,
        typer.Option(help="Trials of the study in all, those done before included (tune.trials)."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds after which no trial starts (tune.timeout).")
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(help="average_precision, card_precision or cost (tune.objective)."),
    ] = None,
    folds: Annotated[int | None, typer.Option(help="Prequential folds (tune.folds).")] = None,
) -> None:
    """Search the candidate and its parameters (Optuna) on prequential folds before the test window; the
    best parameters go to tuning/best_params.json, which train uses. Resumes the study when run again."""
    from fraudops import compute
    from fraudops.context import StepContext
    from fraudops.modeling.tune import tune as run_study
    from fraudops.pipeline.history import new_execution_id
    from fraudops.workspace.lock import WorkspaceLock

    settings, storage = open_workspace(workspace)
    changes = {"objective": objective, "folds": folds, "trials": trials, "timeout": timeout}
    settings.tune = updated(settings.tune, {k: v for k, v in changes.items() if v is not None}, "tune")
    lock = WorkspaceLock(storage, f"tune-{new_execution_id()}", timeout=settings.pipeline.lock_timeout)
    # one writer at a time (a run's train reads what tune writes); trials on the cluster with dask
    with lock, compute.session(settings.compute), progress() as bar:
        task = bar.add_task("tuning", total=settings.tune.trials)

        def advance(what: str, done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        result = run_study(StepContext(settings, storage, progress=advance))
    print_outputs("tuned", result.model_dump())
    if result.best_value is not None and result.default_value is not None:
        better = result.best_value > result.default_value
        if settings.tune.objective == "cost":
            better = result.best_value < result.default_value
        err_console.print(
            f"best {settings.tune.objective} {result.best_value:.4f} vs the configured parameters "
            f"{result.default_value:.4f}: "
            + ("train will use the best parameters" if better else "the search found nothing better"),
            highlight=False,
        )


@handle_errors
def register(
    workspace: WorkspaceOpt = ".",
    run_id: Annotated[
        str | None, typer.Option(help="Train run to register (default: newest unregistered).")
    ] = None,
) -> None:
    """Register a trained model as a new version, aliased challenger."""
    settings, storage = open_workspace(workspace)
    previous = {"train": StepResult(run_id=run_id)} if run_id else None
    print_outputs("registered", run_one(settings, storage, "register", workspace, previous))


@handle_errors
def select_champion(workspace: WorkspaceOpt = ".") -> None:
    """Compare challenger and champion on the same recent window; promote if the challenger wins."""
    settings, storage = open_workspace(workspace)
    print_outputs("champion selection", run_one(settings, storage, "select_champion", workspace))


@champion_app.command("show")
@handle_errors
def champion_show(workspace: WorkspaceOpt = ".") -> None:
    """Registered versions, their aliases and metrics."""
    from fraudops.tracking.registry import describe

    settings, _ = open_workspace(workspace)
    info = describe(settings)
    if not info["versions"]:
        console.print(f"no versions of {info['model']} yet")
        return
    versions = [{k: v for k, v in r.items() if k != "reasons"} for r in info["versions"]]
    console.print(table(f"{info['model']} (aliases: {info['aliases']})", versions))


@champion_app.command("rollback")
@handle_errors
def champion_rollback(
    workspace: WorkspaceOpt = ".",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Make the previous champion champion again."""
    from fraudops.context import StepContext
    from fraudops.promotion.champion import rollback

    settings, storage = open_workspace(workspace)
    if not yes:
        typer.confirm("Roll the champion back to the previous champion?", abort=True)
    print_outputs("rollback", rollback(StepContext(settings, storage)).model_dump())
