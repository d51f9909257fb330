"""The JSON of ``GET /fleet/usage`` from :class:`router.usage.Usage`'s buckets, and its query parameters.

:func:`snapshot` sums the buckets since a time (the schema is in docs/OPERATIONS.md, "Usage and cost"): per
entry (containers, GPU-seconds, cost), per team (a team's share of an entry's cost is its share of that
entry's busy seconds) and, with ``by=token``, per developer (team and token label). ``since``, ``by`` and
``team`` are read here, each bad value a 400 with advice.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from fleet.errors import FleetError
from router.usage import BUCKET_SECONDS, LATENCY_STEPS, Pricing, Usage, latency_bound_ms
from router.usage_records import Cell, EntryCell, Key

BY = ("team", "token")  # /fleet/usage?by=: the default rows per team; "token" adds a row per developer


def snapshot(
    usage: Usage,
    since: datetime,
    status: dict[str, dict[str, Any]] | None = None,
    *,
    by: str = "team",
    team: str | None = None,
) -> dict[str, Any]:
    """The JSON of ``GET /fleet/usage`` from ``since`` until now; ``status`` (``Backends.status()``, read
    now) brings the container time up to now and gives each entry's state. ``by="token"`` adds "tokens",
    a row per (team, token label); ``team`` keeps that team's rows only (the entries stay whole)."""
    status = status or {}
    usage.sample(status)
    usage.roll_to_now()
    now = usage.now()
    asked = since.timestamp()
    covers_from = usage.covers_from(asked)
    cells, entry_cells = usage.window(covers_from)
    entries, costs = _entries(usage, cells, entry_cells, status)
    teams = _teams(usage, cells, costs)
    result: dict[str, Any] = {
        "since": _iso(asked),
        "until": _iso(now),
        "covers_from": _iso(covers_from),
        "bucket_seconds": BUCKET_SECONDS,
        "prices": dict(usage.prices),
        "entries": entries,
        "teams": teams if team is None else {name: row for name, row in teams.items() if name == team},
        "refusals": [
            {"at": _iso(r.at), "team": r.team, "label": r.label, "entry": r.entry, "status": r.status, "code": r.code}
            for r in reversed(usage.recent)
            if r.at >= asked and (team is None or r.team == team)
        ],
    }
    if by == "token":
        result["tokens"] = _tokens(cells, costs, team)
    return result


def window_cost(cell: EntryCell, pricing: Pricing | None) -> float | None:
    """What the time cost; None when some of it ran without a price (or none ran and there is none)."""
    if cell.unpriced_seconds or (not cell.container_seconds and (pricing is None or pricing.hourly is None)):
        return None
    return cell.cost


def _tokens(
    cells: dict[Key, Cell], costs: dict[str, tuple[float | None, float]], team: str | None
) -> list[dict[str, Any]]:
    """A row per developer (team and token label; "-" for requests without a token), busiest first."""
    per_token: dict[tuple[str, str], Cell] = {}
    shares: dict[tuple[str, str], list[float]] = {}
    for (team_name, label, entry), cell in cells.items():
        if _idle(cell) or (team is not None and team_name != team):
            continue
        key = (team_name, label)
        (per_token.get(key) or per_token.setdefault(key, Cell())).add(cell)
        share = _share(*costs.get(entry, (None, 0.0)), cell.busy_seconds) if entry != "-" else None
        if share is not None:
            shares.setdefault(key, []).append(share)
    rows: list[dict[str, Any]] = []
    for (team_name, label), cell in sorted(per_token.items(), key=lambda item: (-item[1].busy_seconds, item[0])):
        token_shares = shares.get((team_name, label))
        rows.append({
            "team": team_name, "label": label, "requests": cell.requests, "completions": cell.completions,
            "views": cell.views, "selects": cell.selects,
            "acceptance_rate": round(cell.selects / cell.views, 4) if cell.views else None,
            "latency_ms": _percentiles(cell.latency), "busy_seconds": round(cell.busy_seconds, 3),
            "cost": _round_cost(sum(token_shares)) if token_shares else None,
        })  # fmt: skip
    return rows


# The width of a chart's point: the smallest of these that keeps a window within MAX_POINTS points.
SLOT_SECONDS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_POINTS = 120


def slot_seconds(span: float, max_points: int = MAX_POINTS) -> int:
    """The slot width for a window of ``span`` seconds: at most ``max_points`` slots, epoch-aligned ones."""
    for width in SLOT_SECONDS:
        if span / width <= max_points - 1:  # aligning the first slot down can add one
            return width
    return 86400 * math.ceil(span / 86400 / (max_points - 1))


def series(usage: Usage, since: datetime, team: str | None = None) -> dict[str, Any]:
    """Per slot of the window (the buckets summed into at most MAX_POINTS slots): each team's and entry's
    requests, p95 latency (ms, None without completions) and cost; for the status page's charts.

    The window starts where the data does (``covers_from``); a team's cost in a slot is its share of each
    entry's busy seconds there, as in the snapshot. An hour bucket counts in the slot its hour starts in.
    ``team`` keeps that team's series (the entries stay whole). Read only: call after :func:`snapshot`."""
    now = usage.now()
    start = usage.covers_from(since.timestamp())
    width = slot_seconds(now - start)
    first = int(start // width)
    count = int(now // width) - first + 1
    used: list[dict[Key, Cell]] = [{} for _ in range(count)]
    ran: list[dict[str, EntryCell]] = [{} for _ in range(count)]
    for bucket in usage.buckets(start):
        slot = min(max(int(bucket.start // width) - first, 0), count - 1)
        for key, cell in bucket.cells.items():
            (used[slot].get(key) or used[slot].setdefault(key, Cell())).add(cell)
        for name, entry_cell in bucket.entry_cells():
            (ran[slot].get(name) or ran[slot].setdefault(name, EntryCell())).add(entry_cell)
    teams: dict[str, dict[str, list[Any]]] = {}
    entries: dict[str, dict[str, list[Any]]] = {name: _empty_series(count) for name in usage.entries}
    for slot in range(count):
        per_entry: dict[str, Cell] = {}
        per_team: dict[str, Cell] = {}
        for (_, _, entry), cell in used[slot].items():
            if entry != "-":
                (per_entry.get(entry) or per_entry.setdefault(entry, Cell())).add(cell)
        for name in {*per_entry, *ran[slot]}:
            cell = per_entry.get(name, Cell())
            row = entries.get(name) or entries.setdefault(name, _empty_series(count))
            row["requests"][slot] = cell.requests
            row["p95_ms"][slot] = _p95_of(cell.latency)
            row["cost"][slot] = round(ran[slot][name].cost, 6) if name in ran[slot] else 0.0
        team_cost: dict[str, float] = {}
        for (team_name, _, entry), cell in used[slot].items():
            if _idle(cell) or (team is not None and team_name != team):
                continue
            (per_team.get(team_name) or per_team.setdefault(team_name, Cell())).add(cell)
            busy = per_entry[entry].busy_seconds if entry in per_entry else 0.0
            entry_cost = ran[slot][entry].cost if entry in ran[slot] else None
            share = _share(entry_cost, busy, cell.busy_seconds) if entry != "-" else None
            team_cost[team_name] = team_cost.get(team_name, 0.0) + (share or 0.0)
        for name, cell in per_team.items():
            row = teams.get(name) or teams.setdefault(name, _empty_series(count))
            row["requests"][slot] = cell.requests
            row["p95_ms"][slot] = _p95_of(cell.latency)
            row["cost"][slot] = round(team_cost.get(name, 0.0), 6)
    return {
        "slot_seconds": width,
        "starts": [(first + slot) * width for slot in range(count)],
        "teams": dict(sorted(teams.items())),
        "entries": entries,
    }


def _empty_series(count: int) -> dict[str, list[Any]]:
    return {"requests": [0] * count, "p95_ms": [None] * count, "cost": [0.0] * count}


def _p95_of(histogram: dict[int, int]) -> float | None:
    value = percentile(histogram, 0.95)
    return None if value is None else round(value, 1)


def parse_by(text: str) -> str:
    """``by`` of /fleet/usage; FleetError 400 bad-by naming the choices."""
    if text not in BY:
        raise FleetError(400, "bad-by", f"by={_shown(text)} is not a way to group usage; use one of: {', '.join(BY)}")
    return text


def check_team(usage: Usage, team: str | None) -> str | None:
    """``team`` of /fleet/usage: a team of the settings, or one the history holds (a team a reload removed);
    FleetError 400 unknown-team naming the teams."""
    if team is None or team in usage.teams or usage.has_team(team):
        return team
    teams = ", ".join(usage.teams) or "none are configured"
    raise FleetError(400, "unknown-team", f"team={_shown(team)} is not a team of this fleet; teams: {teams}")


def _entries(
    usage: Usage, cells: dict[Key, Cell], entry_cells: dict[str, EntryCell], status: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[float | None, float]]]:
    """The entries' rows, and each entry's (cost, busy seconds) for the teams' shares."""
    by_entry: dict[str, Cell] = {name: Cell() for name in usage.entries}
    for (_, _, entry), cell in cells.items():
        if entry != "-":
            (by_entry.get(entry) or by_entry.setdefault(entry, Cell())).add(cell)
    for name in entry_cells:  # an entry a reload removed still ran (and cost) in the window
        by_entry.setdefault(name, Cell())
    entries = {}
    costs = {}
    for name, cell in by_entry.items():
        pricing = usage.pricing.get(name)
        containers_cell = entry_cells.get(name) or EntryCell()
        state = status.get(name, {})
        seconds = containers_cell.container_seconds
        cost = window_cost(containers_cell, pricing)
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


def _teams(usage: Usage, cells: dict[Key, Cell], costs: dict[str, tuple[float | None, float]]) -> dict[str, Any]:
    per_team: dict[str, dict[str, Cell]] = {team: {} for team in usage.teams}
    for (team, _, entry), cell in cells.items():
        if not _idle(cell):  # e.g. only health checks: nothing to report
            by_entry = per_team.setdefault(team, {})
            (by_entry.get(entry) or by_entry.setdefault(entry, Cell())).add(cell)
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
