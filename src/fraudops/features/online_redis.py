"""The shared online state: the store of every worker and replica in one Redis (the same methods as
:class:`~fraudops.features.online.MemoryState`), so each sees every transaction scored and every label.

Keys (``<p>`` = the prefix, one per workspace)::

    <p>c:<customer>  sorted set: [id, amount, terminal] (JSON) by time in microseconds (exact: < 2^53)
    <p>m:<terminal>  sorted set: id by time       <p>f:<terminal>  the same, frauds only
    <p>ids           hash: id -> [customer, terminal, time] (duplicates, labels)
    <p>newest        the newest transaction time     <p>ready / <p>building  the history build

A request costs two round trips: ``HSETNX`` of its ids (a known id refuses the request and undoes the
others), then one ``MULTI``/``EXEC`` that adds the transactions, drops entries older than the windows
and reads each neighbourhood, so concurrent workers each see a consistent state. The history is built
once per Redis (the first worker to start builds it, the others wait for ``ready``); a restart of the
servers keeps the state. Redis' own persistence (RDB/AOF) decides what survives a restart of Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Hashable
from typing import Any

import polars as pl
import redis

from fraudops.config import FeaturesConfig
from fraudops.data.schema import AMOUNT, CUSTOMER, LABEL, TERMINAL, TX_ID, TX_TIME
from fraudops.features.online import DuplicateTransaction, Neighbourhood, RawTx, Spans, history_rows

CHUNK = 5000  # transactions per pipeline while loading history
BUILD_TIMEOUT = 600.0  # seconds a worker waits for another one's history build
_NEWEST = """local c = redis.call('GET', KEYS[1])
if (not c) or tonumber(ARGV[1]) > tonumber(c) then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('GET', KEYS[1])"""


def _key(value: Hashable) -> str:
    return json.dumps(value)


class RedisState:
    """The online state in Redis (``url``: ``redis://host:port/db``)."""

    def __init__(self, url: str, cfg: FeaturesConfig, prefix: str, lateness_us: int = 0) -> None:
        self.spans = Spans.of(cfg)
        self.keep_us = lateness_us + max(self.spans.keep_customer, self.spans.keep_terminal)
        self.r = redis.Redis.from_url(url)
        self.p = prefix
        self.newest_script = self.r.register_script(_NEWEST)
        self._newest: int | None = None

    def ping(self) -> None:
        self.r.ping()

    def score(self, txs: list[RawTx]) -> list[Neighbourhood]:
        ids = [_key(tx.tx_id) for tx in txs]
        seen: set[str] = set()
        for tx, i in zip(txs, ids, strict=True):
            if i in seen:
                raise DuplicateTransaction(tx.tx_id)
            seen.add(i)
        pipe = self.r.pipeline(transaction=False)
        for tx, i in zip(txs, ids, strict=True):
            pipe.hsetnx(f"{self.p}ids", i, json.dumps([tx.customer, tx.terminal, tx.t]))
        fresh = pipe.execute()
        if not all(fresh):
            taken = [i for i, ok in zip(ids, fresh, strict=True) if ok]
            if taken:
                self.r.hdel(f"{self.p}ids", *taken)
            raise DuplicateTransaction(next(tx.tx_id for tx, ok in zip(txs, fresh, strict=True) if not ok))
        pipe = self.r.pipeline(transaction=True)
        newest = max(tx.t for tx in txs)
        self.newest_script(keys=[f"{self.p}newest"], args=[newest], client=pipe)
        for tx, i in zip(txs, ids, strict=True):
            member = json.dumps([tx.tx_id, tx.amount, tx.terminal])
            pipe.zadd(f"{self.p}c:{_key(tx.customer)}", {member: tx.t})
            pipe.zadd(f"{self.p}m:{_key(tx.terminal)}", {i: tx.t})
        keep = max(newest, self._newest or newest) - self.keep_us
        for tx in txs:
            c = f"{self.p}c:{_key(tx.customer)}"
            m, f = f"{self.p}m:{_key(tx.terminal)}", f"{self.p}f:{_key(tx.terminal)}"
            for key in (c, m, f):
                pipe.zremrangebyscore(key, "-inf", keep)
            pipe.zrangebyscore(c, f"({tx.t - self.spans.keep_customer}", tx.t, withscores=True)
            for old, new in self.spans.terminal:
                pipe.zcount(m, f"({tx.t - old}", tx.t - new)
                pipe.zcount(f, f"({tx.t - old}", tx.t - new)
        answers = pipe.execute()
        self._newest = int(answers[0])
        out = []
        k = 1 + 2 * len(txs)
        for _ in txs:
            k += 3
            entries = answers[k]
            k += 1
            counts = answers[k : k + 2 * len(self.spans.terminal)]
            k += 2 * len(self.spans.terminal)
            rows = [json.loads(member) for member, _ in entries]
            out.append(
                Neighbourhood(
                    times=[int(score) for _, score in entries],
                    amounts=[float(r[1]) for r in rows],
                    terminals=[r[2] for r in rows],
                    terminal_nb=tuple(counts[0::2]),
                    terminal_frauds=tuple(counts[1::2]),
                )
            )
        return out

    def label(self, tx_id: Hashable, fraud: bool) -> bool:
        i = _key(tx_id)
        raw = self.r.hget(f"{self.p}ids", i)
        if raw is None:
            return False
        _, terminal, t = json.loads(raw)
        key = f"{self.p}f:{_key(terminal)}"
        if fraud:
            self.r.zadd(key, {i: t})
        else:
            self.r.zrem(key, i)
        return True

    def build(self, frame: pl.DataFrame) -> int:
        """Load the history once per Redis: the first caller loads it, the others wait until it is."""
        if self.r.exists(f"{self.p}ready"):
            self.newest()  # from Redis
            return 0
        if not self.r.set(f"{self.p}building", "1", nx=True, ex=int(BUILD_TIMEOUT)):
            deadline = time.monotonic() + BUILD_TIMEOUT
            while not self.r.exists(f"{self.p}ready"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the online state in Redis was not built within {BUILD_TIMEOUT:g} s")
                time.sleep(0.1)
            self.newest()  # from Redis
            return 0
        added = self.load(frame)
        self.r.set(f"{self.p}ready", "1")
        return added

    def load(self, frame: pl.DataFrame) -> int:
        rows = history_rows(frame, self.keep_us)
        added = 0
        for chunk in rows.iter_slices(CHUNK):
            added += self._load_chunk(chunk)
        if rows.height:
            newest = int(rows.get_column(TX_TIME).max())  # type: ignore[arg-type]
            self._newest = int(self.newest_script(keys=[f"{self.p}newest"], args=[newest]))
        return added

    def _load_chunk(self, chunk: pl.DataFrame) -> int:
        data = chunk.select(TX_ID, TX_TIME, CUSTOMER, TERMINAL, AMOUNT, LABEL).rows()
        pipe = self.r.pipeline(transaction=False)
        for tx_id, t, customer, terminal, _, _ in data:
            pipe.hsetnx(f"{self.p}ids", _key(tx_id), json.dumps([customer, terminal, t]))
        fresh = pipe.execute()
        customers: dict[str, dict[str, int]] = {}
        terminals: dict[str, dict[str, int]] = {}
        frauds: dict[str, dict[str, int]] = {}
        genuine: list[tuple[str, str]] = []
        for (tx_id, t, customer, terminal, amount, label), new in zip(data, fresh, strict=True):
            i, m = _key(tx_id), _key(terminal)
            if new:
                customers.setdefault(_key(customer), {})[json.dumps([tx_id, amount, terminal])] = t
                terminals.setdefault(m, {})[i] = t
            if label == 1:
                frauds.setdefault(m, {})[i] = t
            elif label == 0:
                genuine.append((m, i))
        for kind, groups in (("c", customers), ("m", terminals), ("f", frauds)):
            for key, mapping in groups.items():
                pipe.zadd(f"{self.p}{kind}:{key}", mapping)
        for m, i in genuine:
            pipe.zrem(f"{self.p}f:{m}", i)
        pipe.execute()
        return sum(map(bool, fresh))

    def newest(self) -> int | None:
        """The newest time this worker has seen in Redis (refreshed by every request it scores)."""
        if self._newest is None:
            raw = self.r.get(f"{self.p}newest")
            self._newest = int(raw) if raw is not None else None
        return self._newest

    def stats(self) -> dict[str, Any]:
        return {"transactions": int(self.r.hlen(f"{self.p}ids")), "store": "redis"}
