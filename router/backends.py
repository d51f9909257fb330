"""The router's view of where entries run: "the URL of entry X, starting it if needed".

The router holds one :class:`Backends` and never knows more about the runtime than this interface.
Implementations: :class:`apps.local.backends.LocalBackends` (processes on this machine) and
:class:`StaticBackends` (entries with a fixed ``url``); the Modal runtime adds its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleet.errors import FleetError
from fleet.hub import HUB_BACKEND
from fleet.settings import FleetSettings


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where to send one request, and how.

    ``headers``: lower-case name/value byte pairs added to every request (e.g. Modal proxy auth).
    ``first_byte_timeout``: how long to wait for the answer to start (None: router.read_timeout).
    ``follow_redirects``: follow same-origin 303s (Modal's answer to requests over 150 s).
    """

    base_url: str
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())
    first_byte_timeout: float | None = None
    follow_redirects: bool = False


class Backends(Protocol):
    runtime: str  # "local", "modal", ...
    router_share: int  # router processes that share each entry's capacity (1 but on Modal)

    async def start(self) -> None:
        """Called once the event loop runs (router start-up)."""

    async def close(self) -> None:
        """Stop everything this runtime started. Called at router shutdown."""

    async def adopt(self, settings: FleetSettings) -> None:
        """Adopt reloaded settings: new entries become available, removed ones stop once idle.

        Raises FleetError if this runtime cannot change without a redeploy.
        """

    def lease(self, entry: str) -> AbstractAsyncContextManager[Upstream]:
        """Hold entry's backend for one request: start it if needed, keep it up until exit.

        Raises FleetError (503 with Retry-After while starting too long, 502 if it failed to start).
        """
        ...

    def status(self) -> dict[str, dict[str, Any]]:
        """Per entry: {"state": "cold"|"starting"|"ready"|"failed", ...} for /fleet/health."""
        ...

    def backend_state(self, entry: str) -> str:
        """Entry's state now ("cold", "starting", "ready", "failed"); cheap (a dict and attribute read).

        "ready" means a request would not wait for a start. A runtime that cannot tell says "ready".
        """
        ...

    def warm(self, entry: str) -> str:
        """Start entry's backend in the background if it is not ready (at most one start at a time per
        entry); never waits. Returns its state afterwards ("starting" once a start is under way)."""
        ...

    async def wait_ready(self, entry: str, seconds: float) -> bool:
        """Wait up to ``seconds`` for a start under way; True when entry is ready. Never raises."""
        ...

    def hub_status(self) -> dict[str, Any] | None:
        """The hub's ``{"state": ..., ...}`` for /fleet/health (None: this runtime runs no hub)."""
        ...


class StaticBackends:
    """Entries that name a running Tabby server with ``url``: nothing to start or stop.

    Also the hub (``HUB_BACKEND``) when ``[hub]`` is on and names an existing Tabby webserver with ``url``; it is
    leased like an entry but not listed by :meth:`status`, which lists entries only.
    """

    runtime = "static"
    router_share = 1

    def __init__(self, settings: FleetSettings) -> None:
        self._upstreams: dict[str, Upstream] = {}
        self._hub: Upstream | None = None
        self._configure(settings)

    def _configure(self, settings: FleetSettings) -> None:
        self._upstreams = {
            entry.name: Upstream(str(entry.url).rstrip("/"), first_byte_timeout=entry.first_byte_timeout)
            for entry in settings.entries
            if entry.url
        }
        hub = settings.hub
        self._hub = Upstream(str(hub.url).rstrip("/")) if hub.enabled and hub.url else None

    def __contains__(self, entry: str) -> bool:
        return entry in self._upstreams or (entry == HUB_BACKEND and self._hub is not None)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def adopt(self, settings: FleetSettings) -> None:
        self._configure(settings)

    def upstream(self, entry: str) -> Upstream:
        upstream = self._hub if entry == HUB_BACKEND else self._upstreams.get(entry)
        if upstream is None:
            if entry == HUB_BACKEND:
                no_hub = "the hub has no url and no runtime to start it; set [hub] url to your Tabby webserver"
                raise FleetError(502, "no-hub", no_hub)
            raise FleetError(502, "no-backend", f"entry {entry!r} has no url and no runtime to start it")
        return upstream

    @asynccontextmanager
    async def lease(self, entry: str) -> AsyncIterator[Upstream]:
        yield self.upstream(entry)

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: {"state": "ready", "external": True} for name in self._upstreams}

    def backend_state(self, entry: str) -> str:
        return "ready"  # running elsewhere: nothing to start

    def warm(self, entry: str) -> str:
        return "ready"

    async def wait_ready(self, entry: str, seconds: float) -> bool:
        return True

    def hub_status(self) -> dict[str, Any] | None:
        return None  # a hub at [hub] url is someone else's: the router cannot tell its state
