"""Flame graph outputs built from a capture's ProfileData (pure functions, no I/O).

The privileged side hands over one plain JSON document per capture ("ProfileData",
/work contract in docs/profiling.md): interned frames, and per unique stack the samples it
got in each time slot. Everything a viewer wants is derived from that here:

* :func:`build_tree` -- the call tree as nested nodes (the JSON the dashboard draws), for
  the whole capture or a time range of it, optionally merged with a *base* capture for a
  differential flame graph;
* :func:`timeline` -- FlameScope's sub-second heat map: one column per second, one row per
  slot within the second, each cell the samples (or blocked microseconds) in that slot;
* :func:`folded` (flamegraph.pl's input format), :func:`svg` (a self-contained,
  interactive flamegraph.pl-style SVG) and :func:`speedscope` (speedscope's file format).

Why here and not in the privileged process: these are the outputs of *unprivileged*
data; building them needs no capability, and keeping them out of the helper keeps its
op table small. Frame names arrive raw (a process can call itself ``<b>"x'&``): escaping
is each output's own concern, done once per format below.

Costs: a 30 s, 99 Hz capture on 2 CPUs is ~6,000 samples in a few thousand (stack, slot)
entries; every builder is one pass over them (see benchmarks/bench_profile_view.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The ProfileData version these builders understand.
PROFILE_VERSION = 1
FRAME_KINDS = frozenset({"process", "user", "kernel", "jit", "unknown"})
#: flamegraph.pl's annotations of kernel and JIT frames in folded stacks (its
#: ``--color=java`` palette picks them up).
FOLDED_SUFFIX = {"kernel": "_[k]", "jit": "_[j]"}


class ProfileDataError(ValueError):
    """ProfileData that does not follow the contract (a bug on the privileged side)."""


@dataclass(frozen=True, slots=True)
class Frame:
    name: str
    kind: str
    module: str | None


@dataclass(frozen=True, slots=True)
class Stack:
    frames: tuple[int, ...]  # root -> leaf, indexes into Profile.frames
    pid: int | None
    slots: tuple[tuple[int, int], ...]  # (slot, value), value > 0


@dataclass(frozen=True, slots=True)
class Profile:
    """A parsed, validated ProfileData: what every builder takes."""

    kind: str
    unit: str
    started_at: float
    duration_s: float
    slot_ms: int
    frames: tuple[Frame, ...]
    stacks: tuple[Stack, ...]
    total: int
    lost: int

    @property
    def seconds(self) -> int:
        """Whole seconds the timeline spans (a started second counts)."""
        return max(1, math.ceil(self.duration_s - 1e-9))

    @property
    def rows(self) -> int:
        """Slots per second: the timeline's rows."""
        return max(1, 1000 // self.slot_ms)

    def slot_range(self, start: float | None, end: float | None) -> tuple[int, int] | None:
        """Slots [first, last) covering seconds [start, end) after ``started_at``; None
        for the whole capture."""
        if start is None and end is None:
            return None
        first = 0 if start is None else math.floor(start * 1000 / self.slot_ms + 1e-9)
        last = (self.seconds * self.rows if end is None
                else math.ceil(end * 1000 / self.slot_ms - 1e-9))
        return first, last


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ProfileDataError(message)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_profile(data: Mapping[str, Any]) -> Profile:
    """Validate ProfileData (version 1) and intern it into a :class:`Profile`.

    Strict because everything downstream indexes by these numbers: a frame index out of
    range, a negative slot or value, or an unknown frame kind raises
    :class:`ProfileDataError` naming the problem. Empty stacks and zero values are dropped.
    """
    _require(isinstance(data, Mapping), "ProfileData must be a JSON object")
    _require(data.get("version") == PROFILE_VERSION,
             f"unsupported ProfileData version {data.get('version')!r}")
    kind = data.get("kind")
    _require(kind in ("cpu", "offcpu"), f"kind must be cpu or offcpu, got {kind!r}")
    unit = data.get("unit")
    _require(unit in ("samples", "microseconds"), f"unknown unit {unit!r}")
    slot_ms = data.get("slot_ms")
    _require(_int(slot_ms) and 1 <= slot_ms <= 1000, f"bad slot_ms {slot_ms!r}")
    started_at, duration = data.get("started_at"), data.get("duration_s")
    _require(isinstance(started_at, int | float) and math.isfinite(started_at),
             "started_at must be a number")
    _require(isinstance(duration, int | float) and 0 <= duration < 86400,
             "duration_s must be a number of seconds")
    raw_frames = data.get("frames")
    _require(isinstance(raw_frames, list), "frames must be a list")
    frames = []
    for i, f in enumerate(raw_frames):
        _require(isinstance(f, Mapping) and isinstance(f.get("name"), str),
                 f"frame {i} needs a name")
        fkind = f.get("kind", "unknown")
        _require(fkind in FRAME_KINDS, f"frame {i} has unknown kind {fkind!r}")
        module = f.get("module")
        _require(module is None or isinstance(module, str), f"frame {i}: bad module")
        frames.append(Frame(f["name"], fkind, module))
    nframes = len(frames)
    raw_stacks = data.get("stacks")
    _require(isinstance(raw_stacks, list), "stacks must be a list")
    stacks = []
    total = 0
    for i, s in enumerate(raw_stacks):
        _require(isinstance(s, Mapping), f"stack {i} must be an object")
        idx = s.get("frames")
        _require(isinstance(idx, list) and all(_int(x) and 0 <= x < nframes for x in idx),
                 f"stack {i}: frames must be indexes into frames")
        pid = s.get("pid")
        _require(pid is None or _int(pid), f"stack {i}: bad pid")
        slots = []
        for pair in s.get("slots", ()):
            _require(isinstance(pair, list | tuple) and len(pair) == 2
                     and _int(pair[0]) and _int(pair[1]) and pair[0] >= 0 and pair[1] >= 0,
                     f"stack {i}: slots must be [slot, value] pairs of non-negative integers")
            if pair[1]:
                slots.append((pair[0], pair[1]))
                total += pair[1]
        if idx and slots:
            stacks.append(Stack(tuple(idx), pid, tuple(slots)))
    lost = data.get("lost", 0)
    return Profile(kind=kind, unit=unit, started_at=float(started_at),
                   duration_s=float(duration), slot_ms=slot_ms, frames=tuple(frames),
                   stacks=tuple(stacks), total=total,
                   lost=lost if _int(lost) and lost >= 0 else 0)


def estimate_bytes(profile: Profile) -> int:
    """Rough resident size of a parsed profile, for the store's byte budget.

    An estimate of Python object sizes (tuples, ints, strings), not a measurement:
    ``sys.getsizeof`` over every object would cost more than the budget check is worth.
    """
    size = 200 + sum(120 + len(f.name) + len(f.module or "") for f in profile.frames)
    for s in profile.stacks:
        size += 160 + 8 * len(s.frames) + 72 * len(s.slots)
    return size


# -- stack values --------------------------------------------------------------------


def _stack_values(profile: Profile, slots: tuple[int, int] | None
                  ) -> Iterable[tuple[tuple[int, ...], int]]:
    """(frames, value) per stack, counting only slots within ``slots``."""
    if slots is None:
        for s in profile.stacks:
            yield s.frames, sum(v for _, v in s.slots)
        return
    first, last = slots
    for s in profile.stacks:
        value = sum(v for slot, v in s.slots if first <= slot < last)
        if value:
            yield s.frames, value


# -- tree ----------------------------------------------------------------------------


class _Node:
    __slots__ = ("base", "children", "key", "self_base", "self_value", "value")

    def __init__(self, key: int) -> None:
        self.key = key  # index into the frame list of the build (-1: root)
        self.value = 0
        self.self_value = 0
        self.base = 0
        self.self_base = 0
        self.children: dict[int, _Node] = {}


def _fill(root: _Node, stacks: Iterable[tuple[tuple[int, ...], int]], base: bool) -> None:
    # Two loops instead of one with a flag test per frame: this is the hot path.
    for idx, value in stacks:
        node = root
        if base:
            node.base += value
            for key in idx:
                child = node.children.get(key)
                if child is None:
                    child = node.children[key] = _Node(key)
                child.base += value
                node = child
            node.self_base += value
        else:
            node.value += value
            for key in idx:
                child = node.children.get(key)
                if child is None:
                    child = node.children[key] = _Node(key)
                child.value += value
                node = child
            node.self_value += value


def _to_json(node: _Node, frames: list[Frame], diff: bool) -> dict[str, Any]:
    if node.key < 0:
        out: dict[str, Any] = {"name": "all", "kind": "root", "module": None}
    else:
        frame = frames[node.key]
        out = {"name": frame.name, "kind": frame.kind, "module": frame.module}
    out["value"] = node.value
    out["self"] = node.self_value
    if diff:
        out["base"] = node.base
        out["self_base"] = node.self_base
    # flamegraph.pl's order: siblings alphabetical, so the same code sits in the same
    # place in two captures (before/after) whatever its share.
    children = sorted(node.children.values(),
                      key=lambda c: (frames[c.key].name, frames[c.key].kind))
    out["children"] = [_to_json(c, frames, diff) for c in children]
    return out


def _rekey(base: Profile, frames: list[Frame]) -> list[int]:
    """Indexes in ``frames`` of ``base``'s frames, appending the ones it lacks, so both
    captures' stacks share one key space (a frame is the same if name, kind and module
    are)."""
    index = {f: i for i, f in enumerate(frames)}
    out = []
    for f in base.frames:
        i = index.get(f)
        if i is None:
            i = index[f] = len(frames)
            frames.append(f)
        out.append(i)
    return out


def build_tree(profile: Profile, *, start: float | None = None, end: float | None = None,
               base: Profile | None = None) -> dict[str, Any]:
    """The call tree, rooted at ``{"name": "all", "kind": "root"}``.

    Each node: ``name``, ``kind``, ``module``, ``value`` (its stacks' total), ``self``
    (stacks ending there) and ``children``. ``start``/``end`` (seconds after the start)
    keep only samples in that range. With ``base``, the tree is the union of both
    captures (over base's whole duration) and every node also has ``base`` and
    ``self_base``, its values in the base capture: nodes only the base had keep value 0.
    Values are raw; compare shares with the two totals.
    """
    root = _Node(-1)
    frames = list(profile.frames)
    _fill(root, _stack_values(profile, profile.slot_range(start, end)), base=False)
    if base is not None:
        keys = _rekey(base, frames)
        _fill(root, ((tuple(keys[i] for i in idx), v) for idx, v in _stack_values(base, None)),
              base=True)
    return _to_json(root, frames, base is not None)


def timeline_seconds(profile: Profile) -> int:
    """Seconds the timeline spans: the capture's, or more if samples ran over."""
    last = max((slot for s in profile.stacks for slot, _ in s.slots), default=-1)
    return max(profile.seconds, last // profile.rows + 1)


def count_nodes(tree: Mapping[str, Any]) -> int:
    return 1 + sum(count_nodes(c) for c in tree["children"])


# -- timeline ------------------------------------------------------------------------


def timeline(profile: Profile) -> dict[str, Any]:
    """FlameScope's sub-second offset heat map: ``counts[second][row]`` is the value of
    slot ``second * rows + row``. Slots past the last whole second are kept (a capture
    runs a little over its duration), in extra columns."""
    rows = profile.rows
    per_slot: dict[int, int] = {}
    for s in profile.stacks:
        for slot, value in s.slots:
            per_slot[slot] = per_slot.get(slot, 0) + value
    seconds = timeline_seconds(profile)
    counts = [[0] * rows for _ in range(seconds)]
    for slot, value in per_slot.items():
        counts[slot // rows][slot % rows] = value
    return {"slot_ms": profile.slot_ms, "rows": rows, "seconds": seconds, "counts": counts,
            "max": max(per_slot.values(), default=0)}


# -- folded --------------------------------------------------------------------------


def _folded_name(frame: Frame) -> str:
    # ';' separates frames and the last ' ' precedes the count: neither may appear raw
    # in a name (spaces are fine, the count is found from the right). Newlines would
    # split the line.
    name = frame.name.replace(";", ":").replace("\n", " ").replace("\r", " ") or "[empty]"
    return name + FOLDED_SUFFIX.get(frame.kind, "")


def folded(profile: Profile, *, start: float | None = None, end: float | None = None) -> str:
    """flamegraph.pl's folded stacks: ``root;...;leaf VALUE`` per line, sorted, one line
    per distinct stack (stacks that differ only in PID are merged). Kernel frames carry
    ``_[k]`` and JIT frames ``_[j]``."""
    names = [_folded_name(f) for f in profile.frames]
    merged: dict[str, int] = {}
    for idx, value in _stack_values(profile, profile.slot_range(start, end)):
        key = ";".join(names[i] for i in idx)
        merged[key] = merged.get(key, 0) + value
    return "".join(f"{k} {v}\n" for k, v in sorted(merged.items()))


# -- speedscope ----------------------------------------------------------------------

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def speedscope(profile: Profile, *, name: str, start: float | None = None,
               end: float | None = None, exporter: str = "hostscope") -> dict[str, Any]:
    """A speedscope file: one sampled profile whose samples are in time order (slot by
    slot), so speedscope's "Time Order" view shows the capture as it happened. Weights
    are sample counts (unit ``none``) or blocked microseconds (off-CPU)."""
    slots = profile.slot_range(start, end)
    first, last = slots if slots is not None else (0, math.inf)
    events: list[tuple[int, int, int]] = []  # (slot, stack index, value)
    for i, s in enumerate(profile.stacks):
        events.extend((slot, i, v) for slot, v in s.slots if first <= slot < last)
    events.sort()
    used: dict[int, int] = {}  # frame index -> speedscope frame index
    out_frames: list[dict[str, Any]] = []
    samples: list[list[int]] = []
    weights: list[int] = []
    stacks = profile.stacks
    for _, i, value in events:
        ids = []
        for fi in stacks[i].frames:
            sid = used.get(fi)
            if sid is None:
                sid = used[fi] = len(out_frames)
                frame = profile.frames[fi]
                entry: dict[str, Any] = {"name": frame.name + FOLDED_SUFFIX.get(frame.kind, "")}
                if frame.module:
                    entry["file"] = frame.module
                out_frames.append(entry)
            ids.append(sid)
        samples.append(ids)
        weights.append(value)
    unit = "microseconds" if profile.unit == "microseconds" else "none"
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": out_frames},
        "profiles": [{"type": "sampled", "name": name, "unit": unit, "startValue": 0,
                      "endValue": sum(weights), "samples": samples, "weights": weights}],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": exporter,
    }


# -- SVG -----------------------------------------------------------------------------

_XML_ESCAPES = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;", ord('"'): "&quot;",
                ord("'"): "&#39;"}
# XML 1.0 forbids most C0 controls and these code points even as character references.
_XML_FORBIDDEN = {c: "\ufffd" for c in (*range(0x20), 0xFFFE, 0xFFFF) if c not in (9, 10, 13)}
_XML_TABLE = {**_XML_FORBIDDEN, **_XML_ESCAPES}


def xml_text(text: str) -> str:
    """``text`` safe inside an XML element or a quoted attribute: markup characters
    escaped, characters XML cannot carry (controls, lone surrogates) replaced by U+FFFD."""
    out = text.translate(_XML_TABLE)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in out):
        out = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in out)
    return out


#: flamegraph.pl-like palette per frame kind (hue ranges), picked by name hash so a
#: function keeps its colour across graphs.
_PALETTE = {
    "kernel": ((200, 255), (110, 170), (0, 40)),     # orange
    "jit": ((40, 90), (170, 230), (40, 90)),         # green
    "user": ((205, 255), (50, 130), (30, 60)),       # red-yellow, flamegraph.pl "hot"
    "process": ((120, 160), (120, 160), (200, 255)),  # blue
    "unknown": ((160, 190), (160, 190), (160, 190)),  # grey
    "root": ((200, 220), (200, 220), (200, 220)),
}


def _colour(name: str, kind: str) -> str:
    h = 2166136261
    for ch in name.encode("utf-8", "surrogatepass")[:64]:
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    parts = []
    for n, (lo, hi) in enumerate(_PALETTE.get(kind, _PALETTE["unknown"])):
        parts.append(lo + ((h >> (8 * n)) & 0xFF) * (hi - lo) // 255)
    return "rgb({},{},{})".format(*parts)


def _diff_colour(value: int, base: int, total: int, base_total: int) -> str:
    """Red = grew, blue = shrank (shares of each capture's total), white = unchanged."""
    share = value / total if total else 0.0
    base_share = base / base_total if base_total else 0.0
    delta = share - base_share
    scale = min(1.0, abs(delta) / 0.05)  # 5 percentage points of the total = full colour
    fade = int(255 - 175 * scale)
    return f"rgb(255,{fade},{fade})" if delta > 0 else f"rgb({fade},{fade},255)"


FRAME_HEIGHT = 16
FONT_SIZE = 12
SVG_WIDTH = 1200
MIN_WIDTH_PX = 0.1  # frames narrower than this are not drawn (flamegraph.pl's --minwidth)

_SVG_SCRIPT = """
(function () {
  var svg = document.documentElement, W = +svg.getAttribute("width"), PAD = 10;
  var frames = [].slice.call(document.querySelectorAll("g.f"));
  var details = document.getElementById("details"), matched = document.getElementById("matched");
  function num(g, k) { return +g.getAttribute("data-" + k); }
  function label(g) {
    var r = g.querySelector("rect"), t = g.querySelector("text"), w = +r.getAttribute("width");
    var name = g.getAttribute("data-n");
    var chars = Math.floor((w - 6) / 7);
    var fits = name.length <= chars;
    t.textContent = chars < 3 ? "" : (fits ? name : name.slice(0, chars - 2) + "..");
    t.setAttribute("x", +r.getAttribute("x") + 3);
  }
  function zoom(target) {
    var x0 = target ? num(target, "x") : 0, w0 = target ? num(target, "w") : 1;
    var depth = target ? num(target, "d") : -1;
    frames.forEach(function (g) {
      var x = num(g, "x"), w = num(g, "w"), r = g.querySelector("rect");
      var inside = x >= x0 - 1e-9 && x + w <= x0 + w0 + 1e-9;
      var show = inside || (num(g, "d") < depth && x <= x0 + 1e-9 && x + w >= x0 + w0 - 1e-9);
      g.style.display = show ? "" : "none";
      if (!show) return;
      var nx = inside ? (x - x0) / w0 : 0, nw = inside ? w / w0 : 1;
      r.setAttribute("x", PAD + nx * (W - 2 * PAD));
      r.setAttribute("width", Math.max(0, nw * (W - 2 * PAD)));
      g.style.opacity = num(g, "d") < depth ? "0.6" : "";
      label(g);
    });
  }
  frames.forEach(function (g) {
    g.addEventListener("click", function (e) { e.stopPropagation(); zoom(g); });
    g.addEventListener("mouseover", function () {
      details.textContent = g.querySelector("title").textContent;
    });
    g.addEventListener("mouseout", function () { details.textContent = " "; });
    label(g);
  });
  document.getElementById("reset").addEventListener("click", function () { zoom(null); });
  document.getElementById("search").addEventListener("click", function () {
    var term = window.prompt("Search (regular expression)", "");
    var re;
    try { re = term ? new RegExp(term) : null; } catch (err) { re = null; }
    var spans = [];
    frames.forEach(function (g) {
      var r = g.querySelector("rect");
      var name = g.getAttribute("data-n");
      var hit = re !== null && re.test(name);
      r.setAttribute("fill", hit ? "rgb(230,0,230)" : r.getAttribute("data-fill"));
      if (hit) spans.push([num(g, "x"), num(g, "x") + num(g, "w")]);
    });
    spans.sort(function (a, b) { return a[0] - b[0]; });
    var covered = 0, end = -1;
    spans.forEach(function (s) {
      if (s[0] >= end) { covered += s[1] - s[0]; end = s[1]; }
      else if (s[1] > end) { covered += s[1] - end; end = s[1]; }
    });
    matched.textContent = re ? "Matched: " + (100 * covered).toFixed(1) + "%" : " ";
  });
})();
"""


def _label(name: str, width_px: float) -> str:
    """What fits of ``name`` in a frame ``width_px`` wide (~7 px per character at 12 px
    Verdana); the embedded script applies the same rule when zooming."""
    chars = int((width_px - 6) // 7)
    if chars < 3:
        return ""
    return name if len(name) <= chars else name[: chars - 2] + ".."


def svg(profile: Profile, *, title: str, start: float | None = None,
        end: float | None = None, base: Profile | None = None) -> str:
    """A self-contained flamegraph.pl-style SVG: frames as ``<g class="f">`` with a
    ``<rect>``, a ``<text>`` label and a ``<title>`` tooltip (name, value, share), and an
    embedded script for click-to-zoom, reset and regular-expression search with the
    matched share. Every piece of text is escaped with :func:`xml_text`; the script is a
    constant and reads names only through the DOM's ``textContent``.

    With ``base``: a differential flame graph of this capture, coloured by the change of
    each frame's share of its capture's total (red grew, blue shrank).
    """
    tree = build_tree(profile, start=start, end=end, base=base)
    total = tree["value"]
    base_total = tree.get("base", 0)
    unit = "us" if profile.unit == "microseconds" else "samples"
    inner = SVG_WIDTH - 20
    # Depth-first with an explicit stack: x offsets are fractions of the root's value.
    placed: list[tuple[dict[str, Any], int, float, float]] = []
    work: list[tuple[dict[str, Any], int, float]] = [(tree, 0, 0.0)]
    while work:
        node, depth, x = work.pop()
        width = node["value"] / total if total else (1.0 if depth == 0 else 0.0)
        if width * inner < MIN_WIDTH_PX:
            continue
        placed.append((node, depth, x, width))
        cx = x
        for child in node["children"]:
            work.append((child, depth + 1, cx))
            cx += child["value"] / total if total else 0.0
    max_depth = max(d for _, d, _, _ in placed)
    height = (max_depth + 1) * FRAME_HEIGHT + 70
    rows: list[str] = []
    for node, depth, x, width in placed:
        value = node["value"]
        name = "all" if depth == 0 else node["name"]
        share = 100.0 * value / total if total else 0.0
        tip = f"{name} ({value:,} {unit}, {share:.2f}%"
        if base is not None:
            tip += f"; base {node['base']:,}"
        tip += ")"
        fill = (_diff_colour(value, node["base"], total, base_total) if base is not None
                else _colour(name, node["kind"]))
        # Flame order: the root at the bottom.
        y = height - 34 - (depth + 1) * FRAME_HEIGHT
        rows.append(
            f'<g class="f" data-x="{x:.6f}" data-w="{width:.6f}" data-d="{depth}" '
            f'data-n="{xml_text(name)}"><title>{xml_text(tip)}</title>'
            f'<rect x="{10 + x * inner:.2f}" y="{y}" width="{width * inner:.2f}" '
            f'height="{FRAME_HEIGHT - 1}" fill="{fill}" data-fill="{fill}" rx="2"/>'
            f'<text x="{13 + x * inner:.2f}" y="{y + 11}">{xml_text(_label(name, width * inner))}'
            "</text></g>")
    body = "\n".join(rows)
    what = "Differential flame graph" if base is not None else "Flame graph"
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        f'<svg version="1.1" xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" '
        f'height="{height}" viewBox="0 0 {SVG_WIDTH} {height}" '
        f'data-total="{total}" data-unit="{unit}">\n'
        "<style>text { font-family: Verdana, sans-serif; font-size: "
        f"{FONT_SIZE}px; fill: #000; }} g.f {{ cursor: pointer; }} "
        "g.f:hover rect { stroke: #000; stroke-width: 0.5; } "
        "#title { font-size: 17px; } .button { fill: #33c; text-decoration: underline; "
        "cursor: pointer; }</style>\n"
        f'<rect x="0" y="0" width="{SVG_WIDTH}" height="{height}" fill="#f8f8f8"/>\n'
        f'<text id="title" x="{SVG_WIDTH // 2}" y="24" text-anchor="middle">'
        f"{xml_text(what + ': ' + title)}</text>\n"
        '<text id="reset" class="button" x="10" y="24">Reset zoom</text>\n'
        f'<text id="search" class="button" x="{SVG_WIDTH - 110}" y="24">Search</text>\n'
        f'<text id="matched" x="{SVG_WIDTH - 110}" y="{height - 10}"> </text>\n'
        f'<text id="details" x="10" y="{height - 10}"> </text>\n'
        f"{body}\n"
        f'<script type="text/ecmascript"><![CDATA[{_SVG_SCRIPT}]]></script>\n'
        "</svg>\n"
    )


def dumps(data: Any) -> str:
    """Compact strict JSON (no NaN), as every output here is served."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
