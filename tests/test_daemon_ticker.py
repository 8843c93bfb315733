"""The sampling loop keeps a monotonic grid: no drift, overruns skip slots (counted)."""

from __future__ import annotations

import asyncio
import itertools
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
