"""Rings of 32-bit floats kept in compressed blocks: the history's storage.

Why. An hour of every series at 1 s is 3,600 values a series; as a plain ``array('f')``
that is 14.4 KB a series and, for the ~380 system series and the per-process ones, most
of the daemon's growth over its first hour (issue #3 measured 35 MB after a minute, 48
after an hour). Most of those values repeat: idle disks and interfaces, error and drop
counters, pressure at zero, levels that move once a minute. Measured on the development
VM over 330 s of real collections, 128-value blocks compressed by zlib at level 1 (raw
deflate) took 0.58 bytes a value with their object overhead instead of 4; a block whose
values are all equal takes 4 bytes. Growing arrays also left allocator holes as other
allocations landed between their reallocations; blocks are small fixed-size objects that
never grow.

Layout. Slot ``s`` of a ring lives in block ``s // BLOCK``. The block being written is
*open*: a plain ``array('f')``, written in place at C speed. When a write moves to
another block, the open block is *sealed* (:func:`pack`) and the new one opened
(unpacked, when the ring has wrapped and it holds the previous cycle's values). Writes
move through a ring in slot order, so each block is packed once per cycle and unpacked
at most once. Reads unpack the sealed blocks they cover.

Cost. Packing is ~4 us a block (zlib level 1 over 512 bytes), once per 128 writes of a
series; unpacking ~1 us. The worst case, values that never repeat, stores a block raw:
4 bytes a value plus ~41 bytes a block (a bytes object and its list slot), 4.3 bytes a
value, about what the arrays took.
"""

from __future__ import annotations

import sys
import zlib
from array import array

#: Values per block: large enough for deflate to find the repeats (64 took 1.0 byte a
#: value on the measurement above, 256 0.36 but twice the open block and the unpacking
#: per read), small enough that a sealed block is a small-object allocation (<= 512 B).
BLOCK = 128
NAN = float("nan")
_NAN4 = array("f", [NAN]).tobytes()
_ZERO4 = array("f", [0.0]).tobytes()
#: Constant blocks of these values share one bytes object.
_SHARED = {_NAN4: _NAN4, _ZERO4: _ZERO4}
#: What a ring holds beyond its blocks' bytes: the ring object and its list.
_RING_BYTES = 56 + 56


def pack(values: bytes) -> bytes:
    """A sealed block of ``values`` (float32 bytes): 4 bytes if every value is the same,
    else raw deflate when that is smaller, else the bytes themselves. :func:`unpack`
    tells them apart by length (a deflated block of exactly 4 bytes or of the raw length
    is stored raw instead)."""
    first = values[:4]
    if values == first * (len(values) >> 2):
        return _SHARED.get(first, first)
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
    """

    __slots__ = ("capacity", "open", "open_k", "sealed")

    def __init__(self, capacity: int, sealed: list[bytes | None] | None = None) -> None:
        self.capacity = capacity
        #: Block -> its sealed bytes; None for the open block.
        self.sealed: list[bytes | None] = sealed if sealed is not None else []
        #: The open block's values, and its index (-1: none open).
        self.open = array("f")
        self.open_k = -1

    @classmethod
    def empty(cls, length: int, capacity: int) -> BlockRing:
        """A ring whose first ``length`` slots hold no value (NaN)."""
        return cls(capacity, [_NAN4] * -(-length // BLOCK))

    @classmethod
    def from_values(cls, values: array, capacity: int) -> BlockRing:
        """A ring holding ``values`` (float32) in its first slots, every block sealed."""
        ring = cls(capacity)
        for start in range(0, len(values), BLOCK):
            chunk = values[start : start + BLOCK]
            size = min(BLOCK, capacity - start)
            if len(chunk) < size:
                chunk.extend(array("f", [NAN]) * (size - len(chunk)))
            ring.sealed.append(pack(chunk.tobytes()))
        return ring

    def block_size(self, k: int) -> int:
        return min(BLOCK, self.capacity - k * BLOCK)

    def roll(self, k: int) -> None:
        """Seal the open block and open block ``k``."""
        sealed = self.sealed
        if self.open_k >= 0:
            sealed[self.open_k] = pack(self.open.tobytes())
        if k >= len(sealed):
            sealed.extend([_NAN4] * (k + 1 - len(sealed)))
        blob = sealed[k]
        assert blob is not None
        self.open = unpack(blob, self.block_size(k))
        sealed[k] = None
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
        self.sealed[self.open_k] = pack(self.open.tobytes())
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
                blob = self.sealed[k] if k < len(self.sealed) else _NAN4
                block = unpack(blob, self.block_size(k))  # type: ignore[arg-type]
            out += block[first - base : end - base]
            first = end
            k += 1
        return out

    def nbytes(self) -> int:
        """Bytes the ring holds: its blocks (shared constant blocks not counted), the
        open block, the list of blocks and the ring itself."""
        total = _RING_BYTES + 8 * len(self.sealed) + sys.getsizeof(self.open)
        for blob in self.sealed:
            if blob is not None and blob not in _SHARED:
                total += sys.getsizeof(blob)
        return total
