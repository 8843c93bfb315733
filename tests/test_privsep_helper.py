"""Privilege separation with real processes (docs/privilege.md).

* capabilities: dropping leaves CapEff/CapPrm/CapAmb/CapBnd empty as the kernel reports
  them in /proc/PID/status, a program run afterwards gets nothing back (even as root), and
  the helper keeps exactly its five;
* ``HelperOps``: BPF modules toggle through the helper, ``kill -9`` of the helper is
  followed by a restart that re-attaches the held modules, and closing leaves no process
  and no program behind (bpftool, as tests/test_bpf_manager.py);
* ``hostscope serve``: every thread of the daemon has CapEff 0 while toggles work, the
  helper's restart reaches a websocket client as a ``notice``, other users' process I/O is
  still measured, and SIGTERM ends daemon, spawner and helper within 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from hostscope.bpfmods.symbols import SymbolCacheLimits
from hostscope.daemon import caps
from hostscope.daemon.helper_client import (
    HelperOps,
    HelperSettings,
    HelperUnavailableError,
    RemoteError,
)
from hostscope.metrics.sources import Roots
from tests.support import auth_headers, missing, serve_env
from tests.test_bpf_manager import assert_unloaded, require_bpf, system_prog_ids
from tests.test_daemon_shutdown import hostscope_command, read_rest, start_serve

FIVE = sum(1 << caps.CAP_NUMBERS[n] for n in caps.HELPER_CAPS)


def status_of(pid: int | str) -> dict[str, int]:
    return caps.status_masks(Path(f"/proc/{pid}/status").read_text())


def thread_caps(pid: int) -> dict[str, int]:
    """CapEff of every thread of ``pid`` (capabilities belong to threads)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[task.name] = caps.status_masks((task / "status").read_text())["CapEff"]
        except FileNotFoundError:
            continue
    return out


def prog_ids_of(pid: int) -> set[int]:
    ids = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fd.read_text()
        except FileNotFoundError:
            continue
        ids.update(int(line.split()[1]) for line in text.splitlines()
                   if line.startswith("prog_id:"))
    return ids


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s} s")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """Exited and reaped (a zombie still has /proc/PID)."""
    return not Path(f"/proc/{pid}").exists()


# -- capabilities ------------------------------------------------------------------------

DROP_SCRIPT = textwrap.dedent("""
    import json, subprocess, sys
    from pathlib import Path
    from hostscope.daemon import caps
    caps.drop_all()
    child = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
    print(json.dumps({"self": caps.status_masks(Path("/proc/self/status").read_text()),
                      "child": caps.status_masks(child),
                      "nnp": "NoNewPrivs:\\t1" in Path("/proc/self/status").read_text()}))
""")


def test_drop_all_leaves_nothing_and_nothing_comes_back_on_exec() -> None:
    out = subprocess.run([sys.executable, "-c", DROP_SCRIPT], capture_output=True, text=True,
                         check=True).stdout
    result = json.loads(out)
    for who in ("self", "child"):
        for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert result[who][key] == 0, (who, key, hex(result[who][key]))
    assert result["nnp"]


RESTRICT_SCRIPT = textwrap.dedent("""
    import json, subprocess, sys
    from pathlib import Path
    from hostscope.daemon import caps
    caps.restrict_to(caps.HELPER_CAPS)
    child = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
    print(json.dumps({"self": caps.status_masks(Path("/proc/self/status").read_text()),
                      "child": caps.status_masks(child)}))
""")


@pytest.mark.root
def test_the_helper_keeps_exactly_its_five_capabilities_for_itself_and_programs_it_runs(
) -> None:
    if os.geteuid() != 0:
        missing("needs root: restricting a full set to five")
    result = json.loads(subprocess.run([sys.executable, "-c", RESTRICT_SCRIPT],
                                       capture_output=True, text=True, check=True).stdout)
    assert result["self"]["CapEff"] == FIVE
    assert result["self"]["CapPrm"] == FIVE
    assert result["self"]["CapBnd"] == FIVE
    # perf (the profiler's fallback) run by the helper as root gets the five, no more.
    assert result["child"]["CapEff"] == FIVE
    assert caps.names(FIVE) == set(caps.HELPER_CAPS)


# -- HelperOps with real processes -------------------------------------------------------


@pytest.fixture
def ops() -> Iterator[HelperOps]:
    require_bpf()
    helper = HelperOps(HelperSettings(Roots()))
    helper.start()
    yield helper
    helper.close()


@pytest.mark.root
def test_modules_toggle_through_the_helper_and_survive_its_kill(ops: HelperOps) -> None:
    events: list[dict[str, Any]] = []
    ops.add_listener(events.append)
    first = ops.pid
    assert first is not None and first != os.getpid()
    assert status_of(first)["CapEff"] == FIVE

    status = ops.bpf_enable("runqlat", None, "ws:1")
    assert status["state"] == "on"
    held = prog_ids_of(first)
    assert held and held <= system_prog_ids()
    assert prog_ids_of(os.getpid()) == set()  # nothing loaded in the caller's process
    time.sleep(0.3)
    assert "bpf.runq.latency" in ops.read_bpf("runqlat", refresh=True)

    os.kill(first, signal.SIGKILL)
    wait_for(lambda: ops.info()["restarts"] == 1 and ops.info()["state"] == "running",
             10, "helper restarted")
    second = ops.pid
    assert second not in (None, first)
    # Its programs died with its file descriptors.
    assert_unloaded(held)
    wait_for(lambda: [e for e in events if e["code"] == "helper_restarted"], 10,
             "restart notice")
    codes = [e["code"] for e in events]
    assert codes[:2] == ["helper_lost", "helper_restarted"], codes
    restarted = events[1]
    assert restarted["reenabled"] == ["runqlat"] and restarted["dropped"] == []
    assert restarted["helper"]["pid"] == second
    on = {s["name"]: s for s in ops.bpf_status()}["runqlat"]
    assert on["state"] == "on" and on["users"] == ["ws:1"]
    assert prog_ids_of(second)

    again = prog_ids_of(second)
    ops.close()
    assert wait_for(lambda: gone(second), 5, "helper gone after close")
    assert_unloaded(again)


@pytest.mark.root
def test_calls_during_a_restart_fail_with_helper_unavailable(ops: HelperOps) -> None:
    pid = ops.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: ops.info()["state"] != "running" or ops.pid != pid, 5, "loss noticed")
    try:
        ops.bpf_status()
    except HelperUnavailableError as exc:
        assert exc.code == "helper_unavailable"
    wait_for(lambda: ops.info()["state"] == "running", 10, "helper back")
    assert len(ops.bpf_status()) == 7


@pytest.mark.root
def test_a_viewer_leaving_during_a_restart_is_not_brought_back(ops: HelperOps) -> None:
    ops.bpf_enable("runqlat", None, "ws:9")
    pid = ops.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # Its websocket closed meanwhile; if the helper was down, the hold is forgotten anyway.
    with contextlib.suppress(HelperUnavailableError):
        ops.bpf_release("ws:9")
    wait_for(lambda: ops.info()["restarts"] == 1 and ops.info()["state"] == "running",
             10, "helper restarted")
    runqlat = {s["name"]: s for s in ops.bpf_status()}["runqlat"]
    assert runqlat["state"] == "off" and runqlat["users"] == []
    assert ops.held_modules() == []


SMALL_CACHES = SymbolCacheLimits(elf_files=17, elf_symbols=12_345, perf_maps=3,
                                 perf_map_symbols=54_321)


def test_symbol_cache_limits_reach_the_helper_and_its_restarted_successor() -> None:
    """Fixed on the spawner's command line, passed on to every helper it starts: the
    helper's ping answers what its InProcessOps builds the Symbolizer with."""
    helper = HelperOps(HelperSettings(Roots(), bpf=False, symbol_cache=SMALL_CACHES))
    helper.start()
    try:
        first = helper.pid
        answer = helper.call("ping")
        assert answer["pid"] == first
        assert answer["symbol_cache"] == dataclasses.asdict(SMALL_CACHES)
        assert first is not None
        cmdline = Path(f"/proc/{first}/cmdline").read_bytes().split(b"\0")
        assert cmdline[cmdline.index(b"--symbol-cache-perf-maps") + 1] == b"3"
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: helper.info()["restarts"] == 1 and helper.info()["state"] == "running",
                 10, "helper restarted")
        again = helper.call("ping")
        assert again["pid"] not in (None, first)
        assert again["symbol_cache"] == dataclasses.asdict(SMALL_CACHES)
    finally:
        helper.close()


@pytest.mark.parametrize(("flag", "value"), [("--symbol-cache-elf-files", "15"),
                                             ("--symbol-cache-perf-map-symbols", "0")])
def test_the_helper_refuses_symbol_cache_limits_out_of_range(flag: str, value: str) -> None:
    key = flag.removeprefix("--").replace("-", "_")
    for role in ([], ["--spawner"]):
        done = subprocess.run([sys.executable, "-m", "hostscope.daemon.helper", *role,
                               "--fd", "0", flag, value], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL, check=False)
        assert done.returncode == 2, done
        assert f"helper command line: key {key!r} must be >= " in done.stderr, done.stderr


def _require_profiling(ops: HelperOps) -> None:
    cpu = ops.profile_readiness()["cpu"]
    if not cpu["available"]:
        missing(f"CPU profiling unavailable here: {cpu['reason']}")


@pytest.mark.root
def test_a_profile_is_captured_by_the_helper_and_bad_requests_never_reach_it(
    ops: HelperOps,
) -> None:
    _require_profiling(ops)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        capture = ops.profile_start({"kind": "cpu", "duration_s": 2, "frequency_hz": 99,
                                     "pid": busy.pid})
        state = wait_for(lambda: (st := ops.profile_poll(capture))["state"] not in (
            "running", "symbolizing") and st, 30, "capture finished")
        assert state["state"] == "done", state
        data = ops.profile_fetch(capture)
        assert data["total"] > 0 and data["request"]["pid"] == busy.pid
        # Every stack is the busy process's, rooted at its process frame.
        assert {s["pid"] for s in data["stacks"]} == {busy.pid}
        assert data["frames"][data["stacks"][0]["frames"][0]]["kind"] == "process"
    finally:
        busy.kill()
        busy.wait()
    for request in ({"kind": "cpu", "duration_s": 2, "cgroup": "/a/../../b"},
                    {"kind": "cpu", "duration_s": 2, "perf_args": "-a"},
                    {"kind": "cpu", "duration_s": 500}):
        with pytest.raises(RemoteError) as refused:
            ops.profile_start(request)
        assert refused.value.code == "invalid_request"


@pytest.mark.root
def test_no_rpc_per_tick_while_no_module_is_held(ops: HelperOps) -> None:
    """BPF unused costs nothing: the collectors answer without a request."""
    collectors = ops.bpf_collectors()
    sent: list[str] = []
    original = ops.call

    def counting(op: str, **args: Any) -> Any:
        sent.append(op)
        return original(op, **args)

    ops.call = counting  # type: ignore[method-assign]
    for _ in range(3):
        for collector in collectors:
            assert collector.collect() == {}
    assert sent == []
    ops.bpf_enable("runqlat", None, "t")
    ops.bpf_enable("syscalls", None, "t")
    sent.clear()
    time.sleep(0.2)
    for collector in collectors:
        collector.collect()
    assert sent == ["bpf_read"]  # one batched read per tick for both modules


# -- hostscope serve -----------------------------------------------------------------------


async def _host(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "api/v1/host") as resp:
        return await resp.json()


@pytest.mark.root
async def test_serve_daemon_has_no_capabilities_helper_restart_reaches_the_dashboard() -> None:
    require_bpf()
    proc, url, lines = await start_serve("--process-interval", "0.5")
    try:
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            host = await _host(session, url)
            helper = host["helper"]
            assert helper["state"] == "running" and helper["restarts"] == 0
            spawner = [p for p in children_of(proc.pid) if p != helper["pid"]]
            assert len(spawner) == 1 and children_of(spawner[0]) == [helper["pid"]]
            ws_url = url.replace("http://", "ws://") + "api/v1/stream"
            async with connect(ws_url, additional_headers=auth_headers()) as ws:
                assert json.loads(await ws.recv())["type"] == "hello"
                await ws.send(json.dumps({"type": "bpf", "name": "runqlat", "enabled": True}))
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 20))
                    if msg["type"] == "bpf":
                        break
                assert msg["status"]["state"] == "on", msg
                # The network-facing process: no capability in any thread, no program.
                assert set(thread_caps(proc.pid).values()) == {0}
                masks = status_of(proc.pid)
                assert masks["CapPrm"] == 0 and masks["CapAmb"] == 0
                assert prog_ids_of(proc.pid) == set()
                held = prog_ids_of(helper["pid"])
                assert held

                os.kill(helper["pid"], signal.SIGKILL)
                notices = []
                while not any(n["code"] == "helper_restarted" for n in notices):
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
                    if msg["type"] == "notice":
                        notices.append(msg)
                assert notices[0]["code"] == "helper_lost"
                assert "runqlat" in notices[-1]["message"]
                host = await _host(session, url)
                assert host["helper"]["restarts"] == 1
                async with session.get(url + "metrics") as resp:
                    exposition = await resp.text()
                assert "hostscope_helper_up 1.0" in exposition
                assert "hostscope_helper_restarts_total 1.0" in exposition
                assert host["helper"]["pid"] not in (None, helper["pid"])
                assert host["helper"]["last_restart"] is not None
                async with session.get(url + "api/v1/bpf/runqlat") as resp:
                    assert (await resp.json())["state"] == "on"
                new_helper = host["helper"]["pid"]
                assert_unloaded(held)

                # Other users' I/O (the helper's, which has more privileges than the
                # daemon) is still measured, through the helper's proc_io.
                async def io_of(pid: int) -> float | None:
                    async with session.get(url + "api/v1/processes?limit=1000") as resp:
                        rows = (await resp.json())["processes"]
                    return next((r.get("io") for r in rows if r["pid"] == pid), None)

                deadline = time.monotonic() + 10
                while await io_of(new_helper) is None:
                    assert time.monotonic() < deadline, "no io for the helper process"
                    await asyncio.sleep(0.3)

                new_held = prog_ids_of(new_helper)
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), 5)
                elapsed = time.monotonic() - started
        await read_rest(proc, lines)
        log = "".join(lines)
        assert code == 0, log
        assert elapsed < 5, elapsed
        assert gone(new_helper) and gone(spawner[0]), "helper or spawner outlived the daemon"
        assert_unloaded(new_held)
        assert "Traceback" not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.root
async def test_serve_profiles_through_the_helper_over_rest() -> None:
    require_bpf()
    proc, url, lines = await start_serve()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            async with session.get(url + "api/v1/profiles") as r:
                kinds = (await r.json())["kinds"]
            if not kinds["cpu"]["available"]:
                missing(f"CPU profiling unavailable: {kinds['cpu']['reason']}")
            body = {"kind": "cpu", "duration": 5, "frequency": 99, "pid": busy.pid}
            async with session.post(url + "api/v1/profiles", json=body) as r:
                assert r.status == 202, await r.text()
                capture = (await r.json())["id"]
            deadline = time.monotonic() + 40
            while True:
                async with session.get(url + f"api/v1/profiles/{capture}") as r:
                    summary = await r.json()
                if summary["state"] in ("done", "failed", "cancelled"):
                    break
                assert time.monotonic() < deadline, summary
                await asyncio.sleep(0.5)
            assert summary["state"] == "done", summary
            async with session.get(url + f"api/v1/profiles/{capture}?format=json") as r:
                view = await r.json()
            assert view["tree"]["value"] > 0
            helper = (await _host(session, url))["helper"]
        # The capture ran in the helper; the daemon held no capability throughout.
        assert set(thread_caps(proc.pid).values()) == {0}
        assert helper["state"] == "running" and helper["restarts"] == 0
    finally:
        busy.kill()
        busy.wait()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 5)
        await read_rest(proc, lines)


async def test_without_a_spawner_the_helper_is_reported_failed_and_the_daemon_serves_on(
) -> None:
    proc, url, lines = await start_serve()
    try:
        spawner = children_of(proc.pid)
        assert len(spawner) == 1
        ws_url = url.replace("http://", "ws://") + "api/v1/stream"
        async with connect(ws_url, additional_headers=auth_headers()) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            os.kill(spawner[0], signal.SIGKILL)  # the helper dies with it (PDEATHSIG)
            codes = []
            while "helper_failed" not in codes:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if msg["type"] == "notice":
                    codes.append(msg["code"])
            assert codes == ["helper_lost", "helper_failed"]
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            helper = (await _host(session, url))["helper"]
            assert helper["state"] == "failed" and "spawner exited" in helper["error"]
            async with session.post(url + "api/v1/bpf/runqlat", json={"enabled": True}) as r:
                assert r.status == 503
                assert (await r.json())["error"]["code"] == "helper_unavailable"
            async with session.get(url + "api/v1/metrics") as r:
                assert r.status == 200  # the dashboard's own work goes on
        # Whoever connects later is told right after hello.
        async with connect(ws_url, additional_headers=auth_headers()) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert msg["type"] == "notice" and msg["code"] == "helper_failed", msg
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await read_rest(proc, lines)


@pytest.mark.root
async def test_kill_9_of_the_daemon_takes_spawner_helper_and_programs_with_it() -> None:
    require_bpf()
    proc, url, lines = await start_serve()
    try:
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            async with session.post(url + "api/v1/bpf/runqlat", json={"enabled": True}) as r:
                assert r.status == 200, await r.text()
            helper = (await _host(session, url))["helper"]["pid"]
        spawner = children_of(proc.pid)
        held = prog_ids_of(helper)
        assert held and len(spawner) == 1
        proc.kill()
        await proc.wait()
        # PR_SET_PDEATHSIG: the spawner dies with the daemon, the helper with the spawner
        # (init reaps them), and the programs with the helper's descriptors.
        wait_for(lambda: gone(spawner[0]) and gone(helper), 5, "spawner and helper gone")
        assert_unloaded(held)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await read_rest(proc, lines)


async def test_ctrl_c_in_a_terminal_reaches_only_the_daemon_which_stops_the_helper() -> None:
    """SIGINT to the whole foreground process group, as a terminal sends it."""
    proc = await asyncio.create_subprocess_exec(
        *hostscope_command(), "serve", "--port", "0", stderr=asyncio.subprocess.PIPE,
        env=serve_env(PYTHONUNBUFFERED="1"), start_new_session=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        while not any("msg=listening" in line for line in lines):
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            assert line, "".join(lines)
            lines.append(line)
        spawner = children_of(proc.pid)
        assert len(spawner) == 1
        helper = children_of(spawner[0])
        os.killpg(proc.pid, signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        await read_rest(proc, lines)
        log = "".join(lines)
        assert gone(spawner[0]) and all(gone(p) for p in helper)
        assert "Traceback" not in log and "level=error" not in log, log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.root
async def test_started_as_root_with_user_the_daemon_becomes_that_user(tmp_path: Path) -> None:
    require_bpf()
    config = tmp_path / "user.toml"
    config.write_text('user = "nobody"\n')
    proc, url, lines = await start_serve("--config", str(config))
    try:
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            async with session.post(url + "api/v1/bpf/runqlat", json={"enabled": True}) as r:
                assert r.status == 200, await r.text()
            helper = (await _host(session, url))["helper"]["pid"]
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()
        assert uids[1:] == ["65534"] * 4
        masks = status_of(proc.pid)
        assert masks["CapEff"] == masks["CapPrm"] == masks["CapBnd"] == masks["CapAmb"] == 0
        assert status_of(helper)["CapEff"] == FIVE  # the helper stays root with its five
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        await read_rest(proc, lines)
        assert "Traceback" not in "".join(lines)
        assert not any(ROOT_WARNING in line for line in lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


ROOT_WARNING = "the network-facing process still runs as root"


@pytest.mark.root
async def test_started_as_root_without_user_the_daemon_warns_that_it_keeps_uid_0() -> None:
    if os.geteuid() != 0:
        missing("not root")
    proc, _url, lines = await start_serve()  # privsep is the default; no user configured
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert "Uid:\t0\t0\t0\t0" in status and status_of(proc.pid)["CapEff"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 5)
        await read_rest(proc, lines)
    (warning,) = [line for line in lines if ROOT_WARNING in line]
    assert "level=warning" in warning
    assert 'set user = \\"hostscope\\"' in warning  # escaped in the key=value line
    assert "systemd/hostscope.service" in warning


async def test_an_unknown_user_is_refused_at_startup(tmp_path: Path) -> None:
    config = tmp_path / "user.toml"
    config.write_text('user = "no-such-user-hostscope"\n')
    proc = await asyncio.create_subprocess_exec(
        *hostscope_command(), "serve", "--port", "0", "--config", str(config),
        stderr=asyncio.subprocess.PIPE, env=serve_env())
    _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert "no user 'no-such-user-hostscope'" in err.decode()


async def test_no_privsep_keeps_privileged_work_in_the_daemon() -> None:
    proc, url, lines = await start_serve("--no-privsep")
    try:
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            host = await _host(session, url)
        assert host["helper"] is None
        assert children_of(proc.pid) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 5)
        await read_rest(proc, lines)
