"""The profiler's pure parts: request validation, perf script, kallsyms, perf maps,
/proc/PID/maps, ELF symbol tables (of a program compiled here), and the bounded caches.

No root needed: these run everywhere. Live captures are in test_profiler_live.py.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hostscope.bpfmods.profiler import (
    ProfileBuilder,
    ProfileError,
    ProfileRequest,
    group_unknown,
    parse_perf_script,
)
from hostscope.bpfmods.symbols import (
    SymbolCacheLimits,
    Symbolizer,
    parse_kallsyms,
    parse_nspid,
    parse_perf_map,
    parse_proc_maps,
    read_elf_file,
)
from hostscope.metrics.sources import Roots

from .support import FIXTURES

PERF_SCRIPT = FIXTURES / "profiles" / "perf-script.txt"


# -- requests ------------------------------------------------------------------------------


def test_request_round_trips_and_defaults() -> None:
    req = ProfileRequest.from_json({"kind": "cpu", "duration_s": 30})
    assert req == ProfileRequest("cpu", 30, 49, None, None)
    assert ProfileRequest.from_json(req.to_json()) == req
    off = ProfileRequest.from_json({"kind": "offcpu", "duration_s": 2.5, "pid": 1})
    assert off.to_json() == {"kind": "offcpu", "duration_s": 2.5, "frequency_hz": 49,
                             "pid": 1, "cgroup": None}


@pytest.mark.parametrize("data", [
    {"kind": "cpu"},
    {"kind": "wall", "duration_s": 5},
    {"kind": "cpu", "duration_s": 0.5},
    {"kind": "cpu", "duration_s": 121},
    {"kind": "cpu", "duration_s": float("nan")},
    {"kind": "cpu", "duration_s": True},
    {"kind": "cpu", "duration_s": "30"},
    {"kind": "cpu", "duration_s": 5, "frequency_hz": 1000},
    {"kind": "cpu", "duration_s": 5, "frequency_hz": 0},
    {"kind": "cpu", "duration_s": 5, "frequency_hz": 49.5},
    {"kind": "cpu", "duration_s": 5, "pid": -1},
    {"kind": "cpu", "duration_s": 5, "pid": "1"},
    {"kind": "cpu", "duration_s": 5, "pid": True},
    {"kind": "cpu", "duration_s": 5, "cgroup": "relative/path"},
    {"kind": "cpu", "duration_s": 5, "pid": 1, "cgroup": "/x"},
    {"kind": "cpu", "duration_s": 5, "extra": 1},
    ["kind", "cpu"],
])
def test_request_rejects_bad_input(data: object) -> None:
    with pytest.raises(ProfileError) as exc:
        ProfileRequest.from_json(data)  # type: ignore[arg-type]
    assert exc.value.code == "invalid_request"
    assert exc.value.to_json()["code"] == "invalid_request"


def test_request_caps_apply_to_direct_construction() -> None:
    with pytest.raises(ProfileError):
        ProfileRequest("cpu", 500)
    with pytest.raises(ProfileError):
        ProfileRequest("cpu", 5, frequency_hz=5000)


# -- perf script ---------------------------------------------------------------------------


def test_perf_script_fixture() -> None:
    samples = parse_perf_script(PERF_SCRIPT.read_text())
    # one sample per header line of the captured output
    headers = [ln for ln in PERF_SCRIPT.read_text().splitlines() if ln and ln[0] not in "\t "]
    assert len(samples) == len(headers) == 73
    busy = [s for s in samples if s.comm == "bl"]
    assert len(busy) == 20
    assert all(s.frames[-1] == ("hot_spin", "user", "bl") for s in busy)
    assert busy[0].frames[0] == ("__libc_start_call_main", "user", "libc.so.6")
    assert busy[0].time_ns == 11260_270170578
    jit = [s for s in samples if s.pid == 10722 and s.frames[-1][1] == "jit"]
    assert jit and jit[0].frames[-1] == ("JS:*hotJsLoop [eval]:1:19", "jit", "perf-10722.map")
    # C++ names with spaces and parentheses survive the right-to-left split
    names = {f[0] for s in samples for f in s.frames}
    assert "v8::internal::(anonymous namespace)::Invoke" in names
    kernel = [f for s in samples for f in s.frames if f[1] == "kernel"]
    assert kernel and all(f[2] == "[kernel]" for f in kernel)
    assert ("[unknown]", "unknown", None) in {f for s in samples for f in s.frames}


def test_perf_script_odd_input() -> None:
    text = (
        "my prog (x)  123/124  100.000000001: \n"
        "\t ffffffff81000010 do_syscall_64+0x10 ([kernel.kallsyms])\n"
        "\t 1165 main (/tmp/a b/prog)\n"
        "\n"
        "garbage line without a timestamp\n"
        "\t 1 orphan frame (/x)\n"
        "<b>\"x'&  7/7  5.5: \n"
        "\t zzzz not-hex (/x)\n"
        "\t 10 [unknown] ([unknown])\n"
        "truncated  9/9  1.2"  # cut mid-header: dropped
    )
    samples = parse_perf_script(text)
    assert [(s.comm, s.pid) for s in samples] == [("my prog (x)", 123), ("<b>\"x'&", 7)]
    assert samples[0].frames == (("main", "user", "prog"),
                                 ("do_syscall_64+0x10", "kernel", "[kernel]"))
    assert samples[0].time_ns == 100_000_000_001
    assert samples[1].time_ns == 5_500_000_000
    assert samples[1].frames == (("[unknown]", "unknown", None),)
    assert parse_perf_script("") == []


# -- builder -------------------------------------------------------------------------------


def test_builder_interns_frames_and_groups_slots() -> None:
    b = ProfileBuilder()
    p = ("x", "process", None)
    f = ("main", "user", "x")
    b.add(1, [p, f], 0, 2)
    b.add(1, [p, f], 0, 3)
    b.add(1, [p, f], 7, 1)
    b.add(2, [p, ("[unknown]", "unknown", None)], 1, 4)
    frames, stacks = b.to_json()
    assert frames[0] == {"name": "x", "kind": "process", "module": None}
    assert len(frames) == 3
    assert {"frames": [0, 1], "pid": 1, "slots": [[0, 5], [7, 1]]} in stacks
    assert b.total == 10 and b.unknown_value == 4


def test_group_unknown_collapses_runs_only() -> None:
    u = ("[unknown]", "unknown", None)
    a = ("a", "user", "m")
    assert group_unknown([u, u, a, u, u, u]) == [u, a, u]
    assert group_unknown([a, a]) == [a, a]


# -- symbol sources ------------------------------------------------------------------------


def test_parse_kallsyms() -> None:
    text = ("0000000000000000 A fixed_percpu_data\n"
            "ffffffff81000000 T _text\n"
            "ffffffff81000100 t helper\n"
            "ffffffff81002000 D some_data\n"
            "ffffffffc0001000 t mod_fn\t[xfs]\n"
            "0000000000000000 T hidden_by_kptr_restrict\n")
    table = parse_kallsyms(text)
    assert table.lookup(0xFFFFFFFF81000050) == "_text"
    assert table.lookup(0xFFFFFFFF81000150) == "helper"
    assert table.lookup(0xFFFFFFFFC0001004) == "mod_fn"
    assert table.lookup(0x1000) is None
    assert len(table) == 3


def test_parse_perf_map() -> None:
    text = ("7f0000001000 40 LazyCompile:*hot file.js:1\n"
            "7f0000002000 10 py::f:/x y.py\n"
            "7f0000001000 20 JS:*hot file.js:1\n"  # recompiled at the same address: wins
            "not a line\n"
            "zz 10 bad\n")
    table = parse_perf_map(text)
    assert table.lookup(0x7F0000001010) == "JS:*hot file.js:1"
    assert table.lookup(0x7F0000001030) is None  # past the newer entry's size
    assert table.lookup(0x7F000000200F) == "py::f:/x y.py"
    assert table.lookup(0x7F0000002010) is None


def test_parse_perf_map_jdk_jcmd_format() -> None:
    """``jcmd PID Compiler.perfmap`` (JDK 17) writes 0x-prefixed, zero-padded hex and
    names with spaces, signatures and stub names (lines taken from a real map)."""
    text = ("0x00007f2e00938380 0x00000000000007d0 VM_Version stub\n"
            "0x00007f2e00940200 0x0000000000000198 I2C/C2I adapters\n"
            "0x00007f2e00940b80 0x00000000000173c0 Interpreter\n"
            "0x00007f2e00ec7000 0x0000000000000100 StubRoutines (1)\n"
            "0x00007f2e00ecb600 0x00000000000000b8 long Hot.hotJavaLoop(long)\n"
            "0x00007f2e00ecb900 0x00000000000001d8 java.lang.Object jdk.internal.misc."
            "Unsafe.getReferenceVolatile(java.lang.Object, long)\n")
    table = parse_perf_map(text)
    assert len(table) == 6
    assert table.lookup(0x7F2E00940B80 + 0x1000) == "Interpreter"
    assert table.lookup(0x7F2E00ECB600 + 0xB7) == "long Hot.hotJavaLoop(long)"
    assert table.lookup(0x7F2E00ECB600 + 0xB8) is None
    assert table.lookup(0x7F2E00ECB901) == ("java.lang.Object jdk.internal.misc.Unsafe."
                                            "getReferenceVolatile(java.lang.Object, long)")
    assert table.lookup(0x7F2E00EC7010) == "StubRoutines (1)"
    assert table.lookup(0x7F2E00940200) == "I2C/C2I adapters"


def test_parse_proc_maps_and_nspid() -> None:
    text = ("55d0c8a00000-55d0c8a01000 r-xp 00001000 fe:01 1234 /opt/my app/bin (deleted)\n"
            "7f0000000000-7f0000100000 rwxp 00000000 00:00 0 \n"
            "7ffd0000-7ffd1000 r-xp 00000000 00:00 0 [vdso]\n"
            "bad\n")
    maps = parse_proc_maps(text)
    assert [m.start for m in maps] == [0x7FFD0000, 0x55D0C8A00000, 0x7F0000000000]
    app = maps[1]
    assert app.path == "/opt/my app/bin (deleted)" and app.offset == 0x1000
    assert app.file_backed and app.executable
    assert not maps[2].file_backed
    assert parse_nspid("Name:\tx\nNSpid:\t4242\t7\n") == 7
    assert parse_nspid("Name:\tx\nNSpid:\t4242\n") == 4242
    assert parse_nspid("Name:\tx\n") is None


def _compile(tmp_path: Path, source: str, name: str, *flags: str) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / name
    subprocess.run([gcc, "-O1", "-fno-omit-frame-pointer", *flags, "-o", str(out), str(src)],
                   check=True)
    return out


C_FUNCS = r"""
#include <stdio.h>
__attribute__((noinline)) int alpha_fn(int x) { return x * 3 + 1; }
__attribute__((noinline)) int beta_fn(int x) { return alpha_fn(x) ^ 5; }
int main(void) { printf("%p %p\n", (void *)alpha_fn, (void *)beta_fn); return beta_fn(2) & 0; }
"""


def test_elf_symbols_of_a_compiled_program(tmp_path: Path) -> None:
    exe = _compile(tmp_path, C_FUNCS, "funcs", "-no-pie")
    elf = read_elf_file(exe)
    assert elf is not None and not elf.problem
    # -no-pie: the printed run-time addresses are the ELF virtual addresses
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    alpha, beta = (int(a, 16) for a in out.split())
    assert elf.table.lookup(alpha) == "alpha_fn"
    assert elf.table.lookup(beta + 1) == "beta_fn"
    stripped = tmp_path / "stripped"
    subprocess.run(["strip", "-s", "-o", str(stripped), str(exe)], check=True)
    bare = read_elf_file(stripped)
    assert bare is not None
    assert bare.table.lookup(alpha) is None  # only .dynsym left, without our functions
    not_elf = tmp_path / "text"
    not_elf.write_text("hello")
    assert read_elf_file(not_elf).problem == "not ELF"  # type: ignore[union-attr]
    assert read_elf_file(tmp_path / "missing") is None


@pytest.mark.live
def test_symbolizer_names_libc_in_this_process() -> None:
    sym = Symbolizer(Roots())
    proc = sym.process(os.getpid())
    libc = ctypes.CDLL(None)
    addr = ctypes.cast(libc.getpid, ctypes.c_void_p).value
    assert addr is not None
    name, kind, module = sym.user_frame(proc, addr)
    assert kind == "user" and "getpid" in name and module and module.startswith("libc")
    # a second lookup is served from the per-profile cache, the ELF from the LRU
    assert sym.user_frame(proc, addr) == (name, kind, module)
    assert sym.stats()["elf"]["entries"] >= 1


@pytest.mark.live
def test_symbolizer_caches_are_bounded(tmp_path: Path) -> None:
    sym = Symbolizer(Roots(), limits=SymbolCacheLimits(elf_files=2))
    proc = sym.process(os.getpid())
    files = [m for m in proc.maps if m.executable and m.file_backed]
    seen = set()
    for m in files:
        if m.path not in seen:
            seen.add(m.path)
            sym.user_frame(proc, m.start)
    assert len(seen) > 2
    stats = sym.stats()["elf"]
    assert stats["entries"] <= 2
    assert stats["evictions"] >= len(seen) - 2


def test_perf_map_cache_evicts_least_recently_used_and_keeps_the_newest(
    tmp_path: Path,
) -> None:
    """The bounds of SymbolCacheLimits (config keys symbol_cache_perf_maps and
    symbol_cache_perf_map_symbols), as docs/robustness.md states them."""
    sizes = {101: 4000, 102: 4000, 103: 4000, 104: 30_000}
    for pid, n in sizes.items():
        tmp = tmp_path / str(pid) / "root" / "tmp"
        tmp.mkdir(parents=True)
        (tmp_path / str(pid) / "status").write_text(f"Name:\tnode\nNSpid:\t{pid}\n")
        (tmp / f"perf-{pid}.map").write_text(
            "".join(f"{0x1000 + i * 16:x} 10 fn{pid}_{i}\n" for i in range(n)))
    sym = Symbolizer(Roots(proc=tmp_path), limits=SymbolCacheLimits(
        perf_maps=3, perf_map_symbols=10_000))

    def resolve(pid: int) -> None:
        assert sym.user_frame(sym.process(pid), 0x1000) == (f"fn{pid}_0", "jit",
                                                            f"perf-{pid}.map")

    resolve(101)
    resolve(102)
    assert sym.stats()["perf_maps"]["symbols"] == 8000
    resolve(103)  # 12,000 symbols > 10,000: the least recently used (101) goes
    stats = sym.stats()["perf_maps"]
    assert (stats["entries"], stats["symbols"], stats["evictions"]) == (2, 8000, 1)
    resolve(102)  # a hit
    resolve(104)  # alone over the bound: everything else goes, the newest stays
    stats = sym.stats()["perf_maps"]
    assert (stats["entries"], stats["symbols"], stats["evictions"]) == (1, 30_000, 3)
    assert stats["hits"] == 1
    resolve(101)  # parsed again when needed
    assert sym.stats()["perf_maps"]["entries"] == 1


@pytest.mark.live
def test_kernel_symbols_resolve_when_readable() -> None:
    if os.geteuid() != 0:
        pytest.skip("kallsyms addresses are zero for non-root (kptr_restrict)")
    sym = Symbolizer(Roots())
    table = sym.kernel_table()
    assert len(table) > 1000
    # the address of a well-known symbol resolves back to it
    text = Path("/proc/kallsyms").read_text()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "schedule" and parts[1] in "tT":
            assert sym.kernel_frame(int(parts[0], 16) + 1) == ("schedule", "kernel",
                                                               "[kernel]")
            break
    else:
        pytest.fail("no schedule symbol in /proc/kallsyms")


def test_demangle_cxx_names() -> None:
    sym = Symbolizer(Roots())
    if sym.cxxfilt is None:
        pytest.skip("c++filt (binutils) is not installed")
    names = ["_ZN2v88internal7Isolate4InitEv", "plain_c", "_Zgarbage(", "_ZN1a1bEv"]
    got = sym.demangle(names)
    assert got["_ZN2v88internal7Isolate4InitEv"] == "v8::internal::Isolate::Init()"
    assert got["_ZN1a1bEv"] == "a::b()"
    assert "plain_c" not in got
    assert got.get("_Zgarbage(", "_Zgarbage(") == "_Zgarbage("  # left as it was
    sym.cxxfilt = None  # cached answers stay; new names stay mangled
    assert sym.demangle(["_ZN1a1bEv", "_ZN1c1dEv"]) == {"_ZN1a1bEv": "a::b()"}
