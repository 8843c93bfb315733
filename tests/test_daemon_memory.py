"""daemon/memory.py on the real allocator and the real aiohttp, each in a fresh interpreter:
the arena cap is accepted and a trim gives freed heap pages back (/proc/self/status); the
``hostscope`` command imports aiohttp without a CA store or libstdc++, and leaves the
environment as it found it."""

from __future__ import annotations

import json
import os
import platform
import ssl
import subprocess
import sys
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


# What `hostscope serve`'s lean import of the web stack leaves behind: aiohttp's client
# contexts without certificates (a private attribute, read only to prove the point),
# frozenlist's pure-Python list, no libstdc++ mapped, the environment untouched, and a
# client context made afterwards still trusting the system's CAs.
LEAN_SCRIPT = r"""
import json, os, ssl, sys
os.environ["SSL_CERT_FILE"] = sys.argv[1]  # a user's own setting survives
from hostscope.daemon.memory import lean_imports
with lean_imports():
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


async def test_serve_streams_and_scrapes_without_libstdcxx_or_a_ca_store() -> None:
    """The real command: the websocket and /metrics work; no libstdc++ is mapped; and the
    other commands do not load the web stack at all."""
    import aiohttp
    from websockets.asyncio.client import connect

    from .support import auth_headers
    from .test_daemon_shutdown import read_rest, start_serve

    proc, url, lines = await start_serve()
    try:
        assert "libstdc++" not in Path(f"/proc/{proc.pid}/maps").read_text()
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
