"""Reading tables from the workspace: folders of CSV and Parquet files, validated, under canonical names."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable

import polars as pl

from fraudops.config import DataConfig, Settings
from fraudops.data.schema import LABEL, TX_ID, TX_TIME, model_inputs
from fraudops.data.validation import Validated, validate
from fraudops.errors import DataValidationError, Problem, StorageError
from fraudops.workspace.layout import CURRENT, RAW, TABLE_SUFFIXES
from fraudops.workspace.storage import Storage


def read_source(path: str) -> pl.DataFrame:
    """A CSV or Parquet file from any local path or fsspec URL (for import)."""
    folder, name = posixpath.split(path)
    try:
        return Storage(folder or ".").read_frame(name)
    except StorageError:
        raise
    except Exception as e:  # polars raises many types for unreadable content
        raise DataValidationError([Problem(path, None, f"cannot be read: {e}")]) from e


def load_table(
    storage: Storage,
    rel: str,
    cfg: DataConfig,
    *,
    require_label: bool = False,
    feature_columns: list[str] | None = None,
) -> Validated:
    try:
        df = storage.read_frame(rel)
    except StorageError:
        raise
    except Exception as e:
        raise DataValidationError([Problem(storage.uri(rel), None, f"cannot be read: {e}")]) from e
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


def load_folder(
    storage: Storage, folders: Iterable[str], cfg: DataConfig, *, labelled_only: bool
) -> pl.DataFrame:
    """All valid rows of every file in the folders, canonical; any invalid row is an error."""
    frames: list[pl.DataFrame] = []
    problems: list[Problem] = []
    feature_columns: list[str] | None = None
    for folder in folders:
        for rel in table_files(storage, folder):
            v = load_table(storage, rel, cfg, feature_columns=feature_columns)
            problems += v.problems
            if v.problems:
                continue
            frame = v.valid
            if cfg.kind == "features" and feature_columns is None:
                feature_columns = model_inputs(frame, cfg)
            if labelled_only:
                if LABEL not in frame.columns:
                    continue
                frame = frame.filter(pl.col(LABEL).is_not_null())
            frames.append(frame)
    if problems:
        raise DataValidationError(problems)
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


def load_labelled(storage: Storage, settings: Settings) -> pl.DataFrame:
    """Labelled history: data/raw plus labelled current data, so retraining sees the newest labels."""
    return load_folder(storage, [RAW, CURRENT], settings.data, labelled_only=True)


def load_history(storage: Storage, settings: Settings) -> pl.DataFrame:
    """Every known transaction (labelled or not), the history that feature windows reach back into."""
    return load_folder(storage, [RAW, CURRENT], settings.data, labelled_only=False)


def fingerprint(df: pl.DataFrame) -> dict[str, object]:
    """What a model was trained on: a content hash, counts and the date range."""
    digest = hashlib.sha256()
    digest.update(",".join(df.columns).encode())
    if df.height:
        digest.update(df.hash_rows(seed=0).sort().to_numpy().tobytes())
    out: dict[str, object] = {"content_sha256": digest.hexdigest(), "n_rows": df.height}
    if LABEL in df.columns:
        out["n_frauds"] = int(df[LABEL].sum() or 0)
    if TX_TIME in df.columns and df.height:
        out["start"] = str(df[TX_TIME].min())
        out["end"] = str(df[TX_TIME].max())
    return out


def import_files(
    storage: Storage, settings: Settings, paths: list[str], *, force: bool = False
) -> list[dict]:
    """Validate every file first, then copy each into data/raw/; any problem and nothing is written."""
    problems: list[Problem] = []
    plans: list[tuple[str, str, pl.DataFrame]] = []
    for path in paths:
        name = posixpath.basename(path.rstrip("/"))
        if not name.lower().endswith(TABLE_SUFFIXES):
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
        target = f"{RAW}/{name}"
        if storage.exists(target) and not force:
            problems.append(Problem(path, None, f"{storage.uri(target)} exists (use --force to replace it)"))
        if any(t == target for _, t, _ in plans):
            problems.append(Problem(path, None, f"another file to import is also named {name}"))
        plans.append((path, target, v.frame))
    if problems:
        raise DataValidationError(problems)
    results = []
    for path, target, frame in plans:
        folder, name = posixpath.split(path)
        storage.write_bytes(target, Storage(folder or ".").read_bytes(name))
        labelled = frame.filter(pl.col(LABEL).is_not_null()) if LABEL in frame.columns else frame.head(0)
        results.append(
            {
                "file": path,
                "to": storage.uri(target),
                "rows": frame.height,
                "frauds": int(labelled[LABEL].sum()) if labelled.height else 0,
            }
        )
    return results
