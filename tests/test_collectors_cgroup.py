"""Cgroup collector over crafted v2, v1 and hybrid trees, a captured tree, and the live host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostscope.metrics.collectors.cgroup import (
    UNLIMITED_V1,
    CgroupCollector,
    CgroupFiles,
    container_name,
    container_of,
    find_hierarchies,
    is_interesting,
    parse_blkio,
    parse_io_stat,
    parse_limit_v1,
    parse_limit_v2,
    parse_pressure_totals,
    parse_proc_cgroup,
    read_cgroup,
    systemd_unescape,
    walk_interesting,
)
from hostscope.metrics.model import MetricRegistry
from hostscope.metrics.sampler import Sampler
from hostscope.metrics.sources import Roots
from tests.support import FakeClock, copy_fixture, fixture_roots, missing

H1, H2, H3 = "a" * 64, "b" * 64, "c" * 64
POD_UID = "1234abcd-5678-90ef-1234-567890abcdef"
POD = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + POD_UID.replace(
    "-", "_") + ".slice"
DOCKER_SCOPE = f"/system.slice/docker-{H1}.scope"


def collector(*parts: str, **kw: object) -> CgroupCollector:
    return CgroupCollector(fixture_roots("cgroup", *parts), rescan_s=0, hz=100, **kw)  # type: ignore[arg-type]


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/", ""),
        ("", ""),
        (f"/system.slice/docker-{H1}.scope", "docker:aaaaaaaaaaaa"),
        (f"/docker/{H1}", "docker:aaaaaaaaaaaa"),
        (f"/system.slice/docker-{H1}.scope/system.slice/nginx.service", "docker:aaaaaaaaaaaa"),
        (f"{POD}/cri-containerd-{H2}.scope", "k8s:bbbbbbbbbbbb"),
        (POD, f"k8s:{POD_UID}"),
        (f"/kubepods/burstable/pod{POD_UID}/{H2}", "k8s:bbbbbbbbbbbb"),
        (f"/kubepods/pod{POD_UID}", f"k8s:{POD_UID}"),
        (f"/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/docker-{H2}.scope",
         "k8s:bbbbbbbbbbbb"),
        (f"/system.slice/cri-containerd-{H2}.scope", "k8s:bbbbbbbbbbbb"),
        (f"/system.slice/crio-{H2}.scope", "k8s:bbbbbbbbbbbb"),
        (f"/machine.slice/libpod-{H3}.scope", "podman:cccccccccccc"),
        (f"/user.slice/user-1000.slice/user@1000.service/app.slice/libpod-{H3}.scope/container",
         "podman:cccccccccccc"),
        (f"/system.slice/nerdctl-{H3}.scope", "containerd:cccccccccccc"),
        ("/lxc/web01", "lxc:web01"),
        ("/lxc.payload.web01", "lxc:web01"),
        ("/machine.slice/machine-qemu\\x2d1\\x2dvm1.scope", "machine:qemu-1-vm1"),
        ("/machine.slice/systemd-nspawn@deb12.service", "machine:deb12"),
        ("/system.slice/nginx.service", "nginx.service"),
        ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
        ("/user.slice/user-1000.slice", "user-1000.slice"),
        ("/init.scope", "init.scope"),
        # a layout nobody names (this machine's sandbox): the path itself, nothing hidden
        ("/process_api/3f43ddee", "/process_api/3f43ddee"),
        # a 63-character id is not a container id: treated as a unit name
        (f"/system.slice/docker-{H1[:63]}.scope", f"docker-{H1[:63]}.scope"),
    ],
)
def test_container_name(path: str, name: str) -> None:
    assert container_name(path) == name


def test_container_of_kinds() -> None:
    assert container_of(f"/docker/{H1}") == ("docker", "aaaaaaaaaaaa")
    assert container_of(f"/moby/{H1}") == ("docker", "aaaaaaaaaaaa")
    assert container_of(f"/somewhere/{H1}") == ("container", "aaaaaaaaaaaa")
    assert container_of("/system.slice/nginx.service") is None


def test_systemd_unescape() -> None:
    assert systemd_unescape("qemu\\x2d1\\x2dvm1") == "qemu-1-vm1"
    assert systemd_unescape("plain") == "plain"
    assert systemd_unescape("bad\\xzz") == "bad\\xzz"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("0::/system.slice/nginx.service\n", "/system.slice/nginx.service"),
        # hybrid host with the v2 tree unused: name=systemd wins over other v1 lines
        ("9:name=systemd:/system.slice/a.service\n4:memory:/other\n0::/\n",
         "/system.slice/a.service"),
        # this machine: only the v1 memory controller places processes
        ("9:name=systemd:/\n4:memory:/process_api/3f43\n1:cpu:/\n0::/\n", "/process_api/3f43"),
        ("0::/\n", "/"),
        ("", "/"),
        ("garbage\n", "/"),
    ],
)
def test_parse_proc_cgroup(text: str, path: str) -> None:
    assert parse_proc_cgroup(text) == path


# -- parsers ------------------------------------------------------------------------------


def test_parsers() -> None:
    assert parse_io_stat("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=9\n"
                         "8:16 rbytes=10 wbytes=20 rios=30 wios=40\n8:32\n") == {
        "rbytes": 11, "wbytes": 22, "rios": 33, "wios": 44}
    assert parse_blkio("8:0 Read 5\n8:0 Write 6\n8:0 Total 11\n8:16 Read 1\nTotal 12\n") == {
        "Read": 6, "Write": 6}
    assert parse_pressure_totals(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=123\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=45\n") == {"some": 123, "full": 45}
    assert parse_pressure_totals("some avg10=0.00 total=x\n") == {}
    assert parse_limit_v2("max\n") is None
    assert parse_limit_v2("536870912\n") == 536870912
    assert parse_limit_v2("") is None
    assert parse_limit_v1("9223372036854771712\n") is None
    assert parse_limit_v1(f"{UNLIMITED_V1 - 1}\n") == UNLIMITED_V1 - 1
    assert parse_limit_v1("268435456\n") == 268435456


def test_interesting_rule() -> None:
    assert is_interesting("/")
    assert is_interesting("/anything")
    assert is_interesting("/system.slice/a.service/sub")
    assert not is_interesting("/system.slice/a.service/sub/deeper")
    assert not is_interesting("/kubepods.slice/kubepods-burstable.slice")


# -- trees --------------------------------------------------------------------------------


def test_v2_tree_emits_interesting_cgroups_only() -> None:
    c = collector("v2")
    hier = c.hierarchies()
    assert hier.v2 is not None and hier.memory is None
    paths = set(c.paths())
    assert paths == {
        "/", "/init.scope", "/kubepods.slice", "/machine.slice", "/system.slice", "/user.slice",
        "/machine.slice/machine-qemu\\x2d1\\x2dvm1.scope",
        DOCKER_SCOPE,
        "/system.slice/foo.service", "/system.slice/foo.service/sub",
        "/system.slice/nginx.service",
        "/user.slice/user-1000.slice", "/user.slice/user-1000.slice/session-3.scope",
        "/user.slice/user-1000.slice/user@1000.service",
        POD, f"{POD}/cri-containerd-{H2}.scope",
        f"/user.slice/user-1000.slice/user@1000.service/app.slice/libpod-{H3}.scope",
    }
    # never below a container, never deeper than two levels under a systemd slice
    assert f"{DOCKER_SCOPE}/inner" not in paths
    assert "/system.slice/foo.service/sub/deeper" not in paths


def test_v2_values() -> None:
    c = collector("v2")
    raw = c.collect()
    assert set(raw) <= {d.name for d in c.descriptors()}
    nginx = "/system.slice/nginx.service"
    assert raw["cgroup.cpu.usage"][nginx] == 200_000
    assert raw["cgroup.cpu.user"][nginx] == 133_333
    assert raw["cgroup.cpu.throttled.periods"][nginx] == 7
    assert raw["cgroup.cpu.throttled.time"][nginx] == 5000
    assert raw["cgroup.cpu.periods"][nginx] == 100
    assert raw["cgroup.memory.current"][nginx] == 50 << 20
    assert raw["cgroup.memory.limit"][nginx] == 512 << 20
    assert raw["cgroup.memory.swap"][nginx] == 1 << 20
    assert raw["cgroup.io.read_bytes"][nginx] == 1300  # summed over both devices
    assert raw["cgroup.io.writes"][nginx] == 24
    assert raw["cgroup.pids.current"][nginx] == 5
    assert raw["cgroup.pressure.memory.some.total"][nginx] == 2000
    assert raw["cgroup.pressure.io.full.total"][nginx] == 200
    # "max" means no limit: absent, not a huge number
    assert DOCKER_SCOPE in raw["cgroup.memory.current"]
    assert DOCKER_SCOPE not in raw["cgroup.memory.limit"]
    # the root has no memory.current or throttling in v2; it still has CPU and I/O
    assert "/" not in raw["cgroup.memory.current"]
    assert "/" not in raw["cgroup.cpu.periods"]
    assert raw["cgroup.cpu.usage"]["/"] == 9_000_000
    names = raw["cgroup.container.name"]
    assert names[DOCKER_SCOPE] == "docker:aaaaaaaaaaaa"
    assert names[f"{POD}/cri-containerd-{H2}.scope"] == "k8s:bbbbbbbbbbbb"
    assert names[POD] == f"k8s:{POD_UID}"
    assert names["/"] == ""
    assert raw["cgroup.version"] == dict.fromkeys(names, "v2")


def test_v1_tree_converts_units_and_prefers_recursive_blkio() -> None:
    c = collector("v1")
    hier = c.hierarchies()
    assert hier.v2 is None and hier.cpu is not None and hier.cpuacct is not None
    # cpu and cpuacct are one combined mount: walked once
    assert len(hier.walk_roots) == 4
    raw = c.collect()
    cont = f"/docker/{H1}"
    assert set(c.paths()) == {"/", "/docker", cont}
    assert raw["cgroup.cpu.usage"][cont] == 5_000_000  # ns -> usec
    assert raw["cgroup.cpu.user"][cont] == 3_000_000  # 300 ticks at 100 Hz -> usec
    assert raw["cgroup.cpu.system"][cont] == 2_000_000
    assert raw["cgroup.cpu.throttled.time"][cont] == 5000  # ns -> usec
    assert raw["cgroup.memory.current"][cont] == 100 << 20
    assert raw["cgroup.memory.limit"][cont] == 268435456
    assert raw["cgroup.memory.swap"][cont] == 10 << 20
    assert "/" not in raw["cgroup.memory.limit"]  # the 'unlimited' value is no limit
    assert raw["cgroup.io.read_bytes"][cont] == 5096
    assert raw["cgroup.io.write_bytes"][cont] == 8192
    assert raw["cgroup.io.reads"][cont] == 3
    assert raw["cgroup.pids.current"][cont] == 12
    assert "cgroup.pressure.cpu.some.total" not in raw  # PSI is v2 only
    assert raw["cgroup.container.name"][cont] == "docker:aaaaaaaaaaaa"
    assert raw["cgroup.version"] == {"/": "v1", "/docker": "v1", cont: "v1"}


def test_hybrid_tree_merges_v2_and_v1() -> None:
    c = collector("hybrid")
    raw = c.collect()
    assert set(c.paths()) == {"/", "/system.slice", DOCKER_SCOPE, "/legacy"}
    # CPU from the unified tree (v2 wins over cpuacct's 999 ms), memory from v1 memory
    assert raw["cgroup.cpu.usage"][DOCKER_SCOPE] == 300_000
    assert raw["cgroup.memory.current"][DOCKER_SCOPE] == 100 << 20
    assert raw["cgroup.memory.limit"][DOCKER_SCOPE] == 268435456
    assert raw["cgroup.pids.current"][DOCKER_SCOPE] == 12
    assert raw["cgroup.pressure.cpu.some.total"][DOCKER_SCOPE] == 3000
    # a cgroup only v1 knows
    assert raw["cgroup.cpu.usage"]["/legacy"] == 7000
    assert raw["cgroup.cpu.user"]["/legacy"] == 3500
    # which a cgroup filter (v2 paths only) cannot take
    assert raw["cgroup.version"] == {"/": "v2", "/system.slice": "v2", DOCKER_SCOPE: "v2",
                                     "/legacy": "v1"}


def test_captured_hybrid_tree_of_this_machine() -> None:
    c = collector("live")
    hier = c.hierarchies()
    assert hier.v2 is not None and hier.v2.name == "unified"
    assert hier.memory is not None
    raw = c.collect()
    assert raw["cgroup.cpu.usage"]["/"] > 0
    assert "/process_api" in raw["cgroup.memory.current"]
    assert "/" not in raw.get("cgroup.memory.limit", {})


def test_removed_cgroup_and_limits(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "cgroup", "v2")
    c = CgroupCollector(roots, rescan_s=3600, hz=100)
    assert DOCKER_SCOPE in c.collect()["cgroup.cpu.usage"]
    # removed after the walk: simply gone from the next collection
    scope = roots.sys / "fs" / "cgroup" / DOCKER_SCOPE.strip("/")
    saved = tmp_path / "saved-scope"
    shutil.copytree(scope, saved)
    shutil.rmtree(scope)
    raw = c.collect()
    assert DOCKER_SCOPE not in raw["cgroup.cpu.usage"]
    assert DOCKER_SCOPE not in raw["cgroup.container.name"]
    # recreated under the same path before the next walk (a restarted unit): read in full
    shutil.copytree(saved, scope)
    raw = c.collect()
    assert raw["cgroup.memory.current"][DOCKER_SCOPE] == 100 << 20
    assert len(CgroupCollector(roots, rescan_s=0, max_cgroups=3).paths()) == 3
    assert list(walk_interesting(roots.sys / "fs" / "cgroup", max_depth=0)) == ["/"]


def test_no_cgroups_mounted(tmp_path: Path) -> None:
    c = CgroupCollector(Roots.under(tmp_path), rescan_s=0)
    assert c.collect() == {}
    assert find_hierarchies(tmp_path).walk_roots == []


def test_cpu_util_derived(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "cgroup", "v2")
    clock = FakeClock()
    c = CgroupCollector(roots, rescan_s=0, hz=100)
    sampler = Sampler([c], registry=MetricRegistry(), clock=clock, interval_s=2.0)
    assert sampler.sample().groups["cgroup"].cooked["cgroup.cpu.util"][DOCKER_SCOPE] is None
    stat = roots.sys / "fs" / "cgroup" / DOCKER_SCOPE.strip("/") / "cpu.stat"
    stat.write_text(stat.read_text().replace("usage_usec 300000", "usage_usec 3300000"))
    clock.advance(2.0)
    cooked = sampler.sample().groups["cgroup"].cooked
    assert cooked["cgroup.cpu.util"][DOCKER_SCOPE] == pytest.approx(1.5)  # 3 s CPU in 2 s
    assert cooked["cgroup.container.name"][DOCKER_SCOPE] == "docker:aaaaaaaaaaaa"


# -- live -----------------------------------------------------------------------------------


def _busy_ms_from_proc_stat() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) * 1000 / os.sysconf("SC_CLK_TCK")


@pytest.mark.live
def test_live_root_cpu_matches_proc_stat() -> None:
    c = CgroupCollector(Roots(), rescan_s=0)
    if c.hierarchies().v2 is None and c.hierarchies().cpuacct is None:
        pytest.skip("no cgroup CPU accounting mounted")
    busy0 = _busy_ms_from_proc_stat()
    usage0 = c.collect()["cgroup.cpu.usage"]["/"]
    spin_until = time.monotonic() + 1.0
    while time.monotonic() < spin_until:
        pass
    usage1 = c.collect()["cgroup.cpu.usage"]["/"]
    busy1 = _busy_ms_from_proc_stat()
    cgroup_ms = (usage1 - usage0) / 1000  # type: ignore[operator]
    # Same kernel accounting seen two ways; ticks make /proc/stat coarse (10 ms per CPU).
    assert cgroup_ms == pytest.approx(busy1 - busy0, rel=0.15, abs=40)
    assert cgroup_ms > 500


@pytest.mark.live
def test_live_own_memory_cgroup_holds_our_memory() -> None:
    c = CgroupCollector(Roots(), rescan_s=0)
    hier = c.hierarchies()
    path = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    values = read_cgroup(hier, path, 100)
    if "cgroup.memory.current" not in values:
        pytest.skip(f"no memory accounting for {path}")
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert values["cgroup.memory.current"] >= rss


@pytest.fixture
def v2_child_cgroup() -> Iterator[tuple[CgroupCollector, str, subprocess.Popen[bytes]]]:
    """A spinning child in its own cgroup of the v2 hierarchy (removed afterwards)."""
    c = CgroupCollector(Roots(), rescan_s=0)
    v2 = c.hierarchies().v2
    if v2 is None or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup v2 hierarchy")
    name = f"hostscope-test-{os.getpid()}"
    path = v2 / name
    path.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        (path / "cgroup.procs").write_text(str(child.pid))
        yield c, "/" + name, child
    finally:
        child.kill()
        child.wait()
        for _ in range(50):  # the cgroup is removable once the killed child is gone
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.05)


@pytest.mark.live
@pytest.mark.root
def test_live_cgroup_of_a_busy_child(
    v2_child_cgroup: tuple[CgroupCollector, str, subprocess.Popen[bytes]],
) -> None:
    import psutil

    c, path, child = v2_child_cgroup
    ps = psutil.Process(child.pid)
    clock_start = time.monotonic()
    cpu0 = sum(ps.cpu_times()[:2])
    sampler = Sampler([c], registry=MetricRegistry(), interval_s=1.0)
    sampler.sample(force_all=True)
    time.sleep(1.0)
    cooked = sampler.sample(force_all=True).groups["cgroup"].cooked
    cpu1 = sum(ps.cpu_times()[:2])
    expected = (cpu1 - cpu0) / (time.monotonic() - clock_start)
    assert path in cooked["cgroup.container.name"]  # a direct child of the root is emitted
    util = cooked["cgroup.cpu.util"][path]
    # Compared with what psutil saw the child use over the same second, not with a fixed
    # share: on a loaded machine the busy child gets well under half a CPU.
    assert isinstance(util, float) and util > 0.02
    assert util == pytest.approx(expected, abs=0.15)


@pytest.mark.live
def test_live_versions_are_what_a_cgroup_filter_accepts() -> None:
    """``cgroup.version`` is ``v2`` exactly for the cgroups the BPF modules' cgroup setting
    takes (the dashboard's container filter offers only those); on this hybrid machine
    the sandbox's /process_api exists only in v1 hierarchies."""
    from hostscope.bpfmods.settings import CgroupSetting, SettingsContext

    versions = CgroupCollector(Roots(), rescan_s=0).collect().get("cgroup.version", {})
    if not versions:
        missing("no cgroups mounted")
    setting = CgroupSetting("cgroup", "CGROUP_ID", "")
    for path, version in versions.items():
        try:
            setting.parse(path, SettingsContext())
            accepted = "v2"
        except ValueError:
            accepted = "v1"
        assert version == accepted, path


def test_kept_descriptors_reread_reopen_and_close(tmp_path: Path) -> None:
    import os

    import hostscope.metrics.collectors.cgroup as cgroup_module

    group = tmp_path / "a.service"
    group.mkdir()
    (group / "memory.current").write_text("100\n")
    (group / "pids.current").write_text("3\n")
    files = CgroupFiles(keep=True)
    assert files.int(str(group), "memory.current") == 100
    assert files.int(str(group), "memory.max") is None  # absent: remembered, not kept
    assert files.missing == {str(group): {"memory.max"}}
    (group / "memory.current").write_text("250\n")  # rewritten: the kept descriptor
    assert files.int(str(group), "memory.current") == 250  # reads it from the start
    # A kept descriptor that fails (on cgroupfs: the cgroup was removed, ENODEV) is
    # closed and the path opened again at once (a cgroup recreated under the path).
    directory = os.open(tmp_path, os.O_RDONLY)
    os.dup2(directory, files._kept[str(group)]["memory.current"])  # reads fail: EISDIR
    os.close(directory)
    assert files.int(str(group), "memory.current") == 250
    assert files.int(str(group), "pids.current") == 3
    assert files._nkept == 2
    files.forget(str(group))
    assert files._nkept == 0 and not files.missing
    with pytest.MonkeyPatch.context() as patch:  # beyond the budget: opened per read
        patch.setattr(cgroup_module, "KEPT_FDS", 1)
        small = CgroupFiles(keep=True)
        assert small.int(str(group), "memory.current") == 250
        assert small.int(str(group), "pids.current") == 3
        assert small._nkept == 1
        small.close()
        assert small._nkept == 0
        assert small.int(str(group), "pids.current") == 3  # a read after close opens again
    # a captured tree keeps nothing open: a removed file is gone at once
    assert CgroupCollector(Roots.under(tmp_path))._files._budget == 0
    # the budget is an eighth of the soft open files limit (a shell's 1,024: 128)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cgroup_module.resource, "getrlimit", lambda _: (1024, 4096))
        assert CgroupFiles(keep=True)._budget == 128
        patch.setattr(cgroup_module.resource, "getrlimit", lambda _: (65536, 65536))
        assert CgroupFiles(keep=True)._budget == cgroup_module.KEPT_FDS
