"""The local runtime: each entry's backend is a process on 127.0.0.1, started on demand.

A backend starts on the first request for its entry (that request waits up to
``router.start_timeout``; the start itself may take up to the entry's ``startup_timeout``), stops
after ``scaledown_window`` seconds without requests, and starts again on the next request if it died.
During the entry's warm hours (``warm``, fleet/warm.py) it is started at the window's start without
waiting for a request, and not stopped for idleness until the window ends.
It is ``tabby serve`` when a tabby binary is found, otherwise the built-in stand-in.
Entries with a ``url`` are used as they are (see :class:`StaticBackends`).
With ``[hub] enabled``, the hub is one more backend under the key ``HUB_BACKEND`` ("@hub"): its process
(apps/local/hub_backend.py) with an entry's lifecycle, or ``hub.url`` as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from apps.local.hub_backend import HubBackend
from apps.local.process import LocalBackend
from fleet.errors import FleetError
from fleet.hub import HUB_BACKEND
from fleet.settings import FleetSettings
from fleet.warm import warm_containers_at
from router.backends import StaticBackends, Upstream

log = logging.getLogger("tabby_fleet.local")

# How often warm hours are checked: a window's process starts within this long of its start, and one
# that died is started again. A check only compares times, so it costs nothing.
WARM_CHECK_SECONDS = 15.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def find_tabby(settings: FleetSettings) -> str | None:
    """The tabby binary to run, or None for the stand-in. A configured one must exist."""
    if settings.tabby_bin:
        found = shutil.which(settings.tabby_bin)
        if found is None:
            raise FleetError(
                500,
                "tabby-not-found",
                f"tabby_bin {settings.tabby_bin!r} (FLEET_TABBY_BIN) is not an executable file; fix the "
                f"path, or unset it to use `tabby` from PATH or the built-in stand-in",
            )
        return found
    return shutil.which("tabby")


class LocalBackends:
    """Backends for every entry on this machine; the router's local runtime."""

    runtime = "local"
    router_share = 1  # one router process

    def __init__(
        self,
        settings: FleetSettings,
        clock: Callable[[], datetime] = utc_now,
        warm_check_seconds: float = WARM_CHECK_SECONDS,
        *,
        router_url: str | None = None,
    ) -> None:
        self.tabby_bin = find_tabby(settings)
        self.router_url = router_url  # the hub's chat calls the router here (fleet up: http://127.0.0.1:<port>)
        self.backends: dict[str, LocalBackend] = {}
        self.hub: HubBackend | None = None  # the hub's process, when [hub] runs here
        self.hub_upstream: Upstream | None = None  # hub.url, when the hub runs elsewhere
        self._retired: list[LocalBackend] = []  # removed by a reload, still serving in-flight requests
        self._reaper: asyncio.Task[None] | None = None
        self._warmer: asyncio.Task[None] | None = None
        self._clock = clock  # warm hours are wall-clock times; the tests pass their own
        self._warm_check_seconds = warm_check_seconds
        self._configure(settings)

    def _configure(self, settings: FleetSettings) -> None:
        """Match the backends to settings (at start and on reload); also sets settings and static."""
        for entry in settings.entries:
            if entry.url is not None:
                continue
            backend = self.backends.get(entry.name)
            if backend is None:
                self.backends[entry.name] = LocalBackend(entry, settings, self.tabby_bin)
            elif backend.entry != entry:
                # A changed entry: the running process keeps serving what it has in flight, then
                # stops; the next request starts one from the new definition.
                self._retired.append(backend)
                replacement = self.backends[entry.name] = LocalBackend(entry, settings, self.tabby_bin)
                replacement.previous = backend  # its process lifetime still counts for the entry
        names = {e.name for e in settings.entries if e.url is None}
        for name in list(self.backends):
            if name not in names:
                self._retired.append(self.backends.pop(name))
        self._configure_hub(settings)
        self.settings = settings
        self.static = StaticBackends(settings)
        windows = [entry.scaledown_window for entry in settings.entries] or [60]
        windows += [self.hub.entry.scaledown_window] if self.hub is not None else []
        # Check often enough that a 2 s idle window ends within about half a second of its time.
        self._reap_interval = max(0.25, min(1.0, min(windows) / 4))

    def _configure_hub(self, settings: FleetSettings) -> None:
        """The hub's process from ``[hub]``: made, kept, replaced (the old one retired once idle) or retired."""
        hub = settings.hub
        self.hub_upstream = Upstream(str(hub.url).rstrip("/")) if hub.enabled and hub.url is not None else None
        wanted = HubBackend(settings, self.tabby_bin, self.router_url) if hub.enabled and hub.url is None else None
        if self.hub is not None and (wanted is None or wanted.spec != self.hub.spec):
            self._retired.append(self.hub)  # stopped once idle, or when its replacement starts
            if wanted is not None:
                wanted.replaces = self.hub
            self.hub = None
        if self.hub is None:
            self.hub = wanted

    async def adopt(self, settings: FleetSettings) -> None:
        self._configure(settings)
        if self._warmer is not None:
            self.check_warm_hours()  # a new or changed entry in its window starts now, not at the next check

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap(), name="local-backends-reaper")
        self._warmer = asyncio.create_task(self._keep_warm(), name="local-backends-warm-hours")

    async def close(self) -> None:
        for task in (self._reaper, self._warmer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        everything = [*self.backends.values(), *self._retired, *([self.hub] if self.hub else [])]
        await asyncio.gather(*(backend.stop("router shutdown") for backend in everything))

    def _local(self, entry: str) -> LocalBackend | None:
        return self.hub if entry == HUB_BACKEND else self.backends.get(entry)

    def _elsewhere(self, entry: str) -> Upstream:
        """An entry's ``url``, or ``hub.url`` for the hub; FleetError when there is nothing to use."""
        if entry != HUB_BACKEND:
            return self.static.upstream(entry)
        if self.hub_upstream is None:
            raise FleetError(404, "no-hub", "the hub is off; set [hub] enabled = true (docs/DEPLOY.md, The hub)")
        return self.hub_upstream

    @contextlib.asynccontextmanager
    async def lease(self, entry: str) -> AsyncIterator[Upstream]:
        """Hold an entry's backend (or the hub's: ``HUB_BACKEND``) while the block runs; a WebSocket relay
        holds its lease for the socket's life, so an open socket keeps the hub from idling out."""
        backend = self._local(entry)
        if backend is None:
            yield self._elsewhere(entry)
            return
        backend.in_flight += 1
        try:
            url = await backend.ensure_running(self.settings.router.start_timeout)
            yield Upstream(url, first_byte_timeout=backend.entry.first_byte_timeout)
        finally:
            backend.in_flight -= 1
            backend.last_used = time.monotonic()

    def status(self) -> dict[str, dict[str, Any]]:
        status = {name: backend.status() for name, backend in self.backends.items()}
        return status | self.static.status()

    def hub_status(self) -> dict[str, Any] | None:
        """The hub for /fleet/health: None when ``[hub]`` is off; else its state, kind, port and snapshots."""
        if self.hub is not None:
            return self.hub.hub_status()
        if self.hub_upstream is not None:
            return {"state": "ready", "kind": "url", "url": self.hub_upstream.base_url}
        return None

    def backend_state(self, entry: str) -> str:
        backend = self._local(entry)
        return "ready" if backend is None else backend.state  # no local backend: a url entry (or hub.url)

    def warm(self, entry: str) -> str:
        backend = self._local(entry)
        return "ready" if backend is None else backend.warm()

    async def wait_ready(self, entry: str, seconds: float) -> bool:
        backend = self._local(entry)
        return True if backend is None else await backend.wait_ready(seconds)

    def check_warm_hours(self) -> None:
        """Mark the entries in a warm window now (no lead: a local start takes seconds) and start those
        not running; the others may stop when idle again."""
        now = self._clock()
        for backend in self.backends.values():
            warm = warm_containers_at(backend.entry, now, lead=timedelta(0)) > 0
            if warm != backend.kept_warm:
                log.info("entry %s: warm hours %s", backend.entry.name, "begin: keeping it running" if warm else "end")
            backend.kept_warm = warm
            if warm:
                backend.warm()  # starts it unless ready or starting (also after a crash)

    async def _keep_warm(self) -> None:
        while True:
            with _logged("the warm-hours check"):  # one bad round must not end the loop for good
                self.check_warm_hours()
            await asyncio.sleep(self._warm_check_seconds)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval)
            with _logged("stopping idle backends"):
                await self._reap_once()

    async def _reap_once(self) -> None:
        now = time.monotonic()
        for backend in [*self.backends.values(), *([self.hub] if self.hub else [])]:
            if backend.is_idle(now):
                await backend.stop(f"idle for {backend.entry.scaledown_window}s (scaledown_window)")
        for backend in list(self._retired):
            if backend.in_flight == 0:
                await backend.stop("settings reloaded")
                self._retired.remove(backend)


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    """Log an unexpected error of a background round (the next round runs as usual)."""
    try:
        yield
    except Exception:
        log.exception("local runtime: %s failed; trying again next round", what)
