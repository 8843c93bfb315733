"""Property tests over every pure /proc and /sys parser: garbage, truncations of the
captured fixture files and huge inputs. Each parser returns, or raises only the error
its docstring names, and finishes quickly (a hang fails the test instead of stalling it).

Parsers are discovered by name (every ``parse_*`` function of metrics/collectors/* and
metrics/hostinfo.py), so a new parser is fuzzed without touching this file; its fixture
files and documented error (if any) are listed in FIXTURES and RAISES.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import signal
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostscope.metrics import collectors
from hostscope.metrics.collectors.network import SockDiagError

from .support import FIXTURES

#: Seconds one call may take on a small input, and on a multi-megabyte one.
SMALL_LIMIT_S = 1.0
#: parse_vmstat is the slowest: ~6 s for 1M unknown tiny lines (linear; the 4 MiB read
#: limit of metrics.sources bounds it). Anything quadratic would take minutes.
HUGE_LIMIT_S = 20.0
HUGE_BYTES = 4 * 1024 * 1024

#: Parser -> the exception types its docstring documents (everything else is a bug).
RAISES: dict[str, tuple[type[BaseException], ...]] = {
    "cpu.parse_loadavg": (ValueError,),
    "hostinfo.parse_uptime": (ValueError,),
    "network.parse_sock_diag": (SockDiagError,),
}

#: Parser -> glob patterns (under tests/fixtures) of real files it reads.
FIXTURES_OF: dict[str, tuple[str, ...]] = {
    "cgroup.parse_proc_cgroup": ("process/*/proc/*/cgroup",),
    "cgroup.parse_flat_keyed": ("cgroup/*/sys/**/cpu.stat", "cgroup/*/sys/**/memory.stat"),
    "cgroup.parse_limit_v2": ("cgroup/*/sys/**/memory.max",),
    "cgroup.parse_limit_v1": ("cgroup/*/sys/**/memory.limit_in_bytes",),
    "cgroup.parse_io_stat": ("cgroup/*/sys/**/io.stat",),
    "cgroup.parse_blkio": ("cgroup/*/sys/**/blkio.throttle.io_service_bytes",),
    "cgroup.parse_pressure_totals": ("cgroup/*/sys/**/cpu.pressure",),
    "cpu.parse_stat": ("cpu/*/proc/stat",),
    "cpu.parse_loadavg": ("cpu/*/proc/loadavg",),
    "disk.parse_diskstats": ("disk/*/proc/diskstats",),
    "filesys.parse_mounts": ("filesys/*/proc/self/mounts",),
    "memory.parse_meminfo": ("memory/**/meminfo", "host/*/proc/meminfo"),
    "memory.parse_vmstat": ("memory/**/vmstat",),
    "network.parse_net_dev": ("network/*/proc/net/dev",),
    "network.parse_snmp": ("network/*/proc/net/snmp",),
    "network.parse_sockstat": ("network/*/proc/net/sockstat",),
    "network.parse_proc_tcp": ("network/*/proc/net/tcp", "network/*/proc/net/tcp6"),
    # Netlink replies are captured nowhere (they are not files): random bytes only.
    "network.parse_sock_diag": (),
    "process.parse_stat": ("process/*/proc/*/stat",),
    "process.parse_io": ("process/*/proc/*/io",),
    "process.parse_schedstat": ("process/*/proc/*/schedstat",),
    "process.parse_status_ctxt": ("process/*/proc/*/status",),
    "process.parse_cmdline": ("process/*/proc/*/cmdline",),
    "process.parse_btime": ("process/*/proc/stat", "cpu/*/proc/stat"),
    "psi.parse_pressure": ("psi/**/pressure/*",),
    "hostinfo.parse_cpuinfo": ("host/*/proc/cpuinfo",),
    "hostinfo.parse_os_release": ("host/*/etc/os-release", "host/*/usr/lib/os-release"),
    "hostinfo.parse_uptime": ("host/*/proc/uptime",),
    "hostinfo.parse_mounts": ("host/*/proc/mounts", "filesys/*/proc/self/mounts"),
    "hostinfo.parse_stat_identity": ("cpu/*/proc/stat",),
    "hostinfo.parse_privileges": ("host/*/proc/self/status",),
}

#: Extra arguments some parsers take after the input.
EXTRA_ARGS: dict[str, Callable[[], tuple[Any, ...]]] = {
    "cpu.parse_stat": lambda: (100,),
    "network.parse_sock_diag": lambda: ([0] * 16,),
    "process.parse_cmdline": lambda: ("comm", 4096),
}


class TooSlow(Exception):
    """Raised inside a parser that exceeded its time limit (by SIGALRM)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the (pure Python) code inside after ``seconds`` of CPU time: a parser
    that loops forever fails this test instead of hanging the suite. CPU time, not wall
    time (ITIMER_PROF), so a machine busy with other work cannot make it fire."""

    def expired(_signum: int, _frame: object) -> None:
        raise TooSlow(f"still running after {seconds} s of CPU")

    previous = signal.signal(signal.SIGPROF, expired)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def discover() -> dict[str, Callable[..., Any]]:
    modules = [importlib.import_module(f"{collectors.__name__}.{info.name}")
               for info in pkgutil.iter_modules(collectors.__path__)]
    modules.append(importlib.import_module("hostscope.metrics.hostinfo"))
    found: dict[str, Callable[..., Any]] = {}
    for module in modules:
        short = module.__name__.rsplit(".", 1)[-1]
        for name, fn in vars(module).items():
            if (name.startswith("parse_") and inspect.isfunction(fn)
                    and fn.__module__ == module.__name__):
                found[f"{short}.{name}"] = fn
    return found


PARSERS = discover()


def takes_bytes(fn: Callable[..., Any]) -> bool:
    first = next(iter(inspect.signature(fn).parameters.values()))
    return "bytes" in str(first.annotation)


def call(key: str, data: str | bytes, limit_s: float = SMALL_LIMIT_S) -> object:
    """Run one parser on ``data`` (converted to its input type) within ``limit_s``;
    its documented exception counts as an answer, anything else propagates."""
    fn = PARSERS[key]
    if takes_bytes(fn):
        arg: str | bytes = data if isinstance(data, bytes) else data.encode("utf-8", "replace")
    else:
        arg = data if isinstance(data, str) else data.decode("utf-8", "replace")
    extra = EXTRA_ARGS.get(key, tuple)()
    try:
        with time_limit(limit_s):
            return fn(arg, *extra)
    except RAISES.get(key, ()) as exc:
        return exc


def fixture_files(key: str) -> list[Path]:
    files: list[Path] = []
    for pattern in FIXTURES_OF.get(key, ()):
        files += [p for p in sorted(FIXTURES.glob(pattern)) if p.is_file()]
    return files


def test_every_parser_is_known() -> None:
    """A parser added later must get fixtures listed here (and is fuzzed regardless)."""
    assert len(PARSERS) >= 30
    missing = sorted(set(PARSERS) - set(FIXTURES_OF))
    assert not missing, f"add fixture globs for {missing}"
    for key, patterns in FIXTURES_OF.items():
        if key in PARSERS and patterns:
            assert fixture_files(key), f"no fixture file matches {key}: {patterns}"


#: Tokens /proc files are made of, so random text reaches past the first split.
TOKENS = ["cpu", "cpu0", " ", "  ", "\n", "\t", "0", "1", "-1", "18446744073709551615",
          "99999999999999999999999", "nan", "inf", ":", "=", "/", "(", ")", ") ", "kB", "some",
          "full", "avg10=", "total=", "Ip:", "Tcp:", "Udp:", "TCP:", "inuse", "max", "rbytes=",
          "8:0", "\\040", "\x00", "é", "\ufffd", "btime", "ctxt", "MemTotal:", "Name:",
          "voluntary_ctxt_switches:", "read_bytes:", "0::/", "ID=", '"', "'", "0A", "sda"]

garbage_text = st.one_of(
    st.text(max_size=400),
    st.lists(st.sampled_from(TOKENS), max_size=80).map("".join),
)
garbage_bytes = st.one_of(st.binary(max_size=400), garbage_text.map(str.encode))


@pytest.mark.parametrize("key", sorted(PARSERS))
def test_garbage_is_answered_quickly(key: str) -> None:
    strategy = garbage_bytes if takes_bytes(PARSERS[key]) else garbage_text

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(data: str | bytes) -> None:
        call(key, data)

    run()


@pytest.mark.parametrize("key", sorted(PARSERS))
def test_truncated_fixtures_are_answered(key: str) -> None:
    """Every prefix at a line end, and cuts inside lines, of each real file: a file read
    while the kernel rewrites it, or cut by a size limit."""
    files = fixture_files(key)
    for path in files[:6]:
        data = path.read_bytes()
        cuts = {i + 1 for i, b in enumerate(data) if b == 0x0A}
        cuts |= set(range(0, len(data), max(1, len(data) // 40)))
        for cut in sorted(cuts):
            call(key, data[:cut])
        whole = call(key, data)
        assert not isinstance(whole, BaseException), f"{path} itself is refused: {whole}"


@pytest.mark.parametrize("key", sorted(PARSERS))
def test_huge_inputs_finish(key: str) -> None:
    """Multi-megabyte inputs (a fixture repeated, one endless line, many tiny lines)
    finish within HUGE_LIMIT_S: parsing is linear, nothing quadratic hides in it."""
    files = fixture_files(key)
    sample = files[0].read_bytes() if files else b"0 1 2 3\n"
    inputs = [
        sample * (HUGE_BYTES // max(1, len(sample)) + 1),
        b"1" * HUGE_BYTES,
        b"a b\n" * (HUGE_BYTES // 4),
        b"(" * (HUGE_BYTES // 2) + b")" * (HUGE_BYTES // 2),
    ]
    for data in inputs:
        started = time.process_time()
        call(key, data, HUGE_LIMIT_S)
        assert time.process_time() - started < HUGE_LIMIT_S


def test_truncated_sock_diag_error_is_the_documented_error() -> None:
    """An NLMSG_ERROR header without its errno (found by this file's fuzzing: it raised
    struct.error, which no caller expects) ends the dump like any error reply."""
    header = struct.pack("=IHHII", 16, 2, 0, 1, 0)  # length 16, NLMSG_ERROR
    with pytest.raises(SockDiagError):
        PARSERS["network.parse_sock_diag"](header, [0] * 16)


@pytest.mark.parametrize("text", ["", "   ", "x", "0.1 0.2", "1 2 3 4/", "a b c 1/2 3"])
def test_garbled_loadavg_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        PARSERS["cpu.parse_loadavg"](text)


@pytest.mark.parametrize("text", ["", "\n", "abc 1", "nan 1", "-5 1"])
def test_garbled_uptime_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        PARSERS["hostinfo.parse_uptime"](text)
