"""Resident memory the daemon does not need to keep: imports and glibc allocator settings.

Python objects live in CPython's own arenas, but everything bigger than 512 bytes (large
dicts and lists, file contents read by collectors, buffers of C extensions) comes from
glibc's malloc. glibc gives each thread that allocates its own arena (up to 8 per CPU),
and a freed chunk in the middle of an arena stays resident until the arena is trimmed.
The daemon has a handful of threads (sampler, BPF and helper pools, executors) that
allocate a little now and then, so a busy arena each costs resident memory for nothing:
at 1 Hz no two threads contend for the allocator.

* :func:`limit_arenas` caps the arenas at :data:`ARENAS` before any thread starts;
* :func:`release_free_memory` hands free pages back (``malloc_trim``) once startup and
  the first walk of every collector have left their garbage behind, and then every
  :data:`TRIM_EVERY_S` (:func:`schedule_trims`): a burst (a thousand processes walked for
  a minute, a big history answer) frees its memory in the middle of the heap, where only
  a trim returns it. One trim costs ~1-2 ms with a heap of this size.

Measured on the development VM (`hostscope serve`, one client): about 0.7 MB for the
arena cap and 0.5 MB for the trim. Both are no-ops where the C library is not glibc.

* :func:`lean_imports` wraps ``hostscope serve``'s import of the web stack, which loads
  and builds things at import time that the daemon never uses (see there).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import caps

if TYPE_CHECKING:  # asyncio is imported under lean_imports, not before
    import asyncio

log = logging.getLogger("hostscope.daemon")

#: glibc's mallopt parameter number for the arena cap (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
#: Arenas kept: the main one and one for all other threads.
ARENAS = 2
#: Seconds after startup to trim: every collector (the slowest run every 10 s) has run.
TRIM_AFTER_S = 15.0
#: Seconds between later trims.
TRIM_EVERY_S = 300.0


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = caps.libc()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (musl has neither function)
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before threads start); False if not possible."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Return free heap pages to the system; True if glibc released any."""
    libc = _glibc()
    if libc is None:
        return False
    released = bool(libc.malloc_trim(0))
    log.debug("malloc_trim", extra={"released": released})
    return released


def schedule_trims(loop: asyncio.AbstractEventLoop, *, first_s: float = TRIM_AFTER_S,
                   every_s: float = TRIM_EVERY_S) -> None:
    """Trim ``first_s`` after startup and every ``every_s`` after that, for as long as
    the loop runs (a pending trim is simply dropped when it closes)."""

    def trim() -> None:
        release_free_memory()
        loop.call_later(every_s, trim)

    loop.call_later(first_s, trim)


#: Environment set while aiohttp is first imported (see :func:`lean_imports`).
LEAN_IMPORT_ENV = {
    # OpenSSL's default CA file, read by ``set_default_verify_paths``: an empty one.
    "SSL_CERT_FILE": os.devnull,
    # frozenlist's documented switch to its pure-Python FrozenList.
    "FROZENLIST_NO_EXTENSIONS": "1",
}

#: Hidden while a plain-HTTP daemon imports the web stack: the TLS module and OpenSSL's
#: hash backend, the two ways libcrypto gets loaded (see :func:`lean_imports`).
OPENSSL_MODULES = ("ssl", "_hashlib")
#: hashlib's own SHA-256 (3.11: ``_sha256``; 3.12 on: ``_sha2``): the token hashes and
#: embed signatures need it when ``_hashlib`` is hidden.
BUILTIN_SHA256 = ("_sha256", "_sha2")
#: Standard modules that define their HTTPS parts only if ``ssl`` imports
#: (``http.client.HTTPSConnection``, ``urllib.request.HTTPSHandler``) and that the web
#: stack imports for its client side, which the daemon never uses. Forgotten after a
#: hidden-OpenSSL import, so that whoever imports them next gets them whole:
#: prometheus_client, imported by the first ``/metrics`` scrape, needs ``HTTPSHandler``.
HTTPS_DEPENDENT = ("urllib.request", "http.client")


def _can_hide_openssl() -> bool:
    """Whether hiding OpenSSL's modules keeps libcrypto out: neither is loaded yet, and
    hashlib has its own SHA-256 to fall back on."""
    if any(name in sys.modules for name in OPENSSL_MODULES):
        return False
    return any(importlib.util.find_spec(name) is not None for name in BUILTIN_SHA256)


@contextlib.contextmanager
def lean_imports(*, tls: bool) -> Iterator[None]:
    """Import the web stack (aiohttp) without what it builds or loads that the daemon
    never uses; ``hostscope serve`` imports it in this context.

    * A daemon that serves plain HTTP (the default: loopback) makes no TLS connection,
      in or out, so ``ssl`` and ``_hashlib`` are hidden: aiohttp, asyncio and hashlib
      import them optionally and do without, and OpenSSL (libcrypto, libssl: ~5 MB
      resident, mostly libcrypto's pages touched by its own initialisation) is never
      loaded. hashlib and hmac use CPython's built-in SHA-256 for the token hashes
      and embed signatures (a few short strings a request). Afterwards the modules can be
      imported again: the first ``/metrics`` scrape does (prometheus_client imports
      ``ssl``), and :data:`HTTPS_DEPENDENT` are forgotten so that it gets them whole.
      asyncio itself keeps no TLS for good, which is why a daemon with ``tls_cert`` does
      not hide anything (``tls=True``).
    * ``aiohttp.connector`` makes two *client* SSL contexts when imported, and each loads
      the system CA bundle (Debian's: ~140 certificates parsed into OpenSSL objects),
      ~2 MB resident for good. This matters to a TLS daemon, which has ``ssl``: it makes
      no outbound TLS connection and asks no client certificate (its server context,
      ``serve.tls_context``, loads no CA store), so for the import OpenSSL's default CA
      file is an empty one.
    * frozenlist (aiohttp's signal and middleware lists) ships its list as a C++
      extension, which maps libstdc++ into the process (~1.1 MB of its pages resident);
      its pure-Python twin behaves the same and is touched at startup and shutdown only.
    * ``aiohttp.web_fileresponse`` makes its own ``MimeTypes()`` table (Python's built-in
      types plus aiohttp's own), which as a side effect makes :mod:`mimetypes` read the
      system's tables (``/etc/mime.types``: ~2,000 types, ~0.4 MB of dicts) into a
      module-wide table that the daemon never consults. It is marked initialised for
      the import, and unmarked afterwards if nothing loaded it meanwhile, so a later
      ``mimetypes.guess_type`` still reads the system's tables.

    The environment and ``sys.modules`` are restored afterwards, so nothing else (the
    privileged helper, perf, a TLS client made later) sees the change. Without effect on
    modules already imported.

    Measured (`benchmarks/bench_daemon.py --compare`, one client, VmRSS): the CA store and
    libstdc++ 44.2 -> 40.6 MB; OpenSSL, see docs/daemon.md.
    """
    import mimetypes

    saved = {key: os.environ.get(key) for key in LEAN_IMPORT_ENV}
    hidden = () if tls or not _can_hide_openssl() else OPENSSL_MODULES
    before = set(sys.modules)
    os.environ.update(LEAN_IMPORT_ENV)
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "absent"
    mime_table_unread = not mimetypes.inited
    mimetypes.inited = True
    try:
        yield
    finally:
        if mime_table_unread and mimetypes._db is None:  # nobody called mimetypes.init()
            mimetypes.inited = False
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
        if hidden:
            for name in HTTPS_DEPENDENT:
                if name not in before:
                    sys.modules.pop(name, None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
