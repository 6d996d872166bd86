"""Captured endpoint traffic: the files ``fraudops serve`` writes (``serve.capture``) and how they are read.

One row per scored transaction, in ``prod_outputs/capture/date=YYYY-MM-DD/hour=HH/`` (UTC, Hive-style
partitions that Athena, Spark, DuckDB and polars read as columns), one Parquet file per flush of one worker:
``captured_at`` (UTC), ``endpoint``, ``model_version``, ``TRANSACTION_ID`` (as text; null when the request
gave none), the model's input features as the model saw them, ``fraud_probability``, ``is_fraud``, and the
shadow challenger's ``shadow_model_version``, ``shadow_probability`` and ``shadow_is_fraud`` (null without
a shadow model).
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from fraudops.data.schema import TX_ID
from fraudops.workspace.layout import CAPTURE
from fraudops.workspace.storage import Storage

CAPTURED_AT, ENDPOINT, VERSION = "captured_at", "endpoint", "model_version"
PROBABILITY, FLAG = "fraud_probability", "is_fraud"
SHADOW_VERSION, SHADOW_PROBABILITY, SHADOW_FLAG = (
    "shadow_model_version",
    "shadow_probability",
    "shadow_is_fraud",
)
META_COLUMNS = (CAPTURED_AT, ENDPOINT, VERSION, TX_ID)
SCORE_COLUMNS = (PROBABILITY, FLAG, SHADOW_VERSION, SHADOW_PROBABILITY, SHADOW_FLAG)
TIME_TYPE = pl.Datetime("us", "UTC")


def partition(at: dt.datetime) -> str:
    """The folder of rows captured at ``at`` (UTC)."""
    at = at.astimezone(dt.UTC)
    return f"{CAPTURE}/date={at:%Y-%m-%d}/hour={at:%H}"


def load_captured(storage: Storage) -> pl.DataFrame:
    """Every captured row (empty frame when nothing was captured), oldest files first."""
    files = storage.find(CAPTURE, (".parquet",))
    frames = []
    for rel in files:
        with storage.open_read(rel) as f:
            frames.append(pl.read_parquet(f, hive_partitioning=False))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
