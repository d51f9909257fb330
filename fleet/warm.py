"""Warm hours: how many containers each entry keeps running now, from its weekly windows, and for how long.

An entry's ``warm`` is a list of windows (:class:`fleet.window.WarmWindow`). Everything here is pure:
:func:`min_containers_at` says how many containers an entry keeps at a given instant (Modal's
scheduled function applies it with ``update_autoscaler``; the local runtime keeps the process
running), :func:`apply_warm_hours` is that scheduled function's body with the Modal call passed in,
and :func:`warm_hours_per_month` is what `fleet plan` prices.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fleet.settings import Entry, FleetSettings
from fleet.window import MINUTES_PER_DAY

# Containers take minutes to start (a 7B model on a cold GPU), and Modal's scheduled function runs
# every 5 minutes: a window counts from this long before its start, so its first minute finds them up.
WARM_LEAD = timedelta(minutes=5)
# Container-hours per month from hours per week: 365.25 days a year / 12 months / 7 days (4.348).
WEEKS_PER_MONTH = 365.25 / 12 / 7
# warm_hours_per_month places each timezone at its offset on this date: DST is ignored.
OFFSET_REFERENCE = datetime(2026, 1, 15, 12, tzinfo=UTC)
_MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY


def warm_containers_at(entry: Entry, when: datetime, lead: timedelta = WARM_LEAD) -> int:
    """The most containers any window of ``entry`` asks for at ``when`` (counted from ``lead`` before
    its start), or 0 outside every window."""
    return max((window.min_containers for window in entry.warm if window.active(when, lead)), default=0)


def min_containers_at(entry: Entry, when: datetime) -> int:
    """The containers ``entry`` keeps at ``when``: its static min_containers, or more during a window.

    A window counts from ``WARM_LEAD`` before its start (containers take minutes to start, and the
    scheduled function that applies this runs once per ``WARM_LEAD``) until its end.
    """
    return max(entry.min_containers, warm_containers_at(entry, when))


def apply_warm_hours(settings: FleetSettings, now: datetime, autoscale: Callable[[Entry, int], None]) -> dict[str, int]:
    """Set every deployed entry with warm windows to ``min_containers_at(entry, now)``; entries without
    windows are left alone. ``autoscale(entry, n)`` is Modal's ``update_autoscaler(min_containers=n)``
    on the entry's class. Every entry is tried; failures are raised together at the end.
    Returns what was set, by entry name.
    """
    applied: dict[str, int] = {}
    failed: list[str] = []
    for entry in settings.entries:
        if not entry.warm or entry.url is not None:
            continue
        wanted = min_containers_at(entry, now)
        try:
            autoscale(entry, wanted)
        except Exception as exc:  # one entry's failure must not keep the others cold
            failed.append(f"{entry.name} (min_containers={wanted}): {type(exc).__name__}: {exc}")
            continue
        applied[entry.name] = wanted
    if failed:
        raise RuntimeError(f"warm hours: set {applied}; could not set {'; '.join(failed)}")
    return applied


def warm_hours_per_month(entry: Entry) -> float:
    """Container-hours per month the windows add above the entry's static min_containers.

    A month is ``WEEKS_PER_MONTH`` weeks (365.25 / 12 / 7). Each window counts from ``WARM_LEAD``
    before its start, as on Modal; where windows overlap, the larger min_containers counts once. DST
    is ignored: each timezone sits at its offset of ``OFFSET_REFERENCE`` all year. The idle time after
    a window's end (up to ``scaledown_window``) is not counted.
    """
    lead = int(WARM_LEAD.total_seconds() // 60)
    level = [0] * _MINUTES_PER_WEEK  # containers asked for, per minute of a UTC week from Monday 00:00
    for window in entry.warm:
        offset = window.zone.utcoffset(OFFSET_REFERENCE)
        shift = int(offset.total_seconds() // 60) if offset is not None else 0
        for day in window.weekdays:
            first = day * MINUTES_PER_DAY + window.start_minute - shift - lead
            for minute in range(first, first + lead + window.minutes):
                slot = minute % _MINUTES_PER_WEEK
                level[slot] = max(level[slot], window.min_containers)
    extra_minutes = sum(max(0, containers - entry.min_containers) for containers in level)
    return extra_minutes / 60 * WEEKS_PER_MONTH


def warm_gpu_hours_per_month(entry: Entry) -> float:
    """GPU-hours per month the windows add: container-hours times the first-choice GPU's count."""
    return warm_hours_per_month(entry) * entry.gpu_count
