"""The one place counters become per-second rates.

Samples keep counters raw (what the kernel reported); this layer derives rates from
consecutive raw values and *monotonic* time, so wall-clock steps (NTP, suspend) never
produce a bogus rate. It handles:

* the first sample of an instance: no rate (None), never zero;
* instances that appear or vanish (a disk hot-plugged, a process exiting): state is
  per (metric, instance) and dropped when the instance is not reported;
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
    """Turns raw collections into cooked values, keeping the previous raw per instance.

    Not thread-safe: one sampler thread owns it.
    """

    def __init__(self) -> None:
        # metric -> (monotonic time of previous collection, instance -> raw value)
        self._prev: dict[str, tuple[float, dict[str, int | float]]] = {}

    def convert(self, descs: dict[str, MetricDesc], raw: Raw, mono: float) -> Cooked:
        """Cooked values for ``raw`` collected at monotonic time ``mono``.

        ``descs`` maps every metric name in ``raw`` to its descriptor. Non-counters pass
        through unchanged.
        """
        cooked: Cooked = {}
        for name, instances in raw.items():
            desc = descs[name]
            if not desc.is_counter:
                cooked[name] = dict(instances)
                continue
            wrap_bits = desc.type.wrap_bits
            prev = self._prev.get(name)
            current: dict[str, int | float] = {}
            out: dict[str, float | str | None] = {}
            if prev is None:
                for inst, value in instances.items():
                    if isinstance(value, str):
                        continue
                    current[inst] = value
                    out[inst] = None
            else:
                prev_mono, prev_values = prev
                dt = mono - prev_mono
                for inst, value in instances.items():
                    if isinstance(value, str):
                        continue
                    current[inst] = value
                    old = prev_values.get(inst)
                    if old is None or dt <= 0:
                        out[inst] = None
                        continue
                    delta = counter_delta(old, value, wrap_bits)
                    out[inst] = None if delta is None else delta / dt
            self._prev[name] = (mono, current)
            cooked[name] = out
        return cooked

    def forget(self, names: set[str]) -> None:
        """Drop state of metrics no longer collected (their next sample starts afresh)."""
        for name in names:
            self._prev.pop(name, None)
