"""The pipeline: the seed's Step Functions state machine, run locally, with its history in MLflow.

Steps, in order: train → register → select_champion → batch_inference → monitor. An execution's input is
the seed's ``{"run": X}``: X = ``all`` or a step name chooses where it starts, and it runs to the end
(``"only": true`` runs that one step). Optional ``triggered_by`` and ``reason`` are recorded.

* **History** — one MLflow parent run per execution (tags ``fraudops.execution=true``, its id, input,
  triggered_by, status), the steps' own runs nested under it (each step function opens its run with
  ``parent_run_id``); per step status/start/duration/outputs/error as tags and metrics on the parent, the
  whole record as the artifact ``execution.json`` and the captured logging as ``logs/execution.log``, both
  rewritten after every step, so a crash keeps everything up to the last finished step.
* **One execution at a time per workspace** — :class:`WorkspaceLock`, a file ``.fraudops/lock.json`` (pid,
  host, execution id, heartbeat refreshed by a background thread). A holder is stale when its process is gone
  (same host) or its heartbeat is older than ``stale_after``; a stale lock is taken over and the execution
  it belonged to is recorded ABORTED.
* **Failures** — a failing step marks the step and the execution FAILED with the error; outputs of earlier
  steps stay (every workspace write is atomic, see :mod:`fraudops.storage`); ``--from STEP`` or
  ``--resume ID`` continue. Transient errors (I/O, network, tracking server 5xx, a locked SQLite file) are
  retried ``pipeline.retries`` times with exponential backoff from ``pipeline.retry_backoff`` seconds; user
  errors (:class:`FraudopsError`) never are. Ctrl-C or SIGTERM ends the execution ABORTED.
* **Trigger** — :func:`trigger` is the seed's Lambda + second state machine: reads the monitor's
  ``retrain_decision.csv`` and on YES starts ``{"run": "all", "triggered_by": "monitoring", "reason":
  "auto_retraining"}``, once per decision (remembered in ``trigger_state.json`` beside the CSV).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import importlib
import io
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fraudops import __version__
from fraudops.config import FraudopsError, Settings
from fraudops.storage import Storage, StorageError

log = logging.getLogger("fraudops.pipeline")

STEPS: list[tuple[str, str]] = [
    ("train", "fraudops.train:train_step"),
    ("register", "fraudops.registry:register_step"),
    ("select_champion", "fraudops.registry:select_champion_step"),
    ("batch_inference", "fraudops.batch:batch_step"),
    ("monitor", "fraudops.monitor:monitor_step"),
]
"""(name, "module:function") in execution order; resolved when a step runs (tests substitute fakes)."""

ALL = "all"
INPUT_KEYS = ("run", "triggered_by", "reason", "only")

SUCCEEDED, FAILED, ABORTED, RUNNING, PENDING = "SUCCEEDED", "FAILED", "ABORTED", "RUNNING", "PENDING"
LOCK_FILE = ".fraudops/lock.json"
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 120.0
DECISION_DIR = "monitoring_outputs/retraining_decision"
DECISION_FILE = f"{DECISION_DIR}/retrain_decision.csv"
TRIGGER_STATE = f"{DECISION_DIR}/trigger_state.json"
TRIGGER_INPUT = {"run": "all", "triggered_by": "monitoring", "reason": "auto_retraining"}

EXECUTION_FLAG, EXECUTION_ID = "fraudops.execution", "fraudops.execution_id"
TAG_MAX = 5000  # MLflow's limit on a tag value

Event = Callable[[str, dict[str, Any], dict[str, Any] | None], None]
"""on_event(kind, execution, step): kinds execution_started, step_started, step_retry, step_finished,
execution_finished; and ("decision", decision, None) from :func:`trigger` before it acts."""


class LockHeldError(FraudopsError):
    """Another execution holds the workspace."""


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM during an execution."""


# ------------------------------------------------------------------------------------- input


def step_names() -> list[str]:
    return [name for name, _ in STEPS]


def entry_points() -> list[str]:
    return [ALL, *step_names()]


def _valid_values() -> str:
    return ", ".join(entry_points())


def parse_input(text: str) -> dict[str, Any]:
    """``--input`` value: JSON text, ``@file.json`` or the path of a JSON file; validated."""
    return validate_input(*read_input(text))


def read_input(text: str) -> tuple[Any, str]:
    """``--input`` value: JSON text, ``@file.json`` or the path of a JSON file → (parsed JSON, its source)."""
    raw = text.strip()
    source = "--input"
    path: Path | None = None
    if raw.startswith("@"):
        path = Path(raw[1:])
    elif raw and raw[0] not in '{["' and Path(raw).is_file():
        path = Path(raw)
    if path is not None:
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as e:
            raise FraudopsError(f"--input: cannot read {path}: {e.strerror or e}") from e
        source = str(path)
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        hint = "" if path else " (or give @FILE / the path of a JSON file)"
        raise FraudopsError(
            f"{source} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}{hint}; "
            f'expected e.g. {{"run": "all"}}'
        ) from e
    return obj, source


def validate_input(obj: Any, source: str = "execution input") -> dict[str, Any]:
    """The seed's ``{"run": X}``; a missing or unknown ``run`` is an error (the seed fell through)."""
    if not isinstance(obj, dict):
        raise FraudopsError(f'{source} must be a JSON object like {{"run": "all"}}, got {type(obj).__name__}')
    unknown = sorted(set(obj) - set(INPUT_KEYS))
    if unknown:
        raise FraudopsError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(INPUT_KEYS)})")
    if "run" not in obj:
        raise FraudopsError(f'{source} has no "run" key: give {{"run": X}} with X one of {_valid_values()}')
    run = obj["run"]
    if not isinstance(run, str) or run not in entry_points():
        raise FraudopsError(
            f'{source}: unknown "run" value {json.dumps(run)}: expected one of {_valid_values()}'
        )
    for key in ("triggered_by", "reason"):
        if key in obj and not isinstance(obj[key], str):
            raise FraudopsError(f"{source}: {key} must be a string, got {json.dumps(obj[key])}")
    if "only" in obj and not isinstance(obj["only"], bool):
        raise FraudopsError(f"{source}: only must be true or false, got {json.dumps(obj['only'])}")
    if obj.get("only") and run == ALL:
        raise FraudopsError(f'{source}: "only" needs a step name, not "all"')
    return dict(obj)


def plan(inp: dict[str, Any]) -> list[str]:
    """The steps an input runs, in order."""
    names = step_names()
    run = inp["run"]
    if run == ALL:
        return names
    return [run] if inp.get("only") else names[names.index(run) :]


def resolve(name: str) -> Callable[..., dict[str, Any]]:
    target = dict(STEPS)[name]
    module, _, func = target.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise FraudopsError(f"step {name}: {target} is not available in this installation ({e})") from e


# ------------------------------------------------------------------------------------- retries


_TRANSIENT_WORDS = (
    "max retries exceeded",
    "connection refused",
    "connection reset",
    "connection aborted",
    "connectionerror",
    "timed out",
    "timeout",
    "temporarily unavailable",
    "database is locked",
    "service unavailable",
    "bad gateway",
    "gateway timeout",
    "too many requests",
)
_PERMANENT_OS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def _transient_one(e: BaseException) -> bool:
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    if isinstance(e, (FraudopsError, StorageError, *_PERMANENT_OS)):
        return False
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    if type(e).__name__ == "MlflowException":
        code = getattr(e, "get_http_status_code", lambda: 0)()
        text = str(e).lower()
        return code in (429, 502, 503, 504) or any(w in text for w in _TRANSIENT_WORDS)
    if type(e).__name__ == "OperationalError":  # sqlalchemy / sqlite3
        return "locked" in str(e).lower() or "unable to open" in str(e).lower()
    return isinstance(e, OSError)


def is_transient(e: BaseException) -> bool:
    """An error worth retrying: I/O, network, a tracking server's 5xx or a busy SQLite file — anywhere in the
    ``raise … from`` chain. User errors (FraudopsError) without such a cause never are."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if _transient_one(cur):
            return True
        cur = cur.__cause__
    return False


def with_retries(
    fn: Callable[[], Any],
    settings: Settings,
    what: str,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Any, int]:
    """fn() retried on transient errors; returns (result, attempts)."""
    retries, backoff = settings.pipeline.retries, settings.pipeline.retry_backoff
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(), attempt
        except Exception as e:
            if attempt > retries or not is_transient(e):
                if attempt > 1:
                    e.add_note(f"(gave up after {attempt} attempts)")
                raise
            delay = backoff * 2 ** (attempt - 1)
            log.warning(
                "%s: transient error (attempt %d of %d), retrying in %.1f s: %s: %s",
                what,
                attempt,
                retries + 1,
                delay,
                type(e).__name__,
                e,
            )
            if on_retry:
                on_retry(attempt, e, delay)
            sleep(delay)


# ------------------------------------------------------------------------------------- lock


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(t: dt.datetime | None = None) -> str:
    return (t or _now()).isoformat(timespec="seconds").replace("+00:00", "Z")


def _proc_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid from the holder."""
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether a process of this host is running (a zombie or a reused pid counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    return not (start and (now_start := _proc_start(pid)) and now_start != start)


class WorkspaceLock:
    """One execution at a time per workspace: a lock file holding pid, host, execution id and a heartbeat.

    Locally the file is created with ``link(2)`` from a complete temporary file, so exactly one contender
    wins and nobody reads a half-written lock; on an object store it is best effort (write, then re-read to
    check we won). A holder is stale when, on this host, its process is gone, or when its heartbeat is older
    than ``stale_after`` seconds (any host); a stale lock is taken over (``taken_over`` = its content).
    """

    def __init__(
        self,
        storage: Storage,
        execution_id: str,
        *,
        timeout: float = 0.0,
        stale_after: float = STALE_SECONDS,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.storage = storage
        self.execution_id = execution_id
        self.timeout = timeout
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.token = uuid.uuid4().hex
        self.taken_over: dict[str, Any] | None = None
        self.held = False
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- content
    def _content(self) -> dict[str, Any]:
        now = _now()
        return {
            "execution_id": self.execution_id,
            "pid": os.getpid(),
            "pid_start": _proc_start(os.getpid()),
            "hostname": socket.gethostname(),
            "token": self.token,
            "acquired_at": getattr(self, "_acquired_at", _iso(now)),
            "heartbeat": _iso(now),
            "heartbeat_epoch": now.timestamp(),
        }

    def read(self) -> dict[str, Any] | None:
        """The current holder, or None (an unreadable file counts as a holder of unknown age)."""
        try:
            data = self.storage.read_json(LOCK_FILE)
        except (StorageError, FileNotFoundError):
            return None
        except (ValueError, OSError):
            return {"unreadable": True}
        return data if isinstance(data, dict) else {"unreadable": True}

    def stale_reason(self, holder: dict[str, Any]) -> str | None:
        """Why a holder is stale, or None when it must be respected."""
        age = time.time() - float(holder.get("heartbeat_epoch") or 0)
        pid = holder.get("pid")
        if (
            holder.get("hostname") == socket.gethostname()
            and isinstance(pid, int)
            and not pid_alive(pid, holder.get("pid_start"))
        ):
            return f"process {pid} on this host is gone"
        if holder.get("unreadable"):
            with contextlib.suppress(Exception):
                age = time.time() - self.storage.fs.info(self.storage.path(LOCK_FILE)).get("mtime", 0)
        if age > self.stale_after:
            return f"no heartbeat for {age:.0f} s (stale after {self.stale_after:.0f} s)"
        return None

    # -- create / remove
    def _try_create(self) -> bool:
        self._acquired_at = _iso()
        data = (json.dumps(self._content(), indent=2) + "\n").encode()
        if self.storage.is_local:
            path = Path(self.storage.path(LOCK_FILE))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".lock.json.tmp-{self.token}"
            tmp.write_bytes(data)
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        if self.storage.exists(LOCK_FILE):
            return False
        self.storage.write_bytes(LOCK_FILE, data)
        time.sleep(0.2)
        holder = self.read()
        return bool(holder and holder.get("token") == self.token)

    def _remove_stale(self, holder: dict[str, Any]) -> None:
        """Remove the lock only if it is still the stale one we judged (not a fresh lock in between)."""
        if not self.storage.is_local:
            current = self.read()
            if current == holder or (current or {}).get("token") == holder.get("token"):
                self.storage.delete(LOCK_FILE)
            return
        path = Path(self.storage.path(LOCK_FILE))
        aside = path.parent / f".lock.json.stale-{uuid.uuid4().hex}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {"unreadable": True}
        if holder.get("unreadable") or moved.get("token") == holder.get("token"):
            aside.unlink(missing_ok=True)
            return
        with contextlib.suppress(FileExistsError):  # not the one we judged: put it back
            os.link(aside, path)
        aside.unlink(missing_ok=True)

    # -- public
    def acquire(self) -> WorkspaceLock:
        deadline = time.monotonic() + self.timeout
        while True:
            if self._try_create():
                self.held = True
                self._start_heartbeat()
                return self
            holder = self.read()
            if holder is None:
                continue
            reason = self.stale_reason(holder)
            if reason:
                log.warning(
                    "taking over a stale workspace lock of execution %s: %s",
                    holder.get("execution_id"),
                    reason,
                )
                self._remove_stale(holder)
                self.taken_over = {**holder, "stale_reason": reason}
                continue
            if time.monotonic() >= deadline:
                raise LockHeldError(self.describe_holder(holder))
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def describe_holder(self, holder: dict[str, Any]) -> str:
        if holder.get("unreadable"):
            return (
                f"the workspace is locked ({self.storage.uri(LOCK_FILE)} is unreadable); if no fraudops "
                "execution is running, delete that file"
            )
        age = time.time() - float(holder.get("heartbeat_epoch") or 0)
        waited = f" (waited {self.timeout:g} s)" if self.timeout else ""
        return (
            f"another execution is running in this workspace{waited}: execution {holder.get('execution_id')} "
            f"(pid {holder.get('pid')} on {holder.get('hostname')}, started {holder.get('acquired_at')}, "
            f"heartbeat {age:.0f} s ago). Wait for it to finish (`fraudops executions list`), or set "
            f"pipeline.lock_timeout to wait automatically; a crashed holder is taken over once its process "
            f"is gone or its heartbeat is older than {self.stale_after:.0f} s"
        )

    def refresh(self) -> bool:
        """Rewrite the heartbeat if we still hold the lock; False when it was taken from us."""
        holder = self.read()
        if not holder or holder.get("token") != self.token:
            if not self.lost:
                log.error("the workspace lock was taken over by another process (%s)", holder)
            self.lost = True
            return False
        self.storage.write_json(LOCK_FILE, self._content())
        return True

    def _start_heartbeat(self) -> None:
        if self.heartbeat <= 0:
            return
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.heartbeat):
                try:
                    if not self.refresh():
                        return
                except Exception as e:  # keep beating through a transient storage error
                    log.warning("lock heartbeat failed: %s", e)

        self._thread = threading.Thread(target=beat, name="fraudops-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if not self.held:
            return
        self.held = False
        holder = self.read()
        if holder and holder.get("token") == self.token:
            self.storage.delete(LOCK_FILE)

    def __enter__(self) -> WorkspaceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------------- history


def new_execution_id() -> str:
    return uuid.uuid4().hex


def _clip(text: str, n: int = TAG_MAX) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _json(obj: Any) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"))


def _safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class History:
    """Executions as MLflow runs (the seed's Step Functions console, without a second database)."""

    def __init__(self, settings: Settings) -> None:
        from fraudops import registry

        self.settings = settings
        self.client = registry.client(settings)
        self.experiment_id = registry.experiment_id(settings)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return with_retries(fn, self.settings, f"history: {what}")[0]

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
                run_id, json.dumps(_safe(record), indent=2) + "\n", "execution.json"
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
            "start": _iso(dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.UTC)),
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


def lock_holder(storage: Storage) -> dict[str, Any] | None:
    """The workspace lock's content plus ``stale`` (None when nobody holds it)."""
    lock = WorkspaceLock(storage, "", heartbeat=0)
    holder = lock.read()
    return None if holder is None else {**holder, "stale": lock.stale_reason(holder) is not None}


def effective_status(record: dict[str, Any], holder: dict[str, Any] | None) -> str:
    """RUNNING only while its lock is held (``holder`` from :func:`lock_holder`); otherwise it died."""
    if record.get("status") == RUNNING and (
        not holder or holder.get("stale") or holder.get("execution_id") != record.get("id")
    ):
        return "ABORTED (lost)"
    return str(record.get("status"))


# ------------------------------------------------------------------------------------- execution


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
    previous: dict[str, dict] | None = None,
    lock: WorkspaceLock | None = None,
    on_event: Event | None = None,
) -> dict[str, Any]:
    """Run an execution to its end; returns its record (status SUCCEEDED, FAILED or ABORTED).

    Raises only before anything runs (bad input, workspace locked, tracking store unreachable). ``previous``
    seeds the outputs of earlier steps (``--resume``); ``lock`` is an already held workspace lock.
    """
    inp = validate_input(inp)
    names = plan(inp)
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
        return _run(settings, storage, inp, names, execution_id, history, previous or {}, emit)
    finally:
        if own_lock:
            lock.release()


def _run(
    settings: Settings,
    storage: Storage,
    inp: dict[str, Any],
    names: list[str],
    execution_id: str,
    history: History,
    previous: dict[str, dict],
    emit: Event,
) -> dict[str, Any]:
    started = time.monotonic()
    record: dict[str, Any] = {
        "id": execution_id,
        "input": inp,
        "triggered_by": inp.get("triggered_by", "manual"),
        "reason": inp.get("reason"),
        "status": RUNNING,
        "start": _iso(),
        "end": None,
        "duration_s": None,
        "error": None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "fraudops_version": __version__,
        "workspace": storage.uri(),
        "steps": [_step_record(n) for n in names],
        "previous_outputs": sorted(previous) or None,
    }
    with _LogCapture() as capture, _sigterm_raises():
        try:
            record["run_id"] = history.create(record)
            log.info("execution %s started: input %s, steps %s", execution_id, _json(inp), " → ".join(names))
            history.update(record, capture.text())
            emit("execution_started", record, None)
            outputs: dict[str, dict] = dict(previous)
            for step in record["steps"]:
                if not _run_step(settings, storage, record, step, outputs, history, capture, emit):
                    break
            else:
                record["status"] = SUCCEEDED
        except Exception as e:  # recording the history failed for good (steps' own errors are caught)
            record["status"], record["error"] = FAILED, f"{type(e).__name__}: {e}"
            for s in record["steps"]:
                if s["status"] == RUNNING:
                    s.update(status=FAILED, error=record["error"], end=_iso())
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
                        end=_iso(),
                        duration_s=round(time.monotonic() - s.pop("_t0", time.monotonic()), 3),
                    )
            log.warning("execution %s aborted: %s", execution_id, what)
        record["end"] = _iso()
        record["duration_s"] = round(time.monotonic() - started, 3)
        for s in record["steps"]:
            s.pop("_t0", None)
        log.info("execution %s %s in %.1f s", execution_id, record["status"], record["duration_s"])
        if "run_id" in record:
            with contextlib.suppress(Exception):
                history.finish(record, capture.text())
    emit("execution_finished", record, None)
    return record


def _run_step(
    settings: Settings,
    storage: Storage,
    record: dict[str, Any],
    step: dict[str, Any],
    outputs: dict[str, dict],
    history: History,
    capture: _LogCapture,
    emit: Event,
) -> bool:
    name = step["name"]
    step.update(status=RUNNING, start=_iso(), _t0=time.monotonic())
    log.info("step %s started", name)
    history.update(record, capture.text())
    emit("step_started", record, step)
    fn = None

    def attempt() -> dict[str, Any]:
        nonlocal fn
        step["attempts"] += 1
        fn = fn or resolve(name)
        out = fn(
            settings,
            storage,
            execution_id=record["id"],
            parent_run_id=record["run_id"],
            previous=dict(outputs),
        )
        return dict(out or {})

    try:
        out, _ = with_retries(
            attempt,
            settings,
            f"step {name}",
            on_retry=lambda n, e, d: emit("step_retry", record, {**step, "error": f"{e}"}),
        )
    except Exception as e:
        step.update(
            status=FAILED,
            error=f"{type(e).__name__}: {e}",
            end=_iso(),
            duration_s=round(time.monotonic() - step.pop("_t0"), 3),
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
            step["runs"] = history.step_runs(record["run_id"], name)
        emit("step_finished", record, step)
        return False
    step.update(
        status=SUCCEEDED,
        outputs=_safe(out),
        end=_iso(),
        duration_s=round(time.monotonic() - step.pop("_t0"), 3),
    )
    outputs[name] = out
    log.info("step %s succeeded in %.1f s: %s", name, step["duration_s"], _json(step["outputs"]))
    with contextlib.suppress(Exception):
        step["runs"] = history.step_runs(record["run_id"], name)
    history.update(record, capture.text())
    emit("step_finished", record, step)
    return True


def resume_plan(settings: Settings, id_prefix: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input, previous outputs) to continue an execution at its first step that did not succeed.

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
    previous = {s["name"]: s["outputs"] or {} for s in record["steps"] if s["status"] == SUCCEEDED}
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


# ------------------------------------------------------------------------------------- trigger


def read_decision(storage: Storage) -> dict[str, Any]:
    """The monitor's decision: YES/NO in the first column of the second row (the seed Lambda's rows[1][0])."""
    where = storage.uri(DECISION_FILE)
    if not storage.exists(DECISION_FILE):
        raise FraudopsError(
            f"no retraining decision at {where}: run the monitor step first (`fraudops run --only monitor`)"
        )
    data = storage.read_bytes(DECISION_FILE)
    try:
        rows = [r for r in csv.reader(io.StringIO(data.decode("utf-8-sig"))) if any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise FraudopsError(f"{where} is not a readable CSV: {e}") from e
    if not rows or not rows[0] or rows[0][0].strip().lower() != "retraining_required":
        first = rows[0][0] if rows and rows[0] else "nothing"
        raise FraudopsError(f"{where}: the first column must be retraining_required, found {first!r}")
    if len(rows) < 2 or not rows[1]:
        raise FraudopsError(f"{where}: no decision row under the header")
    value = rows[1][0].strip().upper()
    if value not in ("YES", "NO"):
        raise FraudopsError(f"{where}: retraining_required must be YES or NO, found {rows[1][0]!r}")
    row = dict(zip([h.strip() for h in rows[0]], rows[1], strict=False))
    written = None
    with contextlib.suppress(Exception):
        info = storage.fs.info(storage.path(DECISION_FILE))
        written = (
            info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
        )
    key = hashlib.sha256(data + f"|{written}".encode()).hexdigest()
    reasons = [r.strip() for r in (row.get("reasons") or "").split(";") if r.strip()]
    return {
        "retraining_required": value,
        "reasons": reasons,
        "row": row,
        "key": key,
        "written": str(written),
        "file": where,
    }


def _trigger_state(storage: Storage) -> dict[str, Any]:
    with contextlib.suppress(StorageError, ValueError, FileNotFoundError):
        state = storage.read_json(TRIGGER_STATE)
        if isinstance(state, dict) and isinstance(state.get("handled"), list):
            return state
    return {"handled": []}


def _save_state(storage: Storage, state: dict[str, Any], entry: dict[str, Any]) -> None:
    handled = [h for h in state["handled"] if h.get("key") != entry["key"]] + [entry]
    storage.write_json(TRIGGER_STATE, {"handled": handled[-50:]})


def trigger(
    settings: Settings,
    storage: Storage,
    *,
    force: bool = False,
    on_event: Event | None = None,
    execution_id: str | None = None,
) -> dict[str, Any]:
    """The seed's retraining trigger: act on a YES decision once. Returns what was done.

    ``action``: ``none`` (NO), ``already_handled`` (this decision started an execution before) or
    ``started`` (with ``execution``, the record). The check and the start happen under the workspace lock,
    so two triggers at once cannot both retrain.
    """
    decision = read_decision(storage)
    if on_event:
        on_event("decision", decision, None)
    if decision["retraining_required"] == "NO":
        return {"action": "none", "decision": decision}
    execution_id = execution_id or new_execution_id()
    with WorkspaceLock(storage, execution_id, timeout=settings.pipeline.lock_timeout) as lock:
        decision = read_decision(storage)  # it may have changed while we waited for the lock
        if decision["retraining_required"] == "NO":
            return {"action": "none", "decision": decision}
        state = _trigger_state(storage)
        done = next((h for h in state["handled"] if h.get("key") == decision["key"]), None)
        if done and not force:
            return {"action": "already_handled", "decision": decision, "handled": done}
        entry = {
            "key": decision["key"],
            "decision": "YES",
            "decision_written": decision["written"],
            "execution_id": execution_id,
            "status": RUNNING,
            "handled_at": _iso(),
        }
        _save_state(storage, state, entry)
        try:
            inp = dict(TRIGGER_INPUT)
            record = execute(settings, storage, inp, execution_id=execution_id, lock=lock, on_event=on_event)
        except BaseException:  # nothing ran (e.g. tracking store unreachable): the decision is not acted on
            storage.write_json(TRIGGER_STATE, state)
            raise
        _save_state(storage, _trigger_state(storage), {**entry, "status": record["status"]})
    return {"action": "started", "decision": decision, "execution": record}


# ------------------------------------------------------------------------------------- reset


RESET_PATHS = (
    "data",
    "prod_inputs",
    "prod_outputs",
    "monitoring_inputs",
    "monitoring_outputs",
    "mlflow.db",
    "mlflow.db-journal",
    "mlflow.db-wal",
    "mlflow.db-shm",
    "mlruns",
)


def reset_targets(storage: Storage) -> list[str]:
    """What `fraudops reset` deletes: data, outputs, the workspace's MLflow store and artifacts."""
    return [rel for rel in RESET_PATHS if storage.exists(rel)]


def reset(settings: Settings, storage: Storage) -> list[str]:
    """Empty a workspace (keeping fraudops.yaml) — the seed's manual "clean up MLflow" procedure.

    Refused while an execution holds the workspace. Returns what was deleted. A tracking store outside the
    workspace (registry.tracking_uri) is left alone.
    """
    targets = reset_targets(storage)
    with WorkspaceLock(storage, "reset", timeout=0):
        for rel in targets:
            storage.delete(rel, recursive=True)
    storage.delete(".fraudops", recursive=True)
    storage.init_layout()
    return targets
