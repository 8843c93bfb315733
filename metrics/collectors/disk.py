"""Block device I/O from ``/proc/diskstats``, classified with ``/sys/block``.

``/proc/diskstats`` layout (Documentation/admin-guide/iostats.rst, block/genhd.c)::

    major minor name  f1 .. f11            every kernel since 2.6.25 (14 columns)
                      f12 .. f15           4.18+: discards (18 columns)
                      f16 .. f17           5.5+: flushes (20 columns)

    f1  reads completed         f2  reads merged      f3  sectors read    f4  ms reading
    f5  writes completed        f6  writes merged     f7  sectors written f8  ms writing
    f9  I/Os in flight now      f10 ms with I/O in flight (io_ticks)
    f11 ms weighted by the number in flight (time_in_queue)
    f12 discards completed      f13 discards merged   f14 sectors discarded f15 ms discarding
    f16 flushes completed       f17 ms flushing

Kernels before 2.6.25 printed only four fields for partitions; such lines are ignored.
Trailing fields a kernel lacks give no value (the discard and flush metrics are then
absent), and fields a future kernel appends are ignored.

Value widths. The kernel prints counts and sectors as ``unsigned long`` (64 bits on
64-bit kernels, 32 on 32-bit ones: there such counters wrap and the rate layer sees a
reset, i.e. a one-interval gap) but every millisecond field as ``unsigned int`` on every
kernel, so the ``*_rawactive``, ``avactive`` and ``aveq`` counters are declared U32 and
their wraps (``aveq`` of a busy disk wraps in days) are handled by the rate layer. The
``disk.all`` sums are U64: when one disk's millisecond field wraps, the sum drops by
2**32 and the rate layer reports one gap rather than a spike.

Units follow PCP: ``*_bytes`` are Kbytes (diskstats sectors are always 512 bytes,
whatever the device's own sector size, so Kbytes = sectors / 2), times milliseconds.

Device names. The name is the third whitespace-separated column and the kernel does not
escape it. Real block device names contain no whitespace, but nothing in the format
forbids it, so the parser takes the name to be everything between the minor number and
the last N numeric columns, where N is the column count shared by the file's lines (the
most common count; all lines of one kernel have the same). A name with spaces is then
read whole, with runs of whitespace collapsed to one space. Cut-short lines (fewer than
N numbers) are dropped rather than misread.

Classification (cached per device, refreshed every ``reclassify_every`` collections so a
renamed device-mapper target is picked up):

* ``/sys/block/NAME`` exists: a whole device. Device-mapper devices (``dm-N``) report
  under ``disk.dm.*`` with the instance named by ``/sys/block/dm-N/dm/name`` (the LVM or
  crypt name people know); every other whole device under ``disk.dev.*``.
* ``/sys/class/block/NAME/partition`` exists: a partition, under ``disk.partitions.*``.
* Devices whose sysfs node lives under ``/sys/devices/virtual`` (loop, ram, zram, nbd,
  md, dm) are *virtual*: they are skipped while they have never completed a read or a
  write (a host with eight idle loop devices should not get eight chart lines) and
  reported from their first I/O on.
* ``disk.all.*`` sums the whole devices that are not virtual. Virtual ones sit on top of
  other devices (loop on a file, md and dm on disks) or are not disks at all (zram), so
  adding them would count the same I/O twice or count memory traffic as disk traffic.
  ``hinv.ndisk`` is the number of devices summed.
* Without sysfs (some containers) names decide: ``dm-*`` is device-mapper, a name that
  extends another device's name by digits (``sda1``, ``nvme0n1p2``) is a partition, and
  ``loop``, ``ram``, ``zram``, ``nbd``, ``md`` and ``dm-`` prefixes are virtual.

Sysfs names replace ``/`` with ``!`` (``cciss/c0d0`` is ``/sys/block/cciss!c0d0``).

Derived metrics use the rates of the counters (so time per second):

* ``util`` = rate(avactive) / 1000, the fraction of time with I/O in flight, clamped to
  0..1 (for ``disk.all`` divided by ``hinv.ndisk``: the mean over disks);
* ``await`` = rate(read_rawactive + write_rawactive) / rate(read + write), the mean time
  a request spent in flight (queue + device) in ms; ``r_await`` and ``w_await`` likewise
  per direction; None when no request completed in the interval;
* ``avg_qlen`` = rate(aveq) / 1000, the mean number of requests in flight.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..collector import Collector, Cooked, CookedView, Derivation, Raw, ratio, total
from ..model import (
    COUNT,
    KBYTES,
    MSEC,
    SINGULAR,
    UTILIZATION,
    MetricDesc,
    Units,
    ValueType,
    counter,
    discrete,
    instant,
)
from ..sources import KeptFile, Roots, read_optional

#: Fewest numeric columns a usable line has (the 2.6.25+ layout).
MIN_FIELDS = 11
#: Columns this parser knows (5.5+ layout); later additions are ignored.
KNOWN_FIELDS = 17


@dataclass(frozen=True, slots=True)
class StatField:
    """One published diskstats column: metric leaf, column index, shift, type, help."""

    leaf: str
    index: int
    #: Right shift applied to the raw value (1 turns 512-byte sectors into Kbytes).
    shift: int
    type: ValueType
    units: Units
    help: str


U32, U64 = ValueType.U32, ValueType.U64

#: Columns published as counters, in the order of the file.
STAT_FIELDS: tuple[StatField, ...] = (
    StatField("read", 0, 0, U64, COUNT, "read requests completed"),
    StatField("read_merge", 1, 0, U64, COUNT, "read requests merged with an adjacent one"),
    StatField("read_bytes", 2, 1, U64, KBYTES, "data read"),
    StatField("read_rawactive", 3, 0, U32, MSEC,
              "time read requests spent in flight, summed over requests"),
    StatField("write", 4, 0, U64, COUNT, "write requests completed"),
    StatField("write_merge", 5, 0, U64, COUNT, "write requests merged with an adjacent one"),
    StatField("write_bytes", 6, 1, U64, KBYTES, "data written"),
    StatField("write_rawactive", 7, 0, U32, MSEC,
              "time write requests spent in flight, summed over requests"),
    StatField("avactive", 9, 0, U32, MSEC, "time with at least one request in flight (busy)"),
    StatField("aveq", 10, 0, U32, MSEC,
              "time in flight weighted by the number of requests in flight"),
    StatField("discard", 11, 0, U64, COUNT, "discard requests completed (4.18+)"),
    StatField("discard_merge", 12, 0, U64, COUNT, "discard requests merged (4.18+)"),
    StatField("discard_bytes", 13, 1, U64, KBYTES, "data discarded (4.18+)"),
    StatField("discard_rawactive", 14, 0, U32, MSEC,
              "time discard requests spent in flight, summed over requests (4.18+)"),
    StatField("flush", 15, 0, U64, COUNT, "flush requests completed (5.5+)"),
    StatField("flush_rawactive", 16, 0, U32, MSEC,
              "time flush requests spent in flight, summed over requests (5.5+)"),
)
_READS, _SECTORS_READ, _WRITES, _SECTORS_WRITTEN, _INFLIGHT = 0, 2, 4, 6, 8

#: Metric groups with one instance per device: (group, indom help noun)
DEVICE_GROUPS: tuple[tuple[str, str], ...] = (
    ("dev", "per whole disk"),
    ("dm", "per device-mapper device (LVM, crypt, multipath ...)"),
    ("partitions", "per partition"),
)
_VIRTUAL_PREFIXES = ("loop", "ram", "zram", "nbd", "md", "dm-")
#: Per prefix with derived metrics (in the order of DiskCollector.derivations()): the
#: prefix, the names derive_all reads, then the names it writes.
_DERIVED_NAMES = tuple(
    (prefix, *(f"{prefix}.{leaf}" for leaf in (
        "avactive", "read", "write", "read_rawactive", "write_rawactive", "aveq",
        "util", "await", "r_await", "w_await", "avg_qlen")))
    for prefix in (*(f"disk.{group}" for group, _ in DEVICE_GROUPS), "disk.all")
)

#: A parsed diskstats line: (major, minor, name, numeric columns)
DiskLine = tuple[int, int, str, tuple[int, ...]]


def parse_diskstats(text: str) -> list[DiskLine]:
    """``/proc/diskstats`` as (major, minor, name, fields) per complete line.

    See the module docstring for how names with spaces and cut-short lines are handled.
    ``fields`` holds at most :data:`KNOWN_FIELDS` values.
    """
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the last line was cut mid-number
    rows = [row for row in (line.split() for line in text.split("\n")) if len(row) >= 3]
    if not rows:
        return []
    lengths = {len(row) for row in rows}
    if len(lengths) == 1:
        nfields = len(rows[0]) - 3
    else:
        votes = Counter(len(row) - 3 for row in rows if len(row) - 3 >= MIN_FIELDS)
        if not votes:
            return []
        best = max(votes.values())
        nfields = min(n for n, v in votes.items() if v == best)
    if nfields < MIN_FIELDS:
        return []
    keep = min(nfields, KNOWN_FIELDS)
    # Idle devices (unused loop, ram, zram ...) print only zeros; skipping int() on them
    # halves the cost of a typical read.
    zeros = ["0"] * keep
    zero_fields = (0,) * keep
    out: list[DiskLine] = []
    for row in rows:
        first = len(row) - nfields
        if first < 3:
            continue  # cut short
        name = row[2] if first == 3 else " ".join(row[2:first])
        numbers = row[first : first + keep]
        try:
            fields = zero_fields if numbers == zeros else tuple(map(int, numbers))
            out.append((int(row[0]), int(row[1]), name, fields))
        except ValueError:
            continue  # garbage in a numeric column: not a diskstats line
    return out


@dataclass(frozen=True, slots=True)
class BlockDevice:
    """How one diskstats device is reported."""

    #: "dev", "dm" or "partitions"
    group: str
    #: Instance name (the kernel name, or the device-mapper name for dm devices)
    instance: str
    #: Lives under /sys/devices/virtual (loop, zram, md, dm ...)
    virtual: bool

    @property
    def in_all(self) -> bool:
        """Whether the device's I/O is summed into ``disk.all``."""
        return self.group == "dev" and not self.virtual


def classify_device(roots: Roots, name: str, names: frozenset[str]) -> BlockDevice:
    """Classify one device from sysfs, or from its name when sysfs does not know it.

    ``names`` are all device names in the same diskstats read (for the name fallback).
    """
    sysname = name.replace("/", "!")
    block = roots.sys / "block" / sysname
    if os.path.isdir(block):
        virtual = "/devices/virtual/" in os.path.realpath(block)
        if os.path.isdir(block / "dm"):
            dm_name = (read_optional(block / "dm" / "name") or "").strip()
            return BlockDevice("dm", dm_name or name, virtual)
        return BlockDevice("dev", name, virtual)
    node = roots.sys / "class" / "block" / sysname
    if os.path.isdir(node):
        virtual = "/devices/virtual/" in os.path.realpath(node)
        if read_optional(node / "partition") is not None:
            return BlockDevice("partitions", name, virtual)
        return BlockDevice("dev", name, virtual)
    # No sysfs entry (sysfs not mounted, or the device went away): go by the name.
    virtual = name.startswith(_VIRTUAL_PREFIXES)
    if name.startswith("dm-"):
        return BlockDevice("dm", name, virtual)
    if name[-1:].isdigit():
        for base in names:
            if base != name and name.startswith(base):
                suffix = name[len(base) :]
                if suffix.removeprefix("p").isdigit():
                    return BlockDevice("partitions", name, virtual)
    return BlockDevice("dev", name, virtual)


class DiskCollector(Collector):
    """``disk.dev.*``, ``disk.dm.*``, ``disk.partitions.*``, ``disk.all.*``, ``hinv.ndisk``."""

    name = "disk"

    def __init__(self, roots: Roots, *, reclassify_every: int = 60) -> None:
        self.roots = roots
        self._diskstats = KeptFile(roots.proc / "diskstats")
        self.reclassify_every = max(1, reclassify_every)
        self._devices: dict[tuple[int, int, str], BlockDevice] = {}
        self._keys: list[tuple[int, int, str]] = []
        self._collections = 0
        # group -> (metric name, column, shift): names built once, not per sample
        self._columns = {
            group: tuple((f"disk.{group}.{f.leaf}", f.index, f.shift) for f in STAT_FIELDS)
            for group in (*(g for g, _ in DEVICE_GROUPS), "all")
        }

    def descriptors(self) -> list[MetricDesc]:
        descs: list[MetricDesc] = []
        for group, noun in DEVICE_GROUPS:
            indom = f"disk.{group}"
            for f in STAT_FIELDS:
                descs.append(counter(f"disk.{group}.{f.leaf}", f.units, f"{f.help}, {noun}",
                                     indom=indom, type=f.type, labels=("device",)))
            descs += [
                counter(f"disk.{group}.total", COUNT,
                        f"read and write requests completed, {noun}",
                        indom=indom, labels=("device",)),
                counter(f"disk.{group}.total_bytes", KBYTES, f"data read and written, {noun}",
                        indom=indom, labels=("device",)),
                instant(f"disk.{group}.inflight", COUNT, f"requests in flight now, {noun}",
                        indom=indom, type=U32, labels=("device",)),
            ]
        noun = "summed over physical whole disks"
        for f in STAT_FIELDS:
            descs.append(counter(f"disk.all.{f.leaf}", f.units, f"{f.help}, {noun}"))
        descs += [
            counter("disk.all.total", COUNT, f"read and write requests completed, {noun}"),
            counter("disk.all.total_bytes", KBYTES, f"data read and written, {noun}"),
            instant("disk.all.inflight", COUNT, f"requests in flight now, {noun}", type=U64),
            discrete("hinv.ndisk", COUNT,
                     "number of physical whole disks (those summed into disk.all)", type=U32),
        ]
        return descs

    def derivations(self) -> list[Derivation]:
        derivs: list[Derivation] = []
        for group, noun in DEVICE_GROUPS:
            derivs += _derivations(f"disk.{group}", noun, indom=f"disk.{group}")
        derivs += _derivations("disk.all", "mean over physical whole disks", indom=None)
        return derivs

    def derive_all(self, cooked: CookedView) -> Cooked:
        """The derivations of :func:`_derivations` for every group in one pass.

        Same helpers (:func:`ratio`, :func:`total`) and the same order of operations,
        so the results are identical; only the per-metric closure calls are saved.
        """
        out: Cooked = {}
        get = cooked.get
        ndisk = get("hinv.ndisk", _EMPTY).get(SINGULAR)
        for (prefix, avactive_name, read_name, write_name, rtime_name, wtime_name, aveq_name,
             util_name, await_name, r_await_name, w_await_name, qlen_name) in _DERIVED_NAMES:
            avactive = get(avactive_name, _EMPTY)
            util: dict[str, float | str | None] = {}
            scale = 1000.0
            if prefix == "disk.all" and not isinstance(ndisk, int | float):
                util = dict.fromkeys(avactive)
            else:
                if prefix == "disk.all":
                    scale *= ndisk  # type: ignore[operator]
                for inst, busy in avactive.items():
                    value = ratio(busy, scale)
                    util[inst] = None if value is None else min(1.0, max(0.0, value))
            reads, writes = get(read_name, _EMPTY), get(write_name, _EMPTY)
            rtimes, wtimes = get(rtime_name, _EMPTY), get(wtime_name, _EMPTY)
            both: dict[str, float | str | None] = {}
            r_await: dict[str, float | str | None] = {}
            for inst, ops in reads.items():
                rtime = rtimes.get(inst)
                both[inst] = ratio(total(rtime, wtimes.get(inst)), total(ops, writes.get(inst)))
                r_await[inst] = ratio(total(rtime), total(ops))
            out[util_name] = util
            out[await_name] = both
            out[r_await_name] = r_await
            out[w_await_name] = {
                inst: ratio(total(wtimes.get(inst)), total(ops)) for inst, ops in writes.items()
            }
            out[qlen_name] = {
                inst: ratio(v, 1000.0) for inst, v in get(aveq_name, _EMPTY).items()
            }
        return out

    def may_block(self) -> bool:
        """``/proc/diskstats``, plus sysfs for a device seen for the first time (its
        ``/sys/block`` node, ``partition`` and a device-mapper ``dm/name``, which takes
        device-mapper's name lock for reading only while a rename or removal holds it):
        nothing that waits on another task's I/O or on a remote party."""
        return False

    def collect(self) -> Raw:
        rows = parse_diskstats(self._diskstats.read().decode("utf-8", "replace"))
        devices = self._classify(rows)
        members: dict[str, list[tuple[str, tuple[int, ...]]]] = {g: [] for g, _ in DEVICE_GROUPS}
        physical: list[tuple[int, ...]] = []
        for major, minor, name, fields in rows:
            dev = devices[(major, minor, name)]
            if dev.virtual and fields[_READS] == 0 and fields[_WRITES] == 0:
                continue  # an idle loop/ram/zram device: noise on every chart
            members[dev.group].append((dev.instance, fields))
            if dev.in_all:
                physical.append(fields)
        raw: Raw = {}
        for group, devs in members.items():
            if not devs:
                continue
            columns = self._columns[group]
            # one pass per device filling every column's dict (a dict comprehension per
            # column costs more than the values when a group has one or two devices)
            per_column: list[dict[str, int | float | str]] = [{} for _ in columns]
            for inst, f in devs:
                width = len(f)
                for values, (_, index, shift) in zip(per_column, columns, strict=True):
                    if index < width:
                        values[inst] = f[index] >> shift
            for values, (metric, _, _) in zip(per_column, columns, strict=True):
                if values:
                    raw[metric] = values
            raw[f"disk.{group}.total"] = {inst: f[_READS] + f[_WRITES] for inst, f in devs}
            raw[f"disk.{group}.total_bytes"] = {
                inst: (f[_SECTORS_READ] >> 1) + (f[_SECTORS_WRITTEN] >> 1) for inst, f in devs
            }
            raw[f"disk.{group}.inflight"] = {inst: f[_INFLIGHT] for inst, f in devs}
        # A column only some disks have (a mix is impossible within one kernel, but a
        # capture could be edited) is summed only when all of them have it: a partial
        # sum would be a misleading figure.
        # zip() stops at the shortest row: exactly the columns every disk has.
        columns = list(zip(*physical, strict=False)) if physical else [()] * MIN_FIELDS
        width = len(columns)
        for metric, index, shift in self._columns["all"]:
            if index < width:
                column = columns[index]
                raw[metric] = {
                    SINGULAR: sum(v >> shift for v in column) if shift else sum(column)
                }
        raw["disk.all.total"] = {SINGULAR: sum(columns[_READS]) + sum(columns[_WRITES])}
        raw["disk.all.total_bytes"] = {
            SINGULAR: sum(v >> 1 for v in columns[_SECTORS_READ])
            + sum(v >> 1 for v in columns[_SECTORS_WRITTEN])
        }
        raw["disk.all.inflight"] = {SINGULAR: sum(columns[_INFLIGHT])}
        raw["hinv.ndisk"] = {SINGULAR: len(physical)}
        return raw

    def close(self) -> None:
        self._diskstats.close()

    def _classify(self, rows: list[DiskLine]) -> dict[tuple[int, int, str], BlockDevice]:
        """Cached classification of the devices in ``rows``; unknown ones looked up."""
        self._collections += 1
        keys = [(major, minor, name) for major, minor, name, _ in rows]
        if self._collections % self.reclassify_every == 0:
            self._devices = {}
        elif keys == self._keys:
            return self._devices  # the same devices as last time, the usual case
        self._keys = keys
        missing = [key for key in keys if key not in self._devices]
        if missing or len(self._devices) != len(keys):
            names = frozenset(name for _, _, name in keys)
            known = self._devices
            self._devices = {
                key: known.get(key) or classify_device(self.roots, key[2], names)
                for key in keys
            }
        return self._devices


Compute = Callable[[CookedView], dict[str, float | None]]
_EMPTY: Mapping[str, float | str | None] = {}


def _derivations(prefix: str, noun: str, *, indom: str | None) -> list[Derivation]:
    labels = ("device",) if indom else ()

    def desc(leaf: str, units: Units, text: str) -> MetricDesc:
        return instant(f"{prefix}.{leaf}", units, f"{text}, {noun}", indom=indom,
                       labels=labels, derived=True)

    return [
        Derivation(desc("util", UTILIZATION, "fraction of time with I/O in flight (0-1)"),
                   _util(prefix, per_disk=indom is None)),
        Derivation(desc("await", MSEC, "mean time a read or write request spent in flight"),
                   _await(prefix, ("read", "write"))),
        Derivation(desc("r_await", MSEC, "mean time a read request spent in flight"),
                   _await(prefix, ("read",))),
        Derivation(desc("w_await", MSEC, "mean time a write request spent in flight"),
                   _await(prefix, ("write",))),
        Derivation(desc("avg_qlen", COUNT, "mean number of requests in flight"),
                   _avg_qlen(prefix)),
    ]


def _util(prefix: str, *, per_disk: bool) -> Compute:
    def compute(c: CookedView) -> dict[str, float | None]:
        scale = 1000.0
        if per_disk:
            ndisk = c.get("hinv.ndisk", {}).get(SINGULAR)
            if not isinstance(ndisk, int | float):
                return {inst: None for inst in c.get(f"{prefix}.avactive", {})}
            scale *= ndisk
        out: dict[str, float | None] = {}
        for inst, busy in c.get(f"{prefix}.avactive", {}).items():
            util = ratio(busy, scale)
            # io_ticks advances in jiffies while we sample on a monotonic clock, so an
            # interval can show slightly more busy time than wall time.
            out[inst] = None if util is None else min(1.0, max(0.0, util))
        return out

    return compute


def _await(prefix: str, directions: tuple[str, ...]) -> Compute:
    def compute(c: CookedView) -> dict[str, float | None]:
        ops = [c.get(f"{prefix}.{d}", {}) for d in directions]
        times = [c.get(f"{prefix}.{d}_rawactive", {}) for d in directions]
        return {
            inst: ratio(total(*(t.get(inst) for t in times)), total(*(o.get(inst) for o in ops)))
            for inst in ops[0]
        }

    return compute


def _avg_qlen(prefix: str) -> Compute:
    def compute(c: CookedView) -> dict[str, float | None]:
        return {inst: ratio(v, 1000.0) for inst, v in c.get(f"{prefix}.aveq", {}).items()}

    return compute
