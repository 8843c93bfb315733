"""The websocket protocol against the real daemon on loopback, spoken by the independent
``websockets`` client library (not aiohttp's own client)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hostscope.daemon.app import create_app
from hostscope.daemon.config import Config
from hostscope.daemon.hub import Hub
from hostscope.daemon.keys import HUB, SAMPLER, WEBSOCKETS
from hostscope.metrics.defaults import build_sampler
from hostscope.metrics.history import History
from hostscope.metrics.sampler import Sampler, SystemClock
from hostscope.metrics.sources import Roots

from .support import auth_config, auth_headers

INTERVAL = 0.1
#: Every websocket here authenticates (tests/support.py); test_daemon_auth.py covers
#: the other ways and the refusals.
connect = functools.partial(ws_connect, additional_headers=auth_headers())


class SteppingClock:
    """A clock that moves only when told: lets a test build history quickly."""

    def __init__(self, start_wall: float, step: float) -> None:
        self.start_wall, self.step, self.n = start_wall, step, 0

    def wall(self) -> float:
        return self.start_wall + self.n * self.step

    def mono(self) -> float:
        return 1000.0 + self.n * self.step


def prefilled_sampler(ticks: int, interval: float) -> Sampler:
    """A default sampler whose history already holds ``ticks`` samples ending now."""
    clock = SteppingClock(time.time() - ticks * interval, interval)
    sampler = build_sampler(Roots(), interval_s=interval, history=History(), clock=clock)
    for _ in range(ticks):
        sampler.sample()
        clock.n += 1
    sampler.clock = SystemClock()
    return sampler


@dataclass
class Daemon:
    app: web.Application
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/stream"

    async def wait_ticks(self, n: int) -> None:
        sampler = self.app[SAMPLER]
        target = sampler.seq + n
        deadline = time.monotonic() + 10
        while sampler.seq < target:
            assert time.monotonic() < deadline, "sampler did not tick"
            await asyncio.sleep(INTERVAL / 4)


async def run_daemon(
    config: Config, sampler: Sampler | None = None
) -> tuple[web.AppRunner, Daemon]:
    app = create_app(config, sampler=sampler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    daemon = Daemon(app, runner.addresses[0][1])
    await daemon.wait_ticks(2)
    return runner, daemon


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    runner, d = await run_daemon(auth_config(interval=INTERVAL))
    yield d
    await runner.cleanup()


def on_grid(gaps: list[float], interval: float) -> bool:
    """Ticks follow the daemon's monotonic grid: no two ticks closer than half an
    interval, and most gaps a whole number of intervals give or take timer jitter (a
    loaded machine may start a tick late or skip a slot, but the schedule does not drift
    or burst)."""
    if any(g < interval * 0.5 for g in gaps):
        return False
    regular = sum(1 for g in gaps if abs(g / interval - round(g / interval)) < 0.25)
    return regular >= 0.75 * len(gaps)


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next message of type ``kind``, skipping others (e.g. live samples)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await recv(ws, max(0.01, deadline - time.monotonic()))
        if msg["type"] == kind:
            return msg


async def subscribe(ws: ClientConnection, **fields: Any) -> None:
    await ws.send(json.dumps({"type": "subscribe", **fields}))


async def hello(ws: ClientConnection) -> dict[str, Any]:
    msg = await recv(ws)
    assert msg["type"] == "hello"
    return msg


# -- basics --------------------------------------------------------------------------


async def test_hello_is_first_and_deflate_is_negotiated(daemon: Daemon) -> None:
    async with connect(daemon.url) as ws:
        msg = await hello(ws)
        assert msg["protocol"] == 1
        assert msg["interval_s"] == INTERVAL
        assert msg["host"] and msg["version"]
        extensions = [type(e).__name__ for e in ws.protocol.extensions]
        assert extensions == ["PerMessageDeflate"]


async def test_subscribe_backfill_then_live(daemon: Daemon) -> None:
    await daemon.wait_ticks(5)
    async with connect(daemon.url) as ws:
        await hello(ws)
        await subscribe(ws, names=["kernel.all.load", "kernel.percpu.cpu.util"], backfill=60)
        meta = await recv(ws)
        assert meta["type"] == "meta"
        assert meta["interval_s"] == INTERVAL
        series = meta["series"]
        assert ["kernel.all.load", "1 minute"] in series
        assert ["kernel.percpu.cpu.util.busy", "cpu0"] in series
        assert set(meta["metrics"]) == {
            "kernel.all.load", "kernel.percpu.cpu.util.busy", "kernel.percpu.cpu.util.sys",
            "kernel.percpu.cpu.util.user",
        }
        assert meta["metrics"]["kernel.all.load"]["indom"] == "kernel.loadavg"
        assert meta["absent"] == []

        first = await recv(ws)
        assert first["type"] == "samples" and first["backfill"] is True
        assert first["seq"] == meta["seq"]
        assert len(first["t"]) >= 5
        assert len(first["v"]) == len(series)
        assert all(len(col) == len(first["t"]) for col in first["v"])
        assert first["t"] == sorted(first["t"])

        last_t = first["t"][-1]
        live: list[dict[str, Any]] = []
        while len(live) < 5:
            msg = await recv(ws)
            assert msg["type"] == "samples" and msg["seq"] == meta["seq"]
            assert len(msg["v"]) == len(series)
            for t in msg["t"]:
                assert t > last_t  # no duplicate or out-of-order timestamps
                last_t = t
            if not msg["backfill"]:
                live.append(msg)
        assert all(len(m["t"]) == 1 and all(len(c) == 1 for c in m["v"]) for m in live)
        gaps = [b["t"][0] - a["t"][0] for a, b in itertools.pairwise(live)]
        assert on_grid(gaps, INTERVAL), gaps
        # Rounded to 6 significant digits.
        for m in live:
            for (value,) in m["v"]:
                assert value is None or float(f"{value:.6g}") == value


async def test_large_backfill_is_chunked(tmp_path: object) -> None:
    del tmp_path
    sampler = prefilled_sampler(1300, INTERVAL)
    runner, daemon = await run_daemon(auth_config(interval=INTERVAL), sampler)
    try:
        async with connect(daemon.url, max_size=None) as ws:
            await hello(ws)
            await subscribe(ws, names=["kernel.all.load"], backfill=3600)
            meta = await recv(ws)
            frames = []
            while True:
                msg = await recv(ws)
                if not msg["backfill"]:
                    break
                frames.append(msg)
            sizes = [len(f["t"]) for f in frames]
            assert len(frames) >= 3 and max(sizes) == 600, sizes
            stamps = [t for f in frames for t in f["t"]]
            assert stamps == sorted(stamps) and len(stamps) == len(set(stamps))
            assert len(stamps) >= 1300
            assert all(len(c) == len(f["t"]) for f in frames for c in f["v"])
            assert msg["seq"] == meta["seq"] and msg["t"][0] > stamps[-1]
    finally:
        await runner.cleanup()


async def test_backfill_zero_sends_only_live(daemon: Daemon) -> None:
    async with connect(daemon.url) as ws:
        await hello(ws)
        await subscribe(ws, names=["kernel.all.runnable"], backfill=0)
        assert (await recv(ws))["type"] == "meta"
        for _ in range(3):
            msg = await recv(ws)
            assert msg["type"] == "samples" and msg["backfill"] is False


async def test_unsubscribe_and_resubscribe(daemon: Daemon) -> None:
    async with connect(daemon.url) as ws:
        await hello(ws)
        await subscribe(ws, names=["kernel.all.load", "kernel.all.runnable"], backfill=0)
        meta = await recv_type(ws, "meta")
        assert len(meta["series"]) == 4
        await ws.send(json.dumps({"type": "unsubscribe", "names": ["kernel.all.load"]}))
        meta2 = await recv_type(ws, "meta")
        assert meta2["series"] == [["kernel.all.runnable", ""]]
        assert set(meta2["metrics"]) == {"kernel.all.runnable"}
        nxt = await recv_type(ws, "samples")
        assert nxt["seq"] == meta2["seq"] and len(nxt["v"]) == 1

        await ws.send(json.dumps({"type": "unsubscribe", "names": ["kernel"]}))
        empty = await recv_type(ws, "meta")
        assert empty["series"] == [] and empty["metrics"] == {}
        # Nothing subscribed: no samples, the connection stays usable.
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=INTERVAL * 4)
        await ws.send(json.dumps({"type": "ping", "id": "after"}))
        assert await recv(ws) == {"type": "pong", "id": "after"}


async def test_ping_pong_echoes_id(daemon: Daemon) -> None:
    async with connect(daemon.url) as ws:
        await hello(ws)
        for ident in (1, "x", None, {"a": [1]}):
            await ws.send(json.dumps({"type": "ping", "id": ident}))
            assert await recv(ws) == {"type": "pong", "id": ident}


@pytest.mark.parametrize(
    ("message", "code", "ref"),
    [
        ("not json", "bad_message", None),
        ("[1, 2]", "bad_message", None),
        ('{"no": "type"}', "unknown_type", None),
        ('{"type": "subscribe_all"}', "unknown_type", "subscribe_all"),
        ('{"type": "subscribe"}', "bad_parameter", "subscribe"),
        ('{"type": "subscribe", "names": "kernel.all.load"}', "bad_parameter", "subscribe"),
        ('{"type": "subscribe", "names": []}', "bad_parameter", "subscribe"),
        ('{"type": "subscribe", "names": [], "optional": []}', "bad_parameter", "subscribe"),
        ('{"type": "subscribe", "names": [""]}', "bad_parameter", "subscribe"),
        ('{"type": "subscribe", "names": ["kernel.all.load"], "interval": 0}', "bad_parameter",
         "subscribe"),
        ('{"type": "subscribe", "names": ["kernel.all.load"], "interval": 61}', "bad_parameter",
         "subscribe"),
        ('{"type": "subscribe", "names": ["kernel.all.load"], "interval": true}',
         "bad_parameter", "subscribe"),
        ('{"type": "subscribe", "names": ["kernel.all.load"], "backfill": -1}', "bad_parameter",
         "subscribe"),
        ('{"type": "subscribe", "names": ["kernel.all.load"], "backfill": 3601}',
         "bad_parameter", "subscribe"),
        ('{"type": "subscribe", "names": ["kernel.all.load"], "filter": "web"}',
         "bad_parameter", "subscribe"),
        ('{"type": "subscribe", "names": ["kernel.all.load"], "filter": {"pod": "x"}}',
         "bad_parameter", "subscribe"),
        ('{"type": "unsubscribe"}', "bad_parameter", "unsubscribe"),
        ('{"type": "unsubscribe", "names": ["kernel.all.load"]}', "unknown_metric",
         "unsubscribe"),
        (json.dumps({"type": "subscribe", "names": [f"a.b{i}" for i in range(201)]}),
         "too_many_names", "subscribe"),
    ],
)
async def test_bad_messages_get_errors_and_connection_stays(
    daemon: Daemon, message: str, code: str, ref: str | None
) -> None:
    async with connect(daemon.url) as ws:
        await hello(ws)
        await ws.send(message)
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["code"] == code
        assert error["ref"] == ref
        assert error["message"]
        await ws.send(json.dumps({"type": "ping", "id": 1}))
        assert await recv(ws) == {"type": "pong", "id": 1}


async def test_unknown_names_listed_and_nothing_subscribed(daemon: Daemon) -> None:
    async with connect(daemon.url) as ws:
        await hello(ws)
        await subscribe(ws, names=["kernel.all.load", "no.such", "kernel.all.nope"])
        error = await recv(ws)
        assert error["code"] == "unknown_metric"
        assert error["names"] == ["kernel.all.nope", "no.such"]
        assert "no.such" in error["message"] and "kernel.all.nope" in error["message"]
        assert "kernel.all.load" not in error["message"]
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=INTERVAL * 4)


async def test_optional_names_reported_absent(daemon: Daemon) -> None:
    async with connect(daemon.url) as ws:
        await hello(ws)
        await subscribe(ws, names=["kernel.all.runnable"], optional=["bpf.runqlat", "hinv.ncpu"],
                        backfill=0)
        meta = await recv(ws)
        assert meta["absent"] == ["bpf.runqlat"]
        assert set(meta["metrics"]) == {"kernel.all.runnable", "hinv.ncpu"}


async def test_subscribe_with_optional_names_only(daemon: Daemon) -> None:
    async with connect(daemon.url) as ws:
        await hello(ws)
        await subscribe(ws, optional=["bpf.runqlat", "kernel.all.runnable"], backfill=0)
        meta = await recv(ws)
        assert meta["type"] == "meta"
        assert meta["absent"] == ["bpf.runqlat"]
        assert set(meta["metrics"]) == {"kernel.all.runnable"}


async def test_interval_is_a_multiple_of_the_base(daemon: Daemon) -> None:
    async with connect(daemon.url) as ws:
        await hello(ws)
        await subscribe(ws, names=["kernel.all.runnable"], interval=0.25, backfill=0)
        meta = await recv(ws)
        assert meta["interval_s"] == pytest.approx(0.3)
        stamps = [(await recv_type(ws, "samples"))["t"][0] for _ in range(4)]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert on_grid(gaps, 0.3), gaps


async def test_container_filter_keeps_host_metrics(daemon: Daemon) -> None:
    async with connect(daemon.url) as ws:
        await hello(ws)
        await subscribe(ws, names=["kernel.all.load"], filter={"container": "web-1"}, backfill=0)
        meta = await recv(ws)
        assert len(meta["series"]) == 3  # not per-process/cgroup: unaffected by the filter


async def test_same_subscription_shares_one_encoding(daemon: Daemon) -> None:
    hub = daemon.app[HUB]
    async with connect(daemon.url) as a, connect(daemon.url) as b:
        await hello(a)
        await hello(b)
        await subscribe(a, names=["kernel.all.cpu.util", "kernel.all.load"], backfill=0)
        await subscribe(b, names=["kernel.all.load", "kernel.all.cpu.util"], backfill=0)
        meta_a, meta_b = await recv(a), await recv(b)
        assert meta_a["seq"] == meta_b["seq"]
        await recv_type(a, "samples")
        await recv_type(b, "samples")
        before = hub.stats.frames_encoded
        raw_a = [await asyncio.wait_for(a.recv(), 5) for _ in range(5)]
        raw_b = [await asyncio.wait_for(b.recv(), 5) for _ in range(5)]
        encoded = hub.stats.frames_encoded - before
        # One encode per tick for both clients (allow for a tick landing mid-measurement).
        assert encoded <= 7
        assert set(raw_a) & set(raw_b)  # byte-identical frames


async def test_oversized_message_closes_with_1009(daemon: Daemon) -> None:
    async with connect(daemon.url, max_size=None) as ws:
        await hello(ws)
        await ws.send(json.dumps({"type": "ping", "id": "x" * (70 * 1024)}))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


# -- origin --------------------------------------------------------------------------


async def test_foreign_origin_is_refused(daemon: Daemon) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(daemon.url, origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403
    assert b"origin_not_allowed" in info.value.response.body


async def test_same_origin_is_accepted(daemon: Daemon) -> None:
    origin = f"http://127.0.0.1:{daemon.port}"
    async with connect(daemon.url, origin=origin) as ws:  # type: ignore[arg-type]
        await hello(ws)
    with pytest.raises(InvalidStatus):
        # Same host, other port: a different origin.
        async with connect(daemon.url, origin="http://127.0.0.1:1"):  # type: ignore[arg-type]
            pass


# -- flow control --------------------------------------------------------------------


async def stalled_client(daemon: Daemon) -> ClientConnection:
    """A client on a congested path: it never reads, its receive buffer is tiny and the
    daemon's kernel send buffer for it is tiny (as on a slow link), so the daemon's
    writes back up after a few frames instead of after megabytes of kernel buffering."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", daemon.port))
    sock.setblocking(False)
    before = set(daemon.app[WEBSOCKETS])
    ws = await connect(daemon.url, sock=sock, max_queue=1, max_size=None, compression=None)
    (server_side,) = set(daemon.app[WEBSOCKETS]) - before
    transport = server_side._req.transport  # the daemon's end of this connection
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return ws


async def collect_until_dropped(
    fast: ClientConnection, hub: Hub
) -> tuple[list[float], list[float]]:
    """Read the fast client until the hub has dropped a client (and 20 more frames)."""
    arrivals: list[float] = []
    stamps: list[float] = []
    deadline = time.monotonic() + 30
    while hub.stats.dropped == 0 or len(arrivals) < 20:
        assert time.monotonic() < deadline, "slow client was never dropped"
        msg = await recv(fast)
        if msg["type"] == "samples":
            arrivals.append(time.monotonic())
            stamps.extend(msg["t"])
    return arrivals, stamps


async def expect_1013(slow: ClientConnection) -> None:
    """Reading now yields what was buffered, then the close frame 1013."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(slow.recv(), 10)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1013
    assert info.value.rcvd.reason == "client too slow"


async def test_slow_client_dropped_fast_client_on_schedule() -> None:
    interval = 0.05
    runner, daemon = await run_daemon(auth_config(interval=interval, client_queue=8))
    hub = daemon.app[HUB]
    try:
        async with connect(daemon.url) as fast:
            await hello(fast)
            await subscribe(fast, names=["kernel.all.load"], backfill=0)
            await recv_type(fast, "meta")

            # Live frames of every kernel metric (~1.5 KB each, 20 a second) back up in
            # the slow client's buffers until its queue overflows.
            slow = await stalled_client(daemon)
            stuck_from = time.monotonic()
            await slow.send(json.dumps({"type": "subscribe", "names": ["kernel", "hinv"],
                                        "backfill": 0}))
            arrivals, stamps = await collect_until_dropped(fast, hub)
            assert hub.stats.dropped == 1
            assert len(hub.clients) == 1  # only the fast client is still registered
            # The slow client stays stuck for seconds before it is dropped (its kernel
            # buffers absorb frames first), so a fast client stalled behind it would show
            # a gap of seconds, well apart from the jitter of a loaded machine (0.36 s
            # once, under parallel tests).
            stuck_s = arrivals[-20] - stuck_from  # the drop came before the last 20 frames
            assert stuck_s > 2.0, stuck_s

            # The fast client kept its schedule while the slow one was stuck for seconds:
            # no hole in its samples, frames arriving at the tick rate (jitter of a few
            # intervals on a loaded machine is tolerated; a stall would be seconds).
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            assert max(gaps) < min(1.0, stuck_s / 2), gaps
            spacing = [b - a for a, b in itertools.pairwise(arrivals)]
            assert max(spacing) < min(1.0, stuck_s / 2), spacing
            assert len(stamps) >= 0.7 * (stamps[-1] - stamps[0]) / interval
            await expect_1013(slow)
    finally:
        await runner.cleanup()


async def test_client_too_slow_for_its_backfill_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client gets this long to make room for each backfill frame (10 s in production).
    monkeypatch.setattr("hostscope.daemon.stream.BACKFILL_SEND_TIMEOUT_S", 0.5)
    interval = 0.05
    sampler = prefilled_sampler(1200, interval)
    runner, daemon = await run_daemon(auth_config(interval=interval, client_queue=8), sampler)
    hub = daemon.app[HUB]
    try:
        async with connect(daemon.url) as fast:
            await hello(fast)
            await subscribe(fast, names=["kernel.all.load"], backfill=0)
            await recv_type(fast, "meta")
            slow = await stalled_client(daemon)
            await slow.send(json.dumps({"type": "subscribe", "names": ["kernel", "hinv"],
                                        "backfill": 3600}))  # ~0.7 MB of history
            arrivals, _ = await collect_until_dropped(fast, hub)
            assert len(hub.clients) == 1
            spacing = [b - a for a, b in itertools.pairwise(arrivals)]
            assert max(spacing) < 0.3, spacing
            await expect_1013(slow)
    finally:
        await runner.cleanup()
