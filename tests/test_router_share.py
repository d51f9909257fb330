"""Several router containers on Modal: each enforces its share of every entry's and team's limits."""

from __future__ import annotations

import asyncio
from typing import Any

from apps.modal.backends import ModalBackends
from fleet.settings import FleetSettings
from router.app import create_app
from router.proxy import Proxy

SETTINGS: dict[str, Any] = {
    "entries": [{"name": "small", "model": "m", "max_containers": 2, "max_inputs": 5, "max_queue": 7}],
    "teams": [{"name": "web", "entry": "small", "max_concurrent": 3, "requests_per_minute": 100}],
}


def proxy_for(routers: int) -> Proxy:
    settings = FleetSettings(**SETTINGS, modal={"router_max_containers": routers})
    backends = ModalBackends(settings, lookup=lambda entry: "http://127.0.0.1:9", headers=())
    return create_app(settings, backends).proxy


def test_one_router_enforces_the_whole_limits() -> None:
    state = proxy_for(1).state
    assert (state.gate_limits["small"].capacity, state.gate_limits["small"].max_queue) == (10, 7)
    assert (state.teams["web"].max_concurrent, state.teams["web"].requests_per_minute) == (3, 100)


def test_each_of_three_routers_takes_a_third_rounded_up() -> None:
    state = proxy_for(3).state
    assert (state.gate_limits["small"].capacity, state.gate_limits["small"].max_queue) == (4, 3)  # 10/3, 7/3
    assert (state.teams["web"].max_concurrent, state.teams["web"].requests_per_minute) == (1, 34)
    assert state.limiters["web"].max_concurrent == 1


def test_a_cold_modal_entry_is_waited_for_as_long_as_modal_waits_for_its_start() -> None:
    settings = FleetSettings(entries=[{"name": "big", "model": "m", "startup_timeout": 900}])
    backends = ModalBackends(settings, lookup=lambda entry: "http://127.0.0.1:9", headers=())

    async def lease() -> float | None:
        await backends.start()
        async with backends.lease("big") as upstream:
            return upstream.first_byte_timeout

    assert asyncio.run(lease()) == 900.0  # not router.read_timeout (120 s): a cold 7B takes minutes
