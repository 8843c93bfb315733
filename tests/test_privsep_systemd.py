"""systemd/hostscope.service: clean under ``systemd-analyze verify``, carries what the code
needs (systemd/README.md), none of the settings that break BPF or profiling, and the
privilege model it sets up (non-root user, five ambient capabilities, no_new_privs) runs
BPF modules for real: ``hostscope serve`` under ``setpriv`` with the same credentials."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from hostscope.daemon import caps
from tests.support import auth_headers, missing, serve_env
from tests.test_bpf_manager import assert_unloaded, require_bpf
from tests.test_daemon_shutdown import read_rest
from tests.test_privsep_helper import children_of, gone, prog_ids_of, status_of

UNIT = Path(__file__).parent.parent / "systemd" / "hostscope.service"


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # e.g. a container without systemd: nothing to verify with
        pytest.skip("systemd-analyze not installed")
    # verify checks that ExecStart exists: point it at this checkout's hostscope.
    script = Path(sys.executable).parent / "hostscope"
    assert script.exists(), "pip install -e . provides the hostscope script"
    unit = tmp_path / "hostscope.service"
    unit.write_text(UNIT.read_text().replace("/opt/hostscope/venv/bin/hostscope", str(script)))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                            text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr


def test_the_unit_grants_the_five_capabilities_and_keeps_what_bpf_needs() -> None:
    s = unit_settings()
    granted = {"CAP_" + c.removeprefix("CAP_") for c in s["AmbientCapabilities"][0].split()}
    assert granted == set(caps.HELPER_CAPS)
    assert set(s["CapabilityBoundingSet"][0].split()) == set(caps.HELPER_CAPS)
    assert s["User"] == ["hostscope"] and s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] == ["yes"]
    assert "AF_NETLINK" in s["RestrictAddressFamilies"][0].split()
    assert s["LimitNOFILE"] == ["65536"]
    assert {"bpf", "perf_event_open"} <= set(s["SystemCallFilter"][0].split())
    for key in ("MemoryMax", "CPUQuota", "Restart"):
        assert key in s
    # Each of these breaks a feature (docs/privilege.md, systemd/README.md).
    for key in ("PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectProc", "ProcSubset", "MemoryDenyWriteExecute",
                "DynamicUser"):
        assert key not in s, key


@pytest.mark.root
async def test_serve_as_the_units_credentials_runs_bpf_with_a_capability_free_daemon() -> None:
    """What systemd does with the unit, done by setpriv: user nobody, the five
    capabilities ambient, bounding set cut to them, no_new_privs."""
    require_bpf()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        missing("setpriv (util-linux) is not installed")
    five = ",".join("+" + c.removeprefix("CAP_").lower() for c in sorted(caps.HELPER_CAPS))
    script = Path(sys.executable).parent / "hostscope"
    proc = await asyncio.create_subprocess_exec(
        setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
        f"--inh-caps=-all,{five}", f"--ambient-caps=-all,{five}",
        f"--bounding-set=-all,{five}", "--no-new-privs",
        str(script), "serve", "--port", "0", "--interval", "0.2",
        stderr=asyncio.subprocess.PIPE, env=serve_env(PYTHONUNBUFFERED="1"))
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        url = None
        while url is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            assert line, "serve exited:\n" + "".join(lines)
            lines.append(line)
            if "msg=listening" in line:
                url = line.split("url=")[1].split()[0]
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            async with session.post(url + "api/v1/bpf/runqlat", json={"enabled": True}) as r:
                body = await r.json()
                assert r.status == 200 and body["state"] == "on", body
            async with session.get(url + "api/v1/host") as r:
                helper = (await r.json())["helper"]
        daemon = status_of(proc.pid)
        assert daemon["CapEff"] == daemon["CapPrm"] == daemon["CapAmb"] == 0
        five_mask = sum(1 << caps.CAP_NUMBERS[c] for c in caps.HELPER_CAPS)
        assert status_of(helper["pid"])["CapEff"] == five_mask
        assert Path(f"/proc/{helper['pid']}/status").read_text().count("65534") >= 4
        held = prog_ids_of(helper["pid"])
        assert held
        spawner = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        assert gone(helper["pid"]) and all(gone(p) for p in spawner)
        assert_unloaded(held)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await read_rest(proc, lines)
