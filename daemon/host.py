"""Host identity and capabilities for ``GET /api/v1/host`` and the websocket ``hello``.

The readers live in :mod:`hostscope.metrics.hostinfo`; this module adapts their output to
the protocol (``kernel`` is the kernel release) and derives uptime on each request from
the boot time, since identity is read once at startup (it does not change while the
daemon runs, and reading it per request would cost file reads for nothing).

``capabilities.bpf`` starts as :func:`detect_capabilities`' privilege check with
``"checked": false``; moments after startup the background BPF prewarm replaces it with
the answer of the same checks ``hostscope doctor`` runs (privileges, bcc, kernel headers,
tracefs, each module's attach point or reason), which need bcc imported and so cannot be
part of the blocking startup read.
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

    def set_bpf_readiness(self, readiness: dict[str, Any]) -> None:
        """Make ``capabilities.bpf`` what ``PrivilegedOps.bpf_readiness()`` found: its
        ``available``/``reason`` override the privilege-only answer. Replaced, not
        mutated, so an answer being encoded keeps a consistent view."""
        bpf = {**self.capabilities.get("bpf", {}), **readiness, "checked": True}
        self.capabilities = {**self.capabilities, "bpf": bpf}


def read_host_info(roots: Roots) -> HostInfo:
    """Identity and capabilities of the host under ``roots``. Blocking (reads files)."""
    identity = read_host_identity(roots)
    identity.setdefault("kernel", identity.get("kernel_release"))
    capabilities = detect_capabilities(roots)
    capabilities["bpf"] = {**capabilities["bpf"], "checked": False}
    return HostInfo(identity, capabilities)
