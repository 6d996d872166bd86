"""Data capture (``serve.capture``, like SageMaker Data Capture): scored requests written in the background.

On the request path, :meth:`Capture.offer` only samples the request (``sampling``) and appends references to
its already-built arrays to a buffer under a lock: no copy, no I/O. A writer thread per worker turns the
buffer into one Parquet file per hour partition once ``flush_rows`` rows wait or the oldest is
``flush_seconds`` old (and at shutdown), through the workspace storage (atomic files, local or S3; layout in
:mod:`fraudops.data.capture`). Memory is bounded: a request that would take the buffer past
``max_buffer_rows`` is dropped and counted. With ``serve.shadow``, the shadow model scores each flush's
rows first (:mod:`fraudops.serving.shadow`). A failed write is logged and counted, and its rows dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
import threading
import time
from typing import Any

import numpy as np
import polars as pl

from fraudops.config import Settings
from fraudops.data import capture as files
from fraudops.data.schema import TX_ID
from fraudops.serving.metrics import Metrics
from fraudops.serving.scorer import Scorer
from fraudops.serving.shadow import Shadow
from fraudops.workspace.storage import Storage

log = logging.getLogger("fraudops.serve")
TICK = 0.5  # seconds between the writer's looks at the buffer (it also wakes at flush_rows)


@dataclasses.dataclass(frozen=True)
class _Request:
    at: float
    endpoint: str
    version: str
    features: list[str]
    x: np.ndarray
    p: np.ndarray
    flags: np.ndarray
    ids: list[Any] | None


class Capture:
    """The capture buffer and its writer thread (one per worker process)."""

    def __init__(self, settings: Settings, metrics: Metrics, storage: Storage | None = None) -> None:
        self.cfg = settings.serve.capture
        self.storage = storage or Storage.of(settings)
        self.shadow = Shadow(settings, settings.serve.shadow, metrics) if settings.serve.shadow else None
        self._buffer: list[_Request] = []
        self._rows = 0
        self._dropped = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = itertools.count()
        self.metrics = metrics

    # -- the request path

    def offer(
        self,
        endpoint: str,
        scorer: Scorer,
        x: np.ndarray,
        p: np.ndarray,
        flags: np.ndarray,
        ids: list[Any] | None = None,
    ) -> None:
        """Capture one answered request (or not, by sampling); never blocks on I/O."""
        if self.cfg.sampling < 1.0 and random.random() >= self.cfg.sampling:
            return
        n = len(p)
        with self._lock:
            if self._rows + n > self.cfg.max_buffer_rows:
                self._dropped += n
                return
            self._buffer.append(
                _Request(time.time(), endpoint, scorer.version, scorer.features, x, p, flags, ids)
            )
            self._rows += n
            full = self._rows >= self.cfg.flush_rows
        if full:
            self._wake.set()

    # -- the writer

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fraudops-capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the writer after writing what waits."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(min(TICK, self.cfg.flush_seconds))
            self._wake.clear()
            with self._lock:
                due = self._rows >= self.cfg.flush_rows or (
                    bool(self._buffer) and time.time() - self._buffer[0].at >= self.cfg.flush_seconds
                )
            if due and not self._stop.is_set():
                self.flush()
            else:
                self._publish()

    def _publish(self) -> int:
        with self._lock:
            dropped, self._dropped = self._dropped, 0
            rows = self._rows
        if dropped:
            self.metrics.capture_rows.labels("dropped").inc(dropped)
        self.metrics.capture_buffer.set(rows)
        return dropped

    def flush(self) -> int:
        """Write what waits (one file per hour partition); the rows written."""
        with self._lock:
            batch, self._buffer, self._rows = self._buffer, [], 0
        self._publish()
        if not batch:
            return 0
        written = 0
        try:
            frame = self._frame(batch)
            hours = frame[files.CAPTURED_AT].dt.truncate("1h")
            for hour in hours.unique(maintain_order=True).to_list():
                part = frame.filter(hours == hour)
                name = f"part-{hour:%Y%m%dT%H}-{os.getpid()}-{time.time_ns()}-{next(self._seq)}.parquet"
                self.storage.write_frame(f"{files.partition(hour)}/{name}", part)
                self.metrics.capture_files.inc()
                written += part.height
            self.metrics.capture_rows.labels("written").inc(written)
        except Exception as e:  # the endpoint keeps serving; the rows are counted as lost
            lost = sum(len(b.p) for b in batch) - written
            self.metrics.capture_rows.labels("failed").inc(lost)
            log.warning("capture write failed, %d rows lost (%s: %s)", lost, type(e).__name__, e)
        return written

    def _frame(self, batch: list[_Request]) -> pl.DataFrame:
        """The captured rows of a batch of requests (one frame per model version, stacked)."""
        frames = []
        for (version, names), group in itertools.groupby(batch, key=lambda b: (b.version, tuple(b.features))):
            reqs = list(group)
            x = np.concatenate([b.x for b in reqs])
            p = np.concatenate([b.p for b in reqs])
            flags = np.concatenate([b.flags for b in reqs])
            counts = [len(b.p) for b in reqs]
            at_us = np.repeat(np.array([round(b.at * 1e6) for b in reqs], dtype=np.int64), counts)
            ids = [
                None if i is None else str(i)
                for b in reqs
                for i in (b.ids if b.ids is not None else [None] * len(b.p))
            ]
            cols: dict[str, Any] = {
                files.CAPTURED_AT: pl.Series(at_us).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
                files.ENDPOINT: pl.Series([b.endpoint for b in reqs for _ in b.p], dtype=pl.String),
                files.VERSION: pl.Series([int(version)] * len(p), dtype=pl.Int32),
                TX_ID: pl.Series(ids, dtype=pl.String),
                **{n: pl.Series(x[:, j].astype(np.float64)) for j, n in enumerate(names)},
                files.PROBABILITY: pl.Series(p, dtype=pl.Float64),
                files.FLAG: pl.Series(flags.astype(np.int8)),
            }
            shadow = self.shadow.score(x, list(names), p, flags) if self.shadow is not None else None
            if shadow is not None:
                v, q, alert = shadow
                cols[files.SHADOW_VERSION] = pl.Series([int(v)] * len(q), dtype=pl.Int32)
                cols[files.SHADOW_PROBABILITY] = pl.Series(q, dtype=pl.Float64)
                cols[files.SHADOW_FLAG] = pl.Series(alert.astype(np.int8))
            else:
                cols[files.SHADOW_VERSION] = pl.Series([None] * len(p), dtype=pl.Int32)
                cols[files.SHADOW_PROBABILITY] = pl.Series([None] * len(p), dtype=pl.Float64)
                cols[files.SHADOW_FLAG] = pl.Series([None] * len(p), dtype=pl.Int8)
            frames.append(pl.DataFrame(cols))
        return pl.concat(frames, how="diagonal_relaxed")
