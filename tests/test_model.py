"""Descriptors, units and the registry."""

from __future__ import annotations

import pytest

from hostscope.metrics.model import (
    BYTES,
    COUNT,
    KBYTES,
    MSEC,
    NONE,
    UTILIZATION,
    DuplicateMetricError,
    MetricDesc,
    MetricRegistry,
    Semantics,
    UnknownMetricError,
    ValueType,
    counter,
    instant,
)


def test_units_labels_follow_pcp() -> None:
    assert str(KBYTES) == "Kbyte"
    assert str(MSEC) == "millisec"
    assert str(COUNT.rate()) == "count / sec"
    assert str(BYTES.rate()) == "byte / sec"
    assert str(MSEC.rate()) == "millisec / sec"
    assert str(NONE) == ""


def test_units_base_factor_converts_to_bytes_and_seconds() -> None:
    assert KBYTES.base_factor() == 1024
    assert MSEC.base_factor() == pytest.approx(1e-3)
    assert MSEC.rate().base_factor() == pytest.approx(1e-3)
    assert COUNT.base_factor() == 1


def test_units_kind_identifies_time_utilisation() -> None:
    assert MSEC.rate().kind == "utilization"
    assert UTILIZATION.kind == "utilization"
    assert MSEC.kind == "time"
    assert KBYTES.rate().kind == "bytes"
    assert COUNT.kind == "count"


def test_counter_value_units_are_rate_units() -> None:
    desc = counter("disk.dev.read_bytes", KBYTES, "bytes read", indom="disk.dev")
    assert desc.is_counter
    assert desc.value_units.per_sec
    doc = desc.to_json()
    assert doc["semantics"] == "counter"
    assert doc["value_units"]["label"] == "Kbyte / sec"
    assert doc["indom"] == "disk.dev"


@pytest.mark.parametrize(
    "name", ["Kernel.all", "kernel", "kernel..x", "kernel.all-cpu", ".a.b", "a.b."]
)
def test_descriptor_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="PCP name"):
        instant(name, NONE, "x")


def test_descriptor_rejects_multiline_help_and_string_counters() -> None:
    with pytest.raises(ValueError, match="help"):
        instant("a.b", NONE, "two\nlines")
    with pytest.raises(ValueError, match="counter"):
        MetricDesc("a.b", ValueType.STRING, Semantics.COUNTER, NONE, None, "x")


def test_registry_rejects_duplicates_and_prefix_clashes() -> None:
    reg = MetricRegistry()
    reg.register(counter("kernel.all.pswitch", COUNT, "context switches"))
    with pytest.raises(DuplicateMetricError):
        reg.register(counter("kernel.all.pswitch", COUNT, "again"))
    with pytest.raises(DuplicateMetricError, match="prefix"):
        reg.register(counter("kernel.all.pswitch.x", COUNT, "below a leaf"))
    with pytest.raises(DuplicateMetricError, match="prefix"):
        reg.register(counter("kernel.all", COUNT, "above a leaf"))


def test_registry_resolves_names_and_dot_boundary_prefixes() -> None:
    reg = MetricRegistry()
    for name in ("disk.dev.read", "disk.dev.write", "disk.devx.read", "disk.all.read"):
        reg.register(counter(name, COUNT, "x"))
    assert [d.name for d in reg.match("disk.dev")] == ["disk.dev.read", "disk.dev.write"]
    assert [d.name for d in reg.match("disk.dev.")] == ["disk.dev.read", "disk.dev.write"]
    got = [d.name for d in reg.resolve(["disk.all.read", "disk.dev", "disk.dev.read"])]
    assert got == ["disk.all.read", "disk.dev.read", "disk.dev.write"]
    assert len(reg.match("")) == 4


def test_registry_reports_every_unknown_name() -> None:
    reg = MetricRegistry()
    reg.register(counter("a.b", COUNT, "x"))
    with pytest.raises(UnknownMetricError) as info:
        reg.resolve(["a.b", "nope.x", "a.bc"])
    assert info.value.names == ["a.bc", "nope.x"]
    assert "nope.x" in str(info.value)
