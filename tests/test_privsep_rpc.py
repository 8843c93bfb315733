"""The helper's RPC: framing limits and the op table refuse what they must, and a real
helper server keeps serving after every refusal (hypothesis over frames and requests).

The server under test is the helper's own :class:`~hostscope.daemon.helper.Server` with
the real :class:`~hostscope.daemon.helper.HelperService` (BPF off, so nothing is loaded),
on a socketpair; the process boundary itself is covered by tests/test_privsep_helper.py.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostscope.bpfmods.modules import all_modules
from hostscope.daemon import rpc
from hostscope.daemon.helper import HelperService, Server
from hostscope.metrics.sources import Roots

OPS = rpc.build_ops(rpc.ModuleFacts.of(all_modules()))


class Peer:
    """The daemon's end of a socketpair to a helper server running in a thread."""

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair()
        self.sock.settimeout(10)
        self.service = HelperService(Roots(), bpf=False)
        self.thread = threading.Thread(target=Server(theirs, self.service, OPS).serve,
                                       daemon=True)
        self.thread.start()
        self._theirs = theirs
        self._ids = 100

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> Any:
        return rpc.read_frame(self.sock, rpc.MAX_RESPONSE)

    def request(self, op: str, args: Any = None, **extra: Any) -> Any:
        self._ids += 1
        message = {"id": self._ids, "op": op, "args": {} if args is None else args, **extra}
        self.send_raw(rpc.encode_frame(message))
        answer = self.recv()
        assert answer["id"] == self._ids
        return answer

    def alive(self) -> None:
        """The server still answers, in step with the stream."""
        answer = self.request("ping")
        assert answer["ok"]["pid"] == os.getpid()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)
        assert not self.thread.is_alive(), "the server did not stop at end of stream"
        self._theirs.close()
        self.service.close()


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.close()


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_ping_and_a_real_operation(peer: Peer) -> None:
    peer.alive()
    described = peer.request("bpf_describe")["ok"]
    assert sorted(d["name"] for d in described) == sorted(m.name for m in all_modules())
    off = peer.request("bpf_enable", {"name": "runqlat", "settings": None, "user": "ws:1"})
    # BPF is off in this service: the manager's own typed error crosses intact.
    assert off["error"]["kind"] == "bpf" and off["error"]["code"] == "unavailable"
    assert off["error"]["module"] == "runqlat"


@pytest.mark.parametrize(("message", "code"), [
    ({"id": 1, "op": "exec", "args": {}}, "unknown_op"),
    ({"id": 1, "op": "__init__", "args": {}}, "unknown_op"),
    ({"id": 1, "op": "close", "args": {}}, "unknown_op"),
    ({"id": 1, "op": "bpf_status", "args": {"x": 1}}, "invalid_arguments"),
    ({"id": 1, "op": "bpf_table", "args": {"name": "tcplife", "table": "sessions"}},
     "invalid_arguments"),
    ({"id": 1, "op": "bpf_enable", "args": {"name": "runqlat", "settings": None,
                                             "user": "ws:1; rm -rf /"}}, "invalid_arguments"),
    ({"id": 1, "op": "bpf_enable", "args": {"name": "../../etc/passwd", "settings": None,
                                             "user": "u"}}, "invalid_arguments"),
    ({"id": 1, "op": "bpf_enable", "args": {"name": "runqlat", "settings": {"source": "int x;"},
                                             "user": "u"}}, "invalid_arguments"),
    ({"id": 1, "op": "bpf_enable", "args": {"name": "runqlat", "settings": {"tgid": [1]},
                                             "user": "u"}}, "invalid_arguments"),
    ({"id": 1, "op": "bpf_table", "args": {"name": "runqlat", "table": "sessions",
                                            "limit": 5}}, "invalid_arguments"),
    ({"id": 1, "op": "bpf_table", "args": {"name": "tcplife", "table": "sessions",
                                            "limit": True}}, "invalid_arguments"),
    ({"id": 1, "op": "bpf_read", "args": {"names": ["runqlat", "runqlat"]}},
     "invalid_arguments"),
    ({"id": 1, "op": "proc_io", "args": {"processes": [[0, 1]]}}, "invalid_arguments"),
    ({"id": 1, "op": "proc_io", "args": {"processes": [["1", 1]]}}, "invalid_arguments"),
    ({"id": 1, "op": "proc_io", "args": {"processes": [[1, 1]] * (rpc.MAX_PROC_BATCH + 1)}},
     "invalid_arguments"),
    ({"id": 1, "op": "ping", "args": [], }, "invalid_arguments"),
    ({"id": 1, "op": "profile_start", "args": {"request": {"kind": "cpu", "duration_s": 10,
                                                           "cgroup": "/a/../../etc"}}},
     "invalid_arguments"),
    ({"id": 1, "op": "profile_start", "args": {"request": {"kind": "cpu", "duration_s": 10,
                                                           "command": "perf record"}}},
     "invalid_arguments"),
    ({"id": 1, "op": "profile_start", "args": {"request": {"kind": "cpu", "duration_s": 0}}},
     "invalid_arguments"),
    ({"id": 1, "op": "profile_start", "args": {"request": {"kind": "sh", "duration_s": 5}}},
     "invalid_arguments"),
    ({"id": 1, "op": "profile_start", "args": {"request": {"kind": "cpu", "duration_s": 5,
                                                           "frequency_hz": 100000}}},
     "invalid_arguments"),
    ({"id": 1, "op": "profile_poll", "args": {"capture_id": "$(reboot)"}}, "invalid_arguments"),
    ({"id": 1, "op": "ping", "args": {}, "code": "import os"}, "bad_request"),
    ({"id": "1", "op": "ping", "args": {}}, "bad_request"),
    ({"id": True, "op": "ping", "args": {}}, "bad_request"),
    ([1, 2, 3], "bad_request"),
])
def test_refused_requests_get_typed_errors_and_the_helper_keeps_serving(
    peer: Peer, message: Any, code: str
) -> None:
    peer.send_raw(rpc.encode_frame(message) if isinstance(message, dict)
                  else frame(json.dumps(message).encode()))
    answer = peer.recv()
    assert answer["error"]["kind"] == "rpc"
    assert answer["error"]["code"] == code, answer
    assert answer["id"] == rpc.request_id(message)
    peer.alive()


def test_a_profile_request_as_the_service_sends_it_is_accepted() -> None:
    request = {"kind": "cpu", "duration_s": 30.0, "frequency_hz": 49, "pid": None,
               "cgroup": "/system.slice/docker-ab12.scope"}
    _id, op, args = rpc.parse_request(
        {"id": 7, "op": "profile_start", "args": {"request": request}}, OPS)
    assert op.name == "profile_start" and args == {"request": request}


def test_oversized_request_is_skipped_without_buffering_and_the_stream_stays_in_step(
    peer: Peer,
) -> None:
    big = b"x" * (rpc.MAX_REQUEST + 1)
    peer.send_raw(frame(big))
    answer = peer.recv()
    assert answer == {"id": None, "error": {"kind": "rpc", "code": "oversized",
                                            "message": answer["error"]["message"]}}
    peer.alive()


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe", b"NaN", b"[]", b"null", b"1e999"])
def test_malformed_frames_are_refused(peer: Peer, body: bytes) -> None:
    peer.send_raw(frame(body))
    answer = peer.recv()
    assert answer["error"]["kind"] == "rpc"
    assert answer["error"]["code"] in ("malformed", "bad_request")
    peer.alive()


def test_proc_io_reads_a_live_process_and_skips_a_reused_pid(peer: Peer) -> None:
    pid = os.getpid()
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    start = int(stat[stat.rindex(b")") + 2:].split()[19])
    io = Path(f"/proc/{pid}/io").read_text().split()
    rows = peer.request("proc_io", {"processes": [[pid, start], [pid, start + 1]]})["ok"]
    assert len(rows) == 1  # the wrong start time is another process: skipped
    got_pid, got_start, read_bytes, write_bytes = rows[0]
    assert (got_pid, got_start) == (pid, start)
    # The counters only grow: at least what we read just before.
    assert read_bytes >= int(io[io.index("read_bytes:") + 1])
    assert write_bytes >= int(io[io.index("write_bytes:") + 1])


def test_proc_io_denied_even_to_the_helper_is_not_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process whose io the helper may not read either (not dumpable: it would need
    CAP_SYS_PTRACE) is remembered while the daemon keeps asking, instead of costing an
    open of stat and io at every call; one that went away and came back is tried again."""
    proc = tmp_path / "proc"
    for pid in (7, 8):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(
            f"{pid} (x) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 500 1000 10\n")
        (proc / str(pid) / "io").write_text(
            "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 4096\nwrite_bytes: 8192\n"
            "cancelled_write_bytes: 0\n")
    service = HelperService(Roots(proc=proc, sys=tmp_path / "sys", etc=tmp_path / "etc"),
                            bpf=False)
    opened: list[str] = []
    real_open = os.open

    def fake_open(path: str, flags: int, *args: int) -> int:
        opened.append(str(path))
        if str(path).endswith("/7/io"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", fake_open)
    both = [[7, 500], [8, 500]]
    assert service.proc_io(both) == [[8, 500, 4096, 8192]]
    assert any(p.endswith("/7/io") for p in opened)
    opened.clear()
    assert service.proc_io(both) == [[8, 500, 4096, 8192]]
    assert opened == []  # 8 through its kept descriptor, 7 not at all
    service.proc_io([[8, 500]])  # 7 no longer asked for: forgotten
    service.proc_io(both)
    assert any(p.endswith("/7/io") for p in opened)


def test_truncated_stream_ends_the_server() -> None:
    p = Peer()
    p.send_raw(struct.pack(">I", 100) + b"{}")
    p.sock.shutdown(socket.SHUT_WR)
    answer = p.recv()
    assert answer["error"]["code"] == "truncated"
    p.thread.join(5)
    assert not p.thread.is_alive()
    p.close()


# -- properties ------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
op_names = st.sampled_from(sorted(OPS)) | st.text(max_size=20)
arg_names = st.sampled_from(sorted({a for op in OPS.values() for a in op.args})) | st.text(
    max_size=10)
requests = st.fixed_dictionaries(
    {"id": st.integers(0, 2**40), "op": op_names,
     "args": st.dictionaries(arg_names, json_values, max_size=4)})


@given(message=requests | json_values)
@settings(max_examples=300, deadline=None)
def test_parse_request_accepts_only_valid_requests_and_refuses_with_rpc_errors(
    message: Any,
) -> None:
    try:
        req_id, op, args = rpc.parse_request(message, OPS)
    except rpc.RpcError as exc:
        assert exc.code in ("bad_request", "unknown_op", "invalid_arguments")
        return
    # Accepted: a known op with exactly its arguments, every one passing its own check.
    assert op.name in OPS and req_id == message["id"]
    assert set(args) == set(op.args)
    assert op.validate(args) == args


@given(message=requests)
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_helper_survives_any_request(peer: Peer, message: dict[str, Any]) -> None:
    # Ops that would do real (slow or stateful) work when accepted are out of scope here.
    if message["op"] in ("bpf_prewarm", "bpf_readiness", "bpf_status", "proc_io") \
            or message["op"].startswith("profile_"):
        message["op"] = "nonexistent"
    peer.send_raw(rpc.encode_frame(message))
    answer = peer.recv()
    assert answer["id"] == message["id"]
    assert ("ok" in answer) != ("error" in answer)
    if "error" in answer:
        assert answer["error"]["kind"] in ("rpc", "bpf")
    peer.alive()


@given(body=st.binary(max_size=200))
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_helper_survives_any_frame_body(peer: Peer, body: bytes) -> None:
    peer.send_raw(frame(body))
    answer = peer.recv()
    if "ok" in answer:  # the bytes happened to be a valid request
        return
    assert answer["error"]["kind"] in ("rpc", "bpf")
    peer.alive()
