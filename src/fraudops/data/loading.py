"""Reading tables from the workspace: folders of CSV and Parquet files, validated, under canonical names.

Every file of a folder (data/raw/ with monitoring_inputs/current_data/, or the files imported into
data/raw/) has the same layout: for the features kind the same feature columns and the same time column
(or none), and ids and times of the same kind (integers or text; seconds or datetimes). A file that
differs is an error naming the file and the column, never a silently missing feature or an id that
matches no history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import posixpath
from collections.abc import Iterable
from typing import Any

import polars as pl

from fraudops.config import DataConfig, Settings
from fraudops.data.reading import header, read_table, reading
from fraudops.data.schema import CUSTOMER, LABEL, TERMINAL, TX_ID, TX_TIME, role_columns
from fraudops.data.validation import Validated, validate
from fraudops.errors import DataValidationError, Problem, StorageError
from fraudops.workspace.layout import CURRENT, RAW, TABLE_SUFFIXES
from fraudops.workspace.storage import Storage

log = logging.getLogger("fraudops.data")


def read_source(path: str) -> pl.DataFrame:
    """A CSV or Parquet file from any local path or fsspec URL (for import)."""
    folder, name = posixpath.split(path)
    return read_table(Storage(folder or "."), name)


def load_table(
    storage: Storage,
    rel: str,
    cfg: DataConfig,
    *,
    require_label: bool = False,
    feature_columns: list[str] | None = None,
) -> Validated:
    df = read_table(storage, rel)
    return validate(df, cfg, storage.uri(rel), require_label=require_label, feature_columns=feature_columns)


def table_files(storage: Storage, folder: str) -> list[str]:
    """Every CSV and Parquet file of a folder; other files are an error, not silently skipped."""
    files = storage.ls(folder)
    unknown = [f for f in files if not f.lower().endswith(TABLE_SUFFIXES)]
    if unknown:
        raise DataValidationError(
            [Problem(storage.uri(f), None, "unknown file type (expected .csv or .parquet)") for f in unknown]
        )
    return files


# ------------------------------------------------------------------------------ one layout per folder


@dataclasses.dataclass
class _Layout:
    """What the files of a folder share: feature and time columns (features kind; None = not compared)
    and the kind of values of the id and time columns ("integer ids" or "text ids", "seconds" or
    "datetimes"), under the files' own names."""

    columns: list[str] | None
    types: dict[str, str]


def _layout(v: Validated, cfg: DataConfig) -> _Layout:
    columns = [*v.features, *([v.time] if v.time else [])] if cfg.kind == "features" else None
    types = {}
    for name, canon in role_columns(cfg).items():
        if canon not in v.frame.columns:
            continue
        dtype = v.frame.schema[canon]
        if canon in (TX_ID, CUSTOMER, TERMINAL):
            types[name] = "text ids" if dtype == pl.String else "integer ids"
        elif canon == TX_TIME:
            types[name] = "seconds" if dtype.is_numeric() else "datetimes"
    return _Layout(columns, types)


def _header_layout(columns: list[str], cfg: DataConfig) -> _Layout:
    """A valid file's layout from its header alone (the files already in data/raw/ passed validation)."""
    roles = role_columns(cfg)
    time = [c for c in columns if roles.get(c) == TX_TIME]
    if cfg.feature_columns:
        return _Layout([*cfg.feature_columns, *time], {})
    return _Layout([c for c in columns if c not in roles or roles[c] == TX_TIME], {})


def _compare(uri: str, layout: _Layout, ref_name: str, ref: _Layout) -> list[Problem]:
    """How a file's layout differs from the folder's (another file's), column by column."""
    same = "every file of a folder has the same columns"
    problems = []
    if layout.columns is not None and ref.columns is not None:
        problems += [
            Problem(uri, c, f"missing column ({ref_name} has it: {same})")
            for c in ref.columns
            if c not in layout.columns
        ]
        problems += [
            Problem(uri, c, f"extra column ({ref_name} has no such column: {same})")
            for c in layout.columns
            if c not in ref.columns
        ]
    for c, kind in layout.types.items():
        if c in ref.types and ref.types[c] != kind:
            problems.append(
                Problem(
                    uri,
                    c,
                    f"{kind}, but {ref.types[c]} in {ref_name} (every file of a folder has the same types)",
                )
            )
    return problems


def describe_features(features: list[str], time: str | None) -> str:
    """The features kind's choice in one line, for the CLI and the logs."""
    split = f"time column {time!r} (split by time)" if time else "no time column (stratified random split)"
    return f"{len(features)} feature columns: {', '.join(features)}; {split}"


def load_folder(
    storage: Storage, folders: Iterable[str], cfg: DataConfig, *, labelled_only: bool
) -> pl.DataFrame:
    """All valid rows of every file in the folders, canonical; any invalid row or a file whose layout
    differs from the first file's is an error."""
    frames: list[pl.DataFrame] = []
    problems: list[Problem] = []
    first: tuple[str, Validated] | None = None
    for folder in folders:
        for rel in table_files(storage, folder):
            v = load_table(storage, rel, cfg)
            problems += v.problems
            if v.file_problems:
                continue
            if first is None:
                first = (rel, v)
            else:
                ref = _layout(first[1], cfg)
                problems += _compare(storage.uri(rel), _layout(v, cfg), posixpath.basename(first[0]), ref)
            frame = piece_rows(v, labelled_only=labelled_only)
            if frame is not None:
                frames.append(frame)
    if problems:
        raise DataValidationError(problems)
    if first is not None and cfg.kind == "features":
        log.info("features kind: %s", describe_features(first[1].features, first[1].time))
    if not frames:
        return pl.DataFrame()
    df = pl.concat(frames, how="diagonal_relaxed")
    if cfg.kind == "transactions":
        if cfg.columns.transaction_id:
            df = df.unique(TX_ID, keep="last", maintain_order=True).sort(TX_TIME)
        else:  # ids are row numbers within each file: renumber instead of deduplicating
            df = df.sort(TX_TIME, maintain_order=True)
            df = df.with_columns(pl.int_range(0, pl.len(), dtype=pl.Int64).alias(TX_ID))
    elif TX_TIME in df.columns:
        df = df.sort(TX_TIME)
    return df


# ------------------------------------------------------------------------------ pieces, read on workers


@dataclasses.dataclass(frozen=True)
class Piece:
    """A part of a folder's data that one task reads: a file, or one row group of a Parquet file."""

    rel: str
    row_group: int | None
    """None = the whole file."""
    rows: int | None
    """From the Parquet footer (None for CSV: known once read)."""
    index: int
    """The piece's place in :func:`load_folder`'s file order (later pieces win a repeated id)."""


def list_pieces(storage: Storage, folders: Iterable[str]) -> list[Piece]:
    """The pieces of the folders' files, from their names and Parquet footers only (nothing else read)."""
    import pyarrow.parquet as pq

    pieces: list[Piece] = []
    for folder in folders:
        for rel in table_files(storage, folder):
            if not rel.lower().endswith(".parquet"):
                pieces.append(Piece(rel, None, None, len(pieces)))
                continue
            with reading(storage.uri(rel)), storage.open_read(rel) as f:
                meta = pq.ParquetFile(f).metadata
            groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            if len(groups) <= 1:
                pieces.append(Piece(rel, None, meta.num_rows, len(pieces)))
            else:
                pieces += [Piece(rel, i, n, len(pieces) + i) for i, n in enumerate(groups)]
    return pieces


def read_piece(storage: Storage, piece: Piece, cfg: DataConfig) -> Validated:
    """A piece read and validated as :func:`load_table` does a file (a row group as part of its file)."""
    if piece.row_group is None:
        return load_table(storage, piece.rel, cfg)
    import pyarrow.parquet as pq

    uri = storage.uri(piece.rel)
    with reading(uri), storage.open_read(piece.rel) as f:
        df = pl.from_arrow(pq.ParquetFile(f).read_row_group(piece.row_group))
    assert isinstance(df, pl.DataFrame)
    return validate(df, cfg, uri, partial=True)


def piece_rows(v: Validated, *, labelled_only: bool) -> pl.DataFrame | None:
    """The rows a validated piece (or file) adds to :func:`load_folder`'s table (None: a file without
    labels when only labelled rows are wanted, whose columns must not join the table either)."""
    frame = v.valid
    if labelled_only:
        return frame.filter(pl.col(LABEL).is_not_null()) if LABEL in frame.columns else None
    return frame


@dataclasses.dataclass
class Survey:
    """What the command's process needs of a piece read on a worker: its problems and layout."""

    problems: list[Problem]
    layout: _Layout | None


def survey(v: Validated, cfg: DataConfig) -> Survey:
    """A piece validated where it runs (a worker), for :func:`check_surveys` here: the rows stay there."""
    return Survey(v.problems, None if v.file_problems else _layout(v, cfg))


def check_surveys(storage: Storage, pieces: list[Piece], surveys: list[Survey], cfg: DataConfig) -> None:
    """:func:`load_folder`'s checks on pieces surveyed elsewhere (a file's row groups report as the file):
    a :class:`DataValidationError` with every problem."""
    merged: dict[tuple[str, str | None, str], Problem] = {}
    for p in (p for s in surveys for p in s.problems):
        key = (p.file, p.column, p.message)
        if key in merged:
            old = merged[key]
            examples = (old.examples + p.examples)[:3]  # a file reports its first three
            merged[key] = Problem(p.file, p.column, p.message, old.n_rows + p.n_rows, examples)
        else:
            merged[key] = p
    problems = list(merged.values())
    laid = [(piece, s.layout) for piece, s in zip(pieces, surveys, strict=True) if s.layout is not None]
    if laid:
        first, ref = laid[0]
        for piece, layout in laid[1:]:
            if piece.rel != first.rel:
                problems += _compare(storage.uri(piece.rel), layout, posixpath.basename(first.rel), ref)
    if problems:
        raise DataValidationError(problems)


def load_labelled(storage: Storage, settings: Settings) -> pl.DataFrame:
    """Labelled history: data/raw plus labelled current data, so retraining sees the newest labels."""
    return load_folder(storage, [RAW, CURRENT], settings.data, labelled_only=True)


def load_history(storage: Storage, settings: Settings) -> pl.DataFrame:
    """Every known transaction (labelled or not), the history that feature windows reach back into."""
    return load_folder(storage, [RAW, CURRENT], settings.data, labelled_only=False)


def content_sha256(columns: list[str], sorted_hashes: Iterable[pl.Series]) -> str:
    """A table's content hash from its column names and its rows' ``hash_rows(seed=0)`` sorted, given as
    consecutive sorted pieces (a table hashed range by range on a cluster hashes as the table read whole)."""
    digest = hashlib.sha256()
    digest.update(",".join(columns).encode())
    for piece in sorted_hashes:
        digest.update(piece.to_numpy().tobytes())
    return digest.hexdigest()


def fingerprint(df: pl.DataFrame) -> dict[str, object]:
    """What a model was trained on: a content hash, counts and the date range."""
    hashes = [df.hash_rows(seed=0).sort()] if df.height else []
    out: dict[str, object] = {"content_sha256": content_sha256(df.columns, hashes), "n_rows": df.height}
    if LABEL in df.columns:
        out["n_frauds"] = int(df[LABEL].sum() or 0)
    if TX_TIME in df.columns and df.height:
        out["start"] = str(df[TX_TIME].min())
        out["end"] = str(df[TX_TIME].max())
    return out


def check_files(
    storage: Storage, settings: Settings, paths: list[str]
) -> tuple[list[tuple[str, Validated]], list[Problem]]:
    """Validate files meant for data/raw/: each on its own, then their layouts against each other and
    against the files already in data/raw/ (those of the same names apart: an import replaces them)."""
    problems: list[Problem] = []
    checked: list[tuple[str, Validated]] = []
    for path in paths:
        if not posixpath.basename(path.rstrip("/")).lower().endswith(TABLE_SUFFIXES):
            problems.append(Problem(path, None, "unknown file type (expected .csv or .parquet)"))
            continue
        try:
            df = read_source(path)
        except (StorageError, FileNotFoundError) as e:
            problems.append(Problem(path, None, str(e)))
            continue
        except DataValidationError as e:
            problems += e.problems
            continue
        v = validate(df, settings.data, path)
        problems += v.problems
        checked.append((path, v))
    cfg = settings.data
    names = {posixpath.basename(p.rstrip("/")) for p in paths}
    existing = [rel for rel in table_files(storage, RAW) if posixpath.basename(rel) not in names]
    raw: tuple[str, _Layout] | None = None
    if existing and cfg.kind == "features":
        raw = (storage.uri(existing[0]), _header_layout(header(storage, existing[0]), cfg))
    first: tuple[str, _Layout] | None = None
    for path, v in checked:
        if v.file_problems:
            continue
        layout = _layout(v, cfg)
        if raw is not None:
            problems += _compare(path, layout, *raw)
        if first is None:
            first = (path, layout)
        else:
            ref = first[1] if raw is None else _Layout(None, first[1].types)
            problems += _compare(path, layout, first[0], ref)
    return checked, problems


@dataclasses.dataclass
class Imported:
    """What an import copied, and (features kind) the model inputs and time column its files have."""

    files: list[dict[str, Any]]
    features: list[str]
    time: str | None


def import_files(storage: Storage, settings: Settings, paths: list[str], *, force: bool = False) -> Imported:
    """Validate every file first, then copy each into data/raw/; any problem and nothing is written."""
    checked, problems = check_files(storage, settings, paths)
    targets: list[str] = []
    for path, _ in checked:
        name = posixpath.basename(path.rstrip("/"))
        target = f"{RAW}/{name}"
        if storage.exists(target) and not force:
            problems.append(Problem(path, None, f"{storage.uri(target)} exists (use --force to replace it)"))
        if target in targets:
            problems.append(Problem(path, None, f"another file to import is also named {name}"))
        targets.append(target)
    if problems:
        raise DataValidationError(problems)
    results = []
    for (path, v), target in zip(checked, targets, strict=True):
        folder, name = posixpath.split(path)
        storage.write_bytes(target, Storage(folder or ".").read_bytes(name))
        frame = v.frame
        labelled = frame.filter(pl.col(LABEL).is_not_null()) if LABEL in frame.columns else frame.head(0)
        results.append(
            {
                "file": path,
                "to": storage.uri(target),
                "rows": frame.height,
                "frauds": int(labelled[LABEL].sum()) if labelled.height else 0,
            }
        )
    first = checked[0][1] if checked else None
    return Imported(results, first.features if first else [], first.time if first else None)
