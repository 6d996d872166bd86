"""Killing a Dask worker in the middle of a task (SIGKILL, once), to test that the work still completes."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
from distributed import Client, WorkerPlugin


class KillOnTask(WorkerPlugin):
    """A worker plugin: the first worker to start a ``task`` kills itself (SIGKILL) — at once, or once a
    hidden temporary output is in ``writing`` (or below), i.e. in the middle of writing. The marker file
    keeps it to once and holds the killed worker's pid."""

    def __init__(self, task: str, marker: str, writing: str | None = None) -> None:
        self.task, self.marker, self.writing = task, marker, writing

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing" or self.task not in str(key):
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        threading.Thread(target=self._kill, daemon=True).start()

    def _writing(self) -> bool:
        assert self.writing is not None
        return any(n.startswith(".") for _, _, names in os.walk(self.writing) for n in names)

    def _kill(self) -> None:
        deadline = time.monotonic() + 5
        while self.writing is not None and not self._writing() and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def killing(client: Client, task: str, marker: Path, writing: Path | None = None) -> Iterator[set[int]]:
    """A worker of ``client`` killed when it starts ``task`` inside the block; yields the workers' pids
    before (the killed one's is in ``marker`` after)."""
    pids = set(client.run(os.getpid).values())
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    client.register_plugin(
        KillOnTask(task, str(marker), None if writing is None else str(writing)), name="kill"
    )
    try:
        yield pids
    finally:
        client.unregister_worker_plugin("kill")
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
