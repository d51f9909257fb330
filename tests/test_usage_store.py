"""Usage through the store, in one process: what is flushed and read back equals what was counted
(router/usage.py's producer and consumer, router/usage_records.py), and the store's day folders: deterministic
compaction, retention, damaged lines (router/store.py). The processes that share a store are in
tests/test_state_survives.py."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleet.loading import SettingsError, load_settings
from router.store import COMPACTED, SegmentStore
from router.usage import BUCKET_SECONDS, Usage
from router.usage_records import USAGE, USAGE_ENTRY, fold_hourly
from router.usage_report import snapshot

from .test_usage import SETTINGS, T0, Clock, _record

FOLDS = {USAGE: fold_hourly, USAGE_ENTRY: fold_hourly}
DAY = 86400


def _count(usage: Usage, clock: Clock, minutes: int, per_minute: int = 3) -> None:
    """Requests from three developers of two teams, completions, events, refusals, a fallback; container time."""
    for minute in range(minutes):
        for n in range(per_minute):
            label = ("ana", "bo", "-")[n % 3]
            team = "alpha" if label != "bo" else "beta"
            usage.observe(_record(team=team, label=label, upstream_seconds=0.1 * (n + 1)), 0.05 * (n + 1))
            usage.observe(_record(team=team, label=label, kind="events", event="view"), 0.001)
            if n % 2:
                usage.observe(_record(team=team, label=label, kind="events", event="select"), 0.001)
        usage.observe(_record(team="beta", label="bo", entry="small", fallback_from="large", start_seconds=1.0), 1.2)
        usage.observe(_record(status=429, code="team-rate-limit", label="ana"), 0.001)
        usage.sample({"large": {"state": "ready", "containers": 1}, "small": {"container_seconds": 30.0 * minute}})
        clock.now += BUCKET_SECONDS / 2
        usage.sample({"large": {"state": "ready", "containers": 1}, "small": {"container_seconds": 30.0 * minute}})
        clock.now += BUCKET_SECONDS / 2


def _view(result: dict[str, Any]) -> dict[str, Any]:
    """What both routers must agree on: every count, not the time it was asked or the backends' state now."""
    entries = {
        name: {k: v for k, v in row.items() if k not in ("state", "containers")}
        for name, row in result["entries"].items()
    }
    return {"entries": entries, "teams": result["teams"], "tokens": result["tokens"]}


def test_what_is_flushed_and_read_back_equals_what_was_counted() -> None:
    clock = Clock()
    counted = Usage(SETTINGS, clock=clock)
    records: list[dict[str, Any]] = []
    for minutes in (1, 3, 2):  # flushes at uneven times: mid-minute, after several closed minutes
        _count(counted, clock, minutes)
        clock.now += 7
        records += json.loads(json.dumps(counted.produce()))  # through JSON, as the store keeps them
    _count(counted, clock, 1)  # counted after the last flush: the snapshot shows it, the records not yet
    read_back = Usage(SETTINGS, clock=clock)
    read_back.consume(records)
    since = datetime.fromtimestamp(T0 - 60, UTC)
    assert _view(snapshot(counted, since, by="token")) != _view(snapshot(read_back, since, by="token"))
    records += counted.produce()
    read_back = Usage(SETTINGS, clock=clock)
    read_back.consume(records)
    mine, theirs = snapshot(counted, since, by="token"), snapshot(read_back, since, by="token")
    assert _view(mine) == _view(theirs)
    assert {(row["team"], row["label"]) for row in mine["tokens"]} == {("alpha", "ana"), ("beta", "bo"), ("alpha", "-")}
    assert mine["entries"]["small"]["container_seconds"] > 0 and mine["teams"]["beta"]["fallbacks"] == 7
    assert counted.produce() == []  # nothing new: nothing to write
    assert snapshot(read_back, since, by="token", team="beta")["tokens"] == [
        row for row in mine["tokens"] if row["team"] == "beta"
    ]


def test_records_read_back_are_summed_with_what_this_router_counts() -> None:
    clock = Clock()
    mine, other = Usage(SETTINGS, clock=clock), Usage(SETTINGS, clock=clock)
    _count(mine, clock, 2)
    _count(other, clock, 2)
    mine.consume(other.produce())
    since = datetime.fromtimestamp(T0 - 60, UTC)
    both = snapshot(mine, since, by="token")
    assert both["teams"]["alpha"]["requests"] == 2 * snapshot(other, since)["teams"]["alpha"]["requests"]
    mine.consume([{"t": "usage", "m": "soon", "team": "alpha", "entry": "small"}, {"t": "usage", "m": 1}])
    assert snapshot(mine, since, by="token")["teams"] == both["teams"]  # records of an unknown shape: skipped


def test_covers_from_is_the_oldest_minute_the_store_holds() -> None:
    clock = Clock(T0 + 10 * DAY)
    usage = Usage(SETTINGS, clock=clock)
    since = datetime.fromtimestamp(T0 - DAY, UTC)
    assert snapshot(usage, since)["covers_from"] == "2027-01-25T08:00:00+00:00"  # nothing older: its start
    usage.consume([{"t": "usage", "m": int(T0 // 60) + 5, "team": "alpha", "label": "ana", "entry": "small",
                    "requests": 2}])  # fmt: skip
    result = snapshot(usage, since, by="token")
    assert result["covers_from"] == "2027-01-15T08:00:00+00:00"  # the hour of the oldest record
    assert result["tokens"][0]["requests"] == 2


def test_minutes_older_than_two_days_fold_into_hours_and_keep_their_counts() -> None:
    clock = Clock()
    usage = Usage(SETTINGS, clock=clock)
    _count(usage, clock, 90)
    before = snapshot(usage, datetime.fromtimestamp(T0, UTC), by="token")
    clock.now += 3 * DAY
    usage.compact(clock.now)
    assert not [m for m in usage._minutes if m * 60 < clock.now - 2 * DAY]
    after = snapshot(usage, datetime.fromtimestamp(T0, UTC), by="token")
    assert _view(after)["tokens"] == _view(before)["tokens"] and after["teams"] == before["teams"]


# --- the store ----------------------------------------------------------------------------------


def _fill(directory: Path, clock: Clock, writers: int = 3) -> list[SegmentStore]:
    """Several writers appending a day's usage (and a token record) into one directory."""
    stores = [SegmentStore(directory, f"router-{n}", clock=clock) for n in range(writers)]
    for n, store in enumerate(stores):
        usage = Usage(SETTINGS, clock=Clock(clock.now + n))
        source = Clock(clock.now + n)
        usage = Usage(SETTINGS, clock=source)
        _count(usage, source, 5)
        store.append(usage.produce())
        store.append([{"t": "token-revoked", "sha256": f"{n:064x}"}])
        _count(usage, source, 5)
        store.append(usage.produce())
    return stores


def _totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    usage = Usage(SETTINGS, clock=Clock(T0 + 4 * DAY))
    usage.consume([r for r in records if r.get("t") in (USAGE, USAGE_ENTRY)])
    result = snapshot(usage, datetime.fromtimestamp(T0 - DAY, UTC), by="token")
    return {"teams": result["teams"], "tokens": result["tokens"], "containers": {
        name: round(row["container_seconds"], 3) for name, row in result["entries"].items()}}  # fmt: skip


def test_a_closed_day_compacts_to_the_same_bytes_whoever_compacts_it(tmp_path: Path) -> None:
    clock = Clock()
    _fill(tmp_path / "a", clock)
    before = SegmentStore(tmp_path / "a", "reader", clock=clock).read_new()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    clock.now += 3 * DAY  # the day is closed
    one, two = SegmentStore(tmp_path / "a", "one", clock=clock), SegmentStore(tmp_path / "b", "two", clock=clock)
    one.maintain(FOLDS, frozenset(FOLDS), 90)
    two.maintain(FOLDS, frozenset(FOLDS), 90)
    day = datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%d")
    compacted = (tmp_path / "a" / day / COMPACTED).read_bytes()
    assert compacted == (tmp_path / "b" / day / COMPACTED).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a" / day).iterdir()) == [COMPACTED]  # the inputs are gone
    assert SegmentStore(tmp_path / "a", "two", clock=clock).compact(day, FOLDS)  # again: nothing changes
    assert (tmp_path / "a" / day / COMPACTED).read_bytes() == compacted
    after = SegmentStore(tmp_path / "a", "reader", clock=clock).read_new()
    assert len(after) < len(before) / 5  # minutes of three routers folded into hours
    assert _totals(after) == _totals(before)
    assert [r for r in after if r["t"] == "token-revoked"] == [r for r in before if r["t"] == "token-revoked"]


def test_a_reader_that_read_a_days_segments_does_not_count_its_compacted_file_again(tmp_path: Path) -> None:
    clock = Clock()
    _fill(tmp_path, clock)
    reader = SegmentStore(tmp_path, "reader", clock=clock)
    first = reader.read_new()
    clock.now += 3 * DAY
    SegmentStore(tmp_path, "compactor", clock=clock).maintain(FOLDS, frozenset(FOLDS), 90)
    assert reader.read_new() == []
    assert _totals(SegmentStore(tmp_path, "late", clock=clock).read_new()) == _totals(first)


def test_retention_drops_usage_and_keeps_other_kinds_then_the_folder(tmp_path: Path) -> None:
    clock = Clock()
    _fill(tmp_path, clock)
    day = datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%d")
    clock.now += 5 * DAY
    store = SegmentStore(tmp_path, "keeper", clock=clock)
    store.maintain(FOLDS, frozenset(FOLDS), 4)
    left = SegmentStore(tmp_path, "reader", clock=clock).read_new()
    assert left and {r["t"] for r in left} == {"token-revoked"}  # a revoked token outlives usage's retention
    SegmentStore(tmp_path, "other", clock=clock).maintain({}, frozenset({USAGE, USAGE_ENTRY, "token-revoked"}), 4)
    assert not (tmp_path / day).exists()


def test_damaged_and_torn_lines_are_skipped_and_named(tmp_path: Path) -> None:
    clock = Clock()
    writer = SegmentStore(tmp_path, "writer", clock=clock)
    writer.append([{"t": "usage", "m": 1, "team": "alpha", "label": "-", "entry": "small", "requests": 1}])
    segment = writer.segment
    with open(segment, "ab") as file:
        file.write(b"\x00\xffgarbage{not json\n[1, 2]\n" + b'{"t":"usage","m":2,"team":"alp')  # torn last line
    reader = SegmentStore(tmp_path, "reader", clock=clock)
    records = reader.read_new()
    assert [r["m"] for r in records] == [1]
    health = reader.health()
    assert health["skipped_lines"] == 2 and health["damaged_segments"] == [f"{segment.parent.name}/writer.jsonl"]
    assert health["ok"] and health["bytes"] == segment.stat().st_size


def test_a_write_that_fails_is_reported_and_a_later_one_writes_whole_lines(tmp_path: Path) -> None:
    clock = Clock()
    blocker = tmp_path / "state"
    blocker.write_text("a file where the store's directory should be")
    store = SegmentStore(blocker, "writer", clock=clock)
    try:
        store.append([{"t": "x"}])
    except Exception as exc:  # StoreError
        assert "cannot write" in str(exc) and str(blocker) in str(exc)
    else:
        raise AssertionError("a store under a file must fail")
    assert store.health()["ok"] is False and "cannot write" in (store.health()["error"] or "")
    blocker.unlink()
    store.append([{"t": "x", "n": 1}])
    assert store.health()["ok"] and SegmentStore(blocker, "reader", clock=clock).read_new() == [{"t": "x", "n": 1}]


def test_flush_cost_for_many_active_keys_is_measured() -> None:
    """The numbers in docs/OPERATIONS.md: producing the records of 1,000 and 10,000 active keys, and
    writing them (JSON lines, fsync). Bounded in seconds, not a timing assertion."""
    for keys in (1_000, 10_000):
        clock = Clock()
        usage = Usage(SETTINGS, clock=clock)
        for n in range(keys):
            usage.observe(_record(team=f"team{n % 50}", label=f"dev{n}", upstream_seconds=0.1), 0.2)
        started = time.perf_counter()
        records = usage.produce()
        produced = time.perf_counter() - started
        assert len(records) == keys
        print(f"flush of {keys} keys: produce {produced * 1000:.1f} ms")
        assert produced < 10.0


def test_retention_days_is_checked_with_its_range(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text('[store]\nretention_days = 2\n\n[[entries]]\nname = "small"\nmodel = "TabbyML/StarCoder-1B"\n')
    try:
        load_settings(config)
    except SettingsError as error:
        assert any("store.retention_days" in problem and "3" in problem for problem in error.problems), error.problems
    else:
        raise AssertionError("retention_days = 2 must be refused")
    config.write_text(config.read_text().replace("= 2", "= 30"))
    assert load_settings(config).store.retention_days == 30
