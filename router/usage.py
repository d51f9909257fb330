"""What each developer, team and entry used, and what it cost: time buckets behind ``GET /fleet/usage``.

Counted by this router, per ``BUCKET_SECONDS`` bucket:

- per (team, token label, entry), from each finished request (:meth:`Usage.observe`, called by
  ``Observer.finish``, so it is cheap: one tuple key, a dict lookup and a few additions): requests, 2xx
  completions and chats, the IDE's view/select/dismiss events, a latency histogram of completions, cold
  waits, fallbacks, refusals by code and busy (upstream) seconds. The label is the token's
  (``fleet.tokens``), "-" without one (an open fleet, a team header);
- per entry, from a sampler reading ``Backends.status()`` every ``SAMPLE_SECONDS``
  (:meth:`Usage.sample`): container-seconds and cold starts, and their GPU-seconds and cost at the
  settings of the time (a reload that changes or removes an entry does not rewrite what it cost).
  A router's own processes (local) are counted as deltas and summed over routers, like requests; the
  containers every router sees (Modal's, whose status says ``containers_source``) as this router's total
  of the minute, of which the history keeps the largest any router wrote (usage_records.py), so N routers
  sampling the same containers count them once.

What this router counted since the last flush lives in ``_current``; everything else (flushed, closed,
read back from the store: earlier runs and the other routers) in the *history*: minute buckets for the
last ``COMPACT_AFTER``, hour buckets before, ``retention_days`` in all. :meth:`Usage.produce` (a
``StateSync`` producer, every 2 s) hands the counts since the last flush to the store as records
(router/usage_records.py) and moves them into the history: no copy and no diff per request, and a
restart or a crash loses at most one flush interval. :meth:`Usage.consume` adds what was read back.
The JSON of /fleet/usage is router/usage_report.py's. Lifetime totals (every count this process has
seen, never decreasing) feed the Prometheus series.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from fleet.gpus import GpuSpec
from fleet.hub import HUB_BACKEND
from fleet.routing import CHAT, HEALTH, SERVER_SETTING
from fleet.settings import FleetSettings
from router.usage_records import (
    USAGE_ENTRY,
    USAGE_SHARED,
    Cell,
    EntryCell,
    Key,
    cell_from,
    cell_record,
    entry_cell_from,
    entry_record,
)

log = logging.getLogger("tabby_fleet.usage")

# One bucket per minute: /fleet/usage?since=15m is exact to the minute for the last COMPACT_AFTER; older
# minutes are folded into hours (60x fewer buckets), so 90 days of a busy fleet stay a few MB in memory.
BUCKET_SECONDS = 60
HOUR_MINUTES = 60
# Two days of minutes: "since=24h" and "today" are exact to the minute; older windows to the hour. The store
# compacts a day folder at the same age (router/store.py), so memory and disk fold the same buckets.
COMPACT_AFTER = 2 * 24 * 3600
# The default of [store] retention_days (fleet/settings.py), in seconds.
RETENTION = 90 * 24 * 3600
# How often the sampler reads each entry's containers: container-seconds integrate a count over time
# (Modal), so a container's first and last 10 s may be misplaced; a local process reports exact seconds.
SAMPLE_SECONDS = 10.0
# Closed minutes kept for the producer when nobody calls it (a Usage without StateSync, in unit tests): a day.
FLUSH_BACKLOG = 24 * 60
RECENT_REFUSALS = 20  # the snapshot's "refusals" list, newest first
# A status whose containers_source is one of these counts containers every router sees (Modal's stats, or the
# router's estimate of them): kept as the largest view per minute, not summed over routers.
SHARED_SOURCES = frozenset({"modal", "estimate"})

# Route kinds beyond fleet.routing's: the paths whose answers Usage counts (RequestRecord.kind).
COMPLETION = "completion"
EVENTS = "events"
WHOAMI = "whoami"  # /fleet/whoami: its route label in metrics and logs, and its kind here
HUB = "hub"  # a request or socket relayed to the hub (router/hub_relay.py, router/hub_socket.py), counted per team
USAGE_PATHS = {"/v1/completions": COMPLETION, "/v1/events": EVENTS}  # by the upstream path
NOT_REQUESTS = frozenset({HEALTH, SERVER_SETTING, WHOAMI})  # no model work: not counted as requests
EVENT_TYPES = ("view", "select", "dismiss")  # Tabby's event types (protocol reference 1.4)
# Tabby's events are a few hundred bytes; the router reads the type of bodies up to this size only (json.loads
# of 60 MiB of small objects takes seconds and GBs on the event loop; tests/test_usage_attacks.py).
EVENT_BODY_MAX = 16 * 1024
# The acceptance rate is selects / views, as Tabby's own usage report computes it: github.com/TabbyML/tabby,
# ee/tabby-ui/app/(dashboard)/reports/components/completion-daily-activity.tsx, StatsSummary:
# acceptRate = totalAcceptances / totalViews (the sums of the daily stats' selects and views).

# Completion latency histogram: bucket i holds (10**((i-1)/STEPS), 10**(i/STEPS)] milliseconds, so a
# percentile read as its bucket's geometric middle is within half a step (2.4 %) of the true value.
LATENCY_STEPS = 48  # per decade: 10**(1/48) = 1.049, about 5 % per bucket
_LOG_TO_INDEX = LATENCY_STEPS / math.log(10)
LATENCY_MIN_MS = 0.01  # faster is counted as 0.01 ms (bucket -96)


def latency_index(seconds: float) -> int:
    """The histogram bucket of a latency (its upper bound is ``10**(index/LATENCY_STEPS)`` ms)."""
    return math.ceil(math.log(max(seconds * 1000.0, LATENCY_MIN_MS)) * _LOG_TO_INDEX)


def latency_bound_ms(index: int) -> float:
    return float(10.0 ** (index / LATENCY_STEPS))


class Record(Protocol):
    """What :meth:`Usage.observe` reads from a finished request (router.observe.RequestRecord)."""

    team: str
    label: str
    entry: str
    kind: str | None
    event: str | None
    status: int
    code: str | None
    upstream_seconds: float
    start_seconds: float
    fallback_from: str | None


class Bucket:
    """The counts of one minute (``span`` 1) or one hour (``span`` 60) from ``index`` (in minutes)."""

    __slots__ = ("cells", "entries", "index", "shared", "span")

    def __init__(self, index: int, span: int = 1) -> None:
        self.index = index  # minutes since the epoch
        self.span = span  # minutes
        self.cells: dict[Key, Cell] = {}
        self.entries: dict[str, EntryCell] = {}  # summed: deltas, and shared minutes once settled
        # (minute, entry) -> the largest total any router wrote of the containers every router sees; an hour
        # holds them only until compact() settles them into its entries (records of old minutes read at start).
        self.shared: dict[tuple[int, str], EntryCell] = {}

    @property
    def start(self) -> int:
        return self.index * BUCKET_SECONDS

    @property
    def end(self) -> int:
        return (self.index + self.span) * BUCKET_SECONDS

    def entry(self, name: str) -> EntryCell:
        cell = self.entries.get(name)
        if cell is None:
            cell = self.entries[name] = EntryCell()
        return cell

    def add(self, other: Bucket) -> None:
        for key, cell in other.cells.items():
            mine = self.cells.get(key)
            if mine is None:
                self.cells[key] = _copy(cell)
            else:
                mine.add(cell)
        for name, entry_cell in other.entries.items():
            self.entry(name).add(entry_cell)
        for minute_key, total in other.shared.items():
            largest = self.shared.get(minute_key)
            if largest is None:
                self.shared[minute_key] = total
            else:
                largest.raise_to(total)

    def settle(self) -> None:
        """The shared minutes' largest totals into the summed entries (no record of them is expected any more)."""
        for (_, name), total in sorted(self.shared.items()):
            self.entry(name).add(total)
        self.shared.clear()

    def entry_cells(self) -> list[tuple[str, EntryCell]]:
        """Every entry's counts in this bucket: summed ones, then each shared minute's largest total."""
        return [*self.entries.items(), *((name, total) for (_, name), total in self.shared.items())]


def _copy(cell: Cell) -> Cell:
    copy = Cell()
    copy.add(cell)
    return copy


class Pricing(NamedTuple):
    """How an entry is priced: its first-choice GPU type and count, and an hour of one container."""

    gpu: str  # as configured, e.g. "A100-80GB" or "H100:2"
    gpu_type: str  # without the count, upper case: Prometheus' gpu label
    gpu_count: int
    per_gpu_hour: float | None
    hourly: float | None  # settings.prices.entry_hourly(entry.gpus)


class Refusal(NamedTuple):
    at: float
    team: str
    label: str
    entry: str
    status: int
    code: str


class _Seen:
    """What the last sample read of one entry."""

    __slots__ = ("container_seconds", "containers", "starts")

    def __init__(self) -> None:
        self.container_seconds: float | None = None
        self.containers: int | None = None  # None: not seen yet (containers already up then are no start)
        self.starts: int | None = None


class Usage:
    """Usage per team, token label and entry in time buckets; ``clock`` is unix seconds (injected by tests)."""

    def __init__(self, settings: FleetSettings | None = None, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.time
        now = self._clock()
        self.started = now
        self.retention = RETENTION
        self._current = Bucket(int(now // BUCKET_SECONDS))  # this router's counts since the last flush
        self._minutes: dict[int, Bucket] = {}  # history: minute index -> bucket, the last COMPACT_AFTER
        self._hours: dict[int, Bucket] = {}  # history: hour index -> bucket, before that
        self._unflushed: list[Bucket] = []  # closed buckets not yet handed to the store (nor in the history)
        self.oldest: float | None = None  # the start of the oldest bucket held (read back or counted)
        self._lifetime_cells: dict[tuple[str, str], Cell] = {}  # (team, entry) -> every count in the history
        self._lifetime_entries: dict[str, EntryCell] = {}
        self._compacted_to = 0  # minute buckets before this minute index have been folded into hours
        self.recent: deque[Refusal] = deque(maxlen=RECENT_REFUSALS)
        self._seen: dict[str, _Seen] = {}
        self._mine: dict[tuple[int, str], EntryCell] = {}  # (minute, entry) -> this router's shared total
        self._dirty: set[tuple[int, str]] = set()  # of those, the ones changed since the last flush
        self.gpu_totals: dict[tuple[str, str], float] = {}  # (entry, GPU type) -> lifetime GPU-seconds
        self._last_sample = now
        self.pricing: dict[str, Pricing] = {}
        self.teams: tuple[str, ...] = ()
        self.entries: tuple[str, ...] = ()
        self.fallbacks: dict[str, str] = {}
        self.prices: dict[str, Any] = {}
        if settings is not None:
            self.adopt(settings)

    def adopt(self, settings: FleetSettings) -> None:
        """Take (reloaded) settings: the entries and teams to report, the prices, the retention."""
        prices = settings.prices
        self.prices = {"currency": prices.currency, "date": prices.date, "source": prices.source}
        self.retention = settings.store.retention_days * 86400
        self.teams = tuple(team.name for team in settings.teams)
        self.entries = tuple(entry.name for entry in settings.entries)
        self.fallbacks = {entry.name: entry.fallback for entry in settings.entries if entry.fallback}
        self.pricing = {}
        for entry in settings.entries:
            if entry.url is not None:
                continue  # runs elsewhere: no containers of ours to count or price
            spec = entry.gpu_spec
            self.pricing[entry.name] = Pricing(
                entry.gpus[0],
                spec.kind,
                spec.count,
                prices.per_gpu_hour(spec.kind),
                prices.entry_hourly(entry.gpus),
            )
        hub = settings.hub
        if hub.enabled and hub.url is None:  # the hub's container, priced as an entry (a CPU hub: not priced)
            if hub.gpu:
                spec = GpuSpec.parse(hub.gpu)
                hourly = prices.entry_hourly((hub.gpu,))
                self.pricing[HUB_BACKEND] = Pricing(
                    hub.gpu, spec.kind, spec.count, prices.per_gpu_hour(spec.kind), hourly
                )
            else:
                self.pricing[HUB_BACKEND] = Pricing("CPU", "CPU", 0, None, None)

    # --- the hot path -----------------------------------------------------------------------------

    def observe(self, record: Record, total: float) -> None:
        """Count one finished request (``total``: its whole time in seconds)."""
        now = self._clock()
        bucket = self._current
        if now >= bucket.end:
            bucket = self._roll(now)
        key = (record.team, record.label, record.entry)
        cell = bucket.cells.get(key)
        if cell is None:
            cell = bucket.cells[key] = Cell()
        kind = record.kind
        if kind not in NOT_REQUESTS:
            cell.requests += 1
        if 200 <= record.status < 300:
            if kind == COMPLETION:
                cell.completions += 1
                cell.latency_seconds += total
                index = latency_index(total)
                cell.latency[index] = cell.latency.get(index, 0) + 1
            elif kind == CHAT:
                cell.chats += 1
            elif record.event is not None:
                event = record.event
                if event == "view":
                    cell.views += 1
                elif event == "select":
                    cell.selects += 1
                elif event == "dismiss":
                    cell.dismisses += 1
        if record.upstream_seconds:
            cell.busy_seconds += record.upstream_seconds
        if record.code is not None:
            cell.refusals[record.code] = cell.refusals.get(record.code, 0) + 1
            self.recent.append(Refusal(now, record.team, record.label, record.entry, record.status, record.code))
        if record.start_seconds or record.fallback_from is not None:
            self._cold(bucket, record, cell)

    def _cold(self, bucket: Bucket, record: Record, cell: Cell) -> None:
        """A cold wait and a fallback count for the entry asked for (which the request waited for)."""
        if record.fallback_from is not None:
            key = (record.team, record.label, record.fallback_from)
            cell = bucket.cells.get(key) or bucket.cells.setdefault(key, Cell())
            cell.fallbacks += 1
            cell.served_by[record.entry] = cell.served_by.get(record.entry, 0) + 1
        if record.start_seconds:
            cell.cold_waits += 1

    def _roll(self, now: float) -> Bucket:
        """Close the current bucket (it waits for produce()), open the one for ``now``."""
        closed = self._current
        if closed.cells or closed.entries:
            self._unflushed.append(closed)  # into the history when produce() has made its records
            if len(self._unflushed) > FLUSH_BACKLOG:  # nobody flushes (a Usage without StateSync)
                self._keep(self._unflushed.pop(0))
        bucket = self._current = Bucket(int(now // BUCKET_SECONDS))
        if bucket.index // HOUR_MINUTES != closed.index // HOUR_MINUTES:
            self.compact(now)
        return bucket

    # --- the history: flushed, closed and read-back buckets ------------------------------------------

    def _keep(self, bucket: Bucket) -> None:
        """Add ``bucket`` (a minute's or an hour's counts) to the lifetime totals and, within retention, the history."""
        for (team, _, entry), cell in bucket.cells.items():
            pair = (team, entry)
            total = self._lifetime_cells.get(pair) or self._lifetime_cells.setdefault(pair, Cell())
            total.add(cell)
        for name, entry_cell in bucket.entries.items():
            entry_total = self._lifetime_entries.get(name) or self._lifetime_entries.setdefault(name, EntryCell())
            entry_total.add(entry_cell)
        index, span = bucket.index, bucket.span
        now = self._clock()
        if bucket.end <= now - self.retention:
            return  # past retention: counted (Prometheus' counters never go down), not kept
        if span == 1 and index >= max(self._compacted_to, _hour_boundary(now)):
            holder, key, span_of = self._minutes, index, 1
        else:
            holder, key, span_of = self._hours, index // HOUR_MINUTES, HOUR_MINUTES
        held = holder.get(key)
        if held is None:  # the first of its minute or hour: kept as it is, no copy (produce() let it go)
            held = bucket if bucket.span == span_of else Bucket(index // span_of * span_of, span_of)
            holder[key] = held
        if held is not bucket:
            held.add(bucket)
        start = float(held.start)
        if self.oldest is None or start < self.oldest:
            self.oldest = start

    def _keep_shared(self, minute: int, name: str, total: EntryCell) -> None:
        """A router's total of ``minute`` for the containers every router sees (``total`` is not kept: copied):
        the history keeps the largest per field, and the lifetime totals grow by what it raised."""
        now = self._clock()
        if (minute + 1) * BUCKET_SECONDS <= now - self.retention:
            return  # past retention, and no minute left to take the largest with: not counted again
        if minute >= max(self._compacted_to, _hour_boundary(now)):
            held = self._minutes.get(minute) or self._minutes.setdefault(minute, Bucket(minute))
        else:  # a minute older than the minutes kept (read at start): its hour holds it until compact()
            hour = minute // HOUR_MINUTES
            held = self._hours.get(hour) or self._hours.setdefault(hour, Bucket(hour * HOUR_MINUTES, HOUR_MINUTES))
        key = (minute, name)
        largest = held.shared.get(key)
        if largest is None:
            held.shared[key] = increase = total.copy()
        else:
            increase = largest.raise_to(total)
        lifetime = self._lifetime_entries.get(name) or self._lifetime_entries.setdefault(name, EntryCell())
        lifetime.add(increase)
        start = float(held.start)
        if self.oldest is None or start < self.oldest:
            self.oldest = start

    def compact(self, now: float) -> None:
        """Fold the minute buckets older than COMPACT_AFTER into hours; drop what is past retention."""
        boundary = _hour_boundary(now)
        for index in [index for index in self._minutes if index < boundary]:
            minute = self._minutes.pop(index)
            hour = index // HOUR_MINUTES
            held = self._hours.get(hour)
            if held is None:
                held = self._hours[hour] = Bucket(hour * HOUR_MINUTES, HOUR_MINUTES)
            held.add(minute)
        self._compacted_to = max(self._compacted_to, boundary)
        for held in self._hours.values():
            if held.shared:
                held.settle()
        oldest_hour = int((now - self.retention) // BUCKET_SECONDS) // HOUR_MINUTES
        for hour in [hour for hour in self._hours if hour < oldest_hour]:
            del self._hours[hour]
        starts = [hour * 3600 for hour in self._hours] + [minute * BUCKET_SECONDS for minute in self._minutes]
        self.oldest = float(min(starts)) if starts else None

    def produce(self) -> list[dict[str, Any]]:
        """StateSync's producer: the counts since the last call, as store records; they move into the history.

        Costs one pass over the keys counted since the last flush (measured in docs/OPERATIONS.md), nothing
        per request."""
        now = self._clock()
        if now >= self._current.end:
            self._roll(now)
        current = self._current
        buckets, self._unflushed = self._unflushed, []
        if current.cells or current.entries:
            buckets.append(current)
            self._current = Bucket(current.index)  # the rest of this minute counts anew
        records: list[dict[str, Any]] = []
        for bucket in buckets:
            records += _records(bucket)
            self._keep(bucket)  # after its records: the history may add to it from now on
        for minute, name in sorted(self._dirty):  # the shared totals are in the history already (sample)
            records.append(entry_record(minute, name, self._mine[minute, name], kind=USAGE_SHARED))
        self._dirty.clear()
        for key in [key for key in self._mine if key[0] < self._current.index]:
            del self._mine[key]  # a closed minute's total is final and written
        return records

    def consume(self, records: list[dict[str, Any]]) -> None:
        """StateSync's consumer of "usage" and "usage-entry": records read back (earlier runs, other routers)."""
        for record in records:
            try:
                bucket = Bucket(int(record["m"]), int(record.get("s", 1)))
                if record.get("t") == USAGE_SHARED:
                    if bucket.span != 1:
                        raise ValueError("a shared total is of one minute")
                    self._keep_shared(bucket.index, str(record["entry"]), entry_cell_from(record))
                    continue
                if record.get("t") == USAGE_ENTRY:
                    bucket.entries[str(record["entry"])] = entry_cell_from(record)
                else:
                    key = (str(record["team"]), str(record.get("label", "-")), str(record["entry"]))
                    bucket.cells[key] = cell_from(record)
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("usage: a record of an unknown shape was skipped: %.200s", record)
                continue
            self._keep(bucket)

    # --- the sampler ------------------------------------------------------------------------------

    def sample(self, status: dict[str, dict[str, Any]]) -> None:
        """Add each entry's container time since the last sample, and its cold starts.

        ``status`` is ``Backends.status()``: an entry's cumulative ``container_seconds`` when it reports
        one (local: exact), else ``containers`` (a count now, Modal) times the time since the last sample;
        its ``starts`` counter when it has one, else containers seen rising from 0. With a ``containers_source``
        in SHARED_SOURCES the containers are every router's (Modal): this router's total of the minute grows
        and goes into the history as a total (its largest view is kept), else (local) the current bucket's
        delta grows and is summed.
        """
        now = self._clock()
        elapsed = max(0.0, now - self._last_sample)
        self._last_sample = now
        bucket = self._current
        if now >= bucket.end:
            bucket = self._roll(now)
        for name, pricing in self.pricing.items():
            state = status.get(name)
            if state is None:
                continue
            seen = self._seen.get(name) or self._seen.setdefault(name, _Seen())
            seconds = 0.0
            reported = state.get("container_seconds")
            containers = state.get("containers")
            if reported is not None:
                reported = float(reported)
                before = seen.container_seconds or 0.0
                seconds = reported - before if reported >= before else reported  # a new backend counts anew
                seen.container_seconds = reported
            elif containers is not None:
                seconds = (seen.containers or 0) * elapsed  # the count seen last held until now
            starts = state.get("starts")
            cold_starts = 0
            if starts is not None:
                before_starts = seen.starts or 0
                cold_starts = int(starts) - before_starts if starts >= before_starts else int(starts)
                seen.starts = int(starts)
            elif containers is not None and seen.containers == 0 and containers > 0:
                cold_starts = 1
            if containers is not None:
                seen.containers = int(containers)
            if seconds or cold_starts:
                shared = state.get("containers_source") in SHARED_SOURCES
                if shared:
                    cell = self._mine.get((bucket.index, name)) or self._mine.setdefault(
                        (bucket.index, name), EntryCell()
                    )
                else:
                    cell = bucket.entry(name)
                cell.container_seconds += seconds
                cell.cold_starts += cold_starts
                if seconds:
                    cell.gpu_seconds += seconds * pricing.gpu_count
                    key = (name, pricing.gpu_type)  # Prometheus' fleet_gpu_seconds_total{entry, gpu}
                    self.gpu_totals[key] = self.gpu_totals.get(key, 0.0) + seconds * pricing.gpu_count
                    if pricing.hourly is None:
                        cell.unpriced_seconds += seconds
                    else:
                        cell.cost += seconds / 3600 * pricing.hourly
                if shared:
                    self._dirty.add((bucket.index, name))
                    self._keep_shared(bucket.index, name, cell)
        if len(self._mine) > FLUSH_BACKLOG:  # nobody flushes (a Usage without StateSync): the open minute's only
            for closed in [closed for closed in self._mine if closed[0] < bucket.index]:
                del self._mine[closed]
                self._dirty.discard(closed)

    async def run_sampler(self, read: Callable[[], dict[str, dict[str, Any]]]) -> None:
        """Sample every SAMPLE_SECONDS until cancelled (the router's lifespan)."""
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            try:
                self.sample(read())
            except Exception:  # a runtime's status failing must not end the sampling
                log.exception("usage sampler: reading the backends' status failed")

    # --- reading ----------------------------------------------------------------------------------

    def lifetime(self) -> tuple[dict[tuple[str, str], Cell], dict[str, EntryCell]]:
        """Totals per (team, entry) of everything held and counted since the router started (the history,
        read back at start included, plus the current bucket): Prometheus' counters, never decreasing."""
        cells = {pair: _copy(cell) for pair, cell in self._lifetime_cells.items()}
        entries: dict[str, EntryCell] = {}
        for name, entry_cell in self._lifetime_entries.items():
            (entries.get(name) or entries.setdefault(name, EntryCell())).add(entry_cell)
        for bucket in (*self._unflushed, self._current):
            for (team, _, entry), cell in bucket.cells.items():
                (cells.get((team, entry)) or cells.setdefault((team, entry), Cell())).add(cell)
            for name, entry_cell in bucket.entries.items():
                (entries.get(name) or entries.setdefault(name, EntryCell())).add(entry_cell)
        return cells, entries

    def buckets(self, since: float) -> list[Bucket]:
        """The buckets from ``since`` until now: from its minute, or its hour for hour buckets (read only)."""
        first = int(since // BUCKET_SECONDS)
        first_hour = first // HOUR_MINUTES
        buckets = [b for h, b in self._hours.items() if h >= first_hour]
        horizon = self._clock() - self.retention  # a minute past retention waits for compact() to drop it
        buckets += [b for m, b in self._minutes.items() if m >= first and b.end > horizon]
        buckets += [b for b in (*self._unflushed, self._current) if b.index >= first and b.end > horizon]
        return buckets

    def window(self, since: float) -> tuple[dict[Key, Cell], dict[str, EntryCell]]:
        """The sums of the buckets from ``since`` until now: from its minute, or its hour for hour buckets."""
        cells: dict[Key, Cell] = {}
        entries: dict[str, EntryCell] = {}
        for bucket in self.buckets(since):
            for key, cell in bucket.cells.items():
                (cells.get(key) or cells.setdefault(key, Cell())).add(cell)
            for name, entry_cell in bucket.entry_cells():
                (entries.get(name) or entries.setdefault(name, EntryCell())).add(entry_cell)
        return cells, entries

    def covers_from(self, asked: float) -> float:
        """From when the window from ``asked`` holds data: the oldest bucket held (this router's start when the
        store held nothing older), the retention, and the hour a since older than COMPACT_AFTER rounds to."""
        now = self._clock()
        held = self.started if self.oldest is None else min(self.oldest, self.started)
        covers = max(asked, held, now - self.retention)
        if covers < now - COMPACT_AFTER:
            covers = covers // 3600 * 3600  # hour buckets there: the window starts at the hour
            covers = max(covers, held)
        return covers

    def now(self) -> float:
        return self._clock()

    def has_team(self, team: str) -> bool:
        """Whether anything was counted for ``team`` (a team a reload removed still has its history)."""
        return any(name == team for name, _ in self._lifetime_cells) or any(
            name == team for name, _, _ in self._current.cells
        )

    def roll_to_now(self) -> None:
        now = self._clock()
        if now >= self._current.end:
            self._roll(now)


def _hour_boundary(now: float) -> int:
    """The first minute kept as a minute at ``now``: older ones are folded into their hour."""
    return int((now - COMPACT_AFTER) // BUCKET_SECONDS) // HOUR_MINUTES * HOUR_MINUTES


def _records(bucket: Bucket) -> list[dict[str, Any]]:
    index = bucket.index
    out = [cell_record(index, key, cell) for key, cell in bucket.cells.items()]
    out += [entry_record(index, name, cell) for name, cell in bucket.entries.items()]
    return out
