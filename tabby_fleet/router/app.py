"""The router: one ASGI app, one URL, for the whole fleet.

Tabby's API paths (``/v1/...``, ``/v1beta/...`` and their ``/teams/<team>/`` and ``/models/<entry>/``
prefixed forms) go straight to the streaming :class:`Proxy`. Everything else is a small FastAPI app:
``/fleet/health``, ``/fleet/entries`` and the OpenAPI docs at ``/fleet/docs``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..fleet.errors import FleetError
from ..fleet.routing import MODEL_PREFIX, PATH_HELP, TABBY_API_PREFIXES, TEAM_PREFIX
from ..fleet.settings import FleetSettings
from .backends import Backends
from .proxy import Proxy

PROXIED_PREFIXES = (*TABBY_API_PREFIXES, TEAM_PREFIX, MODEL_PREFIX)


class ProxyDispatch:
    """The router's ASGI app: Tabby API paths to the proxy, the rest (and lifespan) to FastAPI.

    It wraps the FastAPI app from outside, so proxied requests skip FastAPI's middleware stack.
    """

    def __init__(self, app: FastAPI, proxy: Proxy) -> None:
        self.app = app
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROXIED_PREFIXES):
            await self.proxy(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class EntryState(BaseModel):
    state: str
    in_flight: int
    queued: int
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


class TeamInfo(BaseModel):
    name: str
    entry: str | None
    allowed_entries: list[str]
    uses_tokens: bool


class FleetTable(BaseModel):
    default_entry: str | None
    tokens_required: bool
    entries: list[EntryInfo]
    teams: list[TeamInfo]


def create_app(settings: FleetSettings, backends: Backends) -> ProxyDispatch:
    proxy = Proxy(settings, backends)
    started = time.monotonic()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await proxy.start()
        await backends.start()
        # Everything loaded so far (FastAPI, pydantic, settings) lives as long as the router. Freezing
        # it keeps the garbage collector from rescanning it every few thousand requests.
        gc.freeze()
        try:
            yield
        finally:
            await backends.close()
            await proxy.close()

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

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error = FleetError(
                404,
                "unknown-path",
                f"{request.url.path!r} is not served here; Tabby's API lives at {PATH_HELP}; "
                f"the router's own endpoints are /fleet/health, /fleet/entries and /fleet/docs",
            )
        elif exc.status_code == 405:
            error = FleetError(405, "method-not-allowed", f"{request.method} is not allowed on {request.url.path}")
        else:
            error = FleetError(exc.status_code, "http-error", str(exc.detail))
        return JSONResponse(error.payload(), status_code=error.status, headers=dict(exc.headers or {}))

    def entry_state(name: str, status: dict[str, dict[str, Any]]) -> EntryState:
        runtime = status.get(name, {"state": "cold"})
        gate = proxy.gates[name]
        return EntryState(
            state=runtime["state"],
            in_flight=gate.in_flight,
            queued=gate.queued,
            last_error=runtime.get("last_error"),
        )

    @app.get("/fleet/health", response_model=FleetHealth, tags=["fleet"])
    async def fleet_health() -> FleetHealth:
        """Liveness, and each entry's state: cold, starting, ready or failed."""
        status = backends.status()
        return FleetHealth(
            status="ok",
            version=__version__,
            runtime=backends.runtime,
            uptime_seconds=round(time.monotonic() - started, 3),
            entries={entry.name: entry_state(entry.name, status) for entry in settings.entries},
        )

    @app.get("/fleet/entries", response_model=FleetTable, tags=["fleet"])
    async def fleet_entries() -> FleetTable:
        """The routing table: every entry with its model, limits, teams and runtime state."""
        status = backends.status()
        entries = [
            EntryInfo(
                name=entry.name,
                model=entry.model,
                chat_model=entry.chat_model,
                aliases=list(entry.aliases),
                gpu=entry.gpu,
                capacity=entry.capacity,
                max_queue=entry.max_queue,
                scaledown_window=entry.scaledown_window,
                teams=[t.name for t in settings.teams if t.entry == entry.name],
                default=entry.name == settings.router.default_entry,
                runtime=status.get(entry.name, {"state": "cold"}),
            )
            for entry in settings.entries
        ]
        teams = [
            TeamInfo(
                name=t.name,
                entry=t.entry,
                allowed_entries=list(t.allowed_entries),
                uses_tokens=bool(t.token_sha256),
            )
            for t in settings.teams
        ]
        return FleetTable(
            default_entry=settings.router.default_entry,
            tokens_required=settings.any_team_has_tokens,
            entries=entries,
            teams=teams,
        )

    return ProxyDispatch(app, proxy)
