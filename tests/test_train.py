"""Training: the leak-free time split, the features-kind split, candidates, threshold, bad inputs.

Everything here calls the functions directly on a tiny simulation (no MLflow store is created; the
tracking side of ``train_step`` is tested in test_registry.py, which shares one store), but the last test:
a features-kind table without a time column through the real commands and steps.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from fraudops import features
from fraudops.cli import build
from fraudops.config import DataConfig, FeaturesConfig, Settings, SimulateConfig, TrainConfig
from fraudops.context import StepContext
from fraudops.data.loading import fingerprint
from fraudops.data.schema import CUSTOMER, LABEL, TX_ID, TX_TIME
from fraudops.data.simulate import simulate
from fraudops.errors import FraudopsError
from fraudops.modeling import calibration, evaluate, splits, train
from fraudops.tracking.client import client, experiment_id
from fraudops.workspace import init_workspace
from fraudops.workspace.layout import CURRENT, DECISION_JSON, PREDICTIONS, PROD_INPUTS
from helpers import SMALL_XGB as HELPER_XGB
from helpers import kaggle_like

SIM = SimulateConfig(n_customers=300, n_terminals=600, n_days=50, seed=1)  # 2018-04-01 .. 2018-05-20
FIRST, LAST = dt.date(2018, 4, 1), dt.date(2018, 5, 20)
SMALL_XGB = {"n_estimators": 40, "max_depth": 3, "learning_rate": 0.3, "early_stopping_rounds": 10}
WINDOWS = {"train_days": 14, "delay_days": 7, "test_days": 7, "validation_days": 3}


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def make_settings(tmp: str = ".", **train_updates: object) -> Settings:
    settings = Settings(workspace=tmp)
    values = {**settings.train.model_dump(), "xgboost": SMALL_XGB, "n_jobs": 1, **WINDOWS, **train_updates}
    settings.train = TrainConfig.model_validate(values)
    return settings


@pytest.fixture(scope="module")
def tx() -> pl.DataFrame:
    df = simulate(SIM)
    assert df[TX_TIME].min().date() == FIRST and df[TX_TIME].max().date() == LAST  # type: ignore[union-attr]
    return df


@pytest.fixture(scope="module")
def parts(tx: pl.DataFrame) -> splits.Split:
    return splits.split(tx, make_settings())


@pytest.fixture(scope="module")
def trained(tx: pl.DataFrame) -> train.Trained:
    return train.train_models(tx, make_settings())


def days(frame: pl.DataFrame) -> set[dt.date]:
    return set(frame[TX_TIME].dt.date().unique().to_list())


def between(frame: pl.DataFrame, start: str, end: str) -> pl.DataFrame:
    day = pl.col(TX_TIME).dt.date()
    return frame.filter((day >= d(start)) & (day < d(end)))


# ------------------------------------------------------------------------------------------ windows


def test_windows_end_with_the_data_by_default():
    # 21 + 7 + 7 = 35 days ending with the last day: 2018-04-16 .. 2018-05-20
    w = splits.plan_windows(
        FIRST, LAST, TrainConfig(train_days=21, delay_days=7, test_days=7, validation_days=3)
    )
    assert w == {
        "train_start": d("2018-04-16"),
        "valid_start": d("2018-05-04"),  # the last 3 training days
        "train_end": d("2018-05-07"),  # exclusive: training is 04-16 .. 05-06
        "test_start": d("2018-05-14"),  # 7-day gap 05-07 .. 05-13
        "test_end": d("2018-05-21"),  # exclusive: test is 05-14 .. 05-20, the last day
    }


def test_windows_of_the_handbook_protocol():
    cfg = TrainConfig(train_start=d("2018-07-25"), train_days=7, delay_days=7, test_days=7, validation_days=3)
    w = splits.plan_windows(d("2018-04-01"), d("2018-09-30"), cfg)
    assert w == {
        "train_start": d("2018-07-25"),
        "valid_start": d("2018-07-29"),
        "train_end": d("2018-08-01"),  # train 07-25 .. 07-31
        "test_start": d("2018-08-08"),
        "test_end": d("2018-08-15"),  # test 08-08 .. 08-14
    }


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(train_start=d("2018-03-31"), train_days=7, delay_days=7, test_days=7),  # starts too early
        TrainConfig(train_start=d("2018-05-01"), train_days=7, delay_days=7, test_days=7),  # test ends 05-21
        TrainConfig(train_days=40, delay_days=7, test_days=7),  # longer than the data
    ],
)
def test_windows_outside_the_data_are_an_error(cfg: TrainConfig):
    with pytest.raises(
        FraudopsError, match=r"outside the labelled data, which covers 2018-04-01\.\.2018-05-20"
    ):
        splits.plan_windows(FIRST, LAST, cfg)


def test_validation_must_be_shorter_than_training():
    with pytest.raises(FraudopsError, match="validation_days"):
        splits.plan_windows(FIRST, LAST, TrainConfig(train_days=3, validation_days=3))


def test_last_day_of_the_data_is_the_last_test_day():
    cfg = TrainConfig(train_start=d("2018-04-30"), train_days=7, delay_days=7, test_days=7)  # test 05-14..20
    assert splits.plan_windows(FIRST, LAST, cfg)["test_end"] == d("2018-05-21")


# ------------------------------------------------------------------------------- transactions split


def test_split_parts_lie_in_their_windows(tx: pl.DataFrame, parts: splits.Split):
    # latest windows: train 04-23 .. 05-06 (fit .. 05-03, validation 05-04 .. 05-06), gap, test 05-14 .. 05-20
    assert parts.windows == {
        "train_start": "2018-04-23",
        "valid_start": "2018-05-04",
        "train_end": "2018-05-07",
        "test_start": "2018-05-14",
        "test_end": "2018-05-21",
    }
    assert days(parts.fit) == {d("2018-04-23") + dt.timedelta(days=i) for i in range(11)}
    assert days(parts.valid) == {d("2018-05-04"), d("2018-05-05"), d("2018-05-06")}
    assert days(parts.test) <= {d("2018-05-14") + dt.timedelta(days=i) for i in range(7)}
    assert parts.n_valid_days == 3.0
    # every training-window transaction is in fit or validation, none twice
    window = between(tx, "2018-04-23", "2018-05-07")
    assert sorted(parts.train[TX_ID].to_list()) == sorted(window[TX_ID].to_list())
    # the delay gap is used by nobody
    gap = set(between(tx, "2018-05-07", "2018-05-14")[TX_ID].to_list())
    for part in (parts.fit, parts.valid, parts.test):
        assert not gap & set(part[TX_ID].to_list())


def test_validation_is_carved_from_the_end_of_training(parts: splits.Split):
    assert parts.fit[TX_TIME].max() < parts.valid[TX_TIME].min()
    assert parts.valid[TX_TIME].max() < parts.test[TX_TIME].min()


def test_known_compromised_cards_are_removed_from_test(tx: pl.DataFrame, parts: splits.Split):
    delay = 7
    training_fraud_cards = set(parts.train.filter(pl.col(LABEL) == 1)[CUSTOMER].to_list())
    # a fraud on day F (in the gap or the test window) makes its card known from day F + delay + 1
    later = between(tx, "2018-05-07", "2018-05-21").filter(pl.col(LABEL) == 1)
    known_from = {
        card: min(day_list) + dt.timedelta(days=delay + 1)
        for card, day_list in later.group_by(CUSTOMER)
        .agg(pl.col(TX_TIME).dt.date().alias("days"))
        .iter_rows()
    }

    def known(card: int, day: dt.date) -> bool:
        return card in training_fraud_cards or (card in known_from and day >= known_from[card])

    window = between(tx, "2018-05-14", "2018-05-21")
    expected = [
        tid
        for tid, card, t in window.select(TX_ID, CUSTOMER, TX_TIME).iter_rows()
        if not known(card, t.date())
    ]
    assert parts.test[TX_ID].to_list() == expected
    assert parts.test.height < window.height
    assert not training_fraud_cards & set(parts.test[CUSTOMER].to_list())
    # the gap's labels are used: without them, more test rows would be kept in this data
    without_gap = evaluate.remove_known_compromised(window, parts.train, delay)
    assert without_gap.height > parts.test.height


def test_features_see_the_history_before_the_training_window(tx: pl.DataFrame, parts: splits.Split):
    names = features.feature_names(FeaturesConfig())
    everything = features.add_features(tx, FeaturesConfig()).select(TX_ID, *names)
    for part in (parts.fit, parts.valid, parts.test):
        got = part.select(TX_ID, *names).sort(TX_ID)
        want = everything.filter(pl.col(TX_ID).is_in(got[TX_ID].implode())).sort(TX_ID)
        assert got.equals(want)
    # the first training day's 30-day windows do count earlier transactions
    first_day = parts.fit.filter(pl.col(TX_TIME).dt.date() == d("2018-04-23"))
    assert (first_day["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] > first_day["CUSTOMER_ID_NB_TX_1DAY_WINDOW"]).any()


def test_latest_ignores_train_start(tx: pl.DataFrame):
    settings = make_settings(train_start=d("2018-04-05"))
    assert splits.split(tx, settings).windows["train_start"] == "2018-04-05"
    assert splits.split(tx, settings, latest=True).windows["test_end"] == "2018-05-21"


# ----------------------------------------------------------------------------------- features kind


def feature_table(n: int = 1000, with_time: bool = True, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {TX_ID: np.arange(n), "V1": rng.normal(size=n), "Amount": rng.uniform(0, 50, n)}
    cols[LABEL] = (rng.random(n) < 0.1).astype(np.int8)
    if with_time:
        cols[TX_TIME] = rng.permutation(n).astype(np.float64) * 10.0  # shuffled: the split must sort
    return pl.DataFrame(cols)


def features_settings() -> Settings:
    settings = make_settings()
    settings.data = DataConfig(kind="features")
    return settings


def test_features_kind_splits_by_time():
    df = feature_table()
    parts = splits.split(df, features_settings())
    assert (parts.fit.height, parts.valid.height, parts.test.height) == (640, 160, 200)
    assert parts.fit[TX_TIME].max() < parts.valid[TX_TIME].min()
    assert parts.valid[TX_TIME].max() < parts.test[TX_TIME].min()
    assert sorted(parts.test[TX_TIME].to_list()) == [10.0 * i for i in range(800, 1000)]  # the last 20 %
    assert parts.windows["split"] == "by time"


def test_features_kind_without_time_is_stratified():
    df = feature_table(with_time=False)
    rate = df[LABEL].mean()
    parts = splits.split(df, features_settings())
    assert parts.windows["split"] == "stratified"
    ids = pl.concat([parts.fit[TX_ID], parts.valid[TX_ID], parts.test[TX_ID]])
    assert sorted(ids.to_list()) == list(range(1000))  # disjoint and complete
    for part in (parts.fit, parts.valid, parts.test):
        assert abs(part[LABEL].sum() - rate * part.height) <= 1  # type: ignore[operator]


@pytest.mark.parametrize(("n", "frauds"), [(100, 1), (4, 2)])
def test_features_kind_without_time_too_few_rows_to_stratify_is_an_error(n: int, frauds: int):
    df = feature_table(n, with_time=False).with_columns(
        pl.Series(LABEL, [1] * frauds + [0] * (n - frauds), dtype=pl.Int8)
    )
    with pytest.raises(FraudopsError, match=f"{n} labelled rows with {frauds} frauds are too few to split"):
        splits.split(df, features_settings())


def test_features_kind_trains_on_its_own_columns():
    df = feature_table(4000, seed=3)
    df = df.with_columns(((pl.col("V1") > 1.2) | (pl.col(LABEL) == 1)).cast(pl.Int8).alias(LABEL))
    settings = features_settings()
    result = train.train_models(df, settings)
    assert result.model.feature_names == ["V1", "Amount"]
    assert result.metrics["roc_auc"] > 0.7
    assert "card_precision_at_100" not in result.metrics  # no cards in a features table


# ---------------------------------------------------------------------------------------- training


def test_train_models_picks_the_best_candidate_on_validation(trained: train.Trained):
    c = trained.candidates
    assert set(c) == {"logistic_regression", "xgboost"}
    best = max(c, key=lambda n: c[n]["valid_average_precision"])
    assert trained.model.kind == best
    assert trained.model.info["candidate"] == best
    for cand in c.values():
        assert 0 < cand["valid_average_precision"] <= 1
        assert set(evaluate.METRIC_NAMES) <= set(cand["test"])


def test_xgboost_refit_uses_the_early_stopped_number_of_trees(tx: pl.DataFrame):
    result = train.train_models(tx, make_settings(candidates=["xgboost"]))
    n = result.candidates["xgboost"]["n_estimators"]
    assert 1 <= n <= SMALL_XGB["n_estimators"]
    assert result.model.booster.num_boosted_rounds() == n == result.model.info["n_estimators"]


def test_threshold_is_chosen_on_validation_and_stored(trained: train.Trained):
    info = trained.threshold_info
    assert info["strategy"] == "min_cost"
    assert info["n_days"] == 3.0  # validation days
    assert trained.model.threshold == info["threshold"] == trained.metrics["threshold"]
    assert 0 < trained.model.threshold < 1
    # the test metrics are the model's, at that threshold
    p = trained.model.predict_proba(trained.test_frame)
    np.testing.assert_allclose(p, trained.p_test)
    conf = evaluate.confusion_at(trained.y_test, p, trained.model.threshold)
    assert (conf["tp"], conf["fp"]) == (trained.metrics["tp"], trained.metrics["fp"])
    assert trained.metrics["average_precision"] == pytest.approx(
        evaluate.average_precision(trained.y_test, p)
    )


def test_scores_are_calibrated_on_validation_without_changing_the_ranking(
    tx: pl.DataFrame, trained: train.Trained
):
    cal = trained.calibration
    assert cal["method"] == trained.model.calibration["method"] in ("isotonic", "platt", "none")
    raw = trained.model.raw_proba(trained.test_frame)
    np.testing.assert_array_equal(trained.model.calibrate(raw), trained.p_test)
    for metric in (evaluate.average_precision, evaluate.roc_auc):
        assert metric(trained.y_test, trained.p_test) == metric(trained.y_test, raw)
    assert cal["test_ece"] == pytest.approx(calibration.ece(trained.y_test, trained.p_test))
    # XGBoost's raw probabilities are close to calibrated already (here calibrating them moves test ECE
    # by about 0.002 either way); the class-balanced logistic regression's are far too high, and
    # calibration on validation must bring them down
    assert cal["test_ece"] < 0.05
    logistic = train.train_models(tx, make_settings(candidates=["logistic_regression"])).calibration
    assert logistic["test_ece"] < logistic["test_ece_uncalibrated"] / 3
    assert sum(c["n"] for c in cal["reliability"]) == len(trained.y_test)


def test_result_metrics_and_data_description(tx: pl.DataFrame, trained: train.Trained):
    m = trained.metrics
    assert set(evaluate.METRIC_NAMES) | {"card_precision_at_100"} <= set(m)
    assert m["roc_auc"] > 0.7 and m["average_precision"] > 3 * m["fraud_rate"]
    assert m["n_rows"] == trained.data["rows"]["test"] == len(trained.y_test) == trained.test_frame.height
    assert m["n_frauds"] == trained.data["frauds"]["test"] == trained.y_test.sum()
    assert trained.data["fingerprint"] == fingerprint(tx)
    assert trained.windows["test_end"] == "2018-05-21"
    assert set(trained.importances) == set(trained.model.feature_names)
    assert trained.seconds > 0


def test_training_is_reproducible(tx: pl.DataFrame, trained: train.Trained):
    again = train.train_models(tx, make_settings())
    np.testing.assert_array_equal(again.p_test, trained.p_test)
    assert again.model.threshold == trained.model.threshold


def test_threshold_strategies_are_configurable(tx: pl.DataFrame):
    settings = make_settings(candidates=["logistic_regression"])
    settings.train.threshold.strategy = "target_fpr"
    settings.train.threshold.target_fpr = 0.02
    result = train.train_models(tx, settings)
    assert result.threshold_info["strategy"] == "target_fpr"
    assert result.threshold_info["fpr"] <= 0.02


def test_scale_pos_weight_options():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)).astype(np.float32)
    y = (x[:, 0] > 1).astype(np.int32)
    for value in (1.0, "sqrt", "balanced"):
        cfg = TrainConfig(xgboost={"n_estimators": 5, "scale_pos_weight": value}, n_jobs=1)
        model = train.fit_xgboost(x, y, ["a", "b"], cfg)
        assert model.booster.num_boosted_rounds() == 5
    with pytest.raises(FraudopsError, match="scale_pos_weight"):
        train.fit_xgboost(x, y, ["a", "b"], TrainConfig(xgboost={"scale_pos_weight": "lots"}))


# -------------------------------------------------------------------------------------- bad inputs


def test_no_labelled_data_is_an_error(tx: pl.DataFrame):
    with pytest.raises(FraudopsError, match="no labelled data"):
        train.train_models(pl.DataFrame(), make_settings())
    with pytest.raises(FraudopsError, match="no labelled data"):
        train.train_models(tx.drop(LABEL), make_settings())


def test_one_class_only_is_an_error(tx: pl.DataFrame):
    with pytest.raises(FraudopsError, match="one class only"):
        train.train_models(tx.with_columns(pl.lit(0, pl.Int8).alias(LABEL)), make_settings())


def test_too_few_frauds_in_a_window_is_an_error(tx: pl.DataFrame):
    with pytest.raises(
        FraudopsError, match=r"the fit window has \d+ frauds, fewer than train.min_frauds=100000"
    ):
        train.train_models(tx, make_settings(min_frauds=100_000))


def test_a_window_without_frauds_is_an_error(tx: pl.DataFrame):
    # no fraud in the validation days: both classes exist overall, but not in that window
    day = pl.col(TX_TIME).dt.date()
    in_validation = (day >= d("2018-05-04")) & (day < d("2018-05-07"))
    no_valid_fraud = tx.with_columns(
        pl.when(in_validation).then(0).otherwise(pl.col(LABEL)).cast(pl.Int8).alias(LABEL)
    )
    with pytest.raises(FraudopsError, match="the validation window has 0 frauds"):
        train.train_models(no_valid_fraud, make_settings())


def test_test_window_outside_the_data_is_an_error(tx: pl.DataFrame):
    with pytest.raises(FraudopsError, match="outside the labelled data"):
        train.train_models(tx, make_settings(train_start=d("2018-05-10")))


def test_unreachable_tracking_server_fails_fast_before_any_work(tmp_path):
    settings, _ = init_workspace(str(tmp_path / "ws"))
    settings.registry.tracking_uri = "http://127.0.0.1:9"
    started = time.perf_counter()
    with pytest.raises(FraudopsError, match=r"http://127\.0\.0\.1:9 cannot be reached"):
        train.train_step(StepContext.of(settings))
    assert time.perf_counter() - started < 10
    assert not (tmp_path / "ws" / "mlflow.db").exists()


# ----------------------------------------------------------------------- features kind without time


def test_features_kind_without_a_time_column_end_to_end(tmp_path, monkeypatch):
    """A Kaggle-like table without Time, through the real commands and steps: init --kind features, data
    validate and import, then one execution of train → register → select_champion → batch_inference →
    monitor; training splits stratified at random and logs the feature columns it chose."""
    for var in [v for v in os.environ if v.startswith("FRAUDOPS_")]:
        monkeypatch.delenv(var)
    app, ws = build(), tmp_path / "ws"

    def cli(*args: str) -> str:
        r = CliRunner().invoke(app, [*args])
        assert r.exit_code == 0, r.output
        return " ".join(r.output.split())

    cli("init", str(ws), "--kind", "features")
    config = yaml.safe_load((ws / "fraudops.yaml").read_text())
    config["train"].update({"candidates": ["xgboost"], "min_frauds": 5, "n_jobs": 1})
    config["train"]["xgboost"].update(HELPER_XGB)
    (ws / "fraudops.yaml").write_text(yaml.safe_dump(config))
    table = kaggle_like(4000, 0).drop("Time")
    table.write_csv(tmp_path / "creditcard.csv")
    features = [f"V{i}" for i in range(1, 29)] + ["Amount"]

    out = cli("data", "validate", str(tmp_path / "creditcard.csv"), "-w", str(ws))
    assert f"29 feature columns: {', '.join(features)}; no time column (stratified random split)" in out
    assert "all files valid" in out
    cli("data", "import", str(tmp_path / "creditcard.csv"), "-w", str(ws))
    kaggle_like(300, 1).drop("Time", "Class").write_csv(ws / PROD_INPUTS / "today.csv")

    out = cli("run", "-w", str(ws))
    assert "SUCCEEDED" in out
    execution = out.split("execution ", 1)[1].split(" ", 1)[0]
    logs = cli("executions", "show", execution, "-w", str(ws), "--logs")
    assert f"features kind: 29 feature columns: {', '.join(features)}; no time column" in logs
    first = json.loads((ws / DECISION_JSON).read_text())
    assert (first["status"], first["n_rows"], first["retraining_required"]) == (
        "insufficient data",
        300,
        "NO",
    )
    # labels arrive for rows the champion never saw: monitoring judges them (and the batch scored)
    kaggle_like(1500, 2).drop("Time").write_parquet(ws / CURRENT / "labelled.parquet")
    cli("monitor", "-w", str(ws))

    settings = init_workspace(str(ws))[0]
    mlflow = client(settings)
    runs = mlflow.search_runs([experiment_id(settings)], "tags.`fraudops.step` = 'train'")
    assert len(runs) == 1
    params = runs[0].data.params
    assert params["window_split"] == "stratified"
    assert params["feature_columns"] == ",".join(features)
    assert (params["window_fit_rows"], params["window_valid_rows"], params["window_test_rows"]) == (
        "2560",
        "640",
        "800",
    )
    scored = pl.read_csv(ws / PREDICTIONS / "today.out.csv")
    assert scored.height == 300 and scored["row_number"].to_list() == list(range(300))
    decision = json.loads((ws / DECISION_JSON).read_text())
    # judged: the 1,500 labelled rows and the 300 to score, none of them seen in training; no time span
    assert (decision["n_rows"], decision["n_labelled"]) == (1800, 1500)
    assert decision["window_start"] is None and decision["reference_start"] is None
    assert decision["reference_rows"] == 800
    assert decision["status"] == "ok"
