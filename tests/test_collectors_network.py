"""Network collectors over captured and crafted trees, and against the live machine.

Crafted tables of TCP sockets are generated with the kernel's own line formats by
tests/fixtures/network/capture.py (imported here for the large ones).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import resource
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostscope.metrics.collector import Raw
from hostscope.metrics.collectors.network import (
    LINK_REFRESH_FACTOR,
    NETLINK_SOCK_DIAG,
    SOCK_DIAG_BY_FAMILY,
    TCP_STATES,
    TCPDIAG_GETSOCK,
    NetworkCollector,
    SnmpPicker,
    SockDiagError,
    TcpConnCollector,
    TcpStateDump,
    parse_net_dev,
    parse_proc_tcp,
    parse_snmp,
    parse_sock_diag,
    parse_sockstat,
    sock_diag_states,
    states_by_line,
    states_by_stride,
)
from hostscope.metrics.model import SINGULAR, MetricRegistry, Semantics
from hostscope.metrics.sampler import Sampler
from hostscope.metrics.sources import Roots
from tests.support import FIXTURES, FakeClock, copy_fixture, fixture_roots


def _load_fixture_builder() -> ModuleType:
    """tests/fixtures/network/capture.py, imported under a name of its own."""
    path = FIXTURES / "network" / "capture.py"
    spec = importlib.util.spec_from_file_location("hostscope_network_fixture_builder", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_builder = _load_fixture_builder()
CRAFTED_TCP4: list[tuple[int, int]] = _builder.CRAFTED_TCP4
CRAFTED_TCP6: list[tuple[int, int]] = _builder.CRAFTED_TCP6
tcp4_line: Callable[..., str] = _builder.tcp4_line
tcp4_table: Callable[[list[tuple[int, int]]], str] = _builder.tcp4_table

CRAFTED = FIXTURES / "network" / "crafted"


def body_of(data: bytes) -> bytes:
    return data[data.find(b"\n") + 1 :]


# --- /proc/net/dev ---------------------------------------------------------------------


def test_parse_net_dev_old_layout_and_cut_short_lines() -> None:
    ifaces = parse_net_dev((CRAFTED / "proc/net/dev").read_text())
    assert set(ifaces) == {"lo", "eth0", "veth1a2b3c4", "wlan0", "tun0", "docker0"}  # not bond0
    # "eth0:1234567890 ..." (no space after the colon, as older kernels printed)
    assert ifaces["eth0"] == (1234567890, 1000000, 1, 2, 3, 4, 0, 5,
                              987654321, 900000, 6, 7, 8, 9, 10, 0)
    assert parse_net_dev("") == {}
    text = (CRAFTED / "proc/net/dev").read_text()
    assert "docker0" not in parse_net_dev(text[: text.index("docker0") + 12])


# --- /proc/net/snmp and netstat ---------------------------------------------------------


def test_parse_snmp_zips_each_pair() -> None:
    stats = parse_snmp((CRAFTED / "proc/net/snmp").read_text())
    assert stats["Tcp"]["MaxConn"] == -1
    assert stats["Tcp"]["CurrEstab"] == 7
    assert stats["IcmpMsg"] == {"InType3": 3, "OutType3": 3}
    assert stats["UdpLite"] == {"InDatagrams": 0, "NoPorts": 0, "InErrors": 0}  # short line
    live = parse_snmp((FIXTURES / "network/live/proc/net/netstat").read_text())
    assert "TCPTimeouts" in live["TcpExt"] and "InOctets" in live["IpExt"]


def test_snmp_picker_converts_only_wanted_and_relearns_a_new_layout() -> None:
    picker = SnmpPicker({"Tcp": ["ActiveOpens", "RetransSegs"]})
    text = "Tcp: A ActiveOpens RetransSegs\nTcp: 1 2 3\nUdp: X\nUdp: 9\n"
    assert picker.pick(text) == {"Tcp": {"ActiveOpens": 2, "RetransSegs": 3}}
    moved = "Tcp: RetransSegs B ActiveOpens C\nTcp: 30 0 20 0\n"
    assert picker.pick(moved) == {"Tcp": {"ActiveOpens": 20, "RetransSegs": 30}}
    # cut short: the unterminated value line is dropped, not misread
    assert picker.pick("Tcp: A ActiveOpens RetransSegs\nTcp: 1 2 3") == {}
    # a value that is not a number is skipped, the others kept
    assert picker.pick("Tcp: A ActiveOpens RetransSegs\nTcp: 1 x 3\n") == {
        "Tcp": {"RetransSegs": 3}}


# --- the collector over crafted and captured trees --------------------------------------


def test_collect_crafted_tree() -> None:
    collector = NetworkCollector(fixture_roots("network", "crafted"))
    raw = collector.collect()
    assert set(raw) <= {d.name for d in collector.descriptors()}
    assert raw["network.interface.in.bytes"]["eth0"] == 1234567890
    assert raw["network.interface.out.carrier"]["eth0"] == 10
    assert raw["network.interface.in.mcasts"]["eth0"] == 5
    assert raw["network.interface.mtu"] == {"lo": 65536, "eth0": 9000, "veth1a2b3c4": 1500,
                                            "wlan0": 1500, "tun0": 1500, "docker0": 1500}
    # 10000 Mbit/s in bytes/s; -1, 4294967295 and unreadable speeds are absent
    assert raw["network.interface.speed"] == {"eth0": 1_250_000_000}
    assert raw["network.interface.up"] == {"lo": 1, "eth0": 1, "veth1a2b3c4": 1,
                                           "wlan0": 0, "tun0": 0, "docker0": 0}
    one = {k: v[SINGULAR] for k, v in raw.items() if SINGULAR in v}
    assert one["network.tcp.activeopens"] == 100
    assert one["network.tcp.currestab"] == 7
    assert one["network.tcp.listenoverflows"] == 12
    assert one["network.tcp.listendrops"] == 13
    assert one["network.tcp.timeouts"] == 16
    assert one["network.tcp.synretrans"] == 24
    assert one["network.udp.rcvbuferrors"] == 1
    assert one["network.ip.fragfails"] == 8
    # keys this (older) kernel does not print are absent, not zero
    for absent in ("network.tcp.incsumerrors", "network.udp.incsumerrors",
                   "network.tcp.reqqfulldrop", "network.tcp.rcvqdrop"):
        assert absent not in raw
    assert one["network.sockstat.tcp.tw"] == 57
    assert one["network.sockstat.tcp.orphan"] == 3
    assert one["network.sockstat.tcp.alloc"] == 40
    assert one["network.sockstat.tcp.mem"] == 19 * collector.page_size


def test_parse_sockstat_and_a_missing_file(tmp_path: Path) -> None:
    text = (CRAFTED / "proc/net/sockstat").read_text()
    parsed = parse_sockstat(text)
    assert parsed["TCP"] == {"inuse": 12, "orphan": 3, "tw": 57, "alloc": 40, "mem": 19}
    assert parsed["FRAG"] == {"inuse": 0, "memory": 0}
    cut = text[: text.index("tw 57") + 4]  # "... tw 5": the last line is not trusted
    assert "TCP" not in parse_sockstat(cut)
    assert parse_sockstat("TCP: inuse x tw 2\n")["TCP"] == {"tw": 2}
    assert parse_sockstat(text, "TCP") == {"TCP": parsed["TCP"]}
    assert parse_sockstat(text, "UDP") == {"UDP": parsed["UDP"]}
    assert parse_sockstat(text, "sockets") == {"sockets": parsed["sockets"]}
    assert parse_sockstat(text, "TCP6") == {} and parse_sockstat(cut, "TCP") == {}
    roots = copy_fixture(tmp_path, "network", "crafted")
    (roots.proc / "net/sockstat").unlink()
    raw = NetworkCollector(roots, page_size=4096).collect()
    assert not any(name.startswith("network.sockstat") for name in raw)


def test_semantics() -> None:
    descs = {d.name: d for d in NetworkCollector(Roots()).descriptors()}
    assert descs["network.tcp.currestab"].semantics is Semantics.INSTANT
    assert descs["network.tcp.retranssegs"].semantics is Semantics.COUNTER
    assert descs["network.interface.in.bytes"].units.kind == "bytes"
    assert descs["network.interface.speed"].units == descs["network.interface.in.bytes"].value_units


def test_no_netstat_file(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "network", "crafted")
    (roots.proc / "net/netstat").unlink()
    raw = NetworkCollector(roots).collect()
    assert "network.tcp.timeouts" not in raw
    assert raw["network.tcp.activeopens"] == {SINGULAR: 100}


def test_collect_captured_live_tree() -> None:
    raw = NetworkCollector(fixture_roots("network", "live")).collect()
    assert "lo" in raw["network.interface.in.bytes"]
    assert raw["network.interface.up"]["lo"] == 1
    assert "lo" not in raw["network.interface.speed"]
    assert "network.tcp.outtransmits" not in raw
    assert {"network.tcp.insegs", "network.udp.indatagrams", "network.ip.inreceives"} <= set(raw)
    assert raw["network.sockstat.tcp.alloc"][SINGULAR] >= raw["network.tcp.currestab"][SINGULAR]


# --- through a real Sampler -------------------------------------------------------------


def _set_dev(roots: Roots, iface: str, values: list[int]) -> None:
    path = roots.proc / "net/dev"
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.partition(":")[0].strip() == iface:
            lines[i] = f"{iface}: " + " ".join(map(str, values))
    path.write_text("\n".join(lines) + "\n")


def test_rates_wraps_resets_and_vanishing_interfaces(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "network", "crafted")
    clock = FakeClock()
    sampler = Sampler([NetworkCollector(roots)], registry=MetricRegistry(), clock=clock)
    _set_dev(roots, "veth1a2b3c4", [2**64 - 1000] + [0] * 15)
    sampler.sample()
    # eth0 +2 MB in and +1000 packets over 2 s; veth wraps its 64-bit byte counter;
    # tun0 was recreated (counters back to small values); wlan0 disappears.
    _set_dev(roots, "eth0", [1234567890 + 2_000_000, 1001000, 1, 2, 3, 4, 0, 5,
                             987654321, 900000, 6, 7, 8, 9, 10, 0])
    _set_dev(roots, "veth1a2b3c4", [3000] + [0] * 15)
    _set_dev(roots, "tun0", [5] + [0] * 15)
    path = roots.proc / "net/dev"
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if "wlan0" not in line))
    snmp = roots.proc / "net/snmp"
    snmp.write_text(snmp.read_text().replace("Tcp: 1 200 120000 -1 100 200 3 4 7 10000 9000 50",
                                             "Tcp: 1 200 120000 -1 110 200 3 4 9 10000 9000 70"))
    clock.advance(2.0)
    c = sampler.sample().groups["network"].cooked
    assert c["network.interface.in.bytes"]["eth0"] == pytest.approx(1_000_000.0)
    assert c["network.interface.in.packets"]["eth0"] == pytest.approx(500.0)
    assert c["network.interface.in.bytes"]["veth1a2b3c4"] == pytest.approx(2000.0)
    assert c["network.interface.in.bytes"]["tun0"] is None
    assert "wlan0" not in c["network.interface.in.bytes"]
    assert "wlan0" not in c["network.interface.up"]
    assert c["network.tcp.activeopens"][SINGULAR] == pytest.approx(5.0)
    assert c["network.tcp.retranssegs"][SINGULAR] == pytest.approx(10.0)
    assert c["network.tcp.currestab"][SINGULAR] == 9  # instant: passed through


def test_interface_attributes_refresh_every_n_samples(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "network", "crafted")
    collector = NetworkCollector(roots, attr_refresh_every=3)
    assert collector.collect()["network.interface.up"]["eth0"] == 1
    eth0 = roots.sys / "class/net/eth0"
    (eth0 / "operstate").write_text("down\n")
    (eth0 / "speed").write_text("-1\n")
    assert collector.collect()["network.interface.up"]["eth0"] == 1  # cached
    assert collector.collect()["network.interface.up"]["eth0"] == 1
    raw = collector.collect()  # 3 samples after the first read
    assert raw["network.interface.up"]["eth0"] == 0
    assert "eth0" not in raw["network.interface.speed"]  # re-read: operstate changed


def test_sysfs_is_read_only_in_collections_that_may_block_announces(tmp_path: Path) -> None:
    """The daemon runs a collection whose collectors all say they cannot block on its
    event loop, so sysfs (``speed`` waits for the RTNL) is read only in the collections
    ``may_block`` announced: every ``attr_refresh_every``-th, and the one after a new
    interface appeared, which gets its attributes then."""
    roots = copy_fixture(tmp_path, "network", "crafted")
    collector = NetworkCollector(roots, attr_refresh_every=3)
    real_read_attrs = collector._read_attrs
    announced: list[bool] = []
    reads: list[int] = []

    def read_attrs(*args: object) -> object:
        reads.append(len(announced))
        return real_read_attrs(*args)  # type: ignore[arg-type]

    collector._read_attrs = read_attrs  # type: ignore[method-assign]

    def collect() -> Raw:
        announced.append(collector.may_block())
        return collector.collect()

    assert "eth0" in collect()["network.interface.speed"]
    assert [collect() for _ in range(2)] and announced == [True, False, False]
    # A new interface between refreshes: counters at once, attributes a collection later
    dev = roots.proc / "net/dev"
    dev.write_text(dev.read_text() + "  eth9: " + " ".join(["7"] * 16) + "\n")
    shutil.copytree(roots.sys / "class/net/eth0", roots.sys / "class/net/eth9")
    assert collector.may_block()  # the regular refresh (3rd after the first) is due
    raw = collect()
    assert raw["network.interface.up"]["eth9"] == 1
    assert collect() and announced[-1] is False
    before = len(reads)
    dev.write_text(dev.read_text() + "  eth8: " + " ".join(["7"] * 16) + "\n")
    shutil.copytree(roots.sys / "class/net/eth0", roots.sys / "class/net/eth8")
    raw = collect()
    assert not announced[-1] and len(reads) == before
    assert raw["network.interface.in.bytes"]["eth8"] == 7
    assert "eth8" not in raw["network.interface.up"]
    assert collector.may_block()
    raw = collect()
    assert raw["network.interface.up"]["eth8"] == 1 and "eth8" in raw["network.interface.speed"]
    # every sysfs read happened in a collection announced as one that may block
    assert all(announced[i - 1] for i in reads)


def test_mtu_and_speed_are_re_read_less_often_and_returned_dicts_never_change(
    tmp_path: Path,
) -> None:
    roots = copy_fixture(tmp_path, "network", "crafted")
    collector = NetworkCollector(roots, attr_refresh_every=2)
    first = collector.collect()
    up_before = dict(first["network.interface.up"])
    eth0 = roots.sys / "class/net/eth0"
    (eth0 / "mtu").write_text("1400\n")
    (eth0 / "operstate").write_text("down\n")
    link_every = 2 * LINK_REFRESH_FACTOR
    seen = [collector.collect() for _ in range(link_every)]
    # operstate and up within 2 samples; the MTU only at the slower link refresh,
    # except that the operstate change made it re-read at once here
    assert seen[1]["network.interface.up"]["eth0"] == 0
    assert seen[1]["network.interface.mtu"]["eth0"] == 1400
    (eth0 / "mtu").write_text("1300\n")
    more = [collector.collect() for _ in range(link_every)]
    mtus = [raw["network.interface.mtu"]["eth0"] for raw in more]
    # read at the 3rd collection, due again 24 later: the new MTU shows from then on
    assert mtus == sorted(mtus, reverse=True) and mtus[-1] == 1300
    assert 1 <= mtus.count(1400) <= 2
    # a dict handed out is never changed afterwards (the rate layer keeps them)
    assert first["network.interface.up"] == up_before


# --- TCP connection states --------------------------------------------------------------


def _expected(spec: list[tuple[int, int]]) -> list[int]:
    counts = [0] * 13
    for state, n in spec:
        counts[state] += n
    return counts


def test_tcp4_uses_the_stride_path_and_agrees_with_the_line_path() -> None:
    data = (CRAFTED / "proc/net/tcp").read_bytes()
    body = body_of(data)
    assert len(data) % 150 == 0  # the kernel's padded layout
    assert states_by_stride(body) == states_by_line(body) == _expected(CRAFTED_TCP4)
    assert parse_proc_tcp(data) == _expected(CRAFTED_TCP4)


def test_tcp6_lines_of_varying_length_take_the_line_path() -> None:
    data = (CRAFTED / "proc/net/tcp6").read_bytes()
    assert states_by_stride(body_of(data)) is None
    assert parse_proc_tcp(data) == _expected(CRAFTED_TCP6)


def test_more_than_9999_sockets_widen_the_slot_column() -> None:
    spec = [(0x01, 6000), (0x06, 4050)]
    data = tcp4_table(spec).encode()
    assert b"10000: " in data
    assert states_by_stride(body_of(data)) is None
    assert parse_proc_tcp(data) == _expected(spec)


def test_cut_short_and_garbage_tcp_lines() -> None:
    data = tcp4_table([(0x01, 3)]).encode()
    assert parse_proc_tcp(data[:-40]) == _expected([(0x01, 2)])
    odd = data + tcp4_line(3, 0x01).replace(" 01 ", " ZZ ").encode()
    assert parse_proc_tcp(odd) == _expected([(0x01, 3)])
    assert parse_proc_tcp(b"") == [0] * 13
    assert parse_proc_tcp(data[: data.find(b"\n") + 1]) == [0] * 13


def test_new_syn_recv_counts_as_syn_recv_and_state_names() -> None:
    data = tcp4_table([(0x0C, 2), (0x03, 1)]).encode()
    assert parse_proc_tcp(data)[12] == 2
    assert TCP_STATES[10] == "listen" and TCP_STATES[6] == "time_wait"


def test_tcpconn_from_crafted_files(tmp_path: Path) -> None:
    roots = copy_fixture(tmp_path, "network", "crafted")
    collector = TcpConnCollector(roots)
    assert collector.source == "proc"  # a captured tree: never netlink
    raw = collector.collect()
    assert set(raw) == {d.name for d in collector.descriptors()}
    got = {k.removeprefix("network.tcpconn."): v[SINGULAR] for k, v in raw.items()}
    assert got == {"established": 8, "syn_sent": 1, "syn_recv": 1, "fin_wait1": 1,
                   "fin_wait2": 1, "time_wait": 4, "close": 1, "close_wait": 2,
                   "last_ack": 1, "listen": 5, "closing": 1}
    (roots.proc / "net/tcp6").unlink()  # a kernel without IPv6
    assert collector.collect()["network.tcpconn.listen"] == {SINGULAR: 3}


def _diag_msg(state: int, attrs: bytes = b"", *, kind: int = SOCK_DIAG_BY_FAMILY,
              seq: int = 1) -> bytes:
    """One inet_diag reply: nlmsghdr + inet_diag_msg (72 bytes) + attributes."""
    msg = struct.pack("=BBBB48xIIIII", socket.AF_INET, state, 0, 0, 0, 0, 0, 1000, 4242)
    payload = msg + attrs
    header = struct.pack("=IHHII", 16 + len(payload), kind, 2, seq, 0)
    return header + payload + b"\0" * (-len(payload) % 4)


def test_parse_sock_diag_messages() -> None:
    counts = [0] * 13
    shutdown_attr = struct.pack("=HHB", 5, 8, 0)  # INET_DIAG_SHUTDOWN, unaligned length
    buf = _diag_msg(1, shutdown_attr) + _diag_msg(10) + _diag_msg(1) + _diag_msg(6)
    assert parse_sock_diag(buf, counts) is False
    done = struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0)
    assert parse_sock_diag(_diag_msg(8) + done, counts) is True
    assert counts[1] == 2 and counts[10] == 1 and counts[6] == 1 and counts[8] == 1
    error = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -13) + b"\0" * 16
    with pytest.raises(SockDiagError) as exc:
        parse_sock_diag(error, counts)
    assert exc.value.errno == 13 and isinstance(exc.value, OSError)
    assert parse_sock_diag(struct.pack("=IHHII", 4, 20, 0, 0, 0), counts) is False


def test_parse_sock_diag_one_walk_replies_stale_dumps_and_buffer_end() -> None:
    counts = [0] * 13
    done = struct.pack("=IHHIIi", 20, 3, 2, 7, 0, 0)
    stale_done = struct.pack("=IHHIIi", 20, 3, 2, 6, 0, 0)
    buf = (_diag_msg(1, kind=TCPDIAG_GETSOCK, seq=6)  # the rest of an abandoned dump
           + stale_done
           + _diag_msg(10, kind=TCPDIAG_GETSOCK, seq=7)
           + _diag_msg(1, kind=SOCK_DIAG_BY_FAMILY, seq=7)  # not this request's type
           + _diag_msg(6, kind=TCPDIAG_GETSOCK, seq=7))
    assert parse_sock_diag(buf, counts, kind=TCPDIAG_GETSOCK, seq=7) is False
    assert counts[10] == 1 and counts[6] == 1 and counts[1] == 0
    # a reused receive buffer: only the first ``end`` bytes are this read's
    reused = bytearray(done + _diag_msg(1, kind=TCPDIAG_GETSOCK, seq=7))
    assert parse_sock_diag(reused, counts, kind=TCPDIAG_GETSOCK, seq=7, end=0) is False
    assert parse_sock_diag(reused, counts, kind=TCPDIAG_GETSOCK, seq=7, end=20) is True
    assert counts[1] == 0


def test_netlink_failure_falls_back_to_the_files(tmp_path: Path) -> None:
    def refused() -> list[int]:
        # what socket(AF_NETLINK, ...) raises under RestrictAddressFamilies/seccomp
        raise OSError(97, "Address family not supported by protocol")

    roots = copy_fixture(tmp_path, "network", "crafted")
    collector = TcpConnCollector(roots, source="netlink", dump_states=refused)
    raw = collector.collect()
    assert collector.source == "proc"
    assert "Address family not supported" in (collector.fallback_reason or "")
    assert raw["network.tcpconn.established"] == {SINGULAR: 8}


def test_netlink_timeout_fails_one_collection_only(tmp_path: Path) -> None:
    calls = []

    def slow() -> list[int]:
        calls.append(1)
        if len(calls) == 1:
            raise TimeoutError("timed out")
        return [0, 5] + [0] * 11

    roots = copy_fixture(tmp_path, "network", "crafted")
    collector = TcpConnCollector(roots, source="netlink", dump_states=slow)
    with pytest.raises(TimeoutError):
        collector.collect()
    assert collector.source == "netlink" and collector.fallback_reason is None
    assert collector.collect()["network.tcpconn.established"] == {SINGULAR: 5}


def test_tcpconn_has_its_own_cadence() -> None:
    sampler = Sampler([TcpConnCollector(fixture_roots("network", "crafted"))],
                      registry=MetricRegistry(), clock=FakeClock())
    assert sampler.group_interval_s("tcpconn") == 5.0
    assert [bool(sampler.sample().groups) for _ in range(6)] == [True] + [False] * 4 + [True]


# --- live cross-checks -----------------------------------------------------------------


@pytest.mark.live
def test_live_interfaces_match_psutil_and_ip() -> None:
    raw = NetworkCollector(Roots()).collect()
    ps = psutil.net_io_counters(pernic=True)
    assert set(raw["network.interface.in.bytes"]) == set(ps)
    for name, counters in ps.items():
        slack = 1 << 20  # traffic between the two reads
        assert abs(raw["network.interface.in.bytes"][name] - counters.bytes_recv) <= slack
        assert abs(raw["network.interface.out.bytes"][name] - counters.bytes_sent) <= slack
        assert abs(raw["network.interface.in.packets"][name] - counters.packets_recv) <= 1000
        assert raw["network.interface.in.errors"][name] == counters.errin
        assert raw["network.interface.out.drops"][name] == counters.dropout
    if shutil.which("ip") is None:
        return
    links = json.loads(subprocess.run(["ip", "-j", "-s", "link"], capture_output=True,
                                      text=True, check=True, timeout=30).stdout)
    for link in links:
        name = link["ifname"]
        assert raw["network.interface.mtu"][name] == link["mtu"]
        up = link["operstate"] == "UP" or (link["operstate"] == "UNKNOWN"
                                           and "UP" in link["flags"])
        assert raw["network.interface.up"][name] == int(up)
        rx = link["stats64"]["rx"]
        assert abs(raw["network.interface.in.bytes"][name] - rx["bytes"]) <= 1 << 20


def _transfer_over_loopback(nbytes: int) -> None:
    """Send ``nbytes`` through a fresh TCP connection on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        received = 0

        def sink() -> None:
            nonlocal received
            conn, _ = server.accept()
            with conn:
                while chunk := conn.recv(1 << 20):
                    received += len(chunk)

        thread = threading.Thread(target=sink)
        thread.start()
        with socket.create_connection(server.getsockname()) as client:
            client.sendall(b"\0" * nbytes)
        thread.join(timeout=30)
    assert received == nbytes


@pytest.mark.live
def test_live_loopback_traffic_moves_the_rates() -> None:
    nbytes = 32 << 20
    sampler = Sampler([NetworkCollector(Roots())], registry=MetricRegistry())
    before = sampler.sample()
    _transfer_over_loopback(nbytes)
    after = sampler.sample()
    b, a = before.groups["network"], after.groups["network"]

    def increase(metric: str, inst: str = SINGULAR) -> float:
        return float(a.raw[metric][inst]) - float(b.raw[metric][inst])

    moved = increase("network.interface.in.bytes", "lo")
    assert moved >= nbytes
    assert increase("network.interface.out.bytes", "lo") >= nbytes
    rate = a.cooked["network.interface.in.bytes"]["lo"]
    assert isinstance(rate, float)
    assert rate * (after.mono - before.mono) == pytest.approx(moved, rel=0.1)
    assert increase("network.tcp.activeopens") >= 1
    assert increase("network.tcp.passiveopens") >= 1
    assert increase("network.tcp.insegs") >= 2
    assert increase("network.ip.inreceives") >= 2


def _fd_room(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@contextlib.contextmanager
def _open_connections(
    count: int,
) -> Iterator[tuple[list[socket.socket], list[socket.socket]]]:
    """``count`` established loopback TCP connections, half over IPv4 and half IPv6.

    Yields (client ends, accepted ends); everything, listeners included, is closed on
    exit.
    """
    clients: list[socket.socket] = []
    accepted: list[socket.socket] = []
    listeners: list[socket.socket] = []
    try:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            server = socket.socket(family)
            listeners.append(server)
            server.bind((host, 0))
            server.listen(4096)
            for _ in range(count // 2):
                client = socket.socket(family)
                clients.append(client)
                client.connect(server.getsockname()[:2])
                accepted.append(server.accept()[0])
        yield clients, accepted
    finally:
        for sock in clients + accepted + listeners:
            sock.close()


def _state(collector: TcpConnCollector, leaf: str) -> int:
    value = collector.collect()[f"network.tcpconn.{leaf}"][SINGULAR]
    assert isinstance(value, int)
    return value


def _cost_us(collector: TcpConnCollector, repeat: int = 20) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        collector.collect()
    return (time.perf_counter() - start) / repeat * 1e6


@pytest.mark.live
def test_live_tcpconn_with_2000_loopback_connections() -> None:
    count = 2000
    _fd_room(2 * count + 256)
    netlink = TcpConnCollector(Roots())
    files = TcpConnCollector(Roots(), source="proc")
    assert netlink.source == "netlink"
    cost_idle = (_cost_us(netlink), _cost_us(files))
    with _open_connections(count) as (clients, accepted):
        by_netlink = netlink.collect()
        by_files = files.collect()
        ps = Counter(c.status for c in psutil.net_connections("tcp"))
        assert _state(netlink, "established") >= 2 * count  # both ends of each connection
        # Our connections hold still, but other processes' come and go meanwhile, and
        # both /proc/net/tcp and the netlink dump are read in pieces, each resuming at a
        # position in the hash table: while thousands of earlier TIME_WAIT sockets
        # expire, a read can repeat or skip entries. Hence tolerances, the widest for
        # psutil, whose read takes longest. TIME_WAIT itself is not compared.
        for leaf, rel in (("established", 0.05), ("listen", 0.0)):
            ours = by_netlink[f"network.tcpconn.{leaf}"][SINGULAR]
            assert by_files[f"network.tcpconn.{leaf}"][SINGULAR] == pytest.approx(
                ours, rel=rel, abs=20)
            assert ps[leaf.upper()] == pytest.approx(ours, rel=2 * rel, abs=20)
        cost_busy = (_cost_us(netlink), _cost_us(files))
        # Clients close first: they wait in FIN_WAIT2, their peers in CLOSE_WAIT ...
        for sock in clients:
            sock.close()
        time.sleep(0.2)
        assert _state(netlink, "fin_wait2") >= 0.95 * count
        assert _state(netlink, "close_wait") >= count
        assert _state(files, "close_wait") >= count
        # ... until the peers close too: then the clients sit in TIME_WAIT.
        for sock in accepted:
            sock.close()
        time.sleep(0.2)
        assert _state(netlink, "time_wait") >= 0.95 * count
        assert _state(netlink, "close_wait") < count
    print(f"\ntcpconn collect(): idle netlink {cost_idle[0]:.0f} us, files "
          f"{cost_idle[1]:.0f} us; with {2 * count} more sockets netlink "
          f"{cost_busy[0]:.0f} us, files {cost_busy[1]:.0f} us")


@pytest.mark.live
def test_live_sock_diag_matches_proc_files_at_rest() -> None:
    v4 = sock_diag_states(socket.AF_INET)
    files = parse_proc_tcp(Path("/proc/net/tcp").read_bytes())
    assert v4[10] == files[10]  # listening sockets do not churn
    assert NETLINK_SOCK_DIAG == 4


@pytest.mark.live
def test_live_one_walk_dump_counts_both_families_like_two_dumps_and_ss() -> None:
    count = 400  # 200 connections per family: 400 established sockets each
    _fd_room(2 * count + 256)
    dump = TcpStateDump()
    with _open_connections(count):
        one = dump()
        two = dump.per_family()
        ss = Counter(line.split()[0] for line in subprocess.run(
            ["ss", "-tanH"], capture_output=True, text=True, check=True, timeout=30,
        ).stdout.splitlines() if line.strip())
        v6 = sock_diag_states(socket.AF_INET6)
    dump.close()
    assert dump.mode == "one walk" and dump.note is None
    # IPv6 sockets are in the one walk: it sees both families' established sockets
    assert v6[1] >= count and one[1] >= 2 * count
    # Other processes' short-lived connections come and go between the dumps; ours
    # and the listeners hold still.
    for state, name in ((1, "ESTAB"), (10, "LISTEN")):
        assert one[state] == pytest.approx(two[state], abs=20)
        assert one[state] == pytest.approx(ss[name], abs=20)


class _TruncatedRequest(TcpStateDump):
    """Sends an ``inet_diag_req`` shorter than the kernel requires: really refused."""

    def one_walk_request(self, states: int = 0xFFFFFFFF) -> bytes:
        return super().one_walk_request(states)[:40]


class _NoListenersRequest(TcpStateDump):
    """A one-walk request that leaves out LISTEN, so the first-use check must fail."""

    def one_walk_request(self, states: int = 0xFFFFFFFF) -> bytes:
        return super().one_walk_request(states & ~(1 << 10))


@pytest.mark.live
def test_live_refused_one_walk_request_falls_back_to_per_family_dumps() -> None:
    with socket.create_server(("::1", 0), family=socket.AF_INET6):
        dump = _TruncatedRequest()
        counts = dump()
        assert dump.mode == "per family"
        assert "refused" in (dump.note or "") and "Invalid argument" in (dump.note or "")
        assert counts[10] >= 1  # our IPv6 listener, from the per-family dumps
        assert dump()[10] == pytest.approx(counts[10], abs=5)
        dump.close()

        checked = _NoListenersRequest()
        counts = checked()
        assert checked.mode == "per family" and "listening" in (checked.note or "")
        assert counts[10] >= 1
        checked.close()


@pytest.mark.live
def test_live_tcpconn_collector_uses_one_walk_and_closes_its_socket() -> None:
    collector = TcpConnCollector(Roots())
    raw = collector.collect()
    dump = collector.dump_states
    assert isinstance(dump, TcpStateDump) and dump.mode == "one walk"
    assert raw["network.tcpconn.listen"][SINGULAR] >= 0
    collector.close()
    assert dump._sock is None


@pytest.mark.live
def test_live_per_second_counts_against_the_per_state_walk() -> None:
    """What network.tcp.currestab and network.sockstat.tcp.tw can stand in for.

    While our connections are established, CurrEstab counts them; once the clients
    close first, they are orphaned FIN_WAIT2 sockets the kernel keeps as timewait
    minisockets: counted by sockstat's tw although the walk reports FIN_WAIT2; once
    the peers close, TIME_WAIT in both. Other processes' sockets come and go (this
    machine runs other test suites), so each comparison is between readings taken
    moments apart, never against a baseline.
    """
    count = 200
    _fd_room(2 * count + 256)
    network = NetworkCollector(Roots())
    dump = TcpStateDump()

    def per_second() -> tuple[int, int]:
        raw = network.collect()
        return (int(raw["network.tcp.currestab"][SINGULAR]),
                int(raw["network.sockstat.tcp.tw"][SINGULAR]))

    with _open_connections(count) as (clients, accepted):
        states = dump()
        estab, _ = per_second()
        assert states[1] >= 2 * count
        assert estab == pytest.approx(states[1] + states[8], rel=0.02, abs=20)
        for sock in clients:
            sock.close()
        time.sleep(0.2)
        states = dump()
        estab, tw = per_second()
        assert states[5] >= 0.95 * count  # FIN_WAIT2 in the walk ...
        assert states[8] >= count  # ... while the peers sit in CLOSE_WAIT
        # CurrEstab still counts the peers; sockstat's tw counts the closers
        assert estab == pytest.approx(states[1] + states[8], rel=0.02, abs=20)
        assert tw == pytest.approx(states[6] + states[5], rel=0.05, abs=20)
        assert tw - states[6] >= 0.9 * count
        for sock in accepted:
            sock.close()
        time.sleep(0.2)
        states = dump()
        _, tw = per_second()
        assert tw == pytest.approx(states[6] + states[5], rel=0.05, abs=20)
    dump.close()


def _reference_counts(buf: bytes, kind: int, seq: int | None) -> tuple[list[int], bool]:
    """The reply-by-reply rule parse_sock_diag implements, written plainly."""
    counts = [0] * 13
    offset = 0
    while offset + 16 <= len(buf):
        length, msg_kind, _, msg_seq, _ = struct.unpack_from("=IHHII", buf, offset)
        if length < 16:
            break
        if seq is None or msg_seq == seq:
            if msg_kind == kind and length >= 18 and buf[offset + 17] < 13:
                counts[buf[offset + 17]] += 1
            elif msg_kind == 3:
                return counts, True
        offset += (length + 3) & ~3
    return counts, False


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([TCPDIAG_GETSOCK, SOCK_DIAG_BY_FAMILY, 3]),
                          st.sampled_from([6, 7]), st.integers(0, 15),
                          st.sampled_from([b"", struct.pack("=HHBxxx", 5, 8, 0), b"\1"])),
                max_size=60))
def test_parse_sock_diag_counts_like_the_plain_rule(
    replies: list[tuple[int, int, int, bytes]],
) -> None:
    buf = b"".join(
        _diag_msg(state, attrs, kind=kind, seq=seq) if kind != 3
        else struct.pack("=IHHIIi", 20, 3, 2, seq, 0, 0)
        for kind, seq, state, attrs in replies
    )
    expected, done = _reference_counts(buf, TCPDIAG_GETSOCK, 7)
    counts = [0] * 13
    assert parse_sock_diag(buf, counts, kind=TCPDIAG_GETSOCK, seq=7) is done
    assert counts == expected
