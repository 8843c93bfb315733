"""Who this host is and what it lets hostscope do: quick, read-only facts.

:func:`read_host_identity` names the host for the dashboard header and for people
comparing hosts (hostname, kernel, CPU, memory, boot time, distribution).
:func:`detect_capabilities` answers "why is this panel empty?" before anyone asks: for
PSI, cgroups, BPF, perf, tracefs and kprobes it says whether the feature is usable by
*this* process and, when it is not, a reason a person can act on. ``hostscope doctor``
prints it; collectors and BPF modules use it to decide what to register.

Everything is read through :class:`~hostscope.metrics.sources.Roots`, so both run over
captured trees in tests and over a host's ``/proc`` mounted into a container. Privileges
are read from ``<proc>/self/status`` (effective uid and capability set) rather than
``os.geteuid()``: root in a container without ``CAP_SYS_ADMIN`` or ``CAP_BPF`` cannot load
BPF programs, and the capability set is what the kernel checks.

The pure ``parse_*`` functions here are shared with
:class:`~hostscope.metrics.collectors.host.HostCollector`.
"""

from __future__ import annotations

import math
import shlex
import zlib
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from .collectors.memory import parse_meminfo
from .collectors.psi import probe_psi
from .sources import Roots, SourceUnavailable, list_dir, read_bytes, read_optional

# Capability bit numbers (include/uapi/linux/capability.h).
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

#: /proc/cpuinfo keys that name the CPU model, by architecture, in order of preference:
#: x86 and recent arm32 ("model name"), old arm32 ("Processor"), MIPS ("cpu model"),
#: POWER ("cpu"). arm64 prints no model name at all (only implementer/part numbers).
_MODEL_KEYS = ("model name", "Processor", "cpu model", "cpu")
#: Keys that carry the current clock: x86 and MIPS ("cpu MHz"), POWER ("clock", "...MHz").
_CLOCK_KEYS = ("cpu MHz", "clock")


@dataclass(slots=True)
class CpuInfo:
    """What /proc/cpuinfo says: model name, per-CPU clock (MHz) and CPU count."""

    model: str | None = None
    #: "cpu0" -> MHz, for CPUs whose block has a clock line
    mhz: dict[str, float] = field(default_factory=dict)
    count: int = 0


def parse_cpuinfo(text: str) -> CpuInfo:
    """Parse /proc/cpuinfo: one ``key<TAB>: value`` block per logical CPU.

    Blocks start with ``processor : N``; a clock line belongs to the CPU of the last
    ``processor`` line seen, so its instance name (``cpuN``) matches ``/proc/stat``'s.
    """
    info = CpuInfo()
    models: dict[str, str] = {}
    cpu: str | None = None
    for line in text.split("\n"):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "processor":
            number = value.strip()
            if number.isdigit():
                cpu = f"cpu{number}"
                info.count += 1
            continue
        if key in _CLOCK_KEYS and cpu is not None:
            # "clock : unknown" on some platforms: no value for that CPU
            with suppress(ValueError):
                info.mhz[cpu] = float(value.strip().removesuffix("MHz"))
        elif key in _MODEL_KEYS and key not in models:
            models[key] = value.strip()
    info.model = next((models[k] for k in _MODEL_KEYS if models.get(k)), None)
    return info


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): ``KEY=value`` lines with shell-style quoting; comments ignored.

    Plain and simply quoted values (nearly all of them) are unquoted directly; values with
    escapes or mixed quoting go through :mod:`shlex`, which is slow but exact.
    """
    out: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier():
            continue
        out[key] = _unquote(value)
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        if not any(c in inner for c in "\"'\\$`"):
            return inner
    elif not any(c in value for c in "\"'\\$` \t"):
        return value
    try:
        return " ".join(shlex.split(value))
    except ValueError:
        return value.strip("\"'")  # unbalanced quote: keep the text, not the quotes


def parse_uptime(text: str) -> float:
    """Seconds since boot from /proc/uptime (``"401.21 723.05"``: uptime, idle).

    Raises ValueError (only) for text that is not an uptime, so callers need one except.
    """
    parts = text.split(maxsplit=1)
    value = float(parts[0]) if parts else math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a /proc/uptime: {text[:40]!r}")
    return value


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/mounts (fstab(5) layout, octal escapes decoded)."""

    source: str
    path: str
    fstype: str
    options: tuple[str, ...]


def _unescape(field_text: str) -> str:
    # The kernel escapes space, tab, newline and backslash as \040, \011, \012, \134.
    if "\\" not in field_text:
        return field_text
    return (field_text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def parse_mounts(text: str) -> list[Mount]:
    """Parse /proc/mounts; lines with fewer than four fields are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mounts.append(Mount(_unescape(parts[0]), _unescape(parts[1]), parts[2],
                            tuple(parts[3].split(","))))
    return mounts


def parse_stat_identity(text: str) -> tuple[int, int | None]:
    """(online CPUs, boot time) from /proc/stat: ``cpuN`` lines and ``btime``."""
    ncpu = 0
    btime: int | None = None
    for line in text.split("\n"):
        if line.startswith("cpu") and line[3:4].isdigit():
            ncpu += 1
        elif line.startswith("btime "):
            btime = _int_or_none(line[6:])
    return ncpu, btime


@dataclass(frozen=True, slots=True)
class Privileges:
    """Effective uid and capabilities of the reading process (from /proc/self/status)."""

    euid: int | None
    cap_eff: int | None

    @property
    def euid_root(self) -> bool:
        return self.euid == 0

    def has(self, cap: int) -> bool:
        """Whether the effective set holds ``cap``; uid 0 counts when caps are unknown."""
        if self.cap_eff is None:
            return self.euid_root
        return bool(self.cap_eff >> cap & 1)

    def names(self) -> list[str]:
        known = (("CAP_SYS_ADMIN", CAP_SYS_ADMIN), ("CAP_PERFMON", CAP_PERFMON),
                 ("CAP_BPF", CAP_BPF))
        return [name for name, bit in known if self.has(bit)]


def parse_privileges(text: str | None) -> Privileges:
    """The ``Uid:`` (real, effective, saved, fs) and ``CapEff:`` lines of a status file."""
    euid: int | None = None
    cap_eff: int | None = None
    for line in (text or "").splitlines():
        if line.startswith("Uid:"):
            ids = line.split()
            if len(ids) >= 3 and ids[2].isdigit():
                euid = int(ids[2])
        elif line.startswith("CapEff:"):
            try:
                cap_eff = int(line.split()[1], 16)
            except (IndexError, ValueError):
                cap_eff = None
    return Privileges(euid, cap_eff)


def _uptime_or_none(text: str | None) -> float | None:
    # A garbled /proc/uptime (a bad --proc-root) must not stop the daemon from starting.
    try:
        return parse_uptime(text) if text else None
    except ValueError:
        return None


def _first_line(text: str | None) -> str | None:
    if text is None:
        return None
    value = text.strip()
    return value or None


def _int_or_none(text: str | None) -> int | None:
    value = _first_line(text)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def read_os_release(roots: Roots) -> dict[str, str]:
    """/etc/os-release, else /usr/lib/os-release next to the etc root (os-release(5)).

    On most systems /etc/os-release is a relative symlink to ../usr/lib/os-release, which
    also resolves correctly when a host's /etc and /usr are mounted side by side.
    """
    text = read_optional(roots.etc / "os-release")
    if text is None:
        text = read_optional(roots.etc.parent / "usr" / "lib" / "os-release")
    return parse_os_release(text) if text is not None else {}


def read_host_identity(roots: Roots) -> dict[str, Any]:
    """Identity of the host for display; any fact that cannot be read is None.

    ``hostname`` is the UTS name of the reading process's namespace (what ``hostname``
    prints there). ``machine_id`` is confidential per machine-id(5): show it to
    authenticated users only.
    """
    proc = roots.proc
    sysctl = proc / "sys" / "kernel"
    cpuinfo = read_optional(proc / "cpuinfo")
    meminfo = read_optional(proc / "meminfo")
    uptime = read_optional(proc / "uptime")
    stat = read_optional(proc / "stat")
    ncpu, boot_time = parse_stat_identity(stat) if stat is not None else (0, None)
    cpu = parse_cpuinfo(cpuinfo) if cpuinfo is not None else CpuInfo()
    mem_kb = parse_meminfo(meminfo).get("MemTotal") if meminfo is not None else None
    return {
        "hostname": _first_line(read_optional(sysctl / "hostname")),
        "kernel_release": _first_line(read_optional(sysctl / "osrelease")),
        "kernel_version": _first_line(read_optional(sysctl / "version")),
        "arch": _first_line(read_optional(sysctl / "arch")),
        "machine_id": _first_line(read_optional(roots.etc / "machine-id")),
        "cpu_model": cpu.model,
        "ncpu": ncpu or cpu.count or None,
        "memory_bytes": mem_kb * 1024 if mem_kb is not None else None,
        "boot_time": boot_time,
        "uptime_s": _uptime_or_none(uptime),
        "os_pretty_name": read_os_release(roots).get("PRETTY_NAME"),
    }


#: Generic and cgroup-v1 mount options that are not controller (hierarchy) names.
_MOUNT_FLAGS = frozenset({
    "rw", "ro", "relatime", "noatime", "nodiratime", "strictatime", "lazytime", "nosuid",
    "nodev", "noexec", "sync", "dirsync", "xattr", "noprefix", "clone_children",
    "cpuset_v2_mode", "nsdelegate", "favordynmods", "memory_recursiveprot",
    "memory_localevents", "memory_hugetlb_accounting", "pids_localevents",
})


def detect_cgroup(mounts: list[Mount]) -> dict[str, Any]:
    """Cgroup layout from the mount table.

    ``v2``: cgroup2 at /sys/fs/cgroup (unified). ``hybrid``: v1 hierarchies mounted and
    a cgroup2 tree beside them (systemd's /sys/fs/cgroup/unified). ``v1``: v1 only.
    Also returns where the v2 tree is and which v1 hierarchies (controllers, or
    ``name=`` for named ones) are mounted, since the cgroup collector needs both. The
    mount table is the reading process's: in a container, the container's view.
    """
    v2_paths = [m.path for m in mounts if m.fstype == "cgroup2"]
    v1_controllers = sorted({
        opt for m in mounts if m.fstype == "cgroup" for opt in m.options
        if opt not in _MOUNT_FLAGS and ("=" not in opt or opt.startswith("name="))
    })
    v2_path = "/sys/fs/cgroup" if "/sys/fs/cgroup" in v2_paths else (v2_paths or [None])[0]
    if v2_path == "/sys/fs/cgroup":
        version, reason = "v2", None
    elif v1_controllers and v2_path:
        version, reason = "hybrid", None
    elif v1_controllers:
        version, reason = "v1", None
    elif v2_path:
        version, reason = "v2", None
    else:
        version, reason = None, "no cgroup or cgroup2 filesystem is mounted"
    return {"version": version, "reason": reason, "v2_path": v2_path,
            "v1_controllers": v1_controllers}


def _kprobes(roots: Roots) -> dict[str, Any]:
    for events_dir in (roots.sys / "kernel" / "tracing",
                       roots.sys / "kernel" / "debug" / "tracing"):
        if "kprobe_events" in list_dir(events_dir):
            return {"available": True, "reason": None, "source": str(events_dir)}
    try:
        # one gzip member: zlib reads it directly (wbits 16 + 15), without gzip's module
        config = zlib.decompress(read_bytes(roots.proc / "config.gz"), 16 + zlib.MAX_WBITS)
    except SourceUnavailable:
        return {"available": False, "source": None,
                "reason": "cannot tell: tracefs is not mounted and /proc/config.gz is "
                          "not readable"}
    except zlib.error:
        return {"available": False, "source": None,
                "reason": "cannot tell: /proc/config.gz is corrupt"}
    if b"\nCONFIG_KPROBES=y\n" in b"\n" + config:
        return {"available": True, "reason": None, "source": "/proc/config.gz"}
    return {"available": False, "source": "/proc/config.gz",
            "reason": "the kernel is built without CONFIG_KPROBES: tools that attach "
                      "kprobes cannot run; tracepoint-based ones can"}


def _bpf(roots: Roots, privs: Privileges) -> dict[str, Any]:
    setting = _int_or_none(read_optional(
        roots.proc / "sys" / "kernel" / "unprivileged_bpf_disabled"))
    btf = "vmlinux" in list_dir(roots.sys / "kernel" / "btf")
    out: dict[str, Any] = {"available": False, "reason": None, "btf": btf,
                           "unprivileged_bpf_disabled": setting,
                           "euid_root": privs.euid_root}
    if setting is None:
        out["reason"] = ("the kernel has no bpf() syscall (no "
                         "/proc/sys/kernel/unprivileged_bpf_disabled: CONFIG_BPF_SYSCALL off)")
    elif privs.has(CAP_SYS_ADMIN) or (privs.has(CAP_BPF) and privs.has(CAP_PERFMON)):
        out["available"] = True
    else:
        # Even with unprivileged BPF allowed (0), only socket filters load without caps;
        # tracing programs always need CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN).
        out["reason"] = (f"kernel.unprivileged_bpf_disabled={setting} and this process lacks "
                         "CAP_BPF+CAP_PERFMON: run as root or grant CAP_BPF and CAP_PERFMON")
    return out


def _perf(roots: Roots, privs: Privileges) -> dict[str, Any]:
    paranoid = _int_or_none(read_optional(
        roots.proc / "sys" / "kernel" / "perf_event_paranoid"))
    out: dict[str, Any] = {"available": False, "reason": None,
                           "perf_event_paranoid": paranoid}
    if paranoid is None:
        out["reason"] = ("the kernel has no perf events (no "
                         "/proc/sys/kernel/perf_event_paranoid: CONFIG_PERF_EVENTS off)")
    elif privs.has(CAP_PERFMON) or privs.has(CAP_SYS_ADMIN):
        out["available"] = True
    elif paranoid <= 0:
        # <= 0 allows system-wide (per-CPU) events and kernel stacks to everyone.
        out["available"] = True
    else:
        who = "not root" if not privs.euid_root else "root without CAP_PERFMON"
        out["reason"] = (f"kernel.perf_event_paranoid={paranoid} and {who}: run as root or "
                         "grant CAP_PERFMON (system-wide profiling needs it above 0)")
    return out


def _tracefs(mounts: list[Mount]) -> dict[str, Any]:
    paths = [m.path for m in mounts if m.fstype == "tracefs"]
    if paths:
        path = "/sys/kernel/tracing" if "/sys/kernel/tracing" in paths else paths[0]
        return {"mounted": True, "path": path, "reason": None}
    return {"mounted": False, "path": None,
            "reason": "tracefs is not mounted: as root, mount -t tracefs nodev "
                      "/sys/kernel/tracing"}


def detect_capabilities(roots: Roots) -> dict[str, Any]:
    """What this host and this process can do, each with a reason when it cannot.

    Read-only and quick (one pass over a few small files; /proc/config.gz is only
    decompressed when tracefs does not already answer the kprobes question).
    """
    mounts_text = read_optional(roots.proc / "mounts")
    mounts = parse_mounts(mounts_text) if mounts_text is not None else []
    privs = parse_privileges(read_optional(roots.proc / "self" / "status"))
    psi = probe_psi(roots)
    cgroup = detect_cgroup(mounts)
    if mounts_text is None:
        cgroup["reason"] = f"cannot read {roots.proc / 'mounts'}"
    return {
        "psi": {"available": psi.available, "reason": psi.reason},
        "cgroup": cgroup,
        "bpf": _bpf(roots, privs),
        "perf": _perf(roots, privs),
        "tracefs": _tracefs(mounts),
        "kprobes": _kprobes(roots),
        "privileges": {"euid": privs.euid, "euid_root": privs.euid_root,
                       "capabilities": privs.names()},
    }
