#!/usr/bin/env python3
"""Draw the panels of ``deploy/grafana/herald.json`` from a Prometheus's data, as one PNG.

Grafana is not needed: every query of every panel runs through Prometheus's HTTP API
(``/api/v1/query_range``) with Grafana's variables filled in (``$__rate_interval`` from the
range and the scrape interval, every query variable set to its "All" value ``.*``), and
matplotlib draws the panels where the dashboard's grid puts them: time series as lines with
a legend table (last and max, as the dashboard asks), stat panels as the last value over a
sparkline, the state timeline as coloured bands.

From a running Prometheus that scrapes Herald::

    .venv/bin/python deploy/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 60

A real run from scratch (``make dashboard-png``, about four minutes): a webhook sink, ``herald
serve`` and ``prometheus`` (Debian's package, scraping every second), all on loopback, with
traffic that delivers, falls back, fails for good, opens and closes a circuit and retries on a
schedule; then the picture, then everything is stopped::

    .venv/bin/python deploy/render_dashboard.py --demo --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import yaml

matplotlib.use("Agg")

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DASHBOARD = ROOT / "deploy/grafana/herald.json"

# --- durations and times ------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "y": 31536000,
}


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration (``15s``, ``1m30s``, ``2h``)."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def format_duration(seconds: float) -> str:
    """A Prometheus duration for a whole number of seconds: ``15s``, ``2m``, ``1h30m``."""
    total = max(1, round(seconds))
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            out += f"{count}{unit}"
    return out


_NICE_STEPS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


def nice_seconds(seconds: float) -> float:
    """The largest of a few round durations that is at most ``seconds`` (at least 1 s)."""
    return max([s for s in _NICE_STEPS if s <= seconds] or [1])


def parse_time(text: str) -> float:
    """Unix seconds from a Unix timestamp or an ISO 8601 time (UTC when it names no zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# --- Prometheus ---------------------------------------------------------------------------------


class QueryError(Exception):
    pass


@dataclass
class Series:
    labels: dict[str, str]
    times: list[float]
    values: list[float]
    name: str = ""
    unit: str = ""


@dataclass
class Prometheus:
    url: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"}
        try:
            response = self.client.get(self.url + "/api/v1/query_range", params=params)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise QueryError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200 or body.get("status") != "success":
            raise QueryError(f"{response.status_code} {body.get('errorType')}: {body.get('error')}")
        series = []
        for item in body["data"]["result"]:
            times = [float(t) for t, _ in item["values"]]
            values = [float(v) for _, v in item["values"]]
            values = [v if math.isfinite(v) else math.nan for v in values]
            series.append(Series(dict(item["metric"]), times, values))
        return series

    def scrape_interval(self, default: float = 15.0) -> float:
        """The shortest scrape interval in Prometheus's loaded configuration."""
        try:
            loaded = self.client.get(self.url + "/api/v1/status/config").json()
            config = yaml.safe_load(loaded["data"]["yaml"]) or {}
        except (httpx.HTTPError, ValueError, KeyError, yaml.YAMLError):
            return default
        glob = config.get("global") or {}
        found = [str(glob["scrape_interval"])] if "scrape_interval" in glob else []
        found += [
            str(job["scrape_interval"])
            for job in config.get("scrape_configs") or []
            if "scrape_interval" in job
        ]
        seconds = []
        for text in found:
            with contextlib.suppress(ValueError):
                seconds.append(parse_duration(text))
        return min(seconds, default=default)


# --- the dashboard ------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def panels_in_grid_order(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included (and panels inside collapsed rows), top to bottom, left to
    right."""
    found: list[dict[str, Any]] = []
    for panel in board.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels") or [])
    return sorted(found, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))


def variable_values(
    board: dict[str, Any], rate_interval: str, interval: str, span: str
) -> dict[str, str]:
    """What each dashboard variable stands for here: "All" (``.*``) for query variables."""
    values = {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__range": span,
        "__range_s": str(round(parse_duration(span))),
    }
    for variable in board.get("templating", {}).get("list", []):
        name = variable["name"]
        kind = variable.get("type")
        if kind == "datasource":
            values[name] = "prometheus"
        elif kind in ("query", "custom") and variable.get("includeAll"):
            values[name] = variable.get("allValue") or ".*"
        else:
            current = variable.get("current", {}).get("value", "")
            values[name] = current[0] if isinstance(current, list) and current else str(current)
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with Grafana's variables replaced; an "All" value is matched with ``=~``."""
    for name, value in values.items():
        if value == ".*":
            expr = re.sub(
                rf'(\w+)\s*=\s*"(\$\{{{name}\}}|\${name}\b|\[\[{name}\]\])"', r'\1=~"\2"', expr
            )

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise QueryError(f"unknown dashboard variable ${name}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def series_name(series: Series, legend: str | None, varying: set[str]) -> str:
    """The legend of a series: the target's legendFormat, else its labels that vary."""
    if legend and legend != "__auto":
        return _LEGEND_LABEL.sub(lambda m: series.labels.get(m.group(1), ""), legend).strip()
    shown = {k: v for k, v in series.labels.items() if k != "__name__" and k in varying}
    if not shown:
        shown = {k: v for k, v in series.labels.items() if k != "__name__"}
    if not shown:
        return series.labels.get("__name__", "value")
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut in the middle (label sets end with the
    part that tells series apart as often as they start with it)."""
    if len(text) <= limit:
        return text
    head = max(1, (limit - 1) * 3 // 5)
    tail = max(0, limit - 1 - head)
    return text[:head] + "…" + (text[-tail:] if tail else "")


def unit_of(panel: dict[str, Any], name: str) -> str:
    """The unit of the series ``name``: a ``byName`` override, else the panel's default."""
    config = panel.get("fieldConfig") or {}
    unit = str((config.get("defaults") or {}).get("unit") or "")
    for override in config.get("overrides") or []:
        matcher = override.get("matcher") or {}
        if matcher.get("id") == "byName" and matcher.get("options") == name:
            for prop in override.get("properties") or []:
                if prop.get("id") == "unit":
                    unit = str(prop.get("value") or "")
    return unit


@dataclass
class PanelData:
    panel: dict[str, Any]
    series: list[Series]
    errors: list[str]
    queries: list[str]

    @property
    def title(self) -> str:
        return str(self.panel.get("title", ""))

    @property
    def has_data(self) -> bool:
        return any(any(math.isfinite(v) for v in s.values) for s in self.series)


def fetch(
    prometheus: Prometheus,
    panel: dict[str, Any],
    values: dict[str, str],
    start: float,
    end: float,
    step: float,
) -> PanelData:
    series: list[Series] = []
    errors: list[str] = []
    queries: list[str] = []
    for target in panel.get("targets") or []:
        if target.get("hide") or not target.get("expr"):
            continue
        try:
            expr = substitute(target["expr"], values)
            queries.append(expr)
            found = prometheus.query_range(expr, start, end, step)
        except QueryError as exc:
            errors.append(f"{target.get('refId', '?')}: {exc}")
            continue
        varying = {
            key
            for key in {k for s in found for k in s.labels}
            if len({s.labels.get(key) for s in found}) > 1
        }
        for item in found:
            item.name = series_name(item, target.get("legendFormat"), varying)
            item.unit = unit_of(panel, item.name)
        series.extend(found)
    return PanelData(panel, series, errors, queries)


# --- values and units ---------------------------------------------------------------------------


def _number(value: float, digits: int = 3) -> str:
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    if "e" in text:
        text = f"{value:.{digits - 1}f}" if abs(value) >= 1 else f"{value:.2e}"
    return text


def _short(value: float) -> str:
    for size, suffix in ((1e12, " T"), (1e9, " B"), (1e6, " Mil"), (1e3, " K")):
        if abs(value) >= size:
            return _number(value / size) + suffix
    return _number(value)


def format_value(value: float, unit: str) -> str:
    """A value as Grafana would show it for the simple units the dashboard uses."""
    if not math.isfinite(value):
        return "-"
    if unit == "percentunit":
        return _number(value * 100) + "%"
    if unit == "percent":
        return _number(value) + "%"
    if unit == "s":
        size = abs(value)
        if size == 0:
            return "0 s"
        if size < 0.001:
            return _number(value * 1e6) + " µs"
        if size < 1:
            return _number(value * 1000) + " ms"
        if size < 60:
            return _number(value) + " s"
        if size < 3600:
            return _number(value / 60) + " min"
        if size < 86400:
            return _number(value / 3600) + " hour"
        return _number(value / 86400) + " day"
    if unit == "ms":
        return format_value(value / 1000, "s")
    if unit in ("reqps", "rps"):
        return _number(value) + " req/s"
    if unit == "ops":
        return _number(value) + " ops/s"
    return _short(value)


def last_not_null(values: Sequence[float]) -> float:
    return next((v for v in reversed(values) if math.isfinite(v)), math.nan)


def max_of(values: Sequence[float]) -> float:
    return max((v for v in values if math.isfinite(v)), default=math.nan)


# --- drawing ------------------------------------------------------------------------------------

# Grafana's light theme and its classic palette.
BACKGROUND = "#f4f5f5"
PANEL = "#ffffff"
BORDER = "#d8d9da"
TEXT = "#24292e"
MUTED = "#6e7177"
GRID = "#e9eaec"
PALETTE = (
    "#7eb26d",
    "#eab839",
    "#6ed0e0",
    "#ef843c",
    "#e24d42",
    "#1f78c1",
    "#ba43a9",
    "#705da0",
    "#508642",
    "#cca300",
    "#447ebc",
    "#c15c17",
)
NAMED_COLORS = {
    "green": "#56a64b",
    "red": "#e02f44",
    "orange": "#ff9830",
    "yellow": "#e0b400",
    "blue": "#3274d9",
    "purple": "#a352cc",
    "text": TEXT,
}
DEFAULT_THRESHOLDS: list[dict[str, Any]] = [
    {"color": "green", "value": None},
    {"color": "red", "value": 80},
]


def color_of(name: str) -> str:
    return NAMED_COLORS.get(name.lower(), name) if name else TEXT


def threshold_color(panel: dict[str, Any], value: float) -> str:
    defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
    steps: list[dict[str, Any]] = (defaults.get("thresholds") or {}).get(
        "steps"
    ) or DEFAULT_THRESHOLDS
    chosen = str(steps[0]["color"])
    for step in steps[1:]:
        if step.get("value") is not None and math.isfinite(value) and value >= step["value"]:
            chosen = str(step["color"])
    return color_of(chosen)


@dataclass(frozen=True)
class Box:
    """A rectangle in figure pixels, from the top left corner."""

    left: float
    top: float
    width: float
    height: float

    def inset(self, left: float, top: float, right: float, bottom: float) -> Box:
        return Box(
            self.left + left,
            self.top + top,
            max(1.0, self.width - left - right),
            max(1.0, self.height - top - bottom),
        )


class Canvas:
    def __init__(self, width: int, height: int, dpi: int = 100) -> None:
        self.width = width
        self.height = height
        self.figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor=BACKGROUND)

    def axes(self, box: Box) -> Axes:
        return self.figure.add_axes(
            (
                box.left / self.width,
                1 - (box.top + box.height) / self.height,
                box.width / self.width,
                box.height / self.height,
            )
        )

    def text(self, x: float, y: float, text: str, **style: Any) -> None:
        self.figure.text(x / self.width, 1 - y / self.height, text, **style)

    def card(self, box: Box) -> None:
        self.figure.patches.append(
            FancyBboxPatch(
                (box.left / self.width, 1 - (box.top + box.height) / self.height),
                box.width / self.width,
                box.height / self.height,
                boxstyle="round,pad=0,rounding_size=0.002",
                transform=self.figure.transFigure,
                facecolor=PANEL,
                edgecolor=BORDER,
                linewidth=0.8,
                figure=self.figure,
                zorder=-10,
            )
        )


_TICK_STEPS = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)


def _time_axis(ax: Axes, start: float, end: float) -> None:
    """x is Unix seconds: ticks on round UTC times, about five of them."""
    ax.set_xlim(start, end)
    every = next((s for s in _TICK_STEPS if (end - start) / s <= 5), 86400)
    first = math.ceil(start / every) * every
    ax.xaxis.set_major_locator(FixedLocator([first + i * every for i in range(7)]))
    fmt = "%H:%M" if every % 60 == 0 else "%H:%M:%S"
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda v, _pos: datetime.fromtimestamp(v, UTC).strftime(fmt))
    )


def _style_axes(ax: Axes) -> None:
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=8, length=0, pad=3)
    ax.grid(True, color=GRID, linewidth=0.7)
    ax.set_axisbelow(True)


def _segments(
    series: Series, span_nulls: bool, step: float
) -> Iterator[tuple[list[float], list[float]]]:
    """Runs of finite points; a missing point breaks a run unless ``span_nulls``."""
    times: list[float] = []
    values: list[float] = []
    for t, v in zip(series.times, series.values, strict=True):
        if not math.isfinite(v):
            if not span_nulls and times:
                yield times, values
                times, values = [], []
            continue
        if times and not span_nulls and t - times[-1] > step * 1.5:
            yield times, values
            times, values = [], []
        times.append(t)
        values.append(v)
    if times:
        yield times, values


def draw_no_data(canvas: Canvas, box: Box, why: str = "No data") -> None:
    lines = textwrap.wrap(why, max(10, int(box.width / 7.5)))
    canvas.text(
        box.left + box.width / 2,
        box.top + box.height / 2,
        "\n".join(lines[:2]) + (" …" if len(lines) > 2 else ""),
        ha="center",
        va="center",
        color=MUTED,
        fontsize=10,
    )


def draw_timeseries(
    canvas: Canvas, box: Box, data: PanelData, start: float, end: float, step: float
) -> None:
    panel = data.panel
    defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
    custom = defaults.get("custom") or {}
    legend_options = (panel.get("options") or {}).get("legend") or {}
    show_legend = legend_options.get("showLegend", True) and bool(data.series)
    legend = legend_layout(data, min(340.0, box.width * 0.45)) if show_legend else None
    plot = box.inset(50, 0, (legend.width + 14) if legend else 0, 18)
    ax = canvas.axes(plot)
    _style_axes(ax)
    _time_axis(ax, start, end)
    unit = str(defaults.get("unit") or "")
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4, min_n_ticks=3))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_value(v, unit)))
    span_nulls = bool(custom.get("spanNulls", False))
    fill = float(custom.get("fillOpacity", 0)) / 100
    width = float(custom.get("lineWidth", 1)) + 0.3
    highest = 0.0
    for index, series in enumerate(data.series):
        color = PALETTE[index % len(PALETTE)]
        for times, values in _segments(series, span_nulls, step):
            if len(times) == 1:
                ax.plot(times, values, "o", color=color, markersize=2, zorder=3)
            ax.plot(times, values, color=color, linewidth=width, zorder=3)
            if fill:
                ax.fill_between(times, values, color=color, alpha=fill, linewidth=0)
        highest = max(highest, max_of(series.values) if series.values else 0.0)
    if "min" in defaults:
        ax.set_ylim(bottom=float(defaults["min"]))
    elif all(min((v for v in s.values if math.isfinite(v)), default=0) >= 0 for s in data.series):
        ax.set_ylim(bottom=0)
    if highest == 0 or not math.isfinite(highest):
        ax.set_ylim(top=1)
    if "max" in defaults:
        ax.set_ylim(top=float(defaults["max"]))
    if not data.has_data:
        draw_no_data(canvas, plot, data.errors[0] if data.errors else "No data")
    if legend:
        draw_legend(canvas, box.inset(box.width - legend.width, 0, 0, 0), data, legend)


CALCS: dict[str, tuple[str, Callable[[Sequence[float]], float]]] = {
    "lastNotNull": ("Last *", last_not_null),
    "last": ("Last", lambda v: v[-1] if v else math.nan),
    "max": ("Max", max_of),
    "min": ("Min", lambda v: min((x for x in v if math.isfinite(x)), default=math.nan)),
    "mean": ("Mean", lambda v: _mean([x for x in v if math.isfinite(x)])),
}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class LegendLayout:
    width: float
    calcs: list[tuple[str, Callable[[Sequence[float]], float]]]
    name_chars: int


_LEGEND_CHAR = 5.0  # px per character at 7.5 pt, about
_LEGEND_COLUMN = 64.0  # px per value column
_LEGEND_MARK = 16.0  # px for the colour mark


def legend_layout(data: PanelData, most: float) -> LegendLayout:
    """Grafana's table legend in at most ``most`` px: as many of the panel's calcs as leave
    room for names of about 28 characters, and no wider than the longest name needs."""
    options = (data.panel.get("options") or {}).get("legend") or {}
    calcs = [CALCS[c] for c in options.get("calcs") or [] if c in CALCS]
    while calcs and most - _LEGEND_MARK - _LEGEND_COLUMN * len(calcs) < 28 * _LEGEND_CHAR:
        calcs.pop()
    longest = max((len(s.name) for s in data.series), default=0)
    room = int((most - _LEGEND_MARK - _LEGEND_COLUMN * len(calcs)) / _LEGEND_CHAR)
    name_chars = max(6, min(longest, room))
    width = _LEGEND_MARK + name_chars * _LEGEND_CHAR + _LEGEND_COLUMN * len(calcs) + 8
    return LegendLayout(min(most, width), calcs, name_chars)


def draw_legend(canvas: Canvas, box: Box, data: PanelData, layout: LegendLayout) -> None:
    """Each series' colour, name and calcs (last, max), one line each."""
    calcs, name_chars = layout.calcs, layout.name_chars
    column = _LEGEND_COLUMN
    line = 13.0
    rows = max(1, int((box.height - line) // line))
    shown = data.series if len(data.series) <= rows else data.series[: rows - 1]
    y = box.top + 4
    right = box.left + box.width - 2
    muted: dict[str, Any] = {"fontsize": 7.5, "va": "top", "color": MUTED}
    for index, (label, _) in enumerate(calcs):
        canvas.text(right - column * (len(calcs) - 1 - index), y, label, ha="right", **muted)
    y += line
    for index, series in enumerate(shown):
        color = PALETTE[index % len(PALETTE)]
        canvas.text(box.left, y - 1, "▬", color=color, fontsize=8, va="top")
        text: dict[str, Any] = {"fontsize": 7.5, "va": "top", "color": TEXT}
        canvas.text(box.left + 14, y, shorten(series.name, name_chars), **text)
        for column_index, (_, calc) in enumerate(calcs):
            value = format_value(calc(series.values), series.unit)
            x = right - column * (len(calcs) - 1 - column_index)
            canvas.text(x, y, value, ha="right", **text)
        y += line
    if len(shown) < len(data.series):
        more = len(data.series) - len(shown)
        canvas.text(box.left + 14, y, f"+ {more} more series", **muted)


def draw_stat(canvas: Canvas, box: Box, data: PanelData, start: float, end: float) -> None:
    panel = data.panel
    options = panel.get("options") or {}
    unit = str(((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit") or "")
    if not data.has_data:
        draw_no_data(canvas, box, data.errors[0] if data.errors else "No data")
        return
    shown = data.series[:3]
    part = box.width / len(shown)
    for index, series in enumerate(shown):
        cell = Box(box.left + index * part, box.top, part, box.height)
        value = last_not_null(series.values)
        color = threshold_color(panel, value)
        if options.get("graphMode", "area") == "area" and len(series.values) > 1:
            ax = canvas.axes(cell.inset(0, cell.height * 0.45, 0, 0))
            ax.set_axis_off()
            times = [
                t for t, v in zip(series.times, series.values, strict=True) if math.isfinite(v)
            ]
            values = [v for v in series.values if math.isfinite(v)]
            ax.plot(times, values, color=color, linewidth=1, alpha=0.8)
            ax.fill_between(times, values, color=color, alpha=0.15, linewidth=0)
            ax.set_xlim(start, end)
            low, high = min(values, default=0), max(values, default=1)
            ax.set_ylim(min(0.0, low), high * 1.15 if high > 0 else 1)
        named = len(data.series) > 1 or any(t.get("legendFormat") for t in panel["targets"])
        size = 26 if len(shown) == 1 else 18
        canvas.text(
            cell.left + cell.width / 2,
            cell.top + cell.height * (0.36 if named else 0.42),
            format_value(value, unit),
            ha="center",
            va="center",
            fontsize=size,
            fontweight="bold",
            color=color,
        )
        if named:
            canvas.text(
                cell.left + cell.width / 2,
                cell.top + cell.height * 0.72,
                shorten(series.name, 24),
                ha="center",
                va="center",
                fontsize=8,
                color=MUTED,
            )


def draw_state_timeline(
    canvas: Canvas, box: Box, data: PanelData, start: float, end: float, step: float
) -> None:
    panel = data.panel
    defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
    states: dict[float, tuple[str, str]] = {}
    for mapping in defaults.get("mappings") or []:
        if mapping.get("type") == "value":
            for raw, shown in (mapping.get("options") or {}).items():
                with contextlib.suppress(ValueError):
                    states[float(raw)] = (
                        str(shown.get("text", raw)),
                        color_of(str(shown.get("color", ""))),
                    )
    plot = box.inset(70, 0, 8, 36)
    ax = canvas.axes(plot)
    _style_axes(ax)
    ax.grid(False)
    _time_axis(ax, start, end)
    if not data.has_data:
        ax.set_yticks([])
        draw_no_data(canvas, plot, data.errors[0] if data.errors else "No data")
        return
    ordered = sorted(data.series, key=lambda s: s.name)
    height = float((panel.get("options") or {}).get("rowHeight", 0.8))
    for row, series in enumerate(ordered):
        level = len(ordered) - 1 - row
        runs: list[tuple[float, float, float]] = []  # value, from, to
        for t, v in zip(series.times, series.values, strict=True):
            if not math.isfinite(v):
                continue
            if runs and runs[-1][0] == v and t - runs[-1][2] <= step * 1.5:
                runs[-1] = (v, runs[-1][1], t + step)
            else:
                runs.append((v, t, t + step))
        for value, begin, finish in runs:
            text, color = states.get(
                value, (format_value(value, ""), threshold_color(panel, value))
            )
            left, right = begin, min(finish, end)
            ax.barh(level, right - left, left=left, height=height, color=color, linewidth=0)
            if (finish - begin) / (end - start) > 0.14:
                ax.text(
                    (left + right) / 2,
                    level,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color="white",
                    fontweight="bold",
                )
    ax.set_yticks(range(len(ordered)))
    ax.set_yticklabels([shorten(s.name, 12) for s in reversed(ordered)])
    ax.set_ylim(-0.6, len(ordered) - 0.4)
    x = box.left + 70
    for value in sorted(states):
        text, color = states[value]
        canvas.text(x, box.top + box.height - 10, "■", color=color, fontsize=10, va="center")
        canvas.text(x + 13, box.top + box.height - 10, text, color=MUTED, fontsize=8, va="center")
        x += 22 + 6.5 * len(text)


def render(
    board: dict[str, Any],
    fetched: list[PanelData],
    out: Path,
    start: float,
    end: float,
    step: float,
    subtitle: str,
    size: tuple[int, int] = (1800, 1400),
) -> None:
    width, height = size
    canvas = Canvas(width, height)
    margin, header = 14.0, 46.0
    canvas.text(
        margin,
        12,
        str(board.get("title", "dashboard")),
        fontsize=15,
        fontweight="bold",
        color=TEXT,
        va="top",
    )
    canvas.text(
        margin + 14 + 12 * len(str(board.get("title", ""))),
        16,
        subtitle,
        fontsize=9,
        color=MUTED,
        va="top",
    )
    units = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels_in_grid_order(board))
    unit_w = (width - 2 * margin) / 24
    unit_h = (height - header - margin) / units
    data_by_id = {id(d.panel): d for d in fetched}
    for panel in panels_in_grid_order(board):
        grid = panel["gridPos"]
        cell = Box(
            margin + grid["x"] * unit_w,
            header + grid["y"] * unit_h,
            grid["w"] * unit_w,
            grid["h"] * unit_h,
        ).inset(4, 4, 4, 4)
        if panel.get("type") == "row":
            canvas.text(
                cell.left + 2,
                cell.top + cell.height / 2,
                panel.get("title", ""),
                fontsize=11.5,
                fontweight="bold",
                color=TEXT,
                va="center",
            )
            continue
        canvas.card(cell)
        canvas.text(
            cell.left + 8,
            cell.top + 7,
            panel.get("title", ""),
            fontsize=10,
            fontweight="bold",
            color=TEXT,
            va="top",
        )
        inner = cell.inset(8, 26, 10, 6)
        data = data_by_id.get(id(panel))
        if data is None:
            draw_no_data(canvas, inner, f"panel type {panel.get('type')} not drawn")
        elif panel.get("type") == "stat":
            draw_stat(canvas, inner, data, start, end)
        elif panel.get("type") == "state-timeline":
            draw_state_timeline(canvas, inner, data, start, end, step)
        else:
            draw_timeseries(canvas, inner, data, start, end, step)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.figure.savefig(out, dpi=100, facecolor=BACKGROUND)
    _shrink_png(out)


def _shrink_png(path: Path) -> None:
    """Re-save as a 256-colour PNG when that is smaller (flat colours and lines: no loss to
    see)."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        quantized = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    smaller = path.with_suffix(".tmp.png")
    quantized.save(smaller, optimize=True)
    if smaller.stat().st_size < path.stat().st_size:
        smaller.replace(path)
    else:
        smaller.unlink()


# --- rendering from a Prometheus ----------------------------------------------------------------


@dataclass
class Rendered:
    panels: list[PanelData]
    rate_interval: str
    step: float


def render_dashboard(
    prometheus_url: str,
    dashboard: Path,
    out: Path,
    start: float,
    end: float,
    rate_interval: str | None = None,
    note: str = "",
) -> Rendered:
    board: dict[str, Any] = json.loads(dashboard.read_text())
    prometheus = Prometheus(prometheus_url.rstrip("/"))
    span = end - start
    if span <= 0:
        raise SystemExit("--start must be before --end")
    step = max(1.0, math.ceil(span / 600))
    scrape = prometheus.scrape_interval()
    if rate_interval is None:
        # Grafana's rule (max of 4 scrapes and a step plus a scrape), but at least 1/12 of the
        # range, so that a short run's rates are readable rather than per-scrape noise.
        seconds = max(4 * scrape, step + scrape, nice_seconds(span / 12))
        rate_interval = format_duration(seconds)
    values = variable_values(board, rate_interval, format_duration(step), format_duration(span))
    fetched = [
        fetch(prometheus, panel, values, start, end, step)
        for panel in panels_in_grid_order(board)
        if panel.get("type") != "row"
    ]
    moment = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M:%S")
    subtitle = (
        f"{dashboard.name} drawn from Prometheus data (query_range) · {moment} UTC + "
        f"{format_duration(span)} · $__rate_interval={rate_interval}, step {step:g}s, "
        f"every route and channel" + (f" · {note}" if note else "")
    )
    render(board, fetched, out, start, end, step, subtitle)
    return Rendered(fetched, rate_interval, step)


def report(rendered: Rendered, out: Path) -> tuple[int, int]:
    """Print each panel's series and errors; how many panels failed a query, had no data."""
    for data in rendered.panels:
        state = "data" if data.has_data else "NO DATA"
        print(f"  {data.title:<48} {len(data.series):>3} series  {state}", file=sys.stderr)
        for error in data.errors:
            print(f"    error {error}", file=sys.stderr)
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1024:.0f} KiB)", file=sys.stderr)
    failed = sum(1 for d in rendered.panels if d.errors)
    empty = sum(1 for d in rendered.panels if not d.has_data)
    return failed, empty


# --- a real run: sink, herald serve, prometheus, traffic -----------------------------------------

API_KEY = "dashboard-demo-key-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(what: str, probe: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(httpx.TransportError, OSError):
            if probe():
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {within:.0f}s waiting for {what}")
        time.sleep(0.2)


@dataclass
class Scenario:
    """When the sink misbehaves, in seconds from the start of the traffic."""

    length: float
    began: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def flaky_down(self) -> bool:
        """``/flaky`` answers 500 (slowly) in the middle of the run, and recovers after."""
        return 0.15 * self.length <= self.elapsed() < 0.6 * self.length

    def surge(self) -> bool:
        return 0.62 * self.length <= self.elapsed() < 0.72 * self.length

    def rate(self) -> float:
        """Notifications per second: a slow swell, and a surge."""
        t = self.elapsed()
        swell = 1.0 + 2.0 * (0.5 - 0.5 * math.cos(2 * math.pi * t / (self.length / 2.2)))
        return swell + (5.0 if self.surge() else 0.0)


def start_sink(scenario: Scenario) -> ThreadingHTTPServer:
    """Webhook receiver on loopback.

    ``/ok`` delivers in a few ms (slower during the surge); ``/flaky`` delivers, except while
    the scenario has it down (500 after 1.5 s, so the circuit's half-open trial is seen);
    ``/gone`` answers 410 (a permanent failure); ``/sometimes`` answers 503 to a
    notification's first try (a scheduled retry delivers it) and to every try of one
    notification in six (it fails once its retries are spent).
    """
    tries: dict[str, int] = {}
    lock = threading.Lock()
    rng = random.Random(11)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            status = 200
            if self.path == "/ok":
                delay = rng.lognormvariate(math.log(0.012), 0.7)
                time.sleep(min(1.0, delay * (6 if scenario.surge() else 1)))
            elif self.path == "/flaky":
                if scenario.flaky_down():
                    time.sleep(1.5)
                    status = 500
                else:
                    time.sleep(rng.uniform(0.005, 0.03))
            elif self.path == "/gone":
                status = 410
            elif self.path == "/sometimes":
                try:
                    key = str(json.loads(raw)["data"]["id"])
                except (ValueError, KeyError, TypeError):
                    key = ""
                with lock:
                    tries[key] = tries.get(key, 0) + 1
                    count = tries[key]
                doomed = bool(key) and int(key.replace("-", ""), 16) % 6 == 0
                status = 503 if count == 1 or doomed else 200
            else:
                status = 404
            body = json.dumps({"id": "sink-message"} if status == 200 else {"error": status})
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def demo_config(sink_url: str) -> dict[str, Any]:
    """Routes that deliver, fall back, fail for good, retry on a schedule, and broadcast."""

    def hook(path: str, **extra: Any) -> dict[str, Any]:
        return {"type": "webhook", "url": sink_url + path, "timeout": "5s", **extra}

    return {
        "auth": {
            "api_keys": [{"name": "demo", "key": API_KEY, "scopes": ["send", "read", "admin"]}]
        },
        "network": {"allowed_networks": ["127.0.0.0/8", "::1/128"]},
        "channels": {
            "backup": hook("/ok"),
            "flaky": hook("/flaky", circuit={"failures": 3, "cooldown": "12s"}),
            "rejecting": hook("/gone"),
            "pager": hook("/sometimes", circuit={"failures": 0}),
            "console": {"type": "log"},
        },
        "routes": {
            "default": {"channels": ["backup"]},
            "fallback": {"channels": ["flaky", "backup"], "retry": {"schedule": ["1m"]}},
            "doomed": {"channels": ["rejecting"]},
            "retrying": {"channels": ["pager"], "retry": {"schedule": ["3s", "6s"]}},
            "broadcast": {"channels": ["backup", "console"], "strategy": "all"},
        },
    }


def _stop(process: subprocess.Popen[bytes], name: str) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop on SIGTERM: killing it", file=sys.stderr)
        process.kill()
        process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def herald_serve(workdir: Path, config: dict[str, Any]) -> Iterator[str]:
    herald = Path(sys.executable).parent / "herald"
    command = str(herald) if herald.exists() else shutil.which("herald")
    if command is None:
        raise SystemExit("`herald` is not installed: run `make` (pip install -e .) first")
    config_path = workdir / "herald.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        **os.environ,
        "HERALD_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'herald.db'}",
        "HERALD_CONFIG": str(config_path),
        "HERALD_LOG_LEVEL": "warning",
        "HERALD_SHUTDOWN_TIMEOUT": "5s",
    }
    migrate = subprocess.run(
        [command, "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    if migrate.returncode != 0:
        raise SystemExit(f"herald migrate failed:\n{migrate.stdout}{migrate.stderr}")
    port = _free_port()
    log = workdir / "herald.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [command, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise SystemExit(f"herald serve exited with {process.returncode}:\n{_tail(log)}")
            return httpx.get(url + "/readyz", timeout=2).status_code == 200

        _wait("herald serve to be ready", ready, within=60)
        yield url
    finally:
        _stop(process, "herald serve")


@contextlib.contextmanager
def prometheus_scraping(workdir: Path, target: str) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus is not installed (Debian: apt-get install prometheus)")
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "herald-api", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    port = _free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def scraped() -> bool:
            if process.poll() is not None:
                raise SystemExit(f"prometheus exited with {process.returncode}:\n{_tail(log)}")
            answer = httpx.get(
                url + "/api/v1/query", params={"query": 'up{job="herald-api"} == 1'}, timeout=2
            ).json()
            return bool(answer.get("data", {}).get("result"))

        _wait("Prometheus's first scrape of Herald", scraped, within=60)
        yield url
    finally:
        _stop(process, "prometheus")


def send_traffic(herald_url: str, scenario: Scenario, limit: int) -> dict[str, int]:
    """Notifications at the scenario's varying rate, with reads and refused requests, until
    the scenario's length or ``limit`` notifications; the count of each kind of request."""
    rng = random.Random(7)
    routes = ["default", "fallback", "broadcast", "retrying", "doomed"]
    weights = [45, 25, 10, 12, 8]
    counts: dict[str, int] = {}
    ids: list[str] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    unknown = "/v1/notifications/00000000-0000-0000-0000-000000000000"
    with httpx.Client(base_url=herald_url, headers=headers, timeout=10) as client:
        next_at = time.monotonic()
        while len(ids) < limit and scenario.elapsed() < scenario.length:
            next_at += rng.expovariate(scenario.rate())
            time.sleep(max(0.0, min(2.0, next_at - time.monotonic())))
            route = rng.choices(routes, weights)[0]
            body = {"route": route, "text": f"demo via {route}", "subject": "Herald demo"}
            response = client.post("/v1/notifications", json=body)
            counts[f"POST {response.status_code}"] = (
                counts.get(f"POST {response.status_code}", 0) + 1
            )
            if response.status_code == 202:
                ids.append(response.json()["id"])
            extras: list[tuple[float, Callable[[], httpx.Response]]] = [
                (0.15, lambda: client.get("/v1/notifications", params={"limit": 20})),
                (0.25, lambda: client.get(f"/v1/notifications/{rng.choice(ids)}")),
                (0.05, lambda: client.get("/v1/channels")),
                (0.04, lambda: client.get(unknown)),
                (0.03, lambda: client.post("/v1/notifications", json={"route": "nope"})),
                (0.02, lambda: httpx.get(herald_url + "/v1/notifications", timeout=10)),
            ]
            for chance, call in extras:
                if ids and rng.random() < chance:
                    status = call().status_code
                    counts[f"other {status}"] = counts.get(f"other {status}", 0) + 1
    counts["notifications"] = len(ids)
    return counts


def demo(args: argparse.Namespace) -> None:
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="herald-demo-")))
        (workdir / "herald").mkdir()
        (workdir / "prometheus").mkdir()
        scenario = Scenario(float(args.demo_seconds))
        sink = start_sink(scenario)
        stack.callback(sink.server_close)
        stack.callback(sink.shutdown)
        host, port = sink.server_address[:2]
        config = demo_config(f"http://{host!s}:{port}")
        herald_url = stack.enter_context(herald_serve(workdir / "herald", config))
        prometheus_url = stack.enter_context(
            prometheus_scraping(workdir / "prometheus", herald_url.removeprefix("http://"))
        )
        start = time.time() - 3
        print(
            f"herald {herald_url}, prometheus {prometheus_url}: {args.demo_seconds}s of traffic",
            file=sys.stderr,
        )
        scenario.began = time.monotonic()
        counts = send_traffic(herald_url, scenario, args.demo_limit)
        print(f"sent: {counts}", file=sys.stderr)
        time.sleep(3)  # a few more scrapes
        end = time.time()
        out = Path(args.out)
        rendered = render_dashboard(
            prometheus_url,
            Path(args.dashboard),
            out,
            start,
            end,
            args.rate_interval,
            note=f"demo run: {counts['notifications']} notifications",
        )
    failed, empty = report(rendered, out)
    print(f"took {time.monotonic() - began:.0f}s", file=sys.stderr)
    if failed or empty:
        raise SystemExit(f"{failed} panels with failed queries, {empty} without data")


# --- command line -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        description="Draw the Grafana dashboard's panels from Prometheus data into a PNG."
    )
    source = cli.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", help="base URL, e.g. http://127.0.0.1:9090")
    source.add_argument(
        "--demo",
        action="store_true",
        help="start a webhook sink, herald serve and prometheus on loopback, send traffic, "
        "draw it, stop them all",
    )
    cli.add_argument("--dashboard", default=str(DEFAULT_DASHBOARD), help="Grafana JSON model")
    cli.add_argument("--out", default=str(ROOT / "docs/dashboard.png"), help="PNG to write")
    cli.add_argument("--start", help="Unix seconds or ISO 8601 (UTC unless it names a zone)")
    cli.add_argument("--end", help="Unix seconds or ISO 8601 (default: now)")
    cli.add_argument("--minutes", type=float, help="the last N minutes before --end")
    cli.add_argument(
        "--rate-interval", help="$__rate_interval (default: from the range and scrape interval)"
    )
    cli.add_argument("--demo-seconds", type=int, default=180, help="traffic length with --demo")
    cli.add_argument("--demo-limit", type=int, default=1500, help="most notifications --demo sends")
    return cli


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.rate_interval is not None:
        parse_duration(args.rate_interval)
    if args.demo:
        if not 10 <= args.demo_seconds <= 900:
            raise SystemExit("--demo-seconds must be between 10 and 900")
        demo(args)
        return
    end = parse_time(args.end) if args.end else time.time()
    if args.start:
        start = parse_time(args.start)
    elif args.minutes:
        start = end - args.minutes * 60
    else:
        raise SystemExit("give --start or --minutes")
    out = Path(args.out)
    rendered = render_dashboard(
        args.prometheus, Path(args.dashboard), out, start, end, args.rate_interval
    )
    failed, _ = report(rendered, out)
    if failed:
        raise SystemExit(f"{failed} panels had queries that failed")


if __name__ == "__main__":
    main()
