"""daemon/memory.py on the real allocator and the real aiohttp, each in a fresh interpreter:
the arena cap is accepted and a trim gives freed heap pages back (/proc/self/status); the
``hostscope`` command imports aiohttp without a CA store or libstdc++, and leaves the
environment as it found it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import os
import platform
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support import missing

# Objects over 512 bytes come from malloc. Keeping every 64th alive pins the heap's top,
# so glibc cannot give the freed memory back by itself (what a long-lived daemon's heap
# looks like after startup garbage): only malloc_trim returns the pages in between.
SCRIPT = r"""
import json
from hostscope.daemon import memory

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

capped = memory.limit_arenas()
blocks = [bytes(1024) + bytes([i % 256]) for i in range(40_000)]
kept = blocks[::64]
del blocks
before = rss_kb()
released = memory.release_free_memory()
after = rss_kb()
print(json.dumps({"capped": capped, "released": released, "before": before, "after": after,
                  "kept": len(kept)}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc allocator only")
def test_trim_returns_freed_heap_pages_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    got = json.loads(out)
    assert got["capped"] is True
    assert got["released"] is True
    # ~40 MB were freed with 1 in 64 blocks still alive: most of it comes back.
    assert got["before"] - got["after"] > 20_000, got


# What `hostscope serve`'s lean import of the web stack leaves behind in a TLS daemon
# (which has ``ssl``): aiohttp's client
# contexts without certificates (a private attribute, read only to prove the point),
# frozenlist's pure-Python list, no libstdc++ mapped, the environment untouched, and a
# client context made afterwards still trusting the system's CAs.
LEAN_SCRIPT = r"""
import json, os, ssl, sys
os.environ["SSL_CERT_FILE"] = sys.argv[1]  # a user's own setting survives
from hostscope.daemon.memory import lean_imports
with lean_imports(tls=True):
    import aiohttp.connector, aiohttp.web, frozenlist
maps = open("/proc/self/maps").read()
print(json.dumps({
    "client_cas": aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
    "pure_frozenlist": frozenlist.NO_EXTENSIONS,
    "libstdcxx": "libstdc++" in maps,
    "env": os.environ.get("SSL_CERT_FILE"),
    "frozen_env": os.environ.get("FROZENLIST_NO_EXTENSIONS"),
    "later_cas": ssl.create_default_context().cert_store_stats()["x509_ca"],
}))
"""


def test_lean_imports_skip_the_ca_store_and_restore_the_environment() -> None:
    bundle = ssl.get_default_verify_paths().openssl_cafile
    if not bundle or not os.path.exists(bundle):
        missing(f"no system CA bundle at {bundle!r} to compare with")
    out = subprocess.run([sys.executable, "-c", LEAN_SCRIPT, bundle], capture_output=True,
                         text=True, check=True, timeout=60,
                         env={k: v for k, v in os.environ.items()
                              if k != "FROZENLIST_NO_EXTENSIONS"}).stdout
    got = json.loads(out)
    assert got["client_cas"] == 0
    assert got["pure_frozenlist"] is True and got["libstdcxx"] is False
    assert got["env"] == bundle and got["frozen_env"] is None
    assert got["later_cas"] > 0  # the bundle is real: only aiohttp's import skipped it


# A plain-HTTP daemon's lean import: OpenSSL is never loaded, hashlib and hmac work on
# CPython's own SHA-256, and everything hidden can be imported whole afterwards (what the
# first /metrics scrape does through prometheus_client).
PLAIN_SCRIPT = r"""
import json, sys
from hostscope.daemon.memory import lean_imports
with lean_imports(tls=False):
    import aiohttp.web, hmac, hashlib
import mimetypes
system_mime_table = mimetypes._db is not None
def openssl_mapped():
    maps = open("/proc/self/maps").read()
    return "libcrypto" in maps or "libssl" in maps
got = {
    "openssl_during": openssl_mapped(),
    "sha256": hashlib.sha256(b"hostscope").hexdigest(),
    "hmac": hmac.new(b"k", b"m", hashlib.sha256).hexdigest(),
    "hidden_left": [m for m in ("ssl", "_hashlib") if m in sys.modules],
    "forgotten": [m for m in ("urllib.request", "http.client") if m in sys.modules],
}
import prometheus_client, ssl, urllib.request
got.update(system_mime_table=system_mime_table,
           svg=aiohttp.web_fileresponse.CONTENT_TYPES.guess_type("a.svg")[0],
           later_guess=mimetypes.guess_type("a.tar.zst")[0],  # needs the system's table
           https_handler=hasattr(urllib.request, "HTTPSHandler"),
           later_cas=ssl.create_default_context().cert_store_stats()["x509_ca"] >= 0,
           openssl_after=openssl_mapped())
print(json.dumps(got))
"""


def test_plain_lean_import_keeps_openssl_out_and_everything_importable() -> None:
    out = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    got = json.loads(out)
    assert got["openssl_during"] is False
    assert got["sha256"] == hashlib.sha256(b"hostscope").hexdigest()
    assert got["hmac"] == hmac.new(b"k", b"m", hashlib.sha256).hexdigest()
    assert got["hidden_left"] == [] and got["forgotten"] == []
    assert got["https_handler"] is True and got["later_cas"] is True
    assert got["openssl_after"] is True  # loaded by whoever needs it, later
    # aiohttp's own content types work without the system-wide table, which a later
    # mimetypes call still loads
    assert got["system_mime_table"] is False and got["svg"] == "image/svg+xml"
    if os.path.exists("/etc/mime.types") and ".zst" in Path("/etc/mime.types").read_text():
        assert got["later_guess"] is not None


def test_lean_import_hides_nothing_once_openssl_is_loaded() -> None:
    """An interpreter that has ``ssl`` already gains nothing by hiding it, and its asyncio
    may hold it: the context leaves the modules alone."""
    code = ("import ssl, sys\nfrom hostscope.daemon.memory import lean_imports\n"
            "with lean_imports(tls=False):\n    import ssl as again, asyncio.sslproto\n"
            "print(again is ssl, asyncio.sslproto.ssl is ssl)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.split() == ["True", "True"]


async def test_serve_streams_and_scrapes_without_libstdcxx_or_openssl() -> None:
    """The real command: the websocket and /metrics work; neither libstdc++ nor OpenSSL is
    mapped until the first scrape; and the other commands do not load the web stack."""
    import aiohttp
    from websockets.asyncio.client import connect

    from .support import auth_headers
    from .test_daemon_shutdown import read_rest, start_serve

    proc, url, lines = await start_serve()
    try:
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libstdc++" not in maps and "libcrypto" not in maps
        ws_url = url.replace("http://", "ws://") + "api/v1/stream"
        async with connect(ws_url, additional_headers=auth_headers()) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
        async with aiohttp.ClientSession(headers=auth_headers()) as session, \
                session.get(url + "metrics") as resp:
            assert resp.status == 200 and "hostscope_" in await resp.text()
    finally:
        proc.terminate()
        await read_rest(proc, lines)
        assert await proc.wait() == 0, "".join(lines)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, hostscope.daemon.cli; "
         "print(sorted(m for m in ('aiohttp', 'asyncio', 'ssl') if m in sys.modules))"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert loaded == "[]"


async def test_serve_over_tls_imports_the_web_stack_with_openssl(tmp_path: Path) -> None:
    """With tls_cert the web stack is imported with ``ssl`` (asyncio would keep no TLS
    for good otherwise): the real command answers HTTPS and wss."""
    import aiohttp
    import trustme
    from websockets.asyncio.client import connect

    from .support import auth_headers
    from .test_daemon_shutdown import read_rest, start_serve

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    proc, url, lines = await start_serve("--tls-cert", str(cert_file), "--tls-key",
                                         str(key_file))
    try:
        assert url.startswith("https://127.0.0.1:")
        async with aiohttp.ClientSession(headers=auth_headers()) as session, \
                session.get(url + "api/v1/host", ssl=client_ctx) as resp:
            assert resp.status == 200 and "capabilities" in await resp.json()
        async with connect(url.replace("https://", "wss://") + "api/v1/stream",
                           ssl=client_ctx, additional_headers=auth_headers()) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
    finally:
        proc.terminate()
        await read_rest(proc, lines)
        assert await proc.wait() == 0, "".join(lines)


def test_trims_repeat_while_the_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst's garbage is returned by a later trim, not only by the one after startup."""
    from hostscope.daemon import memory

    calls: list[float] = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(time.monotonic()))

    async def run() -> None:
        memory.schedule_trims(asyncio.get_running_loop(), first_s=0.01, every_s=0.02)
        await asyncio.sleep(0.2)

    asyncio.run(run())
    assert len(calls) >= 4, calls
    assert all(b - a >= 0.015 for a, b in itertools.pairwise(calls)), calls
