"""The router's backends on Modal: each entry is a deployed class, found by its web URL.

URLs are looked up once, at router start-up, with Modal's own API
(``modal.Cls.from_name(app, cls)().serve.get_web_url()``), never built from strings. Every request
carries the workspace proxy token (the classes require Modal proxy auth), waits up to the entry's
``first_byte_timeout`` for a cold container, and follows Modal's same-origin 303 if the call runs
past Modal's 150 s web limit.

Modal starts and stops containers itself, so the states reported here are the router's estimate:
``cold`` until a request has succeeded within the entry's ``scaledown_window`` (or always ``ready``
with ``min_containers``), ``starting`` while the first request of a cold entry is in flight,
``failed`` when the class could not be found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fleet.errors import FleetError
from fleet.settings import Entry, FleetSettings
from router.backends import StaticBackends, Upstream

log = logging.getLogger("tabby_fleet.modal")

PROXY_KEY_ENV, PROXY_SECRET_ENV = "TABBY_FLEET_PROXY_KEY", "TABBY_FLEET_PROXY_SECRET"

UrlLookup = Callable[[Entry], str]


def modal_url_lookup(app_name: str) -> UrlLookup:
    """Find an entry's class URL through Modal's API (needs Modal credentials: in a container, given)."""

    def lookup(entry: Entry) -> str:
        import modal

        url = modal.Cls.from_name(app_name, entry.class_name)().serve.get_web_url()
        if not url:
            raise LookupError(f"class {entry.class_name} of app {app_name!r} has no web URL")
        return str(url)

    return lookup


def proxy_auth_headers(environ: dict[str, str] | None = None) -> tuple[tuple[bytes, bytes], ...]:
    env = os.environ if environ is None else environ
    key, secret = env.get(PROXY_KEY_ENV), env.get(PROXY_SECRET_ENV)
    if not key or not secret:
        raise FleetError(
            500,
            "proxy-auth-missing",
            f"the router has no Modal proxy token: create one (`modal workspace proxy-tokens create`) and store "
            f"it in the Secret named by modal.proxy_auth_secret as {PROXY_KEY_ENV} and {PROXY_SECRET_ENV}",
        )
    return ((b"modal-key", key.encode()), (b"modal-secret", secret.encode()))


class _ModalEntry:
    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.url: str | None = None
        self.error: str | None = None
        self.in_flight = 0
        self.last_ok = 0.0

    def state(self, now: float) -> str:
        if self.url is None:
            return "failed" if self.error else "starting"
        if self.entry.min_containers > 0 or now - self.last_ok < self.entry.scaledown_window:
            return "ready"
        return "starting" if self.in_flight else "cold"


class ModalBackends:
    runtime = "modal"

    def __init__(
        self,
        settings: FleetSettings,
        lookup: UrlLookup | None = None,
        headers: tuple[tuple[bytes, bytes], ...] | None = None,
    ) -> None:
        self.settings = settings
        # Each router container enforces its share of every entry's capacity and team's limits: an
        # approximation (load is spread by Modal, not by entry), exact with one router container.
        self.router_share = settings.modal.router_max_containers
        self.static = StaticBackends(settings)
        self._lookup = lookup or modal_url_lookup(settings.modal.app_name)
        self._headers = headers if headers is not None else proxy_auth_headers()
        self.entries = {e.name: _ModalEntry(e) for e in settings.entries if e.name not in self.static}

    async def start(self) -> None:
        async def find(state: _ModalEntry) -> None:
            try:
                state.url = (await asyncio.to_thread(self._lookup, state.entry)).rstrip("/")
                log.info("entry %s: %s at %s", state.entry.name, state.entry.class_name, state.url)
            except Exception as exc:  # any failure: report it per entry, keep the others serving
                state.error = (
                    f"could not find Modal class {state.entry.class_name} in app {self.settings.modal.app_name!r} "
                    f"({exc.__class__.__name__}: {exc}); deploy it with `fleet deploy`"
                )
                log.error("entry %s: %s", state.entry.name, state.error)

        await asyncio.gather(*(find(state) for state in self.entries.values()))

    async def close(self) -> None:
        return None

    async def reconfigure(self, settings: FleetSettings) -> None:
        raise FleetError(
            409,
            "reload-not-supported",
            "on Modal the fleet's settings change with a redeploy: run `fleet deploy`",
        )

    @contextlib.asynccontextmanager
    async def lease(self, entry: str) -> AsyncIterator[Upstream]:
        state = self.entries.get(entry)
        if state is None:
            yield self.static.upstream(entry)
            return
        if state.url is None:
            raise FleetError(502, "backend-failed", state.error or f"entry {entry!r} has no URL yet", retry_after=30)
        state.in_flight += 1
        try:
            yield Upstream(
                state.url,
                headers=self._headers,
                # A cold container loads its model before it answers: by default wait as long as
                # Modal waits for it to start (Modal's 303s keep the request alive past 150 s).
                first_byte_timeout=state.entry.first_byte_timeout or float(state.entry.startup_timeout),
                follow_redirects=True,
            )
            state.last_ok = time.monotonic()
        finally:
            state.in_flight -= 1

    # Cold starts, part 1: the router cannot see a Modal container's state (status() is an estimate), and
    # the request that wakes a container is a later part. So every entry counts as ready here: health
    # is forwarded as before and completions never fall back on Modal yet.
    def backend_state(self, entry: str) -> str:
        return "ready"

    def warm(self, entry: str) -> str:
        return "ready"

    async def wait_ready(self, entry: str, seconds: float) -> bool:
        return True

    def status(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        status = {
            name: {"state": state.state(now), "in_flight": state.in_flight, "last_error": state.error, "url": state.url}
            for name, state in self.entries.items()
        }
        return status | self.static.status()
