"""Training on a real Dask LocalCluster: a window above ``compute.train_in_memory_rows`` trains XGBoost with
xgboost.dask, close to the in-memory model, and the result registers and scores like any other; read from
a feature table, the windows are the local engine's and a fit window above the limit stays on the
workers."""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from distributed import Client

from fraudops import compute
from fraudops.batch.step import batch_step
from fraudops.config import Settings, SimulateConfig, TrainConfig
from fraudops.context import StepContext
from fraudops.data import simulate
from fraudops.data.schema import LABEL, SCENARIO, TX_ID, to_file_columns
from fraudops.features.table import FeatureTable, labelled
from fraudops.modeling import registry, splits, train
from fraudops.modeling.explain import USUAL
from fraudops.promotion.champion import select_champion_step
from fraudops.promotion.register import register_step
from fraudops.tracking.client import client
from fraudops.workspace import init_workspace
from fraudops.workspace.layout import PREDICTIONS, PROD_INPUTS, RAW
from fraudops.workspace.storage import Storage
from helpers import write_days
from worker_kill import killing

pytestmark = pytest.mark.slow

SIM = SimulateConfig(n_customers=300, n_terminals=600, n_days=50, seed=1)
SMALL_XGB = {"n_estimators": 40, "max_depth": 3, "learning_rate": 0.3, "early_stopping_rounds": 10}
WINDOWS = {"train_days": 14, "delay_days": 7, "test_days": 7, "validation_days": 3}
XGBOOST_TRAINING_TASK = "fn-"
"""The key prefix of xgboost.dask's training tasks (one per worker; xgboost/dask/__init__.py names the
function it submits ``fn``)."""
AP_TOLERANCE = 0.05
"""The fits differ in their histogram bins (xgboost.dask merges per-worker quantile sketches where the
in-memory fit sketches the whole window), and so in where early stopping lands on a noisy validation
curve (here 11 trees instead of 40): test AP 0.544 vs 0.514 on this data, 0.599 vs 0.595 and 0.593 vs 0.591
on simulator seeds 2 and 3. 0.05 is about the bootstrap standard error of AP on this test window (0.04-0.05,
about 100 frauds) and within the spread of in-memory fits that differ only in their row-subsampling seed
(up to 0.07); a broken fit (wrong labels, rows or early stopping) lands near the fraud rate, far outside."""


def settings_for(in_memory_rows: int, settings: Settings | None = None) -> Settings:
    """Small XGBoost (no row sampling: both fits see every row) and the given in-memory limit."""
    settings = settings or Settings(workspace=".")
    values = {**settings.train.model_dump(), "xgboost": SMALL_XGB, "n_jobs": 1, "min_frauds": 5, **WINDOWS}
    settings.train = TrainConfig.model_validate(values)
    settings.compute.train_in_memory_rows = in_memory_rows
    return settings


@pytest.fixture(scope="module")
def tx() -> pl.DataFrame:
    return simulate.simulate(SIM)


@pytest.fixture(scope="module")
def in_memory(tx: pl.DataFrame) -> train.Trained:
    return train.train_models(tx, settings_for(10**9))


@pytest.fixture(scope="module")
def on_cluster(dask_client: Client, tx: pl.DataFrame) -> train.Trained:
    with compute.attach(dask_client):
        return train.train_models(tx, settings_for(100))


def test_a_window_above_the_limit_trains_xgboost_on_the_cluster(
    on_cluster: train.Trained, in_memory: train.Trained
) -> None:
    dist = on_cluster
    window = dist.data["rows"]["fit"] + dist.data["rows"]["valid"]
    assert window > 100
    assert dist.candidates["xgboost"][train.TRAINED_ON] == "dask"
    assert dist.candidates["logistic_regression"][train.TRAINED_ON] == "local"  # always in memory
    assert in_memory.candidates["xgboost"][train.TRAINED_ON] == "local"
    assert dist.model.kind == in_memory.model.kind == "xgboost"
    assert dist.model.info[train.TRAINED_ON] == "dask"
    # same split, early stopping on the same validation window, refitted with the trees it chose
    assert dist.windows == in_memory.windows and dist.data == in_memory.data
    assert 1 <= dist.model.info["n_estimators"] < SMALL_XGB["n_estimators"]
    assert dist.model.booster.num_boosted_rounds() == dist.model.info["n_estimators"]
    ap_dist, ap_local = dist.metrics["average_precision"], in_memory.metrics["average_precision"]
    assert abs(ap_dist - ap_local) <= AP_TOLERANCE, (ap_dist, ap_local)
    assert ap_dist > 5 * dist.metrics["n_frauds"] / dist.metrics["n_rows"]  # it learned


def test_a_window_within_the_limit_trains_here_as_without_a_cluster(
    dask_client: Client, tx: pl.DataFrame, in_memory: train.Trained
) -> None:
    with compute.attach(dask_client):
        here = train.train_models(tx, settings_for(10**9))
    assert here.model.info[train.TRAINED_ON] == "local"
    np.testing.assert_array_equal(here.p_test, in_memory.p_test)


def test_the_cluster_trained_model_is_recorded_registered_and_scores(
    on_cluster: train.Trained, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    settings = settings_for(100, init_workspace(str(ws))[0])
    settings.registry.gate_min_auc, settings.registry.gate_ap_over_fraud_rate = 0.5, 1.0
    storage = Storage(settings.workspace)
    days = list(simulate.iter_days(simulate.simulate(SIM)))
    for day, frame in days[:-2]:
        storage.write_frame(f"{RAW}/{simulate.day_file_name(day)}", to_file_columns(frame, settings.data))
    for day, frame in days[-2:]:
        unlabelled = to_file_columns(frame.drop(LABEL, SCENARIO), settings.data)
        storage.write_frame(f"{PROD_INPUTS}/{simulate.day_file_name(day)}", unlabelled)
    run_id = train.log_training(on_cluster, settings)
    assert client(settings).get_run(run_id).data.params[train.TRAINED_ON] == "dask"
    ctx = StepContext(settings, storage)
    assert register_step(ctx).version is not None
    assert select_champion_step(ctx).champion_version is not None
    _, champion = registry.champion(settings)
    assert champion.kind == "xgboost" and champion.info[train.TRAINED_ON] == "dask"
    test_rows = on_cluster.test_frame.select(champion.feature_names)
    np.testing.assert_allclose(champion.predict_proba(test_rows), on_cluster.p_test, rtol=1e-6)
    result = batch_step(ctx)  # scored here, by the local engine, like any other champion
    assert not result.failed and result.totals.files == 2
    scores = pl.concat([storage.read_frame(rel) for rel in storage.ls(PREDICTIONS)])["fraud_probability"]
    assert scores.len() == sum(f.height for _, f in days[-2:]) and scores.n_unique() > 10


@pytest.fixture(scope="module")
def built(dask_client: Client, tx: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> FeatureTable:
    """The simulation in data/raw/, its labelled feature table built by the cluster."""
    ws = tmp_path_factory.mktemp("table") / "ws"
    ws.mkdir()
    settings, _ = init_workspace(str(ws))
    storage = Storage(settings.workspace)
    write_days(storage, settings, RAW, list(simulate.iter_days(tx)))
    with compute.attach(dask_client):
        table = labelled(storage, settings)
    assert isinstance(table, FeatureTable)
    return table


def test_the_tables_windows_read_by_the_workers_are_the_local_engines(
    dask_client: Client, built: FeatureTable, tx: pl.DataFrame
) -> None:
    settings = settings_for(10**9)
    names = train.input_names(built, settings)
    local = splits.split(tx, settings)
    with compute.attach(dask_client):
        cluster = splits.split(built, settings, names)
    assert cluster.windows == local.windows
    for mine, theirs in ((cluster.fit, local.fit), (cluster.valid, local.valid), (cluster.test, local.test)):
        assert isinstance(mine, pl.DataFrame)
        assert mine[TX_ID].to_list() == theirs[TX_ID].to_list()  # same rows, same (time, id) order
        assert mine[LABEL].to_list() == theirs[LABEL].to_list()
        np.testing.assert_allclose(mine.select(names).to_numpy(), theirs.select(names).to_numpy(), rtol=1e-9)
    assert cluster.test_all is not None and local.test_all is not None
    assert cluster.test_all.height == local.test_all.height > cluster.test.height  # known cards removed


def test_a_fit_window_above_the_limit_stays_on_the_workers(
    dask_client: Client, built: FeatureTable, in_memory: train.Trained
) -> None:
    limit = 3000
    settings = settings_for(limit)
    names = train.input_names(built, settings)
    with compute.attach(dask_client):
        parts = splits.split(built, settings, names)
        assert isinstance(parts.fit, splits.OnWorkers)
        assert parts.fit.height == in_memory.data["rows"]["fit"] > limit
        assert parts.fit.frauds == in_memory.data["frauds"]["fit"]
        arrays = train.Arrays.of(parts, names, settings.train.seed)
        assert arrays.x_fit.shape == (parts.fit.height, len(names))  # Dask arrays of the workers' blocks
        assert int(arrays.y_fit.sum().compute()) == parts.fit.frauds
        assert len(arrays.y_train) == parts.fit.height + parts.valid.height
        sampled = len(arrays.local[3])  # what this process holds: a uniform sample of the window
        assert 0.8 * limit < sampled < 1.2 * limit
        trained = train.train_models(built, settings)
    assert trained.data["rows"] == in_memory.data["rows"] and trained.windows == in_memory.windows
    xgb, logistic = trained.candidates["xgboost"], trained.candidates["logistic_regression"]
    assert xgb[train.TRAINED_ON] == "dask" and xgb[train.FITTED_ROWS] == len(arrays.y_train)
    assert logistic[train.TRAINED_ON] == "local" and logistic[train.FITTED_ROWS] < 1.2 * limit
    ap, ap_local = trained.metrics["average_precision"], in_memory.metrics["average_precision"]
    assert abs(ap - ap_local) <= AP_TOLERANCE, (ap, ap_local)
    assert trained.model.info[USUAL].keys() == in_memory.model.info[USUAL].keys()


def test_a_worker_killed_mid_training_the_fit_starts_over_and_completes(
    dask_client: Client,
    built: FeatureTable,
    in_memory: train.Trained,
    tmp_path: Path,
) -> None:
    """xgboost.dask waits forever for a lost peer: the other workers are ended too and the fit redone."""
    settings = settings_for(3000)
    marker = tmp_path / "killed"
    warned = logging.handlers.BufferingHandler(capacity=100)
    logging.getLogger("fraudops.compute").addHandler(warned)
    try:
        with killing(dask_client, XGBOOST_TRAINING_TASK, marker) as pids, compute.attach(dask_client):
            trained = train.train_models(built, settings)
    finally:
        logging.getLogger("fraudops.compute").removeHandler(warned)
    assert marker.exists() and int(marker.read_text()) in pids, "no worker was killed"
    messages = [r.getMessage() for r in warned.buffer]
    assert any("lost during training" in m and "training again (attempt 2 of" in m for m in messages)
    assert not pids & set(dask_client.run(os.getpid).values())  # both workers are new processes
    xgb = trained.candidates["xgboost"]
    assert xgb[train.TRAINED_ON] == "dask"
    assert xgb[train.FITTED_ROWS] == in_memory.data["rows"]["fit"] + in_memory.data["rows"]["valid"]
    assert trained.data["rows"] == in_memory.data["rows"]
    ap, ap_local = (
        xgb["test"]["average_precision"],
        in_memory.candidates["xgboost"]["test"]["average_precision"],
    )
    assert abs(ap - ap_local) <= AP_TOLERANCE, (ap, ap_local)
