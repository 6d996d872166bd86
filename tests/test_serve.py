"""fraudops serve: a real server process on a small registered champion, every endpoint, protocol and
bad input, the API key, and a hot reload under load; plus the numpy tree runtime against XGBoost."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fraudops.context import StepContext, StepResult
from fraudops.modeling.explain import Explainer
from fraudops.modeling.model import FraudModel, XGBoostModel
from fraudops.modeling.registry import load_version
from fraudops.modeling.train import train_step
from fraudops.promotion.champion import select_champion_step
from fraudops.promotion.register import register_step
from fraudops.serving import protocol
from fraudops.serving import trees as runtime
from fraudops.serving.scorer import Scorer
from fraudops.tracking import registry
from fraudops.tracking.client import client
from fraudops.workspace import init_workspace
from fraudops.workspace.storage import Storage

API_KEY = "test-key-123"
MODEL_NAME = "serve-test-model"
MAX_ROWS = 500
MAX_BYTES = 300_000
FEATURES = [*(f"V{i}" for i in range(1, 8)), "Amount"]


# ------------------------------------------------------------------------- numpy runtime, in-process


def _booster(
    objective: str = "binary:logistic",
    n: int = 2000,
    trees: int = 40,
    depth: int = 5,
    seed: int = 0,
    base_score: float | None = None,
):
    import xgboost

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 5] = rng.gamma(2.0, 50.0, n)
    y = (x[:, 0] + x[:, 1] * x[:, 2] + 0.01 * x[:, 5] + rng.normal(size=n) > 1.5).astype(np.int32)
    if objective != "binary:logistic":
        y = y.astype(np.float32)
    cls = xgboost.XGBClassifier if objective == "binary:logistic" else xgboost.XGBRegressor
    model = cls(
        n_estimators=trees,
        max_depth=depth,
        learning_rate=0.3,
        objective=objective,
        n_jobs=1,
        random_state=seed,
        subsample=0.8,
        base_score=base_score,
    )
    model.fit(x, y)
    booster = model.get_booster()
    booster.feature_names = None
    booster.set_param({"nthread": 1})
    return booster, x


@pytest.mark.parametrize(
    ("seed", "trees", "depth", "base_score"),
    [(0, 40, 5, None), (1, 60, 8, None), (2, 100, 2, 0.03), (3, 5, 6, 0.9)],
)
def test_numpy_trees_are_bit_identical_to_xgboost(seed, trees, depth, base_score):
    booster, x = _booster(trees=trees, depth=depth, seed=seed, base_score=base_score)
    model = XGBoostModel([f"f{i}" for i in range(6)], 0.3, booster=booster)
    trees, small, info = runtime.prepare_runtime(model)
    assert trees is not None and info["numpy_trees"].startswith("on"), info
    rng = np.random.default_rng(1)
    rows = np.concatenate(
        [
            x[:500],
            runtime.verification_rows(trees, 3000, seed=5),
            rng.normal(scale=3.0, size=(500, 6)).astype(np.float32),
        ]
    )
    expected = booster.inplace_predict(rows, validate_features=False)
    margins = booster.inplace_predict(rows, validate_features=False, predict_type="margin")
    assert np.array_equal(trees.margin(rows), margins)
    assert np.array_equal(trees.predict(rows, booster), expected)
    singles = np.concatenate([trees.predict(rows[i : i + 1], booster) for i in range(300)])
    assert np.array_equal(singles, expected[:300])
    # a Scorer gives FraudModel.predict's float64 numbers on both sides of the runtime switch
    scorer = Scorer(
        model=model,
        name="m",
        version="1",
        alias="champion",
        run_id=None,
        loaded_at=0.0,
        trees=trees,
        small_batch=max(small, 1),
        runtime=info,
    )
    for batch in (rows[:1], rows[:200]):
        p, flags = scorer.predict(np.ascontiguousarray(batch))
        p_ref, flags_ref = model.predict(batch)
        assert p.dtype == np.float64 and np.array_equal(p, p_ref) and np.array_equal(flags, flags_ref)


def test_numpy_trees_stay_off_for_other_objectives(caplog):
    booster, _ = _booster("reg:squarederror", trees=10)
    model = XGBoostModel([f"f{i}" for i in range(6)], 0.5, booster=booster)
    with caplog.at_level("WARNING", logger="fraudops.serve"):
        trees, small, info = runtime.prepare_runtime(model)
    assert trees is None and small == 0 and "objective" in info["numpy_trees"]
    assert "numpy tree evaluator off (objective reg:squarederror)" in caplog.text
    with pytest.raises(runtime.UnsupportedModel):
        runtime.TreeEnsemble.from_booster(booster, 6)


def test_invocations_body_is_what_mlflow_writes():
    import io

    import pandas as pd
    from mlflow.pyfunc.scoring_server import predictions_to_json

    p = np.array([0.1, 1e-05, 0.987654321012345, 2.5e-300, 0.5], dtype=np.float32).astype(np.float64)
    flags = p >= 0.5
    out = io.StringIO()
    predictions_to_json(pd.DataFrame({"fraud_probability": p, "is_fraud": flags.astype(np.int64)}), out)
    assert protocol.invocations_body(p, flags).decode() == out.getvalue()


def test_fast_json_parser_gives_the_standard_values():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.normal(size=2000) * 10.0 ** rng.integers(-30, 30, 2000),
            rng.normal(size=500).astype(np.float32).astype(np.float64),
            [0.0, -0.0, 1e-320, 5e-324, 1.7976931348623157e308, 0.1, 1 / 3, 2.5e-8],
        ]
    )
    texts = (
        [repr(v) for v in values.tolist()] + [f"{v:.15g}" for v in values] + ["1", "-7", "12345678901234567"]
    )
    texts += ["1E5", "-2.5e-3", "0.000001", "123456789.123456789123", "9007199254740993", "1e400", "-1e-400"]
    body = ("[" + ", ".join(texts) + "]").encode()
    assert protocol.parse_json(body) == json.loads(body)
    for text in (b'{"a": [1, 2, {"b": null, "c": "\\u00e9"}], "d": true}', b'\xef\xbb\xbf{"a": 1}'):
        assert protocol.parse_json(text) == json.loads(text)
    for bad in (b"{", b'{"a": 1} x', b"[1, 2", b"\xff"):
        with pytest.raises(protocol.ClientError, match="malformed JSON"):
            protocol.parse_json(bad)


# ------------------------------------------------------------------------------- a real server


def _write_workspace(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "fraudops.yaml").write_text(
        "data:\n  kind: features\n"
        "train:\n  candidates: [xgboost]\n  n_jobs: 1\n"
        "  xgboost: {n_estimators: 30, max_depth: 4, learning_rate: 0.3}\n"
        f"registry:\n  model_name: {MODEL_NAME}\n"
    )


def _dataset(n: int = 3000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 7))
    amount = rng.gamma(2.0, 50.0, n)
    z = 2 * x[:, 0] - 1.5 * x[:, 1] + x[:, 2] * x[:, 3] + 0.005 * amount - 3.5
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    cols = {"Time": np.arange(n, dtype=np.float64), **{f"V{i + 1}": x[:, i] for i in range(7)}}
    return pl.DataFrame({**cols, "Amount": amount, "Class": y})


def build_champion(root: Path) -> dict:
    """A features-kind workspace whose champion (version 1) went through train, register, select."""
    _write_workspace(root)
    settings, _ = init_workspace(str(root))
    storage = Storage(settings.workspace)
    data = _dataset()
    storage.write_frame("data/raw/creditcard.parquet", data)
    run = train_step(StepContext(settings, storage))
    register_step(StepContext(settings, storage, handed={"train": run}))
    decision = select_champion_step(StepContext(settings, storage))
    assert decision.champion_version == 1, decision
    model = load_version(settings, 1)
    assert model.feature_names == FEATURES
    rows = data.select(FEATURES).to_numpy()
    return {"root": root, "settings": settings, "storage": storage, "model": model, "rows": rows}


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    return build_champion(tmp_path_factory.mktemp("serve") / "ws")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_process(root: Path, log_path: Path, workers: int, **settings: str) -> Iterator[dict]:
    """`fraudops serve` on ``root`` in its own process, ``settings`` as FRAUDOPS_SERVE__* variables (and
    FRAUDOPS_* ones for a key with ``__``), until every worker serves the champion."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDOPS_", "PROMETHEUS_"))}
    env.update(
        {(f"FRAUDOPS_{k}" if "__" in k else f"FRAUDOPS_SERVE__{k}").upper(): v for k, v in settings.items()}
    )
    cmd = [
        sys.executable,
        "-m",
        "fraudops.cli",
        "serve",
        "-w",
        str(root),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after 120 s:\n{log_path.read_text()}")
            time.sleep(0.3)
        with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=30) as client:
            while _metric(client, "fraudops_serve_model_version") != [1.0] * workers:  # every worker ready
                if time.monotonic() > deadline:
                    pytest.fail(f"workers not ready after 120 s:\n{log_path.read_text()}")
                time.sleep(0.3)
            yield {"url": url, "port": port, "client": client, "proc": proc, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(champion, tmp_path_factory):
    """`fraudops serve` in its own process (two workers), API key on, fast reload checks."""
    log_path = tmp_path_factory.mktemp("serve-log") / "server.log"
    with serve_process(
        champion["root"],
        log_path,
        workers=2,
        api_key=API_KEY,
        reload_interval="0.3",
        max_rows=str(MAX_ROWS),
        max_payload_bytes=str(MAX_BYTES),
    ) as srv:
        yield srv


def _metric(client: httpx.Client, name: str, **labels: str) -> list[float]:
    """Values of the samples of a metric (with these labels) on the server's /metrics page."""
    text = client.get("/metrics").text
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]


def _split(rows: np.ndarray, columns: list[str] = FEATURES) -> dict:
    order = [FEATURES.index(c) for c in columns]
    return {"dataframe_split": {"columns": columns, "data": rows[:, order].tolist()}}


def _records(rows: np.ndarray) -> list[dict]:
    return [dict(zip(FEATURES, r, strict=True)) for r in rows.tolist()]


def _expected(model: FraudModel, rows: np.ndarray) -> tuple[list[float], list[int]]:
    p = model.predict_proba(rows.astype(np.float32))
    return p.tolist(), (p >= model.threshold).astype(int).tolist()


def _check_predictions(
    response: httpx.Response, model: FraudModel, rows: np.ndarray, version: str = "1"
) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == version
    preds = response.json()["predictions"]
    assert set(preds[0]) == {"fraud_probability", "is_fraud"}
    p, flags = _expected(model, rows)
    assert [r["fraud_probability"] for r in preds] == p  # exactly: the same float32 arithmetic
    assert [r["is_fraud"] for r in preds] == flags


@pytest.mark.slow
def test_ping_health_version(server):
    for path in ("/ping", "/health"):  # open without the key
        r = httpx.get(server["url"] + path)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1", r.text
    health = httpx.get(server["url"] + "/health").json()
    assert health["status"] == "ok" and health["model_version"] == "1" and health["alias"] == "champion"
    assert health["last_reload_error"] is None
    v = server["client"].get("/version")
    assert v.status_code == 200
    assert v.json()["model_version"] == "1" and v.json()["fraudops"] and v.json()["mlflow"]


@pytest.mark.slow
def test_api_key(server):
    url = server["url"]
    for method, path in (
        ("GET", "/metadata"),
        ("GET", "/metrics"),
        ("GET", "/version"),
        ("POST", "/invocations"),
        ("POST", "/predict"),
    ):
        r = httpx.request(method, url + path, json={})
        assert r.status_code == 401 and r.json()["field"] == "X-API-Key", (path, r.text)
        assert "missing X-API-Key" in r.json()["message"]
        r = httpx.request(method, url + path, json={}, headers={"X-API-Key": "wrong"})
        assert r.status_code == 401 and "invalid API key" in r.json()["message"]


@pytest.mark.slow
def test_metadata(server, champion):
    meta = server["client"].get("/metadata").json()
    model = champion["model"]
    assert (meta["name"], meta["version"], meta["alias"]) == (MODEL_NAME, "1", "champion")
    assert meta["threshold"] == model.threshold
    assert [c["name"] for c in meta["input_schema"]] == FEATURES
    assert meta["runtime"]["n_trees"] == 30
    assert meta["runtime"]["numpy_trees"].startswith("on")


@pytest.mark.slow
def test_invocations_every_protocol(server, champion):
    client, model = server["client"], champion["model"]
    rows = champion["rows"][:5]
    shuffled = FEATURES[::-1]
    csv_text = (
        ",".join(FEATURES) + "\n" + "\n".join(",".join(repr(v) for v in r) for r in rows.tolist()) + "\n"
    )
    columns = {n: rows[:, i].tolist() for i, n in enumerate(FEATURES)}
    requests = [
        {"json": _split(rows)},
        {"json": _split(rows, shuffled)},
        {"json": {**_split(rows), "params": {}}},
        {"json": {"dataframe_split": {**_split(rows)["dataframe_split"], "index": [0, 1, 2, 3, 4]}}},
        {"json": {"dataframe_records": _records(rows)}},
        {"json": {"instances": _records(rows)}},
        {"json": {"inputs": _records(rows)}},
        {"json": {"inputs": columns}},
        {"json": {"instances": columns}},
        {"content": csv_text, "headers": {"Content-Type": "text/csv"}},
        {"content": csv_text, "headers": {"Content-Type": "text/csv; charset=utf-8"}},
        {"content": json.dumps(_split(rows)), "headers": {"Content-Type": "application/json; charset=UTF-8"}},
    ]
    for kw in requests:
        _check_predictions(client.post("/invocations", **kw), model, rows)
    one = _records(rows[:1])[0]
    _check_predictions(client.post("/invocations", json={"inputs": one}), model, rows[:1])
    ints = {n: 1 for n in FEATURES}  # JSON integers are numbers too
    _check_predictions(
        client.post("/invocations", json={"dataframe_records": [ints]}), model, np.ones((1, 8))
    )


@pytest.mark.slow
def test_invocations_equal_the_model_on_both_runtimes(server, champion):
    client, model, rows = server["client"], champion["model"], champion["rows"]
    for i in range(40):  # single rows: the numpy trees
        _check_predictions(client.post("/invocations", json=_split(rows[i : i + 1])), model, rows[i : i + 1])
    for lo, hi in ((0, 10), (100, 400), (1000, 1500)):  # larger batches: XGBoost itself
        _check_predictions(client.post("/invocations", json=_split(rows[lo:hi])), model, rows[lo:hi])


@pytest.mark.slow
def test_predict(server, champion):
    client, model = server["client"], champion["model"]
    rows = champion["rows"][:3]
    p, flags = _expected(model, rows)
    one = client.post("/predict", json=_records(rows[:1])[0])
    assert one.status_code == 200 and one.headers["x-model-version"] == "1"
    reasons = Explainer(model).selected(rows[:1].astype(np.float32), np.array(flags[:1], dtype=bool))
    assert one.json() == {
        "fraud_probability": p[0],
        "is_fraud": bool(flags[0]),
        "threshold": model.threshold,
        "model": MODEL_NAME,
        "model_version": "1",
        **({"reasons": reasons[0]} if flags[0] else {}),  # an alert carries its reasons
    }
    many = client.post("/predict", json=_records(rows))
    assert many.status_code == 200
    assert [r["fraud_probability"] for r in many.json()] == p
    assert [r["is_fraud"] for r in many.json()] == [bool(f) for f in flags]
    assert {r["model_version"] for r in many.json()} == {"1"}


def _row(**change) -> dict:
    return {**dict.fromkeys(FEATURES, 0.5), **change}


def _split_text(cells: str) -> bytes:
    return (
        json.dumps({"dataframe_split": {"columns": FEATURES, "data": [[0.5] * 7]}})
        .replace("0.5]]", f"0.5, {cells}]]")
        .encode()
    )


def _record_text(name: str, raw: str, path: str = "/invocations") -> bytes:
    """A one-record request whose feature ``name`` is the JSON text ``raw``, as typed."""
    doc: object = {"dataframe_records": [_row()]} if path == "/invocations" else _row()
    text = json.dumps(doc)
    assert text.count(f'"{name}": 0.5') == 1
    return text.replace(f'"{name}": 0.5', f'"{name}": {raw}').encode()


BIG_ROW = ",".join(["0.123456789012345"] * 8)
ROW_TEXT = json.dumps(_row())
BAD = {  # name: (path, body, content type, status, field, words in the message)
    "malformed JSON": (
        "/invocations",
        b'{"dataframe_records": [}',
        "application/json",
        400,
        "body",
        "malformed JSON",
    ),
    "empty body": ("/invocations", b"", "application/json", 400, "body", "empty body"),
    "not an object": ("/invocations", b"[1, 2]", "application/json", 400, "body", "JSON object"),
    "wrong content type": ("/invocations", b"{}", "text/plain", 415, "Content-Type", "text/plain"),
    "no content type": ("/invocations", b"{}", None, 415, "Content-Type", "missing Content-Type"),
    "content type parameter": (
        "/invocations",
        b"{}",
        "application/json; format=pandas-split",
        415,
        "Content-Type",
        "format",
    ),
    "not utf-8": ("/invocations", b"{}", "application/json; charset=latin-1", 415, "Content-Type", "UTF-8"),
    "several protocol keys": (
        "/invocations",
        {"dataframe_records": [_row()], "instances": [_row()]},
        "application/json",
        400,
        "instances",
        "several protocol keys",
    ),
    "no protocol key": (
        "/invocations",
        {"data": [_row()]},
        "application/json",
        400,
        "body",
        "no protocol key",
    ),
    "unknown top-level key": (
        "/invocations",
        {"dataframe_records": [_row()], "extra": 1},
        "application/json",
        400,
        "extra",
        "unknown key",
    ),
    "missing feature": (
        "/invocations",
        {"dataframe_records": [{k: 0.5 for k in FEATURES[:-1]}]},
        "application/json",
        400,
        "Amount",
        "missing feature 'Amount'",
    ),
    "unknown feature": (
        "/invocations",
        {"dataframe_records": [_row(Class=1)]},
        "application/json",
        400,
        "Class",
        "unknown feature 'Class'",
    ),
    "string value": (
        "/invocations",
        {"dataframe_records": [_row(V3="0.5")]},
        "application/json",
        400,
        "V3",
        'dataframe_records[0].V3: expected a number, got string "0.5"',
    ),
    "boolean value": (
        "/invocations",
        {"dataframe_records": [_row(), _row(V2=True)]},
        "application/json",
        400,
        "V2",
        "dataframe_records[1].V2: expected a number, got boolean true",
    ),
    "null value": (
        "/invocations",
        {"inputs": [_row(Amount=None)]},
        "application/json",
        400,
        "Amount",
        "expected a number, got null",
    ),
    "object value": (
        "/invocations",
        {"dataframe_records": [_row(V1={"a": 1})]},
        "application/json",
        400,
        "V1",
        "got object",
    ),
    "NaN": ("/invocations", _split_text("NaN"), "application/json", 400, "Amount", "NaN is not allowed"),
    "infinity": (
        "/invocations",
        _split_text("-Infinity"),
        "application/json",
        400,
        "Amount",
        "infinity is not allowed",
    ),
    "beyond float32": (
        "/invocations",
        _split_text("1e39"),
        "application/json",
        400,
        "Amount",
        "dataframe_split.data[0].Amount: 1e+39 is out of float32 range",
    ),
    "integer beyond float32": (
        "/invocations",
        _split_text("1" + "0" * 60),
        "application/json",
        400,
        "Amount",
        "Amount: 1e+60 is out of float32 range",
    ),
    "array nested 1,000 deep": (
        "/invocations",
        _record_text("V3", "[" * 1000 + "]" * 1000),
        "application/json",
        400,
        "V3",
        "dataframe_records[0].V3: expected a number, got array [[[[",
    ),
    "object nested 500 deep": (
        "/invocations",
        _record_text("V1", '{"a": ' * 500 + "1" + "}" * 500),
        "application/json",
        400,
        "V1",
        'dataframe_records[0].V1: expected a number, got object {"a": {"a":',
    ),
    "nested 1,000 deep with NaN": (
        "/invocations",
        _record_text("V2", "[" * 1000 + "NaN" + "]" * 1000),
        "application/json",
        400,
        "body",
        "nested too deeply",
    ),
    "predict value nested 1,000 deep": (
        "/predict",
        _record_text("V5", "[" * 1000 + "1" + "]" * 1000, "/predict"),
        "application/json",
        400,
        "V5",
        "transaction[0].V5: expected a number, got array [[[[",
    ),
    "duplicate feature in a record": (
        "/invocations",
        _record_text("V3", '0.5, "V3": 7'),
        "application/json",
        400,
        "V3",
        "duplicate key 'V3'",
    ),
    "duplicate protocol key": (
        "/invocations",
        f'{{"dataframe_records": [], "dataframe_records": [{ROW_TEXT}]}}'.encode(),
        "application/json",
        400,
        "dataframe_records",
        "duplicate key 'dataframe_records'",
    ),
    "duplicate key in dataframe_split": (
        "/invocations",
        _split_text("0.5").replace(b', "data": ', b', "data": [[1, 2]], "data": '),
        "application/json",
        400,
        "data",
        "duplicate key 'data'",
    ),
    "duplicate feature in columns": (
        "/invocations",
        json.dumps({"inputs": {k: [0.5] for k in FEATURES}})
        .replace('"V1": [0.5]', '"V1": [1], "V1": [2]')
        .encode(),
        "application/json",
        400,
        "V1",
        "duplicate key 'V1'",
    ),
    "duplicate key in params": (
        "/invocations",
        f'{{"dataframe_records": [{ROW_TEXT}], "params": {{"a": 1, "a": 2}}}}'.encode(),
        "application/json",
        400,
        "a",
        "duplicate key 'a'",
    ),
    "predict duplicate feature": (
        "/predict",
        _record_text("Amount", '0.5, "Amount": 10', "/predict"),
        "application/json",
        400,
        "Amount",
        "duplicate key 'Amount'",
    ),
    "too many arrays": (
        "/invocations",
        ('{"inputs": [' + ",".join(["[]"] * 5000) + "]}").encode(),
        "application/json",
        413,
        "body",
        f"arrays and objects, more than {MAX_ROWS} rows (serve.max_rows={MAX_ROWS})",
    ),
    "too many values": (
        "/invocations",
        json.dumps({"dataframe_records": [_row()], "params": {"x": [0] * 20000}}).encode(),
        "application/json",
        413,
        "body",
        f"values, more than {MAX_ROWS} rows of 8 features",
    ),
    "CSV too many lines": (
        "/invocations",
        (",".join(FEATURES) + "\n" * 5000 + BIG_ROW + "\n").encode(),
        "text/csv",
        413,
        "CSV rows",
        f"serve.max_rows={MAX_ROWS}",
    ),
    "empty records": (
        "/invocations",
        {"dataframe_records": []},
        "application/json",
        400,
        "dataframe_records",
        "empty batch",
    ),
    "empty split": (
        "/invocations",
        {"dataframe_split": {"columns": FEATURES, "data": []}},
        "application/json",
        400,
        "dataframe_split.data",
        "empty batch",
    ),
    "too many rows": (
        "/invocations",
        {"dataframe_split": {"columns": FEATURES, "data": [[0.5] * 8] * 501}},
        "application/json",
        413,
        "dataframe_split.data",
        f"serve.max_rows={MAX_ROWS}",
    ),
    "oversized payload": (
        "/invocations",
        b" " * (MAX_BYTES + 1),
        "application/json",
        413,
        "body",
        f"serve.max_payload_bytes={MAX_BYTES}",
    ),
    "rows without names": (
        "/invocations",
        {"instances": [[0.5] * 8]},
        "application/json",
        400,
        "instances",
        "without feature names",
    ),
    "ragged row": (
        "/invocations",
        {"dataframe_split": {"columns": FEATURES, "data": [[0.5] * 7]}},
        "application/json",
        400,
        None,
        "expected a list of 8 values",
    ),
    "split without columns": (
        "/invocations",
        {"dataframe_split": {"data": [[0.5] * 8]}},
        "application/json",
        400,
        "dataframe_split.columns",
        "required",
    ),
    "duplicate column": (
        "/invocations",
        {"dataframe_split": {"columns": [*FEATURES, "V1"], "data": [[0.5] * 9]}},
        "application/json",
        400,
        "V1",
        "appears twice",
    ),
    "record not an object": (
        "/invocations",
        {"dataframe_records": [1]},
        "application/json",
        400,
        "dataframe_records",
        "expected an object",
    ),
    "columns of unequal length": (
        "/invocations",
        {"inputs": {**{k: [0.5, 0.5] for k in FEATURES}, "V1": [0.5]}},
        "application/json",
        400,
        "inputs",
        "same length",
    ),
    "CSV missing value": (
        "/invocations",
        (",".join(FEATURES) + "\n" + ",".join(["0.5"] * 7) + ",\n").encode(),
        "text/csv",
        400,
        "Amount",
        "CSV row 0.Amount: missing value",
    ),
    "CSV not a number": (
        "/invocations",
        (",".join(FEATURES) + "\n" + "abc," + BIG_ROW[18:] + "\n").encode(),
        "text/csv",
        400,
        "V1",
        "expected a number, got 'abc'",
    ),
    "CSV wrong header": (
        "/invocations",
        ("x," + ",".join(FEATURES[1:]) + "\n" + BIG_ROW + "\n").encode(),
        "text/csv",
        400,
        "V1",
        "missing feature 'V1'",
    ),
    "CSV only a header": (
        "/invocations",
        (",".join(FEATURES) + "\n").encode(),
        "text/csv",
        400,
        "CSV rows",
        "empty batch",
    ),
    "CSV not utf-8": ("/invocations", b"\xff\xfe\x00", "text/csv", 400, "body", "UTF-8"),
    "predict a number": ("/predict", b"42", "application/json", 400, "body", "a transaction (object)"),
    "predict unknown feature": (
        "/predict",
        _row(colour="red"),
        "application/json",
        400,
        "colour",
        "transaction[0]: unknown feature 'colour'",
    ),
    "predict empty list": ("/predict", [], "application/json", 400, "transactions", "empty batch"),
    "predict CSV": ("/predict", b"a,b\n1,2\n", "text/csv", 415, "Content-Type", "application/json"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_naming_the_field(server, case):
    path, body, ctype, status, field, words = BAD[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"X-API-Key": API_KEY, **({"Content-Type": ctype} if ctype else {})}
    r = httpx.post(server["url"] + path, content=content, headers=headers, timeout=30)
    assert r.status_code == status, (case, r.status_code, r.text)
    out = r.json()
    assert words in out["message"], (case, out)
    assert "np." not in out["message"] and len(out["message"]) < 500, (case, out)
    if field is not None:
        assert out["field"] == field, (case, out)
    assert r.headers["x-model-version"] == "1"


@pytest.mark.slow
def test_colons_inside_strings_are_not_duplicate_keys(server, champion):
    """The duplicate-key check counts colons; one inside a string must not refuse a good request."""
    rows = champion["rows"][:3]
    client = server["client"]
    doc = {"dataframe_records": _records(rows), "params": {"note": "a: b", "nested": {"at": "12:00"}}}
    _check_predictions(client.post("/invocations", json=doc), champion["model"], rows)
    split = _split(rows)
    split["dataframe_split"]["index"] = ["tx:1", "tx:2", "tx:3"]
    _check_predictions(client.post("/invocations", json=split), champion["model"], rows)


@pytest.mark.slow
def test_wrong_path_and_method_then_still_healthy(server):
    client = server["client"]
    r = client.get("/nothing")
    assert r.status_code == 404 and r.json()["field"] == "path"
    r = client.get("/invocations")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = client.post("/metadata")
    assert r.status_code == 405
    # nothing above took a worker down
    assert all(httpx.get(server["url"] + "/ping").status_code == 200 for _ in range(10))
    assert server["proc"].poll() is None


@pytest.mark.slow
def test_metrics(server, champion):
    client = server["client"]
    client.post("/invocations", json=_split(champion["rows"][:2]))
    client.post("/invocations", content=b"{", headers={"Content-Type": "application/json"})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")

    def value(name: str, **labels: str) -> list[float]:
        return _metric(client, name, **labels)

    assert value("fraudops_serve_requests_total", endpoint="/invocations", status="200")[0] >= 1
    assert value("fraudops_serve_requests_total", endpoint="/invocations", status="400")[0] >= 1
    assert value("fraudops_serve_request_duration_seconds_bucket", endpoint="/invocations", le="0.005")
    assert value("fraudops_serve_request_duration_seconds_count", endpoint="/invocations")[0] >= 2
    assert value("fraudops_serve_model_reloads_total", result="success") == [2.0]  # one load per worker
    assert value("fraudops_serve_model_version") == [1.0, 1.0]  # one line per worker
    assert value("fraudops_serve_numpy_trees") == [1.0, 1.0]  # the verified numpy runtime is on


class _Load(threading.Thread):
    """Sends requests without pause and records (status, answering version, probabilities)."""

    def __init__(self, url: str, rows: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.url, self.rows = url, rows
        self.results: list[tuple[int, str | None, list[float] | None, int]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        sizes = (1, 3, 40)  # both runtimes
        with httpx.Client(base_url=self.url, headers={"X-API-Key": API_KEY}, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                n = sizes[i % len(sizes)]
                i += 1
                try:
                    r = client.post("/invocations", json=_split(self.rows[:n]))
                except httpx.HTTPError as e:
                    self.errors.append(repr(e))
                    continue
                probs = (
                    [p["fraud_probability"] for p in r.json()["predictions"]]
                    if r.status_code == 200
                    else None
                )
                self.results.append((r.status_code, r.headers.get("x-model-version"), probs, n))


def _wait_health(url: str, predicate, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = httpx.get(url + "/health").json()
        if predicate(h):
            return h
        time.sleep(0.2)
    raise AssertionError(f"health never matched; last: {h}")


@pytest.mark.slow
def test_hot_reload_under_load(server, champion):
    settings, storage = champion["settings"], champion["storage"]
    rows = champion["rows"][:40]
    load = _Load(server["url"], rows)
    load.start()
    try:
        deadline = time.monotonic() + 30
        while len(load.results) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        settings.train.seed = 7
        settings.train.xgboost = {"n_estimators": 20, "max_depth": 3, "learning_rate": 0.3}
        run = train_step(StepContext(settings, storage))
        v2 = register_step(
            StepContext(settings, storage, handed={"train": StepResult(run_id=run.run_id)})
        ).version
        assert v2 == 2
        assert load.results and all(v == "1" for _, v, _, _ in load.results)  # still version 1
        registry.set_alias(settings, "champion", v2)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # both workers: the last 30 answers all from version 2
            recent = load.results[-30:]
            if len(recent) == 30 and all(v == "2" for _, v, _, _ in recent):
                break
            time.sleep(0.2)
    finally:
        load.stop.set()
        load.join(timeout=30)
    assert not load.errors, load.errors[:3]
    assert all(status == 200 for status, _, _, _ in load.results), {s for s, _, _, _ in load.results}
    versions = [v for _, v, _, _ in load.results]
    assert versions[-1] == "2" and versions[0] == "1", versions[:3]
    models = {"1": champion["model"], "2": load_version(settings, 2)}
    expected = {(v, n): _expected(m, rows[:n])[0] for v, m in models.items() for n in (1, 3, 40)}
    assert expected[("1", 40)] != expected[("2", 40)]
    for _, version, probs, n in load.results:  # each answer is wholly the model it names
        assert probs == expected[(version, n)]
    health = _wait_health(server["url"], lambda h: h["model_version"] == "2")
    assert health["status"] == "ok"
    meta = server["client"].get("/metadata").json()
    assert meta["version"] == "2" and meta["runtime"]["n_trees"] == 20


@pytest.mark.slow
def test_failed_reload_keeps_serving_and_is_reported(server, champion, tmp_path):
    settings = champion["settings"]
    broken = tmp_path / "not_a_model"
    broken.mkdir()
    (broken / "MLmodel").write_text("not a fraudops model\n")
    mv = client(settings).create_model_version(MODEL_NAME, source=str(broken))
    good = str(registry.version_by_alias(settings, "champion").version)
    registry.set_alias(settings, "champion", int(mv.version))
    try:
        health = _wait_health(server["url"], lambda h: h["status"] == "degraded")
        assert health["model_version"] == good
        assert health["last_reload_error"]["version"] == str(mv.version)
        assert "fraud_model" in health["last_reload_error"]["message"]
        assert health["reload_failures"] >= 1
        r = server["client"].post("/invocations", json=_split(champion["rows"][:2]))
        assert r.status_code == 200 and r.headers["x-model-version"] == good
        metrics = server["client"].get("/metrics").text
        assert 'fraudops_serve_model_reloads_total{result="failure"}' in metrics
    finally:
        registry.set_alias(settings, "champion", int(good))
    # health is per worker: wait for one that saw the failure (the other may not have checked in time)
    health = _wait_health(
        server["url"],
        lambda h: h["status"] == "ok" and h["model_version"] == good and h["last_failed_reload"] is not None,
    )
    assert health["last_reload_error"] is None and health["last_failed_reload"]["version"] == str(mv.version)
