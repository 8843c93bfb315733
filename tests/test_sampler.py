"""The sampler: cadences, fault isolation, publishing and history wiring."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostscope.metrics.collector import Collector, Cooked, CookedView, Derivation, Raw, ratio
from hostscope.metrics.defaults import build_sampler
from hostscope.metrics.history import History
from hostscope.metrics.model import COUNT, NONE, MetricDesc, MetricRegistry, counter, instant
from hostscope.metrics.sampler import Sampler
from hostscope.metrics.sources import Roots
from tests.support import FakeClock


class ScriptedCollector(Collector):
    """A collector replaying scripted raw values (the sampler under test is real)."""

    def __init__(self, name: str, script: list[Raw | Exception], interval_s: float | None = None,
                 descs: list[MetricDesc] | None = None) -> None:
        self.name = name
        self.interval_s = interval_s
        self.script = script
        self.calls = 0
        self._descs = descs or [
            counter(f"{name}.ops", COUNT, "operations", indom="dev"),
            instant(f"{name}.level", NONE, "a level"),
        ]

    def descriptors(self) -> list[MetricDesc]:
        return self._descs

    def derivations(self) -> list[Derivation]:
        ops = f"{self.name}.ops"
        return [Derivation(
            instant(f"{self.name}.double", NONE, "twice the ops rate", indom="dev", derived=True),
            lambda c: {k: ratio(v, 0.5) for k, v in c.get(ops, {}).items()},
        )]

    def collect(self) -> Raw:
        item = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(item, Exception):
            raise item
        return item


def test_cadence_runs_slow_collectors_every_nth_tick() -> None:
    fast = ScriptedCollector("fast", [{"fast.level": {"": 1.0}}])
    slow = ScriptedCollector("slow", [{"slow.level": {"": 2.0}}], interval_s=3.0)
    sampler = Sampler([fast, slow], registry=MetricRegistry(), clock=FakeClock())
    ran = [sorted(sampler.sample().groups) for _ in range(6)]
    assert ran == [["fast", "slow"], ["fast"], ["fast"], ["fast", "slow"], ["fast"], ["fast"]]
    assert sampler.group_interval_s("slow") == 3.0


def test_failing_collector_is_isolated_marked_stale_and_recovers() -> None:
    ok = ScriptedCollector("ok", [{"ok.level": {"": 1.0}}])
    bad = ScriptedCollector("bad", [OSError("disk on fire"), {"bad.level": {"": 5.0}}])
    sampler = Sampler([bad, ok], registry=MetricRegistry(), clock=FakeClock())
    tick = sampler.sample()
    assert list(tick.groups) == ["ok"]
    assert sampler.status["bad"].stale and sampler.status["bad"].errors == 1
    assert "disk on fire" in (sampler.status["bad"].last_error or "")
    sampler.sample()
    assert not sampler.status["bad"].stale
    assert sampler.latest["bad.level"] == {"": 5.0}


def test_undeclared_metric_is_a_collector_error() -> None:
    rogue = ScriptedCollector("rogue", [{"rogue.level": {"": 1.0}, "other.x": {"": 1.0}}])
    sampler = Sampler([rogue], registry=MetricRegistry(), clock=FakeClock())
    sampler.sample()
    assert "undeclared" in (sampler.status["rogue"].last_error or "")


def test_rates_derivations_and_vanished_instances_in_latest() -> None:
    clock = FakeClock()
    col = ScriptedCollector("d", [
        {"d.ops": {"vda": 10, "vdb": 0}},
        {"d.ops": {"vda": 30}},
    ])
    history = History(retention_s=60)
    sampler = Sampler([col], registry=MetricRegistry(), clock=clock, history=history)
    sampler.sample()
    assert sampler.latest["d.ops"] == {"vda": None, "vdb": None}
    clock.advance(2.0)
    sampler.sample()
    assert sampler.latest["d.ops"] == {"vda": 10.0}  # vdb vanished
    assert sampler.latest["d.double"] == {"vda": 20.0}
    assert sampler.latest_raw["d.ops"] == {"vda": 30}
    assert sampler.instances("d.ops") == ["vda"]
    [sl] = history.query(["d.ops"], 60)
    assert sl.series[("d.ops", "vda")] == [None, 10.0]


def test_registry_is_filled_at_construction_and_duplicates_rejected() -> None:
    registry = MetricRegistry()
    Sampler([ScriptedCollector("a", [{}])], registry=registry, clock=FakeClock())
    assert {"a.ops", "a.level", "a.double"} <= set(registry.names())
    with pytest.raises(ValueError):
        Sampler([ScriptedCollector("b", [{}]), ScriptedCollector("b", [{}])],
                registry=MetricRegistry(), clock=FakeClock())


def test_failing_derivation_loses_only_its_own_metric() -> None:
    class Broken(ScriptedCollector):
        def derivations(self) -> list[Derivation]:
            return [Derivation(instant("x.broken", NONE, "always fails", derived=True),
                               lambda c: {"": 1 / 0})]

    sampler = Sampler([Broken("x", [{"x.level": {"": 3.0}}])], registry=MetricRegistry(),
                      clock=FakeClock())
    sampler.sample()
    assert sampler.latest["x.level"] == {"": 3.0}
    assert "x.broken" not in sampler.latest
    assert "ZeroDivisionError" in (sampler.status["x"].last_error or "")


def test_read_bytes_refuses_to_parse_a_prefix_of_a_huge_file(tmp_path: Path) -> None:
    from hostscope.metrics.sources import SourceUnavailable, read_bytes, read_optional

    path = tmp_path / "big"
    path.write_bytes(b"x" * 1000)
    assert read_bytes(path, limit=1000) == b"x" * 1000
    with pytest.raises(SourceUnavailable, match="too large"):
        read_bytes(path, limit=999)
    assert read_optional(tmp_path / "absent") is None


def test_kept_file_rereads_from_the_start_and_reopens_after_errors(tmp_path: Path) -> None:
    from hostscope.metrics.sources import KeptFile, SourceUnavailable

    path = tmp_path / "stat"
    kept = KeptFile(path, limit=200_000)
    with pytest.raises(SourceUnavailable, match="missing"):
        kept.read()
    assert kept.read_optional() is None
    path.write_bytes(b"first\n")
    assert kept.read() == b"first\n"  # absent at one read, looked for again at the next
    path.write_bytes(b"second, longer\n")  # rewritten in place, as procfs regenerates
    assert kept.read() == b"second, longer\n"
    big = bytes(range(256)) * 600  # 153,600 bytes: several reads of 64 KiB
    path.write_bytes(big)
    assert kept.read() == big
    path.write_bytes(big + b"x" * 50_000)
    with pytest.raises(SourceUnavailable, match="too large"):
        kept.read()
    path.write_bytes(b"short\n")
    assert kept.read() == b"short\n"
    kept.close()
    assert kept.read() == b"short\n"  # a read after close opens the file again
    kept.close()


class Batched(ScriptedCollector):
    """Derives in one pass; ``mode`` makes that pass misbehave."""

    def __init__(self, name: str, script: list[Raw | Exception], mode: str) -> None:
        super().__init__(name, script)
        self.mode = mode
        self.batches = 0

    def derive_all(self, cooked: CookedView) -> Cooked:
        self.batches += 1
        if self.mode == "raise":
            raise ValueError("bad batch")
        if self.mode == "undeclared":
            return {"elsewhere.metric": {"": 1.0}}
        return {f"{self.name}.double": {k: 2 * v for k, v in cooked[f"{self.name}.ops"].items()
                                        if isinstance(v, float)}}


@pytest.mark.parametrize("mode", ["ok", "raise", "undeclared"])
def test_derive_all_is_used_and_a_failing_one_falls_back_to_each_derivation(mode: str) -> None:
    clock = FakeClock()
    col = Batched("b", [{"b.ops": {"x": 10}}, {"b.ops": {"x": 30}}], mode)
    sampler = Sampler([col], registry=MetricRegistry(), clock=clock)
    sampler.sample()
    clock.advance(2.0)
    sampler.sample()
    assert col.batches == 2
    assert sampler.latest["b.double"] == {"x": 20.0}  # by the batch or by the fallback
    assert "elsewhere.metric" not in sampler.latest
    status = sampler.status["b"]
    if mode == "ok":
        assert status.errors == 0
    else:
        assert status.errors == 2 and not status.stale
        assert (status.last_error or "").startswith("derive_all:")
        assert ("bad batch" if mode == "raise" else "undeclared derived") in status.last_error


def test_latest_time_is_the_time_of_the_tick_that_published_each_metric() -> None:
    clock = FakeClock()
    fast = ScriptedCollector("fast", [{"fast.level": {"": 1.0}}])
    slow = ScriptedCollector("slow", [{"slow.level": {"": 2.0}}], interval_s=2.0)
    sampler = Sampler([fast, slow], registry=MetricRegistry(), clock=clock)
    start = clock.wall()
    sampler.sample()
    clock.advance(1.0)
    sampler.sample()
    assert sampler.latest_time["fast.level"] == start + 1.0
    assert sampler.latest_time["slow.level"] == start
    assert set(sampler.latest_time) == set(sampler.latest)
    assert "absent.metric" not in sampler.latest_time


def test_latest_is_replaced_per_group_and_kept_while_a_collector_fails() -> None:
    clock = FakeClock()
    a = ScriptedCollector("a", [{"a.level": {"": 1.0}, "a.ops": {"x": 1}},
                                {"a.level": {"": 2.0}},  # a.ops no longer reported
                                OSError("gone")])
    b = ScriptedCollector("b", [{"b.level": {"": 7.0}}])
    sampler = Sampler([a, b], registry=MetricRegistry(), clock=clock)
    sampler.sample()
    assert set(sampler.latest) == {"a.level", "a.ops", "a.double", "b.level", "b.double"}
    assert sampler.latest_raw["a.ops"] == {"x": 1}
    clock.advance(1.0)
    sampler.sample()
    assert "a.ops" not in sampler.latest and "a.ops" not in sampler.latest_raw
    assert sampler.latest.get("a.ops") is None and sampler.latest.get("a.ops", {}) == {}
    with pytest.raises(KeyError):
        sampler.latest["a.ops"]
    assert len(sampler.latest) == len(list(sampler.latest)) == 4
    assert dict(sampler.latest)["a.level"] == {"": 2.0}
    clock.advance(1.0)
    sampler.sample()  # a fails: its last values stay, marked stale in status
    assert sampler.latest["a.level"] == {"": 2.0} and sampler.status["a"].stale
    assert "never.registered" not in sampler.latest


def test_which_default_collectors_may_block_and_the_ticks_the_daemon_runs_on_its_loop() -> None:
    """The per-second procfs collectors cannot block; processes, cgroups, statfs,
    netlink and host inventory may (and the network collector in the collections that
    read sysfs). So with the default cadences the daemon collects four ticks in ten on
    its event loop: odd seconds that no 5 s collector shares."""
    sampler = build_sampler(Roots())
    answers = {c.name: c.may_block() for c in sampler.collectors}
    assert answers == {"cpu": False, "memory": False, "psi": False, "disk": False,
                       "filesys": True, "network": True, "tcpconn": True, "host": True,
                       "process": True, "cgroup": True, "hostscope": False}
    blocking = []
    for _ in range(20):
        blocking.append(sampler.may_block())
        sampler.sample()
    assert [i for i, b in enumerate(blocking) if not b] == [1, 3, 7, 9, 11, 13, 17, 19]


def test_a_collector_that_says_nothing_may_block() -> None:
    class Quiet(Collector):
        name = "quiet"

        def descriptors(self) -> list[MetricDesc]:
            return []

        def collect(self) -> Raw:
            return {}

    assert Quiet().may_block() is True
