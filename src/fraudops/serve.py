"""Real-time scoring: ``fraudops serve``, a SageMaker-compatible endpoint that follows the champion alias.

Endpoints (port 8080 by default, the SageMaker container contract)::

    GET  /ping         200 once a model is loaded, 503 before (SageMaker's health check; no API key)
    GET  /health       model, reload state, last reload error (JSON; 200 when a model is loaded; no API key)
    GET  /version      fraudops and MLflow versions, the model version answering
    GET  /metadata     model name, version, alias, threshold, input schema, inference runtime
    GET  /metrics      Prometheus text: requests by status, latency histogram, model version, reloads
    POST /invocations  MLflow scoring protocol: JSON with exactly one of dataframe_split, dataframe_records,
                       instances, inputs (plus optional params), or text/csv with a header row; answers
                       {"predictions": [{"fraud_probability": p, "is_fraud": 0|1}, ...]}, byte for byte what
                       ``mlflow models serve`` answers for the same registered model
    POST /predict      one transaction (a JSON object) or a list of them, answered per record with
                       fraud_probability, is_fraud, threshold, model and model_version

Every response made while a model is loaded carries the header ``X-Model-Version``. Inputs are checked
strictly: exactly the model's features, finite numbers only (JSON ``true``, strings, null, NaN and ±inf are
refused), at least one row and at most ``serve.max_rows``, a body of at most ``serve.max_payload_bytes``.
Client mistakes get a 4xx with ``{"error_code", "message", "field"}``; nothing a client sends causes a 500.
When ``serve.api_key`` is set, every endpoint but /ping and /health needs the header ``X-API-Key``.

Hot reload: each worker process polls ``models:/<name>@<alias>`` every ``serve.reload_interval`` seconds
in a background thread. A new version is downloaded, loaded, checked and made ready completely before
one reference is swapped, so a request is answered either by the old model or by the new one, whole.
A reload that fails keeps the old model serving and is reported in /health and /metrics.

Inference runtime: XGBoost's ``inplace_predict`` has a fixed cost of a few hundred microseconds per call,
whatever the row count. For small batches the trees are evaluated with numpy instead (:class:`TreeEnsemble`):
the same float32 comparisons, the same tree-by-tree float32 sum and the same sigmoid, so probabilities are
bit-identical to the booster's. Each model is verified against its booster when loaded (the numpy path is
switched off if a single probability differs) and the batch size up to which numpy is faster is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import hmac
import io
import itertools
import json
import logging
import operator
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fraudops import __version__
from fraudops.config import ConfigError, Settings, format_validation_error, load_settings
from fraudops.model import FraudModel

log = logging.getLogger("fraudops.serve")

# How `fraudops serve` hands the workspace to uvicorn's worker processes (not FRAUDOPS_*: those are settings).
WORKSPACE_ENV = "_FRAUDOPS_SERVE_WORKSPACE"
ALIAS_ENV = "_FRAUDOPS_SERVE_ALIAS"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

PROTOCOL_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_NUMBER_TYPES = frozenset((int, float))  # exact types: bool, a subclass of int, is refused


def _fast_json() -> tuple[Callable[[bytes], Any] | None, str]:
    """A JSON parser faster than the standard one on numbers, giving the same values for valid JSON.

    Python's ``float()`` needs about 0.3-0.7 µs per decimal number, most of the cost of a 100-row request.
    orjson (when installed; not a dependency) is about 15x faster, pandas' bundled ujson with precise
    floats (C ``strtod``, correctly rounded) about 2x. Both are only used on bodies without NaN/Infinity
    literals, and any body they refuse goes through :mod:`json`, whose messages and values are the rule.
    """
    try:
        import orjson

        return orjson.loads, "orjson"
    except ImportError:
        pass
    try:
        from pandas.io.json import ujson_loads
    except ImportError:  # pragma: no cover - pandas is a dependency
        return None, "json"

    def loads(body: bytes) -> Any:
        return ujson_loads(body, precise_float=True)

    return loads, "pandas ujson (precise floats)"


_FAST_LOADS, JSON_DECODER = _fast_json()


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


# ----------------------------------------------------------------------------------- numpy tree runtime


class UnsupportedModel(ValueError):
    """The booster uses something the numpy evaluator does not reproduce (it then falls back to XGBoost)."""


class TreeEnsemble:
    """An XGBoost ``binary:logistic`` gbtree evaluated with numpy, bit-identical to ``inplace_predict``.

    All trees are flattened into node arrays; a leaf points to itself, so every row walks ``depth`` steps.
    XGBoost goes right when ``x >= split`` (float32), adds the leaves to the base margin one tree after the
    other in float32, then applies ``1 / (1 + expf(-x))``. numpy's float32 ``exp`` is not correctly rounded,
    so exp is taken in float64 and rounded; where that rounding is a near tie (about 1 % of rows) the libm
    that XGBoost uses may round the other way, and those rows are handed to the booster itself.
    """

    def __init__(
        self,
        feat: np.ndarray,
        thr: np.ndarray,
        child: np.ndarray,
        leaf: np.ndarray,
        roots: np.ndarray,
        depth: int,
        base_margin: np.float32,
        n_features: int,
    ) -> None:
        self.feat, self.thr, self.child, self.leaf, self.roots = feat, thr, child, leaf, roots
        self.depth, self.n_features = depth, n_features
        self.base = np.array([base_margin], dtype=np.float32)
        self.n_trees = len(roots)

    @classmethod
    def from_booster(cls, booster: Any, n_features: int) -> TreeEnsemble:
        learner = json.loads(booster.save_raw("json"))["learner"]
        objective = learner["objective"]["name"]
        if objective != "binary:logistic":
            raise UnsupportedModel(f"objective {objective}")
        gbm = learner["gradient_booster"]
        if gbm.get("name") != "gbtree":
            raise UnsupportedModel(f"booster {gbm.get('name')}")
        params = learner["learner_model_param"]
        if int(params.get("num_class", "0")) > 1 or int(params.get("num_target", "1")) > 1:
            raise UnsupportedModel("several outputs")
        base_score = float(str(params["base_score"]).strip("[]"))
        if not 0.0 < base_score < 1.0:
            raise UnsupportedModel(f"base_score {base_score}")
        base_margin = np.float32(np.log(base_score / (1.0 - base_score)))  # to within a few float32 ulps
        trees = gbm["model"]["trees"]
        if not trees:
            raise UnsupportedModel("no trees")
        feats, thrs, children, leaves, roots = [], [], [], [], []
        offset, depth = 0, 0
        for tree in trees:
            if any(int(t) != 0 for t in tree.get("split_type", [])) or tree.get("categories"):
                raise UnsupportedModel("categorical splits")
            if int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
                raise UnsupportedModel("vector leaves")
            left = np.asarray(tree["left_children"], dtype=np.int64)
            right = np.asarray(tree["right_children"], dtype=np.int64)
            cond = np.asarray(tree["split_conditions"], dtype=np.float64).astype(np.float32)
            index = np.asarray(tree["split_indices"], dtype=np.int64)
            n = len(left)
            is_leaf = left == -1
            if (index[~is_leaf] >= n_features).any():
                raise UnsupportedModel("a split on a feature beyond the model's inputs")
            own = np.arange(n)
            pair = np.empty((n, 2), dtype=np.intp)
            pair[:, 0] = np.where(is_leaf, own, left) + offset
            pair[:, 1] = np.where(is_leaf, own, right) + offset
            children.append(pair.ravel())
            feats.append(np.where(is_leaf, 0, index))
            thrs.append(np.where(is_leaf, np.float32(np.inf), cond))
            leaves.append(np.where(is_leaf, cond, np.float32(0)))
            roots.append(offset)
            node_depth = np.zeros(n, dtype=np.int64)
            for i in range(n):  # parents come before children in XGBoost's numbering
                if not is_leaf[i]:
                    node_depth[left[i]] = node_depth[right[i]] = node_depth[i] + 1
            depth = max(depth, int(node_depth.max()))
            offset += n
        ens = cls(
            feat=np.concatenate(feats).astype(np.intp),
            thr=np.concatenate(thrs).astype(np.float32),
            child=np.concatenate(children).astype(np.intp),
            leaf=np.concatenate(leaves).astype(np.float32),
            roots=np.asarray(roots, dtype=np.intp),
            depth=depth,
            base_margin=base_margin,
            n_features=n_features,
        )
        ens.base[0] = ens.exact_base_margin(booster)
        return ens

    def exact_base_margin(self, booster: Any) -> np.float32:
        """XGBoost's base margin to the bit: its logit of base_score rounds in its own way, so take the
        float32 next to ours that reproduces the booster's first-tree raw scores."""
        rows = verification_rows(self, 1000, seed=1)
        first = booster.inplace_predict(
            rows, validate_features=False, predict_type="margin", iteration_range=(0, 1)
        ).astype(np.float32)
        idx = np.full(len(rows), self.roots[0])
        for _ in range(self.depth):
            idx = self.child[(idx << 1) + (rows[np.arange(len(rows)), self.feat[idx]] >= self.thr[idx])]
        leaf0 = self.leaf[idx]
        up = down = self.base[0]
        for _ in range(64):
            for c in (up, down):
                if np.array_equal(c + leaf0, first):
                    return c
            up = np.nextafter(up, np.float32(np.inf))
            down = np.nextafter(down, np.float32(-np.inf))
        raise UnsupportedModel("cannot reproduce XGBoost's base margin")

    def margin(self, x: np.ndarray) -> np.ndarray:
        """Raw scores (float32) of a C-contiguous float32 matrix, without NaN (validated inputs)."""
        feat, thr, child = self.feat, self.thr, self.child
        n = x.shape[0]
        if n == 1:
            row = x[0]
            idx = self.roots
            for _ in range(self.depth):
                idx = child[(idx << 1) + (row[feat[idx]] >= thr[idx])]
            return np.cumsum(np.concatenate((self.base, self.leaf[idx])))[-1:]
        flat = x.reshape(-1)
        offsets = (np.arange(n, dtype=np.intp) * x.shape[1])[:, None]
        idx = np.broadcast_to(self.roots, (n, self.n_trees))
        for _ in range(self.depth):
            idx = child[(idx << 1) + (flat[feat[idx] + offsets] >= thr[idx])]
        summed = np.concatenate((np.broadcast_to(self.base, (n, 1)), self.leaf[idx]), axis=1)
        return np.cumsum(summed, axis=1)[:, -1]  # cumsum adds in tree order, like XGBoost

    def predict(self, x: np.ndarray, booster: Any) -> np.ndarray:
        """Probabilities (float32); near-tie rows of the exp rounding are scored by ``booster``."""
        neg = np.minimum(-self.margin(x), np.float32(88.7))
        e64 = np.exp(neg.astype(np.float64))
        e32 = e64.astype(np.float32)
        below = e32 - np.nextafter(e32, np.float32(0))
        above = np.nextafter(e32, np.float32(np.inf)) - e32
        ulp = np.minimum(below, above).astype(np.float64)
        tie = np.abs(np.abs(e64 - e32) - 0.5 * ulp) < 0.005 * ulp
        p = np.float32(1) / (np.float32(1) + e32)
        if tie.any():
            p[tie] = booster.inplace_predict(np.ascontiguousarray(x[tie]), validate_features=False)
        return p


def verification_rows(ens: TreeEnsemble, n: int, seed: int = 0) -> np.ndarray:
    """Rows whose values sit on, just below and just above the model's own split points."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, ens.n_features), dtype=np.float32)
    internal = np.isfinite(ens.thr)
    for f in range(ens.n_features):
        cuts = ens.thr[internal & (ens.feat == f)]
        if cuts.size == 0:
            continue
        v = rng.choice(cuts, n)
        side = rng.integers(-1, 2, n)
        v = np.where(side < 0, np.nextafter(v, np.float32(-np.inf)), v)
        x[:, f] = np.where(side > 0, np.nextafter(v, np.float32(np.inf)), v)
    return x


def _best_seconds(
    a: Callable[[], Any], b: Callable[[], Any], repeat: int = 7, number: int = 3
) -> tuple[float, float]:
    """Best time per call of a and of b, measured in turns so that a busy machine slows both alike."""
    a(), b()
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for k, fn in enumerate((a, b)):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            best[k] = min(best[k], (time.perf_counter() - t0) / number)
    return best[0], best[1]


def prepare_runtime(model: FraudModel) -> tuple[TreeEnsemble | None, int, dict[str, Any]]:
    """The numpy evaluator (verified bit-identical) and the batch size up to which it beats XGBoost."""
    info: dict[str, Any] = {"engine": "numpy" if model.kind == "logistic_regression" else "xgboost"}
    if model.kind != "xgboost" or model.booster is None:
        return None, 0, info
    info["n_trees"] = int(model.booster.num_boosted_rounds())
    try:
        ens = TreeEnsemble.from_booster(model.booster, len(model.feature_names))
    except (UnsupportedModel, KeyError, ValueError) as e:
        info["numpy_trees"] = f"off: {e}"
        return None, 0, info
    rows = verification_rows(ens, 2000)
    expected = model.booster.inplace_predict(rows, validate_features=False)
    got = np.concatenate(
        [ens.predict(rows[:300], model.booster)]
        + [ens.predict(rows[i : i + 1], model.booster) for i in range(300, 400)]
        + [ens.predict(rows[i : i + 16], model.booster) for i in range(400, len(rows), 16)]
    )
    if not np.array_equal(got, expected):
        info["numpy_trees"] = f"off: {int((got != expected).sum())} of {len(rows)} probabilities differ"
        log.warning("numpy tree evaluator disagrees with XGBoost; serving with XGBoost only")
        return None, 0, info
    timings = {}
    small = 0
    for n in (1, 2, 4, 8, 16, 32, 64):
        xs = np.ascontiguousarray(rows[:n])
        t_np, t_xgb = _best_seconds(
            lambda xs=xs: ens.predict(xs, model.booster),
            lambda xs=xs: model.booster.inplace_predict(xs, validate_features=False),
        )
        timings[n] = {"numpy_us": round(t_np * 1e6, 1), "xgboost_us": round(t_xgb * 1e6, 1)}
        if t_np >= t_xgb:
            break
        small = n
    info.update(
        numpy_trees="on (verified bit-identical)", numpy_max_rows=small, depth=ens.depth, calibration=timings
    )
    if small:
        info["engine"] = f"numpy trees up to {small} rows, xgboost above"
    return (ens if small else None), small, info


# ------------------------------------------------------------------------------------------ scorer


@dataclasses.dataclass(frozen=True, eq=False)
class Scorer:
    """One loaded model version, ready to answer; never changed once built (swapped whole on reload)."""

    model: FraudModel
    name: str
    version: str
    alias: str
    run_id: str | None
    loaded_at: float
    trees: TreeEnsemble | None
    small_batch: int
    runtime: dict[str, Any]
    features: list[str] = dataclasses.field(init=False)
    index: dict[str, int] = dataclasses.field(init=False)
    feature_set: frozenset[str] = dataclasses.field(init=False)
    getter: Callable[[dict], tuple] = dataclasses.field(init=False)
    version_header: tuple[bytes, bytes] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        names = list(self.model.feature_names)
        set_ = object.__setattr__
        set_(self, "features", names)
        set_(self, "index", {n: i for i, n in enumerate(names)})
        set_(self, "feature_set", frozenset(names))
        getter = operator.itemgetter(*names)
        set_(self, "getter", getter if len(names) > 1 else (lambda d: (getter(d),)))
        set_(self, "version_header", (b"x-model-version", self.version.encode()))

    @property
    def threshold(self) -> float:
        return float(self.model.threshold)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities float64, decisions bool): the same numbers as FraudModel.predict."""
        if self.trees is not None and x.shape[0] <= self.small_batch:
            p = self.trees.predict(x, self.model.booster).astype(np.float64)
        else:
            p = self.model.predict_proba(x)
        return p, p >= self.model.threshold


def build_scorer(model: FraudModel, *, name: str, version: str, alias: str, run_id: str | None) -> Scorer:
    trees, small, runtime = prepare_runtime(model)
    return Scorer(
        model=model,
        name=name,
        version=str(version),
        alias=alias,
        run_id=run_id,
        loaded_at=time.time(),
        trees=trees,
        small_batch=small,
        runtime=runtime,
    )


# ----------------------------------------------------------------------------------- input parsing


def _type_name(v: Any) -> str:
    return {bool: "boolean", str: "string", type(None): "null", dict: "object", list: "array"}.get(
        type(v), type(v).__name__
    )


def _described(v: Any) -> str:
    """``string "abc"``, ``boolean true``, ``null``, ``array [1, 2]``: what a client sent, briefly."""
    if v is None:
        return "null"
    text = json.dumps(v) if isinstance(v, str | bool | list | dict) else repr(v)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{_type_name(v)} {text}"


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
            got = f"{len(row)} values" if type(row) in (list, tuple) else _type_name(row)
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
            400, f"{where}: expected a list of records (objects), got {_type_name(records)}", where
        )
    check_count(len(records), where, max_rows)
    keys = scorer.feature_set
    for i, rec in enumerate(records):
        if type(rec) is not dict:
            raise ClientError(
                400, f"{where}[{i}]: expected an object of feature values, got {_type_name(rec)}", where
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
            400, f"{where}: expected an object with columns and data, got {_type_name(obj)}", where
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
    if _FAST_LOADS is not None and b"NaN" not in body and b"Infinity" not in body:
        with contextlib.suppress(ValueError, OverflowError, RecursionError):
            return _FAST_LOADS(body)
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
            f"expected a JSON object with exactly one of {', '.join(PROTOCOL_KEYS)}; got {_type_name(doc)}",
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


# ------------------------------------------------------------------------------------------ metrics


class Metrics:
    """Prometheus metrics; with several workers, in prometheus_client's multiprocess mode."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fraudops_serve_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "fraudops_serve_request_duration_seconds",
            "Request handling time by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter("fraudops_serve_rows_scored", "Rows scored", registry=r)
        self.model_version = Gauge(
            "fraudops_serve_model_version",
            "Registered model version being served (0 = none)",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.reloads = Counter(
            "fraudops_serve_model_reloads",
            "Champion checks that loaded a new version (success) or failed (failure)",
            ["result"],
            registry=r,
        )
        self.last_reload = Gauge(
            "fraudops_serve_last_reload_timestamp_seconds",
            "When the last reload of each result happened",
            ["result"],
            multiprocess_mode="max",
            registry=r,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        pair = self._children.get((endpoint, status))
        if pair is None:
            pair = self._children[(endpoint, status)] = (
                self.requests.labels(endpoint, str(status)),
                self.latency.labels(endpoint),
            )
        pair[0].inc()
        pair[1].observe(seconds)

    def reload(self, ok: bool, version: str | None) -> None:
        result = "success" if ok else "failure"
        self.reloads.labels(result).inc()
        self.last_reload.labels(result).set(time.time())
        if ok and version is not None:
            with contextlib.suppress(ValueError):
                self.model_version.set(float(version))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        if self.multiprocess:
            from prometheus_client import multiprocess

            with contextlib.suppress(Exception):
                multiprocess.mark_process_dead(os.getpid())


# ------------------------------------------------------------------------------------- hot reload


class ModelHolder:
    """The model being served and the watcher that swaps in a newly promoted version."""

    def __init__(self, settings: Settings, alias: str, metrics: Metrics) -> None:
        self.settings, self.alias, self.metrics = settings, alias, metrics
        self.scorer: Scorer | None = None
        self.last_check: float | None = None
        self.last_error: dict[str, Any] | None = None  # the current problem, cleared once a check succeeds
        self.last_failure: dict[str, Any] | None = None  # the most recent problem, kept
        self.reloads = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Load the aliased version if it is not the one served. False (old model kept) on failure."""
        from fraudops import registry

        with self._lock:
            current = self.scorer
            target = None
            try:
                mv = registry.version_by_alias(self.settings, self.alias)
                if mv is None:
                    raise LookupError(
                        f"no version of {self.settings.registry.model_name} is aliased "
                        f"'{self.alias}' in {registry.tracking_uri(self.settings)}"
                    )
                target = str(mv.version)
                if current is not None and current.version == target:
                    self.last_check = time.time()
                    self.last_error = None  # e.g. the alias went back from a broken version
                    return True
                model = registry.load_model(self.settings, target)
                scorer = build_scorer(
                    model,
                    name=self.settings.registry.model_name,
                    version=target,
                    alias=self.alias,
                    run_id=getattr(mv, "run_id", None),
                )
            except Exception as e:  # any failure keeps the old model serving
                self.failures += 1
                self.last_check = time.time()
                message = f"{type(e).__name__}: {e}"
                if self.last_error is None or self.last_error["message"] != message:
                    log.warning(
                        "model reload failed (%s); %s",
                        message,
                        f"still serving version {current.version}" if current else "no model loaded",
                    )
                self.last_error = self.last_failure = {
                    "at": self.last_check,
                    "version": target,
                    "message": message[:2000],
                }
                self.metrics.reload(False, None)
                return False
            self.scorer = scorer  # the atomic swap: one reference, to a fully built scorer
            self.reloads += 1
            self.last_check = time.time()
            self.last_error = None
            self.metrics.reload(True, target)
            log.info(
                "serving %s version %s (%s)%s",
                scorer.name,
                target,
                scorer.runtime.get("engine"),
                f", was version {current.version}" if current else "",
            )
            return True

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="fraudops-model-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.serve.reload_interval):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ------------------------------------------------------------------------------------------ the app


Handler = Callable[[dict[bytes, bytes], bytes, "Scorer | None"], tuple[int, bytes, str]]


class ServeApp:
    """A minimal ASGI application (no framework on the hot path)."""

    def __init__(self, settings: Settings, alias: str = "champion", *, watch: bool = True) -> None:
        self.settings = settings
        self.cfg = settings.serve
        self.metrics = Metrics()
        self.holder = ModelHolder(settings, alias, self.metrics)
        self.watch = watch
        self.started = time.time()
        key = self.cfg.api_key.get_secret_value() if self.cfg.api_key else ""
        self.api_key = key.encode() if key else None
        id_col = settings.data.columns.transaction_id
        self.id_column = id_col if id_col else None
        # path -> (method, handler, needs body, open without API key)
        self.routes: dict[str, tuple[str, Handler, bool, bool]] = {
            "/ping": ("GET", self.ping, False, True),
            "/health": ("GET", self.health, False, True),
            "/version": ("GET", self.version, False, False),
            "/metadata": ("GET", self.metadata, False, False),
            "/metrics": ("GET", self.metrics_page, False, False),
            "/invocations": ("POST", self.invocations, True, False),
            "/predict": ("POST", self.predict, True, False),
        }

    # -- lifecycle

    def startup(self) -> None:
        self.holder.check()
        if self.watch:
            self.holder.start()

    def shutdown(self) -> None:
        self.holder.stop()
        self.metrics.close()

    # -- ASGI

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await asyncio.to_thread(self.startup)
                except Exception as e:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.shutdown)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: dict, receive: Callable, send: Callable) -> None:
        t0 = time.perf_counter()
        path = scope["path"]
        route = self.routes.get(path)
        endpoint = path if route is not None else "other"
        scorer = None
        extra: list[tuple[bytes, bytes]] = []
        try:
            if route is None:
                raise ClientError(
                    404,
                    f"no endpoint {path!r}; see /ping, /health, /version, /metadata, /metrics, "
                    "POST /invocations, POST /predict",
                    "path",
                    code="NOT_FOUND",
                )
            method, handler, has_body, open_ = route
            if scope["method"] != method:
                raise ClientError(
                    405,
                    f"{path} accepts {method} only, got {scope['method']}",
                    "method",
                    code="METHOD_NOT_ALLOWED",
                    headers=[(b"allow", method.encode())],
                )
            headers = dict(scope["headers"])
            if self.api_key is not None and not open_:
                given = headers.get(b"x-api-key")
                if given is None:
                    raise ClientError(401, "missing X-API-Key header", "X-API-Key", code="UNAUTHENTICATED")
                if not hmac.compare_digest(given, self.api_key):
                    raise ClientError(401, "invalid API key", "X-API-Key", code="UNAUTHENTICATED")
            body = await self.read_body(receive, headers) if has_body else b""
            scorer = self.holder.scorer  # one model answers the whole request, and says so
            status, payload, media = handler(headers, body, scorer)
        except ClientError as e:
            status, payload, media = e.status, error_body(e.code, e.message, e.field), JSON_TYPE
            extra = e.headers
        except Exception:  # a bug of ours, never a crashed worker
            log.exception("error handling %s %s", scope.get("method"), path)
            status, payload, media = 500, error_body("INTERNAL_ERROR", "internal error (logged)"), JSON_TYPE
        answered = scorer if scorer is not None else self.holder.scorer
        headers_out = [
            (b"content-type", media.encode()),
            (b"content-length", str(len(payload)).encode()),
            *extra,
        ]
        if answered is not None:
            headers_out.append(answered.version_header)
        with contextlib.suppress(OSError):
            await send({"type": "http.response.start", "status": status, "headers": headers_out})
            await send({"type": "http.response.body", "body": payload})
        self.metrics.observe(endpoint, status, time.perf_counter() - t0)

    async def read_body(self, receive: Callable, headers: dict[bytes, bytes]) -> bytes:
        limit = self.cfg.max_payload_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise ClientError(400, "invalid Content-Length header", "Content-Length") from None
            if size > limit:
                await self._too_big(receive, {"more_body": True}, size)
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                await self._too_big(receive, message, len(body))
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientError(400, "client disconnected", "body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_big(receive, message, size)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _too_big(self, receive: Callable, message: dict, size: int) -> None:
        """Raise the 413, after reading (and dropping) what remains of a not too absurd body, so that the
        client, still sending, sees the answer rather than a reset connection."""
        limit = self.cfg.max_payload_bytes
        budget = max(4 * limit, 1 << 20)
        while message.get("more_body", False) and size <= budget:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            size += len(message.get("body", b""))
        raise ClientError(
            413,
            f"request body larger than serve.max_payload_bytes={limit}",
            "body",
            code="PAYLOAD_TOO_LARGE",
            headers=[(b"connection", b"close")],
        )

    # -- endpoints: each returns (status, body, media type)

    def _need(self, scorer: Scorer | None) -> Scorer:
        if scorer is None:
            err = self.holder.last_error
            why = f": {err['message']}" if err else ""
            raise ClientError(503, f"no model loaded yet{why}", code="SERVICE_UNAVAILABLE")
        return scorer

    def ping(self, headers: dict, body: bytes, scorer: Scorer | None) -> tuple[int, bytes, str]:
        if scorer is None:
            return 503, b'{"status": "no model loaded"}', JSON_TYPE
        return 200, b'{"status": "ok"}', JSON_TYPE

    def health(self, headers: dict, body: bytes, scorer: Scorer | None) -> tuple[int, bytes, str]:
        h = self.holder
        s = scorer
        status = "unavailable" if s is None else ("degraded" if h.last_error else "ok")
        out = {
            "status": status,
            "model_loaded": s is not None,
            "model": self.settings.registry.model_name,
            "alias": h.alias,
            "model_version": s.version if s else None,
            "loaded_at": s.loaded_at if s else None,
            "last_check": h.last_check,
            "reload_interval_seconds": self.cfg.reload_interval,
            "reloads": h.reloads,
            "reload_failures": h.failures,
            "last_reload_error": h.last_error,
            "last_failed_reload": h.last_failure,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 3),
        }
        return (200 if s is not None else 503), json.dumps(out).encode(), JSON_TYPE

    def version(self, headers: dict, body: bytes, scorer: Scorer | None) -> tuple[int, bytes, str]:
        from importlib.metadata import version

        s = scorer
        out = {
            "fraudops": __version__,
            "mlflow": version("mlflow"),
            "model": self.settings.registry.model_name,
            "model_version": s.version if s else None,
        }
        return 200, json.dumps(out).encode(), JSON_TYPE

    def metadata(self, headers: dict, body: bytes, scorer: Scorer | None) -> tuple[int, bytes, str]:
        s = self._need(scorer)
        out = {
            "name": s.name,
            "version": s.version,
            "alias": s.alias,
            "run_id": s.run_id,
            "kind": s.model.kind,
            "threshold": s.threshold,
            "input_schema": [{"name": n, "type": "double", "required": True} for n in s.features],
            "output_schema": [
                {"name": "fraud_probability", "type": "double"},
                {"name": "is_fraud", "type": "long"},
            ],
            "protocols": {
                "/invocations": [*PROTOCOL_KEYS, CSV_TYPE],
                "/predict": "a JSON object or list of them",
            },
            "limits": {"max_rows": self.cfg.max_rows, "max_payload_bytes": self.cfg.max_payload_bytes},
            "runtime": s.runtime,
            "json_decoder": JSON_DECODER,
            "loaded_at": s.loaded_at,
        }
        return 200, json.dumps(out).encode(), JSON_TYPE

    def metrics_page(self, headers: dict, body: bytes, scorer: Scorer | None) -> tuple[int, bytes, str]:
        payload, media = self.metrics.render()
        return 200, payload, media

    def invocations(self, headers: dict, body: bytes, scorer: Scorer | None) -> tuple[int, bytes, str]:
        scorer = self._need(scorer)
        raw = headers.get(b"content-type")
        mime = JSON_TYPE if raw == b"application/json" else content_type(headers)
        if mime == JSON_TYPE:
            x = json_matrix(body, scorer, self.cfg.max_rows)
        elif mime == CSV_TYPE:
            x = csv_matrix(body, scorer, self.cfg.max_rows)
        else:
            raise ClientError(
                415,
                f"unsupported Content-Type {mime!r}: use {JSON_TYPE} or {CSV_TYPE}",
                "Content-Type",
                code="UNSUPPORTED_MEDIA_TYPE",
            )
        p, flags = scorer.predict(x)
        self.metrics.rows.inc(len(p))
        return 200, invocations_body(p, flags), JSON_TYPE

    def predict(self, headers: dict, body: bytes, scorer: Scorer | None) -> tuple[int, bytes, str]:
        scorer = self._need(scorer)
        raw = headers.get(b"content-type")
        if raw != b"application/json" and content_type(headers) != JSON_TYPE:
            raise ClientError(
                415, f"/predict takes {JSON_TYPE}", "Content-Type", code="UNSUPPORTED_MEDIA_TYPE"
            )
        doc = parse_json(body)
        single = isinstance(doc, dict)
        records = [doc] if single else doc
        if not isinstance(records, list):
            raise ClientError(
                400, f"expected a transaction (object) or a list of them, got {_type_name(doc)}", "body"
            )
        where = "transaction" if single else "transactions"
        check_count(len(records), where, self.cfg.max_rows)
        ids: list[Any] | None = None
        id_col = self.id_column
        if id_col is not None and any(type(r) is dict and id_col in r for r in records):
            ids = [r.get(id_col) if type(r) is dict else None for r in records]
            records = [{k: v for k, v in r.items() if k != id_col} if type(r) is dict else r for r in records]
        x = records_matrix(records, where, scorer, self.cfg.max_rows, may_hold_booleans(body))
        p, flags = scorer.predict(x)
        self.metrics.rows.inc(len(p))
        out = []
        for i, (v, f) in enumerate(zip(p.tolist(), flags.tolist(), strict=True)):
            item: dict[str, Any] = {}
            if ids is not None and ids[i] is not None:
                item["transaction_id"] = ids[i]
            item.update(
                fraud_probability=v,
                is_fraud=bool(f),
                threshold=scorer.threshold,
                model=scorer.name,
                model_version=scorer.version,
            )
            out.append(item)
        return 200, json.dumps(out[0] if single else out).encode(), JSON_TYPE


# ------------------------------------------------------------------------------------------- entry


def _configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s fraudops.serve[%(process)d] %(levelname)s: %(message)s")
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def create_app() -> ServeApp:
    """uvicorn's factory: the app of one worker process, settings read from the workspace handed over."""
    _configure_logging()
    workspace = os.environ.get(WORKSPACE_ENV, ".")
    return ServeApp(load_settings(workspace), os.environ.get(ALIAS_ENV, "champion"))


def run(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    alias: str = "champion",
) -> None:
    """Serve until interrupted: uvicorn (httptools, uvloop) with ``workers`` processes, no access log."""
    import uvicorn
    from pydantic import ValidationError

    overrides = {k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None}
    try:
        cfg = type(settings.serve).model_validate({**settings.serve.model_dump(), **overrides})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "serve options")) from e
    os.environ[WORKSPACE_ENV] = settings.workspace
    os.environ[ALIAS_ENV] = alias
    metrics_dir = None
    if cfg.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        metrics_dir = tempfile.mkdtemp(prefix="fraudops-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        uvicorn.run(
            "fraudops.serve:create_app",
            factory=True,
            host=cfg.host,
            port=cfg.port,
            workers=cfg.workers,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="info",
            server_header=False,
            timeout_keep_alive=75,  # longer than load balancers' idle timeout (60 s on AWS ALB)
            timeout_graceful_shutdown=10,
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
