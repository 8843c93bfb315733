"""BpfManager: the registry of modules and the reference-counted lifecycle of their runs.

Several viewers share one attached module: each ``enable(name, settings, user_id)`` adds a
user, each ``disable`` removes one, and the programs are detached when the last user goes.
Users are a set, so a client that reconnects and enables again is not counted twice, and
``release(user_id)`` drops a departed viewer from everything at once.

Threading. Every operation is synchronous; compiling takes a few hundred milliseconds, so
the daemon calls ``enable`` in an executor. One lock guards the state, but compilation
runs *outside* it (state "starting"), so ``status()`` and metric reads from the sampler
thread never wait for clang. Concurrent enables of a starting module wait for that start.

Interface. Operations take and return plain JSON-able data (dicts, lists, str, numbers),
and errors are :class:`BpfError` subclasses with a ``code`` and ``to_json()``, so the
manager can later move into a privileged helper process behind a small RPC without its
callers changing.

Cost. Creating a manager and asking ``availability(name, resolve=False)`` costs nothing:
no bcc import, no BTF. The first full resolution (``status()``, ``enable``) asks a child
process for every module's BTF facts at once (~0.4 s, no memory kept here); bcc is
imported by the first ``enable`` (or ``prewarm()``), since that import keeps ~60 MB.

Counters survive restarts: when a run stops, its final counts become the base of the next
run of that module, so a module that is disabled and re-enabled never makes a counter go
backwards (which the rate layer would have to treat as a reset).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hostscope.metrics.collector import Raw
from hostscope.metrics.sources import Roots

from .btf import BtfError
from .host import HostProbe
from .modules import (
    BpfModule,
    ModuleContext,
    Resolution,
    Run,
    all_modules,
    btf_questions,
    resolve_plan,
)
from .runtime import BpfLoadError, load
from .settings import SettingsContext, SettingsError, Validated, cflags, validate

log = logging.getLogger("hostscope.bpf")

#: How often ring buffers (event tables) are drained while such a module runs.
POLL_INTERVAL_S = 0.1
#: Longest a caller waits for another thread's start of the same module.
START_WAIT_S = 60.0


class BpfError(Exception):
    """Base of the manager's domain errors; ``code`` is stable for clients."""

    code = "bpf_error"

    def __init__(self, module: str, message: str) -> None:
        self.module = module
        self.message = message
        super().__init__(f"{module}: {message}")

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "module": self.module, "message": self.message}


class UnknownModuleError(BpfError, KeyError):
    code = "unknown_module"

    def __str__(self) -> str:
        return f"{self.module}: {self.message}"


class InvalidSettingsError(BpfError, ValueError):
    code = "invalid_settings"

    def __init__(self, exc: SettingsError) -> None:
        self.errors = exc.errors
        super().__init__(exc.module, "; ".join(exc.errors))

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "errors": self.errors}


class ModuleUnavailableError(BpfError):
    code = "unavailable"


class SettingsConflictError(BpfError):
    code = "settings_conflict"


class ModuleStartError(BpfError):
    code = "start_failed"


class ModuleNotRunningError(BpfError):
    code = "not_running"


@dataclass(slots=True)
class _Instance:
    module: BpfModule
    state: str = "off"  # off | starting | on | error
    users: set[str] = field(default_factory=set)
    settings: Validated | None = None
    run: Run | None = None
    error: str | None = None
    attach_point: str | None = None
    started: threading.Event = field(default_factory=threading.Event)
    #: final cumulative counts of previous runs: metric -> instance -> value
    base: dict[str, dict[str, float]] = field(default_factory=dict)
    counters: frozenset[str] = frozenset()
    compile_s: float | None = None
    enabled_at: float | None = None


class BpfManager:
    """Registry and lifecycle of BPF modules; thread-safe."""

    def __init__(
        self,
        host: HostProbe | None = None,
        *,
        roots: Roots | None = None,
        modules: Sequence[BpfModule] | None = None,
    ) -> None:
        self.roots = roots or (host.roots if host else Roots())
        self.host = host or HostProbe(self.roots)
        self._settings_ctx = SettingsContext(self.roots)
        self._ctx = ModuleContext(self.roots, self.host)
        self._lock = threading.RLock()
        self._instances: dict[str, _Instance] = {}
        for module in modules if modules is not None else all_modules():
            if module.name in self._instances:
                raise ValueError(f"duplicate module {module.name}")
            counters = frozenset(d.name for d in module.descriptors() if d.is_counter)
            self._instances[module.name] = _Instance(module, counters=counters)
        self._closed = False
        self._poller: threading.Thread | None = None
        self._resolutions: dict[str, Resolution] = {}
        self._predictions: dict[str, Resolution] = {}

    # -- introspection -------------------------------------------------------------------

    def modules(self) -> list[BpfModule]:
        return [inst.module for inst in self._instances.values()]

    def describe(self) -> list[dict[str, Any]]:
        """Static description of every module: settings, tables, metric names."""
        return [inst.module.describe() for inst in self._instances.values()]

    def resolution(self, name: str) -> Resolution:
        """The attach plan ``name`` would use here (cached: the kernel does not change).

        The first call asks one child process for the BTF facts of every module."""
        with self._lock:
            found = self._resolutions.get(name)
        if found is None:
            self._prefetch_btf()
            found = resolve_plan(self._get(name).module, self.host)
            with self._lock:
                self._resolutions[name] = found
        return found

    def _prefetch_btf(self) -> None:
        btf = self.host.btf()
        if btf is None:
            return
        # A failure is remembered by ``btf.error``; each plan then reports it as its reason.
        with contextlib.suppress(BtfError):
            btf.prefetch(*btf_questions(self.modules()))

    def predicted_resolution(self, name: str) -> Resolution:
        """The real resolution if known, else a prediction from cheap checks (tracefs
        files, BTF file present) that needs no child process and no bcc."""
        with self._lock:
            found = self._resolutions.get(name) or self._predictions.get(name)
        if found is None:
            found = resolve_plan(self._get(name).module, self.host, check_btf=False)
            with self._lock:
                self._predictions[name] = found
        return found

    def availability(self, name: str, resolve: bool = True) -> tuple[bool, str, str | None]:
        """(available, reason if not, attach point it would use).

        ``resolve=False``: from cheap checks only (bcc found, not imported; BTF file
        present, not parsed), for startup; the attach point is then a prediction unless
        the module was already resolved."""
        self._get(name)
        ok, why = self.host.bcc()
        if not ok:
            return False, (f"bcc is not importable ({why}); install python3-bpfcc and run "
                           "bpfmods/install-deps.sh VENV"), None
        privileged, why = self.host.privileges()
        if not privileged:
            return False, f"no privileges to load BPF programs: {why}", None
        headers = self.host.headers()
        if not headers.present:
            return False, (f"kernel headers missing: {headers.detail}; run "
                           "bpfmods/install-deps.sh (links Debian's generic headers)"), None
        res = self.resolution(name) if resolve else self.predicted_resolution(name)
        if res.plan is None:
            return False, f"no usable attach point: {res.reason}", None
        return True, "", res.plan.name

    def status(self) -> list[dict[str, Any]]:
        """One JSON-ready entry per module (see module docstring for the fields)."""
        return [self._status_of(name) for name in self._instances]

    def _status_of(self, name: str) -> dict[str, Any]:
        # Status never waits for another thread's BTF child (~0.4 s, once): meanwhile it
        # reports the prediction, as at startup.
        btf = self.host.btf()
        resolve = btf is None or not btf.busy
        available, reason, attach = self.availability(name, resolve)
        res = None
        if available:
            res = self.resolution(name) if resolve else self.predicted_resolution(name)
        with self._lock:
            inst = self._instances[name]
            return {
                "name": name,
                "title": inst.module.title,
                "available": available,
                "reason": reason,
                "attach_point": inst.attach_point if inst.state == "on" else attach,
                "rejected_attach_points": [
                    {"attach_point": plan, "reason": why} for plan, why in res.rejected
                ] if res else [],
                "notes": list(res.notes) if res else [],
                "state": inst.state,
                "error": inst.error,
                "users": sorted(inst.users),
                "settings": dict(inst.settings.values) if inst.settings else None,
                "compile_s": inst.compile_s,
                "tables": list(inst.module.tables),
            }

    def _get(self, name: str) -> _Instance:
        inst = self._instances.get(name) if isinstance(name, str) else None
        if inst is None:
            shown = repr(name)[:60]
            raise UnknownModuleError(shown, f"no such BPF module (known: "
                                     f"{', '.join(self._instances)})")
        return inst

    # -- lifecycle -----------------------------------------------------------------------

    def prewarm(self) -> dict[str, Any]:
        """Do the one-off costs ahead of the first enable: import bcc (libbcc + LLVM,
        ~60 MB resident for good), resolve the kernel's BTF facts (in a child), resolve
        every module's attach plan. Blocking. The daemon does NOT call it: a daemon nobody
        asks for BPF should not pay for bcc; the first enable pays instead (measured
        within the 3 s first-column target). Benchmarks and tests call it to measure warm
        enables. Returns how long each step took."""
        timings: dict[str, Any] = {}
        start = time.perf_counter()
        timings["bcc"] = self.host.import_bcc()[0]
        timings["bcc_import_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        self._prefetch_btf()
        timings["btf_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        for name in self._instances:
            self.resolution(name)
        timings["resolve_s"] = round(time.perf_counter() - start, 3)
        return timings

    def enable(self, name: str, settings: Mapping[str, Any] | None, user_id: str) -> dict[str, Any]:
        """Add ``user_id`` as a user of module ``name``, starting it if needed.

        Blocks while compiling (call in an executor). Returns the module's status entry.
        Raises UnknownModuleError, InvalidSettingsError, ModuleUnavailableError,
        SettingsConflictError (running with other settings for other users) or
        ModuleStartError.
        """
        inst = self._get(name)
        user_id = str(user_id)
        try:
            wanted = validate(name, inst.module.settings, settings, self._settings_ctx)
        except SettingsError as exc:
            raise InvalidSettingsError(exc) from None
        available, reason, _ = self.availability(name)
        if not available:
            raise ModuleUnavailableError(name, reason)
        imported, why = self.host.import_bcc()  # first enable: ~0.1-0.2 s, then cached
        if not imported:
            raise ModuleUnavailableError(name, f"bcc found but does not import: {why}")
        restart: Run | None = None
        waiter: threading.Event | None = None
        with self._lock:
            if self._closed:
                raise ModuleStartError(name, "the BPF manager is shut down")
            if inst.state in ("on", "starting"):
                assert inst.settings is not None
                if inst.settings.key() != wanted.key() or inst.settings.values != wanted.values:
                    others = inst.users - {user_id}
                    if others or inst.state == "starting":
                        raise SettingsConflictError(
                            name, f"running with settings {inst.settings.values} for "
                            f"{len(others) or 'other'} other user(s); use those settings or "
                            "wait until they disable it")
                    restart = inst.run  # sole user changes settings: restart
                    self._stop_locked(inst)
                else:
                    inst.users.add(user_id)
                    if inst.state == "on":
                        return self._status_of(name)
                    waiter = inst.started
            if inst.state in ("off", "error") or restart is not None:
                inst.state = "starting"
                inst.error = None
                inst.users = {user_id}
                inst.settings = wanted
                inst.started = threading.Event()
        if waiter is not None:
            waiter.wait(START_WAIT_S)
            return self._finish_wait(name, user_id)
        return self._start(inst, wanted)

    def _finish_wait(self, name: str, user_id: str) -> dict[str, Any]:
        with self._lock:
            inst = self._instances[name]
            if inst.state == "error":
                raise ModuleStartError(name, inst.error or "failed to start")
        return self._status_of(name)

    def _start(self, inst: _Instance, wanted: Validated) -> dict[str, Any]:
        name = inst.module.name
        res = self.resolution(name)
        assert res.plan is not None
        # Plan defines (attach variant, BTF offsets) win over settings of the same name.
        defines = {**wanted.defines, **res.defines}
        run: Run | None = None
        error: str | None = None
        try:
            loaded = load(inst.module.source, cflags(defines), res.probes)
        except BpfLoadError as exc:
            error = str(exc)
        else:
            run = Run(inst.module, loaded, wanted.values, res.plan.name, self._ctx)
            try:
                inst.module.open(run)
            except Exception as exc:  # noqa: BLE001 - any setup failure must detach
                loaded.close()
                run = None
                error = f"setting up {name} failed: {type(exc).__name__}: {exc}"
        with self._lock:
            inst.started.set()
            if error is not None or run is None:
                inst.state = "error"
                inst.error = error
                inst.users.clear()
                log.warning("BPF module %s failed to start: %s", name, error)
                raise ModuleStartError(name, error or "failed to start")
            if self._closed or not inst.users:
                # Everybody left (or the daemon is stopping) while we compiled.
                run.loaded.close()
                inst.state = "off"
                return self._status_of(name)
            inst.run = run
            inst.state = "on"
            inst.attach_point = run.attach_point
            inst.compile_s = round(run.loaded.compile_s, 3)
            inst.enabled_at = time.time()
            if inst.module.tables:
                self._ensure_poller()
            log.info("BPF module %s on (%s, compiled in %.2f s)", name, run.attach_point,
                     run.loaded.compile_s)
            return self._status_of(name)

    def disable(self, name: str, user_id: str) -> dict[str, Any]:
        """Remove ``user_id`` from module ``name``; detach when no user is left."""
        inst = self._get(name)
        self.resolution(name)  # the status answer needs it: resolve before taking the lock
        with self._lock:
            inst.users.discard(str(user_id))
            if not inst.users and inst.state == "on":
                self._stop_locked(inst)
            # A starting module with no users is detached by its starter when it finishes.
            return self._status_of(name)

    def release(self, user_id: str) -> list[str]:
        """Drop ``user_id`` from every module (a viewer disconnected); names it left."""
        left = []
        with self._lock:
            for name, inst in self._instances.items():
                if str(user_id) in inst.users:
                    self.disable(name, user_id)
                    left.append(name)
        return left

    def _stop_locked(self, inst: _Instance) -> None:
        run = inst.run
        if run is not None:
            try:
                final = inst.module.read(run)
            except Exception:
                log.exception("final read of %s failed", inst.module.name)
                final = {}
            self._fold_base(inst, final)
            run.loaded.close()
        inst.run = None
        inst.state = "off"
        inst.attach_point = None
        inst.users.clear()

    def _fold_base(self, inst: _Instance, final: Raw) -> None:
        for metric, values in final.items():
            if metric not in inst.counters:
                continue
            base = inst.base.setdefault(metric, {})
            for instance, value in values.items():
                if isinstance(value, int | float):
                    base[instance] = base.get(instance, 0) + value

    def close(self) -> None:
        """Detach every module (daemon shutdown, SIGTERM). Idempotent; waits briefly for
        starts in progress so that no program stays loaded after it returns."""
        with self._lock:
            self._closed = True
            starting = [i.started for i in self._instances.values() if i.state == "starting"]
            for inst in self._instances.values():
                if inst.state == "on":
                    self._stop_locked(inst)
                inst.users.clear()
        for event in starting:
            event.wait(START_WAIT_S)
        poller = self._poller
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=2 * POLL_INTERVAL_S + 1)

    # -- data ----------------------------------------------------------------------------

    def may_be_on(self, name: str) -> bool:
        """Whether module ``name`` is on or starting, read without the lock.

        For :meth:`BpfModuleCollector.may_block`: a module that is off answers
        :meth:`read_metrics` at once (the lock is only ever held for state changes), so
        a collection of it never waits on a BPF map. A module switched on just after
        this answer is read in the next collection, which then says it may block.
        """
        return self._get(name).state in ("on", "starting")

    def read_metrics(self, name: str) -> Raw:
        """Raw values of module ``name`` (counters cumulative); {} when it is not on."""
        inst = self._get(name)
        with self._lock:
            if inst.state != "on" or inst.run is None:
                return {}
            raw = inst.module.read(inst.run)
            if not inst.base:
                return raw
            for metric, base in inst.base.items():
                values = raw.get(metric)
                if values is None:
                    continue
                merged: dict[str, int | float | str] = dict(values)
                for instance, offset in base.items():
                    current = merged.get(instance, 0)
                    if isinstance(current, int | float):
                        merged[instance] = current + offset
                raw[metric] = merged
            return raw

    def table(self, name: str, table: str, limit: int = 100) -> dict[str, Any]:
        """JSON-ready rows of one of the module's tables (see ``describe()``)."""
        inst = self._get(name)
        if table not in inst.module.tables:
            raise UnknownModuleError(name, f"no table {repr(table)[:60]} (tables: "
                                     f"{', '.join(inst.module.tables) or 'none'})")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise BpfError(name, "limit must be an integer between 1 and 10000")
        with self._lock:
            if inst.state != "on" or inst.run is None:
                raise ModuleNotRunningError(name, f"module is {inst.state}, enable it first")
            rows = inst.module.table(inst.run, table, limit)
            return {"module": name, "table": table, "time": time.time(), "rows": rows}

    # -- ring buffer polling -------------------------------------------------------------

    def _ensure_poller(self) -> None:
        if self._poller is None or not self._poller.is_alive():
            self._poller = threading.Thread(target=self._poll_loop, name="hostscope-bpf-poll",
                                             daemon=True)
            self._poller.start()

    def _poll_loop(self) -> None:
        """Drain event ring buffers into the bounded tables until nothing needs it."""
        while True:
            with self._lock:
                runs = [i.run for i in self._instances.values()
                        if i.state == "on" and i.run is not None and i.module.tables]
                if self._closed or not runs:
                    self._poller = None
                    return
                for run in runs:
                    try:
                        run.loaded.poll()
                    except Exception:
                        log.exception("polling %s failed", run.module.name)
            time.sleep(POLL_INTERVAL_S)

