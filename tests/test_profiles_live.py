"""Real captures through the REST API: the real daemon (create_app with its default
InProcessOps and profcap's Profiler) on loopback, real perf events, real programs.

Needs root and a working profiler. Elsewhere these tests skip with the reason; under
CI=true they fail instead, because CI runs as root on a machine that can profile.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hostscope.daemon.app import create_app
from hostscope.daemon.keys import PRIVILEGED, PROFILES

from .profile_support import FOLDED_LINE, HOSTILE, SPEEDSCOPE_SCHEMA, check_tree, find
from .support import auth_config, auth_headers, missing

pytestmark = pytest.mark.root

BUSY_C = r"""
#include <stdlib.h>
#include <sys/prctl.h>

static volatile unsigned long sink;

__attribute__((noinline)) void hot_spin(void) {
    for (unsigned long i = 0; i < 200000; i++) sink += i * i;
}

__attribute__((noinline)) void cold_path(void) {
    for (unsigned long i = 0; i < 2000; i++) sink += i;
}

int main(int argc, char **argv) {
    if (argc > 1) prctl(PR_SET_NAME, argv[1], 0, 0, 0);
    for (;;) { hot_spin(); cold_path(); }
}
"""


@pytest.fixture(scope="module")
def busy_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        missing("real captures need root (perf events, BPF)")
    gcc = shutil.which("gcc")
    if gcc is None:
        missing("gcc is not installed (the busy-loop program is compiled per run)")
    tmp = tmp_path_factory.mktemp("busy")
    (tmp / "busy.c").write_text(BUSY_C)
    subprocess.run([gcc, "-O1", "-fno-omit-frame-pointer", "-o", str(tmp / "busy"),
                    str(tmp / "busy.c")], check=True)
    return tmp / "busy"


@pytest.fixture
def busy(busy_binary: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The busy loop, renamed (PR_SET_NAME) to a name full of markup and quotes."""
    proc = subprocess.Popen([str(busy_binary), HOSTILE])
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != HOSTILE:
            assert time.monotonic() < deadline, "the busy loop never renamed itself"
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()


@dataclass
class Server:
    app: web.Application
    base: str
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs = {"data": json.dumps(body), "headers": {"Content-Type": "application/json"}}
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            text = await resp.text()
            parsed = json.loads(text) if resp.content_type == "application/json" else None
            return resp.status, parsed, text

    async def start(self, body: dict[str, Any]) -> dict[str, Any]:
        status, summary, text = await self.call("POST", "/api/v1/profiles", body)
        assert status == 202, text
        return summary

    async def wait(self, pid: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status, summary, _ = await self.call("GET", f"/api/v1/profiles/{pid}")
            assert status == 200
            if summary["state"] in ("done", "failed", "cancelled"):
                return summary
            assert time.monotonic() < deadline, summary
            await asyncio.sleep(0.1)


async def serve(tmp_path: Path, **config: Any) -> tuple[web.AppRunner, Server,
                                                         aiohttp.ClientSession]:
    app = create_app(auth_config(port=0, interval=1.0, static_dir=str(tmp_path), **config))
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    session = aiohttp.ClientSession(headers=auth_headers())
    return runner, Server(app, f"http://127.0.0.1:{runner.addresses[0][1]}", session), session


@pytest.fixture
async def server(tmp_path: Path, busy_binary: Path) -> AsyncIterator[Server]:
    del busy_binary  # root and gcc checked
    # A generous grace: under load, symbolising can take long (the timeout path has its
    # own tests in test_profiles_service.py).
    runner, srv, session = await serve(tmp_path, profile_queue=1, profile_grace=120.0)
    try:
        srv.app[PRIVILEGED].profile_readiness  # noqa: B018 - the seam exists
        if importlib.util.find_spec("hostscope.bpfmods.profiler") is None:
            # Not a host problem: a build without the capture side (skipped in CI too).
            pytest.skip("this build has no capture side (bpfmods/profiler.py)")
        _, listing, _ = await srv.call("GET", "/api/v1/profiles")
        if not listing["kinds"]["cpu"]["available"]:
            missing(f"cpu profiling unavailable: {listing['kinds']['cpu']['reason']}")
        yield srv
    finally:
        await session.close()
        await runner.cleanup()


async def test_busy_loop_capture_and_every_output(server: Server,
                                                  busy: subprocess.Popen[bytes]) -> None:
    summary = await server.start({"kind": "cpu", "duration": 5, "frequency": 99,
                                  "pid": busy.pid})
    done = await server.wait(summary["id"])
    assert done["state"] == "done", done
    # A loaded 2-CPU machine (load 15+) leaves the loop ~10 % of a CPU: ~50 samples.
    assert done["total"] > 20 and done["method"] in ("bpf", "perf")
    pid = summary["id"]

    status, view, _ = await server.call("GET", f"/api/v1/profiles/{pid}?format=json")
    assert status == 200
    tree = view["tree"]
    check_tree(tree)
    proc = find(tree, HOSTILE)  # the raw name: escaping is each output's business
    assert proc["kind"] == "process" and proc["value"] == tree["value"]

    def total_of(node: dict[str, Any], name: str) -> int:
        own = node["value"] if node["name"] == name else 0
        return own or sum(total_of(c, name) for c in node["children"])

    hot, cold = total_of(tree, "hot_spin"), total_of(tree, "cold_path")
    assert hot > 0.8 * tree["value"], (hot, tree["value"])
    assert hot > 20 * max(cold, 1) or cold == 0
    timeline = view["timeline"]
    assert timeline["rows"] * timeline["slot_ms"] == 1000
    assert sum(map(sum, timeline["counts"])) == tree["value"]

    # A range holds only its share of the samples.
    status, ranged, _ = await server.call("GET", f"/api/v1/profiles/{pid}?format=json"
                                          "&start=1&end=3")
    assert status == 200 and 0 < ranged["tree"]["value"] < tree["value"]
    assert abs(ranged["tree"]["value"] / tree["value"] - 0.4) < 0.15

    # SVG: well-formed XML, the hostile name only escaped.
    status, _, svg = await server.call("GET", f"/api/v1/profiles/{pid}?format=svg")
    assert status == 200
    root = ET.fromstring(svg.encode())
    names = {g.get("data-n") for g in root.iter("{http://www.w3.org/2000/svg}g")}
    assert HOSTILE in names and "hot_spin" in names
    assert HOSTILE not in svg and "&lt;b&gt;&quot;x&#39;&amp;" in svg

    status, _, folded = await server.call("GET", f"/api/v1/profiles/{pid}?format=folded")
    lines = folded.splitlines()
    assert status == 200 and lines and all(FOLDED_LINE.match(line) for line in lines)
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == tree["value"]
    assert any(line.startswith(HOSTILE + ";") and "hot_spin" in line for line in lines)

    status, doc, _ = await server.call("GET", f"/api/v1/profiles/{pid}?format=speedscope")
    assert status == 200
    jsonschema = pytest.importorskip("jsonschema")
    if not SPEEDSCOPE_SCHEMA.exists():
        missing("speedscope's schema is not installed (cd frontend && npm ci)")
    schema = json.loads(SPEEDSCOPE_SCHEMA.read_text())
    schema.setdefault("$ref", "#/definitions/FileFormat.File")
    jsonschema.Draft7Validator(schema).validate(doc)
    assert sum(doc["profiles"][0]["weights"]) == tree["value"]


async def test_concurrent_posts_queue_cancel_and_diff(server: Server,
                                                      busy: subprocess.Popen[bytes]) -> None:
    body = {"kind": "cpu", "duration": 5, "pid": busy.pid}
    results = await asyncio.gather(*(server.call("POST", "/api/v1/profiles", body)
                                     for _ in range(3)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [202, 202, 409], results  # one runs, one waits (queue 1), one busy
    busy_answer = next(b for s, b, _ in results if s == 409)
    assert busy_answer["error"]["code"] == "busy"
    accepted = [b for s, b, _ in results if s == 202]
    states = sorted(b["state"] for b in accepted)
    assert states == ["queued", "running"]
    running = next(b for b in accepted if b["state"] == "running")
    queued = next(b for b in accepted if b["state"] == "queued")
    assert queued["position"] == 1

    # Cancel the running one: it stops at once and the queued one starts.
    status, cancelled, _ = await server.call("DELETE", f"/api/v1/profiles/{running['id']}")
    assert status == 200 and cancelled["state"] == "cancelled"
    after = await server.wait(queued["id"])
    assert after["state"] == "done", after
    status, again, _ = await server.call("DELETE", f"/api/v1/profiles/{running['id']}")
    assert status == 409 and again["error"]["code"] == "not_running"

    # A second capture, and the first as its base: a differential tree.
    second = await server.start({"kind": "cpu", "duration": 5, "pid": busy.pid})
    assert (await server.wait(second["id"]))["state"] == "done"
    status, diff, _ = await server.call(
        "GET", f"/api/v1/profiles/{second['id']}?format=json&base={queued['id']}")
    assert status == 200 and diff["base"]["id"] == queued["id"]
    check_tree(diff["tree"])
    hot = find(diff["tree"], HOSTILE)
    assert hot["value"] > 0 and hot["base"] > 0
    status, _, svg = await server.call(
        "GET", f"/api/v1/profiles/{second['id']}?format=svg&base={queued['id']}")
    assert status == 200
    ET.fromstring(svg.encode())


async def test_shutdown_stops_a_capture(tmp_path: Path, busy_binary: Path) -> None:
    del busy_binary
    if importlib.util.find_spec("hostscope.bpfmods.profiler") is None:
        pytest.skip("this build has no capture side (bpfmods/profiler.py)")
    runner, srv, session = await serve(tmp_path, profile_grace=120.0)
    try:
        _, listing, _ = await srv.call("GET", "/api/v1/profiles")
        if not listing["kinds"]["cpu"]["available"]:
            missing(f"cpu profiling unavailable: {listing['kinds']['cpu']['reason']}")
        summary = await srv.start({"kind": "cpu", "duration": 60})
        capture = srv.app[PROFILES].get(summary["id"])
        # Wait until it samples: a BPF compile in progress cannot be interrupted.
        deadline = time.monotonic() + 60
        while capture.progress <= 0:
            assert time.monotonic() < deadline, capture.summary()
            await asyncio.sleep(0.1)
    finally:
        await session.close()
        t0 = time.monotonic()
        await runner.cleanup()
    assert time.monotonic() - t0 < 5
    assert capture.state == "cancelled"


def cgroup2_root() -> Path:
    """The unified (v2) hierarchy: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid
    hosts like this one."""
    for path in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (path / "cgroup.controllers").exists():
            return path
    missing("no cgroup v2 hierarchy mounted")
    raise AssertionError("unreachable")


async def test_container_filter_by_cgroup_name(tmp_path: Path, busy_binary: Path) -> None:
    """A "container" named as the cgroup collector names it is resolved to its cgroup
    path, and the capture holds only that cgroup's processes."""
    if importlib.util.find_spec("hostscope.bpfmods.profiler") is None:
        pytest.skip("this build has no capture side (bpfmods/profiler.py)")
    name = f"hostscope-profsvc-{os.getpid()}"
    cgroup = cgroup2_root() / name
    cgroup.mkdir()
    inside = subprocess.Popen([str(busy_binary), "inside-cg"])
    outside = subprocess.Popen([str(busy_binary), "outside-cg"])
    runner = session = None
    try:
        (cgroup / "cgroup.procs").write_text(str(inside.pid))
        runner, srv, session = await serve(tmp_path, profile_grace=120.0)
        from hostscope.daemon.keys import SAMPLER

        deadline = time.monotonic() + 20
        while f"/{name}" not in srv.app[SAMPLER].latest.get("cgroup.container.name", {}):
            assert time.monotonic() < deadline, "the cgroup collector never saw the cgroup"
            await asyncio.sleep(0.2)
        summary = await srv.start({"kind": "cpu", "duration": 5, "frequency": 99,
                                   "container": f"/{name}"})
        assert summary["request"]["container"] == f"/{name}"
        done = await srv.wait(summary["id"])
        assert done["state"] == "done", done
        _, view, _ = await srv.call("GET", f"/api/v1/profiles/{summary['id']}?format=json")
        processes = {c["name"]: c["value"] for c in view["tree"]["children"]}
        assert processes.get("inside-cg", 0) > 0.9 * view["tree"]["value"], processes
        assert "outside-cg" not in processes
    finally:
        for proc in (inside, outside):
            proc.kill()
            proc.wait()
        if session is not None:
            await session.close()
        if runner is not None:
            await runner.cleanup()
        for _ in range(50):  # the killed task leaves the cgroup asynchronously
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.05)
