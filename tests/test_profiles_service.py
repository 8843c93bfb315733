"""The profile service and its REST API over a scripted privileged side.

The privileged side here is a stand-in that plays the Profiler's protocol (start, poll,
fetch, cancel) over recorded or constructed ProfileData on a compressed timescale, so the
queue, cancel, eviction, timeout and error paths run in a second instead of minutes. The
real captures (root) are in tests/test_profiles_live.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hostscope.daemon.app import create_app
from hostscope.daemon.config import Config
from hostscope.daemon.errors import ProfileApiError
from hostscope.daemon.keys import PROFILES
from hostscope.daemon.privileged import InProcessOps
from hostscope.daemon.profiles import ProfileService, parse_request, resolve_container

from .profile_support import FOLDED_LINE, HOSTILE, profile_data
from .support import auth_config, auth_headers

#: Real seconds per requested second of capture.
SCALE = 0.02


class CaptureFailed(Exception):
    """Shaped like the Profiler's ProfileError (code, message)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ScriptedOps(InProcessOps):
    """InProcessOps (bpf off) whose profile_* calls follow the Profiler's protocol over
    ProfileData made by ``make(request)``; ``hang`` makes poll block (a stuck helper)."""

    def __init__(self, make: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        super().__init__(lambda _d: None, bpf=False)
        self.make = make or (lambda req: profile_data(
            [([(HOSTILE, "process"), ("main", "user"), ("hot", "user")], [(0, 3), (60, 2)]),
             ([(HOSTILE, "process"), ("main", "user"), ("cold", "user")], [(120, 1)])],
            kind=req["kind"], duration_s=req["duration_s"]))
        self.running: dict[str, tuple[dict[str, Any], float, str]] = {}
        self.started: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.hang = threading.Event()
        self.release = threading.Event()
        self.available = True
        self.cancel_delay_s = 0.0  # a privileged side slow to stop its perf events
        self._n = 0
        self._lock = threading.Lock()

    def profile_readiness(self) -> dict[str, Any]:
        entry = {"available": self.available, "method": "bpf" if self.available else None,
                 "reason": None if self.available else "no perf events here"}
        return {"cpu": entry, "offcpu": entry}

    def profile_start(self, request: Any) -> str:
        with self._lock:
            if any(state == "running" for _, _, state in self.running.values()):
                raise CaptureFailed("busy", "a capture is running")
            self._n += 1
            cid = f"c{self._n}"
            self.running[cid] = (dict(request), time.monotonic(), "running")
            self.started.append(dict(request))
            return cid

    def profile_poll(self, capture_id: str) -> dict[str, Any]:
        if self.hang.is_set():
            self.release.wait(30)
        request, t0, state = self.running[capture_id]
        if state != "running":
            return {"state": state, "progress": 1.0, "error": None}
        progress = (time.monotonic() - t0) / (request["duration_s"] * SCALE)
        if progress >= 1:
            self.running[capture_id] = (request, t0, "done")
            return {"state": "done", "progress": 1.0, "error": None}
        return {"state": "running", "progress": progress, "error": None}

    def profile_fetch(self, capture_id: str) -> dict[str, Any]:
        request, _, _ = self.running.pop(capture_id)
        return self.make(request)

    def profile_cancel(self, capture_id: str) -> None:
        self.cancelled.append(capture_id)
        time.sleep(self.cancel_delay_s)
        if capture_id in self.running:
            request, t0, _ = self.running[capture_id]
            self.running[capture_id] = (request, t0, "cancelled")


@dataclass
class Server:
    app: web.Application
    base: str
    session: aiohttp.ClientSession
    ops: ScriptedOps

    async def call(self, method: str, path: str, body: Any = None,
                   **kwargs: Any) -> tuple[int, Any]:
        if body is not None:
            kwargs["data"] = json.dumps(body)
            kwargs.setdefault("headers", {"Content-Type": "application/json"})
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            text = await resp.text()
            if resp.content_type == "application/json":
                return resp.status, json.loads(text)
            return resp.status, text

    async def wait_state(self, pid: str, *states: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, summary = await self.call("GET", f"/api/v1/profiles/{pid}")
            assert status == 200
            if summary["state"] in states:
                return summary
            await asyncio.sleep(0.05)
        raise AssertionError(f"{pid} never reached {states}: {summary}")


@pytest.fixture
async def server(tmp_path: Any) -> AsyncIterator[Server]:
    ops = ScriptedOps()
    config = auth_config(interval=0.2, port=0, static_dir=str(tmp_path), profile_queue=2,
                    profile_keep=3)
    app = create_app(config, privileged=ops)
    app[PROFILES].poll_interval_s = 0.02
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    async with aiohttp.ClientSession(headers=auth_headers()) as session:
        yield Server(app, f"http://127.0.0.1:{runner.addresses[0][1]}", session, ops)
    await runner.cleanup()


def assert_error(status: int, body: Any, want_status: int, code: str) -> None:
    assert (status, body["error"]["code"]) == (want_status, code), body
    assert body["error"]["message"]


# -- request validation ------------------------------------------------------------


@pytest.mark.parametrize("body, fragment", [
    ([], "JSON object"),
    ({"kind": "wall"}, "'kind'"),
    ({"kind": "cpu", "duration": 4}, "'duration'"),
    ({"kind": "cpu", "duration": 121}, "'duration'"),
    ({"kind": "cpu", "duration": "30"}, "'duration'"),
    ({"kind": "cpu", "duration": float("nan")}, "'duration'"),
    ({"kind": "cpu", "frequency": 1000}, "'frequency'"),
    ({"kind": "cpu", "frequency": 0}, "'frequency'"),
    ({"kind": "cpu", "frequency": 49.5}, "'frequency'"),
    ({"kind": "cpu", "pid": 0}, "'pid'"),
    ({"kind": "cpu", "pid": True}, "'pid'"),
    ({"kind": "cpu", "pid": 1, "container": "x"}, "not both"),
    ({"kind": "cpu", "container": ""}, "'container'"),
    ({"kind": "cpu", "cmd": "rm -rf /"}, "unknown key"),
])
def test_parse_request_rejects(body: Any, fragment: str) -> None:
    with pytest.raises(ProfileApiError, match=fragment) as info:
        parse_request(body)
    assert info.value.status == 400 and info.value.code == "invalid_request"


def test_parse_request_defaults() -> None:
    assert parse_request({"kind": "cpu"}) == {
        "kind": "cpu", "duration": 30.0, "frequency": 49, "pid": None, "container": None}
    assert parse_request({"kind": "offcpu", "frequency": 99, "pid": 7}) == {
        "kind": "offcpu", "duration": 10.0, "frequency": None, "pid": 7, "container": None}


def test_resolve_container() -> None:
    names = {"/": "/", "/system.slice": "system.slice",
             "/system.slice/docker-" + "a" * 64 + ".scope": "docker:aaaaaaaaaaaa",
             "/system.slice/nginx.service": "nginx.service",
             "/process_api": "/process_api", "/process_api/x1": "/process_api/x1"}
    assert resolve_container(names, "nginx.service") == "/system.slice/nginx.service"
    assert resolve_container(names, "docker:aaaaaaaaaaaa").startswith("/system.slice/docker-")
    assert resolve_container(names, "/process_api") == "/process_api"
    with pytest.raises(ProfileApiError, match="known: ") as info:
        resolve_container(names, "nope")
    assert info.value.status == 404
    # On a hybrid host a cgroup only v1 hierarchies have cannot be filtered by: a name in
    # both resolves to the v2 cgroup, one only in v1 is refused saying why.
    versions = {path: "v2" for path in names} | {"/process_api": "v1",
                                                  "/process_api/x1": "v1"}
    assert resolve_container(names, "nginx.service", versions) == "/system.slice/nginx.service"
    with pytest.raises(ProfileApiError, match="only in cgroup v1") as info:
        resolve_container(names, "/process_api", versions)
    assert (info.value.code, info.value.status) == ("unsupported_container", 409)
    both = {"/a/web": "web", "/web": "web"}
    assert resolve_container(both, "web", {"/a/web": "v2", "/web": "v1"}) == "/a/web"


async def test_malformed_and_out_of_range_posts(server: Server) -> None:
    status, body = await server.call("POST", "/api/v1/profiles", {"kind": "cpu", "duration": 1})
    assert_error(status, body, 400, "invalid_request")
    status, body = await server.call("POST", "/api/v1/profiles", data="{not json",
                                     headers={"Content-Type": "application/json"})
    assert_error(status, body, 400, "bad_request")
    status, body = await server.call("POST", "/api/v1/profiles", data='{"kind":"cpu"}',
                                     headers={"Content-Type": "text/plain"})
    assert_error(status, body, 415, "unsupported_media_type")
    status, body = await server.call("POST", "/api/v1/profiles", {"kind": "cpu"},
                                     headers={"Content-Type": "application/json",
                                              "Origin": "http://evil.example"})
    assert_error(status, body, 403, "origin_not_allowed")
    status, body = await server.call("POST", "/api/v1/profiles",
                                     {"kind": "cpu", "pid": 4_000_000})
    assert_error(status, body, 404, "no_such_process")
    status, body = await server.call("POST", "/api/v1/profiles",
                                     {"kind": "cpu", "container": "no-such-thing"})
    assert_error(status, body, 404, "unknown_container")
    for path in ("/api/v1/profiles/short", "/api/v1/profiles/" + "A" * 22):
        status, body = await server.call("GET", path)
        assert_error(status, body, 404, "unknown_profile")
    assert server.ops.started == []


async def test_unavailable_says_why(server: Server) -> None:
    server.ops.available = False
    server.app[PROFILES]._readiness = None
    status, body = await server.call("POST", "/api/v1/profiles", {"kind": "cpu"})
    assert_error(status, body, 409, "unavailable")
    assert "no perf events here" in body["error"]["message"]
    status, listing = await server.call("GET", "/api/v1/profiles")
    assert listing["kinds"]["cpu"] == {"available": False, "method": None,
                                       "reason": "no perf events here"}


# -- lifecycle -----------------------------------------------------------------------


async def test_capture_lifecycle_and_outputs(server: Server) -> None:
    status, summary = await server.call("POST", "/api/v1/profiles",
                                        {"kind": "cpu", "duration": 5, "frequency": 99})
    assert status == 202
    pid = summary["id"]
    assert len(pid) == 22 and summary["state"] == "running"
    assert server.ops.started == [{"kind": "cpu", "duration_s": 5.0, "frequency_hz": 99}]
    status, body = await server.call("GET", f"/api/v1/profiles/{pid}?format=json")
    assert_error(status, body, 409, "not_done")
    done = await server.wait_state(pid, "done")
    assert done["total"] == 6 and done["method"] == "bpf" and done["progress"] == 1.0
    assert done["request"] == {"kind": "cpu", "duration": 5.0, "frequency": 99, "pid": None,
                               "container": None}

    status, view = await server.call("GET", f"/api/v1/profiles/{pid}?format=json")
    assert status == 200
    assert view["profile"]["id"] == pid and view["range"] is None and view["base"] is None
    assert view["tree"]["value"] == 6
    assert view["tree"]["children"][0]["name"] == HOSTILE
    assert view["timeline"]["rows"] == 50 and view["timeline"]["seconds"] == 5

    status, ranged = await server.call("GET", f"/api/v1/profiles/{pid}?format=json"
                                       "&start=1&end=2.5")
    assert ranged["range"] == {"start": 1.0, "end": 2.5} and ranged["tree"]["value"] == 3

    async with server.session.get(f"{server.base}/api/v1/profiles/{pid}?format=svg") as resp:
        assert resp.status == 200 and resp.content_type == "image/svg+xml"
        assert "attachment" in resp.headers["Content-Disposition"]
        text = await resp.text()
    ET.fromstring(text.encode())
    assert HOSTILE not in text and "&lt;b&gt;&quot;x&#39;&amp;" in text
    status, folded = await server.call("GET", f"/api/v1/profiles/{pid}?format=folded")
    assert all(FOLDED_LINE.match(line) for line in folded.splitlines())
    status, doc = await server.call("GET", f"/api/v1/profiles/{pid}?format=speedscope")
    assert status == 200 and doc["profiles"][0]["endValue"] == 6

    for query, code in (("format=pdf", "bad_parameter"), ("format=json&start=3&end=2",
                        "bad_parameter"), ("format=json&start=x", "bad_parameter"),
                        ("format=json&end=99", "bad_parameter")):
        status, body = await server.call("GET", f"/api/v1/profiles/{pid}?{query}")
        assert_error(status, body, 400, code)
    status, body = await server.call("DELETE", f"/api/v1/profiles/{pid}")
    assert_error(status, body, 409, "not_running")


async def test_one_at_a_time_queue_then_busy(server: Server) -> None:
    ids = []
    for _ in range(3):  # one runs, two wait (profile_queue = 2)
        status, summary = await server.call("POST", "/api/v1/profiles",
                                            {"kind": "cpu", "duration": 10})
        assert status == 202
        ids.append(summary["id"])
    status, body = await server.call("POST", "/api/v1/profiles", {"kind": "cpu"})
    assert_error(status, body, 409, "busy")
    assert "queue limit 2" in body["error"]["message"]
    _, listing = await server.call("GET", "/api/v1/profiles")
    states = {p["id"]: (p["state"], p["position"]) for p in listing["profiles"]}
    assert states == {ids[0]: ("running", None), ids[1]: ("queued", 1),
                      ids[2]: ("queued", 2)}
    assert [p["id"] for p in listing["profiles"]] == ids[::-1]  # newest first
    assert listing["limits"]["queue"] == 2 and listing["limits"]["keep"] == 3
    # Cancelling a queued one moves the next up; they then run one after another.
    status, cancelled = await server.call("DELETE", f"/api/v1/profiles/{ids[1]}")
    assert status == 200 and cancelled["state"] == "cancelled"
    assert cancelled["error"]["code"] == "cancelled"
    assert (await server.call("GET", f"/api/v1/profiles/{ids[2]}"))[1]["position"] == 1
    await server.wait_state(ids[0], "done")
    await server.wait_state(ids[2], "done")
    assert len(server.ops.started) == 2  # the cancelled one never started


async def test_cancel_running(server: Server) -> None:
    _, summary = await server.call("POST", "/api/v1/profiles", {"kind": "cpu", "duration": 60})
    status, cancelled = await server.call("DELETE", f"/api/v1/profiles/{summary['id']}")
    assert status == 200 and cancelled["state"] == "cancelled"
    assert server.ops.cancelled == ["c1"]
    # The slot is free: the next starts at once.
    status, nxt = await server.call("POST", "/api/v1/profiles", {"kind": "offcpu"})
    assert status == 202 and nxt["state"] == "running"


async def test_concurrent_cancels_cancel_once(server: Server) -> None:
    _, summary = await server.call("POST", "/api/v1/profiles", {"kind": "cpu", "duration": 60})
    server.ops.cancel_delay_s = 0.3  # every DELETE arrives while the first is in flight
    answers = await asyncio.gather(*(
        server.call("DELETE", f"/api/v1/profiles/{summary['id']}") for _ in range(5)))
    assert all(status == 200 and body["state"] == "cancelled" for status, body in answers)
    assert server.ops.cancelled == ["c1"]  # the privileged side was asked once
    status, again = await server.call("DELETE", f"/api/v1/profiles/{summary['id']}")
    assert status == 409 and again["error"]["code"] == "not_running"


async def test_diff_against_a_base(server: Server) -> None:
    _, a = await server.call("POST", "/api/v1/profiles", {"kind": "cpu", "duration": 5})
    await server.wait_state(a["id"], "done")
    _, b = await server.call("POST", "/api/v1/profiles", {"kind": "cpu", "duration": 5})
    await server.wait_state(b["id"], "done")
    status, view = await server.call("GET", f"/api/v1/profiles/{b['id']}?format=json"
                                     f"&base={a['id']}")
    assert status == 200 and view["base"] == {"id": a["id"], "total": 6}
    assert view["tree"]["base"] == 6 and view["tree"]["value"] == 6
    status, text = await server.call("GET", f"/api/v1/profiles/{b['id']}?format=svg"
                                     f"&base={a['id']}")
    assert status == 200 and "Differential flame graph" in text
    _, off = await server.call("POST", "/api/v1/profiles", {"kind": "offcpu", "duration": 5})
    await server.wait_state(off["id"], "done")
    status, body = await server.call("GET", f"/api/v1/profiles/{b['id']}?format=json"
                                     f"&base={off['id']}")
    assert_error(status, body, 409, "base_mismatch")


async def test_store_keeps_the_newest(server: Server) -> None:
    ids = []
    for _ in range(5):
        _, s = await server.call("POST", "/api/v1/profiles", {"kind": "cpu", "duration": 5})
        await server.wait_state(s["id"], "done")
        ids.append(s["id"])
    _, listing = await server.call("GET", "/api/v1/profiles")
    assert [p["id"] for p in listing["profiles"]] == ids[:1:-1]
    status, body = await server.call("GET", f"/api/v1/profiles/{ids[0]}")
    assert_error(status, body, 404, "unknown_profile")


async def test_start_error_answers_the_post(server: Server) -> None:
    def fail(_req: dict[str, Any]) -> str:
        raise CaptureFailed("no_such_cgroup", "cgroup vanished")
    server.ops.profile_start = fail  # type: ignore[method-assign]
    status, body = await server.call("POST", "/api/v1/profiles", {"kind": "cpu"})
    assert_error(status, body, 404, "no_such_cgroup")
    assert (await server.call("GET", "/api/v1/profiles"))[1]["profiles"] == []


async def test_shutdown_cancels_the_capture_in_flight(tmp_path: Any) -> None:
    ops = ScriptedOps()
    app = create_app(Config(port=0, static_dir=str(tmp_path)), privileged=ops)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    capture = await app[PROFILES].submit({"kind": "cpu", "duration": 60})
    await runner.cleanup()
    assert ops.cancelled == ["c1"] and capture.state == "cancelled"


# -- a stuck privileged side ---------------------------------------------------------


class FastClock:
    """Wall and monotonic time running ``speed`` times faster than real time."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.t0 = time.monotonic()

    def mono(self) -> float:
        return self.t0 + (time.monotonic() - self.t0) * self.speed

    def wall(self) -> float:
        return 1_795_000_000.0 + self.mono()


def service(ops: ScriptedOps, **kwargs: Any) -> ProfileService:
    return ProfileService(ops, clock=kwargs.pop("clock", FastClock(1.0)),
                          containers=dict, pid_exists=lambda _p: True,
                          poll_interval_s=0.02, **kwargs)


async def wait_final(svc: ProfileService, capture_id: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not svc.get(capture_id).final:
        assert time.monotonic() < deadline, svc.get(capture_id).summary()
        await asyncio.sleep(0.02)


async def test_hung_poll_times_out_and_frees_the_slot() -> None:
    ops = ScriptedOps()
    ops.hang.set()
    svc = service(ops, call_timeout_s=0.3)
    try:
        first = await svc.submit({"kind": "cpu", "duration": 5})
        queued = await svc.submit({"kind": "cpu", "duration": 5})
        assert queued.state == "queued"
        await wait_final(svc, first.id)
        assert first.state == "failed" and first.error is not None
        assert first.error["code"] == "timeout" and "stuck" in first.error["message"]
        assert ops.cancelled == ["c1"]
        ops.hang.clear()
        ops.release.set()
        await wait_final(svc, queued.id)
        assert queued.state == "done"
    finally:
        ops.release.set()
        await svc.close()


async def test_capture_that_never_finishes_fails_after_duration_plus_grace() -> None:
    ops = ScriptedOps()
    ops.profile_poll = lambda _cid: {"state": "symbolizing", "progress": 1.0,  # type: ignore
                                     "error": None}
    svc = service(ops, grace_s=2.0, clock=FastClock(50.0))
    try:
        capture = await svc.submit({"kind": "cpu", "duration": 5})
        await wait_final(svc, capture.id)
        assert capture.state == "failed" and capture.error is not None
        assert capture.error["code"] == "timeout" and "7 s" in capture.error["message"]
    finally:
        await svc.close()


async def test_failed_capture_reports_the_privileged_error() -> None:
    ops = ScriptedOps()
    ops.profile_poll = lambda _cid: {"state": "failed", "progress": 0.2,  # type: ignore
                                     "error": {"code": "capture_failed",
                                               "message": "perf record exited 1"}}
    svc = service(ops)
    try:
        capture = await svc.submit({"kind": "cpu", "duration": 5})
        await wait_final(svc, capture.id)
        assert capture.state == "failed"
        assert capture.error == {"code": "capture_failed", "message": "perf record exited 1"}
    finally:
        await svc.close()


async def test_store_is_bounded_by_bytes() -> None:
    ops = ScriptedOps()
    svc = service(ops, keep=100, keep_bytes=1)
    try:
        ids = []
        for _ in range(3):
            capture = await svc.submit({"kind": "cpu", "duration": 5})
            await wait_final(svc, capture.id)
            ids.append(capture.id)
        # Every capture is over the budget; the newest is kept all the same.
        assert [c.id for c in svc.captures()] == ids[-1:]
        assert svc.stored_bytes() > 1
    finally:
        await svc.close()


async def test_start_retries_while_the_privileged_side_winds_down() -> None:
    """A cancelled capture's remains (an uninterruptible compile) make the privileged
    side answer busy for a moment: the next capture waits for it instead of failing."""
    ops = ScriptedOps()
    real_start = ops.profile_start
    refusals = []

    def start(request: Any) -> str:
        if len(refusals) < 3:
            refusals.append(request)
            raise CaptureFailed("busy", "a capture is running")
        return real_start(request)

    ops.profile_start = start  # type: ignore[method-assign]
    svc = service(ops)
    try:
        capture = await svc.submit({"kind": "cpu", "duration": 5})
        assert capture.state == "running" and len(refusals) == 3
        await wait_final(svc, capture.id)
        assert capture.state == "done"
    finally:
        await svc.close()


async def test_start_gives_up_on_a_busy_privileged_side_after_the_grace() -> None:
    ops = ScriptedOps()

    def start(_request: Any) -> str:
        raise CaptureFailed("busy", "a capture is running")

    ops.profile_start = start  # type: ignore[method-assign]
    svc = service(ops, grace_s=1.0, clock=FastClock(5.0))
    try:
        with pytest.raises(ProfileApiError) as info:
            await svc.submit({"kind": "cpu", "duration": 5})
        assert info.value.code == "busy" and info.value.status == 409
    finally:
        await svc.close()
