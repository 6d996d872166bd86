"""Dataset kinds, column mapping, validation and loading.

Inside fraudops every table uses the canonical names below (the handbook's); the config maps them to the
names in users' files, so handbook and Kaggle files work without renaming.

Two kinds of data:

* ``transactions`` — raw card transactions (id, timestamp, customer, terminal, amount, optional label and
  scenario); fraudops engineers the features.
* ``features`` — an already-engineered table such as Kaggle's ``creditcard.csv`` (``Time, V1..V28,
  Amount, Class``); its numeric columns are the model inputs under their own names.

Missing values: a null in a required column (id, timestamp, customer, terminal, amount, and every
feature column of the features kind) makes the row invalid. A null label means "not labelled yet": such
rows are scored, and left out of training and evaluation. NaN and ±inf count as missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
from collections.abc import Iterable

import polars as pl

from fraudops.config import DataConfig, FraudopsError, Settings
from fraudops.storage import TABLE_SUFFIXES, Storage, StorageError

TX_ID = "TRANSACTION_ID"
TX_TIME = "TX_DATETIME"
CUSTOMER = "CUSTOMER_ID"
TERMINAL = "TERMINAL_ID"
AMOUNT = "TX_AMOUNT"
LABEL = "TX_FRAUD"
SCENARIO = "TX_FRAUD_SCENARIO"
ROW_ERROR = "_row_error"

RAW = "data/raw"
CURRENT = "monitoring_inputs/current_data"

# role in Columns -> canonical name
ROLES = {
    "transaction_id": TX_ID,
    "timestamp": TX_TIME,
    "customer_id": CUSTOMER,
    "terminal_id": TERMINAL,
    "amount": AMOUNT,
    "label": LABEL,
    "scenario": SCENARIO,
}


@dataclasses.dataclass
class Problem:
    """One validation finding: where, what, how many rows, a few examples."""

    file: str
    column: str | None
    message: str
    n_rows: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        where = f"{self.file}" + (f", column {self.column!r}" if self.column else "")
        rows = f" ({self.n_rows} rows" + (f", e.g. {', '.join(self.examples)}" if self.examples else "") + ")"
        return f"{where}: {self.message}" + (rows if self.n_rows else "")


class DataValidationError(FraudopsError, ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("invalid data:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclasses.dataclass
class Validated:
    """A file's rows under canonical names, with the reason each invalid row failed (null if valid)."""

    frame: pl.DataFrame
    problems: list[Problem]

    @property
    def valid(self) -> pl.DataFrame:
        return self.frame.filter(pl.col(ROW_ERROR).is_null()).drop(ROW_ERROR)

    @property
    def rejects(self) -> pl.DataFrame:
        return self.frame.filter(pl.col(ROW_ERROR).is_not_null())


def role_columns(cfg: DataConfig) -> dict[str, str]:
    """File column name -> canonical name, for the roles the config maps."""
    roles = cfg.columns.model_dump()
    if cfg.kind == "features":
        roles = {k: v for k, v in roles.items() if k in ("transaction_id", "timestamp", "label", "scenario")}
    return {v: ROLES[k] for k, v in roles.items() if v}


def to_file_columns(df: pl.DataFrame, cfg: DataConfig) -> pl.DataFrame:
    """Canonical names back to the configured file names (what the simulator writes)."""
    back = {canon: name for name, canon in role_columns(cfg).items() if canon in df.columns}
    return df.rename(back)


def _examples(values: pl.Series, n: int = 3) -> list[str]:
    return [repr(v) for v in values.head(n).to_list()]


def feature_table_columns(df: pl.DataFrame, cfg: DataConfig) -> list[str]:
    """Model inputs of the features kind: configured, or every numeric non-role column."""
    if cfg.feature_columns:
        return list(cfg.feature_columns)
    roles = set(role_columns(cfg))
    return [c for c, t in df.schema.items() if c not in roles and t.is_numeric()]


def validate(
    df: pl.DataFrame,
    cfg: DataConfig,
    source: str,
    *,
    require_label: bool = False,
    feature_columns: list[str] | None = None,
) -> Validated:
    """Check and convert one file's rows to canonical names and types.

    File-level problems (empty file, missing columns) make every row invalid; row-level problems
    (unparseable values, negative amounts, labels outside {0, 1}, duplicate ids) mark just those rows.
    """
    problems: list[Problem] = []
    if df.height == 0:
        return Validated(
            df.with_columns(pl.lit("empty file").alias(ROW_ERROR)), [Problem(source, None, "empty file")]
        )
    names = role_columns(cfg)
    required = {
        name: canon
        for name, canon in names.items()
        if canon not in (SCENARIO,) and (canon != LABEL or require_label)
    }
    if cfg.kind == "features":
        feats = feature_columns or feature_table_columns(df, cfg)
        if not feats:
            problems.append(Problem(source, None, "no numeric feature columns"))
        required.update({f: f for f in feats})
    else:
        feats = []
    missing = [c for c in required if c not in df.columns]
    for c in missing:
        problems.append(Problem(source, c, "missing column"))
    if missing or problems:
        return Validated(df.with_columns(pl.lit("missing columns").alias(ROW_ERROR)), problems)

    present = {name: canon for name, canon in names.items() if name in df.columns}
    out = df.rename(present)
    n = out.height
    errors = pl.Series(ROW_ERROR, [None] * n, dtype=pl.String)

    def mark(mask: pl.Series, column: str, message: str, shown: pl.Series) -> None:
        nonlocal errors
        mask = mask.fill_null(False)
        if mask.any():
            problems.append(Problem(source, column, message, int(mask.sum()), _examples(shown.filter(mask))))
            errors = (
                pl.select(
                    pl.when(errors.is_null() & mask).then(pl.lit(f"{column}: {message}")).otherwise(errors)
                )
                .to_series()
                .alias(ROW_ERROR)
            )

    file_name = {canon: name for name, canon in present.items()}
    casts: dict[str, pl.Expr] = {}
    if TX_TIME in out.columns:
        t = out[TX_TIME]
        # features kind: a text column of numbers (one bad cell makes a CSV column text) is still seconds
        as_seconds = t.dtype == pl.String and t.cast(pl.Float64, strict=False).is_not_null().any()
        if cfg.kind == "transactions" or (t.dtype == pl.String and not as_seconds):
            if t.dtype == pl.String:
                try:
                    parsed = t.str.strip_chars().str.to_datetime(strict=False, time_unit="us")
                except pl.exceptions.ComputeError:  # polars found no date format in the values at all
                    parsed = pl.Series([None] * n, dtype=pl.Datetime("us"))
            elif t.dtype.is_temporal():
                parsed = t.cast(pl.Datetime("us"))
            else:
                parsed = pl.Series([None] * n, dtype=pl.Datetime("us"))
            mark(parsed.is_null() & t.is_not_null(), file_name[TX_TIME], "unparseable timestamp", t)
            mark(t.is_null(), file_name[TX_TIME], "missing timestamp", t)
            casts[TX_TIME] = pl.lit(parsed)
        else:
            num = t.cast(pl.Float64, strict=False)
            mark(num.is_null() | ~num.is_finite(), file_name[TX_TIME], "missing or non-numeric time", t)
            casts[TX_TIME] = pl.lit(num)
    numeric = ([AMOUNT] if cfg.kind == "transactions" else []) + feats
    for col in numeric:
        name = file_name.get(col, col)
        raw = out[col]
        num = raw.cast(pl.Float64, strict=False)
        mark(num.is_null() & raw.is_not_null(), name, "not a number", raw)
        mark(raw.is_null() | (num.is_not_null() & ~num.is_finite()), name, "missing value", raw)
        if col == AMOUNT:
            mark(num < 0, name, "negative amount", raw)
        casts[col] = pl.lit(num)
    if cfg.kind == "features" and cfg.columns.amount in out.columns and cfg.columns.amount in feats:
        mark(
            out[cfg.columns.amount].cast(pl.Float64, strict=False) < 0,
            cfg.columns.amount,
            "negative amount",
            out[cfg.columns.amount],
        )
    if LABEL in out.columns:
        raw = out[LABEL]
        num = raw.cast(pl.Float64, strict=False)
        mark(
            raw.is_not_null() & (num.is_null() | ~num.is_in([0.0, 1.0])),
            file_name[LABEL],
            "label not in {0, 1}",
            raw,
        )
        if require_label:
            mark(raw.is_null(), file_name[LABEL], "missing label", raw)
        casts[LABEL] = pl.when(pl.lit(num).is_in([0.0, 1.0])).then(pl.lit(num)).otherwise(None).cast(pl.Int8)
    if SCENARIO in out.columns:
        casts[SCENARIO] = pl.col(SCENARIO).cast(pl.Int8, strict=False)
    for col in (CUSTOMER, TERMINAL) if cfg.kind == "transactions" else ():
        mark(out[col].is_null(), file_name[col], "missing id", out[col])
    if TX_ID in out.columns:
        ids = out[TX_ID]
        mark(ids.is_null(), file_name[TX_ID], "missing id", ids)
        repeated = ids.is_not_null() & ids.is_duplicated() & ~ids.is_first_distinct()
        mark(repeated, file_name[TX_ID], "duplicate id", ids)
    else:
        casts[TX_ID] = pl.int_range(0, n, dtype=pl.Int64)
    out = out.with_columns(**casts).with_columns(errors)
    return Validated(out, problems)


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


def model_inputs(df: pl.DataFrame, cfg: DataConfig) -> list[str]:
    """Features kind: the model's input columns of a canonical frame."""
    if cfg.feature_columns:
        return list(cfg.feature_columns)
    skip = {TX_ID, TX_TIME, LABEL, SCENARIO, ROW_ERROR}
    return [c for c, t in df.schema.items() if c not in skip and t.is_numeric()]
