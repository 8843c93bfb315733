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
  the first walk of every collector have left their garbage behind.

Measured on the development VM (`hostscope serve`, one client): about 0.7 MB for the
arena cap and 0.5 MB for the trim. Both are no-ops where the C library is not glibc.

* :func:`lean_imports` wraps ``hostscope serve``'s import of the web stack, which loads
  and builds things at import time that the daemon never uses (see there).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterator

log = logging.getLogger("hostscope.daemon")

#: glibc's mallopt parameter number for the arena cap (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
#: Arenas kept: the main one and one for all other threads.
ARENAS = 2
#: Seconds after startup to trim: every collector (the slowest run every 10 s) has run.
TRIM_AFTER_S = 15.0


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
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


#: Environment set while aiohttp is first imported (see :func:`lean_imports`).
LEAN_IMPORT_ENV = {
    # OpenSSL's default CA file, read by ``set_default_verify_paths``: an empty one.
    "SSL_CERT_FILE": os.devnull,
    # frozenlist's documented switch to its pure-Python FrozenList.
    "FROZENLIST_NO_EXTENSIONS": "1",
}


@contextlib.contextmanager
def lean_imports() -> Iterator[None]:
    """Import the web stack (aiohttp) without what it builds or loads that the daemon
    never uses; ``hostscope serve`` imports it in this context.

    * ``aiohttp.connector`` makes two *client* SSL contexts when imported, and each loads
      the system CA bundle (Debian's: ~140 certificates parsed into OpenSSL objects),
      ~2 MB resident for good. The daemon makes no outbound TLS connection and asks no
      client certificate (its server context, ``serve.tls_context``, loads no CA store),
      so for the import OpenSSL's default CA file is an empty one.
    * frozenlist (aiohttp's signal and middleware lists) ships its list as a C++
      extension, which maps libstdc++ into the process (~1.1 MB of its pages resident);
      its pure-Python twin behaves the same and is touched at startup and shutdown only.

    The environment is restored afterwards, so nothing else (the privileged helper, perf,
    a TLS client made later) sees the change. Without effect on modules already imported.

    Not done: keeping ``ssl`` out of a plain-HTTP daemon (another ~1.8 MB). aiohttp,
    asyncio, ``http.client`` and ``urllib.request`` import it optionally, but what they
    define then lacks its TLS parts for good (``urllib.request.HTTPSHandler``), and
    prometheus_client, imported by the first ``/metrics`` scrape, needs those.

    Measured (`benchmarks/bench_daemon.py --compare`, one client, VmRSS): 44.2 -> 40.6 MB.
    """
    saved = {key: os.environ.get(key) for key in LEAN_IMPORT_ENV}
    os.environ.update(LEAN_IMPORT_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
