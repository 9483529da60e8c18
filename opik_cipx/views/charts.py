"""Server-rendered inline SVG charts and the bucket colours, for the dashboard.

No script, font or stylesheet from anywhere: every chart is markup the page carries, each
mark has a `<title>` (the browser shows it on hover) and a legend names every colour. Charts
keep a minimum width and scroll sideways on a phone rather than shrink their text; a chart of
many columns has a phone form instead (`stacked_rows`: one row per column, newest at the
bottom), which the page shows below 700 px (`CSS`).
"""

import html
import math
from collections.abc import Callable

from opik_cipx.materialize.attribution import BUCKETS

# One colour per bucket, picked to be told apart (and `unattributed` the only red).
PALETTE = {
    "system_prompt": "#1f77b4", "tools_builtin": "#ff7f0e", "tools_mcp": "#9467bd", "skills": "#2ca02c",
    "memory": "#e6b800", "agents": "#e377c2", "user_prompt": "#17becf", "slash_command": "#8c564b",
    "tool_io": "#7fb3e8", "prior_assistant": "#bcbd22", "compaction": "#f7b267", "system_reminder": "#b5a3cf",
    "envelope": "#b0b0b0", "unattributed": "#d62728", "output": "#2f2f6f", "web_search": "#74c476",
}
SERIES = (*BUCKETS, "output", "web_search")
assert set(PALETTE) == set(SERIES), "every bucket needs a colour"

Format = Callable[[float], str]
# The page's stylesheet gives charts their font and minimum width (they scroll on a phone), and
# shows one of a pair (`only-wide`, `only-narrow`) by the screen's width.
CSS = (".chart{margin:0;overflow-x:auto}.chart svg{min-width:760px;max-width:1000px;width:100%;height:auto;"
       "font:13px system-ui,sans-serif}.chart.rows svg{min-width:0;max-width:560px;font-size:12px}"
       ".only-narrow{display:none}@media (max-width:700px){.only-wide{display:none}.only-narrow{display:block}}"
       "svg.share{width:100%;height:22px;display:block}"
       "svg.meter{width:80px;height:8px}.legend span{display:inline-block;margin:2px 10px 2px 0;white-space:nowrap}"
       ".sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:baseline}")


def tint(colour: str, keep: float = 0.35) -> str:
    """`colour` mixed with white (`keep` of the colour): a background text stays readable on."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(255 - (255 - c) * keep):02x}" for c in (r, g, b))


def nice_ceiling(value: float) -> float:
    """The top of an axis with four gridlines at round values: four times 1, 1.5, 2, 2.5, 3,
    4, 5, 6 or 8 x 10^k, the smallest that reaches `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value / 4))
    steps = (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)
    return next(4 * step * power for step in steps if 4 * step * power >= value * (1 - 1e-12))


def compact(value: float) -> str:
    """12, 1.2k, 3.4M: for axis labels."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def usd_axis(value: float) -> str:
    """Dollars with the decimals a small value needs: $1.50, $0.080, $0.000025."""
    if value == 0 or abs(value) >= 0.1:
        return f"${value:,.2f}"
    return f"${value:.{1 - math.floor(math.log10(abs(value)))}f}"


def _svg(width: int, height: int, label: str, body: list[str], kind: str = "chart") -> str:
    return (
        f"<figure class='{kind}'><svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' "
        f"role=img aria-label='{html.escape(label, quote=True)}'>" + "".join(body) + "</svg></figure>"
    )


def legend(series: list[str], colours: dict[str, str] = PALETTE) -> str:
    items = "".join(
        f"<span><i class=sw style='background:{colours[name]}'></i>{html.escape(name)}</span>" for name in series)
    return f"<p class=legend>{items}</p>"


def stacked_bars(columns: list[tuple[str, dict[str, float]]], series: list[str], *, label: str,
                 fmt: Format = usd_axis, colours: dict[str, str] = PALETTE, width: int = 900,
                 height: int = 260) -> str:
    """One bar per column, stacked bottom-up in `series` order, a y axis in `fmt` units."""
    left, right, top, bottom = 64, 8, 10, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = nice_ceiling(max((sum(v.values()) for _, v in columns), default=0.0))
    body = []
    for i in range(5):
        value = peak * i / 4
        y = top + plot_h - plot_h * i / 4
        body.append(f"<line x1={left} x2={width - right} y1={y:.1f} y2={y:.1f} stroke='#e5e7eb'/>")
        body.append(f"<text x={left - 6} y={y + 4:.1f} text-anchor=end fill='#4b5563'>{html.escape(fmt(value))}</text>")
    slot = plot_w / max(1, len(columns))
    every = max(1, math.ceil(len(columns) / 10))
    for n, (name, values) in enumerate(columns):
        x = left + n * slot + slot * 0.15
        y = top + plot_h
        for part in series:
            value = values.get(part, 0.0)
            if value <= 0:
                continue
            h = plot_h * value / peak
            y -= h
            body.append(
                f"<rect class=bar x={x:.1f} y={y:.1f} width={slot * 0.7:.1f} height={h:.2f} fill='{colours[part]}'>"
                f"<title>{html.escape(f'{name} {part}: {fmt(value)}')}</title></rect>")
        total = sum(values.values())
        if total > 0:
            body.append(f"<rect x={x:.1f} y={top:.1f} width={slot * 0.7:.1f} height={y - top:.1f} fill='transparent'>"
                        f"<title>{html.escape(f'{name} total: {fmt(total)}')}</title></rect>")
        if n % every == 0 or n == len(columns) - 1:
            body.append(f"<text x={x + slot * 0.35:.1f} y={height - 8} text-anchor=middle fill='#4b5563'>"
                        f"{html.escape(name)}</text>")
    body.append(f"<line x1={left} x2={width - right} y1={top + plot_h} y2={top + plot_h} stroke='#9ca3af'/>")
    return _svg(width, height, label, body)


def stacked_rows(rows: list[tuple[str, dict[str, float]]], series: list[str], *, label: str,
                 fmt: Format = usd_axis, colours: dict[str, str] = PALETTE, width: int = 380,
                 row_height: int = 18) -> str:
    """`stacked_bars` turned sideways for a phone: one row per column (its name, its bar stacked
    left to right in `series` order, its total), in the order given."""
    left, right, top = 44, 58, 4
    plot_w = width - left - right
    peak = max((sum(v.values()) for _, v in rows), default=0.0) or 1.0
    body = []
    for n, (name, values) in enumerate(rows):
        y = top + n * row_height
        body.append(f"<text x={left - 6} y={y + row_height - 5} text-anchor=end fill='#4b5563'>"
                    f"{html.escape(name)}</text>")
        x = float(left)
        for part in series:
            value = values.get(part, 0.0)
            if value <= 0:
                continue
            w = plot_w * value / peak
            body.append(f"<rect class=bar x={x:.1f} y={y + 3} width={w:.2f} height={row_height - 6} "
                        f"fill='{colours[part]}'><title>{html.escape(f'{name} {part}: {fmt(value)}')}</title></rect>")
            x += w
        total = sum(values.values())
        if total > 0:
            body.append(f"<text x={x + 4:.1f} y={y + row_height - 5} fill='#111'>{html.escape(fmt(total))}</text>")
    body.append(f"<line x1={left} x2={left} y1={top} y2={top + len(rows) * row_height} stroke='#9ca3af'/>")
    return _svg(width, top * 2 + len(rows) * row_height, label, body, "chart rows")


def line_chart(count: int, lines: list[tuple[str, str, dict[int, float], str, Format]], *, label: str,
               width: int = 900, height: int = 260) -> str:
    """Points 1..`count` on x; each line is (name, colour, {x: y}, "left" | "right" axis, its
    format): the first line's axis is on the left, the second's on the right."""
    left, right, top, bottom = 64, 64, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    body = []
    peaks = {side: nice_ceiling(max((max(points.values(), default=0.0) for _, _, points, s, _ in lines
                                     if s == side), default=0.0)) for side in ("left", "right")}
    formats = {side: fmt for _, _, _, side, fmt in lines}
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        body.append(f"<line x1={left} x2={width - right} y1={y:.1f} y2={y:.1f} stroke='#e5e7eb'/>")
        for side, tick_x, anchor in (("left", left - 6, "end"), ("right", width - right + 6, "start")):
            if side in formats:
                colour = next(c for _, c, _, s, _ in lines if s == side)
                body.append(f"<text x={tick_x} y={y + 4:.1f} text-anchor={anchor} fill='{colour}'>"
                            f"{html.escape(formats[side](peaks[side] * i / 4))}</text>")

    def xy(n: int, value: float, side: str) -> tuple[float, float]:
        x = left + (plot_w * (n - 1) / (count - 1) if count > 1 else plot_w / 2)
        return x, top + plot_h - plot_h * value / peaks[side]

    for name, colour, points, side, fmt in lines:
        coords = [xy(n, v, side) for n, v in sorted(points.items())]
        if len(coords) > 1:
            body.append(f"<polyline class=line fill=none stroke='{colour}' stroke-width=2 points='"
                        + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + "'/>")
        if count <= 150:
            for (n, v), (x, y) in zip(sorted(points.items()), coords, strict=True):
                body.append(f"<circle cx={x:.1f} cy={y:.1f} r=3 fill='{colour}'>"
                            f"<title>{html.escape(f'call {n}: {name} {fmt(v)}')}</title></circle>")
    every = max(1, math.ceil(count / 12))
    for n in range(1, count + 1):
        if n % every == 0 or n == 1:
            x, _ = xy(n, 0, "left" if "left" in peaks else "right")
            body.append(f"<text x={x:.1f} y={height - 8} text-anchor=middle fill='#4b5563'>{n}</text>")
    body.append(f"<line x1={left} x2={width - right} y1={top + plot_h} y2={top + plot_h} stroke='#9ca3af'/>")
    return _svg(width, height, label, body)


def share_bar(parts: list[tuple[str, float]], *, label: str, fmt: Format, colours: dict[str, str] = PALETTE) -> str:
    """One horizontal bar split into `parts` in proportion (a whole: 100%)."""
    total = sum(v for _, v in parts if v > 0)
    body, x = [], 0.0
    for name, value in parts:
        if value <= 0 or total <= 0:
            continue
        w = 1000 * value / total
        body.append(f"<rect x={x:.2f} y=0 width={w:.2f} height=22 fill='{colours[name]}'>"
                    f"<title>{html.escape(f'{name}: {fmt(value)} ({value / total:.1%})')}</title></rect>")
        x += w
    return (f"<svg class=share xmlns='http://www.w3.org/2000/svg' viewBox='0 0 1000 22' preserveAspectRatio=none "
            f"role=img aria-label='{html.escape(label, quote=True)}'>{''.join(body)}</svg>")


def meter(value: float, peak: float, colour: str = "#1f77b4") -> str:
    """A small bar: `value` against `peak` (for top-N tables)."""
    w = 100 * value / peak if peak > 0 else 0
    return (f"<svg class=meter xmlns='http://www.w3.org/2000/svg' viewBox='0 0 100 8' preserveAspectRatio=none>"
            f"<rect width={w:.1f} height=8 fill='{colour}'/></svg>")
