"""The scoring protocols: MLflow's JSON formats and CSV for /invocations, records for /predict.

Inputs are checked strictly: exactly the model's features, finite numbers only (JSON ``true``, strings,
null, NaN and ±inf are refused), at least one row and at most ``serve.max_rows``. Client mistakes raise
:class:`ClientError` (a 4xx with ``{"error_code", "message", "field"}``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
from typing import Any

import numpy as np
import orjson

from fraudops.serving.scorer import Scorer

PROTOCOL_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
_NUMBER_TYPES = frozenset((int, float))  # exact types: bool, a subclass of int, is refused


class ClientError(Exception):
    """A request the client must fix: answered with ``status`` and a message naming the problem and field."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        code: str = "BAD_REQUEST",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.code = status, message, field, code
        self.headers = headers or []


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    out: dict[str, Any] = {"error_code": code, "message": message}
    if field is not None:
        out["field"] = field
    return json.dumps(out).encode()


def type_name(v: Any) -> str:
    return {bool: "boolean", str: "string", type(None): "null", dict: "object", list: "array"}.get(
        type(v), type(v).__name__
    )


def _described(v: Any) -> str:
    """``string "abc"``, ``boolean true``, ``null``, ``array [1, 2]``: what a client sent, briefly."""
    if v is None:
        return "null"
    text = json.dumps(v) if isinstance(v, str | bool | list | dict) else repr(v)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{type_name(v)} {text}"


def _bad_value(rows: list, columns: list[str], where: str) -> ClientError:
    """The first cell of rows (lists or tuples of cells) that is not a usable number."""
    for i, row in enumerate(rows):
        for name, v in zip(columns, row, strict=False):
            if type(v) not in _NUMBER_TYPES:
                return ClientError(400, f"{where}[{i}].{name}: expected a number, got {_described(v)}", name)
            if type(v) is int and abs(v) > 3.4e38:
                return ClientError(400, f"{where}[{i}].{name}: {v} is out of range", name)
    return ClientError(400, f"{where}: values must be numbers")


def to_matrix(
    rows: list, columns: list[str], where: str, scorer: Scorer, booleans: bool = True
) -> np.ndarray:
    """Rows (sequences of cells, in ``columns`` order) -> the model's float32 matrix, or a ClientError.

    numpy's type inference refuses strings, nulls, objects and lists (their dtype is not numeric), but
    reads a boolean among numbers as 1.0: every cell's type is checked too unless ``booleans`` is False
    (the caller knows the request holds no JSON true/false).
    """
    width = len(columns)
    for i, row in enumerate(rows):
        if type(row) not in (list, tuple) or len(row) != width:
            got = f"{len(row)} values" if type(row) in (list, tuple) else type_name(row)
            raise ClientError(
                400, f"{where}[{i}]: expected a list of {width} values (one per column), got {got}"
            )
    arr = None
    if not booleans:
        with contextlib.suppress(OverflowError, ValueError, TypeError):
            arr = np.array(rows)
    if arr is None or arr.dtype.kind not in "fi":
        if not set(map(type, itertools.chain.from_iterable(rows))) <= _NUMBER_TYPES:
            raise _bad_value(rows, columns, where)
        try:
            arr = np.array(rows, dtype=np.float64)
        except (OverflowError, ValueError, TypeError) as e:
            raise _bad_value(rows, columns, where) from e
    x64 = arr if arr.dtype == np.float64 else arr.astype(np.float64)  # ints via float64, like pandas
    x = x64.astype(np.float32)
    if not np.isfinite(x).all():
        i, j = (int(k[0]) for k in np.nonzero(~np.isfinite(x)))
        v = x64[i, j]
        what = (
            "NaN is not allowed"
            if np.isnan(v)
            else ("infinity is not allowed" if np.isinf(v) else f"{v!r} is out of float32 range")
        )
        raise ClientError(
            400, f"{where}[{i}].{columns[j]}: {what} (features must be finite numbers)", columns[j]
        )
    if columns != scorer.features:
        x = np.ascontiguousarray(x[:, [columns.index(n) for n in scorer.features]])
    return x


def check_columns(got: Any, where: str, scorer: Scorer, extra: frozenset[str] = frozenset()) -> None:
    """The request's column names must be exactly the model's features (plus ``extra``)."""
    missing = [n for n in scorer.features if n not in got]
    unknown = [str(k) for k in got if k not in scorer.index and k not in extra]
    if not missing and not unknown:
        return
    parts = []
    if missing:
        parts.append(f"missing feature{'s' * (len(missing) > 1)} {_names(missing)}")
    if unknown:
        parts.append(f"unknown feature{'s' * (len(unknown) > 1)} {_names(unknown)}")
    field = missing[0] if missing else unknown[0]
    expected = f"the model takes exactly its {len(scorer.features)} features: GET /metadata"
    raise ClientError(400, f"{where}: {'; '.join(parts)} ({expected})", field)


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_count(n: int, where: str, max_rows: int) -> None:
    if n == 0:
        raise ClientError(400, f"{where}: empty batch, no rows to score", where)
    if n > max_rows:
        raise ClientError(
            413, f"{where}: {n} rows, more than serve.max_rows={max_rows}", where, code="PAYLOAD_TOO_LARGE"
        )


def records_matrix(
    records: Any, where: str, scorer: Scorer, max_rows: int, booleans: bool = True
) -> np.ndarray:
    if not isinstance(records, list):
        raise ClientError(
            400, f"{where}: expected a list of records (objects), got {type_name(records)}", where
        )
    check_count(len(records), where, max_rows)
    keys = scorer.feature_set
    for i, rec in enumerate(records):
        if type(rec) is not dict:
            raise ClientError(
                400, f"{where}[{i}]: expected an object of feature values, got {type_name(rec)}", where
            )
        if rec.keys() != keys:
            check_columns(rec, f"{where}[{i}]", scorer)
    return to_matrix(list(map(scorer.getter, records)), scorer.features, where, scorer, booleans)


def columns_matrix(
    cols: dict, where: str, scorer: Scorer, max_rows: int, booleans: bool = True
) -> np.ndarray:
    """{feature: [values]} (or {feature: value}, one row)."""
    check_columns(cols, where, scorer)
    values = [cols[n] for n in scorer.features]
    if all(type(v) is not list for v in values):
        return to_matrix([values], scorer.features, where, scorer, booleans)
    lengths = {len(v) if type(v) is list else -1 for v in values}
    if len(lengths) != 1 or -1 in lengths:
        raise ClientError(400, f"{where}: every feature needs a list of the same length", where)
    check_count(lengths.pop(), where, max_rows)
    return to_matrix(list(zip(*values, strict=True)), scorer.features, where, scorer, booleans)


def split_matrix(obj: Any, scorer: Scorer, max_rows: int, booleans: bool = True) -> np.ndarray:
    where = "dataframe_split"
    if not isinstance(obj, dict):
        raise ClientError(
            400, f"{where}: expected an object with columns and data, got {type_name(obj)}", where
        )
    unknown = [k for k in obj if k not in ("columns", "data", "index")]
    if unknown:
        raise ClientError(
            400, f"{where}: unknown key {_names(unknown)} (expected columns, data, index)", unknown[0]
        )
    columns, data = obj.get("columns"), obj.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise ClientError(400, f"{where}.columns: required, a list of feature names", f"{where}.columns")
    if len(set(columns)) != len(columns):
        dup = next(c for c in columns if columns.count(c) > 1)
        raise ClientError(400, f"{where}.columns: feature {dup!r} appears twice", dup)
    check_columns(columns, f"{where}.columns", scorer)
    if not isinstance(data, list):
        raise ClientError(400, f"{where}.data: required, a list of rows", f"{where}.data")
    check_count(len(data), f"{where}.data", max_rows)
    return to_matrix(data, columns, f"{where}.data", scorer, booleans)


def tf_matrix(key: str, obj: Any, scorer: Scorer, max_rows: int, booleans: bool = True) -> np.ndarray:
    """TF-serving style: a list of records, or columns ({feature: [values]})."""
    if isinstance(obj, dict):
        return columns_matrix(obj, key, scorer, max_rows, booleans)
    if isinstance(obj, list) and obj and all(isinstance(r, list) for r in obj):
        raise ClientError(
            400,
            f"{key}: rows without feature names; send records ({key}: [{{feature: value}}]), "
            f"columns ({key}: {{feature: [values]}}) or dataframe_split",
            key,
        )
    return records_matrix(obj, key, scorer, max_rows, booleans)


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ClientError(400, "empty body: expected a JSON document", "body")
    if b"NaN" not in body and b"Infinity" not in body:  # orjson refuses those literals; json reads them
        with contextlib.suppress(ValueError, OverflowError, RecursionError):
            return orjson.loads(body)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ClientError(400, f"malformed JSON: {e}", "body") from e


def may_hold_booleans(body: bytes) -> bool:
    """False when the JSON text has no true/false literal anywhere (a fast byte search)."""
    return b"true" in body or b"false" in body


def json_matrix(body: bytes, scorer: Scorer, max_rows: int) -> np.ndarray:
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise ClientError(
            400,
            f"expected a JSON object with exactly one of {', '.join(PROTOCOL_KEYS)}; got {type_name(doc)}",
            "body",
        )
    keys = [k for k in PROTOCOL_KEYS if k in doc]
    others = [k for k in doc if k not in PROTOCOL_KEYS and k != "params"]
    if len(keys) != 1:
        what = (
            f"several protocol keys ({', '.join(keys)})"
            if keys
            else f"no protocol key (got {_names(list(doc))})"
        )
        raise ClientError(
            400, f"expected exactly one of {', '.join(PROTOCOL_KEYS)}: {what}", keys[1] if keys else "body"
        )
    if others:
        raise ClientError(
            400,
            f"unknown key {_names(others)} (expected one of {', '.join(PROTOCOL_KEYS)}, "
            "and optionally params)",
            others[0],
        )
    if "params" in doc and not isinstance(doc["params"], dict | type(None)):
        raise ClientError(400, "params: expected an object", "params")
    key = keys[0]
    booleans = may_hold_booleans(body)
    if key == "dataframe_split":
        return split_matrix(doc[key], scorer, max_rows, booleans)
    if key == "dataframe_records":
        return records_matrix(doc[key], key, scorer, max_rows, booleans)
    return tf_matrix(key, doc[key], scorer, max_rows, booleans)


def csv_matrix(body: bytes, scorer: Scorer, max_rows: int) -> np.ndarray:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ClientError(400, f"CSV body is not valid UTF-8: {e}", "body") from e
    try:
        lines = [row for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as e:
        raise ClientError(400, f"malformed CSV: {e}", "body") from e
    if not lines:
        raise ClientError(400, "empty CSV: expected a header row of feature names, then rows", "body")
    header = [c.strip() for c in lines[0]]
    if len(set(header)) != len(header):
        dup = next(c for c in header if header.count(c) > 1)
        raise ClientError(400, f"CSV header: column {dup!r} appears twice", dup)
    check_columns(header, "CSV header", scorer)
    check_count(len(lines) - 1, "CSV rows", max_rows)
    rows = []
    for i, line in enumerate(lines[1:]):
        if len(line) != len(header):
            raise ClientError(400, f"CSV row {i}: {len(line)} values for {len(header)} columns", "body")
        row = []
        for name, cell in zip(header, line, strict=True):
            cell = cell.strip()
            try:
                if not cell or "_" in cell:
                    raise ValueError(cell)
                row.append(float(cell))
            except ValueError:
                what = "missing value" if not cell else f"expected a number, got {cell[:40]!r}"
                raise ClientError(400, f"CSV row {i}.{name}: {what}", name) from None
        rows.append(row)
    return to_matrix(rows, header, "CSV rows", scorer)


def content_type(headers: dict[bytes, bytes]) -> str:
    """The media type (lower case) if its parameters are acceptable (charset=utf-8 only), else a 415."""
    raw = headers.get(b"content-type")
    if raw is None:
        raise ClientError(
            415,
            f"missing Content-Type header: use {JSON_TYPE} or {CSV_TYPE}",
            "Content-Type",
            code="UNSUPPORTED_MEDIA_TYPE",
        )
    value = raw.decode("latin-1")
    mime, *params = (p.strip() for p in value.split(";"))
    for param in params:
        key, _, val = param.partition("=")
        if key.strip().lower() != "charset":
            raise ClientError(
                415,
                f"unsupported Content-Type parameter {key.strip()!r} in {value!r}",
                "Content-Type",
                code="UNSUPPORTED_MEDIA_TYPE",
            )
        if val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise ClientError(
                415, f"only UTF-8 is supported, got {value!r}", "Content-Type", code="UNSUPPORTED_MEDIA_TYPE"
            )
    return mime.lower()


def invocations_body(p: np.ndarray, flags: np.ndarray) -> bytes:
    """MLflow's answer for a frame of (fraud_probability, is_fraud): json.dumps layout, float repr."""
    items = [
        f'{{"fraud_probability": {v!r}, "is_fraud": {1 if f else 0}}}'
        for v, f in zip(p.tolist(), flags.tolist(), strict=True)
    ]
    return ('{"predictions": [' + ", ".join(items) + "]}").encode()
