"""FleetRuntime: the one object a running router is, and the one place a reload happens.

It holds what the settings made (the proxy and its current :class:`ProxyState`), the backends, usage, the
observer, when the router started and where a reload reads settings from. The router's own endpoints
(router/endpoints.py) read it from ``app.state.fleet``; its :meth:`FleetRuntime.lifespan` starts and stops
the router. A reload is "adopt these settings": the new state is built aside, the backends adopt the
settings (or refuse, and nothing has changed), the proxy adopts the state in one step (its gates, limiters
and client adopt their part), then usage adopts the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI

from fleet.errors import FleetError
from fleet.hub import HUB_BACKEND
from fleet.loading import SettingsError, resolve_config_path
from fleet.settings import FleetSettings
from router.backends import Backends
from router.changes import describe_changes
from router.live_tokens import KIND as TOKEN_RECORDS
from router.live_tokens import LiveTokens
from router.observe import Observer
from router.proxy import Proxy, ProxyState, RequestAborted
from router.state import StateSync
from router.store import SegmentStore
from router.usage import Usage
from router.usage_records import KINDS, USAGE, USAGE_ENTRY, USAGE_SHARED, fold_hourly
from router.usage_report import check_team, snapshot

log = logging.getLogger("router")

SettingsLoader = Callable[[], FleetSettings]


class FleetRuntime:
    """The router's state: proxy (and through it the current ProxyState), backends, usage and observer."""

    def __init__(
        self,
        settings: FleetSettings,
        backends: Backends,
        reload_settings: SettingsLoader | None = None,
        settings_source: str | None = None,
        store: SegmentStore | None = None,
    ) -> None:
        self.backends = backends
        self.state_sync = StateSync(store, retention_days=settings.store.retention_days)  # router/state.py
        self.live_tokens = LiveTokens()  # tokens issued and revoked while running (router/live_tokens.py)
        self.state_sync.add_consumer(TOKEN_RECORDS, self.tokens_changed)
        self.state_sync.add_producer(self.live_tokens.produce)
        self.usage = Usage(settings)
        # Usage's counts since the last flush go to the store; what the others wrote comes back into its history.
        self.state_sync.add_producer(self.usage.produce)
        for kind in KINDS:
            self.state_sync.add_consumer(kind, self.usage.consume)
        self.state_sync.add_compaction(USAGE, fold_hourly, expires=True)
        self.state_sync.add_compaction(USAGE_ENTRY, fold_hourly, expires=True)
        self.state_sync.add_compaction(USAGE_SHARED, fold_hourly, expires=True)
        self.observer = Observer(self.usage)
        self.proxy = Proxy(settings, backends, self.observer)
        self.started = time.monotonic()
        self.reload_settings = reload_settings
        self.settings_source = settings_source
        self._reload_lock = asyncio.Lock()
        self.live_tokens.install(self.proxy.state.table)
        self.observer.watch_state(self.entry_status)
        self.observer.watch_usage(self.usage, self.backend_status)

    @property
    def state(self) -> ProxyState:
        """The current version of everything derived from the settings."""
        return self.proxy.state

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def entry_status(self) -> dict[str, dict[str, Any]]:
        """Per entry of the current settings: its backend's status (cold if none) and its gate's load."""
        runtime = self.backends.status()
        status: dict[str, dict[str, Any]] = {}
        for entry in self.proxy.state.settings.entries:
            gate = self.proxy.gates[entry.name]
            status[entry.name] = {"state": "cold", **runtime.get(entry.name, {})} | {
                "in_flight": gate.in_flight, "queued": gate.queued,
            }  # fmt: skip
        return status

    def backend_status(self) -> dict[str, dict[str, Any]]:
        """``Backends.status()`` and, when this runtime runs the hub, its status under ``HUB_BACKEND``: what usage
        samples container time from (the hub's cost is counted like an entry's)."""
        status = self.backends.status()
        hub = self.backends.hub_status()
        return status if hub is None else {**status, HUB_BACKEND: hub}

    def usage_snapshot(self, since: datetime, by: str = "team", team: str | None = None) -> dict[str, Any]:
        """What each team, entry (and with ``by="token"`` developer) used since ``since``: /fleet/usage's JSON
        (router/usage_report.py); ``team`` (checked: 400 unknown-team) keeps one team's rows."""
        status = self.entry_status()
        hub = self.backends.hub_status()
        if hub is not None:
            status[HUB_BACKEND] = hub
        return snapshot(self.usage, since, status, by=by, team=check_team(self.usage, team))

    def tokens_changed(self, records: list[dict[str, Any]]) -> None:
        """Token records, read back from the store or just written here: into the routing table at once."""
        self.live_tokens.apply(records)
        self.live_tokens.install(self.proxy.state.table)

    async def reload(self) -> tuple[FleetSettings, list[str]]:
        """Re-read the settings and adopt them; the settings now in use and what changed (router/changes.py).
        409 without a settings source, 400 (old settings kept) when they do not load, the backends' refusal
        (e.g. 409 on Modal) as is."""
        if self.reload_settings is None:
            raise FleetError(409, "reload-unavailable", "this router was started without a settings source to reload")
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(self.reload_settings)
            except SettingsError as exc:
                problems = "; ".join(exc.problems)
                log.warning("settings reload from %s refused, old settings kept: %s", exc.source, problems)
                raise FleetError(400, "invalid-settings", str(exc), exc.problems) from None
            old = self.proxy.state.settings
            await self.adopt(new)
        source = self.settings_source or str(resolve_config_path(None))
        changes = describe_changes(old, new)
        log.info(
            "settings reloaded from %s: %d entries, %d teams; %s", source, len(new.entries), len(new.teams),
            "; ".join(changes) if changes else "nothing changed",
        )  # fmt: skip
        return new, changes

    async def adopt(self, settings: FleetSettings) -> None:
        """Put ``settings`` in place. The backends may refuse (FleetError) before anything changes; requests
        in flight finish on the state they started with."""
        current = self.proxy.state
        state = ProxyState(  # built aside: nothing in use changes yet
            settings, current, self.backends.router_share, loopback_admin=current.loopback_admin
        )
        await self.backends.adopt(settings)  # may refuse (e.g. on Modal: redeploy instead)
        self.live_tokens.install(state.table)  # after the await: what arrived meanwhile is in it too
        self.proxy.adopt(state)
        self.usage.adopt(settings)
        self.state_sync.retention_days = settings.store.retention_days

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """The router's life: backends started, SIGHUP reloads, the usage sampler; then everything closed."""
        await self.backends.start()
        # A broken-off answer is logged by the proxy (with its request id); the ASGI server's own
        # traceback for the exception that aborts the client's connection would only be noise.
        logging.getLogger("uvicorn.error").addFilter(_not_request_aborted)
        loop = asyncio.get_running_loop()
        if self.reload_settings is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not in the main thread
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_logged()))
        # Everything loaded so far (FastAPI, pydantic, settings) lives as long as the router. Freezing
        # it keeps the garbage collector from rescanning it every few thousand requests.
        gc.freeze()
        await self.state_sync.load()  # what earlier runs and the other routers kept
        sampler = asyncio.create_task(self.usage.run_sampler(self.backend_status))  # container-seconds, cold starts
        syncing = asyncio.create_task(self.state_sync.run())
        try:
            yield
        finally:
            sampler.cancel()
            syncing.cancel()
            await self.state_sync.close()  # the last flush: a clean stop loses nothing
            await self.backends.close()
            await self.proxy.close()

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except FleetError as error:
            log.error("SIGHUP reload refused, old settings kept: %s", error.message)


def _not_request_aborted(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], RequestAborted))
