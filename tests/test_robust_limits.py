"""Every input a client controls is bounded, and going past a bound gets a clear answer:
websocket clients, message size, names held per connection, history answers, history
series, and log lines a client can provoke (docs/robustness.md, "Limits")."""

from __future__ import annotations

import asyncio
import gc
import io
import itertools
import json
import logging
import math
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hostscope.daemon import auth as auth_mod
from hostscope.daemon.config import Config, ConfigError, build_config
from hostscope.daemon.keys import AUTH, PENDING_LOGINS, PRIVILEGED, SAMPLER
from hostscope.daemon.logs import KeyValueFormatter, RepeatFilter

from .support import VIEWER_TOKEN, auth_config, auth_headers
from .test_daemon_stream import (
    INTERVAL,
    Daemon,
    connect,
    hello,
    recv,
    recv_type,
    run_daemon,
    subscribe,
)


async def started(**limits: object) -> AsyncIterator[Daemon]:
    runner, daemon = await run_daemon(auth_config(interval=INTERVAL, **limits))  # type: ignore[arg-type]
    try:
        yield daemon
    finally:
        await runner.cleanup()


@pytest.fixture
async def small() -> AsyncIterator[Daemon]:
    async for d in started(max_clients=3, max_message=2048, max_client_names=8,
                           max_history_values=5000):
        yield d


async def get(daemon: Daemon, path: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession(headers=auth_headers()) as session, session.get(
        f"http://127.0.0.1:{daemon.port}{path}"
    ) as resp:
        return resp.status, await resp.json()


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(("key", "bad"), [
    ("max_clients", 0), ("max_pending_auth", 0), ("max_message", 100), ("max_client_names", 0),
    ("max_history_values", 10), ("history_series", 0), ("log_repeats", 0),
    ("max_clients", "many"), ("max_message", 1.5), ("log_repeats", True),
])
def test_limits_are_validated(tmp_path: Path, key: str, bad: object) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"{key} = {json.dumps(bad)}\n")
    with pytest.raises(ConfigError, match=key):
        build_config(path)


def test_defaults_are_finite_and_history_series_reaches_the_history() -> None:
    config = Config()
    assert config.max_clients >= 200  # the load test's 200 clients fit by default
    assert config.max_message == 64 * 1024
    from hostscope.daemon.app import create_app
    app = create_app(Config(history_series=123, bpf=False))
    history = app[SAMPLER].history
    assert history is not None and history.max_series == 123


def test_symbol_cache_keys_reach_the_symbolizer_in_process() -> None:
    """privsep = false: the app's InProcessOps builds the profiler's Symbolizer with the
    configured bounds (tests/test_privsep_helper.py checks the helper's)."""
    from hostscope.bpfmods.symbols import SymbolCacheLimits
    from hostscope.daemon.app import create_app
    from hostscope.daemon.privileged import InProcessOps

    config = Config(bpf=False, privsep=False, symbol_cache_elf_files=17,
                    symbol_cache_elf_symbols=12_345, symbol_cache_perf_maps=3,
                    symbol_cache_perf_map_symbols=54_321)
    ops = create_app(config)[PRIVILEGED]
    assert isinstance(ops, InProcessOps)
    try:
        symbolizer = ops._get_profiler().symbolizer
        assert symbolizer.limits == SymbolCacheLimits(17, 12_345, 3, 54_321)
        # ... and the LRUs enforce them.
        assert (symbolizer._elf.max_entries, symbolizer._elf.max_weight) == (17, 12_345)
        assert (symbolizer._perf_maps.max_entries,
                symbolizer._perf_maps.max_weight) == (3, 54_321)
    finally:
        ops.close()


# -- websocket clients ----------------------------------------------------------------


async def test_clients_beyond_max_clients_get_a_json_503(small: Daemon) -> None:
    # With the cyclic garbage collector off, a slot freed only when its socket object is
    # collected (a WeakSet alone) stays taken: CI once saw slots held for over 30 s.
    gc.disable()
    try:
        await _clients_beyond_max_clients(small)
    finally:
        gc.enable()


async def _clients_beyond_max_clients(small: Daemon) -> None:
    async with connect(small.url) as a, connect(small.url) as b, connect(small.url) as c:
        for ws in (a, b, c):
            await hello(ws)
        with pytest.raises(InvalidStatus) as info:
            async with connect(small.url):
                pass
        response = info.value.response
        assert response.status_code == 503
        body = json.loads(response.body)
        assert body["error"]["code"] == "too_many_clients"
        assert "max_clients" in body["error"]["message"]
        # The connected ones are unaffected.
        await subscribe(a, names=["kernel.all.load"], backfill=0)
        assert (await recv_type(a, "samples"))["backfill"] is False
    # Once they are gone (their handlers finish; slow on a loaded machine), the slots
    # are free again.
    for _ in range(100):
        try:
            async with connect(small.url) as ws:
                await hello(ws)
            break
        except InvalidStatus:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("slots were not freed after the clients left")


async def first_message_auth(ws: ClientConnection, token: str = VIEWER_TOKEN) -> None:
    await ws.send(json.dumps({"type": "auth", "token": token}))
    assert (await recv(ws))["type"] == "auth"
    await hello(ws)


async def test_silent_unauthenticated_websockets_cannot_lock_out_clients_with_tokens(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets that never authenticate wait in max_pending_auth slots of their own, not
    in max_clients, and give them back when their auth wait runs out."""
    monkeypatch.setattr(auth_mod, "WS_AUTH_TIMEOUT_S", 1.5)
    async for d in started(max_clients=3, max_pending_auth=4):
        pending = d.app[PENDING_LOGINS]
        silent = [await ws_connect(d.url) for _ in range(4)]  # no token, never a message
        assert pending.total == 4
        cookie = {"Cookie": f"hostscope_token_{d.port}={VIEWER_TOKEN}"}
        # Credentials at the upgrade (Bearer header, the dashboard's cookie): admitted.
        async with connect(d.url) as bearer, ws_connect(d.url, additional_headers=cookie) as jar:
            for ws in (bearer, jar):
                await hello(ws)
                await subscribe(ws, names=["kernel.all.load"], backfill=0)
                assert (await recv_type(ws, "samples"))["backfill"] is False
            # One more without credentials: a JSON 503 before the upgrade.
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(d.url):
                    pass
            response = info.value.response
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "2"
            error = json.loads(response.body)["error"]
            assert error["code"] == "too_many_pending_auth"
            assert "max_pending_auth = 4" in error["message"]
            # The silent ones are closed once their auth wait is over ...
            for ws in silent:
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(ws, timeout=5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
                assert "in time" in closed.value.rcvd.reason
            # ... which gives their slots back, and counts as no failed authentication
            # (a socket that never sent credentials guessed nothing, as for REST).
            for _ in range(100):
                if not pending.total:
                    break
                await asyncio.sleep(0.05)
            assert pending.total == 0 and not pending.sockets
            assert len(d.app[AUTH].limiter) == 0
            async with ws_connect(d.url) as late:
                await first_message_auth(late)
                await subscribe(late, names=["kernel.all.load"], backfill=0)
                assert (await recv_type(late, "samples"))["backfill"] is False
                # Meanwhile the clients with tokens streamed on.
                assert (await recv_type(bearer, "samples"))["backfill"] is False
        for ws in silent:
            await ws.close()


async def test_pending_slots_per_client_address() -> None:
    async for d in started(max_pending_auth=4):
        d.app[PENDING_LOGINS].per_address = 2
        first = [await ws_connect(d.url) for _ in range(2)]
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(d.url):
                pass
        error = json.loads(info.value.response.body)["error"]
        assert error["code"] == "too_many_pending_auth"
        assert "from 127.0.0.1" in error["message"] and "2 per address" in error["message"]
        # Another address still gets a slot (all of 127/8 is this machine's loopback).
        async with ws_connect(d.url, local_addr=("127.0.0.2", 0)) as other:
            await first_message_auth(other)
        for ws in first:  # authenticating gives the slot back at once
            await first_message_auth(ws)
        assert d.app[PENDING_LOGINS].total == 0
        for ws in first:
            await ws.close()


async def test_authenticated_after_max_clients_filled_is_closed_1013() -> None:
    async for d in started(max_clients=1):
        # Upgraded while the one slot was free, authenticated once it was taken.
        async with ws_connect(d.url) as waiting, connect(d.url) as holder:
            await hello(holder)
            await waiting.send(json.dumps({"type": "auth", "token": VIEWER_TOKEN}))
            with pytest.raises(ConnectionClosed) as closed:
                await recv(waiting)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
            assert closed.value.rcvd.reason.startswith("too_many_clients")


async def test_shutdown_closes_websockets_still_waiting_to_authenticate() -> None:
    runner, d = await run_daemon(auth_config(interval=INTERVAL))
    try:
        async with ws_connect(d.url) as waiting:
            started_at = time.monotonic()
            await runner.cleanup()
            with pytest.raises(ConnectionClosed) as closed:
                await recv(waiting)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert time.monotonic() - started_at < auth_mod.WS_AUTH_TIMEOUT_S
    finally:
        await runner.cleanup()


async def test_message_size_limit_is_configurable(small: Daemon) -> None:
    async with connect(small.url, max_size=None) as ws:
        await hello(ws)
        await ws.send(json.dumps({"type": "ping", "id": "x" * 1000}))  # under 2048
        assert (await recv_type(ws, "pong"))["id"] == "x" * 1000
        await ws.send(json.dumps({"type": "ping", "id": "x" * 3000}))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_names_held_per_connection_are_capped(small: Daemon) -> None:
    """Optional names that match nothing are kept (a module may register them later);
    without the cap a client adding new ones forever grows the daemon forever."""
    async with connect(small.url) as ws:
        await hello(ws)
        await subscribe(ws, optional=[f"nothing.{i}" for i in range(6)], backfill=0)
        meta = await recv_type(ws, "meta")
        assert len(meta["absent"]) == 6
        await subscribe(ws, optional=[f"nothing.more.{i}" for i in range(3)], backfill=0)
        error = await recv_type(ws, "error")
        assert error["code"] == "too_many_names"
        assert "max_client_names" in error["message"]
        # Nothing changed, and the connection still works.
        await ws.send(json.dumps({"type": "ping", "id": 1}))
        assert (await recv_type(ws, "pong"))["id"] == 1
        await ws.send(json.dumps({"type": "unsubscribe", "names": ["nothing"]}))
        assert (await recv_type(ws, "meta"))["absent"] == []
        await subscribe(ws, optional=[f"nothing.more.{i}" for i in range(3)], backfill=0)
        assert len((await recv_type(ws, "meta"))["absent"]) == 3


# -- REST -----------------------------------------------------------------------------


async def test_history_answers_are_bounded(small: Daemon) -> None:
    sampler = small.app[SAMPLER]
    ncpu = len(sampler.latest["kernel.percpu.cpu.user"])
    # 1 series x (300 s / 0.1 s + 1) = 3001 values: under 5000.
    status, body = await get(small, "/api/v1/history?names=kernel.all.load&seconds=100")
    assert status == 200, body
    status, body = await get(small, "/api/v1/history?names=kernel.percpu,kernel.all&seconds=3600")
    assert status == 400
    error = body["error"]
    assert isinstance(error, dict) and error["code"] == "too_many_values"
    assert "max_history_values" in error["message"]
    assert ncpu >= 1


async def test_big_history_answers_are_streamed_batch_by_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A long /api/v1/history answer is read, encoded and written a batch at a time with
    the event loop free in between, and equals the answer built whole from history."""
    from hostscope.daemon import api

    from .test_daemon_stream import prefilled_sampler

    monkeypatch.setattr(api, "HISTORY_BATCH_CELLS", 3000)
    sampler = prefilled_sampler(600, INTERVAL)
    runner, daemon = await run_daemon(auth_config(interval=INTERVAL), sampler)
    turns = 0
    stop = asyncio.Event()

    async def other_work() -> None:  # what every other client needs: loop turns
        nonlocal turns
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)

    history = sampler.history
    assert history is not None
    seen_at_batch: list[int] = []
    read_range = history.query_range

    def query_range(*args: object, **kwargs: object) -> object:
        seen_at_batch.append(turns)
        return read_range(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(history, "query_range", query_range)
    names = ["kernel", "mem", "disk", "network.interface"]
    try:
        worker = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        url = f"http://127.0.0.1:{daemon.port}/api/v1/history?names={','.join(names)}&seconds=60"
        async with aiohttp.ClientSession(headers=auth_headers()) as session, \
                session.get(url) as resp:
            assert resp.status == 200 and resp.content_type == "application/json"
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            body = json.loads(await resp.read())
        stop.set()
        await worker
        stamps, series = body["t"], body["series"]
        values = len(stamps) * len(series)
        assert len(stamps) >= 500 and len(series) > 20
        assert values // 3000 >= 5, (len(stamps), len(series))
        # One read per batch, and other work ran between every two of them.
        assert len(seen_at_batch) >= values // 3000, seen_at_batch
        assert all(b > a for a, b in itertools.pairwise(seen_at_batch)), seen_at_batch
        monkeypatch.undo()
        # The same answer read whole (what the handler built before it streamed).
        resolved = [d.name for d in sampler.registry.resolve(names)]
        # The exact timestamps the answer carries in milliseconds: the first of them
        # after the answer's first, up to its last (ticks taken since come after it).
        held, _ = history.timeline(resolved, stamps[0] - 1.0, stamps[-1] + 1.0, tier_s=60)
        first = next(i for i, t in enumerate(held) if round(t, 3) == stamps[0])
        exact = held[first:first + len(stamps)]
        assert [round(t, 3) for t in exact] == stamps
        reference: dict[tuple[str, str], list[float | None]] = {}
        position = {t: i for i, t in enumerate(exact)}
        for piece in history.query_range(resolved, math.nextafter(exact[0], -math.inf),
                                         exact[-1], tier_s=60):
            for key, vals in piece.series.items():
                column: list[float | None] = [None] * len(stamps)
                for t, v in zip(piece.timestamps, vals, strict=True):
                    column[position[t]] = v
                reference[key] = column
        got = {(s["name"], s["instance"]): s["values"] for s in series}
        order = {name: i for i, name in enumerate(resolved)}
        assert list(got) == sorted(got, key=lambda k: (order[k[0]], k[1]))
        for key, column in reference.items():
            if key not in got:  # a series that appeared after the answer was cut
                assert all(v is None for v in column), key
                continue
            assert got[key] == [None if v is None else float(f"{v:.6g}") for v in column], key
        assert body["step"] == pytest.approx(INTERVAL)
    finally:
        stop.set()
        await runner.cleanup()


# -- logs -------------------------------------------------------------------------------


class Ticking:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeat_filter_counts_what_it_suppresses() -> None:
    clock = Ticking()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter())
    handler.addFilter(RepeatFilter(3, 60.0, clock=clock))
    log = logging.getLogger("hostscope.test.repeats")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        for i in range(100):
            log.info("bad websocket message", extra={"n": i})
            log.warning("client dropped")
        lines = stream.getvalue().splitlines()
        assert len(lines) == 6  # three of each event
        assert [line for line in lines if "n=" in line][-1].endswith("n=2")
        clock.now = 61.0
        log.info("bad websocket message", extra={"n": 100})
        last = stream.getvalue().splitlines()[-1]
        assert "n=100" in last and "suppressed=97" in last
        log.info("bad websocket message", extra={"n": 101})
        assert "suppressed" not in stream.getvalue().splitlines()[-1]
    finally:
        log.removeHandler(handler)


async def test_a_garbage_sender_cannot_flood_the_log(small: Daemon) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter())
    handler.addFilter(RepeatFilter(5))
    log = logging.getLogger("hostscope.daemon")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        async with connect(small.url) as ws:
            await hello(ws)
            errors = 0
            for batch in range(10):  # read the answers as we go: a sender that never
                for i in range(30):  # reads them is dropped as too slow instead
                    await ws.send(f"not json {{{batch}.{i}")
                while errors < 30 * (batch + 1):
                    errors += (await recv(ws))["type"] == "error"
            await ws.send(json.dumps({"type": "ping", "id": "done"}))
            assert (await recv_type(ws, "pong"))["id"] == "done"
            assert errors == 300  # every bad message is answered
        bad = [line for line in stream.getvalue().splitlines() if "bad websocket message" in line]
        assert len(bad) == 5
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


# -- connect/disconnect storms ------------------------------------------------------------


async def test_disconnecting_mid_backfill_logs_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Clients that leave while big (compressed in aiohttp's own shielded task) backfill
    frames are being sent: nothing is logged at error level. Cancelling the writer inside
    ``send_frame`` used to leave that task's exception unretrieved: one asyncio traceback
    per disconnect, thousands in a connect/disconnect storm."""
    import gc

    from .test_daemon_stream import prefilled_sampler

    sampler = prefilled_sampler(600, INTERVAL)
    runner, daemon = await run_daemon(auth_config(interval=INTERVAL), sampler)
    caplog.set_level(logging.WARNING)
    try:
        for i in range(40):
            async with connect(daemon.url, max_size=None) as ws:
                await subscribe(ws, names=["kernel", "mem"], backfill=3600)
                if i % 2:
                    await asyncio.sleep(0.01 * (i % 5))  # leave at different points
        async with connect(daemon.url) as ws:  # the daemon still serves
            await hello(ws)
            await subscribe(ws, names=["kernel.all.load"], backfill=0)
            assert (await recv_type(ws, "samples"))["backfill"] is False
        await asyncio.sleep(0.5)
        gc.collect()  # unretrieved task exceptions are reported when collected
        await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage()[:200] for r in errors]


def test_repeat_filter_keys_multiline_messages_by_their_first_line() -> None:
    """asyncio formats the task into its message ("Task exception was never retrieved\\n
    future: <Task ... name='Task-38' ...>"), so each message differs after line one."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RepeatFilter(2))
    log = logging.getLogger("hostscope.test.multiline")
    log.propagate = False
    log.addHandler(handler)
    try:
        for i in range(50):
            log.error(f"Task exception was never retrieved\nfuture: <Task name='Task-{i}'>")
        assert stream.getvalue().count("never retrieved") == 2
    finally:
        log.removeHandler(handler)


# -- hub caches ------------------------------------------------------------------------


def test_meta_cache_is_bounded_while_processes_come_and_go() -> None:
    """A client subscribed to per-process metrics gets a new layout, and a new meta
    frame, every time a process starts or exits. The cache of meta frames was trimmed
    only when some client changed its subscription, so a steady subscriber grew it by one
    frame per process change, forever (found by benchmarks/soak.py's RSS series)."""
    from hostscope.daemon import hub as hub_module

    from .test_daemon_hub import client, drain, make, tick

    sampler, table, hub = make()
    tick(sampler, hub)
    watcher = client(hub, "proc.memory.rss", "kernel")
    for n in range(hub_module.META_CACHE_ENTRIES + 200):
        table.table[f"{1000 + n}:9"] = ("web-1", float(n))  # one more process each tick
        tick(sampler, hub)
        metas = [m for m in drain(watcher) if m["type"] == "meta"]
        assert len(metas) == 1 and len(metas[0]["series"]) > n  # it still gets them
    assert len(hub._meta_cache) <= hub_module.META_CACHE_ENTRIES
    assert hub._meta_bytes == sum(map(len, hub._meta_cache.values()))
    assert hub._meta_bytes <= hub_module.META_CACHE_BYTES
    # Only frames of layouts in use are kept: a retired layout's frames go with it.
    assert {key[0] for key in hub._meta_cache} <= {watcher.layout.id}


async def test_clients_leaving_before_the_upgrade_answer_are_not_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that sends the upgrade request and resets the connection at once (a
    connect timeout in a storm): writing the 101 fails, which was logged as an
    "unhandled error" with a traceback (found by benchmarks/soak.py's churners)."""
    import base64
    import os
    import socket
    import struct

    caplog.set_level(logging.WARNING)
    async for daemon in started():
        loop = asyncio.get_running_loop()
        for _ in range(300):
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", daemon.port))
            key = base64.b64encode(os.urandom(16)).decode()
            headers = "".join(f"{k}: {v}\r\n" for k, v in auth_headers().items())
            await loop.sock_sendall(sock, (
                f"GET /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{headers}\r\n").encode())
            # RST instead of FIN: the transport is gone before the answer is written.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        await asyncio.sleep(0.5)
        async with connect(daemon.url) as ws:  # and it still serves
            await hello(ws)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage()[:200] for r in errors]


async def test_backfill_is_cut_to_max_history_values() -> None:
    """One subscribe cannot make the daemon materialise more than max_history_values
    of backfill: the most recent part that fits is sent, then live frames."""
    from .test_daemon_stream import prefilled_sampler

    sampler = prefilled_sampler(900, INTERVAL)
    runner, daemon = await run_daemon(
        auth_config(interval=INTERVAL, max_history_values=2000), sampler)
    try:
        async with connect(daemon.url, max_size=None) as ws:
            await hello(ws)
            await subscribe(ws, names=["kernel.all.load"], backfill=3600)  # 3 columns
            meta = await recv_type(ws, "meta")
            columns = len(meta["series"])
            stamps: list[float] = []
            while True:
                msg = await recv_type(ws, "samples")
                if not msg["backfill"]:
                    break
                stamps += msg["t"]
            assert columns == 3
            # 900 are in the history; the last ~66 s fit (fewer where the daemon's
            # start left a gap after the prefilled samples).
            assert 450 <= len(stamps) <= 2000 // columns + 5, len(stamps)
    finally:
        await runner.cleanup()


async def test_clients_that_never_read_hold_a_few_backfill_frames_and_few_slots() -> None:
    """Never-readers asking for big backfills: each has at most BACKFILL_QUEUED_FRAMES
    backfill frames queued (not its whole queue), at most BACKFILLS_IN_FLIGHT backfills are
    materialised at once daemon-wide, and a well-behaved client still gets its backfill."""
    from hostscope.daemon.hub import BACKFILLS_IN_FLIGHT
    from hostscope.daemon.keys import HUB
    from hostscope.daemon.stream import BACKFILL_QUEUED_FRAMES

    from .test_daemon_stream import prefilled_sampler

    sampler = prefilled_sampler(900, INTERVAL)
    runner, daemon = await run_daemon(auth_config(interval=INTERVAL), sampler)
    hub = daemon.app[HUB]
    worst_queue = 0
    worst_in_flight = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal worst_queue, worst_in_flight
        while not stop.is_set():
            backfilling = [c for c in hub.clients if not c.live and not c.closed]
            if backfilling:
                worst_queue = max(worst_queue, *(c.queue.qsize() for c in backfilling))
            worst_in_flight = max(worst_in_flight,
                                  BACKFILLS_IN_FLIGHT - hub.backfill_slots._value)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    readers = []
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        for _ in range(12):
            # max_queue=1 and never recv(): the library stops reading after one frame,
            # so the daemon's sends back up once the socket buffers are full.
            ws = await connect(daemon.url, max_size=None, max_queue=1)
            readers.append(ws)
            await ws.send(json.dumps({"type": "subscribe", "names": ["kernel", "mem", "disk"],
                                      "backfill": 3600}))
        async with connect(daemon.url, max_size=None) as ws:
            await hello(ws)
            await subscribe(ws, names=["kernel.all.load"], backfill=60)
            await recv_type(ws, "meta")
            assert (await recv_type(ws, "samples"))["backfill"] is True
        await asyncio.sleep(1.0)
        peak_mb = (tracemalloc.get_traced_memory()[1] - base) / 1e6
    finally:
        tracemalloc.stop()
        stop.set()
        await watcher
        for ws in readers:
            ws.transport.abort()
        await runner.cleanup()
    # meta + queued backfill frames; live frames never go to a client still backfilling.
    assert worst_queue <= BACKFILL_QUEUED_FRAMES + 1, worst_queue
    assert worst_in_flight <= BACKFILLS_IN_FLIGHT
    # Backfills are read window by window as frames go out (Hub.backfill): a stalled
    # one holds a window (BACKFILL_WINDOW_CELLS values), not its whole history. Measured
    # here: 17 MB (13 connections' compressors and queued frames included); read whole,
    # as before, 37.8 MB, and that part grows with the history (an hour: ~50x this one).
    print(f"peak traced memory during the never-readers' backfills: {peak_mb:.1f} MB")
    assert peak_mb < 25, peak_mb
