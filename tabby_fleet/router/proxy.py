"""The streaming proxy: a raw ASGI handler for Tabby's API paths.

For each request: route it (pure, :mod:`tabby_fleet.fleet.routing`), read its body (bounded), take a
slot at the entry's gate, lease the entry's backend, forward method, path, query, body and
end-to-end headers over one pooled aiohttp session, and stream the answer back chunk by chunk
(SSE event by event). When the client disconnects, the upstream request is cancelled at once: its
connection is closed, so the backend stops generating (the IDE agent aborts on every keystroke).

This is plain ASGI rather than a FastAPI route: the router's hot path skips request parsing,
dependency injection and response classes. docs/PERFORMANCE.md has the measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

from ..fleet.errors import FleetError
from ..fleet.routing import RoutingTable
from ..fleet.settings import FleetSettings
from .backends import Backends
from .gate import EntryGate

log = logging.getLogger("tabby_fleet.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded, in either direction. The client's
# Authorization is its team token: the backend never sees it. Host is set for the backend's URL.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
     "te", "trailer", "transfer-encoding", "upgrade"}
)  # fmt: skip
NOT_FORWARDED = HOP_BY_HOP | {"authorization", "host", "content-length", "x-tabby-team", "x-tabby-model"}
NOT_RETURNED = HOP_BY_HOP | {"server", "date"}  # uvicorn writes its own date and server


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class Proxy:
    """Forwards one request at a time; holds the routing table, gates, backends and the session."""

    def __init__(self, settings: FleetSettings, backends: Backends) -> None:
        self.table = RoutingTable(settings)
        self.backends = backends
        self.max_body = settings.router.max_body_bytes
        router = settings.router
        self.gates = {
            entry.name: EntryGate(entry.name, entry.capacity, entry.max_queue, router.queue_timeout)
            for entry in settings.entries
        }
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=router.connect_timeout, sock_read=router.read_timeout
        )
        self.read_timeout = router.read_timeout
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,  # the gates bound concurrency per entry; the pool must never be the bottleneck
            limit_per_host=0,
            ttl_dns_cache=300,
            keepalive_timeout=60,  # reuse connections across an IDE's pauses between keystrokes
            enable_cleanup_closed=False,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            auto_decompress=False,  # bytes pass through as the backend encoded them
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = team = model = connection = None
        content_length = 0
        forwarded: list[tuple[str, str]] = []
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1")
            if name in NOT_FORWARDED:
                if name == "authorization":
                    authorization = raw_value.decode("latin-1")
                elif name == "x-tabby-team":
                    team = raw_value.decode("latin-1")
                elif name == "x-tabby-model":
                    model = raw_value.decode("latin-1")
                elif name == "content-length" and raw_value.isdigit():
                    content_length = int(raw_value)
                elif name == "connection":
                    connection = raw_value.decode("latin-1")
                continue
            forwarded.append((name, raw_value.decode("latin-1")))
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
        route: Any,
        forwarded: list[tuple[str, str]],
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
        self, scope: Scope, send: Send, route: Any, forwarded: list[tuple[str, str]], body: bytes
    ) -> None:
        started = False
        entry = route.entry
        try:
            async with self.backends.lease(entry) as upstream:
                url = upstream.base_url + route.upstream_path
                query = scope.get("query_string")
                if query:
                    url += "?" + query.decode("latin-1")
                headers = forwarded + list(upstream.headers) if upstream.headers else forwarded
                assert self.session is not None, "Proxy.start() was not called"
                async with self.session.request(
                    scope["method"], url, headers=headers, data=body or None, allow_redirects=False
                ) as response:
                    response_headers = [
                        (name.lower(), value)
                        for name, value in response.raw_headers
                        if name.decode("latin-1").lower() not in NOT_RETURNED
                    ]
                    response_headers.append((b"x-fleet-entry", entry.encode()))
                    response_headers.append((b"x-fleet-route", route.reason.encode()))
                    await send({"type": "http.response.start", "status": response.status, "headers": response_headers})
                    started = True
                    async for chunk in response.content.iter_any():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        except FleetError as error:
            if not started:
                await send_error(send, error, entry)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if started:
                # The backend failed mid-answer: end the stream cleanly; the client sees it stop.
                log.warning("entry %s: upstream failed mid-response: %r", entry, exc)
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send_error(send, _upstream_error(entry, exc, self.read_timeout), entry)


def _drop_connection_listed(headers: list[tuple[str, str]], connection: str) -> list[tuple[str, str]]:
    """Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1)."""
    listed = {token.strip().lower() for token in connection.split(",")} - {"keep-alive", "close", ""}
    if not listed:
        return headers
    return [(name, value) for name, value in headers if name not in listed]


def _upstream_error(entry: str, exc: BaseException, read_timeout: float) -> FleetError:
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError):
        return FleetError(
            502,
            "backend-unreachable",
            f"the backend for entry {entry!r} did not accept the request ({exc.__class__.__name__}); "
            f"it may have crashed: retry, and check /fleet/health",
            retry_after=1,
        )
    if isinstance(exc, TimeoutError):
        return FleetError(
            504,
            "backend-timeout",
            f"the backend for entry {entry!r} sent nothing for {read_timeout:g}s (router.read_timeout)",
        )
    return FleetError(502, "backend-error", f"the backend for entry {entry!r} failed: {exc.__class__.__name__}: {exc}")


async def send_error(send: Send, error: FleetError, entry: str | None = None) -> None:
    headers = error.headers()
    if entry is not None:
        headers.append((b"x-fleet-entry", entry.encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": error.body(), "more_body": False})
