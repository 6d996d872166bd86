"""The ``fraudops`` command: a thin layer over the plain functions of each stage."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fraudops import __version__
from fraudops.config import FraudopsError, Settings, init_workspace, load_settings
from fraudops.storage import Storage, StorageError

app = typer.Typer(
    help="fraudops: card-fraud MLOps — simulate, train, register, score, monitor, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Create, import and check data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

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
        except (FraudopsError, StorageError) as e:
            err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
            raise typer.Exit(1) from e

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def progress(total: int | None = None) -> Iterator[Progress]:
    """A Rich progress bar (a spinner when the total is unknown), on stderr."""
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    with Progress(*columns, TimeElapsedColumn(), console=err_console, transient=True) as bar:
        yield bar


def spinner(description: str) -> Any:
    return err_console.status(description)


def table(title: str, rows: list[dict[str, Any]] | dict[str, Any], columns: list[str] | None = None) -> Table:
    """A Rich table from a list of dicts (one row each) or one dict (key/value)."""
    t = Table(title=title, title_justify="left", header_style="bold")
    if isinstance(rows, dict):
        t.add_column("")
        t.add_column("value", justify="right")
        for k, v in rows.items():
            t.add_row(str(k), fmt(v))
        return t
    columns = columns or (list(rows[0]) if rows else [])
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(fmt(r.get(c)) for c in columns))
    return t


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def open_workspace(workspace: str) -> tuple[Settings, Storage]:
    settings = load_settings(workspace)
    return settings, Storage(settings.workspace)


@app.command()
@handle_errors
def version() -> None:
    """Print the fraudops version."""
    console.print(f"fraudops {__version__}")


@app.command()
@handle_errors
def init(
    path: Annotated[str, typer.Argument(help="Folder or fsspec URL (s3://bucket/prefix).")] = ".",
) -> None:
    """Create a workspace: a documented fraudops.yaml and the seed bucket's folder layout."""
    settings, created = init_workspace(path)
    storage = Storage(settings.workspace)
    verb = "created" if created else "kept existing"
    console.print(f"workspace [bold]{storage.uri()}[/]: {verb} fraudops.yaml, folders ready")
    console.print(f"next: [bold]fraudops -w {path} data simulate[/] or [bold]fraudops -w {path} data import FILE[/]")


@app.command("config")
@handle_errors
def show_config(workspace: WorkspaceOpt = ".") -> None:
    """Print the effective configuration (file + environment) as YAML."""
    import yaml

    settings = load_settings(workspace)
    dumped = settings.model_dump(mode="json")
    console.print(yaml.safe_dump(dumped, sort_keys=False), highlight=False)


@data_app.command("simulate")
@handle_errors
def data_simulate(
    workspace: WorkspaceOpt = ".",
    out: Annotated[str, typer.Option(help="Workspace folder to write the daily Parquet files to.")] = "data/raw",
    customers: Annotated[int | None, typer.Option(help="Number of customers (cards).")] = None,
    terminals: Annotated[int | None, typer.Option(help="Number of terminals.")] = None,
    days: Annotated[int | None, typer.Option(help="Days simulated from --start-date.")] = None,
    start_date: Annotated[dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="First day.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same data).")] = None,
    drift_start: Annotated[
        dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Add drift from this day on.")
    ] = None,
    first_day: Annotated[
        dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Write only days from this one.")
    ] = None,
    last_day: Annotated[
        dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Write only days up to this one.")
    ] = None,
    unlabelled: Annotated[bool, typer.Option(help="Leave out the label and scenario (files to score).")] = False,
) -> None:
    """Simulate card transactions (the fraud handbook's generator), one Parquet file per day."""
    from fraudops import simulate
    from fraudops.data import LABEL, SCENARIO, to_file_columns

    settings, storage = open_workspace(workspace)
    overrides = {
        "n_customers": customers,
        "n_terminals": terminals,
        "n_days": days,
        "start_date": start_date.date() if start_date else None,
        "seed": seed,
        "drift_start": drift_start.date() if drift_start else None,
    }
    cfg = settings.simulate.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    cfg = type(cfg).model_validate(cfg.model_dump())
    with spinner(f"simulating {cfg.n_customers:,} customers × {cfg.n_days} days"):
        df = simulate.simulate(cfg)
    stats = simulate.summary(df)
    days_out = [
        (day, frame)
        for day, frame in simulate.iter_days(df)
        if (first_day is None or day >= first_day.date()) and (last_day is None or day <= last_day.date())
    ]
    if not days_out:
        raise FraudopsError("no simulated day falls between --first-day and --last-day")
    with progress() as bar:
        task = bar.add_task(f"writing {storage.uri(out)}", total=len(days_out))
        for day, frame in days_out:
            if unlabelled:
                frame = frame.drop(LABEL, SCENARIO)
            storage.write_frame(f"{out}/{simulate.day_file_name(day)}", to_file_columns(frame, settings.data))
            bar.advance(task)
    written = sum(f.height for _, f in days_out)
    console.print(table("simulated", stats))
    console.print(
        f"wrote {len(days_out)} daily files ({written:,} transactions"
        f"{', unlabelled' if unlabelled else ''}) to {storage.uri(out)}"
    )


@data_app.command("import")
@handle_errors
def data_import(
    files: Annotated[list[str], typer.Argument(help="CSV or Parquet files (paths or fsspec URLs).")],
    workspace: WorkspaceOpt = ".",
    force: Annotated[bool, typer.Option(help="Replace files of the same name in data/raw/.")] = False,
) -> None:
    """Validate files and copy them into data/raw/ (all or nothing)."""
    from fraudops.data import import_files

    settings, storage = open_workspace(workspace)
    with spinner("validating"):
        results = import_files(storage, settings, files, force=force)
    console.print(table("imported", results))


@data_app.command("validate")
@handle_errors
def data_validate(
    files: Annotated[list[str], typer.Argument(help="CSV or Parquet files (paths or fsspec URLs).")],
    workspace: WorkspaceOpt = ".",
) -> None:
    """Check files against the workspace's data kind and column mapping, without copying them."""
    from fraudops.data import DataValidationError, read_source, validate

    settings, _ = open_workspace(workspace)
    problems = []
    rows = []
    for f in files:
        try:
            v = validate(read_source(f), settings.data, f)
        except DataValidationError as e:
            problems += e.problems
            continue
        problems += v.problems
        rows.append({"file": f, "rows": v.frame.height, "invalid rows": v.rejects.height})
    if rows:
        console.print(table("checked", rows))
    if problems:
        raise DataValidationError(problems)
    console.print("[green]all files valid[/]")


champion_app = typer.Typer(help="Show or roll back the champion model.", no_args_is_help=True)
app.add_typer(champion_app, name="champion")


def _print_outputs(title: str, out: dict[str, Any]) -> None:
    flat = {k: v for k, v in out.items() if not isinstance(v, dict | list)}
    console.print(table(title, flat))
    for reason in out.get("reasons", []):
        console.print(f"  • {reason}")


@app.command()
@handle_errors
def train(
    workspace: WorkspaceOpt = ".",
    train_start: Annotated[
        dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="First training day (default: latest).")
    ] = None,
    train_days: Annotated[int | None, typer.Option(help="Training window, days.")] = None,
    delay_days: Annotated[int | None, typer.Option(help="Label-delay gap between training and test, days.")] = None,
    test_days: Annotated[int | None, typer.Option(help="Test window, days.")] = None,
) -> None:
    """Train the candidates on a time split, pick the best, log everything to MLflow."""
    from fraudops.train import train_step

    settings, storage = open_workspace(workspace)
    overrides = {
        "train_start": train_start.date() if train_start else None,
        "train_days": train_days,
        "delay_days": delay_days,
        "test_days": test_days,
    }
    for k, v in overrides.items():
        if v is not None:
            setattr(settings.train, k, v)
    with spinner("training"):
        out = train_step(settings, storage)
    _print_outputs("trained", out)


@app.command()
@handle_errors
def register(
    workspace: WorkspaceOpt = ".",
    run_id: Annotated[str | None, typer.Option(help="Train run to register (default: newest unregistered).")] = None,
) -> None:
    """Register a trained model as a new version, aliased challenger."""
    from fraudops.registry import register_step

    settings, storage = open_workspace(workspace)
    _print_outputs("registered", register_step(settings, storage, run_id=run_id))


@app.command("select-champion")
@handle_errors
def select_champion(workspace: WorkspaceOpt = ".") -> None:
    """Compare challenger and champion on the same recent window; promote if the challenger wins."""
    from fraudops.registry import select_champion_step

    settings, storage = open_workspace(workspace)
    with spinner("scoring challenger and champion"):
        out = select_champion_step(settings, storage)
    _print_outputs("champion selection", out)


@champion_app.command("show")
@handle_errors
def champion_show(workspace: WorkspaceOpt = ".") -> None:
    """Registered versions, their aliases and metrics."""
    from fraudops.registry import describe

    settings, _ = open_workspace(workspace)
    info = describe(settings)
    if not info["versions"]:
        console.print(f"no versions of {info['model']} yet")
        return
    console.print(table(f"{info['model']} (aliases: {info['aliases']})", info["versions"]))


@champion_app.command("rollback")
@handle_errors
def champion_rollback(
    workspace: WorkspaceOpt = ".",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Make the previous champion champion again."""
    from fraudops.registry import rollback

    settings, storage = open_workspace(workspace)
    if not yes:
        typer.confirm("Roll the champion back to the previous champion?", abort=True)
    _print_outputs("rollback", rollback(settings, storage))


def main() -> None:
    app(prog_name="fraudops")


if __name__ == "__main__":
    sys.exit(main())

