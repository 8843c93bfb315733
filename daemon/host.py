"""Host identity and capabilities for ``GET /api/v1/host`` and the websocket ``hello``.

The readers live in :mod:`hostscope.metrics.hostinfo`; this module adapts their output to
the protocol (``kernel`` is the kernel release) and derives uptime on each request from
the boot time, since identity is read once at startup (it does not change while the
daemon runs, and reading it per request would cost file reads for nothing).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from hostscope.metrics.hostinfo import detect_capabilities, read_host_identity
from hostscope.metrics.sources import Roots


@dataclasses.dataclass(slots=True)
class HostInfo:
    identity: dict[str, Any]
    capabilities: dict[str, Any]

    def uptime_s(self, now: float | None = None) -> float | None:
        boot = self.identity.get("boot_time")
        if boot is None:
            return None
        return round((now if now is not None else time.time()) - float(boot), 3)


def read_host_info(roots: Roots) -> HostInfo:
    """Identity and capabilities of the host under ``roots``. Blocking (reads files)."""
    identity = read_host_identity(roots)
    identity.setdefault("kernel", identity.get("kernel_release"))
    return HostInfo(identity, detect_capabilities(roots))
