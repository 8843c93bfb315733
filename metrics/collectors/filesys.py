"""Filesystem space and inodes: mounts from ``/proc/self/mounts``, sizes from statvfs(2).

Which mounts are reported. An on-call engineer asks "which filesystem is filling up?",
so the default set is the filesystems that can fill up and that a person can act on:

* filesystems backed by a block device (the mount source is an absolute path such as
  ``/dev/sda1`` or ``/dev/mapper/vg-root``), plus ``overlay`` (a container's root),
  ``zfs`` (datasets are named ``pool/fs``, not ``/dev/...``) and
  ``fuse.fuse-overlayfs`` (rootless containers' root);
* never kernel pseudo filesystems (:data:`PSEUDO_FS`: proc, sysfs, cgroup, devtmpfs,
  autofs ...). ``autofs`` matters most: its source can look like a path (the map file)
  and statvfs on it triggers, or hangs on, an automount;
* never read-only images (:data:`IMAGE_FS`: squashfs, iso9660, erofs, udf): they are
  always 100% full by construction (every Ubuntu snap is one) and would drown the
  "fullest filesystem" view;
* ``tmpfs`` only with ``include_tmpfs=True``. It is RAM (its use shows in
  ``mem.util.shared``) and a Kubernetes node mounts one per secret and service account
  token, hundreds of them; PCP keeps tmpfs in a separate group for the same reason;
* network and FUSE filesystems (:data:`NETWORK_FS`, every other ``fuse.*``) only with
  ``include_network=True``. statvfs(2) on an NFS or CIFS mount whose server is gone, or
  on a FUSE mount whose daemon is stuck, blocks in the kernel, often uninterruptibly, and
  would freeze the sampler thread and with it every metric. ``fuseblk`` (NTFS, exFAT on a
  local disk) is block-backed and included.

Duplicates. A mount point listed twice (something mounted over it) is reported once,
with the last entry, because that is what statvfs sees. A device mounted at several
places (bind mounts, btrfs subvolumes, a container's ``/etc/hosts``) is reported once,
at its shortest mount point (the first of equal length): every mount of one device
shows the same space.

Mount points are octal-escaped by the kernel (``\\040`` space, ``\\011`` tab, ``\\012``
newline, ``\\134`` backslash); they are decoded, and the decoded path is the instance.

Values follow df(1) and PCP, in Kbytes: ``capacity`` = f_blocks, ``free`` = f_bfree,
``avail`` = f_bavail (free to unprivileged users), ``used`` = capacity - free, and
``full`` = used / (used + avail) * 100, the percentage df prints in Use% (reserved
blocks count as neither, so an ext4 filesystem is "100% full" when users can write no
more). ``maxfiles`` = f_files, ``freefiles`` = f_ffree, ``usedfiles`` = their difference.

A mount that disappears between reading the mount table and statvfs, or whose statvfs
fails (ESTALE, EIO, ENOTCONN), is left out of that collection and recorded in
:attr:`FilesysCollector.skipped`; it never fails the collection of the others.

Cadence: space changes slowly and one statvfs per mount is cheap but not free, so the
collector samples every 5 s by default (``interval_s``); the dashboard's "disk full"
chart needs nothing finer.

The mount table is this process's (``/proc/self/mounts``) and statvfs is called on the
mount points as this process sees them, so the two always agree, including inside a
container.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..collector import Collector, Raw
from ..model import COUNT, KBYTES, NONE, MetricDesc, ValueType, discrete, instant
from ..sources import KeptFile, Roots, translate

#: Kernel pseudo filesystems: never reported.
PSEUDO_FS = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nfsd", "nsfs", "proc",
    "pstore", "ramfs", "rootfs", "rpc_pipefs", "securityfs", "selinuxfs", "sysfs",
    "tracefs",
})
#: Read-only images, always 100% full: never reported.
IMAGE_FS = frozenset({"squashfs", "iso9660", "erofs", "udf"})
#: Filesystems whose statvfs can block on a remote server: only with include_network.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "afs", "lustre", "gpfs",
    "9p", "ncpfs", "coda", "beegfs", "orangefs",
})
#: Local filesystems whose mount source is not a device path.
LOCAL_NO_DEVICE = frozenset({"overlay", "zfs", "fuse.fuse-overlayfs"})

StatVfs = Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class Mount:
    device: str
    mountpoint: str
    fstype: str


def unescape_mount_field(field: str) -> str:
    """Decode the kernel's ``\\ooo`` octal escapes in a mounts field."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    n = len(field)
    while i < n:
        ch = field[i]
        digits = field[i + 1 : i + 4]
        if ch == "\\" and len(digits) == 3 and all(d in "01234567" for d in digits):
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_mounts(text: str) -> list[Mount]:
    """``/proc/self/mounts`` (fstab(5) format) as mounts, in order; short lines skipped."""
    mounts: list[Mount] = []
    for line in text.split("\n"):
        parts = line.split(None, 3)
        if len(parts) < 3:
            continue
        mounts.append(Mount(unescape_mount_field(parts[0]), unescape_mount_field(parts[1]),
                            parts[2]))
    return mounts


def wanted(mount: Mount, *, include_network: bool = False, include_tmpfs: bool = False) -> bool:
    """Whether a mount is reported under the policy in the module docstring."""
    fstype = mount.fstype
    if fstype in PSEUDO_FS or fstype in IMAGE_FS:
        return False
    if fstype in NETWORK_FS or fstype.startswith("nfs"):
        return include_network
    if fstype == "tmpfs":
        return include_tmpfs
    if fstype in LOCAL_NO_DEVICE:
        return True
    if fstype.startswith("fuse.") or fstype == "fuse":
        return include_network
    return mount.device.startswith("/")


def select_mounts(
    mounts: list[Mount], *, include_network: bool = False, include_tmpfs: bool = False
) -> list[Mount]:
    """The mounts to report: visible (last per mount point), wanted, one per device."""
    visible: dict[str, Mount] = {}
    for mount in mounts:
        visible.pop(mount.mountpoint, None)  # re-insert to keep the later position
        visible[mount.mountpoint] = mount
    by_device: dict[str, Mount] = {}
    chosen: list[Mount] = []
    for mount in visible.values():
        if not wanted(mount, include_network=include_network, include_tmpfs=include_tmpfs):
            continue
        if not mount.device.startswith("/"):
            # "overlay", "tmpfs", "server:/export": the source names no unique device,
            # so two such mounts are different filesystems.
            chosen.append(mount)
            continue
        kept = by_device.get(mount.device)
        if kept is None or len(mount.mountpoint) < len(kept.mountpoint):
            by_device[mount.device] = mount
    chosen.extend(by_device.values())
    order = {m.mountpoint: i for i, m in enumerate(visible.values())}
    chosen.sort(key=lambda m: order[m.mountpoint])
    return chosen


_LEAVES = ("capacity", "used", "free", "avail", "full", "usedfiles", "freefiles", "maxfiles")


class FilesysCollector(Collector):
    """``filesys.*`` per mount point (indom ``filesys``)."""

    name = "filesys"

    def __init__(
        self,
        roots: Roots,
        statvfs: StatVfs = os.statvfs,
        *,
        include_network: bool = False,
        include_tmpfs: bool = False,
        interval_s: float = 5.0,
    ) -> None:
        self.roots = roots
        self.statvfs = statvfs
        self.include_network = include_network
        self.include_tmpfs = include_tmpfs
        self.interval_s = interval_s
        #: Mount point -> why it was left out of the last collection (statvfs failed).
        self.skipped: dict[str, str] = {}
        self._mounts_text: str | None = None
        self._selected: list[Mount] = []
        self._mounts = KeptFile(roots.proc / "self" / "mounts")

    def descriptors(self) -> list[MetricDesc]:
        kw: dict[str, Any] = {"indom": "filesys", "labels": ("mountpoint",)}
        return [
            discrete("filesys.capacity", KBYTES, "total size of the filesystem", **kw),
            instant("filesys.used", KBYTES, "space in use (capacity - free)", type=ValueType.U64,
                    **kw),
            instant("filesys.free", KBYTES, "free space, including blocks reserved for root",
                    type=ValueType.U64, **kw),
            instant("filesys.avail", KBYTES, "free space available to unprivileged users",
                    type=ValueType.U64, **kw),
            instant("filesys.full", NONE,
                    "percentage of space used, as df prints it: used / (used + avail) * 100",
                    **kw),
            instant("filesys.usedfiles", COUNT, "inodes in use", type=ValueType.U64, **kw),
            instant("filesys.freefiles", COUNT, "free inodes", type=ValueType.U64, **kw),
            discrete("filesys.maxfiles", COUNT, "total inodes", **kw),
            discrete("filesys.type", NONE, "filesystem type (ext4, xfs, overlay ...)",
                     type=ValueType.STRING, **kw),
            discrete("filesys.device", NONE, "mounted device or source",
                     type=ValueType.STRING, **kw),
        ]

    def mounts(self) -> list[Mount]:
        """The mounts reported now (the mount table is re-parsed only when it changed)."""
        text = self._mounts.read().decode("utf-8", "replace")
        if text != self._mounts_text:
            self._selected = select_mounts(
                parse_mounts(text), include_network=self.include_network,
                include_tmpfs=self.include_tmpfs,
            )
            self._mounts_text = text
        return self._selected

    def collect(self) -> Raw:
        raw: Raw = {name: {} for name in (*(f"filesys.{leaf}" for leaf in _LEAVES),
                                          "filesys.type", "filesys.device")}
        cap, used_, free_, avail_, full_, ufiles, ffiles, mfiles = (
            raw[f"filesys.{leaf}"] for leaf in _LEAVES
        )
        types, devices = raw["filesys.type"], raw["filesys.device"]
        skipped: dict[str, str] = {}
        for mount in self.mounts():
            path = mount.mountpoint
            try:
                st = self.statvfs(path)
            except OSError as exc:
                # One broken mount must not blank every other filesystem, so even the
                # errors sources.translate does not expect (ESTALE, EIO, ENOTCONN of a
                # dead mount) skip just this mount, and are recorded, not swallowed.
                skipped[path] = _skip_reason(exc, path)
                continue
            kb = (st.f_frsize or st.f_bsize) / 1024
            capacity = int(st.f_blocks * kb)
            free = int(st.f_bfree * kb)
            avail = int(st.f_bavail * kb)
            used = capacity - free
            cap[path] = capacity
            used_[path] = used
            free_[path] = free
            avail_[path] = avail
            if used + avail > 0:
                full_[path] = used / (used + avail) * 100.0
            mfiles[path] = st.f_files
            ffiles[path] = st.f_ffree
            ufiles[path] = st.f_files - st.f_ffree
            types[path] = mount.fstype
            devices[path] = mount.device
        self.skipped = skipped
        return raw

    def close(self) -> None:
        self._mounts.close()


def _skip_reason(exc: OSError, path: str) -> str:
    """"missing"/"denied"/"vanished" for expected errors, else the errno name."""
    try:
        return translate(exc, Path(path)).reason
    except OSError:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)
