"""Filesystem collector: mount selection over captured and crafted mount tables, values
from an injected statvfs (as the collector's constructor allows), and live checks
against df(1) and os.statvfs."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from hostscope.metrics.collectors.filesys import (
    FilesysCollector,
    Mount,
    parse_mounts,
    select_mounts,
    unescape_mount_field,
    wanted,
)
from hostscope.metrics.model import MetricRegistry
from hostscope.metrics.sampler import Sampler
from hostscope.metrics.sources import Roots
from tests.support import FIXTURES, FakeClock, fixture_roots

CRAFTED = (FIXTURES / "filesys/crafted/proc/self/mounts").read_text()


def statvfs_table(
    table: dict[str, tuple[int, ...] | OSError], default: tuple[int, ...] | None = None
) -> Callable[[str], os.statvfs_result]:
    """A statvfs(2) stand-in answering from a table (mount point -> 10 fields or error)."""

    def statvfs(path: str) -> os.statvfs_result:
        entry = table.get(path, default)
        if entry is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if isinstance(entry, OSError):
            raise entry
        return os.statvfs_result(entry)

    return statvfs


#: bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax
ROOT_FS = (4096, 4096, 1000, 400, 300, 100, 40, 40, 0, 255)


# --- parsing and selection -------------------------------------------------------------


def test_unescape_octal_escapes() -> None:
    assert unescape_mount_field(r"/home\040dir") == "/home dir"
    assert unescape_mount_field(r"/a\011b\012c\134d") == "/a\tb\nc\\d"
    assert unescape_mount_field(r"/plain") == "/plain"
    # Not an escape: left alone rather than guessed at.
    assert unescape_mount_field("/odd\\9x\\04") == "/odd\\9x\\04"


def test_parse_mounts_decodes_and_skips_short_lines() -> None:
    mounts = parse_mounts(CRAFTED + "broken-line\n/dev/x /y\n")
    assert Mount("/dev/mapper/vg0-home", "/home dir", "xfs") in mounts
    assert Mount("/dev/sde1", "/mnt/tab\tand\\slash", "ext4") in mounts
    assert all(m.fstype for m in mounts)
    assert len(mounts) == CRAFTED.count("\n")


def test_default_selection_on_a_crafted_host() -> None:
    chosen = [m.mountpoint for m in select_mounts(parse_mounts(CRAFTED))]
    assert chosen == [
        "/",  # /dev/sda2 also at /var/lib/docker: kept once, at the shorter path
        "/boot/efi",
        "/home dir",
        "/data",  # /dev/sdb1 at /srv/data and /data
        "/var/lib/docker/overlay2/4f1c/merged",
        "/tank/data",
        "/mnt/usb",
        "/mnt/tab\tand\\slash",
    ]
    # /mnt/over: a tmpfs mounted over /dev/sdd1 hides it, and tmpfs is off by default.


def test_tmpfs_and_network_filesystems_on_request() -> None:
    mounts = parse_mounts(CRAFTED)
    with_tmpfs = {m.mountpoint for m in select_mounts(mounts, include_tmpfs=True)}
    assert {"/run", "/dev/shm", "/mnt/over"} <= with_tmpfs
    with_net = {m.mountpoint for m in select_mounts(mounts, include_network=True)}
    assert {"/mnt/nfs", "/mnt/smb", "/mnt/sshfs"} <= with_net
    for never in ("/snap/core20/2015", "/misc", "/proc/sys/fs/binfmt_misc", "/sys",
                  "/sys/fs/cgroup", "/dev"):
        assert never not in with_tmpfs | with_net


@pytest.mark.parametrize(
    ("mount", "default", "network"),
    [
        (Mount("/dev/nvme0n1p2", "/", "btrfs"), True, True),
        (Mount("overlay", "/", "overlay"), True, True),
        (Mount("fuse-overlayfs", "/", "fuse.fuse-overlayfs"), True, True),
        (Mount("rpool/ROOT", "/", "zfs"), True, True),
        (Mount("/dev/loop0", "/snap/x/1", "squashfs"), False, False),
        (Mount("/dev/sr0", "/media/cd", "iso9660"), False, False),
        (Mount("/etc/auto.misc", "/misc", "autofs"), False, False),
        (Mount("srv:/x", "/x", "nfs"), False, True),
        (Mount("ceph-fuse", "/c", "fuse.ceph-fuse"), False, True),
        (Mount("/dev/fuse", "/run/user/1000/doc", "fuse.portal"), False, True),
        (Mount("/dev/sdb1", "/win", "fuseblk"), True, True),
        (Mount("none", "/sys/kernel/tracing", "tracefs"), False, False),
    ],
)
def test_wanted_policy(mount: Mount, default: bool, network: bool) -> None:
    assert wanted(mount) is default
    assert wanted(mount, include_network=True) is network


def test_container_view_keeps_overlay_root_and_one_bind_mount() -> None:
    collector = FilesysCollector(fixture_roots("filesys", "container"),
                                 statvfs_table({}, default=ROOT_FS))
    assert [m.mountpoint for m in collector.mounts()] == ["/", "/etc/hosts"]


# --- values ----------------------------------------------------------------------------


def test_values_follow_df() -> None:
    collector = FilesysCollector(fixture_roots("filesys", "crafted"), statvfs_table({
        "/": ROOT_FS,
        # frsize 0 (some old FUSE filesystems): fall back to bsize
        "/boot/efi": (1024, 0, 2048, 1024, 1024, 0, 0, 0, 0, 255),
    }))
    raw = collector.collect()
    assert set(raw) <= {d.name for d in collector.descriptors()}
    assert raw["filesys.capacity"]["/"] == 4000
    assert raw["filesys.free"]["/"] == 1600
    assert raw["filesys.avail"]["/"] == 1200
    assert raw["filesys.used"]["/"] == 2400
    # df's Use%: used / (used + avail); reserved blocks count as neither
    assert raw["filesys.full"]["/"] == pytest.approx(200 / 3)
    assert raw["filesys.maxfiles"]["/"] == 100
    assert raw["filesys.freefiles"]["/"] == 40
    assert raw["filesys.usedfiles"]["/"] == 60
    assert raw["filesys.type"]["/"] == "ext4"
    assert raw["filesys.device"]["/"] == "/dev/sda2"
    assert raw["filesys.capacity"]["/boot/efi"] == 2048
    assert raw["filesys.full"]["/boot/efi"] == 50.0


def test_empty_filesystem_has_no_full_percentage() -> None:
    collector = FilesysCollector(fixture_roots("filesys", "container"), statvfs_table(
        {"/": (4096, 4096, 0, 0, 0, 0, 0, 0, 0, 255)}, default=ROOT_FS))
    raw = collector.collect()
    assert raw["filesys.capacity"]["/"] == 0
    assert "/" not in raw["filesys.full"]
    assert "/etc/hosts" in raw["filesys.full"]


def test_statvfs_failures_skip_only_that_mount() -> None:
    table: dict[str, tuple[int, ...] | OSError] = {
        "/": ROOT_FS,
        "/home dir": OSError(errno.ESTALE, "Stale file handle"),
        "/mnt/usb": OSError(errno.ENOTCONN, "Transport endpoint is not connected"),
        "/tank/data": PermissionError(errno.EACCES, "Permission denied"),
        "/boot/efi": ROOT_FS,
        "/var/lib/docker/overlay2/4f1c/merged": ROOT_FS,
        "/mnt/tab\tand\\slash": ROOT_FS,
        # "/data" is not in the table: it vanished (ENOENT) after the mount table was read
    }
    collector = FilesysCollector(fixture_roots("filesys", "crafted"), statvfs_table(table))
    sampler = Sampler([collector], registry=MetricRegistry(), clock=FakeClock())
    tick = sampler.sample()
    assert not sampler.status["filesys"].stale
    assert set(tick.groups["filesys"].raw["filesys.capacity"]) == {
        "/", "/boot/efi", "/var/lib/docker/overlay2/4f1c/merged", "/mnt/tab\tand\\slash"}
    assert collector.skipped == {"/home dir": "ESTALE", "/mnt/usb": "ENOTCONN",
                                 "/tank/data": "denied", "/data": "missing"}


def test_unexpected_non_os_error_still_fails_the_collection() -> None:
    def broken(path: str) -> os.statvfs_result:
        raise RuntimeError("bug")

    sampler = Sampler([FilesysCollector(fixture_roots("filesys", "container"), broken)],
                      registry=MetricRegistry(), clock=FakeClock())
    sampler.sample()
    assert sampler.status["filesys"].errors == 1


def test_mount_table_changes_are_picked_up(tmp_path: Path) -> None:
    dest = tmp_path / "tree"
    shutil.copytree(FIXTURES / "filesys/container", dest)
    roots = Roots.under(dest)
    collector = FilesysCollector(roots, statvfs_table({}, default=ROOT_FS))
    assert set(collector.collect()["filesys.used"]) == {"/", "/etc/hosts"}
    with (roots.proc / "self/mounts").open("a") as f:
        f.write("/dev/vdb /data xfs rw 0 0\n")
    assert set(collector.collect()["filesys.used"]) == {"/", "/etc/hosts", "/data"}


def test_own_cadence_through_sampler() -> None:
    collector = FilesysCollector(fixture_roots("filesys", "container"),
                                 statvfs_table({}, default=ROOT_FS))
    assert collector.interval_s == 5.0
    sampler = Sampler([collector], registry=MetricRegistry(), clock=FakeClock())
    assert sampler.group_interval_s("filesys") == 5.0
    ran = [bool(sampler.sample().groups) for _ in range(10)]
    assert ran == [True, False, False, False, False] * 2


# --- live cross-checks -----------------------------------------------------------------


def _df() -> dict[str, list[int]]:
    """df -k -a: mount point -> [size, used, avail, inodes, iused] (Kbytes, counts)."""
    if shutil.which("df") is None:
        pytest.skip("df is not installed")
    out = subprocess.run(
        ["df", "-k", "-a", "--output=size,used,avail,itotal,iused,target"],
        capture_output=True, text=True, check=False, timeout=30,
    ).stdout
    table: dict[str, list[int]] = {}
    for line in out.splitlines()[1:]:
        parts = line.split(None, 5)
        if len(parts) == 6 and all(p.isdigit() for p in parts[:5]):
            table[parts[5]] = [int(p) for p in parts[:5]]
    return table


@pytest.mark.live
@pytest.mark.parametrize("include_tmpfs", [False, True])
def test_live_matches_df_and_statvfs(include_tmpfs: bool) -> None:
    collector = FilesysCollector(Roots(), include_tmpfs=include_tmpfs)
    raw = collector.collect()
    df = _df()
    assert "/" in raw["filesys.capacity"] or collector.mounts()[0].fstype == "overlay"
    slack = 64 * 1024  # KB written or freed between the two reads
    checked = 0
    for path, capacity in raw["filesys.capacity"].items():
        if path not in df:
            continue  # a mount point df prints escaped (spaces): compared via statvfs below
        size, used, avail, itotal, iused = df[path]
        assert capacity == size
        assert abs(raw["filesys.used"][path] - used) <= slack  # type: ignore[operator]
        assert abs(raw["filesys.avail"][path] - avail) <= slack  # type: ignore[operator]
        assert raw["filesys.maxfiles"][path] == itotal
        assert abs(raw["filesys.usedfiles"][path] - iused) <= 1000  # type: ignore[operator]
        # df rounds Use% up to a whole percent
        full = raw["filesys.full"][path]
        assert isinstance(full, float)
        if used + avail:
            assert full == pytest.approx(used / (used + avail) * 100, abs=1.0)
        checked += 1
    assert checked >= 1
    for path in raw["filesys.capacity"]:
        st = os.statvfs(path)
        assert raw["filesys.capacity"][path] == st.f_blocks * st.f_frsize // 1024
    assert collector.skipped == {}
