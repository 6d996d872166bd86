"""``fraudops data``: simulate, import and validate data."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer

from fraudops.cli.base import WorkspaceOpt, handle_errors
from fraudops.cli.render import console, progress, spinner, table
from fraudops.config import updated
from fraudops.errors import FraudopsError
from fraudops.workspace import open_workspace

app = typer.Typer(help="Create, import and check data.", no_args_is_help=True)


@app.command("simulate")
@handle_errors
def data_simulate(
    workspace: WorkspaceOpt = ".",
    out: Annotated[
        str, typer.Option(help="Workspace folder to write the daily Parquet files to.")
    ] = "data/raw",
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
    unlabelled: Annotated[
        bool, typer.Option(help="Leave out the label and scenario (files to score).")
    ] = False,
) -> None:
    """Simulate card transactions (the fraud handbook's generator), one Parquet file per day."""
    from fraudops.data import simulate
    from fraudops.data.schema import LABEL, SCENARIO, to_file_columns

    settings, storage = open_workspace(workspace)
    if settings.data.kind != "transactions":
        raise FraudopsError(
            "the simulator makes raw transactions, but this workspace's data.kind is 'features'"
        )
    overrides = {
        "n_customers": customers,
        "n_terminals": terminals,
        "n_days": days,
        "start_date": start_date.date() if start_date else None,
        "seed": seed,
        "drift_start": drift_start.date() if drift_start else None,
    }
    cfg = updated(settings.simulate, {k: v for k, v in overrides.items() if v is not None}, "simulate")
    first = max(cfg.start_date, first_day.date()) if first_day else cfg.start_date
    period_end = cfg.start_date + dt.timedelta(days=cfg.n_days - 1)
    last = min(period_end, last_day.date()) if last_day else period_end
    empty_range = FraudopsError("no simulated day falls between --first-day and --last-day")
    if first > last:
        raise empty_range
    # day by day: memory holds the days a fraud scenario spans, not the whole simulation
    stats = simulate.Summary()
    files = 0
    with progress() as bar:
        task = bar.add_task(
            f"simulating {cfg.n_customers:,} customers, writing {storage.uri(out)}",
            total=(last - first).days + 1,
        )
        for day, frame in simulate.simulate_days(cfg):
            if day > last:
                break
            if day < first:
                continue
            stats.add(frame)
            written = frame.drop(LABEL, SCENARIO) if unlabelled else frame
            storage.write_frame(
                f"{out}/{simulate.day_file_name(day)}", to_file_columns(written, settings.data)
            )
            files += 1
            bar.advance(task)
    if not files:
        raise empty_range  # every day of the range without transactions: nothing was written
    summary = stats.result()  # of the days written
    console.print(table("simulated", summary))
    console.print(
        f"wrote {files} daily files ({summary['n_transactions']:,} transactions"
        f"{', unlabelled' if unlabelled else ''}) to {storage.uri(out)}"
    )


@app.command("import")
@handle_errors
def data_import(
    files: Annotated[list[str], typer.Argument(help="CSV or Parquet files (paths or fsspec URLs).")],
    workspace: WorkspaceOpt = ".",
    force: Annotated[bool, typer.Option(help="Replace files of the same name in data/raw/.")] = False,
) -> None:
    """Validate files and copy them into data/raw/ (all or nothing)."""
    from fraudops.data.loading import describe_features, import_files

    settings, storage = open_workspace(workspace)
    with spinner("validating"):
        imported = import_files(storage, settings, files, force=force)
    console.print(table("imported", imported.files))
    if settings.data.kind == "features":
        console.print(
            f"features kind: {describe_features(imported.features, imported.time)}", highlight=False
        )


@app.command("validate")
@handle_errors
def data_validate(
    files: Annotated[list[str], typer.Argument(help="CSV or Parquet files (paths or fsspec URLs).")],
    workspace: WorkspaceOpt = ".",
) -> None:
    """Check files against the workspace's data kind, column mapping and the files in data/raw/, without
    copying them."""
    from fraudops.data.loading import check_files, describe_features
    from fraudops.errors import DataValidationError

    settings, storage = open_workspace(workspace)
    with spinner("validating"):
        checked, problems = check_files(storage, settings, files)
    rows = [{"file": f, "rows": v.frame.height, "invalid rows": v.rejects.height} for f, v in checked]
    if rows:
        console.print(table("checked", rows))
    if settings.data.kind == "features":
        for f, v in checked:
            if v.features:
                console.print(f"{f}: {describe_features(v.features, v.time)}", highlight=False)
    if problems:
        raise DataValidationError(problems)
    console.print("[green]all files valid[/]")
