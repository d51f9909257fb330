"""Upstream conformance: rude raw-socket backends driven through the whole router.

Each case sends one request whose answer the backend writes byte by byte (``x-rude: <case>`` picks
the answer; the router forwards unknown headers unchanged), checks what the client got, then sends a
normal request that must get its own answer, on the same pooled backend connection wherever the
rude answer was complete and keep-alive. ``x-tag`` marks each request so the test can find what the
backend received (tests/support/rude_backend.py records every request with its connection number). For
the odd-but-valid answers the router must also count no backend failure (its /metrics).

One router and one backend serve the plain cases; the TLS cases have their own pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import ssl
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from .support import fleets, rude_client
from .support.fleetproc import COMPLETION, RunningFleet, run_fleet
from .support.rude_backend import Connection, Request, RudeBackend, chunk, head, ok, rude_backend
from .support.rude_client import assert_json_error, fresh_pool, new_tag

pytestmark = pytest.mark.reliability  # an attack, fault or bad-input suite: ./dev reliability

BODY_TIMEOUT = 2.0
READ_TIMEOUT = 5.0
PROMPT = 2.0  # "promptly": well under READ_TIMEOUT, so a router waiting for a body that never comes fails
SSE_GAP = 0.3  # seconds between the SSE events the backend sends
BACKENDS: list[RudeBackend] = []  # every backend this module started, checked for handler bugs after each test


def fleet_config(url: str, extra: str = "") -> str:
    return fleets.rude(url, f"body_timeout = {BODY_TIMEOUT}\nread_timeout = {READ_TIMEOUT}\n{extra}")


# --- the backend's answers, one per x-rude value ----------------------------------------------------

Writer = asyncio.StreamWriter


def own_answer(request: Request) -> bytes:
    """A normal answer naming the request it answers (its tag) and the connection it came on."""
    body = {"tag": request.tag, "conn": request.conn, "echo": request.body.decode("latin-1")}
    return ok(json.dumps(body).encode())


async def interim_then_answer(writer: Writer, request: Request, interim: bytes) -> bool:
    writer.write(interim)
    await writer.drain()
    await asyncio.sleep(0.05)  # the interim head arrives on its own
    writer.write(own_answer(request))
    return True


async def answer_close_delimited(writer: Writer, request: Request) -> bool:
    writer.write(head(200, ("content-type", "text/plain"), ("connection", "close")))
    for part in close_delimited_parts(request.tag or ""):
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.05)
    return False  # closing the connection is what ends the body


def close_delimited_parts(tag: str) -> list[bytes]:
    return [f"part {i} of {tag} ".encode() * 2000 for i in range(3)]


async def answer_with_trailers(writer: Writer, request: Request) -> bool:
    writer.write(head(200, ("content-type", "text/plain"), ("transfer-encoding", "chunked"), ("trailer", "x-sum")))
    writer.write(chunk(b"hello") + chunk(b" world"))
    await writer.drain()
    writer.write(b"0\r\nx-sum: 42\r\n\r\n")
    return True


async def crash_after(writer: Writer, sent: bytes) -> bool:
    writer.write(sent)
    await writer.drain()
    await asyncio.sleep(0.3)  # the client has the first part by now
    return False


async def answer_with_jitter(writer: Writer, request: Request) -> bool:
    """Echo the body after 0-5 ms, written in 1-4 pieces split at random points (head and body mixed)."""
    await asyncio.sleep(random.uniform(0, 0.005))
    data = ok(request.body)
    cuts = sorted(random.sample(range(1, len(data)), random.randint(0, 3)))
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        writer.write(data[start:end])
        await writer.drain()
        await asyncio.sleep(random.uniform(0, 0.001))
    return True


async def answer_sse(writer: Writer, request: Request) -> bool:
    """Four events SSE_GAP apart, each its own chunk; request.marks gets the time each one went out."""
    writer.write(head(200, ("content-type", "text/event-stream"), ("transfer-encoding", "chunked")))
    for i in range(4):
        if i:
            await asyncio.sleep(SSE_GAP)
        request.marks.append(time.monotonic())
        writer.write(chunk(f"data: {i}\n\n".encode()))
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    return True


async def dispatch(_reader: asyncio.StreamReader, writer: Writer, request: Request, _conn: Connection) -> bool:
    """The backend's handler: the answer named by the request's x-rude header, else a normal one."""
    case = request.header("x-rude")
    if case == "continue":
        return await interim_then_answer(writer, request, b"HTTP/1.1 100 Continue\r\n\r\n")
    if case == "early-hints":
        return await interim_then_answer(writer, request, head(103, ("link", "</style.css>; rel=preload")))
    if case == "head":
        writer.write(head(200, ("content-type", "application/json"), ("content-length", 1234)))
    elif case == "204":
        writer.write(head(204))
    elif case == "304":
        writer.write(head(304, ("etag", '"v1"')))
    elif case == "close-delimited":
        return await answer_close_delimited(writer, request)
    elif case == "trailers":
        return await answer_with_trailers(writer, request)
    elif case == "huge-header":
        writer.write(head(200, ("x-huge", "h" * 100_000), ("content-length", 2)) + b"ok")
    elif case == "many-headers":
        writer.write(head(200, *[(f"x-h{i}", "v") for i in range(300)], ("content-length", 2)) + b"ok")
    elif case == "read-and-close":
        return False
    elif case == "crash-chunked":
        return await crash_after(writer, head(200, ("transfer-encoding", "chunked")) + chunk(b"data: partial\n\n"))
    elif case == "crash-length":
        return await crash_after(writer, head(200, ("content-length", 100)) + b"0123456789")
    elif case == "jitter":
        return await answer_with_jitter(writer, request)
    elif case == "sse":
        return await answer_sse(writer, request)
    else:
        writer.write(own_answer(request))
    return True


# --- fixtures ---------------------------------------------------------------------------------------


backend, fleet, no_handler_bugs = rude_client.suite_fixtures(rude_backend, dispatch, fleet_config, BACKENDS, "rude")


# --- helpers ----------------------------------------------------------------------------------------


def call(fleet: RunningFleet, case: str | None, *args: Any, **kwargs: Any) -> tuple[str, httpx.Response, float]:
    return rude_client.call(fleet, case, *args, wait=kwargs.pop("wait", READ_TIMEOUT * 2), **kwargs)


def follow_up(fleet: RunningFleet, backend: Any) -> Request:
    return rude_client.follow_up(fleet, backend, wait=READ_TIMEOUT * 2)


def upstream_errors(fleet: RunningFleet) -> float:
    """The router's count of backend failures (fleet_upstream_errors_total, every kind)."""
    metrics = httpx.get(f"{fleet.base_url}/metrics", timeout=10)
    assert metrics.status_code == 200, metrics.text[:300]
    found = re.findall(r"(?m)^fleet_upstream_errors_total\{[^}]*\} (\S+)$", metrics.text)
    return sum(float(value) for value in found)


@contextlib.contextmanager
def counted_as_valid(fleet: RunningFleet) -> Iterator[None]:
    """The block's answers are odd but valid: the router must not count a backend failure for them."""
    before = upstream_errors(fleet)
    yield
    assert upstream_errors(fleet) == before, "the router took this valid answer for a backend failure"


@dataclass
class Curl:
    code: int  # curl's exit code: 0 ok, 18 partial transfer, 56 failure receiving data
    status: int
    body: bytes
    stderr: str


def curl(url: str, *args: str, data: bytes | None = None) -> Curl:
    argv = ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args, url]
    if data is not None:
        argv[1:1] = ["--data-binary", "@-"]
    done = subprocess.run(argv, input=data or b"", capture_output=True, timeout=15)
    body, _, status = done.stdout.rpartition(b"\n")
    return Curl(done.returncode, int(status or 0), body, done.stderr.decode(errors="replace"))


# --- 1-6: answers that are odd but valid ------------------------------------------------------------


def test_expect_100_continue_is_not_forwarded_and_the_final_answer_arrives(
    fleet: RunningFleet, backend: RudeBackend
) -> None:
    """The client's Expect stays with the router (it has the body already); a 100 the backend sends
    anyway is skipped, the client gets the final 200, and nothing of it is left on the connection."""
    fresh_pool(backend)
    tag = new_tag()
    body = json.dumps({**COMPLETION, "pad": "x" * 2000}).encode()
    headers = ["-H", "x-rude: continue", "-H", f"x-tag: {tag}", "-H", "content-type: application/json",
               "-H", "Expect: 100-continue"]  # fmt: skip
    with counted_as_valid(fleet):
        got = curl(f"{fleet.base_url}/v1/completions", *headers, data=body)
        assert got.code == 0 and got.status == 200, got
        assert json.loads(got.body)["tag"] == tag, got.body[:300]
        seen = backend.only(tag)
        assert seen.header("expect") is None, f"the router forwarded Expect: {seen.header('expect')}"
        assert seen.body == body
        assert follow_up(fleet, backend).conn == seen.conn  # the connection was whole and kept


def test_103_early_hints_is_skipped_for_the_final_answer(fleet: RunningFleet, backend: RudeBackend) -> None:
    """An interim 103 before the 200: the client gets the 200 and its body, and the connection stays in step."""
    fresh_pool(backend)
    with counted_as_valid(fleet):
        tag, response, _ = call(fleet, "early-hints")
        assert response.status_code == 200, response.text[:300]
        assert response.json()["tag"] == tag
        assert follow_up(fleet, backend).conn == backend.only(tag).conn


def test_head_answer_has_no_body_whatever_its_content_length(fleet: RunningFleet, backend: RudeBackend) -> None:
    """A HEAD answer's Content-Length describes a body that is never sent: the router passes the head
    on at once and the connection is free for the next request right away."""
    fresh_pool(backend)
    with counted_as_valid(fleet):
        tag, response, seconds = call(fleet, "head", method="HEAD", path="/v1/health")
        assert response.status_code == 200 and seconds < PROMPT, (response.status_code, seconds)
        assert response.headers.get("content-length") == "1234" and response.content == b""
        assert follow_up(fleet, backend).conn == backend.only(tag).conn


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(fleet: RunningFleet, backend: RudeBackend, status: int) -> None:
    """204 and 304 end at their head (no length, no chunks): answered at once, connection reused."""
    fresh_pool(backend)
    with counted_as_valid(fleet):
        tag, response, seconds = call(fleet, str(status), method="GET", path="/v1/health")
        assert response.status_code == status and seconds < PROMPT, (response.status_code, seconds)
        assert response.content == b""
        assert follow_up(fleet, backend).conn == backend.only(tag).conn


def test_close_delimited_body_arrives_whole(fleet: RunningFleet, backend: RudeBackend) -> None:
    """No length and no chunks: the body ends when the backend closes, and that is a complete 200,
    not a broken answer. The next request opens a new connection."""
    fresh_pool(backend)
    with counted_as_valid(fleet):
        tag, response, _ = call(fleet, "close-delimited")
        assert response.status_code == 200
        assert response.content == b"".join(close_delimited_parts(tag)), f"{len(response.content)} bytes arrived"
        assert follow_up(fleet, backend).conn != backend.only(tag).conn


def test_chunked_body_with_trailers_arrives_whole(fleet: RunningFleet, backend: RudeBackend) -> None:
    """Trailers after the last chunk are consumed: the client gets the body, the connection stays in step."""
    fresh_pool(backend)
    with counted_as_valid(fleet):
        tag, response, _ = call(fleet, "trailers")
        assert response.status_code == 200 and response.content == b"hello world", response.content[:300]
        assert follow_up(fleet, backend).conn == backend.only(tag).conn


# --- 7-9: answers that are broken -------------------------------------------------------------------


@pytest.mark.parametrize("case", ["huge-header", "many-headers"])
def test_response_head_over_the_limit_is_a_502(fleet: RunningFleet, backend: RudeBackend, case: str) -> None:
    """A 100 KB header line, or 300 header fields: refused as a JSON 502 that shows the client none of
    the backend's bytes; the cause goes to the router's log with the request id; the router keeps serving."""
    _, response, _ = call(fleet, case)
    error = assert_json_error(response, 502)
    assert error["code"] == "backend-bad-response" and "oversized response head" in error["message"]
    assert b"hhhhhhhh" not in response.content and b"x-h1" not in response.content
    request_id = response.headers["x-request-id"]
    fleet.wait_for(lambda: f"backend-bad-response (id {request_id})" in fleet.log_tail(), 5, "the cause in the log")
    follow_up(fleet, backend)


@pytest.mark.parametrize("pool", ["fresh", "pooled"])
def test_request_taken_then_dropped_is_a_502_and_never_sent_twice(
    fleet: RunningFleet, backend: RudeBackend, pool: str
) -> None:
    """The backend read the POST and closed without a word: it may have acted on it, so the router
    must not send it again (not even when the connection came from the pool); the client gets a 502."""
    fresh_pool(backend)
    warm = follow_up(fleet, backend) if pool == "pooled" else None
    tag, response, _ = call(fleet, "read-and-close")
    assert_json_error(response, 502)
    time.sleep(0.3)  # a retry, if any, has arrived by now
    seen = backend.only(tag)  # exactly one copy
    if warm is None:
        assert seen.index == 0, "premise: the rude request opened a new connection"
    else:
        assert (seen.conn, seen.index) == (warm.conn, 1), "premise: the rude request went on the pooled connection"
    follow_up(fleet, backend)


@pytest.mark.parametrize("case", ["crash-chunked", "crash-length"])
def test_answer_broken_off_aborts_the_client_connection_curl(
    fleet: RunningFleet, backend: RudeBackend, case: str
) -> None:
    """The backend dies mid-body: curl must see an incomplete transfer (exit 18 or 56), never a clean
    end (no terminating chunk, no short body passed off as whole)."""
    got = curl(f"{fleet.base_url}/v1/completions", "-H", f"x-rude: {case}", "-H", "content-type: application/json",
               data=json.dumps(COMPLETION).encode())  # fmt: skip
    assert got.status == 200, got
    assert got.code in (18, 56), f"curl exit {got.code} (0 means the router ended the broken answer cleanly): {got}"
    follow_up(fleet, backend)


@pytest.mark.parametrize("case", ["crash-chunked", "crash-length"])
def test_answer_broken_off_raises_in_the_client_httpx(fleet: RunningFleet, backend: RudeBackend, case: str) -> None:
    """The same with httpx: reading the stream raises after the first bytes, it does not just end."""
    received = b""
    with (
        httpx.Client(timeout=READ_TIMEOUT * 2) as client,
        client.stream("POST", f"{fleet.base_url}/v1/completions", json=COMPLETION, headers={"x-rude": case}) as answer,
    ):
        assert answer.status_code == 200
        with pytest.raises(httpx.TransportError):  # RemoteProtocolError: peer closed, incomplete body
            for part in answer.iter_raw():
                received += part
    assert received.startswith(b"data: partial" if case == "crash-chunked" else b"0123456789"), received
    follow_up(fleet, backend)


# --- 10: a client that stalls its body --------------------------------------------------------------


def raw_exchange(fleet: RunningFleet, data: bytes, wait: float) -> tuple[bytes, bytes, float]:
    """Send raw bytes to the router and read one answer: (head, body, seconds). Fails after ``wait``."""
    host, port = fleet.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        started = time.monotonic()
        sock.sendall(data)
        received = b""
        try:
            while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _length(received):
                part = sock.recv(65536)
                if not part:
                    break
                received += part
        except TimeoutError:
            pytest.fail(f"no complete answer within {wait:g}s; got {received[:300]!r}")
    answer_head, _, body = received.partition(b"\r\n\r\n")
    return answer_head, body, time.monotonic() - started


def _length(received: bytes) -> int:
    found = re.search(rb"(?im)^content-length:\s*(\d+)", received.partition(b"\r\n\r\n")[0])
    return int(found.group(1)) if found else 0


@pytest.mark.parametrize("sent", [0, 10])
def test_stalled_request_body_gets_408_and_never_reaches_the_backend(
    fleet: RunningFleet, backend: RudeBackend, sent: int
) -> None:
    """A client announces 100 body bytes and sends `sent` of them: 408 body-timeout within
    body_timeout + 1 s, and the backend never hears of the request."""
    tag = new_tag()
    request = (f"POST /v1/completions HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\n"
               f"x-tag: {tag}\r\ncontent-length: 100\r\n\r\n").encode() + b"{" * sent  # fmt: skip
    answer_head, body, seconds = raw_exchange(fleet, request, wait=BODY_TIMEOUT + 4)
    assert answer_head.startswith(b"HTTP/1.1 408"), answer_head[:200]
    assert json.loads(body)["error"]["code"] == "body-timeout", body[:300]
    assert seconds <= BODY_TIMEOUT + 1, f"408 after {seconds:.2f}s"
    time.sleep(0.3)
    assert backend.tagged(tag) == []
    follow_up(fleet, backend)


# --- 11: many clients over few connections ----------------------------------------------------------


def test_interleaved_clients_never_get_each_others_answers(
    fleet: RunningFleet, backend: RudeBackend, figure: Callable[[str, object], None]
) -> None:
    """40 clients x 25 requests share the router's pooled connections while the backend answers after
    random delays in randomly split writes: every client gets exactly its own echo back, every
    request reaches the backend exactly once, and connections really are shared between clients."""
    clients, per_client = 40, 25
    fresh_pool(backend)
    first = len(backend.requests)

    def run_client(client_id: int) -> list[str]:
        rng = random.Random(client_id)
        problems = []
        with httpx.Client(base_url=fleet.base_url, timeout=10) as http:
            for seq in range(per_client):
                sent = json.dumps({"client": client_id, "seq": seq, "pad": "p" * rng.randint(0, 3000)})
                headers = {"x-rude": "jitter", "x-tag": f"mix-{client_id}-{seq}", "content-type": "application/json"}
                response = http.post("/v1/completions", content=sent, headers=headers)
                if response.status_code != 200 or response.text != sent:
                    problems.append(f"client {client_id} seq {seq}: {response.status_code} {response.text[:120]!r}")
        return problems

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        problems = [p for found in pool.map(run_client, range(clients), timeout=90) for p in found]
    seconds = time.monotonic() - started
    assert problems == [], problems[:5]
    mixed = [r for r in backend.requests[first:] if (r.tag or "").startswith("mix-")]
    expected = sorted(f"mix-{c}-{s}" for c in range(clients) for s in range(per_client))
    assert sorted(r.tag or "" for r in mixed) == expected, "each request reached the backend exactly once"
    clients_on: dict[int, set[str]] = defaultdict(set)
    for request in mixed:
        clients_on[request.conn].add((request.tag or "").split("-")[1])
    assert len(clients_on) < clients * per_client // 4, f"{len(clients_on)} connections: hardly any reuse"
    assert max(len(ids) for ids in clients_on.values()) > 1, "premise: some connection carried several clients"
    figure("requests / backend connections / seconds", f"{len(mixed)} / {len(clients_on)} / {seconds:.1f}")
    follow_up(fleet, backend)


# --- 12: TLS to the backend -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    pem = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return ca, pem


@pytest.fixture(scope="module")
def tls_backend(tls_ca: tuple[trustme.CA, Path]) -> Iterator[RudeBackend]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca[0].issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with rude_backend(dispatch, context) as running:
        BACKENDS.append(running)
        yield running


@pytest.fixture(scope="module")
def tls_fleet(
    tmp_path_factory: pytest.TempPathFactory, tls_backend: RudeBackend, tls_ca: tuple[trustme.CA, Path]
) -> Iterator[RunningFleet]:
    config = fleet_config(tls_backend.url, f'upstream_ca_bundle = "{tls_ca[1]}"')
    with run_fleet(tmp_path_factory.mktemp("tls"), config) as running:
        yield running


def test_tls_backend_with_private_ca_answers(tls_fleet: RunningFleet, tls_backend: RudeBackend) -> None:
    """An https backend whose certificate a private CA signed: trusted via router.upstream_ca_bundle."""
    follow_up(tls_fleet, tls_backend)


def test_tls_sse_streams_event_by_event(tls_fleet: RunningFleet, tls_backend: RudeBackend) -> None:
    """SSE over TLS is not buffered: each event reaches the client before the backend sends the next."""
    tag = new_tag()
    arrived: list[tuple[float, str]] = []
    headers = {"x-rude": "sse", "x-tag": tag}
    with (
        httpx.Client(timeout=READ_TIMEOUT * 2) as client,
        client.stream("POST", f"{tls_fleet.base_url}/v1/completions", json=COMPLETION, headers=headers) as answer,
    ):
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        arrived = [(time.monotonic(), line) for line in answer.iter_lines() if line.startswith("data: ")]
    assert [line for _, line in arrived] == [f"data: {i}" for i in range(4)]
    sent = tls_backend.only(tag).marks
    for i in range(3):
        assert arrived[i][0] < sent[i + 1], f"event {i} arrived only after event {i + 1} was sent"


def test_tls_connection_is_reused(tls_fleet: RunningFleet, tls_backend: RudeBackend) -> None:
    """Sequential requests share one TLS connection to the backend (no handshake per request)."""
    fresh_pool(tls_backend)
    connections = {follow_up(tls_fleet, tls_backend).conn for _ in range(5)}
    assert len(connections) == 1, f"5 requests used {len(connections)} connections"


def test_tls_backend_without_the_ca_bundle_is_a_clear_502(
    tmp_path: Path, tls_backend: RudeBackend, tls_ca: tuple[trustme.CA, Path]
) -> None:
    """Without upstream_ca_bundle the certificate is not trusted: a prompt JSON 502 saying so, not a hang."""
    with run_fleet(tmp_path, fleet_config(tls_backend.url)) as untrusting:
        tag, response, seconds = call(untrusting, None)
    error = assert_json_error(response, 502)
    assert seconds < PROMPT, f"the 502 took {seconds:.2f}s"
    assert re.search(r"certificate|tls|ssl", error["message"], re.IGNORECASE), error["message"]
    assert tls_backend.tagged(tag) == []
