"""End to end: streaming, cancellation, start on demand, idle stop, limits, restart after a crash."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support.fleetproc import COMPLETION, RunningFleet, run_fleet

CONFIG = """
[router]
default_entry = "chat"
queue_timeout = 1.0

[[entries]]
name = "chat"
model = "TabbyML/StarCoder-1B"
chat_model = "TabbyML/Qwen2-1.5B-Instruct"
standin = { chunk_delay = 0.2 }

[[entries]]
name = "slow"
model = "TabbyML/StarCoder-3B"
standin = { completion_delay = 5.0 }

[[entries]]
name = "idle"
model = "TabbyML/StarCoder-7B"
scaledown_window = 2

[[entries]]
name = "narrow"
model = "TabbyML/CodeLlama-7B"
max_containers = 1
max_inputs = 1
max_queue = 1
standin = { completion_delay = 2.5 }
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    with run_fleet(tmp_path_factory.mktemp("runtime"), CONFIG) as running:
        yield running


def test_chat_sse_arrives_event_by_event(fleet: RunningFleet) -> None:
    arrivals: list[tuple[float, str]] = []
    request = {"messages": [{"role": "user", "content": "what is 2+2"}], "model": "", "stream": True}
    with fleet.client() as client, client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-fleet-entry"] == "chat"
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line[6:]))
    chunks = [json.loads(data) for _, data in arrivals]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert "TabbyML/Qwen2-1.5B-Instruct" in text and "what is 2+2" in text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(data != "[DONE]" for _, data in arrivals)
    # The backend waits 0.2 s between events: if the router buffered, they would arrive together.
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    assert len(gaps) >= 10
    assert sum(1 for gap in gaps if gap > 0.1) >= len(gaps) - 1, gaps


def test_v1beta_chat_alias_streams_too(fleet: RunningFleet) -> None:
    with fleet.client() as client:
        response = client.post("/v1beta/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200 and response.text.count("data: ") > 5


def _stats(fleet: RunningFleet, entry: str) -> dict:
    return fleet.backend_stats(entry)


def test_backend_sees_disconnect_when_client_aborts_a_completion(fleet: RunningFleet) -> None:
    with fleet.client() as client:
        fleet.start("slow")
    before = _stats(fleet, "slow")["cancelled"]
    with fleet.client(timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/models/slow/v1/completions", json=COMPLETION)
    aborted = time.monotonic()
    fleet.wait_for(lambda: _stats(fleet, "slow")["cancelled"] > before, 3.0, "the backend to see the disconnect")
    assert time.monotonic() - aborted < 3.0
    assert _stats(fleet, "slow")["in_flight"] == 0
    assert fleet.health()["entries"]["slow"]["in_flight"] == 0


def test_backend_sees_disconnect_when_client_aborts_a_stream(fleet: RunningFleet) -> None:
    fleet.start("chat")
    before = _stats(fleet, "chat")["cancelled"]
    with (
        fleet.client() as client,
        client.stream(
            "POST", "/v1/chat/completions", json={"messages": [{"role": "user", "content": "long"}]}
        ) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    # leaving the block closed the connection mid-stream
    fleet.wait_for(lambda: _stats(fleet, "chat")["cancelled"] > before, 3.0, "the backend to see the disconnect")


def test_backend_starts_on_first_use_and_stops_when_idle(fleet: RunningFleet) -> None:
    assert fleet.health()["entries"]["idle"]["state"] == "cold"
    with fleet.client() as client:
        started = time.monotonic()
        response = client.post("/models/idle/v1/completions", json=COMPLETION)
        first_completion = time.monotonic() - started
    assert response.status_code == 200 and "StarCoder-7B" in response.text
    assert first_completion < 10, f"cold start took {first_completion:.2f}s"
    runtime = fleet.entries()["idle"]["runtime"]
    assert runtime["state"] == "ready" and runtime["pid"]
    pid = runtime["pid"]
    fleet.wait_for(lambda: fleet.health()["entries"]["idle"]["state"] == "cold", 8.0, "the idle backend to stop")
    assert not _pid_alive(pid)
    with fleet.client() as client:
        assert client.post("/models/idle/v1/completions", json=COMPLETION).status_code == 200
    assert fleet.entries()["idle"]["runtime"]["starts"] == 2


def test_request_over_capacity_waits_then_gets_503(fleet: RunningFleet) -> None:
    fleet.start("narrow")
    results: dict[str, httpx.Response] = {}

    def send(name: str) -> None:
        with fleet.client() as client:
            results[name] = client.post("/models/narrow/v1/completions", json=COMPLETION)

    first = threading.Thread(target=send, args=("first",))
    first.start()
    fleet.wait_for(lambda: fleet.health()["entries"]["narrow"]["in_flight"] == 1, 5.0, "the first request")
    second = threading.Thread(target=send, args=("second",))
    second.start()
    fleet.wait_for(lambda: fleet.health()["entries"]["narrow"]["queued"] == 1, 5.0, "the second to queue")
    with fleet.client() as client:  # the queue (max_queue = 1) is full: refused at once
        started = time.monotonic()
        third = client.post("/models/narrow/v1/completions", json=COMPLETION)
        assert time.monotonic() - started < 1.0
    second.join(10)
    first.join(10)
    assert results["first"].status_code == 200
    assert third.status_code == 503 and third.headers["retry-after"] == "1"
    assert third.json()["error"]["code"] == "entry-busy"
    assert results["second"].status_code == 503, results["second"].text  # waited 1 s (queue_timeout)
    assert "within 1s" in results["second"].json()["error"]["message"]
    assert fleet.health()["entries"]["narrow"] == {"state": "ready", "in_flight": 0, "queued": 0, "backend": "stand-in"}


def test_killed_backend_is_restarted_on_next_request(fleet: RunningFleet) -> None:
    with fleet.client() as client:
        assert client.post("/models/chat/v1/completions", json=COMPLETION).status_code == 200
        pid = fleet.entries()["chat"]["runtime"]["pid"]
        os.kill(pid, signal.SIGKILL)
        fleet.wait_for(lambda: fleet.health()["entries"]["chat"]["state"] == "failed", 5.0, "the crash to be seen")
        assert "exited unexpectedly" in fleet.health()["entries"]["chat"]["last_error"]
        response = client.post("/models/chat/v1/completions", json=COMPLETION)
    assert response.status_code == 200 and "StarCoder-1B" in response.text
    runtime = fleet.entries()["chat"]["runtime"]
    assert runtime["pid"] != pid and runtime["state"] == "ready"


def test_backends_listen_only_on_loopback(fleet: RunningFleet) -> None:
    url = fleet.backend_url("chat")
    assert url.startswith("http://127.0.0.1:")


def test_failed_start_is_a_clear_502(tmp_path: Path) -> None:
    config = """
    [[entries]]
    name = "broken"
    model = "TabbyML/StarCoder-1B"
    startup_timeout = 1
    standin = { start_delay = 30 }
    """
    with run_fleet(tmp_path, config) as running, running.client() as client:
        response = client.post("/v1/completions", json=COMPLETION)
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["code"] == "backend-failed" and "startup_timeout=1s" in error["message"]
        assert running.health()["entries"]["broken"]["state"] == "failed"


def test_slow_start_beyond_request_wait_is_503_and_start_continues(tmp_path: Path) -> None:
    config = """
    [router]
    start_timeout = 0.5

    [[entries]]
    name = "sluggish"
    model = "TabbyML/StarCoder-1B"
    standin = { start_delay = 2 }
    """
    with run_fleet(tmp_path, config) as running, running.client() as client:
        response = client.post("/v1/completions", json=COMPLETION)
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert response.json()["error"]["code"] == "backend-starting"
        running.wait_for(lambda: running.health()["entries"]["sluggish"]["state"] == "ready", 10, "start")
        assert client.post("/v1/completions", json=COMPLETION).status_code == 200


def test_router_shutdown_stops_every_backend(tmp_path: Path) -> None:
    with run_fleet(tmp_path, CONFIG) as running:
        running.start("chat", "idle")
        pids = [running.entries()[name]["runtime"]["pid"] for name in ("chat", "idle")]
    assert all(pid for pid in pids)
    deadline = time.monotonic() + 10
    while any(_pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_pid_alive(pid) for pid in pids)


def test_unreachable_url_entry_is_502(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    config = f"""
    [[entries]]
    name = "remote"
    model = "TabbyML/StarCoder-1B"
    url = "http://127.0.0.1:{port}"
    """
    with run_fleet(tmp_path, config) as running, running.client() as client:
        response = client.post("/v1/completions", json=COMPLETION)
    assert response.status_code == 502 and response.json()["error"]["code"] == "backend-unreachable"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


FAKE_TABBY = """#!{python}
# A stand-in for a tabby binary: records how it was started, then serves as the built-in stand-in.
import json, os, sys
args = sys.argv[1:]
flag = dict(zip(args[2::2], args[3::2]))  # after "serve --no-webserver": --flag value pairs
root = os.environ["TABBY_ROOT"]
with open(os.path.join(root, "..", "started.json"), "w") as out:
    json.dump({{"argv": args, "config": open(os.path.join(root, "config.toml")).read()}}, out)
os.execv(sys.executable, [sys.executable, "-m", "apps.local.standin", "--model", flag["--model"],
                          "--host", flag["--host"], "--port", flag["--port"]])
"""


def test_a_real_tabby_gets_the_entry_device_and_its_config_toml(tmp_path: Path) -> None:
    fake = tmp_path / "tabby"
    fake.write_text(FAKE_TABBY.format(python=sys.executable))
    fake.chmod(0o755)
    config = f"""
    tabby_bin = "{fake}"

    [[entries]]
    name = "gpu-box"
    model = "TabbyML/StarCoder-1B"
    device = "cuda"
    completion_timeout = 45
    """
    with run_fleet(tmp_path, config, env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}) as running:
        with running.client() as client:
            assert client.post("/v1/completions", json=COMPLETION).status_code == 200
        started = json.loads((tmp_path / ".fleet-data" / "started.json").read_text())
    argv = started["argv"]
    assert argv[:2] == ["serve", "--no-webserver"] and argv[argv.index("--device") + 1] == "cuda"
    assert "[server]\ncompletion_timeout = 45\n" in started["config"]
