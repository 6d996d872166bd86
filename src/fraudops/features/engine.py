"""The polars feature engine: the definitions of :mod:`fraudops.features.definitions`, computed on frames."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import polars as pl

from fraudops.config import FeaturesConfig
from fraudops.data.schema import AMOUNT, CUSTOMER, LABEL, TERMINAL, TX_ID, TX_TIME
from fraudops.features.definitions import (
    AMOUNT_RATIO,
    AMOUNT_ZSCORE,
    EXTRA_DAYS,
    NB_TX_1HOUR,
    NEW_TERMINAL,
    NO_PREV_SECONDS,
    RATIO_FLOOR,
    SECONDS_SINCE_PREV,
    STD_FLOOR,
    US_PER_DAY,
    US_PER_HOUR,
    Z_CLIP,
    check_windows,
    feature_names,
    lookback_days,
)

__all__ = ["add_features", "features_for", "local_windows", "narrow", "partition_windows", "with_windows"]

# internal column names (cannot clash with users' columns that matter: only these are computed on)
_I, _T, _C, _M, _A, _Y, _ONE = "__fo_i", "__fo_t", "__fo_c", "__fo_m", "__fo_a", "__fo_y", "__fo_one"
_K, _B, _P = "__fo_key", "__fo_batch", "__fo_pair"
# what a scaled computation's partitions carry besides the narrow columns: the row's position, and whether
# the row is the partition's own (else look-back only)
ROW, OWN = "__fo_row", "__fo_own"
TIME, CUSTOMER_KEY, TERMINAL_KEY = _T, _C, _M
# packed sort keys (group code x stride + time) stay below this, so no Int64 overflow
_KEY_LIMIT = 2**62


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


def narrow(tx: pl.DataFrame) -> pl.DataFrame:
    """The narrow columns of validated rows (a scaled computation builds its partitions from them)."""
    return _narrow(_as_frame(tx, "transactions"))


def _int(value: object) -> int:
    """A polars aggregate of an integer column as an int (its type stubs allow any literal)."""
    assert isinstance(value, int)
    return value


def _group_codes(s: pl.Series) -> pl.Series:
    """Non-negative Int64 codes, equal exactly when the values are (any dtype; cheap for the usual ones)."""
    if s.len() == 0:
        return pl.Series(s.name, [], dtype=pl.Int64)
    if s.dtype.is_integer():
        lo, hi = _int(s.min()), _int(s.max())
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
    if df.height == 0 or _int(df.get_column(group).max()) < per_batch:
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
        w = n * US_PER_DAY
        cols += [
            roll(one, "sum", w).cast(pl.Int32).alias(f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"),
            roll(pl.col(_A), "mean", w).alias(f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"),
        ]
    if cfg.extra:
        w = EXTRA_DAYS * US_PER_DAY
        cols += [
            roll(one, "sum", US_PER_HOUR).cast(pl.Int32).alias(NB_TX_1HOUR),
            roll(pl.col(_T), "max", w, "none").alias("__fo_prev_t"),
            roll(pl.col(_A), "mean", w, "none").alias("__fo_prev_mean"),
            roll(pl.col(_A), "std", w, "none").alias("__fo_prev_std"),
        ]
    df = df.with_columns(cols)
    if cfg.extra:
        mean, std = pl.col("__fo_prev_mean"), pl.col("__fo_prev_std")
        df = df.with_columns(
            ((pl.col(_T) - pl.col("__fo_prev_t")).cast(pl.Float64) / 1e6)
            .fill_null(NO_PREV_SECONDS)
            .alias(SECONDS_SINCE_PREV),
            pl.when(mean.is_not_null())
            .then(pl.col(_A) / pl.max_horizontal(mean, pl.lit(RATIO_FLOOR)))
            .otherwise(1.0)
            .alias(AMOUNT_RATIO),
            pl.when(std.is_not_null())
            .then(((pl.col(_A) - mean) / pl.max_horizontal(std, pl.lit(STD_FLOOR))).clip(-Z_CLIP, Z_CLIP))
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
        w = s * US_PER_DAY
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
    n_terminals = _int(df.get_column(_M).max()) + 1 if df.height else 1
    n_customers = _int(df.get_column(_C).max()) + 1 if df.height else 1
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
    recent = prev > pl.col(_T) - EXTRA_DAYS * US_PER_DAY
    return df.select(_I, (~recent).cast(pl.Int8).alias(NEW_TERMINAL))


def _base(narrow: pl.DataFrame, cfg: FeaturesConfig) -> tuple[pl.DataFrame, int]:
    """Integer microseconds from the first transaction, customers and terminals as Int64 codes, a row
    index _I; and the key stride of :func:`_keyed`. Of the narrow columns only those ``narrow`` has (a
    partition carries what its entity's windows read: :data:`ENTITY_COLUMNS`)."""
    t = pl.col(_T).dt.epoch("us")
    base = narrow.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias(_I),
        (t - t.min()).alias(_T),
        *(pl.col(c) for c in (_A, _Y) if c in narrow.columns),
        pl.lit(1, pl.Int32).alias(_ONE),
    ).with_columns(_group_codes(narrow.get_column(c)).alias(c) for c in (_C, _M) if c in narrow.columns)
    span = _int(base.get_column(_T).max() or 0)
    return base, span + lookback_days(cfg) * US_PER_DAY + 1


def _customer_parts(base: pl.DataFrame, cfg: FeaturesConfig, stride: int) -> list[pl.DataFrame]:
    # the amount as last sort key makes the summation order, hence every bit, independent of row order
    by_customer, batch = _keyed(base.select(_I, _C, _M, _A, _T, _ONE), _C, stride, _A)
    parts = [_customer_features(by_customer, batch, cfg)]
    if cfg.extra:
        parts.append(_new_terminal(by_customer))
    return parts


def _hstacked(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The parts' feature columns side by side, in row (_I) order."""
    return pl.concat([part.sort(_I).drop(_I) for part in parts], how="horizontal")


Windows = Callable[[pl.DataFrame, FeaturesConfig], pl.DataFrame]
"""(narrow rows, cfg) → the customer and terminal window columns of those rows, in their order; only of
the rows whose ``OWN`` is true when ``narrow`` has that column (the others are look-back only)."""


def local_windows(narrow: pl.DataFrame, cfg: FeaturesConfig) -> pl.DataFrame:
    """Every window feature of ``narrow``'s (own) rows in this process."""
    base, stride = _base(narrow, cfg)
    out = _hstacked([*_customer_parts(base, cfg, stride), _terminal_features(base, cfg, stride)])
    return out.filter(narrow.get_column(OWN)) if OWN in narrow.columns else out


ENTITY_COLUMNS = {"customer": [_T, _C, _M, _A], "terminal": [_T, _M, _Y]}
"""The narrow columns each entity's windows read (a scaled computation sends only these)."""


def partition_windows(part: pl.DataFrame, cfg: FeaturesConfig, entity: str) -> pl.DataFrame:
    """One partition of a scaled computation: the ``entity`` ("customer" or "terminal") window columns
    of its rows whose ``OWN`` is set (all of them without that column), in their order.

    ``part`` holds the :data:`ENTITY_COLUMNS` of every row of some customers (or terminals) in a time span,
    plus the look-back before it (``OWN`` false): the same code as the local engine, on fewer rows.
    """
    check_windows(cfg)
    base, stride = _base(part.select(ENTITY_COLUMNS[entity]), cfg)
    parts = (
        _customer_parts(base, cfg, stride)
        if entity == "customer"
        else [_terminal_features(base, cfg, stride)]
    )
    out = _hstacked(parts)
    return out.filter(part.get_column(OWN)) if OWN in part.columns else out


def _compute(narrow: pl.DataFrame, cfg: FeaturesConfig, windows: Windows | None = None) -> pl.DataFrame:
    """Feature columns (feature_names order) for the rows of ``narrow`` (those with ``OWN`` set, if it has
    that column), in its order."""
    check_windows(cfg)
    out = narrow.select(
        pl.col(_A).alias(AMOUNT),
        (pl.col(_T).dt.weekday() >= 6).cast(pl.Int8).alias("TX_DURING_WEEKEND"),
        (pl.col(_T).dt.hour() <= 6).cast(pl.Int8).alias("TX_DURING_NIGHT"),
    )
    if OWN in narrow.columns:
        out = out.filter(narrow.get_column(OWN))
    return out.hstack((windows or local_windows)(narrow, cfg)).select(feature_names(cfg))


def _attach(tx: pl.DataFrame, feats: pl.DataFrame) -> pl.DataFrame:
    keep = [c for c in tx.columns if c == AMOUNT or c not in feats.columns]
    return tx.select(keep).with_columns(pl.col(AMOUNT).cast(pl.Float64)).hstack(feats.drop(AMOUNT))


def with_windows(tx: pl.DataFrame, windows: pl.DataFrame, cfg: FeaturesConfig) -> pl.DataFrame:
    """:func:`add_features` of ``tx`` whose window columns were computed elsewhere (``windows``, in ``tx``'s
    row order: a scaled computation's partitions); the other features and the columns as here."""
    return _attach(tx, _compute(_narrow(tx), cfg, lambda _narrow_rows, _cfg: windows))


def add_features(
    tx: pl.DataFrame | pl.LazyFrame, cfg: FeaturesConfig | None = None, *, windows: Windows | None = None
) -> pl.DataFrame:
    """``tx`` (input order kept, every column kept) plus the :func:`feature_names` columns.

    Every row's features are computed from the rows of ``tx`` alone: give it the history you want
    windows to see, or use :func:`features_for`.
    """
    cfg = cfg or FeaturesConfig()
    tx = _as_frame(tx, "transactions")
    return _attach(tx, _compute(_narrow(tx), cfg, windows))


def lookback_narrow(
    history: pl.DataFrame, new: pl.DataFrame, new_narrow: pl.DataFrame, cfg: FeaturesConfig
) -> pl.DataFrame:
    """The narrow columns of the ``history`` rows the windows of ``new`` (narrowed: ``new_narrow``) reach
    back into: the last :func:`lookback_days` before its earliest transaction, in its time zone, without
    the rows of an id ``new`` has (the new row wins)."""
    if TX_ID in new.columns and TX_ID in history.columns:
        ids = new.get_column(TX_ID).drop_nulls().unique().cast(history.schema[TX_ID], strict=False)
        history = history.filter(~pl.col(TX_ID).is_in(ids.implode()))
    hist_narrow = _narrow(history)
    if hist_narrow.schema[_T] != new_narrow.schema[_T]:  # other time zone: same instants, new's zone
        hist_narrow = hist_narrow.with_columns(pl.col(_T).cast(new_narrow.schema[_T]))
    earliest: dt.datetime = new_narrow.get_column(_T).min()  # type: ignore[assignment]
    return hist_narrow.filter(pl.col(_T) > earliest - dt.timedelta(days=lookback_days(cfg)))


def features_for(
    new: pl.DataFrame | pl.LazyFrame,
    history: pl.DataFrame | pl.LazyFrame | None,
    cfg: FeaturesConfig | None = None,
    *,
    windows: Windows | None = None,
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
        return _attach(new, _compute(new_narrow, cfg, windows))
    hist_narrow = lookback_narrow(_as_frame(history, "history"), new, new_narrow, cfg)
    union = pl.concat(
        [
            hist_narrow.with_columns(pl.lit(False).alias(OWN)),  # look-back only
            new_narrow.with_columns(pl.lit(True).alias(OWN)),
        ],
        how="vertical_relaxed",
    )
    return _attach(new, _compute(union, cfg, windows))
