"""A test hub for the WebSocket relay: Tabby's ``/subscriptions`` as far as the relay can tell, and a recorder.

Not Tabby and not the stand-in hub: an aiohttp server that speaks just enough graphql-transport-ws and graphql-ws
(``connection_init`` -> ``connection_ack``; ``subscribe``/``start`` -> ``next``/``data`` x N -> ``complete``)
to show what crossed the router, and misbehaves on request. It checks no token: it records.

Each upgrade is recorded (``GET /_rude/seen``, oldest first): the request's headers, the subprotocol taken, the
``connection_init`` received, and the close code and time (``time.time()``) the client's close arrived with.
What a socket does is asked in its own init, ``payload.rude`` (kept by the relay, which rewrites only the token):

- ``{"mode": "echo"}`` (default): ack, then echo each text and binary message; a ``subscribe``/``start`` message
  is answered with ``n`` (default 3) ``next``/``data`` messages naming the ``authorization`` the hub received,
  then ``complete``; ``{"type": "close-me", "code": C, "reason": R}`` makes the hub close with C.
- ``{"mode": "close", "code": C}``: ack, then close at once with C.
- ``{"mode": "stall"}``: never ack, never answer; wait for the close.
- ``{"mode": "oversize", "bytes": N}``: ack, then send one text message of N bytes.

Over HTTP, ``/_rude/page`` (any method) is a page of the hub's UI as the relay must pass it: two ``Set-Cookie``
headers, an ``X-Frame-Options: DENY`` the relay must drop, and a body streamed in ``?chunks=N`` parts (default 3)
``?gap=S`` seconds apart (default 0), each naming the ``Cookie`` and ``Authorization`` the hub received; each
request's headers are recorded too.

With ``--handshake-delay S`` every upgrade is answered S seconds late (a hub still starting).

Run: ``python -m tests.support.rude_hub --port N [--handshake-delay S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import WSMsgType, web

SUBPROTOCOLS = ("graphql-transport-ws", "graphql-ws")
SEEN: web.AppKey[list[dict[str, Any]]] = web.AppKey("seen", list)
HANDSHAKE_DELAY: web.AppKey[float] = web.AppKey("handshake_delay", float)


async def subscriptions(request: web.Request) -> web.StreamResponse:
    record: dict[str, Any] = {
        "headers": [[name.lower(), value] for name, value in request.headers.items()],
        "protocol": None, "init": None, "close_code": None, "closed_at": None, "path": request.path_qs,
    }  # fmt: skip
    request.app[SEEN].append(record)
    if request.app[HANDSHAKE_DELAY]:  # a hub slow to answer the upgrade (starting): the relay waits, or gives up
        await asyncio.sleep(request.app[HANDSHAKE_DELAY])
    ws = web.WebSocketResponse(protocols=SUBPROTOCOLS, max_msg_size=64 * 1024 * 1024)
    await ws.prepare(request)
    record["protocol"] = ws.ws_protocol
    first = await ws.receive()
    if first.type is WSMsgType.TEXT:
        init = record["init"] = json.loads(first.data)
        await _serve(ws, init, record)
    async for _ in ws:  # drain until the client's close
        pass
    record["close_code"], record["closed_at"] = ws.close_code, time.time()
    return ws


async def _serve(ws: web.WebSocketResponse, init: dict[str, Any], record: dict[str, Any]) -> None:
    payload = init.get("payload") or {}
    rude = payload.get("rude") or {}
    mode = rude.get("mode", "echo")
    if mode == "stall":
        return
    await ws.send_str(json.dumps({"type": "connection_ack"}))
    if mode == "close":
        await ws.close(code=int(rude["code"]), message=b"the rude hub closes")
        return
    if mode == "oversize":
        await ws.send_str("x" * int(rude["bytes"]))
    graphql_ws = ws.ws_protocol == "graphql-ws"
    async for message in ws:
        if message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data)
            continue
        if message.type is not WSMsgType.TEXT:
            continue
        try:
            body = json.loads(message.data)
        except ValueError:
            body = None
        kind = body.get("type") if isinstance(body, dict) else None
        if kind in ("subscribe", "start"):
            for n in range(int(rude.get("n", 3))):
                data = {"n": n, "user": payload.get("authorization")}
                await ws.send_str(json.dumps({
                    "id": body["id"], "type": "data" if graphql_ws else "next", "payload": {"data": data},
                }))  # fmt: skip
            await ws.send_str(json.dumps({"id": body["id"], "type": "complete"}))
        elif kind == "close-me":
            await ws.close(code=int(body["code"]), message=str(body.get("reason", "")).encode())
            return
        else:
            await ws.send_str(message.data)


async def seen(request: web.Request) -> web.Response:
    return web.json_response(request.app[SEEN])


async def page(request: web.Request) -> web.StreamResponse:
    request.app[SEEN].append({"path": request.path, "headers": dict(request.headers), "http": True})
    response = web.StreamResponse(headers={"Content-Type": "text/plain", "X-Frame-Options": "DENY"})
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
    await response.prepare(request)
    chunks, gap = int(request.query.get("chunks", "3")), float(request.query.get("gap", "0"))
    for index in range(chunks):
        if index and gap:
            await asyncio.sleep(gap)
        line = f"part {index} cookie={request.headers.get('Cookie')} auth={request.headers.get('Authorization')}\n"
        await response.write(line.encode())
    await response.write_eof()
    return response


def make_app(handshake_delay: float = 0.0) -> web.Application:
    app = web.Application()
    app[SEEN] = []
    app[HANDSHAKE_DELAY] = handshake_delay
    app.router.add_get("/subscriptions", subscriptions)
    app.router.add_get("/_rude/seen", seen)
    app.router.add_route("*", "/_rude/page", page)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--handshake-delay", type=float, default=0.0, help="seconds before answering an upgrade")
    args = parser.parse_args()
    web.run_app(make_app(args.handshake_delay), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
