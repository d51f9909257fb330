"""The hub's WebSocket relay (router/hub_socket.py) end to end: `fleet up` under uvicorn, a recording test hub
(tests/support/rude_hub.py) as a process, aiohttp's WebSocket client; all on loopback.

The fleet runs in token mode with ``[hub] url`` aimed at the test hub and each hub team's hub user token in
``FLEET_HUB_TEAM_TOKENS``; the hub records every upgrade (headers, subprotocol, init, the close it saw).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from .support.fleetproc import RunningFleet, free_port, run_fleet, serve_process

FRONTEND_TOKEN = "tft_frontend-fleet-token"  # a hub team with a hub user
RESEARCH_TOKEN = "tft_research-fleet-token"  # a hub team whose hub user is missing
OUTSIDE_TOKEN = "tft_outside-fleet-token"  # a team not offered the hub
HUB_ROUTER_TOKEN = "tft_hub-router-token"  # router_team: the hub's own calls to the router
ADMIN_TOKEN = "tfa_admin-token"
FRONTEND_HUB_TOKEN = "auth_frontend-hub-user"
TEAM_TOKENS = json.dumps({"frontend": FRONTEND_HUB_TOKEN})
FRAME_LIMIT = 256 * 1024  # over the first message's 64 KiB, so that limit is the relay's own
PROTOCOLS = ("graphql-transport-ws", "graphql-ws")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def config(hub_url: str, *, idle: float = 30.0) -> str:
    return f"""
[router]
auth = "tokens"
admin_token_sha256 = ["{digest(ADMIN_TOKEN)}"]

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
chat_model = "TabbyML/Qwen2-1.5B-Instruct"

[[teams]]
name = "frontend"
entry = "small"
token_sha256 = ["{digest(FRONTEND_TOKEN)}"]

[[teams]]
name = "research"
entry = "small"
token_sha256 = ["{digest(RESEARCH_TOKEN)}"]

[[teams]]
name = "outside"
entry = "small"
token_sha256 = ["{digest(OUTSIDE_TOKEN)}"]

[[teams]]
name = "hub"
entry = "small"
token_sha256 = ["{digest(HUB_ROUTER_TOKEN)}"]

[hub]
enabled = true
teams = ["frontend", "research"]
chat_entry = "small"
router_team = "hub"
url = "{hub_url}"
socket_idle_timeout = {idle}
max_frame_bytes = {FRAME_LIMIT}
"""


@contextmanager
def hub_fleet(workdir: Path, hub_url: str, *, idle: float = 30.0) -> Iterator[RunningFleet]:
    with run_fleet(workdir, config(hub_url, idle=idle), env={"FLEET_HUB_TEAM_TOKENS": TEAM_TOKENS}) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    port = free_port()
    with serve_process([sys.executable, "-m", "tests.support.rude_hub", "--port", str(port)], port) as url:
        yield url


@pytest.fixture(scope="module")
def fleet(hub: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    with hub_fleet(tmp_path_factory.mktemp("hub-ws"), hub) as running:
        yield running


def seen(hub: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{hub}/_rude/seen", timeout=10).json())


def record_of(hub: str, tag: str) -> dict[str, Any]:
    """The hub's record of the socket whose init carried ``tag``."""
    found = [r for r in seen(hub) if r["init"] and (r["init"].get("payload") or {}).get("tag") == tag]
    assert len(found) == 1, f"the hub saw {len(found)} sockets tagged {tag}"
    return found[0]


def ws_url(fleet: RunningFleet, path: str = "/subscriptions") -> str:
    return fleet.base_url.replace("http://", "ws://") + path


def init(token: str | None, tag: str, key: str = "authorization", **rude: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"tag": tag, "client": "vscode", "rude": rude}
    if token is not None:
        payload[key] = f"Bearer {token}"
    return {"type": "connection_init", "payload": payload}


async def closed_with(socket: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    """Read until the router closes ``socket`` (within 10 s): (its close code, its reason)."""
    async with asyncio.timeout(10):
        while True:
            message = await socket.receive()
            if message.type is aiohttp.WSMsgType.CLOSE:
                return socket.close_code, str(message.extra or "")
            if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return socket.close_code, ""


async def refused(fleet: RunningFleet, first: Any, protocols: tuple[str, ...] = PROTOCOLS) -> tuple[int | None, str]:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(fleet), protocols=protocols) as socket:
        if first is not None:
            await (socket.send_json(first) if isinstance(first, dict) else socket.send_str(first))
        return await closed_with(socket)


async def subscribe(socket: aiohttp.ClientWebSocketResponse, protocol: str, ident: str) -> list[dict[str, Any]]:
    """One subscription's messages, up to and including its complete."""
    start = "subscribe" if protocol == "graphql-transport-ws" else "start"
    await socket.send_json({"id": ident, "type": start, "payload": {"query": "subscription { createThreadAndRun }"}})
    messages = []
    async with asyncio.timeout(20):
        while True:
            message = await socket.receive_json()
            messages.append(message)
            if message["type"] == "complete":
                return messages


async def opened(
    session: aiohttp.ClientSession, fleet: RunningFleet, token: str, tag: str, protocol: str = PROTOCOLS[0], **rude: Any
) -> aiohttp.ClientWebSocketResponse:
    """A socket through the router, its init sent and acknowledged."""
    socket = await session.ws_connect(ws_url(fleet), protocols=(protocol,))
    await socket.send_json(init(token, tag, **rude))
    async with asyncio.timeout(20):
        assert (await socket.receive_json())["type"] == "connection_ack"
    return socket


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_both_subprotocols_relay_with_the_hub_token_and_no_fleet_token_or_router_header(
    fleet: RunningFleet, hub: str, protocol: str
) -> None:
    tag = uuid.uuid4().hex
    headers = {
        "Authorization": f"Bearer {FRONTEND_TOKEN}", "X-Tabby-Team": "research", "X-Tabby-User": "mallory",
        "X-Tabby-Model": "small", "Cookie": "session=secret",
    }  # fmt: skip

    async def run() -> tuple[str | None, list[dict[str, Any]], bytes]:
        async with aiohttp.ClientSession() as session:
            socket = await session.ws_connect(ws_url(fleet), protocols=(protocol,), headers=headers)
            # The key's case is the client's choice: found case-insensitively, sent to the hub as "authorization".
            await socket.send_json(init(FRONTEND_TOKEN, tag, key="Authorization"))
            assert (await socket.receive_json())["type"] == "connection_ack"
            answers = await subscribe(socket, protocol, "1")
            await socket.send_bytes(b"\x00binary\xff")
            echoed = await socket.receive_bytes()
            await socket.close()
            return socket.protocol, answers, echoed

    chosen, answers, echoed = asyncio.run(run())
    assert chosen == protocol
    data = "data" if protocol == "graphql-ws" else "next"
    assert [a["type"] for a in answers] == [data, data, data, "complete"]
    assert answers[0]["payload"]["data"]["user"] == f"Bearer {FRONTEND_HUB_TOKEN}"
    assert echoed == b"\x00binary\xff"
    record = record_of(hub, tag)
    assert record["protocol"] == protocol
    payload = record["init"]["payload"]
    assert payload == {"tag": tag, "client": "vscode", "rude": {}, "authorization": f"Bearer {FRONTEND_HUB_TOKEN}"}
    names = {name for name, _ in record["headers"]}
    assert not {n for n in names if n.startswith("x-tabby-")}, names
    assert "cookie" not in names and "authorization" not in names
    assert FRONTEND_TOKEN not in json.dumps(record)
    assert "mallory" not in json.dumps(record)


def test_a_relayed_socket_is_counted_for_its_team(fleet: RunningFleet) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            socket = await opened(session, fleet, FRONTEND_TOKEN, uuid.uuid4().hex)
            await socket.close()

    asyncio.run(run())
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def counted() -> bool:
        metrics = httpx.get(f"{fleet.base_url}/metrics", headers=auth, timeout=10).text
        return 'fleet_requests_total{entry="@hub",route="hub-socket",status="101",team="frontend"}' in metrics

    fleet.wait_for(counted, 10, "the socket in fleet_requests")


def test_a_client_offering_neither_subprotocol_is_closed_4406(fleet: RunningFleet, hub: str) -> None:
    before = len(seen(hub))
    code, reason = asyncio.run(refused(fleet, init(FRONTEND_TOKEN, "x"), protocols=("graphql-other",)))
    assert code == 4406
    assert "graphql-transport-ws" in reason
    assert len(seen(hub)) == before


def test_an_unknown_token_is_closed_4401_and_the_hub_sees_no_connection(fleet: RunningFleet, hub: str) -> None:
    before = len(seen(hub))
    code, reason = asyncio.run(refused(fleet, init("tft_nobody-knows-this", "x")))
    assert code == 4401, reason
    assert len(reason.encode()) <= 123
    code, _ = asyncio.run(refused(fleet, init(None, "x")))  # no token: the hub has no owner yet (ui_open false)
    assert code == 4401
    assert len(seen(hub)) == before, "a refused socket must open nothing upstream"


@pytest.mark.parametrize(
    "first",
    [{"type": "subscribe", "id": "1", "payload": {}}, "not json", {"type": "connection_init", "payload": []},
     init(FRONTEND_TOKEN, "x") | {"pad": "x" * 70_000}],
    ids=["subscribe-first", "not-json", "payload-not-object", "over-64-KiB"],
)  # fmt: skip
def test_a_first_message_that_is_not_a_connection_init_is_closed_4400(
    fleet: RunningFleet, hub: str, first: Any
) -> None:
    before = len(seen(hub))
    code, reason = asyncio.run(refused(fleet, first))
    assert code == 4400, reason
    assert "connection_init" in reason or "KiB" in reason
    assert len(seen(hub)) == before


def test_a_client_that_sends_nothing_is_closed_4408_after_10_seconds(fleet: RunningFleet, hub: str) -> None:
    before = len(seen(hub))

    async def run() -> tuple[int | None, str, float]:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(fleet), protocols=PROTOCOLS) as socket:
            started = time.monotonic()
            async with asyncio.timeout(20):
                message = await socket.receive()
            assert message.type is aiohttp.WSMsgType.CLOSE, message
            return socket.close_code, str(message.extra), time.monotonic() - started

    code, reason, seconds = asyncio.run(run())
    assert code == 4408
    assert "connection_init" in reason
    assert 9.0 < seconds < 15.0
    assert len(seen(hub)) == before


def test_without_a_hub_subscriptions_is_closed_4404_saying_the_hub_is_off(tmp_path: Path) -> None:
    config = '[[entries]]\nname = "small"\nmodel = "TabbyML/StarCoder-1B"\n'
    with run_fleet(tmp_path, config) as fleet:
        code, reason = asyncio.run(refused(fleet, init(None, "x")))
    assert code == 4404
    assert "[hub] enabled" in reason


def test_a_team_not_offered_the_hub_is_closed_4403(fleet: RunningFleet, hub: str) -> None:
    before = len(seen(hub))
    code, reason = asyncio.run(refused(fleet, init(OUTSIDE_TOKEN, "x")))
    assert code == 4403
    assert "outside" in reason
    assert len(seen(hub)) == before


def test_a_hub_team_without_a_hub_user_is_closed_4503(fleet: RunningFleet, hub: str) -> None:
    before = len(seen(hub))
    code, reason = asyncio.run(refused(fleet, init(RESEARCH_TOKEN, "x")))
    assert code == 4503
    assert "research" in reason
    assert len(seen(hub)) == before


def test_another_websocket_path_is_closed_4404(fleet: RunningFleet) -> None:
    async def run() -> tuple[int | None, str]:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(fleet, "/graphql")) as socket:
            return await closed_with(socket)

    code, reason = asyncio.run(run())
    assert code == 4404
    assert "/subscriptions" in reason


def test_a_client_close_reaches_the_hub_with_its_code_within_a_second(fleet: RunningFleet, hub: str) -> None:
    tag = uuid.uuid4().hex

    async def run() -> float:
        async with aiohttp.ClientSession() as session:
            socket = await opened(session, fleet, FRONTEND_TOKEN, tag)
            closed_at = time.time()
            await socket.close(code=4321, message=b"bye")
            return closed_at

    closed_at = asyncio.run(run())
    record = fleet.wait_for(lambda: (r := record_of(hub, tag))["close_code"] and r, 10, "the hub to see the close")
    assert record["close_code"] == 4321
    assert record["closed_at"] - closed_at < 1.0


def test_a_hub_close_reaches_the_client_with_its_code_within_a_second(fleet: RunningFleet) -> None:
    async def run() -> tuple[int | None, str, float]:
        async with aiohttp.ClientSession() as session:
            socket = await opened(session, fleet, FRONTEND_TOKEN, uuid.uuid4().hex)
            asked = time.monotonic()
            await socket.send_json({"type": "close-me", "code": 4242, "reason": "the hub is done"})
            code, reason = await closed_with(socket)
            return code, reason, time.monotonic() - asked

    code, reason, seconds = asyncio.run(run())
    assert (code, reason) == (4242, "the hub is done")
    assert seconds < 1.0


def test_a_client_message_over_max_frame_bytes_is_closed_1009_and_the_hub_told_1001(
    fleet: RunningFleet, hub: str
) -> None:
    tag = uuid.uuid4().hex

    async def run() -> tuple[int | None, str, bytes]:
        async with aiohttp.ClientSession() as session:
            socket = await opened(session, fleet, FRONTEND_TOKEN, tag)
            await socket.send_bytes(b"x" * (FRAME_LIMIT - 10))  # under the limit: relayed
            echoed = await socket.receive_bytes()
            await socket.send_str("y" * (FRAME_LIMIT + 1))
            return *(await closed_with(socket)), echoed

    code, _, echoed = asyncio.run(run())
    assert len(echoed) == FRAME_LIMIT - 10
    assert code == 1009  # by uvicorn, whose ws_max_size `fleet up` sets to max_frame_bytes; the relay checks too
    record = fleet.wait_for(lambda: (r := record_of(hub, tag))["close_code"] and r, 10, "the hub to see the close")
    assert record["close_code"] == 1001


def test_a_hub_message_over_max_frame_bytes_closes_the_client_1011(fleet: RunningFleet) -> None:
    async def run() -> tuple[int | None, str]:
        async with aiohttp.ClientSession() as session:
            socket = await opened(
                session, fleet, FRONTEND_TOKEN, uuid.uuid4().hex, mode="oversize", bytes=FRAME_LIMIT + 1
            )
            return await closed_with(socket)

    code, reason = asyncio.run(run())
    assert code == 1011
    assert "max_frame_bytes" in reason


def test_an_unreachable_hub_closes_the_socket_saying_so(tmp_path: Path) -> None:
    with hub_fleet(tmp_path, f"http://127.0.0.1:{free_port()}") as fleet:
        code, reason = asyncio.run(refused(fleet, init(FRONTEND_TOKEN, "x")))
    assert code in (1011, 1013)
    assert "unreachable" in reason


def test_a_silent_socket_is_closed_1001_both_ways_after_the_idle_timeout(hub: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    with hub_fleet(tmp_path, hub, idle=1.5) as fleet:

        async def run() -> tuple[int | None, str, float]:
            async with aiohttp.ClientSession() as session:
                socket = await opened(session, fleet, FRONTEND_TOKEN, tag)
                quiet = time.monotonic()
                code, reason = await closed_with(socket)
                return code, reason, time.monotonic() - quiet

        code, reason, seconds = asyncio.run(run())
    assert code == 1001
    assert "socket_idle_timeout" in reason
    assert 1.0 < seconds < 5.0
    assert record_of(hub, tag)["close_code"] == 1001


def test_100_sockets_at_once_each_get_their_answers(fleet: RunningFleet, hub: str, figure: Any) -> None:
    count = 100
    tags = [uuid.uuid4().hex for _ in range(count)]

    async def one(session: aiohttp.ClientSession, tag: str, protocol: str) -> list[dict[str, Any]]:
        socket = await opened(session, fleet, FRONTEND_TOKEN, tag, protocol, n=5)
        answers = await subscribe(socket, protocol, tag)
        await socket.close()
        return answers

    async def run() -> list[list[dict[str, Any]]]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session, asyncio.timeout(60):
            return await asyncio.gather(*(one(session, tag, PROTOCOLS[i % 2]) for i, tag in enumerate(tags)))

    started = time.monotonic()
    results = asyncio.run(run())
    figure("100 sockets, seconds", round(time.monotonic() - started, 2))
    for tag, answers in zip(tags, results, strict=True):
        assert len(answers) == 6
        assert {a["id"] for a in answers} == {tag}
        assert answers[-1]["type"] == "complete"


def test_open_sockets_keep_working_across_a_reload(hub: str, tmp_path: Path) -> None:
    half = FRAME_LIMIT // 2
    with hub_fleet(tmp_path, hub) as fleet:

        async def run() -> None:
            async with aiohttp.ClientSession() as session:
                sockets = [await opened(session, fleet, FRONTEND_TOKEN, uuid.uuid4().hex) for _ in range(10)]
                for i, socket in enumerate(sockets):
                    assert len(await subscribe(socket, PROTOCOLS[0], f"before-{i}")) == 4
                # A reload that halves max_frame_bytes and changes the upstream pool (keep-alive: a new aiohttp
                # session); open sockets keep the settings and the session they started with.
                path = fleet.workdir / "fleet.toml"
                text = path.read_text().replace(f"max_frame_bytes = {FRAME_LIMIT}", f"max_frame_bytes = {half}")
                path.write_text(text.replace('auth = "tokens"', 'auth = "tokens"\nupstream_keepalive = 5'))
                async with session.post(
                    f"{fleet.base_url}/fleet/reload", json={}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                ) as response:
                    assert response.status == 200, await response.text()
                    assert (await response.json())["status"] == "reloaded"
                for i, socket in enumerate(sockets):
                    answers = await subscribe(socket, PROTOCOLS[0], f"after-{i}")
                    assert [a["id"] for a in answers] == [f"after-{i}"] * 4
                    await socket.send_bytes(b"z" * (half + 100))  # under the limit it started with: relayed
                    assert len(await socket.receive_bytes()) == half + 100
                newcomer = await opened(session, fleet, FRONTEND_TOKEN, uuid.uuid4().hex)
                assert len(await subscribe(newcomer, PROTOCOLS[0], "new")) == 4
                await newcomer.send_bytes(b"z" * (half + 100))  # over the new limit: the relay's own check
                code, reason = await closed_with(newcomer)
                assert code == 1009
                assert "max_frame_bytes" in reason
                for socket in sockets:
                    await socket.close()

        asyncio.run(run())


@pytest.fixture(scope="module")
def slow_hub() -> Iterator[str]:
    """A hub that answers each upgrade 3 s late, as one still starting would."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.support.rude_hub", "--port", str(port), "--handshake-delay", "3"]
    with serve_process(argv, port) as url:
        yield url


def test_what_a_client_sends_before_the_hub_answers_follows_the_init_in_order(slow_hub: str, tmp_path: Path) -> None:
    """A client that does not wait for connection_ack: its subscribe, sent while the hub is still answering the
    upgrade, is kept and sent after the (rewritten) init, and its answers come back."""
    tag = uuid.uuid4().hex
    with hub_fleet(tmp_path, slow_hub) as fleet:

        async def run() -> list[dict[str, Any]]:
            async with aiohttp.ClientSession() as session:
                socket = await session.ws_connect(ws_url(fleet), protocols=(PROTOCOLS[0],))
                await socket.send_json(init(FRONTEND_TOKEN, tag))
                await socket.send_json({"id": "1", "type": "subscribe", "payload": {"query": "subscription { x }"}})
                messages: list[dict[str, Any]] = []
                async with asyncio.timeout(20):
                    while not messages or messages[-1]["type"] != "complete":
                        messages.append(await socket.receive_json())
                await socket.close()
                return messages

        messages = asyncio.run(run())
    assert [m["type"] for m in messages] == ["connection_ack", "next", "next", "next", "complete"], messages
    assert record_of(slow_hub, tag)["init"]["payload"]["authorization"] == f"Bearer {FRONTEND_HUB_TOKEN}"


def test_a_client_that_leaves_while_the_hub_starts_is_let_go_at_once(slow_hub: str, tmp_path: Path) -> None:
    """The relay watches the client while it waits for the hub: a client gone after 0.5 s is counted as gone
    (499) within a second or two, not after the hub's 3 s handshake and a relay into nothing."""
    with hub_fleet(tmp_path, slow_hub) as fleet:

        async def run() -> None:
            async with aiohttp.ClientSession() as session:
                socket = await session.ws_connect(ws_url(fleet), protocols=(PROTOCOLS[0],))
                await socket.send_json(init(FRONTEND_TOKEN, uuid.uuid4().hex))
                await asyncio.sleep(0.5)
                await socket.close()

        asyncio.run(run())
        left = time.monotonic()
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        gone = 'fleet_requests_total{entry="@hub",route="hub-socket",status="499",team="frontend"}'

        def counted() -> bool:
            return gone in httpx.get(f"{fleet.base_url}/metrics", headers=auth, timeout=10).text

        fleet.wait_for(counted, 10, "the socket counted as gone")
        assert time.monotonic() - left < 2.0, "the relay waited for the hub before it let the client go"
        relayed = 'fleet_requests_total{entry="@hub",route="hub-socket",status="101"'
        assert relayed not in httpx.get(f"{fleet.base_url}/metrics", headers=auth, timeout=10).text


def test_a_question_that_mentions_authorization_is_relayed(fleet: RunningFleet, hub: str) -> None:
    """Only a later connection_init, or an authorization key in a later payload, is refused: a developer's
    question about authorization (deep in the payload's variables) is an ordinary message."""

    async def run() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            socket = await opened(session, fleet, FRONTEND_TOKEN, uuid.uuid4().hex)
            question = {"input": {"content": 'How do I check "Authorization: Bearer" and connection_init in Flask?'}}
            await socket.send_json({"id": "1", "type": "subscribe", "payload": {"query": "q", "variables": question}})
            messages: list[dict[str, Any]] = []
            async with asyncio.timeout(20):
                while not messages or messages[-1]["type"] != "complete":
                    messages.append(await socket.receive_json())
            await socket.close()
            return messages

    assert [m["type"] for m in asyncio.run(run())] == ["next", "next", "next", "complete"]
