"""BPF layer without loading programs: histograms, settings, attach-plan choice, BTF,
and the exact reasons modules cannot run, on captured and crafted trees."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hostscope.bpfmods.btf import Btf, BtfError, KernelBtfFacts, main, resolve_in_child
from hostscope.bpfmods.histogram import (
    BUCKET_NAMES,
    SLOTS,
    bucket_bounds,
    diff_counts,
    parse_bucket,
    percentiles,
    slot_value,
)
from hostscope.bpfmods.host import HostProbe, parse_format_fields
from hostscope.bpfmods.manager import BpfManager, InvalidSettingsError, UnknownModuleError
from hostscope.bpfmods.modules import (
    RunqLatency,
    TcpLifeEvent,
    all_modules,
    clean_text,
    exec_event_struct,
    format_addr,
    kernel_version,
    parse_diskstats_devs,
    parse_unistd,
    resolve_plan,
)
from hostscope.bpfmods.settings import (
    SettingsContext,
    SettingsError,
    cflags,
    validate,
)
from hostscope.metrics.model import MetricRegistry
from hostscope.metrics.sources import Roots

FIXTURE = Path(__file__).parent / "fixtures" / "bpf" / "live"
SOURCES = Path(__file__).parent.parent / "bpfmods"


def fixture_tree(tmp_path: Path) -> tuple[Roots, Path, str]:
    """A writable copy of the captured tree: (roots, lib/modules, kernel release)."""
    dest = tmp_path / "tree"
    shutil.copytree(FIXTURE, dest)
    release = (dest / "release").read_text().strip()
    return Roots(proc=dest / "proc", sys=dest / "sys", etc=dest / "etc"), \
        dest / "lib" / "modules", release


# -- histograms ---------------------------------------------------------------------------


def test_bucket_names_follow_vector_lo_hi_microseconds() -> None:
    assert BUCKET_NAMES[:4] == ("0-1", "2-3", "4-7", "8-15")
    assert BUCKET_NAMES[-1] == f"{1 << (SLOTS - 1)}-inf"
    assert len(BUCKET_NAMES) == SLOTS
    # Buckets tile the non-negative integers without gaps or overlaps.
    for slot in range(SLOTS - 1):
        assert bucket_bounds(slot)[1] + 1 == bucket_bounds(slot + 1)[0]


def test_slot_mirror_of_the_c_helper_matches_bucket_bounds() -> None:
    for value in [0, 1, 2, 3, 4, 7, 8, 1000, 65535, 65536, 2**26 - 1, 2**26, 2**40, 2**63]:
        lo, hi = bucket_bounds(slot_value(value))
        assert lo <= value <= hi, value


def test_parse_bucket_with_prefixes() -> None:
    assert parse_bucket("vda:read:4-7") == (4.0, 7.0)
    assert parse_bucket("67108864-inf") == (67108864.0, math.inf)
    with pytest.raises(ValueError):
        parse_bucket("vda:read")


def test_percentiles_interpolate_within_buckets() -> None:
    # 100 events uniformly in 4-7: the median is in the middle of [4, 8).
    assert percentiles({"4-7": 100}, (0.5,))[0.5] == pytest.approx(6.0)
    hist = {"0-1": 50, "2-3": 0, "4-7": 40, "8-15": 10}
    got = percentiles(hist, (0.5, 0.9, 0.99))
    assert got[0.5] == pytest.approx(2.0)   # exactly at the top of the first bucket
    assert got[0.9] == pytest.approx(8.0)   # end of 4-7
    assert 8 <= got[0.99] <= 16             # inside 8-15
    # Rates give the same answer as counts.
    assert percentiles({k: v / 2.5 for k, v in hist.items()}, (0.9,))[0.9] == pytest.approx(8.0)


def test_percentiles_empty_open_bucket_and_bad_q() -> None:
    assert percentiles({"0-1": 0, "2-3": None}) == {0.5: None, 0.9: None, 0.99: None}
    assert percentiles({"67108864-inf": 3}, (0.99,))[0.99] == 67108864.0
    with pytest.raises(ValueError):
        percentiles({"0-1": 1}, (1.5,))


def test_diff_counts_handles_restart_and_new_buckets() -> None:
    assert diff_counts(None, {"0-1": 3}) == {"0-1": 3}
    assert diff_counts({"0-1": 3, "2-3": 5}, {"0-1": 10, "2-3": 5, "4-7": 2}) == {
        "0-1": 7, "2-3": 0, "4-7": 2}
    # Went down: the module restarted; the current value is the whole interval.
    assert diff_counts({"0-1": 30}, {"0-1": 4}) == {"0-1": 4}


def test_header_slot_count_matches_python() -> None:
    header = (SOURCES / "hostscope_bpf.h").read_text()
    assert f"#define HS_HIST_SLOTS {SLOTS}\n" in header


def test_ring_record_structs_match_c_sizes() -> None:
    # Sizes computed by hand from the C structs (natural alignment, 8-byte tail padding):
    # 4 x u64 + u32 + 4 x u16 + 3 x 16 bytes = 92, padded to 96.
    from ctypes import sizeof

    assert sizeof(TcpLifeEvent) == 96
    assert sizeof(exec_event_struct(16)) == 8 + 6 * 4 + 16 + 256 + 16 * 64
    assert sizeof(exec_event_struct(1)) == 8 + 6 * 4 + 16 + 256 + 64


# -- parsers --------------------------------------------------------------------------------


def test_parse_format_fields_from_captured_tracefs() -> None:
    text = (FIXTURE / "sys/kernel/tracing/events/sched/sched_switch/format").read_text()
    fields = parse_format_fields(text)
    assert {"prev_pid", "prev_state", "next_pid", "prev_comm"} <= set(fields)
    exec_fields = parse_format_fields(
        (FIXTURE / "sys/kernel/tracing/events/sched/sched_process_exec/format").read_text())
    assert "filename" in exec_fields  # __data_loc char[] filename


def test_parse_unistd_and_diskstats() -> None:
    text = "#ifndef X\n#define __NR_read 0\n#define __NR_getpid 39\n#define __NR_x y\n"
    assert parse_unistd(text) == {0: "read", 39: "getpid"}
    stats = ("   8       0 sda 10 0 80 5 20 0 160 9 0 1 1\n"
             " 259       1 nvme0n1p1 0 0 0 0 0 0 0 0 0 0 0\n"
             "truncated line\n")
    assert parse_diskstats_devs(stats) == {(8 << 20): ("sda", 30), (259 << 20) | 1:
                                           ("nvme0n1p1", 0)}


def test_clean_text_bounds_and_neutralises_control_characters() -> None:
    assert clean_text(b"bash\0garbage") == "bash"
    assert clean_text(b"\x1b[31mred\x07") == "\ufffd[31mred\ufffd"
    assert clean_text(b"\xff\xfe") == "\ufffd\ufffd"
    assert len(clean_text(b"a" * 10_000)) == 256
    assert clean_text(b"<script>") == "<script>"  # data, escaped by the UI


def test_format_addr() -> None:
    assert format_addr(2, bytes([127, 0, 0, 1]) + bytes(12)) == "127.0.0.1"
    assert format_addr(10, bytes(15) + b"\x01") == "::1"
    mapped = bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3])
    assert format_addr(10, mapped) == "10.1.2.3"
    assert format_addr(99, bytes(16)) == ""


# -- settings -------------------------------------------------------------------------------


CTX = SettingsContext(Roots())


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ({"pid": "1; rm -rf /"}, "pid must be an integer, got str"),
        ({"pid": True}, "pid must be an integer, got bool"),
        ({"pid": 1.5}, "pid must be an integer, got float"),
        ({"pid": -1}, "pid must be between 0 and 4194304, got -1"),
        ({"bogus": 1}, "unknown setting 'bogus'"),
        ({"cgroup": "../../etc"}, "cgroup must be an absolute cgroup path"),
        ({"cgroup": "/a/../b"}, "without . or .. components"),
        ({"cgroup": 5}, "cgroup must be a cgroup path string, got int"),
        ({"cgroup": "/no-such-cgroup-hostscope-test"}, "no such cgroup"),
    ],
)
def test_runqlat_rejects_malformed_settings(given: dict[str, object], fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        validate("runqlat", RunqLatency.settings, given, CTX)
    assert any(fragment in e for e in info.value.errors), info.value.errors


def test_all_problems_reported_at_once_and_non_object_rejected() -> None:
    with pytest.raises(SettingsError) as info:
        validate("runqlat", RunqLatency.settings, {"pid": "x", "zzz": 1}, CTX)
    assert len(info.value.errors) == 2
    with pytest.raises(SettingsError, match="must be an object"):
        validate("runqlat", RunqLatency.settings, ["pid", 1], CTX)  # type: ignore[arg-type]


def test_settings_become_integer_defines_only() -> None:
    got = validate("runqlat", RunqLatency.settings, {"pid": 42}, CTX)
    assert got.values == {"cgroup": "", "pid": 42}
    assert got.defines == {"HS_FILTER_CGROUP_ID": 0, "HS_FILTER_TGID": 42}
    assert cflags(got.defines) == ["-DHS_FILTER_CGROUP_ID=0", "-DHS_FILTER_TGID=42"]
    with pytest.raises(ValueError):
        cflags({"HS_X": "1)\n#include </etc/shadow>"})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        cflags({"NOT_OURS": 1})


def test_disk_and_choice_settings(tmp_path: Path) -> None:
    block = tmp_path / "sys" / "block" / "vdz"
    block.mkdir(parents=True)
    (block / "dev").write_text("254:16\n")
    ctx = SettingsContext(Roots(proc=tmp_path / "proc", sys=tmp_path / "sys"))
    from hostscope.bpfmods.modules import BioLatency

    got = validate("biolatency", BioLatency.settings, {"disk": "vdz", "per_op": False}, ctx)
    assert got.defines["HS_FILTER_DEV"] == (254 << 20) | 16
    assert got.defines["HS_PER_OP"] == 0
    for bad in ("vdz/../../x", "nope", "a b"):
        with pytest.raises(SettingsError):
            validate("biolatency", BioLatency.settings, {"disk": bad}, ctx)


def test_manager_errors_are_json_ready() -> None:
    manager = BpfManager()
    with pytest.raises(UnknownModuleError) as unknown:
        manager.enable("nope", {}, "u")
    assert unknown.value.to_json()["code"] == "unknown_module"
    with pytest.raises(InvalidSettingsError) as invalid:
        manager.enable("runqlat", {"pid": "evil"}, "u")
    body = invalid.value.to_json()
    assert body["code"] == "invalid_settings"
    assert body["errors"] == ["pid must be an integer, got str"]


# -- attach plans and availability on crafted trees ---------------------------------------


def test_every_module_resolves_to_tracepoints_on_the_captured_tree(tmp_path: Path) -> None:
    roots, lib_modules, release = fixture_tree(tmp_path)
    host = HostProbe(roots, lib_modules=lib_modules, release=release)
    for module in all_modules():
        res = resolve_plan(module, host)
        assert res.plan is not None, (module.name, res.reason)
        assert res.plan.name.startswith("tracepoint")
        for name, why in res.rejected:  # the captured tree has no BTF
            assert name in ("tp_btf", "raw_tracepoint")
            assert why.startswith("needs kernel BTF (") and "missing" in why


def test_tp_btf_plan_needs_a_recent_kernel(tmp_path: Path) -> None:
    roots, lib_modules, _ = fixture_tree(tmp_path)
    host = HostProbe(roots, lib_modules=lib_modules, release="6.1.0-56-amd64")
    res = resolve_plan(RunqLatency(), host)
    assert res.rejected[0] == ("tp_btf", "needs Linux >= 6.2 (running 6.1.0-56-amd64)")
    assert [kernel_version(r) for r in ("6.18.44-fc-v657", "5.4", "6.2-rc1", "x", "6.")] == [
        (6, 18), (5, 4), (6, 2), (0, 0), (0, 0)]


def test_missing_tracepoint_gives_exact_reason(tmp_path: Path) -> None:
    roots, lib_modules, release = fixture_tree(tmp_path)
    shutil.rmtree(roots.sys / "kernel/tracing/events/sched/sched_switch")
    shutil.rmtree(roots.sys / "kernel/tracing/events/tcp")
    manager = BpfManager(HostProbe(roots, lib_modules=lib_modules, release=release))
    status = {s["name"]: s for s in manager.status()}
    events = roots.sys / "kernel" / "tracing" / "events"
    runq = status["runqlat"]
    if status["biolatency"]["available"]:  # bcc present: the plan is what fails
        assert not runq["available"]
        assert f"tracepoint sched:sched_switch missing from {events.parent}/events" in \
            runq["reason"]
        assert runq["reason"].startswith("no usable attach point: tp_btf: needs "
                                         "kernel BTF")
        assert "; raw_tracepoint: needs kernel BTF" in runq["reason"]
        assert "tcp:tcp_retransmit_skb missing" in status["tcpretrans"]["reason"]
        assert status["execsnoop"]["available"]
    else:
        assert "bcc is not importable" in runq["reason"]


def test_execsnoop_falls_back_without_syscall_tracepoints(tmp_path: Path) -> None:
    roots, lib_modules, release = fixture_tree(tmp_path)
    host = HostProbe(roots, lib_modules=lib_modules, release=release)
    from hostscope.bpfmods.modules import ExecSnoop

    full = resolve_plan(ExecSnoop(), host)
    assert full.plan is not None and full.plan.name == "tracepoint"
    assert full.defines["HS_WITH_EXECVEAT"] == 1
    shutil.rmtree(roots.sys / "kernel/tracing/events/syscalls/sys_enter_execveat")
    host = HostProbe(roots, lib_modules=lib_modules, release=release)
    assert resolve_plan(ExecSnoop(), host).defines["HS_WITH_EXECVEAT"] == 0
    shutil.rmtree(roots.sys / "kernel/tracing/events/syscalls")
    host = HostProbe(roots, lib_modules=lib_modules, release=release)
    res = resolve_plan(ExecSnoop(), host)
    assert res.plan is not None and res.plan.name == "tracepoint (no argv)"
    assert res.defines["HS_WITH_ARGV"] == 0
    assert "tracepoint syscalls:sys_enter_execve missing" in res.reason


def test_no_tracefs_no_headers_no_privileges(tmp_path: Path) -> None:
    roots, lib_modules, release = fixture_tree(tmp_path)
    shutil.rmtree(roots.sys / "kernel" / "tracing")
    host = HostProbe(roots, lib_modules=lib_modules, release=release)
    res = resolve_plan(RunqLatency(), host)
    assert res.plan is None
    assert "tracepoint: tracefs is not mounted at" in res.reason

    shutil.rmtree(lib_modules)
    headers = HostProbe(roots, lib_modules=lib_modules, release=release).headers()
    assert not headers.present and "is missing: bcc cannot compile anything" in headers.detail

    status = roots.proc / "self" / "status"
    text = status.read_text().splitlines()
    text = [("Uid:\t1000\t1000\t1000\t1000" if ln.startswith("Uid:") else
             "CapEff:\t0000000000000000" if ln.startswith("CapEff:") else ln) for ln in text]
    status.write_text("\n".join(text) + "\n")
    ok, why = HostProbe(roots, lib_modules=lib_modules, release=release).privileges()
    assert not ok and "CAP_BPF" in why


def test_descriptors_register_without_clashes() -> None:
    registry = MetricRegistry()
    for module in all_modules():
        registry.register_all(module.descriptors())
        registry.register_all(d.desc for d in module.derivations())
    assert "bpf.runq.latency" in registry and "bpf.runq.p99" in registry
    assert registry.get("bpf.runq.latency").is_counter
    assert registry.get("bpf.biolatency.latency").labels == ("device", "op", "bucket")
    assert registry.get("bpf.biolatency.p99").indom == "bpf.biolatency.dev"


def test_percentile_derivation_groups_per_disk_and_op() -> None:
    from hostscope.bpfmods.modules import BioLatency

    p50 = next(d for d in BioLatency().derivations() if d.desc.name.endswith("p50"))
    cooked = {"bpf.biolatency.latency": {"vda:read:4-7": 10.0, "vda:read:8-15": 0.0,
                                         "vda:write:64-127": 2.0, "sda:read:0-1": None}}
    got = p50.compute(cooked)
    assert got["vda:read"] == pytest.approx(6.0)
    assert 64 <= got["vda:write"] <= 128
    assert got["sda:read"] is None  # first sample: no rate yet


# -- BTF ------------------------------------------------------------------------------------


def _crafted_btf() -> bytes:
    """A BTF blob with int, struct task_struct {int pid; int tgid;} and a raw tracepoint
    typedef, laid out as the kernel's Documentation/bpf/btf.rst describes."""
    strings = b"\0int\0task_struct\0pid\0tgid\0btf_trace_demo\0"

    def off(name: bytes) -> int:
        return strings.index(b"\0" + name + b"\0") + 1

    types = b""
    types += struct.pack("<III", off(b"int"), 1 << 24, 4) + struct.pack("<I", 32)  # [1] int
    types += struct.pack("<III", off(b"task_struct"), (4 << 24) | 2, 8)            # [2] struct
    types += struct.pack("<III", off(b"pid"), 1, 0)
    types += struct.pack("<III", off(b"tgid"), 1, 32)
    types += struct.pack("<III", 0, 2 << 24, 2)                                     # [3] ptr
    types += struct.pack("<III", 0, (13 << 24) | 2, 0)                              # [4] proto
    types += struct.pack("<II", 0, 0) + struct.pack("<II", 0, 3)
    types += struct.pack("<III", 0, 2 << 24, 4)                                     # [5] ptr
    types += struct.pack("<III", off(b"btf_trace_demo"), 8 << 24, 5)                # [6] typedef
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                         len(strings))
    return header + types + strings


def test_btf_reader_on_a_crafted_blob() -> None:
    btf = Btf(_crafted_btf())
    assert btf.member_offset("task_struct", "tgid") == 4
    assert btf.raw_tracepoint_args("demo") == ["struct task_struct *"]
    assert btf.raw_tracepoint_args("nope") is None
    with pytest.raises(BtfError, match="no member"):
        btf.member_offset("task_struct", "comm")
    with pytest.raises(BtfError, match="bad BTF magic"):
        Btf(b"\0" * 32)
    with pytest.raises(BtfError, match="too short"):
        Btf(b"\x9f\xeb")


def test_btf_facts_come_from_one_child_and_agree_with_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(_crafted_btf())
    facts = KernelBtfFacts(path)
    facts.prefetch([("task_struct", "pid"), ("task_struct", "tgid"), ("task_struct", "comm")],
                   ["demo", "nope"])
    assert facts.resolutions == 1
    btf = Btf(_crafted_btf())
    assert facts.member_offset("task_struct", "tgid") == btf.member_offset("task_struct",
                                                                           "tgid") == 4
    assert facts.member_offset("task_struct", "pid") == 0
    assert facts.raw_tracepoint_args("demo") == ["struct task_struct *"]
    assert facts.raw_tracepoint_args("nope") is None
    # tp_btf programs name their tracepoint by the id of its btf_trace_<event> typedef
    assert facts.raw_tracepoint_btf_id("demo") == btf.raw_tracepoint_btf_id("demo")
    assert facts.raw_tracepoint_btf_id("demo") is not None
    assert facts.raw_tracepoint_btf_id("nope") is None
    with pytest.raises(BtfError, match="no member comm"):
        facts.member_offset("task_struct", "comm")
    assert facts.resolutions == 1  # every answer above was kept from the one child
    with pytest.raises(BtfError, match="struct other not in BTF"):
        facts.member_offset("other", "x")
    assert facts.resolutions == 2  # a new question costs a new child


def test_unreadable_btf_is_reported_once_and_not_retried(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\0" * 64)
    facts = KernelBtfFacts(path)
    with pytest.raises(BtfError, match="bad BTF magic"):
        facts.member_offset("task_struct", "pid")
    with pytest.raises(BtfError, match="bad BTF magic"):
        facts.raw_tracepoint_args("sched_switch")
    assert facts.resolutions == 1 and facts.error and "bad BTF magic" in facts.error
    with pytest.raises(BtfError, match="missing"):
        resolve_in_child(tmp_path / "absent", [("task_struct", "pid")], [])


def test_btf_command_prints_the_answers_as_json(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(_crafted_btf())
    assert main([str(path), "--offset", "task_struct.tgid", "--raw-args", "demo"]) == 0
    typedef_id = Btf(_crafted_btf()).raw_tracepoint_btf_id("demo")
    assert typedef_id is not None and typedef_id > 0
    assert json.loads(capsys.readouterr().out) == {
        "offsets": {"task_struct.tgid": 4}, "raw_args": {"demo": ["struct task_struct *"]},
        "trace_ids": {"demo": typedef_id}}
    with pytest.raises(SystemExit):
        main([str(path), "--offset", "no_dot"])


def test_probing_a_host_imports_no_bcc_and_parses_no_btf() -> None:
    """The cheap checks the daemon runs at startup, in a fresh interpreter (this one may
    have imported bcc already): bcc is found but not imported, and every module's
    availability is predicted without starting a BTF child."""
    script = (
        "import json, sys\n"
        "from hostscope.bpfmods.manager import BpfManager\n"
        "m = BpfManager()\n"
        "avail = {x.name: m.availability(x.name, resolve=False) for x in m.modules()}\n"
        "btf = m.host.btf()\n"
        "print(json.dumps({'bcc_imported': 'bcc' in sys.modules, 'bcc': m.host.bcc(),\n"
        "                  'children': btf.resolutions if btf else None,\n"
        "                  'avail': avail}))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    got = json.loads(out)
    assert got["bcc_imported"] is False
    assert got["children"] in (0, None)
    if got["bcc"][0]:
        assert "imported on first use" in got["bcc"][1]
    else:
        assert "bcc" in got["bcc"][1]
    assert set(got["avail"]) == {m.name for m in all_modules()}


@pytest.mark.live
def test_btf_reader_on_the_running_kernel_agrees_with_bpftool() -> None:
    path = Path("/sys/kernel/btf/vmlinux")
    if not path.exists():
        pytest.skip("this kernel has no BTF")
    btf = Btf.load(path)
    assert btf.raw_tracepoint_args("sched_switch")[1:3] == [
        "struct task_struct *", "struct task_struct *"]
    pid = btf.member_offset("task_struct", "pid")
    assert btf.member_offset("task_struct", "tgid") == pid + 4  # adjacent pid_t fields
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        return
    import subprocess

    out = subprocess.run([bpftool, "btf", "dump", "file", str(path), "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    in_task = False
    for line in out.splitlines():
        if line.startswith("["):
            in_task = "STRUCT 'task_struct'" in line
        elif in_task and line.strip().startswith("'pid' "):
            assert f"bits_offset={pid * 8}" in line
            break
    else:
        pytest.fail("bpftool shows no task_struct.pid")


@pytest.mark.live
def test_predicted_plans_match_the_resolved_ones_on_this_kernel() -> None:
    """The daemon reports predicted attach points until someone lists or enables: here
    the prediction must be what the BTF child then confirms, and one child answers every
    module's questions."""
    manager = BpfManager(HostProbe())
    predicted = {m.name: manager.predicted_resolution(m.name) for m in manager.modules()}
    btf = manager.host.btf()
    assert btf is None or btf.resolutions == 0
    for name, guess in predicted.items():
        resolved = manager.resolution(name)
        assert (guess.plan and guess.plan.name) == (resolved.plan and resolved.plan.name), name
    assert btf is None or btf.resolutions == 1
