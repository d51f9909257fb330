"""Container time of the containers every router sees (Modal's) through the store: N routers sampling the same
containers count them once, while each router's own processes (local) are still summed over routers
(router/usage.py's sample, produce and consume; router/usage_records.py's "usage-shared" records and
fold_hourly). End to end, with two real routers in front of one fake Modal edge: tests/test_modal_cold.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.store import COMPACTED, SegmentStore
from router.usage import Usage
from router.usage_records import USAGE, USAGE_ENTRY, USAGE_SHARED, fold_hourly
from router.usage_report import snapshot

from .test_usage import H100X2_HOURLY, SETTINGS, T0, Clock

FOLDS = {USAGE: fold_hourly, USAGE_ENTRY: fold_hourly, USAGE_SHARED: fold_hourly}
DAY = 86400
# What ModalBackends.status() says of an entry with two runners (Modal's get_current_stats()).
MODAL = {"large": {"state": "ready", "containers": 2, "containers_source": "modal"}}


class Router:
    """One router: its Usage and its segment of the shared store, flushed and read back as StateSync does."""

    def __init__(self, directory: Path, writer: str, clock: Clock) -> None:
        self.usage = Usage(SETTINGS, clock=clock)
        self.store = SegmentStore(directory, writer, clock=clock)
        self.usage.consume(self.store.read_new(include_own=True))  # at start: everything the store holds

    def sync(self) -> None:
        self.store.append(self.usage.produce())
        self.usage.consume(self.store.read_new())


def _run(routers: list[Router], clock: Clock, seconds: int, status: dict[str, dict[str, Any]]) -> None:
    """Every router samples ``status`` every 10 s and flushes (and reads the others) every 2 s, as in production;
    a sample's change is flushed 2 s later (so one in a minute's last 2 s is flushed in the next minute)."""
    for tick in range(seconds // 2):
        clock.now += 2
        for router in routers:
            router.sync()
            if tick % 5 == 4:
                router.usage.sample(status)
    for router in routers:
        router.sync()


def _entry(usage: Usage, name: str, since: float = T0 - 60) -> dict[str, Any]:
    row: dict[str, Any] = snapshot(usage, datetime.fromtimestamp(since, UTC))["entries"][name]
    return row


def _reader(directory: Path, clock: Clock) -> Usage:
    return Router(directory, "reader", clock).usage


def test_two_routers_sampling_the_same_modal_containers_count_them_once(tmp_path: Path) -> None:
    clock = Clock()
    routers = [Router(tmp_path, writer, clock) for writer in ("router-a", "router-b")]
    for router in routers:
        router.usage.sample(MODAL)  # the first sight: the containers run already, from now on they count
    _run(routers, clock, 300, MODAL)
    one = 300 * 2  # five minutes of two containers
    for usage in (*(router.usage for router in routers), _reader(tmp_path, clock)):
        large = _entry(usage, "large")
        assert abs(large["container_seconds"] - one) < 1, large  # failing before: 1200, once per router
        assert abs(large["gpu_seconds"] - 2 * one) < 2  # H100:2
        assert abs(large["cost"] - one / 3600 * H100X2_HOURLY) < 0.01
        totals = usage.lifetime()[1]["large"]  # Prometheus' fleet_container_seconds_total
        assert abs(totals.container_seconds - one) < 1
    written = "".join(path.read_text() for path in tmp_path.glob("*/*.jsonl"))
    assert '"t":"usage-shared"' in written and '"t":"usage-entry"' not in written  # totals, not deltas


def test_each_router_own_processes_are_still_summed(tmp_path: Path) -> None:
    clock = Clock()
    routers = [Router(tmp_path, writer, clock) for writer in ("router-a", "router-b", "router-c")]
    for n, router in enumerate(routers):  # three local routers on one data_dir, each with its own process
        router.usage.sample({"small": {"state": "ready", "containers": 1, "container_seconds": 0.0}})
        clock.now += 60
        router.usage.sample({"small": {"state": "ready", "containers": 1, "container_seconds": 10.0 * (n + 1)}})
        router.sync()
    _run(routers, clock, 4, {})
    expected = 10.0 + 20.0 + 30.0
    for usage in (*(router.usage for router in routers), _reader(tmp_path, clock)):
        assert _entry(usage, "small")["container_seconds"] == expected


def test_a_router_restarted_within_the_minute_adds_at_most_its_own_view(tmp_path: Path) -> None:
    clock = Clock()
    stays, restarts = Router(tmp_path, "router-a", clock), Router(tmp_path, "router-b", clock)
    for router in (stays, restarts):
        router.usage.sample(MODAL)
    _run([stays, restarts], clock, 90, MODAL)
    restarted = Router(tmp_path, "router-b2", clock)  # a new writer, its minute's total from 0
    restarted.usage.sample(MODAL)
    _run([stays, restarted], clock, 90, MODAL)
    for usage in (stays.usage, restarted.usage, _reader(tmp_path, clock)):
        assert abs(_entry(usage, "large")["container_seconds"] - 180 * 2) < 1
    alone = tmp_path / "alone"  # no other router: the minute of the restart keeps the larger view, never both
    first = Router(alone, "first", clock)
    first.usage.sample(MODAL)
    since = clock.now
    _run([first], clock, 90, MODAL)
    second = Router(alone, "second", clock)
    second.usage.sample(MODAL)
    _run([second], clock, 90, MODAL)
    seconds = _entry(_reader(alone, clock), "large", since)["container_seconds"]
    assert 180 * 2 - 60 * 2 <= seconds <= 180 * 2


def test_shared_totals_compact_to_their_largest_even_across_midnight(tmp_path: Path) -> None:
    midnight = (T0 // DAY + 1) * DAY
    clock = Clock(midnight - 300 - 1)
    routers = [Router(tmp_path, writer, clock) for writer in ("router-a", "router-b")]
    for router in routers:
        router.usage.sample(MODAL)
    _run(routers, clock, 600, MODAL)  # from 23:55 to 00:05: the last minute's totals land in both day folders
    before = _entry(_reader(tmp_path, clock), "large", midnight - DAY)
    assert abs(before["container_seconds"] - 600 * 2) < 1
    day = datetime.fromtimestamp(midnight - 1, UTC).strftime("%Y-%m-%d")
    next_day = datetime.fromtimestamp(midnight, UTC).strftime("%Y-%m-%d")
    straddling = int(midnight // 60) - 1
    for folder in (day, next_day):
        lines = "".join(p.read_text() for p in (tmp_path / folder).glob("*.jsonl"))
        assert f'"t":"usage-shared","m":{straddling},' in lines  # the 23:59 totals are in both folders
    clock.now += 4 * DAY  # both days closed
    SegmentStore(tmp_path, "compactor", clock=clock).maintain(FOLDS, frozenset(FOLDS), 90)
    compacted = (tmp_path / day / COMPACTED).read_bytes()
    assert SegmentStore(tmp_path, "again", clock=clock).compact(day, FOLDS)  # nothing to do: the same file
    assert (tmp_path / day / COMPACTED).read_bytes() == compacted
    kept = [r for r in SegmentStore(tmp_path, "look", clock=clock).read_new() if r["t"] == USAGE_SHARED]
    assert {r["m"] for r in kept} == {straddling}  # the rest are hour records now
    after = _entry(_reader(tmp_path, clock), "large", midnight - DAY)
    assert abs(after["container_seconds"] - before["container_seconds"]) < 0.01  # not 23:59 twice
    assert abs(after["cost"] - before["cost"]) < 1e-5
