"""The router: one ASGI app, one URL, for the whole fleet.

Tabby's API paths (``/v1/...``, ``/v1beta/...`` and their ``/teams/<team>/`` and ``/models/<entry>/``
prefixed forms) go straight to the streaming :class:`Proxy`, and so does ``/fleet/whoami`` (also under
those prefixes: ``<endpoint>/fleet/whoami``). Everything else is a small FastAPI app (router/endpoints.py):
``/fleet/health`` (liveness for anyone, details for admins), ``/fleet/entries``, ``/fleet/usage``
(router/usage.py), ``/fleet/reload``, ``/fleet/tokens`` (router/token_endpoints.py), ``/metrics``, the
status page ``/fleet/status`` (router/status_page.py) and the OpenAPI docs at ``/fleet/docs``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from fleet import __version__
from fleet.errors import FleetError
from fleet.hub_paths import (
    BAD_PATH,
    BAD_PATH_ERROR,
    ENTRY,
    HEALTH_PATH,
    HUB,
    HUB_AUTHORIZATION_HEADER,
    HUB_SOCKET,
    NOT_FOUND_ERROR,
    PROXIED_PREFIXES,
    REDIRECT_CHAT,
    ROUTER,
    classify,
)  # fmt: skip
from fleet.routing import PATH_HELP, WHOAMI_PATH
from fleet.settings import FleetSettings
from router import endpoints, token_endpoints
from router.backends import Backends
from router.hub_access import HubAccess
from router.hub_relay import redirect_to_chat, relay_to_hub
from router.hub_socket import NOT_HERE, HubSocket
from router.openapi import fleet_openapi
from router.proxy import Proxy, send_error
from router.runtime import FleetRuntime, SettingsLoader
from router.store import SegmentStore


class ProxyDispatch:
    """The router's ASGI app: Tabby API paths to the proxy, the rest (and lifespan) to FastAPI.

    It wraps the FastAPI app from outside, so proxied requests skip FastAPI's middleware stack.
    """

    def __init__(self, app: FastAPI, proxy: Proxy) -> None:
        self.app = app
        self.proxy = proxy
        self.hub_socket = HubSocket(proxy)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            hub = self.proxy.state.hub
            if hub is not None:  # the hub owns the root paths (fleet/hub_paths.py)
                await self.with_hub(hub, path, scope, receive, send)
                return
            if path.startswith(PROXIED_PREFIXES):
                if path.endswith(WHOAMI_PATH):
                    await self.proxy.whoami(scope, receive, send)
                else:
                    await self.proxy(scope, receive, send)
                return
            if path == WHOAMI_PATH:
                await self.proxy.whoami(scope, receive, send)
                return
        elif scope["type"] == "websocket":
            if classify(scope["path"], hub=True, websocket=True) == HUB_SOCKET:
                await self.hub_socket(scope, receive, send)  # says so itself when the hub is off
            else:
                await _no_socket(receive, send)
            return
        await self.app(scope, receive, send)

    async def with_hub(self, hub: HubAccess, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        """An HTTP request to a fleet with a hub: the path table decides (fleet/hub_paths.py)."""
        authorization, repeated = _authorization(scope)
        if repeated:  # one side could read the first, another the last: neither is asked
            await send_error(send, DUPLICATE_AUTHORIZATION)
            return
        foreign = path == HEALTH_PATH and hub.foreign_bearer(authorization)
        where = classify(path, hub=True, ingestion=hub.hub.ingestion, foreign_bearer=foreign)
        if where == ENTRY:
            if path.endswith(WHOAMI_PATH):
                await self.proxy.whoami(scope, receive, send)
            else:
                await self.proxy(scope, receive, send)
        elif where == HUB:
            await relay_to_hub(self.proxy, scope, receive, send)
        elif where == REDIRECT_CHAT:
            await redirect_to_chat(scope, send)
        elif where == ROUTER:
            await self.app(scope, receive, send)
        else:
            await send_error(send, BAD_PATH_ERROR if where == BAD_PATH else NOT_FOUND_ERROR)


DUPLICATE_AUTHORIZATION = FleetError(
    400, "duplicate-authorization",
    f"the request has more than one Authorization (or {HUB_AUTHORIZATION_HEADER}) header; send one of each at most",
)  # fmt: skip


def _authorization(scope: Scope) -> tuple[str | None, bool]:
    """The request's ``Authorization``, and whether it or ``X-Fleet-Hub-Authorization`` comes more than once."""
    found: str | None = None
    seen: set[bytes] = set()
    repeated = False
    for name, value in scope["headers"]:
        if name == b"authorization" or name == b"x-fleet-hub-authorization":
            repeated = repeated or name in seen
            seen.add(name)
            if name == b"authorization":
                found = value.decode("latin-1")
    return found, repeated


async def _no_socket(receive: Receive, send: Send) -> None:
    """A WebSocket anywhere but the hub's /subscriptions: accepted, then closed 4404 with the reason."""
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.accept"})
        reason = "no WebSocket here; the hub's is /subscriptions"
        await send({"type": "websocket.close", "code": NOT_HERE, "reason": reason})


def create_app(
    settings: FleetSettings,
    backends: Backends,
    reload_settings: SettingsLoader | None = None,
    settings_source: str | None = None,
    store: SegmentStore | None = None,
) -> ProxyDispatch:
    """The router for ``settings``; ``reload_settings`` (if given) re-reads them on /fleet/reload or SIGHUP.

    ``settings_source`` names where ``reload_settings`` reads from, for the reload's log line (default:
    the file `fleet` finds without --config: $FLEET_CONFIG, ./fleet.toml, or the packaged example).
    ``store`` keeps usage and tokens across restarts and routers (router/store.py); None: in memory only.
    The runtime (router/runtime.py) is the router's state and its life; the endpoints (router/endpoints.py)
    read it from ``app.state.fleet``; ProxyDispatch sends Tabby's API past FastAPI to the proxy.
    """
    fleet = FleetRuntime(settings, backends, reload_settings, settings_source, store)
    app = FastAPI(
        title="tabby-fleet router",
        version=__version__,
        description="One URL for a fleet of Tabby servers. Tabby's API (/v1/..., /v1beta/...) is "
        f"forwarded to the entry chosen by team token, team header, model header or path: {PATH_HELP}.",
        docs_url="/fleet/docs",
        redoc_url=None,
        openapi_url="/fleet/openapi.json",
        lifespan=fleet.lifespan,
    )
    app.state.fleet = fleet
    app.exception_handler(FleetError)(endpoints.fleet_error)
    app.exception_handler(StarletteHTTPException)(endpoints.http_error)
    app.include_router(endpoints.router)
    app.include_router(token_endpoints.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = fleet_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend its schema
    return ProxyDispatch(app, fleet.proxy)
