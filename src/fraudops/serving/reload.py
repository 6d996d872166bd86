"""Hot reload: the model being served, and the watcher that swaps in a newly promoted version whole."""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

from fraudops.config import Settings
from fraudops.modeling.registry import load_version
from fraudops.serving.metrics import Metrics
from fraudops.serving.scorer import Scorer, build_scorer
from fraudops.tracking import registry
from fraudops.tracking.client import tracking_uri

log = logging.getLogger("fraudops.serve")


class ModelHolder:
    """The model being served and the watcher that swaps in a newly promoted version."""

    def __init__(self, settings: Settings, alias: str, metrics: Metrics) -> None:
        self.settings, self.alias, self.metrics = settings, alias, metrics
        self.scorer: Scorer | None = None
        self.last_check: float | None = None
        self.last_error: dict[str, Any] | None = None  # the current problem, cleared once a check succeeds
        self.last_failure: dict[str, Any] | None = None  # the most recent problem, kept
        self.reloads = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Load the aliased version if it is not the one served. False (old model kept) on failure."""
        with self._lock:
            current = self.scorer
            target = None
            try:
                mv = registry.version_by_alias(self.settings, self.alias)
                if mv is None:
                    raise LookupError(
                        f"no version of {self.settings.registry.model_name} is aliased "
                        f"'{self.alias}' in {tracking_uri(self.settings)}"
                    )
                target = str(mv.version)
                if current is not None and current.version == target:
                    self.last_check = time.time()
                    self.last_error = None  # e.g. the alias went back from a broken version
                    return True
                model = load_version(self.settings, target)
                scorer = build_scorer(
                    model,
                    name=self.settings.registry.model_name,
                    version=target,
                    alias=self.alias,
                    run_id=getattr(mv, "run_id", None),
                )
            except Exception as e:  # any failure keeps the old model serving
                self.failures += 1
                self.last_check = time.time()
                message = f"{type(e).__name__}: {e}"
                if self.last_error is None or self.last_error["message"] != message:
                    log.warning(
                        "model reload failed (%s); %s",
                        message,
                        f"still serving version {current.version}" if current else "no model loaded",
                    )
                self.last_error = self.last_failure = {
                    "at": self.last_check,
                    "version": target,
                    "message": message[:2000],
                }
                self.metrics.reload(False, None)
                return False
            self.scorer = scorer  # the atomic swap: one reference, to a fully built scorer
            # Out of the collector's sight, the long-lived heap (mlflow, the model: ~350,000 objects) makes
            # no full collection, which a large request triggers and which would stall requests ~0.3 s.
            gc.collect()
            gc.freeze()
            self.reloads += 1
            self.last_check = time.time()
            self.last_error = None
            self.metrics.reload(True, target, numpy_trees=scorer.trees is not None)
            log.info(
                "serving %s version %s (%s)%s",
                scorer.name,
                target,
                scorer.runtime.get("engine"),
                f", was version {current.version}" if current else "",
            )
            return True

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="fraudops-model-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.serve.reload_interval):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
