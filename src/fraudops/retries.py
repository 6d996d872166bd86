"""Retries of single I/O calls on transient errors (network, a server's 5xx, a busy database).

Whole steps are never retried: a step that failed half-way may have created runs or versions, and running
it again would duplicate them. Each storage or tracking call is retried on its own instead, and the few
calls that create something (a run, a model version) check whether an earlier attempt already did.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from fraudops.errors import FraudopsError

log = logging.getLogger("fraudops.retries")

T = TypeVar("T")

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
    # PostgreSQL behind a tracking server (psycopg's messages, passed on in the server's 500)
    "server closed the connection",
    "terminating connection",
    "could not connect to server",
    "connection is closed",
    "the database system is starting up",
    "the database system is shutting down",
    "could not serialize access",
    "deadlock detected",
)
_PERMANENT_OS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """``retries`` attempts after the first, waiting ``backoff`` seconds, doubled each time."""

    retries: int = 3
    backoff: float = 1.0

    def delay(self, attempt: int) -> float:
        return self.backoff * 2 ** (attempt - 1)


_current: contextvars.ContextVar[RetryPolicy | None] = contextvars.ContextVar("fraudops_retry", default=None)


@contextlib.contextmanager
def using(policy: RetryPolicy) -> Iterator[None]:
    """Calls in this block (this thread) retry by ``policy``: the executor sets each step's own."""
    token = _current.set(policy)
    try:
        yield
    finally:
        _current.reset(token)


def current(default: RetryPolicy) -> RetryPolicy:
    """The policy of the step running in this thread, else ``default`` (the pipeline settings')."""
    return _current.get() or default


def _transient_one(e: BaseException) -> bool:
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    if isinstance(e, (FraudopsError, *_PERMANENT_OS)):
        return False
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    text = str(e).lower()
    if type(e).__name__ == "MlflowException":
        code = getattr(e, "get_http_status_code", lambda: 0)()
        return code in (429, 502, 503, 504) or any(w in text for w in _TRANSIENT_WORDS)
    if type(e).__name__ in ("OperationalError", "InterfaceError", "SerializationFailure"):  # DB drivers
        return "locked" in text or "unable to open" in text or any(w in text for w in _TRANSIENT_WORDS)
    return isinstance(e, OSError)


def is_transient(e: BaseException) -> bool:
    """An error worth retrying: I/O, network, a tracking server's 5xx or a busy database — anywhere in the
    ``raise … from`` chain. User errors (FraudopsError) without such a cause never are."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if _transient_one(cur):
            return True
        cur = cur.__cause__
    return False


def call(
    fn: Callable[[], T],
    policy: RetryPolicy,
    what: str,
    *,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, retried on transient errors by ``policy``; the last error is raised with a note."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:
            if attempt > policy.retries or not is_transient(e):
                if attempt > 1:
                    e.add_note(f"(gave up after {attempt} attempts)")
                raise
            delay = policy.delay(attempt)
            log.warning(
                "%s: transient error (attempt %d of %d), retrying in %.1f s: %s: %s",
                what,
                attempt,
                policy.retries + 1,
                delay,
                type(e).__name__,
                e,
            )
            if on_retry:
                on_retry(attempt, e, delay)
            sleep(delay)
