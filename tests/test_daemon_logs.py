"""Structured log lines and the Host-header parsing of the security layer."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from hostscope.daemon.logs import JsonFormatter, KeyValueFormatter, setup_logging
from hostscope.daemon.privileged import parse_capeff
from hostscope.daemon.security import SecurityPolicy, host_name


def record(msg: str, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("hostscope.daemon", logging.WARNING, __file__, 1, msg, None, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_key_value_line() -> None:
    line = KeyValueFormatter().format(
        record("client dropped", client="127.0.0.1:5000", reason="client too slow", queued=64)
    )
    assert "\n" not in line
    assert line.startswith("ts=")
    assert 'level=warning logger=hostscope.daemon msg="client dropped"' in line
    assert 'client=127.0.0.1:5000 reason="client too slow" queued=64' in line


def test_key_value_escapes_and_keeps_tracebacks_on_one_line() -> None:
    line = KeyValueFormatter().format(record('say "x"', exc=True, path="/a b\tc"))
    assert "\n" not in line
    assert 'msg="say \\"x\\""' in line
    assert 'path="/a b\\tc"' in line
    assert "exc=\"Traceback" in line and "boom\\nsecond line" in line


def test_json_line() -> None:
    line = JsonFormatter().format(record("tick overran its slot", exc=True, skipped=2))
    data = json.loads(line)
    assert data["msg"] == "tick overran its slot" and data["skipped"] == 2
    assert data["level"] == "warning" and "boom" in data["exc"]


def test_setup_logging_routes_extra_fields() -> None:
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    try:
        logging.getLogger("hostscope.metrics").warning(
            "collector failed", extra={"collector": "disk", "errors": 1}
        )
        logging.getLogger("hostscope.daemon").debug("hidden")
    finally:
        setup_logging("warning", "text")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["collector"] == "disk"


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:7470", "localhost"),
        ("LocalHost", "localhost"),
        ("[::1]:7470", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("example.com.:80", "example.com"),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_wildcard_allowed_hosts_is_explicit() -> None:
    strict = SecurityPolicy.build(bind_host="127.0.0.1")
    assert not strict.host_allowed("evil.example")
    assert not strict.host_allowed(None)
    anything = SecurityPolicy.build(bind_host="127.0.0.1", allowed_hosts=["*"])
    assert anything.host_allowed("evil.example")


def test_parse_capeff() -> None:
    status = "Name:\tx\nCapEff:\t000001ffffffffff\n"
    assert {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"} <= parse_capeff(status)
    assert parse_capeff("CapEff:\t0000000000000000\n") == set()
    assert parse_capeff("no such line") == set()
