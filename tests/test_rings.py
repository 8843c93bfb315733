"""The history's compressed rings: values read back exactly as a plain float32 array
holds them, whatever the blocks were packed as."""

from __future__ import annotations

import math
import random
import struct
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from hostscope.metrics.rings import BLOCK, BlockRing, pack, unpack

NAN = float("nan")


def _f32(values: list[float]) -> array:
    return array("f", values)


def _same(a: array | list[float], b: array | list[float]) -> bool:
    """Equal bit for bit (NaN included)."""
    return array("f", a).tobytes() == array("f", b).tobytes()


def test_pack_stores_constant_blocks_in_four_bytes() -> None:
    for value in (NAN, 0.0, 2.5):
        blob = pack(_f32([value] * BLOCK).tobytes())
        assert len(blob) == 4
        assert _same(unpack(blob, BLOCK), [value] * BLOCK)


def test_pack_deflates_repetitive_blocks_and_keeps_noise_raw() -> None:
    mostly_idle = [0.0] * BLOCK
    mostly_idle[17] = 4096.0
    mostly_idle[90] = 12.25
    blob = pack(_f32(mostly_idle).tobytes())
    assert 4 < len(blob) < 40
    assert _same(unpack(blob, BLOCK), mostly_idle)
    rng = random.Random(3)
    noise = [rng.random() for _ in range(BLOCK)]
    raw = _f32(noise).tobytes()
    blob = pack(raw)
    assert blob == raw  # deflate saves nothing: stored as it is
    assert _same(unpack(blob, BLOCK), noise)


def test_a_partial_last_block_round_trips() -> None:
    values = [float(i % 3) for i in range(BLOCK + 20)]
    ring = BlockRing.from_values(_f32(values), capacity=BLOCK + 20)
    assert ring.blocks == 2
    assert _same(ring.get(0, BLOCK + 20), values)
    assert _same(ring.get(BLOCK - 3, BLOCK + 5), values[BLOCK - 3 : BLOCK + 5])


def test_an_empty_ring_reads_nan_and_writes_in_place() -> None:
    ring = BlockRing.empty(300, capacity=1000)
    assert all(math.isnan(v) for v in ring.get(0, 300))
    ring.put(299, 7.0)
    ring.put(300, 8.0)
    got = ring.get(298, 301)
    assert math.isnan(got[0]) and got[1:].tolist() == [7.0, 8.0]


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=5 * BLOCK + 7),
    writes=st.integers(min_value=0, max_value=12 * BLOCK),
    kind=st.sampled_from(["constant", "steps", "noise", "nan gaps"]),
    seed=st.integers(min_value=0, max_value=2**16),
    reads=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=8),
)
def test_a_ring_reads_back_what_a_plain_ring_holds(
    capacity: int, writes: int, kind: str, seed: int, reads: list[tuple[int, int]],
) -> None:
    """Writes in slot order, wrapping as the history writes them; any range reads back
    as the same range of a float32 array written the same way."""
    rng = random.Random(seed)
    model = array("f")
    ring = BlockRing.empty(0, capacity)
    for i in range(writes):
        if kind == "constant":
            value = 3.0
        elif kind == "steps":
            value = float(i // 50)
        elif kind == "noise":
            value = rng.uniform(-1e6, 1e6)
        else:
            value = NAN if rng.random() < 0.3 else float(rng.randint(0, 3))
        slot = i % capacity
        if len(model) < capacity:
            model.append(value)
        else:
            model[slot] = value
        if rng.random() < 0.2:  # as the coarse tier writes
            ring.put_sealed(slot, value)
        else:
            ring.put(slot, value)
        if rng.random() < 0.01:  # reads in between unpack sealed blocks
            a = rng.randrange(len(model) + 1)
            assert _same(ring.get(a, len(model)), model[a:])
    length = len(model)
    assert _same(ring.get(0, length), model)
    for x, y in reads:
        a, b = sorted((x % (length + 1), y % (length + 1)))
        assert _same(ring.get(a, b), model[a:b])
    # the bytes it holds: at worst the values raw, an offset a block and the open block
    blocks = -(-capacity // BLOCK)
    assert ring.nbytes() <= 4 * capacity + 8 * blocks + 800


def test_float32_rounding_is_what_a_plain_array_does() -> None:
    ring = BlockRing.empty(0, 10)
    ring.put(0, 0.1)
    assert ring.get(0, 1)[0] == struct.unpack("f", struct.pack("f", 0.1))[0]
