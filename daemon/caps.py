"""Linux capabilities of this process: read, restrict to a set, or drop entirely.

Privilege separation (docs/privilege.md) needs two moves that Python's standard library
does not offer: the network-facing daemon gives up *every* capability once its helper
is running, and the helper keeps only the five that BPF and profiling need. Both are a
handful of system calls (``capget``/``capset``, ``prctl``), done here with ctypes so that
no extra package (python-prctl, libcap bindings) is needed on the host.

The order of the calls matters and is the reason this is one module: securebits and the
bounding set can only be changed while ``CAP_SETPCAP`` is still effective, so they go
first; ``capset`` then shrinks the permitted and effective sets, which cannot grow back;
``PR_SET_NO_NEW_PRIVS`` last, so no later ``execve`` (of a setuid binary or one with file
capabilities) can give anything back. When the process runs as uid 0, ``SECBIT_NOROOT``
(locked) stops the kernel from granting a full set again on ``execve`` — without it a
root process that dropped everything would regain it by running any program.

Nothing happens at import: the C library is looked up on first use.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Capability bit numbers (include/uapi/linux/capability.h) named in this code base.
CAP_NUMBERS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_ADMIN": 12,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYSLOG": 34,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}

#: What the privileged helper keeps (docs/privilege.md says why each one):
#: CAP_BPF + CAP_PERFMON load programs and open perf events (kernel.unprivileged_bpf_disabled
#: and perf_event_paranoid = 2 here); CAP_SYS_PTRACE reads other users' /proc/PID/io, maps
#: and stacks; CAP_DAC_READ_SEARCH reads tracefs and /proc/PID/root/tmp/perf-PID.map;
#: CAP_SYSLOG shows real addresses in /proc/kallsyms for kernel symbols.
HELPER_CAPS = frozenset({"CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH",
                         "CAP_SYSLOG"})

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_PDEATHSIG = 1
PR_SET_SECUREBITS = 28
PR_GET_SECUREBITS = 27
PR_CAPBSET_DROP = 24
PR_CAPBSET_READ = 23
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECBIT_NO_SETUID_FIXUP_LOCKED = 1 << 3
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7


class CapsError(OSError):
    """A capability system call failed; the message names the call."""


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, on first use (never at import): the running program's symbols,
    which include the C library's, so its file is not searched for (``ctypes.util``'s
    ``find_library`` imports shutil, tempfile, bz2 and lzma for that, ~0.3 MB resident
    in the daemon for good). glibc and musl alike."""
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise CapsError(err, f"{what}: {os.strerror(err)}")
    return result


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(2)``; raises :class:`CapsError` on failure."""
    lib = libc()
    args = [ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5)]
    return _check(lib.prctl(ctypes.c_int(option), *args), f"prctl({option})")


@dataclass(frozen=True, slots=True)
class CapSets:
    """The three classic sets as bit masks (bit N = capability number N)."""

    effective: int
    permitted: int
    inheritable: int


def _mask(names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAP_NUMBERS[name]
    return mask


def names(mask: int) -> set[str]:
    """Names (from :data:`CAP_NUMBERS`) of the bits set in ``mask``."""
    return {name for name, bit in CAP_NUMBERS.items() if mask >> bit & 1}


def get() -> CapSets:
    """This thread's capability sets (``capget``)."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    _check(libc().capget(ctypes.byref(header), data), "capget")
    return CapSets(
        effective=data[0].effective | data[1].effective << 32,
        permitted=data[0].permitted | data[1].permitted << 32,
        inheritable=data[0].inheritable | data[1].inheritable << 32,
    )


def set_sets(sets: CapSets) -> None:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = sets.effective >> shift & 0xFFFFFFFF
        data[i].permitted = sets.permitted >> shift & 0xFFFFFFFF
        data[i].inheritable = sets.inheritable >> shift & 0xFFFFFFFF
    _check(libc().capset(ctypes.byref(header), data), "capset")


def last_cap(proc: Path = Path("/proc")) -> int:
    """Highest capability number the running kernel knows (40 on 6.x)."""
    try:
        return int((proc / "sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 63


def _drop_bounding(keep: int) -> None:
    """Remove every capability not in ``keep`` from the bounding set. Needs CAP_SETPCAP
    effective; without it (an unprivileged start) there is nothing to drop that could
    be regained anyway, so EPERM is not an error."""
    for cap in range(last_cap() + 1):
        if keep >> cap & 1:
            continue
        try:
            if prctl(PR_CAPBSET_READ, cap) == 1:
                prctl(PR_CAPBSET_DROP, cap)
        except CapsError as exc:
            if exc.errno in (errno.EPERM, errno.EINVAL):
                return
            raise


def restrict_to(keep: Iterable[str]) -> CapSets:
    """Keep only ``keep`` (names) in every set, for the helper.

    Bounding set first (so nothing outside ``keep`` can be gained by a later ``execve``
    of e.g. ``perf``), then permitted/effective/inheritable. The ambient set keeps what
    it had within ``keep`` (systemd's AmbientCapabilities), so programs the helper runs
    as a non-root user still get them. Returns the sets afterwards.
    """
    mask = _mask(keep)
    current = get()
    _drop_bounding(mask)
    set_sets(CapSets(effective=current.permitted & mask, permitted=current.permitted & mask,
                 inheritable=current.inheritable & mask))
    return get()


def drop_all(switch_to: tuple[int, int] | None = None) -> CapSets:
    """Give up every capability for good, for the network-facing daemon.

    As uid 0 the securebits are locked first (no full set regained on ``execve``, no
    ambient raise), then the bounding and ambient sets are emptied, then the three
    classic sets; ``no_new_privs`` last. ``switch_to=(uid, gid)`` (started as root):
    the bounding set is emptied while ``CAP_SETPCAP`` is still there, then groups, gid
    and uid change for good (leaving uid 0 clears the permitted and effective sets), so
    the process owns no root files either. Returns the sets afterwards (all zero).
    """
    if switch_to is not None and os.geteuid() == 0:
        uid, gid = switch_to
        _drop_bounding(0)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    elif os.geteuid() == 0 or os.getuid() == 0:
        bits = (SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP
                | SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE
                | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED)
        try:
            prctl(PR_SET_SECUREBITS, bits)
        except CapsError as exc:
            if exc.errno != errno.EPERM:  # no CAP_SETPCAP: nothing to lose on exec either
                raise
    _drop_bounding(0)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    set_sets(CapSets(0, 0, 0))
    no_new_privs()
    return get()


def no_new_privs() -> None:
    """``PR_SET_NO_NEW_PRIVS``: no ``execve`` may grant privileges from now on."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_parent_death_signal(sig: int) -> None:
    """Receive ``sig`` when the parent thread exits (``PR_SET_PDEATHSIG``)."""
    prctl(PR_SET_PDEATHSIG, sig)


def status_masks(status_text: str) -> dict[str, int]:
    """``CapInh``/``CapPrm``/``CapEff``/``CapBnd``/``CapAmb`` masks of a
    ``/proc/PID/status`` text (the independent view tests check against)."""
    out: dict[str, int] = {}
    for line in status_text.splitlines():
        if line.startswith("Cap") and ":" in line:
            key, _, value = line.partition(":")
            try:
                out[key] = int(value.strip(), 16)
            except ValueError:
                continue
    return out
