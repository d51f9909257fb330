"""WebSocket frames by hand (RFC 6455 5.2), for the tests that must send or answer what no library will: a message
in fragments, a close frame without a code or with a code no one may send, a handshake never answered.

Both sides: :func:`frame` builds one frame (``mask``: a client's), :func:`read_frame` reads one from a stream and
unmasks it, :func:`accept_key` is the server's ``Sec-WebSocket-Accept``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """One frame: (fin, opcode, payload unmasked). Raises IncompleteReadError when the stream ends."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    key = await reader.readexactly(4) if second & 0x80 else b""
    payload = await reader.readexactly(size)
    if key:
        payload = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return bool(first & 0x80), first & 0x0F, payload


async def read_message(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One whole message (fragments joined; pings skipped): (opcode, payload). A close is returned as it is."""
    opcode, parts = -1, []
    while True:
        fin, kind, payload = await read_frame(reader)
        if kind in (PING, PONG):
            continue
        if kind == CLOSE:
            return CLOSE, payload
        if kind != CONTINUATION:
            opcode = kind
        parts.append(payload)
        if fin:
            return opcode, b"".join(parts)


async def client_handshake(
    host: str, port: int, path: str, protocol: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client's upgrade by hand; raises AssertionError unless the answer is a 101 with ``protocol``."""
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n".encode()
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    assert head.startswith("HTTP/1.1 101") and accept_key(key) in head and protocol in head, head
    return reader, writer
