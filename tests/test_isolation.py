"""Collector isolation (issue #7): a collector that raises or hangs is counted, shown
stale and skipped while the others keep ticking on time, in a real sampler and a real
daemon, and it recovers when the collector does."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection

from hostscope.daemon.ticker import Ticker
from hostscope.metrics.collector import Collector, Raw
from hostscope.metrics.history import History
from hostscope.metrics.model import (
    COUNT,
    NONE,
    SINGULAR,
    MetricDesc,
    MetricRegistry,
    counter,
    instant,
)
from hostscope.metrics.sampler import STALE_ERROR, STALE_TIMEOUT, Sampler, SystemClock
from hostscope.metrics.watchdog import CollectWorker
from tests.support import auth_config, auth_headers
from tests.test_daemon_stream import Daemon, connect, recv, run_daemon, subscribe


class Steady(Collector):
    """A healthy collector: counts its calls."""

    name = "steady"

    def __init__(self) -> None:
        self.calls = 0

    def descriptors(self) -> list[MetricDesc]:
        return [counter("test.steady.calls", COUNT, "calls so far")]

    def collect(self) -> Raw:
        self.calls += 1
        return {"test.steady.calls": {SINGULAR: self.calls}}


class Flaky(Collector):
    """Raises while ``failing`` is set."""

    name = "flaky"

    def __init__(self) -> None:
        self.failing = True

    def descriptors(self) -> list[MetricDesc]:
        return [instant("test.flaky.value", NONE, "one while healthy")]

    def collect(self) -> Raw:
        if self.failing:
            raise OSError(5, "Input/output error")
        return {"test.flaky.value": {SINGULAR: 1.0}}


class Blocking(Collector):
    """Blocks on an Event while ``hang`` is set, like a read of a dead NFS mount."""

    name = "blocking"

    def __init__(self) -> None:
        self.hang = False
        self.release = threading.Event()
        self.calls = 0
        self.returned = 0
        self.concurrent = 0
        self._inside = 0

    def descriptors(self) -> list[MetricDesc]:
        return [instant("test.blocking.value", NONE, "the call number")]

    def collect(self) -> Raw:
        self._inside += 1
        self.concurrent = max(self.concurrent, self._inside)
        try:
            self.calls += 1
            if self.hang:
                self.release.wait(30)
            self.returned += 1
            return {"test.blocking.value": {SINGULAR: float(self.calls)}}
        finally:
            self._inside -= 1


def _sampler(*collectors: Collector, interval: float = 0.05) -> Sampler:
    # self-metrics every tick here, to see them change tick by tick
    return Sampler(collectors, registry=MetricRegistry(), interval_s=interval,
                   history=History(), self_metrics=True, self_metrics_interval_s=None)


def test_a_raising_collector_is_counted_and_stale_while_others_keep_going() -> None:
    steady, flaky = Steady(), Flaky()
    sampler = _sampler(steady, flaky)
    for _ in range(3):
        tick = sampler.sample()
        assert "steady" in tick.groups and "flaky" not in tick.groups
    status = sampler.status["flaky"]
    assert status.errors == 3 and status.stale and status.stale_reason == STALE_ERROR
    assert "Input/output error" in (status.last_error or "")
    since = status.stale_since
    assert since is not None
    assert sampler.stale_metrics(["test.flaky.value", "test.steady.calls"]) == {
        "test.flaky.value": {"collector": "flaky", "reason": "error", "since": since,
                             "message": status.last_error},
    }
    errors = sampler.latest_raw["hostscope.collector.errors"]
    assert errors["flaky"] == 3 and errors["steady"] == 0
    assert sampler.latest["hostscope.collector.stale"] == {"steady": 0, "flaky": 1}
    version = sampler.stale_version
    flaky.failing = False
    tick = sampler.sample()
    assert tick.groups["flaky"].raw == {"test.flaky.value": {SINGULAR: 1.0}}
    assert not status.stale and status.stale_since is None and status.stale_reason is None
    assert sampler.stale_version > version and sampler.stale_metrics(["test.flaky.value"]) == {}
    assert sampler.latest["hostscope.collector.stale"]["flaky"] == 0


def test_a_hung_collector_is_abandoned_skipped_and_back_when_its_call_returns() -> None:
    steady, blocking = Steady(), Blocking()
    sampler = _sampler(blocking, steady)  # the hung one first: the tick must resume after it
    worker = CollectWorker(sampler, timeout_s=0.2)
    try:
        for _ in range(2):
            sampler.publish(worker.collect())
        blocking.hang = True
        start = time.monotonic()
        tick = worker.collect()
        sampler.publish(tick)
        took = time.monotonic() - start
        assert 0.15 < took < 3.0, took  # waited for the timeout, not for the call
        assert "steady" in tick.groups and "blocking" not in tick.groups
        status = sampler.status["blocking"]
        assert status.timeouts == 1 and status.hung and status.stale
        assert status.stale_reason == STALE_TIMEOUT and status.errors == 0
        # while its call is stuck, ticks never call it again nor wait for a timeout
        took_each = []
        for _ in range(5):
            start = time.monotonic()
            tick = worker.collect()
            sampler.publish(tick)
            took_each.append(time.monotonic() - start)
            assert "steady" in tick.groups and "blocking" not in tick.groups
        assert statistics.median(took_each) < 0.1, took_each  # a wait would be >= 0.2 s
        assert blocking.calls == 3 and steady.calls == 8
        assert sampler.latest_raw["hostscope.collector.timeouts"]["blocking"] == 1
        assert sampler.latest["hostscope.collector.stale"]["blocking"] == 1
        assert worker.abandoned == 1
        # the stuck call returns: its result is dropped, the collector runs again
        blocking.hang = False
        blocking.release.set()
        deadline = time.monotonic() + 5
        while status.hung:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert sampler.latest["test.blocking.value"][SINGULAR] == 2.0  # not the stuck call's
        tick = worker.collect()
        sampler.publish(tick)
        assert tick.groups["blocking"].raw["test.blocking.value"][SINGULAR] == 4.0
        assert not status.stale and status.timeouts == 1
        assert sampler.latest["hostscope.collector.stale"]["blocking"] == 0
        assert blocking.concurrent == 1  # never two calls of one collector at once
    finally:
        blocking.release.set()
        worker.close()


def test_the_normal_path_runs_on_one_thread_and_abandons_nothing() -> None:
    steady = Steady()
    sampler = _sampler(steady)
    worker = CollectWorker(sampler, timeout_s=0.5)
    threads = set()
    original = steady.collect

    def collect() -> Raw:
        threads.add(threading.get_ident())
        return original()

    steady.collect = collect  # type: ignore[method-assign]
    try:
        for _ in range(20):
            sampler.publish(worker.collect())
    finally:
        worker.close()
    assert len(threads) == 1 and worker.abandoned == 0
    assert sampler.status["steady"].collections == 20 and not sampler.stale()
    assert sampler.abandon(0.5) is None  # nothing running: nothing to abandon


def test_a_timeout_during_the_pipeline_is_not_a_collector_timeout() -> None:
    sampler = _sampler(Steady())
    assert sampler.overdue_in(1.0) == 1.0
    sampler.sample()
    assert sampler.abandon(0.0) is None and sampler.status["steady"].timeouts == 0


def test_self_metrics_have_their_own_cadence_by_default() -> None:
    sampler = Sampler([Steady()], registry=MetricRegistry(), interval_s=1.0, self_metrics=True)
    assert sampler.group_interval_s("hostscope") == 5.0
    assert ["hostscope" in sampler.sample().groups for _ in range(6)] == [
        True, False, False, False, False, True]


def test_ticker_default_timeout_is_twice_the_interval_at_least_two_seconds() -> None:
    fast = Ticker(_sampler(Steady(), interval=0.05), lambda tick: None, clock=SystemClock())
    slow = Ticker(_sampler(Steady(), interval=5.0), lambda tick: None, clock=SystemClock())
    set_ = Ticker(_sampler(Steady()), lambda tick: None, clock=SystemClock(), timeout_s=0.3)
    assert (fast.worker.timeout_s, slow.worker.timeout_s, set_.worker.timeout_s) == (2, 10, 0.3)


# --- the real daemon ------------------------------------------------------------------

INTERVAL = 0.1


@pytest.fixture
async def isolated() -> AsyncIterator[tuple[Daemon, Blocking, Flaky]]:
    blocking, flaky = Blocking(), Flaky()
    flaky.failing = False
    sampler = Sampler([Steady(), blocking, flaky], registry=MetricRegistry(),
                      interval_s=INTERVAL, history=History(), self_metrics=True)
    runner, daemon = await run_daemon(
        auth_config(interval=INTERVAL, collector_timeout=0.3, bpf=False), sampler)
    yield daemon, blocking, flaky
    blocking.release.set()
    await runner.cleanup()


async def _next(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        msg = await recv(ws, max(0.01, deadline - time.monotonic()))
        if msg["type"] == kind:
            return msg


async def _host(daemon: Daemon) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers=auth_headers()) as session, session.get(
            f"http://127.0.0.1:{daemon.port}/api/v1/host") as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


async def test_daemon_shows_a_hung_collector_stale_and_keeps_ticking(
    isolated: tuple[Daemon, Blocking, Flaky],
) -> None:
    daemon, blocking, flaky = isolated
    async with connect(daemon.url, origin=f"http://127.0.0.1:{daemon.port}") as ws:
        assert (await recv(ws))["type"] == "hello"
        await subscribe(ws, names=["test", "hostscope.collector.stale"], backfill=0)
        meta = await _next(ws, "meta")
        assert meta["stale"] == {}
        blocking.hang = True
        stale = await _next(ws, "stale", timeout=5)
        assert stale["stale"]["test.blocking.value"]["reason"] == "timeout"
        assert stale["stale"]["test.blocking.value"]["collector"] == "blocking"
        assert set(stale["stale"]) == {"test.blocking.value"}
        # live frames keep their cadence while the call is stuck (a ticker waiting on
        # it would space them by the 0.3 s timeout at least)
        arrivals = []
        for _ in range(10):
            await _next(ws, "samples")
            arrivals.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert statistics.median(gaps) < 2 * INTERVAL, gaps
        body = await _host(daemon)
        entry = body["stale"]["blocking"]
        assert entry["reason"] == "timeout" and entry["metrics"] == ["test.blocking.value"]
        assert entry["since"] <= time.time()
        status = {c["name"]: c for c in body["collectors"]}["blocking"]
        assert status["timeouts"] == 1 and status["hung"] and status["stale"]
        # a raising collector at the same time: both stale, for their own reasons
        flaky.failing = True
        stale = await _next(ws, "stale")
        assert stale["stale"]["test.flaky.value"]["reason"] == "error"
        assert "Input/output error" in stale["stale"]["test.flaky.value"]["message"]
        # recovery
        flaky.failing = False
        blocking.hang = False
        blocking.release.set()
        deadline = time.monotonic() + 5
        while True:
            msg = await _next(ws, "stale", timeout=max(0.1, deadline - time.monotonic()))
            if msg["stale"] == {}:
                break
        body = await _host(daemon)
        assert body["stale"] == {}
        assert {c["name"]: c for c in body["collectors"]}["blocking"]["stale"] is False
        # a new subscription's meta carries the (now empty) stale state too
        await subscribe(ws, names=["test.steady.calls"], backfill=0)
        assert (await _next(ws, "meta"))["stale"] == {}


async def test_meta_of_a_new_subscription_says_what_is_stale(
    isolated: tuple[Daemon, Blocking, Flaky],
) -> None:
    daemon, _, flaky = isolated
    flaky.failing = True
    await daemon.wait_ticks(2)
    async with connect(daemon.url, origin=f"http://127.0.0.1:{daemon.port}") as ws:
        assert (await recv(ws))["type"] == "hello"
        await ws.send(json.dumps({"type": "subscribe", "names": ["test.flaky.value",
                                                                  "test.steady.calls"],
                                  "backfill": 0}))
        meta = await _next(ws, "meta")
        assert set(meta["stale"]) == {"test.flaky.value"}
        assert meta["stale"]["test.flaky.value"]["reason"] == "error"
    await asyncio.sleep(0)


def test_close_waits_for_a_collection_in_progress_but_not_for_a_hung_one() -> None:
    blocking = Blocking()
    blocking.hang = True
    sampler = _sampler(blocking)
    worker = CollectWorker(sampler, timeout_s=5.0)
    future = worker.submit()
    while blocking.calls == 0:
        time.sleep(0.005)
    threading.Timer(0.2, blocking.release.set).start()
    start = time.monotonic()
    worker.close(wait_s=3.0)  # returns once the call in progress has returned
    assert 0.1 < time.monotonic() - start < 2.5
    assert future.result(timeout=1).groups["blocking"].raw
    # a call abandoned as hung is not waited for
    blocking.release.clear()
    worker = CollectWorker(sampler, timeout_s=0.1)
    tick = worker.collect()
    assert "blocking" not in tick.groups and sampler.status["blocking"].hung
    start = time.monotonic()
    worker.close(wait_s=3.0)
    assert time.monotonic() - start < 1.5  # the hung call would hold it for 3 s
    blocking.release.set()
