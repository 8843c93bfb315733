"""Static SVG renders of dashboard panels, for wikis and runbooks that cannot run JavaScript.

``GET /api/v1/render/PANEL.svg?seconds=N`` draws one panel of the dashboard's catalogue
(``daemon/panels.json``, the same file the dashboard imports, so a panel means the same
thing in both places) from the daemon's in-memory history: a line chart, or stacked areas
where the panel stacks, with a y axis labelled by :func:`format_value` and a legend with
each series' latest value.

Instance names (process names, cgroup paths, mount points) are hostile input: every
string that reaches the SVG goes through :func:`_text`, which XML-escapes it and drops the
control characters XML 1.0 cannot carry.

Query parameters: ``seconds`` (default 300, at most 86400), ``width`` (200-2000, default
640), ``height`` (120-1200, default 260), ``theme`` (``light`` or ``dark``) and
``instance`` (comma-separated instance names to keep).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from hostscope.metrics.format import format_value
from hostscope.metrics.model import (
    BYTES,
    COUNT,
    SEC,
    UTILIZATION,
    MetricRegistry,
    Units,
    UnknownMetricError,
)

from .errors import ApiError, BadParameter
from .keys import SAMPLER

PANELS_FILE = Path(__file__).with_name("panels.json")
MAX_SECONDS = 86400.0
MAX_LINES = 24

_THEMES = {
    "light": {"bg": "#ffffff", "fg": "#1d2330", "muted": "#5d6573", "grid": "#e3e6ea"},
    "dark": {"bg": "#1a1e24", "fg": "#e3e6eb", "muted": "#9aa3b0", "grid": "#2c323b"},
}


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    metric: str
    label: str
    percent: bool = False


@dataclass(frozen=True, slots=True)
class Panel:
    id: str
    title: str
    kind: str
    stack: bool
    series: tuple[SeriesSpec, ...]


@dataclass(frozen=True, slots=True)
class Catalogue:
    panels: dict[str, Panel]
    palette: tuple[str, ...]
    #: The ids of the panels the dashboard shows by default, in order.
    default: tuple[str, ...] = ()


@dataclass(slots=True)
class Line:
    """One drawn series: values already in base units (bytes, seconds, 0..1)."""

    label: str
    times: list[float]
    values: list[float | None]
    units: Units


def load_catalogue(path: Path = PANELS_FILE) -> Catalogue:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    panels = {
        p["id"]: Panel(
            id=p["id"],
            title=p["title"],
            kind=p.get("kind", "timeseries"),
            stack=bool(p.get("stack", False)),
            series=tuple(
                SeriesSpec(s["metric"], s["label"], bool(s.get("percent", False)))
                for s in p["series"]
            ),
        )
        for p in data["panels"]
    }
    return Catalogue(panels, tuple(data["palette"]), tuple(data.get("default", ())))


def base_units(units: Units) -> Units:
    """Units of a value once multiplied by ``units.base_factor()`` (same kind, factor 1)."""
    kind = units.kind
    if kind == "utilization":
        return UTILIZATION
    if kind == "bytes":
        base = BYTES
    elif kind == "time":
        base = SEC
    else:
        base = COUNT
    return base.rate() if units.per_sec else base


def _text(value: str) -> str:
    """XML-escaped text without the control characters XML 1.0 forbids."""
    clean = "".join(ch for ch in value if ch >= " " or ch in "\t\n\r")
    return html.escape(clean, quote=True)


def lines_for(
    panel: Panel,
    registry: MetricRegistry,
    history: Any,
    seconds: float,
    *,
    instances: set[str] | None = None,
    now: float | None = None,
) -> list[Line]:
    """The panel's series from history, in base units, stacked when the panel stacks."""
    known = [s for s in panel.series if s.metric in registry]
    if not known or history is None:
        return []
    slices = history.query([s.metric for s in known], seconds, now=now)
    lines: list[Line] = []
    for spec in known:
        desc = registry.get(spec.metric)
        factor = 0.01 if spec.percent else desc.value_units.base_factor()
        units = UTILIZATION if spec.percent else base_units(desc.value_units)
        for piece in slices:
            for (metric, inst), values in sorted(piece.series.items(), key=_natural):
                if metric != spec.metric or (instances and inst not in instances):
                    continue
                label = spec.label.replace("{instance}", inst).strip() or metric
                scaled = [None if v is None else v * factor for v in values]
                lines.append(Line(label, list(piece.timestamps), scaled, units))
    lines = lines[:MAX_LINES]
    if panel.stack and len(lines) > 1:
        _stack(lines)
    return lines


def _natural(item: tuple[tuple[str, str], Any]) -> list[Any]:
    """Sort key putting cpu2 before cpu10 and "5 minute" before "15 minute"."""
    (metric, inst), _ = item
    digits = "".join(ch if ch.isdigit() else " " for ch in inst).split()
    return [metric, [int(d) for d in digits], inst]


def _stack(lines: list[Line]) -> None:
    """Cumulative sums in place (lines of one panel share their collector's timestamps)."""
    below: dict[float, float] = {}
    for line in lines:
        out: list[float | None] = []
        for t, v in zip(line.times, line.values, strict=True):
            acc = below.get(t)
            total = v if acc is None else (acc if v is None else acc + v)
            if total is not None:
                below[t] = total
            out.append(total)
        line.values = out


def _nice_step(span: float, target: int, binary: bool) -> float:
    raw = span / max(1, target)
    if raw <= 0:
        return 1.0
    if binary and raw >= 1:
        step = 2.0 ** math.ceil(math.log2(raw))
        return step
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def render_svg(
    panel: Panel,
    lines: Sequence[Line],
    *,
    palette: Sequence[str],
    seconds: float,
    now: float,
    width: int = 640,
    height: int = 260,
    theme: str = "light",
) -> str:
    """The SVG document for a panel (pure: no I/O, so it is tested directly)."""
    colors = _THEMES.get(theme, _THEMES["light"])
    left, right, top = 72, 12, 28
    legend_rows = math.ceil(len(lines) / 3) if lines else 0
    bottom = 26 + 16 * legend_rows
    plot_w = max(40, width - left - right)
    plot_h = max(30, height - top - bottom)
    t1 = now
    t0 = now - seconds
    units = lines[0].units if lines else COUNT
    finite = [v for ln in lines for v in ln.values if v is not None and math.isfinite(v)]
    hi = max(finite, default=0.0)
    lo = min(0.0, min(finite, default=0.0))
    # Utilisation axes end at 100 % unless something is busier (a process on 3 CPUs).
    if hi <= 0 or (units.kind == "utilization" and hi <= 1.0):
        hi = 1.0
    else:
        hi *= 1.05
    step = _nice_step(hi - lo, 4, units.kind == "bytes")
    hi = math.ceil(hi / step) * step

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return top + plot_h - (v - lo) / (hi - lo) * plot_h

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Verdana, sans-serif" '
        f'font-size="11" role="img" aria-label="{_text(panel.title)}">',
        f'<rect width="{width}" height="{height}" fill="{colors["bg"]}"/>',
        f'<text x="8" y="17" font-size="13" font-weight="bold" fill="{colors["fg"]}">'
        f"{_text(panel.title)}</text>",
        f'<text x="{width - 8}" y="17" text-anchor="end" fill="{colors["muted"]}">'
        f"last {_text(format_value(seconds, SEC))}</text>",
    ]
    tick = lo
    while tick <= hi + step / 1000:
        ty = y(tick)
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" '
            f'stroke="{colors["grid"]}"/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end" fill="{colors["muted"]}">'
            f"{_text(format_value(tick, units))}</text>"
        )
        tick += step
    for frac in (0.0, 0.5, 1.0):
        t = t0 + frac * seconds
        anchor = ("start", "middle", "end")[int(frac * 2)]
        label = time.strftime("%H:%M:%S", time.localtime(t))
        out.append(
            f'<text x="{x(t):.1f}" y="{top + plot_h + 14}" text-anchor="{anchor}" '
            f'fill="{colors["muted"]}">{label}</text>'
        )
    if not lines:
        out.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
            f'fill="{colors["muted"]}">no data for this panel on this host</text>'
        )
    # Stacked areas: top of the stack first, each filled to zero, lower ones paint over.
    order = list(enumerate(lines))
    if panel.stack:
        order.reverse()
    for i, line in order:
        color = palette[i % len(palette)]
        for seg in _segments(line, t0):
            pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in seg)
            if panel.stack:
                base = f"{x(seg[-1][0]):.1f},{y(0):.1f} {x(seg[0][0]):.1f},{y(0):.1f}"
                out.append(f'<polygon points="{pts} {base}" fill="{color}" fill-opacity="0.55"/>')
            out.append(
                f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>'
            )
    col_w = (width - 16) / 3
    for i, line in enumerate(lines):
        lx = 8 + (i % 3) * col_w
        ly = top + plot_h + 30 + 16 * (i // 3)
        latest = next((v for v in reversed(line.values) if v is not None), None)
        raw_latest = latest
        if panel.stack and latest is not None and i > 0:
            prev = next((v for v in reversed(lines[i - 1].values) if v is not None), None)
            raw_latest = latest - prev if prev is not None else latest
        color = palette[i % len(palette)]
        out.append(
            f'<rect x="{lx:.1f}" y="{ly - 9}" width="9" height="9" fill="{color}"/>'
            f'<text x="{lx + 13:.1f}" y="{ly}" fill="{colors["fg"]}">{_text(line.label)}: '
            f"{_text(format_value(raw_latest, line.units))}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _segments(line: Line, t0: float) -> list[list[tuple[float, float]]]:
    """Runs of consecutive values inside the window; a None breaks the line (a gap)."""
    segs: list[list[tuple[float, float]]] = []
    cur: list[tuple[float, float]] = []
    for t, v in zip(line.times, line.values, strict=True):
        if v is None or not math.isfinite(v) or t < t0:
            if cur:
                segs.append(cur)
            cur = []
            continue
        cur.append((t, v))
    if cur:
        segs.append(cur)
    return segs


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadParameter(f"'{name}' must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise BadParameter(f"'{name}' must be between {low} and {high}, got {value}")
    return value


def _seconds(request: web.Request) -> float:
    text = request.query.get("seconds", "300")
    try:
        value = float(text)
    except ValueError:
        raise BadParameter(f"'seconds' must be a number, got {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_SECONDS:
        raise BadParameter(f"'seconds' must be in (0, {MAX_SECONDS:g}], got {text}")
    return value


CATALOGUE = web.AppKey("render_catalogue", Catalogue)


async def render_handler(request: web.Request) -> web.Response:
    catalogue = request.app[CATALOGUE]
    panel_id = request.match_info["panel"]
    panel = catalogue.panels.get(panel_id)
    if panel is None:
        raise ApiError(404, "not_found", f"no panel {panel_id!r}; see daemon/panels.json")
    if panel.kind != "timeseries":
        raise ApiError(404, "not_found", f"panel {panel_id!r} has no static render")
    seconds = _seconds(request)
    width = _int_param(request, "width", 640, 200, 2000)
    height = _int_param(request, "height", 260, 120, 1200)
    theme = request.query.get("theme", "light")
    if theme not in _THEMES:
        raise BadParameter(f"'theme' must be light or dark, got {theme!r}")
    wanted = request.query.get("instance")
    instances = {i for i in wanted.split(",") if i} if wanted else None
    sampler = request.app[SAMPLER]
    now = sampler.latest_timestamp or sampler.clock.wall()
    try:
        lines = lines_for(
            panel, sampler.registry, sampler.history, seconds, instances=instances, now=now
        )
    except UnknownMetricError:
        lines = []
    svg = render_svg(
        panel, lines, palette=catalogue.palette, seconds=seconds, now=now,
        width=width, height=height, theme=theme,
    )
    return web.Response(
        text=svg,
        content_type="image/svg+xml",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def add_routes(app: web.Application) -> None:
    """Called by the daemon's app factory; reads the catalogue once, here, not at import."""
    app[CATALOGUE] = load_catalogue()
    app.router.add_get("/api/v1/render/{panel}.svg", render_handler)
