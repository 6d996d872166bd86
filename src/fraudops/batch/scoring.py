"""Batch inference: every file of ``prod_inputs/`` scored with the champion (SageMaker Batch Transform).

What is scored
    Every CSV and Parquet file directly in ``prod_inputs/`` (hidden names skipped); any other file is an
    error naming it, an empty folder is an error. The model is the registered version the ``champion``
    alias names (lineage, never "the newest file").

Output naming rule (one output per input, in the input's format)
    ``prod_inputs/<stem>.<ext>`` → ``prod_outputs/predictions/<stem>.out.<ext>``: Batch Transform's
    ``.out`` suffix, placed before the extension so the file keeps its format (``batch_input.csv`` →
    ``batch_input.out.csv``, ``day.parquet`` → ``day.out.parquet``). Rejected rows go to
    ``prod_outputs/predictions/<input name>.rejects.csv`` (``batch_input.csv.rejects.csv``), always CSV;
    the full input name keeps ``x.csv`` and ``x.parquet`` apart.

Output columns, in order
    the id (the configured ``transaction_id`` column, or ``row_number`` = the row's 0-based position among
    the file's data rows when there is none), the input columns (``batch.join_columns``; null = all, like
    Batch Transform's ``join_source: Input``; an input column named like an output column is left out),
    ``fraud_probability`` (Float64), ``is_fraud`` (Int8, ``fraud_probability >= threshold``),
    ``model_version`` (Int32), ``scored_at`` (UTC timestamp of the run, the same for every row) and
    ``reason_1``..``reason_3``: the features that pushed the score up most, as sentences with their
    contribution to the log-odds (``amount 912.40, usual 45.10 [+2.315]``), for the alerts
    (``batch.reasons: alerts``), every row (``all``) or none (``off``: null columns).
    Input columns are copied as read: Parquet keeps its types, CSV is read as text and copied verbatim.
    Rows keep the input order; invalid rows are left out (see below).

Invalid rows
    :func:`fraudops.data.validate` decides. With ``batch.on_invalid = reject`` (default) they are written
    to the rejects file (``row_number``, the input columns read, i.e. all of them unless ``join_columns``
    narrows the output, and ``reason``, e.g. ``V3: not a number``) and the rest is scored; a previous
    rejects file is deleted when a run finds none. With ``fail`` any invalid row fails the file:
    the error names file, column, number of rows, examples and the first row, and nothing is written for
    it. A missing column (model feature, configured role but the features kind's time, join column), an
    empty file or a file with no valid row always fails the file. A failing file does not stop the
    others: they are scored, then the step raises :class:`BatchError` listing the failures (earlier
    outputs of a failing file are left untouched).

Memory
    The features kind streams: Parquet by record batches of ``batch.chunk_rows`` rows
    (``pyarrow.parquet.ParquetFile.iter_batches`` without pre-buffering: memory is bounded by a row group
    and a few chunks, so write big files with row groups), CSV by polars' streaming reader
    (``scan_csv(...).collect_batches``; polars may buffer a remote CSV whole). At most three chunks are in
    flight: the next one being read and the previous one being written overlap with scoring. Outputs are
    written chunk by chunk (one Parquet row group or one CSV block each, the CSV header once) into a
    hidden temporary file renamed into place when the file is complete, so a re-run replaces outputs
    atomically and a crash leaves no partial file. Duplicate ids are found within a chunk only.
    The transactions kind loads each input file whole: its features (customer and terminal windows)
    need all the batch's rows together with the history (``data/raw/`` +
    ``monitoring_inputs/current_data/``, loaded once per run); transaction batches are small next to
    that history. Each file's features see that history, the file itself and the valid rows of the other
    files of ``prod_inputs/`` (:func:`peer_rows`, read once per run: a card's transactions split over
    two files are one card's history; a transaction id in a file and in the history is the file's row).

Speed
    Rows reach the model as C-ordered float32 chunks scored by ``FraudModel.predict_proba`` (XGBoost
    ``inplace_predict``) on a copy of the booster using ``train.n_jobs`` threads (the cached, served
    booster keeps ``nthread=1``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import posixpath
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

import numpy as np
import polars as pl
from pydantic import BaseModel

from fraudops import features
from fraudops.config import Settings
from fraudops.context import Progress
from fraudops.data.reading import duplicate_names, read_table, reading
from fraudops.data.schema import LABEL, ROW_ERROR, SCENARIO, TX_ID, TX_TIME, role_columns
from fraudops.data.validation import validate
from fraudops.errors import DataValidationError, FraudopsError, Problem
from fraudops.features.table import HISTORY_COLUMNS, FeatureTable
from fraudops.modeling.explain import TOP, Explainer
from fraudops.modeling.model import FraudModel
from fraudops.workspace.layout import PREDICTIONS
from fraudops.workspace.storage import Storage

ROW_NUMBER = "row_number"
REASON = "reason"
PEER_FILE = "__peer_file__"  # which input a peer row came from: a file is not its own history
PROBABILITY, FLAG, VERSION, SCORED_AT = "fraud_probability", "is_fraud", "model_version", "scored_at"
REASONS = tuple(f"reason_{k + 1}" for k in range(TOP))
OUTPUT_COLUMNS = (PROBABILITY, FLAG, VERSION, SCORED_AT, *REASONS)
CSV_INFER_ROWS = 10_000  # rows read to decide whether a features-kind CSV time column holds seconds
PARQUET_COMPRESSION = "snappy"


class FileScore(BaseModel):
    """One input file scored: where its output went and what was in it."""

    input: str
    output: str
    rows: int
    flagged: int
    rejected: int
    rejects: str | None
    seconds: float
    rows_per_second: int | None


# ------------------------------------------------------------------------------------------ naming


def output_name(rel: str) -> str:
    """``prod_inputs/batch_input.csv`` → ``prod_outputs/predictions/batch_input.out.csv``."""
    stem, ext = posixpath.splitext(posixpath.basename(rel))
    return f"{PREDICTIONS}/{stem}.out{ext}"


def rejects_name(rel: str) -> str:
    """``prod_inputs/batch_input.csv`` → ``prod_outputs/predictions/batch_input.csv.rejects.csv``."""
    return f"{PREDICTIONS}/{posixpath.basename(rel)}.rejects.csv"


# ------------------------------------------------------------------------------------------- model


def _matrix(frame: pl.DataFrame, names: list[str]) -> np.ndarray:
    """C-ordered float32 model inputs (one conversion, no float64 intermediate)."""
    return frame.select(pl.col(names).cast(pl.Float32)).to_numpy(order="c")


# ------------------------------------------------------------------------------------------- plan


@dataclasses.dataclass
class _Plan:
    """What to read from a file and what to write, decided from its columns before any row is read."""

    uri: str
    parquet: bool
    id_column: str | None  # the file's id column; None = a generated row_number
    join: list[str]  # input columns copied to the output (the id apart)
    read: list[str]  # columns to read: validation, features and the output need them
    features: list[str] | None  # features kind: the model's inputs, read from the file
    numeric_time: bool | None = None  # features kind: whether the time column holds seconds (all chunks)

    @property
    def out_id(self) -> str:
        return self.id_column or ROW_NUMBER


def _plan(storage: Storage, rel: str, settings: Settings, model: FraudModel) -> tuple[_Plan, int | None]:
    """The file's plan and its row count when known; a missing column fails the file here."""
    uri = storage.uri(rel)
    parquet = rel.lower().endswith(".parquet")
    columns, total = _file_columns(storage, rel, parquet)
    cfg = settings.data
    duplicated = duplicate_names(columns)
    if duplicated:
        raise DataValidationError([Problem(uri, c, "duplicate column name") for c in duplicated])
    roles = role_columns(cfg)  # file name -> canonical name
    # the features kind scores without a time column (the model's inputs are the feature columns)
    optional_roles = (SCENARIO, LABEL, TX_TIME) if cfg.kind == "features" else (SCENARIO, LABEL)
    required = [name for name, canon in roles.items() if canon not in optional_roles]
    optional = [name for name, canon in roles.items() if canon in optional_roles and name in columns]
    features = list(model.feature_names) if cfg.kind == "features" else None
    if cfg.kind == "features" and cfg.columns.amount:
        required.append(cfg.columns.amount)
    join = list(columns) if settings.batch.join_columns is None else list(settings.batch.join_columns)
    missing = [c for c in dict.fromkeys([*required, *(features or []), *join]) if c not in columns]
    if missing:
        raise DataValidationError([Problem(uri, c, "missing column") for c in missing])
    id_column = cfg.columns.transaction_id
    reserved = {*OUTPUT_COLUMNS, id_column or ROW_NUMBER}
    join = [c for c in join if c not in reserved]
    wanted = {*required, *optional, *(features or []), *join}
    plan = _Plan(uri, parquet, id_column, join, [c for c in columns if c in wanted], features)
    time_column = cfg.columns.timestamp
    if cfg.kind == "features" and time_column in columns:
        plan.numeric_time = _numeric_time(storage, rel, time_column, parquet)
    return plan, total


# ------------------------------------------------------------------------------------------ reading


def _source(storage: Storage, rel: str, stack: contextlib.ExitStack) -> Any:
    """A local path (native readers, fastest) or an open fsspec file."""
    return storage.path(rel) if storage.is_local else stack.enter_context(storage.open_read(rel))


def _file_columns(storage: Storage, rel: str, parquet: bool) -> tuple[list[str], int | None]:
    """Column names and (Parquet) row count, from the file's footer or header only."""
    with reading(storage.uri(rel)), contextlib.ExitStack() as stack:
        src = _source(storage, rel, stack)
        if parquet:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(src)
            return list(pf.schema_arrow.names), int(pf.metadata.num_rows)
        return pl.scan_csv(src, infer_schema=False).collect_schema().names(), None


def _numeric_time(storage: Storage, rel: str, column: str, parquet: bool) -> bool:
    """Features kind: whether the time column holds seconds, decided once for every chunk of the file
    (Parquet by its type; CSV, read as text, by its first rows: a bad cell later is an invalid row)."""
    with reading(storage.uri(rel)), contextlib.ExitStack() as stack:
        src = _source(storage, rel, stack)
        if parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            kind = pq.ParquetFile(src).schema_arrow.field(column).type
            return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind))
        head = pl.scan_csv(src, infer_schema=False).select(column).head(CSV_INFER_ROWS).collect()
    return bool(head[column].cast(pl.Float64, strict=False).is_not_null().any())


def _chunks(storage: Storage, rel: str, plan: _Plan, chunk_rows: int) -> Generator[pl.DataFrame]:
    """The file's rows, ``chunk_rows`` at a time, only the planned columns (CSV as text)."""
    with contextlib.ExitStack() as stack:
        with reading(plan.uri):
            src = stack.enter_context(storage.staged(rel))
            if plan.parquet:
                import pyarrow.parquet as pq

                # pre_buffer=False: with it, pyarrow keeps every row group read so far (memory grows
                # with the file: 1.6 GB peak for 3 M rows against 0.4 GB without)
                reader = pq.ParquetFile(src, pre_buffer=False)
                batches: Iterator[Any] = reader.iter_batches(batch_size=chunk_rows, columns=plan.read)
            else:
                lazy = pl.scan_csv(src, infer_schema=False).select(plan.read)
                batches = iter(lazy.collect_batches(chunk_size=chunk_rows))
        while True:
            with reading(plan.uri):
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                chunk = pl.from_arrow(batch) if plan.parquet else batch
            yield chunk  # type: ignore[misc]


def _whole(storage: Storage, rel: str, plan: _Plan) -> Generator[pl.DataFrame]:
    """Transactions kind: the whole file at once, typed as data import reads it (features need every row)."""
    yield read_table(storage, rel, columns=plan.read)


# ------------------------------------------------------------------------------------------ writing


class _ParquetOut:
    def __init__(self, f: IO[bytes], row_group_rows: int) -> None:
        self.f, self.row_group_rows = f, row_group_rows
        self.writer: Any = None

    def write(self, df: pl.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = df.to_arrow()
        if self.writer is None:
            # dictionary encoding pays for ids and categories, not for floats (it made writing 5x slower)
            dictionary = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
            self.writer = pq.ParquetWriter(
                self.f, table.schema, compression=PARQUET_COMPRESSION, use_dictionary=dictionary
            )
        elif table.schema != self.writer.schema:
            table = table.cast(self.writer.schema)
        self.writer.write_table(table, row_group_size=self.row_group_rows)

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()


class _CsvOut:
    """CSV blocks under one header (the seed lost it on chunked input)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.header = f, True

    def write(self, df: pl.DataFrame) -> None:
        df.write_csv(self.f, include_header=self.header)
        self.header = False

    def close(self) -> None:
        pass


class _Rejects:
    """The rejects CSV, created on the first rejected row only (committed with the output)."""

    def __init__(self, storage: Storage, rel: str, stack: contextlib.ExitStack) -> None:
        self.storage, self.rel, self.stack = storage, rel, stack
        self.out: _CsvOut | None = None

    def write(self, df: pl.DataFrame) -> None:
        if self.out is None:
            self.out = _CsvOut(self.stack.enter_context(self.storage.open_write(self.rel)))
        self.out.write(df)


# ------------------------------------------------------------------------------------------ scoring


@dataclasses.dataclass
class _Tally:
    """One file's counts and validation findings, summed over its chunks."""

    uri: str
    rows_in: int = 0
    scored: int = 0
    flagged: int = 0
    rejected: int = 0
    problems: dict[tuple[str | None, str], Problem] = dataclasses.field(default_factory=dict)
    first_rows: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, problems: list[Problem], errors: pl.Series, offset: int) -> None:
        for p in problems:
            seen = self.problems.get((p.column, p.message))
            if seen is None:
                self.problems[(p.column, p.message)] = dataclasses.replace(p, examples=list(p.examples))
            else:
                seen.n_rows += p.n_rows
                seen.examples = (seen.examples + p.examples)[:3]
        firsts = (
            errors.to_frame(REASON)
            .with_row_index("i")
            .drop_nulls(REASON)
            .group_by(REASON)
            .agg(pl.col("i").min())
        )
        for reason, i in firsts.iter_rows():
            self.first_rows.setdefault(reason, offset + int(i))

    def error(self) -> DataValidationError:
        out = []
        for p in self.problems.values():
            first = self.first_rows.get(f"{p.column}: {p.message}")
            where = f" (first at row {first}, counted from 0)" if first is not None else ""
            out.append(Problem(p.file, p.column, p.message + where, p.n_rows, p.examples))
        return DataValidationError(out)


@dataclasses.dataclass
class _Context:
    settings: Settings
    model: FraudModel
    version: int
    scored_at: dt.datetime
    history: pl.DataFrame | FeatureTable | None
    explainer: Explainer | None
    rel: str
    peers: pl.DataFrame | None

    @property
    def fail(self) -> bool:
        return self.settings.batch.on_invalid == "fail"

    @functools.cached_property
    def _others(self) -> pl.DataFrame | None:
        """The other input files' rows (once per file, whatever the number of buckets read)."""
        if self.peers is None:
            return None
        return self.peers.filter(pl.col(PEER_FILE) != self.rel).drop(PEER_FILE)

    def with_others(
        self, base: pl.DataFrame | None, keep: Callable[[pl.DataFrame], pl.DataFrame] | None
    ) -> pl.DataFrame | None:
        """``base`` history rows with the other input files' rows ``keep`` leaves (which replace history
        rows of the same id)."""
        if self._others is None:
            return base
        others = self._others if keep is None else keep(self._others)
        if base is not None and TX_ID in others.columns and TX_ID in base.columns:
            base = base.filter(~pl.col(TX_ID).is_in(others.get_column(TX_ID).implode()))
        frames = [f for f in (base, others) if f is not None and f.height]
        return pl.concat(frames, how="diagonal_relaxed") if frames else None


def _inputs(valid: pl.DataFrame, plan: _Plan, ctx: _Context) -> np.ndarray:
    """The model's float32 input matrix of the valid (canonical) rows."""
    if plan.features is not None:
        return _matrix(valid, plan.features)
    if valid.height == 0:
        return np.empty((0, len(ctx.model.feature_names)), np.float32)
    new = valid.drop(ROW_ERROR, *([] if plan.id_column else [TX_ID]), strict=False)
    cfg = ctx.settings.features
    if isinstance(ctx.history, FeatureTable):  # on a worker: these rows' look-back, read a group at a time
        featured = ctx.history.features_over(new, cfg, ctx.settings.compute.partition_rows, ctx.with_others)
    else:
        featured = features.features_for(new, ctx.with_others(ctx.history, None), cfg)
    return _matrix(featured, ctx.model.feature_names)


def _score_chunk(
    raw: pl.DataFrame, offset: int, plan: _Plan, ctx: _Context, tally: _Tally
) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """Validate, score and join one chunk → (output rows, rejected rows); no output once fail mode failed."""
    v = validate(
        raw,
        ctx.settings.data,
        plan.uri,
        feature_columns=plan.features,
        numeric_time=plan.numeric_time,
        partial=True,
    )
    if v.file_problems:  # missing columns, empty file
        raise DataValidationError(v.file_problems)
    tally.rows_in += raw.height
    errors = v.frame.get_column(ROW_ERROR)
    n_bad = errors.len() - errors.null_count()
    if plan.id_column is None:
        raw = raw.drop(ROW_NUMBER, strict=False).with_row_index(ROW_NUMBER, offset=offset)
        raw = raw.with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))
    rejects = None
    valid, kept = v.frame, raw
    if n_bad:
        bad = errors.is_not_null()
        tally.rejected += n_bad
        tally.add(v.problems, errors, offset)
        rows = (
            raw
            if plan.id_column is None
            else raw.drop(ROW_NUMBER, strict=False).with_row_index(ROW_NUMBER, offset=offset)
        )
        rejects = (
            rows.filter(bad)
            .select(pl.col(ROW_NUMBER).cast(pl.Int64), pl.all().exclude(ROW_NUMBER, REASON))
            .with_columns(errors.filter(bad).alias(REASON))
        )
        valid, kept = v.frame.filter(~bad), raw.filter(~bad)
    if ctx.fail and tally.problems:
        return None, rejects
    x = _inputs(valid, plan, ctx)
    p = ctx.model.predict_proba(x) if valid.height else np.empty(0, np.float64)
    flag = p >= ctx.model.threshold
    tally.scored += len(p)
    tally.flagged += int(flag.sum())
    out = kept.select(plan.out_id, *plan.join).with_columns(
        pl.Series(PROBABILITY, p, dtype=pl.Float64),
        pl.Series(FLAG, flag, dtype=pl.Boolean).cast(pl.Int8),
        pl.lit(ctx.version, dtype=pl.Int32).alias(VERSION),
        pl.lit(ctx.scored_at, dtype=pl.Datetime("us", "UTC")).alias(SCORED_AT),
        *_reason_columns(ctx, x, flag),
    )
    return out, rejects


def _reason_columns(ctx: _Context, x: np.ndarray, flag: np.ndarray) -> list[pl.Series]:
    """reason_1..reason_3: "<sentence> [+contribution]" for the rows ``batch.reasons`` names, else null."""
    texts: list[list[str | None]] = [[None] * len(flag) for _ in REASONS]
    if ctx.explainer is not None:
        rows = flag if ctx.settings.batch.reasons == "alerts" else np.ones(len(flag), dtype=bool)
        for i, reasons in ctx.explainer.selected(x, rows).items():
            for k, r in enumerate(reasons):
                texts[k][i] = f"{r['text']} [{r['contribution']:+.3f}]"
    return [pl.Series(name, col, dtype=pl.String) for name, col in zip(REASONS, texts, strict=True)]


def score_file(
    storage: Storage,
    rel: str,
    model: FraudModel,
    settings: Settings,
    *,
    version: int,
    scored_at: dt.datetime | None = None,
    history: pl.DataFrame | FeatureTable | None = None,
    peers: pl.DataFrame | None = None,
    progress: Progress | None = None,
    explainer: Explainer | None = None,
) -> FileScore:
    """Score one input file into its output (and rejects) file; what :func:`batch_step` runs per file.

    ``model`` is used as given (see :meth:`FraudModel.with_threads`); ``history`` is the transactions
    kind's feature history, ``peers`` the input files' rows (:func:`peer_rows`, concatenated);
    ``explainer`` gives the reason columns (built here when not given and ``batch.reasons`` is not off).
    Raises :class:`~fraudops.data.DataValidationError` when the file fails.
    """
    started = time.perf_counter()
    scored_at = scored_at or dt.datetime.now(dt.UTC)
    plan, total = _plan(storage, rel, settings, model)
    if explainer is None and settings.batch.reasons != "off":
        explainer = Explainer(model)
    ctx = _Context(settings, model, int(version), scored_at, history, explainer, rel, peers)
    tally = _Tally(plan.uri)
    chunk_rows = settings.batch.chunk_rows
    out_rel, rejects_rel = output_name(rel), rejects_name(rel)
    reader = (
        _chunks(storage, rel, plan, chunk_rows) if plan.features is not None else _whole(storage, rel, plan)
    )
    with contextlib.ExitStack() as stack:
        chunks = stack.enter_context(contextlib.closing(reader))
        f = stack.enter_context(storage.open_write(out_rel))
        writer: _ParquetOut | _CsvOut = _ParquetOut(f, chunk_rows) if plan.parquet else _CsvOut(f)
        stack.callback(_close_quietly, writer)  # on errors; runs before the temporary file is removed
        rejects = _Rejects(storage, rejects_rel, stack)
        # reading the next chunk and writing the previous one overlap with scoring (they wait on the disk
        # and release the GIL); the pool exits first, so both are finished before anything is closed
        io = stack.enter_context(ThreadPoolExecutor(max_workers=2, thread_name_prefix="fraudops-batch-io"))
        ahead: Future[pl.DataFrame | None] = io.submit(next, chunks, None)
        pending: Future[None] | None = None
        offset, written = 0, False
        while (raw := ahead.result()) is not None:
            ahead = io.submit(next, chunks, None)
            if raw.height == 0:
                continue
            out, bad = _score_chunk(raw, offset, plan, ctx, tally)
            offset += raw.height
            if out is not None and (out.height or not written):
                if pending is not None:
                    pending.result()
                pending = io.submit(writer.write, out)
                written = True
            if bad is not None and not ctx.fail:
                rejects.write(bad)
            if progress:
                progress(rel, offset, total)
        if pending is not None:
            pending.result()
        if tally.rows_in == 0:
            raise DataValidationError([Problem(plan.uri, None, "empty file")])
        if ctx.fail and tally.problems:
            raise tally.error()
        if tally.scored == 0:  # every row rejected: a failure, not an empty success
            no_row = Problem(plan.uri, None, f"no valid row: all {tally.rows_in:,} rows are invalid")
            raise DataValidationError([no_row, *tally.error().problems])
        writer.close()
    if rejects.out is None:
        storage.delete(rejects_rel)  # a previous run's rejects no longer apply
    seconds = time.perf_counter() - started
    return FileScore(
        input=rel,
        output=out_rel,
        rows=tally.scored,
        flagged=tally.flagged,
        rejected=tally.rejected,
        rejects=rejects_rel if tally.rejected else None,
        seconds=round(seconds, 3),
        rows_per_second=round(tally.rows_in / seconds) if seconds > 0 else None,
    )


def peer_rows(rel: str, storage: Storage, model: FraudModel, settings: Settings) -> pl.DataFrame | None:
    """A transactions-kind input's rows as the other inputs' history: the rows its scoring keeps (none
    when the file fails: its scoring reports why), the columns features read, tagged with the file."""
    try:
        plan, _ = _plan(storage, rel, settings, model)
        v = validate(read_table(storage, rel, columns=plan.read), settings.data, plan.uri, partial=True)
    except FraudopsError:
        return None
    bad = v.frame.get_column(ROW_ERROR).is_not_null().any()
    if v.file_problems or (bad and settings.batch.on_invalid == "fail"):
        return None
    columns = [c for c in HISTORY_COLUMNS if c in v.frame.columns and (c != TX_ID or plan.id_column)]
    rows = v.valid.select(columns)
    return rows.with_columns(pl.lit(rel).alias(PEER_FILE)) if rows.height else None


def _close_quietly(writer: _ParquetOut | _CsvOut) -> None:
    with contextlib.suppress(Exception):
        writer.close()
