"""BpfManager with real BPF: reference counting, settings conflicts, shutdown, concurrency,
no programs left behind (checked with bpftool and /proc/self/fdinfo), and the metric
pipeline from kernel histogram to derived percentiles.

Needs root and bcc. Elsewhere these tests skip with the reason; under CI=true they fail
instead, so a broken dependency install can never pass silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from hostscope.bpfmods.collectors import BpfModuleCollector, bpf_collectors
from hostscope.bpfmods.host import HostProbe
from hostscope.bpfmods.manager import (
    BpfManager,
    ModuleNotRunningError,
    ModuleStartError,
    SettingsConflictError,
)
from hostscope.bpfmods.runtime import own_program_ids
from hostscope.metrics.model import MetricRegistry
from hostscope.metrics.sampler import Sampler

from .support import missing

pytestmark = pytest.mark.root


#: Ping-pong through two pipes between a process and its child: a context-switch storm.
#: Prints the child's pid, waits for a line on stdin, runs N round trips, prints "done",
#: then waits for stdin to close so tests can read its /proc files before it exits. Each
#: side closes the pipe ends it does not use, so a parent killed mid-storm leaves its
#: child an end of file, not a read that never returns (orphans piled up otherwise).
STORM = r"""
import os, sys
n = int(sys.argv[1])
r1, w1 = os.pipe(); r2, w2 = os.pipe()
child = os.fork()
if child == 0:
    os.close(w1); os.close(r2)
    for _ in range(n):
        if not os.read(r1, 1):
            break
        os.write(w2, b"x")
    os._exit(0)
os.close(r1); os.close(w2)
print(child, flush=True)
sys.stdin.readline()
for _ in range(n):
    os.write(w1, b"x"); os.read(r2, 1)
os.waitpid(child, 0)
print("done", flush=True)
sys.stdin.readline()
"""


def require_bpf() -> HostProbe:
    """The live host if BPF modules can run here; skip (or fail under CI) otherwise."""
    host = HostProbe()
    reason = host.not_ready()
    if reason is None and os.geteuid() != 0:
        reason = "not root"
    if reason is not None:
        missing(f"BPF modules cannot run here: {reason} (bpfmods/install-deps.sh installs "
                "what they need)")
    return host


def system_prog_ids() -> set[int]:
    """IDs of every BPF program loaded on the system, from bpftool (the independent view)."""
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if not os.path.exists(bpftool):
        missing("bpftool is not installed (bpfmods/install-deps.sh installs it)")
    out = subprocess.run([bpftool, "prog", "show", "--json"], capture_output=True,
                         text=True, check=True).stdout
    return {int(p["id"]) for p in json.loads(out or "[]")}


def assert_unloaded(ids: set[int] | list[int], timeout_s: float = 5.0) -> None:
    """Our fds are closed synchronously, but the kernel frees a program after an RCU grace
    period; bpftool must stop listing every one of ``ids`` within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = set(ids) & system_prog_ids()
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"bpftool still lists programs {sorted(left)} {timeout_s} s after "
                        "they were detached")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def host() -> HostProbe:
    return require_bpf()


@pytest.fixture
def manager(host: HostProbe) -> Iterator[BpfManager]:
    mgr = BpfManager(host)
    yield mgr
    mgr.close()
    assert own_program_ids() == [], "programs left loaded after close()"


class Storm:
    """A running STORM process; ``run()`` releases it and waits for it to finish."""

    def __init__(self, round_trips: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", STORM, str(round_trips)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.child = int(self.proc.stdout.readline())
        self.pid = self.proc.pid

    def run(self) -> float:
        start = time.perf_counter()
        self.proc.stdin.write("go\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        assert self.proc.stdout.readline().strip() == "done"  # type: ignore[union-attr]
        return time.perf_counter() - start

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(10)


def hist_total(raw: dict, metric: str) -> float:
    return sum(v for v in raw.get(metric, {}).values() if isinstance(v, int | float))


# -- reference counting and cleanup ---------------------------------------------------------


def test_refcount_shares_one_attachment_and_detaches_with_the_last_user(
    manager: BpfManager,
) -> None:
    before = system_prog_ids()
    first = manager.enable("runqlat", {}, "alice")
    assert first["state"] == "on" and first["users"] == ["alice"]
    ours = own_program_ids()
    # tp_btf: sched_switch alone; else wakeup, wakeup_new, switch, process_exit
    assert len(ours) == (1 if first["attach_point"] == "tp_btf" else 4)
    assert set(ours) <= system_prog_ids() - before

    second = manager.enable("runqlat", {}, "bob")
    assert second["users"] == ["alice", "bob"]
    assert own_program_ids() == ours, "a second viewer must not load a second copy"
    assert manager.enable("runqlat", None, "bob")["users"] == ["alice", "bob"]  # idempotent

    assert manager.disable("runqlat", "alice")["state"] == "on"
    assert own_program_ids() == ours
    off = manager.disable("runqlat", "bob")
    assert off["state"] == "off" and off["users"] == []
    assert own_program_ids() == []
    assert_unloaded(ours)
    # Disabling again, or by a stranger, is harmless.
    assert manager.disable("runqlat", "mallory")["state"] == "off"


def test_release_drops_a_viewer_everywhere(manager: BpfManager) -> None:
    manager.enable("runqlat", {}, "viewer-1")
    manager.enable("execsnoop", {}, "viewer-1")
    manager.enable("execsnoop", {}, "viewer-2")
    assert sorted(manager.release("viewer-1")) == ["execsnoop", "runqlat"]
    status = {s["name"]: s for s in manager.status()}
    assert status["runqlat"]["state"] == "off"
    assert status["execsnoop"]["state"] == "on" and status["execsnoop"]["users"] == ["viewer-2"]
    manager.release("viewer-2")
    assert own_program_ids() == []


def test_settings_conflict_and_sole_user_restart(manager: BpfManager) -> None:
    manager.enable("syscalls", {"pid": os.getpid()}, "alice")
    manager.enable("syscalls", {"pid": os.getpid()}, "bob")
    with pytest.raises(SettingsConflictError) as info:
        manager.enable("syscalls", {}, "carol")
    assert info.value.to_json()["code"] == "settings_conflict"
    manager.disable("syscalls", "bob")
    # alice alone may change the settings: the module restarts with them.
    restarted = manager.enable("syscalls", {"pid": 1}, "alice")
    assert restarted["state"] == "on" and restarted["settings"] == {"cgroup": "", "pid": 1}
    assert len(own_program_ids()) == 2


def test_close_detaches_everything_and_refuses_new_work(host: HostProbe) -> None:
    manager = BpfManager(host)
    before = system_prog_ids()
    for name in ("runqlat", "biolatency", "tcplife", "execsnoop"):
        manager.enable(name, {}, "u")
    loaded = own_program_ids()
    assert len(loaded) >= 6 and set(loaded) <= system_prog_ids() - before
    manager.close()
    assert own_program_ids() == []
    assert_unloaded(loaded)
    assert {s["state"] for s in manager.status()} == {"off"}
    with pytest.raises(ModuleStartError, match="shut down"):
        manager.enable("runqlat", {}, "u")
    manager.close()  # idempotent


def test_concurrent_enables_compile_once_and_status_never_waits(manager: BpfManager) -> None:
    results: list[dict] = []
    errors: list[BaseException] = []

    def enable(user: str) -> None:
        try:
            results.append(manager.enable("offcpu", {}, user))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=enable, args=(f"u{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    # While compiling, status answers at once (compilation runs outside the lock).
    seen_states = set()
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        start = time.perf_counter()
        entry = next(s for s in manager.status() if s["name"] == "offcpu")
        assert time.perf_counter() - start < 0.1
        seen_states.add(entry["state"])
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert not errors
    assert len(own_program_ids()) == 1  # one sched_switch program, not four
    final = next(s for s in manager.status() if s["name"] == "offcpu")
    assert final["users"] == ["u0", "u1", "u2", "u3"]
    assert "starting" in seen_states or final["compile_s"] < 0.05


def test_tables_need_a_running_module(manager: BpfManager) -> None:
    with pytest.raises(ModuleNotRunningError):
        manager.table("execsnoop", "execs")
    manager.enable("execsnoop", {}, "u")
    assert manager.table("execsnoop", "execs", limit=5)["rows"] is not None
    with pytest.raises(Exception, match="no table"):
        manager.table("execsnoop", "nope")


def test_counters_never_go_backwards_across_restarts(manager: BpfManager) -> None:
    storm = Storm(2000)
    try:
        manager.enable("runqlat", {}, "u")
        storm.run()
        first = hist_total(manager.read_metrics("runqlat"), "bpf.runq.latency")
        assert first > 0
        manager.disable("runqlat", "u")
        assert manager.read_metrics("runqlat") == {}
        manager.enable("runqlat", {}, "u")
        raw = manager.read_metrics("runqlat")["bpf.runq.latency"]
        assert hist_total({"m": raw}, "m") >= first
    finally:
        storm.finish()


# -- the metric pipeline --------------------------------------------------------------------


def test_histogram_flows_through_sampler_rates_and_percentiles(manager: BpfManager) -> None:
    registry = MetricRegistry()
    sampler = Sampler(bpf_collectors(manager), registry=registry, interval_s=1.0)
    assert "bpf.runq.latency" in registry and "bpf.biolatency.p99" in registry
    off = sampler.collect(force_all=True)
    assert off.groups["bpf.runqlat"].raw == {}  # module off: no values, not zeros

    storm = Storm(3000)
    try:
        manager.enable("runqlat", {"pid": storm.pid}, "u")
        sampler.collect(force_all=True)
        storm.run()
        time.sleep(0.05)
        tick = sampler.collect(force_all=True)
    finally:
        storm.finish()
    cooked = tick.groups["bpf.runqlat"].cooked
    rates = cooked["bpf.runq.latency"]
    assert set(rates) >= {"0-1", "2-3", "4-7"}
    assert sum(r for r in rates.values() if r is not None) > 0
    p50, p99 = cooked["bpf.runq.p50"][""], cooked["bpf.runq.p99"][""]
    assert p50 is not None and p99 is not None and 0 <= p50 <= p99


def test_first_heat_map_column_within_three_seconds(host: HostProbe) -> None:
    """Enable -> first non-empty per-interval diff, compilation included (issue target)."""
    manager = BpfManager(host)
    storm = Storm(200_000)
    try:
        storm.proc.stdin.write("go\n")  # type: ignore[union-attr]
        storm.proc.stdin.flush()  # type: ignore[union-attr]
        start = time.perf_counter()
        manager.enable("runqlat", {}, "u")
        collector = BpfModuleCollector(manager, "runqlat")
        prev = collector.collect()["bpf.runq.latency"]
        while True:
            time.sleep(0.1)
            cur = collector.collect()["bpf.runq.latency"]
            if any(cur[k] - prev[k] for k in cur):
                break
            assert time.perf_counter() - start < 3.0
        elapsed = time.perf_counter() - start
    finally:
        manager.close()
        storm.proc.kill()
        storm.proc.wait(10)
    assert elapsed < 3.0
