"""Rings of 32-bit floats kept in compressed blocks: the history's storage.

Why. An hour of every series at 1 s is 3,600 values a series; as a plain ``array('f')``
that is 14.4 KB a series and, for the ~380 system series and the per-process ones, most
of the daemon's growth over its first hour (issue #3 measured 35 MB after a minute, 48
after an hour). Most of those values repeat: idle disks and interfaces, error and drop
counters, pressure at zero, levels that move once a minute. Measured on the development
VM over 330 s of real collections, 128-value blocks compressed by zlib at level 1 (raw
deflate) took 0.58 bytes a value even as a bytes object each, instead of 4; a block
whose values are all equal takes 4 bytes.

Layout. Slot ``s`` of a ring lives in block ``s // BLOCK``. The block being written is
*open*: a plain ``array('f')``, written in place at C speed. When a write moves to
another block, the open block is *sealed* (:func:`pack`) and the new one opened
(unpacked, when the ring has wrapped and it holds the previous cycle's values). Writes
move through a ring in slot order, so each block is packed once per cycle and unpacked
at most once. Reads unpack the sealed blocks they cover.

Cost. Packing is ~4 us a block (zlib level 1 over 512 bytes), once per 128 writes of a
series; unpacking ~1 us. Sealed blocks sit end to end in one bytes object per ring, so
a block costs its bytes and a 4-byte offset. The worst case, values that never repeat,
stores every block raw: 4 bytes a value plus the offsets and the 576-byte open block,
about what a plain array took.
"""

from __future__ import annotations

import sys
import zlib
from array import array
from itertools import accumulate

#: Values per block: large enough for deflate to find the repeats (64 took 1.0 byte a
#: value on the measurement above, 256 0.36, with a bytes object per block), small
#: enough that the open block (512 bytes) and what a read unpacks stay small.
BLOCK = 128
NAN = float("nan")
_NAN4 = array("f", [NAN]).tobytes()
#: What a ring object itself takes.
_RING_BYTES = 72
#: Bytes a value at most, when no value repeats (every block raw, plus the offsets and
#: the open block): the bound the history and the benchmarks quote (4.12 measured).
MAX_BYTES_PER_VALUE = 4.4


def pack(values: bytes) -> bytes:
    """A sealed block of ``values`` (float32 bytes): 4 bytes if every value is the same,
    else raw deflate when that is smaller, else the bytes themselves. :func:`unpack`
    tells them apart by length (a deflated block of exactly 4 bytes or of the raw length
    is stored raw instead)."""
    first = values[:4]
    if values == first * (len(values) >> 2):
        return first
    packed = zlib.compress(values, 1, -15)
    if len(packed) >= len(values) or len(packed) == 4:
        return bytes(values)
    return packed


def unpack(blob: bytes, size: int) -> array:
    """The ``size`` values of a block sealed by :func:`pack`."""
    out = array("f")
    if len(blob) == 4:
        out.frombytes(blob)
        return out * size
    out.frombytes(blob if len(blob) == 4 * size else zlib.decompress(blob, -15))
    return out


class BlockRing:
    """``capacity`` float32 slots in blocks of :data:`BLOCK`; see the module docstring.

    The ring does not know how many slots hold values: its owner (a history group)
    keeps the write position, writes slots in order, and reads only slots it wrote.
    Slots never written read as NaN.

    Sealed blocks are kept end to end in one ``bytes`` (``_data``), block ``k`` ending
    at ``_ends[k]``: a block deflates to ~40 bytes here, and as objects of their own
    each would cost ~41 bytes more (a bytes header and a list slot). Sealing a block
    rebuilds ``_data`` (a copy of a few KB, once per 128 writes). The open block's
    place in ``_data`` is empty.
    """

    __slots__ = ("_data", "_ends", "capacity", "open", "open_k")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data = b""
        self._ends = array("I")
        #: The open block's values, and its index (-1: none open).
        self.open = array("f")
        self.open_k = -1

    @classmethod
    def empty(cls, length: int, capacity: int) -> BlockRing:
        """A ring whose first ``length`` slots hold no value (NaN)."""
        ring = cls(capacity)
        ring._extend(-(-length // BLOCK))
        return ring

    @classmethod
    def from_values(cls, values: array, capacity: int) -> BlockRing:
        """A ring holding ``values`` (float32) in its first slots, every block sealed."""
        ring = cls(capacity)
        blobs = []
        for start in range(0, len(values), BLOCK):
            chunk = values[start : start + BLOCK]
            size = min(BLOCK, capacity - start)
            if len(chunk) < size:
                chunk.extend(array("f", [NAN]) * (size - len(chunk)))
            blobs.append(pack(chunk.tobytes()))
        ring._data = b"".join(blobs)
        ring._ends.extend(accumulate(map(len, blobs)))
        return ring

    @property
    def blocks(self) -> int:
        """Blocks written so far (sealed or open)."""
        return len(self._ends)

    def block_size(self, k: int) -> int:
        return min(BLOCK, self.capacity - k * BLOCK)

    def _blob(self, k: int) -> bytes:
        ends = self._ends
        return self._data[ends[k - 1] if k else 0 : ends[k]]

    def _replace(self, k: int, blob: bytes) -> None:
        ends = self._ends
        start, end = (ends[k - 1] if k else 0), ends[k]
        self._data = b"".join((self._data[:start], blob, self._data[end:]))
        delta = len(blob) - (end - start)
        if delta:
            for j in range(k, len(ends)):
                ends[j] += delta

    def _extend(self, blocks: int) -> None:
        """Append ``blocks`` blocks of no value (NaN, 4 bytes each)."""
        if blocks > 0:
            end = self._ends[-1] if self._ends else 0
            self._data += _NAN4 * blocks
            self._ends.extend(range(end + 4, end + 4 * blocks + 1, 4))

    def roll(self, k: int) -> None:
        """Seal the open block and open block ``k``."""
        if self.open_k >= 0:
            self._replace(self.open_k, pack(self.open.tobytes()))
        self._extend(k + 1 - len(self._ends))
        self.open = unpack(self._blob(k), self.block_size(k))
        self._replace(k, b"")
        self.open_k = k

    def put(self, slot: int, value: float) -> None:
        """Write one slot (the history's per-value path inlines this for its hot loop)."""
        k = slot // BLOCK
        if k != self.open_k:
            self.roll(k)
        self.open[slot - k * BLOCK] = value

    def put_sealed(self, slot: int, value: float) -> None:
        """Write one slot and seal its block at once: for a ring written rarely (the
        coarse tier, once a minute), which would otherwise keep an open block of 576
        bytes between writes for the ~5 us a write costs this way."""
        self.put(slot, value)
        self._replace(self.open_k, pack(self.open.tobytes()))
        self.open = array("f")
        self.open_k = -1

    def get(self, first: int, last: int) -> array:
        """Slots ``first`` to ``last`` (exclusive), in slot order."""
        out = array("f")
        k = first // BLOCK
        while first < last:
            base = k * BLOCK
            end = min(last, base + BLOCK)
            if k == self.open_k:
                block = self.open
            else:
                blob = self._blob(k) if k < len(self._ends) else _NAN4
                block = unpack(blob, self.block_size(k))
            out += block[first - base : end - base]
            first = end
            k += 1
        return out

    def nbytes(self) -> int:
        """Bytes the ring holds: its sealed blocks, their offsets, the open block and
        the ring itself."""
        return (_RING_BYTES + sys.getsizeof(self._data) + sys.getsizeof(self._ends)
                + sys.getsizeof(self.open))
