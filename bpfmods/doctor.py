"""Readiness checks for BPF and perf: what ``hostscope doctor`` prints.

Vector's users mostly met its BPF support as flame graphs and heat maps that silently did
not appear; bcc's most reported failure is missing kernel headers. Each check here names
the problem, the evidence, and a command that fixes it. The daemon uses the same
:class:`~hostscope.bpfmods.host.HostProbe` and manager availability, so the dashboard greys
out exactly the modules this report says cannot run, for the same reason.

``required`` checks are the ones without which no BPF module can run; the exit status of
:func:`doctor_main` is 0 only when all of them pass. Optional checks (kprobes, BTF, perf,
individual modules) degrade features and are reported, not fatal.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import platform
import shutil
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hostscope.metrics.sources import Roots

from .host import HostProbe
from .manager import BpfManager
from .profiler import Profiler

#: perf_event_open(2) syscall numbers; other architectures skip the live check.
_PERF_EVENT_OPEN_NR = {"x86_64": 298, "aarch64": 241, "ppc64le": 319, "s390x": 331}
_PERF_TYPE_SOFTWARE = 0x1
_PERF_COUNT_SW_CPU_CLOCK = 0
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_PERF_ATTR_SIZE = 128  # PERF_ATTR_SIZE_VER7; older kernels accept larger sizes if zeroed


@dataclass(frozen=True, slots=True)
class Check:
    id: str
    ok: bool
    title: str
    detail: str
    fix: str
    required: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def try_perf_event_open() -> tuple[bool, str]:
    """Open (then close) a system-wide cpu-clock event on CPU 0, as a profiler would."""
    nr = _PERF_EVENT_OPEN_NR.get(platform.machine())
    if nr is None:
        return False, f"no perf_event_open syscall number known for {platform.machine()}"
    attr = bytearray(_PERF_ATTR_SIZE)
    struct.pack_into("<IIQ", attr, 0, _PERF_TYPE_SOFTWARE, _PERF_ATTR_SIZE,
                     _PERF_COUNT_SW_CPU_CLOCK)
    struct.pack_into("<Q", attr, 40, 1)  # flags: disabled=1, so nothing is counted
    buf = (ct.c_char * _PERF_ATTR_SIZE).from_buffer(attr)
    libc = ct.CDLL(None, use_errno=True)
    libc.syscall.restype = ct.c_long
    fd = libc.syscall(ct.c_long(nr), buf, ct.c_int(-1), ct.c_int(0), ct.c_int(-1),
                      ct.c_ulong(_PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ct.get_errno()
        return False, f"perf_event_open(cpu-clock, all processes, CPU 0) failed: " \
                      f"{os.strerror(err)}"
    os.close(fd)
    return True, "perf_event_open(cpu-clock, all processes, CPU 0) works"


def run_checks(
    roots: Roots | None = None,
    *,
    lib_modules: Path = Path("/lib/modules"),
    release: str | None = None,
    host: HostProbe | None = None,
    venv: str | None = None,
    live_perf: bool = True,
    perf_binary: str | None = None,
) -> list[Check]:
    """Every readiness check, required ones first. ``venv`` only shapes fix commands;
    ``perf_binary`` is the perf tool to report ("" = none; None = look it up on PATH)."""
    host = host or HostProbe(roots or Roots(), lib_modules=lib_modules, release=release)
    venv = venv or sys.prefix
    installer = f"bpfmods/install-deps.sh {venv}"
    caps = host.capabilities()
    checks: list[Check] = []

    privileged, why = host.privileges()
    checks.append(Check(
        "privileges", privileged, "Privileges to load BPF programs",
        why if privileged else f"{why} (kernel.unprivileged_bpf_disabled="
        f"{caps['bpf'].get('unprivileged_bpf_disabled')})",
        "" if privileged else "run hostscope as root, or under systemd with "
        "AmbientCapabilities=CAP_BPF CAP_PERFMON"))

    # A real import: the doctor is a short-lived command, and a package that is found
    # but whose libbcc.so does not load must fail here, not at the first enable.
    bcc_ok, bcc_detail = host.import_bcc()
    if bcc_ok:
        bcc_fix = ""
    elif host.bcc_dir.is_dir():
        bcc_detail += (f"; {host.bcc_dir} exists (python3-bpfcc is installed) but this "
                       f"interpreter ({sys.executable}) does not see Debian's dist-packages")
        bcc_fix = (f"{installer}  (adds a .pth to the venv exposing only the bcc package; "
                   "bcc is not on PyPI)")
    else:
        bcc_fix = f"apt-get install python3-bpfcc && {installer}"
    checks.append(Check("bcc", bcc_ok, "bcc Python bindings importable", bcc_detail, bcc_fix))

    headers = host.headers()
    checks.append(Check(
        "kernel_headers", headers.present, "Kernel headers for bcc's compiler",
        headers.detail,
        "" if headers.present else
        f"apt-get install linux-headers-$(uname -r) if your distribution has it; otherwise "
        f"{installer} installs linux-headers-amd64 and links {headers.build} and "
        f"{headers.build.parent / 'source'} to it (harmless for hostscope's tracepoint "
        "programs, which take arguments from tracefs and struct offsets from BTF)"))

    tracefs = host.tracefs()
    checks.append(Check(
        "tracefs", tracefs is not None, "tracefs mounted",
        f"events under {tracefs}/events" if tracefs else
        "no tracefs at " + " or ".join(str(p) for p in host.tracefs_candidates()),
        "" if tracefs else "mount -t tracefs nodev /sys/kernel/tracing  (to persist: "
        "'tracefs /sys/kernel/tracing tracefs defaults 0 0' in /etc/fstab)"))

    btf = host.btf()
    checks.append(Check(
        "btf", btf is not None, "Kernel BTF (/sys/kernel/btf/vmlinux)",
        "present: raw tracepoints are used, and struct fields (TCP bytes, parent pid) are "
        "read at the running kernel's offsets" if btf is not None else
        f"{host.btf_error()}: modules fall back to tracepoints; tcplife reports no bytes "
        "and execsnoop no parent pid",
        "" if btf is not None else "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        required=False))

    kprobes = caps["kprobes"]
    checks.append(Check(
        "kprobes", bool(kprobes["available"]), "kprobes",
        "available" if kprobes["available"] else
        f"{kprobes['reason']}. Not needed: every hostscope module attaches to "
        "tracepoints or raw tracepoints",
        "" if kprobes["available"] else "none needed (CONFIG_KPROBES=y would enable "
        "kprobe-based bcc tools outside hostscope)",
        required=False))

    perf = caps["perf"]
    if live_perf:
        perf_ok, perf_detail = try_perf_event_open()
    else:
        perf_ok, perf_detail = bool(perf["available"]), str(perf["reason"] or "usable")
    checks.append(Check(
        "perf_events", perf_ok, "perf events for profiling (flame graphs)",
        f"{perf_detail}; kernel.perf_event_paranoid={perf.get('perf_event_paranoid')}",
        "" if perf_ok else "run as root or grant CAP_PERFMON; or sysctl "
        "kernel.perf_event_paranoid=-1 (less safe: lets every user profile the system)",
        required=False))

    perf_tool = shutil.which("perf") if perf_binary is None else perf_binary or None
    checks.append(Check(
        "perf_tool", perf_tool is not None, "perf tool (CPU profile fallback)",
        f"{perf_tool}: CPU profiles fall back to perf record when bcc cannot run"
        if perf_tool else "perf is not installed: CPU profiles need bcc",
        "" if perf_tool else f"apt-get install linux-perf  (or {installer})",
        required=False))
    readiness = Profiler(host.roots, host, perf_binary=perf_tool or "").readiness()
    for kind, title in (("cpu", "CPU profiles (flame graphs)"),
                        ("offcpu", "Off-CPU profiles (blocked time)")):
        ready = readiness[kind]
        checks.append(Check(
            f"profiling.{kind}", bool(ready["available"]), title,
            f"captured with {ready['method']}" if ready["available"] else str(ready["reason"]),
            "" if ready["available"] else f"fix the checks above ({installer})",
            required=False))

    manager = BpfManager(host)
    for module in manager.modules():
        available, reason, attach = manager.availability(module.name)
        res = manager.resolution(module.name) if available else None
        if available and res is not None:
            detail = f"attaches via {attach}"
            if res.rejected:
                detail += " (" + "; ".join(f"{n} unusable: {w}" for n, w in res.rejected) + ")"
            if res.notes:
                detail += "; degraded: " + "; ".join(res.notes)
        else:
            detail = reason
        checks.append(Check(
            f"module.{module.name}", available, f"Module {module.name}: {module.title}",
            detail, "" if available else _module_fix(reason, installer), required=False))
    return checks


def _module_fix(reason: str, installer: str) -> str:
    if "tracefs" in reason:
        return "mount -t tracefs nodev /sys/kernel/tracing"
    if "missing from" in reason:
        return "a kernel with this tracepoint (CONFIG_FTRACE and the subsystem enabled)"
    return f"fix the required checks above ({installer})"


def format_report(checks: list[Check], release: str) -> str:
    lines = [f"hostscope doctor: BPF and perf readiness on Linux {release}", ""]
    for check in checks:
        mark = "ok" if check.ok else ("FAIL" if check.required else "warn")
        lines.append(f"  [{mark:>4}] {check.title}")
        lines.append(f"         {check.detail}")
        if check.fix and not check.ok:
            lines.append(f"         fix: {check.fix}")
    failed = [c.id for c in checks if c.required and not c.ok]
    lines.append("")
    lines.append("ready: BPF modules can run" if not failed else
                 f"NOT ready: {', '.join(failed)} must be fixed first")
    return "\n".join(lines)


def doctor_main(argv: list[str] | None = None) -> int:
    """``hostscope doctor [--json]``: 0 if every required check passes, else 1."""
    parser = argparse.ArgumentParser(prog="hostscope doctor",
                                     description="Check what hostscope's BPF modules need.")
    parser.add_argument("--json", action="store_true", help="print checks as JSON")
    args = parser.parse_args(argv)
    host = HostProbe()
    checks = run_checks(host=host)
    ready = all(c.ok for c in checks if c.required)
    if args.json:
        print(json.dumps({"ready": ready, "kernel": host.release,
                          "checks": [c.to_json() for c in checks]}, indent=2))
    else:
        print(format_report(checks, host.release))
    return 0 if ready else 1
