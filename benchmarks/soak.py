#!/usr/bin/env python3
"""Load, soak and hostile clients against a real ``hostscope serve`` on loopback.

    .venv/bin/python benchmarks/soak.py [--seconds 300] [--clients 200] [--hostile]
                                        [--unpaced] [--rest-rate 20] [--interval 1.0]

Phases, one daemon:

1. baseline (``--baseline`` s): the well-behaved client alone, for its latency with
   nothing else running (the same run, so the figures compare side by side);
2. load (``--seconds``): ``--clients`` websocket clients subscribed to the dashboard's
   default set, REST requests at ``--rest-rate`` per second (fetch, history, host,
   processes, /metrics) and, with ``--hostile``, clients that never read, garbage senders
   and a connect/disconnect storm; the well-behaved client keeps measuring. Garbage and
   churn are paced (600 messages and 75 connections a second in all) so the daemon's CPU
   is a figure of the daemon; ``--unpaced`` lets them go as fast as they are answered.

The well-behaved client runs in a process of its own (``--good-client URL``), so 200
clients in this process do not inflate its latency: latency is the time from a live
frame's sample timestamp ``t`` to its arrival (same host clock). The daemon's CPU comes
from /proc/PID/stat (utime + stime) and its RSS from VmRSS, once a second.

Prints the figures (``--json`` for a machine-readable summary). tests/test_load.py runs
the same code for a bounded time in CI. Machines shared with other work are noisy: trust
ratios within one run more than absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import secrets
import socket
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

#: What the dashboard subscribes by default (prefixes; those absent here are optional).
DASHBOARD_SET = ["kernel.all.cpu", "kernel.percpu.cpu.util", "kernel.all.load", "mem.util",
                 "disk.dev.read_bytes", "disk.dev.write_bytes", "network.interface.in.bytes",
                 "network.interface.out.bytes", "kernel.all.pswitch", "kernel.all.pressure"]
#: The daemon under test accepts this operator token (HOSTSCOPE_TOKEN, docs/security.md);
#: the well-behaved client's process inherits it through the environment.
TOKEN = os.environ.get("HOSTSCOPE_TOKEN") or secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REST_PATHS = [
    "/api/v1/fetch?names=kernel.all.load,mem.util.used",
    "/api/v1/history?names=kernel.all.cpu.util&seconds=300",
    "/api/v1/host",
    "/api/v1/processes?sort=cpu&limit=25",
    "/metrics",
    "/api/v1/metrics?prefix=disk",
]


def hostscope_command() -> list[str]:
    script = Path(sys.executable).parent / "hostscope"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hostscope.daemon"]


@dataclass
class Daemon:
    proc: asyncio.subprocess.Process
    url: str
    lines: list[str]
    reader: asyncio.Task[None] | None = None

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "api/v1/stream"


async def start_daemon(*args: str) -> Daemon:
    """``hostscope serve --port 0 ARGS``; its log is drained continuously (a full stderr
    pipe would block the daemon and look like a latency problem)."""
    proc = await asyncio.create_subprocess_exec(
        *hostscope_command(), "serve", "--port", "0", *args,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HOSTSCOPE_TOKEN": TOKEN})
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), max(0.1, deadline - time.monotonic()))
        if not line:
            raise RuntimeError("hostscope serve exited early:\n" + "".join(lines))
        lines.append(line.decode())
        found = re.search(r'listening"?,? "?url"?[=:] ?"?(http://[^\s"]+)', lines[-1])
        if found:
            break
    daemon = Daemon(proc, found.group(1), lines)

    async def drain() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            lines.append(line.decode())

    daemon.reader = asyncio.create_task(drain())
    return daemon


async def stop_daemon(daemon: Daemon, timeout_s: float = 10.0) -> int:
    if daemon.proc.returncode is None:
        daemon.proc.terminate()
    code = await asyncio.wait_for(daemon.proc.wait(), timeout_s)
    if daemon.reader is not None:
        await asyncio.wait_for(daemon.reader, timeout_s)
    return code


# -- the daemon's own figures -----------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Gauge:
    """RSS and CPU of one process, sampled every second."""

    pid: int
    times: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.times.append(time.monotonic())
                self.rss.append(rss_mb(self.pid))
                self.cpu.append(cpu_seconds(self.pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    def cpu_series(self, start: float, end: float, step_s: float) -> list[float]:
        """CPU % of one core in consecutive windows of ``step_s`` between two monotonic
        times: a cost that levels off, or one that keeps climbing."""
        out: list[float] = []
        t = start
        while t + step_s <= end + 1e-9:
            figures = self.window(t, t + step_s)
            if "cpu_pct" in figures:
                out.append(figures["cpu_pct"])
            t += step_s
        return out

    def window(self, start: float, end: float) -> dict[str, float]:
        """CPU % of one core and RSS figures between two monotonic times."""
        idx = [i for i, t in enumerate(self.times) if start <= t <= end]
        if len(idx) < 2:
            return {}
        a, b = idx[0], idx[-1]
        span = self.times[b] - self.times[a]
        rss = self.rss[a:b + 1]
        return {
            "cpu_pct": round(100 * (self.cpu[b] - self.cpu[a]) / span, 2),
            "rss_start_mb": round(rss[0], 1),
            "rss_end_mb": round(rss[-1], 1),
            "rss_max_mb": round(max(rss), 1),
            "seconds": round(span, 1),
        }


# -- well-behaved clients -----------------------------------------------------------------


async def good_client(url: str, seconds: float, names: list[str]) -> dict[str, Any]:
    """Subscribe and time every live frame for ``seconds``; run in its own process."""
    latencies: list[float] = []
    closed: str | None = None
    deadline = time.monotonic() + seconds
    async with connect(url, max_size=None, additional_headers=AUTH) as ws:
        await ws.send(json.dumps({"type": "subscribe", "optional": names, "backfill": 0}))
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    raw = await asyncio.wait_for(ws.recv(), left)
                except TimeoutError:
                    break
                now = time.time()
                msg = json.loads(raw)
                if msg["type"] == "samples" and not msg["backfill"]:
                    latencies.append((now - msg["t"][-1]) * 1000)
        except ConnectionClosed as exc:
            closed = f"{exc.rcvd.code if exc.rcvd else None}"
    return {"frames": len(latencies), "closed": closed, **percentiles(latencies)}


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50_ms": round(statistics.median(ordered), 2), "p99_ms": round(p99, 2),
            "max_ms": round(ordered[-1], 2)}


async def run_good_client(url: str, seconds: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--good-client", url, "--seconds", str(seconds),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "HOSTSCOPE_TOKEN": TOKEN})
    out, _ = await proc.communicate()
    return json.loads(out)


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    rest_ms: list[float] = field(default_factory=list)
    #: Seconds from a never-reading client's subscribe to the daemon cutting it.
    stalled_s: list[float] = field(default_factory=list)


async def crowd_member(url: str, stop: asyncio.Event, tally: Tally) -> None:
    """A dashboard: subscribes, reads every frame, reconnects if it is ever closed."""
    while not stop.is_set():
        try:
            async with connect(url, max_size=None, additional_headers=AUTH) as ws:
                await ws.send(json.dumps({"type": "subscribe", "optional": DASHBOARD_SET,
                                          "backfill": 60}))
                tally.counts["crowd_connected"] += 1
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(ws.recv(), 1.0)
                    except TimeoutError:
                        continue
                    tally.counts["crowd_frames"] += 1
        except InvalidStatus as exc:
            tally.counts[f"crowd_refused_{exc.response.status_code}"] += 1
            await asyncio.sleep(1)
        except (ConnectionClosed, OSError):
            if not stop.is_set():
                tally.counts["crowd_closed"] += 1  # a well-behaved client must never be
                await asyncio.sleep(0.5)


async def rest_load(base: str, rate: float, stop: asyncio.Event, tally: Tally) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        rng = random.Random(1)
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with session.get(base.rstrip("/") + rng.choice(REST_PATHS)) as resp:
                    await resp.read()
                    tally.counts[f"rest_{resp.status}"] += 1
            except aiohttp.ClientError:
                tally.counts["rest_failed"] += 1
            tally.rest_ms.append((time.monotonic() - started) * 1000)
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))


# -- hostile clients ------------------------------------------------------------------------


def _frame(text: bytes) -> bytes:
    """One masked client text frame (clients must mask, RFC 6455 5.3)."""
    mask = os.urandom(4)
    size = len(text)
    head = bytes([0x81])
    if size < 126:
        head += bytes([0x80 | size])
    else:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


async def never_reader(base: str, stop: asyncio.Event, tally: Tally) -> None:
    """Upgrades by hand with a tiny receive buffer, asks for an hour of backfill of
    everything, and never reads: the daemon must drop it (1013) and cut it."""
    host, port = re.match(r"http://([^:/]+):(\d+)", base).groups()  # type: ignore[union-attr]
    while not stop.is_set():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, (host, int(port)))
            key = base64.b64encode(os.urandom(16)).decode()
            await loop.sock_sendall(sock, (
                f"GET /api/v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Authorization: Bearer {TOKEN}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            subscribe = _frame(json.dumps(
                {"type": "subscribe", "optional": EVERYTHING, "backfill": 3600,
                 "interval": 0.1}).encode())
            await loop.sock_sendall(sock, subscribe)
            tally.counts["stalled_connected"] += 1
            since = time.monotonic()
            # Never read, and ask again every second (each answer is a meta of every
            # metric and a backfill); notice the cut by a failing send.
            while not stop.is_set():
                await asyncio.sleep(1.0)
                try:
                    sock.send(subscribe)
                except BlockingIOError:
                    continue
                except OSError:
                    tally.counts["stalled_cut"] += 1
                    tally.stalled_s.append(time.monotonic() - since)
                    break
        except OSError:
            tally.counts["stalled_refused"] += 1
            await asyncio.sleep(0.5)
        finally:
            sock.close()


#: Top-level prefixes of every metric (those absent on a host are ignored).
EVERYTHING = ["kernel", "hinv", "mem", "swap", "disk", "network", "filesys", "proc", "cgroup",
              "bpf"]
GARBAGE = ["not json", "{", "[" * 5000, '{"type": 5}', '{"type": "subscribe", "names": 7}',
           '{"type": "subscribe", "names": ["no.such.metric"]}', '{"type": "bpf", "name": 1}',
           '{"type": "unsubscribe", "names": ["x"]}', "null", '"x"', "1e999"]


#: Paced hostile load, per hostile client (``--unpaced`` lifts both): a fixed offered load
#: makes the daemon's CPU a figure of the daemon, where a closed loop measures how much
#: CPU the attacker got (CI, on a quiet machine: ~2,800 garbage messages and ~580
#: connections a second, 94 % of a core; the loaded development VM: 550 and 83).
GARBAGE_PER_S = 200.0
CHURNS_PER_S = 25.0


async def _pace(started: float, events: int, per_second: float | None) -> None:
    """Sleep so that ``events`` since ``started`` keep to ``per_second`` (None: as fast
    as the daemon answers, with a short breath)."""
    due = 0.0 if per_second is None else events / per_second - (time.monotonic() - started)
    await asyncio.sleep(max(0.02 if per_second is None else 0.0, due))


async def garbage_sender(url: str, stop: asyncio.Event, tally: Tally,
                         per_second: float | None = GARBAGE_PER_S) -> None:
    """Sends malformed messages, ``per_second`` of them (None: as fast as the daemon
    answers them)."""
    rng = random.Random(2)
    while not stop.is_set():
        try:
            async with connect(url, max_size=None, additional_headers=AUTH) as ws:
                while not stop.is_set():
                    started = time.monotonic()
                    for _ in range(20):
                        await ws.send(rng.choice(GARBAGE) if rng.random() < 0.9
                                      else os.urandom(rng.randrange(1, 200)))
                    for _ in range(20):
                        await asyncio.wait_for(ws.recv(), 5)
                    tally.counts["garbage_answered"] += 20
                    await _pace(started, 20, per_second)
        except (ConnectionClosed, OSError, TimeoutError, InvalidStatus):
            tally.counts["garbage_closed"] += 1
            await asyncio.sleep(0.2)


async def churner(url: str, stop: asyncio.Event, tally: Tally,
                  per_second: float | None = CHURNS_PER_S) -> None:
    """Connects, sometimes subscribes, and disconnects at once, ``per_second`` times a
    second (None: over and over as fast as it can)."""
    rng = random.Random(3)
    while not stop.is_set():
        started = time.monotonic()
        try:
            async with connect(url, max_size=None, additional_headers=AUTH, open_timeout=5) as ws:
                if rng.random() < 0.5:
                    await ws.send(json.dumps({"type": "subscribe", "names": ["kernel.all"],
                                              "backfill": 300}))
            tally.counts["churn"] += 1
        except (ConnectionClosed, OSError, TimeoutError, InvalidStatus):
            tally.counts["churn_failed"] += 1
            await asyncio.sleep(0.1)
        if per_second is not None:
            await _pace(started, 1, per_second)


# -- a run ------------------------------------------------------------------------------------


async def soak(daemon: Daemon, *, seconds: float, clients: int, rest_rate: float,
               hostile: bool, baseline: float, paced: bool = True) -> dict[str, Any]:
    """Baseline, then load; returns every figure (see the module docstring)."""
    garbage_rate, churn_rate = (GARBAGE_PER_S, CHURNS_PER_S) if paced else (None, None)
    gauge = Gauge(daemon.proc.pid)
    stop_gauge = asyncio.Event()
    gauge_task = asyncio.create_task(gauge.run(stop_gauge))
    t0 = time.monotonic()
    alone = await run_good_client(daemon.ws_url, baseline) if baseline > 0 else {}
    t1 = time.monotonic()

    stop = asyncio.Event()
    tally = Tally()
    tasks = [asyncio.create_task(crowd_member(daemon.ws_url, stop, tally))
             for _ in range(clients)]
    tasks.append(asyncio.create_task(rest_load(daemon.url, rest_rate, stop, tally)))
    if hostile:
        tasks += [asyncio.create_task(never_reader(daemon.url, stop, tally)) for _ in range(3)]
        tasks += [asyncio.create_task(garbage_sender(daemon.ws_url, stop, tally, garbage_rate))
                  for _ in range(3)]
        tasks += [asyncio.create_task(churner(daemon.ws_url, stop, tally, churn_rate))
                  for _ in range(3)]
    # Let the crowd connect and get its backfill before the good client starts timing.
    settle = min(10.0, seconds / 4)
    await asyncio.sleep(settle)
    t2 = time.monotonic()
    loaded = await run_good_client(daemon.ws_url, seconds - settle)
    t3 = time.monotonic()
    middle = (t2 + t3) / 2
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    stop_gauge.set()
    await gauge_task
    # RSS growth over the loaded window, after the crowd's connections settled in.
    return {
        "clients": clients, "hostile": hostile, "rest_rate": rest_rate,
        "paced": {"garbage_per_s": 3 * garbage_rate, "churns_per_s": 3 * churn_rate}
        if hostile and paced else None,
        "baseline": {"daemon": gauge.window(t0, t1), "good_client": alone},
        # CPU of each half of the loaded window: a cost that grows with time (a leak of
        # work, not of memory) shows as a second half above the first.
        "load": {"daemon": gauge.window(t2, t3), "good_client": loaded,
                 "halves": [gauge.window(t2, middle), gauge.window(middle, t3)],
                 "counts": dict(sorted(tally.counts.items())),
                 "rest": percentiles(tally.rest_ms)},
        "rss_series_mb": [round(r, 1) for r in gauge.rss],
        "cpu_series_pct": gauge.cpu_series(t2, t3, step_s=30.0),
    }


def print_report(result: dict[str, Any]) -> None:
    base, load = result["baseline"], result["load"]
    paced = result.get("paced")
    hostile = "off" if not result["hostile"] else (
        f"on, paced: {paced['garbage_per_s']:g} garbage messages and {paced['churns_per_s']:g} "
        "connections a second" if paced else "on, unpaced (as fast as the daemon answers)")
    print(f"clients {result['clients']}, REST {result['rest_rate']}/s, hostile {hostile}")
    for name, phase in (("baseline", base), ("load", load)):
        d, g = phase["daemon"], phase["good_client"]
        print(f"{name:9s} daemon cpu {d.get('cpu_pct')} % of a core, rss "
              f"{d.get('rss_start_mb')} -> {d.get('rss_end_mb')} MB (max {d.get('rss_max_mb')})"
              f" over {d.get('seconds')} s; good client frames {g.get('frames')} "
              f"p50 {g.get('p50_ms')} ms p99 {g.get('p99_ms')} ms max {g.get('max_ms')} ms")
    halves = " / ".join(str(h.get("cpu_pct")) for h in load.get("halves", []))
    print(f"load CPU, first / second half: {halves} % of a core")
    print(f"REST latency {load['rest']}")
    print(f"counts {load['counts']}")
    cpu = result.get("cpu_series_pct") or []
    print(f"load CPU over time (% of a core, every 30 s): {' '.join(map(str, cpu))}")
    series = result["rss_series_mb"]
    step = max(1, len(series) // 20)
    print(f"rss over time (MB, every ~{step} s): {' '.join(map(str, series[::step]))}")


async def main_async(args: argparse.Namespace) -> int:
    if args.good_client:
        print(json.dumps(await good_client(args.good_client, args.seconds, DASHBOARD_SET)))
        return 0
    daemon = await start_daemon("--interval", str(args.interval))
    try:
        result = await soak(daemon, seconds=args.seconds, clients=args.clients,
                            rest_rate=args.rest_rate, hostile=args.hostile,
                            paced=not args.unpaced,
                            baseline=args.baseline)
    finally:
        code = await stop_daemon(daemon)
    if args.log:
        Path(args.log).write_text("".join(daemon.lines))
    result["exit_code"] = code
    result["log_lines"] = len(daemon.lines)
    result["log_errors"] = sum("level=error" in line for line in daemon.lines)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
        print(f"daemon exit {code}; {result['log_lines']} log lines, "
              f"{result['log_errors']} at error level")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--baseline", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rest-rate", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--hostile", action="store_true")
    parser.add_argument("--unpaced", action="store_true",
                        help="hostile clients go as fast as the daemon answers (the daemon's "
                        "CPU then measures the attacker's share of the machine)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log", metavar="FILE", help="write the daemon's log here")
    parser.add_argument("--good-client", metavar="URL", help=argparse.SUPPRESS)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
