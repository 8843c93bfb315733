"""Property tests over the daemon's inputs: query strings of every GET route, JSON bodies
of every POST route, ids and query strings of every DELETE route, websocket messages
(random JSON, wrong types, huge, binary, invalid UTF-8) and the configuration file. The
answer is always a 2xx/4xx JSON (never a 500), the websocket answers or closes with a
protocol code and the daemon keeps serving, and the config loader returns a Config or
raises ConfigError.

The daemon runs for real on loopback in a thread of its own (hypothesis drives
synchronous clients: http.client and websockets' sync client). Routes are read from the
router, so routes added later (auth, profiles) are fuzzed without editing this file.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from hostscope.daemon.app import create_app
from hostscope.daemon.config import Config, ConfigError, build_config, known_keys

from .support import auth_config, auth_headers

connect = functools.partial(ws_connect, additional_headers=auth_headers())

#: Seconds any one answer may take (a hang or a multi-second stall fails the test).
ANSWER_LIMIT_S = 10.0

#: Query keys the handlers read, plus ones nobody reads.
QUERY_KEYS = ["names", "prefix", "name", "seconds", "sort", "limit", "container", "instance",
              "width", "height", "theme", "bpf", "interval", "x", ""]
TRICKY = ["", " ", ",", ",,,", ".", "..", "kernel", "kernel.all.load", "kernel.", "proc",
          "proc.psinfo.cmd", "nan", "NaN", "inf", "-inf", "1e309", "-1", "0", "-0", "1e-320",
          "86400", "86401", "3600", "999999999999999999999999", "0x10", "1_0", "true", "null",
          "cpu", "rss", "dark", "light", "%00", "\x00", "\u202e", "é", "../../etc/passwd",
          "a" * 5000, ",".join(["kernel.all.load"] * 300), "kernel.all.load,nope"]

settings.register_profile(
    "fuzz", max_examples=120, deadline=None, database=None,
    suppress_health_check=list(HealthCheck),
)
FUZZ = settings.get_profile("fuzz")

values = st.one_of(st.sampled_from(TRICKY), st.text(max_size=40),
                   st.integers().map(str), st.floats().map(repr))


class Server:
    """The real app on an ephemeral loopback port, in a thread with its own loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.app: web.Application | None = None
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-daemon", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.app = create_app(self.config)
        self._runner = web.AppRunner(self.app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(20), "daemon did not start"

    def stop(self) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=ANSWER_LIMIT_S * 2)
        started = time.monotonic()
        try:
            # Authenticated as the operator, so the fuzz reaches every handler (the
            # refusals themselves are test_daemon_auth.py's).
            conn.request(method, path, body=body, headers={**auth_headers(), **(headers or {})})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data, time.monotonic() - started
        finally:
            conn.close()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/stream"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # A built dashboard of its own (an unbuilt one answers 503 by design), and BPF off:
    # a fuzzed toggle must not compile and load kernel programs for real.
    static = tmp_path_factory.mktemp("static")
    (static / "index.html").write_text("<!doctype html><title>hostscope</title>")
    (static / "assets").mkdir()
    (static / "assets" / "app-1234.js").write_text("export {}")
    srv = Server(auth_config(interval=0.2, bpf=False, static_dir=str(static)))
    srv.start()
    deadline = time.monotonic() + 10
    while srv.request("GET", "/healthz")[0] != 200 or b"last_tick_age_s\":null" in \
            srv.request("GET", "/healthz")[1]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield srv
    srv.stop()


def routes(server: Server, method: str) -> list[str]:
    assert server.app is not None
    found = {r.resource.canonical for r in server.app.router.routes()
             if r.method == method and r.resource is not None}
    found.discard("/api/v1/stream")  # a websocket: fuzzed below
    return sorted(found)


def fill(template: str, parts: list[str]) -> str:
    """A concrete path from a route template, placeholders replaced by ``parts``."""
    pieces = iter(parts)
    return re.sub(r"\{[^}]+\}",
                  lambda _m: urllib.parse.quote(next(pieces, "x"), safe=""), template)


#: aiohttp's HTTP parser refuses a request line longer than this itself (400, plain
#: text, before any handler or middleware runs).
MAX_LINE = 8190


def check_answer(status: int, body: bytes, elapsed: float, what: str, size: int = 0) -> None:
    assert status < 500, f"{what}: {status} {body[:300]!r}"
    assert elapsed < ANSWER_LIMIT_S, f"{what}: took {elapsed:.1f} s"
    if status == 400 and size > MAX_LINE:
        return
    if status >= 400 and not what.split()[1].startswith(("/assets", "/{", "/ ")):
        error = json.loads(body)["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), what


def test_routes_are_discovered(server: Server) -> None:
    gets = routes(server, "GET")
    assert {"/api/v1/fetch", "/api/v1/history", "/api/v1/metrics", "/healthz"} <= set(gets)
    assert routes(server, "POST")


def test_get_routes_never_fail_on_any_query(server: Server) -> None:
    templates = routes(server, "GET")

    @FUZZ
    @given(st.sampled_from(templates), st.lists(values, min_size=2, max_size=2),
           st.lists(st.tuples(st.sampled_from(QUERY_KEYS), values), max_size=6))
    def run(template: str, parts: list[str], query: list[tuple[str, str]]) -> None:
        path = fill(template, parts)
        qs = urllib.parse.urlencode(query)
        target = f"{path}?{qs}" if qs else path
        status, body, elapsed = server.request("GET", target)
        check_answer(status, body, elapsed, f"GET {target[:200]}", len(target))

    run()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=5),
    max_leaves=20,
)
BODY_KEYS = ["enabled", "settings", "name", "type", "limit", "role", "token", "seconds",
             "pid", "frequency", "duration_s", "names"]
json_bodies = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(BODY_KEYS), json_values, max_size=5),
)


def test_post_routes_never_fail_on_any_body(server: Server) -> None:
    templates = routes(server, "POST")

    @FUZZ
    @given(st.sampled_from(templates), st.lists(values, min_size=2, max_size=2),
           json_bodies, st.booleans())
    def run(template: str, parts: list[str], body: Any, as_json: bool) -> None:
        path = fill(template, parts)
        data = json.dumps(body).encode()
        if not as_json:
            data = data[: len(data) // 2] + b"\xff{"  # malformed
        status, answer, elapsed = server.request(
            "POST", path, data, {"Content-Type": "application/json"})
        check_answer(status, answer, elapsed, f"POST {path[:200]} {data[:100]!r}")

    run()


#: Characters of a capture id (daemon/profiles.py: secrets.token_urlsafe(16), 22 long).
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def test_delete_routes_never_fail_on_any_id_or_query(server: Server) -> None:
    templates = routes(server, "DELETE")
    assert "/api/v1/profiles/{id}" in templates
    # Ids of captures that exist, in every state a DELETE can meet (one starting or
    # running, two queued behind it, then cancelled; where profiling is unavailable they
    # fail at once), ids of the right form that do not exist, and anything else.
    for _ in range(3):
        server.request("POST", "/api/v1/profiles", json.dumps(
            {"kind": "cpu", "duration": 5, "pid": os.getpid()}).encode(),
            {"Content-Type": "application/json"})
    status, body, _ = server.request("GET", "/api/v1/profiles")
    assert status == 200, body[:300]
    known = [p["id"] for p in json.loads(body)["profiles"]] or ["A" * 22]
    ids = st.one_of(values, st.sampled_from(known),
                    st.text(alphabet=ID_ALPHABET, min_size=22, max_size=22),
                    st.text(alphabet=ID_ALPHABET, max_size=40))
    origins = st.sampled_from([None, "null", "", f"http://127.0.0.1:{server.port}",
                               "https://evil.example"])

    @FUZZ
    @given(st.sampled_from(templates), st.lists(ids, min_size=2, max_size=2),
           st.lists(st.tuples(st.sampled_from([*QUERY_KEYS, "format", "id", "force"]),
                              values), max_size=6),
           st.one_of(st.none(), json_bodies.map(lambda b: json.dumps(b).encode()),
                     st.binary(max_size=100)),
           origins)
    def run(template: str, parts: list[str], query: list[tuple[str, str]],
            data: bytes | None, origin: str | None) -> None:
        path = fill(template, parts)
        qs = urllib.parse.urlencode(query)
        target = f"{path}?{qs}" if qs else path
        status, answer, elapsed = server.request(
            "DELETE", target, data, {"Origin": origin} if origin is not None else None)
        check_answer(status, answer, elapsed, f"DELETE {target[:200]} origin={origin!r}",
                     len(target))

    try:
        run()
    finally:  # nothing left capturing for the tests after this one
        for capture in known:
            server.request("DELETE", f"/api/v1/profiles/{capture}")


def test_big_and_odd_requests_are_refused_cleanly(server: Server) -> None:
    for target in ("/api/v1/fetch?names=" + "a," * 100_000,
                   "/api/v1/history?names=" + ",".join(f"kernel.{i}" for i in range(5000))):
        status, body, elapsed = server.request("GET", target[:60_000])
        check_answer(status, body, elapsed, f"GET {target[:80]}", len(target[:60_000]))
    for post in routes(server, "POST"):
        # Nested deeper than the JSON decoder's recursion limit (it raised
        # RecursionError, a 500 and a logged traceback, until fuzzing found it).
        for deep in (b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000):
            status, body, elapsed = server.request(
                "POST", fill(post, ["runqlat", "x"]), deep, {"Content-Type": "application/json"})
            check_answer(status, body, elapsed, f"POST {post} (deep)")
            assert status == 400, body[:200]
    status, body, elapsed = server.request(
        "POST", "/api/v1/bpf/runqlat", b"{" + b" " * (1024 * 1024) + b"}",
        {"Content-Type": "application/json"})
    assert status == 413, body[:200]
    assert json.loads(body)["error"]["code"] == "too_large"


# -- websocket ------------------------------------------------------------------------


def alive(ws: ClientConnection, tag: int) -> None:
    """The connection still answers a ping, skipping whatever came before the pong."""
    ws.send(json.dumps({"type": "ping", "id": tag}))
    deadline = time.monotonic() + ANSWER_LIMIT_S
    while True:
        msg = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if msg["type"] == "pong" and msg["id"] == tag:
            return
        if msg["type"] == "error":
            assert msg["code"] != "internal", msg


MESSAGE_TYPES = ["subscribe", "unsubscribe", "ping", "bpf", "", "SUBSCRIBE", None, 1]
MESSAGE_KEYS = ["type", "names", "optional", "interval", "backfill", "filter", "id", "name",
                "enabled", "settings"]
ws_messages = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"type": st.sampled_from(MESSAGE_TYPES)},
        optional={k: st.one_of(json_values, st.lists(st.sampled_from(TRICKY), max_size=5),
                               st.sampled_from([0, -1, 0.0001, 1e308, float("inf"), 3601]))
                  for k in MESSAGE_KEYS[1:]},
    ),
)


def test_websocket_messages_are_answered_and_the_connection_survives(server: Server) -> None:
    with connect(server.ws_url, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        counter = iter(range(10**9))

        @FUZZ
        @given(ws_messages)
        def run(message: Any) -> None:
            text = json.dumps(message, allow_nan=True)
            if len(text) > 60_000:
                return  # oversize is tested on its own
            ws.send(text)
            alive(ws, next(counter))
            # Drop what this message subscribed, so the next one starts clean and the
            # connection's queue is never filled by live frames nobody reads here.
            ws.send(json.dumps({"type": "unsubscribe", "names": ["kernel", "proc", "hinv",
                                                                  "mem", "disk", "network"]}))

        run()


@pytest.mark.parametrize("payload", [
    b"\xff\xfe\x00garbage",           # invalid UTF-8 in a text frame
    b'{"type": "ping", "id": "\xc3"}',
])
def test_invalid_utf8_closes_that_connection_only(server: Server, payload: bytes) -> None:
    with connect(server.ws_url) as bystander:
        assert json.loads(bystander.recv(timeout=5))["type"] == "hello"
        with connect(server.ws_url) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
            ws.send(payload, text=True)
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    ws.recv(timeout=5)
            assert info.value.rcvd is not None and info.value.rcvd.code in (1007, 1002)
        alive(bystander, 1)


def test_binary_random_and_huge_frames(server: Server) -> None:
    rng = random.Random(7)
    with connect(server.ws_url, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        for size in (0, 1, 100, 10_000):
            ws.send(bytes(rng.randrange(256) for _ in range(size)))
            error = json.loads(ws.recv(timeout=5))
            assert error["type"] == "error" and error["code"] == "bad_message"
        for text in ("", "null", "[]", "1e999", '"x"', "{" * 10_000, "[" * 5000 + "]" * 5000):
            ws.send(text)
            error = json.loads(ws.recv(timeout=5))
            assert error["type"] == "error" and error["code"] in ("bad_message", "unknown_type")
        alive(ws, 2)
        ws.send("x" * (server.config.max_message + 1))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


# -- configuration file ---------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value).replace("inf", "inf").replace("nan", "nan")
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{}"


toml_scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1),
                         st.floats(allow_nan=True), st.text(max_size=20))
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=4))


def test_config_files_load_or_raise_config_error(tmp_path: Path) -> None:
    keys = [*known_keys(), "alow_remote", "port ", "Port"]
    path = tmp_path / "fuzz.toml"

    @FUZZ
    @given(st.dictionaries(st.sampled_from(keys), toml_values, max_size=6)
           | st.text(max_size=200).map(lambda t: {"__raw__": t}))
    def run(doc: dict[str, Any]) -> None:
        if "__raw__" in doc:
            path.write_bytes(doc["__raw__"].encode("utf-8", "surrogatepass"))
        else:
            path.write_text("".join(f'"{k}" = {toml_value(v)}\n' for k, v in doc.items()))
        try:
            config = build_config(path)
        except ConfigError:
            return
        assert isinstance(config, Config)

    run()
    path.write_bytes(b"\xff\xfe port = 1")
    with pytest.raises(ConfigError, match="UTF-8"):
        build_config(path)
