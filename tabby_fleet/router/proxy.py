"""The streaming proxy: a raw ASGI handler for Tabby's API paths.

For each request: route it (pure, :mod:`tabby_fleet.fleet.routing`), read its body (bounded), take a
slot at the entry's gate, lease the entry's backend, forward method, path, query, body and
end-to-end headers over the pooled :class:`UpstreamPool`, and stream the answer back chunk by chunk
(SSE event by event). When the client disconnects, the upstream request is cancelled at once: its
connection is closed, so the backend stops generating (the IDE agent aborts on every keystroke).

This is plain ASGI rather than a FastAPI route, and headers stay byte pairs: the router's hot path
skips request parsing, dependency injection and response classes. docs/PERFORMANCE.md has the
measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..fleet.errors import FleetError
from ..fleet.routing import Route, RoutingTable
from ..fleet.settings import FleetSettings
from .backends import Backends
from .gate import EntryGate
from .upstream import Origin, UpstreamError, UpstreamPool, UpstreamTimeout

log = logging.getLogger("tabby_fleet.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded, in either direction. The client's
# Authorization is its team token: the backend never sees it. Host and Content-Length are set anew.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
     b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)  # fmt: skip
NOT_FORWARDED = HOP_BY_HOP | {b"authorization", b"host", b"content-length", b"x-tabby-team", b"x-tabby-model"}
NOT_RETURNED = HOP_BY_HOP | {b"server", b"date"}  # uvicorn writes its own date and server
MAX_CACHED_ORIGINS = 1024  # parsed backend URLs; local backends get a new port on every restart


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class Proxy:
    """Forwards one request at a time; holds the routing table, gates, backends and the session."""

    def __init__(self, settings: FleetSettings, backends: Backends) -> None:
        self.table = RoutingTable(settings)
        self.backends = backends
        router = settings.router
        self.max_body = router.max_body_bytes
        self.read_timeout = router.read_timeout
        self.gates = {
            entry.name: EntryGate(entry.name, entry.capacity, entry.max_queue, router.queue_timeout)
            for entry in settings.entries
        }
        self.pool = UpstreamPool(router.connect_timeout, router.read_timeout, router.upstream_keepalive)
        self._origins: dict[str, Origin] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.pool.close()

    def _origin(self, base_url: str) -> Origin:
        origin = self._origins.get(base_url)
        if origin is None:
            if len(self._origins) >= MAX_CACHED_ORIGINS:
                self._origins.clear()
            origin = self._origins[base_url] = Origin.parse(base_url)
        return origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = team = model = connection = None
        content_length = 0
        forwarded: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:
            if name in NOT_FORWARDED:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                elif name == b"x-tabby-team":
                    team = value.decode("latin-1")
                elif name == b"x-tabby-model":
                    model = value.decode("latin-1")
                elif name == b"content-length" and value.isdigit():
                    content_length = int(value)
                elif name == b"connection":
                    connection = value
                continue
            forwarded.append((name, value))
        if connection:
            forwarded = _drop_connection_listed(forwarded, connection)
        raw_path = scope.get("raw_path") or scope["path"].encode()
        try:
            route = self.table.route(raw_path.decode("latin-1"), authorization, team, model)
            if content_length > self.max_body:
                raise self._too_large()
            body = await self._read_body(receive)
        except FleetError as error:
            await send_error(send, error)
            return
        except ClientGone:
            return
        gate = self.gates[route.entry]
        try:
            await gate.acquire()
        except FleetError as error:
            await send_error(send, error, route.entry)
            return
        try:
            await self._forward(scope, receive, send, route, forwarded, body)
        finally:
            gate.release()

    async def _read_body(self, receive: Receive) -> bytes:
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    raise self._too_large()
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> FleetError:
        return FleetError(
            413,
            "body-too-large",
            f"request body is over {self.max_body} bytes (router.max_body_bytes); send a smaller prompt",
        )

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        forwarded: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
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
            await self._exchange(scope, send, route, forwarded, body)
        except asyncio.CancelledError:
            if not watcher.done() or done:
                raise  # cancelled by the server, not by the client leaving
            task.uncancel()
            log.debug("client left %s %s (entry %s): upstream cancelled", scope["method"], scope["path"], route.entry)
        finally:
            done = True
            watcher.cancel()

    async def _exchange(
        self, scope: Scope, send: Send, route: Route, forwarded: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        started = False
        entry = route.entry
        try:
            async with self.backends.lease(entry) as backend:
                target = route.upstream_path
                query = scope.get("query_string")
                if query:
                    target += "?" + query.decode("latin-1")
                if backend.headers:
                    forwarded += backend.headers
                response = await self.pool.request(
                    self._origin(backend.base_url), scope["method"], target, forwarded, body,
                    first_byte_timeout=backend.first_byte_timeout, follow_redirects=backend.follow_redirects,
                )  # fmt: skip
                try:
                    headers = [(name, value) for name, value in response.headers if name not in NOT_RETURNED]
                    headers.append((b"x-fleet-entry", entry.encode()))
                    headers.append((b"x-fleet-route", route.reason.encode()))
                    await send({"type": "http.response.start", "status": response.status, "headers": headers})
                    started = True
                    more = True
                    async for chunk, more in response.body():
                        await send({"type": "http.response.body", "body": chunk, "more_body": more})
                    if more:  # the body was empty, or its end came after its last chunk
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                finally:
                    response.release()
        except FleetError as error:
            if not started:
                await send_error(send, error, entry)
        except UpstreamError as exc:
            if started:
                # The backend failed mid-answer: end the stream cleanly; the client sees it stop.
                log.warning("entry %s: upstream failed mid-response: %s", entry, exc)
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send_error(send, _upstream_error(entry, exc), entry)


def _drop_connection_listed(headers: list[tuple[bytes, bytes]], connection: bytes) -> list[tuple[bytes, bytes]]:
    """Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1)."""
    listed = {token.strip().lower() for token in connection.split(b",")} - {b"keep-alive", b"close", b""}
    if not listed:
        return headers
    return [(name, value) for name, value in headers if name not in listed]


def _upstream_error(entry: str, exc: UpstreamError) -> FleetError:
    if isinstance(exc, UpstreamTimeout):
        return FleetError(
            504, "backend-timeout", f"the backend for entry {entry!r} timed out: {exc} (router.read_timeout)"
        )
    return FleetError(
        502,
        "backend-unreachable",
        f"the backend for entry {entry!r} failed: {exc}; retry, and check /fleet/health",
        retry_after=1,
    )


async def send_error(send: Send, error: FleetError, entry: str | None = None) -> None:
    headers = error.headers()
    if entry is not None:
        headers.append((b"x-fleet-entry", entry.encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": error.body(), "more_body": False})
