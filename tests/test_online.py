"""Online features: raw transactions through a real server, against ``fraudops batch`` on the same day
(online = offline); the defined edge cases; feedback; restart from the snapshot; a shared state in a
real Redis seen by two server processes."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from fraudops.cli import build
from fraudops.config import FeaturesConfig, SimulateConfig
from fraudops.data import simulate
from fraudops.data.loading import load_history
from fraudops.data.schema import AMOUNT, CUSTOMER, LABEL, SCENARIO, TERMINAL, TX_ID, TX_TIME, to_file_columns
from fraudops.features import features_for
from fraudops.features.definitions import feature_names
from fraudops.features.online import (
    DuplicateTransaction,
    MemoryState,
    Neighbourhood,
    RawTx,
    compute,
    to_micros,
)
from fraudops.features.online_redis import RedisState
from fraudops.workspace import init_workspace
from fraudops.workspace.layout import PREDICTIONS, PROD_INPUTS, RAW
from fraudops.workspace.storage import Storage
from helpers import open_ws, train_register_promote
from servers import start_redis
from test_serve import serve_process

NAMES = feature_names(FeaturesConfig())
FIELDS = (TX_ID, TX_TIME, CUSTOMER, TERMINAL, AMOUNT)
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def online_ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Transactions kind: 44 simulated days in data/raw/ and a champion; the 45th day kept back."""
    ws = tmp_path_factory.mktemp("online") / "ws"
    ws.mkdir()
    (ws / "fraudops.yaml").write_text("registry: {model_name: serve-test-model}\n")
    settings, _ = init_workspace(str(ws))
    storage = Storage(settings.workspace)
    df = simulate.simulate(SimulateConfig(n_customers=200, n_terminals=400, n_days=45))
    days = list(simulate.iter_days(df))
    for day, frame in days[:-1]:
        storage.write_frame(f"{RAW}/{simulate.day_file_name(day)}", to_file_columns(frame, settings.data))
    train_register_promote(settings, storage)
    last = days[-1][1].drop(LABEL, SCENARIO).sort(TX_TIME, maintain_order=True)
    return {"ws": ws, "day": last}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def _record(row: dict[str, Any]) -> dict[str, Any]:
    return {**{k: row[k] for k in FIELDS}, TX_TIME: row[TX_TIME].isoformat(sep=" ")}


def _post(client: Any, records: list[dict[str, Any]], path: str = "/predict") -> Any:
    body = json.dumps(records[0] if len(records) == 1 else records)
    return client.post(path, content=body, headers=JSON)


def _answers(r: Any) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    out = r.json()
    return out if isinstance(out, list) else [out]


def _batch(ws: Path, day: pl.DataFrame) -> pl.DataFrame:
    """`fraudops batch` on the day: its probabilities by transaction id."""
    settings, storage = open_ws(ws)
    storage.write_frame(f"{PROD_INPUTS}/day.parquet", to_file_columns(day, settings.data))
    r = CliRunner().invoke(build(), ["batch", "-w", str(ws)])
    assert r.exit_code == 0, r.output
    out = storage.read_frame(f"{PREDICTIONS}/day.out.parquet")
    storage.delete(PROD_INPUTS, recursive=True)
    storage.makedirs(PROD_INPUTS)
    return out.select(TX_ID, "fraud_probability", "is_fraud")


# ------------------------------------------------------------------------------------ in-process


def _replay(state: Any, day: pl.DataFrame) -> pl.DataFrame:
    got = []
    for group in day.partition_by(TX_TIME, maintain_order=True):
        txs = [
            RawTx(r[TX_ID], to_micros(r[TX_TIME]), r[CUSTOMER], r[TERMINAL], r[AMOUNT])
            for r in group.rows(named=True)
        ]
        got += [
            [tx.tx_id, *compute(tx, nb, state.spans)] for tx, nb in zip(txs, state.score(txs), strict=True)
        ]
    return pl.DataFrame(got, schema=[TX_ID, *NAMES], orient="row").sort(TX_ID)


def test_online_features_match_the_engine_in_process():
    """Every feature of a simulated day, one timestamp at a time through the in-process state; labels
    given one by one (feedback) give the same numbers as labels in the history."""
    df = simulate.simulate(SimulateConfig(n_customers=120, n_terminals=200, n_days=45, seed=3))
    cfg = FeaturesConfig()
    cut = df[TX_TIME].max() - dt.timedelta(days=1)  # type: ignore[operator]
    history, day = df.filter(pl.col(TX_TIME) <= cut), df.filter(pl.col(TX_TIME) > cut).drop(LABEL)
    offline = features_for(day, history, cfg).sort(TX_ID)
    labelled = MemoryState(cfg)
    assert labelled.load(history) > 0
    unlabelled = MemoryState(cfg)
    unlabelled.load(history.with_columns(pl.lit(None, pl.Int8).alias(LABEL)))
    frauds = history.filter(pl.col(LABEL) == 1)[TX_ID].to_list()
    applied = [unlabelled.label(i, True) for i in frauds]
    assert any(applied) and not all(applied)  # the oldest are out of every window: unknown
    assert unlabelled.stats() == labelled.stats()
    for state in (labelled, unlabelled):
        online = _replay(state, day)
        assert online[TX_ID].to_list() == offline[TX_ID].to_list()
        for name in NAMES:
            np.testing.assert_allclose(
                online[name], offline[name].cast(pl.Float64), rtol=0, atol=1e-9, err_msg=name
            )
    # a label taken back, and one given twice, leave the counts right
    known = [i for i, ok in zip(frauds, applied, strict=True) if ok]
    assert unlabelled.label(known[-1], True) and unlabelled.label(known[-1], False)
    assert unlabelled.stats()["frauds"] == labelled.stats()["frauds"] - 1
    # the snapshot holds the state: a state loaded from it answers the same
    labelled.sweep()
    copy = MemoryState(cfg)
    copy.load(labelled.export())
    assert copy.stats() == labelled.stats()


def test_redis_state_gives_the_same_features(redis_server):
    """The shared store in a real Redis: the same numbers as the engine, labels and duplicates included."""
    df = simulate.simulate(SimulateConfig(n_customers=80, n_terminals=150, n_days=40, seed=5))
    cfg = FeaturesConfig()
    cut = df[TX_TIME].max() - dt.timedelta(days=1)  # type: ignore[operator]
    history, day = df.filter(pl.col(TX_TIME) <= cut), df.filter(pl.col(TX_TIME) > cut).drop(LABEL)
    state = RedisState(redis_server.url, cfg, "t-same:")
    assert state.build(history) > 0 and state.build(history) == 0  # built once
    online = _replay(state, day)
    offline = features_for(day, history, cfg).sort(TX_ID)
    for name in NAMES:
        np.testing.assert_allclose(
            online[name], offline[name].cast(pl.Float64), rtol=0, atol=1e-9, err_msg=name
        )
    first = day.row(0, named=True)
    with pytest.raises(DuplicateTransaction):
        state.score([RawTx(first[TX_ID], to_micros(first[TX_TIME]), 1, 1, 1.0)])
    assert state.label(first[TX_ID], True) and not state.label(-1, True)


def test_compute_with_empty_history():
    spans = MemoryState(FeaturesConfig()).spans
    tx = RawTx(1, to_micros(dt.datetime(2018, 4, 7, 3, 0)), 9, 9, 42.5)  # a Saturday night
    empty = (0,) * len(FeaturesConfig().terminal_windows)  # no terminal transaction, no fraud, per window
    nb = Neighbourhood([tx.t], [42.5], [9], empty, empty)
    f = dict(zip(NAMES, compute(tx, nb, spans), strict=True))
    assert f["TX_DURING_WEEKEND"] == 1 and f["TX_DURING_NIGHT"] == 1
    assert f["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 1 and f["CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] == 42.5
    assert f["TERMINAL_ID_NB_TX_7DAY_WINDOW"] == 0 and f["TERMINAL_ID_RISK_7DAY_WINDOW"] == 0.0
    assert f["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == 30 * 86400 and f["CUSTOMER_ID_NEW_TERMINAL_30DAY"] == 1
    assert f["CUSTOMER_ID_AMOUNT_RATIO_30DAY"] == 1.0 and f["CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"] == 0.0


# ---------------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(online_ws, tmp_path_factory):
    with serve_process(
        online_ws["ws"], tmp_path_factory.mktemp("online-log") / "server.log", workers=1
    ) as srv:
        yield srv


@pytest.mark.slow
def test_replayed_day_equals_batch(online_ws, server):
    """A full day replayed in time order (simultaneous transactions in one request): every feature equals
    the batch engine's to 1e-9 and every probability equals `fraudops batch`'s exactly."""
    ws, day = online_ws["ws"], online_ws["day"]
    settings, storage = open_ws(ws)
    expected_p = _batch(ws, day)
    offline = features_for(day, load_history(storage, settings), settings.features)
    got: list[dict[str, Any]] = []
    for group in day.partition_by(TX_TIME, maintain_order=True):
        got += _answers(_post(server["client"], [_record(r) for r in group.rows(named=True)]))
    assert not any(a["late"] for a in got)
    online = pl.DataFrame(
        [{TX_ID: a["transaction_id"], "p": a["fraud_probability"], **a["features"]} for a in got]
    ).sort(TX_ID)
    offline = offline.sort(TX_ID)
    assert online[TX_ID].to_list() == offline[TX_ID].to_list() == sorted(day[TX_ID].to_list())
    for name in NAMES:
        np.testing.assert_allclose(
            online[name], offline[name].cast(pl.Float64), rtol=0, atol=1e-9, err_msg=name
        )
    expected_p = expected_p.sort(TX_ID)
    assert online["p"].to_list() == expected_p["fraud_probability"].to_list()
    # reason codes: every alert carries its top (at most 3) positive contributions, the other answers none
    alerts = [a for a in got if a["is_fraud"]]
    assert alerts and all(1 <= len(a["reasons"]) <= 3 for a in alerts)
    assert all(r["text"] and r["contribution"] > 0 for a in alerts for r in a["reasons"])
    assert all("reasons" not in a for a in got if not a["is_fraud"])
    online_ws["replayed"] = got


@pytest.mark.slow
def test_edge_cases_and_feedback(online_ws, server):
    client = server["client"]
    day = online_ws["day"]
    newest = day[TX_TIME].max()
    base = {
        TX_ID: 10**9,
        TX_TIME: str(newest + dt.timedelta(seconds=1)),
        CUSTOMER: 10**6,
        TERMINAL: 10**6,
        AMOUNT: 25.0,
    }
    # unknown card and terminal: an empty history
    a = _answers(_post(client, [base]))[0]
    f = a["features"]
    assert f["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 1 and f["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0
    assert f["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == 30 * 86400 and not a["late"]
    # the same id again: refused, and the state did not count it
    r = _post(client, [{**base, AMOUNT: 99.0}])
    assert r.status_code == 409 and r.json()["field"] == TX_ID, r.text
    r = _post(client, [{**base, TX_ID: 10**9 + 1}, {**base, TX_ID: 10**9 + 1}])
    assert r.status_code == 409, r.text
    # late (within serve.online_max_lateness): scored as of its own time, flagged
    late = {**base, TX_ID: 10**9 + 2, TX_TIME: str(newest - dt.timedelta(minutes=5))}
    a = _answers(_post(client, [late]))[0]
    assert a["late"] and a["features"]["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1  # the later one is not seen
    a = _answers(_post(client, [{**base, TX_ID: 10**9 + 3, TX_TIME: str(newest + dt.timedelta(seconds=2))}]))[
        0
    ]
    assert a["features"]["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 3
    # far in the past or the future: 422 naming the timestamp
    for when in (newest - dt.timedelta(days=2), dt.datetime(2100, 1, 1)):
        r = _post(client, [{**base, TX_ID: 10**9 + 4, TX_TIME: str(when)}])
        assert r.status_code == 422 and r.json()["field"] == TX_TIME, r.text
    # bad input: 400 naming the field
    for bad, field in (
        ({**base, AMOUNT: -1}, AMOUNT),
        ({**base, TX_TIME: "yesterday"}, TX_TIME),
        ({**base, TX_TIME: 1522540800}, TX_TIME),
        ({**base, CUSTOMER: None}, CUSTOMER),
        ({k: v for k, v in base.items() if k != TERMINAL}, TERMINAL),
        ({**base, "extra": 1}, "extra"),
    ):
        r = _post(client, [{**bad, TX_ID: 10**9 + 5}])
        assert r.status_code == 400 and r.json()["field"] == field, (bad, r.text)
    # reasons on request ("explain": true), which must be a boolean
    a = _answers(
        _post(
            client,
            [{**base, TX_ID: 10**9 + 7, TX_TIME: str(newest + dt.timedelta(seconds=2)), "explain": True}],
        )
    )[0]
    assert [r["feature"] for r in a["reasons"]] and all(r["contribution"] > 0 for r in a["reasons"]), a
    r = _post(client, [{**base, TX_ID: 10**9 + 8, "explain": "yes"}])
    assert r.status_code == 400 and r.json()["field"] == "explain", r.text
    # /invocations takes raw transactions in MLflow's formats, answers like MLflow
    raw = {**base, TX_ID: 10**9 + 6, TX_TIME: str(newest + dt.timedelta(seconds=3))}
    split = {"dataframe_split": {"columns": list(raw), "data": [list(raw.values())]}}
    r = client.post("/invocations", content=json.dumps(split), headers=JSON)
    assert r.status_code == 200 and set(r.json()["predictions"][0]) == {"fraud_probability", "is_fraud"}, (
        r.text
    )
    # precomputed features keep working, with the same probability
    pre = dict(a["features"])
    r = client.post("/predict", content=json.dumps(pre), headers=JSON)
    assert r.status_code == 200 and r.json()["fraud_probability"] == a["fraud_probability"], r.text


@pytest.mark.slow
def test_feedback_moves_the_terminal_risk_like_a_label_in_the_history(online_ws, server):
    client = server["client"]
    settings, storage = open_ws(online_ws["ws"])
    day = online_ws["day"]
    for bad, status in (
        ({TX_ID: -7, "label": 1}, 404),
        ({TX_ID: int(day[TX_ID][0]), "label": 2}, 400),
        ({"label": 1}, 400),
    ):
        r = client.post("/feedback", content=json.dumps(bad), headers=JSON)
        assert r.status_code == status, r.text
    target = day.row(0, named=True)
    r = client.post("/feedback", content=json.dumps({TX_ID: target[TX_ID], "label": 1}), headers=JSON)
    assert r.status_code == 200 and r.json() == {"applied": 1}, r.text
    # a transaction at that terminal 7 days and 1 hour later reads the label (after the delay)
    when = target[TX_TIME] + dt.timedelta(days=7, hours=1)
    new = {
        TX_ID: 2 * 10**9,
        TX_TIME: when.isoformat(sep=" "),
        CUSTOMER: target[CUSTOMER],
        TERMINAL: target[TERMINAL],
        AMOUNT: 12.5,
    }
    got = _answers(_post(client, [new]))[0]["features"]
    scored = pl.DataFrame([{k: a[k] for k in ("transaction_id",)} for a in online_ws["replayed"]])
    history = pl.concat(
        [
            load_history(storage, settings),
            day.filter(pl.col(TX_ID).is_in(scored["transaction_id"].implode())).with_columns(
                pl.when(pl.col(TX_ID) == target[TX_ID]).then(1).otherwise(None).cast(pl.Int8).alias(LABEL)
            ),
        ],
        how="diagonal_relaxed",
    )
    row = pl.DataFrame([{**new, TX_TIME: when}])
    want = features_for(row, history, settings.features).row(0, named=True)
    assert want["TERMINAL_ID_RISK_1DAY_WINDOW"] > 0
    for name in NAMES:
        if name.startswith("TERMINAL_ID_"):
            assert got[name] == pytest.approx(want[name], abs=1e-9), name


@pytest.mark.slow
def test_restart_reloads_the_snapshot(online_ws, server, tmp_path):
    """A transaction scored before a restart counts in the windows after it (snapshot at shutdown)."""
    newest = online_ws["day"][TX_TIME].max() + dt.timedelta(days=8)
    tx = {TX_ID: 3 * 10**9, TX_TIME: str(newest), CUSTOMER: 7 * 10**6, TERMINAL: 5, AMOUNT: 10.0}
    assert _answers(_post(server["client"], [tx]))[0]["features"]["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    server["proc"].terminate()  # the module's server: one writer of the snapshot at a time
    server["proc"].wait(timeout=60)  # uvicorn shuts down, then re-raises SIGTERM
    assert "Application shutdown complete" in server["log"].read_text()
    later = {**tx, TX_ID: 3 * 10**9 + 1, TX_TIME: str(newest + dt.timedelta(minutes=1))}
    with serve_process(online_ws["ws"], tmp_path / "b.log", workers=1) as srv:
        f = _answers(_post(srv["client"], [later]))[0]["features"]
        assert f["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2 and f["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == 60.0
        r = _post(srv["client"], [tx])
        assert r.status_code == 409, r.text


@pytest.mark.slow
def test_two_servers_share_the_state_in_redis(online_ws, redis_server, tmp_path):
    """Two server processes on one Redis: each sees the transactions and labels the other took; the
    history is built once, by the first to start (the second, like a restarted one, finds it)."""
    newest = online_ws["day"][TX_TIME].max() + dt.timedelta(days=20)
    tx = {TX_ID: 4 * 10**9, TX_TIME: str(newest), CUSTOMER: 8 * 10**6, TERMINAL: 6, AMOUNT: 10.0}
    env = {"online_state": redis_server.url}
    with (
        serve_process(online_ws["ws"], tmp_path / "a.log", workers=1, **env) as a,
        serve_process(online_ws["ws"], tmp_path / "b.log", workers=1, **env) as b,
    ):
        assert _answers(_post(a["client"], [tx]))[0]["features"]["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
        second = {**tx, TX_ID: tx[TX_ID] + 1, TX_TIME: str(newest + dt.timedelta(seconds=30))}
        f = _answers(_post(b["client"], [second]))[0]["features"]
        assert f["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2 and f["CUSTOMER_ID_SECONDS_SINCE_PREV_TX"] == 30.0
        assert _post(a["client"], [second]).status_code == 409
        assert (
            b["client"]
            .post("/feedback", content=json.dumps({TX_ID: tx[TX_ID], "label": 1}), headers=JSON)
            .status_code
            == 200
        )
        assert (
            a["client"]
            .post("/feedback", content=json.dumps({TX_ID: -1, "label": 1}), headers=JSON)
            .status_code
            == 404
        )
        # 8 days less an hour later, the terminal's delayed window holds both, one a fraud
        later = {**tx, TX_ID: tx[TX_ID] + 3, TX_TIME: str(newest + dt.timedelta(days=8, hours=-1))}
        f = _answers(_post(a["client"], [later]))[0]["features"]
        assert f["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 2 and f["TERMINAL_ID_RISK_1DAY_WINDOW"] == 0.5
    loaded = [re.search(r"(\d+) transactions loaded", (tmp_path / n).read_text()) for n in ("a.log", "b.log")]
    assert [int(m.group(1)) > 0 for m in loaded if m] == [True, False]  # the first built it, once
