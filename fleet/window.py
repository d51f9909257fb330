"""The weekly window: on some days, from a start to an end in a timezone; whether an instant is inside.

A window is written::

    {days = "mon-fri", start = "08:00", end = "19:00", timezone = "Europe/Berlin", min_containers = 1}

``days`` are 3-letter English day names, lists and ranges ("mon-fri", "sat,sun", "mon,wed-fri"),
or "daily" ("*"); ``start`` and ``end`` are 24-hour "HH:MM" in the window's own IANA ``timezone``
(``end = "24:00"`` is the end of the day). An ``end`` before ``start`` runs past midnight: "22:00" to
"06:00" on "fri" is Friday 22:00 to Saturday 06:00 (the days name the day a window starts).
What the fleet keeps warm in its windows is :mod:`fleet.warm`.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from difflib import get_close_matches
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()
EVERY_DAY = ("daily", "*")
MINUTES_PER_DAY = 24 * 60
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
_EXAMPLE = 'e.g. {days = "mon-fri", start = "08:00", end = "19:00", timezone = "Europe/Berlin", min_containers = 1}'


class WarmWindow(BaseModel):
    """One schedule: on ``days``, from ``start`` to ``end`` in ``timezone``, keep ``min_containers`` up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    days: str
    start: str
    end: str
    timezone: str
    min_containers: int = 1

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    near = get_close_matches(str(key), list(cls.model_fields), n=1)
                    hint = f"did you mean {near[0]!r}?" if near else "remove it"
                    raise ValueError(
                        f"unknown field {key!r} in a warm window; {hint} A window has days, start, end, timezone "
                        f"and min_containers, {_EXAMPLE}"
                    )
        return data

    @field_validator("days")
    @classmethod
    def _days(cls, value: str) -> str:
        text = "".join(value.split()).lower()
        if text in EVERY_DAY:
            return "daily"
        for part in text.split(","):
            for name in part.split("-", 1) if part else [""]:
                if name not in DAY_NAMES:
                    raise ValueError(_day_advice(value, name))
        return text

    @field_validator("start", "end")
    @classmethod
    def _clock_time(cls, value: str, info: Any) -> str:
        match = _TIME.match(value.strip())
        hours, minutes = (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
        if (hours, minutes) == (24, 0) and info.field_name == "end":
            return "24:00"
        if not (0 <= hours <= 23 and 0 <= minutes <= 59):
            midnight = ' (a window from midnight starts at "00:00"; "24:00" is only an end)' if hours == 24 else ""
            raise ValueError(
                f'{info.field_name} = "{value}" is not a time of day; write 24-hour "HH:MM", e.g. "08:00" or '
                f'"19:30"{midnight}'
            )
        return f"{hours:02d}:{minutes:02d}"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            zones = available_timezones()
            by_lower = {zone.lower(): zone for zone in zones}
            near = [by_lower[value.lower()]] if value.lower() in by_lower else get_close_matches(value, zones, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ValueError(
                f"unknown timezone {value!r}; {hint}use an IANA name such as 'Europe/Berlin', "
                f"'America/New_York' or 'UTC' (the Region/City names of the tz database)"
            ) from None
        return value

    @field_validator("min_containers")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(
                f"min_containers of a warm window must be at least 1 (got {value}): a window keeps containers "
                f"running; to let the entry scale to zero in those hours, remove the window"
            )
        return value

    @model_validator(mode="after")
    def _has_length(self) -> WarmWindow:
        if self.start == self.end:
            raise ValueError(
                f'end equals start ("{self.start}"), so the window has no length; for the whole day write '
                f'start = "00:00", end = "24:00" (an end before the start runs past midnight)'
            )
        return self

    @property
    def weekdays(self) -> frozenset[int]:
        """The days a window starts on, as ``datetime.weekday()`` numbers (Monday is 0)."""
        if self.days == "daily":
            return frozenset(range(7))
        found: set[int] = set()
        for part in self.days.split(","):
            first, _, last = part.partition("-")
            low, high = DAY_NAMES.index(first), DAY_NAMES.index(last or first)
            found.update(day % 7 for day in range(low, high + (7 if high < low else 0) + 1))  # "fri-mon" wraps
        return frozenset(found)

    @property
    def overnight(self) -> bool:
        """True when the window ends the day after it starts (an end before its start)."""
        return self.end < self.start

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def start_minute(self) -> int:
        """Minutes from local midnight to the window's start."""
        return _minute(self.start)

    @property
    def minutes(self) -> int:
        """The window's length in minutes (wall-clock: a DST change on the day is not counted)."""
        length = _minute(self.end) - _minute(self.start)
        return length + MINUTES_PER_DAY if length < 0 else length

    def interval(self, day: date) -> tuple[datetime, datetime]:
        """The window that starts on local ``day``, as [start, end) in UTC."""
        zone = self.zone
        start = datetime.combine(day, _time(self.start), zone)
        end_day = day + timedelta(days=1) if self.overnight or self.end == "24:00" else day
        end = datetime.combine(end_day, _time(self.end), zone)
        return start.astimezone(UTC), end.astimezone(UTC)

    def active(self, when: datetime, lead: timedelta = timedelta(0)) -> bool:
        """True when ``when`` (timezone-aware) is in the window, or at most ``lead`` before it starts."""
        if when.tzinfo is None:
            raise ValueError("when must be timezone-aware, e.g. datetime.now(UTC)")
        local_day = when.astimezone(self.zone).date()
        for offset in (-1, 0, 1):  # yesterday's overnight window; tomorrow's, within the lead
            day = local_day + timedelta(days=offset)
            if day.weekday() in self.weekdays:
                start, end = self.interval(day)
                if start - lead <= when < end:
                    return True
        return False

    def __str__(self) -> str:
        end = f"{self.end} next day" if self.overnight else self.end
        plural = "" if self.min_containers == 1 else "s"
        return f"{self.days} {self.start}-{end} {self.timezone}: {self.min_containers} container{plural}"


def window_problems(windows: tuple[WarmWindow, ...], max_containers: int, url: object) -> list[str]:
    """What an entry's windows may not do: ask for more than its max_containers, or warm an external url."""
    problems = []
    if windows and url is not None:
        problems.append(
            f"warm: the entry has a url, so the fleet starts nothing for it and nothing can be kept warm; "
            f"remove warm (or the url). First window: {windows[0]}"
        )
    for window in windows:
        if window.min_containers > max_containers:
            problems.append(
                f"warm: the window {window} asks for {window.min_containers} containers but max_containers is "
                f"{max_containers}; raise max_containers or lower the window's min_containers"
            )
    return problems


def _minute(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def _time(clock: str) -> time:
    if clock == "24:00":
        return time(0, 0)
    hours, minutes = clock.split(":")
    return time(int(hours), int(minutes))


def _day_advice(value: str, name: str) -> str:
    near = [name[:3]] if name[:3] in DAY_NAMES else get_close_matches(name, DAY_NAMES, n=1, cutoff=0.5)
    hint = f" (did you mean {near[0]!r}?)" if near and name else ""
    shown = f"unknown day {name!r}" if name else "an empty day name"
    return (
        f'days = "{value}": {shown}{hint}; use 3-letter English day names, lists and ranges: "mon-fri", '
        f'"sat,sun", "mon,wed-fri", or "daily"'
    )
