"""Checking one file's rows: every problem named with its file, column, count and examples.

File-level problems (an empty file, a missing or duplicated column, a column the features kind refuses as
a model input, no valid row at all) make every row invalid; row-level problems (a value that is not a
number, a missing value, a negative amount, a label outside {0, 1}, a fractional or duplicate id) mark just
those rows. Every problem of a file is reported, not only the first: the columns present are checked even
when others are missing. All checks are vectorised (polars), whatever the file's size.
"""

from __future__ import annotations

import dataclasses
import re

import polars as pl

from fraudops.config import DataConfig
from fraudops.data.reading import duplicate_names
from fraudops.data.schema import (
    AMOUNT,
    CUSTOMER,
    LABEL,
    ROLES,
    ROW_ERROR,
    SCENARIO,
    TERMINAL,
    TX_ID,
    TX_TIME,
    role_columns,
)
from fraudops.errors import Problem

# pandas' index written as a column: unnamed in a CSV header, "Unnamed: 0" once read back, or to_parquet's
_INDEX_NAME = re.compile(r"|Unnamed: \d+|__index_level_\d+__")
_REFUSED = "not a feature: drop it from the file or list the model's inputs in data.feature_columns"


@dataclasses.dataclass
class Validated:
    """A file's rows under canonical names, with the reason each invalid row failed (null if valid)."""

    frame: pl.DataFrame
    problems: list[Problem]
    features: list[str] = dataclasses.field(default_factory=list)  # features kind: the model inputs
    time: str | None = None  # the file's time column, when it has one

    @property
    def valid(self) -> pl.DataFrame:
        return self.frame.filter(pl.col(ROW_ERROR).is_null()).drop(ROW_ERROR)

    @property
    def rejects(self) -> pl.DataFrame:
        return self.frame.filter(pl.col(ROW_ERROR).is_not_null())

    @property
    def file_problems(self) -> list[Problem]:
        """The problems that make the whole file unusable (row problems count rows)."""
        return [p for p in self.problems if p.n_rows == 0]


def _examples(values: pl.Series, n: int = 3) -> list[str]:
    return [repr(v) for v in values.head(n).to_list()]


class _Rows:
    """Row-level findings: the first reason of each invalid row, and per column and message the count of
    rows and a few examples."""

    def __init__(self, source: str, n: int) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.errors = pl.repeat(None, n, dtype=pl.String, eager=True).alias(ROW_ERROR)

    def mark(self, mask: pl.Series, column: str, message: str, shown: pl.Series) -> None:
        mask = mask.fill_null(False)
        if not mask.any():
            return
        self.problems.append(
            Problem(self.source, column, message, int(mask.sum()), _examples(shown.filter(mask)))
        )
        first = self.errors.is_null() & mask
        self.errors = (
            pl.select(pl.when(first).then(pl.lit(f"{column}: {message}")).otherwise(self.errors))
            .to_series()
            .alias(ROW_ERROR)
        )


def _row_numbers(s: pl.Series) -> bool:
    """Whether a numeric column is 0..n-1 or 1..n: what an index saved as a column looks like."""
    if s.len() < 3 or s.null_count():
        return False
    x = s.cast(pl.Float64)
    return x[0] in (0.0, 1.0) and bool((x.diff().slice(1) == 1.0).all())


def _choose_features(
    df: pl.DataFrame, roles: set[str], amount: str | None, source: str
) -> tuple[list[str], list[Problem]]:
    """Features kind without data.feature_columns: every column but the roles is a model input, and must be
    one: a text column (no value is a number), a non-numeric type or an index is refused, not skipped."""
    copies = {f"{c}_duplicated_" for c in duplicate_names(df.columns)}
    features: list[str] = []
    refused: list[Problem] = []
    for name, dtype in df.schema.items():
        if name in roles or any(name.startswith(c) for c in copies):
            continue
        s = df.get_column(name)
        why = None
        if _INDEX_NAME.fullmatch(name):
            why = "looks like an index (pandas' index written as a column)"
        elif dtype.is_numeric():
            if name != amount and _row_numbers(s):
                why = "looks like an index (it equals the row number)"
        elif dtype == pl.String:
            if s.null_count() < s.len() and s.cast(pl.Float64, strict=False).null_count() == s.len():
                why = "text, no value is a number"
        elif dtype != pl.Null:
            why = f"{dtype} values, not numbers"
        if why is None:
            features.append(name)
        elif name:
            refused.append(Problem(source, name, f"{why}; {_REFUSED}"))
        else:  # the report leaves out an empty column name: say it in words
            refused.append(Problem(source, None, f"column without a name {why}; {_REFUSED}"))
    return features, refused


def _reserved(
    df: pl.DataFrame, names: dict[str, str], optional: set[str], kind_features: bool, source: str
) -> tuple[list[str], list[Problem]]:
    """Columns named like fraudops' canonical name of a role that the configuration maps to another column
    (``TX_DATETIME`` next to a mapped ``Time``) or, for the features kind, of a role it leaves unmapped: they
    would clash with that role or be taken for it. They are left out of the checks, and refused unless the
    mapped column of a required role is missing (then that is the problem to report)."""
    by_canon = {canon: name for name, canon in names.items()}
    canonical = {TX_ID, TX_TIME, LABEL, SCENARIO} if kind_features else set(by_canon)
    dropped, problems = [], []
    for c in df.columns:
        if c not in canonical | {ROW_ERROR} or by_canon.get(c) == c:
            continue
        dropped.append(c)
        if c in by_canon and by_canon[c] not in df.columns and c not in optional:
            continue
        role = (
            f"column {by_canon[c]!r} is mapped to it"
            if c in by_canon
            else "map it in data.columns or rename it"
        )
        problems.append(Problem(source, c, f"reserved name: fraudops' own name for a role ({role})"))
    return dropped, problems


def _time(rows: _Rows, t: pl.Series, name: str, seconds: bool) -> pl.Series:
    """The time column as Datetime("us") (transactions), or as seconds (features kind, Kaggle's Time)."""
    if seconds:
        num = t.cast(pl.Float64, strict=False)
        rows.mark(num.is_null() | ~num.is_finite(), name, "missing or non-numeric time", t)
        return num
    n = t.len()
    if t.dtype == pl.String:
        try:
            parsed = t.str.strip_chars().str.to_datetime(strict=False, time_unit="us")
        except pl.exceptions.ComputeError:  # polars found no date format in the values at all
            parsed = pl.repeat(None, n, dtype=pl.Datetime("us"), eager=True)
    elif isinstance(t.dtype, pl.Datetime | pl.Date):
        parsed = t.cast(pl.Datetime("us"))
    else:
        parsed = pl.repeat(None, n, dtype=pl.Datetime("us"), eager=True)
    rows.mark(parsed.is_null() & t.is_not_null(), name, "unparseable timestamp", t)
    rows.mark(t.is_null(), name, "missing timestamp", t)
    return parsed


def _ids(rows: _Rows, raw: pl.Series, name: str) -> pl.Series:
    """Ids as Int64 or text: floats holding whole numbers are cast; fractions, other types and missing ids
    are invalid rows (a fractional customer id would silently match no history)."""
    dtype = raw.dtype
    missing = raw.is_null()
    if dtype == pl.String:
        ids = raw
    elif dtype.is_integer():
        ids = raw.cast(pl.Int64, strict=False)
        if ids.null_count() > raw.null_count():  # beyond Int64: kept exactly, as text
            ids = raw.cast(pl.String)
    elif dtype.is_float() or isinstance(dtype, pl.Decimal):
        x = raw.cast(pl.Float64)
        missing = missing | x.is_nan()
        whole = x.is_finite() & (x == x.floor()) & (x.abs() < 2.0**63)
        rows.mark(~missing & ~whole, name, "not a whole number (ids are integers or text)", raw)
        ids = pl.select(pl.when(pl.lit(whole)).then(pl.lit(x)).otherwise(None).cast(pl.Int64)).to_series()
    elif dtype == pl.Null:
        ids = raw.cast(pl.String)
    else:
        rows.mark(~missing, name, f"{dtype} ids (ids are integers or text)", raw)
        ids = raw.cast(pl.String, strict=False)
    rows.mark(missing, name, "missing id", raw)
    return ids.alias(raw.name)


def validate(
    df: pl.DataFrame,
    cfg: DataConfig,
    source: str,
    *,
    require_label: bool = False,
    feature_columns: list[str] | None = None,
    numeric_time: bool | None = None,
    partial: bool = False,
) -> Validated:
    """Check and convert one file's rows to canonical names and types.

    ``feature_columns`` (features kind): the model inputs the file must have (a model's, another file's);
    by default data.feature_columns, or every column but the roles. ``numeric_time``: whether a features-kind
    time column holds seconds (None = decide from the values). ``partial``: ``df`` is one chunk of a file, so
    "no valid row" is for the caller to decide on the whole file.
    """
    if df.height == 0:
        return Validated(
            df.with_columns(pl.lit("empty file").alias(ROW_ERROR)), [Problem(source, None, "empty file")]
        )
    file_level = [Problem(source, c, "duplicate column name") for c in duplicate_names(df.columns)]
    names = role_columns(cfg)
    kind_features = cfg.kind == "features"
    optional = {SCENARIO, TX_TIME} if kind_features else {SCENARIO}
    if not require_label:
        optional.add(LABEL)
    dropped, reserved = _reserved(df, names, optional, kind_features, source)
    file_level += reserved
    df = df.drop(dropped)
    amount = cfg.columns.amount if kind_features else None
    features: list[str] = []
    if kind_features:
        if feature_columns is not None or cfg.feature_columns:
            features = list(feature_columns if feature_columns is not None else cfg.feature_columns or [])
        else:
            features, refused = _choose_features(df, set(names), amount, source)
            file_level += refused
        if not features:
            file_level.append(Problem(source, None, "no numeric feature columns"))
    required = [name for name, canon in names.items() if canon not in optional]
    required += [*features, *([amount] if amount else [])]
    file_level += [
        Problem(source, c, "missing column") for c in dict.fromkeys(required) if c not in df.columns
    ]

    present = {name: canon for name, canon in names.items() if name in df.columns}
    out = df.rename(present)
    # the user's name of each role, for the report (an unmapped role's column keeps the canonical name)
    file_name = {canon: canon for canon in ROLES.values()} | {canon: name for name, canon in present.items()}
    rows = _Rows(source, out.height)
    casts: dict[str, pl.Expr] = {}
    if TX_TIME in out.columns:
        t = out[TX_TIME]
        if numeric_time is None:
            numeric_time = kind_features and (
                t.dtype.is_numeric()
                or (t.dtype == pl.String and t.cast(pl.Float64, strict=False).is_not_null().any())
            )
        casts[TX_TIME] = pl.lit(_time(rows, t, file_name[TX_TIME], numeric_time))
    numeric = (
        [*features, *([amount] if amount and amount not in features else [])] if kind_features else [AMOUNT]
    )
    for col in numeric:
        if col not in out.columns:
            continue
        name = file_name.get(col, col)
        raw = out[col]
        num = raw.cast(pl.Float64, strict=False)
        rows.mark(num.is_null() & raw.is_not_null(), name, "not a number", raw)
        rows.mark(raw.is_null() | (num.is_not_null() & ~num.is_finite()), name, "missing value", raw)
        if col in (AMOUNT, amount):
            rows.mark(num < 0, name, "negative amount", raw)
        casts[col] = pl.lit(num)
    if LABEL in out.columns:
        raw = out[LABEL]
        num = raw.cast(pl.Float64, strict=False)
        rows.mark(
            raw.is_not_null() & (num.is_null() | ~num.is_in([0.0, 1.0])),
            file_name[LABEL],
            "label not in {0, 1}",
            raw,
        )
        if require_label:
            rows.mark(raw.is_null(), file_name[LABEL], "missing label", raw)
        casts[LABEL] = pl.when(pl.lit(num).is_in([0.0, 1.0])).then(pl.lit(num)).otherwise(None).cast(pl.Int8)
    if SCENARIO in out.columns:
        casts[SCENARIO] = pl.col(SCENARIO).cast(pl.Int8, strict=False)
    for col in (TX_ID,) if kind_features else (TX_ID, CUSTOMER, TERMINAL):
        if col in out.columns:
            ids = _ids(rows, out[col], file_name[col])
            if col == TX_ID:
                repeated = ids.is_not_null() & ~ids.is_first_distinct()
                rows.mark(repeated, file_name[TX_ID], "duplicate id", ids)
            casts[col] = pl.lit(ids)
    if TX_ID not in out.columns:
        casts[TX_ID] = pl.int_range(0, out.height, dtype=pl.Int64)
    errors = rows.errors
    if file_level:
        first = file_level[0]
        errors = errors.fill_null(f"{first.column}: {first.message}" if first.column else first.message)
    elif not partial and errors.null_count() == 0:
        rows.problems.append(Problem(source, None, f"no valid row: all {out.height:,} rows are invalid"))
    out = out.with_columns(**casts).with_columns(errors)
    return Validated(
        out, file_level + rows.problems, features, file_name[TX_TIME] if TX_TIME in out.columns else None
    )
