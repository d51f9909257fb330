"""Faults the router survives, each with real processes on loopback. Every load here is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support.fleetproc import COMPLETION, RunningFleet, free_port, run_fleet, serve_process, standin_argv

pytestmark = pytest.mark.reliability  # an attack, fault or bad-input suite: ./dev reliability

Figure = Callable[[str, object], None]

CONFIG = """
[router]
default_entry = "steady"

[[entries]]
name = "steady"
model = "TabbyML/StarCoder-1B"
max_containers = 4
max_inputs = 16

[[entries]]
name = "stream"
model = "TabbyML/StarCoder-3B"
chat_model = "TabbyML/Qwen2-1.5B-Instruct"
standin = { chunk_delay = 0.2 }

[[entries]]
name = "hang"
model = "TabbyML/StarCoder-7B"
first_byte_timeout = 1
standin = { completion_delay = 30 }
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    with run_fleet(tmp_path_factory.mktemp("faults"), CONFIG) as running:
        yield running


def test_backend_crash_mid_stream_aborts_the_client_and_entry_restarts(fleet: RunningFleet) -> None:
    """Tabby's SSE has no end marker: a stream that ended cleanly after a crash would look complete.
    The router aborts the client's connection instead, counts it and logs it with the request id."""
    fleet.start("stream")
    with fleet.client() as client:
        pid = fleet.entries()["stream"]["runtime"]["pid"]
        events = []
        request = {"messages": [{"role": "user", "content": "crash"}]}
        with (
            pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"),
            client.stream("POST", "/models/stream/v1/chat/completions", json=request) as response,
        ):
            request_id = response.headers["x-request-id"]
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line)
                    if len(events) == 2:
                        os.kill(pid, signal.SIGKILL)
        assert 2 <= len(events) < 10  # it stopped early, and what arrived was whole events
        assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events)
        fleet.wait_for(lambda: fleet.health()["entries"]["stream"]["state"] == "failed", 5, "the crash")
        again = client.post("/models/stream/v1/completions", json=COMPLETION)
        assert again.status_code == 200 and "StarCoder-3B" in again.text
        assert client.post("/v1/completions", json=COMPLETION).status_code == 200  # the rest kept serving
        metrics = client.get("/metrics").text
    assert 'fleet_upstream_errors_total{entry="stream",kind="midstream"} 1.0' in metrics
    log = fleet.log_tail()
    assert f"answer broken off, client connection aborted (id {request_id})" in log
    assert "Exception in ASGI application" not in log  # the abort is ours, not a crash


def test_hanging_backend_gives_504_and_is_hung_up_on(fleet: RunningFleet) -> None:
    fleet.start("hang")
    with fleet.client() as client:
        before = fleet.backend_stats("hang")["cancelled"]
        started = time.monotonic()
        response = client.post("/models/hang/v1/completions", json=COMPLETION)
        waited = time.monotonic() - started
    assert response.status_code == 504 and response.json()["error"]["code"] == "backend-timeout"
    assert 0.9 < waited < 5
    fleet.wait_for(lambda: fleet.backend_stats("hang")["cancelled"] > before, 3, "the backend to be hung up on")


def test_events_are_forwarded_exactly_once_under_concurrency(fleet: RunningFleet, figure: Figure) -> None:
    fleet.start("steady")
    before = fleet.backend_stats("steady")["events"].get("view", 0)
    sent = 400

    def post(i: int) -> int:
        with httpx.Client(base_url=fleet.base_url, timeout=30) as client:
            event = {"type": "view", "completion_id": f"cmpl-{i}", "choice_index": 0}
            return client.post("/v1/events", json=event).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(post, range(sent)))
    assert statuses == [200] * sent
    counted = fleet.backend_stats("steady")["events"]["view"] - before
    assert counted == sent
    figure("events sent / counted by the backend", f"{sent} / {counted}")


def test_thousand_idle_keepalive_connections_leave_health_fast(fleet: RunningFleet, figure: Figure) -> None:
    host, port = fleet.base_url.removeprefix("http://").split(":")
    idle: list[socket.socket] = []
    try:
        for _ in range(1000):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"GET /fleet/health HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(sock)
        for sock in idle:  # every connection got its answer and stays open (keep-alive)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        timings = []
        with httpx.Client(base_url=fleet.base_url, timeout=10) as client:
            for _ in range(200):
                started = time.perf_counter()
                assert client.get("/fleet/health").status_code == 200
                timings.append(time.perf_counter() - started)
        timings.sort()
        p99 = timings[int(len(timings) * 0.99) - 1]
        assert p99 < 0.050, f"/fleet/health p99 {p99 * 1000:.1f} ms with 1000 idle connections"
        alive = sum(1 for sock in idle if _still_open(sock))
        assert alive == 1000
        figure("idle connections held", alive)
        figure("/fleet/health p99 ms", round(p99 * 1000, 2))
    finally:
        for sock in idle:
            sock.close()


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def _hammer(
    base_url: str, stop: threading.Event, results: list[tuple[str, Any]], path: str, sent: list[float] | None = None
) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        deadline = time.monotonic() + 30  # bounded even if stop is never set
        while not stop.is_set() and time.monotonic() < deadline:
            if sent is not None:
                sent.append(time.monotonic())
            try:
                response = client.post(path, json=COMPLETION)
            except httpx.TransportError as exc:
                results.append(("transport", type(exc).__name__))
                time.sleep(0.01)
                continue
            try:
                body = response.json()
                results.append(("http", (response.status_code, body["choices"][0]["text"])))
            except (ValueError, KeyError) as exc:
                results.append(("corrupt", (response.status_code, response.content[:200], repr(exc))))


def test_router_restart_under_load_never_corrupts_a_response(tmp_path: Path, figure: Figure) -> None:
    backend_port, router_port = free_port(), free_port()
    config = tmp_path / "fleet.toml"
    config.write_text(
        f'[[entries]]\nname = "remote"\nmodel = "TabbyML/StarCoder-1B"\nurl = "http://127.0.0.1:{backend_port}"\n'
    )
    router_argv = [sys.executable, "-m", "apps.cli", "up", "--config", str(config), "--port", str(router_port),
                   "--log-level", "warning"]  # fmt: skip
    with serve_process(standin_argv(backend_port), backend_port):
        first = subprocess.Popen(router_argv, cwd=tmp_path)
        _wait_port(router_port)
        stop = threading.Event()
        results: list[tuple[str, Any]] = []
        workers = [
            threading.Thread(target=_hammer, args=(f"http://127.0.0.1:{router_port}", stop, results, "/v1/completions"))
            for _ in range(8)
        ]
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
        second = subprocess.Popen(router_argv, cwd=tmp_path)
        try:
            _wait_port(router_port)
            time.sleep(1.0)
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
            second.terminate()
            second.wait(timeout=20)
    kinds = {kind for kind, _ in results}
    assert "corrupt" not in kinds, [r for r in results if r[0] == "corrupt"][:3]
    answered = [value for kind, value in results if kind == "http"]
    assert all(status == 200 and "StarCoder-1B" in text for status, text in answered)
    assert len(answered) > 50  # load ran before and after the restart
    assert "transport" in kinds  # and the restart was seen as refused connections, not as bad answers
    refused = sum(1 for kind, _ in results if kind == "transport")
    figure("answers / refused connections / corrupt", f"{len(answered)} / {refused} / 0")


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/fleet/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"router on {port} did not come up")


RELOAD_BEFORE = """
[router]
default_entry = "old"

[[entries]]
name = "old"
model = "TabbyML/StarCoder-1B"
max_inputs = 32
standin = { completion_delay = 0.3 }

[[entries]]
name = "new"
model = "TabbyML/StarCoder-7B"
max_inputs = 32
"""


def test_settings_reload_under_load_drops_nothing(tmp_path: Path, figure: Figure) -> None:
    with run_fleet(tmp_path, RELOAD_BEFORE) as running:
        running.start("new", "old")
        stop = threading.Event()
        results: list[tuple[str, Any]] = []
        sent_at: list[list[float]] = [[] for _ in range(8)]
        outcomes: list[list[tuple[str, Any]]] = [[] for _ in range(8)]
        workers = [
            threading.Thread(target=_hammer, args=(running.base_url, stop, outcomes[i], "/v1/completions", sent_at[i]))
            for i in range(8)
        ]
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        (tmp_path / "fleet.toml").write_text(RELOAD_BEFORE.replace('default_entry = "old"', 'default_entry = "new"'))
        reload_asked = time.monotonic()
        reloaded = httpx.post(f"{running.base_url}/fleet/reload", json={}, timeout=10)
        reload_done = time.monotonic()
        time.sleep(1.0)
        stop.set()
        for worker in workers:
            worker.join(30)
        timed = [(at, outcome) for i in range(8) for at, outcome in zip(sent_at[i], outcomes[i], strict=False)]
        results = [outcome for _, outcome in timed]
        bad = httpx.post(f"{running.base_url}/fleet/reload", json={}, timeout=10)  # still the same, valid file
        (tmp_path / "fleet.toml").write_text("[router]\ndefault_entry = 'nope'\n[[entries]]\nname='x'\nmodel='m'\n")
        refused = httpx.post(f"{running.base_url}/fleet/reload", json={}, timeout=10)
        after_refusal = httpx.post(f"{running.base_url}/v1/completions", json=COMPLETION, timeout=10)
    assert reloaded.status_code == 200 and reloaded.json()["status"] == "reloaded"
    assert {kind for kind, _ in results} == {"http"}, [r for r in results if r[0] != "http"][:3]
    statuses = [value[0] for _, value in results]
    assert statuses == [200] * len(statuses)
    before = [value[1] for at, (_, value) in timed if at < reload_asked]
    after = [value[1] for at, (_, value) in timed if at > reload_done]
    figure("requests during reload run / failed", f"{len(statuses)} / 0")
    assert before and all("StarCoder-1B" in text for text in before)  # the old default before ...
    assert after and all("StarCoder-7B" in text for text in after)  # ... the new one after
    assert bad.status_code == 200
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid-settings"
    assert "StarCoder-7B" in after_refusal.text  # a bad file leaves the running settings alone


def test_sighup_reloads_the_settings(tmp_path: Path) -> None:
    with run_fleet(tmp_path, RELOAD_BEFORE) as running:
        assert "StarCoder-1B" in httpx.post(f"{running.base_url}/v1/completions", json=COMPLETION, timeout=10).text
        (tmp_path / "fleet.toml").write_text(RELOAD_BEFORE.replace('default_entry = "old"', 'default_entry = "new"'))
        running.process.send_signal(signal.SIGHUP)
        running.wait_for(
            lambda: (
                "StarCoder-7B" in httpx.post(f"{running.base_url}/v1/completions", json=COMPLETION, timeout=10).text
            ),
            10,
            "SIGHUP to switch the default entry",
        )
        assert running.process.poll() is None  # reloaded, not stopped


QUEUED_BEFORE = """
[router]
queue_timeout = 30

[[entries]]
name = "slow"
model = "TabbyML/StarCoder-1B"
max_inputs = 1
standin = { completion_delay = 6 }
"""


def test_reload_raising_capacity_admits_a_queued_request_at_once(tmp_path: Path) -> None:
    """Capacity 1: B waits behind A. A reload to capacity 2 lets B in then, not when A ends."""
    with run_fleet(tmp_path, QUEUED_BEFORE) as running:
        ended: dict[str, float] = {}

        def complete(name: str) -> None:
            response = httpx.post(f"{running.base_url}/v1/completions", json=COMPLETION, timeout=60)
            assert response.status_code == 200
            ended[name] = time.monotonic()

        first = threading.Thread(target=complete, args=("a",))
        first.start()
        running.wait_for(lambda: running.health()["entries"]["slow"]["in_flight"] == 1, 10, "A in flight")
        second = threading.Thread(target=complete, args=("b",))
        second.start()
        running.wait_for(lambda: running.health()["entries"]["slow"]["queued"] == 1, 10, "B queued")
        (tmp_path / "fleet.toml").write_text(QUEUED_BEFORE.replace("max_inputs = 1", "max_inputs = 2"))
        assert httpx.post(f"{running.base_url}/fleet/reload", json={}, timeout=10).status_code == 200
        assert running.health()["entries"]["slow"]["queued"] == 0
        first.join(30)
        second.join(30)
    # Admitted at the reload, B ends about 1.5 s after A; had it waited for A's slot, 6 s after.
    assert ended["b"] - ended["a"] < 4.0, ended
