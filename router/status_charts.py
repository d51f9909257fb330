"""The status page's charts: requests, p95 latency and cost over the window, per team and per entry.

:func:`chart_section` turns router/usage_report.py's :func:`series` (per slot of the window) into the
page's "Over the window" section of inline SVG line charts (router/charts.py draws them). Pure.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from router.charts import Series, line_chart

NO_TEAM = "-"  # the snapshot's name for requests that named no team


def chart_section(series: Mapping[str, Any], currency: str, simulated: bool = False) -> str:
    """Six charts (teams and entries; requests, p95, cost) as one HTML section; ``simulated``: some cost is
    a stand-in's (no GPU), and the cost charts' titles say "(simulated)"."""
    starts: list[float] = [float(start) for start in series.get("starts", [])]
    width = int(series.get("slot_seconds", 60))
    x_text = _x_text(starts)
    cost_note = " (simulated)" if simulated else ""  # the tables say why: a stand-in, no GPU
    charts = []
    for group, title in (("teams", "Teams"), ("entries", "Entries")):
        rows: Mapping[str, Any] = series.get(group, {})
        for metric, what, y_text in (
            ("requests", f"requests per {_width(width)}", _number),
            ("p95_ms", "p95 latency of completions", _ms),
            ("cost", f"cost per {_width(width)}, {currency}{cost_note}", _money),
        ):
            lines: list[Series] = [
                (_name(group, name), list(zip(starts, row.get(metric, []), strict=False))) for name, row in rows.items()
            ]
            charts.append(line_chart(f"{group}-{metric}", f"{title}: {what}", lines, x_text=x_text, y_text=y_text))
    figures = "".join(f"<figure>{chart}</figure>" for chart in charts)
    return (
        '<section id="charts"><h2>Over the window</h2>'
        f'<div class="charts">{figures}</div>'
        f'<p class="note">{html.escape(_slot_note(width))}</p></section>\n'
    )


def _name(group: str, name: str) -> str:
    return "(no team)" if group == "teams" and name == NO_TEAM else name


def _x_text(starts: list[float]) -> Callable[[float], str]:
    """Times as HH:MM UTC, with the date when the window spans more than a day."""
    long = bool(starts) and starts[-1] - starts[0] > 86400
    fmt = "%m-%d %H:%M" if long else "%H:%M"
    return lambda x: datetime.fromtimestamp(x, UTC).strftime(fmt)


def _width(seconds: int) -> str:
    if seconds % 86400 == 0:
        return "day" if seconds == 86400 else f"{seconds // 86400} days"
    if seconds % 3600 == 0:
        return "hour" if seconds == 3600 else f"{seconds // 3600} h"
    return "minute" if seconds == 60 else f"{seconds // 60} min"


def _slot_note(width: int) -> str:
    return (
        f"Each point is {_one(_width(width))} (UTC, from where this router has data); a gap in a latency line: no "
        f"completions then. The tables below have the exact numbers."
    )


def _one(width: str) -> str:
    return width if width[0].isdigit() else f"one {width}"


def _number(value: float) -> str:
    return f"{value:,.0f}"


def _ms(value: float) -> str:
    return f"{value:,.0f} ms"


def _money(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:.4f}"
