"""Reference paths for ``bench_metrics.py``: the least a per-second tick can cost.

Not part of hostscope. Each reads the same procfs files as the per-second collectors,
through descriptors kept open, and does only what no design can skip: split each file
into tokens, turn every number into an integer, take per-second rates of all of them and
stage one history row of 32-bit floats. No per-metric dicts, no derived metrics, no views
for the API, and rates of every number (levels included): a lower bound, not a
replacement. Measured beside the sampler, they say how far a different design could go:

* :class:`FlatPython`: in Python, every step at C speed where Python allows
  (``bytes.split``, ``itemgetter``, ``map``, ``struct``);
* :class:`FlatC`: the tokenising and rates in C (``flat_reference.c``, built with the C
  compiler into a temporary directory and loaded with ctypes); None without a compiler.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
import tempfile
import time
from itertools import repeat
from operator import itemgetter, mul, sub
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: Numbers one tick may hold (the development VM's files hold ~1,300).
MAX_VALUES = 8192
#: History rows staged before wrapping (as metrics/history.py stages them).
STAGE_ROWS = 64
_READ = 65536


def _open(paths: list[Path]) -> list[int]:
    return [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in paths]


class FlatPython:
    """The per-second files as one flat list of integers, rates by ``map``, one row."""

    name = "flat Python"

    def __init__(self, paths: list[Path]) -> None:
        self.fds = _open(paths)
        self.pickers: list[Any] = []
        self.shape: list[int] = []
        self.prev: list[int] | None = None
        self.prev_t = 0.0
        self.row = struct.Struct("0f")
        self.stage = bytearray()
        self.rows = 0
        self.values = 0

    def _learn(self, tokens: list[list[bytes]]) -> None:
        """Positions of the numeric tokens of each file (again when a file's shape
        changes: a device or interface came or went)."""
        self.shape = [len(t) for t in tokens]
        self.pickers = []
        for toks in tokens:
            idx = [i for i, tok in enumerate(toks) if tok.isdigit()]
            # itemgetter of one index returns the item, not a tuple: ask for it twice
            # and keep the first.
            self.pickers.append(itemgetter(*idx) if len(idx) > 1 else
                                itemgetter(idx[0], idx[0]) if idx else None)
        self.prev = None

    def tick(self) -> None:
        tokens = [os.pread(fd, _READ, 0).split() for fd in self.fds]
        if [len(t) for t in tokens] != self.shape:
            self._learn(tokens)
        values: list[int] = []
        for picker, toks in zip(self.pickers, tokens, strict=True):
            if picker is not None:
                values.extend(map(int, picker(toks)))
        now = time.monotonic()
        prev = self.prev
        if prev is not None and len(prev) == len(values):
            rates = list(map(mul, map(sub, values, prev), repeat(1.0 / (now - self.prev_t))))
            if self.row.size != 4 * len(rates):
                self.row = struct.Struct(f"{len(rates)}f")
                self.stage = bytearray(self.row.size * STAGE_ROWS)
                self.rows = 0
            self.row.pack_into(self.stage, self.rows * self.row.size, *rates)
            self.rows = (self.rows + 1) % STAGE_ROWS
        self.prev, self.prev_t, self.values = values, now, len(values)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


class FlatC:
    """The same with the tokenising and the rates in C (see the module docstring)."""

    name = "flat C"

    def __init__(self, paths: list[Path], lib: ctypes.CDLL) -> None:
        self.fds = _open(paths)
        self.lib = lib
        self.buf = bytearray(_READ)
        self.cbuf = (ctypes.c_char * _READ).from_buffer(self.buf)
        self.now = (ctypes.c_int64 * MAX_VALUES)()
        self.prev = (ctypes.c_int64 * MAX_VALUES)()
        self.prev_n = -1
        self.prev_t = 0.0
        self.row = (ctypes.c_float * MAX_VALUES)()
        self.stage = bytearray(4 * MAX_VALUES * STAGE_ROWS)
        self.rows = 0
        self.values = 0

    def tick(self) -> None:
        count = 0
        base = ctypes.addressof(self.now)
        for fd in self.fds:
            size = os.preadv(fd, [self.buf], 0)
            count += self.lib.parse_numbers(self.cbuf, size, base + 8 * count,
                                            MAX_VALUES - count)
        now = time.monotonic()
        if count == self.prev_n:
            self.lib.rates(self.now, self.prev, self.row, count, 1.0 / (now - self.prev_t))
            offset = self.rows * 4 * count
            self.stage[offset:offset + 4 * count] = memoryview(self.row).cast("B")[:4 * count]
            self.rows = (self.rows + 1) % STAGE_ROWS
        self.now, self.prev = self.prev, self.now
        self.prev_n, self.prev_t, self.values = count, now, count

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def build_c(tmp: Path) -> ctypes.CDLL | None:
    """``flat_reference.c`` compiled and loaded; None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out = tmp / "libflat_reference.so"
    try:
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out),
                        str(HERE / "flat_reference.c")], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    lib = ctypes.CDLL(str(out))
    lib.parse_numbers.restype = ctypes.c_size_t
    lib.parse_numbers.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                  ctypes.c_size_t]
    lib.rates.restype = None
    lib.rates.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                          ctypes.c_double]
    return lib


def references(paths: list[Path], tmp: Path) -> list[FlatPython | FlatC]:
    """The reference paths this machine can run (flat C needs a C compiler)."""
    out: list[FlatPython | FlatC] = [FlatPython(paths)]
    lib = build_c(tmp)
    if lib is not None:
        out.append(FlatC(paths, lib))
    return out


def make_tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="hostscope-flat-"))
