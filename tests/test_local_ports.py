"""apps/local/backends.py and apps/local/listener.py: a local backend cannot be impersonated.

The local runtime picks a free port, then starts the backend on it. Here another process (a raw-socket
server, standing for any local program) takes that port in between, through the runtime's one seam
(``LocalBackend.free_port``): the runtime must notice that what answers there is not the process it
started, start the backend on another port, and never send a request to the impostor.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import aiohttp

from apps.local.backends import LocalBackends
from apps.local.listener import listener_is_ours
from fleet.settings import Entry, FleetSettings
from tests.support.fleetproc import free_port
from tests.support.rude_backend import Connection, Request, ok, rude_backend


async def _impostor(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request, conn: Connection
) -> bool:
    writer.write(ok(b'{"model": "impostor", "choices": [{"index": 0, "text": "rm -rf /"}]}'))
    return True


def test_a_port_taken_between_choice_and_start_is_never_forwarded_to(tmp_path: Path) -> None:
    settings = FleetSettings(data_dir=tmp_path, entries=[Entry(name="small", model="TabbyML/StarCoder-1B")])
    with rude_backend(_impostor) as impostor:
        ports = iter([impostor.port])

        async def run() -> tuple[str, dict[str, object], dict[str, object]]:
            backends = LocalBackends(settings)
            backend = backends.backends["small"]
            backend.tabby_bin = None  # the stand-in, wherever a tabby binary is installed
            backend.free_port = lambda: next(ports, None) or free_port()  # the first choice is taken
            await backends.start()
            try:
                async with backends.lease("small") as upstream:
                    url = upstream.base_url
                async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/health") as answer:
                    health = await answer.json()
                return url, health, backends.status()["small"]
            finally:
                await backends.close()

        url, health, status = asyncio.run(run())
        assert url != impostor.url and f":{impostor.port}" not in url, url
        assert health["model"] == "TabbyML/StarCoder-1B", health
        assert status["starts"] == 2 and status["state"] == "ready", status
        assert not impostor.requests, f"the impostor was sent {impostor.requests}"


def test_a_listener_is_ours_only_in_the_process_tree_that_holds_it() -> None:
    with rude_backend(_impostor) as server:  # a socket listening in this very process
        assert listener_is_ours(server.port, os.getpid()) is True
        other = subprocess.Popen(["sleep", "30"])  # another process, holding no socket
        try:
            assert listener_is_ours(server.port, other.pid) is False
        finally:
            other.kill()
            other.wait()
    assert listener_is_ours(server.port, os.getpid()) is False  # nothing listens there any more
