"""``hostscope serve``: the daemon's process, from a built config to SIGTERM.

Imported by :func:`hostscope.daemon.cli.cmd_serve` only, inside
:func:`hostscope.daemon.memory.lean_imports`: this module pulls in aiohttp's web stack,
which the other commands never need.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .auth import Auth, build_auth
from .config import Config, ConfigError, is_loopback
from .logs import setup_logging

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("hostscope.daemon")


def main(config: Config) -> int:
    """Serve ``config`` until SIGTERM/SIGINT; the process exit status. A token or TLS
    file that cannot be used raises :class:`ConfigError` before anything is started."""
    auth = build_auth(config, os.environ)
    ssl_context = tls_context(config)
    setup_logging(config.log_level, config.log_format, repeats=config.log_repeats)
    return asyncio.run(run_server(config, auth=auth, ssl_context=ssl_context))


def tls_context(config: Config) -> ssl.SSLContext | None:
    """A server context from ``tls_cert``/``tls_key`` (TLS 1.2 or newer), or None.

    A plain ``PROTOCOL_TLS_SERVER`` context: Python's defaults for it are the secure ones
    (no SSLv2/3, no compression, the server's cipher order), and unlike
    ``create_default_context(Purpose.CLIENT_AUTH)`` it loads no CA store, which is only for
    verifying client certificates; hostscope asks for none (tokens are its auth), and the
    store would keep ~1 MB of parsed certificates resident.
    """
    if config.tls_cert is None or config.tls_key is None:
        return None
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load tls_cert {config.tls_cert} / tls_key "
                          f"{config.tls_key}: {exc}") from None
    return context


def _url(address: Any, scheme: str = "http") -> str:
    host, port = address[0], address[1]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/"


def _open_url(address: Any, scheme: str, token: str) -> str:
    """The ready-to-open URL: a wildcard bind is opened through loopback (a Host of
    0.0.0.0 is not one the daemon answers to)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address[0], address[0])
    return f"{_url((host, address[1]), scheme)}?token={token}"


async def run_server(config: Config, *, auth: Auth | None = None,
                     ssl_context: ssl.SSLContext | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit status."""
    from . import memory, rlimits
    from .app import create_app  # the app pulls in aiohttp's web stack: only for serve

    memory.limit_arenas()  # before the sampler, helper and executor threads start
    rlimits.raise_nofile()  # before the collectors and the helper size their budgets
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    if auth is None:
        # Before privileges go: the token file may be readable by root only.
        auth = build_auth(config, os.environ)
    privileged = None
    if config.privsep:
        from .helper_client import start_privileged

        try:
            privileged = start_privileged(config)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            log.error("cannot start the privileged helper", extra={"error": str(exc)})
            return 1
    app = create_app(config, privileged=privileged, auth=auth)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=config.shutdown_timeout
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context).start()
    except OSError as exc:
        log.error(
            "cannot listen",
            extra={"host": config.host, "port": config.port, "error": exc.strerror or str(exc)},
        )
        await runner.cleanup()
        return 1
    scheme = "https" if ssl_context is not None else "http"
    log.info("listening", extra={"url": " ".join(_url(a, scheme) for a in runner.addresses)})
    memory.schedule_trims(loop)
    generated = auth.generated
    if generated is not None:
        # Like a notebook server: the token of this run, ready to open (it sets a cookie
        # and is stripped from the address bar).
        log.info("open the dashboard",
                 extra={"url": _open_url(runner.addresses[0], scheme, generated)})
    if ssl_context is None and not is_loopback(config.host):
        log.warning("serving without TLS beyond loopback: tokens cross the network in "
                    "clear text; configure tls_cert and tls_key")
    await stop.wait()
    started = time.monotonic()
    log.info("shutting down", extra={"signal": received[0] if received else None})
    await runner.cleanup()
    log.info("shut down", extra={"seconds": round(time.monotonic() - started, 3)})
    return 0
