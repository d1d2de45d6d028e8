"""A run's stages as a small SVG chart: batch size, High share and items per second per stage.

Plain code, no plotting library: three panels over one stage axis, each a polyline with its
own scale. The same chart goes into the run's summary artifact (as a `data:` URI, which the
Prefect UI renders as an image) and into the file of `python -m flows report --plot FILE`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

WIDTH = 640
PANEL_HEIGHT = 90
PANEL_GAP = 26
LEFT = 56
RIGHT = 16
TOP = 44
BOTTOM = 34
"""Pixel geometry: the chart stays narrower than the UI's artifact column (about 690 px)."""


@dataclass(frozen=True)
class _Panel:
    title: str
    colour: str
    value: Callable[[dict[str, Any]], float]
    label: Callable[[float], str]
    top: float | None = None
    """The panel's fixed upper bound (1.0 for a share); else the largest value."""


_PANELS = (
    _Panel("Batch size (items)", "#2563eb", lambda row: float(row["batch_size"]), lambda v: f"{v:g}"),
    _Panel(
        "High share", "#16a34a", lambda row: float(row["high_confidence_rate"]), lambda v: f"{v:.2f}", top=1.0
    ),
    _Panel("Items per second", "#d97706", lambda row: _items_per_second(row), lambda v: f"{v:,.0f}"),
)


def _items_per_second(row: dict[str, Any]) -> float:
    seconds = float(row["seconds"])
    return row["items"] / seconds if seconds > 0 else 0.0


def stage_chart(rows: Sequence[dict[str, Any]], *, title: str = "Stages") -> str:
    """The SVG document of the chart of `rows` (as `flows.report.stage_rows` returns them).

    Example:
        >>> svg = stage_chart([{"stage": 1, "batch_size": 50, "items": 50,
        ...                     "high_confidence_rate": 0.94, "seconds": 0.5}])
        >>> svg.startswith("<svg") and "Batch size" in svg
        True
    """
    height = TOP + len(_PANELS) * (PANEL_HEIGHT + PANEL_GAP) - PANEL_GAP + BOTTOM
    plot_width = WIDTH - LEFT - RIGHT
    stages = [int(row["stage"]) for row in rows]

    def x(index: int) -> float:
        return LEFT + (plot_width * index / (len(rows) - 1) if len(rows) > 1 else plot_width / 2)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}: batch size, High share and items per second per stage</title>",
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>',
    ]
    for number, panel in enumerate(_PANELS):
        top = TOP + number * (PANEL_HEIGHT + PANEL_GAP)
        bottom = top + PANEL_HEIGHT
        values = [panel.value(row) for row in rows]
        upper = panel.top if panel.top is not None else max(values, default=0.0)
        upper = upper or 1.0

        def y(value: float, top: float = top, upper: float = upper) -> float:
            return top + PANEL_HEIGHT * (1 - min(value, upper) / upper)

        parts += [
            f'<text x="{LEFT}" y="{top - 4}" fill="{panel.colour}" font-weight="bold">{panel.title}</text>',
            f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" stroke="#9ca3af"/>',
            f'<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#9ca3af"/>',
            f'<line x1="{LEFT}" y1="{top}" x2="{WIDTH - RIGHT}" y2="{top}" stroke="#e5e7eb"/>',
            f'<text x="{LEFT - 4}" y="{top + 4}" text-anchor="end">{panel.label(upper)}</text>',
            f'<text x="{LEFT - 4}" y="{bottom}" text-anchor="end">0</text>',
        ]
        if values:
            points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
            parts.append(f'<polyline points="{points}" fill="none" stroke="{panel.colour}" stroke-width="2"/>')
            if len(values) <= 60:
                parts += [
                    f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{panel.colour}"/>'
                    for i, v in enumerate(values)
                ]
    axis = TOP + len(_PANELS) * (PANEL_HEIGHT + PANEL_GAP) - PANEL_GAP
    step = max(1, -(-len(stages) // 12))  # at most about 12 stage labels
    parts += [
        f'<text x="{x(i):.1f}" y="{axis + 14}" text-anchor="middle">{stage}</text>'
        for i, stage in enumerate(stages)
        if i % step == 0 or i == len(stages) - 1
    ]
    parts.append(f'<text x="{LEFT + plot_width / 2}" y="{axis + 28}" text-anchor="middle">stage</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def svg_data_uri(svg: str) -> str:
    """`svg` as a `data:image/svg+xml;base64,...` URI, which markdown and image artifacts show."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")
