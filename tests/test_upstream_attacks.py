"""Upstream attacks: a hostile or broken backend, and a hostile client, driven through the whole router.

tests/test_upstream_conformance.py holds the router to odd-but-valid answers and to plain breakage.
This module attacks the same path on purpose: response smuggling (Transfer-Encoding with
Content-Length, conflicting or invalid lengths, bytes the router never asked for), answers before the
request body was read, a backend that never reads, invalid status lines and header bytes, a head
trickled past the first-byte timeout, an event stream that stops without its end; and on the other
side a client that half-closes, pipelines, sends Expect without a body, frames its body badly or
leaves in the middle of it.

Every case ends with a normal request that must get its own answer (never bytes the rude answer left
behind), and the hostile-client cases check that the router holds no request in flight afterwards
(``fleet_in_flight`` on /metrics). ``x-rude`` picks the backend's answer and ``x-tag`` marks each
request, as in the conformance suite. The backend is a :class:`~tests.support.rude_backend.LazyBodyBackend`:
the handler reads the request body itself, so some answers can come before it (or never read it).

Nine of these cases found router bugs when they were written (docs/RELIABILITY.md lists them, each
with the fix); they pass now.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from .support import fleets, rude_client
from .support.fleetproc import RunningFleet
from .support.rude_backend import Connection, LazyBodyBackend, Request, chunk, head, lazy_body_backend, ok, read_body
from .support.rude_client import assert_json_error, fresh_pool, new_tag

pytestmark = pytest.mark.reliability  # an attack, fault or bad-input suite: ./dev reliability

BODY_TIMEOUT = 1.0
READ_TIMEOUT = 1.5  # also the first-byte timeout: the entry sets no first_byte_timeout of its own
PROMPT = 1.0  # "promptly": well under READ_TIMEOUT
SLACK = 1.0  # how late a timeout may fire (a loaded CI machine)
WAIT = READ_TIMEOUT + SLACK + 1.0  # the longest a test waits for an answer before calling it a hang
HOLD = READ_TIMEOUT + 4.0  # how long a stalling backend stalls: past every bound above, but not forever
MAX_BODY = 32 * 1024 * 1024
BIG_BODY = 24 * 1024 * 1024  # far more than loopback socket buffers hold while the backend reads nothing
BACKENDS: list[LazyBodyBackend] = []


def fleet_config(url: str) -> str:
    return fleets.rude(
        url, f"body_timeout = {BODY_TIMEOUT}\nread_timeout = {READ_TIMEOUT}\nmax_body_bytes = {MAX_BODY}"
    )


# --- the backend's answers, one per x-rude value ----------------------------------------------------

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

SMUGGLED_BODY = b'{"tag": "SMUGGLED", "conn": 0, "size": 0}'
# A whole response nobody asked for: if a client ever gets it, the router handed it a stale answer.
SMUGGLED = head(200, ("content-type", "application/json"), ("content-length", len(SMUGGLED_BODY))) + SMUGGLED_BODY


def own_body(request: Request) -> bytes:
    return json.dumps({"tag": request.tag, "conn": request.conn, "size": len(request.body)}).encode()


def own_answer(request: Request) -> bytes:
    """A normal answer naming the request it answers (its tag) and the connection it came on."""
    return ok(own_body(request))


# Answers written whole once the request body is read; the connection is then kept, whatever the
# answer says: a rude backend does not close when it announces it will, so only the router's own
# judgement keeps it from reusing a connection it must not.
FIXED: dict[str, bytes] = {
    # Response smuggling: framing that two parsers could read two ways
    "te-and-cl": head(200, ("content-type", "text/plain"), ("transfer-encoding", "chunked"), ("content-length", 3))
    + chunk(b"hello")
    + b"0\r\n\r\n",
    "cl-and-te-split": head(
        200, ("content-type", "text/plain"), ("content-length", 5), ("transfer-encoding", "chunked")
    )
    + b"0\r\n\r\n"
    + SMUGGLED,
    "two-lengths": head(200, ("content-length", 5), ("content-length", 45)) + b"hello" + b"x" * 40,
    "negative-length": head(200, ("content-length", -5)) + b"hello",
    "signed-length": head(200, ("content-length", "+5")) + b"hello",
    "huge-length": head(200, ("content-length", "99999999999999999999999")) + b"hello",
    "bad-chunk-in-first-write": head(200, ("transfer-encoding", "chunked")) + b"zz\r\nhello\r\n0\r\n\r\n",
    # Heads that are not HTTP we accept
    "no-status-line": b"hello there\r\n\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nx-a : b\r\ncontent-length: 2\r\n\r\n{}",
    "bare-cr-in-value": b"HTTP/1.1 200 OK\r\nx-a: a\rb\r\ncontent-length: 2\r\n\r\n{}",
    # Status lines
    "status-000": b"HTTP/1.1 000 Zero\r\ncontent-length: 2\r\n\r\n{}",
    "status-600": b"HTTP/1.1 600 Six\r\ncontent-length: 2\r\n\r\n{}",
    "status-999": b"HTTP/1.1 999 Weird\r\ncontent-length: 2\r\n\r\n{}",
    # Header values aiohttp accepts but an HTTP/1.1 server may not send on
    "value-with-del": b"HTTP/1.1 200 OK\r\nx-a: a\x7fb\r\ncontent-length: 2\r\n\r\n{}",
    "value-with-ctl": b"HTTP/1.1 200 OK\r\nx-a: a\x01b\r\ncontent-length: 2\r\n\r\n{}",
    # A 304 may carry the Content-Length of the representation (RFC 9110 8.6); it still has no body
    "304-with-length": head(304, ("etag", '"v1"'), ("content-length", 100)),
    # A transfer coding other than chunked: hop-by-hop, so whoever strips the header must decode it
    "te-gzip-chunked": head(200, ("content-type", "text/plain"), ("transfer-encoding", "gzip, chunked"))
    + chunk(gzip.compress(b"hello world"))
    + b"0\r\n\r\n",
}

# Answers whose framing ends where the backend closes (written whole, then the connection is closed)
CLOSE_DELIMITED: dict[str, bytes] = {
    "http10-no-length": b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n" + b"ten bytes." * 300,
    "no-headers": b"HTTP/1.1 200 OK\r\n\r\n" + b"no headers" * 300,
    "te-gzip-only": head(200, ("content-type", "text/plain"), ("transfer-encoding", "gzip"))
    + gzip.compress(b"hello world"),
    "unasked-upgrade": b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nzzzz",
}

MALFORMED_CHUNKS = {  # what follows one good chunk, after a pause, in the middle of an answer
    "size-not-hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "data-overrun": b"5\r\nhelloXX0\r\n\r\n",
    "size-overflow": b"fffffffffffffffffffff\r\nhello\r\n",
}

EXTRA_AFTER = {  # a complete answer, then (after a pause, on the idle connection) bytes nobody asked for
    "length": lambda request: (own_answer(request), SMUGGLED),
    "length-same-write": lambda request: (own_answer(request), SMUGGLED),  # no pause: one write
    "chunked": lambda request: (
        head(200, ("content-type", "application/json"), ("transfer-encoding", "chunked"))
        + chunk(own_body(request))
        + b"0\r\n\r\n",
        SMUGGLED,
    ),
    "204": lambda request: (head(204), SMUGGLED),
    "garbage": lambda request: (own_answer(request), b"XXXX not http\r\n\r\n"),
}


async def stream_events(writer: Writer, request: Request, count: int, gap: float, end: bool = True) -> None:
    """An SSE answer of ``count`` events ``gap`` apart. request.marks gets "done", or "cancelled" when
    the router closed the connection first."""
    writer.write(head(200, ("content-type", "text/event-stream"), ("transfer-encoding", "chunked")))
    try:
        for i in range(count):
            writer.write(chunk(f"data: {i}\n\n".encode()))
            await writer.drain()
            await asyncio.sleep(gap)
        if end:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        request.marks.append("cancelled")
        raise
    request.marks.append("done")


async def drain_body(reader: Reader, request: Request) -> int:
    """Read and drop the request body (or what of it arrives before the router closes); returns its size."""
    left = int(request.header("content-length") or 0)
    got = 0
    while got < left:
        data = await reader.read(min(1 << 16, left - got))
        if not data:
            break
        got += len(data)
    return got


async def trickle(writer: Writer, piece: bytes, gap: float, seconds: float) -> bool:
    """Write ``piece`` every ``gap`` seconds for ``seconds``, then close."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(gap)
    return False


async def dispatch(reader: Reader, writer: Writer, request: Request, _conn: Connection) -> bool:
    """The backend's handler: the answer named by the request's x-rude header, else a normal one."""
    case = request.header("x-rude") or ""
    # Answers that come before the request body was read (or instead of reading it)
    if case in ("early-413-lingering", "early-413-abrupt"):
        writer.write(head(413, ("content-type", "application/json"), ("connection", "close"), ("content-length", 15)))
        writer.write(b'{"early":"413"}')
        await writer.drain()
        if case == "early-413-lingering":  # as a careful server closes: FIN first, then read what still comes
            writer.write_eof()
            request.marks.append(await drain_body(reader, request))
        return False
    if case == "early-200-keep-alive":  # answer at once, then read the body to stay in step
        writer.write(own_answer(request))
        await writer.drain()
        received = await drain_body(reader, request)
        request.marks.append(received)
        return received == int(request.header("content-length") or 0)
    if case == "never-read":
        await asyncio.sleep(HOLD)
        return False
    request.body = await read_body(reader, request)
    if case in FIXED:
        writer.write(FIXED[case])
        return True
    if case in CLOSE_DELIMITED:
        writer.write(CLOSE_DELIMITED[case])
        await writer.drain()
        return False
    if case.startswith("extra-after-"):
        kind = case.removeprefix("extra-after-")
        answer, extra = EXTRA_AFTER[kind](request)
        if kind.endswith("same-write"):
            writer.write(answer + extra)
            return True
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(0.2)  # the router has the answer and has pooled the connection again
        writer.write(extra)
        return True
    if case.startswith("bad-chunk-"):
        writer.write(head(200, ("content-type", "text/event-stream"), ("transfer-encoding", "chunked")))
        writer.write(chunk(b"data: 0\n\n"))
        await writer.drain()
        await asyncio.sleep(0.3)  # the client has the first event before the bad bytes come
        request.marks.append(time.monotonic())
        writer.write(MALFORMED_CHUNKS[case.removeprefix("bad-chunk-")])
        await writer.drain()
        await asyncio.sleep(HOLD)  # and the connection stays open: only the bytes say the answer is broken
        return False
    if case == "connection-close":
        writer.write(head(200, ("content-type", "application/json"), ("connection", "close"),
                          ("keep-alive", "timeout=5"), ("content-length", len(own_body(request)))))  # fmt: skip
        writer.write(own_body(request))
        return True  # yet keeps the connection open, and would read another request on it
    if case == "http10":
        body = own_body(request)
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
        writer.write(body)
        return True  # HTTP/1.0 without keep-alive means close: the router must not reuse it either
    if case == "http10-keep-alive":
        body = own_body(request)
        writer.write(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        return True
    if case == "odd-reason":
        writer.write(
            b"HTTP/1.1 200 Totally \xe9 Fine (trust me)\r\ncontent-length: %d\r\n\r\n" % len(own_body(request))
        )
        writer.write(own_body(request))
        return True
    if case == "no-reason":
        writer.write(b"HTTP/1.1 200\r\ncontent-length: %d\r\n\r\n%s" % (len(own_body(request)), own_body(request)))
        return True
    if case == "trickled-head":  # slowloris from the backend: a head that never ends, one byte at a time
        writer.write(b"HTTP/1.1 200 OK\r\nx-slow: ")
        return await trickle(writer, b"a", 0.1, HOLD)
    if case == "interim-flood":  # interim answers and never a final one
        return await trickle(writer, b"HTTP/1.1 100 Continue\r\n\r\n", 0.3, HOLD)
    if case == "sse-then-silence":  # events, then neither the last chunk nor a close
        await stream_events(writer, request, 3, 0.1, end=False)
        await asyncio.sleep(HOLD)
        return False
    if case == "sse":
        await stream_events(writer, request, int(request.header("x-events") or 20), 0.1)
        return True
    writer.write(own_answer(request))
    return True


# --- fixtures ---------------------------------------------------------------------------------------


backend, fleet, no_handler_bugs = rude_client.suite_fixtures(
    lazy_body_backend, dispatch, fleet_config, BACKENDS, "attacks"
)


# --- helpers ----------------------------------------------------------------------------------------


def call(fleet: RunningFleet, case: str | None, *args: Any, **kwargs: Any) -> tuple[str, httpx.Response, float]:
    return rude_client.call(fleet, case, *args, wait=kwargs.pop("wait", WAIT), **kwargs)


def follow_up(fleet: RunningFleet, backend: Any) -> Request:
    return rude_client.follow_up(fleet, backend, wait=WAIT)


def metric(fleet: RunningFleet, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    text = httpx.get(f"{fleet.base_url}/metrics", timeout=10).text
    total = 0.0
    for found in re.finditer(rf"(?m)^{name}(?:\{{([^}}]*)\}})? (\S+)$", text):
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1) or ""))
        if all(have.get(key) == value for key, value in labels.items()):
            total += float(found.group(2))
    return total


def assert_nothing_in_flight(fleet: RunningFleet) -> None:
    """fleet_in_flight returns to 0: no request is left holding the entry's slot."""
    fleet.wait_for(lambda: metric(fleet, "fleet_in_flight", entry="rude") == 0, 3, "fleet_in_flight to return to 0")


def asgi_crashes(fleet: RunningFleet) -> int:
    """How often uvicorn logged an exception the router let escape (the client then gets a bare close)."""
    return fleet.log_path.read_text(errors="replace").count("Exception in ASGI application")


def raw_request(tag: str, case: str | None = None, body: bytes = b"{}", method: str = "POST",
                path: str = "/v1/completions", extra: str = "") -> bytes:  # fmt: skip
    lines = [f"{method} {path} HTTP/1.1", "host: router", f"x-tag: {tag}", "content-type: application/json"]
    if case:
        lines.append(f"x-rude: {case}")
    if method != "GET":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1") + (body if method != "GET" else b"")


class Hung(AssertionError):
    """The router sent nothing more for the client's whole patience."""


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # the framing said where the body ends, and all of it arrived
    interim: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


class RawClient:
    """A client on a raw socket: send any bytes, read answers one by one (1xx kept apart), and know
    when each byte arrived and whether the router closed."""

    def __init__(self, fleet: RunningFleet, wait: float = WAIT) -> None:
        host, port = fleet.base_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=wait)
        self.wait = wait
        self.buffer = b""
        self.received = 0  # bytes in all
        self.arrivals: list[float] = []  # when each piece of data arrived
        self.closed_at: float | None = None  # when the router closed (FIN or reset)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise AssertionError(f"the router closed the connection: sending failed with {exc!r}") from None

    def _fill(self) -> bool:
        if self.closed_at is not None:
            return False
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            raise Hung(
                f"nothing more from the router within {self.wait:g}s after {self.received} bytes; "
                f"unread: {self.buffer[:300]!r}"
            ) from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed_at = time.monotonic()
            return False
        self.buffer += data
        self.received += len(data)
        self.arrivals.append(time.monotonic())
        return True

    def _until(self, separator: bytes) -> bytes | None:
        while separator not in self.buffer:
            if not self._fill():
                return None
        found, _, self.buffer = self.buffer.partition(separator)
        return found

    def _exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill():
                return None
        found, self.buffer = self.buffer[:size], self.buffer[size:]
        return found

    def at_eof(self) -> bool:
        """True if the router has closed the connection (waits up to the client's patience)."""
        return not self.buffer and not self._fill()

    def read_answer(self, method: str = "POST") -> Answer | None:
        """The next answer; None if the router closed before sending a head."""
        interim = []
        while True:
            raw = self._until(b"\r\n\r\n")
            if raw is None:
                assert not self.buffer, f"the router closed in the middle of a head: {self.buffer[:300]!r}"
                return None
            status_line, *lines = raw.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ")[1])
            headers = [
                (name.strip().lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines)
            ]
            if 100 <= status < 200 and status != 101:
                interim.append(status)
                continue
            break
        answer = Answer(status, headers, b"", True, interim)
        if method == "HEAD" or status in (204, 304):
            return answer
        if (answer.header("transfer-encoding") or "").lower() == "chunked":
            while True:
                size_line = self._until(b"\r\n")
                data = None if size_line is None else self._exactly(int(size_line.split(b";")[0], 16) + 2)
                if data is None:  # broken off: the body is the chunks that arrived whole
                    answer.complete = False
                    return answer
                if data == b"\r\n":  # the last chunk (trailers are not expected from the router)
                    return answer
                answer.body += data[:-2]
        length = answer.header("content-length")
        if length is not None:
            data = self._exactly(int(length))
            answer.body, answer.complete = (self.buffer, False) if data is None else (data, True)
            return answer
        while self._fill():  # close-delimited
            pass
        answer.body, self.buffer = self.buffer, b""
        return answer


# --- 1: response smuggling and framing the router must refuse ---------------------------------------


@pytest.mark.parametrize(
    "case",
    ["te-and-cl", "cl-and-te-split", "two-lengths", "negative-length", "signed-length", "huge-length",
     "bad-chunk-in-first-write", "no-status-line", "space-before-colon", "bare-cr-in-value"],
)  # fmt: skip
def test_ambiguous_or_invalid_framing_is_a_502_and_the_connection_is_dropped(
    fleet: RunningFleet, backend: LazyBodyBackend, case: str
) -> None:
    """Transfer-Encoding with Content-Length, two different lengths, a negative, signed or overflowing
    length, a bad chunk size in the first write, or a head that is not HTTP/1.1: a JSON 502 with none
    of the backend's bytes (RFC 9112 6.3: a proxy discards such an answer and closes the connection),
    and the next request gets its own answer on another connection."""
    fresh_pool(backend)
    tag, response, _ = call(fleet, case)
    error = assert_json_error(response, 502)
    assert error["code"] == "backend-bad-response", error
    for leaked in (b"hello", b"SMUGGLED", b"xxxx", b"there"):
        assert leaked not in response.content, f"the 502 shows the backend's bytes: {response.text[:300]}"
    assert follow_up(fleet, backend).conn != backend.only(tag).conn, "the connection of a refused answer was reused"


@pytest.mark.parametrize(
    "case",
    [
        "length",
        "chunked",
        "204",
        "garbage",
        "length-same-write",
    ],
)  # fmt: skip
def test_bytes_after_a_complete_answer_never_reach_the_next_client(
    fleet: RunningFleet, backend: LazyBodyBackend, case: str
) -> None:
    """The backend finishes an answer and, 0.2 s later (the connection idle in the router's pool) or in
    the same write, sends a whole second response (or garbage) nobody asked for. The next request must
    get its own answer from the backend, never those bytes, and never on that connection."""
    fresh_pool(backend)
    tag, response, _ = call(fleet, f"extra-after-{case}")
    assert response.status_code in (200, 204) and b"SMUGGLED" not in response.content, response.text[:300]
    time.sleep(0.5)  # the extra bytes are on the pooled connection by now
    follow = follow_up(fleet, backend)
    assert follow.conn != backend.only(tag).conn, "a connection that spoke out of turn was reused"


# --- 2: a body broken off in the middle ----------------------------------------------------------------


@pytest.mark.parametrize("case", list(MALFORMED_CHUNKS))
def test_malformed_chunk_mid_answer_aborts_the_client_promptly(
    fleet: RunningFleet, backend: LazyBodyBackend, case: str
) -> None:
    """One good event, then a chunk the parser must reject, and the backend keeps the connection open:
    the client's connection is aborted promptly (no terminating chunk: the answer never looks whole)."""
    tag = new_tag()
    with RawClient(fleet, wait=PROMPT + SLACK) as client:
        client.send(raw_request(tag, f"bad-chunk-{case}"))
        answer = client.read_answer()
        ended = time.monotonic()
    assert answer is not None and answer.status == 200 and answer.body.startswith(b"data: 0"), answer
    assert not answer.complete, "the router ended a broken answer cleanly"
    bad_bytes_sent = backend.only(tag).marks[0]
    assert ended - bad_bytes_sent < PROMPT, f"aborted {ended - bad_bytes_sent:.2f}s after the bad chunk"
    follow_up(fleet, backend)
    assert_nothing_in_flight(fleet)


def test_event_stream_that_goes_silent_is_aborted_after_read_timeout(
    fleet: RunningFleet, backend: LazyBodyBackend
) -> None:
    """Three SSE events, then neither the last chunk nor a close: the client's connection is aborted
    read_timeout after the last event (not sooner, not never), the answer does not look whole, and
    the router counts a midstream-timeout."""
    before = metric(fleet, "fleet_upstream_errors_total", kind="midstream-timeout")
    with RawClient(fleet, wait=READ_TIMEOUT + SLACK + 1) as client:
        client.send(raw_request(new_tag(), "sse-then-silence"))
        answer = client.read_answer()
    assert answer is not None and answer.status == 200, answer
    assert answer.body == b"".join(f"data: {i}\n\n".encode() for i in range(3)), answer.body
    assert not answer.complete, "the router ended the stream cleanly though the backend never did"
    assert client.closed_at is not None
    silence = client.closed_at - client.arrivals[-1]
    assert READ_TIMEOUT - 0.3 <= silence <= READ_TIMEOUT + SLACK, f"aborted after {silence:.2f}s of silence"
    assert metric(fleet, "fleet_upstream_errors_total", kind="midstream-timeout") == before + 1
    follow_up(fleet, backend)
    assert_nothing_in_flight(fleet)


# --- 3: answers before the body, and a backend that never reads it -----------------------------------


@pytest.mark.parametrize("case", ["early-413-lingering", "early-413-abrupt", "early-200-keep-alive"])
def test_answer_before_the_body_was_read(fleet: RunningFleet, backend: LazyBodyBackend, case: str) -> None:
    """A 24 MiB body; the backend answers on seeing the head, while the router is still writing. A
    413 with Connection: close then a lingering close (or an abrupt one, which may reset the
    connection), or a keep-alive 200 and then reading the body: the client gets that answer (or a
    502 when a reset destroyed it), promptly, and the connection is never reused unless the whole
    body was written."""
    fresh_pool(backend)
    tag, response, seconds = call(fleet, case, content=b"x" * BIG_BODY, headers={"content-type": "text/plain"})
    assert seconds < PROMPT + SLACK, f"the answer took {seconds:.2f}s"
    if case == "early-200-keep-alive":
        assert response.status_code == 200 and response.json()["tag"] == tag, response.text[:300]
    elif case == "early-413-lingering" or response.status_code != 502:
        assert response.status_code == 413 and response.content == b'{"early":"413"}', response.text[:300]
    else:
        assert_json_error(response, 502)
    time.sleep(0.3)
    seen = backend.only(tag)
    follow = follow_up(fleet, backend)
    if not seen.marks or seen.marks[0] < BIG_BODY:
        assert follow.conn != seen.conn, "a connection whose request body was cut short was reused"
    assert_nothing_in_flight(fleet)


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(1024 * 1024, id="1MiB-fits-in-socket-buffers"),
        pytest.param(BIG_BODY, id="24MiB-window-full"),
    ],
)  # fmt: skip
def test_backend_that_never_reads_the_body_is_a_504_after_the_first_byte_timeout(
    fleet: RunningFleet, backend: LazyBodyBackend, size: int
) -> None:
    """The backend takes the head and then neither reads nor answers: a JSON 504 within the first-byte
    timeout (plus slack) whether or not the body fitted in the socket buffers; the router keeps serving."""
    tag, response, seconds = call(fleet, "never-read", content=b"x" * size, headers={"content-type": "text/plain"})
    error = assert_json_error(response, 504)
    assert error["code"] == "backend-timeout", error
    assert READ_TIMEOUT - 0.3 <= seconds <= READ_TIMEOUT + SLACK, f"504 after {seconds:.2f}s"
    backend.only(tag)
    follow_up(fleet, backend)
    assert_nothing_in_flight(fleet)


# --- 4: heads that are slow, odd, or lie about the connection ------------------------------------------


@pytest.mark.parametrize("case", ["trickled-head", "interim-flood"])
def test_head_that_never_completes_is_a_504_after_the_first_byte_timeout(
    fleet: RunningFleet, backend: LazyBodyBackend, case: str
) -> None:
    """Slowloris from the backend: bytes keep coming but the final head never completes. The
    first-byte timeout bounds the wait for the answer's head: a JSON 504 within it (plus slack)."""
    _, response, seconds = call(fleet, case)
    error = assert_json_error(response, 504)
    assert error["code"] == "backend-timeout", error
    assert seconds <= READ_TIMEOUT + SLACK, f"504 after {seconds:.2f}s"
    follow_up(fleet, backend)


@pytest.mark.parametrize("case", ["connection-close", "http10"])
def test_answer_that_says_close_is_not_reused_and_the_client_keeps_its_connection(
    fleet: RunningFleet, backend: LazyBodyBackend, case: str
) -> None:
    """A keep-alive-framed answer with Connection: close (or HTTP/1.0 without keep-alive), from a
    backend that then keeps the connection open anyway: the router must not send the next request on
    it. Connection and Keep-Alive are hop-by-hop: the client's own connection stays open for its next
    request."""
    fresh_pool(backend)
    tag = new_tag()
    with RawClient(fleet) as client:
        client.send(raw_request(tag, case))
        answer = client.read_answer()
        assert answer is not None and answer.status == 200 and json.loads(answer.body)["tag"] == tag, answer
        assert answer.header("connection") is None and answer.header("keep-alive") is None, answer.headers
        follow_tag = new_tag()
        client.send(raw_request(follow_tag))
        follow = client.read_answer()
    assert follow is not None and json.loads(follow.body)["tag"] == follow_tag, "the client's connection was closed"
    assert backend.only(follow_tag).conn != backend.only(tag).conn, "the router reused a connection marked close"


@pytest.mark.parametrize("case", ["http10-keep-alive", "odd-reason", "no-reason"])
def test_odd_but_valid_status_lines_pass(fleet: RunningFleet, backend: LazyBodyBackend, case: str) -> None:
    """HTTP/1.0 with keep-alive, a reason phrase with a latin-1 byte, no reason phrase at all: a
    normal 200 with the backend's body, the connection in step for the next request."""
    fresh_pool(backend)
    tag, response, _ = call(fleet, case)
    assert response.status_code == 200 and response.json()["tag"] == tag, response.text[:300]
    follow_up(fleet, backend)


@pytest.mark.parametrize("case", ["http10-no-length", "no-headers"])
def test_close_delimited_answers_without_framing_headers_arrive_whole(
    fleet: RunningFleet, backend: LazyBodyBackend, case: str
) -> None:
    """HTTP/1.0 with no length, or a status line and no headers at all: the body ends where the backend
    closes, and arrives whole as a normal 200."""
    _, response, _ = call(fleet, case)
    assert response.status_code == 200
    assert response.content == CLOSE_DELIMITED[case].partition(b"\r\n\r\n")[2], f"{len(response.content)} bytes"
    follow_up(fleet, backend)


@pytest.mark.parametrize("case", ["status-000", "status-600", "status-999"])
def test_status_outside_100_to_599_is_a_502(fleet: RunningFleet, backend: LazyBodyBackend, case: str) -> None:
    """RFC 9110 15: status codes outside 100..599 are invalid; a client treats them as 5xx. The router
    must answer a JSON 502 (backend-bad-response), not pass them on or drop the client."""
    crashes = asgi_crashes(fleet)
    _, response, _ = call(fleet, case)
    error = assert_json_error(response, 502)
    assert error["code"] == "backend-bad-response", error
    assert asgi_crashes(fleet) == crashes, "the router let an exception escape to uvicorn"
    follow_up(fleet, backend)


def test_unasked_for_upgrade_is_a_502(fleet: RunningFleet, backend: LazyBodyBackend) -> None:
    """The router never forwards Upgrade, so a 101 is an answer to a question nobody asked (RFC 9110
    15.2.2): a JSON 502, and none of the bytes after the 101."""
    _, response, _ = call(fleet, "unasked-upgrade")
    assert_json_error(response, 502)
    assert b"zzzz" not in response.content
    follow_up(fleet, backend)


@pytest.mark.parametrize("case", ["value-with-del", "value-with-ctl"])
def test_header_value_the_router_cannot_send_is_dropped_or_a_502(
    fleet: RunningFleet, backend: LazyBodyBackend, case: str
) -> None:
    """A header value with a control byte: the client gets a whole answer, either the 200 without
    that header or a JSON 502, and the router lets no exception escape."""
    crashes = asgi_crashes(fleet)
    _, response, _ = call(fleet, case)
    if response.status_code == 502:
        assert_json_error(response, 502)
    else:
        assert response.status_code == 200 and response.content == b"{}", response.text[:300]
        assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", response.headers.get("x-a", "")), response.headers
    assert asgi_crashes(fleet) == crashes, "the router let an exception escape to uvicorn"
    follow_up(fleet, backend)


def test_304_with_content_length_keeps_the_clients_connection(fleet: RunningFleet, backend: LazyBodyBackend) -> None:
    """A 304 may carry the Content-Length of the representation it stands for (RFC 9110 8.6) and never
    has a body: the client gets the 304 and its connection stays usable; no exception escapes."""
    crashes = asgi_crashes(fleet)
    tag = new_tag()
    with RawClient(fleet) as client:
        client.send(raw_request(tag, "304-with-length", method="GET", path="/v1/health"))
        answer = client.read_answer("GET")
        assert answer is not None and answer.status == 304 and answer.body == b"", answer
        follow_tag = new_tag()
        client.send(raw_request(follow_tag))
        follow = client.read_answer()
    assert follow is not None and json.loads(follow.body)["tag"] == follow_tag, "the client's connection was closed"
    assert asgi_crashes(fleet) == crashes, "the router let an exception escape to uvicorn"


@pytest.mark.parametrize("case", ["te-gzip-chunked", "te-gzip-only"])
def test_transfer_coding_is_decoded_or_refused(fleet: RunningFleet, backend: LazyBodyBackend, case: str) -> None:
    """A transfer coding belongs to one hop (RFC 9112 7): a proxy that drops the Transfer-Encoding
    header must pass the decoded body, or refuse the answer with a 502; never the coded bytes as if
    they were the body."""
    _, response, _ = call(fleet, case)
    if response.status_code == 502:
        assert_json_error(response, 502)
    else:
        assert response.status_code == 200 and response.content == b"hello world", response.content[:100]
    follow_up(fleet, backend)


# --- 5: hostile clients --------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["after-the-request", "mid-stream"])
def test_client_half_close_is_a_clean_cancel_or_a_whole_answer(
    fleet: RunningFleet, backend: LazyBodyBackend, when: str, figure: Callable[[str, object], None]
) -> None:
    """The client sends a request for a 2 s event stream, then shuts down its sending side (right away,
    or after the first events). The router may take the FIN for leaving (as nginx does) or answer in
    full; either way the client never gets a truncated stream that looks whole, the backend's stream
    is cancelled promptly if the client was cut off, and no request stays in flight."""
    tag = new_tag()
    with RawClient(fleet) as client:
        client.send(raw_request(tag, "sse"))
        if when == "mid-stream":
            time.sleep(0.35)
        client.sock.shutdown(socket.SHUT_WR)
        cut = time.monotonic()
        answer = client.read_answer()
    events = [f"data: {i}\n\n".encode() for i in range(20)]
    seen = backend.tagged(tag)
    if answer is not None and answer.complete:
        assert answer.body == b"".join(events), answer.body
    else:
        assert answer is None or b"".join(events).startswith(answer.body), answer
        assert client.closed_at is not None and client.closed_at - cut < PROMPT, "the router held a half-closed client"
        if seen:
            fleet.wait_for(lambda: seen[0].marks, PROMPT, "the backend's stream to end")
            assert seen[0].marks == ["cancelled"], f"the stream of a client that left ran on: {seen[0].marks}"
    outcome = "whole answer" if answer is not None and answer.complete else "cut off"
    received = f"{outcome}, {len(answer.body) if answer else 0} body bytes"
    figure("client got / backend's stream", f"{received} / {seen[0].marks if seen else 'never asked'}")
    assert_nothing_in_flight(fleet)
    follow_up(fleet, backend)


def test_pipelined_requests_get_their_own_answers_in_order(fleet: RunningFleet, backend: LazyBodyBackend) -> None:
    """Three requests in one write on one connection, the first a 0.5 s event stream: three answers
    in order, each its own and whole; the backend sees each request once, with its own body."""
    tags = [new_tag() for _ in range(3)]
    sent = raw_request(tags[0], "sse", extra="x-events: 5\r\n")
    sent += raw_request(tags[1], body=json.dumps({"pad": "p" * 5000}).encode()) + raw_request(
        tags[2], method="GET", path="/v1/health"
    )
    with RawClient(fleet) as client:
        client.send(sent)
        answers = [client.read_answer("GET" if i == 2 else "POST") for i in range(3)]
    assert all(answer is not None and answer.complete and answer.status == 200 for answer in answers), answers
    first, second, third = answers
    assert first is not None and first.body == b"".join(f"data: {i}\n\n".encode() for i in range(5)), first
    assert second is not None and json.loads(second.body)["tag"] == tags[1], second
    assert third is not None and json.loads(third.body)["tag"] == tags[2], third
    seen = [backend.only(tag) for tag in tags]
    assert seen[0].marks == ["done"] and seen[1].body == json.dumps({"pad": "p" * 5000}).encode()
    assert_nothing_in_flight(fleet)


def test_expect_100_continue_with_an_empty_body(fleet: RunningFleet, backend: LazyBodyBackend) -> None:
    """Expect: 100-continue with Content-Length: 0: at most one 100 Continue, then the final answer;
    the backend never sees Expect, and the connection stays in step for a second request."""
    tag = new_tag()
    with RawClient(fleet) as client:
        client.send(raw_request(tag, body=b"", extra="expect: 100-continue\r\n"))
        answer = client.read_answer()
        assert answer is not None and answer.status == 200 and json.loads(answer.body)["tag"] == tag, answer
        assert answer.interim in ([], [100]), answer.interim
        second = new_tag()
        client.send(raw_request(second))
        follow = client.read_answer()
    assert follow is not None and follow.interim == [] and json.loads(follow.body)["tag"] == second, follow
    assert backend.only(tag).header("expect") is None


def test_expect_100_continue_and_the_body_never_comes(fleet: RunningFleet, backend: LazyBodyBackend) -> None:
    """Expect: 100-continue, 50 bytes announced and none sent: the router invites the body (100
    Continue), then answers 408 within body_timeout; the backend never hears of it."""
    tag = new_tag()
    with RawClient(fleet, wait=BODY_TIMEOUT + SLACK + 1) as client:
        started = time.monotonic()
        client.send(f"POST /v1/completions HTTP/1.1\r\nhost: router\r\nx-tag: {tag}\r\nexpect: 100-continue\r\n"
                    f"content-length: 50\r\n\r\n".encode())  # fmt: skip
        answer = client.read_answer()
        seconds = time.monotonic() - started
    assert answer is not None and answer.interim == [100] and answer.status == 408, answer
    assert json.loads(answer.body)["error"]["code"] == "body-timeout"
    assert seconds <= BODY_TIMEOUT + SLACK, f"408 after {seconds:.2f}s"
    assert backend.tagged(tag) == []
    assert_nothing_in_flight(fleet)


@pytest.mark.parametrize("case", ["bad-chunk-size", "bad-chunk-after-a-pause", "te-and-cl-smuggling"])
def test_malformed_request_framing_never_reaches_the_backend(
    fleet: RunningFleet, backend: LazyBodyBackend, case: str
) -> None:
    """A chunked request body with a bad chunk size (in the first write, or after a good chunk and a
    pause), or Transfer-Encoding and Content-Length together with a second request hidden in the body:
    a 400 and a closed connection; the backend never sees the request (nor the hidden one)."""
    tag, hidden = new_tag(), new_tag()
    start = f"POST /v1/completions HTTP/1.1\r\nhost: router\r\nx-tag: {tag}\r\n"
    with RawClient(fleet) as client:
        if case == "te-and-cl-smuggling":
            inner = raw_request(hidden)
            body = b"0\r\n\r\n" + inner
            client.send(f"{start}content-length: {len(body)}\r\ntransfer-encoding: chunked\r\n\r\n".encode() + body)
        else:
            client.send(f"{start}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".encode())
            if case == "bad-chunk-after-a-pause":
                time.sleep(0.3)
            client.send(b"zz\r\nnope\r\n0\r\n\r\n")
        answer = client.read_answer()
        assert answer is not None and answer.status == 400, answer
        assert client.at_eof(), "the connection stayed open after a framing error"
    time.sleep(0.3)
    assert backend.tagged(tag) == [] and backend.tagged(hidden) == []
    assert_nothing_in_flight(fleet)
    follow_up(fleet, backend)


def test_client_leaving_mid_body_forwards_nothing(fleet: RunningFleet, backend: LazyBodyBackend) -> None:
    """10,000 body bytes announced, 5,000 sent, then the client closes: the backend never sees a half
    request, the router counts the request as 499 and holds nothing in flight."""
    left_before = metric(fleet, "fleet_requests_total", status="499")
    tag = new_tag()
    with RawClient(fleet) as client:
        client.send(f"POST /v1/completions HTTP/1.1\r\nhost: router\r\nx-tag: {tag}\r\n"
                    f"content-length: 10000\r\n\r\n".encode() + b"x" * 5000)  # fmt: skip
        time.sleep(0.2)
    fleet.wait_for(lambda: metric(fleet, "fleet_requests_total", status="499") == left_before + 1, 3, "a 499")
    assert backend.tagged(tag) == []
    assert_nothing_in_flight(fleet)
    follow_up(fleet, backend)
