"""Line charts as inline SVG, drawn on the server: the status page needs no front-end package and its
charts show without JavaScript. One function, `line_chart`, serves every chart on the page."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

WIDTH, HEIGHT = 480, 160
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 8, 20  # margins: the y labels on the left, the x labels below


@dataclass(frozen=True)
class Series:
    """One line: a label and its points (epoch seconds, value), in any order."""

    label: str
    points: Sequence[tuple[float, float]]


def _scale(low: float, high: float, start: int, end: int):
    span = high - low or 1.0
    return lambda v: start + (v - low) / span * (end - start)


def _label(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%d %b %H:%M")


def line_chart(title: str, series: Sequence[Series], unit: str) -> str:
    """A figure: `title`, an SVG line chart of `series` against time (its y axis from the lowest to the
    highest value, labelled with `unit`) and the series' legend. Every text is escaped."""
    points = [p for s in series for p in s.points]
    if not points:
        return f'<p class="empty">{escape(title)}: nothing in this period</p>'
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    v0, v1 = min(v for _, v in points), max(v for _, v in points)
    x = _scale(t0, t1, LEFT, WIDTH - RIGHT)
    y = _scale(v0, v1, HEIGHT - BOTTOM, TOP)
    parts = [f'<figure><figcaption>{escape(title)}</figcaption>'
             f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}"'
             f' aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<line class="axis" x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}"/>',
             f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{v1:g}</text>',
             f'<text x="{LEFT - 4}" y="{HEIGHT - BOTTOM}" text-anchor="end">{v0:g}</text>',
             f'<text x="{LEFT - 4}" y="{HEIGHT / 2}" text-anchor="end">{escape(unit)}</text>',
             f'<text x="{LEFT}" y="{HEIGHT - 4}">{_label(t0)}</text>',
             f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 4}" text-anchor="end">{_label(t1)}</text>']
    for index, line in enumerate(series):
        drawn = sorted(line.points)
        coordinates = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in drawn)
        parts.append(f'<g class="series s{index % 4}"><title>{escape(line.label)}</title>'
                     f'<polyline points="{coordinates}"/>'
                     + "".join(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2"/>' for t, v in drawn) + "</g>")
    legend = " ".join(f'<span class="key s{i % 4}">{escape(s.label)}</span>' for i, s in enumerate(series))
    return "".join(parts) + f'</svg><p class="legend">{legend}</p></figure>'
