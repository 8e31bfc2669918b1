"""Line charts as inline SVG, drawn on the server: no chart library, no front-end build.

A chart is a fixed-size viewBox scaled by CSS; series are polylines broken where a bucket has no
value (no traffic is not zero latency); bounds are dashed horizontal rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

W, H = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 24, 22

Point = tuple[float, float | None]


@dataclass(frozen=True)
class Line:
    label: str
    points: Sequence[Point]
    css: str  # a class of the page's stylesheet, which owns the colours
    step: bool = False  # hold each value until the next point (weights), else straight segments


@dataclass(frozen=True)
class Rule:
    label: str
    value: float
    css: str


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def _segments(line: Line, t1: float) -> list[list[tuple[float, float]]]:
    """Runs of consecutive points with a value; a step line holds its last value until t1."""
    runs: list[list[tuple[float, float]]] = [[]]
    for i, (t, v) in enumerate(line.points):
        if v is None:
            if runs[-1]:
                runs.append([])
            continue
        if line.step and runs[-1]:
            runs[-1].append((t, runs[-1][-1][1]))
        runs[-1].append((t, v))
        if line.step and i == len(line.points) - 1:
            runs[-1].append((t1, v))
    return [r for r in runs if r]


def line_chart(
    title: str,
    lines: Sequence[Line],
    t0: float,
    t1: float,
    rules: Sequence[Rule] = (),
    fmt: Callable[[float], str] = lambda v: f"{v:.3g}",
    y_max: float | None = None,
) -> Markup:
    """An SVG chart of `lines` over [t0, t1], the y axis from 0 to y_max (else the data's top)."""
    values = [v for line in lines for _, v in line.points if v is not None]
    top = y_max if y_max is not None else max([*values, *(r.value for r in rules), 0.0]) * 1.15
    top = top or 1.0
    span = max(t1 - t0, 1e-9)

    def x(t: float) -> float:
        return LEFT + (min(max(t, t0), t1) - t0) / span * (W - LEFT - RIGHT)

    def y(v: float) -> float:
        return TOP + (1 - min(v, top) / top) * (H - TOP - BOTTOM)

    out = [
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text class="chart-title" x="{LEFT}" y="14">{escape(title)}</text>',
    ]
    for frac in (0.0, 0.5, 1.0):
        yy = y(top * frac)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(
            f'<text class="axis" x="{LEFT - 4}" y="{yy + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(top * frac))}</text>"
        )
    out.append(f'<text class="axis" x="{LEFT}" y="{H - 6}">{_clock(t0)}</text>')
    out.append(
        f'<text class="axis" x="{W - RIGHT}" y="{H - 6}" text-anchor="end">{_clock(t1)}</text>'
    )
    for rule in rules:
        yy = y(rule.value)
        out.append(
            f'<line class="rule {rule.css}" x1="{LEFT}" x2="{W - RIGHT}" '
            f'y1="{yy:.1f}" y2="{yy:.1f}"><title>{escape(rule.label)}</title></line>'
        )
    legend_x = W - RIGHT
    for line in reversed(lines):
        for run in _segments(line, t1):
            if len(run) == 1:  # a lone bucket between gaps: a dot, or it would not show
                ((t, v),) = run
                out.append(f'<circle class="{line.css}" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2"/>')
            else:
                pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
                out.append(f'<polyline class="{line.css}" points="{pts}"/>')
        out.append(
            f'<text class="legend {line.css}" x="{legend_x}" y="14" '
            f'text-anchor="end">{escape(line.label)}</text>'
        )
        legend_x -= 8 * len(line.label) + 16
    if not values:
        out.append(
            f'<text class="axis empty" x="{W / 2}" y="{H / 2}" text-anchor="middle">'
            "no data in this period</text>"
        )
    out.append("</svg>")
    return Markup("".join(out))
