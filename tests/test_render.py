"""Server-side SVG renders (daemon/render.py) and the panel catalogue they share with the
dashboard, driven through a real Sampler, History and aiohttp application."""

from __future__ import annotations

import itertools
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hostscope.daemon import render
from hostscope.daemon.errors import error_middleware
from hostscope.daemon.keys import SAMPLER
from hostscope.metrics import model as m
from hostscope.metrics.collector import Collector, Raw
from hostscope.metrics.collectors.cpu import CpuCollector
from hostscope.metrics.format import format_value
from hostscope.metrics.history import History
from hostscope.metrics.model import MetricDesc, MetricRegistry, instant
from hostscope.metrics.sampler import Sampler

from .support import FakeClock, copy_fixture

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "frontend" / "src" / "lib" / "format.cases.json"
SVG = "{http://www.w3.org/2000/svg}"

#: Instance names as hostile as mount points and process names can be.
HOSTILE = ['/mnt/<script>alert("x")</script>', "/srv/a&b 'q'", "/bad\x01ctl]]>"]


class HostileFilesystems(Collector):
    """A real collector (not a mock) whose instance names try to break out of the SVG."""

    name = "hostile"

    def descriptors(self) -> list[MetricDesc]:
        return [instant("filesys.full", m.NONE, "Percent of capacity used", indom="filesys")]

    def collect(self) -> Raw:
        return {"filesys.full": {name: 10.0 * (i + 1) for i, name in enumerate(HOSTILE)}}


def _advance_stat(stat: Path, step: int) -> None:
    """Move every CPU's tick counters on, user faster than sys, so utilisation is real."""
    out = []
    for line in stat.read_text().splitlines():
        if line.startswith("cpu"):
            name, *ticks = line.split()
            bumped = [int(t) + (30 + step, 1, 10, 40, 2)[i] if i < 5 else int(t)
                      for i, t in enumerate(ticks)]
            out.append(" ".join([name, *map(str, bumped)]))
        else:
            out.append(line)
    stat.write_text("\n".join(out) + "\n")


def build_sampler(tmp_path: Path) -> tuple[Sampler, FakeClock]:
    roots = copy_fixture(tmp_path, "cpu", "live")
    clock = FakeClock()
    sampler = Sampler(
        [CpuCollector(roots, hz=100), HostileFilesystems()],
        registry=MetricRegistry(),
        clock=clock,
        history=History(),
    )
    for step in range(6):
        sampler.sample()
        _advance_stat(roots.proc / "stat", step)
        clock.advance(1.0)
    return sampler, clock


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[error_middleware])
    sampler, _ = build_sampler(tmp_path)
    app[SAMPLER] = sampler
    render.add_routes(app)
    async with TestClient(TestServer(app)) as c:
        yield c


# -- the catalogue ----------------------------------------------------------------------


def test_catalogue_is_consistent() -> None:
    data = json.loads(render.PANELS_FILE.read_text())
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    assert set(data["default"]) <= set(ids)
    groups = {g["id"] for g in data["groups"]}
    assert {"cpu", "memory", "disk", "network", "processes", "containers", "bpf",
            "flamegraphs", "custom"} == groups
    name = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
    for p in data["panels"]:
        assert p["group"] in groups
        for s in p["series"]:
            assert name.match(s["metric"]), s
    cat = render.load_catalogue()
    assert cat.panels["cpu.util"].stack
    assert len(cat.palette) >= 8


# -- the SVG ----------------------------------------------------------------------------


async def test_hostile_instance_names_are_escaped(client: TestClient) -> None:
    resp = await client.get("/api/v1/render/fs.full.svg?seconds=60")
    assert resp.status == 200
    assert resp.content_type == "image/svg+xml"
    body = await resp.text()
    assert "<script>" not in body and "\x01" not in body and "]]>" not in body
    root = ET.fromstring(body)  # well-formed XML despite the names
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert '/mnt/<script>alert("x")</script>: 10 %' in texts
    assert "/srv/a&b 'q': 20 %" in texts
    assert any(t.startswith("/badctl]]>") for t in texts)
    # percent metrics are drawn as utilisation: the axis ends at 100 %
    assert "100 %" in texts


async def test_stacked_cpu_panel_and_units(client: TestClient) -> None:
    resp = await client.get("/api/v1/render/cpu.util.svg?seconds=300&theme=dark&width=800")
    assert resp.status == 200
    root = ET.fromstring(await resp.text())
    assert root.get("width") == "800"
    assert len(list(root.iter(f"{SVG}polygon"))) >= 1  # stacked areas
    labels = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert "CPU utilisation" in labels
    assert any(t.startswith("user: ") and t.endswith("%") for t in labels)


def test_stacking_is_cumulative_and_units_are_base(tmp_path: Path) -> None:
    sampler, clock = build_sampler(tmp_path)
    cat = render.load_catalogue()
    lines = render.lines_for(cat.panels["cpu.util"], sampler.registry, sampler.history, 300)
    assert [ln.label for ln in lines][:3] == ["user", "nice", "sys"]
    user = [v for v in lines[0].values if v is not None]
    assert user and all(0 < v < 1 for v in user)  # base units: a fraction, not ms/s
    for lower, upper in itertools.pairwise(lines):
        for a, b in zip(lower.values, upper.values, strict=True):
            if a is not None and b is not None:
                assert b >= a - 1e-9
    fs = render.lines_for(cat.panels["fs.full"], sampler.registry, sampler.history, 300)
    assert {ln.units for ln in fs} == {m.UTILIZATION}
    mnt = next(ln for ln in fs if ln.label == HOSTILE[0])
    assert next(v for v in mnt.values if v is not None) == pytest.approx(0.1)
    only = render.lines_for(
        cat.panels["fs.full"], sampler.registry, sampler.history, 300, instances={HOSTILE[1]}
    )
    assert [ln.label for ln in only] == [HOSTILE[1]]
    assert clock.wall() > 0


def test_empty_panel_says_so() -> None:
    cat = render.load_catalogue()
    svg = render.render_svg(cat.panels["disk.util"], [], palette=cat.palette, seconds=60,
                            now=1_700_000_000.0)
    texts = ["".join(t.itertext()) for t in ET.fromstring(svg).iter(f"{SVG}text")]
    assert "no data for this panel on this host" in texts


def test_byte_axes_step_in_powers_of_two() -> None:
    cat = render.load_catalogue()
    line = render.Line("used", [1.0, 2.0], [3.0 * 2**30, 5.0 * 2**30], m.BYTES)
    svg = render.render_svg(cat.panels["mem.util"], [line], palette=cat.palette, seconds=2,
                            now=2.0)
    texts = ["".join(t.itertext()) for t in ET.fromstring(svg).iter(f"{SVG}text")]
    assert "2 GiB" in texts and "4 GiB" in texts


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("nope.svg", 404, "not_found"),
        ("proc.top.svg", 404, "not_found"),
        ("cpu.util.svg?seconds=0", 400, "bad_parameter"),
        ("cpu.util.svg?seconds=abc", 400, "bad_parameter"),
        ("cpu.util.svg?seconds=90000", 400, "bad_parameter"),
        ("cpu.util.svg?seconds=nan", 400, "bad_parameter"),
        ("cpu.util.svg?width=5", 400, "bad_parameter"),
        ("cpu.util.svg?height=x", 400, "bad_parameter"),
        ("cpu.util.svg?theme=pink", 400, "bad_parameter"),
    ],
)
async def test_errors_are_json(client: TestClient, query: str, status: int, code: str) -> None:
    resp = await client.get(f"/api/v1/render/{query}")
    assert resp.status == status
    body = await resp.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]


async def test_panel_ids_with_markup_are_escaped_in_errors(client: TestClient) -> None:
    resp = await client.get("/api/v1/render/%3Cimg%20src%3Dx%3E.svg")
    assert resp.status == 404
    assert resp.content_type == "application/json"


# -- format.ts is the twin of format.py --------------------------------------------------

_UNITS = {
    "bytes": m.BYTES, "kbytes": m.KBYTES, "kbytes_rate": m.KBYTES.rate(), "msec": m.MSEC,
    "usec": m.USEC, "nsec": m.NSEC, "sec": m.SEC, "msec_rate": m.MSEC.rate(),
    "util": m.UTILIZATION, "count": m.COUNT, "count_rate": m.COUNT.rate(), "none": m.NONE,
    "mbytes": m.MBYTES,
}
_VALUES = [0, 1, -1, 0.5, 1.125, 2.5, 0.001234, 0.1, 0.99949, 12.3456, 999.5, 1000, 1023,
           1024, 1536, 123456.789, 1e7, 3.3e9, 7e12, 1.5e15, 2e18, -2048, 1e-7, 5e-10, 59.99,
           119.9, 120, 3600, 7199, 86400, 200000, 0.000999, 45.25, 1234.5, 0.0125]


def _units_json(u: m.Units) -> dict[str, object]:
    return {"kind": u.kind, "per_sec": u.per_sec, "base_factor": u.base_factor(), "label": str(u)}


def format_cases() -> dict[str, object]:
    """Every case frontend/src/lib/format.spec.ts checks format.ts against."""
    cases: list[dict[str, object]] = [
        {"value": v, "units": _units_json(u), "text": format_value(v, u)}
        for u in _UNITS.values() for v in _VALUES
    ]
    for u in (m.BYTES, m.UTILIZATION):
        for v in (None, "bash"):
            cases.append({"value": v, "units": _units_json(u), "text": format_value(v, u)})
    return {
        "generated_by": "hostscope.metrics.format.format_value "
                        "(tests/test_render.py checks this file is current)",
        "cases": cases,
    }


def test_format_cases_for_the_typescript_twin_are_current() -> None:
    """format.py and format.ts must agree: regenerate with `python -m tests.test_render`."""
    committed = json.loads(CASES.read_text())
    fresh = format_cases()
    assert len(committed["cases"]) == len(fresh["cases"])  # type: ignore[arg-type]
    for old, new in zip(committed["cases"], fresh["cases"], strict=True):  # type: ignore[call-overload]
        assert old["text"] == new["text"], (old, new)
        assert old["units"]["kind"] == new["units"]["kind"]
        assert math.isclose(old["units"]["base_factor"], new["units"]["base_factor"])


if __name__ == "__main__":
    CASES.write_text(json.dumps(format_cases(), indent=0) + "\n")
