"""Pipeline commands: run, executions, trigger, and the batch and monitor stages."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from fraudops.cli.base import WorkspaceOpt, execute, finish, handle_errors, run_one
from fraudops.cli.render import (
    ExecutionPrinter,
    brief,
    console,
    duration,
    print_outputs,
    status,
    table,
    when,
)
from fraudops.errors import FraudopsError
from fraudops.workspace import open_workspace

executions_app = typer.Typer(
    help="Pipeline executions: the history (like the Step Functions console).", no_args_is_help=True
)


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
    from fraudops.pipeline import executor, graph

    settings, storage = open_workspace(workspace)
    if sum(x is not None for x in (from_, only, resume)) > 1:
        raise FraudopsError("give only one of --from, --only and --resume")
    previous = None
    if resume is not None:
        if input_ is not None:
            raise FraudopsError("--resume takes its input from the execution it continues: leave out --input")
        inp, previous = executor.resume_plan(settings, None if resume == "last" else resume)
    else:
        raw, source = graph.read_input(input_) if input_ is not None else ({}, "--input")
        if from_ is not None or only is not None:
            if isinstance(raw, dict) and "run" in raw:
                raise FraudopsError('give the start as "run" in --input or with --from/--only, not both')
            raw = {**(raw if isinstance(raw, dict) else {}), "run": from_ or only}
            if only:
                raw["only"] = True
            source = "--only" if only else "--from"
        elif input_ is None:
            raw = {"run": "all"}
        inp = graph.validate_input(raw, source)
    execute(settings, storage, inp, workspace, previous)


@executions_app.command("list")
@handle_errors
def executions_list(
    workspace: WorkspaceOpt = ".",
    limit: Annotated[int, typer.Option(help="Newest executions to show.")] = 20,
) -> None:
    """Executions, newest first: id, status, input, triggered_by, start, duration."""
    from fraudops.pipeline.history import History, effective_status
    from fraudops.workspace.lock import lock_holder

    settings, storage = open_workspace(workspace)
    history = History(settings)
    holder = lock_holder(storage)
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
                "status": status(effective_status(rec, holder)),
                "input": inp,
                "triggered_by": rec["triggered_by"],
                "start": when(rec["start"]),
                "duration": duration(rec["duration_s"]),
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
    from fraudops.pipeline.history import History, effective_status
    from fraudops.workspace.lock import lock_holder

    settings, storage = open_workspace(workspace)
    history = History(settings)
    run = history.find(execution_id)
    rec = history.record(run)
    holder = lock_holder(storage)
    head = {
        "id": rec["id"],
        "status": status(effective_status(rec, holder)),
        "input": json.dumps(rec["input"]) if isinstance(rec["input"], dict) else rec["input"],
        "triggered_by": rec["triggered_by"],
        "reason": rec.get("reason"),
        "start": when(rec["start"]),
        "end": when(rec.get("end")),
        "duration": duration(rec["duration_s"]),
        "mlflow run": run.info.run_id,
        "error": rec.get("error"),
    }
    t = table(f"execution {rec['id'][:8]}", {k: v for k, v in head.items() if v not in (None, "")})
    t.columns[1].justify = "left"
    console.print(t)
    steps = [
        {
            "step": s["name"],
            "status": status(s["status"]),
            "start": when(s.get("start")),
            "duration": duration(s.get("duration_s")),
            "attempts": s.get("attempts") or "",
            "outputs / error": s.get("error") or brief(s.get("outputs"), n=4),
        }
        for s in rec["steps"]
    ]
    console.print(table("steps", steps))
    for s in rec["steps"]:
        if s.get("outputs"):
            print_outputs(f"{s['name']} outputs", s["outputs"])
    if logs:
        text = history.log_text(run.info.run_id)
        console.rule("logs/execution.log")
        console.print(text or "(no log recorded)", highlight=False, markup=False)


@handle_errors
def trigger(
    workspace: WorkspaceOpt = ".",
    force: Annotated[bool, typer.Option(help="Act on a decision that was already acted on.")] = False,
) -> None:
    """The retraining trigger: on YES in retrain_decision.csv, run the whole pipeline (once per decision)."""
    from fraudops.pipeline.trigger import trigger as run_trigger

    settings, storage = open_workspace(workspace)
    result = run_trigger(settings, storage, force=force, on_event=ExecutionPrinter())
    if result["action"] == "none":
        console.print("no retraining needed: nothing to do")
    elif result["action"] == "already_handled":
        done = result["handled"]
        console.print(
            f"this decision was already acted on at {when(done['handled_at'])} by execution "
            f"{done['execution_id'][:8]} ({done['status']}): nothing to do (--force starts another)",
            highlight=False,
        )
    else:
        finish(result["execution"], workspace)


@handle_errors
def batch(workspace: WorkspaceOpt = ".") -> None:
    """Score every CSV/Parquet file in prod_inputs/ with the champion (the seed's Batch Transform)."""
    settings, storage = open_workspace(workspace)
    out = run_one(settings, storage, "batch_inference", workspace)
    where = storage.uri("prod_outputs/predictions")
    rows = [
        {**r, **{k: r[k] and r[k].rsplit("/", 1)[-1] for k in ("input", "output", "rejects")}}
        for r in out.get("files", [])
    ]
    if rows:
        columns = ["input", "output", "rows", "flagged", "rejected", "rejects", "seconds"]
        console.print(table(f"scored with version {out['model_version']} → {where}", rows, columns))
    console.print(table("totals", out.get("totals", {})))


monitor_app = typer.Typer(
    help="Monitoring: judge the champion on new data (no sub-command), or show the history of the runs.",
    invoke_without_command=True,
)


@monitor_app.callback()
@handle_errors
def monitor(ctx: typer.Context, workspace: WorkspaceOpt = ".") -> None:
    """Compare current data with the champion's reference; write drift, performance and the decision."""
    if ctx.invoked_subcommand is not None:
        return
    settings, storage = open_workspace(workspace)
    print_outputs("monitoring", run_one(settings, storage, "monitor", workspace))


@monitor_app.command("history")
@handle_errors
def monitor_history(
    workspace: WorkspaceOpt = ".",
    last: Annotated[int, typer.Option(help="Newest runs to show.")] = 20,
    all_columns: Annotated[bool, typer.Option("--all", help="Every scalar column, not the summary.")] = False,
) -> None:
    """Every monitoring run's figures, oldest first: drift, realized and estimated AP, alerts, decision."""
    from fraudops.monitoring import history

    _, storage = open_workspace(workspace)
    table_ = history.read(storage)
    if not table_.height:
        console.print(f"no monitoring runs yet in {storage.uri()} (run `fraudops monitor`)")
        return
    scalar = [c for c in table_.columns if not table_.schema[c].is_nested()]
    columns = scalar if all_columns else [c for c in history.SUMMARY_COLUMNS if c in table_.columns]
    short = {c: c.replace("estimated_average_precision", "est. AP").replace("_", " ") for c in columns}
    short |= {"realized_average_precision": "realized AP", "retraining_required": "retrain"}
    shown = [short.get(c, c) for c in columns]
    rows = [dict(zip(shown, r, strict=True)) for r in table_.tail(last).select(columns).rows()]
    for r in rows:
        r["monitored at"] = when(r.get("monitored at"))
    console.print(table(f"monitoring history ({table_.height} runs)", rows, shown))
