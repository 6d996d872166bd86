"""Executions as MLflow runs (the seed's Step Functions console, without a second database).

One parent run per execution (tags ``fraudops.execution=true``, its id, input, triggered_by, status), the
steps' own runs nested under it; per step status/start/duration/outputs/error as tags and metrics on the
parent, the whole record as the artifact ``execution.json`` and the captured logging as
``logs/execution.log``, both rewritten after every step, so a crash keeps everything up to the last
finished step.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fraudops import __version__
from fraudops.config import Settings
from fraudops.errors import FraudopsError
from fraudops.tracking.client import call, client, experiment_id, json_safe

SUCCEEDED, FAILED, ABORTED, RUNNING, PENDING = "SUCCEEDED", "FAILED", "ABORTED", "RUNNING", "PENDING"
EXECUTION_FLAG, EXECUTION_ID = "fraudops.execution", "fraudops.execution_id"
TAG_MAX = 5000  # MLflow's limit on a tag value


def now_iso(t: dt.datetime | None = None) -> str:
    return (t or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_execution_id() -> str:
    return uuid.uuid4().hex


def _clip(text: str, n: int = TAG_MAX) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _json(obj: Any) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"))


class History:
    """Executions as MLflow runs (the seed's Step Functions console, without a second database)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = client(settings)
        self.experiment_id = experiment_id(settings)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return call(self.settings, f"history: {what}", fn)

    def create(self, record: dict[str, Any]) -> str:
        tags = {
            EXECUTION_FLAG: "true",
            EXECUTION_ID: record["id"],
            "fraudops.input": _clip(_json(record["input"])),
            "fraudops.triggered_by": record["triggered_by"],
            "fraudops.reason": record.get("reason") or "",
            "fraudops.status": record["status"],
            "fraudops.steps": ",".join(s["name"] for s in record["steps"]),
            "fraudops.version": __version__,
            "fraudops.host": f"{record['host']}:{record['pid']}",
        }
        run = self._call(
            "create run",
            lambda: self.client.create_run(
                self.experiment_id, run_name=f"execution-{record['id'][:8]}", tags=tags
            ),
        )
        return str(run.info.run_id)

    def update(self, record: dict[str, Any], log_text: str | None = None) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = record["run_id"]
        tags = {"fraudops.status": record["status"]}
        if record.get("error"):
            tags["fraudops.error"] = _clip(record["error"])
        metrics = []
        ts = int(time.time() * 1000)
        for s in record["steps"]:
            p = f"fraudops.step.{s['name']}"
            tags[f"{p}.status"] = s["status"]
            if s.get("start"):
                tags[f"{p}.start"] = s["start"]
            if s.get("outputs") is not None:
                tags[f"{p}.outputs"] = _clip(_json(s["outputs"]))
            if s.get("error"):
                tags[f"{p}.error"] = _clip(s["error"])
            if s.get("duration_s") is not None:
                metrics.append(Metric(f"step.{s['name']}.duration_s", float(s["duration_s"]), ts, 0))
        if record.get("duration_s") is not None:
            metrics.append(Metric("execution.duration_s", float(record["duration_s"]), ts, 0))
        run_tags = [RunTag(k, v) for k, v in tags.items()]
        self._call("log", lambda: self.client.log_batch(run_id, metrics=metrics, tags=run_tags))
        self._call(
            "execution.json",
            lambda: self.client.log_text(
                run_id, json.dumps(json_safe(record), indent=2) + "\n", "execution.json"
            ),
        )
        if log_text is not None:
            self._call("logs", lambda: self.client.log_text(run_id, log_text, "logs/execution.log"))

    def finish(self, record: dict[str, Any], log_text: str | None = None) -> None:
        self.update(record, log_text)
        lines = [
            f"**{record['status']}** — input `{_json(record['input'])}`, "
            f"triggered by {record['triggered_by']}",
            "",
        ]
        lines += [
            f"- {s['name']}: {s['status']}" + (f" — {s['error']}" if s.get("error") else "")
            for s in record["steps"]
        ]
        mlflow_status = {SUCCEEDED: "FINISHED", FAILED: "FAILED"}.get(record["status"], "KILLED")
        self._call(
            "note",
            lambda: self.client.set_tag(record["run_id"], "mlflow.note.content", _clip("\n".join(lines))),
        )
        self._call("terminate", lambda: self.client.set_terminated(record["run_id"], status=mlflow_status))

    def step_runs(self, parent_run_id: str, step: str) -> list[str]:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`fraudops.step` = "
            f"'{step}'",
            max_results=20,
        )
        return [str(r.info.run_id) for r in runs]

    # -- reading
    def search(self, limit: int = 20, id_prefix: str | None = None) -> list[Any]:
        flt = f"tags.`{EXECUTION_FLAG}` = 'true'"
        if id_prefix:
            if not all(c in "0123456789abcdef" for c in id_prefix.lower()):
                raise FraudopsError(f"{id_prefix!r} is not an execution id (hexadecimal)")
            flt += f" and tags.`{EXECUTION_ID}` LIKE '{id_prefix.lower()}%'"
        return list(
            self.client.search_runs(
                [self.experiment_id],
                filter_string=flt,
                order_by=["attributes.start_time DESC"],
                max_results=limit,
            )
        )

    def find(self, id_prefix: str) -> Any:
        runs = self.search(limit=10, id_prefix=id_prefix)
        if not runs:
            raise FraudopsError(f"no execution with id {id_prefix!r} (see `fraudops executions list`)")
        if len(runs) > 1:
            ids = ", ".join(r.data.tags[EXECUTION_ID][:12] for r in runs)
            raise FraudopsError(f"{id_prefix!r} matches several executions ({ids}): give more characters")
        return runs[0]

    def record(self, run: Any, *, full: bool = True) -> dict[str, Any]:
        """The stored execution.json of a run; with ``full=False`` (or when the artifact is missing) the
        record rebuilt from the run's tags (outputs clipped to the tag size)."""
        if full:
            with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(Exception):
                path = self.client.download_artifacts(run.info.run_id, "execution.json", tmp)
                return json.loads(Path(path).read_text())
        tags = run.data.tags
        steps = []
        for name in (tags.get("fraudops.steps") or "").split(","):
            if not name:
                continue
            p = f"fraudops.step.{name}"
            outputs = tags.get(f"{p}.outputs")
            with contextlib.suppress(ValueError, TypeError):
                outputs = json.loads(outputs) if outputs else None
            steps.append(
                {
                    "name": name,
                    "status": tags.get(f"{p}.status", PENDING),
                    "start": tags.get(f"{p}.start"),
                    "duration_s": run.data.metrics.get(f"step.{name}.duration_s"),
                    "outputs": outputs,
                    "error": tags.get(f"{p}.error"),
                }
            )
        inp: Any = tags.get("fraudops.input")
        with contextlib.suppress(ValueError, TypeError):
            inp = json.loads(inp)
        return {
            "id": tags.get(EXECUTION_ID),
            "run_id": run.info.run_id,
            "input": inp,
            "triggered_by": tags.get("fraudops.triggered_by"),
            "reason": tags.get("fraudops.reason"),
            "status": tags.get("fraudops.status"),
            "error": tags.get("fraudops.error"),
            "start": now_iso(dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC)),
            "duration_s": run.data.metrics.get("execution.duration_s"),
            "steps": steps,
        }

    def log_text(self, run_id: str) -> str | None:
        with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(Exception):
            return Path(self.client.download_artifacts(run_id, "logs/execution.log", tmp)).read_text()
        return None

    def mark_lost(self, holder: dict[str, Any]) -> None:
        """Record ABORTED for the execution of a stale lock (its process died without recording it)."""
        exec_id = holder.get("execution_id")
        if not exec_id:
            return
        with contextlib.suppress(Exception):
            run = self.find(exec_id)
            if run.data.tags.get("fraudops.status") != RUNNING:
                return
            record = self.record(run)
            reason = f"process ended without recording a status ({holder.get('stale_reason')})"
            record.update(status=ABORTED, error=reason)
            for s in record["steps"]:
                if s["status"] == RUNNING:
                    s.update(status=ABORTED, error=reason)
            self.finish(record)
            children = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}' "
                "and attributes.status = 'RUNNING'",
            )
            for child in children:  # the step's own run, left open by the killed process
                self.client.set_terminated(child.info.run_id, status="KILLED")


def effective_status(record: dict[str, Any], holder: dict[str, Any] | None) -> str:
    """RUNNING only while its lock is held (``holder`` from :func:`lock_holder`); otherwise it died."""
    if record.get("status") == RUNNING and (
        not holder or holder.get("stale") or holder.get("execution_id") != record.get("id")
    ):
        return "ABORTED (lost)"
    return str(record.get("status"))
