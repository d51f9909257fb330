"""The upstream client against raw loopback servers: reuse, no double sends, timeouts, redirects.

The HTTP protocol is aiohttp's; these tests pin what the router builds on it. The whole router
against misbehaving backends is tests/test_upstream_conformance.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from router.backends import Upstream
from router.upstream import UpstreamClient, UpstreamError, UpstreamTimeout

pytestmark = pytest.mark.reliability  # an attack, fault or bad-input suite: ./dev reliability

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Backend"], Awaitable[None]]


@dataclass
class Backend:
    """A raw-socket backend and what it saw: connections opened and request heads read."""

    server: asyncio.Server
    url: str
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await reader.readexactly(length)
        self.heads.append(head)
        return head


async def serve(handler: Handler) -> Backend:
    backend: Backend

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend.connections += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):  # the client went away
            await handler(reader, writer, backend)

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    backend = Backend(server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    return backend


def ok(body: bytes = b"ok") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> None:
    while True:
        await backend.read_request(reader)
        writer.write(ok())


def new_client(read_timeout: float = 5) -> UpstreamClient:
    return UpstreamClient(connect_timeout=1, read_timeout=read_timeout, keepalive=30)


async def collect(
    client: UpstreamClient, upstream: Upstream, target: str = "/v1/completions", method: str = "POST"
) -> tuple[int, bytes]:
    response = await client.request(upstream, method, target, [], b"{}" if method == "POST" else b"")
    try:
        body = b"".join([chunk async for chunk, _ in response.chunks()])
    finally:
        response.close()
    return response.status, body


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


def test_connections_are_reused() -> None:
    async def main() -> None:
        backend, client = await serve(keep_answering), new_client()
        for _ in range(5):
            assert await collect(client, Upstream(backend.url)) == (200, b"ok")
        assert (backend.connections, len(backend.heads)) == (1, 5)
        await client.close()
        backend.server.close()

    run(main())


def test_post_on_a_pooled_connection_the_backend_drops_is_never_sent_twice() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> None:
        await backend.read_request(reader)
        writer.write(ok())
        await writer.drain()
        await backend.read_request(reader)  # the second request on this connection: read it, then die
        writer.close()

    async def main() -> None:
        backend, client = await serve(handler), new_client()
        assert await collect(client, Upstream(backend.url)) == (200, b"ok")
        with pytest.raises(UpstreamError, match="closed the connection before answering"):
            await collect(client, Upstream(backend.url))
        assert len(backend.heads) == 2  # one copy each: the backend may have acted on the second
        await client.close()
        backend.server.close()

    run(main())


def test_fresh_connection_dropped_before_answer_is_an_error_not_a_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> None:
        await backend.read_request(reader)
        writer.close()  # the backend took the request and died: sending it again could repeat it

    async def main() -> None:
        backend, client = await serve(handler), new_client()
        with pytest.raises(UpstreamError):
            await collect(client, Upstream(backend.url))
        assert (backend.connections, len(backend.heads)) == (1, 1)
        await client.close()
        backend.server.close()

    run(main())


def test_refused_connection_is_an_error_after_one_retry() -> None:
    async def main() -> None:
        backend = await serve(keep_answering)
        backend.server.close()
        await backend.server.wait_closed()
        client = new_client()
        with pytest.raises(UpstreamError, match="could not connect"):
            await collect(client, Upstream(backend.url))
        await client.close()

    run(main())


def test_first_byte_timeout_closes_the_connection() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> None:
        await backend.read_request(reader)
        await reader.read()  # returns when the client closes
        closed.set()

    async def main() -> None:
        backend, client = await serve(handler), new_client(read_timeout=60)
        with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.3s"):
            await collect(client, Upstream(backend.url, first_byte_timeout=0.3))
        await asyncio.wait_for(closed.wait(), 5)  # the backend saw us leave
        await client.close()
        backend.server.close()

    run(main())


def test_a_stall_between_chunks_is_a_timeout_and_closes_the_connection() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> None:
        await backend.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await reader.read()  # stall until the client gives up
        closed.set()

    async def main() -> None:
        backend, client = await serve(handler), new_client(read_timeout=0.3)
        response = await client.request(Upstream(backend.url, first_byte_timeout=10), "POST", "/", [], b"{}")
        chunks = []
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"nothing for 0\.3s"):
            async for chunk, _ in response.chunks():
                chunks.append(chunk)
        response.close()
        assert chunks == [b"hello"]
        assert time.monotonic() - started < 3  # the read timeout, not the first-byte timeout (10 s)
        await asyncio.wait_for(closed.wait(), 5)
        await client.close()
        backend.server.close()

    run(main())


def test_after_the_head_gaps_are_bounded_by_the_read_timeout_not_the_first_byte_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> None:
        await backend.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.8)  # longer than the first-byte timeout, shorter than the read timeout
        writer.write(b"6\r\n world\r\n0\r\n\r\n")

    async def main() -> None:
        backend, client = await serve(handler), new_client(read_timeout=5)
        response = await client.request(Upstream(backend.url, first_byte_timeout=0.3), "POST", "/", [], b"{}")
        assert b"".join([chunk async for chunk, _ in response.chunks()]) == b"hello world"
        response.close()
        await client.close()
        backend.server.close()

    run(main())


def test_chunked_body_is_decoded_and_streamed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> None:
        await backend.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")

    async def main() -> None:
        backend, client = await serve(handler), new_client()
        response = await client.request(Upstream(backend.url), "POST", "/v1/chat/completions", [], b"{}")
        chunks = [chunk async for chunk in response.chunks()]
        response.close()
        assert chunks == [(b"hello", True), (b" world", False)]  # as sent, the last one marked last
        await client.close()
        backend.server.close()

    run(main())


def test_same_origin_303_is_followed_with_get_and_others_are_not() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> None:
        while True:
            line = (await backend.read_request(reader)).split(b"\r\n")[0]
            if line.startswith(b"POST /v1/completions"):
                writer.write(b"HTTP/1.1 303 See Other\r\nlocation: /v1/completions?__modal_function_call_id=fc-1\r\n"
                             b"content-length: 0\r\n\r\n")  # fmt: skip
            elif line.startswith(b"POST /elsewhere"):
                writer.write(
                    b"HTTP/1.1 303 See Other\r\nlocation: https://other.example/x\r\ncontent-length: 0\r\n\r\n"
                )
            else:
                writer.write(ok(b"result"))

    async def main() -> None:
        backend, client = await serve(handler), new_client()
        modal_like = Upstream(backend.url, headers=((b"modal-key", b"k"),), follow_redirects=True)
        assert await collect(client, modal_like) == (200, b"result")
        followed = backend.heads[-1]
        assert followed.startswith(b"GET /v1/completions?__modal_function_call_id=fc-1 HTTP/1.1\r\n")
        assert b"modal-key: k" in followed.lower() and b"content-type" not in followed.lower()
        assert await collect(client, modal_like, "/elsewhere") == (303, b"")  # another origin: passed on
        assert await collect(client, Upstream(backend.url)) == (303, b"")  # not asked to follow
        await client.close()
        backend.server.close()

    run(main())


def test_idle_connection_closed_by_backend_is_not_used_again() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend) -> None:
        await backend.read_request(reader)
        writer.write(ok())
        await writer.drain()
        writer.close()  # like a backend whose keep-alive ran out

    async def main() -> None:
        backend, client = await serve(handler), new_client()
        assert await collect(client, Upstream(backend.url)) == (200, b"ok")
        await asyncio.sleep(0.1)
        assert await collect(client, Upstream(backend.url)) == (200, b"ok")  # a new connection, no error
        assert (backend.connections, len(backend.heads)) == (2, 2)
        await client.close()
        backend.server.close()

    run(main())


def test_url_entries_keep_their_first_byte_timeout() -> None:
    from fleet.settings import FleetSettings
    from router.backends import StaticBackends

    settings = FleetSettings(
        entries=[{"name": "box", "model": "m", "url": "http://gpu-box:8080/", "first_byte_timeout": 7}]
    )
    upstream = StaticBackends(settings).upstream("box")
    assert (upstream.base_url, upstream.first_byte_timeout) == ("http://gpu-box:8080", 7)
