"""The feature table: a folder's transactions with their features, computed and written by a Dask cluster.

With ``compute.engine: dask`` the command's process never holds the history. It lists the input pieces
(files; the row groups of a Parquet file, from its footer); the workers read and validate them (every
problem is reported at once, as when loading in one process), shuffle them by customer then by terminal
(:mod:`fraudops.features.scaled`) and each writes its terminal bucket's rows — the columns
:func:`~fraudops.features.add_features` gives, in (time, id) order, row groups of ``ROW_GROUP`` rows —
as one Parquet file through the workspace storage (a hidden temporary renamed into place; on S3 one
upload). Layout::

    data/features/<name>/<generation>/part-00000.parquet ...   one file per terminal bucket
    data/features/<name>/table.json                            the manifest, written last

A build writes a new generation, then the manifest (which names it), then deletes older generations, so
readers see a whole table or the previous one. Consumers read a time window (:meth:`FeatureTable.window`):
only the row groups whose time statistics overlap it, only the columns asked for; or a look-back a part
at a time (:meth:`FeatureTable.lookback_parts`: a part holds every row of its terminals).

Same rows and features as the local engine (counts equal, averages to ~1e-12), with two differences for
unusual data, stated: a transaction id repeated in several files is kept once (the later file's row) when
its copies are of the same customer (a corrected row), else both stay; a repeated id inside one Parquet
file is checked per row group. Rows tied on time come in id order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import math
import posixpath
import uuid
from collections.abc import Callable, Iterable, Iterator

import polars as pl
from pydantic import BaseModel

from fraudops import compute
from fraudops.config import FeaturesConfig, Settings
from fraudops.data.loading import (
    Piece,
    check_surveys,
    content_sha256,
    list_pieces,
    load_folder,
    table_files,
)
from fraudops.data.schema import AMOUNT, CUSTOMER, LABEL, TERMINAL, TX_ID, TX_TIME
from fraudops.features import scaled
from fraudops.features.definitions import feature_names, lookback_days
from fraudops.workspace.layout import CURRENT, FEATURE_TABLES, RAW
from fraudops.workspace.storage import Storage

CSV_ROW_BYTES = 20
"""About the fewest bytes a CSV row takes (an id, a time, a card, a terminal, an amount): a CSV file's
rows are estimated from its size before it is read (more buckets than needed, never fewer)."""
ROW_GROUP = 65_536
"""Rows per Parquet row group of a part: the granularity at which a time window skips data."""
MANIFEST = "table.json"
_ORDER = "__fo_order"
HISTORY_COLUMNS = [TX_ID, TX_TIME, CUSTOMER, TERMINAL, AMOUNT, LABEL]
"""What a look-back into history reads: the columns features are computed from."""


class TablePart(BaseModel):
    rel: str
    rows: int
    frauds: int
    start: dt.datetime | None
    end: dt.datetime | None


class Manifest(BaseModel):
    """What a built table holds (``table.json``)."""

    name: str
    generation: str
    folders: list[str]
    labelled_only: bool
    columns: list[str]
    parts: list[TablePart]
    fingerprint: dict[str, object]
    inputs: str = ""
    """What it was built from (:func:`inputs_signature`): a build with the same inputs reuses it."""


AddHistory = Callable[[pl.DataFrame | None, scaled.Keep | None], pl.DataFrame | None]
"""A group's history from its table rows: rows of other inputs added (of them what the filter leaves)."""


@dataclasses.dataclass
class FeatureTable:
    """A built table in a workspace."""

    storage: Storage
    manifest: Manifest

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.manifest.parts)

    @property
    def frauds(self) -> int:
        return sum(p.frauds for p in self.manifest.parts)

    @property
    def days(self) -> tuple[dt.date, dt.date]:
        """The first and last day of its transactions."""
        starts = [p.start for p in self.manifest.parts if p.start is not None]
        ends = [p.end for p in self.manifest.parts if p.end is not None]
        return _day(min(starts)), _day(max(ends))

    def window(
        self,
        start: dt.date,
        end: dt.date,
        columns: list[str] | None = None,
        keep: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> pl.DataFrame:
        """Its rows of the days ``start`` (inclusive) to ``end`` (exclusive), in (time, id) order; ``keep``
        filters each part's rows as they are read (only what it leaves is held)."""
        frames = [read_days(self.storage, p.rel, start, end, columns) for p in self.manifest.parts]
        return in_order([keep(f) if keep and f.height else f for f in frames])

    def lookback(
        self,
        new: pl.DataFrame,
        cfg: FeaturesConfig,
        keep: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
    ) -> pl.DataFrame | None:
        """The history rows the features of ``new`` reach back into (:func:`~fraudops.features.features_for`
        reads no others): from :func:`~fraudops.features.lookback_days` before its earliest transaction to
        its last day, only the columns features are computed from (and of them what ``keep`` leaves)."""
        if new.height == 0 or self.rows == 0:
            return None
        start, end = self._lookback_days(new, cfg)
        return self.window(start, end, self._history_columns, keep)

    def lookback_parts(self, new: pl.DataFrame, cfg: FeaturesConfig) -> Iterator[pl.DataFrame]:
        """:meth:`lookback` a part at a time (in no particular order): a part holds every row of its
        terminals, so each is the whole look-back of the terminals it has."""
        if new.height == 0 or self.rows == 0:
            return
        start, end = self._lookback_days(new, cfg)
        for p in self.manifest.parts:
            yield read_days(self.storage, p.rel, start, end, self._history_columns)

    @property
    def _history_columns(self) -> list[str]:
        """The :data:`HISTORY_COLUMNS` the table has: what a look-back reads."""
        return [c for c in HISTORY_COLUMNS if c in self.manifest.columns]

    def lookback_buckets(self, new: pl.DataFrame, cfg: FeaturesConfig, partition_rows: int) -> int:
        """In how many customer buckets (:func:`~fraudops.features.scaled.hash_groups`) to read the
        look-back of ``new`` for a bucket to hold about ``partition_rows`` rows (from the table's rows a
        day: its parts are not cut by day)."""
        if new.height == 0 or self.rows == 0:
            return 1
        first, last = self.days
        start, end = self._lookback_days(new, cfg)
        per_day = self.rows / ((last - first).days + 1)
        return max(1, math.ceil(((end - start).days * per_day + new.height) / partition_rows))

    def groups(
        self, new: pl.DataFrame, cfg: FeaturesConfig, partition_rows: int, add: AddHistory, entity: str
    ) -> Iterator[scaled.Group]:
        """The groups of ``entity`` whose look-back (for ``new``) is read one at a time: customers in hash
        buckets of about ``partition_rows`` rows of look-back (each bucket filters every part's rows);
        terminals a part at a time (a part holds whole terminals: each part is read once), then the
        terminals no part has; a group's history is ``add(its table rows, keep)``."""
        if entity == "customer":
            buckets = self.lookback_buckets(new, cfg, partition_rows)
            yield from scaled.hash_groups(
                entity, buckets, lambda keep: add(self.lookback(new, cfg, keep), keep)
            )
            return
        yield from scaled.part_groups(self.lookback_parts(new, cfg), add)

    def features_over(
        self,
        new: pl.DataFrame,
        cfg: FeaturesConfig,
        partition_rows: int,
        add: AddHistory = lambda base, _: base,
    ) -> pl.DataFrame:
        """The features of ``new`` over this table's rows (and over each other; and rows ``add`` adds),
        computed here (a worker) reading their look-back a group at a time (:meth:`groups`)."""
        groups = functools.partial(self.groups, new, cfg, partition_rows, add)
        return scaled.features_over_groups(new, groups, cfg)

    def _lookback_days(self, new: pl.DataFrame, cfg: FeaturesConfig) -> tuple[dt.date, dt.date]:
        times = new.get_column(TX_TIME)
        start = _day(times.min()) - dt.timedelta(days=lookback_days(cfg) + 1)
        return start, _day(times.max()) + dt.timedelta(days=1)

    def frauds_of(self, columns: list[str]) -> pl.DataFrame:
        """Its frauds (label 1), read a part at a time: what tells which cards are known to be compromised."""
        frames = [
            read_days(self.storage, p.rel, None, None, [*columns, LABEL]).filter(pl.col(LABEL) == 1)
            for p in self.manifest.parts
        ]
        return pl.concat(frames, how="diagonal_relaxed").select(*columns, LABEL)


def in_order(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Rows of several parts as one frame in (time, id) order (the first part's, empty, if all are)."""
    rows = [f for f in frames if f.height]
    return _sorted(pl.concat(rows, how="diagonal_relaxed")) if rows else frames[0]


def _sorted(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows.sort(TX_TIME, TX_ID)`` a column at a time, each source column released once gathered: the
    peak is the rows plus a column, not twice the rows (a training window of 13.6 M rows: 6.0 GB, not
    8.1 GB)."""
    order = rows.select(TX_TIME, TX_ID).with_row_index(_ORDER).sort(TX_TIME, TX_ID).get_column(_ORDER)
    columns = []
    for name in rows.columns:
        columns.append(rows.get_column(name).gather(order))
        rows = rows.drop(name)
    return pl.DataFrame(columns)


def _day(value: object) -> dt.date:
    """The day of a time value (a datetime, or a date already)."""
    if isinstance(value, dt.datetime):
        return value.date()
    assert isinstance(value, dt.date), value
    return value


def read_days(
    storage: Storage, rel: str, start: dt.date | None, end: dt.date | None, columns: list[str] | None
) -> pl.DataFrame:
    """One part's rows of the days [start, end) (None: all): only the row groups whose time range meets
    them (a day of margin: statistics are instants, days are in the column's own zone)."""
    import pyarrow.parquet as pq

    with storage.open_read(rel) as f:
        pf = pq.ParquetFile(f)
        at = pf.schema_arrow.get_field_index(TX_TIME)
        if start is None or end is None:
            df = pl.from_arrow(pf.read(columns=columns))
            assert isinstance(df, pl.DataFrame)
            return df
        margin = dt.timedelta(days=1)
        groups = []
        for i in range(pf.metadata.num_row_groups):
            stats = pf.metadata.row_group(i).column(at).statistics
            unknown = stats is None or not stats.has_min_max
            if unknown or (_day(stats.max) >= start - margin and _day(stats.min) < end + margin):
                groups.append(i)
        table = pf.read_row_groups(groups, columns=columns) if groups else pf.schema_arrow.empty_table()
        df = pl.from_arrow(table.select(columns) if columns is not None else table)
    assert isinstance(df, pl.DataFrame)
    day = pl.col(TX_TIME).dt.date()
    return df.filter((day >= start) & (day < end))


def _rows_at_most(storage: Storage, piece: Piece) -> int:
    """At most how many rows a piece holds, before it is read: a Parquet piece's from its footer, a CSV
    file's from its size (a row takes at least ``CSV_ROW_BYTES``)."""
    return piece.rows if piece.rows is not None else storage.size(piece.rel) // CSV_ROW_BYTES


def _batches(pieces: list[Piece], sizes: list[int], rows: int, at_least: int) -> list[list[Piece]]:
    """Consecutive pieces in batches of at most ``rows`` rows (a piece larger alone), and at least
    ``at_least`` batches when there are as many pieces (every worker reads): a shuffle's first tasks."""
    rows = max(1, min(rows, -(-sum(sizes) // at_least)))
    batches: list[list[Piece]] = []
    held = 0
    for piece, size in zip(pieces, sizes, strict=True):
        if not batches or held + size > rows:
            batches.append([])
            held = 0
        batches[-1].append(piece)
        held += size
    return batches


def write_part(
    key: int,
    pieces: list[pl.DataFrame | None],
    cfg: FeaturesConfig,
    storage: Storage,
    folder: str,
) -> tuple[TablePart, list[str], pl.Series]:
    """A terminal bucket's rows with their features, written (on the worker) as one part: its entry in
    the manifest, its input columns and their row hashes (the table's content hash)."""
    rows = scaled.combine_terminals(key, pieces, cfg)
    rel = posixpath.join(folder, f"part-{key:05d}.parquet")
    with storage.open_write(rel) as f:
        rows.write_parquet(f, row_group_size=ROW_GROUP, compression="lz4")
    names = set(feature_names(cfg))
    inputs = [c for c in rows.columns if c == AMOUNT or c not in names]
    times = rows.get_column(TX_TIME)
    part = TablePart(
        rel=rel,
        rows=rows.height,
        frauds=int(rows.get_column(LABEL).sum() or 0) if LABEL in rows.columns else 0,
        start=times.min() if rows.height else None,
        end=times.max() if rows.height else None,
    )
    return part, inputs, rows.select(inputs).hash_rows(seed=0)


def _entry(written: tuple[TablePart, list[str], pl.Series]) -> tuple[TablePart, list[str]]:
    return written[0], written[1]


def split_hashes(
    written: tuple[TablePart, list[str], pl.Series], ranges: int
) -> tuple[dict[int, pl.Series], None]:
    """A part's row hashes by range of value (``ranges`` equal ranges of the UInt64 line)."""
    step = -(-(2**64) // max(ranges, 2))  # (one range of 2**64 would not fit an UInt64)
    hashes = written[2]
    which = (hashes // step).cast(pl.Int64)
    return {int(r): hashes.filter(which == r) for r in which.unique()}, None


def sort_range(key: int, pieces: list[pl.Series | None]) -> pl.Series:
    return pl.concat([p for p in pieces if p is not None]).sort()


def build(
    eng: compute.Engine,
    storage: Storage,
    settings: Settings,
    name: str,
    folders: Iterable[str],
    *,
    labelled_only: bool,
) -> FeatureTable:
    """The table of the folders' rows (only labelled ones if asked) built on ``eng``'s workers; the table
    already there when it was built from the same files and settings (train, then select_champion, or
    the next execution, read the same table)."""
    folders = list(folders)
    base = posixpath.join(FEATURE_TABLES, name)
    signature = inputs_signature(storage, settings, folders, labelled_only)
    if storage.exists(posixpath.join(base, MANIFEST)):
        existing = Manifest.model_validate(storage.read_json(posixpath.join(base, MANIFEST)))
        if existing.inputs == signature:
            return FeatureTable(storage, existing)
    pieces = list_pieces(storage, folders)
    generation = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    folder = posixpath.join(base, generation)
    sizes = [_rows_at_most(storage, p) for p in pieces]
    buckets = max(eng.workers, math.ceil(sum(sizes) / eng.partition_rows))
    by_customer = eng.exchange(
        _batches(pieces, sizes, eng.partition_rows, 2 * eng.workers),
        scaled.split_pieces,
        (storage, settings.data, settings.features, labelled_only, buckets),
        scaled.combine_customers,
        (settings.features,),
        check=lambda reports: check_surveys(storage, pieces, [s for r in reports for s in r], settings.data),
    )
    written = eng.exchange(
        [by_customer.pop(k) for k in sorted(by_customer)],  # held nowhere else: released once split
        scaled.split_terminals,
        (buckets,),
        write_part,
        (settings.features, storage, folder),
    )
    entries = eng.map(_entry, [written[k] for k in sorted(written)])
    parts = [part for part, _ in entries]
    columns = entries[0][1] if entries else []
    # the content hash: the row hashes sorted range by range on the workers, fetched one range at a time
    ranges = eng.exchange([written.pop(k) for k in sorted(written)], split_hashes, (buckets,), sort_range, ())
    hashes = (eng.gather([ranges.pop(r)])[0] for r in sorted(ranges))
    rows, frauds = sum(p.rows for p in parts), sum(p.frauds for p in parts)
    fingerprint: dict[str, object] = {"content_sha256": content_sha256(columns, hashes), "n_rows": rows}
    if LABEL in columns:
        fingerprint["n_frauds"] = frauds
    if rows:
        fingerprint["start"] = str(min(p.start for p in parts if p.start is not None))
        fingerprint["end"] = str(max(p.end for p in parts if p.end is not None))
    manifest = Manifest(
        name=name,
        generation=generation,
        folders=folders,
        labelled_only=labelled_only,
        columns=columns,
        parts=parts,
        fingerprint=fingerprint,
        inputs=signature,
    )
    storage.write_json(posixpath.join(base, MANIFEST), manifest.model_dump(mode="json"))
    for old in storage.folders(base):
        if old != folder:
            storage.delete(old, recursive=True)
    storage.remove_leftovers(base)  # the temporaries of attempts lost with their worker (Dask reran them)
    eng.release_memory()
    return FeatureTable(storage, manifest)


def inputs_signature(storage: Storage, settings: Settings, folders: list[str], labelled_only: bool) -> str:
    """A hash of what a table is built from: every input file's name, size and version (modification time,
    or ETag on S3), and the data and features settings."""
    digest = hashlib.sha256()
    digest.update(f"{folders}|{labelled_only}|{settings.data.model_dump_json()}|".encode())
    digest.update(settings.features.model_dump_json().encode())
    for folder in folders:
        for rel in table_files(storage, folder):
            info = storage.info(rel)
            version = info.get("ETag") or info.get("mtime") or info.get("LastModified")
            digest.update(f"|{rel}|{info.get('size')}|{version}".encode())
    return digest.hexdigest()


def scales(settings: Settings) -> bool:
    """Whether the cluster builds the table: the Dask engine, transactions with their own ids (without,
    ids are row numbers in the global time order, which only a whole table in one process knows)."""
    return (
        compute.current() is not None
        and settings.data.kind == "transactions"
        and settings.data.columns.transaction_id is not None
    )


def _table_or_rows(
    storage: Storage, settings: Settings, name: str, folders: list[str], *, labelled_only: bool
) -> pl.DataFrame | FeatureTable:
    eng = compute.current()
    if eng is None or not scales(settings):
        return load_folder(storage, folders, settings.data, labelled_only=labelled_only)
    return build(eng, storage, settings, name, folders, labelled_only=labelled_only)


def labelled(storage: Storage, settings: Settings) -> pl.DataFrame | FeatureTable:
    """Training's labelled history (data/raw/ and labelled current data): the feature table built on the
    cluster (:func:`scales`), else the rows loaded here."""
    return _table_or_rows(storage, settings, "labelled", [RAW, CURRENT], labelled_only=True)


def history(storage: Storage, settings: Settings) -> pl.DataFrame | FeatureTable:
    """Every known transaction (data/raw/ and current data, labelled or not), which batch scoring's
    feature windows reach back into: the table built on the cluster, else the rows loaded here."""
    return _table_or_rows(storage, settings, "history", [RAW, CURRENT], labelled_only=False)


def raw_history(storage: Storage, settings: Settings) -> pl.DataFrame | FeatureTable:
    """The transactions of data/raw/ (labelled or not), monitoring's history."""
    return _table_or_rows(storage, settings, "raw", [RAW], labelled_only=False)
