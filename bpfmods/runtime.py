"""The only module that touches bcc: compile, attach, read maps, detach.

bcc is imported lazily (it loads libbcc and LLVM, ~0.2 s and ~100 MB of mappings) so that
importing hostscope never needs it, and a host without bcc still runs everything else.

One lifecycle with one cleanup path: :func:`load` compiles, then attaches each probe in
order; if anything fails, everything attached so far is detached and every fd closed
before the error propagates, so a failed enable never leaves a program loaded. bcc's own
auto-attach (which attaches inside the constructor, where a failure half-way leaves the
object unreachable but its programs loaded) is disabled.
"""

from __future__ import annotations

import atexit
import ctypes as ct
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("hostscope.bpf")

#: Directory holding the .bpf.c files and the shared header.
SOURCE_DIR = Path(__file__).resolve().parent

#: bcc's BPF subclass once imported (a dict, not a rebound global, for lock-guarded caching)
_bpf_class: dict[str, Any] = {}
_import_lock = threading.Lock()


class BpfLoadError(RuntimeError):
    """Compilation or attachment failed; the message says which step and why."""


def bcc_bpf_class() -> Any:
    """bcc's ``BPF`` subclass without auto-attach, imported on first use."""
    with _import_lock:
        if "cls" not in _bpf_class:
            from bcc import BPF

            class ManualAttachBPF(BPF):  # type: ignore[misc, valid-type]
                """Attach nothing in the constructor: :func:`load` attaches explicitly."""

                def _trace_autoload(self) -> None:
                    return None

            _bpf_class["cls"] = ManualAttachBPF
        return _bpf_class["cls"]


#: perf_event_open types and software configs (uapi/linux/perf_event.h); bcc's PerfType and
#: PerfSWConfig hold the same numbers, but naming them here keeps bcc out of imports.
PERF_TYPE_SOFTWARE = 1
PERF_SW_EVENTS = {"cpu-clock": 0}


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One attachment: ``kind`` is "tp_btf", "raw_tracepoint", "tracepoint" or "perf_event"."""

    kind: str
    #: "sched_switch" for (BTF-enabled) raw tracepoints, "sched:sched_switch" for tracepoints,
    #: a key of PERF_SW_EVENTS ("cpu-clock") for perf events (one per online CPU)
    event: str
    #: tp_btf only: BTF type id of the kernel's ``btf_trace_<event>`` typedef (0 = unknown)
    btf_id: int = 0
    #: samples per second per CPU (perf events only)
    sample_freq: int = 0

    @property
    def fn_name(self) -> str:
        """The C function bcc's TRACEPOINT_PROBE / RAW_TRACEPOINT_PROBE macros define, or
        ``hs_tp_btf__<event>`` for a tp_btf program (a prefix bcc does not act on), or the
        sampling function of a perf event program."""
        if self.kind == "tp_btf":
            return f"hs_tp_btf__{self.event}"
        if self.kind == "perf_event":
            return "hs_perf_sample"
        if self.kind == "raw_tracepoint":
            return f"raw_tracepoint__{self.event}"
        category, _, name = self.event.partition(":")
        return f"tracepoint__{category}__{name}"

    def __str__(self) -> str:
        return f"{self.kind}:{self.event}"


class Loaded:
    """A compiled, attached BPF object. Not thread-safe; the manager serialises access."""

    def __init__(self, bpf: Any, probes: Sequence[ProbeSpec], compile_s: float) -> None:
        self._bpf = bpf
        #: program and link fds of tp_btf programs (loaded here, not by bcc)
        self._own_fds: list[int] = []
        self.probes = list(probes)
        self.compile_s = compile_s
        self._rings = False
        self.closed = False
        #: ring buffer records dropped because they did not decode
        self.bad_records = 0

    def table(self, name: str) -> Any:
        # BPF[name] caches the Table object; get_table() would rebuild its ctypes types on
        # every call, and a ring buffer's callback lives only as long as its Table does.
        return self._bpf[name.encode()]

    def percpu_array_sums(self, name: str, size: int) -> list[int]:
        """Per-slot totals of a per-CPU array of integers."""
        table = self.table(name)
        return [int(sum(table.getvalue(table.Key(i)))) for i in range(size)]

    def array_values(self, name: str, size: int) -> list[int]:
        table = self.table(name)
        return [int(table[table.Key(i)].value) for i in range(size)]

    def open_ring(self, name: str, struct: type[ct.Structure],
                  handler: Callable[[Any], None]) -> None:
        """Call ``handler`` with a copy of each record of ring buffer ``name``, decoded as
        ``struct``, on :meth:`poll`.

        The ctypes layout is declared next to the module rather than taken from bcc's
        ``event()``, which cannot decode some C types (2-D arrays) and then calls
        ``sys.exit``. A record whose size differs from the declared struct is counted in
        ``bad_records`` and dropped, so a layout drift can never read past a record.
        """
        table = self.table(name)
        expected = ct.sizeof(struct)

        def callback(_ctx: Any, data: Any, size: int) -> int:
            if size != expected:
                self.bad_records += 1
                return 0
            try:
                handler(struct.from_buffer_copy(ct.string_at(data, size)))
            except Exception:
                self.bad_records += 1
                log.exception("handling a %s record failed", name)
            return 0

        table.open_ring_buffer(callback)
        self._rings = True

    def poll(self) -> None:
        """Drain ring buffers without blocking."""
        if self._rings and not self.closed:
            self._bpf.ring_buffer_consume()

    def detach(self) -> None:
        """Stop every probe but keep the maps readable: a capture reads its final counts
        after detaching, so nothing is added while (or after) they are read."""
        if self.closed:
            return
        for fd in reversed(self._own_fds):  # tp_btf links first, then their programs
            os.close(fd)
        self._own_fds.clear()
        for probe in self.probes:
            if probe.kind == "perf_event":
                self._bpf.detach_perf_event(ev_type=PERF_TYPE_SOFTWARE,
                                            ev_config=PERF_SW_EVENTS[probe.event])
            elif probe.kind == "raw_tracepoint":
                self._bpf.detach_raw_tracepoint(tp=probe.event.encode())
            elif probe.kind == "tracepoint":
                self._bpf.detach_tracepoint(tp=probe.event.encode())
        self.probes = []

    def close(self) -> None:
        """Detach every probe, close every program and map fd. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for fd in reversed(self._own_fds):  # links first, then their programs
            os.close(fd)
        self._own_fds.clear()
        self._bpf.cleanup()
        # bcc registers cleanup with atexit, which would keep the object (and its ctypes
        # tables) alive until exit; it is already clean.
        atexit.unregister(self._bpf.cleanup)


def load(source: str, cflags: Sequence[str], probes: Sequence[ProbeSpec]) -> Loaded:
    """Compile ``source`` (a file in :data:`SOURCE_DIR`) and attach ``probes`` in order."""
    cls = bcc_bpf_class()
    path = SOURCE_DIR / source
    flags = [f"-I{SOURCE_DIR}", *cflags]
    start = time.perf_counter()
    try:
        bpf = cls(src_file=str(path).encode(), cflags=flags)
    except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception
        # A failed compile leaves nothing to release: bcc creates maps and loads programs
        # only once the module compiled.
        raise BpfLoadError(f"compiling {source} failed: {exc}") from None
    compile_s = time.perf_counter() - start
    loaded = Loaded(bpf, probes, compile_s)
    try:
        for probe in probes:
            fn = probe.fn_name.encode()
            if probe.kind == "tp_btf":
                _attach_tp_btf(bpf, fn, probe, loaded._own_fds)
            elif probe.kind == "raw_tracepoint":
                bpf.attach_raw_tracepoint(tp=probe.event.encode(), fn_name=fn)
            elif probe.kind == "tracepoint":
                bpf.attach_tracepoint(tp=probe.event.encode(), fn_name=fn)
            elif probe.kind == "perf_event" and probe.event in PERF_SW_EVENTS:
                bpf.attach_perf_event(ev_type=PERF_TYPE_SOFTWARE,
                                      ev_config=PERF_SW_EVENTS[probe.event], fn_name=fn,
                                      sample_freq=probe.sample_freq, cpu=-1)
            else:
                raise BpfLoadError(f"unknown probe kind {probe.kind}")
    except Exception as exc:
        loaded.close()
        if isinstance(exc, BpfLoadError):
            raise
        raise BpfLoadError(f"attaching {probe} failed: {exc}") from None
    return loaded


# -- BTF-enabled tracepoints (tp_btf), which bcc 0.26 cannot load -----------------------------
#
# bcc compiles the functions (and creates the maps they reference), but its loader derives
# the attach type of a BPF_PROG_TYPE_TRACING program from the function name (kfunc__,
# lsm__, ...) and has no tp_btf prefix. So the compiled instructions (map fds already in
# them) are loaded here with BPF_PROG_LOAD, naming the tracepoint by the BTF id of its
# ``btf_trace_<event>`` typedef, and attached with BPF_RAW_TRACEPOINT_OPEN without a name
# (what libbcc's bpf_attach_kfunc does).

_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_RAW_TP = 23
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_LOG_SIZE = 1 << 20


class _ProgLoadAttr(ct.Structure):
    """The BPF_PROG_LOAD part of ``union bpf_attr`` (include/uapi/linux/bpf.h), up to
    ``attach_btf_obj_fd``; padded, since the kernel wants unused trailing bytes zero."""

    _fields_ = [
        ("prog_type", ct.c_uint32), ("insn_cnt", ct.c_uint32), ("insns", ct.c_uint64),
        ("license", ct.c_uint64), ("log_level", ct.c_uint32), ("log_size", ct.c_uint32),
        ("log_buf", ct.c_uint64), ("kern_version", ct.c_uint32), ("prog_flags", ct.c_uint32),
        ("prog_name", ct.c_char * 16), ("prog_ifindex", ct.c_uint32),
        ("expected_attach_type", ct.c_uint32), ("prog_btf_fd", ct.c_uint32),
        ("func_info_rec_size", ct.c_uint32), ("func_info", ct.c_uint64),
        ("func_info_cnt", ct.c_uint32), ("line_info_rec_size", ct.c_uint32),
        ("line_info", ct.c_uint64), ("line_info_cnt", ct.c_uint32),
        ("attach_btf_id", ct.c_uint32), ("attach_btf_obj_fd", ct.c_uint32),
        ("_reserved", ct.c_uint8 * 64),
    ]


def _attach_tp_btf(bpf: Any, fn: bytes, probe: ProbeSpec, fds: list[int]) -> None:
    """Load compiled function ``fn`` of ``bpf`` as a tp_btf program on ``probe`` and attach
    it; the program and link fds are appended to ``fds`` (closed by :meth:`Loaded.close`)."""
    import platform

    from bcc import lib  # imported already: bcc_bpf_class() ran before any load

    sys_bpf = _SYS_BPF.get(platform.machine())
    if sys_bpf is None or not probe.btf_id:
        raise BpfLoadError(f"tp_btf {probe.event}: unsupported here")
    start = lib.bpf_function_start(bpf.module, fn)
    if not start:
        raise BpfLoadError(f"tp_btf {probe.event}: no compiled function {fn.decode()}")
    size = lib.bpf_function_size(bpf.module, fn)
    license_ptr = lib.bpf_module_license(bpf.module)
    attr = _ProgLoadAttr()
    attr.prog_type = _BPF_PROG_TYPE_TRACING
    attr.insn_cnt = size // 8
    attr.insns = ct.cast(start, ct.c_void_p).value or 0
    attr.license = ct.cast(license_ptr, ct.c_void_p).value or 0
    attr.expected_attach_type = _BPF_TRACE_RAW_TP
    attr.attach_btf_id = probe.btf_id
    attr.prog_name = f"hs_{probe.event}"[:15].encode()
    libc = ct.CDLL(None, use_errno=True)
    libc.syscall.restype = ct.c_long
    prog_fd = libc.syscall(sys_bpf, _BPF_PROG_LOAD, ct.byref(attr), ct.sizeof(attr))
    if prog_fd < 0:
        err = ct.get_errno()
        log_buf = ct.create_string_buffer(_LOG_SIZE)  # only now: the verifier's reasons
        attr.log_level = 1
        attr.log_size = _LOG_SIZE
        attr.log_buf = ct.addressof(log_buf)
        libc.syscall(sys_bpf, _BPF_PROG_LOAD, ct.byref(attr), ct.sizeof(attr))
        tail = log_buf.value.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise BpfLoadError(f"loading tp_btf {probe.event} failed: {os.strerror(err)}"
                           + (f" ({' / '.join(tail)})" if tail else ""))
    fds.append(prog_fd)
    link_fd = lib.bpf_attach_kfunc(prog_fd)  # BPF_RAW_TRACEPOINT_OPEN(name=NULL, prog_fd)
    if link_fd < 0:
        raise BpfLoadError(f"attaching tp_btf {probe.event} failed: "
                           f"{os.strerror(ct.get_errno())}")
    fds.append(link_fd)


def own_program_ids(proc: Path = Path("/proc")) -> list[int]:
    """IDs of the BPF programs this process holds open (from /proc/self/fdinfo).

    Each loaded program is an fd whose fdinfo has a ``prog_id:`` line; after a module is
    disabled there must be none of ours left, which tests and status pages check here
    without needing bpftool.
    """
    from hostscope.metrics.sources import list_dir, read_optional

    ids: set[int] = set()  # a program and its attachment (link) fd both name it
    fdinfo = proc / "self" / "fdinfo"
    for fd in list_dir(fdinfo):
        text = read_optional(fdinfo / fd, limit=8192)
        for line in (text or "").splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return sorted(ids)
