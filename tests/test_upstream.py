"""The upstream pool against real loopback servers: reuse, retries, timeouts, redirects, chunking."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tabby_fleet.router.upstream import Origin, UpstreamError, UpstreamPool, UpstreamTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, Origin, list[int]]:
    connections: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await handler(reader, writer)

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Origin.parse(f"http://127.0.0.1:{port}"), connections


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await reader.readexactly(length)
    return head


def ok(body: bytes = b"ok") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def collect(pool: UpstreamPool, origin: Origin, **kwargs: object) -> tuple[int, bytes]:
    response = await pool.request(origin, "POST", "/v1/completions", [], b"{}", **kwargs)  # type: ignore[arg-type]
    body = b"".join([chunk async for chunk, _ in response.body()])
    response.release()
    return response.status, body


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_connections_are_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(ok())

    async def main() -> None:
        server, origin, connections = await serve(handler)
        pool = UpstreamPool(1, 5, 30)
        for _ in range(5):
            assert await collect(pool, origin) == (200, b"ok")
        assert len(connections) == 1 and pool.idle_connections() == 1
        await pool.close()
        server.close()

    run(main())


def test_pooled_connection_closed_by_backend_is_retried_once() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok())
        await writer.drain()
        await read_request(reader)  # the second request on this connection: close without answering
        writer.close()

    async def main() -> None:
        server, origin, connections = await serve(handler)
        pool = UpstreamPool(1, 5, 30)
        assert await collect(pool, origin) == (200, b"ok")
        assert await collect(pool, origin) == (200, b"ok")  # retried on a new connection
        assert len(connections) == 2
        await pool.close()
        server.close()

    run(main())


def test_fresh_connection_dropped_before_answer_is_an_error_not_a_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()  # the backend took the request and died: sending it again could repeat it

    async def main() -> None:
        server, origin, connections = await serve(handler)
        pool = UpstreamPool(1, 5, 30)
        with pytest.raises(UpstreamError):
            await collect(pool, origin)
        assert len(connections) == 1
        server.close()

    run(main())


def test_refused_connection_is_an_error() -> None:
    async def main() -> None:
        server, origin, _ = await serve(lambda r, w: asyncio.sleep(0))
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamError) as caught:
            await collect(UpstreamPool(1, 5, 30), origin)
        assert caught.value.before_response and "could not connect" in str(caught.value)

    run(main())


def test_first_byte_timeout_closes_the_connection() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # returns when the client closes
        closed.set()

    async def main() -> None:
        server, origin, _ = await serve(handler)
        with pytest.raises(UpstreamTimeout):
            await collect(UpstreamPool(1, 60, 30), origin, first_byte_timeout=0.3)
        await asyncio.wait_for(closed.wait(), 5)  # the backend saw us leave
        server.close()

    run(main())


def test_chunked_body_is_decoded_and_streamed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")

    async def main() -> None:
        server, origin, _ = await serve(handler)
        pool = UpstreamPool(1, 5, 30)
        response = await pool.request(origin, "POST", "/v1/chat/completions", [], b"{}")
        chunks = [chunk async for chunk, _ in response.body()]
        response.release()
        assert chunks == [b"hello", b" world"]  # two chunks, as sent: nothing buffered together
        await pool.close()
        server.close()

    run(main())


def test_same_origin_303_is_followed_with_get_and_others_are_not() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            line = head.split(b"\r\n")[0]
            seen.append(line)
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
        server, origin, _ = await serve(handler)
        pool = UpstreamPool(1, 5, 30)
        assert await collect(pool, origin, follow_redirects=True) == (200, b"result")
        assert seen[-1] == b"GET /v1/completions?__modal_function_call_id=fc-1 HTTP/1.1"
        response = await pool.request(origin, "POST", "/elsewhere", [], b"{}", follow_redirects=True)
        assert response.status == 303  # another origin: passed on, never followed
        await response.drain()
        assert await collect(pool, origin) == (303, b"")  # not asked to follow
        await pool.close()
        server.close()

    run(main())


def test_idle_connection_closed_by_backend_leaves_the_pool_at_once() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok())
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()  # like a backend that stops (idle scale-down): its port is never used again

    async def main() -> None:
        server, origin, _ = await serve(handler)
        pool = UpstreamPool(1, 5, 30)
        assert await collect(pool, origin) == (200, b"ok")
        assert pool.idle_connections() == 1 and pool.origins() == 1
        for _ in range(50):
            if pool.origins() == 0:
                break
            await asyncio.sleep(0.02)
        assert pool.idle_connections() == 0 and pool.origins() == 0  # nothing kept for a dead port
        server.close()

    run(main())


def test_url_entries_keep_their_first_byte_timeout() -> None:
    from tabby_fleet.fleet.settings import FleetSettings
    from tabby_fleet.router.backends import StaticBackends

    settings = FleetSettings(
        entries=[{"name": "box", "model": "m", "url": "http://gpu-box:8080/", "first_byte_timeout": 7}]
    )
    upstream = StaticBackends(settings).upstream("box")
    assert (upstream.base_url, upstream.first_byte_timeout) == ("http://gpu-box:8080", 7)
