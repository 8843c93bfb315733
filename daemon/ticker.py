"""The sampling loop: one sampler for every client, on a fixed monotonic grid.

Each slot: run ``sampler.collect`` in a worker thread (it walks /proc and blocks), then
``sampler.publish`` and the tick handler (the hub) on the event loop, where the latest
values and history live, so readers on the loop always see a consistent tick.

Slots are scheduled at ``start + n * interval`` on the monotonic clock rather than
"sleep(interval) after each tick", so collection time and loop jitter never accumulate
into drift (a 1 s dashboard must not slowly become a 1.01 s one). A tick that overruns
its slot does not cause a burst of catch-up ticks: the missed slots are skipped and
counted in :attr:`Ticker.skipped`, which ``/api/v1/host`` and ``/metrics`` report.

Collections that may block run on a :class:`~hostscope.metrics.watchdog.CollectWorker`
thread: a collector call that overruns ``timeout_s`` (default twice the interval, at
least 2 s) is abandoned, that collector is shown stale and skipped until its call
returns, and the tick is finished on a fresh thread, so one hung collector delays one
tick by at most the timeout and never stops sampling.

A tick whose due collectors all say they cannot block (:meth:`Sampler.may_block
<hostscope.metrics.sampler.Sampler.may_block>`: the per-second procfs counters, with no
process, cgroup, filesystem, netlink or helper work due) is collected on the event loop
itself. On the development VM a thread woken after an idle second costs ~0.2 ms of CPU
before doing anything, and the hand-off to the worker and back woke two threads a few
times each (the worker, the loop's self-pipe, GIL hand-offs): more than the collection.
Such a tick holds the loop for its collection, ~0.5-2 ms.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

from hostscope.metrics.sampler import Clock, Sampler, Tick
from hostscope.metrics.watchdog import CollectWorker

log = logging.getLogger("hostscope.daemon")


def next_slot(start: float, interval: float, after: float) -> tuple[float, int]:
    """The slot after ``start`` to run next: ``start + n * interval`` with the smallest
    ``n >= 1`` that is later than ``after``. ``n - 1`` slots were missed."""
    n = max(1, int((after - start) // interval) + 1)
    return start + n * interval, n


#: The shortest default collector timeout: a tick of a fast interval (tests, 0.1 s
#: dashboards) must not abandon a process walk that a loaded host slows to 200 ms.
MIN_DEFAULT_TIMEOUT_S = 2.0


def default_timeout(sampler: Sampler) -> float:
    """Twice the sampling interval, at least :data:`MIN_DEFAULT_TIMEOUT_S`."""
    return max(2 * sampler.interval_s, MIN_DEFAULT_TIMEOUT_S)


class Ticker:
    """Runs the sampler at its interval until cancelled."""

    def __init__(
        self,
        sampler: Sampler,
        on_tick: Callable[[Tick], None],
        *,
        clock: Clock,
        executor: Executor | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.sampler = sampler
        self.on_tick = on_tick
        self.clock = clock
        #: Kept for callers that set it; collections run on :attr:`worker`'s thread.
        self.executor = executor
        self.worker = CollectWorker(sampler, timeout_s=timeout_s or default_timeout(sampler))
        self.ticks = 0
        #: Ticks collected on the event loop (see the module docstring).
        self.inline_ticks = 0
        self.skipped = 0
        self.last_duration_s = 0.0
        self.last_tick_mono: float | None = None

    async def _collect(self) -> Tick:
        """One tick: on the loop if it cannot block, else from the worker, never
        waiting on a hung collector past the timeout."""
        if not self.sampler.may_block():
            self.inline_ticks += 1
            return self.sampler.collect()
        future = asyncio.wrap_future(self.worker.submit())
        while True:
            done, _ = await asyncio.wait({future}, timeout=self.worker.wait_s())
            if done:
                return future.result()
            fresh = self.worker.take_over()
            if fresh is not None:
                future = asyncio.wrap_future(fresh)

    async def run(self) -> None:
        interval = self.sampler.interval_s
        due = self.clock.mono()
        while True:
            started = self.clock.mono()
            try:
                tick = await self._collect()
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

    def close(self) -> None:
        """Let the worker thread exit once a collection in progress is done (at most
        1 s; a stuck one exits when its call returns). Blocking: run it off the loop."""
        self.worker.close(wait_s=min(1.0, self.worker.timeout_s))
