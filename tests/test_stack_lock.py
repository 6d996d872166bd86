"""The workspace lock on S3, against a real S3 API server (moto's, on loopback): conditional writes.

Creation is ``If-None-Match: *``; heartbeat, release and a stale takeover are ``If-Match`` on the ETag last
seen. The race test starts 20 processes that contend for the lock in 6 rounds: exactly one wins each round,
the others fail naming the winner. Rounds are separated by a barrier (markers in the bucket), and the winner
holds the lock until every other contender of its round has tried, so a slow contender cannot arrive after
the release and look like a second winner, whatever the load of the machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fraudops.errors import LockHeldError
from fraudops.workspace.layout import LOCK_FILE
from fraudops.workspace.lock import WorkspaceLock
from fraudops.workspace.storage import Storage
from helpers import race

PROCESSES, ROUNDS = 20, 6


@pytest.fixture
def storage(s3_bucket: str) -> Storage:
    return Storage(s3_bucket + "/ws")


def test_second_holder_is_refused_with_the_holders_name_and_release_frees(storage: Storage) -> None:
    first = WorkspaceLock(storage, "a" * 32, heartbeat=0).acquire()
    with pytest.raises(LockHeldError, match=f"execution {'a' * 32} \\(pid {os.getpid()}"):
        WorkspaceLock(storage, "b" * 32, heartbeat=0).acquire()
    first.release()
    assert not storage.exists(LOCK_FILE)
    second = WorkspaceLock(storage, "b" * 32, heartbeat=0).acquire()
    assert second.read()["execution_id"] == "b" * 32  # type: ignore[index]
    second.release()


def test_heartbeat_is_conditional_and_a_lost_lock_is_noticed(storage: Storage) -> None:
    lock = WorkspaceLock(storage, "a" * 32, heartbeat=0).acquire()
    before = lock.read()
    time.sleep(1.1)
    assert lock.refresh()
    after = lock.read()
    assert after is not None and before is not None
    assert after["heartbeat_epoch"] > before["heartbeat_epoch"] and after["token"] == lock.token
    # someone else replaces the object (e.g. a takeover): our next heartbeat must not overwrite it
    storage.write_json(LOCK_FILE, {**after, "token": "other", "execution_id": "c" * 32})
    assert not lock.refresh()
    assert lock.lost
    lock.release()  # conditional: does not delete the other holder's lock
    assert storage.read_json(LOCK_FILE)["execution_id"] == "c" * 32


def test_stale_lock_is_taken_over_by_exactly_one(storage: Storage) -> None:
    stale = {
        "execution_id": "d" * 32,
        "pid": 1,
        "hostname": "elsewhere",
        "token": "t",
        "heartbeat_epoch": time.time() - 600,
    }
    storage.write_json(LOCK_FILE, stale)
    locks = [WorkspaceLock(storage, f"{i:032x}", heartbeat=0) for i in range(8)]

    won = race(locks)
    assert sum(won) == 1
    winner = locks[won.index(True)]
    assert winner.taken_over is not None and winner.taken_over["execution_id"] == "d" * 32
    assert storage.read_json(LOCK_FILE)["token"] == winner.token
    winner.release()
    assert not storage.exists(LOCK_FILE)


def test_heartbeat_thread_keeps_the_lock_fresh(storage: Storage) -> None:
    with WorkspaceLock(storage, "e" * 32, heartbeat=0.2) as lock:
        first = lock.read()
        time.sleep(1.5)
        later = lock.read()
        assert first is not None and later is not None
        assert later["heartbeat_epoch"] > first["heartbeat_epoch"] and not lock.lost
    assert not storage.exists(LOCK_FILE)


CONTENDER = textwrap.dedent(
    """
    import json, sys, time
    from fraudops.errors import LockHeldError
    from fraudops.workspace.lock import WorkspaceLock
    from fraudops.workspace.storage import Storage

    url, me, rounds, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    storage = Storage(url)
    storage.read_tagged("warm-up")  # the S3 client made and connected before the first round

    def wait_for(folder, count):
        deadline = time.time() + 120
        while len(storage.ls(folder)) < count:
            if time.time() > deadline:
                raise SystemExit(f"{me}: gave up waiting for {count} in {folder}")
            time.sleep(0.1)

    print(json.dumps({"ready": me}), flush=True)
    for r in range(rounds):
        # a barrier: everyone has finished the previous round (its winner has released the lock)
        storage.write_text(f"race/{r}/ready/{me}", "")
        wait_for(f"race/{r}/ready", n)
        lock = WorkspaceLock(storage, f"{me}-round{r}", heartbeat=0)
        try:
            lock.acquire()
        except LockHeldError as e:
            print(json.dumps({"round": r, "me": me, "won": False, "error": str(e)}), flush=True)
            storage.write_text(f"race/{r}/lost/{me}", "")
            continue
        print(json.dumps({"round": r, "me": me, "won": True}), flush=True)
        wait_for(f"race/{r}/lost", n - 1)  # hold until every other contender of the round has tried
        lock.release()
    """
)


@pytest.mark.slow
def test_twenty_processes_race_for_the_lock(storage: Storage, tmp_path: Path) -> None:
    """20 processes, 6 rounds, all contending at once (a barrier starts each round): exactly one holds the
    lock each round; every other fails with the holder's execution id."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, storage.url, f"p{i:02d}", str(ROUNDS), str(PROCESSES)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    lines = [json.loads(line) for out, _ in outs for line in out.splitlines()]
    rounds_ok = 0
    for r in range(ROUNDS):
        results = [d for d in lines if d.get("round") == r]
        assert len(results) == PROCESSES, (r, results)
        winners = [d["me"] for d in results if d["won"]]
        assert len(winners) == 1, (r, winners)
        for d in results:
            if not d["won"]:
                assert f"execution {winners[0]}-round{r}" in d["error"], d
        rounds_ok += 1
    assert rounds_ok == ROUNDS
    assert not storage.exists(LOCK_FILE)
    assert all(len(storage.ls(f"race/{r}/lost")) == PROCESSES - 1 for r in range(ROUNDS))
    print(f"lock race: {rounds_ok} of {ROUNDS} rounds with exactly one winner among {PROCESSES} processes")


def test_lock_holder_on_s3_reports_stale(storage: Storage) -> None:
    from fraudops.workspace.lock import lock_holder

    with WorkspaceLock(storage, "f" * 32, heartbeat=0):
        holder = lock_holder(storage)
        assert holder is not None and holder["hostname"] == socket.gethostname() and not holder["stale"]
    assert lock_holder(storage) is None
