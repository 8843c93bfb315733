"""The daemon ↔ helper protocol: framing and the fixed table of operations.

The privileged helper (:mod:`.helper`) is only as safe as what it accepts, so this module
is deliberately small and strict:

* **Framing.** A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON
  (one object). Requests are capped at :data:`MAX_REQUEST` bytes, responses at
  :data:`MAX_RESPONSE`; a longer request is read and thrown away in chunks (never
  buffered) and answered with an ``oversized`` error, so the stream stays in step and the
  helper keeps serving. JSON that does not parse, or a request that is not an object with
  an integer ``id``, a string ``op`` and an object ``args``, gets a typed error too.
* **Operations.** :data:`OPS` maps each op name to an argument schema and the name of the
  :class:`~.privileged.PrivilegedOps` method that serves it. Schemas are closed: every
  argument has a type and a range or an enumeration (module names and table names from
  the manager's fixed list, user ids as short tokens), extra or missing arguments are
  rejected, and module settings are checked against the module's declared settings (names
  and scalar types here, then the bpfmods settings validation in the helper, which turns
  them into integers before anything reaches the compiler). No argument can carry code,
  a path to open or shell text: the only strings are enumerated names, holder tokens and
  module setting values that the settings layer validates (a cgroup becomes its id).
* **Errors.** ``{"id", "error": {"kind", "code", "message", ...}}`` where ``kind`` is
  ``rpc`` (the request was refused before any work), ``bpf`` (a
  :class:`~hostscope.bpfmods.manager.BpfError`, with its ``to_json()`` fields),
  ``profile`` (a profiler error) or ``internal`` (a bug in the helper: it is logged
  there and the helper keeps serving).

Both sides use this module: the helper to read requests and check them, the daemon to
write requests and read responses. Nothing here does I/O at import.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Largest request the helper reads (a proc_io batch of 16,384 processes is ~400 KB).
MAX_REQUEST = 1 << 20
#: Largest response the daemon reads (profiles and tables are the big ones).
MAX_RESPONSE = 64 << 20
_HEADER = struct.Struct(">I")
_DISCARD_CHUNK = 64 << 10
#: Most processes one proc_io request may name.
MAX_PROC_BATCH = 16384
#: Largest PID the kernel hands out (PID_MAX_LIMIT on 64-bit).
MAX_PID = 4194304
MAX_USER_ID = 80
_USER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-:.")
MAX_SETTING_TEXT = 4096
MAX_SETTINGS = 32


class FrameError(Exception):
    """The byte stream broke its framing; ``code`` says how, ``fatal`` whether the
    stream can still be read (an oversized frame is skipped; a short read cannot be)."""

    def __init__(self, code: str, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal


class EndOfStream(Exception):
    """The peer closed the stream cleanly, between frames."""


class RpcError(Exception):
    """A request refused before any work (kind ``rpc``), or a transport failure."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"kind": "rpc", "code": self.code, "message": self.message}


# -- framing -------------------------------------------------------------------------


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """One frame: length header plus compact JSON (NaN refused: JSON has none)."""
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    return _HEADER.pack(len(body)) + body


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes, or None at a clean end of stream before the first byte."""
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise FrameError("truncated", f"stream ended inside a frame ({got} of {size} bytes)",
                             fatal=True)
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, max_size: int) -> Any:
    """The next frame's JSON value (which may be ``null``).

    Raises :class:`EndOfStream` at a clean end, :class:`FrameError`: ``oversized`` (the
    frame was skipped, the stream is still usable), ``malformed`` (not UTF-8 JSON; also
    still usable) or ``truncated`` (fatal).
    """
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        raise EndOfStream()
    (size,) = _HEADER.unpack(header)
    if size > max_size:
        left = size
        while left:
            chunk = sock.recv(min(left, _DISCARD_CHUNK))
            if not chunk:
                raise FrameError("truncated", "stream ended inside an oversized frame",
                                 fatal=True)
            left -= len(chunk)
        raise FrameError("oversized", f"frame of {size} bytes exceeds the limit of {max_size}")
    body = _recv_exact(sock, size) if size else b""
    if body is None:
        raise FrameError("truncated", "stream ended after a frame header", fatal=True)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError("malformed", f"frame is not JSON: {str(exc)[:100]}") from None


# -- argument schemas ----------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class Arg(ABC):
    """One argument's check; ``check`` returns the value or raises ValueError(reason)."""

    @abstractmethod
    def check(self, value: Any) -> Any:
        """The value, normalised, or ValueError with the reason it is refused."""


@dataclass(frozen=True, slots=True)
class IntArg(Arg):
    minimum: int
    maximum: int

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {_type_name(value)}")
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"must be between {self.minimum} and {self.maximum}")
        return value


@dataclass(frozen=True, slots=True)
class BoolArg(Arg):
    def check(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {_type_name(value)}")
        return value


@dataclass(frozen=True, slots=True)
class EnumArg(Arg):
    choices: frozenset[str]

    def check(self, value: Any) -> Any:
        if not isinstance(value, str) or value not in self.choices:
            raise ValueError(f"must be one of {', '.join(sorted(self.choices))}")
        return value


@dataclass(frozen=True, slots=True)
class TokenArg(Arg):
    """A holder id (``ws:3``, ``rest:dash-1``): short, from a small alphabet."""

    max_len: int = MAX_USER_ID

    def check(self, value: Any) -> Any:
        if not isinstance(value, str) or not 0 < len(value) <= self.max_len \
                or not set(value) <= _USER_CHARS:
            raise ValueError(f"must be 1-{self.max_len} characters of A-Z a-z 0-9 _ - : .")
        return value


@dataclass(frozen=True, slots=True)
class ListArg(Arg):
    item: Arg
    max_items: int
    unique: bool = False

    def check(self, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"must be a list, got {_type_name(value)}")
        if len(value) > self.max_items:
            raise ValueError(f"must have at most {self.max_items} items")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(self.item.check(item))
            except ValueError as exc:
                raise ValueError(f"item {i} {exc}") from None
        if self.unique and len({json.dumps(x) for x in out}) != len(out):
            raise ValueError("must not repeat items")
        return out


@dataclass(frozen=True, slots=True)
class PairArg(Arg):
    """A fixed-length list of typed items (a process as [pid, start time])."""

    items: tuple[Arg, ...]

    def check(self, value: Any) -> Any:
        if not isinstance(value, list) or len(value) != len(self.items):
            raise ValueError(f"must be a list of {len(self.items)} items")
        return [arg.check(v) for arg, v in zip(self.items, value, strict=True)]


@dataclass(frozen=True, slots=True)
class SettingsArg(Arg):
    """Module settings: null or an object of the module's declared setting names to
    scalars. The per-module names are checked by the op (they depend on ``name``); the
    values' meaning by the bpfmods settings validation."""

    def check(self, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError(f"must be an object or null, got {_type_name(value)}")
        if len(value) > MAX_SETTINGS:
            raise ValueError(f"must have at most {MAX_SETTINGS} entries")
        for key, item in value.items():
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{key[:40]!r} must be finite")
            if isinstance(item, str):
                if len(item) > MAX_SETTING_TEXT or "\0" in item:
                    raise ValueError(f"{key[:40]!r} must be at most {MAX_SETTING_TEXT} "
                                     "characters without NUL")
            elif item is not None and not isinstance(item, bool | int | float):
                raise ValueError(f"{key[:40]!r} must be a number, boolean, string or null")
        return value


@dataclass(frozen=True, slots=True)
class NumberArg(Arg):
    minimum: float
    maximum: float

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {_type_name(value)}")
        if not math.isfinite(value) or not self.minimum <= value <= self.maximum:
            raise ValueError(f"must be between {self.minimum:g} and {self.maximum:g}")
        return value


@dataclass(frozen=True, slots=True)
class NullableArg(Arg):
    inner: Arg

    def check(self, value: Any) -> Any:
        return None if value is None else self.inner.check(value)


@dataclass(frozen=True, slots=True)
class CgroupArg(Arg):
    """A cgroup v2 path *relative to the cgroup2 mount* (``/system.slice/x.scope``), as
    the daemon resolves a container name to. Not a filesystem path: no ``.``/``..``
    segments, no empty ones; the profiler resolves it under its own cgroup2 root."""

    def check(self, value: Any) -> Any:
        if not isinstance(value, str) or not value.startswith("/") or len(value) > 4096 \
                or "\0" in value:
            raise ValueError("must be a cgroup path starting with / (at most 4096 characters)")
        if value != "/" and any(part in ("", ".", "..") for part in value[1:].split("/")):
            raise ValueError("must not have empty, '.' or '..' segments")
        return value


@dataclass(frozen=True, slots=True)
class ObjectArg(Arg):
    """An object with a closed set of keys: ``required`` ones and ``optional`` ones."""

    required: Mapping[str, Arg]
    optional: Mapping[str, Arg]

    def check(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"must be an object, got {_type_name(value)}")
        unknown = sorted(set(value) - set(self.required) - set(self.optional))
        if unknown:
            raise ValueError(f"has unknown key(s) {', '.join(map(repr, unknown))[:200]}")
        missing = sorted(set(self.required) - set(value))
        if missing:
            raise ValueError(f"lacks key(s) {', '.join(missing)}")
        out = {}
        for key, item in value.items():
            spec = self.required.get(key) or self.optional[key]
            try:
                out[key] = spec.check(item)
            except ValueError as exc:
                raise ValueError(f"{key} {exc}") from None
        return out


#: A capture id handed out by the profiler (and only ever sent back to it).
CAPTURE_ID = TokenArg(max_len=128)
#: ProfileRequest.to_json() (docs: /work/notes/profiles.md); the profiler checks again.
PROFILE_REQUEST = ObjectArg(
    required={"kind": EnumArg(frozenset({"cpu", "offcpu"})), "duration_s": NumberArg(1, 120)},
    optional={"frequency_hz": NullableArg(IntArg(1, 999)),
              "pid": NullableArg(IntArg(1, MAX_PID)),
              "cgroup": NullableArg(CgroupArg())},
)


@dataclass(frozen=True, slots=True)
class Op:
    """One operation: its arguments, the method serving it, its timeout on the caller's
    side, and an extra check across arguments (e.g. settings of *this* module)."""

    name: str
    args: Mapping[str, Arg]
    method: str
    timeout_s: float = 10.0
    cross_check: Callable[[Mapping[str, Any]], None] | None = None

    def validate(self, args: Any) -> dict[str, Any]:
        if not isinstance(args, dict):
            raise RpcError("invalid_arguments", f"{self.name}: args must be an object")
        unknown = sorted(set(args) - set(self.args))
        if unknown:
            shown = ", ".join(map(repr, unknown))[:200]
            raise RpcError("invalid_arguments", f"{self.name}: unknown argument(s) {shown}")
        missing = sorted(set(self.args) - set(args))
        if missing:
            raise RpcError("invalid_arguments",
                           f"{self.name}: missing argument(s) {', '.join(missing)}")
        out: dict[str, Any] = {}
        for key, spec in self.args.items():
            try:
                out[key] = spec.check(args[key])
            except ValueError as exc:
                raise RpcError("invalid_arguments", f"{self.name}: {key} {exc}") from None
        if self.cross_check is not None:
            try:
                self.cross_check(out)
            except ValueError as exc:
                raise RpcError("invalid_arguments", f"{self.name}: {exc}") from None
        return out


@dataclass(frozen=True, slots=True)
class ModuleFacts:
    """What the op table needs to know about the BPF modules: fixed at build time."""

    names: frozenset[str]
    tables: Mapping[str, frozenset[str]]
    settings: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, modules: Sequence[Any]) -> ModuleFacts:
        return cls(
            names=frozenset(m.name for m in modules),
            tables={m.name: frozenset(m.tables) for m in modules},
            settings={m.name: frozenset(s.name for s in m.settings) for m in modules},
        )


def build_ops(facts: ModuleFacts) -> dict[str, Op]:
    """The op table for modules ``facts`` (both sides build the same one)."""
    module = EnumArg(facts.names)
    all_tables = frozenset(t for ts in facts.tables.values() for t in ts) or frozenset({"-"})

    def settings_of_module(args: Mapping[str, Any]) -> None:
        settings = args.get("settings") or {}
        known = facts.settings[args["name"]]
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"settings: unknown setting(s) {', '.join(map(repr, unknown))[:200]} "
                             f"for {args['name']} (known: {', '.join(sorted(known)) or 'none'})")

    def table_of_module(args: Mapping[str, Any]) -> None:
        if args["table"] not in facts.tables[args["name"]]:
            raise ValueError(f"table: {args['name']} has no table {args['table']!r}")

    process = PairArg((IntArg(1, MAX_PID), IntArg(0, (1 << 63) - 1)))
    ops = [
        Op("ping", {}, "ping", timeout_s=5.0),
        Op("capabilities", {}, "capabilities"),
        Op("bpf_prewarm", {}, "bpf_prewarm", timeout_s=120.0),
        Op("bpf_readiness", {"resolve": BoolArg()}, "bpf_readiness", timeout_s=60.0),
        Op("bpf_status", {}, "bpf_status", timeout_s=60.0),
        Op("bpf_describe", {}, "bpf_describe"),
        # Compiling takes ~0.5 s; a start waits up to START_WAIT_S (60 s) for another.
        Op("bpf_enable", {"name": module, "settings": SettingsArg(), "user": TokenArg()},
           "bpf_enable", timeout_s=90.0, cross_check=settings_of_module),
        Op("bpf_disable", {"name": module, "user": TokenArg()}, "bpf_disable", timeout_s=60.0),
        Op("bpf_release", {"user": TokenArg()}, "bpf_release", timeout_s=60.0),
        Op("bpf_table", {"name": module, "table": EnumArg(all_tables),
                         "limit": IntArg(1, 10_000)}, "bpf_table", cross_check=table_of_module),
        Op("bpf_read", {"names": ListArg(module, len(facts.names), unique=True)}, "bpf_read",
           timeout_s=5.0),
        Op("proc_io", {"processes": ListArg(process, MAX_PROC_BATCH)}, "proc_io",
           timeout_s=5.0),
        # Profiles (#6): one capture at a time, bounded by the profiler; the service
        # (daemon/profiles.py) applies its own, tighter, timeouts on top.
        Op("profile_readiness", {}, "profile_readiness", timeout_s=60.0),
        Op("profile_start", {"request": PROFILE_REQUEST}, "profile_start", timeout_s=60.0),
        Op("profile_poll", {"capture_id": CAPTURE_ID}, "profile_poll", timeout_s=30.0),
        Op("profile_fetch", {"capture_id": CAPTURE_ID}, "profile_fetch", timeout_s=120.0),
        Op("profile_cancel", {"capture_id": CAPTURE_ID}, "profile_cancel", timeout_s=60.0),
    ]
    return {op.name: op for op in ops}


def parse_request(message: Any, ops: Mapping[str, Op]) -> tuple[int, Op, dict[str, Any]]:
    """(id, op, checked args) of a decoded request frame; RpcError if refused.

    The id is checked first so that every refusal can still be matched by the caller;
    a request without a usable id is answered with id null."""
    if not isinstance(message, dict):
        raise RpcError("bad_request", "a request must be a JSON object")
    req_id = message.get("id")
    if isinstance(req_id, bool) or not isinstance(req_id, int) or not 0 <= req_id < 1 << 53:
        raise RpcError("bad_request", "a request needs an integer id >= 0")
    unknown = sorted(set(message) - {"id", "op", "args"})
    if unknown:
        raise RpcError("bad_request", f"unknown key(s) {', '.join(map(repr, unknown))[:200]}")
    name = message.get("op")
    op = ops.get(name) if isinstance(name, str) else None
    if op is None:
        raise RpcError("unknown_op", f"no operation {str(name)[:60]!r} "
                       f"(known: {', '.join(sorted(ops))})")
    return req_id, op, op.validate(message.get("args", {}))


def request_id(message: Any) -> int | None:
    """The id of a request that was refused, if it had a usable one."""
    if isinstance(message, dict):
        req_id = message.get("id")
        if isinstance(req_id, int) and not isinstance(req_id, bool) and 0 <= req_id < 1 << 53:
            return req_id
    return None
