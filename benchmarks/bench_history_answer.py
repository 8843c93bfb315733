#!/usr/bin/env python3
"""What one big ``GET /api/v1/history`` answer costs the daemon: event-loop stall and memory.

    .venv/bin/python benchmarks/bench_history_answer.py [--ticks 3600] [--rounds 3]

A real server on loopback (the test suite's ``run_daemon``) over a sampler whose history
already holds ``--ticks`` one-second samples of the default collectors, asked for
``names=kernel,mem,disk,network,filesys,cgroup&seconds=3600`` (about a million values).
While the answer is produced and read, a task on the same loop wakes every 5 ms; its
longest gap is how long every other client (websocket frames, REST) would have waited.
Printed per round: answer size, wall time, longest loop gap, and then, in one more round
under ``tracemalloc`` (which slows everything ~7x, so its gap is not comparable), the peak
of Python memory allocated while answering.

The answer is streamed in batches of ``daemon.api.HISTORY_BATCH_CELLS`` values. Run it in
another checkout (its own ``.venv``) to compare with a build that built the answer whole.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import aiohttp  # noqa: E402

from tests.support import auth_config, auth_headers  # noqa: E402
from tests.test_daemon_stream import prefilled_sampler, run_daemon  # noqa: E402

NAMES = "kernel,mem,disk,network,filesys,cgroup"


async def one_answer(url: str, traced: bool) -> tuple[int, float, float, float | None]:
    """(bytes, wall s, longest loop gap s, peak traced MB or None) of one answer."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def other_work() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(other_work())
    if traced:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    size = 0
    async with aiohttp.ClientSession(headers=auth_headers()) as session, \
            session.get(url) as resp:
        if resp.status != 200:
            raise SystemExit(f"history answered {resp.status}: {await resp.text()}")
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)  # read and dropped: the client holds no answer
    wall = time.perf_counter() - started
    peak = None
    if traced:
        peak = (tracemalloc.get_traced_memory()[1] - base) / 1e6
        tracemalloc.stop()
    stop.set()
    await task
    return size, wall, max(gaps, default=0.0), peak


async def main(args: argparse.Namespace) -> None:
    print(f"prefilling {args.ticks} one-second samples ...", flush=True)
    sampler = prefilled_sampler(args.ticks, 1.0)
    runner, daemon = await run_daemon(auth_config(interval=1.0), sampler)
    try:
        await asyncio.sleep(1.0)
        url = (f"http://127.0.0.1:{daemon.port}/api/v1/history?names={NAMES}"
               f"&seconds={args.ticks}")
        print(f"load average {os.getloadavg()[0]:.2f}; GET /api/v1/history?names={NAMES}"
              f"&seconds={args.ticks}")
        for rnd in range(args.rounds):
            size, wall, gap, _ = await one_answer(url, traced=False)
            print(f"  round {rnd + 1}: {size / 1e6:.1f} MB in {wall * 1000:.0f} ms, "
                  f"longest loop gap {gap * 1000:.0f} ms")
        size, wall, gap, peak = await one_answer(url, traced=True)
        print(f"  under tracemalloc: peak Python memory while answering {peak:.1f} MB "
              f"(answer {size / 1e6:.1f} MB)")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=3600, help="seconds of history held")
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
