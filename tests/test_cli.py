"""The ``hostscope`` command as a user runs it: real subprocesses, live /proc."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hostscope.daemon.config import TOKEN_ENV
from hostscope.daemon.version import VERSION

from .support import missing


def hostscope(*args: str, timeout: float = 30,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "hostscope"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hostscope.daemon"]
    if env is None:  # a token in the caller's environment must not change the outcome
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, check=False,
        env=env,
    )


def test_version() -> None:
    result = hostscope("version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"hostscope {VERSION}"


def test_help_documents_commands_and_config() -> None:
    top = hostscope("--help")
    assert top.returncode == 0
    for word in ("serve", "sample", "doctor", "token", "version"):
        assert word in top.stdout
    serve = hostscope("serve", "--help")
    for flag in ("--host", "--port", "--interval", "--history", "--process-interval", "--config",
                 "--token-file", "--tls-cert", "--tls-key", "--log-level", "--log-format",
                 "--proc-root", "--sys-root", "HOSTSCOPE_TOKEN", "token_file",
                 "--static-dir", "allowed_hosts", "allowed_origins", "frame_ancestors"):
        assert flag in serve.stdout, flag
    sample = hostscope("sample", "--help")
    assert "--json" in sample.stdout and "NAME_OR_PREFIX" in sample.stdout


def test_no_command_prints_usage_and_fails() -> None:
    result = hostscope()
    assert result.returncode == 2
    assert "usage: hostscope" in result.stderr


def test_sample_json_shape() -> None:
    result = hostscope("sample", "--json", "--interval", "0.2", "kernel.all.load",
                       "kernel.all.cpu.util", "kernel.all.pswitch")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {"kernel.all.load", "kernel.all.cpu.util.busy", "kernel.all.pswitch"}
    assert all(n.startswith(("kernel.all.load", "kernel.all.cpu.util", "kernel.all.pswitch"))
               for n in data)
    load = data["kernel.all.load"]
    assert load["semantics"] == "instant" and load["indom"] == "kernel.loadavg"
    assert set(load["instances"]) == {"1 minute", "5 minute", "15 minute"}
    # Cross-check against the kernel's own text (load averages move slowly).
    reported = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    ours = [load["instances"][k] for k in ("1 minute", "5 minute", "15 minute")]
    assert all(abs(a - b) < 0.5 for a, b in zip(ours, reported, strict=True)), (ours, reported)
    busy = data["kernel.all.cpu.util.busy"]
    assert busy["value_units"]["kind"] == "utilization"
    # Needs two samples, so never null here; a fraction (tick accounting jitters a bit).
    assert 0 <= busy["instances"][""] <= 1.3
    pswitch = data["kernel.all.pswitch"]
    assert pswitch["value_units"]["label"] == "count / sec"
    assert pswitch["instances"][""] > 0


def test_sample_text_has_units() -> None:
    result = hostscope("sample", "--interval", "0.2", "kernel.all.cpu.util.busy",
                       "kernel.all.load", "hinv.ncpu")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    busy = next(line for line in lines if line.startswith("kernel.all.cpu.util.busy"))
    assert busy.endswith("%")
    assert any("1 minute" in line for line in lines)
    assert any(line.startswith("hinv.ncpu") for line in lines)


def test_sample_unknown_name_exits_2() -> None:
    result = hostscope("sample", "kernel.all.load", "no.such.metric")
    assert result.returncode == 2
    assert "no.such.metric" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "100"])
def test_sample_bad_interval(interval: str) -> None:
    result = hostscope("sample", "--interval", interval, "kernel.all.load")
    assert result.returncode == 2
    assert "--interval" in result.stderr


def test_serve_refuses_remote_bind_without_configured_tokens() -> None:
    result = hostscope("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "refusing to listen on '0.0.0.0'" in result.stderr
    assert "no tokens are configured" in result.stderr and "token_file" in result.stderr


def test_serve_reports_config_errors(tmp_path: Path) -> None:
    config = tmp_path / "hostscope.toml"
    config.write_text('port = "7471"\n')
    result = hostscope("serve", "--config", str(config))
    assert result.returncode == 2
    assert "'port' must be an integer" in result.stderr
    assert str(config) in result.stderr

    config.write_text("alow_remote = true\n")
    result = hostscope("serve", "--config", str(config))
    assert result.returncode == 2
    assert "unknown key 'alow_remote'" in result.stderr

    config.write_text("allow_remote = true\n")  # removed: says what replaces it
    result = hostscope("serve", "--config", str(config))
    assert result.returncode == 2
    assert "allow_remote was removed" in result.stderr and "token_file" in result.stderr

    result = hostscope("serve", "--port", "70000")
    assert result.returncode == 2
    assert "'port'" in result.stderr

    result = hostscope("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr


def test_serve_reports_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = hostscope("serve", "--port", str(port))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


# -- doctor ---------------------------------------------------------------------------

REQUIRED_CHECKS = {"privileges", "bcc", "kernel_headers", "tracefs"}
MODULES = {"runqlat", "biolatency", "syscalls", "offcpu", "tcplife", "tcpretrans", "execsnoop"}


def test_doctor_json_shape_and_exit_status() -> None:
    result = hostscope("doctor", "--json")
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"ready", "kernel", "checks"}
    assert data["kernel"] == os.uname().release
    checks = {c["id"]: c for c in data["checks"]}
    assert len(checks) == len(data["checks"])
    for check in data["checks"]:
        assert set(check) == {"id", "ok", "title", "detail", "fix", "required"}
        assert isinstance(check["ok"], bool) and check["title"] and check["detail"]
        assert check["ok"] or check["fix"], f"{check['id']} fails without a fix"
    assert {i for i, c in checks.items() if c["required"]} == REQUIRED_CHECKS
    assert {i for i in checks if i.startswith("module.")} == {f"module.{m}" for m in MODULES}
    assert data["ready"] == all(checks[i]["ok"] for i in REQUIRED_CHECKS)
    assert result.returncode == (0 if data["ready"] else 1)
    # Facts checked independently of the doctor's code.
    assert checks["tracefs"]["ok"] == any(
        Path(p, "events").is_dir() for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"))
    build = Path("/lib/modules", os.uname().release, "build", "include")
    assert checks["kernel_headers"]["ok"] == build.is_dir()
    assert checks["btf"]["ok"] == Path("/sys/kernel/btf/vmlinux").exists()
    if os.geteuid() == 0:
        assert checks["privileges"]["ok"]
    # A module can run only when everything required is there.
    if not data["ready"]:
        assert not any(checks[f"module.{m}"]["ok"] for m in MODULES)


def test_doctor_text_report_matches_json() -> None:
    text = hostscope("doctor")
    data = json.loads(hostscope("doctor", "--json").stdout)
    assert text.returncode == (0 if data["ready"] else 1)
    lines = text.stdout.splitlines()
    assert lines[0].startswith("hostscope doctor: BPF and perf readiness on Linux ")
    for check in data["checks"]:
        mark = "ok" if check["ok"] else ("FAIL" if check["required"] else "warn")
        assert f"[{mark:>4}] {check['title']}" in text.stdout
    if data["ready"]:
        assert lines[-1] == "ready: BPF modules can run"
    else:
        assert lines[-1].startswith("NOT ready: ")


def test_doctor_bad_argument_exits_2() -> None:
    result = hostscope("doctor", "--bogus")
    assert result.returncode == 2
    assert "usage: hostscope doctor" in result.stderr and "--bogus" in result.stderr
    assert "Traceback" not in result.stderr
    help_ = hostscope("doctor", "--help")
    assert help_.returncode == 0 and "--json" in help_.stdout


def test_sample_into_a_closed_pipe_is_quiet() -> None:
    """``hostscope sample --json | head -1``: the reader leaves early; no traceback."""
    script = Path(sys.executable).parent / "hostscope"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hostscope.daemon"]
    proc = subprocess.Popen([*command, "sample", "--json", "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_serve_raises_its_soft_open_files_limit_to_the_hard_one() -> None:
    """Started from a shell's 1,024 (hard 4,096 here), the daemon raises its soft limit
    to the hard one: the collectors' kept descriptors and the clients' sockets share it."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        missing("prlimit (util-linux) is missing")
    script = Path(sys.executable).parent / "hostscope"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hostscope.daemon"]
    env = {**os.environ, TOKEN_ENV: "rlimit-test-token-0123456789abcdef"}
    proc = subprocess.Popen(
        [prlimit, "--nofile=1024:4096", *command, "serve", "--port", "0", "--no-privsep",
         "--interval", "0.5"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "listening" in line:
                break
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        row = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
        assert row.split()[3:5] == ["4096", "4096"], (row, lines)
        assert any("open files limit raised" in ln for ln in lines), lines
    finally:
        proc.terminate()
        proc.wait(10)
