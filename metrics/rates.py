"""The one place counters become per-second rates.

Samples keep counters raw (what the kernel reported); this layer derives rates from
consecutive raw values and *monotonic* time, so wall-clock steps (NTP, suspend) never
produce a bogus rate. It handles:

* the first sample of an instance: no rate (None), never zero;
* instances that appear or vanish (a disk hot-plugged, a process exiting): the base
  of a rate is the previous collection of the same collector, so an instance (or a
  metric) it did not report starts afresh;
* wrap of 32- and 64-bit counters: a decrease from the top quarter of the type's range
  to the bottom quarter is taken as one wrap;
* resets (a counter that goes down for any other reason, e.g. an interface recreated
  or a driver reloaded): no rate for that interval, never a huge spike. The next
  interval rates normally from the new base.

Grafana-pcp turns every wrap into a gap and Vector ignored wraps; distinguishing the two
cases by position in the range keeps real wraps of u32 kernel counters (per-IRQ counts,
some NIC statistics) continuous.
"""

from __future__ import annotations

from collections.abc import Mapping

from .collector import Cooked, Raw
from .model import MetricDesc

_WRAP_FRACTION = 0.25


def counter_delta(old: int | float, new: int | float, wrap_bits: int | None) -> float | None:
    """Increase of a counter from ``old`` to ``new``, or None for a reset.

    A decrease is a wrap only when the counter has a fixed width and went from the top
    quarter of its range to the bottom quarter; anything else is a reset.
    """
    if new >= old:
        return float(new - old)
    if wrap_bits is not None:
        span = 1 << wrap_bits
        if old >= span * (1 - _WRAP_FRACTION) and new < span * _WRAP_FRACTION and old < span:
            return float(span - old + new)
    return None


class RateConverter:
    """Turns raw collections into cooked values, keeping the previous raw per group.

    State is one previous collection per ``group`` (the sampler passes the collector's
    name): the raw dict and its monotonic time, so one time difference serves every
    counter of the collection. A metric or instance missing from the previous
    collection has no rate this time, exactly like a new instance. Raw dicts handed
    to :meth:`convert` are kept by reference as the next interval's base, so
    collectors must not mutate a dict after returning it (none do: each collection
    builds fresh dicts or hands out again one it never changes); the converter itself
    replaces, in the raw dict it is given, instance dicts equal to the previous
    collection's by those (see :meth:`convert`). Not thread-safe: one sampler thread
    owns it.
    """

    def __init__(self) -> None:
        # group -> (monotonic time of previous collection, its raw values)
        self._prev: dict[str, tuple[float, Raw]] = {}
        # group -> counter -> (instance dict, its rates when unchanged: all 0.0)
        self._zeros: dict[str, dict[str, tuple[Mapping[str, object], dict[str, float]]]] = {}

    @staticmethod
    def counters_of(descs: Mapping[str, MetricDesc]) -> dict[str, int | None]:
        """Counter metric -> wrap width; computed once per collector, not per value."""
        return {name: d.type.wrap_bits for name, d in descs.items() if d.is_counter}

    def convert(
        self, counters: Mapping[str, int | None], raw: Raw, mono: float, *, group: str = "",
    ) -> Cooked:
        """Cooked values for ``raw``, collected by ``group`` at monotonic time ``mono``.

        ``counters`` maps each counter metric to its wrap width (:meth:`counters_of`);
        other metrics pass through unchanged (the same dict objects).

        A metric whose instances and values equal the previous collection's keeps the
        previous collection's dict: ``raw`` gets it in place of the equal one (which is
        freed at once, while its memory is still in cache), and a counter's rates are
        then all 0.0, one dict reused while it lasts. Many values do not change from
        one second to the next (error and drop counters, swap, huge pages, idle
        devices); each kept dict is a dict, its keys and its values that are neither
        allocated nor, a second later and long out of cache, freed.
        """
        prev = self._prev.get(group)
        self._prev[group] = (mono, raw)
        if prev is None or mono <= prev[0]:
            cooked: Cooked = raw.copy()  # type: ignore[assignment]
            for name in counters:
                instances = raw.get(name)
                if instances is not None:
                    cooked[name] = dict.fromkeys(instances)
            return cooked
        prev_raw = prev[1]
        if prev_raw is not raw:
            prev_get = prev_raw.get
            for name, instances in raw.items():
                old = prev_get(name)
                if old == instances and old is not None:
                    raw[name] = old  # type: ignore[assignment]
        # Non-counters pass through as the same dict objects: one C-level copy of the
        # mapping, then a pass over the counters only (a Python-level pass over every
        # metric cost a tenth more).
        cooked = raw.copy()  # type: ignore[assignment]
        zeros = self._zeros.get(group)
        if zeros is None:
            zeros = self._zeros[group] = {}
        inv_dt = 1.0 / (mono - prev[0])
        for name, wrap_bits in counters.items():
            instances = raw.get(name)
            if instances is None:
                continue
            prev_values = prev_raw.get(name)
            if prev_values is None:
                cooked[name] = dict.fromkeys(instances)
                continue
            if instances is prev_values:
                zero = zeros.get(name)
                if zero is None or zero[0] is not instances:
                    zero = zeros[name] = (instances, dict.fromkeys(instances, 0.0))
                cooked[name] = zero[1]  # type: ignore[assignment]
                continue
            out: dict[str, float | str | None] = {}
            for inst, value in instances.items():
                old = prev_values.get(inst)
                if old is None:
                    out[inst] = None
                elif value >= old:  # type: ignore[operator]
                    out[inst] = (value - old) * inv_dt  # type: ignore[operator]
                else:
                    delta = counter_delta(old, value, wrap_bits)  # type: ignore[arg-type]
                    out[inst] = None if delta is None else delta * inv_dt
            cooked[name] = out
        return cooked

    def forget(self, names: set[str]) -> None:
        """Drop state of metrics no longer collected (their next sample starts afresh)."""
        for group, (mono, raw) in list(self._prev.items()):
            if not names.isdisjoint(raw):
                self._prev[group] = (mono, {k: v for k, v in raw.items() if k not in names})
