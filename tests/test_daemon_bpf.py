"""BPF modules through the daemon, with real BPF: the REST endpoints and websocket
messages of docs/protocol.md against a real server on loopback, metrics flowing into
fetch, the stream and /metrics (cross-checked with the kernel's schedstat and promtool),
holds released with their connection, programs detached (checked with
/proc/self/fdinfo and bpftool) at disable, on close and on SIGTERM of ``hostscope serve``.

Tests that load programs need root and bcc: elsewhere they skip with the reason, under
CI=true they fail (``require_bpf``). Tests of a daemon with BPF off or unusable run
everywhere.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from hostscope.bpfmods.doctor import run_checks
from hostscope.bpfmods.host import HostProbe
from hostscope.bpfmods.runtime import own_program_ids
from hostscope.daemon.app import create_app
from hostscope.daemon.config import Config
from hostscope.daemon.keys import SAMPLER
from hostscope.daemon.privileged import BPF_DISABLED, InProcessOps
from hostscope.metrics.sources import Roots
from tests.support import OPERATOR_TOKEN, VIEWER_TOKEN, auth_config, auth_headers
from tests.test_bpf_manager import Storm, assert_unloaded, require_bpf, system_prog_ids
from tests.test_daemon_shutdown import read_rest, start_serve

#: Every websocket here authenticates as the operator (BPF toggles need it).
connect = functools.partial(ws_connect, additional_headers=auth_headers())

#: Tests that load BPF programs (the others run on any host).
needs_bpf = pytest.mark.root

INTERVAL = 0.2
MODULES = ["runqlat", "biolatency", "syscalls", "offcpu", "tcplife", "tcpretrans", "execsnoop"]
JSON = {"Content-Type": "application/json"}

T = TypeVar("T")


@dataclass
class Server:
    app: web.Application
    base: str
    session: aiohttp.ClientSession

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/api/v1/stream"

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.session.get(self.base + path, **kwargs)

    async def get_json(self, path: str, **kwargs: Any) -> Any:
        resp = await self.get(path, **kwargs)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def toggle(self, name: str, body: Any, *, client: str | None = None,
                     headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        hdrs = dict(JSON if headers is None else headers)
        if client is not None:
            hdrs["X-Hostscope-Client"] = client
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return await self.session.post(f"{self.base}/api/v1/bpf/{name}", data=data,
                                       headers=hdrs)

    async def module(self, name: str) -> dict[str, Any]:
        return await self.get_json(f"/api/v1/bpf/{name}")

    async def wait_ticks(self, n: int) -> None:
        sampler = self.app[SAMPLER]
        target = sampler.seq + n
        await eventually(lambda: _true(sampler.seq >= target), 10, "sampler did not tick")


async def _true(value: bool) -> bool:
    return value


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s} s")
        await asyncio.sleep(0.05)


async def start_server(config: Config, **kwargs: Any) -> tuple[web.AppRunner, Server]:
    app = create_app(config, **kwargs)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    session = aiohttp.ClientSession(headers=auth_headers())
    return runner, Server(app, f"http://127.0.0.1:{runner.addresses[0][1]}", session)


async def stop_server(runner: web.AppRunner, server: Server) -> None:
    await server.session.close()
    await runner.cleanup()


@pytest.fixture(scope="module")
def bpf_host() -> HostProbe:
    return require_bpf()


@pytest.fixture
async def server(bpf_host: HostProbe) -> AsyncIterator[Server]:
    del bpf_host
    assert own_program_ids() == []
    runner, srv = await start_server(auth_config(interval=INTERVAL, port=0))
    await srv.wait_ticks(1)
    yield srv
    await stop_server(runner, srv)
    # Closing the app closed the manager: nothing of ours is left loaded.
    assert own_program_ids() == [], "BPF programs left loaded after the app was cleaned up"


async def error_of(resp: aiohttp.ClientResponse) -> tuple[int, str, str]:
    assert resp.content_type == "application/json", await resp.text()
    body = await resp.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["message"]
    return resp.status, error["code"], error["message"]


async def hello(ws: ClientConnection) -> None:
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "hello"


async def recv_until(ws: ClientConnection, match: Callable[[dict[str, Any]], bool],
                     timeout_s: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {what} within {timeout_s} s")
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout_s} s") from None
        if match(msg):
            return msg


async def ws_toggle(ws: ClientConnection, name: Any, enabled: Any, **extra: Any
                    ) -> dict[str, Any]:
    """Send a ``bpf`` message; its answer (``bpf`` or ``error``), skipping samples."""
    await ws.send(json.dumps({"type": "bpf", "name": name, "enabled": enabled, **extra}))
    return await recv_until(ws, lambda m: m["type"] in ("bpf", "error"), 30, "bpf answer")


def hist_sum(families: dict[str, Any], family: str) -> float:
    return sum(s.value for s in families[family].samples if s.name.endswith("_total"))


async def scrape(server: Server) -> tuple[str, dict[str, Any]]:
    text = await (await server.get("/metrics")).text()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def schedstat_switch_ins(pid: int) -> int:
    """Times the task was switched in (3rd field of /proc/PID/schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[2])


def fdinfo_prog_ids(pid: int) -> set[int]:
    """BPF programs process ``pid`` holds open (the fdinfo view, as own_program_ids)."""
    ids = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fd.read_text()
        except FileNotFoundError:  # the fd closed while we looked
            continue
        ids.update(int(line.split()[1]) for line in text.splitlines()
                   if line.startswith("prog_id:"))
    return ids


# -- listing -------------------------------------------------------------------------


@needs_bpf
async def test_list_modules_and_host_capabilities_agree_with_doctor(server: Server) -> None:
    body = await server.get_json("/api/v1/bpf")
    assert body["available"] is True and body["reason"] is None
    modules = {m["name"]: m for m in body["modules"]}
    assert list(modules) == MODULES
    for entry in modules.values():
        assert entry["available"] is True and entry["reason"] is None
        assert entry["attach_point"] in entry["attach_plans"]
        assert entry["state"] == "off" and entry["users"] == [] and entry["settings"] is None
        assert entry["metrics"] and all(m.startswith("bpf.") for m in entry["metrics"])
    for name in ("runqlat", "syscalls", "offcpu"):
        assert "pid" in {s["name"] for s in modules[name]["settings_schema"]}
    assert modules["runqlat"]["metrics"] == [
        "bpf.runq.latency", "bpf.runq.p50", "bpf.runq.p90", "bpf.runq.p99"]
    assert set(modules["syscalls"]["tables"]) == {"top"}
    assert set(modules["tcplife"]["tables"]) == {"sessions"}
    assert set(modules["tcpretrans"]["tables"]) == {"flows"}
    assert set(modules["execsnoop"]["tables"]) == {"execs"}
    # Every module's metrics are registered with the sampler (they flow once enabled).
    registered = {m["name"] for m in (await server.get_json("/api/v1/metrics?prefix=bpf"))[
        "metrics"]}
    assert registered == {n for m in modules.values() for n in m["metrics"]}
    one = await server.module("offcpu")
    assert one == modules["offcpu"]

    # capabilities.bpf says what `hostscope doctor` says, once the background checks ran.
    async def checked() -> dict[str, Any] | None:
        bpf = (await server.get_json("/api/v1/host"))["capabilities"]["bpf"]
        return bpf if bpf["checked"] else None

    caps = await eventually(checked, 10, "capabilities.bpf checked")
    checks = {c.id: c for c in run_checks(live_perf=False)}
    ready = all(c.ok for c in checks.values() if c.required)
    assert caps["available"] is ready is True and caps["reason"] is None
    assert caps["tracefs"] and caps["privileged"] is True
    for name in MODULES:
        assert caps["modules"][name]["available"] == checks[f"module.{name}"].ok
        assert caps["modules"][name]["attach_point"] == modules[name]["attach_point"]


# -- runqlat end to end --------------------------------------------------------------


@needs_bpf
async def test_runqlat_toggled_over_rest_flows_to_fetch_stream_and_metrics(
    server: Server,
) -> None:
    storm = Storm(5_000_000)  # a context-switch storm for the whole test
    storm.proc.stdin.write("go\n")  # type: ignore[union-attr]
    storm.proc.stdin.flush()  # type: ignore[union-attr]
    try:
        async with connect(server.ws_url) as ws:
            await hello(ws)
            await ws.send(json.dumps({"type": "subscribe", "names": ["bpf.runq"],
                                      "backfill": 0}))
            meta = await recv_until(ws, lambda m: m["type"] == "meta", 5, "meta")
            # Off: the metrics are declared but have no instances, hence no columns.
            assert set(meta["metrics"]) == {"bpf.runq.latency", "bpf.runq.p50",
                                            "bpf.runq.p90", "bpf.runq.p99"}
            assert meta["series"] == []

            before = system_prog_ids()
            resp = await server.toggle("runqlat", {"enabled": True}, client="dash-1")
            assert resp.status == 200, await resp.text()
            entry = await resp.json()
            assert entry["state"] == "on" and entry["users"] == ["rest:dash-1"]
            assert entry["attach_point"] in ("tp_btf", "raw_tracepoint", "tracepoint")
            assert entry["settings"] == {"cgroup": "", "pid": 0}
            ours = own_program_ids()
            assert len(ours) == (1 if entry["attach_point"] == "tp_btf" else 4)
            assert set(ours) <= system_prog_ids() - before

            # The stream: a new meta with bucket and percentile columns, then samples
            # whose buckets count events and whose percentiles are ordered.
            meta = await recv_until(
                ws, lambda m: m["type"] == "meta" and ["bpf.runq.latency", "0-1"] in m["series"],
                10, "meta with runqlat buckets")
            series = [tuple(s) for s in meta["series"]]
            buckets = [i for i, s in enumerate(series) if s[0] == "bpf.runq.latency"]
            assert len(buckets) == 27
            pcol = {q: series.index((f"bpf.runq.{q}", "")) for q in ("p50", "p90", "p99")}

            def counted(msg: dict[str, Any]) -> bool:
                if msg["type"] != "samples" or msg["seq"] != meta["seq"]:
                    return False
                rates = [msg["v"][i][-1] or 0 for i in buckets]
                return sum(rates) > 0 and all(msg["v"][c][-1] is not None
                                              for c in pcol.values())

            live = await recv_until(ws, counted, 10, "samples with runqlat events")
            p50, p90, p99 = (live["v"][pcol[q]][-1] for q in ("p50", "p90", "p99"))
            assert 0 <= p50 <= p90 <= p99

            # REST fetch: per-second rates of the buckets, percentiles in microseconds.
            async def fetched() -> dict[str, Any] | None:
                body = await server.get_json("/api/v1/fetch", params={"names": "bpf.runq"})
                values = {v["name"]: v for v in body["values"]}
                rates = [i["value"] or 0 for i in values["bpf.runq.latency"]["instances"]]
                return values if sum(rates) > 0 and values["bpf.runq.p99"]["instances"] else None

            values = await eventually(fetched, 10, "runqlat rates in /api/v1/fetch")
            latency = values["bpf.runq.latency"]
            assert latency["semantics"] == "counter" and latency["units"] == "count / sec"
            assert [i["instance"] for i in latency["instances"]][:3] == ["0-1", "2-3", "4-7"]
            assert values["bpf.runq.p50"]["value_units"]["kind"] == "time"

            # /metrics: the raw cumulative bucket counters keep increasing.
            _, first = await scrape(server)
            await server.wait_ticks(2)
            _, second = await scrape(server)
            family = "hostscope_bpf_runq_latency"
            assert hist_sum(second, family) > hist_sum(first, family) > 0
            assert {s.labels["bucket"] for s in second[family].samples} >= {"0-1", "2-3"}

            resp = await server.toggle("runqlat", {"enabled": False}, client="dash-1")
            off = await resp.json()
            assert resp.status == 200 and off["state"] == "off" and off["users"] == []
            assert own_program_ids() == []
            assert_unloaded(ours)
            await server.wait_ticks(2)
            fetched_off = await server.get_json("/api/v1/fetch",
                                                 params={"names": "bpf.runq.latency"})
            assert fetched_off["values"][0]["instances"] == []  # a gap, not zeros
    finally:
        storm.proc.kill()
        storm.proc.wait(10)


@needs_bpf
async def test_metrics_count_every_switch_in_and_pass_promtool(server: Server) -> None:
    """/metrics bucket counters against the kernel's own count of switch-ins (schedstat)
    of one filtered process; the same exposition passes promtool."""
    storm = Storm(5000)
    try:
        resp = await server.toggle("runqlat", {"enabled": True, "settings": {"pid": storm.pid}})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["settings"]["pid"] == storm.pid
        await server.wait_ticks(2)
        _, families = await scrape(server)
        before = hist_sum(families, "hostscope_bpf_runq_latency")
        sw0 = schedstat_switch_ins(storm.pid)
        await asyncio.to_thread(storm.run)
        await asyncio.sleep(0.05)  # the last latency is accounted at the next switch-out
        sw1 = schedstat_switch_ins(storm.pid)
        await server.wait_ticks(2)
        text, families = await scrape(server)
        events = hist_sum(families, "hostscope_bpf_runq_latency") - before
        switch_ins = sw1 - sw0
        # Not exactly 5000: a round trip whose reply is already there does not block.
        assert switch_ins >= 2500
        assert abs(events - switch_ins) <= max(5, 0.02 * switch_ins), (events, switch_ins)
        assert any(f.startswith("hostscope_bpf_runq_p99") for f in families)

        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool not installed (./dev test installs Debian's prometheus)")
        result = await asyncio.to_thread(
            subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True,
            text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        storm.finish()


# -- holds ---------------------------------------------------------------------------


@needs_bpf
async def test_websocket_hold_is_released_when_the_socket_closes(server: Server) -> None:
    async with connect(server.ws_url) as ws:
        await hello(ws)
        answer = await ws_toggle(ws, "execsnoop", True, settings={"rows": 50})
        assert answer["type"] == "bpf", answer
        status = answer["status"]
        assert status["name"] == "execsnoop" and status["state"] == "on"
        (holder,) = status["users"]
        assert holder.startswith("ws:")
        ours = own_program_ids()
        assert ours
        entry = await server.module("execsnoop")
        assert entry["users"] == [holder] and entry["settings"]["rows"] == 50

        # The table endpoint while it runs: an exec with a marker argument shows up.
        marker = f"hostscope-test-{os.getpid()}-{time.monotonic_ns()}"
        await asyncio.to_thread(subprocess.run, ["/bin/echo", marker], capture_output=True)

        async def seen() -> dict[str, Any] | None:
            table = await server.get_json("/api/v1/bpf/execsnoop/tables/execs",
                                          params={"limit": "50"})
            return next((r for r in table["rows"] if marker in r["args"]), None)

        row = await eventually(seen, 5, "the marked exec in execsnoop/execs")
        assert row["filename"] == "/bin/echo" and row["comm"] == "echo"
        assert row["ppid"] == os.getpid() and row["uid"] == os.getuid()
    # Closed: the daemon releases the connection's holds and the module detaches.
    async def off() -> bool:
        return (await server.module("execsnoop"))["state"] == "off"

    await eventually(off, 5, "execsnoop off after its only holder disconnected")
    assert own_program_ids() == []
    assert_unloaded(ours)


@needs_bpf
async def test_two_holders_keep_it_attached_until_both_release(server: Server) -> None:
    async with connect(server.ws_url) as a, connect(server.ws_url) as b:
        await hello(a)
        await hello(b)
        first = (await ws_toggle(a, "runqlat", True))["status"]
        ours = own_program_ids()
        second = (await ws_toggle(b, "runqlat", True))["status"]
        assert len(second["users"]) == 2 and set(first["users"]) < set(second["users"])
        assert own_program_ids() == ours, "a second holder must not load a second copy"
        # A REST client holds it too; its hold outlives both sockets.
        resp = await server.toggle("runqlat", {"enabled": True}, client="script")
        assert len((await resp.json())["users"]) == 3
        await a.close()

        async def a_released() -> bool:
            return len((await server.module("runqlat"))["users"]) == 2

        await eventually(a_released, 5, "a's hold released")
        assert (await server.module("runqlat"))["state"] == "on"
        assert own_program_ids() == ours
        # b disables explicitly; the REST hold keeps it on.
        after_b = (await ws_toggle(b, "runqlat", False))["status"]
        assert after_b["users"] == ["rest:script"] and after_b["state"] == "on"
    assert own_program_ids() == ours
    resp = await server.toggle("runqlat", {"enabled": False}, client="script")
    assert (await resp.json())["state"] == "off"
    assert own_program_ids() == []
    assert_unloaded(ours)


@needs_bpf
async def test_reauth_below_operator_releases_the_connections_holds(server: Server) -> None:
    """An operator connection that re-authenticates as a viewer, or with an embed token,
    lets go of its modules at once (named in the auth answer's ``released``), not when it
    closes; other holders keep theirs, and the connection stays open."""
    from hostscope.daemon.keys import AUTH

    async with connect(server.ws_url) as ws:
        await hello(ws)
        for name in ("runqlat", "execsnoop"):
            assert (await ws_toggle(ws, name, True))["status"]["state"] == "on"
        ours = own_program_ids()
        (holder,) = (await server.module("execsnoop"))["users"]
        # runqlat has a REST holder too, which the re-authentication must not touch.
        resp = await server.toggle("runqlat", {"enabled": True}, client="script")
        assert sorted((await resp.json())["users"]) == sorted([holder, "rest:script"])

        await ws.send(json.dumps({"type": "auth", "token": VIEWER_TOKEN}))
        answer = await recv_until(ws, lambda m: m["type"] in ("auth", "error"), 30, "auth")
        assert answer == {"type": "auth", "role": "viewer",
                          "released": ["execsnoop", "runqlat"]}, answer
        # Released when answered: execsnoop detached, runqlat on for its REST holder alone.
        execsnoop = await server.module("execsnoop")
        assert execsnoop["state"] == "off" and execsnoop["users"] == []
        runqlat = await server.module("runqlat")
        assert runqlat["state"] == "on" and runqlat["users"] == ["rest:script"]
        runq_ids = own_program_ids()
        assert runq_ids and set(runq_ids) < set(ours)
        assert_unloaded(set(ours) - set(runq_ids))
        # Still a working connection, now without the operator's powers.
        assert (await ws_toggle(ws, "execsnoop", True))["code"] == "forbidden"
        await ws.send(json.dumps({"type": "ping", "id": 1}))
        assert (await recv_until(ws, lambda m: m["type"] == "pong", 5, "pong"))["id"] == 1

        # Back to operator: nothing released; holds again, then an embed token drops them.
        await ws.send(json.dumps({"type": "auth", "token": OPERATOR_TOKEN}))
        answer = await recv_until(ws, lambda m: m["type"] == "auth", 30, "auth")
        assert answer == {"type": "auth", "role": "operator"}
        assert (await ws_toggle(ws, "execsnoop", True))["status"]["users"] == [holder]
        embed = server.app[AUTH].signer.mint(["cpu.util"], 600, now=time.time())
        await ws.send(json.dumps({"type": "auth", "token": embed}))
        answer = await recv_until(ws, lambda m: m["type"] == "auth", 30, "auth")
        assert answer["scope"] == ["cpu.util"] and answer["released"] == ["execsnoop"]
        assert (await server.module("execsnoop"))["state"] == "off"
        # No role dropped from operator: no "released" (it held nothing to release).
        await ws.send(json.dumps({"type": "auth", "token": VIEWER_TOKEN}))
        answer = await recv_until(ws, lambda m: m["type"] == "auth", 30, "auth")
        assert answer == {"type": "auth", "role": "viewer"}
        # An operator that held nothing: dropping to viewer answers an empty list.
        for token, released in ((OPERATOR_TOKEN, None), (VIEWER_TOKEN, [])):
            await ws.send(json.dumps({"type": "auth", "token": token}))
            answer = await recv_until(ws, lambda m: m["type"] == "auth", 30, "auth")
            assert answer.get("released") == released, answer
    resp = await server.toggle("runqlat", {"enabled": False}, client="script")
    assert (await resp.json())["state"] == "off"
    assert own_program_ids() == []
    assert_unloaded(runq_ids)


@needs_bpf
async def test_concurrent_toggles_compile_once_off_the_event_loop(server: Server) -> None:
    """Eight clients enable offcpu at once, two of them disable again: one program, the
    right holders, and the loop keeps answering while clang runs in the worker threads."""
    stop = threading.Event()
    stalls: list[float] = []

    async def probe_loop() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            resp = await server.get("/healthz")
            assert resp.status == 200
            stalls.append(time.perf_counter() - start)
            await asyncio.sleep(0.01)

    prober = asyncio.create_task(probe_loop())
    try:
        answers = await asyncio.gather(*(
            server.toggle("offcpu", {"enabled": True}, client=f"c{i}") for i in range(8)))
        assert [a.status for a in answers] == [200] * 8
        await asyncio.gather(*(
            server.toggle("offcpu", {"enabled": False}, client=f"c{i}") for i in (0, 1)))
    finally:
        stop.set()
        await prober
    entry = await server.module("offcpu")
    assert entry["state"] == "on"
    assert entry["users"] == sorted(f"rest:c{i}" for i in range(2, 8))
    assert len(own_program_ids()) == 1  # one sched_switch program
    assert len(stalls) >= 5
    # Compiling takes ~0.3-1 s; the loop answered throughout (generous for a busy VM).
    assert max(stalls) < 0.25, sorted(stalls)[-5:]


# -- tables ----------------------------------------------------------------------------


@needs_bpf
async def test_tables_of_syscalls_and_tcplife(server: Server) -> None:
    for name in ("syscalls", "tcplife", "tcpretrans"):
        resp = await server.toggle(name, {"enabled": True})
        assert resp.status == 200, await resp.text()
    # A TCP session to the daemon's own port, opened and closed by this process.
    port = int(server.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    local_port = writer.get_extra_info("sockname")[1]
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert b"200 OK" in await asyncio.wait_for(reader.read(), 5)  # read to EOF
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.6)  # syscalls/top compares reads >= 0.5 s apart

    async def session() -> dict[str, Any] | None:
        table = await server.get_json("/api/v1/bpf/tcplife/tables/sessions")
        return next((r for r in table["rows"] if r["sport"] == local_port
                     and r["dport"] == port), None)

    row = await eventually(session, 5, "our loopback session in tcplife/sessions")
    assert row["saddr"] == row["daddr"] == "127.0.0.1" and row["pid"] == os.getpid()
    assert row["duration_ms"] >= 0 and row["rx_bytes"] > 0

    top = await server.get_json("/api/v1/bpf/syscalls/tables/top", params={"limit": "5"})
    assert top["module"] == "syscalls" and top["table"] == "top"
    assert 0 < len(top["rows"]) <= 5
    assert {"syscall", "calls", "time_ms", "avg_us", "errors"} <= set(top["rows"][0])
    flows = await server.get_json("/api/v1/bpf/tcpretrans/tables/flows")
    assert isinstance(flows["rows"], list)  # retransmits cannot be forced on loopback


# -- errors ----------------------------------------------------------------------------


@needs_bpf
@pytest.mark.parametrize(
    ("body", "headers", "expect"),
    [
        ("not json", JSON, (400, "bad_request", "not JSON")),
        ("", JSON, (400, "bad_request", "not JSON")),
        (b"\xff\xfe{", JSON, (400, "bad_request", "not JSON")),
        ([True], JSON, (400, "bad_parameter", "JSON object")),
        ({}, JSON, (400, "bad_parameter", "'enabled' is required")),
        ({"enabled": "yes"}, JSON, (400, "bad_parameter", "'enabled' must be true or false")),
        ({"enabled": 1}, JSON, (400, "bad_parameter", "'enabled' must be true or false")),
        ({"enabled": True, "settings": [1]}, JSON, (400, "bad_parameter", "'settings'")),
        ({"enabled": True, "enable": True}, JSON, (400, "bad_parameter", "'enable'")),
        ({"enabled": True, "settings": {"nope": 1}}, JSON, (400, "invalid_settings",
         "unknown setting 'nope'")),
        ({"enabled": True, "settings": {"pid": -1}}, JSON, (400, "invalid_settings", "pid")),
        ({"enabled": True, "settings": {"pid": True}}, JSON, (400, "invalid_settings", "pid")),
        ({"enabled": True, "settings": {"cgroup": "../x"}}, JSON, (400, "invalid_settings",
         "cgroup")),
        ({"enabled": True}, {"Content-Type": "text/plain"}, (415, "unsupported_media_type",
         "application/json")),
        ({"enabled": True}, {**JSON, "Origin": "http://evil.example"}, (403,
         "origin_not_allowed", "evil.example")),
        ({"enabled": True}, {**JSON, "X-Hostscope-Client": "a b"}, (400, "bad_parameter",
         "X-Hostscope-Client")),
        ({"enabled": True}, {**JSON, "X-Hostscope-Client": "x" * 65}, (400, "bad_parameter",
         "X-Hostscope-Client")),
    ],
)
async def test_malformed_toggles_are_400s_with_messages(
    server: Server, body: Any, headers: dict[str, str], expect: tuple[int, str, str],
) -> None:
    status, code, says = expect
    resp = await server.toggle("runqlat", body, headers=headers)
    got_status, got_code, message = await error_of(resp)
    assert (got_status, got_code) == (status, code), message
    assert says in message
    assert own_program_ids() == [] and (await server.module("runqlat"))["state"] == "off"


@needs_bpf
async def test_invalid_settings_list_every_problem(server: Server) -> None:
    resp = await server.toggle("offcpu", {"enabled": True,
                                          "settings": {"min_us": "x", "bogus": 1}})
    body = await resp.json()
    assert resp.status == 400
    assert body["error"]["module"] == "offcpu" and len(body["error"]["errors"]) == 2


@needs_bpf
@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("POST", "/api/v1/bpf/nope", 404, "unknown_module"),
        ("GET", "/api/v1/bpf/nope", 404, "unknown_module"),
        ("GET", "/api/v1/bpf/nope/tables/x", 404, "unknown_module"),
        ("GET", "/api/v1/bpf/execsnoop/tables/nope", 404, "unknown_module"),
        ("GET", "/api/v1/bpf/execsnoop/tables/execs", 409, "not_running"),
        ("GET", "/api/v1/bpf/execsnoop/tables/execs?limit=0", 400, "bad_parameter"),
        ("GET", "/api/v1/bpf/execsnoop/tables/execs?limit=x", 400, "bad_parameter"),
        ("PUT", "/api/v1/bpf/runqlat", 405, "method_not_allowed"),
    ],
)
async def test_unknown_names_and_bad_table_requests(
    server: Server, method: str, path: str, status: int, code: str
) -> None:
    resp = await server.session.request(method, server.base + path,
                                        data=json.dumps({"enabled": True}), headers=JSON)
    got = await error_of(resp)
    assert got[:2] == (status, code), got
    if code == "unknown_module":
        assert "known: runqlat" in got[2] or "tables: execs" in got[2]


@needs_bpf
async def test_websocket_bpf_errors_keep_the_connection(server: Server) -> None:
    async with connect(server.ws_url) as ws:
        await hello(ws)
        cases = [
            ({"name": "nope", "enabled": True}, "unknown_module"),
            ({"name": "", "enabled": True}, "bad_parameter"),
            ({"name": "runqlat", "enabled": "on"}, "bad_parameter"),
            ({"name": "runqlat", "enabled": True, "settings": {"pid": "1"}},
             "invalid_settings"),
            ({"name": "runqlat", "enabled": True, "extra": 1}, "bad_parameter"),
        ]
        for fields, code in cases:
            await ws.send(json.dumps({"type": "bpf", **fields}))
            error = await recv_until(ws, lambda m: m["type"] == "error", 5, "error")
            assert error["code"] == code and error["ref"] == "bpf" and error["message"]
        await ws.send(json.dumps({"type": "ping", "id": 7}))
        pong = await recv_until(ws, lambda m: m["type"] == "pong", 5, "pong")
        assert pong["id"] == 7
    assert own_program_ids() == []


# -- unavailable modules, BPF off, startup -----------------------------------------------


async def test_unavailable_module_is_a_409_with_the_reason(tmp_path: Path) -> None:
    """A host view without tracefs (a /sys root lacking it): every module is listed as
    unavailable with the reason, and enabling answers 409 with exactly that reason."""
    (tmp_path / "sys" / "kernel").mkdir(parents=True)
    roots = Roots(sys=tmp_path / "sys")
    detachers: list[Any] = []
    ops = InProcessOps(detachers.append, roots=roots, host=HostProbe(roots))
    runner, server = await start_server(auth_config(interval=INTERVAL, port=0), privileged=ops)
    try:
        body = await server.get_json("/api/v1/bpf")
        assert body["available"] is False and body["reason"]
        reason = {m["name"]: m["reason"] for m in body["modules"]}["runqlat"]
        assert reason and all(not m["available"] for m in body["modules"])
        resp = await server.toggle("runqlat", {"enabled": True})
        status, code, message = await error_of(resp)
        assert (status, code) == (409, "unavailable")
        assert message == f"runqlat: {reason}"
        # Over the websocket: the same error, and the connection stays usable.
        async with connect(server.ws_url) as ws:
            await hello(ws)
            error = await ws_toggle(ws, "runqlat", True)
            assert error["code"] == "unavailable" and error["message"] == message
            assert error["module"] == "runqlat"
    finally:
        await stop_server(runner, server)
    assert own_program_ids() == []


async def test_bpf_off_in_config_loads_nothing() -> None:
    runner, server = await start_server(auth_config(interval=INTERVAL, port=0, bpf=False))
    try:
        await server.wait_ticks(1)
        body = await server.get_json("/api/v1/bpf")
        assert body["available"] is False and body["reason"] == BPF_DISABLED
        assert [m["name"] for m in body["modules"]] == MODULES
        assert all(m["reason"] == BPF_DISABLED and m["state"] == "off"
                   for m in body["modules"])
        resp = await server.toggle("runqlat", {"enabled": True})
        assert (await error_of(resp))[:2] == (409, "unavailable")
        resp = await server.toggle("nope", {"enabled": True})
        assert (await error_of(resp))[:2] == (404, "unknown_module")
        # No BPF collectors in the sampler: no bpf.* metrics at all.
        resp = await server.get("/api/v1/metrics", params={"prefix": "bpf"})
        assert resp.status == 404

        async def checked() -> dict[str, Any] | None:
            bpf = (await server.get_json("/api/v1/host"))["capabilities"]["bpf"]
            return bpf if bpf["checked"] else None

        caps = await eventually(checked, 5, "capabilities.bpf checked")
        assert caps["available"] is False and caps["reason"] == BPF_DISABLED
    finally:
        await stop_server(runner, server)


class SlowReadinessOps(InProcessOps):
    """The real operations with a startup readiness check that waits for the test, then
    fails (as a broken install might): startup must neither wait for it nor fail with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.resolve_args: list[bool] = []

    def bpf_prewarm(self) -> dict[str, Any]:
        raise AssertionError("the daemon must not prewarm BPF at startup")

    def bpf_readiness(self, resolve: bool = True) -> dict[str, Any]:
        self.resolve_args.append(resolve)
        self.release.wait(20)
        raise OSError("libbcc.so.0: cannot open shared object file")


async def test_readiness_check_neither_delays_nor_fails_startup() -> None:
    ops = SlowReadinessOps(lambda _detach: None, bpf=True)
    runner, server = await start_server(auth_config(interval=INTERVAL, port=0), privileged=ops)
    try:
        await server.wait_ticks(3)  # sampling runs while prewarm is stuck
        health = await server.get_json("/healthz")
        assert health["status"] == "ok"
        caps = (await server.get_json("/api/v1/host"))["capabilities"]["bpf"]
        assert caps["checked"] is False
        ops.release.set()

        async def checked() -> dict[str, Any] | None:
            bpf = (await server.get_json("/api/v1/host"))["capabilities"]["bpf"]
            return bpf if bpf["checked"] else None

        caps = await eventually(checked, 5, "capabilities.bpf checked")
        assert caps["available"] is False
        assert "libbcc.so.0" in caps["reason"] and "OSError" in caps["reason"]
        assert ops.resolve_args == [False]  # startup asks the cheap checks only
        assert (await server.get_json("/healthz"))["status"] == "ok"
    finally:
        ops.release.set()
        await stop_server(runner, server)


# -- hostscope serve ---------------------------------------------------------------------


@needs_bpf
async def test_serve_with_a_module_on_exits_on_sigterm_and_leaves_nothing_loaded(
    bpf_host: HostProbe,
) -> None:
    del bpf_host
    proc, url, lines = await start_serve()
    try:
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            resp = await session.post(url + "api/v1/bpf/runqlat", json={"enabled": True})
            assert resp.status == 200, await resp.text()
            resp = await session.post(url + "api/v1/bpf/execsnoop", json={"enabled": True})
            assert resp.status == 200, await resp.text()
            helper = (await (await session.get(url + "api/v1/host")).json())["helper"]
        # With privilege separation (the default) the helper holds the programs and the
        # network-facing daemon none (docs/privilege.md).
        assert fdinfo_prog_ids(proc.pid) == set()
        held = fdinfo_prog_ids(helper["pid"])
        assert len(held) >= 2  # runqlat's 1 (tp_btf) or 4, execsnoop's 1-3
        assert held <= system_prog_ids()  # bpftool sees what the daemon holds

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 5)
        elapsed = time.monotonic() - started
        await read_rest(proc, lines)
        log = "".join(lines)
        assert code == 0, log
        assert elapsed < 5
        assert "msg=stopped" in log and "Traceback" not in log and "level=error" not in log
        assert not Path(f"/proc/{helper['pid']}").exists(), "the helper outlived the daemon"
        assert_unloaded(held)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_serve_with_bpf_on_costs_no_memory_until_a_module_is_enabled(
    tmp_path: Path,
) -> None:
    """A default ``hostscope serve`` nobody asked for BPF: no bcc mapped (libbcc/LLVM stay
    out of the process until the first enable) and no parsed BTF (it used to add ~40 MB),
    even after a client listed the modules (BTF facts come from a child process). Judged
    from outside, as an operator would: /proc/PID/maps and VmRSS against the same daemon
    with ``bpf = false``."""
    config = tmp_path / "off.toml"
    config.write_text("bpf = false\n")
    (on, on_url, on_lines), (off, _off_url, off_lines) = await asyncio.gather(
        start_serve(), start_serve("--config", str(config)))
    try:
        async with aiohttp.ClientSession(headers=auth_headers()) as session:

            async def checked() -> dict[str, Any] | None:
                resp = await session.get(on_url + "api/v1/host")
                bpf = (await resp.json())["capabilities"]["bpf"]
                return bpf if bpf["checked"] else None

            caps = await eventually(checked, 10, "capabilities.bpf checked")
            resp = await session.get(on_url + "api/v1/bpf")
            assert resp.status == 200, await resp.text()
            listed = await resp.json()
            assert listed["available"] == caps["available"]
            if listed["available"]:
                assert all(m["attach_point"] for m in listed["modules"])
        await asyncio.sleep(2)  # a BTF parse in the daemon would show by now
        maps = Path(f"/proc/{on.pid}/maps").read_text()
        assert "libbcc" not in maps and "libLLVM" not in maps
        extra = vm_rss_mb(on.pid) - vm_rss_mb(off.pid)
        assert extra < 10, f"BPF on (nothing enabled) costs {extra:.1f} MB more than off"
    finally:
        for proc, lines in ((on, on_lines), (off, off_lines)):
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)
            await read_rest(proc, lines)
            assert "Traceback" not in "".join(lines)
