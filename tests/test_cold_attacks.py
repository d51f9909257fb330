"""Attacks on cold starts, Modal wakes and warm hours: a hostile backend, a flaky cloud, a demanding admin.

Each test is one attack through real processes on loopback (a real `fleet up`, or the router with its
Modal backends in front of the fake edge or a raw-socket backend); only Modal's cloud and clocks are faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from .fleetproc import COMPLETION, RunningFleet, free_port, run_fleet, serve_process
from .modal_router import router_argv, router_env
from .rude_backend import Connection, Request, chunk, head, rude_backend

KEY, SECRET = "wk-attack", "ws-attack"


def _state(fleet: RunningFleet, entry: str) -> str:
    return str(fleet.health()["entries"][entry]["state"])


def _runtime(router: str, entry: str) -> dict[str, Any]:
    table = httpx.get(f"{router}/fleet/entries", timeout=10).json()["entries"]
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
    """The router with its Modal backends (tests/modal_router.py) for ``urls`` (class name -> URL)."""
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
