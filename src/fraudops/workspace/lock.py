"""One execution at a time per workspace: a lock file holding pid, host, execution id and a heartbeat.

Locally the file is created with ``link(2)``; on S3 every change is a conditional write that S3 applies
atomically: create with ``If-None-Match: *``, heartbeat, stale takeover and release with ``If-Match`` on the
ETag last seen, so of N contenders exactly one holds the workspace. A holder is stale when, on this host,
its process is gone, or when its heartbeat is older than
``stale_after`` seconds (any host); a stale lock is taken over and the caller learns whose it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fraudops.errors import LockHeldError, StorageError
from fraudops.workspace.layout import LOCK_FILE
from fraudops.workspace.storage import Storage

log = logging.getLogger("fraudops.lock")

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 120.0


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
    wins and nobody reads a half-written lock; on S3 by conditional writes (exactly one wins); on other
    object stores it is best effort (write, then re-read to check we won). A holder is stale when, on this
    host, its process is gone, or when its heartbeat is older
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
        self._etag: str | None = None
        """S3: the ETag of our lock object (heartbeat and release are conditional on it)."""
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
        return self._read_tagged()[0]

    def _read_tagged(self) -> tuple[dict[str, Any] | None, str | None]:
        """The current holder and, on S3, the ETag of the version read (for a conditional takeover)."""
        etag = None
        try:
            if self.storage.is_s3:
                got = self.storage.read_tagged(LOCK_FILE)
                if got is None:
                    return None, None
                raw, etag = got
                data = json.loads(raw)
            else:
                data = self.storage.read_json(LOCK_FILE)
        except (StorageError, FileNotFoundError):
            return None, None
        except (ValueError, OSError):
            return {"unreadable": True}, etag
        return (data if isinstance(data, dict) else {"unreadable": True}), etag

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
                info = self.storage.info(LOCK_FILE)
                written = info.get("mtime") or info.get("LastModified") or 0
                age = time.time() - (written.timestamp() if isinstance(written, dt.datetime) else written)
        if age > self.stale_after:
            return f"no heartbeat for {age:.0f} s (stale after {self.stale_after:.0f} s)"
        return None

    # -- create / remove
    def _data(self) -> bytes:
        return (json.dumps(self._content(), indent=2) + "\n").encode()

    def _try_create(self) -> bool:
        self._acquired_at = _iso()
        data = self._data()
        if self.storage.is_s3:
            self._etag = self.storage.put_if_absent(LOCK_FILE, data)
            return self._etag is not None
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
            holder, etag = self._read_tagged()
            if holder is None:
                continue
            reason = self.stale_reason(holder)
            if reason:
                log.warning(
                    "taking over a stale workspace lock of execution %s: %s",
                    holder.get("execution_id"),
                    reason,
                )
                if self.storage.is_s3 and etag is not None:
                    # replace exactly the version judged stale: a fresh lock in between makes this fail
                    self._etag = self.storage.put_if_match(LOCK_FILE, self._data(), etag)
                    if self._etag is None:
                        continue
                    self.taken_over = {**holder, "stale_reason": reason}
                    self.held = True
                    self._start_heartbeat()
                    return self
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
        if self.storage.is_s3 and self._etag is not None:
            etag = self.storage.put_if_match(LOCK_FILE, self._data(), self._etag)
            if etag is None:
                if not self.lost:
                    log.error("the workspace lock was taken over by another process (%s)", self.read())
                self.lost = True
                return False
            self._etag = etag
            return True
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
        if self.storage.is_s3 and self._etag is not None:
            self.storage.delete_if_match(LOCK_FILE, self._etag)
            return
        holder = self.read()
        if holder and holder.get("token") == self.token:
            self.storage.delete(LOCK_FILE)

    def __enter__(self) -> WorkspaceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(storage: Storage) -> dict[str, Any] | None:
    """The workspace lock's content plus ``stale`` (None when nobody holds it)."""
    lock = WorkspaceLock(storage, "", heartbeat=0)
    holder = lock.read()
    return None if holder is None else {**holder, "stale": lock.stale_reason(holder) is not None}
