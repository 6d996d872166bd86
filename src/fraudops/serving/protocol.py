"""The scoring protocols: MLflow's JSON formats and CSV for /invocations, records for /predict.

Inputs are checked strictly: exactly the model's features, finite numbers only (JSON ``true``, strings,
null, NaN and ±inf are refused), no key twice in a JSON object, at least one row and at most
``serve.max_rows``. Client mistakes raise :class:`ClientError` (a 4xx with ``{"error_code", "message",
"field"}``). The work a body can cause is bounded before it is parsed: a large body holding more arrays,
objects or values than ``serve.max_rows`` rows can need is refused from a count of its bytes.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import itertools
import json
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orjson

EXPLAIN = "explain"  # /predict: a record's optional flag asking for its reasons
PROTOCOL_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
_NUMBER_TYPES = frozenset((int, float))  # exact types: bool, a subclass of int, is refused
# Bodies above this size are counted (a few byte scans) before they are parsed; smaller ones cannot hold
# enough to matter, and the single-row hot path stays free of the scans.
CHECKED_BODY_BYTES = 4096
_SLACK_CONTAINERS = 64  # the document, params, dataframe_split's object and index, ...
_SLACK_VALUES = 1024  # params and index entries, column names
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_MESSAGE_CHARS = 2000
_FIELD_CHARS = 200


@dataclasses.dataclass(frozen=True, eq=False)
class Schema:
    """What checking a request needs of a model: its feature names in order, their positions, and a
    getter of a record's values in that order."""

    features: list[str]
    index: dict[str, int] = dataclasses.field(init=False)
    feature_set: frozenset[str] = dataclasses.field(init=False)
    getter: Callable[[dict], tuple] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        names = self.features
        set_ = object.__setattr__
        set_(self, "index", {n: i for i, n in enumerate(names)})
        set_(self, "feature_set", frozenset(names))
        getter = operator.itemgetter(*names)
        set_(self, "getter", getter if len(names) > 1 else (lambda d: (getter(d),)))


@functools.lru_cache(maxsize=8)
def schema_of(features: tuple[str, ...]) -> Schema:
    return Schema(list(features))


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

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole: it comes back from the parser process
        return ClientError, (self.status, self.message, self.field, self.code, self.headers)


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    """The JSON error answer; message and field are cut, as they may quote what a client sent."""
    out: dict[str, Any] = {"error_code": code, "message": message[:_MESSAGE_CHARS]}
    if field is not None:
        out["field"] = field[:_FIELD_CHARS]
    return json.dumps(out).encode()


def type_name(v: Any) -> str:
    return {bool: "boolean", str: "string", type(None): "null", dict: "object", list: "array"}.get(
        type(v), type(v).__name__
    )


def _text(v: Any, budget: int) -> str:
    """JSON-like text of v, cut soon after ``budget`` characters. Each level of nesting spends some of
    the budget, so a value nested a thousand levels deep is described without deep recursion."""
    t = type(v)
    if t is list or t is dict:
        if budget <= 1:
            return "..."
        opening, closing = ("{", "}") if t is dict else ("[", "]")
        parts, used = [opening], 1
        for i, item in enumerate(v.items() if t is dict else v):
            if used >= budget:
                parts.append("...")
                return "".join(parts)
            piece = (
                f"{json.dumps(str(item[0])[:budget])}: {_text(item[1], budget - used - 4)}"
                if t is dict
                else _text(item, budget - used)
            )
            parts.append(f", {piece}" if i else piece)
            used += len(piece) + 2 * (i > 0)
        parts.append(closing)
        return "".join(parts)
    if t is str:
        return json.dumps(v[: budget + 1])
    if v is None or t is bool:
        return json.dumps(v)
    if isinstance(v, float | np.floating):
        return repr(float(v))  # 1e+39, never np.float64(1e+39)
    return str(v) if t is int else repr(v)


def brief(v: Any, limit: int = 40) -> str:
    """A value as a client sent it, in at most ``limit`` characters: ``"abc"``, ``[1, 2]``, ``1e+39``."""
    text = _text(v, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quoted(name: Any, limit: int = 40) -> str:
    """A name as Python quotes it (``'V1'``), cut to about ``limit`` characters."""
    text = repr(name[:limit] if isinstance(name, str) else name)
    return text if not isinstance(name, str) or len(name) <= limit else text[:-1] + "...'"


def _described(v: Any) -> str:
    """``string "abc"``, ``boolean true``, ``null``, ``array [1, 2]``: what a client sent, briefly."""
    return "null" if v is None else f"{type_name(v)} {brief(v)}"


def _first_duplicate(names: Iterable[Any]) -> Any:
    """The first name seen twice (in linear time: a header may be long), or None."""
    seen: set[Any] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _bad_value(rows: list, columns: list[str], where: str) -> ClientError:
    """The first cell of rows (lists or tuples of cells) that is not a usable number."""
    for i, row in enumerate(rows):
        for name, v in zip(columns, row, strict=False):
            if type(v) not in _NUMBER_TYPES:
                return ClientError(400, f"{where}[{i}].{name}: expected a number, got {_described(v)}", name)
            if type(v) is int and abs(v) > 3.4e38:
                return ClientError(400, f"{where}[{i}].{name}: {brief(v)} is out of range", name)
    return ClientError(400, f"{where}: values must be numbers", where)


def to_matrix(
    rows: list, columns: list[str], where: str, schema: Schema, booleans: bool = True
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
                400, f"{where}[{i}]: expected a list of {width} values (one per column), got {got}", where
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
            else ("infinity is not allowed" if np.isinf(v) else f"{float(v)!r} is out of float32 range")
        )
        raise ClientError(
            400, f"{where}[{i}].{columns[j]}: {what} (features must be finite numbers)", columns[j]
        )
    if columns != schema.features:
        x = np.ascontiguousarray(x[:, [columns.index(n) for n in schema.features]])
    return x


def check_columns(got: Any, where: str, schema: Schema, extra: frozenset[str] = frozenset()) -> None:
    """The request's column names must be exactly the model's features (plus ``extra``)."""
    present = got if isinstance(got, dict) else set(got)  # a header may hold many names
    missing = [n for n in schema.features if n not in present]
    unknown = [str(k) for k in got if k not in schema.index and k not in extra]
    if not missing and not unknown:
        return
    parts = []
    if missing:
        parts.append(f"missing feature{'s' * (len(missing) > 1)} {_names(missing)}")
    if unknown:
        parts.append(f"unknown feature{'s' * (len(unknown) > 1)} {_names(unknown)}")
    field = missing[0] if missing else unknown[0]
    expected = f"the model takes exactly its {len(schema.features)} features: GET /metadata"
    raise ClientError(400, f"{where}: {'; '.join(parts)} ({expected})", field)


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(_quoted(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_count(n: int, where: str, max_rows: int) -> None:
    if n == 0:
        raise ClientError(400, f"{where}: empty batch, no rows to score", where)
    if n > max_rows:
        raise ClientError(
            413, f"{where}: {n} rows, more than serve.max_rows={max_rows}", where, code="PAYLOAD_TOO_LARGE"
        )


def records_matrix(
    records: Any, where: str, schema: Schema, max_rows: int, booleans: bool = True
) -> np.ndarray:
    if not isinstance(records, list):
        raise ClientError(
            400, f"{where}: expected a list of records (objects), got {type_name(records)}", where
        )
    check_count(len(records), where, max_rows)
    keys = schema.feature_set
    for i, rec in enumerate(records):
        if type(rec) is not dict:
            raise ClientError(
                400, f"{where}[{i}]: expected an object of feature values, got {type_name(rec)}", where
            )
        if rec.keys() != keys:
            check_columns(rec, f"{where}[{i}]", schema)
    return to_matrix(list(map(schema.getter, records)), schema.features, where, schema, booleans)


def columns_matrix(
    cols: dict, where: str, schema: Schema, max_rows: int, booleans: bool = True
) -> np.ndarray:
    """{feature: [values]} (or {feature: value}, one row)."""
    check_columns(cols, where, schema)
    values = [cols[n] for n in schema.features]
    if all(type(v) is not list for v in values):
        return to_matrix([values], schema.features, where, schema, booleans)
    lengths = {len(v) if type(v) is list else -1 for v in values}
    if len(lengths) != 1 or -1 in lengths:
        raise ClientError(400, f"{where}: every feature needs a list of the same length", where)
    check_count(lengths.pop(), where, max_rows)
    return to_matrix(list(zip(*values, strict=True)), schema.features, where, schema, booleans)


def split_matrix(obj: Any, schema: Schema, max_rows: int, booleans: bool = True) -> np.ndarray:
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
    dup = _first_duplicate(columns)
    if dup is not None:
        raise ClientError(400, f"{where}.columns: feature {_quoted(dup)} appears twice", dup)
    check_columns(columns, f"{where}.columns", schema)
    if not isinstance(data, list):
        raise ClientError(400, f"{where}.data: required, a list of rows", f"{where}.data")
    check_count(len(data), f"{where}.data", max_rows)
    return to_matrix(data, columns, f"{where}.data", schema, booleans)


def tf_matrix(key: str, obj: Any, schema: Schema, max_rows: int, booleans: bool = True) -> np.ndarray:
    """TF-serving style: a list of records, or columns ({feature: [values]})."""
    if isinstance(obj, dict):
        return columns_matrix(obj, key, schema, max_rows, booleans)
    if isinstance(obj, list) and obj and all(isinstance(r, list) for r in obj):
        raise ClientError(
            400,
            f"{key}: rows without feature names; send records ({key}: [{{feature: value}}]), "
            f"columns ({key}: {{feature: [values]}}) or dataframe_split",
            key,
        )
    return records_matrix(obj, key, schema, max_rows, booleans)


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ClientError(400, "empty body: expected a JSON document", "body")
    if b"NaN" not in body and b"Infinity" not in body:  # orjson refuses those literals; json reads them
        with contextlib.suppress(ValueError, OverflowError, RecursionError):
            return orjson.loads(body)
    try:
        return json.loads(body)
    except RecursionError as e:
        raise ClientError(400, "malformed JSON: arrays or objects nested too deeply", "body") from e
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ClientError(400, f"malformed JSON: {e}", "body") from e


def check_json_size(body: bytes, max_rows: int, width: int) -> None:
    """Refuse, before parsing, a large body holding more arrays and objects, or more values, than
    ``max_rows`` rows of ``width`` features can need: parsing it could take seconds (a 5 MB body of empty
    arrays is 1.7 million objects). A byte count bounds both; brackets and commas inside strings are
    discounted, slowly, only when the quick count is over."""
    if len(body) <= CHECKED_BODY_BYTES:
        return
    max_containers = max_rows + width + _SLACK_CONTAINERS
    max_values = (max_rows + 1) * (width + 2) + _SLACK_VALUES
    containers = body.count(b"[") + body.count(b"{")
    values = body.count(b",") + 1
    if containers <= max_containers and values <= max_values:
        return
    if b'"' in body:
        body = _JSON_STRING.sub(b'""', body)
        containers = body.count(b"[") + body.count(b"{")
        values = body.count(b",") + 1
    if containers > max_containers:
        raise ClientError(
            413,
            f"the JSON body holds {containers} arrays and objects, more than {max_rows} rows "
            f"(serve.max_rows={max_rows}) can need",
            "body",
            code="PAYLOAD_TOO_LARGE",
        )
    if values > max_values:
        raise ClientError(
            413,
            f"the JSON body holds about {values} values, more than {max_rows} rows of {width} features "
            f"(serve.max_rows={max_rows}) can need",
            "body",
            code="PAYLOAD_TOO_LARGE",
        )


def _count_keys(v: Any) -> int:
    """Keys of every object within v (iteratively: params may be nested deep)."""
    n, stack = 0, [v]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            n += len(item)
            stack.extend(x for x in item.values() if type(x) in (dict, list))
        elif type(item) is list:
            stack.extend(x for x in item if type(x) in (dict, list))
    return n


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        key = _first_duplicate(k for k, _ in pairs)
        raise ClientError(400, f"duplicate key {_quoted(key)}: a JSON object names it twice", key)
    return out


def check_unique_keys(body: bytes, keys: int) -> None:
    """400 if a JSON object of the body repeats a key (orjson and json keep the last value silently).

    Every key of the text is followed by one ``:`` outside strings, so when the body has exactly as many
    colons as the parsed document has keys, no key repeats: one byte count on the common path. Otherwise
    (a repeated key, or a colon inside a string) the body is read again to find the key.
    """
    if body.count(b":") <= keys:
        return
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicates)
    except RecursionError as e:
        raise ClientError(400, "malformed JSON: arrays or objects nested too deeply", "body") from e
    except ValueError as e:
        raise ClientError(400, f"malformed JSON: {e}", "body") from e


def may_hold_booleans(body: bytes) -> bool:
    """False when the JSON text has no true/false literal anywhere (a fast byte search)."""
    return b"true" in body or b"false" in body


def json_matrix(body: bytes, schema: Schema, max_rows: int) -> np.ndarray:
    check_json_size(body, max_rows, len(schema.features))
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
    params = doc.get("params")
    if params is not None and type(params) is not dict:
        raise ClientError(400, "params: expected an object", "params")
    key = keys[0]
    obj = doc[key]
    booleans = may_hold_booleans(body)
    if key == "dataframe_split":
        x = split_matrix(obj, schema, max_rows, booleans)
        inner = len(obj) + (_count_keys(obj["index"]) if obj.get("index") else 0)
    elif key == "dataframe_records":
        x = records_matrix(obj, key, schema, max_rows, booleans)
        inner = len(obj) * len(schema.features)  # each record was checked to hold exactly the features
    else:
        x = tf_matrix(key, obj, schema, max_rows, booleans)
        inner = len(schema.features) if type(obj) is dict else len(obj) * len(schema.features)
    check_unique_keys(body, len(doc) + (_count_keys(params) if params else 0) + inner)
    return x


def invocations_matrix(schema: Schema, mime: str, body: bytes, max_rows: int) -> np.ndarray:
    """/invocations: the matrix of a JSON or a CSV body (``mime``, checked by the caller, says which)."""
    if mime == JSON_TYPE:
        return json_matrix(body, schema, max_rows)
    return csv_matrix(body, schema, max_rows)


def predict_records(
    schema: Schema, body: bytes, max_rows: int, id_col: str | None
) -> tuple[np.ndarray, list[Any] | None, bool, np.ndarray | None]:
    """/predict: a transaction or a list of them -> (matrix, transaction ids or None, one object sent,
    which records asked ``"explain": true`` or None)."""
    check_json_size(body, max_rows, len(schema.features) + 1)  # + the transaction id
    doc = parse_json(body)
    single = isinstance(doc, dict)
    records = [doc] if single else doc
    if not isinstance(records, list):
        raise ClientError(
            400, f"expected a transaction (object) or a list of them, got {type_name(doc)}", "body"
        )
    where = "transaction" if single else "transactions"
    check_count(len(records), where, max_rows)
    ids: list[Any] | None = None
    if id_col is not None and any(type(r) is dict and id_col in r for r in records):
        ids = [r.get(id_col) if type(r) is dict else None for r in records]
        for i, v in enumerate(ids):
            if v is not None and type(v) not in (str, int):
                raise ClientError(
                    400,
                    f"{where}[{i}].{id_col}: expected a string or an integer id, got {_described(v)}",
                    id_col,
                )
        records = [{k: v for k, v in r.items() if k != id_col} if type(r) is dict else r for r in records]
    explain = None
    if b'"explain"' in body:
        records, explain = _explain_flags(records, where)
    x = records_matrix(records, where, schema, max_rows, may_hold_booleans(body))
    check_unique_keys(body, len(doc) if single else sum(map(len, doc)))  # each record is an object now
    return x, ids, single, explain


def _explain_flags(records: list, where: str) -> tuple[list, np.ndarray]:
    """Records without their ``explain`` key, and which of them asked for reasons."""
    flags = np.zeros(len(records), dtype=bool)
    out = []
    for i, r in enumerate(records):
        if type(r) is dict and EXPLAIN in r:
            v = r[EXPLAIN]
            if type(v) is not bool:
                raise ClientError(
                    400, f"{where}[{i}].{EXPLAIN}: expected true or false, got {_described(v)}", EXPLAIN
                )
            flags[i] = v
            r = {k: x for k, x in r.items() if k != EXPLAIN}
        out.append(r)
    return out, flags


def csv_matrix(body: bytes, schema: Schema, max_rows: int) -> np.ndarray:
    if len(body) > CHECKED_BODY_BYTES:  # bound the lines and cells before they are made
        width = len(schema.features)
        breaks, cells = max(body.count(b"\n"), body.count(b"\r")), body.count(b",")
        if breaks > max_rows + _SLACK_CONTAINERS or cells > (max_rows + 1) * width + _SLACK_VALUES:
            raise ClientError(
                413,
                f"CSV body of {breaks} lines and {cells} commas: more than {max_rows} rows of {width} "
                f"features (serve.max_rows={max_rows})",
                "CSV rows",
                code="PAYLOAD_TOO_LARGE",
            )
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
    dup = _first_duplicate(header)
    if dup is not None:
        raise ClientError(400, f"CSV header: column {_quoted(dup)} appears twice", dup)
    check_columns(header, "CSV header", schema)
    check_count(len(lines) - 1, "CSV rows", max_rows)
    rows = []
    for i, line in enumerate(lines[1:]):
        if len(line) != len(header):
            raise ClientError(400, f"CSV row {i}: {len(line)} values for {len(header)} columns", "CSV rows")
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
    return to_matrix(rows, header, "CSV rows", schema)


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
