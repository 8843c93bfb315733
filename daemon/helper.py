"""The privileged helper process and the spawner that (re)starts it.

``hostscope serve`` with ``privsep = true`` (the default) runs three processes::

    hostscope serve (network-facing; drops every capability once the spawner runs)
      └─ spawner  (python -m hostscope.daemon.helper --spawner; idle, one job)
           └─ helper (python -m hostscope.daemon.helper; keeps the 5 capabilities)

Why a spawner. After the daemon drops its capabilities it can no longer start a
privileged process, yet a helper that dies must be restarted. The spawner is started
while the daemon still holds them; its only input is a fixed ``spawn`` datagram (no
arguments: the helper's settings were fixed on its own command line by the daemon's
configuration), and it answers with a connected socket to a fresh helper, passed with
``SCM_RIGHTS``. It sets ``PR_SET_PDEATHSIG`` so it dies with the daemon, and the helper
sets it so it dies with the spawner; a helper's BPF programs are attached through its
file descriptors, so they go with it however it ends (``kill -9`` included).

The helper serves the op table of :mod:`.rpc` over its socket: a reader (the main
thread) checks each request and hands it to a small pool, so a compile (~0.5 s) does not
hold up the sampler's per-tick ``bpf_read``. It keeps only :data:`~.caps.HELPER_CAPS`
(bounding, permitted, effective), and exits when the socket closes (the daemon stopped
or restarted it), closing the BPF manager first.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hostscope.bpfmods.symbol_limits import SymbolCacheLimits
from hostscope.metrics.sources import Roots, SourceUnavailable, read_bytes, translate

from . import caps, rpc
from .config import SYMBOL_CACHE_KEYS, Config, ConfigError, from_mapping

log = logging.getLogger("hostscope.helper")

#: Requests the helper works on at once; more are refused with ``busy``.
MAX_IN_FLIGHT = 64
#: Worker threads: a few concurrent compiles plus room for the sampler's reads.
WORKERS = 8
SPAWN_REQUEST = b"spawn"


class HelperService:
    """The methods behind the op table, one per op, taking the op's checked arguments.

    Wraps an :class:`~.privileged.InProcessOps` (the same code the in-process mode runs)
    plus what only a separate process needs: a batched metrics read and other processes'
    I/O counters.
    """

    def __init__(self, roots: Roots, bpf: bool,
                 symbol_cache: SymbolCacheLimits | None = None) -> None:
        from .privileged import InProcessOps

        self.roots = roots
        self._detachers: list[Any] = []
        self.ops = InProcessOps(self._detachers.append, roots=roots, bpf=bpf,
                                symbol_cache=symbol_cache)
        #: (pid, start) -> kept descriptor of /proc/PID/io (see proc_io).
        self._io_fds: dict[tuple[int, int], int] = {}
        #: Processes whose io was denied even here (see proc_io): not tried again.
        self._io_denied: set[tuple[int, int]] = set()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._io_fd_budget = 16384 if soft == resource.RLIM_INFINITY else min(soft // 2, 16384)

    def ping(self) -> dict[str, Any]:
        """Who answers, with what privileges, and the settings its command line fixed
        (the same in every helper the spawner starts)."""
        return {"pid": os.getpid(), "capabilities": sorted(self.ops.capabilities()),
                "symbol_cache": dataclasses.asdict(self.ops.symbol_cache)}

    def capabilities(self) -> list[str]:
        return sorted(self.ops.capabilities())

    def bpf_prewarm(self) -> dict[str, Any]:
        return self.ops.bpf_prewarm()

    def bpf_readiness(self, resolve: bool) -> dict[str, Any]:
        return self.ops.bpf_readiness(resolve=resolve)

    def bpf_status(self) -> list[dict[str, Any]]:
        return self.ops.bpf_status()

    def bpf_describe(self) -> list[dict[str, Any]]:
        return self.ops.bpf_describe()

    def bpf_enable(self, name: str, settings: Mapping[str, Any] | None, user: str
                   ) -> dict[str, Any]:
        return self.ops.bpf_enable(name, settings, user)

    def bpf_disable(self, name: str, user: str) -> dict[str, Any]:
        return self.ops.bpf_disable(name, user)

    def bpf_release(self, user: str) -> list[str]:
        return self.ops.bpf_release(user)

    def bpf_table(self, name: str, table: str, limit: int) -> dict[str, Any]:
        return self.ops.bpf_table(name, table, limit)

    def bpf_read(self, names: list[str]) -> dict[str, Any]:
        manager = self.ops.bpf_manager
        return {name: manager.read_metrics(name) for name in names}

    def proc_io(self, processes: list[list[int]]) -> list[list[int]]:
        """``[pid, start, read_bytes, write_bytes]`` for each ``[pid, start]`` whose
        process still has that start time (a reused PID is skipped, not misattributed).

        Same economy as the process collector: ``io`` is opened once per process
        identity (after checking its start time in ``stat``) and kept open, so a call
        costs one ``pread`` per process; a kept descriptor cannot be fooled by PID
        reuse (reading it fails once its process is gone). Descriptors of processes no
        longer asked for are closed. A process whose ``io`` is denied even here (one
        that is not dumpable, such as a container's init, needs ``CAP_SYS_PTRACE``,
        which the helper does not keep) is remembered and not tried again while it is
        asked for: it used to cost six system calls at every call.
        """
        from hostscope.metrics.collectors.process import parse_io

        proc = str(self.roots.proc)
        kept = self._io_fds
        wanted = {(pid, start) for pid, start in processes}
        for key in [k for k in kept if k not in wanted]:
            os.close(kept.pop(key))
        denied = self._io_denied
        denied &= wanted
        out: list[list[int]] = []
        for key in wanted:
            if key in denied:
                continue
            pid, start = key
            data = self._read_io(key, f"{proc}/{pid}")
            if data is None:
                continue
            io = parse_io(data)
            if io is not None:
                out.append([pid, start, io[0], io[1]])
        return out

    def _read_io(self, key: tuple[int, int], base: str) -> bytes | None:
        """``io`` of process ``key`` through its kept descriptor (opened on first use,
        after the start time matched); None if gone, denied or another process."""
        from hostscope.metrics.collectors.process import parse_stat

        kept = self._io_fds
        fd = kept.get(key)
        try:
            if fd is None:
                stat = parse_stat(read_bytes(Path(f"{base}/stat"), 4096))
                if stat is None or stat[8] != key[1]:
                    return None
                fd = os.open(f"{base}/io", os.O_RDONLY | os.O_CLOEXEC)
                if len(kept) >= self._io_fd_budget:
                    try:
                        return os.read(fd, 1024)
                    finally:
                        os.close(fd)
                kept[key] = fd
            return os.pread(fd, 1024, 0)
        except SourceUnavailable:
            return None
        except OSError as exc:
            if kept.pop(key, None) is not None:
                os.close(fd)  # type: ignore[arg-type]
            # gone or denied: no value (others raise)
            if translate(exc, Path(f"{base}/io")).reason == "denied":
                self._io_denied.add(key)
            return None

    # -- profiles (the profiler is created on first use, in this process) ------------

    def profile_readiness(self) -> dict[str, Any]:
        return self.ops.profile_readiness()

    def profile_start(self, request: dict[str, Any]) -> str:
        return self.ops.profile_start(request)

    def profile_poll(self, capture_id: str) -> dict[str, Any]:
        return self.ops.profile_poll(capture_id)

    def profile_fetch(self, capture_id: str) -> dict[str, Any]:
        return self.ops.profile_fetch(capture_id)

    def profile_cancel(self, capture_id: str) -> None:
        self.ops.profile_cancel(capture_id)

    def close(self) -> None:
        while self._io_fds:
            os.close(self._io_fds.popitem()[1])
        while self._detachers:
            with contextlib.suppress(Exception):
                self._detachers.pop()()
        self.ops.close()


def _error_json(exc: BaseException) -> dict[str, Any]:
    """The wire form of an exception raised while serving a request."""
    from hostscope.bpfmods.manager import BpfError

    if isinstance(exc, rpc.RpcError):
        return exc.to_json()
    if isinstance(exc, BpfError):
        return {"kind": "bpf", **exc.to_json()}
    code = getattr(exc, "code", None)
    to_json = getattr(exc, "to_json", None)
    if type(exc).__name__ == "ProfileError" and isinstance(code, str) and callable(to_json):
        return {"kind": "profile", **to_json()}
    log.exception("helper operation failed", exc_info=exc)
    return {"kind": "internal", "code": "internal",
            "message": f"{type(exc).__name__}: {str(exc)[:300]}"}


class Server:
    """Reads requests from ``sock`` and answers them until the stream ends."""

    def __init__(self, sock: socket.socket, service: Any, ops: Mapping[str, rpc.Op]) -> None:
        self.sock = sock
        self.service = service
        self.ops = ops
        self._write_lock = threading.Lock()
        self._in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="helper")

    def send(self, message: Mapping[str, Any]) -> None:
        try:
            frame = rpc.encode_frame(message)
        except ValueError as exc:  # NaN or something JSON cannot carry: a helper bug
            frame = rpc.encode_frame({"id": message.get("id"), "error": {
                "kind": "internal", "code": "internal", "message": f"unencodable: {exc}"}})
        if len(frame) > rpc.MAX_RESPONSE:  # the daemon would skip it: say why instead
            frame = rpc.encode_frame({"id": message.get("id"), "error": {
                "kind": "rpc", "code": "response_too_large",
                "message": f"answer of {len(frame)} bytes exceeds {rpc.MAX_RESPONSE}"}})
        with self._write_lock, contextlib.suppress(OSError):
            self.sock.sendall(frame)

    def serve(self) -> None:
        """Until end of stream (or a fatal framing error): read, check, dispatch."""
        try:
            while True:
                try:
                    message = rpc.read_frame(self.sock, rpc.MAX_REQUEST)
                except rpc.FrameError as exc:
                    self.send({"id": None, "error": {"kind": "rpc", "code": exc.code,
                                                     "message": exc.message}})
                    if exc.fatal:
                        return
                    continue
                except (OSError, rpc.EndOfStream):
                    return
                try:
                    req_id, op, args = rpc.parse_request(message, self.ops)
                except rpc.RpcError as exc:
                    self.send({"id": rpc.request_id(message), "error": exc.to_json()})
                    continue
                if not self._in_flight.acquire(blocking=False):
                    self.send({"id": req_id, "error": {
                        "kind": "rpc", "code": "busy",
                        "message": f"more than {MAX_IN_FLIGHT} requests in flight"}})
                    continue
                self._pool.submit(self._run, req_id, op, args)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, req_id: int, op: rpc.Op, args: dict[str, Any]) -> None:
        try:
            result = getattr(self.service, op.method)(**args)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed answer
            self.send({"id": req_id, "error": _error_json(exc)})
        else:
            self.send({"id": req_id, "ok": result})
        finally:
            self._in_flight.release()


def _die_with_parent(expected_parent: int | None) -> None:
    """SIGKILL when the parent goes; and if it already went before we asked, go now."""
    caps.set_parent_death_signal(signal.SIGKILL)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def _roots(args: argparse.Namespace) -> Roots:
    return Roots(proc=Path(args.proc_root), sys=Path(args.sys_root), etc=Path(args.etc_root))


def run_helper(args: argparse.Namespace) -> int:
    """Main of the helper process proper."""
    _die_with_parent(args.parent)
    sock = socket.socket(fileno=args.fd)
    try:
        caps.restrict_to(caps.HELPER_CAPS)
    except caps.CapsError as exc:  # an unprivileged start: nothing to restrict
        log.warning("could not restrict capabilities", extra={"error": str(exc)})
    # SIGTERM (the spawner stopping us): end the serve loop; BPF fds close with us.
    signal.signal(signal.SIGTERM, lambda *_: sock.shutdown(socket.SHUT_RDWR))
    from hostscope.bpfmods.modules import all_modules

    service = HelperService(_roots(args), bpf=not args.no_bpf,
                            symbol_cache=Config(**{key: getattr(args, key)
                                                   for key in SYMBOL_CACHE_KEYS}).symbol_cache())
    ops = rpc.build_ops(rpc.ModuleFacts.of(all_modules()))
    log.info("helper serving", extra={"pid": os.getpid(),
                                      "capabilities": ",".join(sorted(service.capabilities()))})
    try:
        Server(sock, service, ops).serve()
    finally:
        service.close()
        sock.close()
    return 0


def helper_argv(args: argparse.Namespace, fd: int) -> list[str]:
    """Command line of a helper with the same fixed settings as its spawner."""
    argv = [sys.executable, "-m", "hostscope.daemon.helper", "--fd", str(fd),
            "--parent", str(os.getpid()), "--proc-root", args.proc_root,
            "--sys-root", args.sys_root, "--etc-root", args.etc_root,
            "--log-level", args.log_level, "--log-format", args.log_format]
    for key in SYMBOL_CACHE_KEYS:  # the spawner's own, checked by main() at its start
        argv += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    if args.no_bpf:
        argv.append("--no-bpf")
    return argv


def run_spawner(args: argparse.Namespace) -> int:
    """Main of the spawner: one ``spawn`` datagram in, one helper socket out."""
    _die_with_parent(args.parent)
    control = socket.socket(fileno=args.fd)
    children: list[subprocess.Popen[bytes]] = []
    # It keeps its capabilities as received: the helper it execs inherits them (ambient
    # under systemd), and even exec'ing the interpreter may need CAP_DAC_READ_SEARCH
    # (an interpreter under a 0700 directory). Its only input is a fixed datagram.
    try:
        while True:
            try:
                data = control.recv(64)
            except OSError:
                break
            if not data:
                break
            if data != SPAWN_REQUEST:
                control.send(json.dumps({"error": "unknown request"}).encode())
                continue
            # The daemon asks again only when it lost its helper (the socket closed): a
            # previous one is exiting, or hung and given up on. Never two at once.
            for child in children:
                _end(child, 1.0)
            children = []
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                child = subprocess.Popen(helper_argv(args, theirs.fileno()),
                                         pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
            except OSError as exc:
                control.send(json.dumps({"error": f"cannot start helper: {exc}"}).encode())
                ours.close()
                theirs.close()
                continue
            theirs.close()
            children.append(child)
            socket.send_fds(control, [json.dumps({"pid": child.pid}).encode()], [ours.fileno()])
            ours.close()
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            _end(child, 3.0)
    return 0


def _end(child: subprocess.Popen[bytes], grace_s: float) -> None:
    """Wait up to ``grace_s`` for ``child`` to exit, then kill it; reaped either way."""
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hostscope.daemon.helper",
                                     description="hostscope's privileged helper (internal: "
                                     "started by hostscope serve, not by hand)")
    parser.add_argument("--spawner", action="store_true")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, default=None)
    parser.add_argument("--proc-root", default="/proc")
    parser.add_argument("--sys-root", default="/sys")
    parser.add_argument("--etc-root", default="/etc")
    parser.add_argument("--no-bpf", action="store_true")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text")
    for key in SYMBOL_CACHE_KEYS:
        parser.add_argument("--" + key.replace("_", "-"), type=int,
                            default=Config.__dataclass_fields__[key].default)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # the daemon's config checked these; an argv from elsewhere is checked here
        from_mapping({key: getattr(args, key) for key in SYMBOL_CACHE_KEYS},
                     "helper command line")
    except ConfigError as exc:
        parser.error(str(exc))
    from .logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    return run_spawner(args) if args.spawner else run_helper(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
