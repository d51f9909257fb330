"""The streaming proxy: a raw ASGI handler for Tabby's API paths.

For each request: check the request head's limits, route it (pure, :mod:`fleet.routing`), read its body (bounded),
take the team's and the entry's slots, lease the entry's backend, forward method, path, query, body and end-to-end
headers with the :class:`UpstreamClient` (aiohttp), and stream the answer back chunk by chunk (SSE event by event).
When the client disconnects, the upstream request is cancelled at once: its connection is closed, so the backend stops
generating (the IDE agent aborts on every keystroke). When the backend breaks off an answer already under way, the
client's connection is aborted (:class:`RequestAborted`), so a truncated answer never looks whole.

Settings can be reloaded while requests run: a request keeps the routing table, gate and limiter it started with;
the next request uses the new ones (:meth:`Proxy.adopt`).

The IDE agent's health check (``/v1/health``, and ``/v1beta/server_setting``) does no model work: it takes no gate slot
and counts against no team limit, so a busy entry or a team over its rate keeps its IDEs "connected" (docs/ERRORS.md).
When a team's chat goes to another entry than the one that answers its health check, the health answer advertises that
entry's chat model, as the IDE enables chat only when health names one.

Plain ASGI rather than a FastAPI route, headers as byte pairs: the hot path skips request parsing,
dependency injection and response classes (measurements: docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fleet.errors import FleetError
from fleet.hub import HUB_BACKEND
from fleet.routing import HEALTH, SERVER_SETTING, ChatAdvert, Route, RoutingTable, has_dot_segments
from fleet.settings import FleetSettings, RouterOptions, Team
from router.admin import AdminAuth
from router.backends import Backends
from router.cold_start import ColdStarts, advertise_chat, cold_health, cold_plans, with_chat_advert
from router.gate import EntryBusy, EntryGate, GateLimits
from router.hub_access import HubAccess, team_tokens_from_env
from router.observe import CLIENT_LEFT, Observer, RequestRecord
from router.request_head import HOP_BY_HOP, RequestHead
from router.team_limits import TeamLimiter
from router.upstream import UpstreamClient, UpstreamError, UpstreamResponse, UpstreamTimeout
from router.usage import EVENT_BODY_MAX, EVENT_TYPES, EVENTS, USAGE_PATHS, WHOAMI  # WHOAMI: whoami's route and kind

log = logging.getLogger("tabby_fleet.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# uvicorn writes its own date and server. X-Frame-Options: the hub's pages are the IDE's chat panel, an iframe.
NOT_RETURNED = HOP_BY_HOP | {b"server", b"date", b"x-frame-options"}
ROUTER_STOPPING = FleetError(
    503, "router-stopping", "the router is shutting down (a restart or a redeploy); retry in a few seconds",
    retry_after=5,
)  # fmt: skip
# A lease of a running backend does not suspend (microseconds); one that took longer waited for a start.
START_WAIT_MIN = 0.001


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class RequestAborted(Exception):
    """The backend broke off an answer already under way. Raised to the ASGI server, which then
    closes the client's connection: the client sees an incomplete response, never a clean end."""


class ProxyState:
    """Everything derived from one version of the settings. A reload builds a new one (touching nothing in use)
    and :meth:`Proxy.adopt` puts it in place in one step; a request keeps the state it started with."""

    def __init__(
        self, settings: FleetSettings, previous: ProxyState | None = None, router_share: int = 1,
        *, loopback_admin: bool = True,
    ) -> None:  # fmt: skip
        """``router_share``: how many router processes share the fleet (Modal's router_max_containers);
        each takes its share of every entry's capacity and queue and every team's limits, rounded up."""
        router = settings.router
        self.settings = settings
        self.table = RoutingTable(settings)
        # A loopback client is an admin only where one can be (not on Modal: docs/CONFIGURATION.md).
        self.loopback_admin = loopback_admin
        self.admin = AdminAuth(settings, loopback_admin=loopback_admin)
        self.max_body = router.max_body_bytes
        self.body_timeout = router.body_timeout
        # The router answers GET /v1beta/server_setting itself: Tabby without its webserver says
        # telemetry on, and every IDE would then report to app.tabbyml.com.
        self.server_setting = json.dumps({"disable_client_side_telemetry": router.disable_client_telemetry}).encode()
        self.max_headers = router.max_headers
        self.max_header_bytes = router.max_header_bytes
        self.max_url_bytes = router.max_url_bytes
        # Gates and limiters of surviving entries and teams are the same objects (their counts of
        # requests in flight stay true); their new limits are applied by :meth:`Proxy.adopt`.
        self.gates: dict[str, EntryGate]  # declared here: the type checker reads previous.gates before the assignment
        self.limiters: dict[str, TeamLimiter]
        old_gates = previous.gates if previous else {}
        self.gate_limits = {
            entry.name: GateLimits(
                _share(entry.capacity, router_share), _share(entry.max_queue, router_share), router.queue_timeout
            )
            for entry in settings.entries
        }
        self.gates = {name: old_gates.get(name) or EntryGate(name, limits) for name, limits in self.gate_limits.items()}
        old_limiters = previous.limiters if previous else {}
        self.teams = {
            team.name: _team_share(team, router_share)
            for team in settings.teams
            if team.max_concurrent or team.requests_per_minute
        }
        self.limiters = {name: old_limiters.get(name) or TeamLimiter(team) for name, team in self.teams.items()}
        self.cold_plans = cold_plans(settings.entries)
        version = "v" + settings.modal.tabby_image.rpartition(":")[2].removeprefix("v")  # the pinned Tabby
        self.cold_health = {entry.name: cold_health(entry, version) for entry in settings.entries}
        # The hub's gate (router/hub_access.py); its team tokens come from the environment (a Secret), never the file.
        self.hub = (
            HubAccess(settings.hub, self.table, self.admin, team_tokens_from_env()) if settings.hub.enabled else None
        )


def _client_options(router: RouterOptions) -> dict[str, Any]:
    """What the upstream client takes from the router options, at start and at every reload."""
    return {
        "connect_timeout": router.connect_timeout, "read_timeout": router.read_timeout,
        "keepalive": router.upstream_keepalive, "ca_bundle": router.upstream_ca_bundle,
    }  # fmt: skip


def _share(limit: int, routers: int) -> int:
    return -(-limit // routers)  # rounded up: the sum over the routers never falls below the limit


def _team_share(team: Team, routers: int) -> Team:
    if routers == 1:
        return team
    return team.model_copy(
        update={
            "max_concurrent": team.max_concurrent and _share(team.max_concurrent, routers),
            "requests_per_minute": team.requests_per_minute and _share(team.requests_per_minute, routers),
        }
    )


class Proxy:
    """Forwards requests; holds the current ProxyState, the backends, the client and the observer."""

    def __init__(self, settings: FleetSettings, backends: Backends, observer: Observer | None = None) -> None:
        self.state = ProxyState(
            settings, router_share=backends.router_share, loopback_admin=backends.runtime != "modal"
        )
        self.backends = backends
        self.cold = ColdStarts(backends)
        self.observer = observer or Observer()
        self.client = UpstreamClient(**_client_options(settings.router))

    @property
    def gates(self) -> dict[str, EntryGate]:
        return self.state.gates

    def adopt(self, state: ProxyState) -> None:
        """Make ``state`` current, then let its gates, its limiters and the client adopt their part. All in
        one step of the event loop: no request sees half of it."""
        self.state = state
        for name, gate in state.gates.items():
            gate.adopt(state.gate_limits[name])  # admits queued requests when capacity rose
        for name, limiter in state.limiters.items():
            limiter.adopt(state.teams[name])
        self.client.adopt(**_client_options(state.settings.router))

    async def close(self) -> None:
        await self.client.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state  # this request's version of the settings, even if they are reloaded
        head = RequestHead(scope)
        record = RequestRecord(head.request_id, scope["method"], scope["path"])
        try:
            await self._handle(scope, receive, send, state, head, record)
        except asyncio.CancelledError:
            if record.status:
                raise
            # The server is stopping and its graceful shutdown ran out while this request waited (for a
            # start, a cold_wait, a slot): it is told so, not given the server's bare 500, and ends.
            await refuse(send, ROUTER_STOPPING, record, record.entry if record.entry != "-" else None)
        finally:
            self.observer.finish(record)

    async def whoami(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET [/teams/<t>][/models/<e>]/fleet/whoami``: what this caller's requests select and why, or
        the refusal a completion with the same token, headers and prefixes would get."""
        state = self.state
        head = RequestHead(scope)
        record = RequestRecord(head.request_id, scope["method"], scope["path"])
        record.reason = record.kind = WHOAMI
        try:
            try:
                if scope["method"] != "GET":
                    raise FleetError(405, "method-not-allowed", f"{scope['method']} is not allowed here; use GET")
                check_head(state, scope, head)
                answer = state.table.whoami(head.raw_path.decode("latin-1"), head.authorization, head.team, head.model)
            except FleetError as error:
                await refuse(send, error, record)
                return
            record.team, record.entry, record.status = answer["team"] or "-", answer["entry"], 200
            body = json.dumps(answer, indent=2).encode()
            headers = [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"), (b"x-request-id", record.request_id.encode()),
            ]  # fmt: skip
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            self.observer.finish(record)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, state: ProxyState, head: RequestHead, record: RequestRecord
    ) -> None:
        try:
            check_head(state, scope, head)
            route = state.table.route(head.raw_path.decode("latin-1"), head.authorization, head.team, head.model)
            record.team, record.entry, record.reason = route.team or "-", route.entry, route.reason
            record.kind = route.kind or USAGE_PATHS.get(route.upstream_path)
            if head.content_length > state.max_body:
                raise _too_large(state.max_body)
            body = await read_body(receive, state.max_body, state.body_timeout)
            if record.kind is EVENTS and scope["method"] == "POST":
                record.event = event_type(body)
        except FleetError as error:
            await refuse(send, error, record)
            return
        except ClientGone:
            record.status = CLIENT_LEFT
            return
        kind = route.kind
        if route.user is not None:  # Tabby's event log names who it served; usage counts by its token label
            head.forwarded.append((b"x-tabby-user", route.user.encode()))
            record.label = route.user.partition("/")[2] or "-"
        if kind is SERVER_SETTING and scope["method"] == "GET":
            record.status = 200
            await _send_json(send, state.server_setting, route.entry, record.request_id)
            return
        if kind is HEALTH or kind is SERVER_SETTING:  # no model work: no slot, no team limit
            advert = state.table.health_advert(route) if kind is HEALTH and scope["method"] != "HEAD" else None
            backend_state = self.backends.backend_state(route.entry) if kind is HEALTH else "ready"
            if advert is not None and advert.webserver:
                self.backends.warm(HUB_BACKEND)  # the IDE will open the chat panel: the hub starts now
            if backend_state == "failed":  # the IDE shows the failure (disconnected, 502); a retry starts
                self.cold.warm(state.cold_plans, route.entry)
                await refuse(send, self.cold.failed(route.entry), record, route.entry)
                return
            if backend_state != "ready":
                await self._answer_cold_health(scope, send, state, route, record, advert)
                return
            await self.forward(scope, receive, send, route, head.forwarded, body, record, advert)
            return
        # The team's limits first: a team over its rate is told at once, not after a cold wait.
        limiter = state.limiters.get(route.team) if route.team else None
        if limiter is not None:
            try:
                limiter.acquire()
            except FleetError as error:
                await refuse(send, error, record, route.entry)
                return
        try:
            if route.entry in state.cold_plans:
                cold = await self.cold.route(state.cold_plans, state.table, route, record, receive, self._entries_now)
                if cold is None:  # the client left while it waited
                    return
                route = cold
            gate = state.gates[route.entry]
            try:
                waited = await gate.acquire()
            except FleetError as error:
                if isinstance(error, EntryBusy):
                    record.queue_seconds = error.waited
                await refuse(send, error, record, route.entry)
                return
            if waited:
                record.queue_seconds = waited
            try:
                await self.forward(scope, receive, send, route, head.forwarded, body, record, None)
            finally:
                gate.release()
        finally:
            if limiter is not None:
                limiter.release()

    def _entries_now(self) -> dict[str, EntryGate]:
        """The entries of the current settings (a request keeps its own state; a reload may have run)."""
        return self.state.gates

    async def _answer_cold_health(
        self, scope: Scope, send: Send, state: ProxyState, route: Route, record: RequestRecord,
        advert: ChatAdvert | None,
    ) -> None:  # fmt: skip
        """Health of an entry that is not ready, answered at once from settings (the IDE stays connected),
        while the entry starts in the background."""
        backend = "starting" if self.cold.warm(state.cold_plans, route.entry) == "starting" else "cold"
        health = with_chat_advert(state.cold_health[route.entry], advert)
        record.status = 200
        extra = ((b"cache-control", b"no-store"), (b"x-fleet-backend", backend.encode()),
                 (b"x-fleet-route", route.reason.encode()))  # fmt: skip
        await _send_json(
            send, json.dumps(health).encode(), route.entry, record.request_id, extra, head=scope["method"] == "HEAD"
        )

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, route: Route, forwarded: list[tuple[bytes, bytes]],
        body: bytes, record: RequestRecord, advert: ChatAdvert | None,
    ) -> None:  # fmt: skip
        """Send upstream and stream back; a client disconnect cancels this task and the upstream."""
        task = asyncio.current_task()
        assert task is not None
        done = False

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not done:
                task.cancel()

        watcher = asyncio.create_task(watch_disconnect())
        try:
            await self._exchange(scope, send, route, forwarded, body, record, advert)
        except asyncio.CancelledError:
            if not watcher.done() or done:
                raise  # cancelled by the server, not by the client leaving
            task.uncancel()
            record.status = CLIENT_LEFT
        finally:
            done = True
            watcher.cancel()

    async def _exchange(
        self, scope: Scope, send: Send, route: Route, forwarded: list[tuple[bytes, bytes]], body: bytes,
        record: RequestRecord, advert: ChatAdvert | None,
    ) -> None:  # fmt: skip
        entry = route.entry
        upstream_started = 0.0
        leasing = time.perf_counter()
        try:
            async with self.backends.lease(entry) as backend:
                target = route.upstream_path
                query = scope.get("query_string")
                if query:
                    target += "?" + query.decode("latin-1")
                upstream_started = time.perf_counter()
                if upstream_started - leasing > START_WAIT_MIN:
                    record.start_seconds = upstream_started - leasing
                response = await self.client.request(backend, scope["method"], target, forwarded, body)
                try:
                    if advert is None:
                        await self._stream_back(send, response, route, record)
                    else:
                        await self._send_advertised(send, response, route, record, advert)
                finally:
                    response.close()
        except FleetError as error:
            if not upstream_started and time.perf_counter() - leasing > START_WAIT_MIN:
                record.start_seconds = time.perf_counter() - leasing  # waited for a start, then refused
            await refuse(send, error, record, entry)
        except UpstreamError as exc:
            self.observer.upstream_error(entry, exc.code.removeprefix("backend-"))
            log.warning("entry %s: %s (id %s): %s%s", entry, exc.code, record.request_id, exc,
                        f" [{exc.detail}]" if exc.detail else "")  # fmt: skip
            await refuse(send, _upstream_error(entry, exc), record, entry)
        finally:
            if upstream_started:
                record.upstream_seconds = time.perf_counter() - upstream_started

    async def _stream_back(self, send: Send, response: UpstreamResponse, route: Route, record: RequestRecord) -> None:
        """The response head as soon as it is here, then each chunk as it arrives (SSE event by event)."""
        headers = []
        for raw_name, value in response.raw_headers:
            name = raw_name.lower()  # ASGI's spelling; aiohttp keeps the backend's
            if name not in NOT_RETURNED:
                headers.append((name, value))
        headers.append((b"x-fleet-entry", route.entry.encode()))
        headers.append((b"x-fleet-route", route.reason.encode()))
        headers.append((b"x-request-id", record.request_id.encode()))
        if record.fallback_from is not None:
            headers.append((b"x-fleet-fallback", record.fallback_from.encode()))
        record.status = response.status
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        more = True
        try:
            async for chunk, more in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
        except UpstreamError as exc:
            kind = "midstream-timeout" if isinstance(exc, UpstreamTimeout) else "midstream"
            self.observer.upstream_error(route.entry, kind)
            log.warning("entry %s: answer broken off, client connection aborted (id %s): %s%s",
                        route.entry, record.request_id, exc, f" [{exc.detail}]" if exc.detail else "")  # fmt: skip
            raise RequestAborted(str(exc)) from None
        if more:  # the body was empty, or its end came after its last chunk
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_advertised(
        self, send: Send, response: UpstreamResponse, route: Route, record: RequestRecord, advert: ChatAdvert
    ) -> None:
        """A health answer with the team's chat model in it (the IDE enables chat only when health names
        one). Read whole (it is a few hundred bytes); anything but a plain 200 JSON object passes as is."""
        chunks = []
        try:
            async for chunk, _ in response.chunks():
                chunks.append(chunk)
        except UpstreamError as exc:
            self.observer.upstream_error(route.entry, "midstream")
            log.warning("entry %s: health answer broken off (id %s): %s", route.entry, record.request_id, exc)
            raise RequestAborted(str(exc)) from None
        body = b"".join(chunks)
        headers = []
        encoded = False
        for raw_name, value in response.raw_headers:
            name = raw_name.lower()
            encoded = encoded or name == b"content-encoding"
            if name not in NOT_RETURNED and name != b"content-length":
                headers.append((name, value))
        if response.status == 200 and not encoded:
            body = advertise_chat(body, advert)
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"x-fleet-entry", route.entry.encode()))
        headers.append((b"x-fleet-route", route.reason.encode()))
        headers.append((b"x-request-id", record.request_id.encode()))
        record.status = response.status
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def event_type(body: bytes) -> str | None:
    """The type of a POST /v1/events body (view, select, dismiss; a few hundred bytes), for usage counts;
    None for anything else (not JSON, no string "type", another type, a body past EVENT_BODY_MAX)."""
    if len(body) > EVENT_BODY_MAX:  # parsing it on the event loop would cost more than the event is worth
        return None
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return None
    kind = event.get("type") if isinstance(event, dict) else None
    return kind if kind in EVENT_TYPES else None


def check_head(state: ProxyState, scope: Scope, head: RequestHead) -> None:
    if head.count > state.max_headers:
        raise FleetError(
            431, "too-many-headers", f"{head.count} headers is over router.max_headers ({state.max_headers})"
        )
    if head.size > state.max_header_bytes:
        raise FleetError(
            431, "headers-too-large",
            f"headers total {head.size} bytes, over router.max_header_bytes ({state.max_header_bytes})",
        )  # fmt: skip
    if len(head.raw_path) + len(scope.get("query_string", b"")) > state.max_url_bytes:
        raise FleetError(414, "url-too-long", f"the URL is over router.max_url_bytes ({state.max_url_bytes}) bytes")
    if has_dot_segments(scope["path"]):  # decoded, so percent-encoded dots count too: %2e%2e is '..'
        raise FleetError(400, "bad-path", "the path has (encoded) dot segments; send a normalised path")


async def read_body(receive: Receive, limit: int, seconds: float) -> bytes:
    """The whole request body, which must arrive within ``seconds`` of asking for it (408 after)."""
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()  # most bodies (a completion is a few KB) arrive in one message
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise FleetError(
            408, "body-timeout",
            f"the request body did not arrive whole within {seconds:g}s (router.body_timeout); send it whole",
        ) from None  # fmt: skip


def _too_large(limit: int) -> FleetError:
    return FleetError(
        413, "body-too-large", f"request body is over {limit} bytes (router.max_body_bytes); send a smaller prompt"
    )


def _upstream_error(entry: str, exc: UpstreamError) -> FleetError:
    backend = "the hub" if entry == HUB_BACKEND else f"the backend for entry {entry!r}"
    if isinstance(exc, UpstreamTimeout):
        return FleetError(504, exc.code, f"{backend} timed out: {exc}")
    return FleetError(502, exc.code, f"{backend} failed: {exc}; retry, and check /fleet/health", retry_after=1)


async def refuse(send: Send, error: FleetError, record: RequestRecord, entry: str | None = None) -> None:
    """Answer with ``error``, noting it (code, and the team and entry it identified) for the log and metrics."""
    record.status = error.status
    record.code = error.code
    if error.team is not None:
        record.team = error.team
    if error.entry is not None and record.entry == "-":
        record.entry = error.entry
    await send_error(send, error, entry, record.request_id, record.fallback_from)


async def _send_json(
    send: Send, body: bytes, entry: str, request_id: str, extra: tuple[tuple[bytes, bytes], ...] = (),
    *, head: bool = False,
) -> None:  # fmt: skip
    """A 200 JSON answer from the router itself (``head``: the headers only, for a HEAD request)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-fleet-entry", entry.encode()), (b"x-request-id", request_id.encode()), *extra]  # fmt: skip
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})


async def send_error(
    send: Send, error: FleetError, entry: str | None = None, request_id: str | None = None,
    fallback_from: str | None = None,
) -> None:  # fmt: skip
    headers = error.headers()
    if entry is not None:
        headers.append((b"x-fleet-entry", entry.encode()))
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))
    if fallback_from is not None:  # a refusal by the fallback: the IDE's admin sees why that entry answered
        headers.append((b"x-fleet-fallback", fallback_from.encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": error.body(), "more_body": False})
