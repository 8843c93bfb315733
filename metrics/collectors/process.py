"""Per-process metrics (``proc.*``) from ``/proc/PID/{stat,io,schedstat,status}``.

Per-process monitoring is what users say makes Netdata (6.2 % of a core) and Glances (11 %)
expensive on a host with ~1,080 processes. The budget here is under 2.5 % of one core at
1 Hz for 1,000 processes, i.e. < 25 ms of CPU per sample including the rate step, so this
module is written around what the measurements (``benchmarks/bench_processes.py``) showed:

* **Opening a /proc file costs more than reading it.** Open + read + close of
  ``/proc/PID/stat`` for 1,000 processes took ~4.6 ms here; ``pread`` at offset 0 on a file
  descriptor kept open from the previous sample took ~2.1 ms (procfs regenerates the
  content on every read from offset 0). So ``stat``, ``io`` and ``schedstat`` descriptors
  are kept open per process while the descriptor budget allows (``max_open_fds``, by
  default half the soft ``RLIMIT_NOFILE``; the daemon should raise its soft limit to the
  hard one at start-up). Beyond the budget, files are opened per sample. A kept descriptor
  also makes PID reuse impossible to miss: it refers to the old process, and reading it
  fails with ``ESRCH`` once that process is gone.
* **Unchanged bytes are not parsed again.** Most processes sleep; their ``stat`` is
  byte-for-byte identical between samples, so the previous parse is reused.
* **Context switches without parsing ``status`` every time.** ``status`` is the most
  expensive file (~4.3 ms per 1,000 even with kept descriptors; the kernel formats ~55
  lines). ``schedstat``'s third field is the number of times the task was scheduled in,
  which equals voluntary + involuntary switches whenever the task is not on a CPU (checked
  on this kernel: 415 = 332 + 83 for PID 1). ``status`` is re-read only when that number
  differs from the sum seen at the last ``status`` read, so the values are exact, not
  sampled less often. Kernels without schedstat fall back to reading ``status`` each time.
* **I/O counters of a process that did not run are not read again.** A process whose
  ``schedstat`` (the run time in nanoseconds, updated whenever it leaves a CPU and at
  every scheduler tick while on one, and the number of times it was scheduled in) and
  ``stat`` are byte-for-byte what they were at the last sample, and that had one thread
  then and now, ran no code since: the kernel counts ``read_bytes`` and ``write_bytes``
  in the context of the task doing the I/O (and adds a child's totals to its parent's
  when the parent reaps it, in the parent's ``wait``), so its counters are the last ones
  read. A process with several threads is always read (``schedstat`` is its main
  thread's only, ``io`` sums them all). On the development VM 62 of 77 processes qualify
  at a time; with privilege separation that is most of the privileged helper's
  ``proc_io`` batch gone, and with it most of its work.
* **Read once per process identity:** ``cmdline`` (capped at ``cmdline_limit`` bytes) and
  the cgroup (container name); re-read only when ``comm`` changes (an ``exec``).
* **No per-value Python objects beyond the output.** Each process keeps one tuple of its
  stat-derived values; the output dictionaries are built column-wise with ``zip``.

Result on the 2-CPU development VM with 1,000 processes: ~12 ms of CPU per ``collect``,
~17 ms per sample including rates, derived metrics and the history append (1.7 % of a
core at 1 Hz, 0.85 % at the default 2 s); the equivalent psutil loop took ~75 ms. A
process seen for the first time costs ~70 us more (mostly the kernel creating its /proc
inodes), paid once per identity.

Identity. A process is ``"PID:STARTTIME"`` (start time in clock ticks since boot, field 22
of ``stat``), so a reused PID is a new instance and rates never splice two processes.

Absences are normal: a process that exits between listing and reading, or whose ``io`` is
denied (other users' processes without ``CAP_SYS_PTRACE``), simply has no value. A denied
``io`` is remembered per identity and not retried here. With privilege separation the
daemon holds no capabilities, so that is every process with more privileges than it
(root's daemons included); an injected ``io_reader`` (the privileged helper's
``proc_io``) then gets those processes' counters in ONE batched call per collection,
keyed by ``(pid, start time)`` so a reused PID is never misattributed. Errors are
translated by :func:`..sources.translate`, the one place that knows which errno means what.

``/proc/PID/stat`` layout (proc(5)); ``comm`` is in parentheses and may itself contain
spaces and parentheses, so the fields start after the *last* ``)``::

    pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    utime stime cutime cstime priority nice num_threads itrealvalue starttime vsize rss ...
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from ..collector import Collector, Derivation, Raw
from ..model import (
    BYTES,
    COUNT,
    MSEC,
    NONE,
    SEC,
    UTILIZATION,
    MetricDesc,
    Units,
    ValueType,
    counter,
    discrete,
    instant,
)
from ..sources import Roots, list_dir, read_optional, translate
from .cgroup import container_name, parse_proc_cgroup

INDOM = "proc"
_LABELS = ("process",)

#: task flag of kernel threads (include/linux/sched.h); stable since 2.6.
PF_KTHREAD = 0x00200000

_STAT_BUF = 4096
_SMALL_BUF = 1024
_STATUS_BUF = 8192
_CGROUP_BUF = 16384
_O_FLAGS = os.O_RDONLY | os.O_CLOEXEC
#: A schedstat suffix no content ends with (no cached context switches yet).
_NEVER = b"\0"
#: schedstat of every task on a kernel that has the file but no sched_info: says nothing.
_NO_SCHED_INFO = b"0 0 0\n"

#: Metrics taken from one process's stat-derived row, in row order.
ROW_METRICS: tuple[str, ...] = (
    "proc.psinfo.pid",
    "proc.psinfo.utime",
    "proc.psinfo.stime",
    "proc.psinfo.threads",
    "proc.psinfo.sname",
    "proc.psinfo.minflt",
    "proc.psinfo.majflt",
    "proc.psinfo.flags",
    "proc.memory.rss",
    "proc.memory.vmsize",
    "proc.psinfo.cmd",
    "proc.psinfo.psargs",
    "proc.id.container",
    "proc.psinfo.start_time",
)

#: Reads other processes' I/O counters with privileges: [[pid, start], ...] ->
#: {(pid, start): (read_bytes, write_bytes)} for those it could read.
IoReader = Callable[[list[list[int]]], Mapping[tuple[int, int], tuple[int, int]]]

#: (comm, state, flags, minflt, majflt, utime, stime, threads, starttime, vsize, rss pages)
StatTuple = tuple[str, str, int, int, int, int, int, int, int, int, int]


def parse_stat(data: bytes) -> StatTuple | None:
    """Fields of ``/proc/PID/stat`` hostscope uses, or None if the content is truncated.

    Times are clock ticks, ``rss`` is pages, ``vsize`` bytes, ``starttime`` ticks since
    boot. ``comm`` is decoded leniently (it is whatever the process set, not UTF-8).
    """
    close = data.rfind(b")")
    open_ = data.find(b"(")
    if close < 0 or open_ < 0 or open_ > close:
        return None
    f = data[close + 2:].split()
    if len(f) < 22:
        return None
    try:
        return (
            data[open_ + 1: close].decode("utf-8", "replace"),
            f[0].decode("ascii", "replace"),
            int(f[6]),
            int(f[7]),
            int(f[9]),
            int(f[11]),
            int(f[12]),
            int(f[17]),
            int(f[19]),
            int(f[20]),
            int(f[21]),
        )
    except ValueError:
        return None


def parse_io(data: bytes) -> tuple[int, int] | None:
    """``read_bytes`` and ``write_bytes`` of ``/proc/PID/io`` (storage-layer bytes)."""
    rb = data.find(b"\nread_bytes:")
    wb = data.find(b"\nwrite_bytes:")
    if rb < 0 or wb < 0:
        return None
    try:
        return int(data[rb + 12: data.find(b"\n", rb + 1)]), int(
            data[wb + 13: data.find(b"\n", wb + 1)]
        )
    except ValueError:
        return None


def parse_schedstat(data: bytes) -> int | None:
    """Times the task was scheduled in (third field of ``/proc/PID/schedstat``)."""
    # rfind + int is a third of the cost of split() on this hot path.
    if data.count(b" ") != 2:
        return None
    try:
        return int(data[data.rfind(b" ") + 1:])
    except ValueError:
        return None


def parse_status_ctxt(data: bytes) -> tuple[int, int] | None:
    """(voluntary, involuntary) context switches from ``/proc/PID/status``.

    Like the kernel, these count the main thread only (as does ``schedstat``).
    """
    out: list[int] = []
    for key in (b"\nvoluntary_ctxt_switches:", b"\nnonvoluntary_ctxt_switches:"):
        pos = data.find(key)
        if pos < 0:
            return None
        end = data.find(b"\n", pos + 1)
        try:
            out.append(int(data[pos + len(key): end if end >= 0 else len(data)]))
        except ValueError:
            return None
    return out[0], out[1]


def parse_cmdline(data: bytes, comm: str, limit: int) -> str:
    """Arguments joined by spaces, or ``[comm]`` like ps(1) when empty (kernel threads,
    zombies). A command line cut at ``limit`` bytes ends with ``...``."""
    text = data.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    if not text:
        return f"[{comm}]"
    return text + "..." if len(data) >= limit else text


def parse_btime(text: str) -> int | None:
    """Boot time (seconds since the epoch) from ``/proc/stat``."""
    for line in text.splitlines():
        if line.startswith("btime "):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


class _Proc:
    """What the collector remembers about one process identity between samples."""

    __slots__ = (
        "args",
        "cmd",
        "container",
        "ctx",
        "ctx_tail",
        "io_denied",
        "io_fd",
        "io_raw",
        "io_vals",
        "key",
        "pid",
        "row",
        "sched_fd",
        "sched_raw",
        "start",
        "stat_fd",
        "stat_raw",
    )

    def __init__(self, pid: str, start: int, stat_fd: int) -> None:
        self.pid = pid
        self.start = start
        self.key = f"{pid}:{start}"
        self.stat_fd = stat_fd
        self.io_fd = -1
        self.sched_fd = -1
        self.stat_raw = b""
        self.row: tuple[int | float | str, ...] = ()
        self.cmd = ""
        self.args = ""
        self.container = ""
        self.io_denied = False
        self.io_raw = b""
        self.io_vals: tuple[int, int] | None = None
        self.ctx: tuple[int, int] | None = None
        self.ctx_tail = _NEVER
        #: schedstat as read at the last sample (b"": not read): with an unchanged stat,
        #: it tells that nothing of a one-thread process ran since.
        self.sched_raw = b""


class ProcessCollector(Collector):
    """``proc.*`` for every process (kernel threads included; ``top_processes`` can hide them).

    ``max_open_fds`` bounds the descriptors kept open between samples (three per process);
    0 disables keeping them, None uses half the soft ``RLIMIT_NOFILE``.
    """

    name = "process"
    #: Only what the dashboard charts per process over time (sparklines, drill-down):
    #: about 21 MiB an hour for 1,000 processes instead of ~110 MiB for every series.
    history_metrics = frozenset({"proc.cpu.util", "proc.memory.rss", "proc.io.total_bytes"})
    #: Processes come and go too fast for a day-long per-minute record to pay its way.
    history_coarse = False

    def __init__(
        self,
        roots: Roots,
        *,
        interval_s: float = 2.0,
        hz: int | None = None,
        page_size: int | None = None,
        max_open_fds: int | None = None,
        cmdline_limit: int = 4096,
        io_reader: IoReader | None = None,
    ) -> None:
        self.roots = roots
        self._io_reader = io_reader
        self.interval_s = interval_s
        self.hz = hz or os.sysconf("SC_CLK_TCK")
        self.page_size = page_size or os.sysconf("SC_PAGE_SIZE")
        if max_open_fds is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            max_open_fds = 65536 if soft == resource.RLIM_INFINITY else min(soft // 2, 65536)
        self.max_open_fds = max_open_fds
        self.cmdline_limit = cmdline_limit
        self._proc = str(roots.proc)
        self._procs: dict[str, _Proc] = {}
        self._fds = 0
        #: close() may run while a collection is in flight on the sampler's worker (a
        #: daemon stopped during its first tick, or a collection abandoned as hung). Only
        #: one thread ever touches the descriptors: close() defers to the collection in
        #: flight, which releases everything when it ends.
        self._close_lock = threading.Lock()
        self._closed = False
        self._collecting = False
        self._btime: int | None = None
        self._btime_read = False
        #: None until known; False on kernels without /proc/PID/schedstat.
        self._schedstat: bool | None = None
        self._names: dict[str, str] = {}

    # -- descriptors -------------------------------------------------------------------

    def descriptors(self) -> list[MetricDesc]:
        def c(name: str, units: Units, text: str) -> MetricDesc:
            return counter(name, units, text, indom=INDOM, labels=_LABELS)

        def s(name: str, text: str) -> MetricDesc:
            return discrete(name, NONE, text, indom=INDOM, labels=_LABELS, type=ValueType.STRING)

        return [
            discrete("proc.psinfo.pid", NONE, "process id", indom=INDOM, labels=_LABELS,
                     type=ValueType.U32),
            c("proc.psinfo.utime", MSEC, "CPU time of the process (all threads) in user mode"),
            c("proc.psinfo.stime", MSEC, "CPU time of the process (all threads) in kernel mode"),
            instant("proc.psinfo.threads", COUNT, "number of threads", indom=INDOM,
                    labels=_LABELS, type=ValueType.U32),
            instant("proc.psinfo.sname", NONE,
                    "scheduling state letter (R running, S sleeping, D disk wait, Z zombie, ...)",
                    indom=INDOM, labels=_LABELS, type=ValueType.STRING),
            discrete("proc.psinfo.start_time", SEC,
                     "time the process started, seconds since the epoch",
                     indom=INDOM, labels=_LABELS, type=ValueType.DOUBLE),
            s("proc.psinfo.cmd", "command name (comm, at most 15 characters for user tasks)"),
            s("proc.psinfo.psargs",
              "full command line, or [comm] for kernel threads and zombies like ps(1)"),
            c("proc.psinfo.vctxsw", COUNT,
              "voluntary context switches of the main thread (blocking, sleeping)"),
            c("proc.psinfo.nvctxsw", COUNT,
              "involuntary context switches of the main thread (preempted)"),
            c("proc.psinfo.minflt", COUNT, "minor page faults (no disk I/O)"),
            c("proc.psinfo.majflt", COUNT, "major page faults (needed disk I/O)"),
            instant("proc.psinfo.flags", NONE,
                    "kernel task flags (PF_*; 0x200000 marks a kernel thread)",
                    indom=INDOM, labels=_LABELS, type=ValueType.U32),
            instant("proc.memory.rss", BYTES, "resident set size", indom=INDOM,
                    labels=_LABELS, type=ValueType.U64),
            instant("proc.memory.vmsize", BYTES, "virtual memory size", indom=INDOM,
                    labels=_LABELS, type=ValueType.U64),
            c("proc.io.read_bytes", BYTES,
              "bytes the process caused to be fetched from storage (absent when not readable)"),
            c("proc.io.write_bytes", BYTES,
              "bytes the process caused to be sent to storage (absent when not readable)"),
            s("proc.id.container",
              "container, pod or systemd unit of the process (empty at the root cgroup)"),
        ]

    def derivations(self) -> list[Derivation]:
        return [
            Derivation(
                instant("proc.cpu.util", UTILIZATION,
                        "CPU used by the process, 1.0 = one CPU fully busy",
                        indom=INDOM, labels=_LABELS, derived=True),
                _cpu_util,
            ),
            Derivation(
                instant("proc.io.total_bytes", BYTES.rate(),
                        "storage bytes read and written by the process per second",
                        indom=INDOM, labels=_LABELS, derived=True),
                _io_total,
            ),
        ]

    # -- collection ----------------------------------------------------------------------

    def collect(self) -> Raw:
        with self._close_lock:
            if self._closed:
                return {}
            self._collecting = True
        try:
            return self._collect()
        finally:
            with self._close_lock:
                self._collecting = False
                closed = self._closed
            if closed:
                self._release_all()

    def _collect(self) -> Raw:
        if not self._btime_read:
            self._btime_read = True
            text = read_optional(self.roots.proc / "stat")
            self._btime = parse_btime(text) if text is not None else None

        old = self._procs
        procs: dict[str, _Proc] = {}
        keys: list[str] = []
        rows: list[tuple[int | float | str, ...]] = []
        io_keys: list[str] = []
        io_vals: list[tuple[int, int]] = []
        ctx_keys: list[str] = []
        ctx_vals: list[tuple[int, int]] = []
        sched_ok = sched_tries = 0
        read_file = self._read_file
        #: [pid, start] of processes whose io only the io_reader can read.
        remote: list[list[int]] = []
        remote_recs: list[_Proc] = []
        io_reader = self._io_reader
        for pid in list_dir(self.roots.proc):
            if not pid.isdigit():
                continue
            rec = old.pop(pid, None)
            same_stat = False
            if rec is not None:
                data = read_file(rec.stat_fd, pid, "stat", _STAT_BUF)
                same_stat = data == rec.stat_raw
                if data is None or (not same_stat and not self._restat(rec, data)):
                    # Gone, truncated or a new process behind a reused PID: start afresh.
                    self._release(rec)
                    rec = None
            if rec is None:
                rec = self._new(pid)
                if rec is None:
                    continue
            procs[pid] = rec
            keys.append(rec.key)
            rows.append(rec.row)

            sched = None
            if self._schedstat is not False and rec.ctx is not None:
                sched_tries += 1
                sched = read_file(rec.sched_fd, pid, "schedstat", _SMALL_BUF)
                if sched is not None:
                    sched_ok += 1
            # Its stat unchanged (so one thread then as now, row[3]), and not scheduled in
            # since the last sample: nothing of the process ran, so its I/O counters
            # cannot have moved (module docs) and the last values stand, unread.
            still = (same_stat and rec.row[3] == 1 and sched is not None
                     and sched == rec.sched_raw and sched != _NO_SCHED_INFO)
            rec.sched_raw = sched or b""

            if not rec.io_denied:
                vals = (rec.io_vals if still and rec.io_vals is not None
                        else self._read_io(rec))
                if vals is not None:
                    io_keys.append(rec.key)
                    io_vals.append(vals)
            if rec.io_denied and io_reader is not None:
                if still and rec.io_vals is not None:
                    io_keys.append(rec.key)
                    io_vals.append(rec.io_vals)
                else:
                    remote.append([int(pid), rec.start])
                    remote_recs.append(rec)

            # Times scheduled in == switches seen in status: no switch since that read
            # (module docs). Compared as bytes: the hot path parses nothing.
            if sched is not None and sched.endswith(rec.ctx_tail):
                ctx_keys.append(rec.key)
                ctx_vals.append(rec.ctx)  # type: ignore[arg-type]  # ctx_tail implies ctx
                continue
            ctx = self._read_ctx(rec)
            if ctx is not None:
                ctx_keys.append(rec.key)
                ctx_vals.append(ctx)

        for rec in old.values():
            self._release(rec)
        self._procs = procs
        if remote and io_reader is not None:
            got = io_reader(remote)
            for (pid_n, start), rec in zip(remote, remote_recs, strict=True):
                vals = rec.io_vals = got.get((pid_n, start))  # None: asked again next time
                if vals is not None:
                    io_keys.append(rec.key)
                    io_vals.append(vals)
        if self._schedstat is None:
            if sched_ok:
                self._schedstat = True
            elif sched_tries >= 3:
                # No schedstat on this kernel (CONFIG_SCHED_INFO off): status every time.
                self._schedstat = False
                for rec in procs.values():
                    self._close_fd(rec, "sched_fd")
        return self._assemble(keys, rows, io=(io_keys, io_vals), ctx=(ctx_keys, ctx_vals))

    def _assemble(
        self,
        keys: list[str],
        rows: list[tuple[int | float | str, ...]],
        *,
        io: tuple[list[str], list[tuple[int, int]]],
        ctx: tuple[list[str], list[tuple[int, int]]],
    ) -> Raw:
        """Column-wise output: one C-level ``dict(zip(...))`` per metric."""
        io_keys, io_vals = io
        ctx_keys, ctx_vals = ctx
        raw: Raw = {}
        names = ROW_METRICS if self._btime is not None else ROW_METRICS[:-1]
        if rows:
            for name, column in zip(names, zip(*rows, strict=False), strict=False):
                raw[name] = dict(zip(keys, column, strict=True))
        if io_vals:
            rb, wb = zip(*io_vals, strict=True)
            raw["proc.io.read_bytes"] = dict(zip(io_keys, rb, strict=True))
            raw["proc.io.write_bytes"] = dict(zip(io_keys, wb, strict=True))
        if ctx_vals:
            vol, invol = zip(*ctx_vals, strict=True)
            raw["proc.psinfo.vctxsw"] = dict(zip(ctx_keys, vol, strict=True))
            raw["proc.psinfo.nvctxsw"] = dict(zip(ctx_keys, invol, strict=True))
        return raw

    # -- per-process reads -------------------------------------------------------------

    def _read_file(self, fd: int, pid: str, leaf: str, size: int) -> bytes | None:
        """One read of ``/proc/PID/<leaf>``: ``pread`` on a kept descriptor, else
        open-read-close. None when the process is gone or the file is unreadable."""
        try:
            if fd >= 0:
                return os.pread(fd, size, 0) or None
            fd = os.open(f"{self._proc}/{pid}/{leaf}", _O_FLAGS)
            try:
                return os.read(fd, size) or None
            finally:
                os.close(fd)
        except OSError as exc:
            translate(exc, Path(f"{self._proc}/{pid}/{leaf}"))
            return None

    def _new(self, pid: str) -> _Proc | None:
        """First sight of a process: read stat, keep descriptors, read cmdline and cgroup."""
        path = f"{self._proc}/{pid}/stat"
        try:
            fd = os.open(path, _O_FLAGS)
        except OSError as exc:
            translate(exc, Path(path))
            return None
        try:
            data = os.read(fd, _STAT_BUF)
        except OSError as exc:
            os.close(fd)
            translate(exc, Path(path))
            return None
        stat = parse_stat(data)
        if stat is None:
            os.close(fd)
            return None
        keep = self._fds + 3 <= self.max_open_fds
        if not keep:
            os.close(fd)
            fd = -1
        rec = _Proc(pid, stat[8], fd)
        if keep:
            self._fds += 1
            rec.io_fd = self._open_kept(pid, "io")
            rec.sched_fd = self._open_kept(pid, "schedstat") if self._schedstat is not False else -1
        self._identify(rec, stat[0])
        self._set_stat(rec, data, stat)
        return rec

    def _open_kept(self, pid: str, leaf: str) -> int:
        path = f"{self._proc}/{pid}/{leaf}"
        try:
            fd = os.open(path, _O_FLAGS)
        except OSError as exc:
            translate(exc, Path(path))
            return -1
        self._fds += 1
        return fd

    def _identify(self, rec: _Proc, comm: str) -> None:
        """Read what is cached per identity: command line and container."""
        rec.cmd = comm
        # One read each: procfs returns up to the buffer size in one go.
        cmdline = self._read_file(-1, rec.pid, "cmdline", self.cmdline_limit) or b""
        rec.args = parse_cmdline(cmdline, comm, self.cmdline_limit)
        cgroup = self._read_file(-1, rec.pid, "cgroup", _CGROUP_BUF)
        path = parse_proc_cgroup(cgroup.decode("utf-8", "replace")) if cgroup else "/"
        name = self._names.get(path)
        if name is None:
            if len(self._names) > 10000:
                self._names.clear()  # bound the cache on hosts churning through cgroups
            name = self._names[path] = container_name(path)
        rec.container = name

    def _restat(self, rec: _Proc, data: bytes) -> bool:
        """Apply changed stat bytes; False if truncated or the PID now names another process."""
        stat = parse_stat(data)
        if stat is None or stat[8] != rec.start:
            return False
        if stat[0] != rec.cmd:
            self._identify(rec, stat[0])  # exec (or PR_SET_NAME): command line may differ
        self._set_stat(rec, data, stat)
        return True

    def _set_stat(self, rec: _Proc, data: bytes, stat: StatTuple) -> None:
        comm, state, flags, minflt, majflt, utime, stime, threads, start, vsize, rss = stat
        hz = self.hz
        start_time = self._btime + start / hz if self._btime is not None else 0.0
        rec.stat_raw = data
        rec.row = (
            int(rec.pid),
            utime * 1000 // hz,
            stime * 1000 // hz,
            threads,
            state,
            minflt,
            majflt,
            flags,
            rss * self.page_size,
            vsize,
            comm,
            rec.args,
            rec.container,
            start_time,
        )

    def _read_io(self, rec: _Proc) -> tuple[int, int] | None:
        try:
            if rec.io_fd >= 0:
                data = os.pread(rec.io_fd, _SMALL_BUF, 0)
            else:
                fd = os.open(f"{self._proc}/{rec.pid}/io", _O_FLAGS)
                try:
                    data = os.read(fd, _SMALL_BUF)
                finally:
                    os.close(fd)
        except OSError as exc:
            translate(exc, Path(f"{self._proc}/{rec.pid}/io"))
            # Denied (another user's process without CAP_SYS_PTRACE), missing (no task
            # I/O accounting) or exiting: all permanent for this identity, so the
            # attempt is never paid for again.
            rec.io_denied = True
            self._close_fd(rec, "io_fd")
            return None
        if data != rec.io_raw:
            rec.io_raw = data
            rec.io_vals = parse_io(data)
        return rec.io_vals

    def _read_ctx(self, rec: _Proc) -> tuple[int, int] | None:
        data = self._read_file(-1, rec.pid, "status", _STATUS_BUF)
        ctx = parse_status_ctxt(data) if data is not None else None
        rec.ctx = ctx
        # schedstat ends with " <times scheduled in>\n"; 0 would also match a kernel
        # that has schedstat but no sched_info (it prints "0 0 0"), so never cache that.
        total = sum(ctx) if ctx is not None else 0
        rec.ctx_tail = b" %d\n" % total if total > 0 else _NEVER
        return ctx

    def _close_fd(self, rec: _Proc, attr: str) -> None:
        fd = getattr(rec, attr)
        if fd >= 0:
            os.close(fd)
            self._fds -= 1
            setattr(rec, attr, -1)

    def _release(self, rec: _Proc) -> None:
        for attr in ("stat_fd", "io_fd", "sched_fd"):
            self._close_fd(rec, attr)

    def close(self) -> None:
        with self._close_lock:
            self._closed = True
            if self._collecting:
                return  # the collection in flight releases everything when it ends
        self._release_all()

    def _release_all(self) -> None:
        procs, self._procs = self._procs, {}
        for rec in procs.values():
            self._release(rec)

    @property
    def open_fds(self) -> int:
        """Descriptors currently kept open (for status pages and tests)."""
        return self._fds


CookedView = Mapping[str, Mapping[str, float | str | None]]


def _cpu_util(c: CookedView) -> dict[str, float | None]:
    # utime and stime rates are ms of CPU per second; / 1000 gives CPUs busy.
    utime = c.get("proc.psinfo.utime", {})
    stime = c.get("proc.psinfo.stime", {})
    out: dict[str, float | None] = {}
    for key, u in utime.items():
        s = stime.get(key)
        out[key] = None if u is None or s is None else (u + s) / 1000.0  # type: ignore[operator]
    return out


def _io_total(c: CookedView) -> dict[str, float | None]:
    reads = c.get("proc.io.read_bytes", {})
    writes = c.get("proc.io.write_bytes", {})
    out: dict[str, float | None] = {}
    for key, r in reads.items():
        w = writes.get(key)
        out[key] = None if r is None or w is None else r + w  # type: ignore[operator]
    return out
