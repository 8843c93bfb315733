"""Mechanical Prometheus naming, checked on crafted descriptors of every unit kind and
through prometheus_client's parser and promtool."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from hostscope.daemon.prom import HostscopeCollector, prom_name
from hostscope.metrics.collector import Collector, Raw
from hostscope.metrics.model import (
    BYTES,
    COUNT,
    KBYTES,
    MSEC,
    NONE,
    USEC,
    UTILIZATION,
    MetricDesc,
    MetricRegistry,
    ValueType,
    counter,
    discrete,
    instant,
)
from hostscope.metrics.sampler import Sampler

DESCS = [
    counter("disk.dev.read_bytes", KBYTES, "bytes read", indom="disk.dev"),
    counter("kernel.all.cpu.user", MSEC, "user time"),
    counter("kernel.all.pressure.io.some.total", USEC, "stall time"),
    counter("network.interface.in.packets", COUNT, "packets", indom="network.interface"),
    counter("disk.all.total", COUNT, "I/Os"),
    instant("disk.dev.util", UTILIZATION, "busy fraction", indom="disk.dev"),
    instant("disk.dev.await", MSEC, "time per I/O", indom="disk.dev"),
    instant("proc.io.total_bytes", BYTES.rate(), "I/O rate", indom="proc"),
    instant("net.rate", BYTES.rate(), "byte rate"),
    instant("mem.util.hugepages_total", COUNT, "huge pages"),
    instant("filesys.used", KBYTES, "used space", indom="filesys"),
    instant("odd.labelled", NONE, "a label named like a target label", indom="odd",
            labels=("instance",)),
    discrete("kernel.uname.release", NONE, "kernel release", type=ValueType.STRING),
    counter("hostscope.collector.errors", COUNT, "failed collections",
            indom="hostscope.collector", labels=("collector",)),
    instant("proc.psinfo.cmd", NONE, "command", indom="proc", type=ValueType.STRING),
    discrete("cgroup.container.name", NONE, "container name", indom="cgroup",
             type=ValueType.STRING),
    instant("network.interface.alias", NONE, "changing text", indom="network.interface",
            type=ValueType.STRING),
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("disk.dev.read_bytes", ("hostscope_disk_dev_read_bytes", "counter", 1024.0, "bytes",
                                 "device")),
        ("kernel.all.cpu.user", ("hostscope_kernel_all_cpu_user_seconds", "counter", 1e-3,
                                 "seconds", None)),
        ("kernel.all.pressure.io.some.total",
         ("hostscope_kernel_all_pressure_io_some_total_seconds", "counter", 1e-6, "seconds",
          None)),
        ("network.interface.in.packets", ("hostscope_network_interface_in_packets", "counter",
                                          1.0, "", "interface")),
        ("disk.all.total", ("hostscope_disk_all", "counter", 1.0, "", None)),
        ("disk.dev.util", ("hostscope_disk_dev_util_ratio", "gauge", 1.0, "ratio", "device")),
        ("disk.dev.await", ("hostscope_disk_dev_await_seconds", "gauge", 1e-3, "seconds",
                            "device")),
        ("net.rate", ("hostscope_net_rate_bytes_per_second", "gauge", 1.0, "bytes_per_second",
                      None)),
        ("mem.util.hugepages_total", ("hostscope_mem_util_hugepages_total_value", "gauge", 1.0,
                                      "", None)),
        ("filesys.used", ("hostscope_filesys_used_bytes", "gauge", 1024.0, "bytes",
                          "mountpoint")),
        ("odd.labelled", ("hostscope_odd_labelled", "gauge", 1.0, "", "hostscope_instance")),
        ("kernel.uname.release", ("hostscope_kernel_uname_release", "info", 1.0, "", None)),
        # The daemon's self-metrics already carry the prefix: never hostscope_hostscope_.
        ("hostscope.collector.errors", ("hostscope_collector_errors", "counter", 1.0, "",
                                        "collector")),
    ],
)
def test_names(name: str, expected: tuple[object, ...]) -> None:
    desc = next(d for d in DESCS if d.name == name)
    shape = prom_name(desc)
    assert shape is not None
    assert (shape.name, shape.kind, shape.scale, shape.unit, shape.label) == pytest.approx(
        expected
    )


@pytest.mark.parametrize(
    "name", ["proc.io.total_bytes", "proc.psinfo.cmd", "network.interface.alias"]
)
def test_not_exported(name: str) -> None:
    assert prom_name(next(d for d in DESCS if d.name == name)) is None


class Crafted(Collector):
    """Every descriptor above with awkward instance names (quotes, newlines, spaces)."""

    name = "crafted"

    def descriptors(self) -> list[MetricDesc]:
        return DESCS

    def collect(self) -> Raw:
        raw: Raw = {}
        for desc in DESCS:
            if desc.type is ValueType.STRING:
                value: int | float | str = 'v"1\\ \n'
            else:
                value = 2048 if desc.is_counter else 0.5
            insts = ["", ] if desc.indom is None else ['vda', 'sp ace', 'q"uo\\te\nx']
            raw[desc.name] = {i: value for i in insts}
        raw["kernel.all.cpu.user"] = {"": 12345}
        return raw


@pytest.fixture
def exposition() -> CollectorRegistry:
    sampler = Sampler([Crafted()], registry=MetricRegistry(), interval_s=1.0)
    sampler.sample()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostscopeCollector(sampler))
    return registry


def test_exposition_parses_with_values_in_base_units(exposition: CollectorRegistry) -> None:
    text = generate_latest(exposition).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (user,) = families["hostscope_kernel_all_cpu_user_seconds"].samples
    assert user.value == pytest.approx(12.345)
    reads = {s.labels["device"]: s.value for s in families["hostscope_disk_dev_read_bytes"].samples}
    assert reads == {"vda": 2048 * 1024, "sp ace": 2048 * 1024, 'q"uo\\te\nx': 2048 * 1024}
    # The text format has no info type: a gauge named ..._info with value 1.
    (release,) = families["hostscope_kernel_uname_release_info"].samples
    assert release.name == "hostscope_kernel_uname_release_info"
    assert release.labels == {"release": 'v"1\\ \n'} and release.value == 1
    names = {s.labels["cgroup"] for s in families["hostscope_cgroup_container_name_info"].samples}
    assert names == {"vda", "sp ace", 'q"uo\\te\nx'}
    assert not any(n.startswith("hostscope_proc_") for n in families)


def test_openmetrics_parses(exposition: CollectorRegistry) -> None:
    text = generate_openmetrics(exposition).decode()
    families = {f.name: f for f in openmetrics_families(text)}
    assert families["hostscope_disk_dev_util_ratio"].unit == "ratio"
    assert families["hostscope_kernel_all_cpu_user_seconds"].type == "counter"
    assert families["hostscope_kernel_uname_release"].type == "info"


def test_promtool_accepts_every_kind(exposition: CollectorRegistry) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (./dev test installs Debian's prometheus as root)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=generate_latest(exposition), capture_output=True,
        timeout=30, check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
