"""History rings: alignment, wrap-around, eviction, coarse tier, bounds."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostscope.metrics import history as history_module
from hostscope.metrics.history import History


def _fill(history: History, group: str, n: int) -> None:
    for i in range(n):
        history.append(group, float(i), {"m.a": {"": float(i)}})


def test_query_returns_columnar_slice_oldest_first() -> None:
    h = History(retention_s=10)
    h.add_group("g", 1.0)
    _fill(h, "g", 5)
    [sl] = h.query(["m.a"], 60)
    assert sl.group == "g" and sl.step_s == 1.0
    assert sl.timestamps == [0, 1, 2, 3, 4]
    assert sl.series[("m.a", "")] == [0, 1, 2, 3, 4]


def test_ring_wraps_and_keeps_the_newest_window() -> None:
    h = History(retention_s=10)
    h.add_group("g", 1.0)
    _fill(h, "g", 25)
    [sl] = h.query(["m.a"], 3600)
    assert sl.timestamps == [float(t) for t in range(15, 25)]
    assert sl.series[("m.a", "")] == [float(v) for v in range(15, 25)]


def test_seconds_limits_the_range() -> None:
    h = History(retention_s=100)
    h.add_group("g", 1.0)
    _fill(h, "g", 50)
    [sl] = h.query(["m.a"], 4.5)
    assert sl.timestamps == [45, 46, 47, 48, 49]


def test_series_appearing_later_and_after_wrap_stay_aligned() -> None:
    h = History(retention_s=5)
    h.add_group("g", 1.0)
    for i in range(12):
        vals: dict[str, dict[str, float | None]] = {"m.a": {"x": float(i)}}
        if i >= 3:
            vals["m.a"]["late"] = 100.0 + i
        if i >= 9:  # appears after the ring has wrapped
            vals["m.a"]["later"] = 200.0 + i
        h.append("g", float(i), vals)
    [sl] = h.query(["m.a"], 3600)
    assert sl.timestamps == [7, 8, 9, 10, 11]
    assert sl.series[("m.a", "x")] == [7, 8, 9, 10, 11]
    assert sl.series[("m.a", "late")] == [107, 108, 109, 110, 111]
    assert sl.series[("m.a", "later")] == [None, None, 209, 210, 211]


def test_missing_values_are_none_and_vanished_series_are_evicted() -> None:
    h = History(retention_s=4)
    h.add_group("g", 1.0)
    h.append("g", 0.0, {"m.a": {"p1": 1.0, "p2": 2.0}})
    h.append("g", 1.0, {"m.a": {"p1": None, "p2": 3.0}})
    [sl] = h.query(["m.a"], 60)
    assert sl.series[("m.a", "p1")] == [1.0, None]
    assert h.series_count == 2
    for t in range(2, 8):
        h.append("g", float(t), {"m.a": {"p2": 1.0}})
    assert h.series_count == 1  # p1 absent for a whole window
    assert ("m.a", "p1") not in set(h.keys())


def test_empty_collections_of_a_group_without_series_record_nothing() -> None:
    """A BPF module that is off collects nothing every second: no timestamps are kept
    for it. Once its series exist, an empty collection is a gap, as any absence is."""
    h = History(retention_s=4)
    h.add_group("g", 1.0)
    before = h.nbytes()
    for t in range(10):
        h.append("g", float(t), {})
        h.append("g", float(t) + 0.5, {"m.a": {}})
    assert h.nbytes() == before
    assert h.query(["m.a"], 60) == [] or all(not sl.timestamps for sl in h.query(["m.a"], 60))
    h.append("g", 20.0, {"m.a": {"": 1.0}})
    h.append("g", 21.0, {})
    h.append("g", 22.0, {"m.a": {"": 3.0}})
    [sl] = h.query(["m.a"], 60)
    assert sl.timestamps == [20.0, 21.0, 22.0]
    assert sl.series[("m.a", "")] == [1.0, None, 3.0]
    for t in range(23, 30):
        h.append("g", float(t), {})
    assert h.series_count == 0  # absent for a whole window: evicted, as before
    length = h.nbytes()
    h.append("g", 30.0, {})
    assert h.nbytes() == length  # and from then on nothing is recorded again


def test_strings_are_not_stored() -> None:
    h = History(retention_s=4)
    h.add_group("g", 1.0)
    h.append("g", 0.0, {"m.s": {"": "text"}, "m.a": {"": 1.0}})
    assert h.keys() == [("m.a", "")]


def test_max_series_bounds_memory_and_counts_drops() -> None:
    h = History(retention_s=4, max_series=3)
    h.add_group("g", 1.0)
    h.append("g", 0.0, {"m.a": {str(i): 1.0 for i in range(10)}})
    assert h.series_count == 3
    assert h.dropped_series == 7


@pytest.mark.parametrize("values", ["constant", "noise"])
def test_memory_per_series_matches_the_documented_figure(values: str) -> None:
    """An hour at 1 s and a day of minute means: at most 4.4 bytes a value when no
    value repeats (blocks stored raw), under 1 KB when all do (most of it the fine
    tier's open block)."""
    rng = random.Random(7)
    h = History(retention_s=3600, coarse_step_s=60, coarse_retention_s=86400)
    h.add_group("g", 1.0)
    h.append("g", 0.0, {"m.a": {"": 1.0}})
    base = h.nbytes()
    for t in range(1, 3600 + 24 * 60 * 60, 1):
        if t % 3 == 0 or t < 3600:  # keep the test fast: sparse after the first hour
            value = 1.0 if values == "constant" else rng.random()
            h.append("g", float(t), {"m.a": {"": value}})
    per_series = h.nbytes() - 8 * (3600 + 1440)  # minus the shared time rings
    assert base > 0
    if values == "noise":
        assert 4 * (3600 + 1440) < per_series <= 4.4 * (3600 + 1440), per_series
    else:
        assert per_series < 1000, per_series
    [piece] = h.query(["m.a"], 3600)
    assert len(piece.series[("m.a", "")]) == 1200  # every 3 s in the last hour


def test_coarse_tier_holds_minute_means_for_long_ranges() -> None:
    h = History(retention_s=120, coarse_step_s=60, coarse_retention_s=3600)
    h.add_group("g", 1.0)
    for t in range(0, 600):
        h.append("g", float(t), {"m.a": {"": float(t // 60)}})
    [fine] = h.query(["m.a"], 60)
    assert fine.step_s == 1.0 and len(fine.timestamps) == 60
    [coarse] = h.query(["m.a"], 3600)
    assert coarse.step_s == 60
    # complete minutes 0..8 flushed; each minute's mean equals its constant value
    assert coarse.timestamps == [60.0 * m for m in range(9)]
    assert coarse.series[("m.a", "")] == [float(m) for m in range(9)]


def test_groups_without_coarse_tier_and_instance_filter() -> None:
    h = History(retention_s=10)
    h.add_group("fast", 1.0)
    h.add_group("proc", 2.0, coarse=False)
    for t in range(10):
        h.append("fast", float(t), {"m.a": {"": 1.0}})
        if t % 2 == 0:
            h.append("proc", float(t), {"p.cpu": {"1:10": 0.5, "2:20": 0.25}})
    slices = {s.group: s for s in h.query(["m.a", "p.cpu"], 3600, instances={"p.cpu": {"2:20"}})}
    assert slices["proc"].timestamps == [0, 2, 4, 6, 8]
    assert list(slices["proc"].series) == [("p.cpu", "2:20")]
    assert h.query(["p.cpu"], 86400)[0].step_s == 2.0  # no coarse tier: fine data


def test_timeline_is_the_union_of_the_groups_timestamps_in_the_tier_read() -> None:
    h = History(retention_s=20, coarse_step_s=60, coarse_retention_s=3600)
    h.add_group("fast", 1.0)
    h.add_group("slow", 5.0)
    h.add_group("proc", 2.0, coarse=False)
    for t in range(200):
        h.append("fast", float(t), {"m.a": {"": 1.0}})
        if t % 5 == 0:
            h.append("slow", float(t) + 0.5, {"s.a": {"": 2.0}})
        if t % 2 == 0:
            h.append("proc", float(t), {"p.cpu": {"1:10": 0.5}})
    stamps, step = h.timeline(["m.a", "s.a"], 189.0, 199.0)
    assert stamps == sorted([float(t) for t in range(190, 200)] + [190.5, 195.5])
    assert step == 1.0
    assert stamps == sorted(t for s in h.query_range(["m.a", "s.a"], 189.0, 199.0)
                            for t in s.timestamps)
    # A read past the fine window uses the coarse tier where a group has one.
    coarse, step = h.timeline(["m.a", "p.cpu"], 0.0, 199.0, tier_s=3600)
    assert step == 2.0  # the proc group has no coarse tier: its fine points, step 2 s
    assert {60.0, 120.0} <= set(coarse)  # (0, 199]: the minute means after 0
    assert h.timeline(["nothing"], 0.0, 199.0) == ([], None)


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError):
        History(retention_s=0)


def test_float32_precision_is_enough_for_display() -> None:
    h = History(retention_s=4)
    h.add_group("g", 1.0)
    h.append("g", 0.0, {"m.a": {"": 123456.789}})
    [sl] = h.query(["m.a"], 10)
    value = sl.series[("m.a", "")][0]
    assert value is not None and math.isclose(value, 123456.789, rel_tol=1e-6)


def test_coarse_means_skip_missing_points_and_span_the_ring_wrap() -> None:
    h = History(retention_s=90, coarse_step_s=60, coarse_retention_s=3600)
    h.add_group("g", 1.0)
    for t in range(240):
        minute = t // 60
        a = None if minute == 2 and t % 60 < 30 else float(t)  # minute 2: first half absent
        b = None if minute == 1 else 1.0  # minute 1: no value at all
        h.append("g", float(t), {"m.a": {"": a}, "m.b": {"": b}})
    [coarse] = h.query(["m.a", "m.b"], 3600)
    assert coarse.step_s == 60 and coarse.timestamps == [0.0, 60.0, 120.0]
    # minutes 1 and 2 were read back across the wrap of the 90-point fine ring
    assert coarse.series[("m.a", "")] == [29.5, 89.5, 164.5]
    assert coarse.series[("m.b", "")] == [1.0, None, 1.0]


# --- the planned path (same layout as last time) against the value-by-value path ----

_INSTANCES = ("a", "b", "c")


@settings(max_examples=150, deadline=None)
@given(st.lists(
    st.tuples(
        st.sets(st.sampled_from(_INSTANCES), min_size=1),  # instances present
        st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6, width=32)), min_size=3,
                 max_size=3),
        st.booleans(),  # whether the collection repeats the previous one's layout
    ),
    min_size=1, max_size=40,
))
def test_planned_appends_store_what_value_by_value_appends_store(
    ticks: list[tuple[set[str], list[float | None], bool]],
) -> None:
    planned = History(retention_s=8, coarse_retention_s=0)
    one_by_one = History(retention_s=8, coarse_retention_s=0)
    for h in (planned, one_by_one):
        h.add_group("g", 1.0)
    one_by_one._plan = lambda *args: None  # type: ignore[method-assign]  # never plan
    layout: set[str] = {"a"}
    for t, (present, values, repeat) in enumerate(ticks):
        if not repeat:
            layout = present
        collection = {
            "m.x": {inst: values[i] for i, inst in enumerate(_INSTANCES) if inst in layout},
            "m.y": {"": values[0]},
        }
        planned.append("g", float(t), collection)
        one_by_one.append("g", float(t), collection)
    got_slices = planned.query(["m.x", "m.y"], 3600)
    want_slices = one_by_one.query(["m.x", "m.y"], 3600)
    if not want_slices:  # no value ever: value by value keeps no series at all
        assert all(v is None for sl in got_slices for vs in sl.series.values() for v in vs)
        return
    [got], [want] = got_slices, want_slices
    assert got.timestamps == want.timestamps
    for key, series in want.series.items():
        assert _same(got.series[key], series), key
    for key in set(got.series) - set(want.series):
        # an instance whose every value was None (or long gone) has an all-None series
        assert all(v is None for v in got.series[key]), key


def _same(a: list[float | None], b: list[float | None]) -> bool:
    return len(a) == len(b) and all(x == y for x, y in zip(a, b, strict=True))


def test_plan_is_used_for_repeated_layouts_and_dropped_when_series_change() -> None:
    h = History(retention_s=4)
    h.add_group("g", 1.0)
    h.append("g", 0.0, {"m.a": {"x": 1.0, "y": None}})  # y gets an all-NaN series
    group = h._groups["g"]
    assert group.plan is not None and len(group.plan.rings) == 2
    h.append("g", 1.0, {"m.a": {"x": 2.0, "y": 5.0}})
    assert group.planned_at == 2
    h.append("g", 2.0, {"m.a": {"x": 3.0, "z": 1.0}})  # a new layout: value by value
    assert group.planned_at == 2
    [sl] = h.query(["m.a"], 60)
    assert sl.series[("m.a", "x")] == [1.0, 2.0, 3.0]
    assert sl.series[("m.a", "y")] == [None, 5.0, None]
    assert sl.series[("m.a", "z")] == [None, None, 1.0]


_TEXTS = ("text", "other text")


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sets(st.sampled_from(_INSTANCES), min_size=1),
            st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6, width=32)), min_size=3,
                     max_size=3),
            st.booleans(),  # repeat the previous layout
            st.sampled_from((*_TEXTS, 7.0)),  # m.t: text, or (rarely) a number
            st.booleans(),  # m.e empty, or one value
        ),
        min_size=1, max_size=60,
    ),
    st.integers(1, 5),
)
def test_staged_rows_with_text_and_coarse_tier_match_value_by_value(
    ticks: list[tuple[set[str], list[float | None], bool, str | float, bool]],
    stage_rows: int,
) -> None:
    """Rows staged a few at a time (across ring wraps and coarse flushes), with text
    metrics and metrics that are sometimes empty, read back as value-by-value writes.

    The fine tier is compared with a short ring (wraps); the coarse tier with a ring
    longer than the test, because a planned tick counts a None value as seen (the
    series is kept) where the value-by-value path counts it as absent and may evict
    the series, and its per-minute means with it."""
    for retention, seconds in ((7, 3), (70, 3600)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(history_module, "STAGE_ROWS", stage_rows)
            kwargs = {"retention_s": retention, "coarse_step_s": 4, "coarse_retention_s": 400}
            planned, one_by_one = History(**kwargs), History(**kwargs)  # type: ignore[arg-type]
            for h in (planned, one_by_one):
                h.add_group("g", 1.0)
            one_by_one._plan = lambda *args: None  # type: ignore[method-assign]  # never plan
            layout: set[str] = {"a"}
            for t, (present, values, repeat, text, empty) in enumerate(ticks):
                if not repeat:
                    layout = present
                collection = {
                    "m.t": {"": text},
                    "m.x": {i: values[n] for n, i in enumerate(_INSTANCES) if i in layout},
                    "m.e": {} if empty else {"only": values[1]},
                    "m.y": {"": values[0]},
                }
                planned.append("g", float(t), collection)  # type: ignore[arg-type]
                one_by_one.append("g", float(t), collection)  # type: ignore[arg-type]
                if t % 9 == 4:  # a read between appends moves the staged rows early
                    planned.query(["m.y"], 3)
        names = ["m.t", "m.x", "m.e", "m.y"]
        got_slices = planned.query(names, seconds)
        want_slices = one_by_one.query(names, seconds)
        got = got_slices[0].series if got_slices else {}
        want = want_slices[0].series if want_slices else {}
        if want_slices:
            assert got_slices[0].timestamps == want_slices[0].timestamps
            assert got_slices[0].step_s == want_slices[0].step_s
        for key, series in want.items():
            assert _same(got[key], series), (seconds, key)
        for key in set(got) - set(want):
            # an instance whose every value was None (or long gone) has an all-None series
            assert all(v is None for v in got[key]), key


def test_a_text_value_where_numbers_were_is_skipped_not_raised() -> None:
    h = History(retention_s=4)
    h.add_group("g", 1.0)
    h.append("g", 0.0, {"m.a": {"": 1.0}, "m.b": {"": 2.0}})
    h.append("g", 1.0, {"m.a": {"": "oops"}, "m.b": {"": 3.0}})  # same layout, text
    h.append("g", 2.0, {"m.a": {"": 4.0}, "m.b": {"": 5.0}})
    [sl] = h.query(["m.a", "m.b"], 60)
    assert sl.series[("m.a", "")] == [1.0, None, 4.0]
    assert sl.series[("m.b", "")] == [2.0, 3.0, 5.0]


def test_staged_rows_fill_growing_rings_and_wrap() -> None:
    h = History(retention_s=5, coarse_retention_s=0)
    h.add_group("g", 1.0)
    for t in range(13):  # no read until the end: rows staged across growth and two wraps
        h.append("g", float(t), {"m.a": {"": float(t)}, "m.b": {"x": -t, "y": t * 2}})
    [sl] = h.query(["m.a", "m.b"], 60)
    assert sl.timestamps == [8.0, 9.0, 10.0, 11.0, 12.0]
    assert sl.series[("m.a", "")] == [8.0, 9.0, 10.0, 11.0, 12.0]
    assert sl.series[("m.b", "x")] == [-8.0, -9.0, -10.0, -11.0, -12.0]
    assert sl.series[("m.b", "y")] == [16.0, 18.0, 20.0, 22.0, 24.0]


# --- sparse series (short-lived instances) against rings from their first value -------


def _always_rings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every series a ring from its first value on (what the history did before sparse
    series): the reference the sparse ones must read back the same as."""
    monkeypatch.setattr(history_module, "sparse_limit", lambda capacity: 0)


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.sets(st.sampled_from(("a", "b", "c", "d")), max_size=4),
             min_size=1, max_size=70),
    st.booleans(),
)
def test_sparse_series_read_back_as_rings_do(presence: list[set[str]], planned: bool) -> None:
    """Instances come and go over more ticks than the ring holds (it wraps, series turn
    from sparse to rings at 8 values, absent ones are evicted, minutes are averaged):
    every read, fine and coarse, equals that of a history keeping rings throughout, to
    the bit (values not exact in 32 bits are rounded alike)."""
    histories = []
    for sparse in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            if not sparse:
                _always_rings(mp)
            h = History(retention_s=20, coarse_step_s=5, coarse_retention_s=40)
            h.add_group("g", 1.0, metrics=None if planned else frozenset({"m.x"}))
            for t, present in enumerate(presence):
                values = {i: t * 10.1 + ord(i) / 3 for i in sorted(present)}
                h.append("g", float(t), {"m.x": values})
            histories.append((
                h.query(["m.x"], 20), h.query(["m.x"], 40),
                h.query_range(["m.x"], 3.0, 15.0, tier_s=10),
            ))
    assert histories[0] == histories[1]


def test_a_short_lived_instance_costs_its_values_not_a_ring() -> None:
    """One new process per sample for an hour at 2 s: each costs the values it had, not
    an hour of NaN padding (1,800 slots), and its values read back where they were."""
    h = History(retention_s=3600, coarse_retention_s=0)
    h.add_group("proc", 2.0, coarse=False, metrics=frozenset({"proc.cpu"}))
    steady = {str(i): 1.0 for i in range(50)}
    for t in range(1800):
        h.append("proc", 2.0 * t, {"proc.cpu": {**steady, f"short{t}": float(t)}})
    series = h.series_count
    assert series == 50 + 1800
    # 50 rings of 1,800 floats, the time ring, and ~1,800 one-value sparse series
    rings = 50 * 4 * 1800 + 8 * 1800
    assert h.nbytes() < rings + 1800 * 400, h.nbytes()
    [piece] = h.query(["proc.cpu"], 3600, instances={"proc.cpu": {"short700", "3"}})
    values = piece.series[("proc.cpu", "short700")]
    assert values[700] == 700.0 and sum(v is not None for v in values) == 1
    assert all(v == 1.0 for v in piece.series[("proc.cpu", "3")])


def test_a_sparse_series_becomes_a_ring_once_it_has_values_enough() -> None:
    h = History(retention_s=640)  # 640 slots at 1 s: sparse up to 10 values
    h.add_group("g", 1.0, metrics=frozenset({"m.x"}))
    for t in range(30):
        h.append("g", float(t), {"m.x": {"long": float(t), **({"brief": 5.0} if t < 3 else {})}})
    fine = {key: s.fine for key, s in h._groups["g"].series.items()}
    assert history_module.sparse_limit(640) == 10
    assert isinstance(fine[("m.x", "brief")], dict) and len(fine[("m.x", "brief")]) == 3
    assert not isinstance(fine[("m.x", "long")], dict)
    [piece] = h.query(["m.x"], 640)
    assert piece.series[("m.x", "long")] == [float(t) for t in range(30)]
    assert piece.series[("m.x", "brief")] == [5.0] * 3 + [None] * 27


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 40),
    written=st.integers(0, 100),
    low=st.floats(-5, 105, allow_nan=False),
    span=st.floats(0, 110, allow_nan=False),
)
def test_a_range_of_a_ring_of_times_is_found_without_unrolling_it(
    capacity: int, written: int, low: float, span: float
) -> None:
    """Bisecting a ring's two runs in place finds what unrolling it and bisecting finds."""
    from array import array
    from bisect import bisect_right

    times: array = array("d")
    head = 0
    for t in range(written):  # increasing timestamps written as History writes them
        if len(times) < capacity:
            times.append(float(t))
        else:
            times[head] = float(t)
            head = (head + 1) % capacity
    ordered = (times.tolist() if len(times) < capacity
               else times[head:].tolist() + times[:head].tolist())
    high = low + span
    first, last = bisect_right(ordered, low), bisect_right(ordered, high)
    assert history_module._times_range(times, capacity, head, low, high) == (
        first, last, ordered[first:last])


def test_a_read_naming_its_instances_reads_just_those() -> None:
    h = History(retention_s=10)
    h.add_group("proc", 1.0)
    for t in range(15):  # wrapped: the ring holds 10
        h.append("proc", 1000.0 + t, {"proc.cpu.util": {"1:5": t / 100, "2:6": t / 50},
                                      "proc.memory.rss": {"1:5": 1e6}})
    [piece] = h.query_range(["proc.cpu.util"], 1009.0, 1014.0,
                            instances={"proc.cpu.util": {"2:6", "3:7"}})
    assert piece.timestamps == [1010.0, 1011.0, 1012.0, 1013.0, 1014.0]
    assert list(piece.series) == [("proc.cpu.util", "2:6")]
    assert piece.series["proc.cpu.util", "2:6"] == pytest.approx([0.2, 0.22, 0.24, 0.26, 0.28])
