"""Line charts as inline SVG text, for the status page: no script, nothing fetched, a fixed size.

The ``<svg>`` is for inline use in HTML (the HTML parser gives it the SVG namespace, so it names none: the
page holds no URL at all).

:func:`line_chart` turns named series of (time, value) points into one ``<svg>`` element: a line per
series (a gap where a value is None, a dot for a lone point), the time axis' first and last labels, the
value axis from 0 to the largest value, and a legend. Every text (title, names, labels) is XML-escaped,
so a team named ``<script>`` is text in the picture, never markup. Pure: text in, text out.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

WIDTH = 380  # the plot's outer size in px, without the legend
HEIGHT = 170
LEGEND_ROW = 16  # px per legend line
MAX_SERIES = 8  # more are summarized as "+N more" in the legend (the busiest are drawn)
PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bc4c00", "#1b7c83", "#6e7781")
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 24, 22  # the plot area's margins

Point = tuple[float, float | None]
Series = tuple[str, Sequence[Point]]


def line_chart(
    key: str,
    title: str,
    series: Sequence[Series],
    *,
    x_text: Callable[[float], str],
    y_text: Callable[[float], str],
    empty: str = "nothing in this window",
) -> str:
    """One chart: ``series`` are (name, [(x, y or None), ...]); ``x_text`` and ``y_text`` write an axis value."""
    shown = sorted(series, key=lambda s: -sum(y or 0.0 for _, y in s[1]))[:MAX_SERIES]
    shown = [s for s in series if s in shown]  # the busiest, in the order given (stable colours)
    hidden = len(series) - len(shown)
    legend_rows = max(1, len(shown)) + (1 if hidden else 0)
    height = HEIGHT + LEGEND_ROW * legend_rows + 4
    xs = [x for _, points in shown for x, _ in points]
    ys = [y for _, points in shown for _, y in points if y is not None]
    parts = [
        f'<svg class="chart" id="chart-{_e(key)}" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f'<text x="{_LEFT}" y="15" class="chart-title">{_e(title)}</text>',
    ]
    left, right, top, bottom = _LEFT, WIDTH - _RIGHT, _TOP, HEIGHT - _BOTTOM
    parts.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" class="plot"/>')
    if not xs or not any(ys):
        parts.append(f'<text x="{(left + right) // 2}" y="{(top + bottom) // 2}" class="chart-empty" '
                     f'text-anchor="middle">{_e(empty)}</text>')  # fmt: skip
    else:
        x0, x1 = min(xs), max(xs)
        top_value = max(ys)

        def px(x: float) -> float:
            return left + (right - left) * ((x - x0) / (x1 - x0) if x1 > x0 else 0.5)

        def py(y: float) -> float:
            return bottom - (bottom - top) * (y / top_value)

        parts += [
            f'<text x="{left - 4}" y="{top + 4}" class="axis" text-anchor="end">{_e(y_text(top_value))}</text>',
            f'<text x="{left - 4}" y="{bottom}" class="axis" text-anchor="end">{_e(y_text(0.0))}</text>',
            f'<text x="{left}" y="{bottom + 14}" class="axis">{_e(x_text(x0))}</text>',
            f'<text x="{right}" y="{bottom + 14}" class="axis" text-anchor="end">{_e(x_text(x1))}</text>',
        ]
        for index, (_, points) in enumerate(shown):
            colour = PALETTE[index % len(PALETTE)]
            for run in _runs(points):
                if len(run) == 1:
                    x, y = run[0]
                    parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>')
                else:
                    path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
                    parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    for index, (name, _) in enumerate(shown):
        y = HEIGHT + LEGEND_ROW * index + 8
        colour = PALETTE[index % len(PALETTE)]
        parts.append(f'<rect x="{_LEFT}" y="{y - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{_LEFT + 16}" y="{y + 1}" class="legend">{_e(name)}</text>')
    if hidden:
        y = HEIGHT + LEGEND_ROW * len(shown) + 8
        parts.append(f'<text x="{_LEFT}" y="{y + 1}" class="legend">+{hidden} more (the tables list them)</text>')
    parts.append("</svg>")
    return "".join(parts)


def _runs(points: Sequence[Point]) -> list[list[tuple[float, float]]]:
    """The points split where a value is None: each run is drawn as one line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [run for run in runs if run]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
