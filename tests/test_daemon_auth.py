"""Authentication, roles, embed tokens, rate limits, TLS and the browser-facing checks
(docs/security.md): the token store and signer directly, then a real daemon (create_app on
a loopback port) driven by aiohttp and the ``websockets`` client, a TLS daemon with a
trustme CA, and ``hostscope serve`` opened through the URL it prints."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import ssl
import stat
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hostscope.daemon import auth as auth_mod
from hostscope.daemon.api import EMBED_PROCESS_FIELDS
from hostscope.daemon.app import create_app
from hostscope.daemon.auth import (
    OPERATOR,
    VIEWER,
    Auth,
    EmbedSigner,
    FailureLimiter,
    Principal,
    TokenStore,
    build_auth,
    hash_token,
    load_or_create_secret,
    load_token_file,
)
from hostscope.daemon.config import Config, ConfigError
from hostscope.daemon.errors import ApiError
from hostscope.daemon.keys import AUTH, PRIVILEGED, TICKER
from hostscope.daemon.privileged import InProcessOps, PrivilegedOps
from hostscope.daemon.serve import tls_context

from .support import (
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    FakeClock,
    auth_config,
    auth_headers,
    serve_env,
)
from .test_daemon_shutdown import read_rest, start_serve

INTERVAL = 0.2
BAD_TOKEN = "not-a-real-token-but-long-enough"


# -- the token store ----------------------------------------------------------------------


def test_token_lines_roles_and_hashes() -> None:
    store = TokenStore()
    store.add_lines(
        f"# who gets what\n\nviewer {VIEWER_TOKEN}\noperator {hash_token(OPERATOR_TOKEN)}\n",
        "tokens")
    assert len(store) == 2
    assert store.role_of(VIEWER_TOKEN) == VIEWER
    assert store.role_of(OPERATOR_TOKEN) == OPERATOR
    assert store.role_of(BAD_TOKEN) is None
    assert store.role_of("") is None
    assert hash_token("abc") == ("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb41"
                                 "0ff61f20015ad")  # FIPS 180-2 test vector


@pytest.mark.parametrize(("line", "message"), [
    ("admin " + "x" * 32, "unknown role 'admin'"),
    ("viewer short", "at least 16 characters"),
    ("viewer sha256:abcd", "64 hex digits"),
    ("viewer sha256:" + "g" * 64, "64 hex digits"),
    ("viewer", "expected 'ROLE TOKEN'"),
    ("viewer a b", "expected 'ROLE TOKEN'"),
])
def test_bad_token_lines_are_refused_with_the_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        TokenStore().add_lines(f"# comment\n{line}\n", "token file /t")
    assert "token file /t line 2" in str(info.value)


def test_comparison_goes_through_compare_digest_for_every_entry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The code path, not timing: every stored hash is compared with compare_digest, and
    no early exit skips the rest once one matched."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_mod.hmac, "compare_digest", spy)
    store = TokenStore()
    store.add_lines(f"operator {OPERATOR_TOKEN}\nviewer {VIEWER_TOKEN}\n"
                    f"viewer {'v' * 40}\n", "t")
    assert store.role_of(OPERATOR_TOKEN) == OPERATOR
    assert len(calls) == 3 and all(len(a) == len(b) == 32 for a, b in calls)
    calls.clear()
    EmbedSigner(b"k" * 32).verify("e1.e30.forged", now=0.0)
    assert len(calls) == 1


def test_token_file_permissions(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"viewer {VIEWER_TOKEN}\n")
    for mode in (0o644, 0o606, 0o602):
        path.chmod(mode)
        with pytest.raises(ConfigError, match="readable or writable by every user") as info:
            load_token_file(path, TokenStore())
        assert f"chmod 600 {path}" in str(info.value)
    for mode in (0o600, 0o640, 0o400):
        path.chmod(mode)
        store = TokenStore()
        load_token_file(path, store)
        assert store.role_of(VIEWER_TOKEN) == VIEWER
    with pytest.raises(ConfigError, match="cannot read token file"):
        load_token_file(tmp_path / "missing", TokenStore())


def test_build_auth_sources(tmp_path: Path) -> None:
    generated = build_auth(Config())
    assert generated.generated is not None and len(generated.generated) >= 43
    assert generated.tokens.role_of(generated.generated) == OPERATOR

    path = tmp_path / "tokens"
    path.write_text(f"viewer {VIEWER_TOKEN}\n")
    path.chmod(0o600)
    both = build_auth(Config(token_file=str(path)), {"HOSTSCOPE_TOKEN": OPERATOR_TOKEN})
    assert both.generated is None
    assert both.tokens.role_of(VIEWER_TOKEN) == VIEWER
    assert both.tokens.role_of(OPERATOR_TOKEN) == OPERATOR

    with pytest.raises(ConfigError, match="a hash, never the token itself"):
        build_auth(Config(tokens=(f"viewer {VIEWER_TOKEN}",)))
    with pytest.raises(ConfigError, match="HOSTSCOPE_TOKEN"):
        build_auth(Config(), {"HOSTSCOPE_TOKEN": "short"})


# -- embed tokens and the failure limiter -------------------------------------------------


def test_embed_tokens_scope_expiry_and_tampering() -> None:
    signer = EmbedSigner(b"s" * 32)
    token = signer.mint(["mem.util", "cpu.util"], ttl_s=60, now=1000.0)
    principal = signer.verify(token, now=1059.0)
    assert principal == Principal(VIEWER, frozenset({"cpu.util", "mem.util"}), 1060.0)
    assert principal.embed and not principal.has(OPERATOR)
    assert signer.verify(token, now=1060.0) is None  # expired

    prefix, payload, signature = token.split(".")
    widened = auth_mod._b64(json.dumps({"s": ["cpu", "mem.util"], "exp": 1060}).encode())
    assert signer.verify(f"{prefix}.{widened}.{signature}", now=1000.0) is None
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    assert signer.verify(f"{prefix}.{payload}.{flipped}", now=1000.0) is None
    assert EmbedSigner(b"t" * 32).verify(token, now=1000.0) is None  # another daemon's
    for junk in ("e1.", "e1..", "e1.%%%.x", "e1.\u00e9.x", token + "x"):
        assert signer.verify(junk, now=1000.0) is None

    for scope, ttl in (([], 60), (["x"] * 0 + [str(i) for i in range(51)], 60),
                       (["cpu.util"], 0), (["cpu.util"], float("inf")),
                       (["cpu.util"], 400 * 86400)):
        with pytest.raises(ApiError, match=r"scope|ttl"):
            signer.mint(scope, ttl, now=0.0)


def test_scope_matches_names_prefixes_and_panels() -> None:
    panels = {"cpu.util": ("kernel.all.cpu.util.user", "kernel.all.cpu.util.sys")}
    p = Principal(VIEWER, frozenset({"cpu.util", "disk.dev"}))
    assert p.allows_metric("kernel.all.cpu.util.user", panels)
    assert p.allows_metric("disk.dev.read_bytes", panels) and p.allows_metric("disk.dev", panels)
    assert not p.allows_metric("disk.devices", panels)
    assert not p.allows_metric("proc.psinfo.cmdline", panels)
    assert Principal(OPERATOR).allows_metric("anything", panels)


def test_embed_secret_persists_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "embed.key"
    first = load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == 32
    assert load_or_create_secret(path) == first  # survives a restart
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_secret(path)
    path.chmod(0o600)
    path.write_text("abcd\n")
    with pytest.raises(ConfigError, match="64 hex digits"):
        load_or_create_secret(path)


def test_failure_limiter_window_and_bounded_memory() -> None:
    limiter = FailureLimiter(max_failures=3, window_s=10.0, max_clients=100)
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after("a", t) is None
        limiter.failed("a", t)
    assert limiter.retry_after("a", 2.5) == pytest.approx(7.5)
    assert limiter.retry_after("b", 2.5) is None  # per client address
    assert limiter.retry_after("a", 10.5) is None  # the oldest failure left the window
    for t in (20.0, 21.0, 22.0):  # the same refused token again and again: one failure
        limiter.failed("c", t, token="stale")
    assert limiter.retry_after("c", 22.5) is None
    limiter.failed("c", 23.0, token="guess-1")
    limiter.failed("c", 23.0, token="guess-2")
    assert limiter.retry_after("c", 23.5) is not None
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}", 3.0)
    assert len(limiter) == 100


# -- a real daemon ------------------------------------------------------------------------


@dataclass
class Daemon:
    app: web.Application
    base: str
    session: aiohttp.ClientSession

    @property
    def ws(self) -> str:
        return self.base.replace("http", "ws", 1) + "/api/v1/stream"

    async def call(self, method: str, path: str, token: str | None = None,
                   **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.base + path, headers=headers,
                                        allow_redirects=False, **kwargs) as resp:
            body = await resp.read()
            with contextlib.suppress(ValueError):
                return resp.status, json.loads(body), resp
            return resp.status, body, resp


@contextlib.asynccontextmanager
async def running(config: Config, auth: Auth | None = None,
                  ssl_context: ssl.SSLContext | None = None,
                  client_ssl: ssl.SSLContext | None = None,
                  privileged: PrivilegedOps | None = None) -> AsyncIterator[Daemon]:
    app = create_app(config, auth=auth, privileged=privileged)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    scheme = "https" if ssl_context else "http"
    connector = aiohttp.TCPConnector(ssl=client_ssl) if client_ssl else None
    # An unsafe cookie jar: aiohttp's default one ignores cookies of IP-address hosts.
    async with aiohttp.ClientSession(connector=connector,
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        try:
            # Let the first tick finish, so every test starts from a daemon that has
            # sampled: the first tick's instances send a new meta, which a test comparing
            # a meta's seq with the samples after it (the embed re-auth test) would
            # otherwise race. (A daemon stopped during its first collection no longer
            # leaks the process collector's descriptors: fixed in b85b113.)
            for _ in range(200):
                if app[TICKER].last_tick_mono is not None:
                    break
                await asyncio.sleep(0.05)
            yield Daemon(app, f"{scheme}://127.0.0.1:{runner.addresses[0][1]}", session)
        finally:
            await runner.cleanup()


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    static = tmp_path / "static"
    (static / "assets").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><title>hostscope</title>")
    (static / "assets" / "app-1.js").write_text("export {}")
    return static


@pytest.fixture
async def daemon(static_dir: Path) -> AsyncIterator[Daemon]:
    config = auth_config(interval=INTERVAL, bpf=False, static_dir=str(static_dir),
                         allowed_origins=("http://dash.example:7470",))
    async with running(config) as d:
        yield d


#: (method, path, body) by the role they need.
PUBLIC = [("GET", "/healthz", None), ("GET", "/", None), ("GET", "/assets/app-1.js", None),
          ("GET", "/embed", None)]
VIEWER_ROUTES = [("GET", "/api/v1/host", None), ("GET", "/api/v1/metrics", None),
                 ("GET", "/api/v1/fetch?names=kernel.all.load", None), ("GET", "/metrics", None),
                 ("GET", "/api/v1/render/cpu.util.svg", None), ("GET", "/api/v1/auth", None),
                 ("GET", "/api/v1/no-such-route", None)]
OPERATOR_ROUTES = [("POST", "/api/v1/embed-tokens", {"scope": ["cpu.util"]}),
                   ("POST", "/api/v1/bpf/runqlat", {"enabled": False}),
                   ("POST", "/api/v1/profiles", {"kind": "cpu", "duration": 1}),
                   ("DELETE", "/api/v1/profiles/nothing", None)]


@pytest.mark.parametrize(("method", "path", "body"), PUBLIC)
async def test_public_routes_need_no_token(daemon: Daemon, method: str, path: str,
                                           body: Any) -> None:
    status, _, _ = await daemon.call(method, path, json=body)
    assert status == 200


@pytest.mark.parametrize(("method", "path", "body"), VIEWER_ROUTES + OPERATOR_ROUTES)
async def test_every_other_route_refuses_missing_and_bad_tokens(
        daemon: Daemon, method: str, path: str, body: Any) -> None:
    for token in (None, BAD_TOKEN):
        status, answer, resp = await daemon.call(method, path, token, json=body)
        assert status == 401, (token, answer)
        assert answer["error"]["code"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="hostscope"')
    status, answer, _ = await daemon.call(method, path, headers={"Authorization": "Basic eA=="})
    assert status == 401


@pytest.mark.parametrize(("method", "path", "body"), VIEWER_ROUTES)
async def test_viewer_routes(daemon: Daemon, method: str, path: str, body: Any) -> None:
    expected = 404 if "no-such" in path else 200
    for token in (VIEWER_TOKEN, OPERATOR_TOKEN):
        status, answer, _ = await daemon.call(method, path, token, json=body)
        assert status == expected, (token, answer)


@pytest.mark.parametrize(("method", "path", "body"), OPERATOR_ROUTES)
async def test_operator_routes(daemon: Daemon, method: str, path: str, body: Any) -> None:
    status, answer, _ = await daemon.call(method, path, VIEWER_TOKEN, json=body)
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert "operator" in answer["error"]["message"]
    status, answer, _ = await daemon.call(method, path, OPERATOR_TOKEN, json=body)
    # Past authentication: whatever the handler says (BPF is off here, no such profile).
    assert status not in (401, 403), answer


async def test_whoami(daemon: Daemon) -> None:
    assert (await daemon.call("GET", "/api/v1/auth", VIEWER_TOKEN))[1] == {"role": "viewer"}
    assert (await daemon.call("GET", "/api/v1/auth", OPERATOR_TOKEN))[1] == {"role": "operator"}


async def test_state_changes_refuse_foreign_origins(daemon: Daemon) -> None:
    body = {"scope": ["cpu.util"]}
    status, answer, _ = await daemon.call("POST", "/api/v1/embed-tokens", OPERATOR_TOKEN,
                                          json=body, headers={"Origin": "http://evil.example"})
    assert (status, answer["error"]["code"]) == (403, "origin_not_allowed")
    for origin in ("http://dash.example:7470", daemon.base):
        status, _, _ = await daemon.call("POST", "/api/v1/embed-tokens", OPERATOR_TOKEN,
                                         json=body, headers={"Origin": origin})
        assert status == 200


async def test_dns_rebinding_host_is_refused_before_auth(daemon: Daemon) -> None:
    for token in (None, OPERATOR_TOKEN):
        status, answer, _ = await daemon.call("GET", "/api/v1/host", token,
                                              headers={"Host": "evil.example:7470"})
        assert (status, answer["error"]["code"]) == (421, "host_not_allowed")
    # The websocket upgrade too (aiohttp's client lets the Host header be replaced).
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await daemon.session.ws_connect(daemon.ws, headers={**auth_headers(),
                                                            "Host": "rebound.example"})
    assert info.value.status == 421


async def test_cors_preflight_and_headers(daemon: Daemon) -> None:
    allowed = {"Origin": "http://dash.example:7470", "Access-Control-Request-Method": "GET",
               "Access-Control-Request-Headers": "authorization"}
    status, _, resp = await daemon.call("OPTIONS", "/api/v1/host", headers=allowed)
    assert status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "http://dash.example:7470"
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in resp.headers
    status, answer, resp = await daemon.call(
        "OPTIONS", "/api/v1/host", headers={**allowed, "Origin": "http://evil.example"})
    assert (status, answer["error"]["code"]) == (403, "origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in resp.headers
    _, _, resp = await daemon.call("GET", "/api/v1/host", VIEWER_TOKEN,
                                   headers={"Origin": "http://dash.example:7470"})
    assert resp.headers["Access-Control-Allow-Origin"] == "http://dash.example:7470"
    _, _, resp = await daemon.call("GET", "/api/v1/host", VIEWER_TOKEN,
                                   headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    for path in ("/", "/api/v1/host"):  # security headers on public and refused answers
        _, _, resp = await daemon.call("GET", path)
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'self'" in resp.headers["Content-Security-Policy"]


async def test_frame_ancestors_let_runbook_sites_embed(static_dir: Path) -> None:
    config = auth_config(static_dir=str(static_dir), bpf=False,
                         frame_ancestors=("https://wiki.example", "https://runbooks.example"))
    async with running(config) as d:
        _, _, resp = await d.call("GET", "/embed?panels=cpu.util")
        assert ("frame-ancestors https://wiki.example https://runbooks.example"
                in resp.headers["Content-Security-Policy"])
        assert "X-Frame-Options" not in resp.headers  # it cannot express an allowlist


# -- the token URL and its cookie ---------------------------------------------------------


async def test_token_url_sets_cookie_and_strips_the_token(daemon: Daemon) -> None:
    status, _, resp = await daemon.call("GET", f"/?token={OPERATOR_TOKEN}&panels=cpu.util")
    assert status == 303
    assert resp.headers["Location"] == "/?panels=cpu.util"
    cookie = resp.headers["Set-Cookie"]
    port = daemon.base.rsplit(":", 1)[1]
    assert cookie.startswith(f"hostscope_token_{port}={OPERATOR_TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the TLS test
    # The session now carries the cookie: the API and the websocket accept it.
    assert (await daemon.call("GET", "/api/v1/auth"))[1] == {"role": "operator"}
    cookies = {f"hostscope_token_{port}": OPERATOR_TOKEN}
    header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    async with connect(daemon.ws, additional_headers={"Cookie": header}) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"

    status, _, resp = await daemon.call("GET", "/?token=")
    assert status == 401
    status, answer, _ = await daemon.call("GET", f"/?token={BAD_TOKEN}")
    assert (status, answer["error"]["code"]) == (401, "unauthorized")


async def test_stale_cookie_is_cleared(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    port = daemon.base.rsplit(":", 1)[1]
    stale = {"Cookie": f"hostscope_token_{port}=stale-x"}
    status, _, resp = await daemon.call("GET", "/api/v1/host", headers=stale)
    assert status == 401
    assert re.search(rf"hostscope_token_{port}=;.*Max-Age=0", resp.headers["Set-Cookie"])
    # On the websocket the upgrade goes through (a refused upgrade is only a 1006 to the
    # page), deletes the cookie, and the page gets a 4401 it can act on ...
    monkeypatch.setattr(auth_mod, "WS_AUTH_TIMEOUT_S", 0.3)
    async with connect(daemon.ws, additional_headers=stale) as ws:
        assert re.search(rf"hostscope_token_{port}=;.*Max-Age=0",
                         ws.response.headers["Set-Cookie"])
        with pytest.raises(ConnectionClosed) as info:
            await recv_json(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401
    # ... or authenticates with its first message.
    async with connect(daemon.ws, additional_headers=stale) as ws:
        await ws.send(json.dumps({"type": "auth", "token": VIEWER_TOKEN}))
        assert (await recv_json(ws))["role"] == "viewer"
        assert (await recv_json(ws))["type"] == "hello"


# -- websockets ---------------------------------------------------------------------------


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def test_websocket_with_bearer(daemon: Daemon) -> None:
    async with connect(daemon.ws, additional_headers=auth_headers(VIEWER_TOKEN)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send(json.dumps({"type": "bpf", "name": "runqlat", "enabled": True}))
        error = await recv_json(ws)
        assert (error["type"], error["code"]) == ("error", "forbidden")
        # A later auth message raises the connection's role.
        await ws.send(json.dumps({"type": "auth", "token": OPERATOR_TOKEN}))
        assert await recv_json(ws) == {"type": "auth", "role": "operator"}
        await ws.send(json.dumps({"type": "bpf", "name": "runqlat", "enabled": True}))
        answer = await recv_json(ws)
        assert answer.get("code") != "forbidden", answer  # past the role check
        await ws.send(json.dumps({"type": "auth", "token": BAD_TOKEN}))
        assert (await recv_json(ws))["code"] == "unauthorized"


async def test_websocket_first_message_auth(daemon: Daemon) -> None:
    async with connect(daemon.ws) as ws:
        await ws.send(json.dumps({"type": "auth", "token": VIEWER_TOKEN}))
        assert await recv_json(ws) == {"type": "auth", "role": "viewer"}
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send(json.dumps({"type": "subscribe", "names": ["kernel.all.load"]}))
        assert (await recv_json(ws))["type"] == "meta"


@pytest.mark.parametrize("first", [
    {"type": "subscribe", "names": ["kernel.all.load"]},
    {"type": "auth", "token": BAD_TOKEN},
    {"type": "auth"},
    "not json",
])
async def test_websocket_without_valid_auth_is_closed_4401(daemon: Daemon, first: Any) -> None:
    async with connect(daemon.ws) as ws:
        await ws.send(first if isinstance(first, str) else json.dumps(first))
        with pytest.raises(ConnectionClosed) as info:
            await recv_json(ws)  # no hello, no data: only the close
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401
    assert info.value.rcvd.reason.startswith("unauthorized")


async def test_websocket_upgrade_with_bad_credentials_is_refused(daemon: Daemon) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(daemon.ws, additional_headers=auth_headers(BAD_TOKEN)):
            pass
    assert info.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as info:
        async with connect(daemon.ws, additional_headers=auth_headers(),
                           origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403


async def test_websocket_auth_times_out(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_mod, "WS_AUTH_TIMEOUT_S", 0.3)
    async with connect(daemon.ws) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await recv_json(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401
    assert "in time" in info.value.rcvd.reason


# -- rate limiting ------------------------------------------------------------------------


async def test_failures_are_rate_limited_per_client(static_dir: Path) -> None:
    config = auth_config(static_dir=str(static_dir), bpf=False)
    auth = build_auth(config)
    auth.limiter = FailureLimiter(max_failures=5, window_s=1.0)
    async with running(config, auth) as d:
        for _ in range(10):  # the same wrong token again guesses nothing: counted once
            assert (await d.call("GET", "/api/v1/host", BAD_TOKEN))[0] == 401
        for i in range(4):
            assert (await d.call("GET", "/api/v1/host", f"{BAD_TOKEN}-{i}"))[0] == 401
        status, answer, resp = await d.call("GET", "/api/v1/host", BAD_TOKEN + "-x")
        assert (status, answer["error"]["code"]) == (429, "rate_limited")
        assert 1 <= int(resp.headers["Retry-After"]) <= 1
        # Even the right token waits: guessing must not be able to continue.
        assert (await d.call("GET", "/api/v1/host", OPERATOR_TOKEN))[0] == 429
        async with connect(d.ws) as ws:
            await ws.send(json.dumps({"type": "auth", "token": OPERATOR_TOKEN}))
            with pytest.raises(ConnectionClosed) as info:
                await recv_json(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4429
        # Requests without any token are not failures and do not extend the wait.
        assert (await d.call("GET", "/healthz"))[0] == 200
        await asyncio.sleep(1.1)
        assert (await d.call("GET", "/api/v1/host", OPERATOR_TOKEN))[0] == 200


# -- embed tokens through the daemon ------------------------------------------------------


async def test_embed_tokens_open_only_their_panels(daemon: Daemon) -> None:
    status, minted, _ = await daemon.call("POST", "/api/v1/embed-tokens", OPERATOR_TOKEN,
                                          json={"scope": ["cpu.util"], "ttl": 3600})
    assert status == 200, minted
    token = minted["token"]
    assert minted["scope"] == ["cpu.util"] and minted["embed_url"].startswith(
        "/embed?panels=cpu.util&token=e1.")
    assert abs(minted["expires"] - (time.time() + 3600)) < 5

    assert (await daemon.call("GET", "/api/v1/render/cpu.util.svg", token))[0] == 200
    # As <img src> in a runbook: the query parameter (on renders only).
    assert (await daemon.call("GET", f"/api/v1/render/cpu.util.svg?token={token}"))[0] == 200
    assert (await daemon.call("GET", f"/api/v1/host?token={token}"))[0] == 401
    status, answer, _ = await daemon.call(
        "GET", f"/api/v1/render/cpu.util.svg?token={OPERATOR_TOKEN}")  # a real token: no
    assert status == 401 and "only embed tokens" in answer["error"]["message"]
    status, answer, _ = await daemon.call("GET", "/api/v1/render/mem.util.svg", token)
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    for path in ("/api/v1/host", "/api/v1/metrics", "/api/v1/auth"):
        assert (await daemon.call("GET", path, token))[0] == 200
    for method, path, body in [("GET", "/api/v1/fetch?names=kernel.all.load", None),
                               ("GET", "/api/v1/processes", None), ("GET", "/metrics", None),
                               *OPERATOR_ROUTES]:
        assert (await daemon.call(method, path, token, json=body))[0] == 403, path

    async with connect(daemon.ws) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        assert (await recv_json(ws))["scope"] == ["cpu.util"]
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send(json.dumps({"type": "subscribe", "names": ["proc.psinfo"]}))
        error = await recv_json(ws)
        assert (error["code"], error["ref"]) == ("forbidden", "subscribe")
        await ws.send(json.dumps({"type": "bpf", "name": "runqlat", "enabled": True}))
        assert (await recv_json(ws))["code"] == "forbidden"
        await ws.send(json.dumps({"type": "subscribe", "names": ["kernel.all.cpu.util.user"],
                                  "backfill": 0}))
        assert (await recv_json(ws))["type"] == "meta"

    # Minted by a viewer: refused; bad bodies: 400.
    assert (await daemon.call("POST", "/api/v1/embed-tokens", VIEWER_TOKEN,
                              json={"scope": ["cpu.util"]}))[0] == 403
    for body in ({"scope": []}, {"scope": "cpu.util"}, {"scope": ["x"], "ttl": -1},
                 {"scope": ["x"], "ttl": True}, {"scope": ["x"], "extra": 1}, [1]):
        status, answer, _ = await daemon.call("POST", "/api/v1/embed-tokens", OPERATOR_TOKEN,
                                              json=body)
        assert status == 400, (body, answer)


async def test_expired_and_tampered_embed_tokens(daemon: Daemon) -> None:
    from hostscope.daemon.keys import AUTH

    signer = daemon.app[AUTH].signer
    expired = signer.mint(["cpu.util"], 10, now=time.time() - 11)
    assert (await daemon.call("GET", "/api/v1/render/cpu.util.svg", expired))[0] == 401
    good = signer.mint(["cpu.util"], 60, now=time.time())
    prefix, _, signature = good.split(".")
    wider = auth_mod._b64(json.dumps({"s": ["cpu.util", "proc"], "exp": 2**40}).encode())
    assert (await daemon.call("GET", "/api/v1/render/cpu.util.svg",
                              f"{prefix}.{wider}.{signature}"))[0] == 401


async def test_open_websocket_closes_when_its_embed_token_expires(daemon: Daemon) -> None:
    from hostscope.daemon.keys import AUTH

    token = daemon.app[AUTH].signer.mint(["cpu.util"], 2, now=time.time())
    async with connect(daemon.ws, additional_headers=auth_headers(token)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send(json.dumps({"type": "subscribe", "names": ["kernel.all.cpu.util.user"],
                                  "backfill": 0}))
        with pytest.raises(ConnectionClosed) as info:
            for _ in range(100):
                await recv_json(ws)  # meta, live frames, then the close
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401
    assert "expired" in info.value.rcvd.reason


#: The metrics of the cpu.util panel (daemon/panels.json), which the tokens below open.
CPU_UTIL = {"kernel.all.cpu.util.user", "kernel.all.cpu.util.nice", "kernel.all.cpu.util.sys",
            "kernel.all.cpu.util.irq", "kernel.all.cpu.util.wait", "kernel.all.cpu.util.steal"}


class RestartingHelper(InProcessOps):
    """In-process operations that report a privileged helper being restarted (pid,
    error) and let the test broadcast helper notices, as HelperOps does."""

    def __init__(self) -> None:
        super().__init__(lambda detach: None, bpf=False)
        self.listeners: list[Any] = []

    def helper_info(self) -> dict[str, Any] | None:
        return {"state": "restarting", "pid": 4242, "restarts": 1, "last_restart": 0,
                "error": "helper exited (signal 9)"}

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)


@pytest.fixture
async def helper_daemon(static_dir: Path) -> AsyncIterator[Daemon]:
    config = auth_config(interval=INTERVAL, bpf=False, static_dir=str(static_dir))
    async with running(config, privileged=RestartingHelper()) as d:
        yield d


def embed_token(d: Daemon, *scope: str) -> str:
    return d.app[AUTH].signer.mint(scope or ["cpu.util"], 600, now=time.time())


async def test_embed_host_answer_is_what_a_panel_renders_with(helper_daemon: Daemon) -> None:
    d = helper_daemon
    status, full, _ = await d.call("GET", "/api/v1/host", VIEWER_TOKEN)
    assert status == 200 and full["helper"]["pid"] == 4242 and full["collectors"]
    assert {"kernel", "stale", "sampling", "capabilities"} <= set(full)
    status, host, _ = await d.call("GET", "/api/v1/host", embed_token(d))
    assert status == 200
    # frontend/src/stores/host.ts reads hostname and interval_s; PanelCard.vue
    # capabilities[panel.requires]; nothing about the daemon itself.
    assert set(host) == {"hostname", "interval_s", "version", "protocol", "capabilities"}
    assert host["hostname"] == full["hostname"] and host["interval_s"] == INTERVAL
    assert host["capabilities"] == {"psi": {"available": full["capabilities"]["psi"]["available"],
                                            "reason": full["capabilities"]["psi"]["reason"]}}
    assert "4242" not in json.dumps(host) and "signal 9" not in json.dumps(host)


async def test_embed_tokens_read_only_their_metrics(daemon: Daemon) -> None:
    token = embed_token(daemon)
    status, answer, _ = await daemon.call("GET", "/api/v1/metrics", token)
    assert status == 200
    names = {m["name"] for m in answer["metrics"]}
    assert names == CPU_UTIL & {m["name"] for m in
                                (await daemon.call("GET", "/api/v1/metrics", VIEWER_TOKEN))[1][
                                    "metrics"]}
    assert names  # the panel's metrics, so the embedded page can subscribe to them
    status, answer, _ = await daemon.call("GET", "/api/v1/metrics?prefix=kernel.all.cpu.util",
                                          token)
    assert status == 200 and {m["name"] for m in answer["metrics"]} == names
    status, answer, _ = await daemon.call("GET", "/api/v1/metrics?prefix=proc", token)
    assert (status, answer["error"]["code"]) == (403, "forbidden")

    inside, outside = "kernel.all.cpu.util.user", "proc.psinfo.psargs"
    for path in (f"/api/v1/fetch?names={inside}", f"/api/v1/history?names={inside}&seconds=5",
                 f"/api/v1/instances?name={inside}"):
        status, answer, _ = await daemon.call("GET", path, token)
        assert status == 200, (path, answer)
    for path in (f"/api/v1/fetch?names={inside},{outside}", "/api/v1/fetch?names=kernel",
                 f"/api/v1/history?names={outside}&seconds=5",
                 "/api/v1/history?names=kernel.all.load", f"/api/v1/instances?name={outside}"):
        status, answer, _ = await daemon.call("GET", path, token)
        assert (status, answer["error"]["code"]) == (403, "forbidden"), path
        assert "does not open" in answer["error"]["message"]
    status, answer, _ = await daemon.call("GET", f"/api/v1/fetch?names={outside}", token)
    assert outside in answer["error"]["message"]
    # A full token reads everything as before.
    status, _, _ = await daemon.call("GET", f"/api/v1/fetch?names={inside},{outside}",
                                     VIEWER_TOKEN)
    assert status == 200


async def test_no_embed_scope_opens_command_lines(daemon: Daemon) -> None:
    """A scope of ``proc`` (or naming the metric itself) opens every per-process metric
    but the command line: embed links travel in wikis, command lines carry secrets."""
    for scope in (["proc"], ["proc.psinfo"], ["proc.psinfo.psargs"]):
        token = embed_token(daemon, *scope)
        for path in ("/api/v1/fetch?names=proc.psinfo.psargs",
                     "/api/v1/history?names=proc.psinfo.psargs&seconds=5",
                     "/api/v1/instances?name=proc.psinfo.psargs"):
            status, answer, _ = await daemon.call("GET", path, token)
            assert (status, answer["error"]["code"]) == (403, "forbidden"), (scope, path)
            assert "proc.psinfo.psargs" in answer["error"]["message"]
        status, answer, _ = await daemon.call("GET", "/api/v1/metrics?prefix=proc", token)
        listed = {m["name"] for m in answer.get("metrics", [])}
        assert "proc.psinfo.psargs" not in listed, scope
    token = embed_token(daemon, "proc")
    assert (await daemon.call("GET", "/api/v1/fetch?names=proc.psinfo.cmd", token))[0] == 200
    async with connect(daemon.ws, additional_headers=auth_headers(token)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send(json.dumps({"type": "subscribe", "names": ["proc.psinfo.psargs"],
                                  "backfill": 0}))
        error = await recv_type(ws, "error")
        assert error["code"] == "forbidden" and "proc.psinfo.psargs" in error["message"]


async def test_the_process_panel_opens_processes_without_command_lines(daemon: Daemon) -> None:
    """An embed token naming proc.top reads /api/v1/processes (the embedded table), each
    row without its command line; every other scope still gets 403 there."""
    secret = f"--password=hostscope-secret-{time.monotonic_ns()}"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)", secret)
    try:
        async def row_of(token: str) -> dict[str, Any] | None:
            status, answer, _ = await daemon.call(
                "GET", "/api/v1/processes?sort=rss&limit=1000", token)
            assert status == 200, answer
            return next((r for r in answer["processes"] if r["pid"] == child.pid), None)

        viewer = None
        for _ in range(100):  # the process collector runs every process_interval (2 s)
            viewer = await row_of(VIEWER_TOKEN)
            if viewer is not None and viewer["args"]:
                break
            await asyncio.sleep(0.1)
        assert viewer is not None and secret in viewer["args"], viewer
        token = embed_token(daemon, "proc.top")
        row = await row_of(token)
        assert row is not None
        assert set(row) == set(EMBED_PROCESS_FIELDS) and "args" not in row
        assert row == {k: viewer[k] for k in EMBED_PROCESS_FIELDS} | {
            k: row[k] for k in ("cpu", "rss", "io", "state")}  # sampled again meanwhile
        status, answer, _ = await daemon.call("GET", "/api/v1/processes?limit=1000", token)
        assert secret not in json.dumps(answer)
        # The sparklines' history comes with the rows, still without command lines.
        status, answer, _ = await daemon.call(
            "GET", "/api/v1/processes?limit=1000&history=60", token)
        assert status == 200 and secret not in json.dumps(answer)
        assert all(set(r) == {*EMBED_PROCESS_FIELDS, "cpu_history"} for r in answer["processes"])
        # The panel's own metric is open to it (the sparklines); command lines are not.
        assert (await daemon.call("GET", "/api/v1/fetch?names=proc.cpu.util", token))[0] == 200
        for path in ("/api/v1/fetch?names=proc.psinfo.psargs", "/api/v1/fetch?names=proc"):
            assert (await daemon.call("GET", path, token))[0] == 403, path
    finally:
        child.kill()
        await child.wait()
    # Scopes without a process panel: 403, a metric prefix reaching proc.cpu.util too.
    for scope in (["cpu.util"], ["proc.cpu.util"], ["proc"], ["cgroup.cpu", "proc.count"]):
        status, answer, _ = await daemon.call("GET", "/api/v1/processes",
                                              embed_token(daemon, *scope))
        assert (status, answer["error"]["code"]) == (403, "forbidden"), scope
        assert "process panel" in answer["error"]["message"]


async def test_reauth_with_an_embed_token_drops_subscriptions_outside_its_scope(
        daemon: Daemon) -> None:
    token = embed_token(daemon)
    async with connect(daemon.ws, additional_headers=auth_headers(VIEWER_TOKEN)) as ws:
        assert (await recv_json(ws))["type"] == "hello"
        await ws.send(json.dumps({"type": "subscribe", "backfill": 0,
                                  "names": ["kernel.all.load", "kernel.all.cpu.util.user"],
                                  "optional": ["no.such.metric"]}))
        meta = await recv_json(ws)
        assert set(meta["metrics"]) == {"kernel.all.load", "kernel.all.cpu.util.user"}
        await ws.send(json.dumps({"type": "auth", "token": token}))
        answer = await recv_type(ws, "auth")
        assert answer["scope"] == ["cpu.util"]
        assert answer["dropped"] == ["kernel.all.load", "no.such.metric"]
        meta = await recv_type(ws, "meta")
        assert set(meta["metrics"]) == {"kernel.all.cpu.util.user"} and meta["absent"] == []
        for _ in range(3):  # live frames carry only the column left
            samples = await recv_type(ws, "samples")
            assert samples["seq"] == meta["seq"]
            assert len(samples["v"]) == len(meta["series"]) == 1
        # The narrower token also holds for what comes next.
        await ws.send(json.dumps({"type": "subscribe", "names": ["kernel.all.load"]}))
        assert (await recv_type(ws, "error"))["code"] == "forbidden"
        # Back to a full token: nothing to drop, subscriptions are the client's again.
        await ws.send(json.dumps({"type": "auth", "token": VIEWER_TOKEN}))
        assert await recv_type(ws, "auth") == {"type": "auth", "role": "viewer"}
        await ws.send(json.dumps({"type": "subscribe", "names": ["kernel.all.load"],
                                  "backfill": 0}))
        assert "kernel.all.load" in (await recv_type(ws, "meta"))["metrics"]


async def test_embed_connections_get_no_helper_notices(helper_daemon: Daemon) -> None:
    d = helper_daemon
    async with connect(d.ws, additional_headers=auth_headers(VIEWER_TOKEN)) as viewer, \
            connect(d.ws, additional_headers=auth_headers(embed_token(d))) as embed:
        assert (await recv_json(viewer))["type"] == "hello"
        notice = await recv_json(viewer)  # the helper is restarting: told after hello
        assert notice["code"] == "helper_restarting" and notice["helper"]["pid"] == 4242
        assert (await recv_json(embed))["type"] == "hello"
        for listener in d.app[PRIVILEGED].listeners:  # type: ignore[attr-defined]
            listener({"code": "helper_restarted", "message": "back", "helper": {"pid": 4343}})
        assert (await recv_type(viewer, "notice"))["helper"]["pid"] == 4343
        await embed.send(json.dumps({"type": "ping", "id": 1}))
        assert await recv_json(embed) == {"type": "pong", "id": 1}  # nothing before it


async def recv_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next message of type ``kind``, skipping others (live samples)."""
    for _ in range(200):
        msg = await recv_json(ws)
        if msg["type"] == kind:
            return msg
    raise AssertionError(f"no {kind} message")


def test_embed_tokens_survive_a_restart_with_a_secret_file(tmp_path: Path) -> None:
    config = auth_config(embed_secret_file=str(tmp_path / "embed.key"))
    token = build_auth(config).signer.mint(["cpu.util"], 60, now=time.time())
    assert build_auth(config).signer.verify(token, time.time()) is not None
    # Without the file each start has its own secret: old links stop working.
    plain = auth_config()
    token = build_auth(plain).signer.mint(["cpu.util"], 60, now=time.time())
    assert build_auth(plain).signer.verify(token, time.time()) is None


# -- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_tls_end_to_end(ca: trustme.CA, tmp_path: Path, static_dir: Path) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    config = auth_config(static_dir=str(static_dir), bpf=False, tls_cert=str(cert_file),
                         tls_key=str(key_file))
    server_ctx = tls_context(config)
    assert server_ctx is not None and server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    # No CA store: it would only verify client certificates, which hostscope never asks for.
    assert server_ctx.cert_store_stats()["x509_ca"] == 0
    assert server_ctx.verify_mode == ssl.CERT_NONE
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with running(config, ssl_context=server_ctx, client_ssl=client_ctx) as d:
        assert d.base.startswith("https://")
        status, _, resp = await d.call("GET", f"/?token={VIEWER_TOKEN}")
        assert status == 303 and "Secure" in resp.headers["Set-Cookie"]
        assert (await d.call("GET", "/api/v1/auth", OPERATOR_TOKEN))[1]["role"] == "operator"
        async with connect(d.ws, ssl=client_ctx,
                           additional_headers=auth_headers(VIEWER_TOKEN)) as ws:
            assert (await recv_json(ws))["type"] == "hello"
        # A client that does not trust the CA gets no connection at all.
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await plain.get(d.base + "/healthz")


def test_tls_context_reports_bad_files(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("not a certificate")
    config = Config(tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "c.pem"))
    with pytest.raises(ConfigError, match="cannot load tls_cert"):
        tls_context(config)
    assert tls_context(Config()) is None


# -- hostscope serve ----------------------------------------------------------------------


async def test_serve_prints_a_url_that_signs_in(static_dir: Path) -> None:
    env = {k: v for k, v in serve_env().items() if k != "HOSTSCOPE_TOKEN"}
    proc, url, lines = await start_serve("--static-dir", str(static_dir), env=env)
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
        lines.append(line)
        found = re.search(r'open the dashboard.*url="?(http://[^\s"]+\?token=([^\s"]+))', line)
        assert found, line
        opened, token = found.group(1), found.group(2)
        assert opened.startswith(url) and len(token) >= 43
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            assert (await s.get(url + "api/v1/host")).status == 401
            async with s.get(opened) as resp:  # follows the redirect to the bare page
                assert resp.status == 200 and str(resp.url) == url
                assert "hostscope" in await resp.text()
            async with s.get(url + "api/v1/auth") as resp:
                assert await resp.json() == {"role": "operator"}
    finally:
        proc.terminate()
        await read_rest(proc, lines)
        await proc.wait()
    assert not any(token in line for line in lines if "open the dashboard" not in line)


async def test_serve_with_configured_token_prints_no_token() -> None:
    proc, url, lines = await start_serve(env=serve_env())
    try:
        async with aiohttp.ClientSession(headers=auth_headers()) as s:
            assert (await s.get(url + "api/v1/auth")).status == 200
    finally:
        proc.terminate()
        await read_rest(proc, lines)
        await proc.wait()
    assert not any("token=" in line for line in lines), lines
    assert not any(OPERATOR_TOKEN in line for line in lines)


def test_fake_clock_drives_embed_expiry_and_limits() -> None:
    """Auth.check reads embed expiry from the wall clock and failure windows from the
    monotonic one: a daemon whose wall clock jumps back does not forgive failures."""
    clock = FakeClock()
    auth = build_auth(auth_config())
    auth.limiter = FailureLimiter(max_failures=1, window_s=10.0)
    token = auth.signer.mint(["cpu.util"], 5, now=clock.wall())
    assert auth.check(token, "c", clock).scope == frozenset({"cpu.util"})
    clock.advance(6)
    with pytest.raises(ApiError) as info:
        auth.check(token, "c", clock)
    assert info.value.status == 401
    with pytest.raises(ApiError) as info:
        auth.check(OPERATOR_TOKEN, "c", clock)
    assert info.value.status == 429
    clock.advance(10)
    assert auth.check(OPERATOR_TOKEN, "c", clock).role == OPERATOR


def test_token_command(tmp_path: Path) -> None:
    from .test_cli import hostscope

    new = hostscope("token", "new", "--role", "viewer")
    role, token = new.stdout.split()
    assert new.returncode == 0 and role == "viewer" and len(token) >= 43
    hashed = hostscope("token", "hash", token)
    assert hashed.stdout.strip() == hash_token(token)
    store = TokenStore()
    store.add_lines(f"viewer {hashed.stdout.strip()}\n", "t")
    assert store.role_of(token) == VIEWER

    secret = tmp_path / "embed.key"
    config = tmp_path / "hostscope.toml"
    config.write_text(f'embed_secret_file = "{secret}"\n')
    minted = hostscope("token", "embed", "cpu.util", "--ttl", "60", "--config", str(config))
    assert minted.returncode == 0, minted.stderr
    principal = EmbedSigner(load_or_create_secret(secret)).verify(minted.stdout.strip(),
                                                                   time.time())
    assert principal is not None and principal.scope == frozenset({"cpu.util"})
    # The daemon reads the same secret: its link works there.
    assert build_auth(Config(embed_secret_file=str(secret))).signer.verify(
        minted.stdout.strip(), time.time()) == principal
    missing = hostscope("token", "embed", "cpu.util")
    assert missing.returncode == 2 and "embed_secret_file" in missing.stderr
    bad_ttl = hostscope("token", "embed", "cpu.util", "--ttl", "0", "--embed-secret-file",
                        str(secret))
    assert bad_ttl.returncode == 2 and "ttl" in bad_ttl.stderr
