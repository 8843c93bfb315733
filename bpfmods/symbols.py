"""Addresses to names for profiles: kernel symbols, ELF symbols of user code, JIT perf maps.

Why not bcc's symbolizer (``BPF.sym``): its caches are per PID and never evicted (a daemon
that profiles for weeks would keep every process's symbol tables), it cannot say *why* a
frame is unknown, and it is only there when bcc is, while the perf fallback and tests need
the same answers. This module is pure Python over /proc:

* kernel: ``/proc/kallsyms`` (text symbols), loaded once per :class:`Symbolizer`;
* user: ``/proc/PID/maps`` finds the mapping, the ELF file is opened through
  ``/proc/PID/map_files/START-END`` (the very file mapped, also inside containers and when
  it was deleted or replaced since), its ``.symtab`` or else ``.dynsym`` function symbols
  are looked up after converting the file offset to a virtual address with the PT_LOAD
  program headers;
* JIT: anonymous executable memory is looked up in the process's perf map, read as the
  process sees it: ``/proc/PID/root/tmp/perf-NSPID.map`` where NSPID is its PID in its own
  PID namespace (last field of ``NSpid:`` in ``/proc/PID/status``), so containers work.

Caches are bounded LRUs: ELF tables keyed by (device, inode, size, mtime) so the same
library mapped by a hundred processes is parsed once, and perf maps keyed by file identity
too. Per-process state (the maps list) lives only for one profile. Everything here blocks;
callers run it in a worker thread (the capture thread of :mod:`.profiler`).
"""

from __future__ import annotations

import bisect
import os
import shutil
import struct
import subprocess
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from hostscope.metrics.sources import (
    Roots,
    SourceUnavailable,
    read_bytes,
    read_optional,
    translate,
)

from .symbol_limits import SymbolCacheLimits

#: A resolved frame: (name, kind, module). kind: "user" | "kernel" | "jit" | "unknown".
Frame = tuple[str, str, str | None]

UNKNOWN = "[unknown]"
#: ELF files larger than this are not read for symbols (a hostile or huge file).
MAX_ELF_BYTES = 1 << 30
#: Perf maps larger than this are not read (Node's --perf-basic-prof grows without bound).
MAX_PERF_MAP_BYTES = 64 << 20

_KERNEL_TEXT_TYPES = frozenset("tTwW")

K = TypeVar("K")
V = TypeVar("V")


# -- pure parsers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SymbolTable:
    """Sorted function symbols: ``starts[i]`` .. ``starts[i] + sizes[i]`` is ``names[i]``.

    A size of 0 (kallsyms has no sizes; some ELF symbols have none) means "up to the next
    symbol".
    """

    starts: list[int]
    sizes: list[int]
    names: Sequence[str]

    def lookup(self, addr: int) -> str | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i < 0:
            return None
        size = self.sizes[i]
        if size and addr >= self.starts[i] + size:
            return None
        return self.names[i]

    def __len__(self) -> int:
        return len(self.starts)


def _table(entries: dict[int, tuple[int, str]]) -> SymbolTable:
    starts = sorted(entries)
    return SymbolTable(starts, [entries[s][0] for s in starts], [entries[s][1] for s in starts])


def parse_kallsyms(text: str) -> SymbolTable:
    """Text symbols of ``/proc/kallsyms`` (``ffffffff81000000 T _text``, module symbols
    carry ``\\t[module]``, dropped here). All-zero addresses (kptr_restrict) are skipped:
    a table of zeros would name every frame after one symbol."""
    entries: dict[int, tuple[int, str]] = {}
    for line in text.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 3 or parts[1] not in _KERNEL_TEXT_TYPES:
            continue
        addr = int(parts[0], 16)
        if addr:
            entries.setdefault(addr, (0, parts[2]))
    return _table(entries)


def parse_perf_map(text: str) -> SymbolTable:
    """A JIT perf map: ``START SIZE NAME`` per line, hex with or without ``0x`` (Node and
    Python write none, JDK 17's ``jcmd PID Compiler.perfmap`` zero-padded ``0x...``); names
    may contain spaces (``long Hot.f(long)``, ``I2C/C2I adapters``). A later line for the
    same start wins: JITs reuse freed code addresses."""
    entries: dict[int, tuple[int, str]] = {}
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) != 3:
            continue
        try:
            start, size = int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            continue
        entries[start] = (size, parts[2].rstrip("\r"))
    return _table(entries)


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    @property
    def executable(self) -> bool:
        return "x" in self.perms

    @property
    def file_backed(self) -> bool:
        return self.inode != 0 and self.path.startswith("/")


def parse_proc_maps(text: str, executable_only: bool = False) -> list[Mapping]:
    """``/proc/PID/maps`` lines (``start-end perms offset dev inode [path]``), sorted by
    start. The path is everything after the inode (it may contain spaces, and ends in
    `` (deleted)`` when the file was removed since). ``executable_only`` keeps only
    mappings code can run from (a browser has thousands of data mappings)."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5 or (executable_only and parts[1][2:3] != "x"):
            continue
        lo, _, hi = parts[0].partition("-")
        try:
            out.append(Mapping(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16),
                               int(parts[4]), parts[5] if len(parts) > 5 else ""))
        except ValueError:
            continue
    out.sort(key=lambda m: m.start)
    return out


@dataclass(frozen=True, slots=True)
class ElfSymbols:
    """Function symbols of one ELF file plus its PT_LOAD segments (file offset -> vaddr)."""

    table: SymbolTable
    #: (p_offset, p_vaddr, p_filesz) of each PT_LOAD
    loads: tuple[tuple[int, int, int], ...]
    #: "" or why there are no symbols ("stripped", "not ELF", "32-bit ELF")
    problem: str = ""

    def vaddr(self, file_offset: int) -> int | None:
        for p_offset, p_vaddr, p_filesz in self.loads:
            if p_offset <= file_offset < p_offset + p_filesz:
                return file_offset - p_offset + p_vaddr
        return None


_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_PT_LOAD = 1
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_STT_FUNC, _STT_GNU_IFUNC = 2, 10
_LAST_UNSIZED = 16


def parse_elf_symbols(read_at: Callable[[int, int], bytes]) -> ElfSymbols:
    """Function symbols of a little-endian 64-bit ELF file read through ``read_at(offset,
    size)``: ``.symtab`` when present (unstripped), else ``.dynsym`` (exported only).

    Only headers and the symbol and string tables are read, never the whole file (a
    libxul or a JVM is hundreds of megabytes).
    """
    head = read_at(0, _EHDR.size)
    empty = SymbolTable([], [], [])
    if len(head) < _EHDR.size or head[:4] != b"\x7fELF":
        return ElfSymbols(empty, (), "not ELF")
    if head[4] != 2 or head[5] != 1:
        return ElfSymbols(empty, (), "not a little-endian 64-bit ELF")
    (_, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
     _) = _EHDR.unpack(head)
    loads = []
    if phnum and phentsize >= _PHDR.size:
        raw = read_at(phoff, phentsize * phnum)
        for i in range(min(phnum, len(raw) // phentsize)):
            p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = _PHDR.unpack_from(raw, i * phentsize)
            if p_type == _PT_LOAD:
                loads.append((p_offset, p_vaddr, p_filesz))
    sections = []
    if shnum and shentsize >= _SHDR.size:
        raw = read_at(shoff, shentsize * shnum)
        sections = [_SHDR.unpack_from(raw, i * shentsize)
                    for i in range(min(shnum, len(raw) // shentsize))]
    chosen = None
    for wanted in (_SHT_SYMTAB, _SHT_DYNSYM):
        for sec in sections:
            if sec[1] == wanted and sec[5] and sec[6] < len(sections):
                chosen = sec
                break
        if chosen:
            break
    if chosen is None:
        return ElfSymbols(empty, tuple(loads), "stripped (no .symtab or .dynsym)")
    strtab_sec = sections[chosen[6]]
    strtab = read_at(strtab_sec[4], strtab_sec[5])
    data = read_at(chosen[4], chosen[5] - chosen[5] % _SYM.size)
    entries: dict[int, tuple[int, int]] = {}
    funcs = (_STT_FUNC, _STT_GNU_IFUNC)
    for st_name, st_info, _, st_shndx, st_value, st_size in _SYM.iter_unpack(data):
        if st_info & 0xF in funcs and st_value and st_shndx and st_name:
            # Aliases share an address; keep the first sized one (__libc_malloc/malloc).
            old = entries.get(st_value)
            if old is None or not old[0]:
                entries[st_value] = (st_size, st_name)
    starts = sorted(entries)
    sizes = [entries[a][0] for a in starts]
    # Unsized symbols (_init, _fini, assembly) extend to the next symbol; the last one
    # gets a token size instead of the rest of the address space, which would name every
    # address past it (the PLT, garbage from broken unwinds) after it.
    for i, size in enumerate(sizes):
        if not size:
            sizes[i] = starts[i + 1] - starts[i] if i + 1 < len(starts) else _LAST_UNSIZED
    table = SymbolTable(starts, sizes, _StrtabNames(strtab, [entries[a][1] for a in starts]))
    return ElfSymbols(table, tuple(loads))


class _StrtabNames(Sequence[str]):
    """Symbol names decoded from the string table only when looked up: a profile names a
    few hundred of a library's tens of thousands of symbols, and decoding them all was
    most of the cost of loading a symbol table."""

    def __init__(self, strtab: bytes, offsets: list[int]) -> None:
        self._strtab = strtab
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        off = self._offsets[i]
        end = self._strtab.find(b"\0", off)
        return self._strtab[off:end if end >= 0 else None].decode("utf-8", "replace")


# -- caches --------------------------------------------------------------------------------


class _Lru(Generic[K, V]):
    """A small LRU by entry count and total weight (symbols held)."""

    def __init__(self, max_entries: int, max_weight: int) -> None:
        self.max_entries = max_entries
        self.max_weight = max_weight
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.weight = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: K) -> V | None:
        item = self._data.get(key)
        if item is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key: K, value: V, weight: int) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self.weight -= old[1]
        self._data[key] = (value, weight)
        self.weight += weight
        while self._data and (len(self._data) > self.max_entries
                              or self.weight > self.max_weight) and len(self._data) > 1:
            _, (_, w) = self._data.popitem(last=False)
            self.weight -= w
            self.evictions += 1

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._data), "symbols": self.weight, "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions}


def read_elf_file(path: Path, limit: int = MAX_ELF_BYTES) -> ElfSymbols | None:
    """:func:`parse_elf_symbols` of ``path`` (None if it cannot be opened or is larger
    than ``limit``), reading only the ranges the parser asks for."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        translate(exc, path)
        return None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            return None

        def read_at(offset: int, length: int) -> bytes:
            if offset >= size or length <= 0:
                return b""
            return os.pread(fd, min(length, size - offset), offset)

        try:
            return parse_elf_symbols(read_at)
        except (struct.error, ValueError):
            return ElfSymbols(SymbolTable([], [], []), (), "malformed ELF")
    except OSError as exc:
        translate(exc, path)
        return None
    finally:
        os.close(fd)


@dataclass(slots=True)
class ProcessSymbols:
    """What one profile needs to know about one process (lives as long as the profile)."""

    pid: int
    maps: list[Mapping]
    starts: list[int]
    nspid: int
    alive: bool
    perf_map: SymbolTable | None = None
    perf_map_name: str | None = None
    perf_map_loaded: bool = False
    #: resolved addresses (the same address recurs across stacks)
    cache: dict[int, Frame] = field(default_factory=dict)
    #: mapping start -> (its ELF symbols or None, module name)
    elves: dict[int, tuple[ElfSymbols | None, str]] = field(default_factory=dict)

    def mapping(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.maps[i].end:
            return self.maps[i]
        return None


def parse_nspid(status: str) -> int | None:
    """Innermost PID namespace's PID from /proc/PID/status (``NSpid: 4242 1``)."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            fields = line.split()[1:]
            return int(fields[-1]) if fields else None
    return None


class Symbolizer:
    """Resolves addresses of many processes with bounded, shared caches. Not thread-safe:
    one profile at a time uses it (the profiler runs one capture at a time)."""

    def __init__(self, roots: Roots | None = None, *,
                 limits: SymbolCacheLimits | None = None) -> None:
        self.roots = roots or Roots()
        self.limits = limits = limits or SymbolCacheLimits()
        self._kernel: SymbolTable | None = None
        self._elf: _Lru[tuple[int, int, int, int], ElfSymbols] = _Lru(limits.elf_files,
                                                                     limits.elf_symbols)
        self._perf_maps: _Lru[tuple[int, int, int, int], SymbolTable] = _Lru(
            limits.perf_maps, limits.perf_map_symbols)
        self.cxxfilt = shutil.which("c++filt")
        self.max_demangled = 100_000
        self._demangled: dict[str, str] = {}

    # -- kernel ------------------------------------------------------------------------

    def kernel_table(self) -> SymbolTable:
        if self._kernel is None:
            text = read_optional(self.roots.proc / "kallsyms", limit=64 << 20) or ""
            self._kernel = parse_kallsyms(text)
        return self._kernel

    def kernel_frame(self, addr: int) -> Frame:
        name = self.kernel_table().lookup(addr)
        return (name, "kernel", "[kernel]") if name else (UNKNOWN, "unknown", "[kernel]")

    # -- processes ---------------------------------------------------------------------

    def process(self, pid: int) -> ProcessSymbols:
        base = self.roots.proc / str(pid)
        maps_text = read_optional(base / "maps", limit=64 << 20)
        status = read_optional(base / "status") or ""
        maps = parse_proc_maps(maps_text or "", executable_only=True)
        return ProcessSymbols(pid, maps, [m.start for m in maps], parse_nspid(status) or pid,
                              maps_text is not None)

    def _elf_for(self, proc: ProcessSymbols, m: Mapping) -> tuple[ElfSymbols | None, str]:
        """The mapping's ELF symbols (looked up once per mapping and profile) and module."""
        found = proc.elves.get(m.start)
        if found is None:
            found = proc.elves[m.start] = (
                self._load_elf(proc, m), os.path.basename(m.path.removesuffix(" (deleted)")))
        return found

    def _load_elf(self, proc: ProcessSymbols, m: Mapping) -> ElfSymbols | None:
        # map_files names exactly the mapped file, even across mount namespaces or when the
        # path was deleted/replaced; fall back to the path inside the process's root.
        base = f"{self.roots.proc}/{proc.pid}"
        candidates = [Path(f"{base}/map_files/{m.start:x}-{m.end:x}"),
                      Path(f"{base}/root{m.path}")]
        for path in candidates:
            try:
                st = os.stat(path)
            except OSError as exc:
                translate(exc, path)
                continue
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            found = self._elf.get(key)
            if found is not None:
                return found
            elf = read_elf_file(path)
            if elf is None:
                continue
            self._elf.put(key, elf, max(1, len(elf.table)))
            return elf
        return None

    def _perf_map_for(self, proc: ProcessSymbols) -> SymbolTable | None:
        if proc.perf_map_loaded:
            return proc.perf_map
        proc.perf_map_loaded = True
        name = f"perf-{proc.nspid}.map"
        path = self.roots.proc / str(proc.pid) / "root" / "tmp" / name
        try:
            st = os.stat(path)
        except OSError as exc:
            translate(exc, path)
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        table = self._perf_maps.get(key)
        if table is None:
            try:
                text = read_bytes(path, MAX_PERF_MAP_BYTES).decode("utf-8", "replace")
            except SourceUnavailable:
                return None
            table = parse_perf_map(text)
            self._perf_maps.put(key, table, max(1, len(table)))
        proc.perf_map, proc.perf_map_name = table, name
        return table

    def user_frame(self, proc: ProcessSymbols, addr: int) -> Frame:
        hit = proc.cache.get(addr)
        if hit is not None:
            return hit
        frame = self._resolve_user(proc, addr)
        proc.cache[addr] = frame
        return frame

    def _resolve_user(self, proc: ProcessSymbols, addr: int) -> Frame:
        m = proc.mapping(addr)
        if m is not None and m.file_backed:
            elf, module = self._elf_for(proc, m)
            if elf is not None:
                vaddr = elf.vaddr(addr - m.start + m.offset)
                name = elf.table.lookup(vaddr) if vaddr is not None else None
                if name:
                    return (name, "user", module)
            return (UNKNOWN, "unknown", module)
        # Anonymous executable memory (or an address no mapping covers any more): JIT code.
        table = self._perf_map_for(proc)
        if table is not None:
            name = table.lookup(addr)
            if name:
                return (name, "jit", proc.perf_map_name)
        if m is not None and m.path.startswith("["):
            return (UNKNOWN, "unknown", m.path)
        return (UNKNOWN, "unknown", None)

    def demangle(self, names: list[str]) -> dict[str, str]:
        """C++ (Itanium ABI) names -> readable ones, with one ``c++filt`` run for the names
        not cached yet (argv only, names on stdin). Without c++filt, names stay mangled."""
        todo = [n for n in dict.fromkeys(names) if n.startswith("_Z") and n not in self._demangled
                and "\n" not in n]
        if todo and self.cxxfilt:
            try:
                out = subprocess.run([self.cxxfilt], input="\n".join(todo) + "\n",
                                     capture_output=True, text=True, timeout=10, check=True)
            except (OSError, subprocess.SubprocessError):
                out = None
            lines = out.stdout.split("\n") if out is not None else []
            if len(lines) >= len(todo):
                if len(self._demangled) + len(todo) > self.max_demangled:
                    self._demangled.clear()  # crude but bounded; refilled on demand
                self._demangled.update(zip(todo, lines, strict=False))
        return {n: self._demangled[n] for n in names if n in self._demangled}

    def stats(self) -> dict[str, dict[str, int]]:
        return {"elf": self._elf.stats(), "perf_maps": self._perf_maps.stats(),
                "kernel": {"symbols": len(self._kernel) if self._kernel else 0}}
