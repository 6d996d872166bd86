"""`fraudops demo`: the whole loop on simulated data, from an empty folder, in a few minutes.

One simulation (same customers and terminals throughout) is cut into the data a team would have at two
moments, so that monitoring compares *new* data with the champion's reference (current data that a model
was trained and promoted on cannot show drift, and retraining on unchanged data cannot improve anything)::

    day  0 ............ 70 ..... 77 ....... 84 ...................... 105 ...... 112
         | history      | week 1 | batch 1 | drift from here on         | batch 2  |
    go-live   data/raw     current  prod_inputs (unlabelled)
    4 weeks   data/raw + week 1     current_data: 4 weeks labelled, 3 drifted    prod_inputs

1. **go-live** — ``{"run": "all"}``: train on the history, register, promote the first champion (its
   reference = its test window, the latest labelled week), score batch 1, monitor what the champion has
   not seen (batch 1): no drift yet.
2. **four weeks later** — the weekly schedule ``{"run": "batch_inference"}``: score batch 2, monitor the four
   labelled weeks and batch 2 (amounts up 50 %, night bursts of small frauds) → the decision, with its
   reasons.
3. **trigger** — on YES, ``{"run": "all", "triggered_by": "monitoring", "reason": "auto_retraining"}``
   retrains on the newer labelled data and the new challenger meets the champion on the same latest window.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from fraudops.config import Settings, SimulateConfig, TrainConfig
from fraudops.data import simulate as sim
from fraudops.data.schema import LABEL, SCENARIO, TX_TIME, to_file_columns
from fraudops.errors import FraudopsError
from fraudops.pipeline.reset import remote_targets, reset
from fraudops.workspace import init_workspace, load_settings
from fraudops.workspace.layout import CONFIG_FILE, CURRENT, PROD_INPUTS, RAW
from fraudops.workspace.storage import Storage

HISTORY_DAYS = 70
WEEK = 7
LATER_WEEKS = 4
START = dt.date(2018, 4, 1)

DEMO_YAML = """\
# fraudops demo workspace (written by `fraudops demo`). Every other setting has its default:
# `fraudops config -w {workspace}` prints them all.
simulate:
  n_customers: {customers}
  n_terminals: {terminals}
  n_days: {days}
  start_date: '{start}'
  drift_start: '{drift}'
  seed: 0
train:
  # the default XGBoost settings with fewer, larger boosting steps, so that training takes seconds
  xgboost: {xgboost}
"""


def demo_xgboost(trees: int) -> dict[str, Any]:
    return {**TrainConfig().xgboost, "n_estimators": trees, "learning_rate": 0.1, "early_stopping_rounds": 20}


@dataclass(frozen=True)
class Timeline:
    """Day ranges (start inclusive, end exclusive) of the demo's data."""

    start: dt.date = START

    def day(self, n: int) -> dt.date:
        return self.start + dt.timedelta(days=n)

    @property
    def n_days(self) -> int:
        return HISTORY_DAYS + WEEK + LATER_WEEKS * WEEK + WEEK

    @property
    def drift_start(self) -> dt.date:
        """After batch 1: at go-live monitoring sees undrifted production data."""
        return self.day(HISTORY_DAYS + 2 * WEEK)

    @property
    def history(self) -> tuple[dt.date, dt.date]:
        return self.day(0), self.day(HISTORY_DAYS)

    @property
    def week1(self) -> tuple[dt.date, dt.date]:
        return self.day(HISTORY_DAYS), self.day(HISTORY_DAYS + WEEK)

    @property
    def batch1(self) -> tuple[dt.date, dt.date]:
        return self.day(HISTORY_DAYS + WEEK), self.day(HISTORY_DAYS + 2 * WEEK)

    @property
    def later(self) -> tuple[dt.date, dt.date]:
        return self.day(HISTORY_DAYS + WEEK), self.day(HISTORY_DAYS + WEEK + LATER_WEEKS * WEEK)

    @property
    def batch2(self) -> tuple[dt.date, dt.date]:
        return self.later[1], self.day(self.n_days)


def is_empty_workspace(storage: Storage) -> bool:
    """True when the folder does not exist or holds nothing but empty folders."""
    if not storage.fs.exists(storage.root):
        return True
    return not any(True for _ in storage.fs.find(storage.root))


def create(workspace: str, *, customers: int, trees: int, force: bool) -> tuple[Settings, Storage, Timeline]:
    """A fresh workspace with the demo's fraudops.yaml; refuses a non-empty one unless ``force`` (reset)."""
    storage = Storage(workspace)
    if not is_empty_workspace(storage):
        if not force:
            raise FraudopsError(
                f"{storage.uri()} is not empty: the demo starts from nothing. Use another folder, "
                f"`fraudops demo {workspace} --force` (resets it first) or `fraudops reset -w {workspace}`"
            )
        if storage.exists(CONFIG_FILE):
            settings = load_settings(workspace)
            reset(settings, storage, remote_targets(settings))
            storage.delete(CONFIG_FILE)
        else:
            raise FraudopsError(
                f"{storage.uri()} is not empty and is not a fraudops workspace: refusing to empty it"
            )
    t = Timeline()
    storage.write_text(
        CONFIG_FILE,
        DEMO_YAML.format(
            workspace=workspace,
            customers=customers,
            terminals=2 * customers,
            days=t.n_days,
            start=t.start.isoformat(),
            drift=t.drift_start.isoformat(),
            xgboost=json.dumps(demo_xgboost(trees)),
        ),
    )
    settings, _ = init_workspace(workspace)
    return settings, storage, t


def simulate(settings: Settings) -> tuple[pl.DataFrame, dict[str, Any]]:
    cfg: SimulateConfig = settings.simulate
    df = sim.simulate(cfg)
    return df, sim.summary(df)


def _days(df: pl.DataFrame, span: tuple[dt.date, dt.date]) -> pl.DataFrame:
    day = pl.col(TX_TIME).dt.date()
    return df.filter((day >= span[0]) & (day < span[1]))


def write_days(
    storage: Storage, settings: Settings, df: pl.DataFrame, folder: str, span: tuple[dt.date, dt.date]
) -> int:
    """One labelled file per day (as `fraudops data simulate` writes them); returns the rows written."""
    part = _days(df, span)
    for day, frame in sim.iter_days(part):
        storage.write_frame(f"{folder}/{sim.day_file_name(day)}", to_file_columns(frame, settings.data))
    return part.height


def write_batch(
    storage: Storage, settings: Settings, df: pl.DataFrame, span: tuple[dt.date, dt.date]
) -> tuple[str, int]:
    """A production batch to score: one unlabelled file for the span."""
    part = _days(df, span).drop(LABEL, SCENARIO)
    rel = f"{PROD_INPUTS}/transactions_{span[0]}_{span[1] - dt.timedelta(days=1)}.parquet"
    storage.write_frame(rel, to_file_columns(part, settings.data))
    return rel, part.height


def stage_go_live(storage: Storage, settings: Settings, df: pl.DataFrame, t: Timeline) -> dict[str, Any]:
    n_hist = write_days(storage, settings, df, RAW, t.history)
    n_week = write_days(storage, settings, df, CURRENT, t.week1)
    batch, n_batch = write_batch(storage, settings, df, t.batch1)
    return {
        "data/raw (labelled history)": f"{t.history[0]} .. {t.history[1] - dt.timedelta(days=1)}, "
        f"{n_hist:,} rows",
        "monitoring_inputs/current_data (labelled)": f"{t.week1[0]} .. {t.week1[1] - dt.timedelta(days=1)}, "
        f"{n_week:,} rows",
        "prod_inputs (unlabelled batch)": f"{batch}, {n_batch:,} rows",
    }


def stage_later(storage: Storage, settings: Settings, df: pl.DataFrame, t: Timeline) -> dict[str, Any]:
    """Four weeks on: last week's labelled data joins the history, four drifted labelled weeks arrive, and
    a new batch replaces the scored one (its predictions stay in prod_outputs/predictions/)."""
    for rel in storage.ls(CURRENT):
        storage.write_bytes(f"{RAW}/{rel.rsplit('/', 1)[1]}", storage.read_bytes(rel))
        storage.delete(rel)
    for rel in storage.ls(PROD_INPUTS):
        storage.delete(rel)
    n_cur = write_days(storage, settings, df, CURRENT, t.later)
    batch, n_batch = write_batch(storage, settings, df, t.batch2)
    return {
        "data/raw": f"+ week {t.week1[0]} .. {t.week1[1] - dt.timedelta(days=1)} (moved from current_data)",
        "monitoring_inputs/current_data (labelled, drifted)": f"{t.later[0]} .. "
        f"{t.later[1] - dt.timedelta(days=1)}, {n_cur:,} rows",
        "prod_inputs (unlabelled batch)": f"{batch}, {n_batch:,} rows",
        "drift": f"from {t.drift_start}: amounts x{settings.simulate.drift_amount_factor:g}, "
        f"{settings.simulate.drift_night_burst_cards} cards a day hit by night bursts of small frauds",
    }
