"""Attacks on cold starts, Modal wakes and warm hours: a hostile backend, a flaky cloud, a demanding admin.

Each test is one attack through real processes on loopback (a real `fleet up`, or the router with its
Modal backends in front of the fake edge or a raw-socket backend); only Modal's cloud and clocks are faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from apps.local.backends import LocalBackends
from apps.modal.backends import STATS_TIMEOUT, ModalBackends, ModalClass
from fleet.settings import Entry, FleetSettings, StandInOptions
from fleet.window import WarmWindow

from .support.fake_modal_edge import edge_argv
from .support.fleetproc import COMPLETION, RunningFleet, free_port, run_fleet, serve_process, standin_argv
from .support.modal_router import ADMIN, router_argv, router_env
from .support.rude_backend import Connection, Request, chunk, head, rude_backend

KEY, SECRET = "wk-attack", "ws-attack"


def _state(fleet: RunningFleet, entry: str) -> str:
    return str(fleet.health()["entries"][entry]["state"])


def _runtime(router: str, entry: str) -> dict[str, Any]:
    table = httpx.get(f"{router}/fleet/entries", headers=ADMIN, timeout=10).json()["entries"]
    status: dict[str, Any] = next(e for e in table if e["name"] == entry)["runtime"]
    return status


def _wait_for(predicate: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        time.sleep(0.1)
    return value


@contextmanager
def modal_router(tmp_path: Path, config: str, urls: dict[str, str], *options: str) -> Iterator[str]:
    """The router with its Modal backends (tests/support/modal_router.py) for ``urls`` (class name -> URL)."""
    (tmp_path / "fleet.toml").write_text(config)
    port = free_port()
    argv = router_argv(tmp_path / "fleet.toml", port, urls, "--stats-interval", "0.5", "--wake-retry", "3", *options)
    with serve_process(argv, port, env=router_env(KEY, SECRET)) as router:
        yield router


# --- a hostile class: its wake answer never ends ------------------------------------------------------


async def _endless_health(reader: Any, writer: Any, request: Request, conn: Connection) -> bool:
    """A 200 head, then a byte of body every half second (for at most a minute): never a whole answer."""
    writer.write(head(200, ("content-type", "application/json"), ("transfer-encoding", "chunked")))
    for _ in range(120):
        writer.write(chunk(b" "))
        await writer.drain()
        await asyncio.sleep(0.5)
    return False


def test_a_wake_whose_answer_never_ends_fails_within_startup_timeout(tmp_path: Path) -> None:
    config = """
[[entries]]
name = "trickle"
model = "TabbyML/StarCoder-1B"
startup_timeout = 3
"""
    with rude_backend(_endless_health) as backend, modal_router(tmp_path, config, {"TabbyTrickle": backend.url}) as r:
        started = time.monotonic()
        assert httpx.get(f"{r}/models/trickle/v1/health", timeout=10).headers["x-fleet-backend"] == "starting"
        failed = _wait_for(lambda: (s := _runtime(r, "trickle"))["state"] == "failed" and s, 10, "the wake to fail")
        assert time.monotonic() - started < 3 + 3  # startup_timeout, and a few seconds
        assert "startup_timeout=3s" in failed["last_error"], failed


# --- a start that cannot even spawn: the data directory cannot be made ----------------------------------


def test_a_start_that_cannot_spawn_fails_the_entry_with_advice(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where the data directory should be\n")
    config = f"""
    data_dir = "{tmp_path / "blocker" / "data"}"

    [[entries]]
    name = "small"
    model = "TabbyML/StarCoder-1B"
    """
    with run_fleet(tmp_path / "fleet", config) as fleet, fleet.client() as client:
        response = client.post("/v1/completions", json=COMPLETION)
        assert response.status_code == 502, response.text  # advice, not an Internal Server Error
        error = response.json()["error"]
        assert error["code"] == "backend-failed" and "blocker" in error["message"], error
        assert _state(fleet, "small") == "failed"  # not "starting" for ever
        health = client.get("/v1/health")  # the IDE is told, not kept "connected" to a start that cannot be
        assert health.status_code == 502 and health.json()["error"]["code"] == "backend-failed"


# --- a client that leaves while its completion waits out cold_wait ------------------------------------

LEAVING = """
[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"

[[entries]]
name = "big"
model = "TabbyML/StarCoder-7B"
fallback = "small"
cold_wait = 8
standin = { start_delay = 30 }
"""


def _cancellations(fleet: RunningFleet, entry: str) -> float:
    for line in httpx.get(f"{fleet.base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f'fleet_client_cancellations_total{{entry="{entry}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_leaving_during_cold_wait_is_noticed_at_once_and_costs_the_fallback_nothing(tmp_path: Path) -> None:
    with run_fleet(tmp_path, LEAVING) as fleet:
        fleet.start("small")
        served = fleet.backend_stats("small")["requests"].get("completions", 0)
        with contextlib.suppress(httpx.TimeoutException):  # the IDE aborts after a second, inside cold_wait (8 s)
            httpx.post(f"{fleet.base_url}/models/big/v1/completions", json=COMPLETION, timeout=1)
        fleet.wait_for(lambda: _cancellations(fleet, "big") == 1, 3, "the router to notice the client left")
        time.sleep(8)  # past cold_wait: nothing is sent to the fallback for a client that has gone
        assert fleet.backend_stats("small")["requests"].get("completions", 0) == served
        assert _state(fleet, "big") == "starting"  # the start goes on for the next request


# --- a team over its rate is told at once, not after cold_wait ----------------------------------------


def test_a_team_over_its_rate_is_refused_without_waiting_out_cold_wait(tmp_path: Path) -> None:
    config = LEAVING + '\n[[teams]]\nname = "ml"\nentry = "big"\nrequests_per_minute = 1\n'
    with run_fleet(tmp_path, config) as fleet, fleet.client() as client:
        fleet.start("small")
        first = client.post("/v1/completions", json=COMPLETION, headers={"X-Tabby-Team": "ml"})
        assert first.status_code == 200 and first.headers["x-fleet-fallback"] == "big"
        started = time.monotonic()
        second = client.post("/v1/completions", json=COMPLETION, headers={"X-Tabby-Team": "ml"})
        assert second.status_code == 429, second.text
        assert time.monotonic() - started < 3  # not big's cold_wait (8 s)


# --- a thundering herd on a cold entry ----------------------------------------------------------------

HERD = """
[[entries]]
name = "small"
model = "TabbyML/StarCoder-1B"
max_inputs = 8
max_queue = 300

[[entries]]
name = "big"
model = "TabbyML/StarCoder-7B"
fallback = "small"
cold_wait = 1
standin = { start_delay = 15 }
"""
HERD_SIZE = 200
# The herd must be answered while "big" still starts (its completions by the fallback, its health checks
# by the router). Sending 200 requests from 200 threads took over 4 s (and over 10 s) on a loaded 2-core
# machine, so the starts last long enough for that: 15 s locally, 25 s for the Modal class.


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _herd(base_url: str, path_prefix: str) -> list[httpx.Response]:
    """HERD_SIZE requests at once: health checks and completions in turn, each on its own connection."""

    def one(index: int) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            if index % 2:
                return client.get(f"{path_prefix}/v1/health")
            return client.post(f"{path_prefix}/v1/completions", json=COMPLETION)

    with ThreadPoolExecutor(HERD_SIZE) as pool:
        return list(pool.map(one, range(HERD_SIZE)))


def test_a_herd_on_a_cold_local_entry_starts_it_once_and_leaks_nothing(tmp_path: Path) -> None:
    with run_fleet(tmp_path, HERD) as fleet:
        fleet.start("small")
        fds = _open_fds(fleet.process.pid)
        answers = _herd(fleet.base_url, "/models/big")
        assert [r.status_code for r in answers] == [200] * HERD_SIZE, {r.status_code for r in answers}
        assert all(r.headers.get("x-fleet-fallback") == "big" for r in answers[::2])  # all during big's start
        assert all(r.headers.get("x-fleet-backend") == "starting" for r in answers[1::2])
        fleet.wait_for(lambda: _state(fleet, "big") == "ready", 30, "big ready")
        entries = fleet.entries()
        assert entries["big"]["runtime"]["starts"] == 1 and entries["small"]["runtime"]["starts"] == 1
        health = fleet.health()["entries"]
        assert all(health[e]["in_flight"] == 0 and health[e]["queued"] == 0 for e in ("small", "big")), health
        # The herd's connections close, its tasks end: the router's descriptors come back to where they were
        # (big's stand-in adds its log file and pipes, and a pooled connection or two).
        fleet.wait_for(lambda: _open_fds(fleet.process.pid) <= fds + 8, 10, f"descriptors back near {fds}")


def test_a_herd_on_a_cold_modal_class_wakes_it_once(tmp_path: Path) -> None:
    config = HERD.replace("standin = { start_delay = 15 }\n", "")
    with ExitStack() as stack:
        small_port, big_port, edge_port = free_port(), free_port(), free_port()
        small = stack.enter_context(serve_process(standin_argv(small_port), small_port))
        big = stack.enter_context(serve_process(standin_argv(big_port, model="TabbyML/StarCoder-7B"), big_port))
        edge = stack.enter_context(
            serve_process(edge_argv(edge_port, big, KEY, SECRET, "--start-delay", "25"), edge_port)
        )
        router = stack.enter_context(modal_router(tmp_path, config, {"TabbySmall": small, "TabbyBig": edge}))
        httpx.get(f"{router}/models/small/v1/health", timeout=10)
        _wait_for(lambda: _runtime(router, "small")["state"] == "ready", 10, "small ready")
        answers = _herd(router, "/models/big")
        assert [r.status_code for r in answers] == [200] * HERD_SIZE, {r.status_code for r in answers}
        assert all(r.headers.get("x-fleet-fallback") == "big" for r in answers[::2])
        _wait_for(lambda: _runtime(router, "big")["state"] == "ready", 40, "big awake")
        edge_stats = httpx.get(f"{edge}/_edge/stats", timeout=10).json()
        assert edge_stats["wakes"] == 1 and _runtime(router, "big")["wakes"] == 1, edge_stats
        # one wake request; health checks and completions of the herd sent nothing to the cold class
        assert edge_stats["requests"] == 1, edge_stats


# --- the router shut down while a start or a wake is under way ----------------------------------------


def _stopped_within(process: subprocess.Popen[bytes], seconds: float) -> float:
    """SIGTERM ``process`` (as a service manager, or Modal, stops it); how long it took to exit."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"the router did not exit within {seconds}s of SIGTERM") from None
    return time.monotonic() - started


def test_sigterm_during_a_local_start_exits_at_once_and_leaves_no_backend(tmp_path: Path) -> None:
    config = LEAVING.replace("start_delay = 30", "start_delay = 60")
    with run_fleet(tmp_path, config) as fleet:
        assert httpx.get(f"{fleet.base_url}/models/big/v1/health", timeout=10).headers["x-fleet-backend"] == "starting"
        pid = fleet.wait_for(lambda: fleet.entries()["big"]["runtime"]["pid"], 10, "big's process")
        assert _stopped_within(fleet.process, 8) < 8
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_sigterm_during_a_modal_wake_and_stats_poll_exits_at_once(tmp_path: Path) -> None:
    config = """
[[entries]]
name = "big"
model = "TabbyML/StarCoder-7B"
"""
    (tmp_path / "fleet.toml").write_text(config)
    with ExitStack() as stack:
        big_port, edge_port, router_port = free_port(), free_port(), free_port()
        big = stack.enter_context(serve_process(standin_argv(big_port, model="TabbyML/StarCoder-7B"), big_port))
        edge = stack.enter_context(
            serve_process(edge_argv(edge_port, big, KEY, SECRET, "--start-delay", "30"), edge_port)
        )
        argv = router_argv(tmp_path / "fleet.toml", router_port, {"TabbyBig": edge}, "--stats-interval", "0.5")
        process = subprocess.Popen(argv, env=router_env(KEY, SECRET), stderr=subprocess.DEVNULL)

        def stop_router() -> None:
            if process.poll() is None:
                process.kill()
                process.wait()

        stack.callback(stop_router)
        router = f"http://127.0.0.1:{router_port}"
        _wait_for(lambda: _reachable(router), 20, "the router")
        assert httpx.get(f"{router}/v1/health", timeout=10).headers["x-fleet-backend"] == "starting"
        _wait_for(lambda: httpx.get(f"{edge}/_edge/stats", timeout=10).json()["backlog"] == 1, 10, "the wake")
        assert _stopped_within(process, 8) < 8


def _reachable(url: str) -> bool:
    try:
        return httpx.get(f"{url}/fleet/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


# --- a reload while completions wait out cold_wait ----------------------------------------------------


def test_a_reload_removing_the_fallback_during_cold_wait_does_not_route_to_it(tmp_path: Path) -> None:
    config = LEAVING.replace("[[entries]]", "[router]\nstart_timeout = 2\n\n[[entries]]", 1)
    with run_fleet(tmp_path, config) as fleet:
        fleet.start("small")
        answers: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{fleet.base_url}/models/big/v1/completions", json=COMPLETION, timeout=30)
            )
        )
        waiting.start()
        time.sleep(2)  # inside big's cold_wait (8 s)
        path = tmp_path / "fleet.toml"
        without_small = path.read_text().replace('fallback = "small"\n', "")
        without_small = without_small.replace('[[entries]]\nname = "small"\nmodel = "TabbyML/StarCoder-1B"\n\n', "")
        path.write_text(without_small)
        reloaded = httpx.post(f"{fleet.base_url}/fleet/reload", json={}, timeout=10)
        assert reloaded.status_code == 200 and reloaded.json()["entries"] == ["big"], reloaded.text
        waiting.join(30)
        # Not a 502 "entry 'small' has no url and no runtime": the request waits for big, as without a fallback.
        assert answers[0].status_code == 503, answers[0].text
        assert answers[0].json()["error"]["code"] == "backend-starting"


def test_a_refusal_by_the_fallback_says_it_was_a_fallback(tmp_path: Path) -> None:
    small = 'model = "TabbyML/StarCoder-1B"\nmax_inputs = 1\nmax_queue = 0\nstandin = { completion_delay = 3 }\n'
    config = LEAVING.replace('model = "TabbyML/StarCoder-1B"\n', small).replace("cold_wait = 8", "cold_wait = 0.5")
    with run_fleet(tmp_path, config) as fleet:
        fleet.start("small")
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(
                    lambda _: httpx.post(f"{fleet.base_url}/models/big/v1/completions", json=COMPLETION, timeout=30),
                    range(2),
                )
            )
        busy = next(r for r in answers if r.status_code != 200)
        served = next(r for r in answers if r.status_code == 200)
        assert served.headers["x-fleet-fallback"] == "big"
        assert busy.status_code == 503 and busy.headers["x-fleet-entry"] == "small", busy.text
        assert busy.headers.get("x-fleet-fallback") == "big"  # the IDE's admin can tell why small said no


# --- a flaky cloud: Modal's stats raise, hang, lie ----------------------------------------------------


async def _answer(status: int, reader: Any, writer: Any, request: Request, conn: Connection) -> bool:
    body = b'{"model": "TabbyML/StarCoder-1B"}'
    writer.write(head(status, ("content-type", "application/json"), ("content-length", len(body))) + body)
    return True


class FakeStats:
    """Modal's get_current_stats(), as the test says: a sample, an exception, or a hang."""

    def __init__(self) -> None:
        self.sample: Any = SimpleNamespace(num_total_runners=0, backlog=0)
        self.calls = 0

    async def __call__(self, entry: ModalClass) -> Any:
        self.calls += 1
        if isinstance(self.sample, BaseException):
            raise self.sample
        if self.sample == "hang":
            await asyncio.sleep(3600)
        return self.sample


def _modal_backends(url: str, stats: FakeStats, **entry: Any) -> ModalBackends:
    settings = FleetSettings(entries=[Entry(name="big", model="TabbyML/StarCoder-7B", startup_timeout=5, **entry)])
    return ModalBackends(
        settings, lookup=lambda _: url, headers=((b"modal-key", b"k"),), stats=stats, stats_interval=0.1, wake_retry=1
    )


async def _until_async(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        await asyncio.sleep(0.05)


def test_modal_stats_that_lie_are_not_believed(tmp_path: Path) -> None:
    """Negative or missing counts are a failing call (the router's own view decides), never containers."""
    stats = FakeStats()

    async def run(url: str) -> None:
        backends = _modal_backends(url, stats)
        await backends.start()
        try:
            lies = [SimpleNamespace(num_total_runners=r, backlog=b) for r, b in ((-2, 0), (None, 0), (1, -5))]
            for sample in [*lies, ValueError("boom")]:
                stats.sample = sample
                calls = stats.calls
                await _until_async(lambda c=calls: stats.calls > c + 1, 5, "two polls")
                status = backends.status()["big"]
                assert status["backlog"] is None, (sample, status)
                assert (status["containers"], status["containers_source"]) == (0, "estimate"), (sample, status)
                assert status["state"] == "cold"
            stats.sample = SimpleNamespace(num_total_runners=0, backlog=0)
            await _until_async(lambda: backends.status()["big"]["containers"] == 0, 5, "a true sample")
        finally:
            await backends.close()

    with rude_backend(functools.partial(_answer, 200)) as backend:
        asyncio.run(run(backend.url))


def test_modal_state_machine_under_flapping_stats_a_hang_and_a_failed_wake(tmp_path: Path) -> None:
    """ready -> stats 0 -> cold -> health wakes -> ready; a hanging stats call is given up after its timeout;
    a failed wake is failed until wake_retry, then tried again; a request that succeeds meanwhile is ready."""
    stats = FakeStats()
    status = {"code": 200}

    async def run(url: str) -> None:
        backends = _modal_backends(url, stats)
        await backends.start()
        try:
            assert backends.backend_state("big") == "cold" and backends.warm("big") == "starting"
            assert backends.warm("big") == "starting"  # one wake at a time
            assert await backends.wait_ready("big", 5) and backends.entries["big"].wakes == 1
            for _ in range(3):  # Modal's stats flap: each 0 makes it cold, each wake ready again
                stats.sample = SimpleNamespace(num_total_runners=0, backlog=0)
                await _until_async(lambda: backends.backend_state("big") == "cold", 5, "cold from the stats")
                stats.sample = SimpleNamespace(num_total_runners=1, backlog=0)
                backends.warm("big")
                assert await backends.wait_ready("big", 5)
            assert backends.entries["big"].wakes == 4
            stats.sample = "hang"
            await asyncio.sleep(0.5)
            assert backends.backend_state("big") == "ready"  # a hanging call changes nothing
            status["code"] = 500  # the class crashes on start
            stats.sample = SimpleNamespace(num_total_runners=0, backlog=0)
            await _until_async(lambda: backends.backend_state("big") == "cold", STATS_TIMEOUT + 5, "a sample again")
            backends.warm("big")
            assert not await backends.wait_ready("big", 5)
            wakes = backends.entries["big"].wakes
            assert backends.backend_state("big") == "failed" and backends.warm("big") == "failed"  # no new wake
            status["code"] = 200
            await asyncio.sleep(1.5)  # wake_retry (1 s) has passed: the next health check wakes it again
            assert backends.warm("big") == "starting" and await backends.wait_ready("big", 5)
            assert backends.entries["big"].wakes == wakes + 1
            status["code"] = 500
            stats.sample = SimpleNamespace(num_total_runners=0, backlog=0)
            await _until_async(lambda: backends.backend_state("big") == "cold", 5, "cold from the stats")
            backends.warm("big")
            assert not await backends.wait_ready("big", 5) and backends.backend_state("big") == "failed"
            async with backends.lease("big"):  # a real request gets through meanwhile
                pass
            assert backends.backend_state("big") == "ready"
        finally:
            await backends.close()

    async def answer(reader: Any, writer: Any, request: Request, conn: Connection) -> bool:
        return await _answer(status["code"], reader, writer, request, conn)

    with rude_backend(answer) as backend:
        asyncio.run(run(backend.url))


# --- warm hours: a backend that dies in its window, one that never starts, a reload that removes it ---


def test_local_warm_hours_restart_a_crashed_backend_never_in_a_tight_loop_and_let_a_removed_one_go(
    tmp_path: Path,
) -> None:
    all_day = WarmWindow(days="daily", start="00:00", end="24:00", timezone="Etc/UTC")
    kept = Entry(name="kept", model="TabbyML/StarCoder-1B", scaledown_window=2, warm=(all_day,))
    never = Entry(name="never", model="TabbyML/StarCoder-1B", startup_timeout=1, warm=(all_day,),
                  standin=StandInOptions(start_delay=30))  # fmt: skip
    settings = FleetSettings(data_dir=tmp_path, entries=[kept, never])
    clock = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # Europe's spring-forward night; UTC has none

    async def run() -> None:
        backends = LocalBackends(settings, clock=lambda: clock, warm_check_seconds=0.3)
        for backend in backends.backends.values():
            backend.tabby_bin = None  # the stand-in, wherever a tabby binary is installed
        await backends.start()
        try:
            await _until_async(lambda: backends.backend_state("kept") == "ready", 20, "kept started by its window")
            first = backends.status()["kept"]["pid"]
            os.kill(first, signal.SIGKILL)  # the backend dies inside its window
            await _until_async(lambda: (s := backends.status()["kept"])["state"] == "ready" and s["pid"] != first,
                               10, "kept started again")  # fmt: skip
            await asyncio.sleep(3)
            kept_status, never_status = backends.status()["kept"], backends.status()["never"]
            assert kept_status["starts"] == 2 and kept_status["stops"] == 0, kept_status
            # A start that always fails is tried again at each check, each taking its startup_timeout: not a
            # tight loop (about one a second and a third here; in production one per 15 s check).
            assert 2 <= never_status["starts"] <= 8 and never_status["state"] in ("starting", "failed"), never_status
            pid = backends.status()["kept"]["pid"]
            await backends.adopt(settings.model_copy(update={"entries": (never,)}))
            await _until_async(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 10, "kept stopped")
            await asyncio.sleep(1)
            assert "kept" not in backends.status() and backends.backend_state("kept") == "ready"  # no backend
        finally:
            await backends.close()

    asyncio.run(run())


def _zombie(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return True


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_warm_windows_at_dst_edges_midnight_and_the_week_end() -> None:
    """What an admin may write: starts and ends inside the missing spring hour (read as iCalendar does, at
    the offset before the gap), a window over the doubled autumn hour (continuous, not cut or run twice),
    end "24:00", sun -> mon overnight, "UTC" and "Etc/UTC" alike."""
    berlin_gap = WarmWindow(days="sun", start="02:30", end="04:00", timezone="Europe/Berlin")  # 2026-03-29
    assert not berlin_gap.active(_utc("2026-03-29T01:29"))  # 03:29 CEST
    assert berlin_gap.active(_utc("2026-03-29T01:30")) and berlin_gap.active(_utc("2026-03-29T01:59"))
    assert not berlin_gap.active(_utc("2026-03-29T02:00"))  # 04:00 CEST
    autumn = WarmWindow(days="sun", start="01:30", end="03:30", timezone="America/New_York")  # 2026-11-01
    inside = [_utc("2026-11-01T05:30") + timedelta(minutes=m) for m in range(0, 180, 5)]  # 01:30 EDT .. 03:25 EST
    assert all(autumn.active(when) for when in inside)
    assert not autumn.active(_utc("2026-11-01T05:29")) and not autumn.active(_utc("2026-11-01T08:30"))
    whole_day = WarmWindow(days="sat", start="00:00", end="24:00", timezone="Europe/Berlin")
    assert whole_day.active(_utc("2026-10-24T21:59")) and not whole_day.active(_utc("2026-10-24T22:00"))  # CEST
    sunday_night = WarmWindow(days="sun", start="22:00", end="06:00", timezone="UTC")
    assert sunday_night.active(_utc("2026-11-30T05:59")) and not sunday_night.active(_utc("2026-11-30T06:00"))
    assert not sunday_night.active(_utc("2026-11-24T02:00"))  # Tuesday: Monday starts no window
    for zone in ("UTC", "Etc/UTC"):
        window = WarmWindow(days="mon-fri", start="08:00", end="19:00", timezone=zone)
        assert window.active(_utc("2026-11-27T08:00")) and not window.active(_utc("2026-11-27T19:00"))


async def _redirect_elsewhere(reader: Any, writer: Any, request: Request, conn: Connection) -> bool:
    writer.write(head(303, ("location", "http://127.0.0.2:9/v1/health"), ("content-length", 0)))
    return True


async def _redirect_loop(reader: Any, writer: Any, request: Request, conn: Connection) -> bool:
    writer.write(head(303, ("location", "/v1/health?__modal_function_call_id=fc-loop"), ("content-length", 0)))
    return True


async def _html_page(reader: Any, writer: Any, request: Request, conn: Connection) -> bool:
    page = b"<html><body>a proxy's page</body></html>"
    writer.write(head(200, ("content-type", "text/html"), ("content-length", len(page))) + page)
    return True


@pytest.mark.parametrize(
    ("handler", "state", "reason"),
    [(_redirect_elsewhere, "failed", "answered 303"), (_redirect_loop, "failed", "answered 303"),
     (_html_page, "ready", None)],
    ids=["redirect-to-another-origin", "303-loop", "html-200"],
)  # fmt: skip
def test_a_wake_answered_with_a_foreign_redirect_a_303_loop_or_html(
    tmp_path: Path, handler: Any, state: str, reason: str | None
) -> None:
    """Redirects are followed on the class's own origin only, five hops at most: then the wake has failed,
    at once. Any 200 is an awake container (Modal answers nothing before one has started)."""
    config = '[[entries]]\nname = "odd"\nmodel = "TabbyML/StarCoder-1B"\nstartup_timeout = 20\n'
    with rude_backend(handler) as backend, modal_router(tmp_path, config, {"TabbyOdd": backend.url}) as router:
        started = time.monotonic()
        httpx.get(f"{router}/v1/health", timeout=10)
        status = _wait_for(lambda: (s := _runtime(router, "odd"))["state"] == state and s, 10, state)
        assert time.monotonic() - started < 10  # not startup_timeout (20 s)
        assert reason is None or reason in status["last_error"], status
        assert len([r for r in backend.requests if r.header("modal-key")]) <= 6  # the wake and its hops


def test_sigterm_with_completions_waiting_for_a_start_answers_them_503_with_advice(tmp_path: Path) -> None:
    """The server's graceful shutdown (10 s) runs out while completions wait for a start, or out a
    cold_wait: each gets a JSON 503 saying the router is stopping (uvicorn's bare 500 before)."""
    config = """
    [router]
    start_timeout = 60

    [[entries]]
    name = "big"
    model = "TabbyML/StarCoder-7B"
    standin = { start_delay = 60 }

    [[entries]]
    name = "patient"
    model = "TabbyML/StarCoder-3B"
    fallback = "big"
    cold_wait = 60
    standin = { start_delay = 60 }
    """
    with run_fleet(tmp_path, config) as fleet:
        with ThreadPoolExecutor(2) as pool:
            waiting = [
                pool.submit(httpx.post, f"{fleet.base_url}/models/{entry}/v1/completions", json=COMPLETION, timeout=60)
                for entry in ("big", "patient")
            ]
            time.sleep(2)
            assert _stopped_within(fleet.process, 20) < 20  # uvicorn's timeout_graceful_shutdown (10 s), and more
            answers = [future.result(10) for future in waiting]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "router-stopping" and answer.headers["retry-after"] == "5"


def test_when_modal_stats_stop_the_container_count_is_the_routers_estimate_not_the_last_sample() -> None:
    """A count Modal gave before its stats calls began failing is not billed for ever: once the sample is
    stale (STATS_STALE_INTERVALS polls), usage counts containers from the router's own view."""
    stats = FakeStats()

    async def run() -> None:
        backends = _modal_backends("http://127.0.0.1:9", stats, min_containers=1)
        await backends.start()
        try:
            stats.sample = SimpleNamespace(num_total_runners=3, backlog=0)
            await _until_async(lambda: backends.status()["big"]["containers"] == 3, 5, "a sample of 3")
            assert backends.status()["big"]["containers_source"] == "modal"
            stats.sample = ValueError("Modal is unreachable")
            await _until_async(lambda: backends.status()["big"]["containers_source"] == "estimate", 5, "staleness")
            assert backends.status()["big"]["containers"] == 1  # min_containers keeps one up: the estimate
        finally:
            await backends.close()

    asyncio.run(run())
