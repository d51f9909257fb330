"""Usage survives what happens to routers (issue 18): a kill -9 under load, a clean stop, three routers on one
data_dir, and a store that is missing, unwritable or damaged. Real `fleet up` processes on loopback; the
requests the clients got a 200 for are what the routers must show."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.state import FLUSH_SECONDS

from .support.fleetproc import COMPLETION, RunningFleet, free_port, run_fleet, serve_process, standin_argv

pytestmark = pytest.mark.reliability

TOKENS = {"ana": "tok-ana-0123456789", "bo": "tok-bo-0123456789"}


def fleet_toml(data_dir: Path, url: str | None = None) -> str:
    """One entry, "small" (a stand-in `fleet up` starts, or the one at ``url``), a team whose developers
    ana and bo each have a token; the store under ``data_dir``."""
    tokens = ", ".join(
        f'{{label = "{label}", sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"}}'
        for label, token in TOKENS.items()
    )
    backend = f'url = "{url}"\nmax_inputs = 64\n' if url else ""
    return f"""
data_dir = "{data_dir}"

[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
{backend}
[[teams]]
name = "alpha"
entry = "small"
tokens = [{tokens}]
"""


class Load:
    """Completions from a thread, alternating ana's and bo's tokens, over one or more routers, until stopped
    or ``limit`` is reached (a bounded loop); when each 200 arrived, per developer."""

    def __init__(self, urls: list[str], limit: int = 3000) -> None:
        self.urls = urls
        self.limit = limit
        self.ok: list[tuple[float, str]] = []  # (monotonic time of the 200, label)
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        clients = [httpx.Client(base_url=url, timeout=10) for url in self.urls]
        try:
            for n in range(self.limit):
                if self._stop.is_set():
                    return
                label = ("ana", "bo")[n % 2]
                try:
                    answer = clients[n % len(clients)].post(
                        "/v1/completions", json=COMPLETION, headers={"Authorization": f"Bearer {TOKENS[label]}"}
                    )
                except httpx.TransportError:
                    self.failed += 1
                    continue
                if answer.status_code == 200:
                    self.ok.append((time.monotonic(), label))
                else:
                    self.failed += 1
        finally:
            for client in clients:
                client.close()

    def count(self, label: str | None = None) -> int:
        return sum(1 for _, who in self.ok if label is None or who == label)


def usage(fleet: RunningFleet, **params: str) -> dict[str, Any]:
    answer = httpx.get(f"{fleet.base_url}/fleet/usage", params={"since": "1h", "by": "token", **params}, timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def completions(fleet: RunningFleet) -> dict[str, int]:
    """Completions per developer label, as the router shows them."""
    return {row["label"]: row["completions"] for row in usage(fleet)["tokens"]}


def start(fleet: RunningFleet) -> None:
    """Start the entry's backend (a health check with a token starts it) and wait until it is ready."""
    httpx.get(f"{fleet.base_url}/v1/health", headers={"Authorization": f"Bearer {TOKENS['ana']}"}, timeout=10)
    fleet.wait_for(lambda: fleet.health()["entries"]["small"]["state"] == "ready", 30, "small ready")


def store_health(fleet: RunningFleet) -> dict[str, Any]:
    return dict(fleet.health()["store"])


def test_a_router_killed_under_load_loses_at_most_its_last_flush_and_a_clean_stop_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with run_fleet(tmp_path / "first", fleet_toml(data)) as fleet:
        start(fleet)
        began = time.monotonic()
        with Load([fleet.base_url], limit=100_000) as load:  # several flushes under load, then the kill
            fleet.wait_for(lambda: time.monotonic() - began > 4 * FLUSH_SECONDS, 60, "load for 4 flush intervals")
            fleet.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            fleet.process.wait(timeout=10)
        served = load.count()
    # What the killed router could not have flushed: the 200s of its last flush interval (and the one going on).
    unflushed = sum(1 for at, _ in load.ok if at > killed_at - FLUSH_SECONDS - 0.5)
    with run_fleet(tmp_path / "second", fleet_toml(data)) as fleet:
        shown = completions(fleet)
        total = sum(shown.values())
        print(f"kill -9 under load: {served} served, {total} shown after restart, lost {served - total} "
              f"(at most {unflushed}: the last {FLUSH_SECONDS:g} s)")  # fmt: skip
        assert served - unflushed <= total <= served
        assert set(shown) == {"ana", "bo"}
        start(fleet)
        with Load([fleet.base_url], limit=100) as more:
            fleet.wait_for(lambda: more.count() >= 100 or not more._thread.is_alive(), 60, "100 completions")
        assert more.count() == 100
        fleet.process.send_signal(signal.SIGTERM)  # a clean stop: the last flush runs
        fleet.process.wait(timeout=20)
        assert "Application shutdown complete" in fleet.log_tail()  # uvicorn then re-raises SIGTERM: -15
    with run_fleet(tmp_path / "third", fleet_toml(data)) as fleet:
        again = completions(fleet)
        assert sum(again.values()) == total + 100  # nothing lost
        assert again["ana"] == shown["ana"] + 50 and again["bo"] == shown["bo"] + 50


def test_three_routers_on_one_data_dir_each_show_the_whole_fleet(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    with serve_process(standin_argv(port), port) as backend, ExitStack() as routers:
        fleets = [routers.enter_context(run_fleet(tmp_path / f"r{n}", fleet_toml(data, backend))) for n in range(3)]
        with Load([fleet.base_url for fleet in fleets], limit=600) as load:
            fleets[0].wait_for(lambda: not load._thread.is_alive(), 120, "600 completions over three routers")
        assert load.count() == 600
        for fleet in fleets:  # after a flush interval or two, each shows all three routers' requests
            fleet.wait_for(
                lambda f=fleet: sum(completions(f).values()) == 600, 6 * FLUSH_SECONDS, "the whole fleet's 600"
            )
            assert completions(fleet) == {"ana": 300, "bo": 300}
        assert usage(fleets[1])["teams"]["alpha"]["completions"] == 600
        segments = sorted(p.parent.name + "/" + p.name for p in (data / "state").rglob("*.jsonl"))
        assert len(segments) == 3  # one writer per file
    with run_fleet(tmp_path / "late", fleet_toml(data, "http://127.0.0.1:9")) as late:
        assert completions(late) == {"ana": 300, "bo": 300}  # a router started later reads all of it


def test_a_store_that_cannot_be_written_loses_nothing_once_it_can(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    blocker = data / "state"
    blocker.write_text("a file where the store's directory goes: mkdir fails, as on a read-only or missing disk")
    port = free_port()
    with (
        serve_process(standin_argv(port), port) as backend,
        run_fleet(tmp_path / "r", fleet_toml(data, backend)) as fleet,
    ):
        with Load([fleet.base_url], limit=50) as load:
            fleet.wait_for(lambda: not load._thread.is_alive(), 60, "50 completions")
        assert load.count() == 50  # the router serves on
        failing = fleet.wait_for(
            lambda: (health := store_health(fleet))["pending_records"] and not health["ok"] and health,
            6 * FLUSH_SECONDS, "the store reported failing with records waiting",
        )  # fmt: skip
        assert str(blocker) in failing["error"] and "Not a directory" in failing["error"]
        assert completions(fleet) == {"ana": 25, "bo": 25}  # counted in memory meanwhile
        page = httpx.get(f"{fleet.base_url}/fleet/status", timeout=10).text
        assert "The usage store is failing" in page and f"{blocker}: Not a directory" in page
        assert "state store failing" in fleet.log_path.read_text()  # said loudly in the log too
        blocker.unlink()  # writable again
        fleet.wait_for(lambda: store_health(fleet)["ok"], 6 * FLUSH_SECONDS, "the store working again")
        assert store_health(fleet)["pending_records"] == 0
        assert "The usage store is failing" not in httpx.get(f"{fleet.base_url}/fleet/status", timeout=10).text
    with run_fleet(tmp_path / "after", fleet_toml(data, "http://127.0.0.1:9")) as after:
        assert completions(after) == {"ana": 25, "bo": 25}  # written once it could be: none lost


def test_a_damaged_segment_is_skipped_and_named_and_the_router_serves_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    with serve_process(standin_argv(port), port) as backend:
        with run_fleet(tmp_path / "r1", fleet_toml(data, backend)) as fleet, Load([fleet.base_url], limit=20) as load:
            fleet.wait_for(lambda: not load._thread.is_alive(), 60, "20 completions")
        (segment,) = (data / "state").rglob("*.jsonl")
        with open(segment, "ab") as file:
            file.write(b"\x00garbage}{\n" + b'{"t":"usage","m":1,"team":"al')  # a damaged line, then a torn one
        (segment.parent / "zz-other.jsonl").write_bytes(b"not json at all\n")
        with run_fleet(tmp_path / "r2", fleet_toml(data, backend)) as fleet:
            assert completions(fleet) == {"ana": 10, "bo": 10}
            health = store_health(fleet)
            assert health["skipped_lines"] == 2 and health["ok"]
            assert health["damaged_segments"] == sorted(
                f"{segment.parent.name}/{name}" for name in (segment.name, "zz-other.jsonl")
            )
            answer = httpx.post(f"{fleet.base_url}/v1/completions", json=COMPLETION,
                                headers={"Authorization": f"Bearer {TOKENS['ana']}"}, timeout=10)  # fmt: skip
            assert answer.status_code == 200
            views_and_cli(fleet)


def views_and_cli(fleet: RunningFleet) -> None:
    """?by and ?team: a bad value is a 400 with advice; `fleet status --by token --team` prints the developers."""
    for params, code, advice in (
        ({"by": "user"}, "bad-by", "team, token"),
        ({"team": "beta"}, "unknown-team", "alpha"),
    ):
        answer = httpx.get(f"{fleet.base_url}/fleet/usage", params=params, timeout=10)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == code, answer.text
        assert advice in answer.json()["error"]["message"]
    assert {row["team"] for row in usage(fleet, team="alpha")["tokens"]} == {"alpha"}
    printed = subprocess.run(
        [sys.executable, "-m", "apps.cli", "status", "--url", fleet.base_url, "--by", "token", "--team", "alpha"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    developers = printed.stdout.split("Developers", 1)[1]
    assert "ana" in developers and "bo" in developers
