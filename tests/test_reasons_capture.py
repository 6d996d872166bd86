"""Reason codes (contributions that sum to the margin, the analyst's sentences, /predict and batch columns),
data capture (background Parquet by hour, bounded buffer, S3), the shadow challenger (/metrics, `fraudops
shadow report`, select-champion's evidence) and monitoring on captured traffic."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from fraudops.cli import build
from fraudops.context import StepContext
from fraudops.data import capture as files
from fraudops.data.schema import TX_ID
from fraudops.errors import ConfigError
from fraudops.modeling import explain
from fraudops.modeling.model import LogisticModel, XGBoostModel
from fraudops.modeling.registry import load_version
from fraudops.modeling.train import train_step
from fraudops.modeling.treeshap import TreeShap
from fraudops.monitoring.step import monitor_step
from fraudops.promotion.champion import select_champion_step
from fraudops.promotion.register import register_step
from fraudops.promotion.shadow import compare
from fraudops.serving.capture import Capture
from fraudops.serving.metrics import Metrics
from fraudops.serving.scorer import build_scorer
from fraudops.workspace import init_workspace, load_settings
from fraudops.workspace.storage import Storage
from test_serve import _dataset, _metric, serve_process

FEATURES = [*(f"V{i}" for i in range(1, 8)), "Amount"]
MODEL_NAME = "reasons-test-model"


# ----------------------------------------------------------------------------- contributions


def _booster(seed: int, trees: int, depth: int, n_features: int = 5):
    import xgboost

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, n_features)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=3000) > 1.2).astype(np.int32)
    model = xgboost.XGBClassifier(
        n_estimators=trees, max_depth=depth, learning_rate=0.3, subsample=0.8, n_jobs=1, random_state=seed
    )
    booster = model.fit(x, y).get_booster()
    booster.feature_names = None
    return booster, x


def _margin64(booster, x: np.ndarray) -> np.ndarray:
    """The margin summed in float64 by walking the trees (independent of XGBoost's float32 sum)."""
    learner = json.loads(booster.save_raw("json"))["learner"]
    base = float(learner["learner_model_param"]["base_score"].strip("[]"))
    out = np.full(len(x), np.log(base / (1 - base)))
    for tree in learner["gradient_booster"]["model"]["trees"]:
        left, right, cond, idx = (
            tree["left_children"],
            tree["right_children"],
            tree["split_conditions"],
            tree["split_indices"],
        )
        for r, row in enumerate(x):
            node = 0
            while left[node] != -1:
                node = right[node] if row[idx[node]] >= np.float32(cond[node]) else left[node]
            out[r] += float(np.float32(cond[node]))
    return out


@pytest.mark.parametrize(("seed", "trees", "depth"), [(0, 30, 4), (1, 12, 6), (2, 40, 3)])
def test_treeshap_contributions_are_xgboost_s_and_sum_to_the_margin(seed, trees, depth):
    booster, x = _booster(seed, trees, depth)  # 5 features, depth up to 6: features repeat on paths
    import xgboost

    rows = x[:300]
    ours = TreeShap(booster, 5).contributions(rows)
    theirs = booster.predict(xgboost.DMatrix(rows), pred_contribs=True)
    assert ours.shape == theirs.shape == (300, 6)
    assert np.abs(ours - theirs).max() < 2e-5  # XGBoost computes in float32
    assert np.abs(ours.sum(axis=1) - _margin64(booster, rows)).max() < 1e-6
    margin32 = booster.inplace_predict(rows, predict_type="margin")
    assert np.abs(ours.sum(axis=1) - margin32).max() < 2e-5
    model = XGBoostModel([f"f{i}" for i in range(5)], 0.5, booster=booster)
    one = explain.Explainer(model).contributions(rows[7:8])  # one row alone: the same numbers
    assert np.array_equal(one[0], ours[7])


def test_logistic_contributions_sum_to_the_margin():
    rng = np.random.default_rng(0)
    model = LogisticModel(
        ["a", "b", "c"],
        0.5,
        mean=rng.normal(size=3),
        scale=rng.uniform(0.5, 2, 3),
        coef=rng.normal(size=3),
        intercept=-2.0,
    )
    x = rng.normal(size=(200, 3)).astype(np.float32)
    c = explain.Explainer(model).contributions(x)
    assert np.abs(c.sum(axis=1) - model.margin(x)).max() < 1e-9
    assert np.allclose(c[:, 1], (x[:, 1] - model.mean[1]) / model.scale[1] * model.coef[1])
    assert np.all(c[:, -1] == -2.0)


def test_reasons_are_the_top_positive_contributions_in_words():
    names = ["TX_AMOUNT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "TERMINAL_ID_RISK_7DAY_WINDOW", "TX_DURING_NIGHT"]
    names += ["CUSTOMER_ID_SECONDS_SINCE_PREV_TX", "CUSTOMER_ID_NB_TX_1HOUR_WINDOW"]
    usual = dict(zip(names, [45.1, 2.0, 0.0, 0.0, 86_400.0, 1.0], strict=True))
    model = LogisticModel(
        names,
        0.5,
        info={explain.USUAL: usual, explain.DELAY: 7},
        mean=np.array([50.0, 2.0, 0.01, 0.2, 80_000.0, 1.0]),
        scale=np.ones(6),
        coef=np.array([0.01, 0.5, 3.0, 1.0, -0.00001, 0.2]),
        intercept=-3.0,
    )
    x = np.array([[912.4, 14.0, 0.5, 1.0, 30.0, 1.0]], dtype=np.float32)
    (reasons,) = explain.Explainer(model).reasons(x)
    contrib = explain.Explainer(model).contributions(x)[0, :-1]
    top = np.argsort(-contrib)[:3]
    assert [r.feature for r in reasons] == [names[j] for j in top]
    assert all(r.contribution > 0 for r in reasons)
    texts = {r.feature: r.text for r in reasons}
    assert texts["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == "14 transactions on this card in the last day, usual 2"
    assert texts["TX_AMOUNT"] == "amount 912.40, usual 45.10"
    assert texts["TERMINAL_ID_RISK_7DAY_WINDOW"] == (
        "50% of this terminal's transactions were fraud in the 7 days up to 7 days ago, usual 0%"
    )
    e = explain.Explainer(model)
    assert e.text(3, 1.0) == "made at night (00:00-06:59)"
    assert e.text(4, 30.0) == "30 s since this card's previous transaction, usual 24.0 h"
    assert e.text(4, 2_592_000.0).startswith("no other transaction on this card in the previous 30 days")
    # a row whose every contribution is negative has no reason
    low = np.array([[0.0, 0.0, 0.0, 0.0, 2_592_000.0, 1.0]], dtype=np.float32)
    assert e.reasons(low) == [[]]


def test_shadow_needs_capture():
    with pytest.raises(ConfigError, match=r"serve\.shadow scores the captured requests"):
        from fraudops.config import parse_settings

        parse_settings("serve: {shadow: challenger}\n", workspace=".", source="fraudops.yaml")


# ------------------------------------------------------------------- a workspace, two versions


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Features kind with transaction ids; champion version 1 and a challenger version 2 (other trees)."""
    root = tmp_path_factory.mktemp("reasons") / "ws"
    root.mkdir(parents=True)
    (root / "fraudops.yaml").write_text(
        "data:\n  kind: features\n  columns: {transaction_id: TX}\n"
        "train:\n  candidates: [xgboost]\n  n_jobs: 1\n"
        "  xgboost: {n_estimators: 30, max_depth: 4, learning_rate: 0.3}\n"
        f"registry:\n  model_name: {MODEL_NAME}\n"
    )
    settings, _ = init_workspace(str(root))
    storage = Storage(settings.workspace)
    data = _dataset().with_row_index("TX").with_columns(pl.format("t{}", "TX").alias("TX"))
    storage.write_frame("data/raw/creditcard.parquet", data)
    run = train_step(StepContext(settings, storage))
    register_step(StepContext(settings, storage, handed={"train": run}))
    assert select_champion_step(StepContext(settings, storage)).champion_version == 1
    settings.train.xgboost = {**settings.train.xgboost, "n_estimators": 20, "max_depth": 3, "seed": 7}
    run = train_step(StepContext(settings, storage))
    assert register_step(StepContext(settings, storage, handed={"train": run})).version == 2
    return {"root": root, "settings": load_settings(str(root)), "storage": storage}


def test_batch_reason_columns(ws):
    from fraudops.batch.scoring import REASONS, score_file

    settings, storage = ws["settings"], ws["storage"]
    model = load_version(settings, 1)
    assert set(model.info[explain.USUAL]) == set(FEATURES)
    rows = _dataset(400, seed=3).with_row_index("TX").with_columns(pl.format("b{}", "TX").alias("TX"))
    storage.write_frame("prod_inputs/day.parquet", rows.drop("Class"))
    score_file(storage, "prod_inputs/day.parquet", model, settings, version=1)
    out = pl.read_parquet(ws["root"] / "prod_outputs/predictions/day.out.parquet")
    flagged = out["is_fraud"] == 1
    assert 0 < flagged.sum() < out.height
    assert out.filter(~flagged).select(REASONS).null_count().row(0) == (out.height - flagged.sum(),) * 3
    expected = explain.Explainer(model).reasons(rows.filter(flagged).select(FEATURES).to_numpy())
    got = out.filter(flagged)["reason_1"].to_list()
    assert got == [f"{r[0].text} [{round(r[0].contribution, 6):+.3f}]" for r in expected]


def test_capture_buffer_is_bounded_and_partitioned_by_hour(ws, tmp_path):
    settings = ws["settings"].model_copy(deep=True)
    settings.serve.capture.enabled = True
    settings.serve.capture.max_buffer_rows = 10
    model = load_version(settings, 1)
    scorer = build_scorer(model, name=MODEL_NAME, version="1", alias="champion", run_id=None)
    storage = Storage(str(tmp_path))
    metrics = Metrics()
    capture = Capture(settings, metrics, storage)
    x = np.ones((4, len(FEATURES)), dtype=np.float32)
    p, flags = scorer.predict(x)
    for _ in range(4):  # 16 rows offered, 10 fit: the 3rd and 4th requests are dropped whole
        capture.offer("/predict", scorer, x, p, flags, ["a", "b", 3, None])
    assert capture.flush() == 8
    dropped = metrics.registry.get_sample_value("fraudops_serve_capture_rows_total", {"result": "dropped"})
    assert dropped == 8
    found = files.load_captured(storage)
    assert found.height == 8 and found[TX_ID].to_list()[:4] == ["a", "b", "3", None]
    assert found["fraud_probability"].to_list() == p.tolist() * 2
    hour = found["captured_at"][0]
    (path,) = {Path(f).parent.as_posix() for f in storage.find("prod_outputs/capture")}
    assert path == f"prod_outputs/capture/date={hour:%Y-%m-%d}/hour={hour:%H}"


def test_capture_on_s3(ws, s3_bucket):
    settings = ws["settings"].model_copy(deep=True)
    settings.serve.capture.enabled = True
    model = load_version(settings, 1)
    scorer = build_scorer(model, name=MODEL_NAME, version="1", alias="champion", run_id=None)
    storage = Storage(f"{s3_bucket}/ws")
    capture = Capture(settings, Metrics(), storage)
    x = np.zeros((3, len(FEATURES)), dtype=np.float32)
    p, flags = scorer.predict(x)
    capture.offer("/invocations", scorer, x, p, flags)
    assert capture.flush() == 3
    found = files.load_captured(storage)
    assert found.height == 3 and found["endpoint"].to_list() == ["/invocations"] * 3


# --------------------------------------------------------------------------- the real server


def _records(frame: pl.DataFrame, explain_every: int = 0) -> list[dict]:
    out = []
    for i, r in enumerate(frame.select("TX", *FEATURES).iter_rows(named=True)):
        if explain_every and i % explain_every == 0:
            r["explain"] = True
        out.append(r)
    return out


def _captured(storage: Storage, n: int, timeout: float = 60) -> pl.DataFrame:
    deadline = time.monotonic() + timeout
    while True:
        found = files.load_captured(storage)
        if found.height >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_served_reasons_capture_shadow_report_and_monitoring(ws, tmp_path):
    settings, storage = ws["settings"], ws["storage"]
    champion, challenger = load_version(settings, 1), load_version(settings, 2)
    storage.delete("prod_inputs/day.parquet")  # production data: the captured requests only
    live = _dataset(300, seed=11).with_row_index("TX").with_columns(pl.format("live{}", "TX").alias("TX"))
    with serve_process(
        ws["root"],
        tmp_path / "server.log",
        workers=1,
        reload_interval="0.3",
        serve__capture__enabled="true",
        serve__capture__flush_rows="100",
        serve__capture__flush_seconds="0.5",
        shadow="challenger",
    ) as srv:
        client = srv["client"]
        answers = []
        for lo in range(0, 250, 50):
            r = client.post("/predict", json=_records(live[lo : lo + 50], explain_every=7))
            assert r.status_code == 200, r.text
            answers += r.json()
        extra = live[250:].select(FEATURES).to_numpy()
        r = client.post("/invocations", json={"inputs": [dict(zip(FEATURES, v, strict=True)) for v in extra]})
        assert r.status_code == 200
        captured = _captured(storage, 300)
        shadow_rows = _metric(client, "fraudops_serve_shadow_rows_total")
        written = _metric(client, "fraudops_serve_capture_rows_total", result="written")
        correlation = _metric(client, "fraudops_serve_shadow_score_correlation")
    # reasons: every alert and every record asked for, the in-process explainer's
    x = live[:250].select(FEATURES).to_numpy().astype(np.float32)
    asked = np.arange(250) % 50 % 7 == 0  # the 1st, 8th, ... record of each request
    flags = np.array([a["is_fraud"] for a in answers])
    assert flags.any() and (~flags & asked).any()
    assert [("reasons" in a) for a in answers] == list(flags | asked)
    expected = explain.Explainer(champion).selected(x, flags | asked)
    assert [a["reasons"] for a in answers if "reasons" in a] == list(expected.values())
    first = next(a["reasons"][0] for a in answers if a.get("reasons"))
    assert first.keys() == {"feature", "value", "contribution", "text", "usual"}
    # capture: every request, as answered; the shadow's scores are the challenger's
    assert captured.height == 300 and written == [300.0] and shadow_rows == [300.0]
    ordered = captured.sort("captured_at", maintain_order=True)
    assert ordered[TX_ID].to_list() == [f"live{i}" for i in range(250)] + [None] * 50
    assert ordered["fraud_probability"].to_list()[:250] == [a["fraud_probability"] for a in answers]
    xs = ordered.select(FEATURES).to_numpy().astype(np.float32)
    assert np.array_equal(ordered["shadow_probability"].to_numpy(), challenger.predict_proba(xs))
    assert set(ordered["shadow_model_version"].to_list()) == {2}
    p, q = ordered["fraud_probability"].to_numpy(), ordered["shadow_probability"].to_numpy()
    assert correlation == [pytest.approx(float(np.corrcoef(p, q)[0, 1]), abs=1e-9)]
    # labels arrive in current_data: the report gives both APs on the labelled rows
    storage.write_frame("monitoring_inputs/current_data/labels.parquet", live[:250])
    out = CliRunner().invoke(build(), ["shadow", "report", "-w", str(ws["root"]), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    from sklearn.metrics import average_precision_score

    y = live[:250]["Class"].to_numpy()
    assert report["rows"] == 300 and report["labelled_rows"] == 250 and report["frauds"] == int(y.sum())
    assert report["served_average_precision"] == pytest.approx(average_precision_score(y, p[:250]))
    assert report["shadow_average_precision"] == pytest.approx(average_precision_score(y, q[:250]))
    assert report["correlation"] == pytest.approx(float(np.corrcoef(p, q)[0, 1]))
    both = int(np.sum((ordered["is_fraud"] == 1).to_numpy() & (ordered["shadow_is_fraud"] == 1).to_numpy()))
    assert report["both_alerts"] == both
    assert compare(captured, None).labelled_rows == 0
    # monitoring: captured traffic as production data (the labelled rows once, the 50 unlabelled added)
    judged = {}
    for source in ("prod_inputs", "capture"):
        s = ws["settings"].model_copy(deep=True)
        s.monitor.min_rows, s.monitor.production = 10, source
        judged[source] = monitor_step(StepContext(s, storage)).n_rows
    assert judged == {"prod_inputs": 250, "capture": 300}
    # select-champion records the live comparison as evidence
    decision = select_champion_step(StepContext(ws["settings"], storage))
    assert any(r.startswith("evidence, not part of the rule: live shadow on 300") for r in decision.reasons)
