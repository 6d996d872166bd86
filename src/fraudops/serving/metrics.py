"""Prometheus metrics of the endpoint; with several workers, in prometheus_client's multiprocess mode."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Prometheus metrics; with several workers, in prometheus_client's multiprocess mode."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fraudops_serve_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "fraudops_serve_request_duration_seconds",
            "Request handling time by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter("fraudops_serve_rows_scored", "Rows scored", registry=r)
        self.model_version = Gauge(
            "fraudops_serve_model_version",
            "Registered model version being served (0 = none)",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.numpy_trees = Gauge(
            "fraudops_serve_numpy_trees",
            "1 when the served model is scored by the verified numpy trees for small batches, 0 when that "
            "runtime switched itself off (XGBoost only: an unsupported model or a differing probability)",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.reloads = Counter(
            "fraudops_serve_model_reloads",
            "Champion checks that loaded a new version (success) or failed (failure)",
            ["result"],
            registry=r,
        )
        self.last_reload = Gauge(
            "fraudops_serve_last_reload_timestamp_seconds",
            "When the last reload of each result happened",
            ["result"],
            multiprocess_mode="max",
            registry=r,
        )
        # data capture (serve.capture) and the shadow model (serve.shadow)
        self.capture_rows = Counter(
            "fraudops_serve_capture_rows",
            "Scored rows by capture outcome: written, dropped (buffer full) or failed (write error)",
            ["result"],
            registry=r,
        )
        self.capture_files = Counter("fraudops_serve_capture_files", "Capture files written", registry=r)
        self.capture_buffer = Gauge(
            "fraudops_serve_capture_buffer_rows",
            "Rows waiting in the capture buffer",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.shadow_rows = Counter(
            "fraudops_serve_shadow_rows", "Captured rows scored by the shadow model", registry=r
        )
        self.shadow_skipped = Counter(
            "fraudops_serve_shadow_skipped_rows",
            "Captured rows the shadow model could not score (no version with the alias, other inputs)",
            registry=r,
        )
        self.shadow_alerts = Counter(
            "fraudops_serve_shadow_alerts",
            "Shadow-scored rows by alert decision of the served model and of the shadow model",
            ["served", "shadow"],
            registry=r,
        )
        self.shadow_correlation = Gauge(
            "fraudops_serve_shadow_score_correlation",
            "Pearson correlation of served and shadow probabilities over the rows this worker compared",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.shadow_version = Gauge(
            "fraudops_serve_shadow_model_version",
            "Registered model version scoring in the shadow (0 = none)",
            multiprocess_mode="liveall",
            registry=r,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        pair = self._children.get((endpoint, status))
        if pair is None:
            pair = self._children[(endpoint, status)] = (
                self.requests.labels(endpoint, str(status)),
                self.latency.labels(endpoint),
            )
        pair[0].inc()
        pair[1].observe(seconds)

    def reload(self, ok: bool, version: str | None, numpy_trees: bool = False) -> None:
        result = "success" if ok else "failure"
        self.reloads.labels(result).inc()
        self.last_reload.labels(result).set(time.time())
        if ok and version is not None:
            self.numpy_trees.set(1.0 if numpy_trees else 0.0)
            with contextlib.suppress(ValueError):
                self.model_version.set(float(version))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        if self.multiprocess:
            from prometheus_client import multiprocess

            with contextlib.suppress(Exception):
                multiprocess.mark_process_dead(os.getpid())
