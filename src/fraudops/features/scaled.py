"""The features on a compute engine: the polars engine's code per customer and per terminal partition.

The customer windows need each customer's transactions together, the terminal windows each terminal's.
Rows are cut into slices and sent to the workers; there each slice is split (a hash shuffle) into buckets
of customers (then, in a second exchange, of terminals) and, for long histories, time blocks; each bucket
x block partition also receives the rows of the :func:`~fraudops.features.lookback_days` before the
block as look-back. A worker computes the partition's windows with
:func:`~fraudops.features.engine.partition_windows` (the local engine's functions) and keeps the block's
own rows; the driver joins the columns back by row position, so rows and their order are the local
engine's. Counts and flags are equal to the local engine's; averages and standard deviations agree to
~1e-12 relative (rolling sums start at the block's look-back instead of the customer's first row).

:func:`add_features` and :func:`features_for` are the local engine's functions, on the engine of the
running command's compute session when there is one (:func:`fraudops.compute.current`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import polars as pl

from fraudops import compute
from fraudops.config import DataConfig, FeaturesConfig
from fraudops.data.loading import Piece, piece_rows, read_piece
from fraudops.data.schema import AMOUNT, CUSTOMER, TERMINAL, TX_ID, TX_TIME
from fraudops.features.definitions import US_PER_DAY, feature_names, lookback_days
from fraudops.features.engine import (
    CUSTOMER_KEY,
    OWN,
    ROW,
    TERMINAL_KEY,
    TIME,
    Windows,
    local_windows,
    lookback_narrow,
    narrow,
    partition_windows,
    with_windows,
)
from fraudops.features.engine import add_features as local_add_features
from fraudops.features.engine import features_for as local_features_for
from fraudops.workspace.storage import Storage

_BUCKET, _BLOCK = "__fo_bucket", "__fo_block"
ENTITIES = {"customer": CUSTOMER_KEY, "terminal": TERMINAL_KEY}
_CANONICAL = {"customer": CUSTOMER, "terminal": TERMINAL}  # the entities' columns in canonical rows


def _bucket(key: pl.Expr, dtype: pl.DataType, buckets: int) -> pl.Expr:
    """The partition of an id: the same in every process (integers by value, other ids by a fixed hash)."""
    if dtype.is_integer():
        return (key.cast(pl.Int64) % buckets).cast(pl.Int32)
    return (key.cast(pl.String).hash(seed=0) % buckets).cast(pl.Int32)


def split_rows(
    rows: pl.DataFrame, entity: str, buckets: int, blocks: int, origin: int, block_us: int, lookback_us: int
) -> dict[tuple[int, int], pl.DataFrame]:
    """One slice's rows by (bucket of their customer or terminal, time block), plus each row again as
    look-back of the next block when it lies within ``lookback_us`` of its start. Rows whose ``OWN`` is
    false (a column the slice may have) are look-back everywhere."""
    key = ENTITIES[entity]
    t = pl.col(TIME).dt.epoch("us") - origin
    keyed = rows.with_columns(
        _bucket(pl.col(key), rows.schema[key], buckets).alias(_BUCKET),
        (t // block_us).clip(0, blocks - 1).cast(pl.Int32).alias(_BLOCK),
        pl.col(OWN) if OWN in rows.columns else pl.lit(True).alias(OWN),  # else: look-back only
    )
    nxt = pl.col(_BLOCK) + 1
    ahead = keyed.filter((nxt < blocks) & (t >= nxt.cast(pl.Int64) * block_us - lookback_us)).with_columns(
        nxt.alias(_BLOCK), pl.lit(False).alias(OWN)
    )
    both = pl.concat([keyed, ahead]) if ahead.height else keyed
    parts = both.partition_by(_BUCKET, _BLOCK, as_dict=True)
    return {(int(b), int(k)): part.drop(_BUCKET, _BLOCK) for (b, k), part in parts.items()}


def combine_partition(
    key: tuple[int, int], pieces: list[pl.DataFrame | None], entity: str, cfg: FeaturesConfig
) -> pl.DataFrame:
    """The windows of one partition's own rows (ROW + feature columns)."""
    part = pl.concat([p for p in pieces if p is not None])
    return partition_windows(part, cfg, entity)


def _layout(n: int, span_us: int, workers: int, partition_rows: int, lookback_us: int) -> tuple[int, int]:
    """(buckets, time blocks): about n / partition_rows partitions, at least one per worker; a block is
    never shorter than two look-backs (else the look-back would outweigh the block's own rows)."""
    parts = max(workers, math.ceil(n / partition_rows))
    blocks = max(1, min(math.ceil(parts / workers), span_us // (2 * lookback_us)))
    return max(workers, math.ceil(parts / blocks)), blocks


def cluster_windows(
    eng: compute.Engine, narrow: pl.DataFrame, cfg: FeaturesConfig, partition_rows: int
) -> pl.DataFrame:
    """:func:`~fraudops.features.local_windows` computed on the cluster."""
    n = narrow.height
    if n == 0:
        return local_windows(narrow, cfg)
    rows = narrow.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))
    times = rows.get_column(TIME).dt.epoch("us")
    origin, span = int(times.min()), int(times.max()) - int(times.min()) + 1  # type: ignore[arg-type]
    lookback_us = lookback_days(cfg) * US_PER_DAY
    buckets, blocks = _layout(n, span, eng.workers, partition_rows, lookback_us)
    block_us = math.ceil(span / blocks)
    n_slices = max(eng.workers, math.ceil(n / partition_rows))
    size = math.ceil(n / n_slices)
    slices = [rows.slice(i * size, size) for i in range(n_slices) if i * size < n]
    columns = []
    for entity in ENTITIES:
        split_args = (entity, buckets, blocks, origin, block_us, lookback_us)
        done = eng.exchange(slices, split_rows, split_args, combine_partition, (entity, cfg))
        columns.append(pl.concat(list(done.values())).sort(ROW).drop(ROW))
    out = pl.concat(columns, how="horizontal")
    own = int(narrow.get_column(OWN).sum()) if OWN in narrow.columns else n
    if out.height != own:
        raise RuntimeError(f"scaled features: {out.height} rows computed for {own} (partitioning is broken)")
    return out


def features_over_buckets(
    new: pl.DataFrame,
    history: Callable[[Callable[[pl.DataFrame], pl.DataFrame]], pl.DataFrame | None],
    cfg: FeaturesConfig,
    buckets: int,
) -> pl.DataFrame:
    """:func:`~fraudops.features.engine.features_for` of ``new`` in this process (a worker), its history
    read one customer (then terminal) bucket at a time: ``history(keep)`` gives the history rows ``keep``
    leaves (``keep`` filters canonical rows to the bucket). Only a bucket's history is held at once, so a
    task over a long look-back needs a bucket's memory. Counts equal the local engine's, averages to
    ~1e-12 (other customers' rows precede a customer's in the rolling sums); one bucket is the local
    engine's computation, bit for bit."""
    if new.height == 0:
        return local_features_for(new, None, cfg)
    own = narrow(new).with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64), pl.lit(True).alias(OWN))
    columns = []
    for entity, key in ENTITIES.items():
        canonical = _CANONICAL[entity]
        keyed = own.with_columns(_bucket(pl.col(key), own.schema[key], buckets).alias(_BUCKET))
        done = []
        for b in range(buckets):
            mine = keyed.filter(pl.col(_BUCKET) == b).drop(_BUCKET)
            if mine.height == 0:
                continue

            def keep(rows: pl.DataFrame, b: int = b, col: str = canonical) -> pl.DataFrame:
                return rows.filter(_bucket(pl.col(col), rows.schema[col], buckets) == b)

            back = history(keep)
            part = mine
            if back is not None and back.height:
                looked = lookback_narrow(back, new, own, cfg).with_columns(
                    pl.lit(-1, dtype=pl.Int64).alias(ROW), pl.lit(False).alias(OWN)
                )
                part = pl.concat([looked.select(mine.columns), mine], how="vertical_relaxed")
            done.append(partition_windows(part, cfg, entity))
        columns.append(pl.concat(done).sort(ROW).drop(ROW))
    return with_windows(new, pl.concat(columns, how="horizontal"), cfg)


# ------------------------------------------------------------- from the workspace's files, on the workers
# The partitions of a feature table: pieces (files, row groups) read where the split runs, keyed by
# customer bucket only (no time blocks: a repeated id's copies of one customer meet in one partition),
# then by terminal bucket; ROW is the row's place in load_folder's order (piece index, row in piece).


def _internal(column: str) -> bool:
    return column.startswith("__fo_")


def _split_by(rows: pl.DataFrame, entity: str, buckets: int) -> dict[tuple[int, int], pl.DataFrame]:
    """Rows by bucket of their customer or terminal. Only the input columns and ROW travel: the narrow
    ones are rebuilt where the partition is computed (a third less data in the shuffle)."""
    parts = split_rows(rows.hstack(narrow(rows)), entity, buckets, 1, 0, 1, 0)
    return {k: p.drop(c for c in p.columns if _internal(c) and c != ROW) for k, p in parts.items()}


def _gathered(pieces: list[pl.DataFrame | None]) -> pl.DataFrame:
    """A partition's pieces together, with their narrow columns, every row its own (no look-back)."""
    part = pl.concat([p for p in pieces if p is not None], how="diagonal_relaxed")
    return part.hstack(narrow(part)).with_columns(pl.lit(True).alias(OWN))


def split_piece(
    piece: Piece, storage: Storage, data: DataConfig, cfg: FeaturesConfig, labelled_only: bool, buckets: int
) -> dict[tuple[int, int], pl.DataFrame]:
    """A piece's valid rows by customer bucket."""
    rows = piece_rows(read_piece(storage, piece, data), labelled_only=labelled_only)
    if rows is None or rows.height == 0:
        return {}
    # add_features replaces input columns named like a feature (the amount apart): drop them now
    rows = rows.drop([c for c in feature_names(cfg) if c != AMOUNT and c in rows.columns])
    order = (pl.int_range(pl.len(), dtype=pl.Int64) + (piece.index << 32)).alias(ROW)
    return _split_by(rows.with_columns(order), "customer", buckets)


def combine_customers(
    key: tuple[int, int], pieces: list[pl.DataFrame | None], cfg: FeaturesConfig
) -> pl.DataFrame:
    """A customer bucket's rows, a repeated id once (the later piece's row, as load_folder keeps it), with
    their customer windows."""
    part = _gathered(pieces).sort(ROW).unique(TX_ID, keep="last", maintain_order=True)
    windows = partition_windows(part, cfg, "customer").drop(ROW)
    return part.drop(c for c in part.columns if _internal(c) and c != ROW).hstack(windows)


def split_terminals(part: pl.DataFrame, buckets: int) -> dict[tuple[int, int], pl.DataFrame]:
    return _split_by(part, "terminal", buckets)


def combine_terminals(
    key: tuple[int, int], pieces: list[pl.DataFrame | None], cfg: FeaturesConfig
) -> pl.DataFrame:
    """A terminal bucket's rows as :func:`add_features` gives them (in (time, id) order), without the
    internal columns."""
    part = _gathered(pieces)
    terminal = partition_windows(part, cfg, "terminal").drop(ROW)
    names = set(feature_names(cfg))
    tx = part.select(c for c in part.columns if not _internal(c) and (c == AMOUNT or c not in names))
    windows = part.select(c for c in part.columns if c in names and c != AMOUNT).hstack(terminal)
    return with_windows(tx, windows, cfg).sort(TX_TIME, TX_ID)


def _windows() -> Windows | None:
    eng = compute.current()
    if eng is None:
        return None

    def on_cluster(narrow: pl.DataFrame, cfg: FeaturesConfig) -> pl.DataFrame:
        return cluster_windows(eng, narrow, cfg, eng.partition_rows)

    return on_cluster


def add_features(tx: pl.DataFrame | pl.LazyFrame, cfg: FeaturesConfig | None = None) -> pl.DataFrame:
    """:func:`fraudops.features.engine.add_features` on the session's engine."""
    return local_add_features(tx, cfg, windows=_windows())


def features_for(
    new: pl.DataFrame | pl.LazyFrame,
    history: pl.DataFrame | pl.LazyFrame | None,
    cfg: FeaturesConfig | None = None,
) -> pl.DataFrame:
    """:func:`fraudops.features.engine.features_for` on the session's engine."""
    return local_features_for(new, history, cfg, windows=_windows())
