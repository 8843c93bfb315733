"""``GET /metrics``: the sampler's latest values in Prometheus exposition format.

Names are mapped mechanically from descriptors, so every collector is exported without
per-metric code:

* ``disk.dev.read_bytes`` -> ``hostscope_disk_dev_read_bytes`` (dots to underscores,
  ``hostscope_`` prefix);
* values are converted to base units with :meth:`Units.base_factor` and the unit is
  appended unless the name already ends with it: ``_bytes``, ``_seconds`` (PCP's
  millisecond CPU counters become ``..._seconds_total``), ``_ratio`` for utilisations,
  ``_bytes_per_second`` for byte rates;
* counters are exported raw (Prometheus computes rates itself) as counter families, which
  adds ``_total``;
* instances become one label, named by the descriptor's ``labels`` or else after the
  instance domain (``disk.dev`` -> ``device``), never ``instance`` or ``job``, which
  Prometheus sets on the target;
* string metrics are skipped, except small discrete ones exported as ``_info`` series
  carrying the string in a label (``hostscope_kernel_uname_release_info``).

Per-process metrics (instance domain ``proc``) are not exported: PIDs churn and would
create unbounded series in Prometheus; the dashboard and the REST API serve them.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from hostscope.metrics.model import MetricDesc, Semantics, ValueType
from hostscope.metrics.sampler import Sampler

from .keys import HUB, PRIVILEGED, PROMETHEUS, TICKER

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("hostscope.daemon")

PREFIX = "hostscope_"
#: Instance domains not exported (unbounded churn of series).
SKIPPED_INDOMS = frozenset({"proc"})
#: String metrics with more instances than this are not exported as info series.
MAX_INFO_INSTANCES = 16
#: Nicer label names for instance domains whose last component is not self-explaining.
_INDOM_LABELS = {
    "dev": "device",
    "partitions": "device",
    "all": "device",
    "interface": "interface",
    "cpu": "cpu",
    "filesys": "mountpoint",
    "cgroup": "cgroup",
}
_RESERVED_LABELS = frozenset({"instance", "job", "le", "quantile"})


@dataclass(frozen=True, slots=True)
class PromName:
    """How one descriptor is exported."""

    name: str  # family name, without the counter's ``_total``
    kind: str  # counter, gauge or info
    scale: float  # multiply values by this to get base units
    unit: str  # OpenMetrics unit (a suffix of name) or ""
    label: str | None  # label carrying the instance name


def _sanitize(text: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in text)
    return out if out and not out[0].isdigit() else f"_{out}"


def label_name(desc: MetricDesc) -> str | None:
    if desc.indom is None:
        return None
    if desc.labels:
        name = "_".join(desc.labels)
    else:
        last = desc.indom.rsplit(".", 1)[-1]
        name = _INDOM_LABELS.get(last, last)
    name = _sanitize(name.lower())
    if name in _RESERVED_LABELS or name.startswith("__"):
        name = f"{PREFIX}{name.lstrip('_')}"
    return name


def prom_name(desc: MetricDesc) -> PromName | None:
    """The exported shape of ``desc``, or None if it is not exported."""
    if desc.indom in SKIPPED_INDOMS:
        return None
    # hostscope's own self-metrics (hostscope.collector.*) already carry the prefix.
    flat = _sanitize(desc.name.replace(".", "_"))
    base = flat if flat.startswith(PREFIX) else PREFIX + flat
    label = label_name(desc)
    if desc.type is ValueType.STRING:
        if desc.semantics is not Semantics.DISCRETE:
            return None
        return PromName(base, "info", 1.0, "", label)
    # Counters are exported raw, so their unit is the counter's own (not the rate's).
    units = desc.units
    kind = units.kind
    if kind == "utilization" or (kind == "time" and units.per_sec):
        suffix = "ratio"
    elif kind == "bytes":
        suffix = "bytes_per_second" if units.per_sec else "bytes"
    elif kind == "time":
        suffix = "seconds"
    else:
        suffix = ""
    name = base
    if suffix and not name.endswith("_" + suffix):
        name = f"{name}_{suffix}"
    if desc.is_counter:
        name = name.removesuffix("_total")
        return PromName(name, "counter", units.base_factor(), suffix, label)
    if name.endswith("_total"):  # reserved for counters by Prometheus convention
        name = f"{name}_value"
    return PromName(name, "gauge", units.base_factor(), suffix if name.endswith(suffix) else "",
                    label)


class HostscopeCollector:
    """A prometheus_client collector over the sampler's latest values (no copies kept)."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self._names: dict[str, PromName | None] = {}
        self._claimed: dict[str, str] = {}

    def _shape(self, desc: MetricDesc) -> PromName | None:
        if desc.name in self._names:
            return self._names[desc.name]
        shape = prom_name(desc)
        if shape is not None:
            owner = self._claimed.setdefault(shape.name, desc.name)
            if owner != desc.name:
                log.warning(
                    "prometheus name clash; metric not exported",
                    extra={"metric": desc.name, "name": shape.name, "owner": owner},
                )
                shape = None
        self._names[desc.name] = shape
        return shape

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        sampler = self.sampler
        latest, raw = sampler.latest, sampler.latest_raw
        for desc in sampler.registry:
            shape = self._shape(desc)
            if shape is None:
                continue
            values = raw.get(desc.name) if desc.is_counter else latest.get(desc.name)
            if not values:
                continue
            labels = [shape.label] if shape.label else []
            if shape.kind == "info":
                if len(values) > MAX_INFO_INSTANCES:
                    continue
                field = _sanitize(desc.name.rsplit(".", 1)[-1])
                info = InfoMetricFamily(shape.name, desc.help, labels=labels)
                for inst, value in values.items():
                    if isinstance(value, str):
                        info.add_metric([inst] if labels else [], {field: value})
                yield info
                continue
            family: CounterMetricFamily | GaugeMetricFamily
            if shape.kind == "counter":
                family = CounterMetricFamily(shape.name, desc.help, labels=labels, unit=shape.unit)
            else:
                family = GaugeMetricFamily(shape.name, desc.help, labels=labels, unit=shape.unit)
            scale = shape.scale
            for inst, value in values.items():
                if value is None or isinstance(value, str) or not math.isfinite(value):
                    continue
                family.add_metric([inst] if labels else [], value * scale)
            yield family


class DaemonCollector:
    """The daemon's own health: clients, ticks, skipped slots, collector errors."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        app = self.app
        hub, ticker = app[HUB], app[TICKER]
        yield GaugeMetricFamily(
            "hostscope_daemon_clients", "connected websocket clients", value=len(hub.clients)
        )
        yield CounterMetricFamily(
            "hostscope_daemon_ticks", "sampling ticks completed", value=ticker.ticks
        )
        yield CounterMetricFamily(
            "hostscope_daemon_skipped_ticks",
            "sampling slots skipped because a tick overran its interval",
            value=ticker.skipped,
        )
        yield CounterMetricFamily(
            "hostscope_daemon_dropped_clients",
            "websocket clients disconnected for reading too slowly",
            value=hub.stats.dropped,
        )
        # Errors, timeouts, staleness and durations per collector are the sampler's own
        # metrics (hostscope.collector.*, exported like every other metric).
        collections = CounterMetricFamily(
            "hostscope_collector_collections",
            "successful collections per collector",
            labels=["collector"],
        )
        for status in hub.sampler.status.values():
            collections.add_metric([status.name], status.collections)
        yield collections
        helper = app[PRIVILEGED].helper_info()
        if helper is not None:  # privilege separation (docs/privilege.md): alert on these
            yield GaugeMetricFamily(
                "hostscope_helper_up", "1 while the privileged helper runs",
                value=1 if helper["state"] == "running" else 0)
            yield CounterMetricFamily(
                "hostscope_helper_restarts", "times the privileged helper was restarted",
                value=helper["restarts"])


def build_registry(app: web.Application, sampler: Sampler
                   ) -> Callable[[], CollectorRegistry]:
    """A getter of the registry private to this app (never prometheus_client's global one).

    The registry is built, and prometheus_client imported, by the first call (the first
    scrape): a daemon nobody scrapes never loads it (27 modules, ~0.6 MB resident).
    """

    @functools.cache
    def registry() -> CollectorRegistry:
        from prometheus_client import CollectorRegistry

        built = CollectorRegistry(auto_describe=False)
        built.register(HostscopeCollector(sampler))
        built.register(DaemonCollector(app))
        return built

    return registry


async def metrics_handler(request: web.Request) -> web.Response:
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[PROMETHEUS]())
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics_handler)
