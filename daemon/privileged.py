"""The seam between the network-facing daemon and work that needs privileges.

PCP runs its collectors in pmcd and drops privileges in the network-facing pmproxy;
Netdata keeps privileged plugins in separate processes. hostscope will do the same once
BPF programs arrive: the websocket/HTTP process should not hold CAP_BPF. To make that a
change of implementation rather than of callers, everything privileged goes through the
:class:`PrivilegedOps` protocol. Today there is one implementation, :class:`InProcessOps`,
which does the work directly in the daemon; a helper-process implementation can replace
it without touching the routes, the hub or the BPF modules.

Anything attached (a BPF program, a perf event) returns a *detacher*; ``attach``
registers it so shutdown detaches everything even if the module that attached it forgot.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hostscope.metrics.sources import read_optional

Detacher = Callable[[], None]

#: Capability bit numbers (linux/capability.h) the BPF and perf features need.
CAPABILITIES = {
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYSLOG": 34,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}


def parse_capeff(status_text: str) -> set[str]:
    """Names of the effective capabilities in a ``/proc/PID/status`` text."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            mask = int(line.split()[1], 16)
            return {name for name, bit in CAPABILITIES.items() if mask >> bit & 1}
    return set()


class PrivilegedOps(Protocol):
    """Operations that need privileges beyond reading world-readable /proc files."""

    def capabilities(self) -> set[str]:
        """Effective capabilities (names from :data:`CAPABILITIES`) of whoever does the work."""
        ...

    def attach(self, name: str, attach: Callable[[], Detacher]) -> Detacher:
        """Run ``attach`` with privileges and remember its detacher for shutdown."""
        ...

    def close(self) -> None:
        """Detach everything still attached and release the helper, if any."""
        ...


class InProcessOps:
    """:class:`PrivilegedOps` done in the daemon itself (the only mode so far)."""

    def __init__(
        self,
        register_detacher: Callable[[Detacher], None],
        *,
        self_status: Path = Path("/proc/self/status"),
    ) -> None:
        # The daemon's own status, not the monitored host's (roots may point elsewhere).
        self._self_status = self_status
        self._register = register_detacher

    def capabilities(self) -> set[str]:
        text = read_optional(self._self_status)
        return parse_capeff(text) if text is not None else set()

    def attach(self, name: str, attach: Callable[[], Detacher]) -> Detacher:
        del name  # used by a helper-process implementation to address the module
        detach = attach()
        self._register(detach)
        return detach

    def close(self) -> None:
        """Nothing of its own: detachers registered through ``attach`` run at shutdown."""
