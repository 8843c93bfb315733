"""The bounds of the profiler's symbol caches, apart from the symbolizer itself.

The network-facing daemon reads them from its config and hands them to the privileged
helper, which is the only process that symbolizes; keeping this small dataclass in its own
module spares the daemon importing the symbolizer (ELF and perf-map parsing) for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SymbolCacheLimits:
    """Bounds of a :class:`~hostscope.bpfmods.symbols.Symbolizer`'s caches (the daemon's
    ``symbol_cache_*`` keys).

    Each cache is an LRU bounded by files and by the symbols they hold together (names
    included, ~150-200 bytes of memory each); the least recently used file goes first,
    but the newest always stays, even alone over the symbol bound.
    """

    #: Parsed ELF files (programs, libraries) kept between lookups and profiles ...
    elf_files: int = 256
    #: ... and the function symbols they may hold together.
    elf_symbols: int = 2_000_000
    #: Parsed JIT perf maps (/tmp/perf-PID.map) kept ...
    perf_maps: int = 32
    #: ... and the symbols they may hold together.
    perf_map_symbols: int = 2_000_000
