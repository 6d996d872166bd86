"""The champion's monitoring reference: its held-out window (features, scores), test metrics and what it saw.

Written for a version before it becomes champion (one folder per version, so that writing it never touches
what monitoring reads for the current champion), read by monitoring for whichever version is champion.
``seen`` tells monitoring which rows the model must not be judged on: for transactions, everything up to
the reference window's end (training, validation and test all lie before it); for the features kind, whose
time column is often relative (Kaggle's seconds since the first row), the hashes of every labelled row
known when the reference was written.
"""

from __future__ import annotations

import datetime as dt
import posixpath

import polars as pl
from pydantic import BaseModel, ConfigDict

from fraudops.config import Settings
from fraudops.data.schema import CUSTOMER, LABEL, TX_TIME
from fraudops.errors import FraudopsError
from fraudops.features.table import FeatureTable
from fraudops.modeling.model import FraudModel
from fraudops.workspace.layout import REFERENCE_DIR
from fraudops.workspace.storage import Storage

DATA, META, SEEN = "reference.parquet", "reference.json", "seen_rows.parquet"
SCORE = "score"
ROW_HASH = "row_hash"


class Reference(BaseModel):
    """reference.json: what monitoring compares a champion with."""

    model_config = ConfigDict(extra="ignore")

    model: str
    version: int
    threshold: float
    feature_names: list[str]
    metrics: dict[str, float]
    windows: dict[str, str]
    reference_start: str | None
    reference_end: str | None
    reference_rows: int
    written_at: str


def folder(version: int) -> str:
    return posixpath.join(REFERENCE_DIR, f"version-{int(version)}")


def row_hashes(df: pl.DataFrame, columns: list[str]) -> pl.Series:
    """One UInt64 per row, from the given columns (what "the same row" means for the features kind)."""
    return df.select(columns).hash_rows(seed=0).alias(ROW_HASH)


def _span(window: pl.DataFrame) -> tuple[str | None, str | None]:
    if TX_TIME not in window.columns or window.height == 0:
        return None, None
    return str(window[TX_TIME].min()), str(window[TX_TIME].max())


def write(
    storage: Storage,
    settings: Settings,
    version: int,
    model: FraudModel,
    window: pl.DataFrame,
    metrics: dict[str, float],
    windows: dict[str, str],
    labelled: pl.DataFrame | FeatureTable,
) -> Reference:
    """The version's held-out features and scores (the whole window, as production sees it), its test
    metrics (known-compromised cards removed) and, for the features kind, the rows it has seen."""
    keep = [c for c in (*model.feature_names, CUSTOMER, TX_TIME, LABEL) if c in window.columns]
    scores = model.predict_proba(window)
    base = folder(version)
    storage.remove_leftovers(REFERENCE_DIR)
    storage.write_frame(f"{base}/{DATA}", window.select(keep).with_columns(pl.Series(SCORE, scores)))
    if settings.data.kind == "features" and isinstance(labelled, pl.DataFrame):  # (no table: transactions)
        seen = row_hashes(labelled, model.feature_names).unique().sort()
        storage.write_frame(f"{base}/{SEEN}", seen.to_frame())
    start, end = _span(window)
    ref = Reference(
        model=settings.registry.model_name,
        version=int(version),
        threshold=model.threshold,
        feature_names=model.feature_names,
        metrics=metrics,
        windows=windows,
        reference_start=start,
        reference_end=end,
        reference_rows=window.height,
        written_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    storage.write_json(f"{base}/{META}", ref.model_dump(mode="json"))  # last: the reference is complete
    return ref


def read(storage: Storage, version: int) -> tuple[Reference, pl.DataFrame]:
    """The reference of a version and its data; a clear error when select_champion never wrote it."""
    base = folder(version)
    if not storage.exists(f"{base}/{META}"):
        raise FraudopsError(
            f"no monitoring reference for champion version {version} in {storage.uri(base)}: run "
            "select_champion (or champion rollback) to write it"
        )
    ref = Reference.model_validate(storage.read_json(f"{base}/{META}"))
    return ref, storage.read_frame(f"{base}/{DATA}")


def seen_rows(storage: Storage, version: int) -> pl.Series | None:
    """Features kind: the hashes of the rows the version has seen (None for transactions)."""
    rel = f"{folder(version)}/{SEEN}"
    return storage.read_frame(rel).get_column(ROW_HASH) if storage.exists(rel) else None
