"""The rate layer: first sample, wrap, reset, instances coming and going (incl. properties)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostscope.metrics.model import COUNT, NONE, ValueType, counter, instant
from hostscope.metrics.rates import RateConverter, counter_delta

U64 = counter("a.c64", COUNT, "64-bit counter", indom="x")
U32 = counter("a.c32", COUNT, "32-bit counter", indom="x", type=ValueType.U32)
LEVEL = instant("a.level", NONE, "a level", indom="x")
DESCS = RateConverter.counters_of({d.name: d for d in (U64, U32, LEVEL)})


def test_first_sample_has_no_rate_then_rates_per_second() -> None:
    conv = RateConverter()
    assert conv.convert(DESCS, {"a.c64": {"i": 100}}, 10.0) == {"a.c64": {"i": None}}
    assert conv.convert(DESCS, {"a.c64": {"i": 300}}, 12.0) == {"a.c64": {"i": 100.0}}


def test_non_counters_pass_through() -> None:
    conv = RateConverter()
    assert conv.convert(DESCS, {"a.level": {"i": 3.5}}, 1.0) == {"a.level": {"i": 3.5}}


def test_u32_wrap_is_continuous() -> None:
    conv = RateConverter()
    conv.convert(DESCS, {"a.c32": {"i": 2**32 - 50}}, 0.0)
    out = conv.convert(DESCS, {"a.c32": {"i": 50}}, 1.0)
    assert out["a.c32"]["i"] == 100.0


def test_u64_wrap_is_continuous() -> None:
    conv = RateConverter()
    conv.convert(DESCS, {"a.c64": {"i": 2**64 - 10}}, 0.0)
    assert conv.convert(DESCS, {"a.c64": {"i": 30}}, 2.0)["a.c64"]["i"] == 20.0


def test_reset_yields_no_rate_never_a_spike_and_recovers() -> None:
    conv = RateConverter()
    conv.convert(DESCS, {"a.c32": {"i": 5_000_000}}, 0.0)
    assert conv.convert(DESCS, {"a.c32": {"i": 10}}, 1.0)["a.c32"]["i"] is None
    assert conv.convert(DESCS, {"a.c32": {"i": 30}}, 2.0)["a.c32"]["i"] == 20.0


def test_instances_appear_and_vanish() -> None:
    conv = RateConverter()
    conv.convert(DESCS, {"a.c64": {"eth0": 10}}, 0.0)
    out = conv.convert(DESCS, {"a.c64": {"eth0": 20, "eth1": 5}}, 1.0)
    assert out["a.c64"] == {"eth0": 10.0, "eth1": None}
    # eth0 vanishes, then returns with a lower counter: a fresh first sample, no rate.
    conv.convert(DESCS, {"a.c64": {"eth1": 15}}, 2.0)
    out = conv.convert(DESCS, {"a.c64": {"eth0": 3, "eth1": 25}}, 3.0)
    assert out["a.c64"] == {"eth0": None, "eth1": 10.0}


def test_non_increasing_monotonic_time_gives_no_rate() -> None:
    conv = RateConverter()
    conv.convert(DESCS, {"a.c64": {"i": 1}}, 5.0)
    assert conv.convert(DESCS, {"a.c64": {"i": 2}}, 5.0)["a.c64"]["i"] is None


def test_missed_collection_rates_over_the_real_interval() -> None:
    conv = RateConverter()
    conv.convert(DESCS, {"a.c64": {"i": 0}}, 0.0)
    # the collector failed at t=1; at t=2 the rate covers both seconds
    assert conv.convert(DESCS, {"a.c64": {"i": 40}}, 2.0)["a.c64"]["i"] == 20.0


def test_state_is_per_group_and_a_metric_missing_last_time_starts_afresh() -> None:
    conv = RateConverter()
    conv.convert(DESCS, {"a.c64": {"i": 0}, "a.c32": {"i": 0}}, 0.0, group="g1")
    conv.convert(DESCS, {"a.c64": {"i": 1000}}, 0.5, group="g2")  # another collector
    out = conv.convert(DESCS, {"a.c64": {"i": 10}}, 1.0, group="g1")
    assert out == {"a.c64": {"i": 10.0}}
    # a.c32 was not in g1's previous collection: no rate, then rates again
    assert conv.convert(DESCS, {"a.c32": {"i": 50}}, 2.0, group="g1") == {"a.c32": {"i": None}}
    assert conv.convert(DESCS, {"a.c32": {"i": 70}}, 3.0, group="g1") == {"a.c32": {"i": 20.0}}
    assert conv.convert(DESCS, {"a.c64": {"i": 1100}}, 1.5, group="g2") == {
        "a.c64": {"i": 100.0}}


def test_forget_drops_a_metric_without_touching_the_kept_raw() -> None:
    conv = RateConverter()
    raw = {"a.c64": {"i": 1}, "a.c32": {"i": 1}}
    conv.convert(DESCS, raw, 0.0)
    conv.forget({"a.c64"})
    assert raw == {"a.c64": {"i": 1}, "a.c32": {"i": 1}}  # the collector's dict, unchanged
    out = conv.convert(DESCS, {"a.c64": {"i": 5}, "a.c32": {"i": 5}}, 1.0)
    assert out == {"a.c64": {"i": None}, "a.c32": {"i": 4.0}}


counters = st.integers(min_value=0, max_value=2**64 - 1)


@given(old=counters, new=counters)
def test_delta_is_never_negative_and_exact_when_increasing(old: int, new: int) -> None:
    delta = counter_delta(old, new, 64)
    if new >= old:
        assert delta == float(new - old)
    elif delta is not None:
        assert delta > 0
        # only a top-quarter -> bottom-quarter decrease counts as a wrap
        assert old >= 0.75 * 2**64 and new < 0.25 * 2**64


@given(
    start=st.integers(min_value=0, max_value=2**32 - 1),
    steps=st.lists(st.integers(min_value=0, max_value=2**29), min_size=1, max_size=50),
    dts=st.lists(st.floats(min_value=0.01, max_value=10.0), min_size=50, max_size=50),
)
def test_u32_counter_rates_recover_true_increments_across_wraps(
    start: int, steps: list[int], dts: list[float]
) -> None:
    """Increments below a quarter of the range are always recovered exactly, wrapped or not."""
    conv = RateConverter()
    value, t = start, 0.0
    conv.convert(DESCS, {"a.c32": {"i": value}}, t)
    for step, dt in zip(steps, dts, strict=False):
        value = (value + step) % 2**32
        t += dt
        rate = conv.convert(DESCS, {"a.c32": {"i": value}}, t)["a.c32"]["i"]
        prev = (value - step) % 2**32
        wrapped = prev + step >= 2**32
        if wrapped and not (prev >= 0.75 * 2**32 and value < 0.25 * 2**32):
            assert rate is None  # indistinguishable from a reset: gap, never a spike
        else:
            assert rate == pytest.approx(step / dt)


@given(values=st.lists(st.integers(min_value=0, max_value=2**40), min_size=2, max_size=40))
def test_rates_are_never_negative_whatever_the_sequence(values: list[int]) -> None:
    conv = RateConverter()
    for i, v in enumerate(values):
        rate = conv.convert(DESCS, {"a.c64": {"i": v}}, float(i))["a.c64"]["i"]
        assert rate is None or rate >= 0


def _reference(counters: dict[str, int | None], raw: dict[str, dict[str, int]], mono: float,
               prev: tuple[float, dict[str, dict[str, int]]] | None) -> dict[str, object]:
    """The rate rules metric by metric, instance by instance (the specification)."""
    cooked: dict[str, object] = dict(raw)
    for name, wrap_bits in counters.items():
        if name not in raw:
            continue
        old_values = prev[1].get(name) if prev is not None and mono > prev[0] else None
        out: dict[str, float | None] = {}
        for inst, value in raw[name].items():
            old = None if old_values is None else old_values.get(inst)
            delta = None if old is None else counter_delta(old, value, wrap_bits)
            out[inst] = None if delta is None else delta * (1.0 / (mono - prev[0]))  # type: ignore[index]
        cooked[name] = out
    return cooked


@given(st.lists(
    st.tuples(
        st.sets(st.sampled_from(("a.c64", "a.c32", "a.level")), min_size=1),  # metrics
        st.sets(st.sampled_from(("i", "j", "k")), min_size=1),  # instances of a.c64
        st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=4, max_size=4),
        st.booleans(),  # repeat the previous layout with new values (the common case)
        st.sampled_from((1.0, 0.5, 0.0)),  # time step (0: not later, no rate)
    ),
    min_size=1, max_size=30,
))
def test_flat_path_gives_the_rates_of_the_rules(
    ticks: list[tuple[set[str], set[str], list[int], bool, float]],
) -> None:
    """Whatever the sequence of layouts and values (increases, resets, u32 wraps), the
    converter's result is the rules' result, value for value."""
    conv = RateConverter()
    prev: tuple[float, dict[str, dict[str, int]]] | None = None
    metrics, insts = {"a.c64"}, {"i"}
    mono = 0.0
    for present, instances, values, repeat, step in ticks:
        if not repeat:
            metrics, insts = present, instances
        raw: dict[str, dict[str, int]] = {}
        for name in sorted(metrics):
            if name == "a.c64":
                raw[name] = {inst: values[n] * 2**20 for n, inst in enumerate(sorted(insts))}
            else:
                raw[name] = {"": values[3]}
        mono += step
        want = _reference(DESCS, raw, mono, prev)
        got = conv.convert(DESCS, raw, mono)  # type: ignore[arg-type]
        assert got == want
        for name in want:
            assert list(got[name]) == list(want[name])  # type: ignore[arg-type]
        prev = (mono, raw)


def test_unchanged_metrics_keep_the_previous_dicts_and_rate_zero() -> None:
    conv = RateConverter()
    first = {"a.c64": {"i": 5, "j": 7}, "a.level": {"i": 1.5}}
    conv.convert(DESCS, first, 0.0)
    second = {"a.c64": {"i": 5, "j": 7}, "a.level": {"i": 1.5}}
    out = conv.convert(DESCS, second, 1.0)
    assert out == {"a.c64": {"i": 0.0, "j": 0.0}, "a.level": {"i": 1.5}}
    # the equal dicts were replaced by the previous collection's (freed while in cache)
    assert second["a.c64"] is first["a.c64"] and out["a.level"] is first["a.level"]
    third = {"a.c64": {"i": 5, "j": 7}, "a.level": {"i": 2.5}}
    again = conv.convert(DESCS, third, 2.0)
    assert again["a.c64"] is out["a.c64"]  # one dict of zeros while nothing changes
    assert again["a.level"] == {"i": 2.5}
    fourth = {"a.c64": {"i": 6, "j": 7}, "a.level": {"i": 2.5}}
    assert conv.convert(DESCS, fourth, 3.0)["a.c64"] == {"i": 1.0, "j": 0.0}
