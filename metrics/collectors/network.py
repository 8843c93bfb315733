"""Network interfaces, TCP/UDP/IP protocol counters and TCP connection states.

Two collectors, because their costs differ by orders of magnitude:

* :class:`NetworkCollector` (``network``): ``/proc/net/dev``, ``/proc/net/snmp``,
  ``/proc/net/netstat``, ``/proc/net/sockstat`` and, every few samples, sysfs
  attributes per interface; every tick. About 140 us of CPU with four interfaces on the
  (loaded) development VM, 85 us of it the kernel producing the four files:
  ``netstat`` alone, whose ~250 counters are summed over CPUs as it is printed, 40 us.
* :class:`TcpConnCollector` (``tcpconn``): per-state TCP socket counts. Any way of
  counting sockets by state makes the kernel walk the whole TCP established hash table
  (262,144 buckets on this 24 GiB machine, sized from RAM at boot) and every socket in
  it. Measured here: reading ``/proc/net/tcp`` and ``/proc/net/tcp6`` costs 2.9 ms on an
  idle host (1.46 ms each, nearly all of it the bucket walk, done twice per file because
  the reader must read again to see end-of-file; a read returns at most 27 lines, each
  resuming the walk) and about 1.2 us per socket more; a ``NETLINK_SOCK_DIAG`` dump per
  family, as ss(8) does, costs 0.55 ms for both (two walks) and about 0.65 us per
  socket; the legacy ``TCPDIAG_GETSOCK`` request covers both families in one walk,
  0.27 ms (:class:`TcpStateDump`). Parsing is negligible either way (a stride slice
  for the files, 0.25 us per netlink message). So this collector uses the one-walk
  dump when it reads the live system, falls back to per-family dumps if the kernel
  refuses it and to the files when netlink is unavailable (seccomp, a unit restricting
  address families) or when reading a captured tree, and has its own, longer cadence
  (``interval_s``, default 5 s). The per-second counts that the kernel keeps anyway
  (``network.tcp.currestab``, ``network.sockstat.tcp.tw``) are the network
  collector's; see :class:`TcpConnCollector` for what they can and cannot replace.

``/proc/net/dev`` (two header lines, then ``name: 8 receive and 8 transmit columns``)::

    rx: bytes packets errs drop fifo frame compressed multicast
    tx: bytes packets errs drop fifo colls carrier compressed

The counters are u64 (``rtnl_link_stats64``). An interface that disappears simply stops
being reported; the rate layer drops its state. Interface names cannot contain ``:`` or
whitespace (``dev_valid_name``), so the name ends at the first colon.

``/sys/class/net/IFACE``: ``operstate``, ``mtu`` and ``speed`` are read every
``attr_refresh_every`` samples (default 5) and for a new interface in the sample after
it appeared, and only in those samples, which ``may_block`` announces (``speed`` can
wait for the RTNL; the daemon runs the other samples on its event loop), not every
sample: each sysfs read costs about 10 us and a container host has hundreds of
veth interfaces, while link state changes are rare and show at once in the traffic
rates anyway. ``up`` can therefore lag a link change by up to 5 samples. ``speed``
(Mbit/s in sysfs, published in bytes/s like the traffic rates so the two share an axis)
is -1, or fails with EINVAL, on virtual devices and links that are down: it is then
absent. ``up`` is 1 when operstate is ``up``, and also when it is ``unknown`` (drivers
that do not report link state: loopback, tun, many virtual devices) and the interface
is administratively up (IFF_UP in ``flags``).

``/proc/net/snmp`` and ``/proc/net/netstat`` are pairs of lines, a header and values
with the same ``Prefix:`` (``Tcp: ActiveOpens ...`` / ``Tcp: 83 ...``); they are parsed
generically by zipping each pair. Counters are ``unsigned long`` (64-bit on 64-bit
kernels). ``network.udp.*`` is UDP over IPv4 only, as in PCP (IPv6 UDP is in
``/proc/net/snmp6``); TCP counters cover both IPv4 and IPv6. Keys a kernel lacks give
no value.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from ..collector import Collector, Raw
from ..model import (
    BYTES,
    COUNT,
    NONE,
    SINGULAR,
    MetricDesc,
    Semantics,
    ValueType,
    counter,
    discrete,
    instant,
)
from ..sources import KeptFile, Roots, SourceUnavailable, read_bytes, read_optional

# ---------------------------------------------------------------------------------------
# /proc/net/dev

#: (metric leaf, /proc/net/dev column, help)
DEV_FIELDS: tuple[tuple[str, int, str], ...] = (
    ("in.bytes", 0, "bytes received"),
    ("in.packets", 1, "packets received"),
    ("in.errors", 2, "receive errors"),
    ("in.drops", 3, "received packets dropped (no buffer, filtered, unknown protocol)"),
    ("in.fifo", 4, "receive FIFO overruns"),
    ("in.frame", 5, "receive framing errors"),
    ("in.mcasts", 7, "multicast packets received"),
    ("out.bytes", 8, "bytes sent"),
    ("out.packets", 9, "packets sent"),
    ("out.errors", 10, "transmit errors"),
    ("out.drops", 11, "transmit packets dropped"),
    ("out.fifo", 12, "transmit FIFO underruns"),
    ("out.collisions", 13, "collisions while sending"),
    ("out.carrier", 14, "transmit carrier losses"),
)
DEV_COLUMNS = 16


def parse_net_dev(text: str) -> dict[str, tuple[int, ...]]:
    """``/proc/net/dev`` as interface -> its 16 counters; incomplete lines skipped."""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    out: dict[str, tuple[int, ...]] = {}
    for line in text.split("\n")[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        values = rest.split()
        if len(values) < DEV_COLUMNS:
            continue
        try:
            out[name.strip()] = tuple(map(int, values[:DEV_COLUMNS]))
        except ValueError:
            continue
    return out


# ---------------------------------------------------------------------------------------
# /proc/net/snmp and /proc/net/netstat


class SnmpPicker:
    """Reads header/value line pairs (``/proc/net/snmp``, ``/proc/net/netstat``).

    Each ``Prefix: Key1 Key2 ...`` header line is followed by ``Prefix: v1 v2 ...``;
    values are matched to keys by position. ``wanted`` (prefix -> keys) limits the
    output to those values (None: everything). Positions of the wanted keys are learnt
    from a header once and reused while the header text stays the same (all boot long),
    so a read of the 130-column TcpExt line converts only the handful of values
    published. A value line whose column count does not match its header is zipped
    key by key instead; a value that is not an integer, a value line without a header
    and a cut-short last line are ignored.
    """

    __slots__ = ("_layouts", "_wanted")

    def __init__(self, wanted: Mapping[str, Iterable[str]] | None = None) -> None:
        self._wanted = None if wanted is None else {p: frozenset(k) for p, k in wanted.items()}
        # prefix -> (header text, keys picked, fetch of their values, number of columns)
        self._layouts: dict[
            str, tuple[str, tuple[str, ...], Callable[[list[str]], tuple[str, ...]], int]
        ] = {}

    def pick(self, text: str) -> dict[str, dict[str, int]]:
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        headers: dict[str, str] = {}
        out: dict[str, dict[str, int]] = {}
        for line in text.split("\n"):
            prefix, sep, rest = line.partition(":")
            if not sep:
                continue
            header = headers.pop(prefix, None)
            if header is None:
                headers[prefix] = rest
                continue
            if self._wanted is not None and prefix not in self._wanted:
                continue
            layout = self._layouts.get(prefix)
            if layout is None or layout[0] != header:
                layout = self._learn(prefix, header)
            _, keys, fetch, ncols = layout
            values = rest.split()
            if len(values) == ncols:
                try:
                    out[prefix] = dict(zip(keys, map(int, fetch(values)), strict=True))
                    continue
                except ValueError:
                    pairs: Iterable[tuple[str, str]] = zip(keys, fetch(values), strict=True)
            else:
                names = header.split()
                wanted = set(keys)
                pairs = ((k, v) for k, v in zip(names, values, strict=False) if k in wanted)
            picked: dict[str, int] = {}
            for key, value in pairs:
                try:
                    picked[key] = int(value)
                except ValueError:
                    continue
            out[prefix] = picked
        return out

    def _learn(
        self, prefix: str, header: str
    ) -> tuple[str, tuple[str, ...], Callable[[list[str]], tuple[str, ...]], int]:
        names = header.split()
        wanted = self._wanted.get(prefix) if self._wanted is not None else None
        chosen = [(k, i) for i, k in enumerate(names) if wanted is None or k in wanted]
        positions = [i for _, i in chosen]
        layout = (header, tuple(k for k, _ in chosen), _fetcher(positions), len(names))
        self._layouts[prefix] = layout
        return layout


def _fetcher(positions: list[int]) -> Callable[[list[str]], tuple[str, ...]]:
    """Items at ``positions`` as a tuple, at C speed (itemgetter of one is a scalar)."""
    if len(positions) == 1:
        only = positions[0]
        return lambda values: (values[only],)
    if not positions:
        return lambda values: ()
    return itemgetter(*positions)  # type: ignore[return-value]


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """Every value of a ``/proc/net/snmp``-style file as prefix -> key -> value."""
    return SnmpPicker().pick(text)


@dataclass(frozen=True, slots=True)
class ProtoField:
    """One published protocol statistic."""

    metric: str
    prefix: str
    key: str
    help: str
    semantics: Semantics = Semantics.COUNTER


_C, _I = Semantics.COUNTER, Semantics.INSTANT

#: From /proc/net/snmp (Tcp, Udp, Ip) and /proc/net/netstat (TcpExt).
PROTO_FIELDS: tuple[ProtoField, ...] = (
    ProtoField("network.tcp.activeopens", "Tcp", "ActiveOpens",
               "connections opened by this host (SYN_SENT from CLOSED)"),
    ProtoField("network.tcp.passiveopens", "Tcp", "PassiveOpens",
               "connections accepted (SYN_RECV from LISTEN)"),
    ProtoField("network.tcp.attemptfails", "Tcp", "AttemptFails",
               "connection attempts that failed (SYN_SENT/SYN_RECV to CLOSED or LISTEN)"),
    ProtoField("network.tcp.estabresets", "Tcp", "EstabResets",
               "established connections reset (ESTABLISHED/CLOSE_WAIT to CLOSED)"),
    ProtoField("network.tcp.currestab", "Tcp", "CurrEstab",
               "connections in ESTABLISHED or CLOSE_WAIT now", _I),
    ProtoField("network.tcp.insegs", "Tcp", "InSegs", "segments received"),
    ProtoField("network.tcp.outsegs", "Tcp", "OutSegs", "segments sent, excluding retransmits"),
    ProtoField("network.tcp.retranssegs", "Tcp", "RetransSegs", "segments retransmitted"),
    ProtoField("network.tcp.inerrs", "Tcp", "InErrs", "segments received in error"),
    ProtoField("network.tcp.outrsts", "Tcp", "OutRsts", "segments sent with RST"),
    ProtoField("network.tcp.incsumerrors", "Tcp", "InCsumErrors",
               "segments received with a bad checksum"),
    ProtoField("network.tcp.listenoverflows", "TcpExt", "ListenOverflows",
               "connections dropped because a listen queue (accept backlog) was full"),
    ProtoField("network.tcp.listendrops", "TcpExt", "ListenDrops",
               "SYNs to a listening socket dropped, for any reason"),
    ProtoField("network.tcp.timeouts", "TcpExt", "TCPTimeouts",
               "retransmission timeouts (RTO expiries)"),
    ProtoField("network.tcp.synretrans", "TcpExt", "TCPSynRetrans", "SYN and SYN-ACK retransmits"),
    ProtoField("network.tcp.fastretrans", "TcpExt", "TCPFastRetrans",
               "fast retransmits (loss detected by duplicate or selective ACKs)"),
    ProtoField("network.tcp.lostretransmit", "TcpExt", "TCPLostRetransmit",
               "retransmitted segments lost again"),
    ProtoField("network.tcp.syncookiessent", "TcpExt", "SyncookiesSent",
               "SYN cookies sent (SYN queue overflowed)"),
    ProtoField("network.tcp.reqqfulldrop", "TcpExt", "TCPReqQFullDrop",
               "SYNs dropped because the SYN queue was full and cookies were off"),
    ProtoField("network.tcp.backlogdrop", "TcpExt", "TCPBacklogDrop",
               "segments dropped because the socket backlog was full"),
    ProtoField("network.tcp.rcvqdrop", "TcpExt", "TCPRcvQDrop",
               "segments dropped because the receive queue was full"),
    ProtoField("network.tcp.ofoqueue", "TcpExt", "TCPOFOQueue",
               "segments queued out of order"),
    ProtoField("network.tcp.abortontimeout", "TcpExt", "TCPAbortOnTimeout",
               "connections aborted after too many retransmission timeouts"),
    ProtoField("network.tcp.abortondata", "TcpExt", "TCPAbortOnData",
               "connections reset because data arrived after close"),
    ProtoField("network.tcp.abortonclose", "TcpExt", "TCPAbortOnClose",
               "connections reset because closed with unread data"),
    ProtoField("network.tcp.abortonmemory", "TcpExt", "TCPAbortOnMemory",
               "connections aborted for lack of memory"),
    ProtoField("network.tcp.memorypressures", "TcpExt", "TCPMemoryPressures",
               "times TCP entered memory pressure"),
    ProtoField("network.udp.indatagrams", "Udp", "InDatagrams", "UDP datagrams delivered"),
    ProtoField("network.udp.noports", "Udp", "NoPorts",
               "UDP datagrams received for a port nobody listens on"),
    ProtoField("network.udp.inerrors", "Udp", "InErrors",
               "UDP datagrams not delivered for other reasons (buffer full, checksum)"),
    ProtoField("network.udp.outdatagrams", "Udp", "OutDatagrams", "UDP datagrams sent"),
    ProtoField("network.udp.rcvbuferrors", "Udp", "RcvbufErrors",
               "UDP datagrams dropped because a receive buffer was full"),
    ProtoField("network.udp.sndbuferrors", "Udp", "SndbufErrors",
               "UDP datagrams dropped because a send buffer was full"),
    ProtoField("network.udp.incsumerrors", "Udp", "InCsumErrors",
               "UDP datagrams received with a bad checksum"),
    ProtoField("network.ip.inreceives", "Ip", "InReceives", "IP datagrams received"),
    ProtoField("network.ip.inhdrerrors", "Ip", "InHdrErrors",
               "IP datagrams discarded for header errors"),
    ProtoField("network.ip.inaddrerrors", "Ip", "InAddrErrors",
               "IP datagrams discarded for a bad destination address"),
    ProtoField("network.ip.forwdatagrams", "Ip", "ForwDatagrams", "IP datagrams forwarded"),
    ProtoField("network.ip.indiscards", "Ip", "InDiscards",
               "IP datagrams received and discarded (no buffer space)"),
    ProtoField("network.ip.indelivers", "Ip", "InDelivers",
               "IP datagrams delivered to upper layers"),
    ProtoField("network.ip.outrequests", "Ip", "OutRequests",
               "IP datagrams handed down for sending"),
    ProtoField("network.ip.outdiscards", "Ip", "OutDiscards",
               "IP datagrams to send discarded (no buffer space)"),
    ProtoField("network.ip.outnoroutes", "Ip", "OutNoRoutes",
               "IP datagrams discarded for lack of a route"),
    ProtoField("network.ip.reasmfails", "Ip", "ReasmFails", "IP reassembly failures"),
    ProtoField("network.ip.fragfails", "Ip", "FragFails",
               "IP datagrams that needed fragmenting but could not be"),
)


def _wanted(prefixes: tuple[str, ...]) -> dict[str, list[str]]:
    return {prefix: [f.key for f in PROTO_FIELDS if f.prefix == prefix] for prefix in prefixes}


# ---------------------------------------------------------------------------------------
# /proc/net/sockstat


def parse_sockstat(text: str, only: str | None = None) -> dict[str, dict[str, int]]:
    """``/proc/net/sockstat`` as protocol -> key -> value (``only`` that protocol's line).

    Lines are ``PROTO: key value key value ...`` (``TCP: inuse 5 orphan 0 tw 2 alloc 7
    mem 151``). A cut-short last line is dropped; a value that is not an integer is
    skipped.
    """
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    if only is not None:
        start = text.find(f"\n{only}:") + 1
        if start == 0 and not text.startswith(f"{only}:"):
            return {}
        text = text[start : text.find("\n", start) + 1]
    out: dict[str, dict[str, int]] = {}
    for line in text.split("\n"):
        proto, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        values: dict[str, int] = {}
        for key, value in zip(parts[::2], parts[1::2], strict=False):
            try:
                values[key] = int(value)
            except ValueError:
                continue
        out[proto] = values
    return out


#: (metric, ``TCP:`` key of /proc/net/sockstat, help). All of them are per network
#: namespace and cover IPv4 and IPv6 (``inuse`` is IPv4 only, hence not published).
SOCKSTAT_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("network.sockstat.tcp.tw", "tw",
     "TCP timewait sockets: TIME_WAIT, plus orphaned FIN_WAIT2 sockets waiting for the "
     "peer's FIN (IPv4 and IPv6; per second, unlike network.tcpconn.time_wait)"),
    ("network.sockstat.tcp.orphan", "orphan",
     "TCP sockets closed by their process but not yet done (sending or awaiting FIN)"),
    ("network.sockstat.tcp.alloc", "alloc",
     "TCP sockets allocated, in any state but the timewait ones (IPv4 and IPv6)"),
)

# ---------------------------------------------------------------------------------------
# Interface attributes from sysfs

_IFF_UP = 0x1
#: Bytes per second in one Mbit/s (the unit of /sys/class/net/IFACE/speed).
_MBIT = 125_000


@dataclass(slots=True)
class _IfaceAttrs:
    up: int
    mtu: int | None
    speed: int | None
    operstate: str
    up_at: int  # collection when operstate was read
    link_at: int  # collection when mtu and speed were read


#: ``mtu`` and ``speed`` are re-read this many times less often than ``operstate``.
LINK_REFRESH_FACTOR = 12


class NetworkCollector(Collector):
    """``network.interface.*``, ``network.tcp.*``, ``network.udp.*``, ``network.ip.*``,
    ``network.sockstat.tcp.*``.

    Interface attributes: ``operstate`` (hence ``up``) is re-read every
    ``attr_refresh_every`` samples; ``mtu`` and ``speed`` when ``operstate`` changed
    (a link going down or coming up renegotiates its speed) and otherwise every
    ``attr_refresh_every * LINK_REFRESH_FACTOR`` samples (a minute by default). An MTU
    set by hand therefore shows within a minute; everything else within 5 samples.
    """

    name = "network"

    def __init__(self, roots: Roots, *, attr_refresh_every: int = 5,
                 page_size: int | None = None) -> None:
        self.roots = roots
        #: sockstat counts TCP memory in pages of the kernel that printed it.
        self.page_size = page_size or os.sysconf("SC_PAGE_SIZE")
        self.attr_refresh_every = max(1, attr_refresh_every)
        self._attrs: dict[str, _IfaceAttrs] = {}
        # interface -> its operstate and flags files, read through kept descriptors
        self._state_files: dict[str, tuple[KeptFile, KeptFile]] = {}
        # The up/mtu/speed dicts of the last collection, handed out again while no
        # attribute and no interface changed (never mutated once returned).
        self._attr_raw: tuple[dict[str, int | float | str], ...] = ({}, {}, {})
        self._collections = 0
        self._refresh_due = 0  # collection at which some interface's operstate is due
        self._snmp = SnmpPicker(_wanted(("Ip", "Tcp", "Udp")))
        self._netstat = SnmpPicker(_wanted(("TcpExt",)))
        self._dev_metrics = tuple(
            (f"network.interface.{leaf}", col) for leaf, col, _ in DEV_FIELDS
        )
        # prefix -> ((key, metric), ...) in file order: the snmp values to publish
        by_prefix: dict[str, list[tuple[str, str]]] = {}
        for f in PROTO_FIELDS:
            by_prefix.setdefault(f.prefix, []).append((f.key, f.metric))
        self._proto = tuple((prefix, tuple(keys)) for prefix, keys in by_prefix.items())
        proc_net = roots.proc / "net"
        self._dev = KeptFile(proc_net / "dev")
        self._snmp_file = KeptFile(proc_net / "snmp")
        self._netstat_file = KeptFile(proc_net / "netstat")
        self._sockstat = KeptFile(proc_net / "sockstat")
        self._sys_net = str(roots.sys / "class" / "net")

    def descriptors(self) -> list[MetricDesc]:
        kw: dict[str, Any] = {"indom": "network.interface", "labels": ("interface",)}
        descs = [
            counter(f"network.interface.{leaf}", BYTES if leaf.endswith("bytes") else COUNT,
                    help, **kw)
            for leaf, _, help in DEV_FIELDS
        ]
        descs += [
            discrete("network.interface.mtu", BYTES, "maximum transmission unit",
                     type=ValueType.U32, **kw),
            discrete("network.interface.speed", BYTES.rate(),
                     "link speed (absent for virtual devices and links that are down)",
                     **kw),
            instant("network.interface.up", NONE,
                    "1 if the link is up (or state unknown and administratively up), else 0",
                    type=ValueType.U32, **kw),
        ]
        for f in PROTO_FIELDS:
            if f.semantics is Semantics.COUNTER:
                descs.append(counter(f.metric, COUNT, f.help))
            else:
                descs.append(instant(f.metric, COUNT, f.help, type=ValueType.U64))
        descs += [instant(metric, COUNT, help, type=ValueType.U32)
                  for metric, _, help in SOCKSTAT_FIELDS]
        descs.append(instant("network.sockstat.tcp.mem", BYTES,
                             "memory held by TCP socket buffers (the tcp_mem accounting)",
                             type=ValueType.U64))
        return descs

    def may_block(self) -> bool:
        """True for the collections that read interface attributes from sysfs (every
        ``attr_refresh_every``-th, and the one after a new interface appeared).

        ``speed`` is read under the RTNL: the kernel retries the read until it gets
        the lock, which a slow netlink operation (a namespace full of interfaces going
        away) or a wedged driver can hold for seconds. The ``/proc/net`` files, read
        every time, never wait.
        """
        return self._collections + 1 >= self._refresh_due

    def collect(self) -> Raw:
        self._collections += 1
        ifaces = parse_net_dev(self._dev.read().decode("utf-8", "replace"))
        items = ifaces.items()
        raw: Raw = {
            metric: {name: values[col] for name, values in items}
            for metric, col in self._dev_metrics
        }
        self._interface_attrs(ifaces, raw)
        stats = self._snmp.pick(self._snmp_file.read().decode("utf-8", "replace"))
        netstat = self._netstat_file.read_optional()
        if netstat is not None:
            stats.update(self._netstat.pick(netstat.decode("utf-8", "replace")))
        for prefix, fields in self._proto:
            picked = stats.get(prefix)
            if picked:
                for key, metric in fields:
                    value = picked.get(key)
                    if value is not None:
                        raw[metric] = {SINGULAR: value}
        sockstat = self._sockstat.read_optional()
        if sockstat is not None:
            tcp = parse_sockstat(sockstat.decode("utf-8", "replace"), "TCP").get("TCP")
            if tcp:
                for metric, key, _ in SOCKSTAT_FIELDS:
                    value = tcp.get(key)
                    if value is not None:
                        raw[metric] = {SINGULAR: value}
                if "mem" in tcp:
                    raw["network.sockstat.tcp.mem"] = {SINGULAR: tcp["mem"] * self.page_size}
        return raw

    def close(self) -> None:
        for kept in (self._dev, self._snmp_file, self._netstat_file, self._sockstat):
            kept.close()
        for files in self._state_files.values():
            for kept in files:
                kept.close()

    def _interface_attrs(self, ifaces: Mapping[str, object], raw: Raw) -> None:
        now = self._collections
        every = self.attr_refresh_every
        known = self._attrs
        changed = known.keys() != ifaces.keys()
        if now < self._refresh_due:
            if changed:
                # Between refreshes sysfs is not read (see may_block): an interface that
                # went away drops out now, a new one gets its attributes at the next
                # collection, which may_block announces.
                self._attrs = {name: a for name, a in known.items() if name in ifaces}
                if not ifaces.keys() <= known.keys():
                    self._refresh_due = now + 1
                self._close_gone()
        else:
            attrs: dict[str, _IfaceAttrs] = {}
            for name in ifaces:
                cached = known.get(name)
                if cached is None or now - cached.up_at >= every:
                    cached = self._read_attrs(name, cached, now)
                    changed = True
                    if cached is None:
                        continue  # no sysfs, or the interface went away since /proc/net/dev
                attrs[name] = cached
            self._attrs = attrs
            self._refresh_due = min((c.up_at for c in attrs.values()), default=now) + every
            self._close_gone()
        if changed:
            up: dict[str, int | float | str] = {}
            mtu: dict[str, int | float | str] = {}
            speed: dict[str, int | float | str] = {}
            for name, cached in self._attrs.items():
                up[name] = cached.up
                if cached.mtu is not None:
                    mtu[name] = cached.mtu
                if cached.speed is not None:
                    speed[name] = cached.speed
            self._attr_raw = (up, mtu, speed)
        up, mtu, speed = self._attr_raw
        raw["network.interface.up"] = up
        raw["network.interface.mtu"] = mtu
        raw["network.interface.speed"] = speed

    def _close_gone(self) -> None:
        """Close the kept sysfs files of interfaces no longer in :attr:`_attrs`."""
        for gone in self._state_files.keys() - self._attrs.keys():
            for kept in self._state_files.pop(gone):
                kept.close()

    def _read_attrs(self, name: str, cached: _IfaceAttrs | None, now: int) -> _IfaceAttrs | None:
        path = Path(self._sys_net, name)
        files = self._state_files.get(name)
        if files is None:
            # operstate (and flags) are read every few samples: through kept
            # descriptors, as a sysfs open walks the class symlink into the device tree
            # (2.7 us opened, read and closed against 0.5 us read again, hot, here). A
            # descriptor of an interface that went away fails (ENODEV) and is dropped;
            # the files of one gone from /proc/net/dev are closed.
            files = self._state_files[name] = (KeptFile(path / "operstate"),
                                               KeptFile(path / "flags"))
        data = files[0].read_optional()
        if data is None:
            return None
        operstate = data.decode("utf-8", "replace").strip()
        up = 1 if operstate == "up" else 0
        if operstate == "unknown":
            flags_data = files[1].read_optional()
            flags = _to_int(None if flags_data is None else flags_data.decode("ascii", "replace"),
                            16)
            up = 1 if flags is not None and flags & _IFF_UP else 0
        if (
            cached is not None
            and cached.operstate == operstate
            and now - cached.link_at < self.attr_refresh_every * LINK_REFRESH_FACTOR
        ):
            cached.up = up
            cached.up_at = now
            return cached
        mbit = _to_int(read_optional(path / "speed"))
        return _IfaceAttrs(
            up=up,
            mtu=_to_int(read_optional(path / "mtu")),
            # -1 (unknown) on virtual devices; old kernels printed it as 4294967295
            speed=mbit * _MBIT if mbit is not None and 0 < mbit < 0xFFFFFFFF else None,
            operstate=operstate,
            up_at=now,
            link_at=now,
        )


def _to_int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip(), base)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------
# TCP connection states

#: include/net/tcp_states.h order: state number -> metric leaf (index 0 unused).
TCP_STATES: tuple[str, ...] = (
    "", "established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait",
    "close", "close_wait", "last_ack", "listen", "closing",
)
#: TCP_NEW_SYN_RECV (12): a request socket (half-open connection), shown as syn_recv.
_NEW_SYN_RECV = 12
_NSTATES = 13
_TCP_READ_LIMIT = 1 << 30


def parse_proc_tcp(data: bytes) -> list[int]:
    """Socket counts by state number (0..12) from ``/proc/net/tcp`` or ``tcp6``.

    Only the state column (the 4th, two hex digits) is read: by :func:`states_by_stride`
    when every line has the same layout (always for ``tcp`` below 10,000 sockets, since
    the kernel pads its lines to 149 characters), else by :func:`states_by_line`. A
    cut-short last line is dropped.
    """
    header_end = data.find(b"\n") + 1
    body = data[header_end:] if header_end > 0 else b""
    if body and not body.endswith(b"\n"):
        body = body[: body.rfind(b"\n") + 1]
    counts = states_by_stride(body)
    return counts if counts is not None else states_by_line(body)


def states_by_stride(body: bytes) -> list[int] | None:
    """State counts of equal-length lines by one stride slice, or None if not uniform.

    When every line is ``width`` bytes long and the state field starts at the same
    ``offset`` in each, ``body[offset + 1 :: width]`` is the low hex digit of every
    socket's state (the high digit is always 0), and ``bytes.count`` tallies them: no
    Python code runs per socket. The layout is verified first (newline at the end of
    every line, spaces around the field, a 0 high digit in every line); anything else,
    such as the slot number widening from 4 to 5 digits at the 10,000th socket, fails
    the check and returns None.
    """
    width = body.find(b"\n") + 1
    if width <= 0:
        return [0] * _NSTATES if not body else None
    lines = len(body) // width
    fields = body[:width].split(None, 4)
    if len(fields) < 4 or len(fields[3]) != 2 or len(body) != lines * width:
        return None
    offset = body.find(b" " + fields[3] + b" ", 0, width) + 1
    if not (
        offset > 0
        and body[width - 1 :: width].count(b"\n") == lines
        and body[offset - 1 :: width].count(b" ") == lines
        and body[offset + 2 :: width].count(b" ") == lines
        and body[offset::width].count(b"0") == lines
    ):
        return None
    digits = body[offset + 1 :: width]
    counts = [digits.count(char) for char in b"0123456789ABC"]
    return counts if sum(counts) == lines else None


def states_by_line(body: bytes) -> list[int]:
    """State counts by splitting each line (any layout); malformed lines are skipped."""
    counts = [0] * _NSTATES
    for line in body.split(b"\n"):
        parts = line.split(None, 4)
        if len(parts) < 4:
            continue
        try:
            state = int(parts[3], 16)
        except ValueError:
            continue
        if 0 < state < _NSTATES:
            counts[state] += 1
    return counts


# netlink / inet_diag constants (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h)
NETLINK_SOCK_DIAG = 4  # the same protocol number as NETLINK_INET_DIAG
#: The legacy inet_diag request type for TCP (answered by the kernel's compat path).
TCPDIAG_GETSOCK = 18
SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLMSG_HDR = struct.Struct("=IHHII")
#: length, type, flags, seq (the pid is never read)
_NLMSG_HDR_PREFIX = struct.Struct("=IHHI")
#: inet_diag_req_v2: family, protocol, ext, pad, states bitmask, inet_diag_sockid (48)
_INET_DIAG_REQ = struct.Struct("=BBBxI48x")
#: inet_diag_req (v1): family, src_len, dst_len, ext, inet_diag_sockid (48), states, dbs
_INET_DIAG_REQ_V1 = struct.Struct("=BBBB48xII")
_ALL_STATES = 0xFFFFFFFF
_LISTEN = 10
_RECV_BUF = 1 << 17


class SockDiagError(OSError):
    """The kernel answered a dump request with NLMSG_ERROR (the dump is over)."""


def parse_sock_diag(
    data: bytes | bytearray, counts: list[int], *, kind: int = SOCK_DIAG_BY_FAMILY,
    seq: int | None = None, end: int | None = None,
) -> bool:
    """Add the states of one buffer of inet_diag replies to ``counts``.

    Returns True once the dump's NLMSG_DONE is seen. Each message is an ``nlmsghdr``
    (16 bytes) followed by ``inet_diag_msg``, whose second byte is the socket state;
    nothing else is read. ``kind`` is the reply type to count (the request's type:
    ``SOCK_DIAG_BY_FAMILY``, or ``TCPDIAG_GETSOCK`` for the one-walk request); with
    ``seq``, messages of another dump (left over from one abandoned on a timeout) are
    skipped. ``end`` limits the parse to ``data[:end]`` (a reused receive buffer).
    Raises :class:`SockDiagError` (an OSError) for an NLMSG_ERROR reply.
    """
    offset = 0
    if end is None:
        end = len(data)
    unpack = _NLMSG_HDR_PREFIX.unpack_from
    # States are gathered in a bytearray and tallied once per buffer: a host with
    # thousands of sockets (7,000 in TIME_WAIT during a load test here) sends that many
    # replies per walk, and this loop is the Python cost of each (0.2 us, against 0.17 us
    # of kernel time); the common case, a reply of this dump, is tested first.
    states = bytearray()
    put = states.append
    try:
        while offset + 16 <= end:
            length, msg_kind, _, msg_seq = unpack(data, offset)
            if msg_kind == kind and (seq is None or msg_seq == seq) and length >= 18:
                put(data[offset + 17])
            elif length < 16:
                break  # malformed: never loop forever
            elif seq is None or msg_seq == seq:
                if msg_kind == _NLMSG_DONE:
                    return True
                if msg_kind == _NLMSG_ERROR:
                    if length < 20 or offset + 20 > end:
                        # A truncated error reply is still the end of this dump.
                        raise SockDiagError(errno.EPROTO,
                                            "sock_diag dump failed: truncated error")
                    (err,) = struct.unpack_from("=i", data, offset + 16)
                    raise SockDiagError(-err, f"sock_diag dump failed: {os.strerror(-err)}")
            offset += (length + 3) & ~3
        return False
    finally:
        for state in range(_NSTATES):
            counts[state] += states.count(state)


def _dump(sock: socket.socket, kind: int, request: bytes, seq: int,
          buf: bytearray) -> list[int]:
    counts = [0] * _NSTATES
    header = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(request), kind,
                             _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
    sock.sendall(header + request)
    while not parse_sock_diag(buf, counts, kind=kind, seq=seq, end=sock.recv_into(buf)):
        pass
    return counts


def _diag_socket(timeout_s: float) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                         NETLINK_SOCK_DIAG)
    sock.settimeout(timeout_s)
    return sock


def sock_diag_states(family: int, *, timeout_s: float = 2.0) -> list[int]:
    """TCP socket counts by state for one address family from a NETLINK_SOCK_DIAG dump.

    Counts sockets of this process's network namespace, like ``/proc/self/net/tcp``.
    One call is one walk of the TCP hash table; :class:`TcpStateDump` counts both
    families in one.
    """
    with _diag_socket(timeout_s) as sock:
        request = _INET_DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, _ALL_STATES)
        return _dump(sock, SOCK_DIAG_BY_FAMILY, request, 1, bytearray(_RECV_BUF))


class TcpStateDump:
    """TCP socket counts by state, IPv4 and IPv6, from inet_diag: one hash walk if possible.

    Every dump walks the whole TCP established hash (IPv4 and IPv6 share it), which
    costs about 0.27 ms here however few sockets exist. The ``SOCK_DIAG_BY_FAMILY``
    request names one family, so counting both takes two walks. The legacy
    ``TCPDIAG_GETSOCK`` request (``inet_diag_req`` v1) is answered by the kernel's
    compat path, which sets the family to ``AF_UNSPEC`` and reports both families in
    a single walk: half the cost (measured 268 us against 553 us for the two
    per-family dumps on this 6.18 kernel, with identical counts). No extensions are
    requested and only each reply's state byte is read.

    ``mode`` is ``"one walk"`` or ``"per family"``. The one-walk request is checked
    on first use against the per-family requests (the listening sockets they count
    must agree); if the kernel refuses the request or the check fails, the dump uses
    the per-family requests from then on and says why in :attr:`note`. The netlink socket
    stays open between calls; a dump abandoned half way (a timeout) closes it, so a
    late reply can never be counted in the next dump.
    """

    def __init__(self, *, timeout_s: float = 2.0, one_walk: bool = True) -> None:
        self.timeout_s = timeout_s
        self.mode = "one walk" if one_walk else "per family"
        self.note: str | None = None
        self._sock: socket.socket | None = None
        self._seq = 0
        self._buf = bytearray(_RECV_BUF)
        self._checked = not one_walk

    def __call__(self) -> list[int]:
        if self.mode == "one walk":
            try:
                if not self._checked:
                    self._checked = True
                    problem = self._check_one_walk()
                    if problem is not None:
                        self.mode = "per family"
                        self.note = problem
                        return self.per_family()
                return self._request(TCPDIAG_GETSOCK, self.one_walk_request())
            except SockDiagError as exc:
                self.mode = "per family"
                self.note = f"the one-walk TCPDIAG_GETSOCK request was refused: {exc}"
        return self.per_family()

    def one_walk_request(self, states: int = _ALL_STATES) -> bytes:
        """The ``inet_diag_req`` (v1) payload: any family, ``states``, no extensions."""
        return _INET_DIAG_REQ_V1.pack(0, 0, 0, 0, states, 0)

    def _check_one_walk(self) -> str | None:
        """None if the one-walk request covers both families, else what disagreed.

        Compares listening sockets, counted by the one-walk request and by one request
        per family. Listening-only dumps skip the established hash, so this costs
        microseconds; it is tried three times, because another process may open or
        close a listener between the dumps.
        """
        listen = 1 << _LISTEN
        one = per_family = 0
        for _ in range(3):
            one = self._request(TCPDIAG_GETSOCK, self.one_walk_request(listen))[_LISTEN]
            per_family = sum(
                self._request(SOCK_DIAG_BY_FAMILY,
                              _INET_DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, listen))[_LISTEN]
                for family in (socket.AF_INET, socket.AF_INET6)
            )
            if one == per_family:
                return None
        return (f"the one-walk request saw {one} listening sockets, the per-family "
                f"requests {per_family}")

    def per_family(self) -> list[int]:
        """Counts from one ``SOCK_DIAG_BY_FAMILY`` dump per family (two walks)."""
        v4 = self._request(SOCK_DIAG_BY_FAMILY,
                           _INET_DIAG_REQ.pack(socket.AF_INET, socket.IPPROTO_TCP, 0,
                                               _ALL_STATES))
        v6 = self._request(SOCK_DIAG_BY_FAMILY,
                           _INET_DIAG_REQ.pack(socket.AF_INET6, socket.IPPROTO_TCP, 0,
                                               _ALL_STATES))
        return [a + b for a, b in zip(v4, v6, strict=True)]

    def _request(self, kind: int, request: bytes) -> list[int]:
        if self._sock is None:
            self._sock = _diag_socket(self.timeout_s)
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        try:
            return _dump(self._sock, kind, request, self._seq, self._buf)
        except SockDiagError:
            raise  # the kernel ended the dump with an error: nothing is left to read
        except OSError:
            self.close()  # the socket may hold the rest of an abandoned dump
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class TcpConnCollector(Collector):
    """``network.tcpconn.*``: TCP sockets by state, IPv4 and IPv6 together.

    ``source`` is ``"netlink"`` (inet_diag, see :class:`TcpStateDump`), ``"proc"``
    (``/proc/net/tcp`` and ``tcp6`` under ``roots``) or ``"auto"``: netlink when
    ``roots.proc`` is the live ``/proc`` (netlink always reports the live kernel, never
    a captured tree), else the files. If netlink fails (address family blocked by
    seccomp or systemd's ``RestrictAddressFamilies``), the collector switches to the
    files for good and says why in :attr:`fallback_reason`; a timeout fails only that
    collection. ``dump_states`` (no arguments -> counts by state number, both
    families) is injectable so that the fallback can be tested.

    Cadence. Counting by state costs one walk of the TCP hash table, for any states
    asked for but LISTEN alone: ~0.27 ms on an idle host when first measured, 1.1-1.9 ms on the
    same VM since (about 4 ns a bucket; docs/metrics.md), plus about 0.25-0.65 us per
    socket, so it runs every ``interval_s`` = 5 s by default (0.05-0.4 ms per second
    amortised; a proxy with 100,000 sockets pays some 30-65 ms per walk). What that
    costs in resolution, and what stays per second: the network collector publishes
    every second, from counters the kernel keeps anyway,
    ``network.tcp.currestab`` (ESTABLISHED + CLOSE_WAIT exactly, both families) and
    ``network.sockstat.tcp.tw`` (TIME_WAIT plus orphaned FIN_WAIT2 sockets, which the
    kernel also keeps as timewait minisockets: equal to ``time_wait`` unless closers
    are waiting for their peer's FIN). Neither separates ESTABLISHED from CLOSE_WAIT
    or FIN_WAIT2 from TIME_WAIT, so the exact per-state split is this collector's, at
    its cadence; pass ``interval_s=1`` for it every second (the whole walk every
    second).
    """

    name = "tcpconn"
    _names: tuple[tuple[int, str], ...] = tuple(
        (state, f"network.tcpconn.{leaf}") for state, leaf in enumerate(TCP_STATES) if state
    )

    def __init__(
        self,
        roots: Roots,
        *,
        source: str = "auto",
        interval_s: float = 5.0,
        dump_states: Callable[[], list[int]] | None = None,
    ) -> None:
        if source not in ("auto", "netlink", "proc"):
            raise ValueError(f"source must be auto, netlink or proc, not {source!r}")
        self.roots = roots
        self.dump_states: Callable[[], list[int]] = dump_states or TcpStateDump()
        self.interval_s = interval_s
        if source == "auto":
            source = "netlink" if roots.proc == Path("/proc") else "proc"
        self.source = source
        self.fallback_reason: str | None = None

    def descriptors(self) -> list[MetricDesc]:
        return [
            instant(f"network.tcpconn.{leaf}", COUNT,
                    f"TCP sockets in state {leaf.upper()} (IPv4 and IPv6)", type=ValueType.U32)
            for leaf in TCP_STATES[1:]
        ]

    def states(self) -> list[int]:
        """Counts by state number, from the configured source."""
        if self.source == "netlink":
            try:
                return self.dump_states()
            except TimeoutError:
                raise
            except OSError as exc:
                # Netlink is an optimisation: the files give the same counts.
                self.source = "proc"
                self.fallback_reason = f"sock_diag unavailable: {exc}"
                self.close()
        net = self.roots.proc / "net"
        counts = parse_proc_tcp(read_bytes(net / "tcp", limit=_TCP_READ_LIMIT))
        v6 = read_optional_bytes(net / "tcp6")
        if v6 is not None:
            counts = [a + b for a, b in zip(counts, parse_proc_tcp(v6), strict=True)]
        return counts

    def collect(self) -> Raw:
        counts = self.states()
        counts[3] += counts[_NEW_SYN_RECV]
        return {name: {SINGULAR: counts[state]} for state, name in self._names}

    def close(self) -> None:
        close = getattr(self.dump_states, "close", None)
        if close is not None:
            close()


def read_optional_bytes(path: Path) -> bytes | None:
    """Bytes of a file that may be absent (``tcp6`` without IPv6), without a size cap.

    ``/proc/net/tcp`` holds 150 bytes per socket: the default 4 MiB read limit would
    silently drop every socket after the 28,000th.
    """
    try:
        return read_bytes(path, limit=_TCP_READ_LIMIT)
    except SourceUnavailable:
        return None
