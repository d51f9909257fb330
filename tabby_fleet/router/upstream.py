"""A lean pooled HTTP/1.1 client for the proxy's upstream requests: asyncio protocols and httptools.

Why not aiohttp or httpx: the router forwards every keystroke's completion, and a general-purpose
client's per-request work (header multidicts, cookie and proxy handling, response objects) was most
of the router's CPU; docs/PERFORMANCE.md has the measurements. This client does only what the
proxy needs:

- one idle-connection pool per (scheme, host, port), most recently used first, bounded;
- the request written in one ``write`` (head and body; the proxy has the whole body);
- the response head, then its body as it arrives (chunked transfer decoded, SSE unbuffered), with
  backpressure: reading pauses while too much waits for the client;
- a connection goes back to the pool only after a complete, keep-alive response; cancelling a
  request closes its connection, so the backend sees the client leave at once;
- timeouts: connect, and read (no byte for ``read_timeout`` seconds, first byte included).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

MAX_IDLE_PER_ORIGIN = 256  # idle connections kept per backend; more are closed when released
PAUSE_READING_BYTES = 256 * 1024  # stop reading from a backend while this much waits for the client
MAX_REDIRECTS = 5  # Modal 303s a web request every 150 s; five hops outlast any IDE's patience


class UpstreamError(Exception):
    """The backend could not be reached or broke the response.

    ``before_response``: it failed before a single response byte arrived (connect refused, or a
    pooled connection the backend had already closed), so the request may be sent again.
    """

    def __init__(self, message: str, *, before_response: bool = False) -> None:
        super().__init__(message)
        self.before_response = before_response


class UpstreamTimeout(UpstreamError):
    pass


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a base URL points: parsed once per backend, not per request."""

    scheme: str
    host: str
    port: int
    host_header: bytes
    path_prefix: str

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
        host_header = parts.hostname if default_port else f"{parts.hostname}:{port}"
        return cls(parts.scheme, parts.hostname, port, host_header.encode(), parts.path.rstrip("/"))

    def target_of(self, location: str) -> str | None:
        """The request target for a Location on this origin (absolute or relative), else None."""
        parts = urlsplit(location)
        if parts.scheme or parts.netloc:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            if (parts.scheme, parts.hostname, port) != (self.scheme, self.host, self.port):
                return None
        if not parts.path.startswith("/"):
            return None
        path = parts.path.removeprefix(self.path_prefix) if self.path_prefix else parts.path
        return path + (f"?{parts.query}" if parts.query else "")


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to a backend, reused for one request at a time."""

    def __init__(self, origin: Origin, forget: Callable[[_Connection], None]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle = False  # in the pool, waiting for a request
        self.idle_since = 0.0
        self._forget = forget
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self.buffer: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - the proxy never asks to upgrade
            self._fail(UpstreamError("backend switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"backend sent malformed HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle:
            self._forget(self)  # the backend closed an idle connection: drop it from the pool now
        if not self.complete and self.error is None:
            reason = f": {exc}" if exc else ""
            self.error = UpstreamError(
                f"backend closed the connection before the response was complete{reason}",
                before_response=not self.received_any,
            )
        self._wake()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.buffer.append(body)
        self.buffered += len(body)
        if self.buffered > PAUSE_READING_BYTES and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- used by UpstreamPool ---------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        self.error = error
        self.close()
        self._wake()

    async def wait(self, seconds: float) -> None:
        """Wait until the parser makes progress, at most ``seconds`` (call_later: cheaper than asyncio.timeout)."""
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        timer = loop.call_later(seconds, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def take(self) -> bytes:
        chunk = self.buffer.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < PAUSE_READING_BYTES // 2 and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        return chunk

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class UpstreamResponse:
    """A response whose head has arrived; iterate ``body()`` for the rest, then ``release()``."""

    def __init__(self, pool: UpstreamPool, connection: _Connection, read_timeout: float) -> None:
        self._pool = pool
        self._connection = connection
        self._read_timeout = read_timeout
        self._released = False
        self.status = connection.status
        self.headers = connection.headers

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def drain(self) -> None:
        """Read and drop the rest of the body, then give the connection back."""
        try:
            async for _ in self.body():
                pass
        finally:
            self.release()

    async def body(self) -> AsyncIterator[tuple[bytes, bool]]:
        """Yield ``(chunk, more)`` as the body arrives; ``more`` is False on the response's last chunk.

        Once the response is read whole, the connection goes back to the pool before the last chunk
        is yielded: the client may send its next request the moment it sees that chunk, and that
        request should find the connection idle rather than open a new one.
        """
        connection = self._connection
        while True:
            if connection.buffer:
                chunk = connection.take()
                last = connection.complete and not connection.buffer
                if last:
                    self.release()
                yield chunk, not last
            elif connection.complete:
                self.release()
                return
            elif connection.error is not None:
                raise connection.error
            else:
                try:
                    await connection.wait(self._read_timeout)
                except TimeoutError:
                    raise UpstreamTimeout(f"backend sent nothing for {self._read_timeout:g}s") from None

    def release(self) -> None:
        """Return the connection to the pool if the response was read whole, else close it. Idempotent."""
        if not self._released:
            self._released = True
            self._pool._release(self._connection)


class UpstreamPool:
    """The pool. One per router; ``request()`` is the whole API."""

    def __init__(self, connect_timeout: float, read_timeout: float, keepalive_seconds: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_seconds = keepalive_seconds
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        first_byte_timeout: float | None = None,
        follow_redirects: bool = False,
    ) -> UpstreamResponse:
        """Send the request and wait for the response head.

        ``first_byte_timeout`` bounds the wait for the head (default: the read timeout).
        ``follow_redirects``: answer a same-origin 303 with a GET to its Location, as a browser
        would; Modal answers web requests that run past 150 s that way.
        """
        wait = first_byte_timeout or self.read_timeout
        response = await self._send(origin, method, target, headers, body, wait)
        for _ in range(MAX_REDIRECTS):
            if not (follow_redirects and response.status == 303):
                break
            location = response.header(b"location")
            next_target = origin.target_of(location.decode("latin-1")) if location else None
            if next_target is None:
                break  # another origin: not ours to follow; the proxy passes the 303 on
            await response.drain()
            without_body = [(n, v) for n, v in headers if n not in (b"content-type", b"content-encoding")]
            response = await self._send(origin, "GET", next_target, without_body, b"", wait)
        return response

    async def _send(
        self, origin: Origin, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes, wait: float
    ) -> UpstreamResponse:
        """One exchange up to the response head. Retries once if nothing reached the backend."""
        head = _request_head(origin, method, target, headers, len(body))
        payload = head + body if body else head
        for attempt in (1, 2):
            try:
                connection, reused = await self._checkout(origin)
            except UpstreamError:
                if attempt == 1:
                    continue  # connection refused or timed out: nothing was sent, try once more
                raise
            connection.transport.write(payload)  # type: ignore[union-attr]
            try:
                while not connection.head_done:
                    if connection.error is not None:
                        raise connection.error
                    await connection.wait(wait)
            except TimeoutError:
                connection.close()
                raise UpstreamTimeout(f"backend sent no answer within {wait:g}s") from None
            except UpstreamError as error:
                connection.close()
                # A pooled connection the backend closed while idle: the request never reached it.
                if attempt == 1 and reused and error.before_response:
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            return UpstreamResponse(self, connection, self.read_timeout)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _checkout(self, origin: Origin) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # most recently used: its peer is the least likely to have closed it
            connection.idle = False
            if not connection.closed and now - connection.idle_since < self.keepalive_seconds:
                connection._reset()
                return connection, True
            connection.close()
        return await self._connect(origin), False

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = self._ssl_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin, self._forget), origin.host, origin.port, ssl=context,
                    server_hostname=origin.host if context else None,
                )  # fmt: skip
        except TimeoutError:
            raise UpstreamError(
                f"could not connect to {origin.host}:{origin.port} within {self.connect_timeout:g}s",
                before_response=True,
            ) from None
        except OSError as exc:
            raise UpstreamError(
                f"could not connect to {origin.host}:{origin.port}: {exc.strerror or exc}", before_response=True
            ) from None
        return connection

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # made once: building one costs milliseconds
        return self._ssl

    def _release(self, connection: _Connection) -> None:
        if self._closed or not connection.reusable():
            connection.close()
            return
        idle = self._idle.setdefault(connection.origin, deque())
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        connection.idle = True
        idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        """Drop a pooled connection the backend closed; forget its origin once none is left."""
        connection.idle = False
        idle = self._idle.get(connection.origin)
        if idle is None:
            return
        with contextlib.suppress(ValueError):
            idle.remove(connection)
        if not idle:
            del self._idle[connection.origin]  # local backends get a new port on every restart

    def origins(self) -> int:
        return len(self._idle)

    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks


def _request_head(origin: Origin, method: str, target: str, headers: list[tuple[bytes, bytes]], length: int) -> bytes:
    lines = [f"{method} {origin.path_prefix}{target} HTTP/1.1".encode(), b"host: " + origin.host_header]
    lines += [name + b": " + value for name, value in headers]
    if length or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(b"content-length: " + str(length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"
