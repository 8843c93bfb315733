"""Real captures on this host: BPF CPU and off-CPU profiles, the perf fallback, JIT perf
maps (Node, Python 3.12, Java via jcmd), a process in its own mount and PID namespaces,
filters, cancel, busy, and a hostile process name.

Workloads are tiny C programs compiled here with frame pointers, so their hot function is
known and the unwinder can see it. Root, bcc and perf are needed: skipped with the reason
elsewhere, failing under CI=true.
"""

from __future__ import annotations

import contextlib
import glob
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostscope.bpfmods.host import HostProbe
from hostscope.bpfmods.profiler import ProfileError, Profiler, ProfileRequest
from hostscope.bpfmods.runtime import own_program_ids
from hostscope.bpfmods.settings import SettingsContext
from hostscope.bpfmods.symbols import Symbolizer, parse_perf_map
from hostscope.metrics.sources import Roots

from .support import missing
from .test_bpf_manager import require_bpf

pytestmark = pytest.mark.root

#: Spins in hs_hot_spin (called from hs_outer) until killed; argv[1] names the thread.
BUSY_C = r"""
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
static volatile unsigned long sink;
__attribute__((noinline)) void hs_hot_spin(void)
{ for (unsigned long i = 0; i < 200000; i++) sink += i * i; }
__attribute__((noinline)) void hs_outer(void) { for (;;) hs_hot_spin(); }
int main(int argc, char **argv)
{
    if (argc > 1) prctl(PR_SET_NAME, argv[1], 0, 0, 0);
    write(1, "ready\n", 6);
    hs_outer();
    return 0;
}
"""

#: Sleeps 10 ms at a time in hs_cold_wait. On x86-64 the syscall is made right there: libc's
#: nanosleep has no frame pointer, so a stack walked from inside it skips its caller.
SLEEPER_C = r"""
#include <time.h>
#include <unistd.h>
__attribute__((noinline)) void hs_cold_wait(void)
{
    struct timespec t = {0, 10000000};
#ifdef __x86_64__
    long ret;
    __asm__ volatile ("syscall" : "=a"(ret) : "a"(35L), "D"(&t), "S"(0L)
                      : "rcx", "r11", "memory");
#else
    nanosleep(&t, 0);
#endif
}
int main(void) { write(1, "ready\n", 6); for (;;) hs_cold_wait(); return 0; }
"""

#: --no-turbo-inlining keeps hotJsLoop a frame of its own once optimised.
NODE_JS = ("function hotJsLoop(n){let s=0;for(let i=0;i<n;i++)s+=i%7;return s}"
           "console.log('ready');for(;;)hotJsLoop(1e5)")
#: "ready" comes after hot_py_fn's first call: -X perf writes a function's map entry when
#: its trampoline is made, at that first call (CI once read the map before it).
PY_HOT = ("import sys\ndef hot_py_fn(n):\n    s = 0\n    for i in range(n):\n"
          "        s += i % 7\n    return s\nhot_py_fn(1)\nprint('ready', flush=True)\n"
          "while True:\n    hot_py_fn(100000)\n")

#: hotJavaLoop runs ~1 ms per call, so C2 compiles it as a method of its own (not only an
#: OSR loop); -XX:CompileCommand=dontinline keeps it out of main's compiled code.
JAVA_HOT = """
public class Hot {
    static long sink;
    static long hotJavaLoop(long n) {
        long s = 0;
        for (long i = 0; i < n; i++) s += (i * i) ^ (s >>> 3);
        return s;
    }
    public static void main(String[] args) {
        System.out.println("ready");
        System.out.flush();
        for (;;) sink += hotJavaLoop(1_000_000);
    }
}
"""

HOSTILE = "<b>\"x'&"


def require_perf_tool() -> str:
    perf = shutil.which("perf")
    if perf is None:
        missing("perf is not installed (Debian package linux-perf; bpfmods/install-deps.sh "
                "installs it)")
    return perf


@pytest.fixture(scope="module")
def host() -> HostProbe:
    return require_bpf()


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    gcc = shutil.which("gcc")
    if gcc is None:
        missing("gcc is not installed")
    tmp = tmp_path_factory.mktemp("progs")
    out = {}
    for name, src in (("busyloop", BUSY_C), ("sleeper", SLEEPER_C)):
        (tmp / f"{name}.c").write_text(src)
        subprocess.run([gcc, "-O1", "-fno-omit-frame-pointer", "-o", str(tmp / name),
                        str(tmp / f"{name}.c")], check=True)
        out[name] = tmp / name
    return out


@pytest.fixture
def profiler(host: HostProbe) -> Iterator[Profiler]:
    prof = Profiler(Roots(), host)
    yield prof
    prof.close()
    assert own_program_ids() == []


class CpuTime:
    """Samples a process's CPU time (utime + stime from /proc/PID/stat) with wall-clock
    stamps in a thread, so the CPU it used during a capture's window can be interpolated:
    the independent count that sample numbers are checked against on a loaded machine."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.points: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        path = Path(f"/proc/{self.pid}/stat")
        while not self._stop.is_set():
            text = path.read_text()
            fields = text[text.rfind(")") + 2:].split()
            self.points.append((time.time(), (int(fields[11]) + int(fields[12])) / self._tick))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def bounds(self, start: float, end: float) -> tuple[float, float]:
        """(least, most) CPU seconds the process can have used in [start, end], from the
        readings just inside and just outside the window (readings may be sparse: this
        thread competes for the CPU like everything else)."""
        inside = [c for t, c in self.points if start <= t <= end]
        before = [c for t, c in self.points if t <= start]
        after = [c for t, c in self.points if t >= end]
        least = inside[-1] - inside[0] if len(inside) >= 2 else 0.0
        most = (after[0] if after else self.points[-1][1]) - (before[-1] if before else 0.0)
        return least, most


def check_sample_count(samples: int, cpu: tuple[float, float], hz: int) -> None:
    """Samples ~ CPU seconds x frequency, within the bounds the readings allow."""
    least, most = cpu
    assert 0.7 * least * hz - 0.1 * hz <= samples <= 1.3 * most * hz + 0.1 * hz, \
        (samples, cpu, hz)


class Workload:
    """A child process that printed "ready"; killed on exit with everything it started.

    It runs in a process group of its own, killed whole: a workload behind a wrapper
    (``unshare --fork`` makes the real one PID 1 of a new namespace) outlived the
    wrapper's kill and spun for hours, loading every later test and benchmark."""

    def __init__(self, argv: list[str], **kwargs: Any) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, start_new_session=True, **kwargs)
        try:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            assert "ready" in line, f"{argv[0]} did not start: {line!r}"
        except BaseException:
            self.kill()
            raise
        self.pid = self.proc.pid

    def __enter__(self) -> Workload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        # A JIT runtime's map (node --perf-basic-prof) outlives it otherwise.
        Path(f"/tmp/perf-{self.proc.pid}.map").unlink(missing_ok=True)


def capture(profiler: Profiler, request: ProfileRequest, timeout: float = 120) -> dict:
    cid = profiler.start(request)
    deadline = time.monotonic() + timeout
    progress = []
    while (state := profiler.poll(cid))["state"] in ("running", "symbolizing"):
        progress.append(state["progress"])
        assert time.monotonic() < deadline, "capture did not finish"
        time.sleep(0.1)
    assert state["state"] == "done", state
    assert progress == sorted(progress) and all(0 <= p <= 1 for p in progress)
    data = profiler.fetch(cid)
    with pytest.raises(ProfileError) as exc:
        profiler.fetch(cid)  # forgotten once fetched
    assert exc.value.code == "unknown_capture"
    check_shape(data, request)
    return data


def check_shape(data: dict, request: ProfileRequest) -> None:
    assert data["version"] == 1 and data["kind"] == request.kind
    assert data["request"] == request.to_json()
    assert data["slot_ms"] == 20
    assert abs(data["started_at"] - time.time()) < 300
    assert 0 < data["duration_s"] <= request.duration_s + 0.01
    nframes = len(data["frames"])
    total = 0
    max_slot = data["duration_s"] * 1000 / data["slot_ms"] + 1
    for stack in data["stacks"]:
        assert all(0 <= i < nframes for i in stack["frames"])
        assert data["frames"][stack["frames"][0]]["kind"] == "process"
        for slot, value in stack["slots"]:
            assert 0 <= slot <= max_slot and value > 0
            total += value
    assert total == data["total"]


def by_pid(data: dict, pid: int) -> list[tuple[list[dict], int]]:
    """(frames, value) of every stack of ``pid``."""
    frames = data["frames"]
    return [([frames[i] for i in s["frames"]], sum(v for _, v in s["slots"]))
            for s in data["stacks"] if s["pid"] == pid]


def share(stacks: list[tuple[list[dict], int]], pred: Any) -> float:
    total = sum(v for _, v in stacks)
    return sum(v for f, v in stacks if pred(f)) / total if total else 0.0


def leaf_user(frames: list[dict]) -> str | None:
    user = [f for f in frames if f["kind"] in ("user", "jit", "unknown")
            and f["module"] != "[kernel]"]
    return user[-1]["name"] if user else None


def has_frame(name: str) -> Any:
    return lambda frames: any(f["name"] == name for f in frames)


# -- CPU, BPF ------------------------------------------------------------------------------


def test_busy_loop_dominates_its_flame_graph(profiler: Profiler,
                                             programs: dict[str, Path]) -> None:
    assert profiler.readiness()["cpu"] == {"available": True, "method": "bpf", "reason": None}
    # dd spends its time in the kernel (clearing pages for reads of /dev/zero), so the
    # host-wide capture has kernel stacks to symbolise however quiet the host is: the
    # busy loop alone never enters the kernel, and CI once sampled nothing else.
    kernel_work = ["sh", "-c", "echo ready; exec dd if=/dev/zero of=/dev/null bs=64k"]
    with Workload([str(programs["busyloop"])]) as w, Workload(kernel_work) as dd:
        cpu = CpuTime(w.pid)
        data = capture(profiler, ProfileRequest("cpu", 3, 99))
        cpu.stop()
    assert data["method"] == "bpf" and data["unit"] == "samples"
    assert data["event"] == "perf_event cpu-clock 99 Hz"
    mine = by_pid(data, w.pid)
    start = data["started_at"]
    check_sample_count(sum(v for _, v in mine),
                       cpu.bounds(start, start + data["duration_s"]), 99)
    assert share(mine, lambda f: leaf_user(f) == "hs_hot_spin") > 0.8
    frames, _ = max(mine, key=lambda fv: fv[1])
    assert frames[0] == {"name": "busyloop", "kind": "process", "module": None}
    names = [f["name"] for f in frames]
    # gcc -O1 gives the leaf no frame of its own, so the unwinder goes from it to the
    # return address its caller (hs_outer) saved: main's call site
    assert names.index("main") < names.index("hs_hot_spin")
    # the heat map has samples spread over the capture, not in one slot
    slots = {slot for s in data["stacks"] if s["pid"] == w.pid for slot, _ in s["slots"]}
    assert max(slots) - min(slots) > 30
    assert any(f["kind"] == "kernel" for f in data["frames"])
    assert by_pid(data, dd.pid), "dd was not sampled"


def test_pid_filter_and_hostile_name(profiler: Profiler, programs: dict[str, Path]) -> None:
    with Workload([str(programs["busyloop"]), HOSTILE]) as w, \
            Workload([str(programs["busyloop"])]) as other:
        data = capture(profiler, ProfileRequest("cpu", 2, 49, pid=w.pid))
    assert {s["pid"] for s in data["stacks"]} == {w.pid}
    assert other.pid not in {s["pid"] for s in data["stacks"]}
    roots = {data["frames"][s["frames"][0]]["name"] for s in data["stacks"]}
    assert roots == {HOSTILE}
    assert data["total"] > 0


@pytest.mark.parametrize("methods", [("bpf",), ("perf",)])
def test_cgroup_filter_includes_sub_cgroups(host: HostProbe, programs: dict[str, Path],
                                            methods: tuple[str, ...]) -> None:
    root = SettingsContext(Roots()).cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    if methods == ("perf",):
        require_perf_tool()
    name = f"hostscope-prof-{os.getpid()}"
    cgroup = root / name
    sub = cgroup / "sub"
    sub.mkdir(parents=True)
    prof = Profiler(Roots(), host, methods=methods)
    try:
        with Workload([str(programs["busyloop"])]) as inside, \
                Workload([str(programs["busyloop"])]) as nested, \
                Workload([str(programs["busyloop"])]) as outside:
            (cgroup / "cgroup.procs").write_text(f"{inside.pid}\n")
            (sub / "cgroup.procs").write_text(f"{nested.pid}\n")
            data = capture(prof, ProfileRequest("cpu", 3, 99, cgroup=f"/{name}"))
            # moved out again so the directories can be removed
            for pid in (inside.pid, nested.pid):
                (root / "cgroup.procs").write_text(f"{pid}\n")
        with pytest.raises(ProfileError) as exc:
            prof.start(ProfileRequest("cpu", 2, cgroup="/no-such-cgroup-hostscope"))
        assert exc.value.code == "no_such_cgroup"
    finally:
        prof.close()
        sub.rmdir()
        cgroup.rmdir()
    assert data["method"] == methods[0]
    assert {s["pid"] for s in data["stacks"]} == {inside.pid, nested.pid}
    assert outside.pid not in {s["pid"] for s in data["stacks"]}


@pytest.mark.parametrize("methods", [("bpf",), ("perf",)])
def test_cancel_and_busy(host: HostProbe, methods: tuple[str, ...], tmp_path: Path) -> None:
    if methods == ("perf",):
        require_perf_tool()
    profiler = Profiler(Roots(), host, methods=methods, tmp_dir=str(tmp_path))
    try:
        _cancel_and_busy(profiler)
    finally:
        profiler.close()
    assert own_program_ids() == []
    assert list(tmp_path.iterdir()) == [], "perf's temporary files were left"


def _cancel_and_busy(profiler: Profiler) -> None:
    cid = profiler.start(ProfileRequest("cpu", 60, 49))
    with pytest.raises(ProfileError) as exc:
        profiler.start(ProfileRequest("cpu", 5))
    assert exc.value.code == "busy"
    with pytest.raises(ProfileError) as exc:
        profiler.fetch(cid)
    assert exc.value.code == "busy"
    deadline = time.monotonic() + 60
    while profiler.poll(cid)["progress"] == 0:  # sampling has begun
        assert time.monotonic() < deadline
        time.sleep(0.1)
    t = time.monotonic()
    profiler.cancel(cid)
    assert time.monotonic() - t < 5
    state = profiler.poll(cid)
    assert state["state"] == "cancelled" and state["error"]["code"] == "cancelled"
    assert own_program_ids() == []
    with pytest.raises(ProfileError) as exc:
        profiler.fetch(cid)
    assert exc.value.code == "cancelled"
    with pytest.raises(ProfileError) as exc:
        profiler.poll("no-such-id")
    assert exc.value.code == "unknown_capture"
    with pytest.raises(ProfileError) as exc:
        profiler.start(ProfileRequest("cpu", 2, pid=4_000_000))
    assert exc.value.code == "no_such_process"


# -- off-CPU -------------------------------------------------------------------------------


def test_offcpu_sleeper_blocked_time(profiler: Profiler, programs: dict[str, Path]) -> None:
    with Workload([str(programs["sleeper"])]) as w:
        data = capture(profiler, ProfileRequest("offcpu", 2, pid=w.pid))
    assert data["unit"] == "microseconds" and "sched_switch" in data["event"]
    mine = by_pid(data, w.pid)
    blocked_us = sum(v for _, v in mine)
    # it sleeps nearly all the time: blocked time ~ capture duration
    assert 0.6 * data["duration_s"] * 1e6 <= blocked_us <= 1.05 * data["duration_s"] * 1e6
    if platform.machine() == "x86_64":
        assert share(mine, has_frame("hs_cold_wait")) > 0.9
    # blocked in the kernel's scheduler, below the nanosleep syscall
    assert share(mine, lambda f: any(x["kind"] == "kernel" and "schedule" in x["name"]
                                     for x in f)) > 0.9


# -- perf fallback -------------------------------------------------------------------------


def test_perf_fallback_when_forced(host: HostProbe, programs: dict[str, Path]) -> None:
    require_perf_tool()
    prof = Profiler(Roots(), host, methods=("perf",))
    try:
        ready = prof.readiness()
        assert ready["cpu"]["method"] == "perf"
        assert not ready["offcpu"]["available"] and "BPF" in ready["offcpu"]["reason"]
        with Workload([str(programs["busyloop"]), HOSTILE]) as w:
            cpu = CpuTime(w.pid)
            data = capture(prof, ProfileRequest("cpu", 2, 99, pid=w.pid))
            cpu.stop()
    finally:
        prof.close()
    assert data["method"] == "perf" and data["event"] == "perf record -e cpu-clock"
    mine = by_pid(data, w.pid)
    assert {s["pid"] for s in data["stacks"]} == {w.pid}
    start = data["started_at"]
    check_sample_count(sum(v for _, v in mine),
                       cpu.bounds(start, start + data["duration_s"]), 99)
    assert share(mine, lambda f: leaf_user(f) == "hs_hot_spin") > 0.8
    assert {f[0]["name"] for f, _ in mine} == {HOSTILE}
    slots = {slot for s in data["stacks"] for slot, _ in s["slots"]}
    assert max(slots) - min(slots) > 20


def test_bpf_false_profiles_with_perf_and_loads_no_bpf_program(
        host: HostProbe, programs: dict[str, Path]) -> None:
    """The daemon's ``bpf = false``: CPU profiles use perf, off-CPU ones are unavailable
    with the config named as the reason, and no BPF program is ever loaded."""
    require_perf_tool()
    from hostscope.daemon.privileged import InProcessOps

    ops = InProcessOps(lambda _detach: None, bpf=False, host=host)
    try:
        ready = ops.profile_readiness()
        assert ready["cpu"] == {"available": True, "method": "perf", "reason": None}
        assert not ready["offcpu"]["available"]
        assert "bpf = false" in ready["offcpu"]["reason"]
        with pytest.raises(ProfileError) as refused:
            ops.profile_start({"kind": "offcpu", "duration_s": 2})
        assert refused.value.code == "unavailable" and "bpf = false" in str(refused.value)
        with Workload([str(programs["busyloop"])]) as w:
            cid = ops.profile_start({"kind": "cpu", "duration_s": 2, "frequency_hz": 49,
                                     "pid": w.pid})
            deadline = time.monotonic() + 120
            while (state := ops.profile_poll(cid))["state"] in ("running", "symbolizing"):
                assert own_program_ids() == []
                assert time.monotonic() < deadline, "capture did not finish"
                time.sleep(0.1)
        assert state["state"] == "done", state
        data = ops.profile_fetch(cid)
    finally:
        ops.close()
    assert data["method"] == "perf" and data["total"] > 0
    assert own_program_ids() == []


# -- JIT perf maps, containers -------------------------------------------------------------


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        missing("node is not installed (the frontend build needs it too)")
    return node


def _jit_names(data: dict, pid: int) -> list[tuple[str, int]]:
    return [(f["name"], v) for frames, v in by_pid(data, pid) for f in frames
            if f["kind"] == "jit"]


def test_node_perf_basic_prof_frames_named(profiler: Profiler, tmp_path: Path) -> None:
    node = _node()
    # cwd: --perf-basic-prof also leaves V8 isolate logs in the working directory
    with Workload([node, "--perf-basic-prof", "--no-turbo-inlining", "-e", NODE_JS],
                  cwd=tmp_path) as w:
        data = capture(profiler, ProfileRequest("cpu", 3, 99, pid=w.pid))
    jit = _jit_names(data, w.pid)
    hot = sum(v for name, v in jit if "hotJsLoop" in name)
    total = sum(v for _, v in by_pid(data, w.pid))
    assert hot > 0.5 * total, (hot, total, jit[:5])
    assert all(f["module"] == f"perf-{w.pid}.map" for f in data["frames"]
               if f["kind"] == "jit")


def _java_tools() -> tuple[str, str, str]:
    tools = {name: shutil.which(name) for name in ("java", "javac", "jcmd")}
    absent = [name for name, path in tools.items() if path is None]
    if absent:
        missing(f"{', '.join(absent)} not installed (Debian: openjdk-17-jdk-headless, "
                "which ./dev test installs)")
    return tools["java"], tools["javac"], tools["jcmd"]  # type: ignore[return-value]


def _jcmd(jcmd: str, pid: int, command: str) -> str:
    out = subprocess.run([jcmd, str(pid), command], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, f"jcmd {command}: {out.stdout}{out.stderr}"
    return out.stdout


def test_java_jcmd_perfmap_frames_named(profiler: Profiler, tmp_path: Path) -> None:
    """A JVM with -XX:+PreserveFramePointer whose perf map was written by ``jcmd PID
    Compiler.perfmap`` (JDK 17+; lines like ``0x00007f... 0x...b8 long Hot.hotJavaLoop(long)``):
    the C2-compiled hot method is named and has most of the process's samples."""
    java, javac, jcmd = _java_tools()
    (tmp_path / "Hot.java").write_text(JAVA_HOT)
    subprocess.run([javac, "-d", str(tmp_path), str(tmp_path / "Hot.java")], check=True,
                   timeout=120)
    argv = [java, "-XX:+PreserveFramePointer", "-XX:CompileCommand=quiet",
            "-XX:CompileCommand=dontinline,Hot::hotJavaLoop",
            # no hsperfdata files, one GC thread: nothing left behind, little else running
            "-XX:-UsePerfData", "-XX:+UseSerialGC", "-Xmx64m", "-cp", str(tmp_path), "Hot"]
    with Workload(argv, cwd=tmp_path) as w:
        perf_map = Path(f"/tmp/perf-{w.pid}.map")
        try:
            # warm-up: until C2 (tier 4) code for the method is in use (state 0)
            deadline = time.monotonic() + 90
            codelist = ""
            while not any(ln.split()[1:3] == ["4", "0"] and "Hot.hotJavaLoop(J)J" in ln
                          for ln in codelist.splitlines()):
                assert time.monotonic() < deadline, f"hotJavaLoop not C2-compiled:\n{codelist}"
                time.sleep(0.5)
                codelist = _jcmd(jcmd, w.pid, "Compiler.codelist")
            _jcmd(jcmd, w.pid, "Compiler.perfmap")
            entries = parse_perf_map(perf_map.read_text())
            assert "long Hot.hotJavaLoop(long)" in entries.names
            assert "Interpreter" in entries.names
            cpu = CpuTime(w.pid)
            data = capture(profiler, ProfileRequest("cpu", 3, 99, pid=w.pid))
            cpu.stop()
        finally:
            # SIGTERM, not SIGKILL: the JVM removes its attach socket (/tmp/.java_pidPID);
            # the perf map it leaves behind
            w.proc.terminate()
            w.proc.wait(30)
            perf_map.unlink(missing_ok=True)
    mine = by_pid(data, w.pid)
    start = data["started_at"]
    check_sample_count(sum(v for _, v in mine),
                       cpu.bounds(start, start + data["duration_s"]), 99)
    jit = [f for frames, _ in mine for f in frames if f["kind"] == "jit"]
    assert {f["module"] for f in jit} == {f"perf-{w.pid}.map"}, jit[:5]
    hot = share(mine, lambda fs: any(f["kind"] == "jit" and f["name"] ==
                                     "long Hot.hotJavaLoop(long)" for f in fs))
    assert hot > 0.75, (hot, sorted({f["name"] for f in jit})[:20])
    # frame pointers preserved: the walk goes on from the JIT code into the JVM that
    # called it (JavaCalls::call_helper -> StubRoutines -> Interpreter -> the method)
    frames, _ = max(mine, key=lambda fv: fv[1])
    modules = [f["module"] for f in frames]
    assert leaf_user(frames) == "long Hot.hotJavaLoop(long)", frames
    assert "libjvm.so" in modules[:-1], frames


def _python312() -> str | None:
    """A working python3.12 on PATH, or one installed by pyenv (whose shim on PATH may
    not select it)."""
    candidates = [shutil.which("python3.12"),
                  *sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.12*/bin/python3.12")))]
    for py in candidates:
        if py is None:
            continue
        probe = subprocess.run([py, "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, check=False)
        if probe.stdout.strip() == "(3, 12)":
            return py
    return None


def test_python312_perf_map_entries_resolve() -> None:
    """Python 3.12's -X perf map (``ADDR SIZE py::func:file``) is found and read for the
    live process: every trampoline it lists resolves to its entry."""
    py = _python312()
    if py is None:
        pytest.skip("no working python3.12 on this machine")
    with Workload([py, "-X", "perf", "-c", PY_HOT]) as w:
        sym = Symbolizer(Roots())
        proc = sym.process(w.pid)
        entries = parse_perf_map(Path(f"/proc/{w.pid}/root/tmp/perf-{w.pid}.map").read_text())
        hot = [i for i, name in enumerate(entries.names) if "hot_py_fn" in name]
        assert hot, "python3.12 -X perf wrote no entry for hot_py_fn"
        frame = sym.user_frame(proc, entries.starts[hot[0]] + 1)
    assert frame == (entries.names[hot[0]], "jit", f"perf-{w.pid}.map")
    assert frame[0].startswith("py::hot_py_fn:")


def test_python312_capture_names_trampolines(profiler: Profiler) -> None:
    py = _python312()
    if py is None:
        pytest.skip("no working python3.12 on this machine")
    flags = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_config_var("
                            "'CFLAGS') or '')"], capture_output=True, text=True,
                           check=True).stdout
    if "-fno-omit-frame-pointer" not in flags:
        pytest.skip(f"{py} was built without frame pointers: a frame-pointer unwinder (BPF "
                    "or perf -g) stops inside the interpreter before reaching the -X perf "
                    "trampolines (Python's docs ask for -fno-omit-frame-pointer); the map "
                    "itself is checked by test_python312_perf_map_entries_resolve")
    with Workload([py, "-X", "perf", "-c", PY_HOT]) as w:
        data = capture(profiler, ProfileRequest("cpu", 3, 99, pid=w.pid))
    jit = _jit_names(data, w.pid)
    assert any("hot_py_fn" in name for name, _ in jit), jit[:10]


def test_container_perf_map_read_in_its_namespaces(profiler: Profiler,
                                                   tmp_path: Path) -> None:
    node = _node()
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare (util-linux) is missing")
    # PID 1 of the new namespace mounts its own /tmp, then becomes node.
    script = 'mount -t tmpfs tmpfs /tmp && exec "$0" --perf-basic-prof --no-turbo-inlining -e "$1"'
    with Workload([unshare, "--fork", "--kill-child", "--pid", "--mount", "--mount-proc",
                   "sh", "-c", script, node, NODE_JS], cwd=tmp_path) as w:
        children = Path(f"/proc/{w.pid}/task/{w.pid}/children").read_text().split()
        assert len(children) == 1
        inner = int(children[0])
        status = Path(f"/proc/{inner}/status").read_text()
        nspid = next(ln.split()[-1] for ln in status.splitlines() if ln.startswith("NSpid:"))
        assert nspid == "1"
        # the map exists only inside the container's /tmp
        assert not Path(f"/tmp/perf-{inner}.map").exists()
        data = capture(profiler, ProfileRequest("cpu", 3, 99, pid=inner))
    jit = _jit_names(data, inner)
    assert any("hotJsLoop" in name for name, _ in jit), jit[:10]
    assert {f["module"] for f in data["frames"] if f["kind"] == "jit"} == {"perf-1.map"}


def test_import_does_not_load_bcc() -> None:
    code = ("import sys, hostscope.bpfmods.profiler, hostscope.bpfmods.symbols; "
            "print('bcc' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
