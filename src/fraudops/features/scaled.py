"""The features on a compute engine: the polars engine's code per customer and per terminal partition.

The customer windows need each customer's transactions together, the terminal windows each terminal's.
Rows are partitioned by a hash of their customer (then of their terminal) into buckets and, when one id
is too busy for a bucket to stay near ``compute.partition_rows`` (a merchant's terminal), time blocks;
each bucket x block partition also receives the rows of the :func:`~fraudops.features.lookback_days`
before the block as look-back. A worker computes the partition's windows with
:func:`~fraudops.features.engine.partition_windows` (the local engine's functions) for the block's own
rows; the columns are put back in row order, so rows and their order are the local engine's. Counts and
flags are equal to the local engine's; averages and standard deviations agree to ~1e-12 relative
(rolling sums start at the block's look-back instead of the customer's first row).

Frames already in this process (:func:`add_features`, :func:`features_for`) are partitioned here and
each partition sent once, with only the columns its entity reads (:func:`cluster_windows`); a feature
table's rows are read by the workers and shuffled worker to worker (:func:`split_pieces` and the
functions after it, used by :mod:`fraudops.features.table`).

:func:`add_features` and :func:`features_for` are the local engine's functions, on the engine of the
running command's compute session when there is one (:func:`fraudops.compute.current`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import polars as pl

from fraudops import compute
from fraudops.config import DataConfig, FeaturesConfig
from fraudops.data.loading import Piece, Survey, piece_rows, read_piece, survey
from fraudops.data.schema import AMOUNT, CUSTOMER, TERMINAL, TX_ID, TX_TIME
from fraudops.features.definitions import US_PER_DAY, feature_names, lookback_days
from fraudops.features.engine import (
    CUSTOMER_KEY,
    ENTITY_COLUMNS,
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
    """Rows by (bucket of their customer or terminal, time block), plus each row again as look-back of
    the next block when it lies within ``lookback_us`` of its start. Rows whose ``OWN`` is false (a
    column ``rows`` may have) are look-back everywhere."""
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


def _split_by(rows: pl.DataFrame, column: str, buckets: int) -> dict[int, pl.DataFrame]:
    """Rows by bucket of ``column`` (a customer or terminal id), in their order."""
    keyed = rows.with_columns(_bucket(pl.col(column), rows.schema[column], buckets).alias(_BUCKET))
    parts = keyed.partition_by(_BUCKET, as_dict=True, include_key=False)
    return {int(b): part for (b,), part in parts.items()}


def _in_row_order(windows: list[pl.DataFrame], rows: list[pl.Series]) -> pl.DataFrame:
    """Partitions' window columns (each in its partition's row order) as one frame in row order: ``rows``
    are the positions of each partition's own rows, together 0..n-1 once each."""
    at = pl.concat(rows).to_numpy()
    order = np.empty(len(at), dtype=np.int64)
    order[at] = np.arange(len(at))
    return pl.concat(windows, rechunk=True)[order]  # a gather from one chunk: 2-4x faster than from many


def _blocks(largest: int, span_us: int, partition_rows: int, lookback_us: int) -> int:
    """Time blocks per bucket: one, unless a bucket holds over twice ``partition_rows`` rows (a busy
    merchant's terminal: hashing cannot spread one id), then enough to cut it to about
    ``partition_rows`` — a block's look-back is computed twice, so never a block shorter than two."""
    if largest <= 2 * partition_rows:
        return 1
    return max(1, min(math.ceil(largest / partition_rows), span_us // (2 * lookback_us)))


def _entity_windows(part: tuple[str, pl.DataFrame], cfg: FeaturesConfig) -> pl.DataFrame:
    entity, rows = part
    return partition_windows(rows, cfg, entity)


def cluster_windows(
    eng: compute.Engine, narrow: pl.DataFrame, cfg: FeaturesConfig, partition_rows: int
) -> pl.DataFrame:
    """:func:`~fraudops.features.local_windows` computed on the cluster. The rows are here already, so
    they are partitioned here, by customer and by terminal, and each partition (only the columns its
    entity's windows read) is sent once, to the worker that computes it."""
    n = narrow.height
    if n == 0:
        return local_windows(narrow, cfg)
    place = pl.col(OWN).cast(pl.Int64).cum_sum() - 1 if OWN in narrow.columns else pl.int_range(pl.len())
    rows = narrow.with_columns(place.alias(ROW))  # an own row's place among the own rows
    times = rows.get_column(TIME).dt.epoch("us")
    origin, span = int(times.min()), int(times.max()) - int(times.min()) + 1  # type: ignore[arg-type]
    lookback_us = lookback_days(cfg) * US_PER_DAY
    buckets = max(eng.workers, math.ceil(n / partition_rows))
    entities: list[str] = []  # each partition's entity, in the order sent
    positions: dict[str, list[pl.Series]] = {entity: [] for entity in ENTITIES}

    def partitions() -> Iterator[tuple[str, pl.DataFrame]]:
        for entity in ENTITIES:
            cols = rows.select(ROW, *ENTITY_COLUMNS[entity], *([OWN] if OWN in rows.columns else []))
            # buckets alone first: their sizes tell whether an id needs time blocks (rarely: then split again)
            split = list(_split_by(cols, ENTITIES[entity], buckets).values())
            blocks = _blocks(max(p.height for p in split), span, partition_rows, lookback_us)
            if blocks > 1:
                block_us = math.ceil(span / blocks)
                blocked = split_rows(cols, entity, buckets, blocks, origin, block_us, lookback_us)
                split = list(blocked.values())
            for part in split:
                entities.append(entity)
                own = part.filter(OWN) if OWN in part.columns else part
                positions[entity].append(own.get_column(ROW))
                yield entity, part.drop(ROW)

    done = eng.map(_entity_windows, partitions(), cfg, send=True)  # fills entities and positions
    windows: dict[str, list[pl.DataFrame]] = {entity: [] for entity in ENTITIES}
    for entity, part_windows in zip(entities, done, strict=True):
        windows[entity].append(part_windows)
    out = pl.concat([_in_row_order(windows[e], positions[e]) for e in ENTITIES], how="horizontal")
    own = int(narrow.get_column(OWN).sum()) if OWN in narrow.columns else n
    if out.height != own:
        raise RuntimeError(f"scaled features: {out.height} rows computed for {own} (partitioning is broken)")
    return out


Keep = Callable[[pl.DataFrame], pl.DataFrame]
"""Filters canonical rows to some customers (or terminals)."""
Group = tuple[Keep, Callable[[], pl.DataFrame | None]]
"""Some ids of one entity: what keeps their rows, and what reads their history (called only if needed)."""


def hash_groups(entity: str, buckets: int, history: Callable[[Keep], pl.DataFrame | None]) -> Iterator[Group]:
    """The ids of ``entity`` in ``buckets`` hash buckets, each bucket's history ``history(keep)``."""
    column = _CANONICAL[entity]
    for b in range(buckets):

        def keep(rows: pl.DataFrame, b: int = b) -> pl.DataFrame:
            return rows.filter(_bucket(pl.col(column), rows.schema[column], buckets) == b)

        yield keep, functools.partial(history, keep)


def _among(terminals: pl.Series, rows: pl.DataFrame, inside: bool = True) -> pl.DataFrame:
    """``rows`` whose terminal is (``inside``) or is not among ``terminals``."""
    found = pl.col(TERMINAL).is_in(terminals.cast(rows.schema[TERMINAL], strict=False).implode())
    return rows.filter(found if inside else ~found)


def part_groups(
    backs: Iterable[pl.DataFrame], history: Callable[[pl.DataFrame | None, Keep], pl.DataFrame | None]
) -> Iterator[Group]:
    """Terminals grouped by the history frames that each hold every row of their terminals (a feature
    table's parts: terminal buckets), then the terminals none has; a group's history is
    ``history(back, keep)`` (``back``: its frame, None for the last group)."""
    seen: list[pl.Series] = []
    for back in backs:
        terminals = back.get_column(TERMINAL).unique()
        seen.append(terminals)
        keep = functools.partial(_among, terminals)
        yield keep, functools.partial(history, back, keep)
    rest = functools.partial(_among, pl.concat(seen) if seen else pl.Series(TERMINAL, []), inside=False)
    yield rest, functools.partial(history, None, rest)


def features_over_groups(
    new: pl.DataFrame, groups: Callable[[str], Iterable[Group]], cfg: FeaturesConfig
) -> pl.DataFrame:
    """:func:`~fraudops.features.engine.features_for` of ``new`` in this process (a worker), its history
    read one group of customers (then terminals) at a time: ``groups(entity)`` gives groups that hold
    each row of ``new`` once (:func:`hash_groups`, or a feature table's parts). Only a group's history is
    held at once, so a task over a long look-back needs a group's memory. Counts equal the local
    engine's, averages to ~1e-12 (other customers' rows precede a customer's in the rolling sums); one
    group is the local engine's computation, bit for bit."""
    if new.height == 0:
        return local_features_for(new, None, cfg)
    rowed = new.with_row_index(ROW)
    own = narrow(new).with_row_index(ROW).with_columns(pl.lit(True).alias(OWN))
    columns = []
    for entity in ENTITIES:
        cols = [*ENTITY_COLUMNS[entity], OWN]
        done, positions = [], []
        for keep, read in groups(entity):
            at = keep(rowed).get_column(ROW)
            if at.len() == 0:
                continue
            part = own[at].select(cols)
            back = read()
            if back is not None and back.height:
                looked = lookback_narrow(back, new, own, cfg).with_columns(pl.lit(False).alias(OWN))
                part = pl.concat([looked.select(cols), part], how="vertical_relaxed")
            done.append(partition_windows(part, cfg, entity))
            positions.append(at)
        placed = pl.concat(positions) if positions else pl.Series(ROW, [], pl.UInt32)
        if placed.len() != new.height or placed.n_unique() != new.height:
            held = f"{placed.len()} rows ({placed.n_unique()} distinct)"
            raise RuntimeError(f"scaled features: the {entity} groups hold {held} of {new.height}")
        columns.append(_in_row_order(done, positions))
    return with_windows(new, pl.concat(columns, how="horizontal"), cfg)


# ------------------------------------------------------------- from the workspace's files, on the workers
# The partitions of a feature table: pieces (files, row groups) read where the split runs, keyed by
# customer bucket only (no time blocks: a repeated id's copies of one customer meet in one partition),
# then by terminal bucket; ROW is the row's place in load_folder's order (piece index, row in piece).


def _internal(column: str) -> bool:
    return column.startswith("__fo_")


def _gathered(pieces: list[pl.DataFrame | None]) -> pl.DataFrame:
    """A partition's pieces together, with their narrow columns, every row its own (no look-back)."""
    part = pl.concat([p for p in pieces if p is not None], how="diagonal_relaxed")
    return part.hstack(narrow(part)).with_columns(pl.lit(True).alias(OWN))


def split_pieces(
    pieces: list[Piece],
    storage: Storage,
    data: DataConfig,
    cfg: FeaturesConfig,
    labelled_only: bool,
    buckets: int,
) -> tuple[dict[int, pl.DataFrame], list[Survey]]:
    """Some pieces' valid rows by customer bucket, and each piece's survey (what the command's process
    checks). Several pieces a task: fewer, larger frames move in the shuffle (a day's file is small)."""
    frames, reports = [], []
    for piece in pieces:
        v = read_piece(storage, piece, data)
        rows = piece_rows(v, labelled_only=labelled_only)
        reports.append(survey(v, data))
        if rows is None or rows.height == 0 or v.file_problems:
            continue
        # add_features replaces input columns named like a feature (the amount apart): drop them now
        rows = rows.drop([c for c in feature_names(cfg) if c != AMOUNT and c in rows.columns])
        order = (pl.int_range(pl.len(), dtype=pl.Int64) + (piece.index << 32)).alias(ROW)
        frames.append(rows.with_columns(order))
    if not frames:
        return {}, reports
    # by the input column, not the narrow one: narrow columns are built where the partition is computed
    # (a third less data in the shuffle)
    return _split_by(pl.concat(frames, how="diagonal_relaxed"), CUSTOMER, buckets), reports


def combine_customers(key: int, pieces: list[pl.DataFrame | None], cfg: FeaturesConfig) -> pl.DataFrame:
    """A customer bucket's rows, a repeated id once (the later piece's row, as load_folder keeps it), with
    their customer windows. The pieces come in input order, so their rows are in ROW order already."""
    part = _gathered(pieces)
    if not part.get_column(ROW).is_sorted():
        part = part.sort(ROW)
    if part.get_column(TX_ID).n_unique() < part.height:
        part = part.unique(TX_ID, keep="last", maintain_order=True)
    windows = partition_windows(part, cfg, "customer")
    return part.drop(c for c in part.columns if _internal(c) and c != ROW).hstack(windows)


def split_terminals(part: pl.DataFrame, buckets: int) -> tuple[dict[int, pl.DataFrame], None]:
    return _split_by(part, TERMINAL, buckets), None


def combine_terminals(key: int, pieces: list[pl.DataFrame | None], cfg: FeaturesConfig) -> pl.DataFrame:
    """A terminal bucket's rows as :func:`add_features` gives them (in (time, id) order), without the
    internal columns."""
    part = _gathered(pieces)
    terminal = partition_windows(part, cfg, "terminal")
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
