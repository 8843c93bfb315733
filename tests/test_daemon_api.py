"""REST API, error paths, security checks, dashboard serving and /metrics against the
real daemon (create_app + a TCPSite on a free loopback port, live /proc)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from hostscope.daemon.app import create_app
from hostscope.daemon.config import Config
from hostscope.daemon.keys import SAMPLER

from .support import auth_config, auth_headers

INTERVAL = 0.1


@dataclass
class Server:
    app: web.Application
    base: str
    session: aiohttp.ClientSession

    async def get(self, path: str, **kwargs: object) -> aiohttp.ClientResponse:
        return await self.session.get(self.base + path, **kwargs)  # type: ignore[arg-type]

    async def wait_ticks(self, n: int) -> None:
        sampler = self.app[SAMPLER]
        target = sampler.seq + n
        for _ in range(200):
            if sampler.seq >= target and sampler.latest_timestamp is not None:
                return
            await asyncio.sleep(INTERVAL / 2)
        raise AssertionError("sampler did not tick")


async def start(config: Config) -> tuple[web.AppRunner, int]:
    app = create_app(config)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def static_dir(tmp_path: Path) -> Path:
    return tmp_path / "static"


@pytest.fixture
async def server(static_dir: Path) -> AsyncIterator[Server]:
    config = auth_config(interval=INTERVAL, port=0, static_dir=str(static_dir))
    runner, port = await start(config)
    async with aiohttp.ClientSession(headers=auth_headers()) as session:
        srv = Server(runner.app, f"http://127.0.0.1:{port}", session)
        await srv.wait_ticks(2)
        yield srv
    await runner.cleanup()


async def error_of(resp: aiohttp.ClientResponse) -> tuple[int, str]:
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return resp.status, body["error"]["code"]


# -- REST ----------------------------------------------------------------------------


async def test_metrics_lists_sorted_descriptors(server: Server) -> None:
    resp = await server.get("/api/v1/metrics")
    assert resp.status == 200
    metrics = (await resp.json())["metrics"]
    names = [m["name"] for m in metrics]
    assert names == sorted(names)
    user = next(m for m in metrics if m["name"] == "kernel.all.cpu.user")
    assert user["semantics"] == "counter"
    assert user["units"]["label"] == "millisec"
    assert user["value_units"]["per_sec"] is True
    assert user["indom"] is None

    resp = await server.get("/api/v1/metrics", params={"prefix": "kernel.percpu.cpu.util"})
    prefixed = [m["name"] for m in (await resp.json())["metrics"]]
    assert prefixed and all(n.startswith("kernel.percpu.cpu.util.") for n in prefixed)


async def test_fetch_serves_rates_and_instances(server: Server) -> None:
    resp = await server.get("/api/v1/fetch", params={"names": "kernel.all.cpu.util,hinv.ncpu"})
    assert resp.status == 200
    body = await resp.json()
    assert isinstance(body["timestamp"], float)
    by_name = {v["name"]: v for v in body["values"]}
    assert "kernel.all.cpu.util.busy" in by_name
    online = sum(
        1 for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("cpu") and line[3].isdigit()
    )
    assert by_name["hinv.ncpu"]["instances"] == [{"instance": "", "value": online}]
    busy = by_name["kernel.all.cpu.util.busy"]
    assert busy["semantics"] == "instant"
    assert busy["value_units"]["kind"] == "utilization"
    value = busy["instances"][0]["value"]
    # A fraction of all CPUs (not a percentage); tick accounting jitters by a few % at
    # a 0.1 s interval, hence the slack above 1.
    assert value is None or 0.0 <= value <= 1.3


async def test_fetch_counter_is_a_rate(server: Server) -> None:
    await server.wait_ticks(2)
    resp = await server.get("/api/v1/fetch", params={"names": "kernel.all.pswitch"})
    (value,) = (await resp.json())["values"]
    assert value["units"] == "count / sec"
    rate = value["instances"][0]["value"]
    # A per-second rate of context switches, not the kernel's running total.
    raw = server.app[SAMPLER].latest_raw["kernel.all.pswitch"][""]
    assert rate is not None and 0 < rate < raw


async def test_history_is_columnar_and_merged(server: Server) -> None:
    await server.wait_ticks(3)
    resp = await server.get(
        "/api/v1/history", params={"names": "kernel.all.load,kernel.all.cpu.util.user",
                                   "seconds": "60"}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["step"] == pytest.approx(INTERVAL)
    ts = body["t"]
    assert len(ts) >= 3 and ts == sorted(ts)
    series = {(s["name"], s["instance"]): s["values"] for s in body["series"]}
    assert ("kernel.all.load", "1 minute") in series
    assert all(len(v) == len(ts) for v in series.values())
    # Numbers are rounded to 6 significant digits like the stream.
    for values in series.values():
        assert all(v is None or float(f"{v:.6g}") == v for v in values)


async def test_instances(server: Server) -> None:
    resp = await server.get("/api/v1/instances", params={"name": "kernel.percpu.cpu.user"})
    body = await resp.json()
    assert body["indom"] == "kernel.cpu"
    assert body["instances"] == [f"cpu{i}" for i in range(len(body["instances"]))]
    assert len(body["instances"]) >= 1


async def test_host_identity_and_collectors(server: Server) -> None:
    resp = await server.get("/api/v1/host")
    body = await resp.json()
    assert body["protocol"] == 1
    assert body["interval_s"] == INTERVAL
    assert body["hostname"]
    assert body["kernel"] == Path("/proc/sys/kernel/osrelease").read_text().strip()
    assert body["uptime_s"] > 0
    assert "psi" in body["capabilities"]
    cpu = next(c for c in body["collectors"] if c["name"] == "cpu")
    assert cpu["collections"] >= 2 and cpu["errors"] == 0 and cpu["stale"] is False
    assert body["sampling"]["ticks"] >= 2
    assert body["history"]["series"] > 0 and body["history"]["bytes"] > 0


async def test_processes_shape(server: Server) -> None:
    resp = await server.get("/api/v1/processes", params={"sort": "rss", "limit": "5"})
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"timestamp", "processes"}
    rows = body["processes"]
    assert len(rows) <= 5
    if "proc.memory.rss" not in server.app[SAMPLER].registry:
        assert rows == []  # no process collector in this build
        return
    assert rows, "the process collector is running: there are processes"
    for row in rows:
        assert {"instance", "pid", "cmd", "args", "container", "cpu", "rss", "io", "threads",
                "state"} <= set(row)
        assert row["instance"].startswith(f"{row['pid']}:")
        assert "cpu_history" not in row  # only with history=S
    rss = [r["rss"] for r in rows if r["rss"] is not None]
    assert rss == sorted(rss, reverse=True)


async def test_processes_carry_their_cpu_history(static_dir: Path) -> None:
    """``history=S``: each row's ``proc.cpu.util`` over the last S seconds, aligned with
    one time axis (what the dashboard's sparklines draw instead of streaming the metric
    for every process): a busy child shows up in it, and its newest point is its ``cpu``."""
    config = auth_config(interval=INTERVAL, process_interval=0.2, port=0,
                         static_dir=str(static_dir))
    runner, port = await start(config)
    busy = subprocess.Popen(["python3", "-c", "while True: pass"])
    try:
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            srv = Server(runner.app, f"http://127.0.0.1:{port}", session)
            await srv.wait_ticks(25)  # a dozen process collections with the child running
            resp = await srv.get("/api/v1/processes",
                                 params={"sort": "cpu", "limit": "1000", "history": "3"})
            assert resp.status == 200
            body = await resp.json()
            # Read and encoded in one piece, so bounded: every row x 600 s at 0.2 s is not.
            too_many = await srv.get("/api/v1/processes",
                                     params={"limit": "1000", "history": "600"})
            assert await error_of(too_many) == (400, "too_many_values")
            assert "fewer rows (limit) or seconds (history)" in (
                await (await srv.get("/api/v1/processes",
                                     params={"limit": "1000", "history": "600"})).json()
            )["error"]["message"]
    finally:
        busy.kill()
        busy.wait()
        await runner.cleanup()
    axis = body["history"]
    assert axis["seconds"] == 3 and axis["step"] == pytest.approx(0.2)
    t = axis["t"]
    assert 5 <= len(t) <= 16 and t == sorted(t) and t[-1] <= body["timestamp"]
    assert t[-1] - t[0] < 3
    rows = body["processes"]
    assert all(len(row["cpu_history"]) == len(t) for row in rows)
    mine = next(row for row in rows if row["pid"] == busy.pid)
    spinning = [v for v in mine["cpu_history"] if v is not None]
    assert len(spinning) >= 3 and max(spinning) > 0.5, mine["cpu_history"]
    assert mine["cpu_history"][-1] == pytest.approx(mine["cpu"], rel=1e-5)


async def test_healthz(server: Server) -> None:
    resp = await server.get("/healthz")
    body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "ok"
    assert body["clients"] == 0
    assert body["uptime_s"] > 0
    assert body["last_tick_age_s"] < 5


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/api/v1/fetch", {}, 400, "bad_parameter"),
        ("/api/v1/fetch", {"names": ",,"}, 400, "bad_parameter"),
        ("/api/v1/fetch", {"names": "no.such.metric"}, 404, "unknown_metric"),
        ("/api/v1/fetch", {"names": "kernel.all.load,nope.x"}, 404, "unknown_metric"),
        ("/api/v1/fetch", {"names": ",".join(f"a.b{i}" for i in range(201))}, 400,
         "too_many_names"),
        ("/api/v1/metrics", {"prefix": "nope"}, 404, "unknown_metric"),
        ("/api/v1/history", {"names": "kernel.all.load", "seconds": "0"}, 400, "bad_parameter"),
        ("/api/v1/history", {"names": "kernel.all.load", "seconds": "86401"}, 400,
         "bad_parameter"),
        ("/api/v1/history", {"names": "kernel.all.load", "seconds": "nan"}, 400,
         "bad_parameter"),
        ("/api/v1/history", {"names": "kernel.all.load", "seconds": "abc"}, 400,
         "bad_parameter"),
        ("/api/v1/history", {"names": "x.y"}, 404, "unknown_metric"),
        ("/api/v1/instances", {}, 400, "bad_parameter"),
        ("/api/v1/instances", {"name": "kernel.all"}, 404, "unknown_metric"),
        ("/api/v1/processes", {"sort": "name"}, 400, "bad_parameter"),
        ("/api/v1/processes", {"limit": "0"}, 400, "bad_parameter"),
        ("/api/v1/processes", {"limit": "1001"}, 400, "bad_parameter"),
        ("/api/v1/processes", {"limit": "ten"}, 400, "bad_parameter"),
        ("/api/v1/processes", {"history": "-1"}, 400, "bad_parameter"),
        ("/api/v1/processes", {"history": "601"}, 400, "bad_parameter"),
        ("/api/v1/processes", {"history": "1m"}, 400, "bad_parameter"),
        ("/api/v1/nothing", {}, 404, "not_found"),
        ("/api/v2/metrics", {}, 404, "not_found"),
    ],
)
async def test_bad_requests_get_json_errors(
    server: Server, path: str, params: dict[str, str], status: int, code: str
) -> None:
    resp = await server.get(path, params=params)
    assert await error_of(resp) == (status, code)


async def test_wrong_method_is_405(server: Server) -> None:
    resp = await server.session.post(server.base + "/api/v1/fetch", data=b"{}")
    assert await error_of(resp) == (405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]


async def test_oversized_body_is_rejected(server: Server) -> None:
    resp = await server.session.post(server.base + "/api/v1/fetch", data=b"x" * (200 * 1024))
    assert resp.status in (405, 413)
    assert (await resp.json())["error"]["code"] in ("method_not_allowed", "too_large")


async def test_stream_without_upgrade_is_a_json_400(server: Server) -> None:
    resp = await server.get("/api/v1/stream")
    status, _ = await error_of(resp)
    assert status == 400


# -- security ------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:7470", "10.0.0.1", ""])
async def test_foreign_host_header_is_refused(server: Server, host: str) -> None:
    resp = await server.get("/api/v1/host", headers={"Host": host})
    assert await error_of(resp) == (421, "host_not_allowed")


@pytest.mark.parametrize("host", ["localhost:1234", "127.0.0.1", "[::1]:7470", "LOCALHOST"])
async def test_local_host_headers_are_accepted(server: Server, host: str) -> None:
    resp = await server.get("/healthz", headers={"Host": host})
    assert resp.status == 200


async def test_configured_hosts_and_origins(static_dir: Path) -> None:
    config = auth_config(
        interval=INTERVAL, static_dir=str(static_dir), allowed_hosts=("dash.example",),
        allowed_origins=("https://other.example",), frame_ancestors=("https://wiki.example",),
    )
    runner, port = await start(config)
    try:
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            url = f"http://127.0.0.1:{port}/api/v1/metrics"
            ok = await session.get(url, headers={"Host": "dash.example:7470"})
            assert ok.status == 200
            cors = await session.get(url, headers={"Origin": "https://other.example"})
            assert cors.headers["Access-Control-Allow-Origin"] == "https://other.example"
            assert "Origin" in cors.headers["Vary"]
            other = await session.get(url, headers={"Origin": "https://evil.example"})
            assert "Access-Control-Allow-Origin" not in other.headers
            csp = ok.headers["Content-Security-Policy"]
            assert "frame-ancestors https://wiki.example" in csp
            assert "connect-src 'self' ws: wss: https://other.example" in csp
    finally:
        await runner.cleanup()


async def test_security_headers_everywhere(server: Server) -> None:
    for path in ("/", "/api/v1/host", "/api/v1/nothing", "/metrics"):
        resp = await server.get(path)
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'self'" in csp
        assert "Access-Control-Allow-Origin" not in resp.headers


# -- dashboard serving ---------------------------------------------------------------


async def test_not_built_page(server: Server) -> None:
    for path in ("/", "/embed", "/some/spa/route"):
        resp = await server.get(path)
        assert resp.status == 503
        assert resp.content_type == "text/html"
        text = await resp.text()
        assert "not built" in text
        assert "npm ci" in text and "./dev run" in text
    # The API keeps working.
    assert (await server.get("/api/v1/host")).status == 200


async def test_built_dashboard_headers(server: Server, static_dir: Path) -> None:
    (static_dir / "assets").mkdir(parents=True)
    (static_dir / "index.html").write_text("<!doctype html><title>hostscope</title>")
    (static_dir / "assets" / "index-3f2a9c.js").write_text("console.log(1)")
    (static_dir / "favicon.svg").write_text("<svg/>")
    (static_dir.parent / "secret.txt").write_text("TOP-SECRET-CONTENT")

    for path in ("/", "/embed", "/embed/x", "/hosts/abc"):
        resp = await server.get(path)
        assert resp.status == 200, path
        assert "hostscope" in await resp.text()
        assert resp.headers["Cache-Control"] == "no-cache"

    asset = await server.get("/assets/index-3f2a9c.js")
    assert asset.status == 200
    assert asset.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "javascript" in asset.content_type

    icon = await server.get("/favicon.svg")
    assert icon.status == 200 and icon.headers["Cache-Control"] == "no-cache"

    for path in ("/assets/missing.js", "/assets/../secret.txt", "/assets/%2e%2e/secret.txt",
                 "/missing.png", "/..%2fsecret.txt"):
        resp = await server.get(path)
        assert resp.status == 404, path
        assert "TOP-SECRET-CONTENT" not in await resp.text()


# -- Prometheus ----------------------------------------------------------------------


async def _exposition(server: Server, accept: str | None = None) -> tuple[str, str]:
    await server.wait_ticks(2)
    headers = {"Accept": accept} if accept else {}
    resp = await server.get("/metrics", headers=headers)
    assert resp.status == 200
    return resp.headers["Content-Type"], await resp.text()


async def test_metrics_text_format_parses(server: Server) -> None:
    ctype, text = await _exposition(server)
    assert ctype.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    user = families["hostscope_kernel_all_cpu_user_seconds"]
    assert user.type == "counter"
    (sample,) = user.samples
    assert sample.name == "hostscope_kernel_all_cpu_user_seconds_total"
    # Raw kernel total converted from milliseconds to seconds, not a rate.
    raw_ms = server.app[SAMPLER].latest_raw["kernel.all.cpu.user"][""]
    assert sample.value == pytest.approx(raw_ms / 1000, rel=0.01)

    percpu = families["hostscope_kernel_percpu_cpu_util_busy_ratio"]
    assert percpu.type == "gauge"
    assert {s.labels["cpu"] for s in percpu.samples} >= {"cpu0"}
    load = families["hostscope_kernel_all_load"]
    assert {s.labels["interval"] for s in load.samples} == {"1 minute", "5 minute", "15 minute"}
    for family in families.values():
        for s in family.samples:
            assert "instance" not in s.labels and "job" not in s.labels
    assert families["hostscope_daemon_ticks"].samples[0].value >= 2


async def test_metrics_openmetrics_negotiated(server: Server) -> None:
    ctype, text = await _exposition(server, "application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    names = {f.name for f in openmetrics_families(text)}
    assert "hostscope_kernel_all_cpu_user_seconds" in names


async def test_metrics_pass_promtool(server: Server) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (./dev test installs Debian's prometheus as root)")
    _, text = await _exposition(server)
    result = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True,
        text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" or "SUCCESS" in result.stdout, result.stdout


async def test_json_bodies_are_strict_json(server: Server) -> None:
    # No NaN/Infinity tokens anywhere (browsers' JSON.parse rejects them).
    def refuse(constant: str) -> None:
        pytest.fail(f"{constant} in a JSON body")

    for path in ("/api/v1/fetch?names=kernel", "/api/v1/history?names=kernel&seconds=60"):
        text = await (await server.get(path)).text()
        json.loads(text, parse_constant=refuse)
