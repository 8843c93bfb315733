"""Load, hostile clients and SIGTERM under load, against a real ``hostscope serve``.

Bounded in time (about a minute), loopback only, with the same code as
benchmarks/soak.py (the several-minute run whose figures are in docs/robustness.md):
200 well-behaved websocket clients, REST requests, clients that never read, garbage
senders and a connect/disconnect storm, while a well-behaved client in a process of its
own measures its latency. The bounds asserted are loose (the machine is shared, 2 CPUs);
what must hold exactly: no well-behaved client is ever dropped or refused, every REST
answer is a 200, the never-readers are cut, nothing is logged at error level, and memory
levels off.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from tests.test_bpf_manager import assert_unloaded, require_bpf, system_prog_ids
from tests.test_daemon_bpf import fdinfo_prog_ids

SOAK_PATH = Path(__file__).parent.parent / "benchmarks" / "soak.py"
#: Seconds of load (the CI run; benchmarks/soak.py defaults to 300).
LOAD_S = float(os.environ.get("HOSTSCOPE_LOAD_S", "60"))


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hostscope_soak", SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


soak = load_soak()


async def test_200_clients_rest_and_hostile_clients() -> None:
    daemon = await soak.start_daemon("--interval", "1.0")
    try:
        result: dict[str, Any] = await soak.soak(
            daemon, seconds=LOAD_S, clients=200, rest_rate=20, hostile=True, baseline=6)
    finally:
        code = await soak.stop_daemon(daemon)
    soak.print_report(result)  # shown with -s, and on failure
    log = "".join(daemon.lines)
    assert code == 0, log[-3000:]
    load = result["load"]
    counts = load["counts"]
    # Well-behaved clients: all admitted, never dropped, each got its frames.
    assert counts.get("crowd_connected") == 200, counts
    assert not counts.get("crowd_closed") and not any(k.startswith("crowd_refused")
                                                       for k in counts), counts
    assert counts["crowd_frames"] >= 200 * (LOAD_S - 15) * 0.8, counts
    statuses = {k for k in counts if k.startswith("rest_")}
    assert statuses == {"rest_200"}, counts
    # Hostile clients: answered, cut, or churned through, and none of it is an error.
    assert counts.get("garbage_answered", 0) > 1000, counts
    assert counts.get("churn", 0) > 200, counts
    assert counts.get("stalled_cut", 0) >= 1, counts  # dropped as too slow, then cut
    assert "level=error" not in log and "Traceback" not in log, log[-3000:]
    assert 'msg="client dropped"' in log
    # The good client, timed from another process, kept its schedule.
    good = load["good_client"]
    expected = LOAD_S - min(10.0, LOAD_S / 4)
    assert good["closed"] is None and good["frames"] >= expected * 0.8, good
    # Loose: at a load average of ~20 (other work on the 2-vCPU VM) the soak measured
    # p99 845 ms; on an idle machine it is tens of ms (docs/robustness.md).
    assert good["p50_ms"] < 500 and good["p99_ms"] < 2000, good
    # The daemon's cost under a paced hostile load (soak.GARBAGE_PER_S, CHURNS_PER_S):
    # bounded CPU that does not climb, and memory that levels off once clients are in.
    # (Unpaced, the garbage senders and churners take whatever CPU the daemon answers
    # them with: 94 % of a core in CI, while the good client kept p99 25 ms.)
    daemon_fig = load["daemon"]
    assert daemon_fig["cpu_pct"] < 80, daemon_fig
    first, second = (half["cpu_pct"] for half in load["halves"])
    assert second < 1.5 * first + 10, load["halves"]
    # Never-readers re-subscribing to every metric with an hour of backfill each second
    # raise the high-water mark (each backfill is materialised whole, up to
    # max_history_values): bounded, not flat yet; see docs/robustness.md. Without them
    # the soak measured RSS flat within 0.1 MB.
    assert daemon_fig["rss_max_mb"] < 300, daemon_fig
    assert daemon_fig["rss_end_mb"] - daemon_fig["rss_start_mb"] < 80, daemon_fig


@pytest.mark.root
async def test_sigterm_under_load_exits_in_5_s_and_detaches_every_program() -> None:
    require_bpf()
    daemon = await soak.start_daemon("--interval", "0.5")
    stop = asyncio.Event()
    tally = soak.Tally()
    tasks: list[asyncio.Task[None]] = []
    try:
        async with aiohttp.ClientSession(headers=soak.AUTH) as session:
            for module in ("runqlat", "execsnoop"):
                resp = await session.post(f"{daemon.url}api/v1/bpf/{module}",
                                          json={"enabled": True})
                assert resp.status == 200, await resp.text()
            host = await (await session.get(f"{daemon.url}api/v1/host")).json()
        # With privilege separation (the default) the helper holds the programs
        # (docs/privilege.md); without it, the daemon itself.
        helper_pid = (host.get("helper") or {}).get("pid")
        holders = [daemon.proc.pid, *([helper_pid] if helper_pid else [])]
        tasks = [asyncio.create_task(soak.crowd_member(daemon.ws_url, stop, tally))
                 for _ in range(200)]
        tasks.append(asyncio.create_task(soak.rest_load(daemon.url, 20, stop, tally)))
        tasks += [asyncio.create_task(soak.never_reader(daemon.url, stop, tally)),
                  asyncio.create_task(soak.garbage_sender(daemon.ws_url, stop, tally)),
                  asyncio.create_task(soak.churner(daemon.ws_url, stop, tally))]
        deadline = time.monotonic() + 30
        while tally.counts["crowd_frames"] < 400:  # the crowd is in and streaming
            assert time.monotonic() < deadline, tally.counts
            await asyncio.sleep(0.2)
        held = {prog for pid in holders for prog in fdinfo_prog_ids(pid)}
        # runqlat holds 1 program on tp_btf (4 on raw tracepoints), execsnoop 0-3 more
        assert len(held) >= 1, held
        assert held <= system_prog_ids()

        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(daemon.proc.wait(), 10)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if daemon.proc.returncode is None:
            daemon.proc.kill()
        await soak.stop_daemon(daemon)
    log = "".join(daemon.lines)
    print(f"SIGTERM under load: exit {code} after {elapsed:.2f} s; {len(held)} programs; "
          f"{dict(tally.counts)}")
    assert code == 0, log[-3000:]
    assert elapsed < 5, f"exit took {elapsed:.1f} s under load"
    assert "msg=stopped" in log and "Traceback" not in log, log[-3000:]
    assert not any(Path(f"/proc/{pid}").exists() for pid in holders[1:]), "helper outlived"
    assert_unloaded(held)

