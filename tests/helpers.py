"""Builders shared by the test modules: small workspaces, synthetic Kaggle-like tables, a quick champion."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fraudops.config import Settings, SimulateConfig
from fraudops.context import StepContext
from fraudops.data import simulate
from fraudops.data.schema import LABEL, SCENARIO, to_file_columns
from fraudops.modeling.train import train_step
from fraudops.promotion.champion import select_champion_step
from fraudops.promotion.register import register_step
from fraudops.workspace import init_workspace, load_settings
from fraudops.workspace.layout import PROD_INPUTS, RAW
from fraudops.workspace.storage import Storage

SMALL_XGB = {  # a small, fast model: 30 shallow trees that learn fast (the defaults fit ~300 deep, slow ones)
    "n_estimators": 30,
    "max_depth": 3,
    "early_stopping_rounds": 10,
    "learning_rate": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "gamma": 0.0,
}


def open_ws(ws: Path) -> tuple[Settings, Storage]:
    settings = load_settings(str(ws))
    return settings, Storage(settings.workspace)


def small_xgboost(settings: Settings) -> None:
    """The configured XGBoost settings with SMALL_XGB's small, fast model (fast tests)."""
    settings.train.candidates = ["xgboost"]
    settings.train.min_frauds = 5
    settings.train.xgboost = {**settings.train.xgboost, **SMALL_XGB}


def train_register_promote(settings: Settings, storage: Storage) -> None:
    """A small XGBoost champion."""
    small_xgboost(settings)
    ctx = StepContext(settings, storage)
    train_step(ctx)
    register_step(ctx)
    out = select_champion_step(ctx)
    assert out.champion_version is not None, out


def kaggle_like(n: int, seed: int, start: float = 0.0, shift: float = 0.0) -> pl.DataFrame:
    """Kaggle creditcard.csv's columns: Time, V1..V28, Amount, Class (about 4 % fraud, learnable);
    ``shift`` moves V1..V12."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 28))
    v[:, :12] += shift
    amount = np.round(rng.lognormal(3.0, 1.0, n), 2)
    logit = -4.0 + 2.0 * v[:, 0] - 1.5 * v[:, 1]
    fraud = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    cols: dict[str, Any] = {"Time": start + np.arange(n, dtype=np.float64) * 10}
    cols.update({f"V{i + 1}": v[:, i] for i in range(28)})
    return pl.DataFrame({**cols, "Amount": amount, "Class": fraud})


def features_workspace(ws: Path) -> Path:
    """Features kind (Kaggle-like columns): a labelled table in data/raw/ and a champion trained on it."""
    ws.mkdir(parents=True)
    (ws / "fraudops.yaml").write_text("data: {kind: features}\n")
    settings, _ = init_workspace(str(ws))
    storage = Storage(settings.workspace)
    storage.write_frame(f"{RAW}/creditcard.csv", kaggle_like(4000, 0))
    train_register_promote(settings, storage)
    return ws


def race(locks: list[Any]) -> list[bool]:
    """Every lock tries to acquire at once (one thread each); which of them won."""
    from fraudops.errors import LockHeldError

    def take(lock: Any) -> bool:
        try:
            lock.acquire()
            return True
        except LockHeldError:
            return False

    with ThreadPoolExecutor(len(locks)) as pool:
        return list(pool.map(take, locks))


def write_days(
    storage: Storage, settings: Settings, folder: str, days: list[tuple[Any, pl.DataFrame]]
) -> None:
    """Simulated days as the simulator writes them: a file per day."""
    for day, frame in days:
        storage.write_frame(f"{folder}/{simulate.day_file_name(day)}", to_file_columns(frame, settings.data))


def dask_run_workspace(workspace: str, compute: str, days: int = 50, scored: int = 2) -> int:
    """A workspace (a folder or a bucket URL) for `fraudops run` with ``compute`` (its YAML mapping): a
    small XGBoost, a simulation's days in data/raw/ but the last 4, the last ``scored`` of them unlabelled
    in prod_inputs/. Returns how many rows are to be scored."""
    storage = Storage(workspace)
    xgb = json.dumps(SMALL_XGB)
    storage.write_text(
        "fraudops.yaml",
        f"train: {{candidates: [xgboost], min_frauds: 5, xgboost: {xgb}}}\n"
        f"compute: {compute}\n"
        "registry: {gate_min_auc: 0.5, gate_ap_over_fraud_rate: 1.0}\n",  # a small model passes the gate
    )
    settings, _ = init_workspace(workspace)
    df = simulate.simulate(SimulateConfig(n_customers=200, n_terminals=400, n_days=days, seed=5))
    by_day = list(simulate.iter_days(df))
    write_days(storage, settings, RAW, by_day[:-4])
    write_days(storage, settings, PROD_INPUTS, [(d, f.drop(LABEL, SCENARIO)) for d, f in by_day[-scored:]])
    return sum(f.height for _, f in by_day[-scored:])
