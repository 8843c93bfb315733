"""CPU and off-CPU profiles of the host (the privileged side of flame graphs).

A :class:`Profiler` runs at most one capture at a time, in its own thread, and answers
``start/poll/fetch/cancel`` with plain JSON (the contract in docs/profiling.md), so it can
live in the daemon or behind the privileged helper's socket alike.

Methods, best first (``methods=`` chooses and orders them):

* ``bpf``: bcc programs count stacks in the kernel. CPU: ``profile.bpf.c`` on a cpu-clock
  perf event per CPU at the requested frequency. Off-CPU: ``offcpu.bpf.c`` (the off-CPU
  histogram module's program) compiled with ``HS_STACKS=1``, on ``sched_switch``. The key
  carries a 20 ms time slot, so one capture gives both the flame graph and a FlameScope
  heat map; user space reads a few thousand keys at the end instead of every sample.
* ``perf``: ``perf record`` into a private temporary file, ``perf script`` parsed by
  :func:`parse_perf_script` (CPU only). Used when bcc cannot run here, or when compiling the
  BPF program fails; ProfileData's ``method`` and ``notes`` say so.

Symbols are resolved by :mod:`.symbols` in the capture thread, never on an event loop.
bcc is imported on the first BPF capture, not before.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hostscope.metrics.sources import Roots, read_optional

from .host import HostProbe
from .modules import OffCpuTime, clean_text, resolve_plan
from .runtime import BpfLoadError, ProbeSpec, load
from .settings import CgroupSetting, SettingsContext, cflags
from .symbols import UNKNOWN, Frame, ProcessSymbols, SymbolCacheLimits, Symbolizer

log = logging.getLogger("hostscope.profiler")

KINDS = ("cpu", "offcpu")
METHODS = ("bpf", "perf")
MIN_DURATION_S, MAX_DURATION_S = 1.0, 120.0
MIN_FREQUENCY_HZ, MAX_FREQUENCY_HZ = 1, 999
DEFAULT_FREQUENCY_HZ = 49
#: Width of a time slot: 50 rows per second in a FlameScope heat map.
SLOT_MS = 20
SLOT_NS = SLOT_MS * 1_000_000
#: Finished captures kept for fetch (each fetch forgets its capture; these bound the rest).
KEEP_FINISHED = 4
#: bpf_get_stackid's error for "no stack of this kind here" (a kernel thread's user stack).
_EFAULT = 14
#: Longest a perf subprocess may take to write its file after SIGINT / to print it.
PERF_STOP_TIMEOUT_S = 30.0
PERF_SCRIPT_TIMEOUT_S = 120.0
#: How often a running BPF capture symbolizes what it has counted so far.
PREPASS_INTERVAL_S = 2.0

_REQUEST_KEYS = frozenset({"kind", "duration_s", "frequency_hz", "pid", "cgroup"})
_UNKNOWN_HELP = (
    "usually code built without frame pointers (most distribution libraries and language "
    "runtimes; rebuild with -fno-omit-frame-pointer), or JIT code without a perf map "
    "(run Node with --perf-basic-prof, Python 3.12+ with -X perf, Java with perf-map-agent)")


class ProfileError(Exception):
    """A request that cannot be served; ``code`` is stable for clients."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _number(data: Mapping[str, Any], key: str, default: Any) -> Any:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileError("invalid_request", f"{key} must be a number")
    return value


@dataclass(frozen=True, slots=True)
class ProfileRequest:
    """What to capture. Hard caps are enforced here, whoever builds the request."""

    kind: str
    duration_s: float
    frequency_hz: int = DEFAULT_FREQUENCY_HZ
    pid: int | None = None
    cgroup: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ProfileError("invalid_request", f"kind must be one of {', '.join(KINDS)}")
        if (isinstance(self.duration_s, bool) or not isinstance(self.duration_s, int | float)
                or not math.isfinite(self.duration_s)
                or not MIN_DURATION_S <= self.duration_s <= MAX_DURATION_S):
            raise ProfileError("invalid_request", f"duration_s must be between "
                               f"{MIN_DURATION_S:g} and {MAX_DURATION_S:g} seconds")
        if (isinstance(self.frequency_hz, bool) or not isinstance(self.frequency_hz, int)
                or not MIN_FREQUENCY_HZ <= self.frequency_hz <= MAX_FREQUENCY_HZ):
            raise ProfileError("invalid_request", f"frequency_hz must be an integer between "
                               f"{MIN_FREQUENCY_HZ} and {MAX_FREQUENCY_HZ}")
        if self.pid is not None and (isinstance(self.pid, bool) or not isinstance(self.pid, int)
                                     or not 0 < self.pid <= 4_194_304):
            raise ProfileError("invalid_request", "pid must be a positive process id")
        if self.cgroup is not None and (not isinstance(self.cgroup, str)
                                        or not self.cgroup.startswith("/")
                                        or len(self.cgroup) > 4096):
            raise ProfileError("invalid_request", "cgroup must be an absolute cgroup v2 path")
        if self.pid is not None and self.cgroup is not None:
            raise ProfileError("invalid_request", "give pid or cgroup, not both")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProfileRequest:
        """Strict: unknown keys, wrong types and out-of-range values are rejected."""
        if not isinstance(data, Mapping):
            raise ProfileError("invalid_request", "request must be an object")
        unknown = [k for k in data if k not in _REQUEST_KEYS]
        if unknown:
            shown = ", ".join(repr(k)[:40] for k in unknown[:5])
            raise ProfileError("invalid_request", f"unknown field(s) {shown}")
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise ProfileError("invalid_request", f"kind must be one of {', '.join(KINDS)}")
        duration = _number(data, "duration_s", None)
        if duration is None:
            raise ProfileError("invalid_request", "duration_s is required")
        pid = data.get("pid")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
            raise ProfileError("invalid_request", "pid must be an integer")
        return cls(kind=kind, duration_s=duration,
                   frequency_hz=data.get("frequency_hz", DEFAULT_FREQUENCY_HZ),
                   pid=pid, cgroup=data.get("cgroup"))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "duration_s": self.duration_s,
                "frequency_hz": self.frequency_hz, "pid": self.pid, "cgroup": self.cgroup}


# -- turning samples into ProfileData ------------------------------------------------------


@dataclass(slots=True)
class ProfileBuilder:
    """Accumulates (pid, frames, slot, value) samples into ProfileData's interned form."""

    frames: list[Frame] = field(default_factory=list)
    _index: dict[Frame, int] = field(default_factory=dict)
    #: (pid, frame indexes) -> {slot: value}
    stacks: dict[tuple[int, tuple[int, ...]], dict[int, int]] = field(default_factory=dict)
    total: int = 0
    unknown_value: int = 0
    _ids: dict[tuple[Frame, ...], tuple[int, ...]] = field(default_factory=dict)
    _unknown: dict[tuple[int, tuple[int, ...]], bool] = field(default_factory=dict)

    def frame_id(self, frame: Frame) -> int:
        idx = self._index.get(frame)
        if idx is None:
            idx = self._index[frame] = len(self.frames)
            self.frames.append(frame)
        return idx

    def frame_ids(self, frames: tuple[Frame, ...]) -> tuple[int, ...]:
        """Ids of a (cached, shared) tuple of frames; memoised per tuple."""
        ids = self._ids.get(frames)
        if ids is None:
            ids = self._ids[frames] = tuple(self.frame_id(f) for f in frames)
        return ids

    def add(self, pid: int, frames: Sequence[Frame], slot: int, value: int) -> None:
        self.add_ids(pid, tuple(self.frame_id(f) for f in frames), slot, value)

    def add_ids(self, pid: int, ids: tuple[int, ...], slot: int, value: int) -> None:
        slots = self.stacks.get((pid, ids))
        if slots is None:
            slots = self.stacks[(pid, ids)] = {}
            self._unknown[(pid, ids)] = any(self.frames[i][1] == "unknown" for i in ids)
        slots[slot] = slots.get(slot, 0) + value
        self.total += value
        if self._unknown[(pid, ids)]:
            self.unknown_value += value

    def to_json(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        frames = [{"name": n, "kind": k, "module": m} for n, k, m in self.frames]
        stacks = [{"frames": list(ids), "pid": pid, "slots": sorted(map(list, slots.items()))}
                  for (pid, ids), slots in self.stacks.items()]
        return frames, stacks


def group_unknown(frames: Iterable[Frame]) -> list[Frame]:
    """Collapses runs of ``[unknown]`` frames into one: a broken frame-pointer chain yields
    a run of garbage return addresses that would otherwise split identical stacks."""
    out: list[Frame] = []
    for frame in frames:
        if frame[1] == "unknown" and out and out[-1][1] == "unknown":
            continue
        out.append(frame)
    return out


def process_frame(comm: str) -> Frame:
    return (comm, "process", None)


# -- perf script ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PerfSample:
    comm: str
    pid: int
    time_ns: int
    #: root -> leaf (user outermost first, then kernel)
    frames: tuple[Frame, ...]


def _perf_frame(line: str) -> Frame | None:
    """``ffffffff81a3c8d4 default_idle+0x14 ([kernel.kallsyms])`` -> Frame."""
    ip_text, _, rest = line.strip().partition(" ")
    sym, sep, dso = rest.rpartition(" (")
    if not sep:
        sym, dso = rest, ""
    dso = dso[:-1] if dso.endswith(")") else dso
    try:
        ip = int(ip_text, 16)
    except ValueError:
        return None
    kernel = ip >= 1 << 63 or dso.startswith("[kernel")
    module: str | None = "[kernel]" if kernel else (os.path.basename(dso) or None)
    if dso == "[unknown]":
        module = None
    if not sym or sym == UNKNOWN:
        return (UNKNOWN, "unknown", module)
    base = os.path.basename(dso)
    if not kernel and base.startswith("perf-") and base.endswith(".map"):
        return (sym, "jit", base)
    return (sym, "kernel" if kernel else "user", module)


def parse_perf_script(text: str) -> list[PerfSample]:
    """Output of ``perf script -F comm,pid,tid,time,ip,sym,dso --ns``.

    Each sample is a header ``COMM PID/TID SECONDS.NANOS:`` (COMM may contain spaces, so the
    header is split from the right) followed by one tab-indented line per frame, leaf
    first, and a blank line. Frames are returned root first.
    """
    samples: list[PerfSample] = []
    header: tuple[str, int, int] | None = None
    frames: list[Frame] = []

    def flush() -> None:
        if header is not None:
            comm, pid, t = header
            samples.append(PerfSample(comm, pid, t, tuple(reversed(frames))))

    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t":
            if header is not None:
                frame = _perf_frame(line)
                if frame is not None:
                    frames.append(frame)
            continue
        flush()
        header, frames = None, []
        parts = line.rstrip().rsplit(None, 2)
        if len(parts) != 3 or not parts[2].endswith(":"):
            continue
        comm, ids, stamp = parts
        secs, _, frac = stamp[:-1].partition(".")
        try:
            pid = int(ids.partition("/")[0])
            t_ns = int(secs) * 1_000_000_000 + int((frac + "000000000")[:9])
        except ValueError:
            continue
        header = (comm.strip(), pid, t_ns)
    flush()
    return samples


# -- captures ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Capture:
    id: str
    request: ProfileRequest
    method: str
    state: str = "starting"  # starting | running | symbolizing | done | failed | cancelled
    started_mono: float | None = None
    started_at: float | None = None
    duration_s: float = 0.0
    error: ProfileError | None = None
    result: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    #: resolved filter: cgroup v2 id (BPF) and path
    cgroup_id: int = 0
    #: CLOCK_MONOTONIC (the kernel's clock, not the injected one) at the start and end of
    #: the capture window; samples outside it are left out
    mono_start_ns: int = 0
    mono_end_ns: int = 0
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class StackCount:
    """One key of the kernel's stack-count map and its value."""

    pid: int
    slot: int
    user_stack: int
    kernel_stack: int
    comm: str
    value: int


class _StackWork:
    """Reads a BPF capture's maps and symbolizes its stacks, partly while it runs.

    Every PREPASS_INTERVAL_S during the capture, :meth:`absorb` reads the keys counted so
    far (one batched syscall per few hundred keys) and symbolizes stacks it has not seen.
    That moves most of the work into the capture window, so the profile is ready soon
    after it ends, and it names the user frames of processes that exit before the end
    (their /proc/PID/maps is gone by then). Stack ids are stable during a capture (no
    BPF_F_REUSE_STACKID), so what was resolved stays right.
    """

    def __init__(self, symbolizer: Symbolizer, loaded: Any) -> None:
        self.sym = symbolizer
        self.loaded = loaded
        self.stacks: dict[int, list[int]] = {}
        self.procs: dict[int, ProcessSymbols] = {}
        self._user: dict[tuple[int, int], tuple[Frame, ...]] = {}
        self._kernel: dict[int, tuple[Frame, ...]] = {}
        self.prepass_cpu_s = 0.0
        self._batch = True
        self._seen: set[tuple[int, int, int]] = set()

    def _keys(self) -> list[tuple[Any, Any]]:
        table = self.loaded.table("counts")
        if self._batch:
            try:
                return list(table.items_lookup_batch())
            except Exception:  # noqa: BLE001 - bcc raises bare Exception; kernel < 5.6
                self._batch = False
        return table.items()

    def read_counts(self) -> list[StackCount]:
        return [StackCount(int(k.tgid), int(k.slot), int(k.user_stack),
                           int(k.kernel_stack), clean_text(k.comm, 16),
                           int(getattr(v, "value", v)))  # batch lookups yield plain ints
                for k, v in self._keys()]

    def read_stacks(self, counts: Iterable[StackCount]) -> None:
        table = self.loaded.table("stack_traces")
        for c in counts:
            for sid in (c.user_stack, c.kernel_stack):
                if sid >= 0 and sid not in self.stacks:
                    try:
                        self.stacks[sid] = list(table.walk(sid))
                    except KeyError:
                        self.stacks[sid] = []

    def absorb(self) -> None:
        """Symbolize what was counted so far (called from the capture's wait). Keys seen
        in an earlier pass are skipped before anything is decoded: this runs while the
        capture does, so its cost is capture overhead."""
        cpu = time.thread_time()
        fresh = []
        for k, _ in self._keys():
            ident = (k.tgid, k.user_stack, k.kernel_stack)
            if ident not in self._seen:
                self._seen.add(ident)
                fresh.append(StackCount(int(k.tgid), 0, int(k.user_stack),
                                        int(k.kernel_stack), "", 0))
        self.read_stacks(fresh)
        for c in fresh:
            if c.user_stack >= 0:
                self.user_frames(c.pid, c.user_stack)
            if c.kernel_stack >= 0:
                self.kernel_frames(c.kernel_stack)
        self.prepass_cpu_s += time.thread_time() - cpu

    def user_frames(self, pid: int, stack_id: int) -> tuple[tuple[Frame, ...], bool]:
        """(frames root -> leaf, whether the process was alive when first symbolized)."""
        proc = self.procs.get(pid)
        if proc is None:
            proc = self.procs[pid] = self.sym.process(pid)
        frames = self._user.get((pid, stack_id))
        if frames is None:
            frames = self._user[(pid, stack_id)] = tuple(group_unknown(
                self.sym.user_frame(proc, a) for a in reversed(self.stacks.get(stack_id, ()))))
        return frames, proc.alive

    def kernel_frames(self, stack_id: int) -> tuple[Frame, ...]:
        frames = self._kernel.get(stack_id)
        if frames is None:
            frames = self._kernel[stack_id] = tuple(
                self.sym.kernel_frame(a) for a in reversed(self.stacks.get(stack_id, ())))
        return frames


class Profiler:
    """One per privileged process; at most one capture at a time. Thread-safe."""

    def __init__(
        self,
        roots: Roots,
        host: HostProbe,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        methods: Sequence[str] = METHODS,
        perf_binary: str | None = None,
        symbolizer: Symbolizer | None = None,
        symbol_cache: SymbolCacheLimits | None = None,
        count_entries: int = 65536,
        stack_entries: int = 16384,
        tmp_dir: str | None = None,
        bpf_disabled: str | None = None,
    ) -> None:
        """``bpf_disabled``: why BPF must not be used here (the daemon's ``bpf = false``);
        the BPF method is then dropped from ``methods``, and readiness and "unavailable"
        errors say why first."""
        if bpf_disabled is not None:
            methods = tuple(m for m in methods if m != "bpf") or ("perf",)
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {methods}")
        self.bpf_disabled = bpf_disabled
        self.roots = roots
        self.host = host
        self.clock = clock
        self.wall = wall
        self.methods = tuple(methods)
        self.perf_binary = perf_binary if perf_binary is not None else shutil.which("perf")
        self.symbolizer = symbolizer or Symbolizer(roots, limits=symbol_cache)
        self.count_entries = count_entries
        self.stack_entries = stack_entries
        self.tmp_dir = tmp_dir
        self._lock = threading.Lock()
        self._captures: dict[str, _Capture] = {}
        self._closed = False

    # -- readiness -----------------------------------------------------------------------

    def _bpf_problem(self) -> str | None:
        ok, why = self.host.bcc()
        if not ok:
            return f"bcc is not importable: {why}"
        privileged, why = self.host.privileges()
        if not privileged:
            return f"no privileges to load BPF programs: {why}"
        headers = self.host.headers()
        if not headers.present:
            return f"kernel headers: {headers.detail}"
        return None

    def _perf_events_problem(self) -> str | None:
        perf = self.host.capabilities()["perf"]
        return None if perf["available"] else f"perf events: {perf['reason']}"

    def _perf_problem(self) -> str | None:
        if not self.perf_binary:
            return "the perf tool is not installed (Debian package linux-perf)"
        return self._perf_events_problem()

    def _method_for(self, kind: str) -> tuple[str | None, str | None]:
        """(method, None) or (None, why no method can capture ``kind`` here)."""
        reasons = [] if self.bpf_disabled is None else [f"bpf: {self.bpf_disabled}"]
        for method in self.methods:
            if method == "bpf":
                problem = self._bpf_problem()
                if problem is None and kind == "cpu":
                    problem = self._perf_events_problem()
                if problem is None and kind == "offcpu":
                    res = resolve_plan(OffCpuTime(), self.host, check_btf=False)
                    problem = None if res.plan else f"sched_switch: {res.reason}"
            elif kind == "offcpu":
                problem = "off-CPU profiles need BPF (perf record cannot sum blocked time)"
            else:
                problem = self._perf_problem()
            if problem is None:
                return method, None
            reasons.append(f"{method}: {problem}")
        return None, "; ".join(reasons)

    def readiness(self) -> dict[str, dict[str, Any]]:
        out = {}
        for kind in KINDS:
            method, reason = self._method_for(kind)
            out[kind] = {"available": method is not None, "method": method, "reason": reason}
        return out

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, request: ProfileRequest) -> str:
        """Start a capture (returns its id at once; the capture runs in its own thread)."""
        if not isinstance(request, ProfileRequest):
            raise ProfileError("invalid_request", "expected a ProfileRequest")
        cgroup_id = 0
        if request.pid is not None and read_optional(
                self.roots.proc / str(request.pid) / "stat") is None:
            raise ProfileError("no_such_process", f"no process {request.pid}")
        if request.cgroup is not None:
            try:
                _, cgroup_id = CgroupSetting("cgroup", "", "").parse(
                    request.cgroup, SettingsContext(self.roots))
            except ValueError as exc:
                raise ProfileError("no_such_cgroup", f"cgroup {exc}") from None
        method, reason = self._method_for(request.kind)
        if method is None:
            raise ProfileError("unavailable", f"cannot capture {request.kind} profiles here: "
                               f"{reason}")
        with self._lock:
            if self._closed:
                raise ProfileError("unavailable", "the profiler is closed")
            for cap in self._captures.values():
                if not cap.finished:
                    raise ProfileError("busy", "another capture is running on this host")
            self._forget_old_locked()
            cap = _Capture(secrets.token_hex(12), request, method, cgroup_id=cgroup_id)
            cap.thread = threading.Thread(target=self._run, args=(cap,),
                                          name=f"profile-{cap.id[:6]}", daemon=True)
            self._captures[cap.id] = cap
            cap.thread.start()
        return cap.id

    def _forget_old_locked(self) -> None:
        finished = [c for c in self._captures.values() if c.finished]
        for cap in finished[: max(0, len(finished) - KEEP_FINISHED + 1)]:
            del self._captures[cap.id]

    def _get(self, capture_id: str) -> _Capture:
        cap = self._captures.get(capture_id) if isinstance(capture_id, str) else None
        if cap is None:
            raise ProfileError("unknown_capture", "no such capture (finished ones are kept "
                               "until fetched)")
        return cap

    def poll(self, capture_id: str) -> dict[str, Any]:
        with self._lock:
            cap = self._get(capture_id)
            progress = 0.0
            if cap.state == "running" and cap.started_mono is not None:
                elapsed = self.clock() - cap.started_mono
                progress = 0.95 * min(1.0, max(0.0, elapsed / cap.request.duration_s))
            elif cap.state == "symbolizing":
                progress = 0.95
            elif cap.state == "done":
                progress = 1.0
            state = "running" if cap.state == "starting" else cap.state
            return {"state": state, "progress": round(progress, 3),
                    "error": cap.error.to_json() if cap.error else None}

    def fetch(self, capture_id: str) -> dict[str, Any]:
        """ProfileData of a finished capture; the capture is then forgotten here."""
        with self._lock:
            cap = self._get(capture_id)
            if not cap.finished:
                raise ProfileError("busy", "the capture is still running")
            del self._captures[capture_id]
        if cap.error is not None:
            raise cap.error
        assert cap.result is not None
        return cap.result

    def cancel(self, capture_id: str) -> None:
        """Stop a running capture (its programs are detached within a moment); a finished
        one is forgotten."""
        with self._lock:
            cap = self._get(capture_id)
            if cap.finished:
                del self._captures[capture_id]
                return
            cap.cancel.set()
        if cap.thread is not None and cap.thread is not threading.current_thread():
            cap.thread.join(timeout=PERF_STOP_TIMEOUT_S)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            running = [c for c in self._captures.values() if not c.finished]
            for cap in running:
                cap.cancel.set()
        for cap in running:
            if cap.thread is not None:
                cap.thread.join(timeout=PERF_STOP_TIMEOUT_S)

    # -- the capture thread ----------------------------------------------------------------

    def _set(self, cap: _Capture, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(cap, key, value)

    def _run(self, cap: _Capture) -> None:
        try:
            if cap.method == "bpf":
                try:
                    counts, work, lost, event = self._capture_bpf(cap)
                except BpfLoadError as exc:
                    if cap.request.kind != "cpu" or "perf" not in self.methods \
                            or self._perf_problem() is not None:
                        raise ProfileError("capture_failed", str(exc)) from None
                    log.warning("BPF profile failed, falling back to perf: %s", exc)
                    cap.notes.append(f"BPF could not be used ({exc}); captured with perf "
                                     "record instead")
                    cap.method = "perf"
                else:
                    self._set(cap, state="symbolizing")
                    result = self._bpf_result(cap, counts, work, lost, event)
            if cap.method == "perf":
                samples = self._capture_perf(cap)
                self._set(cap, state="symbolizing")
                result = self._perf_result(cap, samples)
            self._set(cap, state="done", result=result)
        except ProfileError as exc:
            self._set(cap, state="cancelled" if exc.code == "cancelled" else "failed",
                      error=exc)
        except Exception as exc:  # a capture thread must always finish
            log.exception("profile capture %s failed", cap.id)
            self._set(cap, state="failed", error=ProfileError(
                "capture_failed", f"{type(exc).__name__}: {exc}"))

    def _wait(self, cap: _Capture, tick: Callable[[], None] | None = None) -> None:
        """Sleep for the requested duration unless cancelled (then raise), calling ``tick``
        every PREPASS_INTERVAL_S meanwhile."""
        self._set(cap, state="running", started_mono=self.clock(), started_at=self.wall(),
                  mono_start_ns=time.monotonic_ns())
        assert cap.started_mono is not None
        end = cap.started_mono + cap.request.duration_s
        while True:
            remaining = end - self.clock()
            step = remaining if tick is None else min(remaining, PREPASS_INTERVAL_S)
            cancelled = cap.cancel.wait(max(0.0, step))
            if cancelled or self.clock() >= end:
                break
            if tick is not None:
                tick()
        # A starved thread (or a long tick) may notice the end late: the window still ends
        # at start + duration.
        cap.mono_end_ns = min(time.monotonic_ns(),
                              cap.mono_start_ns + int(cap.request.duration_s * 1e9))
        cap.duration_s = round(min(cap.request.duration_s, self.clock() - cap.started_mono), 3)
        if cancelled:
            raise ProfileError("cancelled", "the capture was cancelled")

    def _filter_defines(self, cap: _Capture) -> dict[str, int]:
        # ancestor level of the filter cgroup: its depth below the root ("/a/b" -> 2)
        level = len([p for p in (cap.request.cgroup or "").split("/") if p])
        return {"HS_FILTER_TGID": cap.request.pid or 0, "HS_FILTER_CGROUP_ID": cap.cgroup_id,
                "HS_FILTER_CGROUP_LEVEL": level,
                "HS_COUNT_ENTRIES": self.count_entries, "HS_STACK_ENTRIES": self.stack_entries,
                "HS_SLOT_NS": SLOT_NS}

    def _capture_bpf(self, cap: _Capture
                     ) -> tuple[list[StackCount], _StackWork, int, str]:
        request = cap.request
        ok, why = self.host.import_bcc()
        if not ok:
            raise BpfLoadError(f"bcc: {why}")
        defines = self._filter_defines(cap)
        if request.kind == "cpu":
            source = "profile.bpf.c"
            probes: tuple[ProbeSpec, ...] = (
                ProbeSpec("perf_event", "cpu-clock", sample_freq=request.frequency_hz),)
            event = f"perf_event cpu-clock {request.frequency_hz} Hz"
        else:
            module = OffCpuTime()
            res = resolve_plan(module, self.host)
            if res.plan is None:
                raise ProfileError("unavailable", f"sched_switch: {res.reason}")
            source, probes = module.source, res.probes
            defines.update({"HS_BLOCKED_ONLY": 1, "HS_MIN_USEC": 0, "HS_STACKS": 1,
                            **res.defines})
            event = f"{res.plan.name} sched:sched_switch"
        t = time.perf_counter()
        loaded = load(source, cflags(defines), probes)
        cap.timings["compile_s"] = round(time.perf_counter() - t, 3)
        try:
            # Slots are CLOCK_MONOTONIC / SLOT_NS in the kernel (bpf_ktime_get_ns), so the
            # first slot comes from the real monotonic clock, not the injected one.
            work = _StackWork(self.symbolizer, loaded)
            self._wait(cap, work.absorb)
            loaded.detach()
            t, cpu = time.perf_counter(), time.thread_time()
            counts = work.read_counts()
            lost = loaded.percpu_array_sums("lost", 1)[0]
            work.read_stacks(counts)
            cap.timings["read_maps_s"] = round(time.perf_counter() - t, 3)
            cap.timings["read_maps_cpu_s"] = round(time.thread_time() - cpu, 3)
            cap.timings["prepass_cpu_s"] = round(work.prepass_cpu_s, 3)
        finally:
            loaded.close()
        return counts, work, lost, event

    def _bpf_result(self, cap: _Capture, counts: list[StackCount], work: _StackWork,
                    lost: int, event: str) -> dict[str, Any]:
        t, cpu = time.perf_counter(), time.thread_time()
        builder = ProfileBuilder()
        lost_stack = (builder.frame_id(("[lost stack]", "unknown", None)),)
        missing_stacks = 0
        exited_value = 0
        # Keys carry CLOCK_MONOTONIC / SLOT_NS: keep exactly the capture's window (the
        # program runs from attach to detach, which a starved thread may delay).
        first = cap.mono_start_ns // SLOT_NS
        end = -(-cap.mono_end_ns // SLOT_NS)
        outside = 0
        for c in counts:
            if not first <= c.slot < end:
                outside += c.value
                continue
            ids: tuple[int, ...] = (builder.frame_id(process_frame(c.comm)),)
            if c.user_stack >= 0:
                user, alive = work.user_frames(c.pid, c.user_stack)
                if not alive:
                    exited_value += c.value
                ids += builder.frame_ids(user)
            elif c.user_stack != -_EFAULT:
                missing_stacks += c.value
                ids += lost_stack
            if c.kernel_stack >= 0:
                ids += builder.frame_ids(work.kernel_frames(c.kernel_stack))
            elif c.kernel_stack != -_EFAULT:
                missing_stacks += c.value
                ids += lost_stack
            builder.add_ids(c.pid, ids, c.slot - first, c.value)
        unit = "samples" if cap.request.kind == "cpu" else "microseconds"
        notes = list(cap.notes)
        if cap.request.kind == "cpu":
            notes.append("the idle task is not sampled: the graph shows CPU use, not idle time")
        else:
            notes.append("blocked time of tasks that left the CPU voluntarily (sleep, I/O, "
                         "locks), by the stack they blocked in; each period is counted in the "
                         "time slot where it ended")
        if lost:
            notes.append(f"{lost} {unit} did not fit the {self.count_entries}-entry stack "
                         "count map and are counted in lost")
        if missing_stacks:
            notes.append(f"{missing_stacks} {unit} have a [lost stack]: the "
                         f"{self.stack_entries}-entry stack map was full or two stacks "
                         "collided in it")
        if outside:
            notes.append(f"{outside} {unit} taken while attaching or detaching, outside the "
                         "capture window, are left out")
        if exited_value:
            notes.append(f"{_pct(exited_value, builder.total)} of {unit} come from processes "
                         "that exited before symbolization: their user frames are [unknown]")
        self._unknown_note(notes, builder, unit)
        cap.timings["symbolize_s"] = round(time.perf_counter() - t, 3)
        cap.timings["symbolize_cpu_s"] = round(time.thread_time() - cpu, 3)
        return self._data(cap, method="bpf", event=event, unit=unit, builder=builder,
                          lost=lost, notes=notes)

    @staticmethod
    def _unknown_note(notes: list[str], builder: ProfileBuilder, unit: str) -> None:
        if builder.unknown_value:
            notes.append(f"{_pct(builder.unknown_value, builder.total)} of {unit} have "
                         f"[unknown] frames (grouped into one per run): {_UNKNOWN_HELP}")

    def _data(self, cap: _Capture, *, method: str, event: str, unit: str,
              builder: ProfileBuilder, lost: int, notes: list[str]) -> dict[str, Any]:
        frames, stacks = builder.to_json()
        readable = self.symbolizer.demangle([f["name"] for f in frames if f["kind"] == "user"])
        for f in frames:
            if f["kind"] == "user" and f["name"] in readable:
                f["name"] = readable[f["name"]]
        return {
            "version": 1,
            "kind": cap.request.kind,
            "method": method,
            "event": event,
            "request": cap.request.to_json(),
            "unit": unit,
            "started_at": cap.started_at,
            "duration_s": cap.duration_s,
            "slot_ms": SLOT_MS,
            "frames": frames,
            "stacks": stacks,
            "total": builder.total,
            "lost": lost,
            "notes": notes,
            "timings": dict(cap.timings),
        }

    # -- perf fallback ---------------------------------------------------------------------

    def perf_record_argv(self, request: ProfileRequest, output: str, control: str,
                         ack: str) -> list[str]:
        """``perf record`` arguments (no shell; every value is a validated integer or our
        own path). CLOCK_MONOTONIC timestamps line up with the capture's start. It starts
        disabled (``-D -1``) and is enabled through its control FIFO: perf takes seconds
        to start on a busy host (it first walks every process's mappings), and the
        capture's clock must start when sampling does, not when perf was spawned."""
        assert self.perf_binary is not None
        argv = [self.perf_binary, "record", "--quiet", "-e", "cpu-clock", "-F",
                str(request.frequency_hz), "-g", "-k", "CLOCK_MONOTONIC", "-o", output,
                "-D", "-1", "--control", f"fifo:{control},{ack}"]
        argv += ["-p", str(request.pid)] if request.pid is not None else ["-a"]
        return argv

    @staticmethod
    def _perf_enable(proc: subprocess.Popen[bytes], control: str, ack: str,
                     cancel: threading.Event) -> None:
        """Enable sampling and wait for perf's acknowledgement (or its exit, or cancel)."""
        # O_RDWR: opening a FIFO this way never blocks, whether or not perf opened it yet.
        ctl_fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
        ack_fd = os.open(ack, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            os.write(ctl_fd, b"enable\n")
            deadline = time.monotonic() + PERF_STOP_TIMEOUT_S
            got = b""
            while b"ack" not in got:
                if proc.poll() is not None:
                    return  # exited: reported by the caller from its stderr
                if cancel.is_set():
                    raise ProfileError("cancelled", "the capture was cancelled")
                if time.monotonic() > deadline:
                    raise ProfileError("capture_failed", "perf record did not start within "
                                       f"{PERF_STOP_TIMEOUT_S:g} s")
                ready, _, _ = select.select([ack_fd], [], [], 0.1)
                if ready:
                    got += os.read(ack_fd, 64)
        finally:
            os.close(ctl_fd)
            os.close(ack_fd)

    def _capture_perf(self, cap: _Capture) -> list[PerfSample]:
        with tempfile.TemporaryDirectory(prefix="hostscope-perf-", dir=self.tmp_dir) as tmp:
            output = os.path.join(tmp, "perf.data")
            control, ack = os.path.join(tmp, "control"), os.path.join(tmp, "ack")
            os.mkfifo(control, 0o600)
            os.mkfifo(ack, 0o600)
            argv = self.perf_record_argv(cap.request, output, control, ack)
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, cwd=tmp)
            try:
                self._perf_enable(proc, control, ack, cap.cancel)
                if proc.poll() is None:
                    self._wait(cap)
            finally:
                # SIGINT makes perf record write its header and exit cleanly.
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                try:
                    _, err = proc.communicate(timeout=PERF_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    _, err = proc.communicate()
            if not os.path.exists(output) or os.path.getsize(output) == 0:
                raise ProfileError("capture_failed", "perf record wrote nothing: "
                                   + err.decode("utf-8", "replace").strip()[-500:])
            self._set(cap, state="symbolizing")
            t = time.perf_counter()
            script = subprocess.run(
                [self.perf_binary or "perf", "script", "-i", output, "-F",
                 "comm,pid,tid,time,ip,sym,dso", "--ns"],
                stdin=subprocess.DEVNULL, capture_output=True, cwd=tmp,
                timeout=PERF_SCRIPT_TIMEOUT_S, check=False)
            cap.timings["perf_script_s"] = round(time.perf_counter() - t, 3)
            if script.returncode != 0:
                raise ProfileError("capture_failed", "perf script failed: " + script.stderr
                                   .decode("utf-8", "replace").strip()[-500:])
            samples = parse_perf_script(script.stdout.decode("utf-8", "replace"))
            return samples

    def _perf_result(self, cap: _Capture, samples: list[PerfSample]) -> dict[str, Any]:
        t = time.perf_counter()
        t0_ns, end_ns = cap.mono_start_ns, cap.mono_end_ns
        outside = 0
        builder = ProfileBuilder()
        wanted_cgroup = cap.request.cgroup
        in_cgroup: dict[int, bool] = {}
        skipped = 0
        for s in samples:
            if s.pid == 0:
                continue  # idle, as with BPF
            if wanted_cgroup is not None:
                member = in_cgroup.get(s.pid)
                if member is None:
                    member = in_cgroup[s.pid] = self._pid_in_cgroup(s.pid, wanted_cgroup)
                if not member:
                    skipped += 1
                    continue
            if not t0_ns <= s.time_ns < end_ns:
                outside += 1
                continue
            slot = (s.time_ns - t0_ns) // SLOT_NS
            builder.add(s.pid, [process_frame(s.comm), *group_unknown(s.frames)], slot, 1)
        notes = list(cap.notes)
        notes.append("the idle task is not shown: the graph shows CPU use, not idle time")
        if outside:
            notes.append(f"{outside} samples taken while perf started or stopped, outside "
                         "the capture window, are left out")
        if wanted_cgroup is not None:
            notes.append(f"perf recorded all CPUs; samples were kept for processes in "
                         f"{wanted_cgroup} when symbolized (processes that exited before "
                         "could not be checked and are left out)")
        self._unknown_note(notes, builder, "samples")
        cap.timings["symbolize_s"] = round(time.perf_counter() - t, 3)
        return self._data(cap, method="perf", event="perf record -e cpu-clock",
                          unit="samples", builder=builder, lost=0, notes=notes)

    def _pid_in_cgroup(self, pid: int, path: str) -> bool:
        """Whether ``pid`` is in cgroup v2 ``path`` or below it (as the BPF filter)."""
        text = read_optional(self.roots.proc / str(pid) / "cgroup") or ""
        want = path.rstrip("/")
        for line in text.splitlines():
            if line.startswith("0::"):
                have = line[3:].rstrip("/")
                return have == want or have.startswith(want + "/")
        return False


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.0f} %" if whole else "0 %"


