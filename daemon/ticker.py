"""The sampling loop: one sampler for every client, on a fixed monotonic grid.

Each slot: run ``sampler.collect`` in a worker thread (it walks /proc and blocks), then
``sampler.publish`` and the tick handler (the hub) on the event loop, where the latest
values and history live, so readers on the loop always see a consistent tick.

Slots are scheduled at ``start + n * interval`` on the monotonic clock rather than
"sleep(interval) after each tick", so collection time and loop jitter never accumulate
into drift (a 1 s dashboard must not slowly become a 1.01 s one). A tick that overruns
its slot does not cause a burst of catch-up ticks: the missed slots are skipped and
counted in :attr:`Ticker.skipped`, which ``/api/v1/host`` and ``/metrics`` report.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

from hostscope.metrics.sampler import Clock, Sampler, Tick

log = logging.getLogger("hostscope.daemon")


def next_slot(start: float, interval: float, after: float) -> tuple[float, int]:
    """The slot after ``start`` to run next: ``start + n * interval`` with the smallest
    ``n >= 1`` that is later than ``after``. ``n - 1`` slots were missed."""
    n = max(1, int((after - start) // interval) + 1)
    return start + n * interval, n


class Ticker:
    """Runs the sampler at its interval until cancelled."""

    def __init__(
        self,
        sampler: Sampler,
        on_tick: Callable[[Tick], None],
        *,
        clock: Clock,
        executor: Executor | None = None,
    ) -> None:
        self.sampler = sampler
        self.on_tick = on_tick
        self.clock = clock
        self.executor = executor
        self.ticks = 0
        self.skipped = 0
        self.last_duration_s = 0.0
        self.last_tick_mono: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.sampler.interval_s
        due = self.clock.mono()
        while True:
            started = self.clock.mono()
            try:
                tick = await loop.run_in_executor(self.executor, self.sampler.collect)
                self.sampler.publish(tick)
                self.on_tick(tick)
            except Exception:
                # The sampler isolates collector failures; anything reaching here is a bug,
                # and it must not stop sampling for everyone.
                log.exception("sampling tick failed")
            now = self.clock.mono()
            self.ticks += 1
            self.last_duration_s = now - started
            self.last_tick_mono = now
            slot, n = next_slot(due, interval, now)
            if n > 1:
                self.skipped += n - 1
                log.warning(
                    "tick overran its slot",
                    extra={"duration_s": round(self.last_duration_s, 3), "skipped": n - 1},
                )
            due = slot
            await asyncio.sleep(max(0.0, due - self.clock.mono()))
