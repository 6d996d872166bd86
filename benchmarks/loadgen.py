"""Load generation for the serving benchmarks: a server alone on one CPU, ``wrk`` (keep-alive) on another.

``WRK_LUA`` rotates the request bodies of the file ``$WRK_BODIES`` (one JSON document per line) and,
like every script here, ends with ``DONE_LUA``, which prints one ``WRKJSON {...}`` line that
:func:`parse_wrk` reads. The server's CPU per request comes from ``/proc`` (:func:`proc_stats`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

DONE_LUA = r"""
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f, "errors": %d, "status_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""
WRK_LUA = (
    r"""
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do
  bodies[#bodies + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, line)
end
local i = 0
request = function()
  i = i % #bodies + 1
  return bodies[i]
end
"""
    + DONE_LUA
)


def parse_wrk(stdout: str) -> dict[str, float]:
    """The figures of one wrk run, from the line ``DONE_LUA`` writes (errors include non-2xx answers)."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise ValueError(f"no WRKJSON line in wrk's output: {stdout[-500:]!r}")
    r = json.loads(line.removeprefix("WRKJSON "))
    seconds = r["duration_us"] / 1e6
    return {
        "requests": r["requests"],
        "req_per_s": r["requests"] / seconds if seconds else 0.0,
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "errors": r["errors"] + r["status_errors"],
    }


def wrk(
    url: str,
    script: Path,
    connections: int,
    seconds: float,
    *,
    cpu: str = "1",
    env: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """One wrk run (one thread, keep-alive) pinned to ``cpu``; ``env`` reaches the Lua script."""
    cmd = ["taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "30s"]
    done = subprocess.run(
        [*cmd, "-s", str(script), url], env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return parse_wrk(done.stdout)


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each figure over several runs (requests and errors: summed)."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k not in ("requests", "errors")}
    out["requests"] = sum(r["requests"] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["runs"] = len(runs)
    return out


# --------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], env: Mapping[str, str], log: Path, *, cpu: str | None = None) -> subprocess.Popen:
    """A server in its own process group (pinned to ``cpu`` when given), its output to ``log``."""
    pinned = ["taskset", "-c", cpu, *cmd] if cpu is not None else cmd
    with open(log, "w") as out:
        return subprocess.Popen(
            pinned, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Until ``url``/ping answers 200; the server's log when it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/ping", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.3)
    raise SystemExit(f"server not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group; SIGKILL when it has not exited 20 s later."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def post(url: str, body: bytes) -> bytes:
    """One JSON POST; an error answer ends the benchmark with its status and body."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{url} answered {e.code}: {e.read()[:500]!r}") from None


# ------------------------------------------------------------------------------------ CPU accounting


def parse_stat(text: str) -> tuple[int, int]:
    """(parent pid, utime + stime clock ticks) from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may hold spaces and parentheses: split after the last.
    """
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def proc_stats() -> dict[int, tuple[int, int]]:
    """{pid: (parent pid, CPU ticks)} of every process (Linux /proc)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                out[int(entry)] = parse_stat(f.read())
    return out


def tree_ticks(stats: Mapping[int, tuple[int, int]], root: int) -> int:
    """CPU ticks of ``root`` and all its descendants, from {pid: (parent pid, ticks)}."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += stats[pid][1] if pid in stats else 0
        todo += children.get(pid, [])
    return total
