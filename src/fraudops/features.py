"""Feature engineering: the one module used by training, batch scoring and monitoring.

Input is a table of canonical transactions (:mod:`fraudops.data` names): ``TX_DATETIME`` (Datetime; a
Date is read as midnight), ``CUSTOMER_ID``, ``TERMINAL_ID``, ``TX_AMOUNT`` and, optionally,
``TRANSACTION_ID`` and ``TX_FRAUD`` (1 = fraud; null or a missing column = unknown, counted as genuine).
Any other column passes through untouched.

Output rows keep the **input order**; the feature columns are appended (an input column with a feature's
name is replaced; ``TX_AMOUNT`` is cast to Float64 and is itself the first model input).

Windows are measured on the absolute time line at microsecond resolution (``n`` days = ``n`` x 24 h, also
for time-zone-aware columns); weekend and night use the column's local wall-clock time. Every window
is open at its old end. ``t`` is the current transaction's timestamp, ``d`` = ``cfg.delay_days``.

The handbook's 15 (simulator.md "Baseline features"), in :func:`feature_names` order:

- ``TX_AMOUNT``: the amount.
- ``TX_DURING_WEEKEND``: 1 if Saturday or Sunday, else 0.
- ``TX_DURING_NIGHT``: 1 if the hour is <= 6 (00:00-06:59), else 0.
- for n in ``customer_windows``: ``CUSTOMER_ID_NB_TX_{n}DAY_WINDOW`` and
  ``CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW``, number and mean amount of the customer's transactions in
  (t - n days, t]. The current transaction is included, and so are **all** of the customer's
  transactions with the same timestamp (ties are simultaneous: they count for each other, whatever
  their row order). Never empty, so no fill.
- for n in ``terminal_windows``: ``TERMINAL_ID_NB_TX_{n}DAY_WINDOW``, number of the terminal's
  transactions in (t - (n + d) days, t - d days], and ``TERMINAL_ID_RISK_{n}DAY_WINDOW``, frauds among
  them / that number, 0 when there are none. Only labels at least ``d`` days old are read (a fraud
  exactly ``d`` days before counts). With ``delay_days = 0`` the window is (t - n, t] and includes the
  current transaction's own label: only use that for analysis, never for training.

``cfg.extra`` adds (no labels, nothing after ``t``; all finite):

- ``CUSTOMER_ID_NB_TX_1HOUR_WINDOW``: the customer's transactions in (t - 1 h, t], ties included.
- ``CUSTOMER_ID_SECONDS_SINCE_PREV_TX``: seconds since the customer's latest transaction strictly
  before ``t`` within 30 days; 2 592 000 (30 days) when there is none (first transaction, or a gap).
- ``CUSTOMER_ID_AMOUNT_RATIO_30DAY``: ``TX_AMOUNT / max(mean, 1)``, where mean is the mean amount of the
  customer's transactions strictly before ``t`` in (t - 30 days, t) (the current one and simultaneous
  ones excluded); 1 when there is none.
- ``CUSTOMER_ID_AMOUNT_ZSCORE_30DAY``: ``(TX_AMOUNT - mean) / max(std, 1)`` over the same previous
  transactions (sample std, ddof = 1), clipped to [-100, 100]; 0 when there are fewer than 2.
- ``CUSTOMER_ID_NEW_TERMINAL_30DAY``: 1 if the customer made no transaction at this terminal strictly
  before ``t`` in (t - 30 days, t), else 0. (Windowed rather than "ever", so training and scoring agree
  once 30 days of history are given.)

Dtypes: flags Int8, counts Int32, everything else Float64.

:func:`features_for` computes the features of new rows over ``history`` + ``new``; history is first
trimmed to the :func:`lookback_days` that can matter, which changes no count and moves floats only in
their last bits (rolling sums are incremental). Results do not depend on the input row order, and
repeated runs give identical bits.

Implementation: times become integer microseconds, customers/terminals dense Int64 codes, and each
entity's rows one sorted Int64 key (code x stride + time), so every window is a single
``rolling_*_by`` pass without ``over`` (groups go in batches only if the key could overflow). About
2.5 CPU-seconds and < 1 GB for the handbook's 1.75 M transactions (benchmarks/bench_features.py).
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from fraudops.config import FeaturesConfig
from fraudops.data import AMOUNT, CUSTOMER, LABEL, TERMINAL, TX_ID, TX_TIME

__all__ = ["add_features", "feature_names", "features_for", "handbook_feature_names", "lookback_days"]

_US_PER_DAY = 86_400_000_000
_US_PER_HOUR = 3_600_000_000
_EXTRA_DAYS = 30  # lookback of the extra customer features
_NO_PREV_SECONDS = float(_EXTRA_DAYS * 86_400)
_RATIO_FLOOR = 1.0  # currency units: guards the amount ratio against a zero mean
_STD_FLOOR = 1.0  # currency units: guards the z-score against a zero std
_Z_CLIP = 100.0

NB_TX_1HOUR = "CUSTOMER_ID_NB_TX_1HOUR_WINDOW"
SECONDS_SINCE_PREV = "CUSTOMER_ID_SECONDS_SINCE_PREV_TX"
AMOUNT_RATIO = "CUSTOMER_ID_AMOUNT_RATIO_30DAY"
AMOUNT_ZSCORE = "CUSTOMER_ID_AMOUNT_ZSCORE_30DAY"
NEW_TERMINAL = "CUSTOMER_ID_NEW_TERMINAL_30DAY"
EXTRA_FEATURES = [NB_TX_1HOUR, SECONDS_SINCE_PREV, AMOUNT_RATIO, AMOUNT_ZSCORE, NEW_TERMINAL]

# internal column names (cannot clash with users' columns that matter: only these are computed on)
_I, _T, _C, _M, _A, _Y, _ONE = "__fo_i", "__fo_t", "__fo_c", "__fo_m", "__fo_a", "__fo_y", "__fo_one"
_NEW, _K, _B, _P = "__fo_new", "__fo_key", "__fo_batch", "__fo_pair"
# packed sort keys (group code x stride + time) stay below this, so no Int64 overflow
_KEY_LIMIT = 2**62


def handbook_feature_names(cfg: FeaturesConfig | None = None) -> list[str]:
    """The handbook's baseline inputs (15 with the default windows)."""
    cfg = cfg or FeaturesConfig()
    names = [AMOUNT, "TX_DURING_WEEKEND", "TX_DURING_NIGHT"]
    for n in cfg.customer_windows:
        names += [f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW", f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"]
    for n in cfg.terminal_windows:
        names += [f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW", f"TERMINAL_ID_RISK_{n}DAY_WINDOW"]
    return names


def feature_names(cfg: FeaturesConfig | None = None) -> list[str]:
    """The model inputs, in a fixed order: the handbook's, then fraudops' extras when ``cfg.extra``."""
    cfg = cfg or FeaturesConfig()
    names = handbook_feature_names(cfg)
    if cfg.extra:
        names += EXTRA_FEATURES
    return names


def lookback_days(cfg: FeaturesConfig | None = None) -> int:
    """History (days before a transaction) that can change its features."""
    cfg = cfg or FeaturesConfig()
    days = [*cfg.customer_windows, *(n + cfg.delay_days for n in cfg.terminal_windows), 1]
    if cfg.extra:
        days.append(_EXTRA_DAYS)
    return max(days)


def _check_windows(cfg: FeaturesConfig) -> None:
    for key in ("customer_windows", "terminal_windows"):
        windows = getattr(cfg, key)
        if any(n <= 0 for n in windows):
            raise ValueError(f"features.{key}: windows must be positive days, got {windows}")
        if len(set(windows)) != len(windows):
            raise ValueError(f"features.{key}: duplicate windows {windows}")


def _as_frame(tx: pl.DataFrame | pl.LazyFrame, what: str) -> pl.DataFrame:
    if isinstance(tx, pl.LazyFrame):
        tx = tx.collect()
    if not isinstance(tx, pl.DataFrame):
        raise TypeError(f"{what} must be a polars DataFrame or LazyFrame, got {type(tx).__name__}")
    missing = [c for c in (TX_TIME, CUSTOMER, TERMINAL, AMOUNT) if c not in tx.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)} needed for features")
    dtype = tx.schema[TX_TIME]
    if not (isinstance(dtype, pl.Datetime) or dtype == pl.Date):
        raise ValueError(f"{what}: {TX_TIME} must be a Datetime (or Date), got {dtype}")
    if not tx.schema[AMOUNT].is_numeric():
        raise ValueError(f"{what}: {AMOUNT} must be numeric, got {tx.schema[AMOUNT]}")
    nulls = tx.select(pl.col(TX_TIME, CUSTOMER, TERMINAL, AMOUNT).null_count()).row(0, named=True)
    bad = [c for c, k in nulls.items() if k]
    if bad:
        raise ValueError(f"{what}: null values in {', '.join(bad)} (validate the data before features)")
    return tx


def _narrow(tx: pl.DataFrame) -> pl.DataFrame:
    """The columns features are computed from, under internal names."""
    label = (
        pl.col(LABEL).cast(pl.Int32, strict=False).fill_null(0)
        if LABEL in tx.columns
        else pl.lit(0, dtype=pl.Int32)
    )
    return tx.select(
        pl.col(TX_TIME).cast(pl.Datetime("us", getattr(tx.schema[TX_TIME], "time_zone", None))).alias(_T),
        pl.col(CUSTOMER).alias(_C),
        pl.col(TERMINAL).alias(_M),
        pl.col(AMOUNT).cast(pl.Float64).alias(_A),
        label.alias(_Y),
    )


def _group_codes(s: pl.Series) -> pl.Series:
    """Non-negative Int64 codes, equal exactly when the values are (any dtype; cheap for the usual ones)."""
    if s.len() == 0:
        return pl.Series(s.name, [], dtype=pl.Int64)
    if s.dtype.is_integer():
        lo, hi = s.min(), s.max()
        if hi - lo <= max(4 * s.len(), 1 << 20):  # dense enough: the value minus the minimum
            return (s - lo).cast(pl.Int64)
    elif s.dtype == pl.String:
        s = s.cast(pl.Categorical)
    if isinstance(s.dtype, pl.Categorical | pl.Enum):
        return s.to_physical().cast(pl.Int64)
    return s.rank("dense").cast(pl.Int64) - 1


def _keyed(df: pl.DataFrame, group: str, stride: int, *tiebreak: str) -> tuple[pl.DataFrame, str | None]:
    """``df`` sorted by (group, time[, tiebreak]) with a key column _K for ``rolling_*_by``.

    _K = code x stride + time, so one sorted Int64 column holds every group and no window (shorter than
    ``stride`` - time span) reaches into the previous group: rolling needs no ``over``. When the codes
    times the stride would not fit in 62 bits, groups go in batches (returned name: the batch column to
    roll ``over``).
    """
    per_batch = max(1, _KEY_LIMIT // stride)
    if df.height == 0 or df.get_column(group).max() < per_batch:
        key = (pl.col(group) * stride + pl.col(_T)).alias(_K)
        out = df.with_columns(key).sort(_K, *tiebreak).with_columns(pl.col(_K).set_sorted())
        return out, None
    out = df.with_columns(
        (pl.col(group) // per_batch).alias(_B), ((pl.col(group) % per_batch) * stride + pl.col(_T)).alias(_K)
    ).sort(_B, _K, *tiebreak)
    return out, _B


def _roller(batch: str | None):
    def roll(expr: pl.Expr, how: str, window_us: int, closed: str = "right") -> pl.Expr:
        rolled = getattr(expr, f"rolling_{how}_by")(_K, f"{window_us}i", closed=closed)
        return rolled.over(batch) if batch else rolled

    return roll


def _customer_features(df: pl.DataFrame, batch: str | None, cfg: FeaturesConfig) -> pl.DataFrame:
    """Customer windows (and extras) of ``df`` keyed by customer (:func:`_keyed`); keeps _I."""
    roll = _roller(batch)
    one = pl.col(_ONE)
    cols = []
    for n in cfg.customer_windows:
        w = n * _US_PER_DAY
        cols += [
            roll(one, "sum", w).cast(pl.Int32).alias(f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"),
            roll(pl.col(_A), "mean", w).alias(f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"),
        ]
    if cfg.extra:
        w = _EXTRA_DAYS * _US_PER_DAY
        cols += [
            roll(one, "sum", _US_PER_HOUR).cast(pl.Int32).alias(NB_TX_1HOUR),
            roll(pl.col(_T), "max", w, "none").alias("__fo_prev_t"),
            roll(pl.col(_A), "mean", w, "none").alias("__fo_prev_mean"),
            roll(pl.col(_A), "std", w, "none").alias("__fo_prev_std"),
        ]
    df = df.with_columns(cols)
    if cfg.extra:
        mean, std = pl.col("__fo_prev_mean"), pl.col("__fo_prev_std")
        df = df.with_columns(
            ((pl.col(_T) - pl.col("__fo_prev_t")).cast(pl.Float64) / 1e6)
            .fill_null(_NO_PREV_SECONDS)
            .alias(SECONDS_SINCE_PREV),
            pl.when(mean.is_not_null())
            .then(pl.col(_A) / pl.max_horizontal(mean, pl.lit(_RATIO_FLOOR)))
            .otherwise(1.0)
            .alias(AMOUNT_RATIO),
            pl.when(std.is_not_null())
            .then(((pl.col(_A) - mean) / pl.max_horizontal(std, pl.lit(_STD_FLOOR))).clip(-_Z_CLIP, _Z_CLIP))
            .otherwise(0.0)
            .alias(AMOUNT_ZSCORE),
        )
    return df.select(_I, *(c for c in feature_names(cfg) if c.startswith("CUSTOMER_ID_") and c in df.columns))


def _terminal_features(base: pl.DataFrame, cfg: FeaturesConfig, stride: int) -> pl.DataFrame:
    """Delayed terminal windows, in (terminal, time) order; keeps _I."""
    d = cfg.delay_days
    df, batch = _keyed(base.select(_I, _M, _Y, _T, _ONE), _M, stride)
    roll = _roller(batch)
    spans = sorted({n + d for n in cfg.terminal_windows} | ({d} if d > 0 else set()))
    sums = []
    for s in spans:
        w = s * _US_PER_DAY
        sums += [
            roll(pl.col(_ONE), "sum", w).alias(f"__fo_n{s}"),
            roll(pl.col(_Y), "sum", w).alias(f"__fo_f{s}"),
        ]
    df = df.with_columns(sums)
    cols = []
    for n in cfg.terminal_windows:
        # (t - (n+d), t - d] = (t - (n+d), t] minus (t - d, t]: integer counts, so exact
        nb, fr = pl.col(f"__fo_n{n + d}"), pl.col(f"__fo_f{n + d}")
        if d > 0:
            nb, fr = nb - pl.col(f"__fo_n{d}"), fr - pl.col(f"__fo_f{d}")
        cols += [
            nb.cast(pl.Int32).alias(f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"),
            pl.when(nb > 0)
            .then(fr / nb)
            .otherwise(0.0)
            .cast(pl.Float64)
            .alias(f"TERMINAL_ID_RISK_{n}DAY_WINDOW"),
        ]
    return df.select(_I, *cols)


def _new_terminal(df: pl.DataFrame) -> pl.DataFrame:
    """CUSTOMER_ID_NEW_TERMINAL_30DAY from each (customer, terminal) pair's previous distinct timestamp.

    ``df`` is in (customer, time) order: a stable sort by pair then keeps time order within pairs.
    """
    n_terminals = df.get_column(_M).max() + 1 if df.height else 1
    n_customers = df.get_column(_C).max() + 1 if df.height else 1
    if n_customers * n_terminals <= _KEY_LIMIT:
        df = df.select(_I, _T, (pl.col(_C) * n_terminals + pl.col(_M)).alias(_P))
        df = df.sort(_P, maintain_order=True)
        same_pair = pl.col(_P) == pl.col(_P).shift(1)
    else:
        df = df.select(_I, _T, _C, _M).sort(_C, _M, maintain_order=True)
        same_pair = (pl.col(_C) == pl.col(_C).shift(1)) & (pl.col(_M) == pl.col(_M).shift(1))
    same_pair = same_pair.fill_null(False)
    run_start = ~same_pair | (pl.col(_T) != pl.col(_T).shift(1))
    # at the first row of each (pair, timestamp) run: the pair's previous timestamp (a sentinel if none);
    # the run's tied rows inherit it by forward fill (run starts are never null, so fills stay in runs)
    prev = (
        pl.when(same_pair & run_start)
        .then(pl.col(_T).shift(1))
        .when(run_start)
        .then(pl.lit(-(2**62), pl.Int64))  # times are >= 0: never recent
        .otherwise(None)
        .forward_fill()
    )
    recent = prev > pl.col(_T) - _EXTRA_DAYS * _US_PER_DAY
    return df.select(_I, (~recent).cast(pl.Int8).alias(NEW_TERMINAL))


def _compute(narrow: pl.DataFrame, cfg: FeaturesConfig) -> pl.DataFrame:
    """Feature columns (feature_names order) for the rows of ``narrow``, in its order."""
    _check_windows(cfg)
    out = narrow.select(
        pl.col(_A).alias(AMOUNT),
        (pl.col(_T).dt.weekday() >= 6).cast(pl.Int8).alias("TX_DURING_WEEKEND"),
        (pl.col(_T).dt.hour() <= 6).cast(pl.Int8).alias("TX_DURING_NIGHT"),
    )
    # integer microseconds from the first transaction; customers and terminals as Int64 codes
    t = pl.col(_T).dt.epoch("us")
    base = narrow.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias(_I),
        (t - t.min()).alias(_T),
        pl.col(_A),
        pl.col(_Y),
        pl.lit(1, pl.Int32).alias(_ONE),
    ).with_columns(
        _group_codes(narrow.get_column(_C)).alias(_C), _group_codes(narrow.get_column(_M)).alias(_M)
    )
    span = int(base.get_column(_T).max() or 0)
    stride = span + lookback_days(cfg) * _US_PER_DAY + 1
    # the amount as last sort key makes the summation order, hence every bit, independent of row order
    by_customer, batch = _keyed(base.select(_I, _C, _M, _A, _T, _ONE), _C, stride, _A)
    parts = [_customer_features(by_customer, batch, cfg), _terminal_features(base, cfg, stride)]
    if cfg.extra:
        parts.append(_new_terminal(by_customer))
    for part in parts:
        out = out.hstack(part.sort(_I).drop(_I))
    return out.select(feature_names(cfg))


def _attach(tx: pl.DataFrame, feats: pl.DataFrame) -> pl.DataFrame:
    keep = [c for c in tx.columns if c == AMOUNT or c not in feats.columns]
    return tx.select(keep).with_columns(pl.col(AMOUNT).cast(pl.Float64)).hstack(feats.drop(AMOUNT))


def add_features(tx: pl.DataFrame | pl.LazyFrame, cfg: FeaturesConfig | None = None) -> pl.DataFrame:
    """``tx`` (input order kept, every column kept) plus the :func:`feature_names` columns.

    Every row's features are computed from the rows of ``tx`` alone: give it the history you want
    windows to see, or use :func:`features_for`.
    """
    cfg = cfg or FeaturesConfig()
    tx = _as_frame(tx, "transactions")
    return _attach(tx, _compute(_narrow(tx), cfg))


def features_for(
    new: pl.DataFrame | pl.LazyFrame,
    history: pl.DataFrame | pl.LazyFrame | None,
    cfg: FeaturesConfig | None = None,
) -> pl.DataFrame:
    """Rows of ``new`` (same order, all columns) with features computed over ``history`` + ``new``.

    Windows reach back into ``history`` (only its last :func:`lookback_days` before the earliest new
    transaction are read). A history row whose ``TRANSACTION_ID`` is also in ``new`` is dropped: the new
    row wins. Labels of ``new`` rows are used like any other (after the delay); null ones count as genuine.
    """
    cfg = cfg or FeaturesConfig()
    new = _as_frame(new, "new transactions")
    new_narrow = _narrow(new)
    if history is None or new.height == 0:
        return _attach(new, _compute(new_narrow, cfg))
    history = _as_frame(history, "history")
    if TX_ID in new.columns and TX_ID in history.columns:
        ids = new.get_column(TX_ID).drop_nulls().unique().cast(history.schema[TX_ID], strict=False)
        history = history.filter(~pl.col(TX_ID).is_in(ids.implode()))
    hist_narrow = _narrow(history)
    if hist_narrow.schema[_T] != new_narrow.schema[_T]:  # other time zone: same instants, new's zone
        hist_narrow = hist_narrow.with_columns(pl.col(_T).cast(new_narrow.schema[_T]))
    since = new_narrow.get_column(_T).min() - dt.timedelta(days=lookback_days(cfg))
    hist_narrow = hist_narrow.filter(pl.col(_T) > since)
    union = pl.concat(
        [
            hist_narrow.with_columns(pl.lit(False).alias(_NEW)),
            new_narrow.with_columns(pl.lit(True).alias(_NEW)),
        ],
        how="vertical_relaxed",
    )
    feats = _compute(union.drop(_NEW), cfg).filter(union.get_column(_NEW))
    return _attach(new, feats)
