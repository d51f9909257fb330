"""The counts of usage (``Cell``, ``EntryCell``) and their form in the store: records, and a closed day's
records folded into hours.

One record per key and minute with counts since the last flush (a *delta*: summing every record of a key
gives its total, whichever router wrote it and however often it flushed)::

    {"t": "usage", "m": 29983680, "team": "alpha", "label": "ana", "entry": "small",
     "requests": 3, "completions": 2, "busy_seconds": 0.41, "latency_seconds": 0.43,
     "latency": {"-40": 1, "-38": 1}, "refusals": {"team-rate-limited": 1}}
    {"t": "usage-entry", "m": 29983680, "entry": "small", "container_seconds": 60.0, "cost": 0.0133, ...}

Except the containers every router sees (Modal's: each router container samples the same GPU containers), whose
records are *totals*: the writer's container time, cost and cold starts of that minute so far, rewritten at
each flush that changed them. A reader keeps the largest per minute, entry and field (:meth:`EntryCell.raise_to`),
so N routers sampling the same containers count them once, and a router restarted within the minute (a new
writer, its total from 0) adds nothing the other's view had. A writer's total only grows, so the largest of
all records is each writer's latest, at its largest: the records need no writer id::

    {"t": "usage-shared", "m": 29983680, "entry": "small", "container_seconds": 58.0, "cost": 0.0128, ...}

``m`` is the minute (unix seconds // 60); ``s``, when present, the minutes the record spans (60: an hour,
after compaction). Counts that are zero are left out, so a record is as small as what happened.
:func:`fold_hourly` sums a closed day's records per hour and key, in a deterministic order with rounded
floats, so two routers compacting the same day write the same bytes (router/store.py). Shared totals are first
resolved (the largest per minute and entry), then summed into the hour's "usage-entry" record, except a UTC
day's last minute: its final total is flushed after midnight, into the next day's folder, so both days keep
that minute as a "usage-shared" record and a reader takes the larger, not the sum of two day files.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Key = tuple[str, str, str]  # (team, token label, entry)
USAGE = "usage"
USAGE_ENTRY = "usage-entry"
USAGE_SHARED = "usage-shared"  # a writer's running total of the minute, of containers every router sees
KINDS = (USAGE, USAGE_ENTRY, USAGE_SHARED)
DAY_MINUTES = 1440

_COUNTS = ("requests", "completions", "chats", "views", "selects", "dismisses", "cold_waits", "fallbacks")
_SECONDS = ("busy_seconds", "latency_seconds")
_MAPS = ("latency", "refusals", "served_by")
_ENTRY_FIELDS = ("container_seconds", "cold_starts", "cost", "unpriced_seconds", "gpu_seconds")
# Compacted sums are rounded to a microsecond (and a millionth of a dollar): deterministic bytes whatever the
# summing order's last bits, and finer than any figure the snapshot shows (3 decimals, cost 6).
_DIGITS = 6


class Cell:
    """One (team, token label, entry)'s counts in one bucket (or summed over many)."""

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

    def raise_to(self, other: EntryCell) -> EntryCell:
        """Each field to the larger of this and ``other`` (two views of the same containers); the increase."""
        increase = EntryCell()
        for name in _ENTRY_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs > mine:
                setattr(increase, name, theirs - mine)
                setattr(self, name, theirs)
        return increase

    def copy(self) -> EntryCell:
        copy = EntryCell()
        copy.add(self)
        return copy


def cell_record(minute: int, key: Key, cell: Cell, span: int = 1) -> dict[str, Any]:
    record: dict[str, Any] = {"t": USAGE, "m": minute, "team": key[0], "label": key[1], "entry": key[2]}
    if span != 1:
        record["s"] = span
    for name in _COUNTS + _SECONDS:
        value = getattr(cell, name)
        if value:
            record[name] = value
    if cell.latency:
        record["latency"] = {str(index): count for index, count in cell.latency.items()}
    if cell.refusals:
        record["refusals"] = dict(cell.refusals)
    if cell.served_by:
        record["served_by"] = dict(cell.served_by)
    return record


def entry_record(minute: int, entry: str, cell: EntryCell, span: int = 1, kind: str = USAGE_ENTRY) -> dict[str, Any]:
    """A "usage-entry" record (a delta), or with ``kind`` USAGE_SHARED a writer's total of the minute."""
    record: dict[str, Any] = {"t": kind, "m": minute, "entry": entry}
    if span != 1:
        record["s"] = span
    for name in _ENTRY_FIELDS:
        value = getattr(cell, name)
        if value:
            record[name] = value
    return record


def cell_from(record: dict[str, Any]) -> Cell:
    """A Cell from a "usage" record (ValueError, TypeError or AttributeError when it is not one)."""
    cell = Cell()
    for name in _COUNTS:
        setattr(cell, name, _count(record.get(name, 0)))
    for name in _SECONDS:
        setattr(cell, name, _seconds(record.get(name, 0.0)))
    cell.latency = {int(index): _count(count) for index, count in record.get("latency", {}).items()}
    cell.refusals = {str(code): _count(count) for code, count in record.get("refusals", {}).items()}
    cell.served_by = {str(entry): _count(count) for entry, count in record.get("served_by", {}).items()}
    return cell


def entry_cell_from(record: dict[str, Any]) -> EntryCell:
    cell = EntryCell()
    cell.container_seconds = _seconds(record.get("container_seconds", 0.0))
    cell.cold_starts = _count(record.get("cold_starts", 0))
    cell.cost = _seconds(record.get("cost", 0.0))
    cell.unpriced_seconds = _seconds(record.get("unpriced_seconds", 0.0))
    cell.gpu_seconds = _seconds(record.get("gpu_seconds", 0.0))
    return cell


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != value:
        raise ValueError(f"not a number of seconds: {value!r}")
    return float(value)


def fold_hourly(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The "usage" and "usage-entry" records of a closed day, summed per hour and key, sorted by hour and key,
    floats rounded: the same output for the same records in the same order, whichever process folds them.
    A record of an unknown shape is left out (it was skipped by every reader too)."""
    cells: dict[tuple[int, str, str, str], Cell] = {}
    entries: dict[tuple[int, str], EntryCell] = {}
    shared: dict[tuple[int, str], EntryCell] = {}  # (minute, entry) -> the largest total of any writer
    for record in records:
        try:
            hour = int(record["m"]) // 60 * 60
            if record.get("t") == USAGE_SHARED:
                if int(record.get("s", 1)) != 1:
                    continue  # never written: totals are of one minute
                shared_key = (int(record["m"]), str(record["entry"]))
                (shared.get(shared_key) or shared.setdefault(shared_key, EntryCell())).raise_to(entry_cell_from(record))
            elif record.get("t") == USAGE_ENTRY:
                entry_key = (hour, str(record["entry"]))
                (entries.get(entry_key) or entries.setdefault(entry_key, EntryCell())).add(entry_cell_from(record))
            else:
                key = (hour, str(record["team"]), str(record.get("label", "-")), str(record["entry"]))
                (cells.get(key) or cells.setdefault(key, Cell())).add(cell_from(record))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    kept_shared = []
    for (minute, name), entry_cell in sorted(shared.items()):
        if minute % DAY_MINUTES == DAY_MINUTES - 1:  # also in the next day's folder: stays a total to take the max of
            kept_shared.append(_rounded(entry_record(minute, name, entry_cell, kind=USAGE_SHARED)))
        else:  # resolved: the fleet's figure of that minute, summed into its hour like any delta
            hour_key = (minute // 60 * 60, name)
            (entries.get(hour_key) or entries.setdefault(hour_key, EntryCell())).add(entry_cell)
    out = []
    for (hour, team, label, entry), cell in sorted(cells.items()):
        cell.busy_seconds = round(cell.busy_seconds, _DIGITS)
        cell.latency_seconds = round(cell.latency_seconds, _DIGITS)
        record = cell_record(hour, (team, label, entry), cell, 60)
        for name in _MAPS:
            if name in record:
                record[name] = dict(sorted(record[name].items()))
        out.append(record)
    for (hour, name), entry_cell in sorted(entries.items()):
        for field in ("container_seconds", "cost", "unpriced_seconds", "gpu_seconds"):
            setattr(entry_cell, field, round(getattr(entry_cell, field), _DIGITS))
        out.append(entry_record(hour, name, entry_cell, 60))
    return out + kept_shared


def _rounded(record: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, _DIGITS) if isinstance(value, float) else value for key, value in record.items()}
