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
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from fraudops import __version__
from fraudops.config import FraudopsError, Settings, init_workspace, load_settings
from fraudops.storage import Storage, StorageError

app = typer.Typer(
    help="fraudops: card-fraud MLOps — simulate, train, register, score, monitor, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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
    console.print(
        f"next: [bold]fraudops -w {path} data simulate[/] or [bold]fraudops -w {path} data import FILE[/]"
    )


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
    from fraudops import simulate
    from fraudops.data import LABEL, SCENARIO, to_file_columns

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


@app.command()
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
    for k, v in overrides.items():
        if v is not None:
            setattr(settings.train, k, v)
    _print_step_outputs("trained", _run_one(settings, storage, "train", workspace))


@app.command()
@handle_errors
def register(
    workspace: WorkspaceOpt = ".",
    run_id: Annotated[
        str | None, typer.Option(help="Train run to register (default: newest unregistered).")
    ] = None,
) -> None:
    """Register a trained model as a new version, aliased challenger."""
    settings, storage = open_workspace(workspace)
    previous = {"train": {"run_id": run_id}} if run_id else None
    _print_step_outputs("registered", _run_one(settings, storage, "register", workspace, previous))


@app.command("select-champion")
@handle_errors
def select_champion(workspace: WorkspaceOpt = ".") -> None:
    """Compare challenger and champion on the same recent window; promote if the challenger wins."""
    settings, storage = open_workspace(workspace)
    _print_step_outputs("champion selection", _run_one(settings, storage, "select_champion", workspace))


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
    _print_step_outputs("rollback", rollback(settings, storage))


# ------------------------------------------------------------------------------ pipeline executions

executions_app = typer.Typer(
    help="Pipeline executions: the history (like the Step Functions console).", no_args_is_help=True
)
app.add_typer(executions_app, name="executions")


def _when(iso: str | None) -> str:
    """An ISO UTC time as local time, to the second."""
    if not iso:
        return ""
    try:
        when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
        return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, sec = divmod(float(seconds), 60)
    return f"{int(minutes)}m {sec:04.1f}s" if minutes else f"{sec:.1f}s"


def _flatten(outputs: dict[str, Any] | None) -> dict[str, Any]:
    """A step's scalar outputs, nested dicts one level deep as ``key.sub`` (lists left out)."""
    flat: dict[str, Any] = {}
    for k, v in (outputs or {}).items():
        if isinstance(v, dict):
            flat.update({f"{k}.{k2}": v2 for k2, v2 in v.items() if not isinstance(v2, dict | list)})
        elif not isinstance(v, list):
            flat[k] = v
    return flat


def _print_step_outputs(title: str, out: dict[str, Any]) -> None:
    """Scalar outputs as a table, then reasons (and monitoring notes) as bullets."""
    console.print(table(title, _flatten(out)))
    for reason in out.get("reasons") or []:
        console.print(f"  • {reason}", highlight=False)
    for note in out.get("notes") or []:
        console.print(f"  [dim]· {note}[/]", highlight=False)


def _brief(outputs: dict[str, Any] | None, n: int = 6) -> str:
    """A step's scalar outputs on one line (ids shortened)."""
    items = []
    for k, v in _flatten(outputs).items():
        long_text = isinstance(v, str) and len(v) > 30 and not k.endswith("run_id")
        if v is None or k.startswith("windows") or long_text:
            continue
        if isinstance(v, str) and len(v) == 32 and k.endswith("run_id"):
            v = v[:8]
        items.append(f"{k}={fmt(v)}")
    return ", ".join(items[:n]) + (", …" if len(items) > n else "")


_STATUS_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "ABORTED": "yellow", "RUNNING": "cyan"}


def _status(s: str | None) -> str:
    s = s or ""
    return f"[{_STATUS_STYLE.get(s.split(' ')[0], 'white')}]{s}[/]"


class _ExecutionPrinter:
    """Prints an execution's progress as it happens (a spinner while a step runs)."""

    def __init__(self) -> None:
        self.status: Any = None

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def __call__(self, kind: str, record: dict[str, Any], step: dict[str, Any] | None) -> None:
        import json

        if kind == "decision":
            console.print(
                f"retraining decision: [bold]{record['retraining_required']}[/] ({record['file']})",
                highlight=False,
            )
            for reason in record["reasons"]:
                console.print(f"  • {reason}", highlight=False)
            return
        short = record["id"][:8]
        if kind == "execution_started":
            steps = " → ".join(s["name"] for s in record["steps"])
            console.print(
                f"execution [bold]{short}[/] started: input {json.dumps(record['input'])}  ({steps})",
                highlight=False,
            )
        elif kind == "step_started" and step is not None:
            self.status = err_console.status(f"{step['name']} running")
            self.status.start()
        elif kind == "step_retry" and step is not None:
            console.print(
                f"  [yellow]↻[/] {step['name']}: transient error, retrying: {step['error']}", highlight=False
            )
        elif kind == "step_finished" and step is not None:
            self._stop()
            ok = step["status"] == "SUCCEEDED"
            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            console.print(
                f"  {mark} {step['name']:<16} {_status(step['status']):<20} "
                f"{_duration(step['duration_s']):>8}  {_brief(step['outputs']) if ok else ''}",
                highlight=False,
            )
            if not ok and step.get("error"):
                console.print(f"      [red]{step['error']}[/]", highlight=False)
        elif kind == "execution_finished":
            self._stop()
            console.print(
                f"execution [bold]{short}[/] {_status(record['status'])} in "
                f"{_duration(record['duration_s'])}",
                highlight=False,
            )


def _finish(record: dict[str, Any], workspace: str) -> None:
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


def _execute(
    settings: Settings,
    storage: Storage,
    inp: dict[str, Any],
    workspace: str,
    previous: dict[str, dict] | None = None,
) -> dict[str, Any]:
    from fraudops import pipeline

    record = pipeline.execute(settings, storage, inp, previous=previous, on_event=_ExecutionPrinter())
    _finish(record, workspace)
    return record


def _run_one(
    settings: Settings, storage: Storage, step: str, workspace: str, previous: dict[str, dict] | None = None
) -> dict[str, Any]:
    """A stage command (train, register, ...) as a one-step pipeline execution; returns its outputs."""
    inp = {"run": step, "only": True, "triggered_by": "cli"}
    record = _execute(settings, storage, inp, workspace, previous)
    return record["steps"][0]["outputs"] or {}


@app.command("run")
@handle_errors
def run_pipeline(
    workspace: WorkspaceOpt = ".",
    input_: Annotated[
        str | None,
        typer.Option("--input", "-i", help='Execution input: JSON, @file.json or a file ({"run": "all"}).'),
    ] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Start at this step, run to the end.")] = None,
    only: Annotated[str | None, typer.Option("--only", help="Run this one step.")] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue an execution (id or prefix; 'last' = newest failed) at its failed step."),
    ] = None,
) -> None:
    """Run the pipeline: train → register → select_champion → batch_inference → monitor.

    The input is the seed's Step Functions input: {"run": "all" | "train" | "register" | "select_champion" |
    "batch_inference" | "monitor"} (plus optional "triggered_by", "reason", "only": true). No option = all.
    """
    from fraudops import pipeline

    settings, storage = open_workspace(workspace)
    if sum(x is not None for x in (from_, only, resume)) > 1:
        raise FraudopsError("give only one of --from, --only and --resume")
    previous = None
    if resume is not None:
        if input_ is not None:
            raise FraudopsError("--resume takes its input from the execution it continues: leave out --input")
        inp, previous = pipeline.resume_plan(settings, None if resume == "last" else resume)
    else:
        raw, source = pipeline.read_input(input_) if input_ is not None else ({}, "--input")
        if from_ is not None or only is not None:
            if isinstance(raw, dict) and "run" in raw:
                raise FraudopsError('give the start as "run" in --input or with --from/--only, not both')
            raw = {**(raw if isinstance(raw, dict) else {}), "run": from_ or only}
            if only:
                raw["only"] = True
            source = "--only" if only else "--from"
        elif input_ is None:
            raw = {"run": "all"}
        inp = pipeline.validate_input(raw, source)
    _execute(settings, storage, inp, workspace, previous)


@executions_app.command("list")
@handle_errors
def executions_list(
    workspace: WorkspaceOpt = ".",
    limit: Annotated[int, typer.Option(help="Newest executions to show.")] = 20,
) -> None:
    """Executions, newest first: id, status, input, triggered_by, start, duration."""
    import json

    from fraudops import pipeline

    settings, storage = open_workspace(workspace)
    history = pipeline.History(settings)
    holder = pipeline.lock_holder(storage)
    rows = []
    for run in history.search(limit=limit):
        rec = history.record(run, full=False)
        inp = rec["input"]
        if isinstance(inp, dict):  # triggered_by has its column; the reason is in `executions show`
            inp = json.dumps({k: v for k, v in inp.items() if k not in ("triggered_by", "reason")})
        done = sum(s["status"] == "SUCCEEDED" for s in rec["steps"])
        rows.append(
            {
                "id": (rec["id"] or "")[:8],
                "status": _status(pipeline.effective_status(rec, holder)),
                "input": inp,
                "triggered_by": rec["triggered_by"],
                "start": _when(rec["start"]),
                "duration": _duration(rec["duration_s"]),
                "steps": f"{done}/{len(rec['steps'])}",
            }
        )
    if not rows:
        console.print("no executions yet: `fraudops run` starts one")
        return
    t = table(f"executions ({storage.uri()})", rows)
    for column in t.columns:
        column.no_wrap = column.header in ("id", "status", "duration", "steps")
    console.print(t)


@executions_app.command("show")
@handle_errors
def executions_show(
    execution_id: Annotated[str, typer.Argument(help="Execution id or a unique prefix of it.")],
    workspace: WorkspaceOpt = ".",
    logs: Annotated[bool, typer.Option(help="Print the execution's log too.")] = False,
) -> None:
    """One execution: its input and status, then every step's status, start, duration, outputs and error."""
    import json

    from fraudops import pipeline

    settings, storage = open_workspace(workspace)
    history = pipeline.History(settings)
    run = history.find(execution_id)
    rec = history.record(run)
    holder = pipeline.lock_holder(storage)
    head = {
        "id": rec["id"],
        "status": _status(pipeline.effective_status(rec, holder)),
        "input": json.dumps(rec["input"]) if isinstance(rec["input"], dict) else rec["input"],
        "triggered_by": rec["triggered_by"],
        "reason": rec.get("reason"),
        "start": _when(rec["start"]),
        "end": _when(rec.get("end")),
        "duration": _duration(rec["duration_s"]),
        "mlflow run": run.info.run_id,
        "error": rec.get("error"),
    }
    t = table(f"execution {rec['id'][:8]}", {k: v for k, v in head.items() if v not in (None, "")})
    t.columns[1].justify = "left"
    console.print(t)
    steps = [
        {
            "step": s["name"],
            "status": _status(s["status"]),
            "start": _when(s.get("start")),
            "duration": _duration(s.get("duration_s")),
            "attempts": s.get("attempts") or "",
            "outputs / error": s.get("error") or _brief(s.get("outputs"), n=4),
        }
        for s in rec["steps"]
    ]
    console.print(table("steps", steps))
    for s in rec["steps"]:
        if s.get("outputs"):
            _print_step_outputs(f"{s['name']} outputs", s["outputs"])
    if logs:
        text = history.log_text(run.info.run_id)
        console.rule("logs/execution.log")
        console.print(text or "(no log recorded)", highlight=False, markup=False)


@app.command()
@handle_errors
def trigger(
    workspace: WorkspaceOpt = ".",
    force: Annotated[bool, typer.Option(help="Act on a decision that was already acted on.")] = False,
) -> None:
    """The retraining trigger: on YES in retrain_decision.csv, run the whole pipeline (once per decision)."""
    from fraudops import pipeline

    settings, storage = open_workspace(workspace)
    result = pipeline.trigger(settings, storage, force=force, on_event=_ExecutionPrinter())
    if result["action"] == "none":
        console.print("no retraining needed: nothing to do")
    elif result["action"] == "already_handled":
        done = result["handled"]
        console.print(
            f"this decision was already acted on at {_when(done['handled_at'])} by execution "
            f"{done['execution_id'][:8]} ({done['status']}): nothing to do (--force starts another)",
            highlight=False,
        )
    else:
        _finish(result["execution"], workspace)


@app.command()
@handle_errors
def reset(
    workspace: WorkspaceOpt = ".",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Empty a workspace: data, outputs, MLflow runs, models and artifacts (fraudops.yaml is kept)."""
    from fraudops import pipeline

    settings, storage = open_workspace(workspace)
    targets = pipeline.reset_targets(storage)
    if settings.registry.tracking_uri:
        err_console.print(
            f"note: the tracking store {settings.registry.tracking_uri} is outside the workspace and is not "
            "cleared",
            highlight=False,
        )
    if not targets:
        console.print(f"{storage.uri()} holds nothing to delete")
        return
    console.print(f"in {storage.uri()} this deletes: {', '.join(targets)}", highlight=False)
    if not yes:
        typer.confirm("Delete them?", abort=True)
    deleted = pipeline.reset(settings, storage)
    console.print(f"deleted {', '.join(deleted)}; fraudops.yaml kept, empty folders ready", highlight=False)


@app.command()
@handle_errors
def ui(
    workspace: WorkspaceOpt = ".",
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the workspace's tracking store (executions, runs, models)."""
    import subprocess

    from fraudops import registry

    settings, _ = open_workspace(workspace)
    uri = registry.tracking_uri(settings)
    if uri.startswith(("http://", "https://")):
        console.print(f"the tracking server is {uri}: open it in a browser")
        return
    registry.experiment_id(settings)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    cmd += ["--host", host, "--port", str(port), "--workers", "1"]
    console.print(
        f"MLflow UI on [bold]http://{host}:{port}[/] (Ctrl-C stops it); tracking store {uri}", highlight=False
    )
    with contextlib.suppress(KeyboardInterrupt):
        raise typer.Exit(subprocess.call(cmd))


def _champion_line(settings: Settings) -> str:
    from fraudops import registry

    champion = registry.version_by_alias(settings, registry.CHAMPION)
    if champion is None:
        return "none"
    names = {
        "average_precision": "AP",
        "roc_auc": "ROC AUC",
        "card_precision_at_100": "CP@100",
        "recall": "recall",
        "precision": "precision",
    }
    metrics = ", ".join(
        f"{label} {float(champion.tags[f'metric.{k}']):.3f}"
        for k, label in names.items()
        if f"metric.{k}" in champion.tags
    )
    return f"version {champion.version} — {metrics} (on its test window at promotion)"


def _step_outputs(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next((s.get("outputs") or {} for s in record["steps"] if s["name"] == name), {})


def _num(v: Any, spec: str = ".3f") -> str:
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def _demo_report(record: dict[str, Any], settings: Settings, storage: Storage) -> None:
    """What an execution of the demo did, in a few lines."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("champion", _champion_line(settings))
    batch = _step_outputs(record, "batch_inference")
    if batch:
        tot = batch.get("totals") or batch
        scored, flagged = tot.get("rows_scored"), tot.get("rows_flagged")
        share = (
            f" ({flagged / scored:.1%})"
            if isinstance(flagged, int) and isinstance(scored, int) and scored
            else ""
        )
        grid.add_row(
            "batch scoring",
            f"{fmt(tot.get('files'))} file(s), {fmt(scored)} transactions scored, {fmt(flagged)} flagged as "
            f"fraud{share} → {storage.uri('prod_outputs/predictions')}",
        )
    mon = _step_outputs(record, "monitor")
    if mon:
        parts = [f"decision [bold]{mon.get('retraining_required')}[/]"]
        n_features = mon.get("features", mon.get("n_features"))
        if n_features:
            parts.append(
                f"{mon.get('drifted_features', mon.get('n_drifted'))} of {n_features} features drifted"
            )
        if mon.get("score_psi") is not None:
            parts.append(f"score PSI {_num(mon.get('score_psi'))}")
        if mon.get("performance") not in (None, "ok"):
            parts.append(f"performance: {mon['performance']}")
        elif mon.get("current_average_precision") is not None:
            parts.append(f"AP on current data {_num(mon.get('current_average_precision'))}")
        grid.add_row("monitoring", ", ".join(parts))
        for reason in mon.get("reasons") or []:
            grid.add_row("", f"• {reason}")
        for note in mon.get("notes") or []:
            grid.add_row("", f"[dim]· {note}[/]")
        report = mon.get("report") or mon.get("report_path")
        if report or storage.exists("monitoring_outputs/report.html"):
            report = str(report or "monitoring_outputs/report.html")
            grid.add_row(
                "report", report if "://" in report or report.startswith("/") else storage.uri(report)
            )
    console.print(grid, highlight=False)


@app.command()
@handle_errors
def demo(
    workspace: Annotated[str, typer.Argument(help="Folder to create (empty or absent).")] = "demo-workspace",
    force: Annotated[bool, typer.Option(help="Reset an existing workspace first.")] = False,
    customers: Annotated[int, typer.Option(help="Simulated cards (terminals: twice as many).")] = 5000,
    trees: Annotated[int, typer.Option(help="XGBoost trees at most (early stopping picks fewer).")] = 150,
) -> None:
    """The whole loop on simulated data, from nothing: go-live, drift, monitoring says YES, retraining."""
    import time

    from fraudops import demo as d
    from fraudops import pipeline

    started = time.monotonic()
    settings, storage, t = d.create(workspace, customers=customers, trees=trees, force=force)
    console.print(
        f"workspace [bold]{storage.uri()}[/] created (fraudops.yaml with the demo's settings)",
        highlight=False,
    )
    with spinner(f"simulating {customers:,} cards × {t.n_days} days"):
        df, stats = d.simulate(settings)
    console.print(
        f"simulated {stats['n_transactions']:,} transactions, {stats['n_frauds']:,} frauds "
        f"({stats['fraud_rate']:.2%}), {t.start} .. {stats['last_date']}; drift from {t.drift_start}",
        highlight=False,
    )

    def ok(record: dict[str, Any]) -> dict[str, Any]:
        if record["status"] != "SUCCEEDED":
            _finish(record, workspace)
        return record

    printer = _ExecutionPrinter()
    console.rule("[bold]1. go-live[/]: train on the history, promote, score the first batch, monitor")
    console.print(table("data", d.stage_go_live(storage, settings, df, t)))
    rec = ok(
        pipeline.execute(
            settings, storage, {"run": "all", "triggered_by": "demo", "reason": "go-live"}, on_event=printer
        )
    )
    _demo_report(rec, settings, storage)

    console.rule("[bold]2. four weeks later[/]: the weekly schedule scores the new batch and monitors")
    console.print(table("data", d.stage_later(storage, settings, df, t)))
    rec = ok(
        pipeline.execute(
            settings,
            storage,
            {"run": "batch_inference", "triggered_by": "schedule", "reason": "weekly scoring and monitoring"},
            on_event=printer,
        )
    )
    _demo_report(rec, settings, storage)

    console.rule("[bold]3. retraining trigger[/] (the seed's Lambda): acts on the decision")
    result = pipeline.trigger(settings, storage, on_event=printer)
    if result["action"] == "started":
        rec = ok(result["execution"])
        sel = _step_outputs(rec, "select_champion")
        promoted = sel.get("decision") == "promoted"
        verdict = "[green]promoted[/]" if promoted else f"[yellow]{sel.get('decision')}[/]"
        console.print(f"new challenger version {sel.get('challenger_version')}: {verdict}", highlight=False)
        for reason in sel.get("reasons", []):
            console.print(f"  • {reason}", highlight=False)
        _demo_report(rec, settings, storage)
    else:
        console.print("monitoring did not ask for retraining: the trigger has nothing to do")

    console.rule(f"[bold]done in {_duration(time.monotonic() - started)}[/]")
    report = _step_outputs(rec, "monitor").get("report") or "monitoring_outputs/report.html"
    w = workspace
    for label, value in (
        ("history", f"fraudops executions list -w {w}   ·   fraudops executions show ID -w {w}"),
        ("monitoring report", storage.uri(report) if not str(report).startswith("/") else report),
        ("MLflow UI", f"fraudops ui -w {w}   (then http://127.0.0.1:5000)"),
        ("scoring endpoint", f"fraudops serve -w {w}"),
        ("start over", f"fraudops demo {w} --force   ·   fraudops reset -w {w}"),
    ):
        console.print(f"  {label:<18} {value}", highlight=False)


@app.command()
@handle_errors
def serve(
    workspace: WorkspaceOpt = ".",
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port, 8080).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: serve.workers).")] = None,
    alias: Annotated[str, typer.Option(help="Registry alias to serve and follow.")] = "champion",
) -> None:
    """Serve the champion over HTTP (SageMaker and MLflow scoring protocols); follows the alias live."""
    from fraudops.serve import run

    settings, _ = open_workspace(workspace)
    run(settings, host=host, port=port, workers=workers, alias=alias)


@app.command()
@handle_errors
def batch(workspace: WorkspaceOpt = ".") -> None:
    """Score every CSV/Parquet file in prod_inputs/ with the champion (the seed's Batch Transform)."""
    settings, storage = open_workspace(workspace)
    out = _run_one(settings, storage, "batch_inference", workspace)
    where = storage.uri("prod_outputs/predictions")
    rows = [
        {**r, **{k: r[k] and r[k].rsplit("/", 1)[-1] for k in ("input", "output", "rejects")}}
        for r in out.get("files", [])
    ]
    if rows:
        columns = ["input", "output", "rows", "flagged", "rejected", "rejects", "seconds"]
        console.print(table(f"scored with version {out['model_version']} → {where}", rows, columns))
    console.print(table("totals", out.get("totals", {})))


@app.command()
@handle_errors
def monitor(workspace: WorkspaceOpt = ".") -> None:
    """Compare current data with the champion's reference; write drift, performance and the decision."""
    settings, storage = open_workspace(workspace)
    _print_step_outputs("monitoring", _run_one(settings, storage, "monitor", workspace))


def main() -> None:
    app(prog_name="fraudops")


if __name__ == "__main__":
    sys.exit(main())
