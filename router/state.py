"""StateSync: the router's own state between memory and the store, every few seconds, both ways.

Components that keep state which must survive a restart (usage, tokens made or revoked on a running
fleet) register here: a *producer* hands over the records that changed since it was last asked (each
record a JSON object whose ``"t"`` names its kind), a *consumer* of a kind takes the records of that kind
that were read back: at start everything in the store (all routers, all restarts), then every
``FLUSH_SECONDS`` what the other routers appended. So N routers sharing a store each show the whole fleet.

When the store cannot be written (missing, read-only, full), records wait in memory, in order, and go out
with the next write that works; the router goes on serving and says so (``health()``, its log). A
record that must be on disk before the router answers (a revoked token) goes through :meth:`append_now`.

Every ``MAINTAIN_SECONDS`` (and at start) closed days are compacted and days past ``retention_days`` lose the
kinds that expire (router/store.py); a kind registers how it folds with :meth:`StateSync.add_compaction`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from router.store import Fold, SegmentStore, StoreError

log = logging.getLogger("router.state")

# Seconds between two flushes (and two reads of what other routers wrote): what a kill -9 may lose at most,
# and how long another router takes to see a revocation (the issue asks for 10 s at most).
FLUSH_SECONDS = 2.0
# Records kept in memory while the store cannot be written; past this the oldest are dropped (and counted),
# so a store that stays broken for days costs bounded memory.
MAX_PENDING = 1_000_000
# Seconds between two compaction and retention passes: a day closes once a day, so hourly is plenty, and a
# pass over 90 day folders that have nothing to do costs a directory listing and a stat per folder.
MAINTAIN_SECONDS = 3600.0

Record = dict[str, Any]
Producer = Callable[[], list[Record]]
Consumer = Callable[[list[Record]], None]


class StateSync:
    def __init__(
        self, store: SegmentStore | None, *, interval: float = FLUSH_SECONDS, retention_days: int = 90
    ) -> None:
        """``store`` None: nothing is kept beyond the process (a router built without one, as in some tests)."""
        self.store = store
        self.interval = interval
        self.retention_days = retention_days  # [store] retention_days; a reload sets it
        self._folds: dict[str, Fold] = {}
        self._expiring: set[str] = set()
        self._maintained = 0.0  # loop time of the last compaction pass
        self._producers: list[Producer] = []
        self._consumers: dict[str, Consumer] = {}
        self._pending: list[Record] = []
        self._writing = 0  # records of the batch being written
        self.dropped = 0  # records given up while the store could not be written
        self._failing = False
        self._lock = asyncio.Lock()  # one write at a time: a segment has one writer, and so does its end

    def add_producer(self, produce: Producer) -> None:
        self._producers.append(produce)

    def add_consumer(self, kind: str, consume: Consumer) -> None:
        self._consumers[kind] = consume

    def add_compaction(self, kind: str, fold: Fold, *, expires: bool) -> None:
        """How a closed day's records of ``kind`` are compacted (``fold``: deterministic, the same records in
        give the same records out), and whether they are dropped past retention (usage: yes; tokens: no)."""
        self._folds[kind] = fold
        if expires:
            self._expiring.add(kind)

    async def load(self) -> None:
        """At start: everything the store holds, to each kind's consumer. A store that cannot be read is
        reported and the router starts without its history (it is read again at the next round)."""
        await self.maintain()
        await self._read(include_own=True)

    async def run(self) -> None:
        """Flush and read back every ``interval`` seconds, compact every MAINTAIN_SECONDS, until cancelled."""
        loop = asyncio.get_running_loop()
        self._maintained = loop.time()
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()
            await self._read()
            if loop.time() - self._maintained >= MAINTAIN_SECONDS:
                self._maintained = loop.time()
                await self.maintain()

    async def maintain(self) -> None:
        """Compact the closed days and apply retention (router/store.py); a failure is reported, not raised."""
        store = self.store
        if store is None or not self._folds:
            return
        async with self._lock:
            try:
                await asyncio.to_thread(
                    store.maintain, dict(self._folds), frozenset(self._expiring), self.retention_days
                )
            except StoreError as exc:
                self._failed(exc)

    async def flush(self) -> None:
        """What the producers changed, and what was waiting, to the store; kept for the next round on failure."""
        for produce in self._producers:
            self._pending += produce()
        if self.store is None:
            self._pending.clear()  # nowhere to keep them
            return
        if not self._pending:
            return
        async with self._lock:
            batch, self._pending = self._pending, []
            self._writing = len(batch)  # still pending, for health(), until written
            try:
                await asyncio.to_thread(self.store.append, batch)
            except StoreError as exc:
                self._writing = 0
                self._pending = batch + self._pending
                overflow = len(self._pending) - MAX_PENDING
                if overflow > 0:
                    del self._pending[:overflow]
                    self.dropped += overflow
                self._failed(exc)
                return
            self._writing = 0
        self._recovered()

    async def append_now(self, records: list[Record]) -> None:
        """Write ``records`` before returning (raises StoreError): for a change the router must not forget
        once it has said it is done, such as a revoked token."""
        if self.store is None:
            return
        async with self._lock:
            try:
                await asyncio.to_thread(self.store.append, records)
            except StoreError as exc:
                self._failed(exc)
                raise
        self._recovered()

    async def close(self) -> None:
        """The last flush, at a clean stop (SIGTERM, Modal's exit): nothing counted is lost."""
        await self.flush()

    async def _read(self, *, include_own: bool = False) -> None:
        if self.store is None:
            return
        try:
            records = await asyncio.to_thread(self.store.read_new, include_own=include_own)
        except StoreError as exc:
            self._failed(exc)
            return
        by_kind: dict[str, list[Record]] = {}
        for record in records:
            by_kind.setdefault(str(record.get("t")), []).append(record)
        for kind, consume in self._consumers.items():
            if kind in by_kind:
                consume(by_kind[kind])

    def _failed(self, exc: StoreError) -> None:
        if not self._failing:
            log.error("state store failing, counting in memory until it works again: %s", exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.warning("state store works again; %d records were dropped while it failed", self.dropped)
        self._failing = False

    async def health(self) -> dict[str, Any]:
        """/fleet/health's ``store``: where, whether it works, its size, what waits in memory."""
        if self.store is None:
            return {"ok": True, "kept": False, "note": "no store: usage and tokens live in this process only"}
        health = await asyncio.to_thread(self.store.health)  # a stat per file: off the event loop
        return health | {
            "kept": True, "retention_days": self.retention_days, "pending_records": len(self._pending) + self._writing,
            "dropped": self.dropped,
        }  # fmt: skip
