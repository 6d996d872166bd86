"""The serving benchmark's own arithmetic: wrk output, CPU accounting from /proc, medians, the targets."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their siblings `common` and `loadgen`
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load("bench_serve")


@pytest.fixture(scope="module")
def loadgen() -> ModuleType:
    return _load("loadgen")


def test_parse_wrk_reads_the_lua_summary_line(loadgen: ModuleType) -> None:
    out = (
        "Running 3s test @ http://127.0.0.1:1/invocations\n  1 threads and 16 connections\n"
        'WRKJSON {"requests": 6000, "duration_us": 2000000, "p50_us": 150, "p90_us": 300, "p99_us": 1250, '
        '"max_us": 9000, "mean_us": 170.5, "errors": 2, "status_errors": 1}\n'
    )
    r = loadgen.parse_wrk(out)
    assert r["req_per_s"] == 3000.0
    assert (r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"]) == (0.15, 0.3, 1.25, 9.0)
    assert r["requests"] == 6000
    assert r["errors"] == 3
    with pytest.raises(ValueError, match="no WRKJSON line"):
        loadgen.parse_wrk("Running 3s test\nsocket errors: connect 16\n")


def test_parse_stat_splits_after_the_command_name(loadgen: ModuleType) -> None:
    # fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    text = "4242 (python3 (x) y) S 17 4242 4242 0 -1 4194304 900 0 0 0 125 31 0 0 20 0 3 0\n"
    assert loadgen.parse_stat(text) == (17, 156)


def test_tree_ticks_sums_a_process_and_its_descendants_only(loadgen: ModuleType) -> None:
    stats = {
        1: (0, 1000),  # init: not in the tree
        10: (1, 5),  # the server launcher
        11: (10, 200),  # the worker
        12: (11, 30),  # its parser process
        13: (11, 7),
        20: (1, 999),  # an unrelated process
    }
    assert loadgen.tree_ticks(stats, 10) == 242
    assert loadgen.tree_ticks(stats, 11) == 237
    assert loadgen.tree_ticks(stats, 99) == 0  # gone


def test_cpu_accounting_of_this_process(loadgen: ModuleType) -> None:
    """The /proc reader finds this process under its parent, with the ticks it has used so far."""
    stats = loadgen.proc_stats()
    parent, ticks = stats[os.getpid()]
    assert parent == os.getppid()
    assert loadgen.tree_ticks(stats, os.getpid()) >= ticks > 0


def _run(rps: float, p99: float, cpu: float = 0.1, errors: int = 0) -> dict[str, float]:
    return {
        "requests": 100,
        "req_per_s": rps,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "errors": errors,
        "cpu_ms_per_request": cpu,
    }


def test_summarize_takes_medians_and_sums_counts(loadgen: ModuleType) -> None:
    s = loadgen.summarize([_run(100, 3.0), _run(300, 1.0, errors=1), _run(200, 9.0)])
    assert s["req_per_s"] == 200
    assert s["p99_ms"] == 3.0
    assert s["requests"] == 300
    assert s["errors"] == 1
    assert s["runs"] == 3


def _results(bench: ModuleType, fraudops: float, floor: float, native: float, p99: float) -> list[dict]:
    out = []
    for rows, c in bench.SCENARIOS:
        servers = {
            "fraudops": _run(fraudops, p99),
            "floor": _run(floor, p99 / 2),
            "mlflow native": _run(native, 50.0),
            "mlflow pyfunc": _run(native, 60.0),
        }
        out.append({"model": "demo champion", "rows": rows, "concurrency": c, "servers": servers})
    return out


def test_targets_and_table(bench: ModuleType) -> None:
    met = bench.check_targets(
        _results(bench, fraudops=8600, floor=10000, native=1000, p99=1.2), "demo champion"
    )
    assert all(met.values()) and len(met) == 5
    missed = bench.check_targets(
        _results(bench, fraudops=8400, floor=10000, native=1300, p99=1.6), "demo champion"
    )
    assert [k for k, ok in missed.items() if not ok] == [
        "demo champion, 1 row c=1: >= 85% of the floor",
        "demo champion, 1 row c=1: >= 7x mlflow native",
        "demo champion, 1 row c=1: p99 <= 1.5 ms",
    ]
    table = bench.markdown_table(_results(bench, 8600, 10000, 1000, 1.2), bench.SERVERS).splitlines()
    assert len(table) == 2 + 4
    assert table[2].startswith("| demo champion | 1 | 1 | 8,600 · 0.60 / 1.20 | 10,000 · 0.30 / 0.60 |")
    assert "| 86% | 8.6× | 0.10 / 0.10 / 0.10 / 0.10 |" in table[2]


def test_floor_app_reads_the_whole_body_and_answers_the_constant_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import serve_floor
    finally:
        sys.path.remove(str(BENCHMARKS))
    answer = b'{"predictions": [{"fraud_probability": 0.25, "is_fraud": 0}]}'
    (tmp_path / "answer.json").write_bytes(answer)
    monkeypatch.setenv(serve_floor.BODY_ENV, str(tmp_path / "answer.json"))
    app = serve_floor.create_floor()
    incoming = [
        {"type": "http.request", "body": b'{"dataframe_split": ', "more_body": True},
        {"type": "http.request", "body": b"{}}", "more_body": False},
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "path": "/invocations"}, receive, send))
    assert incoming == []  # the request body was read to its end
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(answer)).encode()
    assert sent[1]["body"] == answer
