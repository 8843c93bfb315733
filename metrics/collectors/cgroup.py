"""Container and service (cgroup) metrics, and readable container names.

Why cgroups: a container, a Kubernetes pod and a systemd service are all cgroups, and the
kernel already accounts CPU, memory, I/O and pressure per cgroup. Reading those files is
far cheaper than summing per-process figures, and includes processes that came and went
between samples.

Hierarchies. Three layouts exist in the wild and this collector reads all of them:

* pure cgroup v2: the unified hierarchy mounted at ``sys/fs/cgroup``;
* hybrid (this development machine, older systemd hosts): v2 at ``sys/fs/cgroup/unified``
  (often with few or no controllers enabled) plus v1 controllers at ``sys/fs/cgroup/<ctrl>``;
* pure v1: only per-controller hierarchies (``cpuacct``, ``memory``, ``blkio``, ``pids``, and
  ``cpu`` for throttling; ``cpu,cpuacct`` combined mounts are found through their symlinks).

An instance is a cgroup path relative to its hierarchy root (``/system.slice/nginx.service``).
The same path can exist in several hierarchies; its metrics are merged, v2 files winning
over their v1 equivalents, so one instance carries everything known about that cgroup.

Which cgroups are emitted (a deep tree would otherwise flood the dashboard and the history):

1. the root ``/`` (host totals as the cgroup layer sees them);
2. every direct child of the root (``/system.slice``, ``/docker``, ``/kubepods.slice``, ...);
3. under ``system.slice``, ``user.slice`` and ``machine.slice``: cgroups at most two levels
   below the slice (``/system.slice/nginx.service``,
   ``/user.slice/user-1000.slice/session-3.scope``);
4. containers and pods anywhere (docker, containerd/CRI, CRI-O, podman, LXC, systemd-machined
   machines, Kubernetes pods), found by walking the tree. The walk does not descend below a
   container (its inner cgroups are the container's business), but does descend below a
   Kubernetes pod to find the pod's containers.

The walk is bounded by ``max_depth`` and the output by ``max_cgroups``; the tree is
re-walked every ``rescan_s`` seconds and the known set read in between.

Names. :func:`container_name` turns a path into what a person recognises (``docker:ab12...``,
``k8s:<pod uid>``, ``nginx.service``). Docker containers are named by id only: resolving
names would need the docker socket, which is root-equivalent access hostscope does not take.

Versions. ``cgroup.version`` says per cgroup whether the v2 hierarchy has it (``v2``) or
only v1 hierarchies do (``v1``: on hybrid hosts, e.g. containers of a cgroupfs-driven
docker). Cgroup filters (BPF modules' ``cgroup`` setting, profiles) take v2 paths only, so
the dashboard offers only ``v2`` cgroups there. Known from the walk: no extra reads.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..collector import Collector, Derivation, Raw, ratio
from ..model import (
    BYTES,
    COUNT,
    NONE,
    USEC,
    UTILIZATION,
    MetricDesc,
    Units,
    ValueType,
    counter,
    discrete,
    instant,
)
from ..sources import Roots, translate

INDOM = "cgroup"
_LABELS = ("cgroup",)

#: v1 memory limits at or above this are the kernel's "unlimited" (PAGE_COUNTER_MAX pages).
UNLIMITED_V1 = 1 << 60

_HEX = frozenset("0123456789abcdef")
_SYSTEMD_SLICES = ("system.slice", "user.slice", "machine.slice")


# -- names --------------------------------------------------------------------------


def _is_hex_id(text: str) -> bool:
    """A container id: 64 lower-case hex digits (docker, containerd, CRI-O, podman)."""
    return len(text) == 64 and set(text) <= _HEX


def _strip(comp: str, prefix: str, suffix: str) -> str | None:
    if comp.startswith(prefix) and comp.endswith(suffix):
        return comp[len(prefix): len(comp) - len(suffix)]
    return None


def systemd_unescape(text: str) -> str:
    r"""Undo systemd's ``\xNN`` escaping in unit names (``qemu\x2d1`` -> ``qemu-1``)."""
    if "\\x" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("\\x", i) and i + 4 <= len(text):
            try:
                out.append(chr(int(text[i + 2: i + 4], 16)))
                i += 4
                continue
            except ValueError:
                pass
        out.append(text[i])
        i += 1
    return "".join(out)


def _container_component(parent: str, comp: str) -> tuple[str, str] | None:
    """(kind, id) if the path component ``comp`` (below ``parent``) is a container or pod.

    Kinds: ``docker``, ``k8s`` (CRI runtimes), ``containerd`` (nerdctl), ``podman``,
    ``lxc``, ``machine``, ``k8s-pod`` and ``container`` (a bare 64-hex id of a runtime not
    recognised from its parent). :func:`container_of` turns docker, containerd and
    unknown-runtime ids below ``kubepods`` into ``k8s``.
    """
    for prefix, kind in (
        ("docker-", "docker"),
        ("cri-containerd-", "k8s"),
        ("crio-conmon-", "k8s"),
        ("crio-", "k8s"),
        ("libpod-conmon-", "podman"),
        ("libpod-", "podman"),
        ("nerdctl-", "containerd"),
    ):
        ident = _strip(comp, prefix, ".scope")
        if ident is not None and _is_hex_id(ident):
            return kind, ident[:12]
    if _is_hex_id(comp):
        # cgroupfs drivers: /docker/<id>, /kubepods/burstable/pod<uid>/<id>, /libpod_parent/..
        if parent in ("docker", "moby"):
            return "docker", comp[:12]
        if parent.startswith("libpod"):
            return "podman", comp[:12]
        return "container", comp[:12]
    pod = _strip(comp, "kubepods", ".slice")
    if pod is not None and "-pod" in pod:
        # systemd driver: kubepods-burstable-pod<uid, '-' escaped as '_'>.slice
        return "k8s-pod", pod.rsplit("-pod", 1)[1].replace("_", "-")
    if (
        comp.startswith("pod")
        and len(comp) > 3
        and (parent == "kubepods" or parent in ("burstable", "besteffort"))
    ):
        # cgroupfs driver: /kubepods/pod<uid> (guaranteed) or /kubepods/<qos>/pod<uid>
        return "k8s-pod", comp[3:]
    if parent in ("lxc", "lxc.payload"):
        return "lxc", comp
    for prefix in ("lxc.payload.", "lxc.monitor."):
        if comp.startswith(prefix) and len(comp) > len(prefix):
            return "lxc", comp[len(prefix):]
    if parent == "machine.slice":
        machine = _strip(comp, "machine-", ".scope")
        if machine is None:
            machine = _strip(comp, "systemd-nspawn@", ".service")
        if machine:
            return "machine", systemd_unescape(machine)
    return None


def container_of(path: str) -> tuple[str, str] | None:
    """(kind, id) of the innermost container or pod that contains cgroup ``path``, or None.

    Kinds: ``docker``, ``k8s`` (any runtime below ``kubepods``, CRI scopes anywhere, and
    pods, whose id is the pod uid), ``containerd``, ``podman``, ``lxc``, ``machine`` and
    ``container`` (a runtime this function does not know).
    """
    comps = [c for c in path.split("/") if c]
    in_k8s = any(c.startswith("kubepods") for c in comps)
    for i in range(len(comps) - 1, -1, -1):
        found = _container_component(comps[i - 1] if i else "", comps[i])
        if found is None:
            continue
        kind, ident = found
        if kind == "k8s-pod" or (in_k8s and kind in ("docker", "containerd", "container")):
            return "k8s", ident
        return kind, ident
    return None


def container_name(cgroup_path: str) -> str:
    """A readable name for the container, pod or systemd unit a cgroup path belongs to.

    ``docker-<id>.scope`` and ``/docker/<id>`` -> ``docker:<id12>``; ``cri-containerd-<id>``,
    ``crio-<id>`` and anything under ``kubepods`` -> ``k8s:<container id12>`` or
    ``k8s:<pod uid>`` for the pod itself; ``libpod-<id>.scope`` -> ``podman:<id12>``;
    ``/lxc/<name>`` and ``lxc.payload.<name>`` -> ``lxc:<name>``; systemd-machined scopes
    -> ``machine:<name>``. Otherwise the innermost systemd unit (``nginx.service``,
    ``session-3.scope``), else the innermost slice. ``/`` is ``""``. A layout this function
    does not recognise is returned as the path itself, so nothing is hidden or misnamed.
    """
    comps = [c for c in cgroup_path.split("/") if c]
    if not comps:
        return ""
    found = container_of(cgroup_path)
    if found is not None:
        return f"{found[0]}:{found[1]}"
    for comp in reversed(comps):
        if comp.endswith((".service", ".scope")):
            return comp
    for comp in reversed(comps):
        if comp.endswith(".slice") and comp != "-.slice":
            return comp
    return cgroup_path if cgroup_path.startswith("/") else "/" + cgroup_path


def container_matches(name: str | None, wanted: str) -> bool:
    """Whether a process or cgroup named ``name`` belongs to the container ``wanted``.

    Readable names (``docker:ab12``, ``nginx.service``) match exactly. Names that are
    raw cgroup paths (layouts :func:`container_name` does not recognise) also match
    below themselves, so filtering on the cgroup ``/process_api`` keeps the processes
    whose own cgroup is ``/process_api/<id>``: the cgroup charts and the process table
    then agree on one filter value.
    """
    if name is None:
        return False
    if name == wanted:
        return True
    return wanted.startswith("/") and name.startswith(wanted.rstrip("/") + "/")


def parse_proc_cgroup(text: str) -> str:
    """The most useful cgroup path of a process from ``/proc/PID/cgroup``.

    Lines are ``hierarchy-id:controllers:path``. The v2 line (``0::path``) wins when it
    is not the root; on hybrid hosts whose v2 tree is unused, the v1 ``name=systemd``
    path (which mirrors systemd units), then the first other non-root v1 path.
    """
    v2 = systemd = other = None
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if not sep or not path:
            continue
        if hier == "0" and not controllers:
            v2 = path
        elif controllers == "name=systemd":
            systemd = path
        elif other is None and path != "/":
            other = path
    for path in (v2, systemd, other):
        if path and path != "/":
            return path
    return "/"


# -- parsers --------------------------------------------------------------------------


def parse_flat_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (cpu.stat, v1 cpu.stat, cpuacct.stat) -> dict of ints."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def _int(text: str) -> int | None:
    """An integer file or field, or None when it is empty or garbled (truncated read)."""
    try:
        return int(text)
    except ValueError:
        return None


def parse_limit_v2(text: str) -> int | None:
    """memory.max: bytes, or None for ``max`` (no limit)."""
    return None if text.strip() == "max" else _int(text)


def parse_limit_v1(text: str) -> int | None:
    """memory.limit_in_bytes: bytes, or None for the huge 'unlimited' value."""
    value = _int(text)
    return None if value is None or value >= UNLIMITED_V1 else value


def parse_io_stat(text: str) -> dict[str, int]:
    """io.stat (``MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..``) summed over devices."""
    out = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0}
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key in out:
                try:
                    out[key] += int(value)
                except ValueError:
                    continue
    return out


def parse_blkio(text: str) -> dict[str, int]:
    """v1 blkio.throttle.* (``MAJ:MIN Read N`` lines, plus ``Total N``) summed over devices."""
    out = {"Read": 0, "Write": 0}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in out:
            try:
                out[parts[1]] += int(parts[2])
            except ValueError:
                continue
    return out


def parse_pressure_totals(text: str) -> dict[str, int]:
    """``some``/``full`` ``total=`` microseconds from a PSI file."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        for item in parts[1:]:
            if item.startswith("total=") and (value := _int(item[6:])) is not None:
                out[parts[0]] = value
    return out


# -- hierarchies ------------------------------------------------------------------------


@dataclass(slots=True)
class Hierarchies:
    """Where each kind of cgroup data lives on this host (None = not mounted)."""

    v2: Path | None = None
    cpuacct: Path | None = None
    cpu: Path | None = None
    memory: Path | None = None
    blkio: Path | None = None
    pids: Path | None = None
    #: Distinct hierarchy roots to walk (a combined ``cpu,cpuacct`` mount appears once).
    walk_roots: list[Path] = field(default_factory=list)


#: v1 controller -> a file its hierarchy root has. systemd mounts each v1 hierarchy at
#: ``/sys/fs/cgroup/<controller>`` (combined ones via symlinks), which is what we rely on:
#: the mount table is per reader and would not describe a captured or foreign tree.
_V1_MARKERS = {
    "cpuacct": "cpuacct.usage",
    "cpu": "cpu.shares",
    "memory": "memory.usage_in_bytes",
    "blkio": "blkio.reset_stats",
    "pids": "cgroup.procs",
}


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        translate(exc, path)
        return False
    return True


def find_hierarchies(sys_root: Path) -> Hierarchies:
    """Locate the v2 hierarchy and the v1 controllers under ``sys_root/fs/cgroup``."""
    base = sys_root / "fs" / "cgroup"
    found = Hierarchies()
    if _exists(base / "cgroup.controllers"):
        # Pure v2: nothing else is mounted below it.
        found.v2 = base
        found.walk_roots.append(base)
        return found
    if _exists(base / "unified" / "cgroup.controllers"):
        found.v2 = base / "unified"
        found.walk_roots.append(found.v2)
    seen: set[str] = set()
    for ctrl, marker in _V1_MARKERS.items():
        path = base / ctrl
        if not _exists(path / marker) or _exists(path / "cgroup.controllers"):
            continue
        setattr(found, ctrl, path)
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            found.walk_roots.append(path)
    return found


def _subdirs(path: Path) -> list[str]:
    """Child cgroups (directories) of a cgroup directory; [] if it vanished."""
    try:
        with os.scandir(path) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError as exc:
        translate(exc, path)
        return []


def is_interesting(path: str) -> bool:
    """Rules 1-3 of the module docstring; rule 4 (containers) is applied by the walk."""
    comps = [c for c in path.split("/") if c]
    if len(comps) <= 1:
        return True
    return comps[0] in _SYSTEMD_SLICES and len(comps) <= 3


def walk_interesting(root: Path, *, max_depth: int = 10, limit: int = 500) -> Iterator[str]:
    """Paths (``/a/b``) of the interesting cgroups of one hierarchy, breadth first."""
    queue: deque[tuple[str, ...]] = deque([()])
    emitted = 0
    while queue and emitted < limit:
        comps = queue.popleft()
        path = "/" + "/".join(comps)
        own = None
        if comps:
            own = _container_component(comps[-2] if len(comps) > 1 else "", comps[-1])
        if own is not None or is_interesting(path):
            yield path
            emitted += 1
        if own is not None and own[0] != "k8s-pod":
            continue  # inside a container: its own sub-cgroups are its business
        if len(comps) >= max_depth:
            continue
        for child in sorted(_subdirs(root.joinpath(*comps))):
            queue.append((*comps, child))


# -- reading one cgroup -----------------------------------------------------------------


_O_FLAGS = os.O_RDONLY | os.O_CLOEXEC
#: cgroup files are small; io.stat grows ~80 bytes per device.
_READ_BUF = 65536
#: Descriptors a collector keeps open at most (~9 files per cgroup, up to 500 cgroups),
#: and never more than an eighth of the soft RLIMIT_NOFILE (the process collector takes
#: half, client sockets come out of the rest); files beyond it are opened for each read.
KEPT_FDS = 1024


def kept_budget() -> int:
    """Descriptors the cgroup files may keep open under the current soft limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return KEPT_FDS if soft == resource.RLIM_INFINITY else min(KEPT_FDS, soft // 8)


class CgroupFiles:
    """Reads cgroup files by path string in one ``read``, remembering absent ones.

    A collection reads ~9 files per cgroup, and on hybrid hosts many of them do not exist
    (no ``memory.current`` where the memory controller lives in v1). Remembering absences
    until the next tree walk saves a failing ``open`` and an exception per file per sample;
    Path objects are avoided on the hot path for the same reason. A cgroup that vanished
    is forgotten (:meth:`forget`), so one recreated under the same path (a restarted
    service) is read in full again at once.

    Opening a cgroup file costs more than reading it (~3 us against ~1 us here, more
    with a cold cache), so descriptors are kept open, up to :func:`kept_budget`, and read
    again by ``pread`` at offset 0 (cgroupfs regenerates a file read from its start).
    A kept descriptor of a removed cgroup fails (ENODEV): it is closed and the path
    opened afresh once, so a cgroup recreated under the same path is still read at once.
    That holds on cgroupfs only, so descriptors are kept only when ``keep`` (the
    collector reads the live ``/sys``): a removed file of a captured tree stays readable
    through its descriptor. :meth:`forget` and :meth:`close` close descriptors; a lock
    makes ``close`` from another thread wait for a read in progress.
    """

    __slots__ = ("_budget", "_kept", "_lock", "_nkept", "missing")

    def __init__(self, *, keep: bool = False) -> None:
        self.missing: dict[str, set[str]] = {}
        self._kept: dict[str, dict[str, int]] = {}  # directory -> file name -> descriptor
        self._nkept = 0
        self._budget = kept_budget() if keep else 0
        self._lock = threading.Lock()

    def text(self, directory: str, name: str) -> str | None:
        absent = self.missing.get(directory)
        if absent is not None and name in absent:
            return None
        with self._lock:
            kept = self._kept.get(directory)
            if kept is not None:
                fd = kept.get(name)
                if fd is not None:
                    try:
                        return os.pread(fd, _READ_BUF, 0).decode("utf-8", "replace")
                    except OSError:
                        del kept[name]
                        self._nkept -= 1
                        os.close(fd)
            return self._open_and_read(directory, name)

    def _open_and_read(self, directory: str, name: str) -> str | None:
        path = f"{directory}/{name}"
        try:
            fd = os.open(path, _O_FLAGS)
            try:
                data = os.pread(fd, _READ_BUF, 0)
            except OSError:
                os.close(fd)
                raise
        except OSError as exc:
            if translate(exc, Path(path)).reason == "missing":
                self.missing.setdefault(directory, set()).add(name)
            return None
        if self._nkept < self._budget:
            self._kept.setdefault(directory, {})[name] = fd
            self._nkept += 1
        else:
            os.close(fd)
        return data.decode("utf-8", "replace")

    def forget(self, directory: str | None) -> None:
        if directory is not None:
            self.missing.pop(directory, None)
            with self._lock:
                self._close(self._kept.pop(directory, {}))

    def _close(self, kept: dict[str, int]) -> None:
        self._nkept -= len(kept)
        for fd in kept.values():
            os.close(fd)

    def close(self) -> None:
        """Close every kept descriptor (reads afterwards open files again)."""
        with self._lock:
            kept, self._kept = self._kept, {}
            for files in kept.values():
                self._close(files)

    def __del__(self) -> None:
        # Nothing can be reading: that reader would hold a reference.
        for files in self._kept.values():
            for fd in files.values():
                os.close(fd)

    def int(self, directory: str, name: str) -> int | None:
        text = self.text(directory, name)
        return None if text is None else _int(text)

    def first(self, directory: str, names: tuple[str, ...]) -> str | None:
        for name in names:
            text = self.text(directory, name)
            if text is not None:
                return text
        return None


def _dir(base: Path | None, path: str) -> str | None:
    if base is None:
        return None
    rel = path.strip("/")
    return f"{base}/{rel}" if rel else str(base)


def _read_v2(files: CgroupFiles, v2: str, out: dict[str, int]) -> None:
    if (text := files.text(v2, "cpu.stat")) is not None:
        stat = parse_flat_keyed(text)
        for key, name in (
            ("usage_usec", "cgroup.cpu.usage"),
            ("user_usec", "cgroup.cpu.user"),
            ("system_usec", "cgroup.cpu.system"),
            ("nr_periods", "cgroup.cpu.periods"),
            ("nr_throttled", "cgroup.cpu.throttled.periods"),
            ("throttled_usec", "cgroup.cpu.throttled.time"),
        ):
            if key in stat:
                out[name] = stat[key]
    if (current := files.int(v2, "memory.current")) is not None:
        out["cgroup.memory.current"] = current
        limit = files.text(v2, "memory.max")
        if limit is not None and (value := parse_limit_v2(limit)) is not None:
            out["cgroup.memory.limit"] = value
        if (swap := files.int(v2, "memory.swap.current")) is not None:
            out["cgroup.memory.swap"] = swap
    if (text := files.text(v2, "io.stat")) is not None:
        io = parse_io_stat(text)
        out["cgroup.io.read_bytes"] = io["rbytes"]
        out["cgroup.io.write_bytes"] = io["wbytes"]
        out["cgroup.io.reads"] = io["rios"]
        out["cgroup.io.writes"] = io["wios"]
    if (count := files.int(v2, "pids.current")) is not None:
        out["cgroup.pids.current"] = count
    for res in ("cpu", "memory", "io"):
        if (text := files.text(v2, f"{res}.pressure")) is not None:
            for kind, value in parse_pressure_totals(text).items():
                out[f"cgroup.pressure.{res}.{kind}.total"] = value


def _read_v1(
    files: CgroupFiles, hier: Hierarchies, path: str, hz: int, out: dict[str, int]
) -> None:
    """Fill in what v2 did not provide from the v1 controllers (units converted to v2's)."""
    acct = _dir(hier.cpuacct, path)
    if (
        acct is not None
        and "cgroup.cpu.usage" not in out
        and (usage := files.int(acct, "cpuacct.usage")) is not None
    ):
        out["cgroup.cpu.usage"] = usage // 1000  # ns -> usec
        user = files.int(acct, "cpuacct.usage_user")
        system = files.int(acct, "cpuacct.usage_sys")
        if user is not None and system is not None:
            out["cgroup.cpu.user"] = user // 1000
            out["cgroup.cpu.system"] = system // 1000
        elif (text := files.text(acct, "cpuacct.stat")) is not None:
            ticks = parse_flat_keyed(text)  # USER_HZ ticks on kernels without usage_user
            if "user" in ticks and "system" in ticks:
                out["cgroup.cpu.user"] = ticks["user"] * 1_000_000 // hz
                out["cgroup.cpu.system"] = ticks["system"] * 1_000_000 // hz

    cpu = _dir(hier.cpu, path)
    if (
        cpu is not None
        and "cgroup.cpu.periods" not in out
        and (text := files.text(cpu, "cpu.stat")) is not None
    ):
        stat = parse_flat_keyed(text)
        if "nr_periods" in stat:
            out["cgroup.cpu.periods"] = stat["nr_periods"]
            out["cgroup.cpu.throttled.periods"] = stat.get("nr_throttled", 0)
            out["cgroup.cpu.throttled.time"] = stat.get("throttled_time", 0) // 1000  # ns

    mem = _dir(hier.memory, path)
    if (
        mem is not None
        and "cgroup.memory.current" not in out
        and (usage := files.int(mem, "memory.usage_in_bytes")) is not None
    ):
        out["cgroup.memory.current"] = usage
        limit = files.text(mem, "memory.limit_in_bytes")
        if limit is not None and (value := parse_limit_v1(limit)) is not None:
            out["cgroup.memory.limit"] = value
        if (memsw := files.int(mem, "memory.memsw.usage_in_bytes")) is not None:
            # memsw counts memory + swap; the difference is the swap in use.
            out["cgroup.memory.swap"] = max(0, memsw - usage)

    blk = _dir(hier.blkio, path)
    if blk is not None and "cgroup.io.read_bytes" not in out:
        # The _recursive files include descendants, as v2's io.stat does.
        data = files.first(blk, ("blkio.throttle.io_service_bytes_recursive",
                                 "blkio.throttle.io_service_bytes"))
        if data is not None:
            nbytes = parse_blkio(data)
            out["cgroup.io.read_bytes"] = nbytes["Read"]
            out["cgroup.io.write_bytes"] = nbytes["Write"]
            ios = files.first(blk, ("blkio.throttle.io_serviced_recursive",
                                    "blkio.throttle.io_serviced"))
            if ios is not None:
                nios = parse_blkio(ios)
                out["cgroup.io.reads"] = nios["Read"]
                out["cgroup.io.writes"] = nios["Write"]

    pids = _dir(hier.pids, path)
    if (
        pids is not None
        and "cgroup.pids.current" not in out
        and (count := files.int(pids, "pids.current")) is not None
    ):
        out["cgroup.pids.current"] = count


def read_cgroup(
    hier: Hierarchies, path: str, hz: int, files: CgroupFiles | None = None
) -> dict[str, int]:
    """Every metric known for one cgroup path, merged over hierarchies (v2 first).

    Empty when the cgroup exists in no hierarchy any more (it was removed since the walk).
    """
    files = files or CgroupFiles()
    out: dict[str, int] = {}
    v2 = _dir(hier.v2, path)
    if v2 is not None:
        _read_v2(files, v2, out)
    _read_v1(files, hier, path, hz, out)
    if not out:
        for base in (hier.v2, hier.cpuacct, hier.cpu, hier.memory, hier.blkio, hier.pids):
            files.forget(_dir(base, path))
    return out


# -- collector --------------------------------------------------------------------------


class CgroupCollector(Collector):
    """``cgroup.*`` per interesting cgroup, from v2 and v1 hierarchies (see module docs)."""

    name = "cgroup"

    def __init__(
        self,
        roots: Roots,
        *,
        interval_s: float = 2.0,
        rescan_s: float = 10.0,
        max_depth: int = 10,
        max_cgroups: int = 500,
        hz: int | None = None,
    ) -> None:
        self.roots = roots
        self.interval_s = interval_s
        self.rescan_s = rescan_s
        self.max_depth = max_depth
        self.max_cgroups = max_cgroups
        self.hz = hz or os.sysconf("SC_CLK_TCK")
        self._hier: Hierarchies | None = None
        self._paths: list[str] = []
        #: The paths the last walk found in the v2 hierarchy.
        self._v2_paths: frozenset[str] = frozenset()
        self._scanned_at: float | None = None
        # Descriptors are kept on the live cgroupfs only (see CgroupFiles).
        self._keep = roots.sys == Path("/sys")
        self._files = CgroupFiles(keep=self._keep)

    def descriptors(self) -> list[MetricDesc]:
        def c(name: str, units: Units, text: str) -> MetricDesc:
            return counter(name, units, text, indom=INDOM, labels=_LABELS)

        def i(name: str, units: Units, text: str) -> MetricDesc:
            return instant(name, units, text, indom=INDOM, labels=_LABELS, type=ValueType.U64)

        descs = [
            c("cgroup.cpu.usage", USEC, "CPU time used by the cgroup's tasks, user and system"),
            c("cgroup.cpu.user", USEC, "CPU time used by the cgroup's tasks in user mode"),
            c("cgroup.cpu.system", USEC, "CPU time used by the cgroup's tasks in kernel mode"),
            c("cgroup.cpu.periods", COUNT, "CPU bandwidth enforcement periods elapsed"),
            c("cgroup.cpu.throttled.periods", COUNT,
              "CPU bandwidth periods in which the cgroup was throttled"),
            c("cgroup.cpu.throttled.time", USEC, "time the cgroup's tasks were throttled"),
            i("cgroup.memory.current", BYTES, "memory charged to the cgroup"),
            i("cgroup.memory.limit", BYTES, "memory limit of the cgroup (absent when unlimited)"),
            i("cgroup.memory.swap", BYTES, "swap used by the cgroup"),
            c("cgroup.io.read_bytes", BYTES, "bytes read from block devices by the cgroup"),
            c("cgroup.io.write_bytes", BYTES, "bytes written to block devices by the cgroup"),
            c("cgroup.io.reads", COUNT, "block device read requests by the cgroup"),
            c("cgroup.io.writes", COUNT, "block device write requests by the cgroup"),
            i("cgroup.pids.current", COUNT, "tasks (threads) in the cgroup"),
            discrete("cgroup.container.name", NONE,
                     "readable container, pod or systemd unit name of the cgroup",
                     indom=INDOM, labels=_LABELS, type=ValueType.STRING),
            discrete("cgroup.version", NONE,
                     "v2 if the cgroup is in the v2 (unified) hierarchy, which cgroup "
                     "filters take; v1 if only cgroup v1 hierarchies have it",
                     indom=INDOM, labels=_LABELS, type=ValueType.STRING),
        ]
        for res in ("cpu", "memory", "io"):
            descs.append(c(f"cgroup.pressure.{res}.some.total", USEC,
                           f"time some of the cgroup's tasks were stalled on {res} (PSI)"))
            descs.append(c(f"cgroup.pressure.{res}.full.total", USEC,
                           f"time all of the cgroup's tasks were stalled on {res} (PSI)"))
        return descs

    def derivations(self) -> list[Derivation]:
        return [
            Derivation(
                instant("cgroup.cpu.util", UTILIZATION,
                        "CPU used by the cgroup, 1.0 = one CPU fully busy",
                        indom=INDOM, labels=_LABELS, derived=True),
                _cpu_util,
            )
        ]

    def hierarchies(self) -> Hierarchies:
        """The hierarchies found on first use (mounts do not change under a running host)."""
        if self._hier is None:
            self._hier = find_hierarchies(self.roots.sys)
        return self._hier

    def paths(self) -> list[str]:
        """The interesting cgroups, re-walked every ``rescan_s`` seconds."""
        now = time.monotonic()
        if self._scanned_at is None or now - self._scanned_at >= self.rescan_s:
            seen: dict[str, None] = {}
            v2: set[str] = set()
            hier = self.hierarchies()
            for root in hier.walk_roots:
                for path in walk_interesting(root, max_depth=self.max_depth,
                                             limit=self.max_cgroups):
                    seen.setdefault(path, None)
                    if root == hier.v2:
                        v2.add(path)
            self._paths = list(seen)[: self.max_cgroups]
            self._v2_paths = frozenset(v2)
            self._scanned_at = now
            self._files.close()
            # absences are re-checked once per walk
            self._files = CgroupFiles(keep=self._keep)
        return self._paths

    def collect(self) -> Raw:
        hier = self.hierarchies()
        raw: Raw = {}
        names: dict[str, int | float | str] = {}
        versions: dict[str, int | float | str] = {}
        paths = self.paths()
        v2_paths = self._v2_paths
        for path in paths:
            values = read_cgroup(hier, path, self.hz, self._files)
            if not values:
                continue  # removed since the walk
            for name, value in values.items():
                raw.setdefault(name, {})[path] = value
            names[path] = container_name(path)
            versions[path] = "v2" if path in v2_paths else "v1"
        if names:
            raw["cgroup.container.name"] = names
            raw["cgroup.version"] = versions
        return raw

    def close(self) -> None:
        self._files.close()


def _cpu_util(c: Mapping[str, Mapping[str, float | str | None]]) -> dict[str, float | None]:
    # The usage rate is microseconds of CPU per second; / 1e6 gives CPUs busy.
    return {path: ratio(v, 1e6) for path, v in c.get("cgroup.cpu.usage", {}).items()}
