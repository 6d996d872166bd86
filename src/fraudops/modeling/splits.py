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

import numpy as np
import polars as pl

from fraudops import features
from fraudops.config import Settings, TrainConfig
from fraudops.data.schema import LABEL, TX_TIME
from fraudops.errors import FraudopsError
from fraudops.features.table import FeatureTable
from fraudops.modeling import evaluate


@dataclasses.dataclass
class Split:
    fit: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    windows: dict[str, str]
    n_valid_days: float
    test_all: pl.DataFrame | None = None  # the test window before known-compromised cards are removed

    @property
    def train(self) -> pl.DataFrame:
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


def split_feature_table(table: FeatureTable, settings: Settings, *, latest: bool = False) -> Split:
    """:func:`split_transactions` of a feature table built on the cluster: only the windows' rows are read
    (their features were computed over the whole history, the same to ~1e-12)."""
    cfg = settings.train.model_copy(update={"train_start": None}) if latest else settings.train
    w = plan_windows(*table.days, cfg)
    return _cut(table.window(w["train_start"], w["test_end"]), w, cfg)


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


def split(df: pl.DataFrame | FeatureTable, settings: Settings, *, latest: bool = False) -> Split:
    if isinstance(df, FeatureTable):
        return split_feature_table(df, settings, latest=latest)
    if settings.data.kind == "transactions":
        return split_transactions(df, settings, latest=latest)
    return split_table(df, settings.train)
