"""How the CLI prints: Rich tables, progress, step results and an execution's live progress."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

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

console = Console()
err_console = Console(stderr=True)


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


def when(iso: str | None) -> str:
    """An ISO UTC time as local time, to the second."""
    if not iso:
        return ""
    try:
        when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
        return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, sec = divmod(float(seconds), 60)
    return f"{int(minutes)}m {sec:04.1f}s" if minutes else f"{sec:.1f}s"


def flatten(outputs: dict[str, Any] | None) -> dict[str, Any]:
    """A step's scalar outputs, nested dicts one level deep as ``key.sub`` (lists left out)."""
    flat: dict[str, Any] = {}
    for k, v in (outputs or {}).items():
        if isinstance(v, dict):
            flat.update({f"{k}.{k2}": v2 for k2, v2 in v.items() if not isinstance(v2, dict | list)})
        elif not isinstance(v, list):
            flat[k] = v
    return flat


def print_outputs(title: str, out: dict[str, Any]) -> None:
    """A step's stored outputs: scalars as a table, then reasons (and monitoring notes) as bullets."""
    console.print(table(title, flatten(out)))
    for reason in out.get("reasons") or []:
        console.print(f"  • {reason}", highlight=False)
    for note in out.get("notes") or []:
        console.print(f"  [dim]· {note}[/]", highlight=False)


def brief(outputs: dict[str, Any] | None, n: int = 6) -> str:
    """A step's scalar outputs on one line (ids shortened)."""
    items = []
    for k, v in flatten(outputs).items():
        long_text = isinstance(v, str) and len(v) > 30 and not k.endswith("run_id")
        if v is None or k.startswith("windows") or long_text:
            continue
        if isinstance(v, str) and len(v) == 32 and k.endswith("run_id"):
            v = v[:8]
        items.append(f"{k}={fmt(v)}")
    return ", ".join(items[:n]) + (", …" if len(items) > n else "")


_STATUS_STYLE = {"SUCCEEDED": "green", "FAILED": "red", "ABORTED": "yellow", "RUNNING": "cyan"}


def status(s: str | None) -> str:
    s = s or ""
    return f"[{_STATUS_STYLE.get(s.split(' ')[0], 'white')}]{s}[/]"


class ExecutionPrinter:
    """Prints an execution's progress as it happens (a spinner while a step runs)."""

    def __init__(self) -> None:
        self.status: Any = None

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def __call__(self, kind: str, record: dict[str, Any], step: dict[str, Any] | None) -> None:
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
        elif kind == "step_finished" and step is not None:
            self._stop()
            ok = step["status"] == "SUCCEEDED"
            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            console.print(
                f"  {mark} {step['name']:<16} {status(step['status']):<20} "
                f"{duration(step['duration_s']):>8}  {brief(step['outputs']) if ok else ''}",
                highlight=False,
            )
            if not ok and step.get("error"):
                console.print(f"      [red]{step['error']}[/]", highlight=False)
        elif kind == "execution_finished":
            self._stop()
            console.print(
                f"execution [bold]{short}[/] {status(record['status'])} in {duration(record['duration_s'])}",
                highlight=False,
            )
