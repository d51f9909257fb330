"""The router's own endpoints (``/fleet/...`` and ``/metrics``), their JSON shapes and its error answers.

Each endpoint is a plain function of the request that reads the one :class:`FleetRuntime` from
``request.app.state.fleet``; admin endpoints depend on :func:`require_admin`. ``create_app`` includes
:data:`router` and registers :func:`fleet_error` and :func:`http_error`, so whatever the router refuses
outside the proxy is a JSON error like the proxy's. The proxied paths and ``/fleet/whoami`` never come
here (router/app.py's ProxyDispatch sends them to the proxy).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleet import __version__
from fleet.errors import FleetError
from fleet.hub import HUB_BACKEND
from fleet.routing import PATH_HELP
from router.admin import BASIC_CHALLENGE
from router.runtime import FleetRuntime
from router.status_page import render_refusal, render_status
from router.usage_report import parse_by, parse_since, series


class EntryState(BaseModel):
    state: str
    in_flight: int | None = None
    queued: int | None = None
    last_error: str | None = None
    backend: str | None = None  # admins: what runs it, e.g. "tabby" or "stand-in" (local, no GPU)


class FleetHealth(BaseModel):
    status: str
    version: str
    runtime: str
    uptime_seconds: float
    entries: dict[str, EntryState]
    # Admins: where the router keeps its usage, whether it can write there, its size (router/state.py).
    store: dict[str, Any] | None = None
    # With [hub] on: the hub's state (cold, starting, ready, failed); admins also see what runs it, its
    # snapshots and its last error (the runtime's hub_status()).
    hub: dict[str, Any] | None = None


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
    changes: list[str]  # router/changes.py's lines: entries, teams, tokens by label; never a secret


def fleet_of(request: Request) -> FleetRuntime:
    """The router's runtime, which create_app puts in the app's state."""
    fleet: FleetRuntime = request.app.state.fleet
    return fleet


def require_admin(request: Request) -> None:
    """FastAPI dependency: return if the request may see admin endpoints, else raise 401/403."""
    fleet_of(request).state.admin.require(request)


def require_admin_change(request: Request) -> None:
    """FastAPI dependency of what changes the fleet: an admin's Bearer token, not sent for another site, a
    JSON body (router/admin.py, AdminAuth.require_change); else 401/403/415."""
    fleet_of(request).state.admin.require_change(request)


admin_only = [Depends(require_admin)]
admin_change = [Depends(require_admin_change)]
router = APIRouter(tags=["fleet"])


@router.get("/fleet/health", response_model=FleetHealth, response_model_exclude_none=True)
async def fleet_health(request: Request) -> FleetHealth:
    """Liveness and each entry's state (cold, starting, ready, failed); load and errors for admins."""
    fleet = fleet_of(request)
    detailed = fleet.state.admin.allows(request)
    entries: dict[str, EntryState] = {}
    for name, status in fleet.entry_status().items():
        if detailed:
            entries[name] = EntryState(
                state=status["state"], in_flight=status["in_flight"], queued=status["queued"],
                last_error=status.get("last_error"), backend=status.get("backend"),
            )  # fmt: skip
        else:
            entries[name] = EntryState(state=status["state"])
    return FleetHealth(
        status="ok",
        version=__version__,
        runtime=fleet.backends.runtime,
        uptime_seconds=round(fleet.uptime(), 3),
        entries=entries,
        store=await fleet.state_sync.health() if detailed else None,
        hub=_hub_health(fleet, detailed),
    )


def _hub_health(fleet: FleetRuntime, detailed: bool) -> dict[str, Any] | None:
    if not fleet.state.settings.hub.enabled:
        return None
    status = fleet.backends.hub_status() or {"state": fleet.backends.backend_state(HUB_BACKEND)}
    return dict(status) if detailed else {"state": status["state"]}


@router.get("/fleet/status", response_class=HTMLResponse)
async def fleet_status(request: Request, since: str = "today", team: str | None = None) -> HTMLResponse:
    """The status page: entries, teams, costs and refusals since ``since`` (what /fleet/usage takes, default
    today) with charts over that window, as HTML that refreshes itself; ``team`` keeps one team's rows
    (admin; a browser logs in with any user name and an admin token as the password). A bad ``since`` or
    ``team`` is a 400 page with the advice."""
    fleet = fleet_of(request)
    try:
        fleet.state.admin.require(request)
    except FleetError as error:
        # A token refused is a 401 here too (RFC 9110 11.6.1): a browser asks for a login only on a 401,
        # so after a 403 it would keep sending a mistyped one until restarted.
        status = 401 if error.code == "admin-token-invalid" else error.status
        challenge = {"WWW-Authenticate": BASIC_CHALLENGE} if status == 401 else {}
        return HTMLResponse(render_refusal(status, error.code, error.message), status, challenge)
    try:
        start = parse_since(since, datetime.now(UTC))
        snapshot = fleet.usage_snapshot(start, by="token", team=team)
    except FleetError as error:
        return HTMLResponse(render_refusal(error.status, error.code, error.message), error.status)
    health = (await fleet_health(request)).model_dump(exclude_none=True)
    chart_series = series(fleet.usage, start, team)
    page = render_status(snapshot, health, fleet.state.settings, chart_series, since=since, team=team)
    return HTMLResponse(page, headers={"cache-control": "no-store"})


@router.get("/fleet/entries", response_model=FleetTable, dependencies=admin_only)
async def fleet_entries(request: Request) -> FleetTable:
    """The routing table: every entry with its model, limits, teams and runtime state (admin)."""
    fleet = fleet_of(request)
    state = fleet.state
    current = state.settings
    status = fleet.entry_status()
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
            chat_entry=state.table.chat_entry(t.name)[0], uses_tokens=bool(t.token_digests),
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


@router.get("/fleet/usage", dependencies=admin_only)
async def fleet_usage(request: Request, since: str = "24h", by: str = "team", team: str | None = None) -> JSONResponse:
    """What each team and entry used and cost since ``since`` (admin): ISO 8601, unix seconds, 15m / 1h /
    24h / 7d back from now, or today; ``by=token`` adds a row per developer, ``team`` keeps one team's rows.
    The whole fleet's: every router and every restart, through the store (docs/OPERATIONS.md, "Usage and cost")."""
    fleet = fleet_of(request)
    snapshot = fleet.usage_snapshot(parse_since(since, datetime.now(UTC)), parse_by(by), team)
    return JSONResponse(snapshot, headers={"cache-control": "no-store"})


@router.post("/fleet/reload", response_model=ReloadResult, dependencies=admin_change)
async def fleet_reload(request: Request) -> ReloadResult:
    """Re-read the settings (as SIGHUP does) and say what changed. In-flight requests finish on the old table
    (admin, Bearer token, JSON body: ``{}``)."""
    new, changes = await fleet_of(request).reload()
    return ReloadResult(
        status="reloaded", entries=[e.name for e in new.entries], teams=[t.name for t in new.teams], changes=changes
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (admin, unless router.metrics_public)."""
    fleet = fleet_of(request)
    if not fleet.state.settings.router.metrics_public:
        require_admin(request)
    return Response(generate_latest(fleet.observer.registry), media_type=CONTENT_TYPE_LATEST)


async def fleet_error(request: Request, exc: FleetError) -> JSONResponse:
    """A FleetError raised by an endpoint or a dependency: its JSON error, status and headers."""
    headers = {k.decode(): v.decode() for k, v in exc.headers() if k != b"content-length"}
    return JSONResponse(exc.payload(), status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (no such path, method not allowed, ...) as the router's JSON errors."""
    if exc.status_code == 404:
        error = FleetError(
            404,
            "unknown-path",
            f"{request.url.path!r} is not served here; Tabby's API lives at {PATH_HELP}; "
            f"the router's own endpoints are /fleet/whoami, /fleet/health, /fleet/entries, /fleet/usage, "
            f"/fleet/tokens, /fleet/status, /fleet/docs and /metrics",
        )
    elif exc.status_code == 405:
        error = FleetError(405, "method-not-allowed", f"{request.method} is not allowed on {request.url.path}")
    else:
        error = FleetError(exc.status_code, "http-error", str(exc.detail))
    return JSONResponse(error.payload(), status_code=error.status, headers=dict(exc.headers or {}))
