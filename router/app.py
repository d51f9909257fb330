"""The router: one ASGI app, one URL, for the whole fleet.

Tabby's API paths (``/v1/...``, ``/v1beta/...`` and their ``/teams/<team>/`` and ``/models/<entry>/``
prefixed forms) go straight to the streaming :class:`Proxy`, and so does ``/fleet/whoami`` (also under
those prefixes: ``<endpoint>/fleet/whoami``). Everything else is a small FastAPI app: ``/fleet/health``
(liveness for anyone, details for admins), ``/fleet/entries``, ``/fleet/usage`` (router/usage.py),
``/fleet/reload``, ``/metrics``, the status page ``/fleet/status`` (router/status_page.py) and the
OpenAPI docs at ``/fleet/docs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from fleet import __version__
from fleet.errors import FleetError
from fleet.loading import SettingsError, resolve_config_path
from fleet.routing import MODEL_PREFIX, PATH_HELP, TABBY_API_PREFIXES, TEAM_PREFIX, WHOAMI_PATH
from fleet.settings import FleetSettings
from router.admin import BASIC_CHALLENGE
from router.backends import Backends
from router.changes import describe_changes
from router.observe import Observer
from router.openapi import fleet_openapi
from router.proxy import Proxy, ProxyState, RequestAborted
from router.status_page import render_refusal, render_status
from router.usage import Usage, parse_since

log = logging.getLogger("router")

PROXIED_PREFIXES = (*TABBY_API_PREFIXES, TEAM_PREFIX, MODEL_PREFIX)

SettingsLoader = Callable[[], FleetSettings]


class ProxyDispatch:
    """The router's ASGI app: Tabby API paths to the proxy, the rest (and lifespan) to FastAPI.

    It wraps the FastAPI app from outside, so proxied requests skip FastAPI's middleware stack.
    """

    def __init__(self, app: FastAPI, proxy: Proxy) -> None:
        self.app = app
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith(PROXIED_PREFIXES):
                if path.endswith(WHOAMI_PATH):
                    await self.proxy.whoami(scope, receive, send)
                else:
                    await self.proxy(scope, receive, send)
                return
            if path == WHOAMI_PATH:
                await self.proxy.whoami(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _not_request_aborted(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], RequestAborted))


class EntryState(BaseModel):
    state: str
    in_flight: int | None = None
    queued: int | None = None
    last_error: str | None = None


class FleetHealth(BaseModel):
    status: str
    version: str
    runtime: str
    uptime_seconds: float
    entries: dict[str, EntryState]


class EntryInfo(BaseModel):
    name: str
    model: str
    chat_model: str | None
    aliases: list[str]
    gpu: str
    capacity: int
    max_queue: int
    scaledown_window: int
    teams: list[str]
    default: bool
    runtime: dict[str, Any]
    warm: list[str] = []  # its warm hours, as `fleet plan` and the status page show them


class TeamInfo(BaseModel):
    name: str
    entry: str | None
    allowed_entries: list[str]
    chat_entry: str | None  # where its chat goes (resolved), None: the team has no chat
    uses_tokens: bool
    max_concurrent: int | None
    requests_per_minute: int | None


class FleetTable(BaseModel):
    default_entry: str | None
    tokens_required: bool
    entries: list[EntryInfo]
    teams: list[TeamInfo]


class ReloadResult(BaseModel):
    status: str
    entries: list[str]
    teams: list[str]


def create_app(
    settings: FleetSettings,
    backends: Backends,
    reload_settings: SettingsLoader | None = None,
    settings_source: str | None = None,
) -> ProxyDispatch:
    """The router for ``settings``; ``reload_settings`` (if given) re-reads them on /fleet/reload or SIGHUP.

    ``settings_source`` names where ``reload_settings`` reads from, for the reload's log line (default:
    the file `fleet` finds without --config: $FLEET_CONFIG, ./fleet.toml, or the packaged example).
    """
    usage = Usage(settings)
    observer = Observer(usage)
    proxy = Proxy(settings, backends, observer)
    started = time.monotonic()
    reload_lock = asyncio.Lock()

    def entry_status() -> dict[str, dict[str, Any]]:
        runtime = backends.status()
        status = {}
        for entry in proxy.state.settings.entries:
            gate = proxy.gates[entry.name]
            status[entry.name] = {"state": "cold", **runtime.get(entry.name, {})} | {
                "in_flight": gate.in_flight, "queued": gate.queued,
            }  # fmt: skip
        return status

    observer.watch_state(entry_status)
    observer.watch_usage(usage, backends.status)

    def usage_snapshot(since: datetime) -> dict[str, Any]:
        """What each team and entry used since ``since`` (router/usage.py): /fleet/usage's JSON."""
        return usage.snapshot(since, entry_status())

    async def reload() -> ReloadResult:
        if reload_settings is None:
            raise FleetError(409, "reload-unavailable", "this router was started without a settings source to reload")
        async with reload_lock:
            try:
                new = await asyncio.to_thread(reload_settings)
            except SettingsError as exc:
                problems = "; ".join(exc.problems)
                log.warning("settings reload from %s refused, old settings kept: %s", exc.source, problems)
                raise FleetError(400, "invalid-settings", str(exc), exc.problems) from None
            old = proxy.state.settings
            state = ProxyState(  # built aside: nothing in use changes yet
                new, proxy.state, backends.router_share, loopback_admin=proxy.state.loopback_admin
            )
            await backends.adopt(new)  # may refuse (e.g. on Modal: redeploy instead)
            proxy.adopt(state)
            usage.adopt(new)
        source = settings_source or str(resolve_config_path(None))
        changes = describe_changes(old, new)
        log.info(
            "settings reloaded from %s: %d entries, %d teams; %s", source, len(new.entries), len(new.teams),
            "; ".join(changes) if changes else "nothing changed",
        )  # fmt: skip
        return ReloadResult(status="reloaded", entries=[e.name for e in new.entries], teams=[t.name for t in new.teams])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await backends.start()
        # A broken-off answer is logged by the proxy (with its request id); the ASGI server's own
        # traceback for the exception that aborts the client's connection would only be noise.
        logging.getLogger("uvicorn.error").addFilter(_not_request_aborted)
        loop = asyncio.get_running_loop()
        if reload_settings is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not in the main thread
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload_logged()))
        # Everything loaded so far (FastAPI, pydantic, settings) lives as long as the router. Freezing
        # it keeps the garbage collector from rescanning it every few thousand requests.
        gc.freeze()
        sampler = asyncio.create_task(usage.run_sampler(backends.status))  # container-seconds, cold starts
        try:
            yield
        finally:
            sampler.cancel()
            await backends.close()
            await proxy.close()

    async def _reload_logged() -> None:
        try:
            await reload()
        except FleetError as error:
            log.error("SIGHUP reload refused, old settings kept: %s", error.message)

    app = FastAPI(
        title="tabby-fleet router",
        version=__version__,
        description="One URL for a fleet of Tabby servers. Tabby's API (/v1/..., /v1beta/...) is "
        f"forwarded to the entry chosen by team token, team header, model header or path: {PATH_HELP}.",
        docs_url="/fleet/docs",
        redoc_url=None,
        openapi_url="/fleet/openapi.json",
        lifespan=lifespan,
    )
    app.state.proxy = proxy
    app.state.usage_snapshot = usage_snapshot

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = fleet_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(FleetError)
    async def fleet_error(request: Request, exc: FleetError) -> JSONResponse:
        headers = {k.decode(): v.decode() for k, v in exc.headers() if k != b"content-length"}
        return JSONResponse(exc.payload(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error = FleetError(
                404,
                "unknown-path",
                f"{request.url.path!r} is not served here; Tabby's API lives at {PATH_HELP}; "
                f"the router's own endpoints are /fleet/whoami, /fleet/health, /fleet/entries, /fleet/usage, "
                f"/fleet/status, /fleet/docs and /metrics",
            )
        elif exc.status_code == 405:
            error = FleetError(405, "method-not-allowed", f"{request.method} is not allowed on {request.url.path}")
        else:
            error = FleetError(exc.status_code, "http-error", str(exc.detail))
        return JSONResponse(error.payload(), status_code=error.status, headers=dict(exc.headers or {}))

    def require_admin(request: Request) -> None:
        proxy.state.admin.require(request)

    admin_only = [Depends(require_admin)]

    @app.get("/fleet/health", response_model=FleetHealth, response_model_exclude_none=True, tags=["fleet"])
    async def fleet_health(request: Request) -> FleetHealth:
        """Liveness and each entry's state (cold, starting, ready, failed); load and errors for admins."""
        detailed = proxy.state.admin.allows(request)
        entries = {}
        for name, status in entry_status().items():
            if detailed:
                entries[name] = EntryState(
                    state=status["state"], in_flight=status["in_flight"], queued=status["queued"],
                    last_error=status.get("last_error"),
                )  # fmt: skip
            else:
                entries[name] = EntryState(state=status["state"])
        return FleetHealth(
            status="ok",
            version=__version__,
            runtime=backends.runtime,
            uptime_seconds=round(time.monotonic() - started, 3),
            entries=entries,
        )

    @app.get("/fleet/status", response_class=HTMLResponse, tags=["fleet"])
    async def fleet_status(request: Request) -> HTMLResponse:
        """The status page: entries, teams, costs and refusals today, as HTML that refreshes itself (admin; a
        browser logs in with any user name and an admin token as the password)."""
        try:
            proxy.state.admin.require(request)
        except FleetError as error:
            # A token refused is a 401 here too (RFC 9110 11.6.1): a browser asks for a login only on a 401,
            # so after a 403 it would keep sending a mistyped one until restarted.
            status = 401 if error.code == "admin-token-invalid" else error.status
            challenge = {"WWW-Authenticate": BASIC_CHALLENGE} if status == 401 else {}
            return HTMLResponse(render_refusal(status, error.code, error.message), status, challenge)
        health = (await fleet_health(request)).model_dump(exclude_none=True)
        snapshot = usage_snapshot(parse_since("today", datetime.now(UTC)))
        page = render_status(snapshot, health, proxy.state.settings)
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    @app.get("/fleet/entries", response_model=FleetTable, tags=["fleet"], dependencies=admin_only)
    async def fleet_entries() -> FleetTable:
        """The routing table: every entry with its model, limits, teams and runtime state (admin)."""
        current = proxy.state.settings
        status = entry_status()
        entries = [
            EntryInfo(
                name=entry.name,
                model=entry.model,
                chat_model=entry.chat_model,
                aliases=list(entry.aliases),
                gpu=entry.gpu_text,
                capacity=entry.capacity,
                max_queue=entry.max_queue,
                scaledown_window=entry.scaledown_window,
                teams=[t.name for t in current.teams if t.entry == entry.name],
                default=entry.name == current.router.default_entry,
                runtime=status.get(entry.name, {"state": "cold"}),
                warm=[str(window) for window in entry.warm],
            )
            for entry in current.entries
        ]
        teams = [
            TeamInfo(
                name=t.name, entry=t.entry, allowed_entries=list(t.allowed_entries),
                chat_entry=proxy.state.table.chat_entry(t.name)[0], uses_tokens=bool(t.token_digests),
                max_concurrent=t.max_concurrent, requests_per_minute=t.requests_per_minute,
            )
            for t in current.teams
        ]  # fmt: skip
        return FleetTable(
            default_entry=current.router.default_entry,
            tokens_required=current.any_team_has_tokens,
            entries=entries,
            teams=teams,
        )

    @app.get("/fleet/usage", tags=["fleet"], dependencies=admin_only)
    async def fleet_usage(since: str = "24h") -> JSONResponse:
        """What each team and entry used and cost since ``since`` (admin): ISO 8601, unix seconds, 15m / 1h /
        24h / 7d back from now, or today. In memory per router process; docs/OPERATIONS.md, "Usage and cost"."""
        now = datetime.now(UTC)
        return JSONResponse(usage_snapshot(parse_since(since, now)), headers={"cache-control": "no-store"})

    @app.post("/fleet/reload", response_model=ReloadResult, tags=["fleet"], dependencies=admin_only)
    async def fleet_reload() -> ReloadResult:
        """Re-read the settings (as SIGHUP does). In-flight requests finish on the old table (admin)."""
        return await reload()

    @app.get("/metrics", tags=["fleet"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (admin, unless router.metrics_public)."""
        if not proxy.state.settings.router.metrics_public:
            require_admin(request)
        return Response(generate_latest(observer.registry), media_type=CONTENT_TYPE_LATEST)

    return ProxyDispatch(app, proxy)
