"""The hub's bookkeeping and encoding, driven tick by tick with a real sampler.

The CPU collector reads the live /proc; ``ProcTable`` is a small collector over an
in-memory process table, so instance churn, containers and slower cadences can be
produced on demand (they depend on which processes happen to exist otherwise).
"""

from __future__ import annotations

import json
import math
import tracemalloc

import pytest

from hostscope.daemon import encode
from hostscope.daemon.hub import Client, Hub, Layout, interval_multiple
from hostscope.metrics.collector import Collector, Raw
from hostscope.metrics.collectors.cpu import CpuCollector
from hostscope.metrics.history import History
from hostscope.metrics.model import (
    BYTES,
    NONE,
    MetricDesc,
    MetricRegistry,
    UnknownMetricError,
    ValueType,
    instant,
)
from hostscope.metrics.sampler import Sampler
from hostscope.metrics.sources import Roots


class ProcTable(Collector):
    """``proc.memory.rss`` and ``proc.id.container`` for a table the test edits."""

    name = "proctable"

    def __init__(self, interval_s: float | None = None) -> None:
        self.interval_s = interval_s
        self.table: dict[str, tuple[str, float]] = {
            "100:5": ("web-1", 1000.0),
            "200:6": ("db", 2000.0),
            "300:7": ("web-1", 3000.0),
        }

    def descriptors(self) -> list[MetricDesc]:
        return [
            instant("proc.memory.rss", BYTES, "resident set size", indom="proc"),
            instant("proc.id.container", NONE, "container of the process", indom="proc",
                    type=ValueType.STRING),
        ]

    def collect(self) -> Raw:
        return {
            "proc.memory.rss": {pid: rss for pid, (_, rss) in self.table.items()},
            "proc.id.container": {pid: c for pid, (c, _) in self.table.items()},
        }


class Recorder:
    def __init__(self) -> None:
        self.dropped: list[Client] = []

    def __call__(self, client: Client) -> None:
        self.dropped.append(client)


def make(proc_interval: float | None = None) -> tuple[Sampler, ProcTable, Hub]:
    table = ProcTable(proc_interval)
    sampler = Sampler(
        [CpuCollector(Roots()), table], registry=MetricRegistry(), interval_s=1.0,
        history=History(),
    )
    return sampler, table, Hub(sampler)


def client(hub: Hub, *names: str, container: str | None = None, queue: int = 64,
           on_overflow: Recorder | None = None) -> Client:
    c = Client("test", queue_size=queue, on_overflow=on_overflow or Recorder())
    hub.register(c)
    metrics, absent = hub.resolve(names)
    c.metrics = tuple(sorted(metrics))
    c.absent = tuple(absent)
    c.container = container
    hub.subscription_changed(c)
    c.live = True
    return c


def drain(c: Client) -> list[dict]:
    out = []
    while not c.queue.empty():
        out.append(json.loads(c.queue.get_nowait()))
    return out


def tick(sampler: Sampler, hub: Hub) -> None:
    t = sampler.collect()
    sampler.publish(t)
    hub.publish(t)


def test_layout_rebuilt_only_when_instances_change() -> None:
    sampler, table, hub = make()
    tick(sampler, hub)
    c = client(hub, "proc.memory.rss", "kernel.all.load")
    first_layout = c.layout
    for _ in range(3):
        tick(sampler, hub)
    messages = drain(c)
    assert [m["type"] for m in messages] == ["samples"] * 3
    assert {m["seq"] for m in messages} == {first_layout.id}
    built = hub.stats.layouts_built

    table.table["400:8"] = ("db", 4000.0)
    tick(sampler, hub)
    meta, samples = drain(c)
    assert meta["type"] == "meta" and samples["type"] == "samples"
    assert meta["seq"] != first_layout.id and samples["seq"] == meta["seq"]
    assert ["proc.memory.rss", "400:8"] in meta["series"]
    assert len(samples["v"]) == len(meta["series"])
    rss = dict(zip((tuple(s) for s in meta["series"]), samples["v"], strict=True))
    assert rss[("proc.memory.rss", "400:8")] == [4000]
    assert hub.stats.layouts_built == built + 1

    tick(sampler, hub)
    assert [m["type"] for m in drain(c)] == ["samples"]  # steady again: no new meta


def test_vanished_instances_and_metrics_change_the_layout() -> None:
    sampler, table, hub = make()
    tick(sampler, hub)
    c = client(hub, "proc.memory.rss")
    tick(sampler, hub)
    drain(c)
    del table.table["200:6"]
    tick(sampler, hub)
    meta, _ = drain(c)
    assert [s[1] for s in meta["series"]] == ["100:5", "300:7"]
    table.table.clear()
    tick(sampler, hub)
    meta, samples = drain(c)
    assert meta["series"] == [] and samples["v"] == []
    assert "proc.memory.rss" in meta["metrics"]  # still subscribed, just no instances


def test_container_filter_applies_to_process_metrics_only() -> None:
    sampler, table, hub = make()
    tick(sampler, hub)
    c = client(hub, "proc.memory.rss", "kernel.all.load", container="web-1")
    tick(sampler, hub)
    (samples,) = drain(c)
    series = [tuple(s) for s in c.layout.series()]
    assert ("proc.memory.rss", "100:5") in series and ("proc.memory.rss", "300:7") in series
    assert ("proc.memory.rss", "200:6") not in series
    assert sum(1 for s in series if s[0] == "kernel.all.load") == 3
    assert len(samples["v"]) == len(series)

    table.table["500:9"] = ("web-1", 5.0)
    table.table["600:9"] = ("other", 6.0)
    tick(sampler, hub)
    meta, _ = drain(c)
    added = {s[1] for s in meta["series"]} - {s[1] for s in series}
    assert added == {"500:9"}


def test_identical_subscriptions_share_layout_and_encoding() -> None:
    sampler, _, hub = make()
    tick(sampler, hub)
    a = client(hub, "kernel.all.load", "proc.memory.rss")
    b = client(hub, "proc.memory.rss", "kernel.all.load")
    assert a.layout is b.layout
    before = hub.stats.frames_encoded
    for _ in range(4):
        tick(sampler, hub)
    assert hub.stats.frames_encoded - before == 4
    frames_a = [a.queue.get_nowait() for _ in range(4)]
    frames_b = [b.queue.get_nowait() for _ in range(4)]
    assert frames_a == frames_b
    assert all(x is y for x, y in zip(frames_a, frames_b, strict=True))  # the same bytes


def test_interval_multiple_sends_every_nth_tick() -> None:
    sampler, _, hub = make()
    tick(sampler, hub)
    c = client(hub, "kernel.all.load")
    c.every = interval_multiple(2.5, 1.0)
    assert c.every == 3
    for _ in range(9):
        tick(sampler, hub)
    assert len(drain(c)) == 3


def test_slower_collector_columns_are_null_between_its_runs() -> None:
    sampler, _, hub = make(proc_interval=2.0)
    tick(sampler, hub)
    c = client(hub, "proc.memory.rss", "kernel.all.load")
    values = []
    for _ in range(4):
        tick(sampler, hub)
        (msg,) = drain(c)
        by = dict(zip((tuple(s) for s in c.layout.series()), msg["v"], strict=True))
        values.append((by[("proc.memory.rss", "100:5")][0], by[("kernel.all.load", "1 minute")][0]))
    assert [v[0] is None for v in values] == [True, False, True, False]
    assert all(v[1] is not None for v in values)


def test_overflow_drops_only_the_full_client_without_waiting() -> None:
    sampler, _, hub = make()
    tick(sampler, hub)
    recorder = Recorder()
    slow = client(hub, "kernel.all.load", queue=2, on_overflow=recorder)
    fast = client(hub, "kernel.all.load")
    for _ in range(5):
        tick(sampler, hub)
    assert recorder.dropped == [slow]
    assert slow.closed
    assert len(drain(fast)) == 5


def test_unknown_and_optional_names() -> None:
    _, _, hub = make()
    with pytest.raises(UnknownMetricError) as info:
        hub.resolve(["kernel.all.load", "nope.a", "nope.b"])
    assert info.value.names == ["nope.a", "nope.b"]
    metrics, absent = hub.resolve(["kernel.all.load"], ["bpf.runq", "proc.memory"])
    assert metrics == {"kernel.all.load", "proc.memory.rss"}
    assert absent == ["bpf.runq"]


def test_optional_name_registered_later_is_picked_up() -> None:
    sampler, _, hub = make()
    tick(sampler, hub)
    c = client(hub, "kernel.all.load")
    _, absent = hub.resolve([], ["late.metric"])
    c.absent = tuple(absent)
    tick(sampler, hub)
    drain(c)
    sampler.registry.register(instant("late.metric", NONE, "registered after start"))
    tick(sampler, hub)
    meta = drain(c)[0]
    assert meta["type"] == "meta"
    assert meta["absent"] == [] and "late.metric" in meta["metrics"]


def test_unregister_releases_layouts() -> None:
    sampler, _, hub = make()
    tick(sampler, hub)
    a = client(hub, "kernel.all.load")
    b = client(hub, "kernel.all.load")
    hub.unregister(a)
    assert b.layout is not None and b.layout.users == 1
    hub.unregister(b)
    assert hub._interned == {} and hub._layout_cache == {}


class Stepping:
    """A clock that moves one interval per tick, as a daemon's ticks are spaced (real
    time would put a test's ticks microseconds apart)."""

    n = 0

    def wall(self) -> float:
        return 1_700_000_000.0 + self.n

    def mono(self) -> float:
        return 1000.0 + self.n


async def backfill(hub: Hub, layout: Layout, seconds: float
                   ) -> tuple[list[tuple[list[float], list[list[float | None]]]], float | None]:
    """Every chunk of a backfill, and its newest timestamp (what the stream tracks)."""
    chunks = [chunk async for chunk in hub.backfill(layout, seconds)]
    return chunks, (chunks[-1][0][-1] if chunks else None)


async def test_backfill_merges_groups_by_timestamp() -> None:
    sampler, _, hub = make(proc_interval=2.0)
    for _ in range(6):
        tick(sampler, hub)
    c = client(hub, "kernel.all.load", "proc.memory.rss")
    chunks, last = await backfill(hub, c.layout, 3600)
    ((times, columns),) = chunks
    assert len(times) == 6 and times == sorted(times) and last == times[-1]
    by = dict(zip((tuple(s) for s in c.layout.series()), columns, strict=True))
    rss = by[("proc.memory.rss", "100:5")]
    assert [v is None for v in rss] == [False, True] * 3
    assert all(v is not None for v in by[("kernel.all.load", "1 minute")])
    frame = json.loads(hub.encode_backfill(c.layout, times, columns))
    assert frame["backfill"] is True and frame["seq"] == c.layout.id
    assert len(frame["v"]) == len(by)

    assert hub.backfill_since(c.layout, last) == ([], last)
    tick(sampler, hub)
    more, newest = hub.backfill_since(c.layout, last)
    assert len(more) == 1 and len(more[0][0]) == 1 and newest > last


async def test_backfill_in_batches_matches_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler, table, hub = make(proc_interval=2.0)
    for i in range(30):
        table.table[f"{1000 + i}:1"] = ("web-1", float(i))
        tick(sampler, hub)
    c = client(hub, "kernel", "proc.memory.rss")
    whole, last = await backfill(hub, c.layout, 3600)
    monkeypatch.setattr("hostscope.daemon.hub.BACKFILL_QUERY_CELLS", 50)
    monkeypatch.setattr("hostscope.daemon.hub.BACKFILL_CELLS", 100)
    monkeypatch.setattr("hostscope.daemon.hub.BACKFILL_WINDOW_CELLS", 300)
    batched, last_batched = await backfill(hub, c.layout, 3600)
    assert last_batched == last
    assert len(batched) > len(whole)

    def joined(chunks: list) -> tuple[list[float], list[list[float | None]]]:
        times = [t for ts, _ in chunks for t in ts]
        ncols = len(chunks[0][1])
        return times, [[v for _, cols in chunks for v in cols[i]] for i in range(ncols)]

    assert joined(batched) == joined(whole)
    assert all(len(ts) * len(cols) <= max(100, len(cols)) for ts, cols in batched)


# -- encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (math.nan, "null"),
        (math.inf, "null"),
        (-math.inf, "null"),
        (0.0, "0"),
        (1.0, "1"),
        (0.1 + 0.2, "0.3"),
        (123456789, "1.23457e+08"),
        (1234567.0, "1.23457e+06"),
        (-0.000123456789, "-0.000123457"),
        (42, "42"),
        ('say "hi"\n', '"say \\"hi\\"\\n"'),
    ],
)
def test_number_encoding(value: float | int | str | None, text: str) -> None:
    assert encode.number(value) == text
    assert encode.numbers([value]) == text
    parsed = json.loads(f"[{text}]")[0]
    if isinstance(value, float) and math.isfinite(value) and value:
        assert parsed == pytest.approx(value, rel=1e-5)


def test_samples_frame_is_json() -> None:
    frame = json.loads(encode.samples_frame(3, [1.5, 2.25], ["1,2", "null,3"], backfill=True))
    assert frame == {"type": "samples", "seq": 3, "backfill": True, "t": [1.5, 2.25],
                     "v": [[1, 2], [None, 3]]}
    empty = json.loads(encode.samples_frame(1, [7.0], [], backfill=False))
    assert empty["v"] == [] and empty["backfill"] is False


def test_a_member_added_as_json_text() -> None:
    from array import array

    float32 = array("f", [0.005])[0]  # 0.004999999888241291 as a double
    text = encode.with_member({"pid": 1, "cmd": 'a "b"'}, "cpu_history",
                              f"[{encode.numbers([float32, None])}]")
    assert text == '{"pid":1,"cmd":"a \\"b\\"","cpu_history":[0.005,null]}'
    assert json.loads(encode.with_member({}, "k", "[]")) == {"k": []}


async def test_backfill_reads_window_by_window_as_it_is_consumed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backfill reads history a window at a time, as its chunks are taken: a consumer
    that stops after the first chunk has caused one window's read, not the whole
    history's (a never-reading client re-subscribing to everything once made the daemon
    read an hour of every metric each time). The windows join up exactly: every
    timestamp once, groups of other cadences merged, the same as one read."""
    sampler, table, hub = make(proc_interval=2.0)
    clock = sampler.clock = Stepping()
    for i in range(40):
        table.table[f"{1000 + i}:1"] = ("web-1", float(i))
        tick(sampler, hub)
        clock.n += 1
    c = client(hub, "kernel", "proc.memory.rss")
    whole, last = await backfill(hub, c.layout, 3600)
    history = sampler.history
    assert history is not None
    reads: list[tuple[float, float]] = []
    query_range = history.query_range

    def counted(metrics, start, end, **kw):  # type: ignore[no-untyped-def]
        reads.append((start, end))
        return query_range(metrics, start, end, **kw)

    monkeypatch.setattr(history, "query_range", counted)
    monkeypatch.setattr("hostscope.daemon.hub.BACKFILL_CELLS", 100)
    monkeypatch.setattr("hostscope.daemon.hub.BACKFILL_WINDOW_CELLS", 400)
    windows = hub.backfill(c.layout, 3600)
    first = await anext(windows)
    one_window = len(reads)
    assert one_window >= 1 and len({end for _, end in reads}) == 1  # one window so far
    assert len(first[0]) * len(first[1]) <= max(100, len(first[1]))
    rest = [chunk async for chunk in windows]
    windowed = [first, *rest]
    assert len({end for _, end in reads}) > 3  # several windows in all
    # (start, end] windows that join: each one starts where the previous ended.
    ends = sorted({end for _, end in reads})
    starts = sorted({start for start, _ in reads})
    assert starts[1:] == ends[:-1]

    def joined(chunks: list) -> tuple[list[float], list[list[float | None]]]:
        times = [t for ts, _ in chunks for t in ts]
        ncols = len(chunks[0][1])
        return times, [[v for _, cols in chunks for v in cols[i]] for i in range(ncols)]

    assert joined(windowed) == joined(whole)
    assert windowed[-1][0][-1] == last
    times = joined(windowed)[0]
    assert times == sorted(set(times)) and len(times) == 40


def test_query_range_matches_query_and_wraps() -> None:
    """The windowed history read gives what the whole read gives, also once the ring
    has wrapped (a short retention here)."""
    history = History(retention_s=10, coarse_step_s=60)
    history.add_group("g", 1.0)
    for i in range(25):  # wraps the 10-slot ring twice
        history.append("g", 1000.0 + i, {"m": {"": float(i)}, "n": {"a": None, "b": i * 2.0}})
    (whole,) = history.query(["m", "n"], 10, now=1024.0)
    assert whole.timestamps == [1015.0 + i for i in range(10)]
    pieces = [history.query_range(["m", "n"], a, a + 3, tier_s=10)[0]
              for a in (1011.0, 1014.0, 1017.0, 1020.0, 1023.0)]
    assert [t for p in pieces for t in p.timestamps] == whole.timestamps
    for key, values in whole.series.items():
        assert [v for p in pieces for v in p.series[key]] == values
    empty = history.query_range(["m"], 2000.0, 2001.0)[0]
    assert empty.timestamps == [] and empty.series == {("m", ""): []}


async def test_a_stalled_backfill_holds_a_window_however_long_the_history() -> None:
    """What a client that takes one chunk and stops (a never-reader) makes the daemon
    hold: one window, the same for a long history as for a short one (read whole, the
    backfill of the long history below held ~8x the short one's)."""

    async def held_for_first_chunk(ticks: int) -> float:
        sampler, table, hub = make(proc_interval=1.0)
        for i in range(50):
            table.table[f"{1000 + i}:1"] = ("web-1", float(i))
        clock = sampler.clock = Stepping()
        for _ in range(ticks):
            tick(sampler, hub)
            clock.n += 1
        c = client(hub, "kernel", "proc")
        windows = hub.backfill(c.layout, 3600)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            times, _ = await anext(windows)
            assert times
            return (tracemalloc.get_traced_memory()[1] - base) / 1e6
        finally:
            tracemalloc.stop()
            await windows.aclose()

    short, long = await held_for_first_chunk(300), await held_for_first_chunk(2400)
    assert long < 1.5 * short + 0.5, (short, long)
