"""The WebSocket relay for the hub's ``/subscriptions``: GraphQL subscriptions (chat panel, Answer Engine).

Tabby's panel opens ``ws(s)://<router>/subscriptions`` (graphql-transport-ws or graphql-ws) and sends its token
inside the first message, ``connection_init.payload.authorization`` (reference/tabby-hub.md §2, §8.4), so the
relay works message by message on two well-kept libraries: the client's side is plain ASGI as uvicorn (websockets)
delivers it, the hub's side aiohttp's ``ws_connect`` on the router's pooled session.

For each socket: accept with the first subprotocol Tabby takes that the client offers (none: 4406); read the
first message (10 s, 64 KiB, ``connection_init``: else 4408 / 4400); check its token with the hub's gate
(:class:`router.hub_access.HubAccess`; a refusal closes with 4000 + its status before anything is opened
upstream); lease the hub for the socket's life; connect upstream with only the hub's own headers (Modal proxy
auth); send the init with the token the hub knows; then relay text and binary both ways until one side closes
(its code passed to the other), nothing moves for ``[hub] socket_idle_timeout`` (1001 both ways) or the client
sends a message over ``[hub] max_frame_bytes`` (1009). A socket keeps the settings it started with: a reload
never closes it. One :class:`RequestRecord` per socket (kind ``hub``, status 101 once relayed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from fleet.errors import FleetError
from fleet.hub import HUB_BACKEND, HubOptions
from fleet.hub_paths import HUB_SOCKET, SOCKET_PATH
from router.backends import Upstream
from router.observe import CLIENT_LEFT, RequestRecord, new_request_id
from router.proxy import Message, Proxy, Receive, Scope, Send
from router.usage import HUB

log = logging.getLogger("tabby_fleet.hub_socket")

SUBPROTOCOLS = ("graphql-transport-ws", "graphql-ws")  # both taken by Tabby (W/axum/mod.rs:49), in our preference
INIT_SECONDS = 10.0  # the panel sends connection_init at once; its own handshake gives up after 10 s
INIT_MAX_BYTES = 64 * 1024  # a token and a few options
REASON_MAX_BYTES = 123  # RFC 6455 5.5: a close frame's payload is at most 125 bytes, two of them the code
CLOSE_SECONDS = 2.0  # how long a close waits for the hub's answering close frame
# Messages a client may send before the hub answered (the panel waits for connection_ack: it sends none).
EARLY_MESSAGES = 16
RELAYED = 101

# Close codes: RFC 6455's, and 4000-4999 (private use) for what the relay refuses, 4000 + an HTTP status.
GOING_AWAY = 1001
TOO_BIG = 1009
INTERNAL = 1011
TRY_AGAIN = 1013
REFUSED = 4000  # + the refusal's HTTP status: 4401, 4403, 4503, ...
BAD_FIRST_MESSAGE = 4400
NOT_HERE = 4404
BAD_SUBPROTOCOL = 4406
INIT_TIMEOUT = 4408

NO_HUB = FleetError(404, "hub-off", "the hub is not on in this fleet ([hub] enabled = false): there is no chat panel")
NO_SUBPROTOCOL = FleetError(
    400, "bad-subprotocol", "offer the subprotocol graphql-transport-ws or graphql-ws, as Tabby's chat panel does"
)
NO_INIT = FleetError(408, "init-timeout", f"no connection_init within {INIT_SECONDS:.0f} s; send it first")


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame (at most 123 bytes of UTF-8, never half a character)."""
    data = text.encode()
    if len(data) <= REASON_MAX_BYTES:
        return text
    return data[: REASON_MAX_BYTES - 3].decode(errors="ignore") + "..."


def sendable(code: int | None, default: int) -> int:
    """``code`` if a close frame may carry it (RFC 6455 7.4), else ``default`` (1005 "no code" becomes 1000)."""
    if code is None:
        return default
    if code == 1005:
        return 1000
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return default


def choose_subprotocol(offered: list[str]) -> str | None:
    """The first of :data:`SUBPROTOCOLS` the client offers (graphql-transport-ws over graphql-ws), else None."""
    return next((name for name in SUBPROTOCOLS if name in offered), None)


def parse_init(message: Message) -> tuple[dict[str, Any], str | None]:
    """The first message as ``(connection_init, its authorization)``; raises FleetError 400 with the fix.

    The authorization is the payload's ``authorization`` key, matched without regard to case (at most one)."""
    data: str | bytes | None = message.get("text")
    if data is None:
        data = message.get("bytes")
    if data is None:
        raise _bad_first("the first message must be connection_init (JSON text)")
    if len(data) > INIT_MAX_BYTES or (isinstance(data, str) and len(data.encode()) > INIT_MAX_BYTES):
        raise _bad_first(f"the first message is over {INIT_MAX_BYTES // 1024} KiB; send connection_init with a token")
    try:
        init = json.loads(data)
    except ValueError:
        raise _bad_first("the first message is not JSON; send connection_init first") from None
    if not isinstance(init, dict) or init.get("type") != "connection_init":
        raise _bad_first('the first message must be {"type": "connection_init", "payload": {...}}')
    payload = init.get("payload")
    if payload is None:
        payload = init["payload"] = {}
    if not isinstance(payload, dict):
        raise _bad_first("connection_init's payload must be a JSON object")
    values = [value for key, value in payload.items() if key.lower() == "authorization"]
    if len(values) > 1:
        raise _bad_first("connection_init's payload has more than one authorization; send one")
    if values and values[0] is not None and not isinstance(values[0], str):
        raise _bad_first('connection_init\'s authorization must be a string, "Bearer <token>"')
    return init, values[0] if values else None


def rewritten_init(init: dict[str, Any], authorization: str | None) -> str:
    """``init`` as the hub receives it: every authorization key removed, then ``authorization`` set (when not
    None); everything else in the payload kept."""
    payload = {key: value for key, value in init["payload"].items() if key.lower() != "authorization"}
    if authorization is not None:
        payload["authorization"] = authorization
    return json.dumps({**init, "payload": payload})


def _bad_first(message: str) -> FleetError:
    return FleetError(400, "bad-first-message", message)


@dataclass(frozen=True, slots=True)
class _End:
    """How a socket ends: the close each side is sent (None: that side is closed already)."""

    client: tuple[int, str] | None
    hub: tuple[int, str] | None


class _Client:
    """The client's side: ASGI messages, with the close sent at most once (both pumps may end the socket)."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._pending: asyncio.Future[Message] | None = None
        self.closed = False  # a close was sent, or the client is gone

    async def receive(self) -> Message:
        """The client's next message (the one :meth:`pending` is already waiting for, if any)."""
        pending, self._pending = self._pending, None
        return await (pending if pending is not None else self._receive())

    def pending(self) -> asyncio.Future[Message]:
        """The client's next message, waited for in the background (while the hub is leased and connected)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._receive())
        return self._pending

    def drop_pending(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    async def accept(self, subprotocol: str | None) -> None:
        await self._send({"type": "websocket.accept", "subprotocol": subprotocol})

    async def send(self, message: Message) -> bool:
        """Send one message; False when the client is gone (uvicorn's ClientDisconnected is an OSError)."""
        if self.closed:
            return False
        try:
            await self._send(message)
        except OSError:
            self.closed = True
            return False
        return True

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        # The client may have gone meanwhile (OSError), or the server closed the socket itself (RuntimeError).
        with contextlib.suppress(OSError, RuntimeError):
            await self._send({"type": "websocket.close", "code": code, "reason": close_reason(reason)})


class _Activity:
    """When a message last crossed the relay, either way (for the idle timeout)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


class HubSocket:
    """The relay of ``/subscriptions`` WebSockets to the hub, for one router (``proxy``'s state and backends)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.proxy.state  # this socket's version of the settings, for its whole life
        record = RequestRecord(new_request_id(), "GET", scope["path"])
        record.kind, record.entry, record.reason = HUB, HUB_BACKEND, HUB_SOCKET
        client = _Client(receive, send)
        try:
            if (await receive())["type"] != "websocket.connect":  # the client left before its handshake ended
                record.status = CLIENT_LEFT
                return
            subprotocol = choose_subprotocol(list(scope.get("subprotocols") or ()))
            await client.accept(subprotocol)  # first: a close before the accept is an HTTP 403 without the reason
            access = state.hub
            if access is None:
                await self._refuse(client, record, NOT_HERE, NO_HUB)
                return
            if subprotocol is None:
                await self._refuse(client, record, BAD_SUBPROTOCOL, NO_SUBPROTOCOL)
                return
            try:
                async with asyncio.timeout(INIT_SECONDS):
                    first = await receive()
            except TimeoutError:
                await self._refuse(client, record, INIT_TIMEOUT, NO_INIT)
                return
            if first["type"] != "websocket.receive":
                record.status = CLIENT_LEFT
                return
            try:
                init, authorization = parse_init(first)
            except FleetError as error:
                await self._refuse(client, record, BAD_FIRST_MESSAGE, error)
                return
            try:
                hub_pass = access.authorize(SOCKET_PATH, authorization)
            except FleetError as error:  # before anything is opened upstream
                await self._refuse(client, record, REFUSED + error.status, error)
                return
            if hub_pass.team is not None:  # a fleet token: its team and label, as the proxy counts them
                grant = state.table.fleet_grant(authorization)  # checked by authorize just now: cannot raise
                record.team, record.label = hub_pass.team, grant.user.partition("/")[2] or "-" if grant else "-"
            handshake = state.settings.router.read_timeout  # the hub's handshake, unless its backend says otherwise
            await self._open(
                client, record, access.hub, subprotocol, rewritten_init(init, hub_pass.authorization), handshake
            )
        finally:
            client.drop_pending()
            if not client.closed and record.status != CLIENT_LEFT:
                await client.close(INTERNAL, "the router failed; retry")
            self.proxy.observer.finish(record)

    async def _open(
        self, client: _Client, record: RequestRecord, hub: HubOptions, subprotocol: str, init: str, handshake: float
    ) -> None:
        """Lease the hub, connect, send the rewritten init, relay until either side ends."""
        async with contextlib.AsyncExitStack() as stack:
            try:
                connected = await self._connect_unless_client_leaves(client, stack, subprotocol, hub, handshake)
                if connected is None:  # the client left while the hub started or answered its handshake
                    record.status = CLIENT_LEFT
                    return
                socket, early = connected
                stack.push_async_callback(socket.close)  # idempotent: a no-op once either side closed it
                await socket.send_str(init)
                for message in early:  # what the client sent meanwhile, in its order
                    text = message.get("text")
                    await (
                        socket.send_str(text) if text is not None else socket.send_bytes(message.get("bytes") or b"")
                    )
            except FleetError as error:
                code = TOO_BIG if error.status == 413 else TRY_AGAIN if error.status == 503 else INTERNAL
                await self._refuse(client, record, code, error)
                return
            except (aiohttp.ClientError, ConnectionError) as exc:  # the hub went between the handshake and the init
                gone = FleetError(502, "hub-unreachable", f"the hub closed the socket at once ({exc}); retry")
                await self._refuse(client, record, INTERNAL, gone)
                return
            record.status = RELAYED
            opened = time.perf_counter()
            try:
                end = await self._relay(client, socket, hub)
            finally:
                record.upstream_seconds = time.perf_counter() - opened
            if end.client is not None:
                await client.close(*end.client)
            else:
                client.closed = True
            if end.hub is not None:
                code, reason = end.hub
                await socket.close(code=code, message=close_reason(reason).encode())

    async def _connect_unless_client_leaves(
        self, client: _Client, stack: contextlib.AsyncExitStack, subprotocol: str, hub: HubOptions, handshake: float
    ) -> tuple[aiohttp.ClientWebSocketResponse, list[Message]] | None:
        """Lease the hub (into ``stack``) and connect to it, while watching the client: None as soon as it leaves
        (the start or the handshake is abandoned, the lease released), else the hub's socket and what the client
        sent meanwhile (at most EARLY_MESSAGES messages within ``[hub] max_frame_bytes``, else 413)."""

        async def lease_and_connect() -> aiohttp.ClientWebSocketResponse:
            upstream = await stack.enter_async_context(self.proxy.backends.lease(HUB_BACKEND))
            return await self._connect(upstream, subprotocol, hub.max_frame_bytes, handshake)

        connecting = asyncio.ensure_future(lease_and_connect())
        early: list[Message] = []
        size = 0
        try:
            while True:
                await asyncio.wait((connecting, client.pending()), return_when=asyncio.FIRST_COMPLETED)
                if connecting.done():
                    return connecting.result(), early  # the client's next message stays pending for the relay
                message = await client.receive()
                if message["type"] == "websocket.disconnect":
                    client.closed = True
                    return None
                early.append(message)
                size += len(message.get("text") or message.get("bytes") or b"")
                if len(early) > EARLY_MESSAGES or size > hub.max_frame_bytes:
                    raise FleetError(413, "too-early", "too much sent before the hub answered; wait for connection_ack")
        finally:
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await connecting

    async def _connect(
        self, upstream: Upstream, subprotocol: str, max_bytes: int, handshake: float
    ) -> aiohttp.ClientWebSocketResponse:
        """The hub's socket, with ``subprotocol``; FleetError (502 unreachable or refused, 503 not answering)."""
        base = upstream.base_url
        url = ("ws" + base[4:] if base.startswith("http") else base) + SOCKET_PATH
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in upstream.headers]
        seconds = upstream.first_byte_timeout or handshake
        try:
            async with asyncio.timeout(seconds):
                socket = await self.proxy.client.session().ws_connect(
                    url, protocols=(subprotocol,), headers=headers, max_msg_size=max_bytes,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_SECONDS),
                )  # fmt: skip
        except aiohttp.WSServerHandshakeError as exc:
            raise FleetError(
                502, "hub-refused", f"the hub refused the WebSocket ({exc.status} {exc.message}); see the hub's log"
            ) from None
        except TimeoutError:
            starting = f"the hub did not answer within {seconds:.0f} s; it may be starting: retry"
            raise FleetError(503, "hub-starting", starting) from None
        except (aiohttp.ClientError, OSError) as exc:
            unreachable = f"the hub is unreachable ({type(exc).__name__}); retry, or see its log"
            raise FleetError(502, "hub-unreachable", unreachable) from None
        if socket.protocol != subprotocol:
            await socket.close()
            refused = f"the hub did not take the subprotocol {subprotocol}; is it Tabby 0.32?"
            raise FleetError(502, "hub-refused", refused)
        return socket

    async def _relay(self, client: _Client, socket: aiohttp.ClientWebSocketResponse, hub: HubOptions) -> _End:
        activity = _Activity()
        tasks = {
            asyncio.create_task(_client_to_hub(client, socket, activity, hub.max_frame_bytes)),
            asyncio.create_task(_hub_to_client(socket, client, activity)),
            asyncio.create_task(_idle(activity, hub.socket_idle_timeout)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return next(iter(done)).result()

    async def _refuse(self, client: _Client, record: RequestRecord, code: int, error: FleetError) -> None:
        record.status, record.code = error.status, error.code
        if error.team is not None:
            record.team = error.team
        await client.close(code, error.message)


async def _client_to_hub(
    client: _Client, socket: aiohttp.ClientWebSocketResponse, activity: _Activity, limit: int
) -> _End:
    while True:
        message = await client.receive()
        if message["type"] == "websocket.disconnect":
            client.closed = True  # a client that vanished is normal: the hub is told it went away
            code = message.get("code")
            if code == TOO_BIG:  # the server refused the client's message (uvicorn's ws_max_size): not the hub's
                return _End(None, (GOING_AWAY, "the client sent a message over the router's limit"))
            return _End(None, (sendable(code, GOING_AWAY), message.get("reason") or ""))
        text = message.get("text")
        data = message.get("bytes") if text is None else None
        size = len(text) if text is not None else len(data or b"")
        if size > limit or (text is not None and size > limit // 4 and len(text.encode()) > limit):
            reason = f"a message over {limit} bytes ([hub] max_frame_bytes)"
            return _End((TOO_BIG, reason), (GOING_AWAY, "the client sent " + reason))
        smuggled = _smuggles_a_token(text if text is not None else data or b"")
        if smuggled:
            return _End((BAD_FIRST_MESSAGE, smuggled), (GOING_AWAY, "the client broke the protocol"))
        try:
            if text is not None:
                await socket.send_str(text)
            else:
                await socket.send_bytes(data or b"")
        except (aiohttp.ClientError, ConnectionError):
            return _End((INTERNAL, "the hub's connection broke"), None)
        activity.touch()


# A token travels in the first message only, where it is checked and mapped. A later message that could carry one
# (another connection_init, a payload with an authorization) is refused: only those that name either are parsed.
MAY_CARRY_A_TOKEN = re.compile(rb"(?i)authorization|connection_init")


def _smuggles_a_token(data: str | bytes) -> str | None:
    """Why a message after the first is refused (a second ``connection_init``, or an ``authorization`` in its
    payload), else None. A question that merely mentions the word is deeper in the payload and passes."""
    raw = data.encode() if isinstance(data, str) else data
    if not MAY_CARRY_A_TOKEN.search(raw):
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return None  # not JSON: nothing the hub reads a token from
    if not isinstance(message, dict):
        return None
    if message.get("type") == "connection_init":
        return "a second connection_init; the token is sent once, in the first message"
    payload = message.get("payload")
    if isinstance(payload, dict) and any(str(key).lower() == "authorization" for key in payload):
        return "an authorization after the first message; the token is sent once, in connection_init"
    return None


async def _hub_to_client(socket: aiohttp.ClientWebSocketResponse, client: _Client, activity: _Activity) -> _End:
    while True:
        message = await socket.receive()
        kind = message.type
        if kind is aiohttp.WSMsgType.TEXT:
            sent = await client.send({"type": "websocket.send", "text": message.data})
        elif kind is aiohttp.WSMsgType.BINARY:
            sent = await client.send({"type": "websocket.send", "bytes": message.data})
        elif kind is aiohttp.WSMsgType.CLOSE:
            return _End((sendable(socket.close_code, INTERNAL), message.extra or ""), None)
        elif kind is aiohttp.WSMsgType.ERROR:
            error = message.data
            if getattr(error, "code", None) == TOO_BIG:
                return _End((INTERNAL, "the hub sent a message over [hub] max_frame_bytes"), None)
            return _End((INTERNAL, f"the hub's socket failed ({type(error).__name__})"), None)
        else:  # CLOSING, CLOSED: the connection ended without a close frame
            return _End((INTERNAL, "the hub's connection ended without a close"), None)
        if not sent:
            return _End(None, (GOING_AWAY, "the client left"))
        activity.touch()


async def _idle(activity: _Activity, seconds: float) -> _End:
    while True:
        remaining = activity.last + seconds - time.monotonic()
        if remaining <= 0:
            break
        await asyncio.sleep(remaining)
    reason = f"nothing either way for {seconds:g} s ([hub] socket_idle_timeout)"
    return _End((GOING_AWAY, reason), (GOING_AWAY, reason))
