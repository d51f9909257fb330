"""The status page: what the fleet runs and what each team used today, as one HTML page (``GET /fleet/status``).

:func:`status_tables` turns a ``/fleet/usage`` snapshot and the ``/fleet/health`` answer into rows of
text: the one place that decides what is shown and how a number reads. :func:`render_status` puts
them into a page that refreshes itself, with inline CSS, no script and nothing fetched from
elsewhere, every value HTML-escaped; ``fleet status`` (apps/status_cmd.py) prints the same rows as
text. Pure functions: the route gathers the data, these only format it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from fleet.hub import HUB_BACKEND
from fleet.settings import FleetSettings
from router.status_charts import chart_section

REFRESH_SECONDS = 15
NO_TEAM = "-"  # the snapshot's name for requests that named no team


@dataclass(frozen=True)
class Table:
    """One table of the status: its title, column names, rows of text, and what to say when empty."""

    key: str  # a stable name, for the page's element ids
    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    empty: str
    numeric: frozenset[int] = frozenset()  # columns of numbers (right-aligned)


def status_facts(snapshot: Mapping[str, Any], health: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The header: router version, runtime, uptime, now, the window the numbers cover and its cost."""
    since, until = snapshot.get("since", ""), snapshot.get("until", "")
    window = f"{_time(since, date=True)} to {_time(until)[:5]} UTC"
    covers = snapshot.get("covers_from")
    if covers and covers != since:
        window += f" (this router has data from {_time(covers, date=True)})"
    return [
        ("router", f"tabby-fleet {health.get('version', '?')}"),
        ("runtime", str(health.get("runtime", "?"))),
        ("uptime", duration(health.get("uptime_seconds"))),
        ("now", f"{_time(until, date=True)} UTC"),
        ("window", window),
        ("cost", total_cost(snapshot, health.get("entries", {}))),
    ]


def total_cost(snapshot: Mapping[str, Any], states: Mapping[str, Any] | None = None) -> str:
    """What the entries' GPU time in the window cost, naming the entries that ran without a known price and
    those whose cost is simulated (the local stand-in: no GPU ran, ``states`` are the entries' status)."""
    currency = snapshot.get("prices", {}).get("currency", "USD")
    entries: Mapping[str, Any] = snapshot.get("entries", {})
    unpriced = [name for name, entry in entries.items() if entry.get("cost") is None and entry.get("container_seconds")]
    standins = [name for name, entry in entries.items() if entry.get("cost") and simulated(states or {}, name)]
    total = money(sum(entry.get("cost") or 0.0 for entry in entries.values()), currency)
    if standins:
        total += f" ({SIMULATED}: {', '.join(standins)})"
    return f"{total} + unknown ({', '.join(unpriced)} unpriced)" if unpriced else total


def status_tables(
    snapshot: Mapping[str, Any],
    health: Mapping[str, Any],
    warm: Mapping[str, Sequence[str]] | None = None,
    models: Mapping[str, str] | None = None,
) -> list[Table]:
    """Entries, teams, refusals by code and recent refusals, as text.

    ``warm``: entry -> its warm schedules, shown in a column of the entries table (None: no such column).
    ``models``: entry -> its model; with it the entries table also shows model, GPU, in flight and queued.
    """
    currency = snapshot.get("prices", {}).get("currency", "USD")
    teams: Mapping[str, Any] = snapshot.get("teams", {})
    header: tuple[str, ...] = ("entry", "state", "containers", "cold starts", "requests", "p95", "cold waits",
                               "fallbacks", "GPU-seconds", "cost", "warm hours")  # fmt: skip
    states: Mapping[str, Any] = health.get("entries", {})
    hub = health.get("hub")
    if hub:  # the hub's row: its state from /fleet/health's hub, its requests from usage's "@hub"
        states = {**states, HUB_BACKEND: hub}
        models = None if models is None else {**models, HUB_BACKEND: f"the hub: {hub.get('kind', 'Tabby webserver')}"}
    entries = _entry_rows(snapshot.get("entries", {}), states, warm or {}, currency)
    if warm is None:
        header, entries = header[:-1], [row[:-1] for row in entries]
    numeric = frozenset(range(2, 10))
    if models is not None:  # model, GPU, in flight, queued after the state
        header = (*header[:2], "model", "GPU", "in flight", "queued", *header[2:])
        entries = [(*row[:2], *_entry_details(row[0], snapshot, states, models), *row[2:]) for row in entries]
        numeric = frozenset(range(4, 14))
    return [
        Table("entries", "Entries", header, entries, "no entries", numeric),
        Table(
            "teams", "Teams", ("team", "requests", "completions", "acceptance", "p95", "refusals", "cost"),
            _team_rows(teams, snapshot.get("entries", {}), currency), "no requests in this window",
            frozenset(range(1, 7)),
        ),
        *_developer_table(snapshot, currency),
        Table(
            "refusal-codes", "Refusals by code", ("code", "refusals", "teams"), _code_rows(teams),
            "no refusals in this window", frozenset({1}),
        ),
        Table(
            "recent-refusals", "Recent refusals", ("at (UTC)", "team", "entry", "status", "code"),
            [
                (_time(r.get("at", "")), _team(r.get("team") or NO_TEAM), r.get("entry") or "-",
                 str(r.get("status", "")), str(r.get("code", "")))
                for r in snapshot.get("refusals", [])
            ],
            "no refusals in this window", frozenset({3}),
        ),
    ]  # fmt: skip


STANDIN = "stand-in"  # LocalBackend.kind (and /fleet/health's entries' "backend") of the built-in stand-in
SIMULATED = "simulated: stand-in, no GPU"


def simulated(states: Mapping[str, Any], name: str) -> bool:
    """Whether the entry runs the local stand-in (no tabby binary, no GPU): its cost is what a GPU would cost."""
    return bool(states.get(name, {}).get("backend") == STANDIN)


def _entry_details(
    name: str, snapshot: Mapping[str, Any], states: Mapping[str, Any], models: Mapping[str, str]
) -> tuple[str, ...]:
    state = states.get(name, {})
    gpu = snapshot.get("entries", {}).get(name, {}).get("gpu") or "-"
    if simulated(states, name):
        gpu = f"{gpu} (stand-in: none used)"
    return (models.get(name, "-"), gpu, _count(state.get("in_flight")), _count(state.get("queued")))


def _entry_rows(
    used: Mapping[str, Any], states: Mapping[str, Any], warm: Mapping[str, Sequence[str]], currency: str
) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name in [*states, *(name for name in used if name not in states)]:
        usage = used.get(name, {})
        state = states.get(name, {}).get("state") or usage.get("state") or "?"
        rows.append(
            (
                name, state, _count(usage.get("containers")), _count(usage.get("cold_starts")),
                _count(usage.get("requests")), milliseconds(_p95(usage)), _count(usage.get("cold_waits")),
                _count(usage.get("fallbacks")), _count(usage.get("gpu_seconds")),
                _entry_cost(usage, currency, simulated(states, name)), "; ".join(warm.get(name, ())) or "-",
            )
        )  # fmt: skip
    return rows


def _entry_cost(usage: Mapping[str, Any], currency: str, standin: bool) -> str:
    if not usage:
        return "-"
    cost = money(usage.get("cost"), currency)
    return f"{cost} ({SIMULATED})" if standin and usage.get("cost") is not None else cost


def _team_rows(teams: Mapping[str, Any], entries: Mapping[str, Any], currency: str) -> list[tuple[str, ...]]:
    """Each team's use and share of the cost; then the cost of entries no team used (warm, idle), so the
    column adds up to the entries' cost."""
    rows: list[tuple[str, ...]] = [
        (
            _team(name), _count(team.get("requests")), _count(team.get("completions")),
            percent(team.get("acceptance_rate")), milliseconds(_p95(team)),
            _count(sum((team.get("refusals") or {}).values())),
            _team_cost(team, currency),
        )
        for name, team in sorted(teams.items(), key=lambda item: (item[0] == NO_TEAM, item[0]))
    ]  # fmt: skip
    idle = sum(entry.get("unattributed_cost") or 0.0 for entry in entries.values())
    if idle:
        rows.append(("(unused entries)", "-", "-", "-", "-", "-", money(idle, currency)))
    return rows


def _developer_table(snapshot: Mapping[str, Any], currency: str) -> list[Table]:
    """Per developer (team and token label; "-": no token), when the snapshot has them (``by=token``)."""
    if "tokens" not in snapshot:
        return []
    rows: list[tuple[str, ...]] = [
        (
            _team(row.get("team") or NO_TEAM), str(row.get("label") or "-"), _count(row.get("requests")),
            _count(row.get("completions")), percent(row.get("acceptance_rate")),
            milliseconds((row.get("latency_ms") or {}).get("p50")), milliseconds(_p95(row)),
            _count(row.get("busy_seconds")), money(row.get("cost"), currency),
        )
        for row in snapshot["tokens"]
    ]  # fmt: skip
    header = ("team", "token", "requests", "completions", "acceptance", "p50", "p95", "busy seconds", "cost")
    return [Table("developers", "Developers", header, rows, "no requests in this window", frozenset(range(2, 9)))]


def store_banner(health: Mapping[str, Any]) -> str | None:
    """The warning the page shows when the router cannot keep its usage (None when it can)."""
    store = health.get("store")
    if not store or store.get("ok", True):
        return None
    pending = store.get("pending_records", 0)
    return (
        f"The usage store is failing: {store.get('error') or 'unknown error'}. Completions are still served; usage "
        f"is counted in memory ({pending} records waiting) and written once the store works again. Fix the "
        f"store's path ({store.get('path')}): it must be a writable directory with free space."
    )


def _code_rows(teams: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Refusals by error code, most frequent first, with the teams that got them."""
    by_code: dict[str, list[tuple[str, int]]] = {}
    for name, team in teams.items():
        for code, count in (team.get("refusals") or {}).items():
            by_code.setdefault(code, []).append((_team(name), int(count)))
    totals = {code: sum(n for _, n in counts) for code, counts in by_code.items()}
    return [
        (code, str(totals[code]), ", ".join(f"{team} {n}" for team, n in sorted(by_code[code])))
        for code in sorted(by_code, key=lambda code: (-totals[code], code))
    ]


def price_note(snapshot: Mapping[str, Any]) -> str:
    """Where the costs come from: the price table's currency, date and source."""
    prices = snapshot.get("prices", {})
    return (
        f"Costs: GPU time only, in {prices.get('currency', 'USD')} at the prices of {prices.get('date', '?')} "
        f"({prices.get('source', 'no source given')}); 'unknown' where an entry's GPU has no price ([prices] in "
        f"the settings). Cold waits: requests that waited for their entry to start."
    )


WINDOWS = (("1h", "1 h"), ("today", "today"), ("24h", "24 h"), ("7d", "7 d"))  # the page's window links


def window_links(since: str, team: str | None = None) -> str:
    """The links to the other windows (the current one marked), keeping the page's other parameters."""
    links = []
    for value, text in WINDOWS:
        query = urlencode({"since": value, **({"team": team} if team is not None else {})})
        current = ' aria-current="page" class="current"' if value == since else ""
        links.append(f'<a href="?{_e(query)}"{current}>{_e(text)}</a>')
    shown = "" if not since or since in dict(WINDOWS) else f' <span class="current">since={_e(since)}</span>'
    return f'<nav class="windows" aria-label="window">window: {" ".join(links)}{shown}</nav>'


def render_status(
    snapshot: Mapping[str, Any],
    health: Mapping[str, Any],
    settings: FleetSettings,
    series: Mapping[str, Any] | None = None,
    *,
    since: str = "today",
    team: str | None = None,
) -> str:
    """The whole status page for a usage ``snapshot`` and the ``health`` answer (``/fleet/health``'s shape,
    its entries with the runtime's status); ``series`` (usage_report.series) adds the charts; ``since`` and
    ``team`` are the page's query, kept in its window links."""
    warm = {entry.name: [str(window) for window in entry.warm] for entry in settings.entries}
    models = {entry.name: entry.model for entry in settings.entries}
    facts = "".join(
        f"<div><dt>{_e(label)}</dt><dd>{_e(value)}</dd></div>" for label, value in status_facts(snapshot, health)
    )
    if team is not None:
        facts += f"<div><dt>team</dt><dd>{_e(team)}</dd></div>"
    sections = "".join(_html_table(table) for table in status_tables(snapshot, health, warm, models))
    if series is not None:
        states = health.get("entries", {})
        standin = any(simulated(states, name) for name in snapshot.get("entries", {}))
        currency = snapshot.get("prices", {}).get("currency", "USD")
        sections = chart_section(series, currency, standin) + sections
    banner = store_banner(health)
    if banner is not None:
        sections = f'<p class="banner" role="alert">{_e(banner)}</p>' + sections
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>tabby-fleet status</title><style>{_CSS}</style></head>\n"
        f'<body><header><h1>tabby-fleet status</h1><dl class="facts">{facts}</dl>{window_links(since, team)}'
        "</header>\n"
        f"<main>{sections}</main>\n"
        f"<footer><p>{_e(price_note(snapshot))}</p>"
        f"<p>This page refreshes itself every {REFRESH_SECONDS} s. The same numbers as JSON: "
        f"<code>/fleet/usage?since={_e(quote(since))}</code>; in a terminal: <code>fleet status</code>.</p></footer>"
        "</body></html>\n"
    )


def render_refusal(status: int, code: str, message: str) -> str:
    """A small page for a refusal (the browser shows it; a 401 also makes it ask for a login; a 400, a bad
    query, links to the windows the page takes)."""
    login = (
        "<p>Log in with any user name and an admin token as the password "
        "(<code>fleet token new --admin --label NAME --write</code> makes one).</p>"
        if status == 401
        else ""
    )
    if status == 400:
        login = window_links("")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>tabby-fleet status: refused</title>'
        f"<style>{_CSS}</style></head><body><h1>{status} {_e(code)}</h1><p>{_e(message)}</p>{login}</body></html>\n"
    )


# -- how values read --------------------------------------------------------------------------------


def money(value: float | None, currency: str) -> str:
    """A cost with its currency; "unknown" when it cannot be priced."""
    if value is None:
        return "unknown"
    return f"{value:,.2f} {currency}" if value >= 1 or value == 0 else f"{value:.4f} {currency}"


def milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def duration(seconds: float | None) -> str:
    """3725 -> "1h 02m"; 75 -> "1m 15s"."""
    if seconds is None:
        return "?"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _count(value: float | int | None) -> str:
    return "-" if value is None else f"{round(value):,}"


def _team_cost(team: Mapping[str, Any], currency: str) -> str:
    """A team's share of the cost; "-" when it used no entry's time (its requests were all refused, or none)."""
    if team.get("cost") is None and not team.get("busy_seconds"):
        return "-"
    return money(team.get("cost"), currency)


def _team(name: str) -> str:
    return "(no team)" if name == NO_TEAM else name


def _p95(usage: Mapping[str, Any]) -> float | None:
    return (usage.get("latency_ms") or {}).get("p95")


def _time(iso: str, *, date: bool = False) -> str:
    """An ISO time from the snapshot as "HH:MM:SS" (with the date: "YYYY-MM-DD HH:MM"), in UTC as sent."""
    try:
        moment = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return str(iso) or "?"
    return moment.strftime("%Y-%m-%d %H:%M") if date else moment.strftime("%H:%M:%S")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _html_table(table: Table) -> str:
    head = "".join(
        f"<th{' class=num' if i in table.numeric else ''}>{_e(name)}</th>" for i, name in enumerate(table.header)
    )
    if not table.rows:
        body = f'<tr><td class="empty" colspan="{len(table.header)}">{_e(table.empty)}</td></tr>'
    else:
        body = "".join(_html_row(table, row) for row in table.rows)
    return (
        f'<section id="{_e(table.key)}"><h2>{_e(table.title)}</h2>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>\n"
    )


def _html_row(table: Table, row: tuple[str, ...]) -> str:
    cells = []
    for i, value in enumerate(row):
        classes = ["num"] if i in table.numeric else []
        if table.key == "entries" and i == 1:
            classes += ["state", f"state-{value}"]
        attr = f' class="{_e(" ".join(classes))}"' if classes else ""
        cells.append(f"<td{attr}>{_e(value)}</td>")
    return f'<tr data-{_e(table.key)}="{_e(row[0])}">{"".join(cells)}</tr>'


_CSS = (
    "body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1f2328;background:#fff}"
    "h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:24px 0 8px}"
    ".banner{background:#fff1e5;border:1px solid #d4a72c;padding:8px 12px;margin:12px 0}"
    ".facts{display:flex;flex-wrap:wrap;gap:4px 24px;margin:0}.facts div{display:flex;gap:6px}"
    ".facts dt{color:#656d76}.facts dd{margin:0;font-weight:600}"
    # Headers wrap and a wide table scrolls inside its section: the page fits a 1280 px window.
    "section{overflow-x:auto}table{border-collapse:collapse;min-width:50%}th,td{padding:4px 8px;"
    "border-bottom:1px solid #d0d7de;text-align:left;white-space:nowrap}th{background:#f6f8fa;font-weight:600;"
    "white-space:normal;vertical-align:bottom}.num{text-align:right;"
    "font-variant-numeric:tabular-nums}.empty{color:#656d76;font-style:italic}"
    ".state{font-weight:600}.state-ready{color:#1a7f37}.state-starting{color:#9a6700}"
    ".state-failed{color:#cf222e}.state-cold{color:#656d76}"
    ".windows{margin:8px 0 0}.windows a{margin:0 4px;padding:1px 6px;border:1px solid #d0d7de;border-radius:4px;"
    "color:#0969da;text-decoration:none}.windows .current{background:#0969da;color:#fff;font-weight:600}"
    ".charts{display:flex;flex-wrap:wrap;gap:8px 16px}.charts figure{margin:0}"
    ".chart{font-size:11px;background:#fff}.chart .plot{fill:#f6f8fa;stroke:#d0d7de}"
    ".chart-title{font-weight:600;font-size:12px}.chart .axis,.chart-empty{fill:#656d76}"
    ".note{color:#656d76;font-size:12px}"
    "footer{margin-top:24px;color:#656d76;font-size:12px}code{font-size:12px}"
)
