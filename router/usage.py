"""What each team and entry used, and what it cost: in-memory time buckets behind ``GET /fleet/usage``.

Per router process, per ``BUCKET_SECONDS`` bucket, kept for ``RETENTION``:

- per (team, entry), from each finished request (:meth:`Usage.observe`, called by ``Observer.finish``,
  so it is cheap: a dict lookup and a few additions): requests, 2xx completions and chats, the IDE's
  view/select/dismiss events, a latency histogram of completions, cold waits, fallbacks, refusals by
  code and busy (upstream) seconds;
- per entry, from a sampler reading ``Backends.status()`` every ``SAMPLE_SECONDS``
  (:meth:`Usage.sample`): container-seconds and cold starts, and their GPU-seconds and cost at the
  settings of the time (a reload that changes or removes an entry does not rewrite what it cost).

:meth:`Usage.snapshot` sums the buckets since a time into the JSON of /fleet/usage (the schema is in
docs/OPERATIONS.md, "Usage and cost"); a team's share of an entry's cost is its share of that entry's
busy seconds. Lifetime totals (merged as
each bucket closes, so they never decrease when old buckets are dropped) feed the Prometheus series.

Everything here is an estimate kept in one process: lost on restart, and with several router
containers each counts only its own requests (docs/OPERATIONS.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

from fleet.errors import FleetError
from fleet.routing import CHAT, HEALTH, SERVER_SETTING
from fleet.settings import FleetSettings

log = logging.getLogger("tabby_fleet.usage")

# One bucket per minute: /fleet/usage?since=15m is exact to the minute, and 8 days of buckets (11,520)
# stay a few MB even with dozens of (team, entry) pairs.
BUCKET_SECONDS = 60
# Eight days: a week back from any time of today, "since=7d" included.
RETENTION = 8 * 24 * 3600
# How often the sampler reads each entry's containers: container-seconds integrate a count over time
# (Modal), so a container's first and last 10 s may be misplaced; a local process reports exact seconds.
SAMPLE_SECONDS = 10.0
RECENT_REFUSALS = 20  # the snapshot's "refusals" list, newest first

# Route kinds beyond fleet.routing's: the paths whose answers Usage counts (RequestRecord.kind).
COMPLETION = "completion"
EVENTS = "events"
WHOAMI = "whoami"  # /fleet/whoami: its route label in metrics and logs, and its kind here
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
    entry: str
    kind: str | None
    event: str | None
    status: int
    code: str | None
    upstream_seconds: float
    start_seconds: float
    fallback_from: str | None


class Cell:
    """One (team, entry)'s counts in one bucket (or summed over many)."""

    __slots__ = ("busy_seconds", "chats", "cold_waits", "completions", "dismisses", "fallbacks", "latency",
                 "latency_seconds", "refusals", "requests", "selects", "served_by", "views")  # fmt: skip

    def __init__(self) -> None:
        self.requests = self.completions = self.chats = 0
        self.views = self.selects = self.dismisses = 0
        self.cold_waits = self.fallbacks = 0
        self.busy_seconds = self.latency_seconds = 0.0
        self.latency: dict[int, int] = {}  # latency_index -> completions
        self.refusals: dict[str, int] = {}  # error code -> refusals
        self.served_by: dict[str, int] = {}  # the entry that served this one's fallbacks -> how many

    def add(self, other: Cell) -> None:
        self.requests += other.requests
        self.completions += other.completions
        self.chats += other.chats
        self.views += other.views
        self.selects += other.selects
        self.dismisses += other.dismisses
        self.cold_waits += other.cold_waits
        self.fallbacks += other.fallbacks
        self.busy_seconds += other.busy_seconds
        self.latency_seconds += other.latency_seconds
        for index, count in other.latency.items():
            self.latency[index] = self.latency.get(index, 0) + count
        for code, count in other.refusals.items():
            self.refusals[code] = self.refusals.get(code, 0) + count
        for entry, count in other.served_by.items():
            self.served_by[entry] = self.served_by.get(entry, 0) + count


class EntryCell:
    """One entry's containers in one bucket (or summed): GPU-seconds and cost at the settings of the time,
    so a reload that changes or removes the entry leaves what was counted as it was."""

    __slots__ = ("cold_starts", "container_seconds", "cost", "gpu_seconds", "unpriced_seconds")

    def __init__(self) -> None:
        self.container_seconds = 0.0
        self.cold_starts = 0
        self.cost = 0.0  # the priced seconds at the price of the time
        self.unpriced_seconds = 0.0  # container seconds on a GPU without a price
        self.gpu_seconds = 0.0  # container seconds x GPUs per container

    def add(self, other: EntryCell) -> None:
        self.container_seconds += other.container_seconds
        self.cold_starts += other.cold_starts
        self.cost += other.cost
        self.unpriced_seconds += other.unpriced_seconds
        self.gpu_seconds += other.gpu_seconds

    def window_cost(self, pricing: Pricing | None) -> float | None:
        """What the time cost; None when some of it ran without a price (or none ran and there is none)."""
        if self.unpriced_seconds or (not self.container_seconds and (pricing is None or pricing.hourly is None)):
            return None
        return self.cost


class Bucket:
    __slots__ = ("cells", "end", "entries", "start")

    def __init__(self, index: int) -> None:
        self.start = index * BUCKET_SECONDS
        self.end = self.start + BUCKET_SECONDS
        self.cells: dict[tuple[str, str], Cell] = {}
        self.entries: dict[str, EntryCell] = {}

    def entry(self, name: str) -> EntryCell:
        cell = self.entries.get(name)
        if cell is None:
            cell = self.entries[name] = EntryCell()
        return cell


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
    """Usage per team and entry in time buckets; ``clock`` is unix seconds (injected by tests)."""

    def __init__(self, settings: FleetSettings | None = None, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.time
        now = self._clock()
        self.started = now
        self._current = Bucket(int(now // BUCKET_SECONDS))
        self._buckets: deque[Bucket] = deque([self._current])
        self._closed_cells: dict[tuple[str, str], Cell] = {}  # lifetime totals of closed buckets
        self._closed_entries: dict[str, EntryCell] = {}
        self.recent: deque[Refusal] = deque(maxlen=RECENT_REFUSALS)
        self._seen: dict[str, _Seen] = {}
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
        """Take (reloaded) settings: the entries and teams to report, and the prices."""
        prices = settings.prices
        self.prices = {"currency": prices.currency, "date": prices.date, "source": prices.source}
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

    # --- the hot path -----------------------------------------------------------------------------

    def observe(self, record: Record, total: float) -> None:
        """Count one finished request (``total``: its whole time in seconds)."""
        now = self._clock()
        bucket = self._current
        if now >= bucket.end:
            bucket = self._roll(now)
        key = (record.team, record.entry)
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
            self.recent.append(Refusal(now, record.team, record.entry, record.status, record.code))
        if record.start_seconds or record.fallback_from is not None:
            self._cold(bucket, record, cell)

    def _cold(self, bucket: Bucket, record: Record, cell: Cell) -> None:
        """A cold wait and a fallback count for the entry asked for (which the request waited for)."""
        if record.fallback_from is not None:
            key = (record.team, record.fallback_from)
            cell = bucket.cells.get(key) or bucket.cells.setdefault(key, Cell())
            cell.fallbacks += 1
            cell.served_by[record.entry] = cell.served_by.get(record.entry, 0) + 1
        if record.start_seconds:
            cell.cold_waits += 1

    def _roll(self, now: float) -> Bucket:
        """Close the current bucket (into the lifetime totals), open the one for ``now``, drop the expired."""
        closed = self._current
        for key, cell in closed.cells.items():
            total = self._closed_cells.get(key) or self._closed_cells.setdefault(key, Cell())
            total.add(cell)
        for name, entry_cell in closed.entries.items():
            entry_total = self._closed_entries.get(name) or self._closed_entries.setdefault(name, EntryCell())
            entry_total.add(entry_cell)
        bucket = self._current = Bucket(int(now // BUCKET_SECONDS))
        buckets = self._buckets
        buckets.append(bucket)
        oldest = bucket.start - RETENTION
        while buckets[0].start < oldest:
            buckets.popleft()
        return bucket

    # --- the sampler ------------------------------------------------------------------------------

    def sample(self, status: dict[str, dict[str, Any]]) -> None:
        """Add each entry's container time since the last sample, and its cold starts.

        ``status`` is ``Backends.status()``: an entry's cumulative ``container_seconds`` when it reports
        one (local: exact), else ``containers`` (a count now, Modal) times the time since the last sample;
        its ``starts`` counter when it has one, else containers seen rising from 0.
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
        """Totals since the router started (closed buckets plus the current one): Prometheus' counters."""
        cells: dict[tuple[str, str], Cell] = {}
        entries: dict[str, EntryCell] = {}
        for source in (self._closed_cells, self._current.cells):
            for key, cell in source.items():
                (cells.get(key) or cells.setdefault(key, Cell())).add(cell)
        for source_entries in (self._closed_entries, self._current.entries):
            for name, entry_cell in source_entries.items():
                (entries.get(name) or entries.setdefault(name, EntryCell())).add(entry_cell)
        return cells, entries

    def window(self, since: float) -> tuple[dict[tuple[str, str], Cell], dict[str, EntryCell]]:
        """The sums of the buckets from ``since`` (rounded down to its bucket) until now."""
        first = since // BUCKET_SECONDS * BUCKET_SECONDS
        cells: dict[tuple[str, str], Cell] = {}
        entries: dict[str, EntryCell] = {}
        for bucket in reversed(self._buckets):
            if bucket.start < first:
                break
            for key, cell in bucket.cells.items():
                (cells.get(key) or cells.setdefault(key, Cell())).add(cell)
            for name, entry_cell in bucket.entries.items():
                (entries.get(name) or entries.setdefault(name, EntryCell())).add(entry_cell)
        return cells, entries

    def snapshot(self, since: datetime, status: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The JSON of ``GET /fleet/usage`` from ``since`` until now; ``status`` (``Backends.status()``,
        read now) brings the container time up to now and gives each entry's state."""
        status = status or {}
        self.sample(status)
        now = self._clock()
        if now >= self._current.end:
            self._roll(now)
        asked = since.timestamp()
        kept_from = self._current.start - RETENTION  # older buckets are dropped (_roll)
        covers_from = max(asked, self.started, kept_from)
        cells, entry_cells = self.window(covers_from)
        entries, costs = self._entries(cells, entry_cells, status)
        return {
            "since": _iso(asked),
            "until": _iso(now),
            "covers_from": _iso(covers_from),
            "bucket_seconds": BUCKET_SECONDS,
            "prices": dict(self.prices),
            "entries": entries,
            "teams": self._teams(cells, costs),
            "refusals": [
                {"at": _iso(r.at), "team": r.team, "entry": r.entry, "status": r.status, "code": r.code}
                for r in reversed(self.recent)
                if r.at >= asked
            ],
        }

    def _entries(
        self, cells: dict[tuple[str, str], Cell], entry_cells: dict[str, EntryCell], status: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[float | None, float]]]:
        """The entries' rows, and each entry's (cost, busy seconds) for the teams' shares."""
        by_entry: dict[str, Cell] = {name: Cell() for name in self.entries}
        for (_, entry), cell in cells.items():
            if entry != "-":
                (by_entry.get(entry) or by_entry.setdefault(entry, Cell())).add(cell)
        for name in entry_cells:  # an entry a reload removed still ran (and cost) in the window
            by_entry.setdefault(name, Cell())
        entries = {}
        costs = {}
        for name, cell in by_entry.items():
            pricing = self.pricing.get(name)
            containers_cell = entry_cells.get(name) or EntryCell()
            state = status.get(name, {})
            seconds = containers_cell.container_seconds
            cost = containers_cell.window_cost(pricing)
            costs[name] = (cost, cell.busy_seconds)
            entries[name] = {
                "gpu": pricing.gpu if pricing else None,
                "price_per_hour": pricing.hourly if pricing else None,
                "state": state.get("state", "cold"),
                "containers": _containers_now(state),
                **_counts(cell),
                "cold_waits": cell.cold_waits,
                "cold_starts": containers_cell.cold_starts,
                "fallbacks": cell.fallbacks,
                "refusals": dict(cell.refusals),
                "busy_seconds": round(cell.busy_seconds, 3),
                "container_seconds": round(seconds, 3),
                "gpu_seconds": round(containers_cell.gpu_seconds, 3),
                "cost": _round_cost(cost),
                # The cost of container time while the entry served nothing in the window: no team's.
                "unattributed_cost": _round_cost(cost) if cost is None or not cell.busy_seconds else 0.0,
            }
        return entries, costs

    def _teams(
        self, cells: dict[tuple[str, str], Cell], costs: dict[str, tuple[float | None, float]]
    ) -> dict[str, Any]:
        per_team: dict[str, dict[str, Cell]] = {team: {} for team in self.teams}
        for (team, entry), cell in cells.items():
            if not _idle(cell):  # e.g. only health checks: nothing to report
                per_team.setdefault(team, {})[entry] = cell
        teams = {}
        for team, by_entry in per_team.items():
            total = Cell()
            rows: dict[str, Any] = {}
            shares: list[float] = []
            for entry, cell in by_entry.items():
                total.add(cell)
                if entry == "-":
                    continue  # refused before an entry was chosen: counted in the team's totals only
                share = _share(*costs.get(entry, (None, 0.0)), cell.busy_seconds)
                if share is not None:
                    shares.append(share)
                rows[entry] = {
                    "requests": cell.requests, "completions": cell.completions,
                    "busy_seconds": round(cell.busy_seconds, 3), "cost": _round_cost(share),
                    "latency_ms": _percentiles(cell.latency),
                }  # fmt: skip
            teams[team] = {
                **_counts(total),
                "cold_waits": total.cold_waits,
                "fallbacks": total.fallbacks,
                "refusals": dict(total.refusals),
                "busy_seconds": round(total.busy_seconds, 3),
                "cost": _round_cost(sum(shares)) if shares else None,
                "entries": rows,
            }
        return teams


def _share(entry_cost: float | None, entry_busy: float, busy: float) -> float | None:
    """A team's part of an entry's cost: the entry's cost times the team's share of its busy seconds."""
    if entry_cost is None or not entry_busy:
        return None
    return entry_cost * min(1.0, busy / entry_busy)


def _idle(cell: Cell) -> bool:
    return not (cell.requests or cell.refusals or cell.busy_seconds or cell.cold_waits or cell.fallbacks)


def _counts(cell: Cell) -> dict[str, Any]:
    return {
        "requests": cell.requests, "completions": cell.completions, "chats": cell.chats,
        "views": cell.views, "selects": cell.selects, "dismisses": cell.dismisses,
        "acceptance_rate": round(cell.selects / cell.views, 4) if cell.views else None,
        "latency_ms": _percentiles(cell.latency),
    }  # fmt: skip


def _round_cost(cost: float | None) -> float | None:
    return None if cost is None else round(cost, 6)


def _containers_now(state: dict[str, Any]) -> int:
    containers = state.get("containers")
    if containers is not None:
        return int(containers)
    return 1 if state.get("state") in ("starting", "ready") and not state.get("external") else 0


def percentile(histogram: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) in milliseconds: the geometric middle of the bucket that holds it."""
    count = sum(histogram.values())
    if not count:
        return None
    rank = q * count
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return latency_bound_ms(index) / 10 ** (0.5 / LATENCY_STEPS)
    return latency_bound_ms(max(histogram))  # not reached: seen ends at count >= rank


def _percentiles(histogram: dict[int, int]) -> dict[str, float] | None:
    if not histogram:
        return None
    return {"p50": round(percentile(histogram, 0.5) or 0.0, 1), "p95": round(percentile(histogram, 0.95) or 0.0, 1)}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


_DURATION = re.compile(r"^(\d{1,7})([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SINCE_FORMS = (
    "an ISO 8601 time (2026-11-27T08:00:00Z, or with an offset), unix seconds (1795766400), "
    "a duration back from now (15m, 1h, 24h, 7d) or 'today' (00:00 UTC)"
)


def parse_since(text: str, now: datetime) -> datetime:
    """``since`` of /fleet/usage as a UTC datetime; FleetError 400 bad-since naming the accepted forms."""
    value = text.strip()
    try:
        if value == "today":
            return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        duration = _DURATION.match(value)
        if duration:
            return now - timedelta(seconds=int(duration[1]) * _UNITS[duration[2]])
        if re.fullmatch(r"\d{1,12}(\.\d+)?", value):
            since = datetime.fromtimestamp(float(value), UTC)
        else:
            since = datetime.fromisoformat(value)
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)  # a time without an offset is UTC
            since = since.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        raise FleetError(400, "bad-since", f"since={_shown(text)} is not a time; use {SINCE_FORMS}") from None
    if since > now + timedelta(seconds=1):
        raise FleetError(
            400,
            "bad-since",
            f"since={_shown(text)} is in the future (now is {now.isoformat(timespec='seconds')}); use {SINCE_FORMS}",
        )
    return since


def _shown(text: str) -> str:
    """A client's value as an error message quotes it: at most 64 characters (a long one is cut, and says so)."""
    return repr(text) if len(text) <= 64 else f"{text[:64]!r}... ({len(text)} characters)"
