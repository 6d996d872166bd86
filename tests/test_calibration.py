"""Calibration: the map fitted on validation keeps the ranking, lowers the calibration error and is shared
by every scoring path."""

from __future__ import annotations

import numpy as np
import pytest

from fraudops.modeling import calibration, evaluate
from fraudops.modeling.model import LogisticModel, load


def miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores that overstate the fraud probability: the true probability is raw ** 3."""
    rng = np.random.default_rng(seed)
    raw = rng.beta(0.6, 3.0, n)
    y = (rng.random(n) < raw**3).astype(np.int8)
    return raw, y


def test_fit_chooses_a_method_on_validation_and_reduces_the_calibration_error():
    raw, y = miscalibrated(20_000, 0)
    cal = calibration.fit(raw, y)
    assert cal["method"] in ("isotonic", "platt")
    assert set(cal["validation_brier"]) == {"isotonic", "platt", "none"}
    assert cal["validation_brier"][cal["method"]] == min(cal["validation_brier"].values())
    raw_test, y_test = miscalibrated(20_000, 1)
    before = calibration.ece(y_test, raw_test)
    after = calibration.ece(y_test, calibration.apply(raw_test, cal))
    assert after < before / 3, (before, after)


def test_scores_already_calibrated_are_kept_as_they_are():
    """A map fitted on validation would only add its own error to calibrated scores: none is chosen."""
    rng = np.random.default_rng(4)
    raw = rng.beta(0.5, 8.0, 20_000)
    y = (rng.random(raw.size) < raw).astype(np.int8)
    cal = calibration.fit(raw, y)
    assert cal["method"] == "none", cal["validation_brier"]
    assert cal["validation_brier"]["none"] < min(
        cal["validation_brier"]["isotonic"], cal["validation_brier"]["platt"]
    )
    np.testing.assert_array_equal(calibration.apply(raw, cal), raw)


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_the_map_keeps_the_ranking_exactly(method: str):
    raw, y = miscalibrated(5000, 2)
    cal = calibration.FITTERS[method](raw, y)
    p = calibration.apply(raw, cal)
    assert np.array_equal(np.argsort(raw, kind="stable"), np.argsort(p, kind="stable"))
    assert len(np.unique(p)) == len(np.unique(raw))  # no new ties
    assert evaluate.average_precision(y, p) == evaluate.average_precision(y, raw)
    assert evaluate.roc_auc(y, p) == evaluate.roc_auc(y, raw)
    assert ((p >= 0) & (p <= 1)).all()


def test_reliability_and_ece_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.95, 0.85])
    curve = calibration.reliability(y, p)
    assert [c["n"] for c in curve] == [1, 1, 1, 1]
    assert calibration.ece(y, p) == pytest.approx((0.05 + 0.15 + 0.05 + 0.15) / 4)
    assert np.isnan(calibration.ece([], []))


def test_the_model_saves_and_applies_its_calibration(tmp_path):
    raw, y = miscalibrated(3000, 3)
    x = np.log(raw / (1 - raw))[:, None].astype(np.float32)
    model = LogisticModel(["x"], 0.5, mean=np.zeros(1), scale=np.ones(1), coef=np.ones(1), intercept=0.0)
    uncalibrated = model.predict_proba(x)
    np.testing.assert_allclose(uncalibrated, raw, rtol=1e-6)  # no calibration: the identity
    model.calibration = calibration.fit(uncalibrated, y)
    model.save(tmp_path / "m")
    again = load(tmp_path / "m")
    assert again.calibration == model.calibration
    np.testing.assert_array_equal(again.predict_proba(x), calibration.apply(uncalibrated, model.calibration))
