""":class:`HelperOps`: :class:`~.privileged.PrivilegedOps` served by the helper process.

The daemon side of privilege separation (docs/privilege.md). Every privileged operation
becomes one request of the :mod:`.rpc` op table on a socket to the helper; callers (the
BPF worker threads, the sampler thread) keep calling the same blocking methods as with
:class:`~.privileged.InProcessOps`, from any thread at once: a reader thread matches
responses to waiting callers by request id.

When the helper dies (``kill -9``, a crash, the OOM killer) every waiting call fails with
``helper_unavailable`` and a supervisor thread asks the spawner for a new one, with
exponential backoff (0.2 s doubling to 10 s while it keeps failing). A restarted helper
gets back the BPF modules that were held: this side remembers each hold (module, user,
settings) from the answers it relayed, and enables them again in the new helper, so a
dashboard that had a heat map open keeps it (with a gap of about the restart time;
counters restart at zero, which the rate layer treats as a reset). A module that fails
to come back is reported in the notice and dropped from the holds. Every change of state
is passed to the listeners (the app turns it into a websocket ``notice`` and the
``helper`` block of ``/api/v1/host``).

Cost when BPF is unused: nothing per tick. The BPF collectors ask for data only while
some module is held, and then with one ``bpf_read`` request for all held modules per tick
(the first BPF collector of a tick fetches; the others read what it got).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostscope.bpfmods.manager import BpfError, InvalidSettingsError, UnknownModuleError
from hostscope.bpfmods.modules import BpfModule, all_modules
from hostscope.bpfmods.settings import SettingsContext, SettingsError, validate
from hostscope.bpfmods.symbol_limits import SymbolCacheLimits
from hostscope.metrics.collector import Collector, Derivation, Raw
from hostscope.metrics.model import MetricDesc
from hostscope.metrics.sources import Roots

from . import caps, rpc
from .config import Config
from .privileged import Detacher

log = logging.getLogger("hostscope.daemon")

#: Restart backoff: first retry after this, doubling up to BACKOFF_MAX_S.
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0
#: How long the first start may take (a fresh Python importing the BPF modules).
START_TIMEOUT_S = 15.0
#: How long close() waits for the helper to detach everything and exit.
CLOSE_TIMEOUT_S = 3.0


class HelperUnavailableError(BpfError):
    """The helper is not running (restarting, or it cannot be started)."""

    code = "helper_unavailable"


class RemoteBpfError(BpfError):
    """A :class:`BpfError` raised in the helper, with the same code and fields."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.code = str(data.get("code", "bpf_error"))
        self._data = {k: v for k, v in data.items() if k != "kind"}
        super().__init__(str(data.get("module", "")), str(data.get("message", "")))

    def to_json(self) -> dict[str, Any]:
        return dict(self._data)


class RemoteError(Exception):
    """Any other failure reported by the helper (``kind`` rpc, profile, internal)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.kind = str(data.get("kind", "internal"))
        self.code = str(data.get("code", "internal"))
        self.message = str(data.get("message", ""))
        self._data = {k: v for k, v in data.items() if k != "kind"}
        super().__init__(f"{self.code}: {self.message}")

    def to_json(self) -> dict[str, Any]:
        return dict(self._data)


def _raise_remote(data: Mapping[str, Any]) -> None:
    if data.get("code") == HelperUnavailableError.code:  # lost while the call waited
        raise HelperUnavailableError("helper", str(data.get("message", "")))
    if data.get("kind") == "bpf":
        raise RemoteBpfError(data)
    raise RemoteError(data)


# -- the spawner ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelperSettings:
    """What the helper is started with: fixed by the daemon's configuration."""

    roots: Roots
    bpf: bool = True
    log_level: str = "info"
    log_format: str = "text"
    symbol_cache: SymbolCacheLimits = field(default_factory=SymbolCacheLimits)

    def argv(self) -> list[str]:
        limits = self.symbol_cache
        argv = ["--proc-root", str(self.roots.proc), "--sys-root", str(self.roots.sys),
                "--etc-root", str(self.roots.etc), "--log-level", self.log_level,
                "--log-format", self.log_format,
                "--symbol-cache-elf-files", str(limits.elf_files),
                "--symbol-cache-elf-symbols", str(limits.elf_symbols),
                "--symbol-cache-perf-maps", str(limits.perf_maps),
                "--symbol-cache-perf-map-symbols", str(limits.perf_map_symbols)]
        return [*argv, "--no-bpf"] if not self.bpf else argv


class Spawner:
    """The spawner process (see :mod:`.helper`) and its control socket."""

    def __init__(self, settings: HelperSettings) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control = ours
        self._lock = threading.Lock()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hostscope.daemon.helper", "--spawner",
                 "--fd", str(theirs.fileno()), "--parent", str(os.getpid()),
                 *settings.argv()],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C (SIGINT to the foreground process
                # group) reaches the daemon only, which then stops the helper in order.
                start_new_session=True)
        finally:
            theirs.close()

    def spawn(self, timeout_s: float = START_TIMEOUT_S) -> tuple[int, socket.socket]:
        """(pid, connected socket) of a new helper; OSError/RuntimeError if it cannot."""
        with self._lock:
            self._control.settimeout(timeout_s)
            self._control.send(b"spawn")
            data, fds, _flags, _addr = socket.recv_fds(self._control, 4096, 1)
        if not data:
            raise RuntimeError("the spawner has exited")
        answer = json.loads(data)
        if "error" in answer or not fds:
            for fd in fds:
                os.close(fd)
            raise RuntimeError(f"the spawner could not start a helper: {answer.get('error')}")
        return int(answer["pid"]), socket.socket(fileno=fds[0])

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """End the spawner (it stops any helper still running, then exits)."""
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)
        self._control.close()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- one connection ------------------------------------------------------------------


class _Call:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: Mapping[str, Any] | None = None


class Connection:
    """Requests over one helper socket, from any thread; a reader thread answers them."""

    def __init__(self, pid: int, sock: socket.socket, on_lost: Callable[[Connection], None]
                 ) -> None:
        self.pid = pid
        self.sock = sock
        self.alive = True
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._next_id = 1
        self._pending: dict[int, _Call] = {}
        self._reader = threading.Thread(target=self._read_loop, name="hostscope-helper-rx",
                                        daemon=True)
        self._reader.start()

    def call(self, op: str, args: Mapping[str, Any], timeout_s: float) -> Any:
        call = _Call()
        with self._lock:
            if not self.alive:
                raise HelperUnavailableError("helper", "the privileged helper is not running")
            req_id = self._next_id
            self._next_id += 1
            self._pending[req_id] = call
            try:
                self.sock.sendall(rpc.encode_frame({"id": req_id, "op": op, "args": args}))
            except OSError as exc:
                del self._pending[req_id]
                raise HelperUnavailableError(
                    "helper", f"the privileged helper went away: {exc}") from None
        if not call.done.wait(timeout_s):
            with self._lock:
                self._pending.pop(req_id, None)
            raise HelperUnavailableError("helper", f"the privileged helper did not answer "
                                         f"{op} within {timeout_s:g} s")
        if call.error is not None:
            _raise_remote(call.error)
        return call.result

    def _read_loop(self) -> None:
        try:
            while True:
                try:
                    message = rpc.read_frame(self.sock, rpc.MAX_RESPONSE)
                except rpc.FrameError as exc:
                    log.error("bad frame from the helper", extra={"error": exc.message})
                    if exc.fatal:
                        break
                    continue
                except (OSError, rpc.EndOfStream):
                    break
                req_id = message.get("id") if isinstance(message, dict) else None
                with self._lock:
                    call = self._pending.pop(req_id, None) if isinstance(req_id, int) else None
                if call is None:
                    continue
                if "error" in message:
                    error = message["error"]
                    call.error = error if isinstance(error, dict) else {"code": "internal"}
                else:
                    call.result = message.get("ok")
                call.done.set()
        finally:
            self._lost()

    def _lost(self) -> None:
        with self._lock:
            was_alive = self.alive
            self.alive = False
            pending, self._pending = self._pending, {}
        lost = {"kind": "bpf", "code": HelperUnavailableError.code, "module": "helper",
                "message": "the privileged helper exited while handling this request"}
        for call in pending.values():
            call.error = lost
            call.done.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        if was_alive:
            self._on_lost(self)

    def close(self) -> None:
        """End the stream; the helper detaches everything and exits."""
        with self._lock:
            self.alive = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


# -- PrivilegedOps over RPC ----------------------------------------------------------


class HelperOps:
    """:class:`~.privileged.PrivilegedOps` done by the helper process; thread-safe."""

    def __init__(self, settings: HelperSettings, *, modules: list[BpfModule] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._modules = modules if modules is not None else all_modules()
        self._ops = rpc.build_ops(rpc.ModuleFacts.of(self._modules))
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._conn: Connection | None = None
        self._closed = False
        self._spawner: Spawner | None = None
        self._supervisor: threading.Thread | None = None
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._detachers: list[Detacher] = []
        #: module -> user -> settings: what to enable again in a restarted helper.
        self._holds: dict[str, dict[str, Mapping[str, Any] | None]] = {}
        self.state = "stopped"
        self.restarts = 0
        self.last_restart: float | None = None
        self.last_error: str | None = None
        self._read_cache: dict[str, Raw] = {}
        self._by_name = {m.name: m for m in self._modules}
        self._settings_ctx = SettingsContext(settings.roots)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, drop_privileges: Callable[[], None] | None = None) -> None:
        """Start the spawner and the first helper; blocks until it answers a ping.

        Must run while this process still holds the capabilities the helper needs.
        ``drop_privileges`` runs once both exist and *before* this object starts any
        thread: capabilities belong to threads, and a thread created earlier would keep
        them after the main thread dropped its own."""
        self._spawner = Spawner(self.settings)
        pid, sock = self._spawner.spawn()
        if drop_privileges is not None:
            drop_privileges()
        self._attach(pid, sock)
        self._supervisor = threading.Thread(target=self._supervise, name="hostscope-helper-sup",
                                            daemon=True)
        self._supervisor.start()

    def _connect(self) -> Connection:
        assert self._spawner is not None
        pid, sock = self._spawner.spawn()
        return self._attach(pid, sock)

    def _attach(self, pid: int, sock: socket.socket) -> Connection:
        conn = Connection(pid, sock, self._lost)
        try:
            conn.call("ping", {}, self._ops["ping"].timeout_s)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if self._closed:  # close() ran meanwhile: this helper must not outlive it
                conn.close()
                raise RuntimeError("closed while starting a helper")
            self._conn = conn
            self.state = "running"
            self.last_error = None
            self._changed.notify_all()
        log.info("privileged helper running", extra={"pid": pid})
        return conn

    def _lost(self, conn: Connection) -> None:
        with self._lock:
            if self._conn is not conn or self._closed:
                return
            self._conn = None
            self.state = "restarting"
            self._changed.notify_all()
        log.error("privileged helper exited; restarting it", extra={"pid": conn.pid})
        self._notify("helper_lost", f"The privileged helper (pid {conn.pid}) exited; "
                     "restarting it. BPF data pauses meanwhile.")

    def _supervise(self) -> None:
        backoff = BACKOFF_START_S
        while True:
            with self._lock:
                while not self._closed and self._conn is not None:
                    self._changed.wait()
                if self._closed:
                    return
            spawner = self._spawner
            if spawner is not None and spawner.process.poll() is not None:
                # Nothing privileged is left to start a helper (the spawner was killed):
                # only restarting hostscope can bring BPF and profiles back.
                with self._lock:
                    self.state = "failed"
                    self.last_error = (f"the spawner exited (status "
                                       f"{spawner.process.returncode}); restart hostscope")
                log.error("privileged helper cannot be restarted",
                          extra={"error": self.last_error})
                self._notify("helper_failed", "The privileged helper cannot be restarted: "
                             f"{self.last_error}. BPF modules and profiles are unavailable.")
                return
            try:
                self._connect()
            except (OSError, RuntimeError, ValueError, BpfError, rpc.RpcError) as exc:
                with self._lock:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    failed = backoff >= BACKOFF_MAX_S and self.state != "failed"
                    if failed:
                        self.state = "failed"
                log.error("restarting the privileged helper failed",
                          extra={"error": self.last_error, "retry_s": backoff})
                if failed:  # say it once; retries go on every BACKOFF_MAX_S
                    self._notify("helper_failed", "The privileged helper keeps failing to "
                                 f"start ({self.last_error}); still retrying.")
                with self._lock:
                    self._changed.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_START_S
            with self._lock:
                self.restarts += 1
                self.last_restart = self._clock()
            back, lost = self._reenable()
            message = f"The privileged helper was restarted (restart {self.restarts})."
            if back:
                message += f" BPF modules enabled again: {', '.join(back)}."
            if lost:
                message += f" Could not enable again (switched off): {', '.join(lost)}."
            self._notify("helper_restarted", message, reenabled=back, dropped=lost)

    def _reenable(self) -> tuple[list[str], list[str]]:
        with self._lock:
            holds = {name: dict(users) for name, users in self._holds.items()}
        back: list[str] = []
        lost: list[str] = []
        for name, users in sorted(holds.items()):
            ok = True
            for user, settings in users.items():
                try:
                    self.bpf_enable(name, settings, user)
                except (BpfError, RemoteError) as exc:
                    log.error("BPF module not enabled again after a helper restart",
                              extra={"bpf_module": name, "user": user, "error": str(exc)})
                    with self._lock:
                        self._holds.get(name, {}).pop(user, None)
                    ok = False
            (back if ok else lost).append(name)
        return back, lost

    def add_listener(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """``listener(event)`` on every state change, from a helper thread."""
        self._listeners.append(listener)

    def _notify(self, code: str, message: str, **extra: Any) -> None:
        event = {"code": code, "message": message, "helper": self.info(), **extra}
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("helper listener failed")

    def helper_info(self) -> dict[str, Any] | None:
        return self.info()

    def info(self) -> dict[str, Any]:
        """``{state, pid, restarts, last_restart, error}`` for ``/api/v1/host``."""
        with self._lock:
            conn = self._conn
            return {"state": self.state, "pid": conn.pid if conn is not None else None,
                    "restarts": self.restarts, "last_restart": self.last_restart,
                    "error": self.last_error}

    @property
    def pid(self) -> int | None:
        conn = self._conn
        return conn.pid if conn is not None else None

    def close(self) -> None:
        """Stop the helper (it detaches every module) and the spawner; bounded in time."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            self.state = "stopped"
            self._changed.notify_all()
        while self._detachers:
            with contextlib.suppress(Exception):
                self._detachers.pop()()
        if conn is not None:
            conn.close()
            _wait_gone(conn.pid, CLOSE_TIMEOUT_S)
        if self._spawner is not None:
            self._spawner.close()

    # -- requests ----------------------------------------------------------------------

    def call(self, op: str, **args: Any) -> Any:
        """One request; the args are checked here as the helper will check them, so a
        bad call fails fast with the same error and costs no round trip."""
        spec = self._ops[op]
        checked = spec.validate(args)
        conn = self._conn
        if conn is None:
            raise HelperUnavailableError(
                "helper", f"the privileged helper is {self.state}"
                + (f" ({self.last_error})" if self.last_error else ""))
        return conn.call(op, checked, spec.timeout_s)

    def capabilities(self) -> set[str]:
        try:
            return set(self.call("capabilities"))
        except (BpfError, RemoteError):
            return set()

    def attach(self, name: str, attach: Callable[[], Detacher]) -> Detacher:
        """Runs ``attach`` here, *without* privileges: a callable cannot cross to the
        helper. Privileged attachments must be ops of the helper's table."""
        del name
        detach = attach()
        self._detachers.append(detach)
        return detach

    def bpf_collectors(self) -> list[Collector]:
        if not self.settings.bpf:
            return []
        return [RemoteBpfCollector(self, m, first=i == 0) for i, m in enumerate(self._modules)]

    def bpf_prewarm(self) -> dict[str, Any]:
        return dict(self.call("bpf_prewarm"))

    def bpf_readiness(self, resolve: bool = True) -> dict[str, Any]:
        return dict(self.call("bpf_readiness", resolve=resolve))

    def bpf_status(self) -> list[dict[str, Any]]:
        return list(self.call("bpf_status"))

    def bpf_describe(self) -> list[dict[str, Any]]:
        return list(self.call("bpf_describe"))

    def _module(self, name: str) -> BpfModule:
        """The module named ``name``, or the manager's own ``unknown_module`` error (the
        same answer as in-process, without a round trip)."""
        module = self._by_name.get(name) if isinstance(name, str) else None
        if module is None:
            raise UnknownModuleError(repr(name)[:60], f"no such BPF module (known: "
                                     f"{', '.join(self._by_name)})")
        return module

    def bpf_enable(self, name: str, settings: Mapping[str, Any] | None, user_id: str
                   ) -> dict[str, Any]:
        module = self._module(name)
        try:
            # Settings errors exactly as in-process (one message per problem); the
            # helper validates again before compiling.
            validate(name, module.settings, settings, self._settings_ctx)
        except SettingsError as exc:
            raise InvalidSettingsError(exc) from None
        try:
            status = self.call("bpf_enable", name=name, settings=settings, user=str(user_id))
        except rpc.RpcError as exc:
            # The same check the helper makes; give callers the BPF error they know.
            raise BpfError(str(name)[:60], exc.message) from None
        with self._lock:
            self._holds.setdefault(name, {})[str(user_id)] = settings
        return dict(status)

    def bpf_disable(self, name: str, user_id: str) -> dict[str, Any]:
        self._module(name)
        # Forgotten first: even if the helper is restarting now, a restart must not
        # bring back what its holder switched off.
        self._drop_hold(name, str(user_id))
        try:
            status = self.call("bpf_disable", name=name, user=str(user_id))
        except rpc.RpcError as exc:
            raise BpfError(str(name)[:60], exc.message) from None
        return dict(status)

    def bpf_release(self, user_id: str) -> list[str]:
        # Forgotten first (a viewer that left during a restart holds nothing after it).
        with self._lock:
            for name in list(self._holds):
                self._drop_hold_locked(name, str(user_id))
        return list(self.call("bpf_release", user=str(user_id)))

    def _drop_hold(self, name: str, user: str) -> None:
        with self._lock:
            self._drop_hold_locked(name, user)

    def _drop_hold_locked(self, name: str, user: str) -> None:
        users = self._holds.get(name)
        if users is not None:
            users.pop(user, None)
            if not users:
                del self._holds[name]

    def bpf_table(self, name: str, table: str, limit: int) -> dict[str, Any]:
        module = self._module(name)
        if table not in module.tables:
            raise UnknownModuleError(name, f"no table {repr(table)[:60]} (tables: "
                                     f"{', '.join(module.tables) or 'none'})")
        try:
            return dict(self.call("bpf_table", name=name, table=table, limit=limit))
        except rpc.RpcError as exc:
            raise BpfError(str(name)[:60], exc.message) from None

    # -- profiles: errors keep their code (daemon/profiles.py reads ``code``/``message``)

    def _profile_call(self, op: str, **args: Any) -> Any:
        try:
            return self.call(op, **args)
        except rpc.RpcError as exc:  # refused by the same checks the helper makes
            raise RemoteError({"kind": "profile", "code": "invalid_request",
                               "message": exc.message}) from None
        except HelperUnavailableError as exc:
            raise RemoteError({"kind": "profile", "code": "unavailable",
                               "message": exc.message}) from None

    def profile_readiness(self) -> dict[str, Any]:
        return dict(self._profile_call("profile_readiness"))

    def profile_start(self, request: Mapping[str, Any]) -> str:
        return str(self._profile_call("profile_start", request=dict(request)))

    def profile_poll(self, capture_id: str) -> dict[str, Any]:
        return dict(self._profile_call("profile_poll", capture_id=capture_id))

    def profile_fetch(self, capture_id: str) -> dict[str, Any]:
        return dict(self._profile_call("profile_fetch", capture_id=capture_id))

    def profile_cancel(self, capture_id: str) -> None:
        self._profile_call("profile_cancel", capture_id=capture_id)

    def holds_any(self) -> bool:
        """Whether any module is held, read without the lock. A hold taken between
        this answer and the tick's collection (a window of a millisecond or so) is read
        in that collection: one RPC from the event loop, bounded by its timeout."""
        return bool(self._holds)

    def held_modules(self) -> list[str]:
        with self._lock:
            return sorted(self._holds)

    def read_bpf(self, name: str, refresh: bool) -> Raw:
        """Raw values of module ``name`` for this tick: one ``bpf_read`` for every held
        module when ``refresh`` (the first BPF collector of a tick), else the same tick's
        answer. No request at all while nothing is held."""
        if refresh:
            held = self.held_modules()
            cache: dict[str, Raw] = {}
            if held:
                try:
                    cache = dict(self.call("bpf_read", names=held))
                except (BpfError, RemoteError):
                    cache = {}  # restarting: a gap, like a module that is off
            self._read_cache = cache
        return self._read_cache.get(name, {})

    def proc_io(self, processes: list[list[int]]) -> dict[tuple[int, int], tuple[int, int]]:
        """I/O counters of other users' processes, read by the helper:
        ``{(pid, start): (read_bytes, write_bytes)}``; {} while it is unavailable."""
        if not processes:
            return {}
        out: dict[tuple[int, int], tuple[int, int]] = {}
        for i in range(0, len(processes), rpc.MAX_PROC_BATCH):
            try:
                rows = self.call("proc_io", processes=processes[i:i + rpc.MAX_PROC_BATCH])
            except (BpfError, RemoteError):
                return out
            for pid, start, rb, wb in rows:
                out[(pid, start)] = (rb, wb)
        return out

    def proc_io_reader(self) -> Callable[[list[list[int]]], dict[tuple[int, int],
                                                                  tuple[int, int]]] | None:
        return self.proc_io


def _wait_gone(pid: int, timeout_s: float) -> None:
    """Wait until process ``pid`` (not our child: the spawner's) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    try:
        import select

        select.select([fd], [], [], timeout_s)
    finally:
        os.close(fd)


class RemoteBpfCollector(Collector):
    """A BPF module's metrics in helper mode: descriptors from the local module
    definition, values from the helper (see :meth:`HelperOps.read_bpf`)."""

    def __init__(self, ops: HelperOps, module: BpfModule, first: bool) -> None:
        self.ops = ops
        self.module = module
        self.first = first
        self.name = f"bpf.{module.name}"

    def descriptors(self) -> list[MetricDesc]:
        return self.module.descriptors()

    def derivations(self) -> list[Derivation]:
        return self.module.derivations()

    def may_block(self) -> bool:
        """The first module's collector asks the helper (an RPC) while any module is
        held; the others read that answer, in memory."""
        return self.first and self.ops.holds_any()

    def collect(self) -> Raw:
        return self.ops.read_bpf(self.module.name, refresh=self.first)


def resolve_user(name: str) -> tuple[int, int]:
    """(uid, gid) of user ``name``; KeyError with a clear message if there is none."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise KeyError(f"no user {name!r} (config key user); create it with useradd "
                       "--system, or remove the key") from None
    return entry.pw_uid, entry.pw_gid


def drop_daemon_privileges(switch_to: tuple[int, int] | None = None,
                           status: Path = Path("/proc/thread-self/status")) -> None:
    """Drop every capability of this (the only) thread and check the kernel agrees.

    Fails closed: if ``CapEff``, ``CapPrm`` or ``CapAmb`` is not empty afterwards (or
    the uid is not the one asked for) the daemon refuses to serve rather than run
    network-facing with privileges."""
    caps.drop_all(switch_to)
    masks = caps.status_masks(status.read_text())
    left = {key: hex(masks.get(key, -1)) for key in ("CapEff", "CapPrm", "CapAmb")
            if masks.get(key, -1) != 0}
    if left:
        raise RuntimeError(f"capabilities remain after dropping them: {left}")
    if switch_to is not None and os.getresuid() != (switch_to[0],) * 3:
        raise RuntimeError(f"still uid {os.getresuid()} after switching to {switch_to[0]}")


def start_privileged(config: Config) -> HelperOps:
    """The daemon's privileged operations in a helper process, with this process's
    capabilities dropped once the helper runs (``hostscope serve`` with privsep), and
    its user switched to ``config.user`` when that is set."""
    switch_to = None
    if config.user is not None:
        switch_to = resolve_user(config.user)
        if os.geteuid() != 0 and os.getresuid() != (switch_to[0],) * 3:
            raise RuntimeError(f"user = {config.user!r} needs hostscope serve started as "
                               "root (or as that user)")
        if os.geteuid() != 0:
            switch_to = None  # already that user
    ops = HelperOps(HelperSettings(roots=config.roots(), bpf=config.bpf,
                                   log_level=config.log_level, log_format=config.log_format,
                                   symbol_cache=config.symbol_cache()))
    ops.start(drop_privileges=lambda: drop_daemon_privileges(switch_to))
    log.info("privileges dropped", extra={"helper_pid": ops.pid, "uid": os.getuid()})
    if os.getuid() == 0:
        # No capabilities left, but uid 0 still owns (and may write) every file root
        # owns: the network-facing process should be someone else (docs/privilege.md).
        log.warning('the network-facing process still runs as root (uid 0, no '
                    'capabilities); set user = "hostscope" (an unprivileged user) in the '
                    'config file, or run under systemd/hostscope.service')
    return ops
