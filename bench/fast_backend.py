"""A fast Tabby-shaped backend for the benchmark: uvloop + httptools, canned answers.

The stand-in (apps/standin.py) is faithful but runs on aiohttp's server, which
saturates near 4-5k requests/s on one core here; measured against it, any proxy looks closer to
direct than it is. This server answers in a few microseconds, so the proxy is what gets measured.

    python -m bench.fast_backend --port P [--completion-delay S] [--chunk-delay S]

POST .../completions: a completion JSON after --completion-delay. POST .../chat/completions: 20 SSE
events, --chunk-delay apart. GET /_standin/stats: {"cancelled", "last_cancelled_at"} like the
stand-in, counting requests whose client left before the answer was complete.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import cast

import httptools
import uvloop

COMPLETION = json.dumps(
    {"id": "cmpl-00000000-0000-4000-8000-000000000000", "mode": "standard",
     "choices": [{"index": 0, "text": "return a + b  # bench/fast-backend"}]}
).encode()  # fmt: skip
SSE_EVENTS = 20


def _response(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


COMPLETION_RESPONSE = _response(COMPLETION)
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Stats:
    cancelled = 0
    last_cancelled_at: float | None = None


class Connection(asyncio.Protocol):
    def __init__(self, completion_delay: float, chunk_delay: float) -> None:
        self.completion_delay = completion_delay
        self.chunk_delay = chunk_delay
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.pending: asyncio.TimerHandle | asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a server's stream transport (loop.create_server)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.url.startswith(b"/_standin/stats"):
            body = json.dumps({"cancelled": Stats.cancelled, "last_cancelled_at": Stats.last_cancelled_at})
            self.transport.write(_response(body.encode()))
        elif self.url.endswith(b"/chat/completions"):
            self.pending = asyncio.get_running_loop().create_task(self._stream())
        elif self.completion_delay:
            self.pending = asyncio.get_running_loop().call_later(self.completion_delay, self._answer)
        else:
            self.transport.write(COMPLETION_RESPONSE)

    def _answer(self) -> None:
        self.pending = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(COMPLETION_RESPONSE)

    async def _stream(self) -> None:
        assert self.transport is not None
        self.transport.write(SSE_HEAD)
        for index in range(SSE_EVENTS):
            if index:
                await asyncio.sleep(self.chunk_delay)
            delta = json.dumps({"choices": [{"index": 0, "delta": {"content": f"word{index} "}}]})
            self.transport.write(_chunk(f"data: {delta}\n\n".encode()))
        self.transport.write(b"0\r\n\r\n")
        self.pending = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending is not None:
            self.pending.cancel()
            Stats.cancelled += 1
            Stats.last_cancelled_at = time.time()
        self.transport = None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--completion-delay", type=float, default=0.0)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    args = parser.parse_args()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Connection(args.completion_delay, args.chunk_delay), "127.0.0.1", args.port, backlog=1024
        )
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
