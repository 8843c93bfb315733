"""The one place values are formatted with their units for people (CLI, SVG renders).

The dashboard has its TypeScript twin (``frontend/src/lib/format.ts``) following the same
rules: values are first converted to base units (bytes, seconds, counts) with
:meth:`Units.base_factor`, then scaled with binary prefixes for bytes, SI prefixes for
counts and human units for time; utilisations are shown as percentages.
"""

from __future__ import annotations

import math

from .model import Units

_BYTE_PREFIXES = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_SI_PREFIXES = ("", "k", "M", "G", "T", "P")


def _num(value: float, digits: int = 3) -> str:
    """At most ``digits`` significant digits, no exponent for everyday magnitudes."""
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_value(value: float | str | None, units: Units) -> str:
    """``value`` (in ``units``) as a short human string, e.g. ``12.3 MiB/s``, ``45.1 %``."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if math.isnan(value):
        return "-"
    base = value * units.base_factor()
    suffix = "/s" if units.per_sec else ""
    kind = units.kind
    if kind == "utilization":
        return f"{_num(base * 100)} %"
    if kind == "bytes":
        scaled, idx = abs(base), 0
        while scaled >= 1024 and idx < len(_BYTE_PREFIXES) - 1:
            scaled /= 1024
            idx += 1
        sign = "-" if base < 0 else ""
        return f"{sign}{_num(scaled)} {_BYTE_PREFIXES[idx]}{suffix}"
    if kind == "time":
        return _format_seconds(base) + suffix
    scaled, idx = abs(base), 0
    while scaled >= 1000 and idx < len(_SI_PREFIXES) - 1:
        scaled /= 1000
        idx += 1
    sign = "-" if base < 0 else ""
    text = f"{sign}{_num(scaled)}{_SI_PREFIXES[idx]}"
    return f"{text}{suffix}" if suffix else text


def _format_seconds(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s == 0:
        return "0 s"
    if s < 1e-6:
        return f"{sign}{_num(s * 1e9)} ns"
    if s < 1e-3:
        return f"{sign}{_num(s * 1e6)} µs"
    if s < 1:
        return f"{sign}{_num(s * 1e3)} ms"
    if s < 120:
        return f"{sign}{_num(s)} s"
    if s < 7200:
        return f"{sign}{_num(s / 60)} min"
    if s < 172800:
        return f"{sign}{_num(s / 3600)} h"
    return f"{sign}{_num(s / 86400)} d"
