"""Real servers for the stack tests and ``make stack``: an S3 API server (moto), PostgreSQL, MLflow;
Redis for the online features' shared state.

Each runs as its own process on 127.0.0.1 with a free port and is stopped by its pid. Nothing is assumed to
be running; a server that cannot start raises :class:`ServerError` with its log, so a test fails (never
skips). Run ``python tests/servers.py up`` for a stack that stays up until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
PG_USER = "fraudops-pg"
"""Postgres refuses to run as root: as root, the server runs as this (created) unprivileged OS user."""
BUCKET = "fraudops"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class ServerError(RuntimeError):
    """A server did not start; the message carries its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes] | None, log: Path, t: float
) -> None:
    deadline = time.monotonic() + t
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.2)
    raise ServerError(f"{what} did not answer within {t:.0f} s:\n{_tail(log)}")


def _tail(log: Path, n: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    return "(no log)"


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Stop a server by its pid (its process group: MLflow's server has workers)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


# ------------------------------------------------------------------------------------------------ S3


def _atomic_conditional_writes(app: Any) -> Any:
    """Moto checks a write's condition (If-None-Match / If-Match) and then writes, in two steps of a
    threaded server; S3 does both atomically. Conditional writes are serialised here so that the server
    behaves as S3 does under a race (the lock's race test relies on it)."""
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        conditional = "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE") and conditional:
            with lock:
                return list(app(environ, start_response))
        return app(environ, start_response)  # type: ignore[no-any-return]

    return wrapped


def _serve_s3(port: int) -> None:
    """The S3 API server process (moto's server, threaded, with atomic conditional writes)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = _atomic_conditional_writes(DomainDispatcherApplication(create_backend_app))
    server = make_server(HOST, port, app, threaded=True, request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


@dataclasses.dataclass
class S3Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        """What points boto3, s3fs and MLflow's artifact client at this server."""
        return {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def reset(self) -> None:
        """Empty the server (all buckets), as s3fs' own tests do between tests."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        _stop(self.proc)


def start_s3(folder: Path) -> S3Server:
    port = free_port()
    log = folder / "s3.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "s3", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server(proc, port, log)
    try:
        _wait("the S3 API server (moto)", lambda: _http_ok(f"{server.endpoint}/moto-api/"), proc, log, 60)
    except BaseException:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------------------------- Redis


@dataclasses.dataclass
class RedisServer:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def stop(self) -> None:
        _stop(self.proc)


def _redis_ok(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def start_redis(folder: Path) -> RedisServer:
    """Debian's redis-server in the foreground, no persistence (``make system-deps`` installs it)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    log = folder / "redis.log"
    cmd = [
        binary,
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
    ]
    with log.open("wb") as out:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise ServerError(f"cannot start {binary}: {e} (make system-deps installs redis-server)") from e
    server = RedisServer(proc, port, log)
    try:
        _wait("redis-server", lambda: _redis_ok(port), proc, log, 30)
    except BaseException:
        server.stop()
        raise
    return server


# ---------------------------------------------------------------------------------------- PostgreSQL


def _as_user(user: str | None, cmd: list[str]) -> list[str]:
    """``cmd`` run as the unprivileged ``user`` (root only; otherwise as ourselves)."""
    if user is None:
        return cmd
    return ["su", user, "-s", "/bin/sh", "-c", " ".join(_quote(c) for c in cmd)]


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _pg_user() -> str | None:
    """None when not root; as root, the unprivileged OS user Postgres runs as (created when missing)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", PG_USER], check=True)
    return PG_USER


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise ServerError(
        f"PostgreSQL's {name} is not installed: install PostgreSQL (Debian: apt-get install postgresql) "
        "so that initdb, pg_ctl and postgres are on PATH or under /usr/lib/postgresql/*/bin"
    )


@dataclasses.dataclass
class Postgres:
    data: Path
    port: int
    user: str | None

    @property
    def log(self) -> Path:
        return self.data / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{database}"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _as_user(self.user, [_pg_bin("pg_ctl"), "-D", str(self.data), *args]),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data} -c listen_addresses={HOST} -c fsync=off"
        out = self._ctl("-o", opts, "-l", str(self.log), "-w", "-t", "60", "start")
        if out.returncode != 0:
            raise ServerError(f"PostgreSQL did not start: {out.stdout}{out.stderr}\n{_tail(self.log)}")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop (fast: connections are terminated) and start again on the same port and data."""
        self.stop()
        self.start()

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data, ignore_errors=True)


def start_postgres() -> Postgres:
    """A new cluster in a fresh folder (owned by the server's user), trust authentication, on loopback."""
    user = _pg_user()
    data = Path(tempfile.mkdtemp(prefix="fraudops-pg-"))
    if user is not None:
        shutil.chown(data, user)
    out = subprocess.run(
        _as_user(user, [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise ServerError(f"initdb failed: {out.stdout}{out.stderr}")
    pg = Postgres(data, free_port(), user)
    try:
        pg.start()
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)
        raise
    return pg


# ------------------------------------------------------------------------------------------- MLflow


@dataclasses.dataclass
class MlflowServer:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        _stop(self.proc)


def start_mlflow(pg: Postgres, s3: S3Server, folder: Path, database: str = "mlflow") -> MlflowServer:
    """``mlflow server`` on PostgreSQL, artifacts on the S3 server (s3://fraudops/mlflow-artifacts)."""
    pg.create_database(database)
    _ensure_bucket(s3)
    port = free_port()
    log = folder / "mlflow.log"
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "2",
        # a loaded machine imports MLflow in a worker slower than uvicorn's 5 s health check allows, which
        # then kills and restarts the worker for ever
        "--uvicorn-opts",
        "--timeout-worker-healthcheck 120",
        "--backend-store-uri",
        pg.url(database),
        "--artifacts-destination",
        f"s3://{BUCKET}/mlflow-artifacts",
    ]
    # no MLflow job runner (GenAI evaluation jobs, trace roll-ups; unused here): 3 fewer polling processes
    env = {**os.environ, **s3.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = MlflowServer(proc, port, log)
    try:
        _wait("the MLflow server", lambda: _http_ok(f"{server.uri}/health"), proc, log, 180)
    except BaseException:
        server.stop()
        raise
    return server


def _ensure_bucket(s3: S3Server) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint, **_boto_credentials())
    already = (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists)
    with contextlib.suppress(*already):
        client.create_bucket(Bucket=BUCKET)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


# -------------------------------------------------------------------------------------- the stack


@dataclasses.dataclass
class Stack:
    s3: S3Server
    pg: Postgres
    mlflow: MlflowServer

    def env(self) -> dict[str, str]:
        """Everything a fraudops process needs to use the stack."""
        return {**self.s3.env(), "FRAUDOPS_REGISTRY__TRACKING_URI": self.mlflow.uri}


@contextlib.contextmanager
def stack(folder: Path) -> Iterator[Stack]:
    """S3, PostgreSQL and MLflow over them, stopped (by pid) on the way out; logs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    s3 = start_s3(folder)
    try:
        pg = start_postgres()
        try:
            mlflow = start_mlflow(pg, s3, folder)
            try:
                yield Stack(s3, pg, mlflow)
            finally:
                mlflow.stop()
        finally:
            pg.remove()
    finally:
        s3.stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _announce(st: Stack, folder: Path) -> Path:
    env = folder / "env"
    env.write_text("".join(f"export {k}={v}\n" for k, v in st.env().items()))
    print(f"# up: S3 API {st.s3.endpoint}, PostgreSQL port {st.pg.port}, MLflow {st.mlflow.uri}")
    print(f"# point a workspace s3://{BUCKET}/<prefix> at it (these lines are also in {env}):")
    print(env.read_text(), end="", flush=True)
    return env


def main(argv: list[str]) -> int:
    """``s3 PORT``: the S3 API server process; ``up [FOLDER]``: the stack until Ctrl-C; ``demo [FOLDER]``:
    the stack, ``fraudops demo s3://fraudops/demo`` on it, then down."""
    if argv[:1] == ["s3"] and len(argv) == 2:
        _serve_s3(int(argv[1]))
        return 0
    if argv[:1] in (["up"], ["demo"]) and len(argv) <= 2:
        folder = Path(argv[1] if len(argv) == 2 else tempfile.mkdtemp(prefix="fraudops-stack-")).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, _interrupt)
        with contextlib.suppress(KeyboardInterrupt), stack(folder) as st:
            _announce(st, folder)
            if argv[0] == "demo":
                fraudops = str(Path(sys.executable).with_name("fraudops"))
                cmd = [fraudops, "demo", f"s3://{BUCKET}/demo", "--force"]
                print(f"# {' '.join(cmd[1:])}", flush=True)
                return subprocess.run(cmd, env={**os.environ, **st.env()}, check=False).returncode
            print("# Ctrl-C stops it", flush=True)
            while True:
                time.sleep(3600)
        return 0
    print("usage: servers.py up [FOLDER] | demo [FOLDER] | s3 PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""real-servers.md: without these Chromium keeps trying to reach outside hosts on this closed network."""


def chromium() -> str:
    """Debian's Chromium, or a failure naming the package (`make system-deps` installs it)."""
    if not Path(CHROMIUM).exists():
        raise ServerError(
            f"{CHROMIUM} not found: install the Debian package 'chromium' (make system-deps does)"
        )
    return CHROMIUM


class Dashboard:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def stop(self) -> None:
        _stop(self.proc)


def start_dashboard(workspace: str, folder: Path, env: dict[str, str] | None = None) -> Dashboard:
    """`fraudops dashboard` as a process of its own on a free loopback port."""
    port = free_port()
    log = folder / "dashboard.log"
    cmd = [
        sys.executable,
        "-m",
        "fraudops.cli",
        "dashboard",
        "-w",
        workspace,
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    url = f"http://{HOST}:{port}"
    try:
        _wait("fraudops dashboard", lambda: _http_ok(f"{url}/health"), proc, log, 60)
    except ServerError:
        _stop(proc)
        raise
    return Dashboard(proc, url, log)
