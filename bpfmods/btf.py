"""A minimal reader of the kernel's BTF (``/sys/kernel/btf/vmlinux``).

Why: bcc compiles against the kernel headers under ``/lib/modules/$(uname -r)/build``. On
hosts without headers for the running kernel hostscope points that at Debian's generic
headers (see install-deps.sh), so any struct layout taken from the headers may be wrong for
the running kernel. The kernel's own BTF is always right. hostscope's programs therefore
never dereference a struct by a header-derived offset: the few fields they need
(``tcp_sock.bytes_acked``, ``task_struct.tgid`` ...) are looked up here and passed to the C
code as ``-D`` constants, and the argument order of raw tracepoints is read from the
``btf_trace_<name>`` typedefs the kernel emits for each of them.

Only what that needs is decoded: type records are walked once to index names, struct
members and function prototypes. The format is documented in the kernel's
``Documentation/bpf/btf.rst``.

Memory. A parsed vmlinux BTF is ~40 MB of Python objects (~250k of them, which every full
garbage collection then walks), and CPython rarely hands freed arenas back to the system,
so a long-running daemon must never parse it itself. :class:`KernelBtfFacts` asks a
short-lived child (``python -m hostscope.bpfmods.btf``) for exactly the offsets and
raw-tracepoint prototypes the modules use and keeps only those answers (a few hundred
bytes of JSON); the child's memory goes back to the system when it exits.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostscope.metrics.sources import read_bytes

log = logging.getLogger("hostscope.bpf")

BTF_MAGIC = 0xEB9F

# Kinds (btf.rst, "BTF Type Encoding").
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _VAR, _DATASEC = 9, 10, 11, 12, 13, 14, 15
_FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = 16, 17, 18, 19

#: Bytes that follow the 12-byte common header, per kind: (fixed, per vlen entry).
_TRAILER = {
    _INT: (4, 0), _ARRAY: (12, 0), _STRUCT: (0, 12), _UNION: (0, 12), _ENUM: (0, 8),
    _FUNC_PROTO: (0, 8), _VAR: (4, 0), _DATASEC: (0, 12), _DECL_TAG: (4, 0), _ENUM64: (0, 12),
}
_MODIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)


class BtfError(Exception):
    """BTF is absent, unreadable or not in a format this reader understands."""


@dataclass(slots=True)
class _Type:
    kind: int
    name: str
    size_or_type: int
    #: STRUCT/UNION: (name, bit offset, type id); FUNC_PROTO: (name, 0, type id)
    members: list[tuple[str, int, int]] = field(default_factory=list)


class Btf:
    """Names, struct member offsets and raw tracepoint prototypes of one BTF blob."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x} (big-endian or not BTF)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._types: list[_Type | None] = [None]  # type id 0 is void
        self._by_name: dict[tuple[int, str], int] = {}
        pos = hdr_len + type_off
        end = pos + type_len

        def name_at(off: int) -> str:
            stop = strings.find(b"\0", off)
            return strings[off:stop].decode("ascii", "replace")

        unpack = struct.unpack_from
        indexed = (_STRUCT, _UNION, _TYPEDEF, _INT)
        while pos < end:
            name_off, info, size_or_type = unpack("<III", data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            fixed, per = _TRAILER.get(kind, (0, 0))
            # Names are decoded only for kinds looked up by name: decoding all ~130k
            # would double the parse time.
            name = name_at(name_off) if name_off and kind in indexed else ""
            entry = _Type(kind, name, size_or_type)
            if kind in (_STRUCT, _UNION):
                kflag = info >> 31
                for i in range(vlen):
                    m_name, m_type, m_off = unpack("<III", data, pos + i * 12)
                    if kflag:
                        m_off &= 0xFFFFFF  # low 24 bits: offset; high 8: bitfield size
                    entry.members.append((name_at(m_name) if m_name else "", m_off, m_type))
            elif kind == _FUNC_PROTO:
                for i in range(vlen):
                    entry.members.append(("", 0, unpack("<II", data, pos + i * 8)[1]))
            pos += fixed + per * vlen
            type_id = len(self._types)
            self._types.append(entry)
            if name:
                self._by_name.setdefault((kind, name), type_id)

    @classmethod
    def load(cls, path: Path = Path("/sys/kernel/btf/vmlinux")) -> Btf:
        """Read and index the BTF at ``path`` (~0.3 s and ~40 MB for vmlinux: in a child)."""
        from hostscope.metrics.sources import SourceUnavailable

        try:
            return cls(read_bytes(path, limit=64 << 20))
        except SourceUnavailable as exc:
            raise BtfError(f"{path}: {exc.reason}") from None

    def _resolve(self, type_id: int) -> _Type | None:
        """Follow typedefs and qualifiers to the underlying type."""
        for _ in range(32):
            entry = self._types[type_id] if type_id < len(self._types) else None
            if entry is None or entry.kind not in _MODIFIERS:
                return entry
            type_id = entry.size_or_type
        return None

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``struct_name.member``, searching anonymous sub-structs/unions.

        Raises :class:`BtfError` if the struct or member is unknown or is a bitfield.
        """
        type_id = self._by_name.get((_STRUCT, struct_name))
        if type_id is None:
            raise BtfError(f"struct {struct_name} not in BTF")
        bits = self._find_member(type_id, member, 0)
        if bits is None:
            raise BtfError(f"struct {struct_name} has no member {member}")
        if bits % 8:
            raise BtfError(f"{struct_name}.{member} is a bitfield")
        return bits // 8

    def _find_member(self, type_id: int, member: str, base_bits: int) -> int | None:
        entry = self._resolve(type_id)
        if entry is None or entry.kind not in (_STRUCT, _UNION):
            return None
        for name, off, m_type in entry.members:
            if name == member:
                return base_bits + off
            if not name:  # anonymous struct/union: its members belong to the parent
                found = self._find_member(m_type, member, base_bits + off)
                if found is not None:
                    return found
        return None

    def type_name(self, type_id: int) -> str:
        """C spelling of a type, enough to recognise arguments (``struct task_struct *``)."""
        entry = self._types[type_id] if 0 <= type_id < len(self._types) else None
        if entry is None:
            return "void"
        if entry.kind == _PTR:
            return self.type_name(entry.size_or_type) + " *"
        if entry.kind in (_CONST, _VOLATILE, _RESTRICT, _TYPE_TAG):
            return self.type_name(entry.size_or_type)
        if entry.kind == _STRUCT:
            return f"struct {entry.name}"
        if entry.kind == _UNION:
            return f"union {entry.name}"
        return entry.name or "?"

    def raw_tracepoint_args(self, event: str) -> list[str] | None:
        """C types of raw tracepoint ``event``'s arguments in order (``ctx->args[i]``).

        The kernel emits ``typedef void (*btf_trace_<event>)(void *, <TP_PROTO args>)``;
        the leading ``void *`` is the tracepoint's private data, not an argument. vmlinux
        BTF keeps no parameter names for these, so callers match on types and count
        (``sched_switch`` gained a 4th argument, ``prev_state``, in Linux 5.18).
        None if the kernel has no such tracepoint.
        """
        type_id = self._by_name.get((_TYPEDEF, f"btf_trace_{event}"))
        if type_id is None:
            return None
        ptr = self._types[self._types[type_id].size_or_type]  # type: ignore[union-attr]
        if ptr is None or ptr.kind != _PTR:
            return None
        proto = self._types[ptr.size_or_type]
        if proto is None or proto.kind != _FUNC_PROTO:
            return None
        return [self.type_name(t) for _, _, t in proto.members[1:]]

    def raw_tracepoint_btf_id(self, event: str) -> int | None:
        """BTF type id of the ``btf_trace_<event>`` typedef: what a BTF-enabled tracepoint
        program (tp_btf) names as its attach target when it is loaded. None if absent."""
        return self._by_name.get((_TYPEDEF, f"btf_trace_{event}"))



# -- resolving a few facts, in a child process --------------------------------------


def resolve(path: Path, offsets: Iterable[tuple[str, str]], events: Iterable[str]
            ) -> dict[str, Any]:
    """The answers :class:`KernelBtfFacts` keeps: ``{"offsets": {"struct.member": int |
    {"error": str}}, "raw_args": {event: [C types] | None}, "trace_ids": {event: int |
    None}}``.

    Parses the whole BTF (~0.3 s, ~40 MB): run it in a child (:func:`resolve_in_child`),
    not in a process that lives on. Raises :class:`BtfError` if the BTF cannot be read.
    """
    btf = Btf.load(path)
    answers: dict[str, Any] = {"offsets": {}, "raw_args": {}, "trace_ids": {}}
    for struct_name, member in offsets:
        key = f"{struct_name}.{member}"
        try:
            answers["offsets"][key] = btf.member_offset(struct_name, member)
        except BtfError as exc:
            answers["offsets"][key] = {"error": str(exc)}
    for event in events:
        answers["raw_args"][event] = btf.raw_tracepoint_args(event)
        answers["trace_ids"][event] = btf.raw_tracepoint_btf_id(event)
    return answers


#: Longest a BTF child may take (it needs ~0.3 s; a loaded 2-CPU VM a few seconds).
CHILD_TIMEOUT_S = 60.0


def resolve_in_child(path: Path, offsets: Iterable[tuple[str, str]], events: Iterable[str]
                     ) -> dict[str, Any]:
    """:func:`resolve` in a child Python (``sys.executable``), so the parsed BTF never
    lives in this process. Falls back to resolving here (then dropping the parse and
    collecting) only if the child cannot run at all, e.g. an interpreter that cannot
    import hostscope by itself; a BTF the child reports as broken is not retried.
    """
    offsets, events = list(offsets), list(events)
    # -P: no cwd/script directory on sys.path, so nothing there shadows a module.
    argv = [sys.executable, "-P", "-m", "hostscope.bpfmods.btf", str(path)]
    for struct_name, member in offsets:
        argv += ["--offset", f"{struct_name}.{member}"]
    for event in events:
        argv += ["--raw-args", event]
    try:
        # cwd "/": nothing of the daemon's working directory matters to the child.
        done = subprocess.run(argv, capture_output=True, timeout=CHILD_TIMEOUT_S, cwd="/",
                              check=False)
        answers = json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        done, answers = None, None
        why = f"{type(exc).__name__}: {exc}"
    else:
        why = done.stderr.decode("utf-8", "replace").strip()[-300:]
    if isinstance(answers, dict):
        if "error" in answers:
            raise BtfError(str(answers["error"]))
        return answers
    log.warning("resolving BTF in a child failed (%s); resolving in this process",
                why or f"exit status {done.returncode if done else '?'}")
    try:
        return resolve(path, offsets, events)
    finally:
        gc.collect()  # the parse is garbage now; give its arenas a chance to go back


class KernelBtfFacts:
    """The kernel BTF facts modules asked for, resolved in a child and kept (small).

    Same questions as :class:`Btf` (``member_offset``, ``raw_tracepoint_args``), same
    answers; each question not asked before costs one child, so callers that know their
    questions up front pass them all to :meth:`prefetch` (one child for every module).
    A BTF that cannot be read is remembered (``error``) and not retried. Thread-safe.
    """

    def __init__(self, path: Path,
                 resolver: Callable[..., dict[str, Any]] = resolve_in_child) -> None:
        self.path = path
        self._resolver = resolver
        self._lock = threading.Lock()
        self._offsets: dict[str, int | dict[str, str]] = {}
        self._raw_args: dict[str, list[str] | None] = {}
        self._trace_ids: dict[str, int | None] = {}
        self.error: str | None = None
        #: children started so far (each parses the whole BTF)
        self.resolutions = 0

    @property
    def busy(self) -> bool:
        """Whether a child is resolving right now (callers that must not wait can tell)."""
        return self._lock.locked()

    def prefetch(self, offsets: Iterable[tuple[str, str]] = (),
                 events: Iterable[str] = ()) -> None:
        """Resolve every offset and raw tracepoint not known yet, in one child.

        Raises :class:`BtfError` if the BTF cannot be read (now or before).
        """
        with self._lock:
            if self.error is not None:
                raise BtfError(self.error)
            need_offsets = sorted({o for o in offsets if f"{o[0]}.{o[1]}" not in self._offsets})
            need_events = sorted({e for e in events if e not in self._raw_args})
            if not need_offsets and not need_events:
                return
            self.resolutions += 1
            try:
                answers = self._resolver(self.path, need_offsets, need_events)
            except BtfError as exc:
                self.error = str(exc)
                raise
            self._offsets.update(answers["offsets"])
            self._raw_args.update(answers["raw_args"])
            # Absent from answers of older children/resolvers: then unknown (no tp_btf).
            trace_ids = answers.get("trace_ids") or {}
            self._trace_ids.update({e: trace_ids.get(e) for e in answers["raw_args"]})

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``struct_name.member`` (see :meth:`Btf.member_offset`)."""
        self.prefetch(offsets=[(struct_name, member)])
        found = self._offsets[f"{struct_name}.{member}"]
        if isinstance(found, dict):
            raise BtfError(found["error"])
        return int(found)

    def raw_tracepoint_args(self, event: str) -> list[str] | None:
        """C types of raw tracepoint ``event``'s arguments (see
        :meth:`Btf.raw_tracepoint_args`)."""
        self.prefetch(events=[event])
        found = self._raw_args[event]
        return None if found is None else list(found)

    def raw_tracepoint_btf_id(self, event: str) -> int | None:
        """BTF type id of ``btf_trace_<event>`` (see :meth:`Btf.raw_tracepoint_btf_id`)."""
        self.prefetch(events=[event])
        found = self._trace_ids.get(event)
        return None if found is None else int(found)


def main(argv: list[str] | None = None) -> int:
    """``python -m hostscope.bpfmods.btf PATH [--offset S.M]... [--raw-args EVENT]...``:
    print :func:`resolve`'s answers as JSON (``{"error": ...}`` if the BTF is unreadable)."""
    parser = argparse.ArgumentParser(prog="python -m hostscope.bpfmods.btf",
                                     description="Resolve a few facts from a kernel BTF.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--offset", action="append", default=[], metavar="STRUCT.MEMBER")
    parser.add_argument("--raw-args", action="append", default=[], metavar="EVENT")
    args = parser.parse_args(argv)
    offsets = []
    for spec in args.offset:
        struct_name, dot, member = spec.partition(".")
        if not dot or not struct_name or not member:
            parser.error(f"--offset takes STRUCT.MEMBER, got {spec!r}")
        offsets.append((struct_name, member))
    try:
        answers = resolve(args.path, offsets, args.raw_args)
    except BtfError as exc:
        answers = {"error": str(exc)}
    sys.stdout.write(json.dumps(answers))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    # os._exit: skip tearing down ~250k objects one by one; the OS frees them at once.
    os._exit(main())
