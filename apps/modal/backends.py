"""The router's backends on Modal: each entry is a deployed class, found by its web URL.

URLs are looked up once, at router start-up, with Modal's own API
(``modal.Cls.from_name(app, cls)().serve.get_web_url()``), never built from strings. Every request
carries the workspace proxy token (the classes require Modal proxy auth), waits up to the entry's
``first_byte_timeout`` for a cold container, and follows Modal's same-origin 303 if the call runs
past Modal's 150 s web limit.

Modal starts and stops containers itself, so an entry's state here is an estimate: the router's own
view (a request or a wake succeeded within the entry's ``scaledown_window``, or ``min_containers``
keeps one up) corrected by Modal's stats (``get_current_stats()``: runners and backlog), polled in the
background every :data:`STATS_INTERVAL` seconds (:meth:`_ModalEntry.state` has the rules).
:meth:`ModalBackends.warm` wakes a cold entry with one ``GET /v1/health`` to its class (at most one
at a time per entry), which Modal answers once a container has loaded its model.

The hub (``[hub]``, apps/modal/hub.py) is one more class, the pseudo-entry ``HUB_BACKEND`` ("@hub"):
its URL looked up at start-up, the same proxy-auth headers, state, wakes and stats, woken with a GET of
its web UI's index page (:data:`HUB_WAKE_PATH`). With ``hub.url`` it is that URL, as it is. ``status()``
lists the entries only; :meth:`ModalBackends.hub_status` is the hub's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fleet.errors import FleetError
from fleet.hub import HUB_BACKEND, HUB_CLASS, HubOptions
from fleet.settings import FleetSettings
from router.backends import StaticBackends, Upstream
from router.upstream import UpstreamClient, UpstreamError

log = logging.getLogger("tabby_fleet.modal")

PROXY_KEY_ENV, PROXY_SECRET_ENV = "TABBY_FLEET_PROXY_KEY", "TABBY_FLEET_PROXY_SECRET"
# Modal's stats are polled this often per entry (one call each): a container scaled down or died is
# noticed within this long. Modal bills nothing for the call; 15 s keeps it to 4 calls a minute per entry.
STATS_INTERVAL = 15.0
STATS_TIMEOUT = 10.0  # one stats call gives up after this long (Modal's client retries for 10 s itself)
# A sample older than this many intervals is not trusted (the calls have been failing): the router's own
# view decides.
STATS_STALE_INTERVALS = 4
# A failed wake is reported (health: 502 backend-failed) for this long; then the next health check or
# completion tries again. Each wake may start a GPU container, so failures do not loop faster than this.
WAKE_RETRY_SECONDS = 30.0
WAKE_PATH = "/v1/health"  # no model work, and Modal starts a container to answer it
WAKE_BODY_LIMIT = 64 * 1024  # a health answer is a few hundred bytes; reading stops after this much
# The hub's wake: its web UI's index page, which Tabby's webserver serves without a token (its /v1/health
# asks for a user token, W/service/mod.rs:200-232, so a wake there would be a 401).
HUB_WAKE_PATH = "/"


class ModalClass(Protocol):
    """What the router knows of a deployed class: an entry's (``Entry``) or the hub's (:class:`HubClass`)."""

    @property
    def name(self) -> str: ...  # the key the router leases it by

    @property
    def class_name(self) -> str: ...  # Modal's name for it

    @property
    def min_containers(self) -> int: ...

    @property
    def scaledown_window(self) -> int: ...

    @property
    def startup_timeout(self) -> int: ...

    @property
    def first_byte_timeout(self) -> float | None: ...


@dataclass(frozen=True)
class HubClass:
    """The hub's class as the router sees it: the pseudo-entry ``HUB_BACKEND``."""

    min_containers: int
    scaledown_window: int
    startup_timeout: int
    name: str = HUB_BACKEND
    class_name: str = HUB_CLASS
    first_byte_timeout: float | None = None  # a request waits as long as the hub's start may take

    @classmethod
    def of(cls, hub: HubOptions) -> HubClass:
        return cls(min_containers=hub.min_containers, scaledown_window=hub.scaledown_window,
                   startup_timeout=hub.startup_timeout)  # fmt: skip


UrlLookup = Callable[[ModalClass], str]


class StatsLike(Protocol):
    """What the router reads from Modal's ``FunctionCurrentStats``."""

    @property
    def num_total_runners(self) -> int: ...

    @property
    def backlog(self) -> int: ...


StatsCall = Callable[[ModalClass], Awaitable[StatsLike]]


def modal_url_lookup(app_name: str) -> UrlLookup:
    """Find an entry's class URL through Modal's API (needs Modal credentials: in a container, given)."""

    def lookup(entry: ModalClass) -> str:
        import modal

        url = modal.Cls.from_name(app_name, entry.class_name)().serve.get_web_url()
        if not url:
            raise LookupError(f"class {entry.class_name} of app {app_name!r} has no web URL")
        return str(url)

    return lookup


def modal_stats(app_name: str) -> StatsCall:
    """An entry's current stats through Modal's API (``Function.get_current_stats``)."""
    methods: dict[str, Any] = {}  # one handle per class: it is looked up (hydrated) on its first call only

    async def stats(entry: ModalClass) -> StatsLike:
        import modal

        method = methods.get(entry.class_name)
        if method is None:
            # A class's bound method is hydrated with the object_id of the class's service function
            # (modal/cls.py, _bind_instance_method), so these stats are the whole class's: all its
            # containers and inputs, whichever method or web endpoint they serve.
            method = methods[entry.class_name] = modal.Cls.from_name(app_name, entry.class_name)().serve
        result: StatsLike = await method.get_current_stats.aio()
        return result

    return stats


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
    """One entry's class (or the hub's): its URL, and what the router knows of its containers."""

    def __init__(self, entry: ModalClass, wake_retry: float, stale_after: float, wake_path: str = WAKE_PATH) -> None:
        self.entry = entry
        self.wake_path = wake_path  # what a wake GETs: Modal starts a container to answer it
        self.url: str | None = None
        self.error: str | None = None  # the class could not be found: failed for good
        self.in_flight = 0
        # Monotonic time a request or a wake last succeeded; never, at first. Not 0.0: the monotonic clock
        # counts from the machine's boot, so on a container started minutes ago 0.0 is "a success within
        # scaledown_window" and every entry would look ready.
        self.last_ok = -math.inf
        self.wake_retry = wake_retry
        self.stale_after = stale_after  # a sample older than this is not believed
        self.waking: asyncio.Task[None] | None = None
        self.wakes = 0
        self.wake_error: str | None = None
        self.wake_failed_at: float | None = None
        self.runners: int | None = None  # Modal's stats: None until sampled once
        self.backlog: int | None = None
        self.stats_at = -math.inf  # monotonic time of the latest sample: none yet
        self.gone = False  # a sample since the last success said no runners: that container is gone
        self.stats_failing = False  # a failing stats call is logged once, not every interval

    def state(self, now: float) -> str:
        """The estimate, from attributes only (the proxy asks on every health check and cold completion).

        - no URL: ``failed`` if the class was not found, else ``starting`` (the lookup runs);
        - a wake under way: ``starting``; a wake failed less than ``wake_retry`` s ago: ``failed``;
        - Modal's latest sample (if fresh) taken after the last success says no runners: ``cold`` (the
          container was scaled down or died), or ``starting`` if requests wait (in flight, backlog);
        - a success within ``scaledown_window``, or ``min_containers`` > 0: ``ready``, unless a sample
          since said no runners (the container that answered is gone);
        - runners but no success seen from them (a container may still load its model), or a request
          in flight: ``starting``; else ``cold``.
        """
        if self.url is None:
            return "failed" if self.error else "starting"
        if self.waking is not None:
            return "starting"
        if self.wake_failed_at is not None and now - self.wake_failed_at < self.wake_retry:
            return "failed"
        runners = self.runners
        fresh = runners is not None and now - self.stats_at < self.stale_after
        if fresh and runners == 0 and self.stats_at > self.last_ok:
            return "starting" if self.in_flight or self.backlog else "cold"
        if not self.gone and (self.entry.min_containers > 0 or now - self.last_ok < self.entry.scaledown_window):
            return "ready"
        return "starting" if self.in_flight or (fresh and runners) else "cold"

    def succeeded(self) -> None:
        self.last_ok = time.monotonic()
        self.wake_failed_at = None
        self.gone = False

    def status(self, now: float) -> dict[str, Any]:
        sampled = self.runners is not None
        state = self.state(now)
        if sampled and now - self.stats_at < self.stale_after:
            containers, source = self.runners, "modal"  # num_total_runners at the latest sample
        else:  # no fresh sample (the stats calls fail): the router's own view, so usage neither stops nor runs on
            containers = max(self.entry.min_containers, 1 if state in ("ready", "starting") else 0)
            source = "estimate"
        return {
            "state": state,
            "in_flight": self.in_flight,
            "last_error": self.error or self.wake_error,
            "url": self.url,
            "wakes": self.wakes,
            "containers": containers,  # what usage counts container time from
            "containers_source": source,
            "backlog": self.backlog,
            "stats_at": round(now - self.stats_at, 1) if sampled else None,  # the sample's age in seconds
        }


class ModalBackends:
    runtime = "modal"

    def __init__(
        self,
        settings: FleetSettings,
        lookup: UrlLookup | None = None,
        headers: tuple[tuple[bytes, bytes], ...] | None = None,
        stats: StatsCall | None = None,
        *,
        stats_interval: float = STATS_INTERVAL,
        wake_retry: float = WAKE_RETRY_SECONDS,
    ) -> None:
        self.settings = settings
        # Each router container enforces its share of every entry's capacity and team's limits: an
        # approximation (load is spread by Modal, not by entry), exact with one router container.
        self.router_share = settings.modal.router_max_containers
        self.static = StaticBackends(settings)
        self._lookup = lookup or modal_url_lookup(settings.modal.app_name)
        self._stats = stats or modal_stats(settings.modal.app_name)
        self._stats_interval = stats_interval
        self._headers = headers if headers is not None else proxy_auth_headers()
        stale_after = STATS_STALE_INTERVALS * stats_interval
        self.entries = {
            e.name: _ModalEntry(e, wake_retry, stale_after) for e in settings.entries if e.name not in self.static
        }
        hub = settings.hub
        # An existing Tabby webserver as the hub (hub.url): forwarded to as it is, nothing to look up or wake.
        self.hub_url = str(hub.url).rstrip("/") if hub.enabled and hub.url is not None else None
        if hub.enabled and hub.url is None:  # the fleet's own hub: one more class, under a key no entry can take
            self.entries[HUB_BACKEND] = _ModalEntry(HubClass.of(hub), wake_retry, stale_after, HUB_WAKE_PATH)
        router = settings.router
        # The wake requests' own client: the proxy's is not the runtime's to use.
        self._client = UpstreamClient(
            connect_timeout=router.connect_timeout, read_timeout=router.read_timeout,
            keepalive=router.upstream_keepalive, ca_bundle=router.upstream_ca_bundle,
        )  # fmt: skip
        self._poller: asyncio.Task[None] | None = None

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
        self._poller = asyncio.create_task(self._poll_stats(), name="modal-stats")

    async def close(self) -> None:
        tasks = [state.waking for state in self.entries.values() if state.waking is not None]
        if self._poller is not None:
            tasks.append(self._poller)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.close()

    async def adopt(self, settings: FleetSettings) -> None:
        raise FleetError(
            409,
            "reload-not-supported",
            "on Modal the fleet's settings change with a redeploy: run `fleet deploy`",
        )

    @contextlib.asynccontextmanager
    async def lease(self, entry: str) -> AsyncIterator[Upstream]:
        state = self.entries.get(entry)
        if state is None:
            yield Upstream(self.hub_url) if entry == HUB_BACKEND and self.hub_url else self.static.upstream(entry)
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
            state.succeeded()
        finally:
            state.in_flight -= 1

    def backend_state(self, entry: str) -> str:
        state = self.entries.get(entry)
        return "ready" if state is None else state.state(time.monotonic())  # no class: a url entry

    def warm(self, entry: str) -> str:
        state = self.entries.get(entry)
        if state is None:
            return "ready"
        current = state.state(time.monotonic())
        if current in ("ready", "failed") or state.url is None or state.waking is not None:
            return current  # a failed wake is tried again once its wake_retry has passed
        state.waking = asyncio.create_task(self._wake(state), name=f"wake-{entry}")
        return "starting"

    async def wait_ready(self, entry: str, seconds: float) -> bool:
        state = self.entries.get(entry)
        if state is None:
            return True
        waking = state.waking
        if waking is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await asyncio.shield(waking)  # giving up does not stop the wake
        return state.state(time.monotonic()) == "ready"

    async def _wake(self, state: _ModalEntry) -> None:
        """One ``GET /v1/health`` to the class, waiting up to its ``startup_timeout``: Modal answers it
        once a container has started and loaded its model. Never raises (the outcome is the state)."""
        entry = state.entry
        state.wakes += 1
        started = time.monotonic()
        log.info("entry %s: waking %s (GET %s)", entry.name, entry.class_name, state.wake_path)
        upstream = Upstream(
            str(state.url),
            headers=self._headers,
            first_byte_timeout=float(entry.startup_timeout),
            follow_redirects=True,
        )
        problem: str | None = None
        try:
            # One deadline for the whole wake, redirects and body included: each 303 hop would otherwise
            # get its own first-byte timeout, and a body that trickles for ever would keep it "starting".
            async with asyncio.timeout(entry.startup_timeout):
                response = await self._client.request(upstream, "GET", state.wake_path, [], b"")
                try:
                    read = 0
                    async for chunk, _ in response.chunks():
                        read += len(chunk)
                        if read > WAKE_BODY_LIMIT:
                            break  # the status says it is awake; the rest of a huge answer is not needed
                finally:
                    response.close()
            if response.status != 200:
                problem = f"answered {response.status}"
        except TimeoutError:
            problem = "had no whole answer within startup_timeout"
        except UpstreamError as exc:
            problem = f"failed: {exc}"
        except Exception as exc:  # anything else is a failed wake too, reported the same way
            problem = f"failed: {type(exc).__name__}: {exc}"
        finally:
            state.waking = None
        took = time.monotonic() - started
        if problem is None:
            state.succeeded()
            state.wake_error = None
            log.info("entry %s: awake after %.1fs", entry.name, took)
            return
        state.wake_failed_at = time.monotonic()
        state.wake_error = (
            f"waking class {entry.class_name} (GET {state.wake_path}, startup_timeout={entry.startup_timeout}s) "
            f"{problem} after {took:.1f}s; see `modal app logs {self.settings.modal.app_name}`; "
            f"tried again in {state.wake_retry:g}s"
        )
        log.error("entry %s: %s", entry.name, state.wake_error)

    async def _poll_stats(self) -> None:
        while True:
            await asyncio.gather(*(self._sample(s) for s in self.entries.values() if s.url is not None))
            await asyncio.sleep(self._stats_interval)

    async def _sample(self, state: _ModalEntry) -> None:
        asked = time.monotonic()  # the sample describes Modal at this time or later
        try:
            async with asyncio.timeout(STATS_TIMEOUT):
                stats = await self._stats(state.entry)
            runners, backlog = int(stats.num_total_runners), int(stats.backlog)
            if runners < 0 or backlog < 0:  # counts cannot be negative: not a sample to estimate (or bill) from
                raise ValueError(f"negative counts (runners {runners}, backlog {backlog})")
        except Exception as exc:  # the estimate falls back to the router's own view; the next poll tries again
            if not state.stats_failing:
                log.warning("entry %s: Modal's stats unavailable (%s: %s)", state.entry.name, type(exc).__name__, exc)
            state.stats_failing = True
            return
        if state.stats_failing:
            log.info("entry %s: Modal's stats available again", state.entry.name)
        state.stats_failing = False
        state.runners, state.backlog, state.stats_at = runners, backlog, asked
        if runners == 0 and asked > state.last_ok:
            state.gone = True

    def status(self) -> dict[str, dict[str, Any]]:
        """The entries' states (the hub's is :meth:`hub_status`)."""
        now = time.monotonic()
        entries = {name: state.status(now) for name, state in self.entries.items() if name != HUB_BACKEND}
        return entries | self.static.status()

    def hub_status(self) -> dict[str, Any] | None:
        """The hub's state, as an entry's in :meth:`status`; None when [hub] is off or is someone else's
        (``hub.url``: the router cannot tell its state, as StaticBackends says)."""
        state = self.entries.get(HUB_BACKEND)
        return None if state is None else state.status(time.monotonic())
