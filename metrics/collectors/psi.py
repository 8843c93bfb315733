"""Pressure stall information (PSI) from ``/proc/pressure/{cpu,memory,io}``.

Each file has one or two lines (Documentation/accounting/psi.rst)::

    some avg10=2.48 avg60=0.85 avg300=0.54 total=4296925
    full avg10=0.00 avg60=0.00 avg300=0.00 total=0

``some`` is the share of wall time in which at least one task was stalled on the
resource, ``full`` the share in which all non-idle tasks were stalled at once. The
averages are percentages (0-100) over 10 s, 60 s and 300 s as the kernel computes them;
``total`` is the cumulative stall time in microseconds, whose rate divided by 1e6 is the
stalled fraction over exactly our own sampling interval (sharper than ``avg10``).

PSI may be unavailable, and then the metrics are absent (not registered), not zero:

* kernels before 4.20 or built without ``CONFIG_PSI`` have no ``/proc/pressure``;
* kernels built with ``CONFIG_PSI_DEFAULT_DISABLED`` (or booted with ``psi=0``) list the
  files but reading them fails with EOPNOTSUPP until booted with ``psi=1``;
* before 5.13 the cpu file has no ``full`` line (at system level it is always 0 since;
  it is meaningful for cgroups). ``kernel.all.pressure.cpu.full.*`` are then absent.

PSI cannot be switched on without a reboot, so availability is probed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..collector import Collector, Raw
from ..model import NONE, SINGULAR, USEC, MetricDesc, counter, instant
from ..sources import KeptFile, Roots, SourceUnavailable, list_dir, read_text

#: Resources published, in display order (/proc/pressure/irq, 6.1+, is not published).
RESOURCES: tuple[str, ...] = ("cpu", "memory", "io")
#: Instance names of the ``.avg`` metrics, in the kernel's column order.
AVG_INSTANCES: tuple[str, str, str] = ("10 second", "1 minute", "5 minute")
_KINDS = ("some", "full")

_HELP_KIND = {
    "some": "at least one task stalled on",
    "full": "all non-idle tasks stalled at once on",
}
_HELP_RESOURCE = {"cpu": "CPU", "memory": "memory", "io": "I/O"}


def parse_pressure(text: str) -> dict[str, tuple[float, float, float, int]]:
    """One ``/proc/pressure/*`` file as kind -> (avg10, avg60, avg300, total).

    A line that is cut short or malformed is left out, so a truncated read yields the
    complete lines only.
    """
    out: dict[str, tuple[float, float, float, int]] = {}
    for line in text.split("\n"):
        parts = line.split()
        if len(parts) != 5 or parts[0] not in _KINDS:
            continue
        try:
            out[parts[0]] = (
                float(parts[1].partition("=")[2]),
                float(parts[2].partition("=")[2]),
                float(parts[3].partition("=")[2]),
                int(parts[4].partition("=")[2]),
            )
        except ValueError:
            continue
    return out


@dataclass(frozen=True, slots=True)
class PsiProbe:
    """What PSI this host offers: the lines of each readable resource, or why none."""

    available: bool
    reason: str | None
    #: resource -> kinds present ("some", "full"), for readable resources only
    lines: dict[str, tuple[str, ...]] = field(default_factory=dict)


def probe_psi(roots: Roots) -> PsiProbe:
    """Read each pressure file once and report what exists, with a human reason if not.

    Quick and read-only; shared by :class:`PsiCollector` and ``hostscope doctor``.
    """
    pressure = roots.proc / "pressure"
    if not list_dir(pressure):
        return PsiProbe(
            False,
            f"{pressure} does not exist: the kernel is older than 4.20 or was built "
            "without CONFIG_PSI",
        )
    lines: dict[str, tuple[str, ...]] = {}
    failures: list[SourceUnavailable] = []
    for resource in RESOURCES:
        try:
            parsed = parse_pressure(read_text(pressure / resource))
        except SourceUnavailable as exc:
            failures.append(exc)
            continue
        kinds = tuple(k for k in _KINDS if k in parsed)
        if kinds:
            lines[resource] = kinds
    if lines:
        return PsiProbe(True, None, lines)
    if not failures:
        return PsiProbe(False, f"{pressure} has no readable cpu, memory or io pressure lines")
    first = failures[0]
    if first.reason == "denied":
        return PsiProbe(False, f"permission denied reading {first.path}")
    # The files are listed but cannot be read: EOPNOTSUPP from a kernel whose PSI is off.
    detail = f" ({first.detail})" if first.detail else ""
    return PsiProbe(
        False,
        f"PSI is disabled: reading {first.path} failed{detail}. The kernel was built with "
        "CONFIG_PSI_DEFAULT_DISABLED or booted with psi=0: add psi=1 to the kernel "
        "command line and reboot",
    )


class PsiCollector(Collector):
    """``kernel.all.pressure.{cpu,memory,io}.{some,full}.{avg,total}`` where PSI exists."""

    name = "psi"

    def __init__(self, roots: Roots) -> None:
        self.roots = roots
        self._probe: PsiProbe | None = None
        # (file, [(kind, avg metric name, total metric name)]) per readable resource,
        # fixed after the probe so collect() builds no paths or names
        self._plan: list[tuple[KeptFile, list[tuple[str, str, str]]]] = []

    @property
    def probe(self) -> PsiProbe:
        if self._probe is None:
            self._probe = probe_psi(self.roots)
            self._plan = [
                (
                    KeptFile(self.roots.proc / "pressure" / resource),
                    [
                        (kind, f"kernel.all.pressure.{resource}.{kind}.avg",
                         f"kernel.all.pressure.{resource}.{kind}.total")
                        for kind in kinds
                    ],
                )
                for resource, kinds in self._probe.lines.items()
            ]
        return self._probe

    @property
    def available(self) -> bool:
        """Whether this host has readable PSI (probed once, on first use)."""
        return self.probe.available

    @property
    def reason(self) -> str | None:
        """Why PSI is unavailable, for people (None when it is available)."""
        return self.probe.reason

    def descriptors(self) -> list[MetricDesc]:
        descs: list[MetricDesc] = []
        for resource, kinds in self.probe.lines.items():
            for kind in kinds:
                what = f"{_HELP_KIND[kind]} {_HELP_RESOURCE[resource]}"
                base = f"kernel.all.pressure.{resource}.{kind}"
                descs.append(
                    instant(f"{base}.avg", NONE,
                            f"percent of time (0-100) {what}, over 10 s, 1 min and 5 min",
                            indom="kernel.pressure.avg", labels=("interval",),
                            long_help="Exponentially weighted averages computed by the "
                            "kernel, as printed in /proc/pressure.")
                )
                descs.append(
                    counter(f"{base}.total", USEC, f"total time {what}",
                            long_help="Its rate divided by 1e6 is the stalled fraction of "
                            "the sampling interval.")
                )
        return descs

    def may_block(self) -> bool:
        """``/proc/pressure/*``: the kernel's averages and totals, read without waiting."""
        return False

    def collect(self) -> Raw:
        if self._probe is None:
            self.probe.available  # noqa: B018 - probing builds the plan (collect came first)
        raw: Raw = {}
        ten, one, five = AVG_INSTANCES
        for kept, metrics in self._plan:
            data = kept.read_optional()
            if data is None:
                continue
            parsed = parse_pressure(data.decode("utf-8", "replace"))
            for kind, avg_name, total_name in metrics:
                values = parsed.get(kind)
                if values is None:
                    continue
                raw[avg_name] = {ten: values[0], one: values[1], five: values[2]}
                raw[total_name] = {SINGULAR: values[3]}
        return raw

    def close(self) -> None:
        for kept, _ in self._plan:
            kept.close()
