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
from typing import Any

from fraudops import __version__, process
from fraudops.config import Settings, format_validation_error
from fraudops.errors import ConfigError
from fraudops.serving.metrics import MULTIPROC_ENV, Metrics
from fraudops.serving.protocol import (
    CSV_TYPE,
    JSON_TYPE,
    PROTOCOL_KEYS,
    ClientError,
    check_count,
    content_type,
    csv_matrix,
    error_body,
    invocations_body,
    json_matrix,
    may_hold_booleans,
    parse_json,
    records_matrix,
    type_name,
)
from fraudops.serving.reload import ModelHolder
from fraudops.serving.scorer import Scorer
from fraudops.workspace import load_settings

log = logging.getLogger("fraudops.serve")

# How `fraudops serve` hands the workspace to uvicorn's worker processes (not FRAUDOPS_*: those are settings).
WORKSPACE_ENV = "_FRAUDOPS_SERVE_WORKSPACE"
ALIAS_ENV = "_FRAUDOPS_SERVE_ALIAS"

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
            "json_decoder": "orjson",
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
                400, f"expected a transaction (object) or a list of them, got {type_name(doc)}", "body"
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
    process.configure()
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
            "fraudops.serving.app:create_app",
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
