"""A hostile hub for tests/test_hub_attacks.py: a raw-socket HTTP/1.1 and WebSocket server that records what
crossed the router and misbehaves on request, in ways aiohttp (tests/support/rude_hub.py) will not.

It checks no token: it records. ``GET /_h/seen`` is every request (method, target, headers) and socket (headers,
init, every later message, how it ended) in arrival order; ``POST /_h/handshake?mode=stall`` makes later upgrades
of ``/subscriptions`` go unanswered (``mode=ok`` answers again).

HTTP, by path:

- ``/_h/upgrade``: a ``101 Switching Protocols`` to a plain GET.
- ``/_h/frame``: 200 with ``X-Frame-Options: DENY``, a CSP with ``frame-ancestors 'none'``, and a ``Set-Cookie``
  of ``?cookie=N`` bytes (default 10).
- ``/_h/forever``: a chunked answer, a chunk every 50 ms until the write fails; ``/_h/seen``'s ``forever`` is then
  the number of chunks written and when the hub noticed (``time.time()``).
- ``/_h/redirect``: 302 to ``?to=`` (default ``/fleet/reload``).
- anything else: 200, a JSON echo of the request as the hub saw it.

``/subscriptions`` (after the handshake, which takes the first subprotocol offered): the first message is the
``connection_init``, whose ``payload.rude.mode`` says what follows:

- ``echo`` (default): ``connection_ack``, then each message echoed and recorded;
- ``close``: ``connection_ack``, then a close frame whose payload is ``rude.payload`` (hex: "" for no code,
  "03ee" for 1006, "03f7" for 1015);
- ``drop``: ``connection_ack``, then the TCP connection cut without a close (the client's 1006);
- ``deaf``: ``connection_ack``, then nothing read any more for ``rude.seconds`` (default 20): a slow hub.

Run: ``python -m tests.support.hostile_hub --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.raw_ws import CLOSE, PING, PONG, TEXT, accept_key, frame, read_frame, read_message

Record = dict[str, Any]


class HostileHub:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.handshake = "ok"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        line, *fields = head.split("\r\n")[:-2]
        method, target, _ = line.split(" ", 2)
        headers = [(name.strip().lower(), value.strip()) for name, _, value in (f.partition(":") for f in fields)]
        size = int(dict(headers).get("content-length", "0"))
        if size:
            await reader.readexactly(size)
        url = urlsplit(target)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        record: dict[str, Any] = {"method": method, "target": target, "headers": headers}
        if url.path == "/_h/seen":
            return await _send(writer, 200, [("Content-Type", "application/json")], json.dumps(self.seen).encode())
        if url.path == "/_h/handshake":
            self.handshake = query.get("mode", "ok")
            return await _send(writer, 204, [], b"")
        self.seen.append(record)
        if url.path == "/subscriptions" and dict(headers).get("upgrade", "").lower() == "websocket":
            await self._socket(reader, writer, dict(headers), record)
            return False
        if url.path == "/_h/upgrade":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(5)
            return False
        if url.path == "/_h/frame":
            cookie = "big=" + "c" * int(query.get("cookie", "10"))
            policy = "default-src 'self'; frame-ancestors 'none'"
            extra = [
                ("X-Frame-Options", "DENY"),
                ("Content-Security-Policy", policy),
                ("Set-Cookie", cookie + "; Path=/"),
            ]
            return await _send(writer, 200, [("Content-Type", "text/html"), *extra], b"<p>framed</p>")
        if url.path == "/_h/forever":
            await self._forever(writer, record)
            return False
        if url.path == "/_h/redirect":
            return await _send(writer, 302, [("Location", query.get("to", "/fleet/reload"))], b"")
        return await _send(writer, 200, [("Content-Type", "application/json")], json.dumps(record).encode())

    async def _forever(self, writer: asyncio.StreamWriter, record: dict[str, Any]) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunks = 0
        try:
            while chunks < 2400:  # 2 minutes at most: the test's bound, not the attack's
                writer.write(b"6\r\nchunk\n\r\n")
                await writer.drain()
                chunks += 1
                await asyncio.sleep(0.05)
        except (ConnectionError, RuntimeError):
            pass
        record["forever"] = {"chunks": chunks, "ended_at": time.time()}

    async def _socket(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str], record: Record
    ) -> None:
        record.update(init=None, messages=[], ended=None)
        if self.handshake == "stall":
            record["ended"] = "stalled"
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await reader.read()  # until the router gives up and closes
            record["ended"] = "router closed the unanswered handshake"
            return
        protocol = headers.get("sec-websocket-protocol", "").split(",")[0].strip()
        writer.write(
            f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(headers['sec-websocket-key'])}\r\n"
            f"Sec-WebSocket-Protocol: {protocol}\r\n\r\n".encode()
        )
        await writer.drain()
        try:
            opcode, data = await read_message(reader)
            record["init"] = json.loads(data) if opcode != CLOSE else None
            rude = ((record["init"] or {}).get("payload") or {}).get("rude") or {}
            await _ws_send(writer, json.dumps({"type": "connection_ack"}))
            mode = rude.get("mode", "echo")
            if mode == "close":
                writer.write(frame(CLOSE, bytes.fromhex(rude.get("payload", ""))))
                await writer.drain()
            elif mode == "drop":
                writer.transport.abort()
                record["ended"] = "dropped"
                return
            elif mode == "deaf":
                await asyncio.sleep(float(rude.get("seconds", 20)))
            await self._echo(reader, writer, record)
        except (ConnectionError, asyncio.IncompleteReadError):
            record["ended"] = record["ended"] or "connection lost"

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: dict[str, Any]) -> None:
        while True:
            fin, opcode, payload = await read_frame(reader)
            if opcode == CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                record["ended"] = f"client close {code}"
                with contextlib.suppress(ConnectionError):
                    writer.write(frame(CLOSE, payload[:2]))
                    await writer.drain()
                return
            if opcode == PING:
                writer.write(frame(PONG, payload))
                continue
            record["messages"].append(payload.decode("utf-8", "replace"))
            writer.write(frame(opcode or TEXT, payload, fin=fin))
            await writer.drain()


async def _send(writer: asyncio.StreamWriter, status: int, headers: list[tuple[str, str]], body: bytes) -> bool:
    lines = [f"HTTP/1.1 {status} X", *(f"{name}: {value}" for name, value in headers), f"Content-Length: {len(body)}"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    return True


async def _ws_send(writer: asyncio.StreamWriter, text: str) -> None:
    writer.write(frame(TEXT, text.encode()))
    await writer.drain()


async def main(port: int) -> None:
    hub = HostileHub()
    server = await asyncio.start_server(hub.serve, "127.0.0.1", port, limit=1 << 20)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
