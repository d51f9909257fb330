"""The hub attacked as hostile clients, pages and hubs would: `fleet up` in front of a hostile hub
(tests/support/hostile_hub.py, a raw-socket server that records what crossed and misbehaves on request) or the
stand-in hub; requests over raw sockets where a library would tidy them. All on loopback, each bounded.

The promises (docs/RELIABILITY.md, The hub): a fleet or admin token never reaches the hub unmapped; a hub token
never reaches an entry; no path trick crosses sides; only admins use X-Fleet-Hub-Authorization; until
ui_open strangers stay off the hub's data; sockets and leases end, whatever either side does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from .support import fleets
from .support.fleetproc import RunningFleet, free_port, run_fleet, serve_process
from .support.raw_ws import CLOSE, TEXT, client_handshake, frame, read_message

pytestmark = pytest.mark.reliability  # an attack, fault or bad-input suite: ./dev reliability

FRONTEND = fleets.HUB_TOKENS["frontend"]
BACKEND = fleets.HUB_TOKENS["backend"]
ADMIN = fleets.HUB_ADMIN
HUB_USER = fleets.HUB_USERS["frontend"]
READ_TIMEOUT = 3  # [router] read_timeout: how long the hub's WebSocket handshake may take


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    port = free_port()
    with serve_process([sys.executable, "-m", "tests.support.hostile_hub", "--port", str(port)], port) as url:
        yield url


@pytest.fixture(scope="module")
def fleet(hub: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    config = fleets.with_hub(f'url = "{hub}"').replace("[router]\n", f"[router]\nread_timeout = {READ_TIMEOUT}\n")
    with run_fleet(tmp_path_factory.mktemp("hub-attacks"), config, env=fleets.HUB_ENV) as running:
        yield running


def hub_saw(hub: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{hub}/_h/seen", timeout=10).json())


def tagged(hub: str, tag: str) -> list[dict[str, Any]]:
    return [record for record in hub_saw(hub) if tag in json.dumps(record)]


def address(fleet: RunningFleet) -> tuple[str, int]:
    host, port = fleet.base_url.removeprefix("http://").split(":")
    return host, int(port)


def raw_exchange(fleet: RunningFleet, data: bytes, answers: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``data`` as it is; read ``answers`` responses (Content-Length framed): (status, headers, body)."""
    with socket.create_connection(address(fleet), timeout=15) as sock:
        sock.sendall(data)
        stream = sock.makefile("rb")
        out = []
        for _ in range(answers):
            status_line = stream.readline().decode("latin-1")
            headers: dict[str, str] = {}
            while (line := stream.readline().decode("latin-1").rstrip("\r\n")) != "":
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = stream.read(int(headers.get("content-length", "0")))
            out.append((int(status_line.split(" ")[1]), headers, body))
        return out


def request(target: str, *headers: str, method: str = "GET", version: str = "1.1", close: bool = True) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: router", *headers] + (["Connection: close"] if close else [])
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}"


# -- 3. path tricks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "statuses"),
    [
        ("//v1/completions", {400}), ("/%2Fv1/completions", {400}), ("///graphql", {400}),
        ("/V1/completions", {404}), ("/v1;x/completions", {404}), ("/v1./completions", {404}),
        ("/Teams/frontend/v1/completions", {404}), ("/TEAMS/frontend/chat", {404}), ("/MODELS/small/v1/health", {404}),
        ("/FLEET/usage", {404}), ("/Hub", {404}), ("/Metrics", {404}),
        ("/_next/%2e%2e/v1/completions", {400}), ("/_next/%252e%252e/v1/completions", {400}),
        ("/_next/%252F..%252Fv1", {400}), ("/_next/x%5c..%5cv1", {400}),
        ("/v1%2Fcompletions", {400, 401, 404}), ("/" + "a" * 9000, {414}),
    ],
)  # fmt: skip
def test_path_tricks_never_reach_the_hub(fleet: RunningFleet, hub: str, target: str, statuses: set[int]) -> None:
    tag = uuid.uuid4().hex
    [(status, _, body)] = raw_exchange(fleet, request(f"{target}?t={tag}", bearer(FRONTEND)))
    assert status in statuses, (target, status, body[:300])
    assert not tagged(hub, tag), f"{target} reached the hub"


@pytest.mark.parametrize("target", ["*", "graphql", "http://evil.example/v1/health"])
def test_odd_request_targets_never_reach_the_hub(fleet: RunningFleet, hub: str, target: str) -> None:
    before = len(hub_saw(hub))
    [(status, _, body)] = raw_exchange(fleet, request(target, bearer(FRONTEND), method="OPTIONS"))
    assert status < 500, (target, status, body[:300])
    assert len(hub_saw(hub)) == before, f"{target} reached the hub"


def test_absolute_form_and_host_tricks_take_the_path_alone(fleet: RunningFleet, hub: str) -> None:
    tag = uuid.uuid4().hex
    data = request(f"http://127.0.0.1:1/page?t={tag}", bearer(FRONTEND), "X-Forwarded-Host: evil")
    [(status, _, body)] = raw_exchange(fleet, data.replace(b"Host: router", b"Host: 127.0.0.1:1"))
    assert status == 200, body[:300]
    [record] = tagged(hub, tag)
    assert record["target"] == f"/page?t={tag}"
    assert ("authorization", f"Bearer {HUB_USER}") in [tuple(h) for h in record["headers"]]
    assert dict(record["headers"])["host"] != "127.0.0.1:1"  # the hub's own address, not the client's Host
    [(status, headers, _)] = raw_exchange(fleet, request("http://evil/v1/health", bearer(FRONTEND)))
    assert status == 200 and headers["x-fleet-entry"] == "small"


def test_pipelined_entry_and_hub_requests_each_go_to_their_side(fleet: RunningFleet, hub: str) -> None:
    tag = uuid.uuid4().hex
    data = (
        request("/v1/health", bearer(FRONTEND), close=False)
        + request(f"/page?t={tag}", bearer(FRONTEND), close=False)
        + request(f"/v1/health?t={tag}", bearer(FRONTEND), version="1.0")
    )
    (s1, h1, _), (s2, h2, b2), (s3, h3, _) = raw_exchange(fleet, data, answers=3)
    assert (s1, h1["x-fleet-entry"]) == (200, "small") and (s3, h3["x-fleet-entry"]) == (200, "small")
    assert s2 == 200 and h2.get("x-fleet-route") == "hub"
    assert json.loads(b2)["target"] == f"/page?t={tag}"
    assert len(tagged(hub, tag)) == 1  # the health checks never reached the hub


# -- 1, 5. tokens and headers ---------------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer\t{FRONTEND}", f"Token {FRONTEND}", FRONTEND, f"Bearer {FRONTEND}, Bearer x",
        f"Bearer x {FRONTEND}", basic("ops", ADMIN), basic(FRONTEND, ""), f"Bearer\t{ADMIN}",
    ],
)  # fmt: skip
def test_a_fleet_or_admin_token_in_an_odd_authorization_never_reaches_the_hub(
    fleet: RunningFleet, hub: str, authorization: str
) -> None:
    tag = uuid.uuid4().hex
    [(status, _, body)] = raw_exchange(fleet, request(f"/page?t={tag}", f"Authorization: {authorization}"))
    assert status == 400 and json.loads(body)["error"]["code"] == "hub-odd-authorization", body[:300]
    assert not tagged(hub, tag)


@pytest.mark.parametrize(
    ("authorization", "hub_sees"),
    [
        (f"bearer  {FRONTEND}", f"Bearer {HUB_USER}"), (f"BEARER {ADMIN}", None),
        ("Bearer auth_someone", "Bearer auth_someone"),
    ],
)  # fmt: skip
def test_odd_but_valid_spelling_is_mapped(fleet: RunningFleet, hub: str, authorization: str, hub_sees: str) -> None:
    tag = uuid.uuid4().hex
    [(status, _, _)] = raw_exchange(fleet, request(f"/page?t={tag}", f"Authorization: {authorization}"))
    [record] = tagged(hub, tag)
    assert status == 200 and dict(record["headers"]).get("authorization") == hub_sees


def test_two_authorization_headers_are_refused(fleet: RunningFleet, hub: str) -> None:
    tag = uuid.uuid4().hex
    for target in (f"/page?t={tag}", f"/v1/health?t={tag}", f"/v1/completions?t={tag}"):
        data = request(target, bearer("auth_someone"), bearer(FRONTEND), "Content-Length: 0", method="POST")
        [(status, _, body)] = raw_exchange(fleet, data)
        assert status == 400 and json.loads(body)["error"]["code"] == "duplicate-authorization", (target, body)
    assert not tagged(hub, tag)


@pytest.mark.parametrize("token", [FRONTEND, "auth_someone", None])
def test_only_admins_may_send_x_fleet_hub_authorization(fleet: RunningFleet, hub: str, token: str | None) -> None:
    tag = uuid.uuid4().hex
    headers = [bearer(token)] if token else []
    header = "X-Fleet-Hub-Authorization: Bearer jwt"
    [(status, _, body)] = raw_exchange(fleet, request(f"/page?t={tag}", *headers, header))
    assert status == 403 and json.loads(body)["error"]["code"] == "hub-header-admin-only", body
    [(status, _, _)] = raw_exchange(fleet, request(f"/page?t={tag}", bearer(ADMIN), header))
    [record] = tagged(hub, tag)
    seen = dict(record["headers"])
    assert status == 200 and seen["authorization"] == "Bearer jwt" and "x-fleet-hub-authorization" not in seen
    assert ADMIN not in json.dumps(record)


def test_client_headers_the_hub_must_not_trust_are_dropped(fleet: RunningFleet, hub: str) -> None:
    tag = uuid.uuid4().hex
    data = request(
        f"/page?t={tag}", bearer(FRONTEND), "X-Tabby-User: mallory", "x-tabby-team: backend", "Connection: x-secret",
        "X-Secret: s3cret", "Proxy-Authorization: Basic eA==",
    )  # fmt: skip
    [(status, _, _)] = raw_exchange(fleet, data)
    [record] = tagged(hub, tag)
    names = {name for name, _ in record["headers"]}
    assert status == 200 and not {n for n in names if n.startswith("x-tabby-")}, names
    assert "x-secret" not in names and "proxy-authorization" not in names
    [(status, _, _)] = raw_exchange(fleet, request(f"/page?t={tag}x", bearer(FRONTEND), "X-Big: " + "b" * 40_000))
    assert status == 431 and not tagged(hub, tag + "x")


# -- 4. ui_open = false: strangers stay off the hub's data --------------------------------------------------------

DATA_PATHS = [
    "/graphql", "/graphql/", "/graphql;x", "/GraphQL", "/Graphql.", "/subscriptions", "/v1beta/models",
    "/repositories/git/1/resolve/a", "/Repositories/git/1/resolve/a", "/repositories./git", "/oauth/signin",
    "/OAuth/providers", "/avatar/1", "/background-jobs/1/logs", "/graphiql", "/swagger-ui", "/api-docs/x",
]  # fmt: skip


@pytest.mark.parametrize("token", [None, "auth_someone", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
def test_until_ui_open_strangers_never_reach_a_data_path(fleet: RunningFleet, hub: str, token: str | None) -> None:
    tag = uuid.uuid4().hex
    for path in DATA_PATHS:
        data = request(f"{path}?t={tag}", *([bearer(token)] if token else []), "Content-Length: 0", method="POST")
        [(status, _, body)] = raw_exchange(fleet, data)
        assert status in (401, 404), (path, status, body)
    assert not tagged(hub, tag)


# -- 2. a hub token never reaches an entry ---------------------------------------------------------------------


def test_a_hub_token_never_reaches_an_entry(fleet: RunningFleet) -> None:
    with fleet.client(headers={"Authorization": f"Bearer {HUB_USER}"}) as client:
        answer = client.post("/v1/completions", json={"segments": {"prefix": "x"}})
    assert answer.status_code == 401
    headers = {"Authorization": f"Bearer {FRONTEND}", "X-Fleet-Hub-Authorization": "Bearer jwt"}
    with fleet.client(headers=headers) as client:
        answer = client.post("/v1/completions", json={"segments": {"prefix": "x"}})
    assert answer.status_code == 200, answer.text
    with fleet.client(headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        url = next(e for e in client.get("/fleet/entries").json()["entries"] if e["name"] == "small")["runtime"]["url"]
    seen = httpx.get(f"{url}/_standin/stats", timeout=10).json()["last_headers"]
    assert "authorization" not in seen and "x-fleet-hub-authorization" not in seen, seen


# -- 7. a rude hub over HTTP ------------------------------------------------------------------------------------


def test_a_101_to_a_plain_get_is_a_502_and_the_router_serves_on(fleet: RunningFleet) -> None:
    with fleet.client(headers={"Authorization": f"Bearer {FRONTEND}"}) as client:
        answer = client.get("/_h/upgrade")
        assert answer.status_code == 502, answer.text
        assert client.get("/page").status_code == 200


def test_frame_blocking_headers_never_reach_the_panel_and_huge_cookies_are_bounded(fleet: RunningFleet) -> None:
    with fleet.client(headers={"Authorization": f"Bearer {FRONTEND}"}) as client:
        page = client.get("/_h/frame", params={"cookie": 4000})
        huge = client.get("/_h/frame", params={"cookie": 200_000})
    assert page.status_code == 200 and "x-frame-options" not in page.headers
    assert "frame-ancestors" not in page.headers.get("content-security-policy", ""), page.headers
    assert "default-src 'self'" in page.headers["content-security-policy"]  # the rest of the policy stays
    assert len(page.headers["set-cookie"]) > 4000
    assert huge.status_code == 502 and huge.json()["error"]["code"] == "backend-bad-response", huge.text


def test_a_hub_streaming_forever_is_cut_off_when_the_client_leaves(fleet: RunningFleet, hub: str) -> None:
    tag = uuid.uuid4().hex
    with (
        fleet.client(headers={"Authorization": f"Bearer {FRONTEND}"}) as client,
        client.stream("GET", f"/_h/forever?t={tag}") as answer,
    ):
        for index, _ in enumerate(answer.iter_raw()):
            if index == 5:
                break
        left = time.time()
    deadline = time.monotonic() + 10
    while not (forever := tagged(hub, tag)[0].get("forever")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert forever and forever["ended_at"] - left < 3, forever


def test_a_redirect_to_the_routers_own_paths_is_passed_not_followed(fleet: RunningFleet, hub: str) -> None:
    tag = uuid.uuid4().hex
    with fleet.client(headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        answer = client.get(f"/_h/redirect?t={tag}", params={"to": f"{fleet.base_url}/fleet/usage"})
    assert answer.status_code == 302 and answer.headers["location"] == f"{fleet.base_url}/fleet/usage"
    assert answer.content == b""  # not the router's usage, fetched on the hub's word


# -- 6. WebSockets ----------------------------------------------------------------------------------------------


def ws_url(fleet: RunningFleet) -> str:
    return fleet.base_url.replace("http://", "ws://") + "/subscriptions"


def init(token: str | None, tag: str, **rude: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"tag": tag, "rude": rude}
    if token is not None:
        payload["authorization"] = f"Bearer {token}"
    return {"type": "connection_init", "payload": payload}


async def raw_socket(fleet: RunningFleet) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address(fleet)
    return await client_handshake(host, port, "/subscriptions", "graphql-transport-ws")


async def wire_close(reader: asyncio.StreamReader) -> int | None:
    """The code of the close frame the router sends (None: a close without a code, or no close frame at all)."""
    async with asyncio.timeout(READ_TIMEOUT + 10):
        while True:
            try:
                opcode, payload = await read_message(reader)
            except asyncio.IncompleteReadError:
                return None
            if opcode == CLOSE:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None


def test_a_later_message_never_carries_a_fleet_token_to_the_hub(fleet: RunningFleet, hub: str) -> None:
    """A second connection_init (or an authorization in a later payload) is refused with 4400, unrelayed."""
    tag = uuid.uuid4().hex

    async def run() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws_url(fleet), protocols=("graphql-transport-ws",)) as ws,
        ):
            await ws.send_json(init(FRONTEND, tag))
            assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
            await ws.send_json({"type": "connection_init", "payload": {"authorization": f"Bearer {BACKEND}"}})
            closed = await ws.receive(timeout=10)
            assert closed.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 4400, closed
            assert "second connection_init" in str(closed.extra)

    asyncio.run(run())
    [record] = tagged(hub, tag)
    assert BACKEND not in json.dumps(record), record["messages"]


def test_an_init_with_two_authorizations_is_refused_before_the_hub(fleet: RunningFleet, hub: str) -> None:
    tag = uuid.uuid4().hex
    payload = {"tag": tag, "Authorization": f"Bearer {FRONTEND}", "authorization": "Bearer auth_someone"}

    async def run() -> int | None:
        reader, writer = await raw_socket(fleet)
        writer.write(frame(TEXT, json.dumps({"type": "connection_init", "payload": payload}).encode(), mask=True))
        code = await wire_close(reader)
        writer.close()
        return code

    assert asyncio.run(run()) == 4400
    assert not tagged(hub, tag)


@pytest.mark.parametrize("how", ["binary", "fragments"])
def test_a_binary_or_fragmented_init_is_checked_and_mapped(fleet: RunningFleet, hub: str, how: str) -> None:
    tag = uuid.uuid4().hex
    data = json.dumps(init(FRONTEND, tag)).encode()

    async def run() -> dict[str, Any]:
        reader, writer = await raw_socket(fleet)
        if how == "binary":
            writer.write(frame(0x2, data, mask=True))
        else:
            third = len(data) // 3
            writer.write(frame(TEXT, data[:third], fin=False, mask=True))
            await writer.drain()
            writer.write(frame(0x0, data[third : 2 * third], fin=False, mask=True))
            await writer.drain()
            writer.write(frame(0x0, data[2 * third :], mask=True))
        async with asyncio.timeout(10):
            _, ack = await read_message(reader)
        writer.write(frame(CLOSE, (1000).to_bytes(2, "big"), mask=True))
        writer.close()
        return dict(json.loads(ack))

    assert asyncio.run(run()) == {"type": "connection_ack"}
    [record] = tagged(hub, tag)
    assert record["init"]["payload"]["authorization"] == f"Bearer {HUB_USER}"
    assert FRONTEND not in json.dumps(record)


@pytest.mark.parametrize(("mode", "payload"), [("close", ""), ("close", "03ee"), ("close", "03f7"), ("drop", "")])
def test_a_hub_close_the_client_may_not_receive_becomes_one_it_may(
    fleet: RunningFleet, mode: str, payload: str
) -> None:
    """1005 (no code), 1006 (abnormal) and 1015 (TLS) must never be sent in a close frame (RFC 6455 7.4.1)."""

    async def run() -> int | None:
        reader, writer = await raw_socket(fleet)
        writer.write(frame(TEXT, json.dumps(init(FRONTEND, "close", mode=mode, payload=payload)).encode(), mask=True))
        code = await wire_close(reader)
        writer.close()
        return code

    code = asyncio.run(run())
    assert code in (1000, 1011), code


def test_a_hub_that_never_answers_the_handshake_is_given_up_on(fleet: RunningFleet, hub: str) -> None:
    httpx.post(f"{hub}/_h/handshake?mode=stall", timeout=10)
    try:

        async def run() -> tuple[int | None, float]:
            reader, writer = await raw_socket(fleet)
            started = time.monotonic()
            writer.write(frame(TEXT, json.dumps(init(FRONTEND, "stall")).encode(), mask=True))
            code = await wire_close(reader)
            writer.close()
            return code, time.monotonic() - started

        code, took = asyncio.run(run())
    finally:
        httpx.post(f"{hub}/_h/handshake?mode=ok", timeout=10)
    assert code == 1013 and took < READ_TIMEOUT + 5, (code, took)
    stalled = [r for r in hub_saw(hub) if r.get("ended", "") and "handshake" in r["ended"]]
    assert stalled, "the router never closed the unanswered upgrade"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_flooding_a_deaf_hub_is_held_back_not_buffered(fleet: RunningFleet) -> None:
    """The hub stops reading after its ack; the client sends 64 KiB messages for 8 s (at most 1 GiB): the router
    passes back-pressure to the client instead of buffering what the hub does not take."""
    message = "x" * 65536
    before = rss_kib(fleet.process.pid)

    async def run() -> int:
        sent = 0
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws_url(fleet), protocols=("graphql-transport-ws",)) as ws,
        ):
            await ws.send_json(init(FRONTEND, "deaf", mode="deaf", seconds=15))
            assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(8):
                    while sent < 16384:
                        await ws.send_str(message)
                        sent += 1
        return sent

    sent = asyncio.run(run())
    grown = rss_kib(fleet.process.pid) - before
    assert grown < 64 * 1024, f"the router grew {grown} KiB while {sent} messages of 64 KiB were sent"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_200_sockets_dropped_at_once_release_every_lease_and_leave_the_router_idle(tmp_path: Path) -> None:
    with run_fleet(tmp_path / "fleet", fleets.with_hub(), env=fleets.HUB_ENV) as fleet:

        async def run() -> int:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

                async def one(index: int) -> aiohttp.ClientWebSocketResponse:
                    ws = await session.ws_connect(ws_url(fleet), protocols=("graphql-transport-ws",))
                    await ws.send_json(init(FRONTEND, f"s{index}"))
                    return ws

                sockets = await asyncio.gather(*(one(i) for i in range(200)))
                acked = 0
                for ws in sockets:
                    message = await ws.receive(timeout=30)
                    acked += message.type is aiohttp.WSMsgType.TEXT and "connection_ack" in message.data
                for ws in sockets:
                    ws._response.connection.transport.abort()  # type: ignore[union-attr]  # dropped, no close frame
                return acked

        acked = asyncio.run(run())

        def in_flight() -> int:
            with fleet.client(headers={"Authorization": f"Bearer {ADMIN}"}) as client:
                return int(client.get("/fleet/health").json()["hub"]["in_flight"])

        fleet.wait_for(lambda: in_flight() == 0, 15, "every socket's lease of the hub released")
        pid = fleet.process.pid
        start = cpu_seconds(pid)
        time.sleep(3)
        busy = cpu_seconds(pid) - start
    assert acked == 200
    assert busy < 0.3, f"the router used {busy:.2f} s of CPU in 3 s with nothing to do: a task is left running"
