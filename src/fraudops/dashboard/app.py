"""``fraudops dashboard``: a local web app over what the pipeline records (Starlette, Jinja2, uPlot).

Read-only apart from analysts' verdicts on alerts. Pages: overview (latest decision, champion), executions,
champion and its promotions / rollbacks, monitoring over time (charts drawn by the vendored uPlot, no CDN),
the latest report, and the alert queue. When ``serve.api_key`` is set every page but /health and /static
needs it, as for ``fraudops serve``: the ``X-API-Key`` header, or the cookie the /login form sets.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import math
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fraudops.config import Settings
from fraudops.dashboard import data, verdicts
from fraudops.data.schema import CUSTOMER
from fraudops.errors import FraudopsError
from fraudops.workspace.storage import Storage

COOKIE = "fraudops_api_key"
OPEN_PATHS = ("/health", "/static/", "/login")


@functools.cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fraudops.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = _num
    return env


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


class Dashboard:
    """The app's state: settings, storage, caches; one method per page."""

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings, self.storage = settings, storage
        cfg = settings.dashboard
        self.mlflow_url = cfg.mlflow_url
        key = settings.serve.api_key.get_secret_value() if settings.serve.api_key else ""
        self.api_key = key.encode() if key else None
        self.mlflow_cache = data.Cache(cfg.cache_seconds)
        self.files = data.Cache(cfg.cache_seconds)

    def page(self, name: str, **context: Any) -> HTMLResponse:
        html = _templates().get_template(f"{name}.html.j2").render(page=name, **context)
        return HTMLResponse(html)

    async def threaded(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    # -- pages
    async def overview(self, request: Request) -> Response:
        decision = await self.threaded(data.latest_decision, self.storage)
        champ = await self.threaded(self._champion)
        return self.page("overview", decision=decision, champion=champ)

    def _champion(self) -> dict[str, Any]:
        return self.mlflow_cache.get(
            "champion", functools.partial(data.champion, self.settings, self.mlflow_url)
        )

    async def executions(self, request: Request) -> Response:
        rows = await self.threaded(
            lambda: self.mlflow_cache.get(
                "executions",
                functools.partial(data.executions, self.settings, self.storage, self.mlflow_url),
            )
        )
        return self.page("executions", executions=rows)

    async def champion(self, request: Request) -> Response:
        return self.page("champion", champion=await self.threaded(self._champion))

    async def monitoring(self, request: Request) -> Response:
        mon = await self.threaded(data.monitoring, self.storage, self.files)
        charts = {"runs": mon["series"], "days": mon.get("day_series", {})}
        return self.page("monitoring", monitoring=mon, charts=json.dumps(charts))

    async def decision(self, request: Request) -> Response:
        decision = await self.threaded(data.latest_decision, self.storage)
        return self.page("decision", decision=decision)

    async def report(self, request: Request) -> Response:
        html = await self.threaded(data.report, self.storage)
        if html is None:
            return self.page("missing", what="monitoring report", hint="run `fraudops monitor`")
        return HTMLResponse(html)

    def _scored(self) -> Any:
        return data.scored(self.storage, self.settings, self.files)

    async def alerts(self, request: Request) -> Response:
        def load() -> tuple[list[dict[str, Any]], int]:
            done = verdicts.read(self.storage)
            return data.alert_queue(self._scored(), done, self.settings.dashboard.alert_limit), done.height

        queue, n_done = await self.threaded(load)
        return self.page("alerts", alerts=queue, n_verdicts=n_done)

    async def alert(self, request: Request) -> Response:
        tx = request.path_params["tx"]

        def load() -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
            scored = self._scored()
            row = data.find(scored, tx)
            return row, [] if row is None else data.card_transactions(scored, row.get(CUSTOMER))

        row, card = await self.threaded(load)
        if row is None:
            return self.page("missing", what=f"transaction {tx}", hint="not among the scored transactions")
        reasons = [row[c] for c in data.REASONS if row.get(c)]
        shown = {k: v for k, v in row.items() if k != data.KEY}
        return self.page("alert", tx=tx, row=shown, reasons=reasons, card=card)

    async def verdict(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("a JSON object is expected")
            tx, verdict, analyst = (str(body.get(k) or "") for k in ("transaction_id", "verdict", "analyst"))
        except ValueError as e:
            return JSONResponse({"error": f"request body: {e}"}, status_code=400)

        def store() -> dict[str, Any] | None:
            row = data.find(self._scored(), tx)
            return (
                None if row is None else verdicts.record(self.storage, self.settings, row, verdict, analyst)
            )

        try:
            entry = await self.threaded(store)
        except verdicts.VerdictError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        if entry is None:
            return JSONResponse(
                {"error": f"transaction {tx!r} is not among the scored ones"}, status_code=404
            )
        return JSONResponse(entry, status_code=201)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.page("login", error=None)
        form = urllib.parse.parse_qs((await request.body()).decode(errors="replace"))
        given = (form.get("api_key") or [""])[0].encode()
        if self.api_key is None or not hmac.compare_digest(given, self.api_key):
            page = self.page("login", error="invalid API key")
            page.status_code = 401
            return page
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, given.decode(), httponly=True, samesite="strict")
        return response

    # -- access
    def allowed(self, request: Request) -> bool:
        if self.api_key is None or request.url.path.startswith(OPEN_PATHS):
            return True
        given = request.headers.get("x-api-key") or request.cookies.get(COOKIE) or ""
        return hmac.compare_digest(given.encode(), self.api_key)


class _Guard(BaseHTTPMiddleware):
    """The API key check, and user or infrastructure errors as a page instead of a traceback."""

    def __init__(self, app: Any, dashboard: Dashboard) -> None:
        super().__init__(app)
        self.dashboard = dashboard

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not self.dashboard.allowed(request):
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": "missing or invalid X-API-Key"}, status_code=401)
            return RedirectResponse("/login", status_code=303)
        try:
            return await call_next(request)
        except FraudopsError as e:
            page = self.dashboard.page("missing", what="data", hint=str(e))
            page.status_code = 503
            return page


def create_app(settings: Settings, storage: Storage) -> Starlette:
    d = Dashboard(settings, storage)
    static = StaticFiles(packages=[("fraudops.dashboard", "static")])
    routes = [
        Route("/", d.overview),
        Route("/executions", d.executions),
        Route("/champion", d.champion),
        Route("/monitoring", d.monitoring),
        Route("/decision", d.decision),
        Route("/report", d.report),
        Route("/alerts", d.alerts),
        Route("/alerts/{tx}", d.alert),
        Route("/api/verdicts", d.verdict, methods=["POST"]),
        Route("/health", d.health),
        Route("/login", d.login, methods=["GET", "POST"]),
        Mount("/static", static, name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Guard, dashboard=d)])


def run(settings: Settings, storage: Storage, *, host: str | None = None, port: int | None = None) -> None:
    """Serve the dashboard until interrupted."""
    import uvicorn

    cfg = settings.dashboard
    uvicorn.run(
        create_app(settings, storage),
        host=host or cfg.host,
        port=port or cfg.port,
        log_level="warning",
        access_log=False,
    )
