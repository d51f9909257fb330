"""EntryGate: at most ``capacity`` requests in flight per entry, a bounded queue, then 503.

Capacity is the entry's ``max_containers x max_inputs``, the same on every runtime. A request over
capacity waits (first come, first served) up to ``router.queue_timeout`` seconds; when ``max_queue``
requests already wait, or the wait runs out, it gets 503 with ``Retry-After``.

A reload gives a surviving gate new :class:`GateLimits` in one assignment (:meth:`EntryGate.adopt`);
raised capacity admits queued requests at once, lowered capacity lets the surplus finish.

:meth:`EntryGate.acquire` returns the seconds a request waited in the queue (0.0 without a wait, and
then without reading the clock), so the router's overhead can leave queue waits out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass

from fleet.errors import FleetError

RETRY_AFTER_SECONDS = 1  # a slot frees as soon as one completion ends: completions take ~100 ms


class EntryBusy(FleetError):
    """503 entry-busy; ``waited``: the seconds the request spent in the queue first (0.0: refused at once)."""

    def __init__(self, message: str, waited: float) -> None:
        super().__init__(503, "entry-busy", message, retry_after=RETRY_AFTER_SECONDS)
        self.waited = waited


@dataclass(frozen=True, slots=True)
class GateLimits:
    capacity: int
    max_queue: int
    queue_timeout: float


class EntryGate:
    def __init__(self, entry: str, limits: GateLimits) -> None:
        self.entry = entry
        self.limits = limits
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def adopt(self, limits: GateLimits) -> None:
        """Adopt new limits; queued requests that now fit are admitted before this returns."""
        self.limits = limits
        while self._waiters and self.in_flight < limits.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    async def acquire(self) -> float:
        """Take a slot, waiting in the queue if need be; the seconds waited. 503 when there is none."""
        limits = self.limits
        if self.in_flight < limits.capacity and not self._waiters:
            self.in_flight += 1
            return 0.0
        if len(self._waiters) >= limits.max_queue or limits.queue_timeout <= 0:
            raise self._busy(f"{self.in_flight} requests are in flight and {self.queued} already wait", 0.0)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        queued_at = loop.time()
        try:
            async with asyncio.timeout(limits.queue_timeout):
                await waiter  # the slot is counted in in_flight by whoever admitted us
            return loop.time() - queued_at
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived as we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise self._busy(f"no slot freed within {limits.queue_timeout:g}s", loop.time() - queued_at) from None
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter if capacity allows, else to the pool of free slots."""
        if self.in_flight <= self.limits.capacity:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot passes on: in_flight stays as it is
                    return
        self.in_flight -= 1

    def _busy(self, detail: str, waited: float) -> EntryBusy:
        return EntryBusy(
            f"entry {self.entry!r} is at capacity ({self.limits.capacity} concurrent requests): {detail}; "
            f"retry shortly, or ask your fleet admin to raise max_containers or max_inputs",
            waited,
        )
