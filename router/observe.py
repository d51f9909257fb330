"""What the router records about each request: Prometheus metrics, one log line, a request id.

Every request gets an id (the client's ``X-Request-Id`` when it is sane, else a new one), sent back
and forwarded to the backend. When the request ends, :meth:`Observer.finish` counts it and, at INFO
level, logs one line with team, entry, route, status, latency and id (a refusal: its error code
instead of the upstream time); never a token or a prompt. A refusal is also counted by team and code.

The router's overhead is its own time: the total less the upstream exchange and less the waits that
are not the router's doing (a backend starting, a slot in the entry's queue), which have their own
histogram.

Gauges that describe state (in flight, queued, backend state and starts) are read when Prometheus
scrapes, not updated per request.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from router.usage import LATENCY_STEPS, Usage
from router.usage_records import EntryCell

log = logging.getLogger("tabby_fleet.access")

REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
CLIENT_LEFT = 499  # nginx's code for "the client closed the request"; used in metrics and logs only

# Buckets: the router's own overhead is sub-millisecond; the upstream is a model generating.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 150.0)
# Waits: a queue slot frees within a completion's time; a backend start takes seconds to minutes.
WAIT_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
START, QUEUE = "start", "queue"  # fleet_backend_wait_seconds{reason}


# A request id needs to be unique, not secret: a random prefix per router process and a counter
# (16 hex digits, like 8 random bytes) cost no system call per request.
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


class RequestRecord:
    """One request's facts, filled in as the proxy learns them."""

    __slots__ = ("code", "entry", "event", "fallback_from", "kind", "label", "method", "path", "queue_seconds",
                 "reason", "request_id", "start_seconds", "started", "status", "team", "upstream_seconds")  # fmt: skip

    def __init__(self, request_id: str, method: str, path: str) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.started = time.perf_counter()
        self.team = "-"
        self.label = "-"  # the label of the token that authenticated the request; "-" without one
        self.entry = "-"
        self.reason = "-"
        self.status = 0
        self.code: str | None = None  # the error code of a refusal by the router
        self.upstream_seconds = 0.0
        self.queue_seconds = 0.0  # waited for a slot in the entry's queue
        self.start_seconds = 0.0  # waited for the entry's backend to start
        self.fallback_from: str | None = None  # the entry asked for, when its fallback served (cold start)
        # What the path asks for (router.usage: completion, chat, events, health, ...; None: not routed)
        # and, for POST /v1/events, the event's type (view, select, dismiss).
        self.kind: str | None = None
        self.event: str | None = None


class Observer:
    def __init__(self, usage: Usage | None = None) -> None:
        self.usage = usage  # counts each finished request for /fleet/usage (router/usage.py)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fleet_requests", "Requests by team, entry, route reason and status (499: client left)",
            ["team", "entry", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.overhead = Histogram(
            "fleet_router_overhead_seconds", "Time in the router itself: total minus upstream",
            ["entry"], buckets=OVERHEAD_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.upstream = Histogram(
            "fleet_upstream_seconds", "Time from sending upstream to the end of the answer",
            ["entry"], buckets=UPSTREAM_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "fleet_upstream_errors",
            "Backend failures: unreachable, timeout, bad-response; midstream(-timeout) after the answer started",
            ["entry", "kind"], registry=self.registry,
        )  # fmt: skip
        self.cancellations = Counter(
            "fleet_client_cancellations", "Requests whose client left; their upstream was cancelled",
            ["entry"], registry=self.registry,
        )  # fmt: skip
        self.refusals = Counter(
            "fleet_refusals", "Requests the router answered with an error, by team (when known) and error code",
            ["team", "code"], registry=self.registry,
        )  # fmt: skip
        self.waits = Histogram(
            "fleet_backend_wait_seconds",
            "Waits outside the router's own work: for the backend to start, for a slot in the entry's queue",
            ["entry", "reason"], buckets=WAIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        # labels() costs a lock and a tuple build per call; the children are cached per label set.
        # The sets are bounded: teams x entries x route reasons x status codes x error codes, all from
        # settings and code (an unknown team or entry named by a client is never a label).
        self._request_counters: dict[tuple[str, str, str, int], Any] = {}
        self._entry_histograms: dict[str, tuple[Any, Any]] = {}
        self._refusal_counters: dict[tuple[str, str], Any] = {}
        self._wait_histograms: dict[tuple[str, str], Any] = {}

    def finish(self, record: RequestRecord) -> None:
        total = time.perf_counter() - record.started
        key = (record.team, record.entry, record.reason, record.status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.requests.labels(*key[:3], str(record.status))
        counter.inc()
        usage = self.usage
        if usage is not None:
            usage.observe(record, total)
        if record.status == CLIENT_LEFT:
            self.cancellations.labels(record.entry).inc()
        waited = record.queue_seconds + record.start_seconds
        if waited:
            self._observe_waits(record)
        if record.upstream_seconds:
            histograms = self._entry_histograms.get(record.entry)
            if histograms is None:
                histograms = self._entry_histograms[record.entry] = (
                    self.upstream.labels(record.entry), self.overhead.labels(record.entry)
                )  # fmt: skip
            histograms[0].observe(record.upstream_seconds)
            histograms[1].observe(max(0.0, total - record.upstream_seconds - waited))
        if record.code is not None:
            self._refused(record, total)
        elif log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s status=%d team=%s entry=%s route=%s ms=%.1f upstream_ms=%.1f id=%s",
                record.method, record.path, record.status, record.team, record.entry, record.reason,
                total * 1000, record.upstream_seconds * 1000, record.request_id,
            )  # fmt: skip

    def _refused(self, record: RequestRecord, total: float) -> None:
        key = (record.team, record.code or "-")
        counter = self._refusal_counters.get(key)
        if counter is None:
            counter = self._refusal_counters[key] = self.refusals.labels(*key)
        counter.inc()
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s status=%d team=%s entry=%s route=%s ms=%.1f code=%s id=%s",
                record.method, record.path, record.status, record.team, record.entry, record.reason,
                total * 1000, record.code, record.request_id,
            )  # fmt: skip

    def _observe_waits(self, record: RequestRecord) -> None:
        for reason, seconds in ((START, record.start_seconds), (QUEUE, record.queue_seconds)):
            if seconds:
                key = (record.entry, reason)
                histogram = self._wait_histograms.get(key)
                if histogram is None:
                    histogram = self._wait_histograms[key] = self.waits.labels(*key)
                histogram.observe(seconds)

    def upstream_error(self, entry: str, kind: str) -> None:
        self.upstream_errors.labels(entry, kind).inc()

    def watch_state(self, read: Callable[[], dict[str, dict[str, Any]]]) -> None:
        """Export per-entry state (in flight, queued, backend state, starts, stops) at scrape time."""
        self.registry.register(_StateCollector(read))

    def watch_usage(self, usage: Usage, read: Callable[[], dict[str, dict[str, Any]]]) -> None:
        """Export Usage's totals (completions, events, latency, cold waits, fallbacks, busy and container
        seconds, GPU prices and cost) at scrape time; ``read`` is ``Backends.status()``."""
        self.registry.register(_UsageCollector(usage, read))


class _StateCollector:
    def __init__(self, read: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily("fleet_in_flight", "Requests in flight per entry", labels=["entry"])
        queued = GaugeMetricFamily("fleet_queued", "Requests waiting for a slot per entry", labels=["entry"])
        up = GaugeMetricFamily(
            "fleet_backend_state", "1 for the entry's current backend state", labels=["entry", "state"]
        )
        starts = CounterMetricFamily("fleet_backend_starts", "Backend starts per entry", labels=["entry"])
        stops = CounterMetricFamily("fleet_backend_stops", "Backend stops (idle, reload, shutdown)", labels=["entry"])
        start_seconds = CounterMetricFamily(
            "fleet_backend_start_seconds", "Total seconds spent starting backends", labels=["entry"]
        )
        for entry, state in self._read().items():
            in_flight.add_metric([entry], state.get("in_flight", 0))
            queued.add_metric([entry], state.get("queued", 0))
            up.add_metric([entry, str(state.get("state", "unknown"))], 1)
            starts.add_metric([entry], state.get("starts", 0))
            stops.add_metric([entry], state.get("stops", 0))
            start_seconds.add_metric([entry], state.get("start_seconds", 0.0))
        yield from (in_flight, queued, up, starts, stops, start_seconds)

    def describe(self) -> list[Metric]:
        return []


# fleet_request_seconds' buckets: every 6th of Usage's latency buckets, 10**(k/8) s (1.33x apart), from
# 10 ms to 316 s, so each is exact and histogram_quantile's p95 is within a bucket (about 15 %).
REQUEST_SECONDS_BOUNDS = tuple(range(-16, 21))  # k
_REQUEST_INDEX = {k: 6 * k + 3 * LATENCY_STEPS for k in REQUEST_SECONDS_BOUNDS}  # k -> Usage's latency index


class _UsageCollector:
    """Usage's lifetime totals as Prometheus counters, read at scrape time (after a fresh sample).

    Each count keeps the labels it was counted under: the team and entry named in the settings then (or "-"),
    the entry that served a fallback, the GPU the entry ran on. A reload that removes or changes one leaves
    its series as they were, so no counter ever moves between label sets (a phantom increase in one, a
    reset in the other). The label sets stay bounded: every name comes from some settings, never a client."""

    def __init__(self, usage: Usage, read: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self._usage = usage
        self._read = read

    def collect(self) -> Iterator[Metric]:
        usage = self._usage
        usage.sample(self._read())
        cells, entry_cells = usage.lifetime()
        pair = ["team", "entry"]
        completions = CounterMetricFamily("fleet_completions", "Completions answered 2xx", labels=pair)
        events = CounterMetricFamily(
            "fleet_completion_events", "The IDE's completion events (POST /v1/events, 2xx) by type",
            labels=[*pair, "type"],
        )  # fmt: skip
        latency = HistogramMetricFamily(
            "fleet_request_seconds", "Whole request time of 2xx completions (histogram_quantile for p50/p95)",
            labels=pair,
        )  # fmt: skip
        cold_waits = CounterMetricFamily(
            "fleet_cold_waits", "Requests that waited for the entry asked for to start", labels=pair
        )
        fallbacks = CounterMetricFamily(
            "fleet_fallbacks", "Requests for entry served by its fallback while entry was cold",
            labels=[*pair, "fallback"],
        )  # fmt: skip
        busy = CounterMetricFamily("fleet_busy_seconds", "Upstream seconds of the requests served", labels=pair)
        for (team, entry), cell in sorted(cells.items()):
            labels = [team, entry]
            completions.add_metric(labels, cell.completions)
            for kind, count in (("view", cell.views), ("select", cell.selects), ("dismiss", cell.dismisses)):
                events.add_metric([*labels, kind], count)
            latency.add_metric(labels, _cumulative(cell.latency), cell.latency_seconds)
            cold_waits.add_metric(labels, cell.cold_waits)
            for fallback, count in sorted((cell.served_by or {usage.fallbacks.get(entry, "-"): 0}).items()):
                fallbacks.add_metric([*labels, fallback], count)
            busy.add_metric(labels, cell.busy_seconds)
        containers = CounterMetricFamily(
            "fleet_container_seconds", "Container (local: process) seconds per entry", labels=["entry"]
        )
        gpu_seconds = CounterMetricFamily(
            "fleet_gpu_seconds", "Container seconds x GPUs per container, by the GPU they ran on (first choice then)",
            labels=["entry", "gpu"],
        )  # fmt: skip
        price = GaugeMetricFamily("fleet_gpu_price_per_hour", "Price of one GPU-hour ([prices])", labels=["gpu"])
        cost = CounterMetricFamily("fleet_cost", "Container time x the entry's hourly price", labels=["entry"])
        for entry in sorted(usage.pricing.keys() | entry_cells.keys()):  # a removed entry's series stay
            entry_cell = entry_cells.get(entry) or EntryCell()
            pricing = usage.pricing.get(entry)
            containers.add_metric([entry], entry_cell.container_seconds)
            if pricing is not None and (entry, pricing.gpu_type) not in usage.gpu_totals:
                gpu_seconds.add_metric([entry, pricing.gpu_type], 0.0)
            if entry_cell.cost or (pricing and pricing.per_gpu_hour is not None):
                cost.add_metric([entry], entry_cell.cost)
        for (entry, gpu), seconds in sorted(usage.gpu_totals.items()):  # by the GPU the time ran on
            gpu_seconds.add_metric([entry, gpu], seconds)
        for gpu, per_gpu_hour in sorted({p.gpu_type: p.per_gpu_hour for p in usage.pricing.values()}.items()):
            if per_gpu_hour is not None:
                price.add_metric([gpu], per_gpu_hour)
        yield from (completions, events, latency, cold_waits, fallbacks, busy, containers, gpu_seconds, price, cost)

    def describe(self) -> list[Metric]:
        return []


def _cumulative(histogram: dict[int, int]) -> list[tuple[str, float]]:
    """Usage's sparse latency histogram as Prometheus buckets (cumulative counts up to each bound)."""
    indexes = sorted(histogram)
    buckets = []
    seen = position = 0
    for k in REQUEST_SECONDS_BOUNDS:
        bound = _REQUEST_INDEX[k]
        while position < len(indexes) and indexes[position] <= bound:
            seen += histogram[indexes[position]]
            position += 1
        buckets.append((f"{10 ** (k / 8):.4g}", float(seen)))
    buckets.append(("+Inf", float(sum(histogram.values()))))
    return buckets
