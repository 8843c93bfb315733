"""``hostscope doctor`` readiness checks on captured and crafted trees, and live."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hostscope.bpfmods.doctor import Check, doctor_main, format_report, run_checks
from hostscope.bpfmods.host import HostProbe
from hostscope.metrics.sources import Roots

from .support import IN_CI

FIXTURE = Path(__file__).parent / "fixtures" / "bpf" / "live"
REQUIRED = {"privileges", "bcc", "kernel_headers", "tracefs"}


def tree(tmp_path: Path) -> tuple[Roots, Path, str]:
    dest = tmp_path / "tree"
    shutil.copytree(FIXTURE, dest)
    return (Roots(proc=dest / "proc", sys=dest / "sys", etc=dest / "etc"),
            dest / "lib" / "modules", (dest / "release").read_text().strip())


def checks_by_id(checks: list[Check]) -> dict[str, Check]:
    return {c.id: c for c in checks}


def test_captured_tree_is_ready_except_what_it_lacks(tmp_path: Path) -> None:
    roots, lib_modules, release = tree(tmp_path)
    got = checks_by_id(run_checks(roots, lib_modules=lib_modules, release=release,
                                  live_perf=False, venv="/opt/venv"))
    assert {cid for cid, c in got.items() if c.required} == REQUIRED
    assert got["privileges"].ok and got["tracefs"].ok and got["kernel_headers"].ok
    assert got["kernel_headers"].detail.endswith(f"headers for the running kernel {release}")
    # No BTF in the captured tree: optional, and says what degrades.
    assert not got["btf"].ok and not got["btf"].required
    assert "fall back to tracepoints" in got["btf"].detail
    modules = [c for cid, c in got.items() if cid.startswith("module.")]
    assert len(modules) == 7 and not any(c.required for c in modules)
    if got["bcc"].ok:
        assert got["module.runqlat"].detail.startswith("attaches via tracepoint (tp_btf "
                                                       "unusable: needs kernel BTF")


def test_broken_host_gets_a_concrete_fix_for_each_failure(tmp_path: Path) -> None:
    roots, lib_modules, release = tree(tmp_path)
    shutil.rmtree(roots.sys / "kernel" / "tracing")
    shutil.rmtree(lib_modules)
    status = roots.proc / "self" / "status"
    status.write_text("\n".join(
        "Uid:\t1000\t1000\t1000\t1000" if ln.startswith("Uid:") else
        "CapEff:\t0000000000000000" if ln.startswith("CapEff:") else ln
        for ln in status.read_text().splitlines()) + "\n")
    got = checks_by_id(run_checks(roots, lib_modules=lib_modules, release=release,
                                  live_perf=False, venv="/opt/venv"))
    assert not got["privileges"].ok
    assert "CAP_BPF" in got["privileges"].detail
    assert "AmbientCapabilities=CAP_BPF CAP_PERFMON" in got["privileges"].fix
    assert not got["tracefs"].ok
    assert got["tracefs"].fix.startswith("mount -t tracefs nodev /sys/kernel/tracing")
    assert not got["kernel_headers"].ok
    assert "bpfmods/install-deps.sh /opt/venv" in got["kernel_headers"].fix
    assert str(lib_modules / release / "build") in got["kernel_headers"].fix
    assert not got["perf_events"].ok and "CAP_PERFMON" in got["perf_events"].fix
    assert not got["profiling.cpu"].ok and not got["profiling.offcpu"].ok
    assert "perf events" in got["profiling.cpu"].detail
    for cid, check in got.items():
        if cid.startswith("module."):
            assert not check.ok and check.fix
    report = format_report(list(got.values()), release)
    assert "[FAIL] tracefs mounted" in report
    assert "fix: mount -t tracefs" in report
    assert report.rstrip().endswith("must be fixed first")


def test_profiling_readiness_without_perf_tool(tmp_path: Path) -> None:
    roots, lib_modules, release = tree(tmp_path)
    host = HostProbe(roots, lib_modules=lib_modules, release=release)
    host._bcc = (False, "ModuleNotFoundError: No module named 'bcc'")
    got = checks_by_id(run_checks(host=host, live_perf=False, venv="/opt/venv",
                                  perf_binary=""))
    assert not got["perf_tool"].ok and not got["perf_tool"].required
    assert got["perf_tool"].fix.startswith("apt-get install linux-perf")
    cpu = got["profiling.cpu"]
    assert not cpu.ok and "bcc is not importable" in cpu.detail
    assert "linux-perf" in cpu.detail
    got = checks_by_id(run_checks(host=host, live_perf=False, venv="/opt/venv",
                                  perf_binary="/usr/bin/perf"))
    assert got["perf_tool"].ok
    assert got["profiling.cpu"].ok and got["profiling.cpu"].detail == "captured with perf"
    assert not got["profiling.offcpu"].ok and "need BPF" in got["profiling.offcpu"].detail


def test_bcc_fix_explains_the_venv_when_debian_has_it(tmp_path: Path) -> None:
    roots, lib_modules, release = tree(tmp_path)
    fake_bcc = tmp_path / "dist-packages" / "bcc"
    fake_bcc.mkdir(parents=True)
    host = HostProbe(roots, lib_modules=lib_modules, release=release, bcc_dir=fake_bcc)
    host._bcc = (False, "ModuleNotFoundError: No module named 'bcc'")  # as on a bare venv
    got = checks_by_id(run_checks(host=host, live_perf=False, venv="/opt/venv"))
    assert not got["bcc"].ok
    assert "does not see Debian's dist-packages" in got["bcc"].detail
    assert got["bcc"].fix.startswith("bpfmods/install-deps.sh /opt/venv")
    shutil.rmtree(fake_bcc)
    got = checks_by_id(run_checks(host=host, live_perf=False, venv="/opt/venv"))
    assert got["bcc"].fix.startswith("apt-get install python3-bpfcc")


@pytest.mark.live
def test_doctor_main_json_agrees_with_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    status = doctor_main(["--json"])
    report = json.loads(capsys.readouterr().out)
    required_ok = all(c["ok"] for c in report["checks"] if c["required"])
    assert report["ready"] is required_ok
    assert status == (0 if required_ok else 1)
    assert report["kernel"] == os.uname().release
    assert {c["id"] for c in report["checks"]} >= REQUIRED | {"btf", "kprobes", "perf_events"}
    if IN_CI and os.geteuid() == 0:
        assert status == 0, "CI installs the BPF toolchain: doctor must be ready"


@pytest.mark.live
def test_doctor_text_report_and_perf_probe(capsys: pytest.CaptureFixture[str]) -> None:
    doctor_main([])
    out = capsys.readouterr().out
    assert out.startswith("hostscope doctor: BPF and perf readiness on Linux ")
    assert "Module runqlat: Run queue latency" in out
    if os.geteuid() == 0:
        got = checks_by_id(run_checks())
        assert got["perf_events"].ok, got["perf_events"].detail
        if IN_CI:
            assert got["perf_tool"].ok and got["profiling.cpu"].ok
