"""What keeping usage costs: flush time by active keys, store bytes per day, 90 days read back.

    python -m bench.usage_store

A simulated day: DEVELOPERS developers on one entry, each a completion every SECONDS_PER_REQUEST seconds for
HOURS hours, flushed every 2 s as the router does (router/state.py); then the day compacted to hours, copied
to 90 day folders, and read back by a new router (SegmentStore.read_new, Usage.consume). The numbers are in
docs/OPERATIONS.md, "Usage and cost".
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from fleet.settings import FleetSettings
from router.observe import RequestRecord
from router.store import COMPACTED, SegmentStore
from router.usage import Usage
from router.usage_records import USAGE, USAGE_ENTRY, fold_hourly

DEVELOPERS = 50
SECONDS_PER_REQUEST = 6  # a developer typing: a completion request every few seconds
HOURS = 8
T0 = 1_800_000_000.0
SETTINGS = FleetSettings.model_validate(
    {"entries": [{"name": "small", "model": "TabbyML/StarCoder-1B"}], "teams": [{"name": "alpha", "entry": "small"}]}
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _record(label: str) -> RequestRecord:
    record = RequestRecord("id", "POST", "/v1/completions")
    record.team, record.label, record.entry, record.kind, record.status = "alpha", label, "small", "completion", 200
    record.upstream_seconds = 0.2
    return record


def flush_cost(keys: int) -> float:
    usage = Usage(SETTINGS, clock=Clock())
    for n in range(keys):
        record = _record(f"dev{n}")
        record.team = f"team{n % 50}"
        usage.observe(record, 0.25)
    started = time.perf_counter()
    usage.produce()
    return time.perf_counter() - started


def main() -> None:
    for keys in (1_000, 10_000):
        print(f"flush of {keys:,} active (team, label, entry) keys: {flush_cost(keys) * 1000:.1f} ms")
    root = Path(tempfile.mkdtemp())
    try:
        clock = Clock()
        usage = Usage(SETTINGS, clock=clock)
        store = SegmentStore(root / "state", "router", clock=clock)
        requests = 0
        for tick in range(HOURS * 3600 // 2):  # one flush every 2 s
            for developer in range(DEVELOPERS):
                if (tick * 2 + developer) % SECONDS_PER_REQUEST < 2:
                    usage.observe(_record(f"dev{developer}"), 0.25)
                    requests += 1
            clock.now += 2
            store.append(usage.produce())
        (segment,) = (root / "state").rglob("*.jsonl")
        raw = segment.stat().st_size
        print(f"one day: {requests:,} completions from {DEVELOPERS} developers over {HOURS} h: segments {raw:,} bytes")
        clock.now += 3 * 86400
        store.maintain({USAGE: fold_hourly, USAGE_ENTRY: fold_hourly}, frozenset({USAGE, USAGE_ENTRY}), 90)
        (compacted,) = (root / "state").rglob(COMPACTED)
        print(f"compacted to hours: {compacted.stat().st_size:,} bytes")
        for day in range(1, 90):  # 90 such days
            folder = root / "state" / time.strftime("%Y-%m-%d", time.gmtime(T0 - day * 86400))
            folder.mkdir()
            shutil.copy(compacted, folder / COMPACTED)
        total = sum(p.stat().st_size for p in (root / "state").rglob("*"))
        started = time.perf_counter()
        reader = SegmentStore(root / "state", "reader", clock=clock)
        records = reader.read_new()
        read = time.perf_counter() - started
        later = Usage(SETTINGS, clock=clock)
        started = time.perf_counter()
        later.consume(records)
        consumed = time.perf_counter() - started
        print(f"90 compacted days: {total:,} bytes, {len(records):,} records; read {read:.2f} s, "
              f"into the history {consumed:.2f} s")  # fmt: skip
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
