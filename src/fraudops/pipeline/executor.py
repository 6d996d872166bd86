"""Running an execution: the steps of :data:`~fraudops.pipeline.graph.PIPELINE` in order, under the
workspace lock, recorded in the history.

* **One execution at a time per workspace** — :class:`~fraudops.workspace.lock.WorkspaceLock`; a stale lock
  is taken over and the execution it belonged to is recorded ABORTED.
* **Failures** — a failing step marks the step and the execution FAILED with the error; outputs of earlier
  steps stay (every workspace write is atomic); ``--from STEP`` or ``--resume ID`` continue, the latter
  handing the step the earlier steps' results. Steps are never retried whole (that could duplicate runs or
  versions): each I/O call is retried on transient errors by the step's policy. Ctrl-C or SIGTERM ends the
  execution ABORTED.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from fraudops import __version__, compute, retries
from fraudops.config import Settings
from fraudops.context import Progress, StepContext, StepResult
from fraudops.errors import FraudopsError
from fraudops.pipeline import graph
from fraudops.pipeline.history import (
    ABORTED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    History,
    new_execution_id,
    now_iso,
)
from fraudops.tracking.client import json_safe
from fraudops.workspace.lock import WorkspaceLock
from fraudops.workspace.storage import Storage

log = logging.getLogger("fraudops.pipeline")

Event = Callable[[str, dict[str, Any], dict[str, Any] | None], None]
"""on_event(kind, execution, step): kinds execution_started, step_started, step_finished,
execution_finished; and ("decision", decision, None) from the trigger before it acts."""


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM during an execution."""


def _json(obj: Any) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"))


class _LogCapture:
    """Python logging during an execution, kept in memory for the logs/execution.log artifact."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._level: int | None = None

    def __enter__(self) -> _LogCapture:
        logging.getLogger().addHandler(self.handler)
        pkg = logging.getLogger("fraudops")
        self._level = pkg.level
        if pkg.getEffectiveLevel() > logging.INFO:
            pkg.setLevel(logging.INFO)
        logging.captureWarnings(True)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.captureWarnings(False)
        logging.getLogger().removeHandler(self.handler)
        if self._level is not None:
            logging.getLogger("fraudops").setLevel(self._level)

    def text(self) -> str:
        return self.buffer.getvalue()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread (once; later ones are ignored while cleaning up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise Terminated("SIGTERM")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _step_record(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "status": PENDING,
        "start": None,
        "end": None,
        "duration_s": None,
        "attempts": 0,
        "outputs": None,
        "error": None,
        "runs": [],
    }


def execute(
    settings: Settings,
    storage: Storage,
    inp: dict[str, Any],
    *,
    execution_id: str | None = None,
    previous: dict[str, StepResult] | None = None,
    lock: WorkspaceLock | None = None,
    on_event: Event | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run an execution to its end; returns its record (status SUCCEEDED, FAILED or ABORTED).

    Raises only before anything runs (bad input, workspace locked, tracking store unreachable). ``previous``
    seeds the results of earlier steps (``--resume``); ``lock`` is an already held workspace lock.
    """
    pipeline = graph.PIPELINE
    inp = graph.validate_input(inp, pipeline=pipeline)
    execution_id = execution_id or new_execution_id()
    emit = on_event or (lambda kind, rec, step: None)
    own_lock = lock is None
    if lock is None:
        lock = WorkspaceLock(storage, execution_id, timeout=settings.pipeline.lock_timeout)
        lock.acquire()
    try:
        history = History(settings)
        if lock.taken_over:
            history.mark_lost(lock.taken_over)
        run = _Execution(settings, storage, pipeline, history, emit, progress)
        with compute.session(settings.compute):  # a LocalCluster lives for the execution
            return run(inp, execution_id, dict(previous or {}))
    finally:
        if own_lock:
            lock.release()


class _Execution:
    """One execution's run through its steps (the record is what the history stores)."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        pipeline: graph.Pipeline,
        history: History,
        emit: Event,
        progress: Progress | None,
    ) -> None:
        self.settings, self.storage, self.pipeline = settings, storage, pipeline
        self.history, self.emit, self.progress = history, emit, progress

    def __call__(
        self, inp: dict[str, Any], execution_id: str, results: dict[str, StepResult]
    ) -> dict[str, Any]:
        started = time.monotonic()
        names = self.pipeline.plan(inp)
        record: dict[str, Any] = {
            "id": execution_id,
            "input": inp,
            "triggered_by": inp.get("triggered_by", "manual"),
            "reason": inp.get("reason"),
            "status": RUNNING,
            "start": now_iso(),
            "end": None,
            "duration_s": None,
            "error": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "fraudops_version": __version__,
            "workspace": self.storage.uri(),
            "steps": [_step_record(n) for n in names],
            "previous_outputs": sorted(results) or None,
        }
        with _LogCapture() as capture, _sigterm_raises():
            self.capture = capture
            try:
                record["run_id"] = self.history.create(record)
                log.info(
                    "execution %s started: input %s, steps %s", execution_id, _json(inp), " → ".join(names)
                )
                self.history.update(record, capture.text())
                self.emit("execution_started", record, None)
                for step in record["steps"]:
                    if not self._step(record, step, results):
                        break
                else:
                    record["status"] = SUCCEEDED
            except Exception as e:  # recording the history failed for good (steps' own errors are caught)
                record["status"], record["error"] = FAILED, f"{type(e).__name__}: {e}"
                for s in record["steps"]:
                    if s["status"] == RUNNING:
                        s.update(status=FAILED, error=record["error"], end=now_iso())
                log.error("execution %s failed outside its steps: %s", execution_id, record["error"])
                if "run_id" not in record:
                    raise
            except (KeyboardInterrupt, Terminated) as e:
                what = "SIGTERM" if isinstance(e, Terminated) else "interrupted (Ctrl-C)"
                record["status"], record["error"] = ABORTED, what
                for s in record["steps"]:
                    if s["status"] == RUNNING:
                        s.update(
                            status=ABORTED,
                            error=what,
                            end=now_iso(),
                            duration_s=round(time.monotonic() - s.pop("_t0", time.monotonic()), 3),
                        )
                log.warning("execution %s aborted: %s", execution_id, what)
            record["end"] = now_iso()
            record["duration_s"] = round(time.monotonic() - started, 3)
            for s in record["steps"]:
                s.pop("_t0", None)
            log.info("execution %s %s in %.1f s", execution_id, record["status"], record["duration_s"])
            if "run_id" in record:
                with contextlib.suppress(Exception):
                    self.history.finish(record, capture.text())
        self.emit("execution_finished", record, None)
        return record

    def _step(self, record: dict[str, Any], step: dict[str, Any], results: dict[str, StepResult]) -> bool:
        name = step["name"]
        declared = self.pipeline.step(name)
        step.update(status=RUNNING, start=now_iso(), _t0=time.monotonic(), attempts=1)
        log.info("step %s started", name)
        self.history.update(record, self.capture.text())
        self.emit("step_started", record, step)
        ctx = StepContext(
            self.settings,
            self.storage,
            execution_id=record["id"],
            parent_run_id=record["run_id"],
            handed={n: results[n] for n in declared.consumes if n in results},
            progress=self.progress,
        )
        policy = declared.retry or retries.RetryPolicy(
            self.settings.pipeline.retries, self.settings.pipeline.retry_backoff
        )
        try:
            with retries.using(policy):
                result = declared.run(ctx)
        except Exception as e:
            partial = getattr(e, "result", None)
            step.update(
                status=FAILED,
                error=f"{type(e).__name__}: {e}",
                end=now_iso(),
                duration_s=round(time.monotonic() - step.pop("_t0"), 3),
                outputs=json_safe(partial.model_dump(mode="json"))
                if isinstance(partial, StepResult)
                else None,
            )
            record.update(status=FAILED, error=f"step {name} failed: {type(e).__name__}: {e}")
            level = logging.INFO if isinstance(e, FraudopsError) else logging.ERROR
            log.log(
                level,
                "step %s FAILED: %s: %s\n%s",
                name,
                type(e).__name__,
                e,
                "".join(traceback.format_exception(e)).rstrip(),
            )
            with contextlib.suppress(Exception):
                step["runs"] = self.history.step_runs(record["run_id"], name)
            self.emit("step_finished", record, step)
            return False
        step.update(
            status=SUCCEEDED,
            outputs=result.model_dump(mode="json"),
            end=now_iso(),
            duration_s=round(time.monotonic() - step.pop("_t0"), 3),
        )
        results[name] = result
        log.info("step %s succeeded in %.1f s: %s", name, step["duration_s"], _json(step["outputs"]))
        with contextlib.suppress(Exception):
            step["runs"] = self.history.step_runs(record["run_id"], name)
        self.history.update(record, self.capture.text())
        self.emit("step_finished", record, step)
        return True


def resume_plan(
    settings: Settings, id_prefix: str | None = None
) -> tuple[dict[str, Any], dict[str, StepResult]]:
    """(input, results of earlier steps) to continue an execution at its first step that did not succeed.

    Default: the newest execution that FAILED or was ABORTED.
    """
    history = History(settings)
    if id_prefix:
        run = history.find(id_prefix)
    else:
        runs = [
            r
            for r in history.search(limit=50)
            if r.data.tags.get("fraudops.status") in (FAILED, ABORTED, RUNNING)
        ]
        if not runs:
            raise FraudopsError("no failed or aborted execution to resume")
        run = runs[0]
    record = history.record(run)
    previous = {
        s["name"]: graph.PIPELINE.result(s["name"], s["outputs"] or {})
        for s in record["steps"]
        if s["status"] == SUCCEEDED
    }
    left = [s for s in record["steps"] if s["status"] != SUCCEEDED]
    if not left:
        raise FraudopsError(
            f"execution {record['id'][:8]} has no step left to run (status {record['status']})"
        )
    old = record["input"] if isinstance(record["input"], dict) else {}
    inp = {"run": left[0]["name"], "triggered_by": "resume", "reason": f"resume of execution {record['id']}"}
    if old.get("only"):
        inp["only"] = True
    return inp, previous
