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
                       fraud_probability, is_fraud, threshold, model and model_version, plus the top 3
                       ``reasons`` for every alert and every record sent with ``"explain": true``
                       (:mod:`fraudops.modeling.explain`)
    POST /feedback     transactions kind: labels of scored transactions, {"<id column>": id, "label": 0|1}

Transactions kind: /predict and /invocations also take raw transactions, featured online
(:mod:`fraudops.serving.online`). With ``serve.capture``, answered requests (sampled) are captured in the
background, and scored there by ``serve.shadow`` (:mod:`fraudops.serving.capture`, ``.shadow``).

Every response made while a model is loaded carries the header ``X-Model-Version``. Inputs are checked
strictly: exactly the model's features, finite numbers only (JSON ``true``, strings, null, NaN and ±inf are
refused), no key twice in an object, at least one row and at most ``serve.max_rows``, a body of at most
``serve.max_payload_bytes``. Client mistakes get a 4xx with ``{"error_code", "message", "field"}``;
nothing a client sends causes a 500. When ``serve.api_key`` is set, every endpoint but /ping and /health
needs the header ``X-API-Key``. A WebSocket handshake is refused with a 403.

Nothing a client sends stalls the worker: small bodies (the single-row hot path) are parsed and scored on
the event loop, larger ones in a worker thread, the largest parsed in a child process
(:mod:`fraudops.serving.parser`), each after a count of its bytes has bounded the work it can cause; a
body must arrive within ``serve.read_timeout`` seconds (408) and an answer be ready within
``serve.request_timeout`` seconds (504); a request head must arrive within ``serve.header_timeout``
seconds (:mod:`fraudops.serving.connection`). So /ping answers at once while hostile bodies are handled.

Hot reload: each worker process polls ``models:/<name>@<alias>`` every ``serve.reload_interval`` seconds
in a background thread. A new version is downloaded, loaded, checked and made ready completely before
one reference is swapped, so a request is answered either by the old model or by the new one, whole.
A reload that fails keeps the old model serving and is reported in /health and /metrics.

The app is a small ASGI application (no framework on the hot path): one routing table, one error path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fraudops import __version__, process
from fraudops.config import Settings, format_validation_error
from fraudops.errors import ConfigError
from fraudops.serving import connection
from fraudops.serving.capture import Capture
from fraudops.serving.metrics import MULTIPROC_ENV, Metrics
from fraudops.serving.online import OnlineService
from fraudops.serving.parser import ParserProcess
from fraudops.serving.protocol import (
    CSV_TYPE,
    JSON_TYPE,
    PROTOCOL_KEYS,
    ClientError,
    content_type,
    error_body,
    invocations_body,
    invocations_matrix,
    predict_records,
)
from fraudops.serving.reload import ModelHolder
from fraudops.serving.scorer import Scorer
from fraudops.workspace import load_settings

log = logging.getLogger("fraudops.serve")

# How `fraudops serve` hands the workspace to uvicorn's worker processes (not FRAUDOPS_*: those are settings).
WORKSPACE_ENV = "_FRAUDOPS_SERVE_WORKSPACE"
ALIAS_ENV = "_FRAUDOPS_SERVE_ALIAS"

Handler = Callable[..., tuple[int, bytes, str]]  # (headers, body, scorer[, parsed]) -> status, body, type

# Where a request body is parsed and scored, by size. Up to INLINE_BODY_BYTES: on the event loop, well
# under a millisecond (less than a hop to a thread costs; the single-row hot path). Up to
# PROCESS_BODY_BYTES: in a thread, where the GIL goes back to the event loop every few milliseconds (no
# C call of such a parse takes longer). Above: parsed in the parser process (one C call of a 5 MB parse
# can keep the GIL ~100 ms), then scored in the thread; so /ping is answered at once meanwhile.
INLINE_BODY_BYTES = 16 * 1024
PROCESS_BODY_BYTES = 256 * 1024
WORK_THREADS = 1


class ServeApp:
    """A minimal ASGI application (no framework on the hot path)."""

    def __init__(self, settings: Settings, alias: str = "champion", *, watch: bool = True) -> None:
        self.settings = settings
        self.cfg = settings.serve
        self.metrics = Metrics()
        self.holder = ModelHolder(settings, alias, self.metrics)
        self.capture = Capture(settings, self.metrics) if self.cfg.capture.enabled else None
        self.watch = watch
        self.started = time.time()
        self.pool = ThreadPoolExecutor(max_workers=WORK_THREADS, thread_name_prefix="fraudops-work")
        self.parser = ParserProcess()
        # request task -> (perf_counter deadline, status to answer then); the watchdog cancels late ones
        self.deadlines: dict[asyncio.Task, tuple[float, int]] = {}
        self.expired: dict[asyncio.Task, int] = {}
        self.watchdog: asyncio.TimerHandle | None = None
        self.watch_every = max(0.05, min(1.0, self.cfg.read_timeout / 4, self.cfg.request_timeout / 4))
        key = self.cfg.api_key.get_secret_value() if self.cfg.api_key else ""
        self.api_key = key.encode() if key else None
        id_col = settings.data.columns.transaction_id
        self.id_column = id_col if id_col else None
        # online features (raw transactions): None with the reason when this workspace cannot have them
        self.online_off = OnlineService.enabled(settings)
        self.online = OnlineService(settings, self.capture) if self.online_off is None else None
        # path -> (method, handler, needs body, open without API key)
        self.routes: dict[str, tuple[str, Handler, bool, bool]] = {
            "/ping": ("GET", self.ping, False, True),
            "/health": ("GET", self.health, False, True),
            "/version": ("GET", self.version, False, False),
            "/metadata": ("GET", self.metadata, False, False),
            "/metrics": ("GET", self.metrics_page, False, False),
            "/invocations": ("POST", self.invocations, True, False),
            "/predict": ("POST", self.predict, True, False),
            "/feedback": ("POST", self.feedback, True, False),
        }

    # -- lifecycle

    def startup(self) -> None:
        self.holder.check()
        if self.online is not None:
            self.online.start()
        if self.watch:
            self.holder.start()
        if self.capture is not None:
            self.capture.start()

    def shutdown(self) -> None:
        self.holder.stop()
        if self.online is not None:
            self.online.stop()
        if self.capture is not None:
            self.capture.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.close()

    def watch_deadlines(self) -> None:
        """Cancel the requests past their deadline (they answer 408 or 504); again in watch_every."""
        now = time.perf_counter()
        for task, (deadline, status) in list(self.deadlines.items()):
            if now >= deadline:
                del self.deadlines[task]
                self.expired[task] = status
                task.cancel()
        self.watchdog = asyncio.get_running_loop().call_later(self.watch_every, self.watch_deadlines)

    # -- ASGI

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.refuse_websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def refuse_websocket(self, scope: dict, receive: Callable, send: Callable) -> None:
        """This endpoint speaks HTTP only: a WebSocket handshake is closed before it is accepted, which the
        server answers with a 403 (the ASGI way; uvicorn logs an error after a custom denial response)."""
        t0 = time.perf_counter()
        if (await receive())["type"] != "websocket.connect":
            return
        with contextlib.suppress(OSError):  # the client may be gone already
            await send({"type": "websocket.close", "code": 1008})
        self.metrics.observe("websocket", 403, time.perf_counter() - t0)

    async def lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await asyncio.to_thread(self.startup)
                    await self.parser.start()
                except Exception as e:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                self.watchdog = asyncio.get_running_loop().call_later(self.watch_every, self.watch_deadlines)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.watchdog is not None:
                    self.watchdog.cancel()
                await self.parser.stop()
                await asyncio.to_thread(self.shutdown)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: dict, receive: Callable, send: Callable) -> None:
        t0 = time.perf_counter()
        path = scope["path"]
        route = self.routes.get(path)
        endpoint = path if route is not None else "other"
        scorer = None
        task = None
        extra: list[tuple[bytes, bytes]] = []
        try:
            if route is None:
                raise ClientError(
                    404,
                    f"no endpoint {path!r}; see /ping, /health, /version, /metadata, /metrics, "
                    "POST /invocations, POST /predict, POST /feedback",
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
            body = b""
            if has_body:
                task = asyncio.current_task()
                assert task is not None
                self.deadlines[task] = (t0 + self.cfg.read_timeout, 408)
                body = await self.read_body(receive, headers)
            scorer = self.holder.scorer  # one model answers the whole request, and says so
            if len(body) <= INLINE_BODY_BYTES:
                status, payload, media = handler(headers, body, scorer)
            else:
                assert task is not None
                self.deadlines[task] = (t0 + self.cfg.request_timeout, 504)
                status, payload, media = await self.off_loop(path, handler, headers, body, scorer)
        except ClientError as e:
            status, payload, media = e.status, error_body(e.code, e.message, e.field), JSON_TYPE
            extra = e.headers
        except asyncio.CancelledError:
            timed_out = self.expired.pop(task, None) if task is not None else None
            if task is None or timed_out is None:  # not ours: the server is shutting down
                if task is not None:
                    self.deadlines.pop(task, None)
                raise
            task.uncancel()
            status, payload, media = timed_out, self.timeout_body(timed_out), JSON_TYPE
            extra = [(b"connection", b"close")] if timed_out == 408 else []
        except Exception:  # a bug of ours, never a crashed worker
            log.exception("error handling %s %s", scope.get("method"), path)
            status, payload, media = 500, error_body("INTERNAL_ERROR", "internal error (logged)"), JSON_TYPE
        if task is not None:  # no deadline past this point: the watchdog only cancels awaits above
            self.deadlines.pop(task, None)
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

    async def off_loop(
        self, path: str, handler: Handler, headers: dict[bytes, bytes], body: bytes, scorer: Scorer | None
    ) -> tuple[int, bytes, str]:
        """A large body: parsed in the thread, or in the parser process when larger than
        PROCESS_BODY_BYTES; scored and answered in the thread."""
        parsed = None
        if len(body) > PROCESS_BODY_BYTES and not self.raw(body):
            features = tuple(self._need(scorer).features)
            if path == "/invocations":
                mime = self.invocations_type(headers)
                parsed = await self.parser.run("invocations", features, mime, body, self.cfg.max_rows)
            else:
                self.predict_type(headers)
                parsed = await self.parser.run("predict", features, body, self.cfg.max_rows, self.id_column)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, handler, headers, body, scorer, parsed)

    def timeout_body(self, status: int) -> bytes:
        if status == 408:
            return error_body(
                "REQUEST_TIMEOUT",
                f"request body not received within serve.read_timeout={self.cfg.read_timeout:g} seconds",
                "body",
            )
        return error_body(
            "TIMEOUT", f"no answer within serve.request_timeout={self.cfg.request_timeout:g} seconds"
        )

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
            "json_decoder": "orjson",
            "loaded_at": s.loaded_at,
        }
        return 200, json.dumps(out).encode(), JSON_TYPE

    def metrics_page(self, headers: dict, body: bytes, scorer: Scorer | None) -> tuple[int, bytes, str]:
        payload, media = self.metrics.render()
        return 200, payload, media

    def invocations_type(self, headers: dict[bytes, bytes]) -> str:
        raw = headers.get(b"content-type")
        mime = JSON_TYPE if raw == b"application/json" else content_type(headers)
        if mime not in (JSON_TYPE, CSV_TYPE):
            raise ClientError(
                415,
                f"unsupported Content-Type {mime!r}: use {JSON_TYPE} or {CSV_TYPE}",
                "Content-Type",
                code="UNSUPPORTED_MEDIA_TYPE",
            )
        return mime

    def predict_type(self, headers: dict[bytes, bytes]) -> str:
        if headers.get(b"content-type") != b"application/json" and content_type(headers) != JSON_TYPE:
            raise ClientError(
                415, f"/predict takes {JSON_TYPE}", "Content-Type", code="UNSUPPORTED_MEDIA_TYPE"
            )
        return JSON_TYPE

    # -- online features (raw transactions): the body names the timestamp column

    def raw(self, body: bytes) -> bool:
        if self.online is not None:
            return self.online.is_raw(body)
        if self.online_off and self.settings.data.kind == "transactions":
            time_col = self.settings.data.columns.timestamp
            if time_col and json.dumps(time_col).encode() in body:
                raise ClientError(400, self.online_off, time_col)
        return False

    def feedback(
        self, headers: dict, body: bytes, scorer: Scorer | None, parsed: Any = None
    ) -> tuple[int, bytes, str]:
        if self.online is None:
            why = self.online_off or "feedback is for the transactions kind (online features)"
            raise ClientError(400, why, "path")
        self.predict_type(headers)
        return self.online.feedback(body)

    def invocations(
        self, headers: dict, body: bytes, scorer: Scorer | None, parsed: Any = None
    ) -> tuple[int, bytes, str]:
        scorer = self._need(scorer)
        if parsed is None and self.raw(body):
            if self.invocations_type(headers) != JSON_TYPE:
                raise ClientError(415, f"raw transactions are sent as {JSON_TYPE}", "Content-Type")
            assert self.online is not None
            return self.online.invocations(body, scorer)
        if parsed is None:
            parsed = invocations_matrix(
                scorer.schema, self.invocations_type(headers), body, self.cfg.max_rows
            )
        p, flags = scorer.predict(parsed)
        self.metrics.rows.inc(len(p))
        if self.capture is not None:
            self.capture.offer("/invocations", scorer, parsed, p, flags)
        return 200, invocations_body(p, flags), JSON_TYPE

    def predict(
        self, headers: dict, body: bytes, scorer: Scorer | None, parsed: Any = None
    ) -> tuple[int, bytes, str]:
        scorer = self._need(scorer)
        if parsed is None and self.raw(body):
            self.predict_type(headers)
            assert self.online is not None
            return self.online.predict(body, scorer)
        if parsed is None:
            self.predict_type(headers)
            parsed = predict_records(scorer.schema, body, self.cfg.max_rows, self.id_column)
        x, ids, single, explain = parsed
        p, flags = scorer.predict(x)
        self.metrics.rows.inc(len(p))
        if self.capture is not None:
            self.capture.offer("/predict", scorer, x, p, flags, ids)
        # reason codes: every alert, and every record that asked ("explain": true)
        reasons = scorer.explainer.selected(x, flags if explain is None else flags | explain)
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
            if i in reasons:
                item["reasons"] = reasons[i]
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
    process.configure()
    workspace = os.environ.get(WORKSPACE_ENV, ".")
    settings = load_settings(workspace)
    connection.configure(settings.serve.header_timeout)
    return ServeApp(settings, os.environ.get(ALIAS_ENV, "champion"))


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
            "fraudops.serving.app:create_app",
            factory=True,
            host=cfg.host,
            port=cfg.port,
            workers=cfg.workers,
            loop="uvloop",
            http="fraudops.serving.connection:GuardedHttpToolsProtocol",  # httptools, head deadline
            ws="websockets-sansio",  # so that a WebSocket handshake reaches the app, which refuses it
            lifespan="on",
            access_log=False,
            log_level="info",
            server_header=False,
            timeout_keep_alive=75,  # longer than load balancers' idle timeout (60 s on AWS ALB)
            timeout_graceful_shutdown=10,
            timeout_worker_healthcheck=60,  # a worker loading its model on a busy machine needs > 5 s
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
