"""Host inventory and identity: ``hinv.*``, ``kernel.uname.*`` and ``kernel.all.uptime``.

These values change rarely or never, so the collector runs every 10 s
(:attr:`HostCollector.interval_s`) rather than every tick. That includes
``kernel.all.uptime``: it exists for the header and inventory views, and anything that
needs it to the second computes it from ``kernel.all.boottime`` (cpu collector) and the
sample's timestamp. ``hinv.cpu.clock`` is only a hint of frequency scaling at that
cadence too, which suits /proc/cpuinfo: on x86 the kernel gathers per-CPU frequency
data to print it, so it is one of the dearer procfs files on large hosts.

Facts fixed for a boot (kernel release, version, architecture, CPU model) are read once
and cached; the hostname, machine id, distribution, memory size (ballooning and memory
hot-plug change MemTotal), clocks and uptime are read each collection.

``hinv.ncpu`` is published by the cpu collector and deliberately not here.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from ..collector import Collector, Raw
from ..hostinfo import parse_cpuinfo, parse_uptime, read_os_release
from ..model import (
    MBYTES,
    NONE,
    SEC,
    SINGULAR,
    MetricDesc,
    TimeScale,
    Units,
    ValueType,
    discrete,
    instant,
)
from ..sources import KeptFile, Roots, list_dir, read_optional
from .memory import TokenPicker

#: MHz expressed as PCP does for hinv.cpu.clock: counts per microsecond.
MHZ = Units(time=-1, time_scale=TimeScale.USEC)

#: (metric, /proc/sys/kernel file) of the identity strings fixed for a boot
_BOOT_STRINGS = (
    ("kernel.uname.release", "osrelease"),
    ("kernel.uname.version", "version"),
    ("kernel.uname.sysname", "ostype"),
    ("kernel.uname.machine", "arch"),
)


def _string(name: str, help: str) -> MetricDesc:
    return discrete(name, NONE, help, type=ValueType.STRING)


class HostCollector(Collector):
    """Hardware inventory and identity strings, every 10 s."""

    name = "host"
    interval_s = 10.0

    def __init__(self, roots: Roots) -> None:
        self.roots = roots
        self._sysctl = roots.proc / "sys" / "kernel"
        self._boot: dict[str, str] = {}
        self._model: str | None = None
        self._memtotal = TokenPicker(lambda token: ("MemTotal",) if token == "MemTotal:" else ())
        # procfs files read at each collection, through kept descriptors (an open costs
        # more than the read); /etc files are opened each time, as a package upgrade
        # replaces them by a rename that a kept descriptor would not see.
        self._hostname = KeptFile(self._sysctl / "hostname")
        self._meminfo = KeptFile(roots.proc / "meminfo")
        self._cpuinfo = KeptFile(roots.proc / "cpuinfo")
        self._uptime = KeptFile(roots.proc / "uptime")

    def descriptors(self) -> list[MetricDesc]:
        return [
            discrete("hinv.physmem", MBYTES, "total usable RAM (MemTotal)", type=ValueType.U32),
            instant("hinv.cpu.clock", MHZ, "current clock of each CPU, MHz",
                    indom="kernel.cpu", labels=("cpu",)),
            _string("hinv.cpu.model", "CPU model name"),
            _string("hinv.machineid", "machine id (/etc/machine-id; confidential)"),
            _string("kernel.uname.release", "kernel release (uname -r)"),
            _string("kernel.uname.version", "kernel build version (uname -v)"),
            _string("kernel.uname.sysname", "operating system name (uname -s)"),
            _string("kernel.uname.machine", "hardware architecture (uname -m)"),
            _string("kernel.uname.nodename", "host name (uname -n)"),
            _string("kernel.uname.distro", "distribution (PRETTY_NAME of os-release)"),
            instant("kernel.all.uptime", SEC, "time since boot"),
        ]

    def collect(self) -> Raw:
        raw: Raw = {}
        if len(self._boot) < len(_BOOT_STRINGS):
            self._read_boot_strings()
        for name, value in self._boot.items():
            raw[name] = {SINGULAR: value}
        hostname = _stripped(_text(self._hostname.read_optional()))
        if hostname:
            raw["kernel.uname.nodename"] = {SINGULAR: hostname}
        machine_id = _stripped(read_optional(self.roots.etc / "machine-id"))
        if machine_id:
            raw["hinv.machineid"] = {SINGULAR: machine_id}
        distro = read_os_release(self.roots).get("PRETTY_NAME")
        if distro:
            raw["kernel.uname.distro"] = {SINGULAR: distro}

        meminfo = self._meminfo.read_optional()
        if meminfo is not None:
            memtotal = self._memtotal.pick(meminfo).get("MemTotal")
            if memtotal is not None:
                raw["hinv.physmem"] = {SINGULAR: memtotal // 1024}

        cpuinfo = _text(self._cpuinfo.read_optional())
        clocks: dict[str, float] = {}
        if cpuinfo is not None:
            info = parse_cpuinfo(cpuinfo)
            if info.model:
                self._model = info.model
            clocks = info.mhz
        if not clocks:
            clocks = self._cpufreq_mhz()
        if clocks:
            raw["hinv.cpu.clock"] = dict(clocks)
        if self._model:
            raw["hinv.cpu.model"] = {SINGULAR: self._model}

        uptime = _text(self._uptime.read_optional())
        if uptime:
            # an empty or garbled read gives no value this time, not a failed collector
            with suppress(IndexError, ValueError):
                raw["kernel.all.uptime"] = {SINGULAR: parse_uptime(uptime)}
        return raw

    def close(self) -> None:
        for kept in (self._hostname, self._meminfo, self._cpuinfo, self._uptime):
            kept.close()

    def _read_boot_strings(self) -> None:
        for name, leaf in _BOOT_STRINGS:
            if name in self._boot:
                continue
            value = _stripped(read_optional(self._sysctl / leaf))
            if value is None and name == "kernel.uname.machine":
                # /proc/sys/kernel/arch is 6.1+; the architecture is the same for a
                # host's /proc read from a container, so our own uname is right.
                value = os.uname().machine
            if value:
                self._boot[name] = value

    def _cpufreq_mhz(self) -> dict[str, float]:
        """Current clocks from cpufreq (kHz) where /proc/cpuinfo has none (arm64)."""
        base: Path = self.roots.sys / "devices" / "system" / "cpu"
        out: dict[str, float] = {}
        for entry in list_dir(base):
            if not (entry.startswith("cpu") and entry[3:].isdigit()):
                continue
            khz = _stripped(read_optional(base / entry / "cpufreq" / "scaling_cur_freq"))
            if khz and khz.isdigit():
                out[entry] = int(khz) / 1000.0
        return out


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def _stripped(text: str | None) -> str | None:
    if text is None:
        return None
    return text.strip() or None
