"""A programmable raw-socket HTTP/1.1 backend for upstream conformance tests.

No HTTP library: requests are parsed by hand and each test's handler writes whatever bytes it likes
(interim 1xx heads, trailers, oversized heads, bodies cut short, connections dropped). It runs on its
own event loop in a background thread of the test process, so a test can read what it received:
every request is recorded (method, target, headers, body, connection number, position on that
connection) as soon as its head arrives, before the handler runs.

    with rude_backend(handler) as backend:
        ...  # point a router at backend.url; read backend.requests
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

IDLE_SECONDS = 30.0  # the longest a connection waits for (the rest of) a request before it is closed
# What a rude world throws at a connection; anything else raised on it is a bug in a test's handler.
EXPECTED_ERRORS = (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, TimeoutError, ssl.SSLError)


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]  # names lowercased, in arrival order
    conn: int  # the connection's number, 1 for the backend's first connection
    index: int  # 0 for the first request on its connection
    body: bytes = b""
    marks: list[Any] = field(default_factory=list)  # handlers note here what they need: times, byte counts, "done"

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    @property
    def tag(self) -> str | None:
        return self.header("x-tag")


@dataclass
class Connection:
    id: int
    writer: asyncio.StreamWriter
    requests: int = 0
    idle: bool = True  # waiting for its next request


# Writes the answer to `request`; returns True to keep the connection for another request.
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Request, Connection], Awaitable[bool]]


def head(status: int, *headers: tuple[str, str | int]) -> bytes:
    """A response head, exactly the given headers (nothing added)."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def ok(body: bytes, content_type: str = "application/json") -> bytes:
    """A complete keep-alive 200 with a Content-Length."""
    return head(200, ("content-type", content_type), ("content-length", len(body))) + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class RudeBackend:
    """The server. Use :func:`rude_backend` to run one; everything here is safe to call from tests."""

    reads_body = True  # read each request's body before the handler runs

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.requests: list[Request] = []
        self.connections: list[Connection] = []
        self.errors: list[BaseException] = []  # unexpected exceptions: bugs in a handler
        self.port = 0
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rude-backend", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def tagged(self, tag: str) -> list[Request]:
        """Every request that carried ``x-tag: tag``."""
        return [request for request in list(self.requests) if request.tag == tag]

    def only(self, tag: str) -> Request:
        """The one request with this tag (fails if it arrived never or more than once)."""
        seen = self.tagged(tag)
        assert len(seen) == 1, f"the backend saw {len(seen)} requests tagged {tag}: {seen}"
        return seen[0]

    def close_idle(self) -> int:
        """Close every connection waiting for a next request (so the router's pool starts empty)."""

        async def close() -> int:
            idle = [conn for conn in self.connections if conn.idle and not conn.writer.is_closing()]
            for conn in idle:
                conn.writer.close()
            return len(idle)

        return asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context), self._loop
        )
        self._server = future.result(5)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Connection(next(self._ids), writer)
        self.connections.append(conn)
        try:
            while True:
                conn.idle = True
                request = await self._read_request(reader, writer, conn)
                if request is None:
                    return
                conn.idle = False
                if not await self.handler(reader, writer, request, conn):
                    return
                await writer.drain()
        except EXPECTED_ERRORS:
            pass
        except Exception as exc:  # a bug in a handler: the tests report it
            self.errors.append(exc)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> Request | None:
        """The next request, recorded once its head is here; None when the peer closed between requests."""
        async with asyncio.timeout(IDLE_SECONDS):
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    return None
                raise
            lines = raw.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            pairs = (line.split(":", 1) for line in lines[1:] if line)
            headers = [(name.strip().lower(), value.strip()) for name, value in pairs]
            request = Request(method, target, headers, conn.id, conn.requests)
            conn.requests += 1
            self.requests.append(request)
            if (request.header("expect") or "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # as a real server would, before the body
            if self.reads_body:
                request.body = await _read_body(reader, request)
            return request


async def _read_body(reader: asyncio.StreamReader, request: Request) -> bytes:
    if (request.header("transfer-encoding") or "").lower() == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return b"".join(parts)
    length = int(request.header("content-length") or 0)
    return await reader.readexactly(length) if length else b""


@contextlib.contextmanager
def rude_backend(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> Iterator[RudeBackend]:
    """Run a :class:`RudeBackend` on a free loopback port until the block ends."""
    backend = RudeBackend(handler, ssl_context)
    backend.start()
    try:
        yield backend
    finally:
        backend.stop()


# --- appended for tests/test_upstream_attacks.py ----------------------------------------------------


async def read_body(reader: asyncio.StreamReader, request: Request) -> bytes:
    """Read ``request``'s body (Content-Length or chunked) from ``reader``: for :class:`LazyBodyBackend` handlers."""
    return await _read_body(reader, request)


class LazyBodyBackend(RudeBackend):
    """A :class:`RudeBackend` that calls the handler as soon as a request's head is here, its body unread
    (``request.body`` stays b""). The handler reads the body with :func:`read_body` (late, or never:
    an answer before the body, a backend whose receive window fills), else the connection is out of step.
    Expect: 100-continue is answered as :class:`RudeBackend` does."""

    reads_body = False


@contextlib.contextmanager
def lazy_body_backend(handler: Handler) -> Iterator[LazyBodyBackend]:
    """Run a :class:`LazyBodyBackend` on a free loopback port until the block ends."""
    backend = LazyBodyBackend(handler)
    backend.start()
    try:
        yield backend
    finally:
        backend.stop()
