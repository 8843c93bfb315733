"""Memory levels from ``/proc/meminfo`` and paging/reclaim counters from ``/proc/vmstat``.

``/proc/meminfo`` lines are ``Key:   value kB`` (``HugePages_*`` counts have no unit).
Keys come and go with kernel versions and configuration (``MemAvailable`` appeared in
3.14, ``SReclaimable`` in 2.6.19, ``ShmemHugePages`` needs THP ...), so every key is
optional: a key the kernel does not print gives no value, never an error or a zero.

``/proc/vmstat`` lines are ``key value`` (about 190 of them on 6.x). Only a chartable
subset is published; several metrics sum a family of keys whose names changed over
time (see :data:`VMSTAT_FIELDS`). Values are pages or events, except ``pgpgin`` and
``pgpgout`` which the kernel converts to kilobytes when it prints the file.

``mem.util.used`` follows free(1) of procps-ng 3.3 and older psutil::

    used = MemTotal - MemFree - Buffers - Cached - SReclaimable

so that ``used + bufmem + cached + slab_reclaimable + free == physmem`` and the stacked
memory chart adds up exactly. Note that procps-ng 4.0.1+ (Debian 12's free) and psutil
7 print ``used = MemTotal - MemAvailable`` instead; that figure is ``physmem -
available`` here.

Cost. Both files are parsed by :class:`TokenPicker`: the file is split once and the
positions of the wanted keys are learnt on the first read, so later reads are one
``split`` plus C-speed fetches and ``int()`` of the wanted values, summed families
included (the key set of these files is fixed for the life of a boot; any change in
layout is detected and relearnt). The collector hands it the bytes as read: splitting
bytes costs a third less than decoding and splitting text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from ..collector import Collector, Cooked, CookedView, Derivation, Raw
from ..model import (
    COUNT,
    KBYTES,
    SINGULAR,
    MetricDesc,
    Units,
    ValueType,
    counter,
    discrete,
    instant,
)
from ..sources import KeptFile, Roots


class TokenPicker:
    """Picks integer fields out of a whitespace-separated ``/proc`` key/value file.

    ``route`` maps a token to the output names it feeds (empty to ignore it); several
    tokens may feed one output, whose value is then their sum, and one token may feed
    several outputs. Token positions are learnt once and reused while the file keeps the
    same number of tokens and the same key at each learnt position, which holds for a
    whole boot on a real kernel; a different layout (another kernel, another fixture)
    is simply relearnt.

    A file that does not end in a newline was cut short (a truncated capture, a read
    limit): its last, partial line is ignored rather than trusted. A value that is not
    an integer is skipped.
    """

    __slots__ = ("_keys", "_keys_at", "_multi", "_names", "_ntokens", "_route", "_single",
                 "_single_at", "_summed", "_values_at")

    def __init__(self, route: Callable[[str], tuple[str, ...]]) -> None:
        self._route = route
        self._ntokens = -1
        self._keys: tuple[str | bytes, ...] = ()
        self._names: tuple[str, ...] = ()
        self._summed = False
        self._keys_at: Callable[[list[Any]], object] = _nothing
        self._values_at: Callable[[list[Any]], object] = _nothing
        # Outputs fed by one token (fetched and converted at C speed) and those that
        # sum several, each with its own fetch: the plan of the fast path when summing.
        self._single: tuple[str, ...] = ()
        self._single_at: Callable[[list[Any]], object] = _nothing
        self._multi: tuple[tuple[str, Callable[[list[Any]], object]], ...] = ()

    def pick(self, text: str | bytes) -> dict[str, int]:
        """Picked values of ``text``; bytes (straight from ``read_bytes``) split faster."""
        newline = "\n" if isinstance(text, str) else b"\n"
        if text and not text.endswith(newline):  # type: ignore[arg-type]
            text = text[: text.rfind(newline) + 1]  # type: ignore[arg-type]
        tokens = text.split()
        if len(tokens) != self._ntokens or self._keys_at(tokens) != self._keys:
            self._learn(tokens)
        if not self._names:
            return {}
        try:
            if not self._summed:
                return dict(zip(self._names, map(int, self._values_at(tokens)), strict=True))  # type: ignore[call-overload]
            out = dict(zip(self._single, map(int, self._single_at(tokens)), strict=True))  # type: ignore[call-overload]
            for name, values_at in self._multi:
                out[name] = sum(map(int, values_at(tokens)))  # type: ignore[call-overload]
            return out
        except ValueError:
            pass  # some value is not a number: take the careful path below
        values: tuple[str | bytes, ...] = self._values_at(tokens)  # type: ignore[assignment]
        careful: dict[str, int] = {}
        for name, text_value in zip(self._names, values, strict=True):
            try:
                value = int(text_value)
            except ValueError:
                continue
            careful[name] = careful.get(name, 0) + value
        return careful

    def _learn(self, tokens: list[Any]) -> None:
        route = self._route
        keys: list[str | bytes] = []
        key_idx: list[int] = []
        names: list[str] = []
        value_idx: list[int] = []
        seen: set[str | bytes] = set()
        # The last token cannot be a key with a value after it.
        for idx in range(len(tokens) - 1):
            tok = tokens[idx]
            if tok in seen:
                continue
            outputs = route(tok.decode("utf-8", "replace") if isinstance(tok, bytes) else tok)
            if outputs:
                seen.add(tok)
                keys.append(tok)
                key_idx.append(idx)
                for name in outputs:
                    names.append(name)
                    value_idx.append(idx + 1)
        self._ntokens = len(tokens)
        self._keys = tuple(keys)
        self._names = tuple(names)
        self._summed = len(set(names)) != len(names)
        self._keys_at = _getter(key_idx)
        self._values_at = _getter(value_idx)
        sources: dict[str, list[int]] = {}
        for name, idx in zip(names, value_idx, strict=True):
            sources.setdefault(name, []).append(idx)
        self._single = tuple(name for name, idxs in sources.items() if len(idxs) == 1)
        self._single_at = _getter([idxs[0] for idxs in sources.values() if len(idxs) == 1])
        self._multi = tuple(
            (name, _getter(idxs)) for name, idxs in sources.items() if len(idxs) > 1
        )


def _nothing(_tokens: list[Any]) -> tuple[str, ...]:
    return ()


def _getter(indexes: list[int]) -> Callable[[list[Any]], object]:
    """A C-speed fetch of several list items as a tuple (itemgetter of one is scalar)."""
    if not indexes:
        return _nothing
    if len(indexes) == 1:
        only = indexes[0]
        return lambda tokens: (tokens[only],)
    return itemgetter(*indexes)


def _meminfo_key(token: str) -> tuple[str, ...]:
    return (token[:-1],) if token.endswith(":") else ()


def parse_meminfo(text: str, picker: TokenPicker | None = None) -> dict[str, int]:
    """``/proc/meminfo`` as key -> value (kB, or pages for ``HugePages_*``).

    Without ``picker`` every key is returned; a collector passes its own picker that
    keeps only the keys it publishes and remembers their positions.
    """
    return (picker or TokenPicker(_meminfo_key)).pick(text)


#: (leaf under mem.util, /proc/meminfo key, units, help)
MEMINFO_FIELDS: tuple[tuple[str, str, Units, str], ...] = (
    ("free", "MemFree", KBYTES, "memory not used for anything (MemFree)"),
    ("available", "MemAvailable", KBYTES,
     "kernel estimate of memory available to start new work without swapping (3.14+)"),
    ("bufmem", "Buffers", KBYTES, "block device buffers (Buffers)"),
    ("cached", "Cached", KBYTES, "page cache, including tmpfs and shared memory (Cached)"),
    ("swapcached", "SwapCached", KBYTES, "swapped-out memory also still in RAM"),
    ("active", "Active", KBYTES, "memory used recently, not reclaimed unless necessary"),
    ("inactive", "Inactive", KBYTES, "memory not used recently, first to be reclaimed"),
    ("active_anon", "Active(anon)", KBYTES, "recently used anonymous memory"),
    ("inactive_anon", "Inactive(anon)", KBYTES, "anonymous memory not used recently"),
    ("active_file", "Active(file)", KBYTES, "recently used file-backed memory"),
    ("inactive_file", "Inactive(file)", KBYTES, "file-backed memory not used recently"),
    ("unevictable", "Unevictable", KBYTES, "memory that cannot be reclaimed (mlock, ramfs)"),
    ("mlocked", "Mlocked", KBYTES, "memory locked with mlock()"),
    ("swaptotal", "SwapTotal", KBYTES, "total swap space"),
    ("swapfree", "SwapFree", KBYTES, "unused swap space"),
    ("dirty", "Dirty", KBYTES, "memory waiting to be written back to disk"),
    ("writeback", "Writeback", KBYTES, "memory being written back to disk now"),
    ("anonpages", "AnonPages", KBYTES, "anonymous (non file-backed) memory mapped by processes"),
    ("mapped", "Mapped", KBYTES, "files mapped into memory (mmap), such as libraries"),
    ("shared", "Shmem", KBYTES, "shared memory and tmpfs (Shmem; free(1)'s shared)"),
    ("slab", "Slab", KBYTES, "kernel slab allocator memory"),
    ("slab_reclaimable", "SReclaimable", KBYTES, "slab memory that can be reclaimed (caches)"),
    ("slab_unreclaimable", "SUnreclaim", KBYTES, "slab memory that cannot be reclaimed"),
    ("kernelstack", "KernelStack", KBYTES, "kernel stacks of all tasks"),
    ("pagetables", "PageTables", KBYTES, "page tables"),
    ("commitlimit", "CommitLimit", KBYTES, "allocation limit under strict overcommit"),
    ("committed_as", "Committed_AS", KBYTES,
     "memory allocated by processes that would be needed if all of it were touched"),
    ("anonhugepages", "AnonHugePages", KBYTES, "anonymous transparent huge pages"),
    ("hugepages_total", "HugePages_Total", COUNT, "size of the hugetlb huge page pool, pages"),
    ("hugepages_free", "HugePages_Free", COUNT, "hugetlb huge pages not yet allocated"),
    ("hugepages_rsvd", "HugePages_Rsvd", COUNT, "hugetlb huge pages reserved but not faulted in"),
    ("hugepages_surp", "HugePages_Surp", COUNT, "hugetlb huge pages above the persistent pool"),
)
_DISCRETE_MEMINFO = {"MemTotal": "mem.physmem", "Hugepagesize": "mem.util.hugepagesize"}


@dataclass(frozen=True, slots=True)
class VmstatField:
    """One published ``mem.vmstat`` counter and the ``/proc/vmstat`` keys it sums.

    ``keys`` are exact key names (default: the leaf itself); ``prefixes`` catch
    families whose members vary by kernel (per-zone keys before 4.8, per-type keys
    later); ``exclude`` removes keys that share a prefix but count something else.
    """

    leaf: str
    units: Units
    help: str
    keys: tuple[str, ...] = field(default=(), kw_only=True)
    prefixes: tuple[str, ...] = field(default=(), kw_only=True)
    exclude: tuple[str, ...] = field(default=(), kw_only=True)

    def matches(self, key: str) -> bool:
        if key in self.exclude:
            return False
        if key in (self.keys or (self.leaf,)):
            return True
        return bool(self.prefixes) and key.startswith(self.prefixes)


# Reclaim keys: 4.8+ prints node totals (pgscan_kswapd, pgscan_direct, ...); older
# kernels printed one key per zone (pgscan_kswapd_normal, pgscan_direct_dma32 ...).
# pgscan_anon/pgscan_file (5.7+) split the same scans by LRU type, so adding them would
# count every page twice; pgscan_direct_throttle counts throttling events, not pages.
VMSTAT_FIELDS: tuple[VmstatField, ...] = (
    VmstatField("pgfault", COUNT, "page faults, minor and major"),
    VmstatField("pgmajfault", COUNT, "major page faults (needed I/O to resolve)"),
    VmstatField("pgpgin", KBYTES, "data paged in from block devices"),
    VmstatField("pgpgout", KBYTES, "data paged out to block devices"),
    VmstatField("pswpin", COUNT, "pages swapped in"),
    VmstatField("pswpout", COUNT, "pages swapped out"),
    VmstatField("pgscan", COUNT, "pages scanned for reclaim, by kswapd and direct reclaim",
                keys=("pgscan_kswapd", "pgscan_direct", "pgscan_khugepaged", "pgscan_proactive"),
                prefixes=("pgscan_kswapd_", "pgscan_direct_"),
                exclude=("pgscan_direct_throttle",)),
    VmstatField("pgsteal", COUNT, "pages reclaimed, by kswapd and direct reclaim",
                keys=("pgsteal_kswapd", "pgsteal_direct", "pgsteal_khugepaged",
                      "pgsteal_proactive"),
                prefixes=("pgsteal_kswapd_", "pgsteal_direct_")),
    VmstatField("pgscan_direct", COUNT,
                "pages scanned by direct reclaim (allocating tasks stalled to reclaim)",
                keys=("pgscan_direct",), prefixes=("pgscan_direct_",),
                exclude=("pgscan_direct_throttle",)),
    VmstatField("pgsteal_direct", COUNT, "pages reclaimed by direct reclaim",
                keys=("pgsteal_direct",), prefixes=("pgsteal_direct_",)),
    VmstatField("allocstall", COUNT, "times an allocation entered direct reclaim",
                keys=("allocstall",), prefixes=("allocstall_",)),
    VmstatField("workingset_refault", COUNT,
                "evicted pages read back soon after (page cache thrashing)",
                keys=("workingset_refault",), prefixes=("workingset_refault_",)),
    VmstatField("oom_kill", COUNT, "processes killed by the OOM killer (4.13+)"),
    VmstatField("compact_stall", COUNT, "allocations that stalled for memory compaction"),
    VmstatField("thp_fault_fallback", COUNT,
                "transparent huge page faults that fell back to small pages"),
    VmstatField("nr_dirtied", COUNT, "pages dirtied (written to in the page cache)"),
    VmstatField("nr_written", COUNT, "pages written back to storage"),
)


def vmstat_route(
    fields: tuple[VmstatField, ...] = VMSTAT_FIELDS,
) -> Callable[[str], tuple[str, ...]]:
    """A :class:`TokenPicker` route sending each ``/proc/vmstat`` key to its fields' leaves.

    Every token of the file is offered (values too), but values are digits and never
    match a key name or prefix. One key can feed two leaves (``pgscan_direct`` counts
    towards ``pgscan`` and ``pgscan_direct``).
    """

    def route(token: str) -> tuple[str, ...]:
        return tuple(f.leaf for f in fields if f.matches(token))

    return route


def parse_vmstat(text: str, picker: TokenPicker | None = None) -> dict[str, int]:
    """``/proc/vmstat`` reduced to the :data:`VMSTAT_FIELDS` leaves that are present."""
    return (picker or TokenPicker(vmstat_route())).pick(text)


class MemoryCollector(Collector):
    """``mem.physmem``, ``mem.util.*`` (levels, KB) and ``mem.vmstat.*`` (counters).

    Descriptors are the same on every host; keys a kernel does not print simply have no
    value. ``mem.util.used`` and ``mem.util.swapused`` are derived (see module docs).
    """

    name = "memory"

    def __init__(self, roots: Roots) -> None:
        self.roots = roots
        wanted = {key: f"mem.util.{leaf}" for leaf, key, _, _ in MEMINFO_FIELDS}
        wanted.update(_DISCRETE_MEMINFO)
        by_token = {f"{key}:": (name,) for key, name in wanted.items()}
        self._meminfo = TokenPicker(lambda token: by_token.get(token, ()))
        self._vmstat = TokenPicker(vmstat_route())
        self._vmstat_names = {f.leaf: f"mem.vmstat.{f.leaf}" for f in VMSTAT_FIELDS}
        self._meminfo_file = KeptFile(roots.proc / "meminfo")
        self._vmstat_file = KeptFile(roots.proc / "vmstat")

    def descriptors(self) -> list[MetricDesc]:
        descs = [
            discrete("mem.physmem", KBYTES, "total usable RAM (MemTotal)"),
            discrete("mem.util.hugepagesize", KBYTES, "default hugetlb huge page size"),
        ]
        descs += [
            instant(f"mem.util.{leaf}", units, help, type=ValueType.U64)
            for leaf, _, units, help in MEMINFO_FIELDS
        ]
        descs += [
            counter(f"mem.vmstat.{f.leaf}", f.units, f.help) for f in VMSTAT_FIELDS
        ]
        return descs

    def derivations(self) -> list[Derivation]:
        return [
            Derivation(
                instant("mem.util.used", KBYTES,
                        "memory used by processes and the kernel, excluding buffers, page "
                        "cache and reclaimable slab (free(1) 3.3's used)",
                        long_help="MemTotal - MemFree - Buffers - Cached - SReclaimable. "
                        "free(1) of procps-ng 4 shows MemTotal - MemAvailable instead.",
                        derived=True),
                _used,
            ),
            Derivation(
                instant("mem.util.swapused", KBYTES, "swap space in use (SwapTotal - SwapFree)",
                        derived=True),
                _swapused,
            ),
        ]

    def derive_all(self, cooked: CookedView) -> Cooked:
        """Both derivations in one call (the sampler's per-derivation path costs more
        than the two subtractions)."""
        return {"mem.util.used": _used(cooked), "mem.util.swapused": _swapused(cooked)}  # type: ignore[dict-item]

    def may_block(self) -> bool:
        """``/proc/meminfo`` and ``/proc/vmstat``: counters, no lock another task holds."""
        return False

    def collect(self) -> Raw:
        raw: Raw = {
            name: {SINGULAR: value}
            for name, value in self._meminfo.pick(self._meminfo_file.read()).items()
        }
        vmstat = self._vmstat_file.read_optional()
        if vmstat is None:
            return raw
        names = self._vmstat_names
        for leaf, value in self._vmstat.pick(vmstat).items():
            raw[names[leaf]] = {SINGULAR: value}
        return raw

    def close(self) -> None:
        self._meminfo_file.close()
        self._vmstat_file.close()


def _level(c: CookedView, name: str) -> float | None:
    value = c.get(name, {}).get(SINGULAR)
    return None if isinstance(value, str) else value


def _used(c: CookedView) -> dict[str, float | None]:
    parts = [_level(c, n) for n in ("mem.physmem", "mem.util.free", "mem.util.bufmem",
                                    "mem.util.cached")]
    if any(p is None for p in parts):
        return {SINGULAR: None}
    total, free, buffers, cached = parts  # type: ignore[misc]
    # Kernels before 2.6.19 have no SReclaimable; free(1) then subtracts nothing for it.
    reclaimable = _level(c, "mem.util.slab_reclaimable") or 0.0
    return {SINGULAR: total - free - buffers - cached - reclaimable}  # type: ignore[operator]


def _swapused(c: CookedView) -> dict[str, float | None]:
    total, free = _level(c, "mem.util.swaptotal"), _level(c, "mem.util.swapfree")
    if total is None or free is None:
        return {SINGULAR: None}
    return {SINGULAR: total - free}
