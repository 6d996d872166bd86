"""Leak-free splits: calendar-day windows for transactions; time order or stratified rows for features.

Transactions kind, in calendar days::

    | fit ............ | validation | label-delay gap | test |
    |<------- training window ----->|

Cards already known to be compromised are removed from the test window (simulator.md). The features kind
splits by its time column (last rows for test) or, without one, stratified at random.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np
import polars as pl

from fraudops import compute, features
from fraudops.config import Settings, TrainConfig
from fraudops.data.schema import CUSTOMER, LABEL, TX_ID, TX_TIME
from fraudops.errors import FraudopsError
from fraudops.features.table import FeatureTable, in_order, read_days
from fraudops.modeling import evaluate
from fraudops.workspace.storage import Storage


def model_arrays(rows: pl.DataFrame, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows as model inputs: a float32 matrix of the ``names`` columns and int32 labels."""
    return rows.select(names).to_numpy().astype(np.float32), rows[LABEL].to_numpy().astype(np.int32)


@dataclasses.dataclass
class OnWorkers:
    """A fit window of more rows than ``compute.train_in_memory_rows``, left on the Dask workers as model
    inputs: a future of each table part's block there (:func:`model_arrays` of its ``names`` columns;
    XGBoost trains on them with ``xgboost.dask``), their rows and frauds."""

    blocks: list[Any]
    rows: list[int]
    frauds: int
    names: list[str]
    rate: float
    """The fraction of the training window's rows that fits this process (its sample's)."""

    @property
    def height(self) -> int:
        return sum(self.rows)


@dataclasses.dataclass
class Split:
    fit: pl.DataFrame | OnWorkers
    valid: pl.DataFrame
    test: pl.DataFrame
    windows: dict[str, str]
    n_valid_days: float
    test_all: pl.DataFrame | None = None  # the test window before known-compromised cards are removed

    @property
    def train(self) -> pl.DataFrame:
        assert isinstance(self.fit, pl.DataFrame), "the fit window is on the workers"
        return pl.concat([self.fit, self.valid], how="diagonal_relaxed")


def _day(d: dt.date, n: int) -> dt.date:
    return d + dt.timedelta(days=n)


def plan_windows(first: dt.date, last: dt.date, cfg: TrainConfig) -> dict[str, dt.date]:
    """Window boundaries (start inclusive, end exclusive), latest possible unless train_start is set."""
    span = cfg.train_days + cfg.delay_days + cfg.test_days
    start = cfg.train_start or _day(last, 1 - span)
    w = {
        "train_start": start,
        "valid_start": _day(start, cfg.train_days - cfg.validation_days),
        "train_end": _day(start, cfg.train_days),
        "test_start": _day(start, cfg.train_days + cfg.delay_days),
        "test_end": _day(start, span),
    }
    if cfg.validation_days >= cfg.train_days:
        raise FraudopsError(
            f"train.validation_days ({cfg.validation_days}) must be smaller than "
            f"train.train_days ({cfg.train_days})"
        )
    if start < first or _day(w["test_end"], -1) > last:
        raise FraudopsError(
            f"the windows {start}..{_day(w['test_end'], -1)} (train {cfg.train_days} d, "
            f"delay {cfg.delay_days} d, test {cfg.test_days} d) fall outside the labelled data, "
            f"which covers {first}..{last}"
        )
    return w


def _between(df: pl.DataFrame, start: dt.date, end: dt.date) -> pl.DataFrame:
    day = pl.col(TX_TIME).dt.date()
    return df.filter((day >= start) & (day < end))


def _cut(featured: pl.DataFrame, w: dict[str, dt.date], cfg: TrainConfig) -> Split:
    """fit | validation | gap | test of a featured frame, known-compromised cards removed from test."""
    fit = _between(featured, w["train_start"], w["valid_start"])
    valid = _between(featured, w["valid_start"], w["train_end"])
    gap = _between(featured, w["train_end"], w["test_start"])
    test_all = _between(featured, w["test_start"], w["test_end"])
    test = evaluate.remove_known_compromised(
        test_all,
        pl.concat([fit, valid]),
        cfg.delay_days,
        gap_df=gap,
    )
    windows = {k: v.isoformat() for k, v in w.items()}
    return Split(fit, valid, test, windows, float(cfg.validation_days), test_all)


def _date_range(df: pl.DataFrame) -> tuple[dt.date, dt.date]:
    return df[TX_TIME].min().date(), df[TX_TIME].max().date()  # type: ignore[union-attr]


def split_transactions(df: pl.DataFrame, settings: Settings, *, latest: bool = False) -> Split:
    """Features over the needed history, then fit | validation | gap | test, known cards removed from test.

    ``latest`` ignores train.train_start: the windows end with the data (the most recent test window).
    """
    cfg = settings.train.model_copy(update={"train_start": None}) if latest else settings.train
    w = plan_windows(*_date_range(df), cfg)
    featured = features.add_features(
        _between(df, _day(w["train_start"], -features.lookback_days(settings.features)), w["test_end"]),
        settings.features,
    )
    return _cut(featured, w, cfg)


def _frauds(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.filter(pl.col(LABEL) == 1).select(CUSTOMER, TX_TIME, LABEL)


def _summary_of_part(
    rel: str, storage: Storage, w: dict[str, dt.date], columns: list[str] | None
) -> dict[str, Any]:
    """What this process needs of a table part's windows (read on a worker): the fit window's size and
    frauds (the cards known to be compromised), the validation and test rows, the gap's frauds."""
    fit = read_days(storage, rel, w["train_start"], w["valid_start"], [CUSTOMER, TX_TIME, LABEL])
    rest = read_days(storage, rel, w["valid_start"], w["test_end"], columns)
    return {
        "fit_rows": fit.height,
        "fit_frauds": _frauds(fit),
        "valid": _between(rest, w["valid_start"], w["train_end"]),
        "gap": _frauds(_between(rest, w["train_end"], w["test_start"])),
        "test": _between(rest, w["test_start"], w["test_end"]),
    }


def _fit_of_part(
    rel: str, storage: Storage, w: dict[str, dt.date], columns: list[str] | None
) -> pl.DataFrame:
    return read_days(storage, rel, w["train_start"], w["valid_start"], columns)


def _fit_block(
    rel: str, storage: Storage, w: dict[str, dt.date], names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """A table part's fit window as model inputs (on a worker: only the block stays in its memory)."""
    return model_arrays(_fit_of_part(rel, storage, w, [*names, TX_TIME, LABEL]), names)


def split_feature_table(
    table: FeatureTable, settings: Settings, columns: list[str] | None, *, latest: bool = False
) -> Split:
    """:func:`split_transactions` of a feature table built on the cluster (their features were computed
    over the whole history, the same to ~1e-12), read by the workers, a part per task: only the windows'
    row groups and of them ``columns`` (None: all) and those the split needs. The validation, gap (its
    frauds) and test windows come to this process (thresholds, calibration, metrics and plots need them;
    they are a fraction of the window), the fit window only if the training window holds at most
    ``compute.train_in_memory_rows`` rows; a larger one stays on the workers as the model inputs of the
    features (:class:`OnWorkers`). Either way a part's fit rows are read a second time, whole, once the
    counts have decided where they go (the first read took three columns)."""
    eng = compute.current()
    if eng is None:
        raise FraudopsError("a feature table is read on the Dask engine (compute.engine: dask)")
    cfg = settings.train.model_copy(update={"train_start": None}) if latest else settings.train
    w = plan_windows(*table.days, cfg)
    read = None if columns is None else list(dict.fromkeys([*columns, CUSTOMER, TX_TIME, TX_ID, LABEL]))
    rels = [p.rel for p in table.manifest.parts]
    parts = eng.map(_summary_of_part, rels, table.storage, w, read)
    valid, test_all = (in_order([p.pop(k) for p in parts]) for k in ("valid", "test"))  # pieces freed
    known = pl.concat([*(p["fit_frauds"] for p in parts), _frauds(valid)])
    test = evaluate.remove_known_compromised(
        test_all, known, cfg.delay_days, gap_df=pl.concat([p["gap"] for p in parts])
    )
    rows = [p["fit_rows"] for p in parts]
    limit = settings.compute.train_in_memory_rows
    fit: pl.DataFrame | OnWorkers
    if sum(rows) == 0 or sum(rows) + valid.height <= limit:
        fit = in_order(eng.map(_fit_of_part, rels, table.storage, w, read))
    else:
        names = features.feature_names(settings.features)
        blocks = eng.each(_fit_block, rels, table.storage, w, names)
        frauds = sum(p["fit_frauds"].height for p in parts)
        fit = OnWorkers(blocks, rows, frauds, names, limit / (sum(rows) + valid.height))
    text = {k: v.isoformat() for k, v in w.items()}
    return Split(fit, valid, test, text, float(cfg.validation_days), test_all)


def fold_windows(first: dt.date, last: dt.date, cfg: TrainConfig, folds: int) -> list[dict[str, dt.date]]:
    """Prequential folds, latest first: each the train | delay | test windows of ``cfg``, its "test" (the
    fold's assessment window) ending ``cfg.test_days`` later than the next fold's; the latest one's ends
    where the training window of :func:`plan_windows` ends, so no fold reaches the label-delay gap or
    the test window."""
    final = plan_windows(first, last, cfg)
    out = []
    for k in range(folds):
        end = _day(final["train_end"], -k * cfg.test_days)
        start = _day(end, -(cfg.train_days + cfg.delay_days + cfg.test_days))
        if start < first:
            raise FraudopsError(
                f"tune.folds={folds}: fold {k + 1} would start on {start}, before the labelled data "
                f"({first}..{last}); lower tune.folds or train.train_days, or add older data"
            )
        out.append(plan_windows(first, last, cfg.model_copy(update={"train_start": start})))
    return out


def prequential_splits(df: pl.DataFrame, settings: Settings, folds: int) -> list[Split]:
    """The folds of :func:`fold_windows` as splits (latest first), features computed once over the data
    before the training window's end: the label-delay gap and the test window are never read."""
    if settings.data.kind != "transactions":
        raise FraudopsError(
            "tuning needs the transactions kind (prequential folds by calendar day); "
            f"data.kind is {settings.data.kind!r}"
        )
    cfg = settings.train
    plan = fold_windows(*_date_range(df), cfg, folds)
    since = _day(plan[-1]["train_start"], -features.lookback_days(settings.features))
    featured = features.add_features(_between(df, since, plan[0]["test_end"]), settings.features)
    return [_cut(featured, w, cfg) for w in plan]


def split_table(df: pl.DataFrame, cfg: TrainConfig) -> Split:
    """Features kind: by time order (last rows for test), or stratified at random without a time column."""
    if TX_TIME in df.columns:
        df = df.sort(TX_TIME, maintain_order=True)
        n_test = round(df.height * cfg.test_fraction)
        rest, test = df.head(df.height - n_test), df.tail(n_test)
        n_valid = round(rest.height * cfg.validation_fraction)
        fit, valid = rest.head(rest.height - n_valid), rest.tail(n_valid)
        how = "by time"
    else:
        from sklearn.model_selection import train_test_split

        idx = np.arange(df.height)
        y = df[LABEL].to_numpy()
        try:
            rest, test_idx = train_test_split(
                idx, test_size=cfg.test_fraction, stratify=y, random_state=cfg.seed
            )
            fit_idx, valid_idx = train_test_split(
                rest, test_size=cfg.validation_fraction, stratify=y[rest], random_state=cfg.seed
            )
        except ValueError as e:  # a class with too few rows for every part to hold both classes
            raise FraudopsError(
                f"{df.height:,} labelled rows with {int(y.sum()):,} frauds are too few to split at random, "
                "stratified, into fit, validation and test (each needs both classes): add labelled rows"
            ) from e
        fit, valid, test = df[np.sort(fit_idx)], df[np.sort(valid_idx)], df[np.sort(test_idx)]
        how = "stratified"
    windows = {
        "split": how,
        "fit_rows": str(fit.height),
        "valid_rows": str(valid.height),
        "test_rows": str(test.height),
    }
    return Split(fit, valid, test, windows, n_valid_days=1.0)


def split(
    df: pl.DataFrame | FeatureTable,
    settings: Settings,
    columns: list[str] | None = None,
    *,
    latest: bool = False,
) -> Split:
    """``df`` cut into fit | validation | test; of a feature table only ``columns`` are read (None: all)."""
    if isinstance(df, FeatureTable):
        return split_feature_table(df, settings, columns, latest=latest)
    if settings.data.kind == "transactions":
        return split_transactions(df, settings, latest=latest)
    return split_table(df, settings.train)
