"""apps/local/backends.py and apps/local/hub_backend.py: the local runtime runs the hub as one more backend,
"@hub" (fleet.hub.HUB_BACKEND): started on first use, kept while a lease is held (an open WebSocket holds
one), stopped after hub.scaledown_window idle seconds with a last snapshot; hub.url used as it is.
Real processes: ``apps.hub.run`` around the stand-in hub.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from apps.local.backends import LocalBackends
from fleet.errors import FleetError
from fleet.hub import HUB_BACKEND, JWT_SECRET_ENV, HubOptions
from fleet.settings import Entry, FleetSettings
from tests.support.hub_client import CHAT_MODEL, answer_of, ask, bearer, hub_env

IDLE = 2  # hub.scaledown_window: the shortest Modal allows


def _settings(tmp_path: Path, **hub: Any) -> FleetSettings:
    entry = Entry(name="small", model="TabbyML/StarCoder-1B", chat_model=CHAT_MODEL)
    options = HubOptions(enabled=True, identity="user", chat_entry="small", scaledown_window=IDLE, **hub)
    return FleetSettings(data_dir=tmp_path, entries=[entry], hub=options)


def _proc(pid: int, what: str) -> list[str]:
    return Path(f"/proc/{pid}/{what}").read_bytes().decode().split("\0")


def test_the_hub_starts_on_lease_stays_while_leased_and_stops_idle_with_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in hub_env().items():
        monkeypatch.setenv(name, value)  # the stand-in's users pass through from fleet up's environment
    settings = _settings(tmp_path, snapshot_interval=3600)  # only the snapshot at the stop

    async def run() -> dict[str, Any]:
        backends = LocalBackends(settings, router_url="http://127.0.0.1:9")
        assert backends.hub is not None
        backends.hub.tabby_bin = None  # the stand-in hub, wherever a tabby binary is installed
        await backends.start()
        seen: dict[str, Any] = {"cold": backends.backend_state(HUB_BACKEND), "before": backends.hub_status()}
        try:
            async with backends.lease(HUB_BACKEND) as upstream:
                seen["url"] = upstream.base_url
                health_url = f"{upstream.base_url}/v1/health"
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(health_url, headers=bearer("auth_alice")) as r,
                ):
                    seen["health"] = await r.json()
                seen["running"] = backends.hub_status()
                pid = seen["running"]["pid"]
                seen["cmdline"], seen["environ"] = _proc(pid, "cmdline"), _proc(pid, "environ")
                await asyncio.sleep(IDLE * 2)  # held, as an open WebSocket holds it: not idle
                seen["held"] = backends.backend_state(HUB_BACKEND)
            seen["status_keys"] = set(backends.status())
            for _ in range((IDLE + 20) * 10):  # the reaper stops it within about IDLE seconds
                if backends.backend_state(HUB_BACKEND) == "cold":
                    break
                await asyncio.sleep(0.1)
            seen["after"] = backends.hub_status()
            seen["again"] = backends.warm(HUB_BACKEND), await backends.wait_ready(HUB_BACKEND, 20)
        finally:
            await backends.close()
        return seen

    seen = asyncio.run(run())
    assert seen["cold"] == "cold" and seen["before"]["state"] == "cold" and seen["before"]["snapshots"] == 0
    assert seen["health"]["webserver"] is True and seen["health"]["chat_model"] == CHAT_MODEL
    running = seen["running"]
    assert (
        running["state"] == "ready"
        and running["kind"] == "stand-in hub"
        and seen["url"].endswith(f":{running['port']}")
    )
    cmdline = seen["cmdline"]
    assert cmdline[cmdline.index("--root") + 1] == str(tmp_path.resolve() / "hub" / "root")
    assert "--chat-url" in cmdline and "http://127.0.0.1:9/models/small/v1" in cmdline
    secret_file = tmp_path / "hub" / "jwt-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert f"{JWT_SECRET_ENV}={secret_file.read_text().strip()}" in seen["environ"]
    assert seen["held"] == "ready"
    assert HUB_BACKEND not in seen["status_keys"] and seen["status_keys"] == {"small"}  # status() lists entries
    after = seen["after"]
    assert after["state"] == "cold" and after["stops"] == 1, after
    assert after["snapshots"] == 1 and after["newest_snapshot"], after  # the last snapshot at the clean stop
    assert seen["again"] == ("starting", True)


def test_threads_made_through_the_hubs_lease_survive_its_idle_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in hub_env().items():
        monkeypatch.setenv(name, value)
    settings = _settings(tmp_path, snapshot_interval=3600)

    async def run() -> tuple[str, list[dict[str, Any]]]:
        backends = LocalBackends(settings)  # no router URL: the stand-in's canned answer
        assert backends.hub is not None
        backends.hub.tabby_bin = None
        await backends.start()
        try:
            async with backends.lease(HUB_BACKEND) as upstream:
                first, _ = await ask(upstream.base_url, "auth_alice", "kept?")
            assert backends.hub is not None
            await backends.hub.stop("test: as the idle reaper does")
            async with backends.lease(HUB_BACKEND) as upstream, aiohttp.ClientSession() as session:
                query = {"query": "{ myThreads { totalCount edges { node { question } } } }"}
                async with session.post(f"{upstream.base_url}/graphql", json=query, headers=bearer("auth_alice")) as r:
                    threads = await r.json()
            return answer_of(first), threads["data"]["myThreads"]["edges"]
        finally:
            await backends.close()

    answer, threads = asyncio.run(run())
    assert answer.startswith("alice asked: kept?")
    assert [thread["node"]["question"] for thread in threads] == ["kept?"]


def test_a_hub_url_is_used_as_it_is_and_a_hub_that_is_off_is_refused_with_advice(tmp_path: Path) -> None:
    settings = _settings(tmp_path, url="https://hub.example.com/")

    async def run(settings: FleetSettings) -> tuple[str, str, dict[str, Any] | None]:
        backends = LocalBackends(settings)
        async with backends.lease(HUB_BACKEND) as upstream:
            return upstream.base_url, backends.backend_state(HUB_BACKEND), backends.hub_status()

    url, state, status = asyncio.run(run(settings))
    assert (
        url == "https://hub.example.com"
        and state == "ready"
        and status == {"state": "ready", "kind": "url", "url": url}
    )
    assert not (tmp_path / "hub").exists()  # nothing started here
    off = FleetSettings(data_dir=tmp_path, entries=[Entry(name="small", model="TabbyML/StarCoder-1B")])
    with pytest.raises(FleetError) as refused:
        asyncio.run(run(off))
    assert refused.value.code == "no-hub" and "[hub] enabled = true" in refused.value.message
    assert LocalBackends(off).hub_status() is None
    assert os.environ.get("TABBY_ROOT") is None  # the runtime set nothing in its own environment


def test_a_reload_that_changes_the_hub_stops_the_old_process_before_the_new_one_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both would use data_dir/hub/root: never two hub processes on it at once."""
    for name, value in hub_env().items():
        monkeypatch.setenv(name, value)

    async def run() -> tuple[int, int, bool]:
        backends = LocalBackends(_settings(tmp_path, snapshot_interval=3600))
        assert backends.hub is not None
        backends.hub.tabby_bin = None
        await backends.start()
        try:
            async with backends.lease(HUB_BACKEND):  # held, as an open WebSocket to the old process holds it
                old = backends.hub_status()
                assert old is not None
                await backends.adopt(_settings(tmp_path, snapshot_interval=600))
                assert backends.hub is not None
                backends.hub.tabby_bin = None
                async with backends.lease(HUB_BACKEND):
                    new = backends.hub_status()
                    assert new is not None
                    old_alive = os.path.exists(f"/proc/{old['pid']}")  # noqa: ASYNC240 - one stat
            return old["pid"], new["pid"], old_alive
        finally:
            await backends.close()

    old_pid, new_pid, old_alive = asyncio.run(run())
    assert old_pid != new_pid and not old_alive
