"""The sampling loop keeps a monotonic grid: no drift, overruns skip slots (counted)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from hostscope.daemon.ticker import Ticker, next_slot
from hostscope.metrics.collector import Collector, Raw
from hostscope.metrics.model import NONE, MetricDesc, MetricRegistry, instant
from hostscope.metrics.sampler import Sampler, SystemClock, Tick


class Sleepy(Collector):
    """Takes as long as the test says (a stand-in for a slow /proc walk)."""

    name = "sleepy"

    def __init__(self, durations: dict[int, float]) -> None:
        self.durations = durations
        self.calls = 0
        self.started: list[float] = []

    def descriptors(self) -> list[MetricDesc]:
        return [instant("test.sleepy.calls", NONE, "number of collections so far")]

    def collect(self) -> Raw:
        self.started.append(time.monotonic())
        time.sleep(self.durations.get(self.calls, 0.0))
        self.calls += 1
        return {"test.sleepy.calls": {"": self.calls}}


@pytest.mark.parametrize(
    ("start", "after", "expected"),
    [
        (10.0, 10.01, (11.0, 1)),  # normal: the next slot
        (10.0, 9.99, (11.0, 1)),  # woke a little early: still the next slot, never the same
        (10.0, 11.0, (12.0, 2)),  # finished exactly on the next slot: it is missed
        (10.0, 13.5, (14.0, 4)),  # overran three slots
    ],
)
def test_next_slot(start: float, after: float, expected: tuple[float, int]) -> None:
    assert next_slot(start, 1.0, after) == expected


async def run_for(ticker: Ticker, seconds: float) -> None:
    task = asyncio.create_task(ticker.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_ticks_stay_on_the_grid() -> None:
    interval = 0.05
    collector = Sleepy({i: 0.01 for i in range(100)})  # 10 ms of work every tick
    sampler = Sampler([collector], registry=MetricRegistry(), interval_s=interval)
    ticks: list[Tick] = []
    ticker = Ticker(sampler, ticks.append, clock=SystemClock())
    await run_for(ticker, 1.02)
    # The first collection also pays for starting the worker thread: measure from the 2nd.
    starts = collector.started[1:]
    assert len(starts) >= 17
    slots = [round((s - starts[0]) / interval) for s in starts]
    late = sorted(abs(s - starts[0] - k * interval) for s, k in zip(starts, slots, strict=True))
    # Ticks start on their grid slot (timer jitter only): the 10 ms of work per tick does
    # not accumulate. Over 20 ticks a drifting loop would be 200 ms late by the end; here
    # the typical tick is within a few ms of its slot and the last slot number matches
    # the count of ticks plus skipped slots (a loaded machine may skip one).
    assert late[len(late) // 2] < 0.005, late
    assert abs(slots[-1] + 1 - (len(starts) + ticker.skipped)) <= 1
    assert [t.seq for t in ticks] == list(range(len(ticks)))
    assert len(ticks) in (len(starts) + 1, len(starts) + 2)
    assert sampler.latest["test.sleepy.calls"][""] == len(ticks)


async def test_overrun_skips_and_counts_missed_slots() -> None:
    interval = 0.05
    collector = Sleepy({4: 0.125})  # the fifth tick takes 2.5 intervals
    sampler = Sampler([collector], registry=MetricRegistry(), interval_s=interval)
    ticker = Ticker(sampler, lambda tick: None, clock=SystemClock())
    await run_for(ticker, 0.6)
    starts = collector.started[1:]
    slots = [round((s - starts[0]) / interval) for s in starts]
    # The slots the long tick ran over were skipped and counted, not made up in a burst.
    assert ticker.skipped >= 2
    assert slots[:4] == [0, 1, 2, 3]
    assert slots[4] >= 6 and slots[4] - 4 <= ticker.skipped
    assert all(b - a == 1 for a, b in itertools.pairwise(slots[4:]))


async def test_a_failing_tick_handler_does_not_stop_sampling() -> None:
    collector = Sleepy({})
    sampler = Sampler([collector], registry=MetricRegistry(), interval_s=0.02)
    calls: list[int] = []

    def handler(tick: Tick) -> None:
        calls.append(tick.seq)
        if tick.seq == 1:
            raise RuntimeError("bug in a subscriber")

    ticker = Ticker(sampler, handler, clock=SystemClock())
    await run_for(ticker, 0.2)
    assert len(calls) >= 5 and ticker.ticks == len(calls)


class Where(Collector):
    """Records the thread of each collection; says it may block as the test sets."""

    def __init__(self, name: str, *, blocks: bool, interval_s: float | None = None) -> None:
        self.name = name
        self.blocks = blocks
        self.interval_s = interval_s
        self.threads: list[int] = []

    def descriptors(self) -> list[MetricDesc]:
        return [instant(f"test.{self.name}.calls", NONE, "number of collections so far")]

    def may_block(self) -> bool:
        return self.blocks

    def collect(self) -> Raw:
        self.threads.append(threading.get_ident())
        return {f"test.{self.name}.calls": {"": len(self.threads)}}


async def test_ticks_that_cannot_block_run_on_the_loop_the_others_on_the_worker() -> None:
    """A tick whose due collectors all say they cannot block is collected on the event
    loop's thread (no hand-off); a tick with one that may block goes to the worker
    thread, whole, so the watchdog still covers it."""
    interval = 0.02
    fast = Where("fast", blocks=False)
    slow = Where("slow", blocks=True, interval_s=3 * interval)  # every third tick
    sampler = Sampler([fast, slow], registry=MetricRegistry(), interval_s=interval)
    ticker = Ticker(sampler, lambda tick: None, clock=SystemClock())
    loop_thread = threading.get_ident()
    await run_for(ticker, 0.5)
    assert len(fast.threads) >= 12 and len(slow.threads) >= 4
    on_loop = [t == loop_thread for t in fast.threads]
    # ticks 0, 3, 6, ... on the worker (both collectors there), the others on the loop
    assert on_loop == [i % 3 != 0 for i in range(len(fast.threads))]
    assert loop_thread not in slow.threads
    assert ticker.inline_ticks == on_loop.count(True)
    ticker.close()


def test_sampler_may_block_asks_only_the_collectors_due_next() -> None:
    fast = Where("fast", blocks=False)
    slow = Where("slow", blocks=True, interval_s=2.0)
    sampler = Sampler([fast, slow], registry=MetricRegistry(), interval_s=1.0)
    answers = []
    for _ in range(4):
        answers.append(sampler.may_block())
        sampler.sample()
    assert answers == [True, False, True, False]
    fast.blocks = True
    assert sampler.may_block()


def test_a_collector_that_cannot_answer_counts_as_blocking() -> None:
    class Broken(Where):
        def may_block(self) -> bool:
            raise RuntimeError("no idea")

    sampler = Sampler([Where("fast", blocks=False), Broken("broken", blocks=False)],
                      registry=MetricRegistry())
    assert sampler.may_block()
