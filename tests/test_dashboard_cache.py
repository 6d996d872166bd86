"""The dashboard's cache: files reread when they change, MLflow answers refreshed in the background."""

from __future__ import annotations

import time

from fraudops.dashboard.data import Cache


def test_keyed_values_are_reread_when_the_key_changes():
    cache, calls = Cache(ttl=60), []

    def make() -> int:
        calls.append(1)
        return len(calls)

    assert cache.get("a", make, key=("f", 1)) == 1
    assert cache.get("a", make, key=("f", 1)) == 1
    assert cache.get("a", make, key=("f", 2)) == 2


def test_expired_values_are_served_while_refreshed_in_the_background():
    cache, calls = Cache(ttl=0.05), []

    def make() -> int:
        calls.append(1)
        time.sleep(0.2)
        return len(calls)

    assert cache.get("b", make) == 1
    time.sleep(0.1)
    t0 = time.perf_counter()
    assert cache.get("b", make) == 1  # stale, answered at once
    assert time.perf_counter() - t0 < 0.1
    deadline = time.monotonic() + 5
    while cache.get("b", make) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.get("b", make) >= 2
