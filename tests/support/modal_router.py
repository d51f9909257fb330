"""The router with its Modal backends, for tests: Modal's URL lookup and stats are replaced.

    python -m tests.support.modal_router --config fleet.toml --port P --urls '{"TabbySmall": "http://..."}'
        [--stats-interval SECONDS] [--wake-retry SECONDS] [--admin-token TOKEN] [--store DIR]

The lookup is a table (a class missing from it fails its lookup, as Modal would say). The stats of a
class are read from ``<its URL>/_edge/stats`` (tests/support/fake_modal_edge.py says what Modal's
``get_current_stats()`` would); a URL that is not a fake edge has no stats, like a failing call.
On Modal a loopback client is no admin, so the tests that read ``/fleet/entries`` give the router an
admin token (``--admin-token``, added to the settings) and send it (``ADMIN``). ``--store`` keeps usage in a
SegmentStore there (a new writer per process, as each Modal container's task id): routers given the same
directory share it as router containers share the fleet's Volume. Everything else is the
production path: create_app, ModalBackends (proxy-auth headers from
TABBY_FLEET_PROXY_KEY / TABBY_FLEET_PROXY_SECRET, redirects followed, wakes, the stats poll), uvicorn.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import uvicorn

from apps.modal.backends import STATS_INTERVAL, WAKE_RETRY_SECONDS, ModalBackends, ModalClass, StatsLike
from fleet.loading import load_settings
from fleet.tokens import TokenRef, hash_token
from router.app import create_app
from router.store import SegmentStore, writer_id

ADMIN_TOKEN = "tfa_modal-router-test"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def router_argv(
    config: Path, port: int, urls: dict[str, str], *options: str, admin_token: str | None = ADMIN_TOKEN
) -> list[str]:
    """The command line that runs this router (for tests.support.fleetproc.serve_process)."""
    admin = ["--admin-token", admin_token] if admin_token else []
    return [sys.executable, "-m", "tests.support.modal_router", "--config", str(config), "--port", str(port),
            "--urls", json.dumps(urls), *admin, *options]  # fmt: skip


def router_env(key: str, secret: str) -> dict[str, str]:
    """The environment with the workspace proxy token the router sends (from a Modal Secret in production)."""
    return {**os.environ, "TABBY_FLEET_PROXY_KEY": key, "TABBY_FLEET_PROXY_SECRET": secret}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--urls", required=True, help="JSON: class name -> URL; a missing class fails its lookup")
    parser.add_argument("--stats-interval", type=float, default=STATS_INTERVAL)
    parser.add_argument("--wake-retry", type=float, default=WAKE_RETRY_SECONDS)
    parser.add_argument("--admin-token", help="an admin token to add to the settings")
    parser.add_argument("--store", help="the usage store's directory (shared by the routers given the same one)")
    args = parser.parse_args()
    urls = json.loads(args.urls)

    def lookup(entry: ModalClass) -> str:
        if entry.class_name not in urls:
            raise LookupError(f"App function/class {entry.class_name!r} not found")  # what Modal says
        return str(urls[entry.class_name])

    async def stats(entry: ModalClass) -> StatsLike:
        async with aiohttp.ClientSession() as session, session.get(f"{lookup(entry)}/_edge/stats") as response:
            if response.status != 200:
                raise LookupError(f"no stats for {entry.class_name} (HTTP {response.status})")
            sample = await response.json()
        return SimpleNamespace(num_total_runners=sample["runners"], backlog=sample["backlog"])

    settings = load_settings(args.config)
    if args.admin_token:
        admin = TokenRef(label="modal-router-test", sha256=hash_token(args.admin_token))
        router = settings.router.model_copy(update={"admin_tokens": (*settings.router.admin_tokens, admin)})
        settings = settings.model_copy(update={"router": router})
    backends = ModalBackends(
        settings, lookup=lookup, stats=stats, stats_interval=args.stats_interval, wake_retry=args.wake_retry
    )
    store = SegmentStore(Path(args.store), writer_id()) if args.store else None
    app = create_app(settings, backends, store=store)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", loop="uvloop", http="httptools")


if __name__ == "__main__":
    main()
