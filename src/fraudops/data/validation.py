"""Checking one file's rows: every problem named with its file, column, count and examples."""

from __future__ import annotations

import dataclasses

import polars as pl

from fraudops.config import DataConfig
from fraudops.data.schema import (
    AMOUNT,
    CUSTOMER,
    LABEL,
    ROW_ERROR,
    SCENARIO,
    TERMINAL,
    TX_ID,
    TX_TIME,
    feature_table_columns,
    role_columns,
)
from fraudops.errors import Problem


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


def _examples(values: pl.Series, n: int = 3) -> list[str]:
    return [repr(v) for v in values.head(n).to_list()]


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
