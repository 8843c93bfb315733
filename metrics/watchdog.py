"""Collections on a worker thread that a hung collector cannot stall.

A collector blocked in a read (a dead NFS server's statfs, a stuck netlink socket, a
BPF map read behind a wedged lock) cannot be interrupted from Python. So the sampler
never waits on one: :class:`CollectWorker` runs :meth:`Sampler.collect
<hostscope.metrics.sampler.Sampler.collect>` on a daemon thread and, when the collector
call running there overruns ``timeout_s``, abandons it (:meth:`Sampler.abandon
<hostscope.metrics.sampler.Sampler.abandon>`), retires that thread, and finishes the
tick on a fresh one. The retired thread exits as soon as the stuck call returns; until
then the collector is skipped. Threads are daemons, so a call that never returns does
not keep the process from exiting.

The normal path costs what any worker thread costs (one hand-off per tick, which the
daemon paid anyway); there is no per-collector thread or timer.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from .sampler import Sampler, Tick

T = TypeVar("T")
_names = itertools.count(1)


class _Thread:
    """One daemon thread running submitted calls in order; retired by a None."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue())
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name=f"hostscope-sampler-{next(_names)}")
        self.thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((fn, future))
        return future

    def retire(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                future.set_exception(exc)


class CollectWorker:
    """Runs a sampler's collections on a worker thread, abandoning hung collectors.

    ``timeout_s`` bounds each collector call (not the whole tick: a tick of many
    healthy collectors may take longer). Use :meth:`collect` from synchronous code;
    async code (the daemon's ticker) uses :meth:`submit`, waits on the future for at
    most :meth:`wait_s`, and calls :meth:`take_over` when that wait runs out.
    """

    def __init__(self, sampler: Sampler, *, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.sampler = sampler
        self.timeout_s = timeout_s
        #: Threads retired while stuck in a collector call (their count, for status).
        self.abandoned = 0
        self._thread: _Thread | None = None

    def submit(self, *, force_all: bool = False) -> Future[Tick]:
        """Start collecting one tick on the worker thread."""
        return self._worker().submit(lambda: self.sampler.collect(force_all=force_all))

    def wait_s(self) -> float:
        """How long to wait for the tick before checking for an overdue collector."""
        return max(0.001, self.sampler.overdue_in(self.timeout_s))

    def take_over(self) -> Future[Tick] | None:
        """If the running collector call is overdue: abandon it and continue the tick
        on a fresh thread (returns that future); else None (keep waiting)."""
        if self.sampler.abandon(self.timeout_s) is None:
            return None
        if self._thread is not None:
            self._thread.retire()  # it exits when the stuck call returns
        self._thread = None
        self.abandoned += 1
        return self._worker().submit(self.sampler.resume)

    def collect(self, *, force_all: bool = False) -> Tick:
        """One tick, never waiting on a hung collector for more than ``timeout_s``."""
        future = self.submit(force_all=force_all)
        while True:
            try:
                return future.result(timeout=self.wait_s())
            except FutureTimeout:
                future = self.take_over() or future

    def close(self, wait_s: float = 0.0) -> None:
        """Let the worker thread exit, waiting up to ``wait_s`` for a collection in
        progress (so that collectors are not closed under it). A hung call is never
        waited for: its thread was retired already and is a daemon."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.retire()
            if wait_s > 0:
                thread.thread.join(wait_s)

    def _worker(self) -> _Thread:
        if self._thread is None:
            self._thread = _Thread()
        return self._thread
