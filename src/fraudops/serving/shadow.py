"""The shadow model: a registry alias (``serve.shadow``, e.g. ``challenger``) scoring the captured requests
off the request path, compared with the served model on the same rows.

The capture writer hands it each flush's rows (:mod:`fraudops.serving.capture`); the requests themselves
never wait for it. It follows its alias like the served model follows its own (checked every
``serve.reload_interval`` seconds, a failed load keeps the previous version); while no version carries
the alias, captured rows are written without shadow scores. /metrics shows, per worker since it started:
rows compared, the four alert agreements, and the Pearson correlation of the two probabilities.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from fraudops.config import Settings
from fraudops.modeling.model import FraudModel
from fraudops.modeling.registry import load_version
from fraudops.serving.metrics import Metrics
from fraudops.tracking import registry

log = logging.getLogger("fraudops.serve")


class Shadow:
    """The shadow model of one worker, and its running comparison with the served model."""

    def __init__(self, settings: Settings, alias: str, metrics: Metrics) -> None:
        self.settings, self.alias = settings, alias
        self.model: FraudModel | None = None
        self.version: str | None = None
        self.checked = -math.inf
        # running sums for the correlation: n, sum x, sum y, sum xx, sum yy, sum xy (x served, y shadow)
        self.sums = np.zeros(6)
        self.metrics = metrics

    def refresh(self) -> None:
        """Load the version the alias names if it changed (at most every serve.reload_interval)."""
        now = time.monotonic()
        if now - self.checked < self.settings.serve.reload_interval:
            return
        self.checked = now
        try:
            mv = registry.version_by_alias(self.settings, self.alias)
            target = None if mv is None else str(mv.version)
            if target != self.version:
                self.model = None if target is None else load_version(self.settings, target)
                self.version = target
                self.metrics.shadow_version.set(float(target) if target and target.isdigit() else 0.0)
                log.info("shadow model: %s", f"version {target}" if target else f"no '{self.alias}' version")
        except Exception as e:  # keep the previous shadow model; the served model is unaffected
            log.warning("shadow model check failed (%s: %s)", type(e).__name__, e)

    def score(
        self, x: np.ndarray, features: list[str], p: np.ndarray, flags: np.ndarray
    ) -> tuple[str, np.ndarray, np.ndarray] | None:
        """(version, probabilities, alerts) of the shadow model on the served rows, None when it cannot
        score them; updates the comparison."""
        self.refresh()
        model = self.model
        if model is None or self.version is None or model.feature_names != features:
            self.metrics.shadow_skipped.inc(len(p))
            return None
        q = model.predict_proba(x)
        alert = q >= model.threshold
        self.metrics.shadow_rows.inc(len(q))
        for served in (False, True):
            for shadow in (False, True):
                both = int(np.sum((flags == served) & (alert == shadow)))
                if both:
                    self.metrics.shadow_alerts.labels(str(served).lower(), str(shadow).lower()).inc(both)
        self.sums += [len(p), p.sum(), q.sum(), (p * p).sum(), (q * q).sum(), (p * q).sum()]
        n, sx, sy, sxx, syy, sxy = (float(v) for v in self.sums)
        var_x, var_y = n * sxx - sx * sx, n * syy - sy * sy
        if var_x > 0 and var_y > 0:
            self.metrics.shadow_correlation.set((n * sxy - sx * sy) / math.sqrt(var_x * var_y))
        return self.version, q, alert
