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
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from hostscope.metrics.sources import read_bytes

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
        """Read and index the BTF at ``path`` (a few hundred ms for vmlinux; cache it)."""
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


_CACHE: dict[Path, Btf] = {}


def kernel_btf(path: Path = Path("/sys/kernel/btf/vmlinux")) -> Btf:
    """The BTF at ``path``, parsed once per process (the running kernel cannot change)."""
    found = _CACHE.get(path)
    if found is None:
        found = _CACHE[path] = Btf.load(path)
    return found
