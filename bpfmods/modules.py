"""The BPF module definitions: attach plans, settings, metrics and tables of each module.

A module is one ``.bpf.c`` file plus what user space needs to run and read it:

* ``plans``: ordered attach strategies, best first (raw tracepoints: no argument copying;
  then classic tracepoints). :func:`resolve_plan` picks the first one this kernel supports
  and records why each better one was rejected. kprobe plans are deliberately absent: every
  event used here has had a stable tracepoint since Linux 4.x, and kprobes are exactly what
  hosts like the CI VMs (CONFIG_KPROBES off) lack.
* ``settings``: typed, validated values that become ``-D`` integer constants.
* ``descriptors()``/``derivations()``: PCP-style metrics the module publishes through the
  normal sampler pipeline (histogram buckets are COUNTERs; percentiles are derived).
* ``read()``: cumulative raw values from the kernel maps; ``table()``: JSON-ready rows.

Nothing here imports bcc; a :class:`Run` wraps the loaded object from :mod:`.runtime`.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hostscope.metrics.collector import Derivation, Raw
from hostscope.metrics.model import (
    COUNT,
    NSEC,
    USEC,
    MetricDesc,
    counter,
    instant,
)
from hostscope.metrics.sources import Roots, list_dir, read_optional

from .btf import BtfError
from .histogram import BUCKET_NAMES, SEP, SLOTS, percentiles
from .host import HostProbe
from .runtime import Loaded, ProbeSpec
from .settings import (
    BoolSetting,
    CgroupSetting,
    DiskSetting,
    IntSetting,
    Setting,
)

PERCENTILES = ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))

#: Longest string a table row carries (kernel buffers bound most strings already).
MAX_STR = 256

TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
    12: "NEW_SYN_RECV", 13: "BOUND_INACTIVE",
}
OPS = ("read", "write", "discard", "other")
AF_INET, AF_INET6 = 2, 10

SCHED_SWITCH_ARGS = ("bool", "struct task_struct *", "struct task_struct *", "unsigned int")
TASK_PID = {"HS_TASK_PID_OFF": ("task_struct", "pid")}
TASK_SCHED_INFO = {
    **TASK_PID,
    "HS_TASK_TGID_OFF": ("task_struct", "tgid"),
    "HS_TASK_SCHED_INFO_OFF": ("task_struct", "sched_info"),
    "HS_SCHED_INFO_RUN_DELAY_OFF": ("sched_info", "run_delay"),
    "HS_SCHED_INFO_PCOUNT_OFF": ("sched_info", "pcount"),
}


# -- attach plans ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttachPlan:
    """One way to attach a module; ``name`` is what status reports as ``attach_point``."""

    name: str
    probes: tuple[ProbeSpec, ...]
    defines: Mapping[str, int] = field(default_factory=dict)
    #: raw tracepoint event -> argument types the C code relies on (checked against BTF)
    raw_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: macro -> (struct, member) byte offsets the plan cannot do without
    offsets: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: tracepoints used when present, each with the macro set to 1 when it is
    optional: tuple[tuple[ProbeSpec, str], ...] = ()
    #: oldest kernel (major, minor) with what the plan's programs use
    min_kernel: tuple[int, int] = (0, 0)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The plan chosen on this host, or why none can run."""

    plan: AttachPlan | None
    probes: tuple[ProbeSpec, ...]
    defines: dict[str, int]
    #: (plan name, reason) for every better plan that could not be used
    rejected: tuple[tuple[str, str], ...]
    #: degraded features ("tcp bytes unavailable: ...")
    notes: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(f"{name}: {why}" for name, why in self.rejected)


def _plan_problem(plan: AttachPlan, host: HostProbe, check_btf: bool = True
                  ) -> tuple[str | None, dict[str, int]]:
    """Why ``plan`` cannot run here (None if it can), and the BTF offsets it needs.

    With ``check_btf`` false, a plan that needs BTF only needs the BTF *file* (a cheap
    prediction, no child process; its offsets are then left out).
    """
    defines: dict[str, int] = {}
    if plan.min_kernel > (0, 0) and kernel_version(host.release) < plan.min_kernel:
        need = ".".join(map(str, plan.min_kernel))
        return f"needs Linux >= {need} (running {host.release})", {}
    tracefs = host.tracefs()
    for probe in plan.probes:
        if probe.kind == "tracepoint":
            if tracefs is None:
                where = " or ".join(str(p) for p in host.tracefs_candidates())
                return f"tracefs is not mounted at {where}", {}
            category, _, event = probe.event.partition(":")
            if not host.has_tracepoint(category, event):
                return f"tracepoint {probe.event} missing from {tracefs}/events", {}
    if plan.raw_args or plan.offsets:
        btf = host.btf()
        if btf is None:
            return f"needs kernel BTF ({host.btf_error()})", {}
        if not check_btf:
            return None, defines
        try:
            for event, expected in plan.raw_args.items():
                args = btf.raw_tracepoint_args(event)
                if args is None:
                    return f"no raw tracepoint {event} in the kernel's BTF", {}
                if tuple(args[: len(expected)]) != expected or len(args) < len(expected):
                    return (f"raw tracepoint {event} takes ({', '.join(args)}), the program "
                            f"expects ({', '.join(expected)})"), {}
            for macro, (struct, member) in plan.offsets.items():
                defines[macro] = btf.member_offset(struct, member)
            for probe in plan.probes:
                if probe.kind == "tp_btf" and btf.raw_tracepoint_btf_id(probe.event) is None:
                    return f"no btf_trace_{probe.event} in the kernel's BTF", {}
        except BtfError as exc:
            return f"needs kernel BTF ({exc})" if btf.error else str(exc), {}
    return None, defines


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string ("6.18.44-fc-v657" -> (6, 18));
    (0, 0) when it does not start with two numbers."""
    major, _, rest = release.partition(".")
    digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
    if not major.isdigit() or not digits:
        return (0, 0)
    return int(major), int(digits)


def btf_questions(modules: Sequence[BpfModule]
                  ) -> tuple[set[tuple[str, str]], set[str]]:
    """Every (struct, member) offset and raw tracepoint ``modules`` may ask BTF about, so
    one child process answers them all (:meth:`KernelBtfFacts.prefetch`)."""
    offsets: set[tuple[str, str]] = set()
    events: set[str] = set()
    for module in modules:
        offsets.update(module.optional_offsets.values())
        for plan in module.plans:
            offsets.update(plan.offsets.values())
            events.update(plan.raw_args)
    return offsets, events


def resolve_plan(module: BpfModule, host: HostProbe, check_btf: bool = True) -> Resolution:
    """Pick the first plan of ``module`` this host supports.

    ``check_btf=False`` predicts it from cheap checks only (tracefs files, the BTF file's
    presence): what the daemon reports before anyone asked for BPF. The prediction differs
    from the real resolution only on a kernel whose BTF contradicts a raw tracepoint's
    expected arguments, and it carries no BTF offsets, so it is never used to load.
    """
    rejected: list[tuple[str, str]] = []
    for plan in module.plans:
        problem, offsets = _plan_problem(plan, host, check_btf)
        if problem is not None:
            rejected.append((plan.name, problem))
            continue
        defines = {**plan.defines, **offsets}
        probes = list(plan.probes)
        if check_btf and any(p.kind == "tp_btf" for p in probes):
            btf = host.btf()
            assert btf is not None  # _plan_problem checked it
            probes = [replace(p, btf_id=btf.raw_tracepoint_btf_id(p.event) or 0)
                      if p.kind == "tp_btf" else p for p in probes]
        for probe, macro in plan.optional:
            category, _, event = probe.event.partition(":")
            present = host.has_tracepoint(category, event)
            defines[macro] = int(present)
            if present:
                probes.append(probe)
        notes: list[str] = []
        btf = host.btf() if module.optional_offsets and check_btf else None
        for macro, (struct, member) in module.optional_offsets.items():
            if not check_btf:
                break
            if btf is None:
                notes.append(f"{struct}.{member} unknown (no BTF: {host.btf_error()})")
                continue
            try:
                defines[macro] = btf.member_offset(struct, member)
            except BtfError as exc:
                notes.append(f"{struct}.{member} unknown ({exc})")
        return Resolution(plan, tuple(probes), defines, tuple(rejected), tuple(notes))
    return Resolution(None, (), {}, tuple(rejected), ())


# -- a running module -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModuleContext:
    """Host access a module needs while running (disk names, syscall names)."""

    roots: Roots
    host: HostProbe
    syscall_headers: tuple[Path, ...] = (
        Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        Path("/usr/include/asm/unistd_64.h"),
        Path("/usr/include/aarch64-linux-gnu/asm/unistd.h"),
        Path("/usr/include/asm-generic/unistd.h"),
    )


class Run:
    """One enabled instance of a module: the loaded object plus user-space state."""

    def __init__(self, module: BpfModule, loaded: Loaded, values: Mapping[str, Any],
                 attach_point: str, ctx: ModuleContext) -> None:
        self.module = module
        self.loaded = loaded
        self.values = dict(values)
        self.attach_point = attach_point
        self.ctx = ctx
        self.started_wall = time.time()
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC: keep the offset to turn it into wall time.
        self._wall_minus_mono = time.time() - time.monotonic()
        self.state: dict[str, Any] = {}

    def wall_from_ktime(self, ns: int) -> float:
        return round(ns / 1e9 + self._wall_minus_mono, 6)


def clean_text(raw: bytes, limit: int = MAX_STR) -> str:
    """A kernel string as table data: up to the first NUL, decoded leniently, control
    characters replaced, bounded. Still hostile text: the UI must escape it."""
    text = bytes(raw).split(b"\0", 1)[0][:limit].decode("utf-8", "replace")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


def format_addr(family: int, raw: Sequence[int]) -> str:
    data = bytes(raw)
    if family == AF_INET:
        return str(ipaddress.IPv4Address(data[:4]))
    if family == AF_INET6:
        addr = ipaddress.IPv6Address(data[:16])
        return str(addr.ipv4_mapped or addr)
    return ""


def parse_unistd(text: str) -> dict[int, str]:
    """Syscall numbers from an ``asm/unistd*.h`` (``#define __NR_getpid 39``)."""
    names: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if (len(parts) == 3 and parts[0] == "#define" and parts[1].startswith("__NR_")
                and parts[2].isdigit()):
            names.setdefault(int(parts[2]), parts[1][5:])
    return names


def parse_diskstats_devs(text: str) -> dict[int, tuple[str, int]]:
    """/proc/diskstats -> {kernel dev_t (major << 20 | minor): (name, I/Os completed)}."""
    devs: dict[int, tuple[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        major, minor, name = int(parts[0]), int(parts[1]), parts[2]
        devs[(major << 20) | minor] = (name, int(parts[3]) + int(parts[7]))
    return devs


# -- ring buffer records (mirror the C structs; runtime checks each record's size) ------


class TcpLifeEvent(ct.Structure):
    """struct hs_tcplife_event in tcplife.bpf.c."""

    _fields_ = [
        ("start_ns", ct.c_uint64), ("end_ns", ct.c_uint64),
        ("tx_bytes", ct.c_uint64), ("rx_bytes", ct.c_uint64),
        ("pid", ct.c_uint32), ("family", ct.c_uint16), ("sport", ct.c_uint16),
        ("dport", ct.c_uint16), ("have_bytes", ct.c_uint16),
        ("saddr", ct.c_uint8 * 16), ("daddr", ct.c_uint8 * 16), ("comm", ct.c_char * 16),
    ]


ARG_LEN = 64  # HS_ARG_LEN in execsnoop.bpf.c


def exec_event_struct(nargs: int) -> type[ct.Structure]:
    """struct hs_exec_event in execsnoop.bpf.c, whose argument array has HS_ARGS rows."""

    class ExecEvent(ct.Structure):
        _fields_ = [
            ("ts", ct.c_uint64), ("pid", ct.c_uint32), ("ppid", ct.c_uint32),
            ("uid", ct.c_uint32), ("argc", ct.c_uint32), ("truncated", ct.c_uint32),
            ("have_argv", ct.c_uint32), ("comm", ct.c_char * 16),
            ("filename", ct.c_char * 256), ("args", (ct.c_char * ARG_LEN) * nargs),
        ]

    return ExecEvent


# -- module base -------------------------------------------------------------------------


class BpfModule:
    """Base class; subclasses declare plans, settings and metrics."""

    name: str = ""
    title: str = ""
    help: str = ""
    source: str = ""
    plans: tuple[AttachPlan, ...] = ()
    settings: tuple[Setting, ...] = ()
    #: struct fields used when BTF knows them (features degrade without)
    optional_offsets: Mapping[str, tuple[str, str]] = {}
    #: table name -> one-line description
    tables: Mapping[str, str] = {}

    def descriptors(self) -> list[MetricDesc]:
        return []

    def derivations(self) -> list[Derivation]:
        return []

    def open(self, run: Run) -> None:
        """Set up user-space state (ring buffer handlers) right after attaching."""

    def read(self, run: Run) -> Raw:
        """Cumulative raw values from the kernel maps (counters since the run started)."""
        return {}

    def table(self, run: Run, table: str, limit: int) -> list[dict[str, Any]]:
        raise KeyError(table)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "help": self.help,
            "settings": [s.describe() for s in self.settings],
            "tables": dict(self.tables),
            "metrics": [d.name for d in self.descriptors()]
            + [d.desc.name for d in self.derivations()],
            "attach_plans": [p.name for p in self.plans],
        }


def _tgid_setting() -> IntSetting:
    return IntSetting("pid", "HS_FILTER_TGID", 0, 4_194_304, 0,
                      "only this process (tgid); 0 = all")


def _cgroup_setting() -> CgroupSetting:
    return CgroupSetting("cgroup", "HS_FILTER_CGROUP_ID",
                         "only tasks in this cgroup v2 path (e.g. /system.slice/x.service)")


def _percentile_derivations(
    prefix: str, hist_metric: str, indom: str | None, labels: tuple[str, ...], what: str
) -> list[Derivation]:
    """p50/p90/p99 of a histogram metric's per-interval counts (rates work the same)."""

    def make(q: float) -> Callable[[Mapping[str, Mapping[str, float | str | None]]],
                                   dict[str, float | None]]:
        def compute(c: Mapping[str, Mapping[str, float | str | None]]) -> dict[str, float | None]:
            groups: dict[str, dict[str, float | None]] = {}
            for inst, value in c.get(hist_metric, {}).items():
                head, _, _ = inst.rpartition(SEP)
                groups.setdefault(head, {})[inst] = (
                    None if isinstance(value, str) else value
                )
            out: dict[str, float | None] = {}
            for head, buckets in groups.items():
                if all(v is None for v in buckets.values()):
                    out[head] = None  # first sample: no rates yet
                else:
                    out[head] = percentiles(buckets, (q,))[q]
            return out

        return compute

    return [
        Derivation(
            instant(f"{prefix}.{label}", USEC,
                    f"{label[1:]}th percentile of {what} over the last interval (estimated "
                    "from log2 buckets)", indom=indom, labels=labels, derived=True),
            make(q),
        )
        for q, label in PERCENTILES
    ]


_BUCKET_HELP = (
    "Log2 histogram: one instance per bucket named lo-hi in microseconds (0-1, 2-3, 4-7, "
    "..., 67108864-inf). The kernel keeps cumulative counts per bucket; as a counter, its "
    "rate is events per second in that bucket, and rate x interval is the heat-map cell."
)


class _HistogramModule(BpfModule):
    """A module whose main output is one log2 histogram in a per-CPU array ``hist``."""

    metric: str = ""
    prefix: str = ""
    what: str = ""

    def descriptors(self) -> list[MetricDesc]:
        return [counter(self.metric, COUNT, f"{self.what}: events per log2 bucket (microsec)",
                        indom=self.metric, labels=("bucket",), long_help=_BUCKET_HELP)]

    def derivations(self) -> list[Derivation]:
        # The singular percentile metric uses the SINGULAR instance "": buckets have no prefix.
        return _percentile_derivations(self.prefix, self.metric, None, (), self.what)

    def read(self, run: Run) -> Raw:
        sums = run.loaded.percpu_array_sums("hist", SLOTS)
        return {self.metric: dict(zip(BUCKET_NAMES, sums, strict=True))}


# -- the modules ----------------------------------------------------------------------


class RunqLatency(_HistogramModule):
    name = "runqlat"
    title = "Run queue latency"
    help = "Time from a task becoming runnable to running on a CPU (scheduler delay)."
    source = "runqlat.bpf.c"
    metric = "bpf.runq.latency"
    prefix = "bpf.runq"
    what = "run queue latency"
    settings = (_cgroup_setting(), _tgid_setting())
    plans = (
        # sched_switch alone, reading the scheduler's sched_info accounting (see the .bpf.c).
        # Task-local storage in tracing programs arrived in 5.11; 6.2 made its helpers safe
        # against recursion from inside the scheduler, which is where this program runs.
        # No sched_info in the BTF (CONFIG_SCHED_INFO off) rejects the plan with that reason.
        AttachPlan(
            "tp_btf",
            (ProbeSpec("tp_btf", "sched_switch"),),
            {"HS_USE_TP_BTF": 1, "HS_USE_RAW_TP": 0},
            raw_args={"sched_switch": SCHED_SWITCH_ARGS},
            offsets=TASK_SCHED_INFO,
            min_kernel=(6, 2),
        ),
        AttachPlan(
            "raw_tracepoint",
            tuple(ProbeSpec("raw_tracepoint", e) for e in
                  ("sched_wakeup", "sched_wakeup_new", "sched_switch", "sched_process_exit")),
            {"HS_USE_RAW_TP": 1},
            raw_args={"sched_switch": SCHED_SWITCH_ARGS,
                      "sched_wakeup": ("struct task_struct *",),
                      "sched_wakeup_new": ("struct task_struct *",),
                      "sched_process_exit": ("struct task_struct *",)},
            offsets=TASK_PID,
        ),
        AttachPlan(
            "tracepoint",
            tuple(ProbeSpec("tracepoint", f"sched:{e}") for e in
                  ("sched_wakeup", "sched_wakeup_new", "sched_switch", "sched_process_exit")),
            {"HS_USE_RAW_TP": 0},
        ),
    )


class OffCpuTime(_HistogramModule):
    name = "offcpu"
    title = "Off-CPU time"
    help = "How long tasks stay off the CPU once they leave it (blocked on I/O, locks, sleep)."
    source = "offcpu.bpf.c"
    metric = "bpf.offcpu.time"
    prefix = "bpf.offcpu"
    what = "off-CPU time"
    settings = (
        BoolSetting("blocked_only", "HS_BLOCKED_ONLY", True,
                    "count only tasks that blocked, not preempted ones (their wait is run "
                    "queue latency)"),
        IntSetting("min_us", "HS_MIN_USEC", 0, 1_000_000_000, 0,
                   "ignore off-CPU periods shorter than this many microseconds"),
        _cgroup_setting(),
        _tgid_setting(),
    )
    plans = (
        AttachPlan("raw_tracepoint", (ProbeSpec("raw_tracepoint", "sched_switch"),),
                   {"HS_USE_RAW_TP": 1}, raw_args={"sched_switch": SCHED_SWITCH_ARGS},
                   offsets=TASK_PID),
        AttachPlan("tracepoint", (ProbeSpec("tracepoint", "sched:sched_switch"),),
                   {"HS_USE_RAW_TP": 0}),
    )


class BioLatency(BpfModule):
    name = "biolatency"
    title = "Block I/O latency"
    help = "Time from a block request being issued to the device to its completion."
    source = "biolatency.bpf.c"
    metric = "bpf.biolatency.latency"
    settings = (
        BoolSetting("per_disk", "HS_PER_DISK", True, "one histogram per disk (else 'all')"),
        BoolSetting("per_op", "HS_PER_OP", True,
                    "separate read, write, discard, other (else 'all')"),
        DiskSetting("disk", "HS_FILTER_DEV", "only this disk (e.g. vda); empty = all"),
    )
    plans = (
        AttachPlan("tracepoint", (ProbeSpec("tracepoint", "block:block_rq_issue"),
                                  ProbeSpec("tracepoint", "block:block_rq_complete"))),
    )

    def descriptors(self) -> list[MetricDesc]:
        return [
            counter(self.metric, COUNT,
                    "block I/O latency (issue to completion): requests per log2 bucket",
                    indom="bpf.biolatency", labels=("device", "op", "bucket"),
                    long_help=_BUCKET_HELP + " Instances are device:op:bucket, e.g. "
                    "vda:read:4-7; op is read, write, discard or other (flush, passthrough);"
                    " 'all' when the per_disk or per_op setting is off."),
        ]

    def derivations(self) -> list[Derivation]:
        return _percentile_derivations("bpf.biolatency", self.metric, "bpf.biolatency.dev",
                                       ("device", "op"), "block I/O latency")

    def open(self, run: Run) -> None:
        # Declare read and write buckets for every disk that has done I/O, so a disk's first
        # requests after enabling are not lost to "first sample has no rate".
        text = read_optional(run.ctx.roots.proc / "diskstats") or ""
        whole = set(list_dir(run.ctx.roots.sys / "block"))
        run.state["devs"] = parse_diskstats_devs(text)
        seeded: list[str] = []
        if not run.values.get("per_disk", True):
            seeded = ["all"]
        else:
            wanted = run.values.get("disk") or None
            seeded = [name for name, ios in run.state["devs"].values()
                      if name in whole and ios > 0 and (wanted is None or name == wanted)]
        ops = ("read", "write") if run.values.get("per_op", True) else ("all",)
        run.state["seed"] = [f"{d}{SEP}{op}" for d in seeded for op in ops]

    def _dev_name(self, run: Run, dev: int) -> str:
        devs: dict[int, tuple[str, int]] = run.state["devs"]
        if dev not in devs:  # hot-plugged since enabling
            devs.update(parse_diskstats_devs(
                read_optional(run.ctx.roots.proc / "diskstats") or ""))
        found = devs.get(dev)
        return found[0] if found else f"{dev >> 20}_{dev & 0xFFFFF}"

    def read(self, run: Run) -> Raw:
        per_disk = run.values.get("per_disk", True)
        per_op = run.values.get("per_op", True)
        out: dict[str, int | float | str] = {}
        for head in run.state.get("seed", ()):
            for bucket in BUCKET_NAMES:
                out[f"{head}{SEP}{bucket}"] = 0
        for key, value in run.loaded.table("hist").items():
            disk = self._dev_name(run, key.dev) if per_disk else "all"
            op = OPS[key.op] if per_op and key.op < len(OPS) else "all"
            head = f"{disk}{SEP}{op}"
            if f"{head}{SEP}{BUCKET_NAMES[0]}" not in out:
                for bucket in BUCKET_NAMES:
                    out[f"{head}{SEP}{bucket}"] = 0
            if key.slot < SLOTS:
                out[f"{head}{SEP}{BUCKET_NAMES[key.slot]}"] = int(value.value)
        return {self.metric: out}


class SyscallLatency(_HistogramModule):
    name = "syscalls"
    title = "Syscall latency and top syscalls"
    help = "Time spent in each system call (sys_enter to sys_exit), with per-syscall totals."
    source = "syscalls.bpf.c"
    metric = "bpf.syscall.latency"
    prefix = "bpf.syscall"
    what = "syscall latency"
    settings = (_cgroup_setting(), _tgid_setting())
    tables = {"top": "syscalls by calls and time: since enabled and over the last interval"}
    plans = (
        AttachPlan("raw_tracepoint", (ProbeSpec("raw_tracepoint", "sys_enter"),
                                      ProbeSpec("raw_tracepoint", "sys_exit")),
                   {"HS_USE_RAW_TP": 1},
                   raw_args={"sys_enter": ("struct pt_regs *", "long int"),
                             "sys_exit": ("struct pt_regs *", "long int")}),
        AttachPlan("tracepoint", (ProbeSpec("tracepoint", "raw_syscalls:sys_enter"),
                                  ProbeSpec("tracepoint", "raw_syscalls:sys_exit")),
                   {"HS_USE_RAW_TP": 0}),
    )

    def descriptors(self) -> list[MetricDesc]:
        labels = ("syscall",)
        return [
            *super().descriptors(),
            counter("bpf.syscall.calls", COUNT, "system calls completed, per syscall",
                    indom="bpf.syscall", labels=labels),
            counter("bpf.syscall.time", NSEC,
                    "time spent in system calls, per syscall (rate: CPU-seconds per second "
                    "including blocked time)", indom="bpf.syscall", labels=labels),
            counter("bpf.syscall.errors", COUNT, "system calls that returned an error",
                    indom="bpf.syscall", labels=labels),
        ]

    def open(self, run: Run) -> None:
        names: dict[int, str] = {}
        for path in run.ctx.syscall_headers:
            text = read_optional(path)
            if text:
                names = parse_unistd(text)
                if names:
                    break
        run.state["names"] = names
        run.state["snapshots"] = deque(maxlen=2)

    def _name(self, run: Run, nr: int) -> str:
        return run.state["names"].get(nr) or f"syscall_{nr}"

    def _per_syscall(self, run: Run) -> dict[str, tuple[int, int, int]]:
        out: dict[str, tuple[int, int, int]] = {}
        for key, per_cpu in run.loaded.table("per_syscall").items():
            calls = sum(s.calls for s in per_cpu)
            nsec = sum(s.nsec for s in per_cpu)
            errors = sum(s.errors for s in per_cpu)
            name = self._name(run, int(key.value))
            old = out.get(name, (0, 0, 0))
            out[name] = (old[0] + calls, old[1] + nsec, old[2] + errors)
        snaps: deque[tuple[float, dict[str, tuple[int, int, int]]]] = run.state["snapshots"]
        now = time.monotonic()
        if not snaps or now - snaps[-1][0] >= 0.5:
            snaps.append((now, out))
        return out

    def read(self, run: Run) -> Raw:
        raw = super().read(run)
        stats = self._per_syscall(run)
        raw["bpf.syscall.calls"] = {n: v[0] for n, v in stats.items()}
        raw["bpf.syscall.time"] = {n: v[1] for n, v in stats.items()}
        raw["bpf.syscall.errors"] = {n: v[2] for n, v in stats.items()}
        return raw

    def table(self, run: Run, table: str, limit: int) -> list[dict[str, Any]]:
        if table != "top":
            raise KeyError(table)
        total = self._per_syscall(run)
        snaps = run.state["snapshots"]
        base: dict[str, tuple[int, int, int]] = {}
        interval = 0.0
        if len(snaps) == 2:
            (t0, base), (t1, latest) = snaps[0], snaps[1]
            interval = t1 - t0
            total = latest
        rows = []
        for name, (calls, nsec, errors) in total.items():
            b = base.get(name, (0, 0, 0)) if interval else (calls, nsec, errors)
            rows.append({
                "syscall": name,
                "calls": calls,
                "time_ms": round(nsec / 1e6, 3),
                "avg_us": round(nsec / calls / 1e3, 3) if calls else None,
                "errors": errors,
                "interval_s": round(interval, 3),
                "interval_calls": calls - b[0],
                "interval_time_ms": round((nsec - b[1]) / 1e6, 3),
            })
        rows.sort(key=lambda r: (r["interval_calls"], r["calls"]), reverse=True)
        return rows[:limit]


def _rows_setting(default: int) -> IntSetting:
    return IntSetting("rows", "", 10, 10_000, default, "rows kept in memory for the table")


class TcpLife(BpfModule):
    name = "tcplife"
    title = "TCP sessions"
    help = "TCP connections as they close: endpoints, duration, bytes and process."
    source = "tcplife.bpf.c"
    settings = (
        IntSetting("port", "HS_FILTER_PORT", 0, 65535, 0,
                   "only sessions with this local or remote port; 0 = all"),
        _rows_setting(1000),
    )
    tables = {"sessions": "closed TCP sessions, newest first"}
    plans = (AttachPlan("tracepoint", (ProbeSpec("tracepoint", "sock:inet_sock_set_state"),)),)
    optional_offsets = {
        "HS_TCP_BYTES_ACKED_OFF": ("tcp_sock", "bytes_acked"),
        "HS_TCP_BYTES_RECEIVED_OFF": ("tcp_sock", "bytes_received"),
    }

    def descriptors(self) -> list[MetricDesc]:
        return [
            counter("bpf.tcplife.sessions", COUNT, "TCP sessions closed (seen opening)"),
            counter("bpf.tcplife.lost", COUNT,
                    "closed sessions missing from the table (ring buffer full)"),
        ]

    def open(self, run: Run) -> None:
        rows: deque[dict[str, Any]] = deque(maxlen=run.values.get("rows", 1000))
        run.state["rows"] = rows

        def handle(ev: Any) -> None:
            family = int(ev.family)
            rows.append({
                "time": run.wall_from_ktime(ev.end_ns),
                "pid": int(ev.pid),
                "comm": clean_text(ev.comm),
                "family": "ipv4" if family == AF_INET else "ipv6",
                "saddr": format_addr(family, ev.saddr),
                "sport": int(ev.sport),
                "daddr": format_addr(family, ev.daddr),
                "dport": int(ev.dport),
                "tx_bytes": int(ev.tx_bytes) if ev.have_bytes else None,
                "rx_bytes": int(ev.rx_bytes) if ev.have_bytes else None,
                "duration_ms": round((ev.end_ns - ev.start_ns) / 1e6, 3),
            })

        run.loaded.open_ring("events", TcpLifeEvent, handle)

    def read(self, run: Run) -> Raw:
        closed, lost = run.loaded.array_values("stats", 2)
        return {"bpf.tcplife.sessions": {"": closed}, "bpf.tcplife.lost": {"": lost}}

    def table(self, run: Run, table: str, limit: int) -> list[dict[str, Any]]:
        if table != "sessions":
            raise KeyError(table)
        run.loaded.poll()
        rows = list(run.state["rows"])
        return rows[::-1][:limit]


class TcpRetrans(BpfModule):
    name = "tcpretrans"
    title = "TCP retransmits"
    help = "TCP segments retransmitted, counted per connection and state."
    source = "tcpretrans.bpf.c"
    tables = {"flows": "connections that retransmitted, most recent first"}
    plans = (AttachPlan("tracepoint", (ProbeSpec("tracepoint", "tcp:tcp_retransmit_skb"),)),)

    def descriptors(self) -> list[MetricDesc]:
        return [counter("bpf.tcpretrans.retransmits", COUNT, "TCP segments retransmitted")]

    def read(self, run: Run) -> Raw:
        (total,) = run.loaded.array_values("total", 1)
        return {"bpf.tcpretrans.retransmits": {"": total}}

    def table(self, run: Run, table: str, limit: int) -> list[dict[str, Any]]:
        if table != "flows":
            raise KeyError(table)
        rows = []
        for key, value in run.loaded.table("flows").items():
            family = int(key.family)
            rows.append({
                "family": "ipv4" if family == AF_INET else "ipv6",
                "saddr": format_addr(family, key.saddr),
                "sport": int(key.sport),
                "daddr": format_addr(family, key.daddr),
                "dport": int(key.dport),
                "state": TCP_STATES.get(int(key.state), str(int(key.state))),
                "retransmits": int(value.count),
                "last": run.wall_from_ktime(int(value.last_ns)),
            })
        rows.sort(key=lambda r: r["last"], reverse=True)
        return rows[:limit]


class ExecSnoop(BpfModule):
    name = "execsnoop"
    title = "New processes"
    help = "Every successful exec: program, arguments, pid, parent and user."
    source = "execsnoop.bpf.c"
    settings = (
        IntSetting("max_args", "HS_ARGS", 1, 16, 16,
                   "arguments captured per exec (each up to 63 bytes)"),
        _rows_setting(1000),
    )
    tables = {"execs": "processes started, newest first"}
    plans = (
        AttachPlan(
            "tracepoint",
            (ProbeSpec("tracepoint", "sched:sched_process_exec"),
             ProbeSpec("tracepoint", "syscalls:sys_enter_execve")),
            {"HS_WITH_ARGV": 1},
            optional=((ProbeSpec("tracepoint", "syscalls:sys_enter_execveat"),
                       "HS_WITH_EXECVEAT"),),
        ),
        AttachPlan("tracepoint (no argv)",
                   (ProbeSpec("tracepoint", "sched:sched_process_exec"),),
                   {"HS_WITH_ARGV": 0}),
    )
    optional_offsets = {
        "HS_TASK_REAL_PARENT_OFF": ("task_struct", "real_parent"),
        "HS_TASK_TGID_OFF": ("task_struct", "tgid"),
    }

    def descriptors(self) -> list[MetricDesc]:
        return [
            counter("bpf.execsnoop.execs", COUNT, "successful execs (new programs started)"),
            counter("bpf.execsnoop.lost", COUNT,
                    "execs missing from the table (ring buffer full)"),
        ]

    def open(self, run: Run) -> None:
        rows: deque[dict[str, Any]] = deque(maxlen=run.values.get("rows", 1000))
        run.state["rows"] = rows

        def handle(ev: Any) -> None:
            argc = min(int(ev.argc), len(ev.args))
            rows.append({
                "time": run.wall_from_ktime(ev.ts),
                "pid": int(ev.pid),
                "ppid": int(ev.ppid) or None,
                "uid": int(ev.uid),
                "comm": clean_text(ev.comm),
                "filename": clean_text(ev.filename),
                "args": [clean_text(ev.args[i].raw) for i in range(argc)]
                if ev.have_argv else None,
                "args_truncated": bool(ev.truncated),
            })

        run.loaded.open_ring("events", exec_event_struct(run.values.get("max_args", 16)),
                             handle)

    def read(self, run: Run) -> Raw:
        execs, lost = run.loaded.array_values("stats", 2)
        return {"bpf.execsnoop.execs": {"": execs}, "bpf.execsnoop.lost": {"": lost}}

    def table(self, run: Run, table: str, limit: int) -> list[dict[str, Any]]:
        if table != "execs":
            raise KeyError(table)
        run.loaded.poll()
        return list(run.state["rows"])[::-1][:limit]


def all_modules() -> list[BpfModule]:
    """Every module hostscope ships, in the order the dashboard lists them."""
    return [RunqLatency(), BioLatency(), SyscallLatency(), OffCpuTime(), TcpLife(),
            TcpRetrans(), ExecSnoop()]
