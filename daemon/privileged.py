"""The seam between the network-facing daemon and work that needs privileges.

PCP runs its collectors in pmcd and drops privileges in the network-facing pmproxy;
Netdata keeps privileged plugins in separate processes. hostscope will do the same: the
websocket/HTTP process should not hold CAP_BPF. To make that a change of implementation
rather than of callers, everything privileged goes through the :class:`PrivilegedOps`
protocol. Today there is one implementation, :class:`InProcessOps`, which does the work
directly in the daemon; a helper-process implementation can replace it without touching
the routes, the hub or the BPF modules.

The BPF operations mirror :class:`~hostscope.bpfmods.manager.BpfManager` one to one and
take and return plain JSON data (errors are ``BpfError``s with a ``code`` and
``to_json()``), so a helper can serve them over a small RPC unchanged. They block
(compiling takes a few hundred milliseconds): callers run them off the event loop.

Anything attached (a BPF program, a perf event) returns a *detacher*; ``attach``
registers it so shutdown detaches everything even if the module that attached it forgot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from hostscope.bpfmods.collectors import bpf_collectors
from hostscope.bpfmods.host import HostProbe
from hostscope.bpfmods.manager import BpfManager, ModuleUnavailableError
from hostscope.bpfmods.symbol_limits import SymbolCacheLimits
from hostscope.metrics.collector import Collector
from hostscope.metrics.collectors.process import IoReader
from hostscope.metrics.sources import Roots, read_optional

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

    # -- BPF modules (blocking; plain JSON in and out) --------------------------------

    def bpf_collectors(self) -> list[Collector]:
        """Collectors of the modules' metrics, for the sampler (a helper implementation
        returns collectors that fetch ``read_metrics`` over its RPC)."""
        ...

    def bpf_prewarm(self) -> dict[str, Any]:
        """One-off costs ahead of the first enable (bcc import, BTF, attach plans)."""
        ...

    def bpf_readiness(self, resolve: bool = True) -> dict[str, Any]:
        """Whether BPF modules can run here and why not: the checks of ``hostscope
        doctor`` (privileges, bcc, headers, tracefs) and each module's availability.
        ``resolve=False``: cheap checks only (no bcc import, no BTF), for startup."""
        ...

    def bpf_status(self) -> list[dict[str, Any]]: ...

    def bpf_describe(self) -> list[dict[str, Any]]: ...

    def bpf_enable(
        self, name: str, settings: Mapping[str, Any] | None, user_id: str
    ) -> dict[str, Any]: ...

    def bpf_disable(self, name: str, user_id: str) -> dict[str, Any]: ...

    def bpf_release(self, user_id: str) -> list[str]: ...

    def bpf_table(self, name: str, table: str, limit: int) -> dict[str, Any]: ...

    # -- profiles (blocking; JSON in and out; errors are ProfileErrors with a code) ----

    def profile_readiness(self) -> dict[str, Any]:
        """Whether cpu/offcpu captures can run here, how, and why not."""
        ...

    def profile_start(self, request: Mapping[str, Any]) -> str:
        """Start a capture of ``ProfileRequest.to_json()``; its capture id."""
        ...

    def profile_poll(self, capture_id: str) -> dict[str, Any]:
        """``{"state", "progress", "error"}`` of a capture."""
        ...

    def profile_fetch(self, capture_id: str) -> dict[str, Any]:
        """A finished capture's ProfileData (the privileged side forgets it then)."""
        ...

    def profile_cancel(self, capture_id: str) -> None: ...

    def helper_info(self) -> dict[str, Any] | None:
        """``{state, pid, restarts, last_restart, error}`` of the helper process, None
        when privileged work runs in the daemon itself."""
        ...

    def proc_io_reader(self) -> IoReader | None:
        """How the process collector reads I/O counters it may not read itself (other
        users' processes); None when the collector's own reads are all there is."""
        ...

    def close(self) -> None:
        """Detach everything still attached and release the helper, if any."""
        ...


_probes: dict[Roots, HostProbe] = {}
_probes_lock = threading.Lock()


def shared_host_probe(roots: Roots) -> HostProbe:
    """The process's one :class:`HostProbe` for ``roots``.

    Its answers are facts of the running kernel and of this process (BTF offsets,
    tracefs, bcc, privileges) that cost a child process (~0.4 s, BTF) and a bcc import to
    establish; an app created again in the same process (tests, embedding) reuses them
    instead of paying again. Filled on first use, never at import.
    """
    with _probes_lock:
        probe = _probes.get(roots)
        if probe is None:
            probe = _probes[roots] = HostProbe(roots)
        return probe


#: Why modules are unavailable when the configuration turned BPF off.
BPF_DISABLED = "BPF modules are disabled in the daemon's configuration (bpf = false)"


class InProcessOps:
    """:class:`PrivilegedOps` done in the daemon itself (the only mode so far).

    Owns the daemon's one :class:`BpfManager`. With ``bpf=False`` the manager still
    describes the modules (so clients can show what exists) but loads nothing, imports
    no bcc and asks nothing of BTF; profiles then use perf only (no off-CPU profiles).
    With ``bpf=True`` the same holds until a client asks: listing resolves BTF facts in
    a child process (no memory kept here), the first enable imports bcc (~60 MB resident
    for good).
    """

    def __init__(
        self,
        register_detacher: Callable[[Detacher], None],
        *,
        roots: Roots | None = None,
        bpf: bool = True,
        host: HostProbe | None = None,
        self_status: Path = Path("/proc/self/status"),
        symbol_cache: SymbolCacheLimits | None = None,
    ) -> None:
        # The daemon's own status, not the monitored host's (roots may point elsewhere).
        self._self_status = self_status
        self._register = register_detacher
        # Programs attach to the running kernel, but tracefs, BTF and cgroups are found
        # under the configured roots (a host's /sys mounted into a container).
        self.bpf_manager = BpfManager(host or shared_host_probe(roots or Roots()))
        self._bpf_disabled = None if bpf else BPF_DISABLED
        self._roots = roots or Roots()
        #: Bounds of the profiler's symbol caches (config keys ``symbol_cache_*``).
        self.symbol_cache = symbol_cache or SymbolCacheLimits()
        self._profiler: Any = None
        self._profiler_lock = threading.Lock()

    def capabilities(self) -> set[str]:
        text = read_optional(self._self_status)
        return parse_capeff(text) if text is not None else set()

    def attach(self, name: str, attach: Callable[[], Detacher]) -> Detacher:
        del name  # used by a helper-process implementation to address the module
        detach = attach()
        self._register(detach)
        return detach

    # -- BPF ------------------------------------------------------------------------

    def bpf_collectors(self) -> list[Collector]:
        return [] if self._bpf_disabled else bpf_collectors(self.bpf_manager)

    def bpf_prewarm(self) -> dict[str, Any]:
        return {} if self._bpf_disabled else self.bpf_manager.prewarm()

    def bpf_readiness(self, resolve: bool = True) -> dict[str, Any]:
        manager = self.bpf_manager
        # host.facts() needs neither bcc nor BTF parsing: cheap in both modes.
        facts = manager.host.facts()
        if self._bpf_disabled:
            return {"available": False, "reason": self._bpf_disabled, **facts, "modules": {
                m.name: {"available": False, "reason": self._bpf_disabled, "attach_point": None}
                for m in manager.modules()}}
        reason = manager.host.not_ready()
        modules = {}
        for module in manager.modules():
            available, why, attach = manager.availability(module.name, resolve)
            modules[module.name] = {"available": available, "reason": why or None,
                                    "attach_point": attach}
        return {"available": reason is None, "reason": reason, **facts, "modules": modules}

    def bpf_status(self) -> list[dict[str, Any]]:
        if not self._bpf_disabled:
            return self.bpf_manager.status()
        return [{"name": m.name, "title": m.title, "available": False,
                 "reason": self._bpf_disabled, "attach_point": None,
                 "rejected_attach_points": [], "notes": [], "state": "off", "error": None,
                 "users": [], "settings": None, "compile_s": None, "tables": list(m.tables)}
                for m in self.bpf_manager.modules()]

    def bpf_describe(self) -> list[dict[str, Any]]:
        return self.bpf_manager.describe()

    def bpf_enable(
        self, name: str, settings: Mapping[str, Any] | None, user_id: str
    ) -> dict[str, Any]:
        if self._bpf_disabled:
            # Unknown names still answer unknown_module (nothing runs, so this reads {}).
            self.bpf_manager.read_metrics(name)
            raise ModuleUnavailableError(name, self._bpf_disabled)
        return self.bpf_manager.enable(name, settings, user_id)

    def bpf_disable(self, name: str, user_id: str) -> dict[str, Any]:
        return self.bpf_manager.disable(name, user_id)

    def bpf_release(self, user_id: str) -> list[str]:
        return self.bpf_manager.release(user_id)

    def bpf_table(self, name: str, table: str, limit: int) -> dict[str, Any]:
        return self.bpf_manager.table(name, table, limit)

    # -- profiles -------------------------------------------------------------------

    def _get_profiler(self) -> Any:
        """The process's one Profiler, created on first use: its module imports bcc
        lazily too, but even constructing it is work a daemon nobody profiles skips."""
        with self._profiler_lock:
            if self._profiler is None:
                from hostscope.bpfmods.profiler import Profiler

                # bpf = false: no BPF program at all, so CPU profiles use perf and
                # off-CPU profiles (BPF only) are unavailable, saying why.
                self._profiler = Profiler(self._roots, self.bpf_manager.host,
                                          symbol_cache=self.symbol_cache,
                                          bpf_disabled=self._bpf_disabled)
            return self._profiler

    def profile_readiness(self) -> dict[str, Any]:
        return self._get_profiler().readiness()

    def profile_start(self, request: Mapping[str, Any]) -> str:
        from hostscope.bpfmods.profiler import ProfileRequest

        return self._get_profiler().start(ProfileRequest.from_json(request))

    def profile_poll(self, capture_id: str) -> dict[str, Any]:
        return self._get_profiler().poll(capture_id)

    def profile_fetch(self, capture_id: str) -> dict[str, Any]:
        return self._get_profiler().fetch(capture_id)

    def profile_cancel(self, capture_id: str) -> None:
        self._get_profiler().cancel(capture_id)

    def helper_info(self) -> dict[str, Any] | None:
        return None

    def proc_io_reader(self) -> IoReader | None:
        return None  # same privileges as the collector: nothing more to read

    def close(self) -> None:
        """Stop a capture in progress and detach every BPF module (waiting for starts in
        progress). Other detachers registered through ``attach`` run at shutdown in the
        app's cleanup."""
        with self._profiler_lock:
            profiler, self._profiler = self._profiler, None
        if profiler is not None:
            profiler.close()
        self.bpf_manager.close()
