"""``fraudops demo``: the whole loop on simulated data, narrated (the staging is :mod:`fraudops.demo`)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from fraudops.cli.base import finish, handle_errors
from fraudops.cli.render import ExecutionPrinter, console, duration, fmt, spinner, table
from fraudops.config import Settings
from fraudops.workspace.layout import PREDICTIONS, REPORT_HTML
from fraudops.workspace.storage import Storage


def _champion_line(settings: Settings) -> str:
    from fraudops.tracking import registry

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


def _result(record: dict[str, Any], name: str) -> Any:
    from fraudops.pipeline.graph import PIPELINE

    step = next((s for s in record["steps"] if s["name"] == name and s.get("outputs")), None)
    return None if step is None else PIPELINE.result(name, step["outputs"])


def _report(record: dict[str, Any], settings: Settings, storage: Storage) -> None:
    """What an execution of the demo did, in a few lines."""
    from fraudops.batch.step import BatchResult
    from fraudops.monitoring.step import MonitorResult

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("champion", _champion_line(settings))
    batch = _result(record, "batch_inference")
    if isinstance(batch, BatchResult):
        tot = batch.totals
        share = f" ({tot.rows_flagged / tot.rows_scored:.1%})" if tot.rows_scored else ""
        grid.add_row(
            "batch scoring",
            f"{fmt(tot.files)} file(s), {fmt(tot.rows_scored)} transactions scored, {fmt(tot.rows_flagged)} "
            f"flagged as fraud{share} → {storage.uri(PREDICTIONS)}",
        )
    mon = _result(record, "monitor")
    if isinstance(mon, MonitorResult):
        grid.add_row(
            "data judged",
            f"{fmt(mon.n_rows)} rows ({fmt(mon.n_labelled)} labelled) from {mon.window_start} to "
            f"{mon.window_end}; reference: {fmt(mon.reference_rows)} rows, {mon.reference_start} to "
            f"{mon.reference_end}",
        )
        parts = [f"decision [bold]{mon.retraining_required}[/]"]
        if mon.n_features and mon.status == "ok":
            parts.append(f"{mon.n_drifted} of {mon.n_features} features drifted")
        if mon.score_psi is not None:
            parts.append(f"score PSI {mon.score_psi:.3f}")
        if mon.performance_status != "ok":
            parts.append(f"performance: {mon.performance_status}")
        elif mon.current_average_precision is not None:
            parts.append(f"AP on current data {mon.current_average_precision:.3f}")
        grid.add_row("monitoring", ", ".join(parts))
        for reason in mon.reasons:
            grid.add_row("", f"• {reason}")
        for note in mon.notes:
            grid.add_row("", f"[dim]· {note}[/]")
        grid.add_row("report", mon.report)
    console.print(grid, highlight=False)


@handle_errors
def demo(
    workspace: Annotated[str, typer.Argument(help="Folder to create (empty or absent).")] = "demo-workspace",
    force: Annotated[bool, typer.Option(help="Reset an existing workspace first.")] = False,
    customers: Annotated[int, typer.Option(help="Simulated cards (terminals: twice as many).")] = 5000,
    trees: Annotated[int, typer.Option(help="XGBoost trees at most (early stopping picks fewer).")] = 150,
) -> None:
    """The whole loop on simulated data, from nothing: go-live, drift, monitoring says YES, retraining."""
    from fraudops import demo as d
    from fraudops.pipeline.executor import execute
    from fraudops.pipeline.trigger import trigger
    from fraudops.promotion.champion import ChampionResult

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
        finish(record, workspace)
        return record

    printer = ExecutionPrinter()
    console.rule("[bold]1. go-live[/]: train on the history, promote, score the first batch, monitor")
    console.print(table("data", d.stage_go_live(storage, settings, df, t)))
    inp = {"run": "all", "triggered_by": "demo", "reason": "go-live"}
    rec = ok(execute(settings, storage, inp, on_event=printer))
    _report(rec, settings, storage)

    console.rule("[bold]2. four weeks later[/]: the weekly schedule scores the new batch and monitors")
    console.print(table("data", d.stage_later(storage, settings, df, t)))
    inp = {"run": "batch_inference", "triggered_by": "schedule", "reason": "weekly scoring and monitoring"}
    rec = ok(execute(settings, storage, inp, on_event=printer))
    _report(rec, settings, storage)

    console.rule("[bold]3. retraining trigger[/] (the seed's Lambda): acts on the decision")
    result = trigger(settings, storage, on_event=printer)
    if result["action"] == "started":
        rec = ok(result["execution"])
        sel = _result(rec, "select_champion")
        if isinstance(sel, ChampionResult):
            verdict = "[green]promoted[/]" if sel.decision == "promoted" else f"[yellow]{sel.decision}[/]"
            console.print(f"new challenger version {sel.challenger_version}: {verdict}", highlight=False)
            for reason in sel.reasons:
                console.print(f"  • {reason}", highlight=False)
        _report(rec, settings, storage)
    else:
        console.print("monitoring did not ask for retraining: the trigger has nothing to do")

    console.rule(f"[bold]done in {duration(time.monotonic() - started)}[/]")
    w = workspace
    for label, value in (
        ("history", f"fraudops executions list -w {w}   ·   fraudops executions show ID -w {w}"),
        ("monitoring report", storage.uri(REPORT_HTML)),
        ("MLflow UI", f"fraudops ui -w {w}   (then http://127.0.0.1:5000)"),
        ("scoring endpoint", f"fraudops serve -w {w}"),
        ("dashboard", f"fraudops dashboard -w {w}   (then http://127.0.0.1:8090)"),
        ("start over", f"fraudops demo {w} --force   ·   fraudops reset -w {w}"),
    ):
        console.print(f"  {label:<18} {value}", highlight=False)
