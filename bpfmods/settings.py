"""Typed, validated module settings and the ``-D`` constants built from them.

A module's C code is parameterised only by integer preprocessor constants. Settings come
from clients as JSON; each is validated against its declared type and range here, then
turned into an integer (a cgroup path into its cgroup id, a disk name into its dev_t), and
only that integer reaches the compiler. No client text is ever placed in C source or on
the compiler command line, so a hostile setting can at worst be rejected.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostscope.metrics.collectors.filesys import unescape_mount_field
from hostscope.metrics.sources import Roots, SourceUnavailable, read_optional, read_text

_MACRO_RE = re.compile(r"^HS_[A-Z0-9_]+$")
_DISK_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_PATH = 4096


class SettingsError(ValueError):
    """Settings were rejected; ``errors`` lists every problem (one line each)."""

    def __init__(self, module: str, errors: Sequence[str]) -> None:
        self.module = module
        self.errors = list(errors)
        super().__init__(f"invalid settings for {module}: " + "; ".join(self.errors))


@dataclass(frozen=True, slots=True)
class SettingsContext:
    """Where settings that name host objects (cgroups, disks) are resolved."""

    roots: Roots = field(default_factory=Roots)

    def cgroup2_root(self) -> Path | None:
        """Mount point of the unified (v2) hierarchy, from /proc/self/mountinfo."""
        text = read_optional(self.roots.proc / "self" / "mountinfo")
        for line in (text or "").splitlines():
            pre, sep, post = line.partition(" - ")
            if sep and post.split(" ", 1)[0] == "cgroup2":
                fields = pre.split()
                if len(fields) >= 5:
                    return Path(unescape_mount_field(fields[4]))
        return None


class Setting(ABC):
    """One declared setting: name, default, help, and the C macro it becomes."""

    name: str
    macro: str
    help: str
    default: Any

    @abstractmethod
    def parse(self, value: Any, ctx: SettingsContext) -> tuple[Any, int]:
        """(normalised JSON value, integer for the macro); raises ValueError with a reason."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The setting as ``GET /api/v1/bpf`` lists it (name, kind, default, help, bounds)."""


@dataclass(frozen=True, slots=True)
class IntSetting(Setting):
    name: str
    macro: str
    minimum: int
    maximum: int
    default: int
    help: str

    def parse(self, value: Any, ctx: SettingsContext) -> tuple[Any, int]:
        # bool is an int in Python; a JSON true for a number is a client bug, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {type(value).__name__}")
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"must be between {self.minimum} and {self.maximum}, got {value}")
        return value, value

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": "int", "min": self.minimum, "max": self.maximum,
                "default": self.default, "help": self.help}


@dataclass(frozen=True, slots=True)
class BoolSetting(Setting):
    name: str
    macro: str
    default: bool
    help: str

    def parse(self, value: Any, ctx: SettingsContext) -> tuple[Any, int]:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {type(value).__name__}")
        return value, int(value)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": "bool", "default": self.default, "help": self.help}


@dataclass(frozen=True, slots=True)
class ChoiceSetting(Setting):
    name: str
    macro: str
    choices: tuple[tuple[str, int], ...]
    default: str
    help: str

    def parse(self, value: Any, ctx: SettingsContext) -> tuple[Any, int]:
        for choice, number in self.choices:
            if value == choice:
                return choice, number
        allowed = ", ".join(c for c, _ in self.choices)
        shown = repr(value)[:40] if isinstance(value, str) else type(value).__name__
        raise ValueError(f"must be one of {allowed}, got {shown}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": "choice", "choices": [c for c, _ in self.choices],
                "default": self.default, "help": self.help}


@dataclass(frozen=True, slots=True)
class CgroupSetting(Setting):
    """A cgroup v2 path (``/system.slice/nginx.service``), resolved to its cgroup id.

    The id ``bpf_get_current_cgroup_id()`` returns is the cgroup directory's inode number
    in the cgroup2 filesystem. Empty string or None: no filter.
    """

    name: str
    macro: str
    help: str
    default: str = ""

    def parse(self, value: Any, ctx: SettingsContext) -> tuple[Any, int]:
        if value == "":
            return "", 0
        if not isinstance(value, str):
            raise ValueError(f"must be a cgroup path string, got {type(value).__name__}")
        if len(value) > _MAX_PATH or "\0" in value:
            raise ValueError("is not a valid path")
        parts = value.split("/")
        if not value.startswith("/") or any(p in (".", "..") for p in parts) or "//" in value:
            raise ValueError("must be an absolute cgroup path like /system.slice/x.service "
                             "without . or .. components")
        root = ctx.cgroup2_root()
        if root is None:
            raise ValueError("no cgroup v2 hierarchy is mounted (needed for cgroup filters)")
        target = root / value.strip("/")
        try:
            st = os.stat(target)
        except OSError:
            raise ValueError(f"no such cgroup under {root}: {value[:200]}") from None
        if not (target / "cgroup.procs").exists():
            raise ValueError(f"not a cgroup directory: {value[:200]}")
        return value.rstrip("/") or "/", st.st_ino

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": "cgroup", "default": self.default, "help": self.help}


@dataclass(frozen=True, slots=True)
class DiskSetting(Setting):
    """A whole-disk name from /sys/block (``vda``), resolved to the kernel's dev_t encoding
    used by the block tracepoints (major << 20 | minor). Empty: all disks."""

    name: str
    macro: str
    help: str
    default: str = ""

    def parse(self, value: Any, ctx: SettingsContext) -> tuple[Any, int]:
        if value == "":
            return "", 0
        if not isinstance(value, str) or not _DISK_RE.match(value):
            raise ValueError("must be a disk name such as vda or nvme0n1")
        try:
            text = read_text(ctx.roots.sys / "block" / value / "dev")
        except SourceUnavailable:
            raise ValueError(f"no such disk in /sys/block: {value}") from None
        major, _, minor = text.strip().partition(":")
        return value, (int(major) << 20) | int(minor)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": "disk", "default": self.default, "help": self.help}


@dataclass(frozen=True, slots=True)
class Validated:
    """Settings after validation: what the client sees and what the compiler gets."""

    values: dict[str, Any]
    defines: dict[str, int]

    def key(self) -> tuple[tuple[str, int], ...]:
        """Identity of a configuration: two equal keys compile to the same program."""
        return tuple(sorted(self.defines.items()))


def validate(
    module: str, spec: Sequence[Setting], given: Mapping[str, Any] | None, ctx: SettingsContext
) -> Validated:
    """Check ``given`` against ``spec``; every problem is reported at once."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise SettingsError(module, [f"settings must be an object, got {type(given).__name__}"])
    errors: list[str] = []
    known = {s.name for s in spec}
    for key in given:
        if key not in known:
            shown = repr(key)[:60] if isinstance(key, str) else type(key).__name__
            errors.append(f"unknown setting {shown} (known: {', '.join(sorted(known)) or 'none'})")
    values: dict[str, Any] = {}
    defines: dict[str, int] = {}
    for setting in spec:
        raw = given.get(setting.name)
        if raw is None:
            raw = setting.default
        try:
            value, number = setting.parse(raw, ctx)
        except ValueError as exc:
            errors.append(f"{setting.name} {exc}")
            continue
        values[setting.name] = value
        if setting.macro:  # settings without a macro only shape user space (table sizes)
            defines[setting.macro] = number
    if errors:
        raise SettingsError(module, errors)
    return Validated(values, defines)


def cflags(defines: Mapping[str, int]) -> list[str]:
    """``-DNAME=value`` arguments; only integer values under HS_ names can get here."""
    out = []
    for macro, value in sorted(defines.items()):
        if not _MACRO_RE.match(macro) or isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"refusing define {macro!r}={value!r}")
        out.append(f"-D{macro}={value}")
    return out
