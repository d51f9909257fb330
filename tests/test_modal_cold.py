"""Cold starts on Modal, through the real router over loopback: only Modal's edge and stats are faked.

The fake edge (tests/support/fake_modal_edge.py) starts a "container" on the first request after being cold
(``--start-delay``) and says what Modal's ``get_current_stats()`` would; tests/support/modal_router.py reads
the stats from it every 0.5 s and retries a failed wake after 3 s (production: 15 s and 30 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import fleets
from .support.fake_modal_edge import edge_argv
from .support.fleetproc import COMPLETION, free_port, serve_process, standin_argv
from .support.modal_router import ADMIN, router_argv, router_env

KEY, SECRET = "wk-cold", "ws-cold"
START_DELAY = 3.0  # the large class's cold start
CONFIG = fleets.small_and_large(
    large="""
fallback = "small"
cold_wait = 1
""",
    then="""
[[entries]]
name = "broken"
model = "TabbyML/StarCoder-3B"

[[entries]]
name = "refused"
model = "TabbyML/StarCoder-3B"
""",
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    workdir: Path = tmp_path_factory.mktemp("modal-cold")
    (workdir / "fleet.toml").write_text(CONFIG)
    with ExitStack() as stack:
        small_port, big_port, large_edge_port, broken_edge_port, router_port, closed_port = (
            free_port() for _ in range(6)
        )
        small = stack.enter_context(serve_process(standin_argv(small_port), small_port))
        big = stack.enter_context(serve_process(standin_argv(big_port, model="TabbyML/StarCoder-7B"), big_port))
        edges = {}
        for name, port, delay in (("large", large_edge_port, START_DELAY), ("broken", broken_edge_port, 0.5)):
            # The large class's start outlives the edge's redirect_after: its wake is redirected, and followed.
            options = ("--redirect-after", "1", "--start-delay", str(delay))
            edges[name] = stack.enter_context(serve_process(edge_argv(port, big, KEY, SECRET, *options), port))
        urls = {"TabbySmall": small, "TabbyLarge": edges["large"], "TabbyBroken": edges["broken"],
                "TabbyRefused": f"http://127.0.0.1:{closed_port}"}  # fmt: skip
        argv = router_argv(workdir / "fleet.toml", router_port, urls, "--stats-interval", "0.5", "--wake-retry", "3")
        router = stack.enter_context(serve_process(argv, router_port, env=router_env(KEY, SECRET)))
        yield {"router": router, "small": small, "large_edge": edges["large"], "broken_edge": edges["broken"]}


def entry_status(fleet: dict[str, str], entry: str) -> dict[str, Any]:
    """What the router's Modal backends say of ``entry`` (/fleet/entries: the runtime's own status)."""
    table = httpx.get(f"{fleet['router']}/fleet/entries", headers=ADMIN, timeout=10).json()["entries"]
    status: dict[str, Any] = next(e for e in table if e["name"] == entry)["runtime"]
    return status


def wait_for(predicate: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        time.sleep(0.1)
    return value


def health(fleet: dict[str, str], entry: str) -> httpx.Response:
    return httpx.get(f"{fleet['router']}/models/{entry}/v1/health", timeout=30)


def complete(fleet: dict[str, str], entry: str) -> httpx.Response:
    return httpx.post(f"{fleet['router']}/models/{entry}/v1/completions", json=COMPLETION, timeout=30)


def edge_stats(edge: str) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(f"{edge}/_edge/stats", timeout=10).json()
    return stats


def make_ready(fleet: dict[str, str], entry: str) -> None:
    health(fleet, entry)  # wakes it
    wait_for(lambda: entry_status(fleet, entry)["state"] == "ready", 15, f"{entry} ready")


def make_cold(fleet: dict[str, str]) -> None:
    """Modal scales the large class to zero; the router learns it from the stats alone."""
    wait_for(lambda: entry_status(fleet, "large")["state"] != "starting", 15, "no wake under way")
    httpx.post(f"{fleet['large_edge']}/_edge/scale_to_zero", timeout=10)
    wait_for(lambda: entry_status(fleet, "large")["state"] == "cold", 5, "large cold")


def test_cold_health_is_answered_at_once_and_wakes_the_class_once(fleet: dict[str, str]) -> None:
    make_cold(fleet)
    before = edge_stats(fleet["large_edge"])

    def timed_health(_: int) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = health(fleet, "large")
        return response, time.monotonic() - started

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(timed_health, range(5)))
    for response, took in answers:
        assert response.status_code == 200 and took < 1.0, (response.status_code, took)
        assert response.headers["x-fleet-backend"] == "starting"
        assert response.json()["model"] == "TabbyML/StarCoder-7B"
    assert entry_status(fleet, "large")["state"] == "starting"
    wait_for(lambda: entry_status(fleet, "large")["state"] == "ready", START_DELAY + 10, "large awake")
    after = edge_stats(fleet["large_edge"])
    assert after["wakes"] - before["wakes"] == 1
    sent = (after["requests"] - after["result_gets"]) - (before["requests"] - before["result_gets"])
    assert sent == 1  # one wake request for five health checks
    assert after["redirects"] - before["redirects"] >= 1  # the 3 s start outlived the edge's 1 s: followed
    awake = health(fleet, "large")
    assert awake.status_code == 200 and "x-fleet-backend" not in awake.headers  # the class's own answer now
    assert edge_stats(fleet["large_edge"])["requests"] == after["requests"] + 1


def test_cold_completion_is_served_by_the_fallback_then_by_the_entry_once_awake(fleet: dict[str, str]) -> None:
    make_ready(fleet, "small")
    make_cold(fleet)
    started = time.monotonic()
    response = complete(fleet, "large")
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert 0.5 < took < 3.0  # waited cold_wait (1 s), not the class's 3 s start
    assert response.headers["x-fleet-entry"] == "small" and response.headers["x-fleet-fallback"] == "large"
    assert "StarCoder-1B" in response.json()["choices"][0]["text"]
    wait_for(lambda: entry_status(fleet, "large")["state"] == "ready", START_DELAY + 10, "large awake")
    response = complete(fleet, "large")
    assert response.status_code == 200 and response.headers["x-fleet-entry"] == "large"
    assert "x-fleet-fallback" not in response.headers
    assert "StarCoder-7B" in response.json()["choices"][0]["text"]


def test_modal_stats_with_no_runners_turn_a_ready_entry_cold(fleet: dict[str, str]) -> None:
    make_ready(fleet, "large")
    idle = wait_for(lambda: (s := entry_status(fleet, "large"))["backlog"] == 0 and s, 5, "a sample after the wake")
    assert idle["state"] == "ready" and idle["containers"] == 1 and idle["stats_at"] < 5
    httpx.post(f"{fleet['large_edge']}/_edge/scale_to_zero", timeout=10)  # Modal scaled it down: no request
    # Without the stats the router would say ready for scaledown_window (300 s) after the last success.
    cold = wait_for(lambda: (s := entry_status(fleet, "large"))["state"] == "cold" and s, 5, "large cold")
    assert cold["containers"] == 0
    assert health(fleet, "large").headers["x-fleet-backend"] == "starting"  # and the next health wakes it


def test_runners_the_router_has_not_seen_answer_count_as_starting(fleet: dict[str, str]) -> None:
    make_cold(fleet)
    # Another router container wakes the class: this router sees runners in the stats, no success.
    auth = {"Modal-Key": KEY, "Modal-Secret": SECRET}
    httpx.get(f"{fleet['large_edge']}/v1/health", headers=auth, follow_redirects=True, timeout=30)
    starting = wait_for(lambda: (s := entry_status(fleet, "large"))["containers"] == 1 and s, 5, "a sample")
    assert starting["state"] == "starting"  # a container, maybe still loading its model
    wakes = edge_stats(fleet["large_edge"])["wakes"]
    assert health(fleet, "large").headers["x-fleet-backend"] == "starting"
    wait_for(lambda: entry_status(fleet, "large")["state"] == "ready", 5, "the wake request answered")
    assert edge_stats(fleet["large_edge"])["wakes"] == wakes  # the container was up: no new start


def test_a_failed_wake_is_a_502_with_its_reason_then_is_tried_again(fleet: dict[str, str]) -> None:
    edge = fleet["broken_edge"]
    httpx.post(f"{edge}/_edge/fail", params={"status": "500"}, timeout=10)  # the container crashes on start
    assert health(fleet, "broken").headers["x-fleet-backend"] == "starting"
    failed = wait_for(lambda: (r := health(fleet, "broken")).status_code == 502 and r, 5, "the wake to fail")
    httpx.post(f"{edge}/_edge/fail", params={"status": "0"}, timeout=10)  # healed: the retry will succeed
    error = failed.json()["error"]
    assert error["code"] == "backend-failed"
    assert "TabbyBroken" in error["message"] and "answered 500" in error["message"]
    status = entry_status(fleet, "broken")
    assert status["state"] == "failed" and "answered 500" in status["last_error"] and status["wakes"] == 1
    assert edge_stats(edge)["wakes"] == 1  # health checks while failed do not wake it again ...
    retried = wait_for(lambda: (r := health(fleet, "broken")).status_code == 200 and r, 5, "a retry (after 3 s)")
    assert retried.headers["x-fleet-backend"] == "starting"  # ... until wake_retry has passed
    wait_for(lambda: entry_status(fleet, "broken")["state"] == "ready", 10, "broken awake")
    assert edge_stats(edge)["wakes"] == 2 and entry_status(fleet, "broken")["wakes"] == 2


def test_a_class_url_that_refuses_is_a_502_naming_the_connection(fleet: dict[str, str]) -> None:
    health(fleet, "refused")
    failed = wait_for(lambda: (r := health(fleet, "refused")).status_code == 502 and r, 5, "the wake to fail")
    assert "could not connect" in failed.json()["error"]["message"]
    refused = entry_status(fleet, "refused")  # no stats for it: the router's view alone, and it is failed
    assert (refused["containers"], refused["containers_source"]) == (0, "estimate")


def test_two_routers_sharing_a_store_count_the_containers_they_both_see_once(tmp_path: Path) -> None:
    """Two router containers (one store, as on the fleet's Volume) in front of one class with a container up:
    each one's /fleet/usage says the container's time once, not once per router (as it did before)."""
    (tmp_path / "fleet.toml").write_text(fleets.small_and_large())
    with ExitStack() as stack:
        small_port, big_port, edge_port, *router_ports = (free_port() for _ in range(5))
        small = stack.enter_context(serve_process(standin_argv(small_port), small_port))
        big = stack.enter_context(serve_process(standin_argv(big_port, model="TabbyML/StarCoder-7B"), big_port))
        edge = stack.enter_context(serve_process(edge_argv(edge_port, big, KEY, SECRET), edge_port))  # always up
        urls = {"TabbySmall": small, "TabbyLarge": edge}
        routers = [
            stack.enter_context(serve_process(router_argv(tmp_path / "fleet.toml", port, urls, "--stats-interval",
                "0.5", "--store", str(tmp_path / "state")), port, env=router_env(KEY, SECRET)))
            for port in router_ports
        ]  # fmt: skip

        def sampled(router: str) -> Any:
            table = httpx.get(f"{router}/fleet/entries", headers=ADMIN, timeout=10).json()["entries"]
            return next(e for e in table if e["name"] == "large")["runtime"]["containers_source"] == "modal"

        def large(router: str) -> float:
            usage = httpx.get(f"{router}/fleet/usage", params={"since": "1h"}, headers=ADMIN, timeout=10).json()
            return float(usage["entries"]["large"]["container_seconds"])

        began = {}
        for router in routers:
            wait_for(lambda router=router: sampled(router), 15, "Modal's stats read")  # type: ignore[misc]
            assert large(router) == 0.0  # the first sample: the container is seen, no time yet
            began[router] = time.monotonic()
        time.sleep(40)
        for router in routers:
            large(router)  # each samples now ...
        time.sleep(2 * 2.0 + 1)  # ... and has flushed it, and read the other's, within two flushes
        for router in routers:
            seconds, elapsed = large(router), time.monotonic() - began[router]
            # One container for ~45 s: about 45 container-seconds (each router's 10 s sampling may put a few in
            # a neighbouring minute, where the other's view may be the larger), not ~90 (failing before).
            assert elapsed - 6 <= seconds <= elapsed + 15, (router, seconds, elapsed)
