"""Raw transactions at the endpoint (transactions kind): parse, compute online features, score, feedback.

A request whose body names the timestamp column (``data.columns.timestamp``) holds raw transactions:
exactly the columns id, timestamp, customer, terminal and amount under the files' names. Their features
come from the online state (:mod:`fraudops.features.online`), built at start-up from ``data/raw/`` +
``monitoring_inputs/current_data/`` (and the last snapshot of the in-process state), updated with every
transaction scored, with ``POST /feedback`` labels and with the labels of files appearing in
``current_data/`` (checked every ``serve.online_snapshot_interval`` seconds).

Edge cases (each answered before the state changes, so a refused request leaves no trace):

* unknown customer or terminal: scored with an empty history (what batch does for a first transaction);
* an id already scored (or twice in one request): 409 ``DUPLICATE_TRANSACTION`` naming the id column
  (a retry must not count twice in the windows; the first answer stands);
* older than the newest transaction held: scored as of its own time (the numbers batch gives it) and
  answered with ``"late": true``; more than ``serve.online_max_lateness`` seconds older: 422
  ``TIMESTAMP_OUT_OF_RANGE`` (the state no longer holds its windows);
* more than ``serve.online_max_future`` seconds ahead of the server's clock: 422, as it would move the
  state's clock and make every later transaction "late".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Hashable
from typing import Any

import numpy as np

from fraudops.config import Settings
from fraudops.data.loading import load_history, load_table
from fraudops.features.definitions import feature_names
from fraudops.features.online import DuplicateTransaction, MemoryState, RawTx, compute, to_micros
from fraudops.features.online_redis import RedisState
from fraudops.serving.capture import Capture
from fraudops.serving.protocol import (
    JSON_TYPE,
    ClientError,
    brief,
    check_count,
    invocations_body,
    parse_json,
    type_name,
)
from fraudops.serving.scorer import Scorer
from fraudops.workspace.layout import CURRENT, ONLINE_SNAPSHOT
from fraudops.workspace.storage import Storage

log = logging.getLogger("fraudops.serve")

_IDS = (int, str)
_KEYS = "dataframe_split, dataframe_records, instances, inputs"


def _got(v: Any) -> str:
    return f"{type_name(v)} {brief(v)}"


def _state(settings: Settings, lateness_us: int) -> MemoryState | RedisState:
    """The configured store: both have score, label, load, newest, stats and spans."""
    url = settings.serve.online_state
    if url == "memory":
        return MemoryState(settings.features, lateness_us)
    prefix = "fraudops:" + hashlib.sha256(settings.workspace.encode()).hexdigest()[:12] + ":"
    return RedisState(url, settings.features, prefix, lateness_us)


def _explain_flag(rec: Any, i: int) -> bool:
    """A transaction's optional ``"explain"`` (removed from it: it is not one of the raw columns)."""
    if type(rec) is not dict or "explain" not in rec:
        return False
    flag = rec.pop("explain")
    if type(flag) is not bool:
        raise ClientError(
            400, f"transactions[{i}].explain: expected true or false, got {_got(flag)}", "explain"
        )
    return flag


class OnlineService:
    """The online state of one worker and what the endpoints do with raw transactions."""

    def __init__(self, settings: Settings, capture: Capture | None = None) -> None:
        """``capture``: the endpoint's data capture, which raw requests feed like the others."""
        cols = settings.data.columns
        assert cols.transaction_id and cols.timestamp and cols.amount  # checked by ``enabled``
        self.settings = settings
        self.cfg = settings.serve
        self.capture = capture
        self.id_col, self.time_col = cols.transaction_id, cols.timestamp
        self.customer_col, self.terminal_col, self.amount_col = (
            cols.customer_id,
            cols.terminal_id,
            cols.amount,
        )
        self.columns = (self.id_col, self.time_col, self.customer_col, self.terminal_col, self.amount_col)
        self.column_set = frozenset(self.columns)
        self.marker = json.dumps(self.time_col).encode()
        self.names = feature_names(settings.features)
        self.lateness_us = int(self.cfg.online_max_lateness * 1e6)
        self.state = _state(settings, self.lateness_us)
        self.storage = Storage.of(settings)
        self.seen: dict[str, int] = {}  # current_data file -> size, applied
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self._order: tuple[Scorer, list[int]] | None = None

    @staticmethod
    def enabled(settings: Settings) -> str | None:
        """None when raw transactions can be served, else why not (said to clients who send them)."""
        cols = settings.data.columns
        if settings.data.kind != "transactions":
            return "raw transactions need data.kind: transactions (this model takes its features as sent)"
        if not (cols.transaction_id and cols.timestamp and cols.amount):
            return "raw transactions need data.columns.transaction_id, timestamp and amount configured"
        if settings.serve.workers > 1 and settings.serve.online_state == "memory":
            return (
                "raw transactions with serve.workers > 1 need a shared state: set serve.online_state to "
                "redis://host:port/db (each worker would only see its own transactions)"
            )
        return None

    # -- lifecycle

    def start(self) -> None:
        """Build the state from the workspace's history (and the last snapshot), then keep it fresh."""
        t0 = time.perf_counter()
        history = load_history(self.storage, self.settings)
        self.seen = {rel: self.storage.size(rel) for rel in self.storage.ls(CURRENT)}
        if isinstance(self.state, MemoryState):
            added = self.state.load(history) if history.height else 0
            if self.storage.exists(ONLINE_SNAPSHOT):
                added += self.state.load(self.storage.read_frame(ONLINE_SNAPSHOT))
        else:
            self.state.ping()
            added = self.state.build(history)
        log.info(
            "online state (%s): %d transactions loaded in %.2f s; %s",
            self.cfg.online_state.split("@")[-1],
            added,
            time.perf_counter() - t0,
            self.state.stats(),
        )
        self.thread = threading.Thread(target=self._keep_fresh, name="fraudops-online", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.snapshot()

    def _keep_fresh(self) -> None:
        while not self.stop_event.wait(self.cfg.online_snapshot_interval):
            try:
                self.refresh()
                self.snapshot()
            except Exception:  # the next round tries again; requests keep being answered
                log.exception("online state refresh failed")

    def snapshot(self) -> None:
        """The in-process state to the workspace (atomically): a restart reloads it."""
        if isinstance(self.state, MemoryState):
            self.state.sweep()
            self.storage.write_frame(ONLINE_SNAPSHOT, self.state.export())

    def refresh(self) -> int:
        """Apply the current_data files that appeared or changed since the last look (their labels, and
        the transactions the state does not hold); rows applied."""
        applied = 0
        for rel in self.storage.ls(CURRENT):
            size = self.storage.size(rel)
            if self.seen.get(rel) == size:
                continue
            v = load_table(self.storage, rel, self.settings.data)
            if not v.file_problems:
                applied += self.state.load(v.valid)
            self.seen[rel] = size
        return applied

    # -- requests

    def is_raw(self, body: bytes) -> bool:
        return self.marker in body

    def _transaction(self, rec: Any, where: str) -> RawTx:
        if type(rec) is not dict:
            raise ClientError(400, f"{where}: expected a transaction (object), got {type_name(rec)}", where)
        if rec.keys() != self.column_set:
            missing = [c for c in self.columns if c not in rec]
            unknown = [str(k) for k in rec if k not in self.column_set]
            what = "; ".join(
                [
                    *([f"missing {', '.join(missing)}"] if missing else []),
                    *([f"unknown {', '.join(unknown)}"] if unknown else []),
                ]
            )
            raise ClientError(
                400,
                f"{where}: {what} (a raw transaction has exactly {', '.join(self.columns)})",
                (missing or unknown)[0],
            )
        values = [rec[c] for c in self.columns]
        for col, v in zip(
            (self.id_col, self.customer_col, self.terminal_col),
            (values[0], values[2], values[3]),
            strict=True,
        ):
            if type(v) not in _IDS:
                raise ClientError(
                    400,
                    f"{where}.{col}: expected an integer or a string id, got {_got(v)}",
                    col,
                )
        stamp, amount = values[1], values[4]
        if type(stamp) is not str:
            raise ClientError(
                400,
                f"{where}.{self.time_col}: expected an ISO 8601 timestamp string, got {_got(stamp)}",
                self.time_col,
            )
        try:
            t = to_micros(dt.datetime.fromisoformat(stamp))
        except ValueError:
            raise ClientError(
                400,
                f"{where}.{self.time_col}: unparseable timestamp {brief(stamp)} (ISO 8601)",
                self.time_col,
            ) from None
        if type(amount) not in (int, float) or not math.isfinite(amount) or amount < 0:
            raise ClientError(
                400,
                f"{where}.{self.amount_col}: expected a finite number >= 0, got {_got(amount)}",
                self.amount_col,
            )
        return RawTx(values[0], t, values[2], values[3], float(amount))

    def _check_times(self, txs: list[RawTx], where: str) -> list[bool]:
        """Refuse a transaction outside the accepted time range (422); which ones are late."""
        newest = self.state.newest()
        now = to_micros(dt.datetime.now(dt.UTC).replace(tzinfo=None))
        ahead = now + int(self.cfg.online_max_future * 1e6)
        late = []
        for i, tx in enumerate(txs):
            if tx.t > ahead:
                raise ClientError(
                    422,
                    f"{where}[{i}].{self.time_col}: more than serve.online_max_future="
                    f"{self.cfg.online_max_future:g} s ahead of the server's clock (UTC)",
                    self.time_col,
                    code="TIMESTAMP_OUT_OF_RANGE",
                )
            if newest is not None and tx.t < newest - self.lateness_us:
                raise ClientError(
                    422,
                    f"{where}[{i}].{self.time_col}: more than serve.online_max_lateness="
                    f"{self.cfg.online_max_lateness:g} s older than the newest transaction scored "
                    f"({dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=newest)}); its windows are gone",
                    self.time_col,
                    code="TIMESTAMP_OUT_OF_RANGE",
                )
            late.append(newest is not None and tx.t < newest)
        return late

    def _order_of(self, scorer: Scorer) -> list[int]:
        cached = self._order
        if cached is not None and cached[0] is scorer:
            return cached[1]
        missing = [n for n in scorer.features if n not in self.names]
        if missing:
            raise ClientError(
                503,
                f"the model's features {', '.join(missing)} are not computed by the online features "
                "(features settings differ from the model's)",
                code="SERVICE_UNAVAILABLE",
            )
        order = [self.names.index(n) for n in scorer.features]
        self._order = (scorer, order)
        return order

    def _score(
        self, records: list[Any], where: str, scorer: Scorer, endpoint: str
    ) -> tuple[list[RawTx], list[list[float]], list[bool], np.ndarray, np.ndarray, np.ndarray]:
        """The transactions scored (and captured): transactions, feature rows, lateness, the model's
        input matrix, probabilities and decisions."""
        check_count(len(records), where, self.cfg.max_rows)
        txs = [
            self._transaction(r, f"{where}[{i}]" if len(records) > 1 or where == "transactions" else where)
            for i, r in enumerate(records)
        ]
        order = self._order_of(scorer)
        late = self._check_times(txs, where)
        try:
            hoods = self.state.score(txs)
        except DuplicateTransaction as e:
            raise ClientError(
                409,
                f"{self.id_col} {brief(e.tx_id)} was already scored (or appears twice)",
                self.id_col,
                code="DUPLICATE_TRANSACTION",
            ) from None
        spans = self.state.spans
        rows = [compute(tx, nb, spans) for tx, nb in zip(txs, hoods, strict=True)]
        x = np.array([[r[j] for j in order] for r in rows], dtype=np.float64).astype(np.float32)
        p, flags = scorer.predict(x)
        if self.capture is not None:
            self.capture.offer(endpoint, scorer, x, p, flags, [tx.tx_id for tx in txs])
        return txs, rows, late, x, p, flags

    def predict(self, body: bytes, scorer: Scorer) -> tuple[int, bytes, str]:
        doc = parse_json(body)
        single = type(doc) is dict
        records = [doc] if single else doc
        if type(records) is not list:
            raise ClientError(
                400, f"expected a transaction (object) or a list of them, got {type_name(doc)}", "body"
            )
        explain = np.array([_explain_flag(r, i) for i, r in enumerate(records)], dtype=bool)
        where = "transaction" if single else "transactions"
        txs, rows, late, x, p, flags = self._score(records, where, scorer, "/predict")
        # reason codes: every alert, and every transaction that asked ("explain": true)
        reasons = scorer.explainer.selected(x, flags | explain)
        out = []
        for i, (tx, row, is_late, v, f) in enumerate(
            zip(txs, rows, late, p.tolist(), flags.tolist(), strict=True)
        ):
            item = {
                "transaction_id": tx.tx_id,
                "fraud_probability": v,
                "is_fraud": bool(f),
                "threshold": scorer.threshold,
                "model": scorer.name,
                "model_version": scorer.version,
                "late": is_late,
                "features": dict(zip(self.names, row, strict=True)),
            }
            if i in reasons:
                item["reasons"] = reasons[i]
            out.append(item)
        return 200, json.dumps(out[0] if single else out).encode(), JSON_TYPE

    def invocations(self, body: bytes, scorer: Scorer) -> tuple[int, bytes, str]:
        """MLflow's JSON formats with the raw columns: dataframe_split, or records (dataframe_records,
        instances, inputs)."""
        doc = parse_json(body)
        if type(doc) is not dict or len(doc.keys() - {"params"}) != 1:
            raise ClientError(
                400,
                f"expected a JSON object with exactly one of {_KEYS}",
                "body",
            )
        key = next(k for k in doc if k != "params")
        obj = doc[key]
        if key == "dataframe_split":
            if (
                type(obj) is not dict
                or type(obj.get("columns")) is not list
                or type(obj.get("data")) is not list
            ):
                raise ClientError(
                    400, "dataframe_split: expected columns (a list of names) and data (a list of rows)", key
                )
            columns = obj["columns"]
            records = [
                dict(zip(columns, row, strict=False))
                if type(row) is list and len(row) == len(columns)
                else row
                for row in obj["data"]
            ]
        elif key in ("dataframe_records", "instances", "inputs"):
            records = obj
            if type(records) is not list:
                raise ClientError(400, f"{key}: expected a list of transactions (objects)", key)
        else:
            raise ClientError(
                400,
                f"unknown key {key!r} (expected one of {_KEYS})",
                key,
            )
        _, _, _, _, p, flags = self._score(records, key, scorer, "/invocations")
        return 200, invocations_body(p, flags), JSON_TYPE

    def feedback(self, body: bytes) -> tuple[int, bytes, str]:
        """``{"<id column>": id, "label": 0|1}`` or a list of them; a malformed one refuses them all
        (400), an unknown id is a 404 (the known ones are applied)."""
        doc = parse_json(body)
        items = [doc] if type(doc) is dict else doc
        if type(items) is not list or not items:
            raise ClientError(400, "expected a label (object) or a non-empty list of them", "body")
        check_count(len(items), "labels", self.cfg.max_rows)
        labels: list[tuple[Hashable, bool]] = []
        for i, item in enumerate(items):
            where = f"labels[{i}]"
            if type(item) is not dict or item.keys() != {self.id_col, "label"}:
                raise ClientError(
                    400, f"{where}: expected exactly {{{self.id_col!r}: id, 'label': 0 or 1}}", where
                )
            tx_id, label = item[self.id_col], item["label"]
            if type(tx_id) not in _IDS:
                raise ClientError(
                    400,
                    f"{where}.{self.id_col}: expected an integer or a string id, got {type_name(tx_id)}",
                    self.id_col,
                )
            if type(label) is not int or label not in (0, 1):
                raise ClientError(
                    400,
                    f"{where}.label: expected 0 (genuine) or 1 (fraud), got {_got(label)}",
                    "label",
                )
            labels.append((tx_id, bool(label)))
        unknown = [tx_id for tx_id, fraud in labels if not self.state.label(tx_id, fraud)]
        if unknown:
            raise ClientError(
                404,
                f"unknown {self.id_col} {brief(unknown[0])}: never scored, or older than the feature "
                f"windows ({len(unknown)} unknown; the others were applied)",
                self.id_col,
                code="UNKNOWN_TRANSACTION",
            )
        return 200, json.dumps({"applied": len(labels)}).encode(), JSON_TYPE
