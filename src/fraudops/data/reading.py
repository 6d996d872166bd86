"""Reading a CSV or Parquet file whole, typed, with reader failures as one plain sentence per file.

CSV types are inferred from every row, never from a sample: a text cell at row 50,000 of a numeric column
makes that column text (validation then names the cell), not a reader crash. The common case stays fast:
polars infers from the first rows, and only when a later value contradicts that guess is the file read
again as text and typed from all its values.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import IO, Any

import polars as pl

from fraudops.errors import DataValidationError, FraudopsError, Problem, StorageError
from fraudops.workspace.storage import Storage

INFER_ROWS = 10_000
_DUPLICATED = re.compile(r"(.+)_duplicated_\d+")
_BOOLEANS = ("true", "false")


def _reason(e: Exception, csv: bool) -> str:
    """What went wrong in words a user can act on (polars' and pyarrow's texts stay out of the report)."""
    text = str(e)
    if isinstance(e, pl.exceptions.NoDataError) or "empty CSV" in text:
        return "empty file (no header)"
    if "more fields than defined" in text:
        return "a row has more fields than the header"
    if "utf-8" in text.lower() or "utf8" in text.lower():
        return "not UTF-8 text"
    if csv:
        return "not a valid CSV file (unbalanced quotes or a broken row?)"
    return "not a valid Parquet file"


def read_failure(uri: str, e: Exception) -> DataValidationError:
    csv = not uri.lower().endswith(".parquet")
    return DataValidationError([Problem(uri, None, f"cannot be read: {_reason(e, csv)}")])


@contextlib.contextmanager
def reading(uri: str) -> Iterator[None]:
    """Reader errors (bad Parquet, ragged CSV, …) as a DataValidationError naming the file."""
    try:
        yield
    except (FraudopsError, StorageError, FileNotFoundError):
        raise
    except Exception as e:  # polars and pyarrow raise many types for unreadable content
        raise read_failure(uri, e) from e


def duplicate_names(columns: list[str]) -> list[str]:
    """Header names that occur more than once (polars renames the copies ``name_duplicated_N``)."""
    return list(
        dict.fromkeys(
            m[1] for c in columns if (m := _DUPLICATED.fullmatch(c)) is not None and m[1] in columns
        )
    )


def infer_types(df: pl.DataFrame) -> pl.DataFrame:
    """Text columns typed from all their values, as polars would type them: integers, floats, booleans, or
    text when a single value is none of these."""
    casts: list[pl.Series] = []
    for name, dtype in df.schema.items():
        s = df.get_column(name)
        if dtype != pl.String or s.null_count() == s.len():
            continue
        for target in (pl.Int64, pl.Float64):
            typed = s.cast(target, strict=False)
            if typed.null_count() == s.null_count():
                casts.append(typed)
                break
        else:
            lower = s.str.to_lowercase()
            if lower.is_in(_BOOLEANS).sum() == s.len() - s.null_count():
                casts.append(lower == "true")
    return df.with_columns(casts) if casts else df


def _read_csv(f: IO[bytes], columns: list[str] | None) -> pl.DataFrame:
    try:
        df = pl.read_csv(f, infer_schema_length=INFER_ROWS, try_parse_dates=False, columns=columns)
    except pl.exceptions.ComputeError as e:
        if "could not parse" not in str(e):
            raise
        f.seek(0)  # a value after the first rows contradicts their type: read as text, type from all values
        df = infer_types(pl.read_csv(f, infer_schema=False, columns=columns))
    return df


def read_table(storage: Storage, rel: str, columns: list[str] | None = None) -> pl.DataFrame:
    """A CSV or Parquet file of ``storage`` as a typed DataFrame; unreadable content is a
    :class:`DataValidationError` naming the file."""
    uri = storage.uri(rel)
    lower = rel.lower()
    if not lower.endswith((".csv", ".parquet")):
        raise DataValidationError([Problem(uri, None, "unknown file type (expected .csv or .parquet)")])
    with reading(uri), storage.open_read(rel) as f:
        if lower.endswith(".parquet"):
            return pl.read_parquet(f, columns=columns)
        return _read_csv(f, columns)


def header(storage: Storage, rel: str) -> list[str]:
    """A file's column names, from its header or footer only."""
    with reading(storage.uri(rel)), storage.open_read(rel) as f:
        if rel.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(f).schema_arrow.names)
        source: Any = f
        return pl.scan_csv(source, infer_schema=False).collect_schema().names()
