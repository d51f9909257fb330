"""Bad input over raw sockets: each class gets a clear 4xx, and the router keeps serving."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from .support.fleetproc import COMPLETION, RunningFleet, run_fleet

pytestmark = pytest.mark.reliability  # an attack, fault or bad-input suite: ./dev reliability

CONFIG = """
[router]
default_entry = "small"
body_timeout = 1

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"

[[teams]]
name = "frontend"
entry = "small"
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    with run_fleet(tmp_path_factory.mktemp("bad-input"), CONFIG) as running:
        running.start("small")
        yield running


def raw(fleet: RunningFleet, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are; return the status and the whole answer."""
    host, port = fleet.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    answer = b""
    while b"\r\n\r\n" not in answer:
        data = sock.recv(65536)
        if not data:
            break
        answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:")), None)
    while length is not None and len(body) < length:
        data = sock.recv(65536)
        if not data:
            break
        body += data
    return int(head.split(b" ")[1]), head + b"\r\n\r\n" + body


def post(path: str, body: bytes, *headers: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: fleet", b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (post("/v1/completions", b'{"segments": {"prefix": ', b"Content-Type: application/json"), 400),
        (post("/v1/completions", b"\xff\xfe{}", b"Content-Type: application/json"), 400),
        (post("/v1/completions", b'{"segments": {"prefix": 1}}', b"Content-Type: application/json"), 422),
        (post("/v1/completions", b'{"segments": {"prefix": ""}}', b"Content-Type: text/plain"), 415),
        (post("/v1/completions", b"{}"), 415),
    ],
    ids=["malformed-json", "invalid-utf8-body", "wrong-types", "wrong-content-type", "no-content-type"],
)
def test_bad_bodies_are_4xx_from_tabby(fleet: RunningFleet, request_bytes: bytes, status: int) -> None:
    assert raw(fleet, request_bytes)[0] == status


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /v1/../fleet/entries HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"bad-path"),
        (b"GET /v1/%2e%2e/%2E%2E/fleet/entries HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"bad-path"),
        (b"GET /teams/../fleet/entries HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"bad-path"),
        (b"GET /teams/frontend/v1/..%5c..%5cfleet HTTP/1.1\r\nHost: x\r\n\r\n", 400, b"bad-path"),
        (b"GET /teams/fr%FFnt/v1/health HTTP/1.1\r\nHost: x\r\n\r\n", 404, b"unknown-team"),
        (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Tabby-Team: \xff\xfe\r\n\r\n", 404, b"unknown-team"),
        (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Tabby-Model: \xc3\x28\r\n\r\n", 404, b"unknown-model"),
        (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", 431, b"headers-too-large"),
        (b"GET /v1/health?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, b"url-too-long"),
        (post("/v1/completions", b"x" * (1024 * 1024 + 10), b"Content-Type: application/json"), 413, b"body-too-large"),
    ],
    ids=["dot-dot", "encoded-dot-dot", "team-dot-dot", "encoded-backslash", "invalid-utf8-path",
         "invalid-utf8-team-header", "invalid-utf8-model-header", "huge-header", "huge-url", "huge-body"],
)  # fmt: skip
def test_router_refusals_are_json_4xx(fleet: RunningFleet, request_bytes: bytes, status: int, code: bytes) -> None:
    got, answer = raw(fleet, request_bytes)
    assert got == status, answer[:500]
    assert b"application/json" in answer.split(b"\r\n\r\n")[0] and b'"code": "' + code + b'"' in answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Tabby-Team: a\rInjected: yes\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Tabby-Team: a\nInjected: yes\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Tabby-Team : a\r\n\r\n",
        b"GET /v1/he alth HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/health HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /teams/fr\xffnt/v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ],
    ids=[
        "bare-cr",
        "bare-lf",
        "space-before-colon",
        "space-in-path",
        "bad-version",
        "raw-invalid-utf8-path",
        "double-length",
    ],
)
def test_malformed_http_is_a_400_and_injects_nothing(fleet: RunningFleet, request_bytes: bytes) -> None:
    status, _ = raw(fleet, request_bytes)
    assert 400 <= status < 500
    seen = fleet.backend_stats("small")["last_headers"]
    assert "injected" not in seen


def test_router_still_serves_after_all_of_it(fleet: RunningFleet) -> None:
    response = httpx.post(f"{fleet.base_url}/v1/completions", json=COMPLETION)
    assert response.status_code == 200 and "StarCoder-1B" in response.text


def test_stalled_body_is_408_not_a_held_connection(fleet: RunningFleet) -> None:
    host, port = fleet.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n" + b'{"segments": ')  # fmt: skip
        status, answer = read_answer(sock)  # nothing more is sent: the router must give up after body_timeout
    assert status == 408 and b'"body-timeout"' in answer
