"""The ``hostscope`` command: ``serve``, ``sample``, ``doctor`` and ``version``.

``serve`` runs the daemon until SIGTERM or SIGINT, then shuts down gracefully (websockets
closed with 1001, sampler stopped, everything attached detached) within a few seconds.
``sample`` prints current values once, for people (with units) or scripts (``--json``).
``doctor`` checks what BPF modules and profiling need here (privileges, bcc, kernel
headers, tracefs, ...) and how to fix what is missing; it is
:func:`hostscope.bpfmods.doctor.doctor_main`, whose arguments and exit status it keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from hostscope.metrics.defaults import build_sampler
from hostscope.metrics.format import format_value
from hostscope.metrics.model import UnknownMetricError
from hostscope.metrics.sources import Roots

from .config import DEFAULT_PORT, LOG_FORMATS, LOG_LEVELS, Config, ConfigError, build_config
from .logs import setup_logging
from .version import VERSION

log = logging.getLogger("hostscope.daemon")

SERVE_EPILOG = f"""\
configuration file (--config FILE, TOML): keys mirror the flags with underscores, e.g.

    host = "127.0.0.1"
    port = {DEFAULT_PORT}
    interval = 1.0            # seconds between samples
    history = 3600            # seconds of full-resolution history in memory
    process_interval = 2.0
    log_level = "info"        # {", ".join(LOG_LEVELS)}
    log_format = "text"       # {", ".join(LOG_FORMATS)}
    allowed_hosts = ["myhost.example"]             # extra Host header names accepted
    allowed_origins = ["https://dash.example"]     # extra websocket/API origins
    frame_ancestors = ["https://wiki.example"]     # who may embed the dashboard
    privsep = true            # privileged helper; this process drops every capability

Flags override the file; unknown keys and wrong types are rejected. The daemon only
listens on loopback unless --allow-remote is given, because it has no authentication.
See docs/daemon.md for the API, security model and shutdown behaviour.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hostscope",
        description="hostscope: a per-host live performance dashboard "
        "(PCP-style metrics over a websocket, REST API, Prometheus /metrics).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{serve,sample,doctor,version}")

    serve = sub.add_parser(
        "serve",
        help="run the daemon (dashboard, API, websocket stream, /metrics)",
        description="Run the hostscope daemon until SIGTERM/SIGINT.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    serve.add_argument("--interval", type=float, metavar="SECONDS",
                       help="sampling interval (default 1.0)")
    serve.add_argument("--history", type=float, metavar="SECONDS",
                       help="full-resolution history kept in memory (default 3600)")
    serve.add_argument("--process-interval", type=float, metavar="SECONDS",
                       help="per-process sampling interval (default 2.0)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow listening on a non-loopback address (no auth yet!)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="default info")
    serve.add_argument("--log-format", choices=LOG_FORMATS,
                       help="text (key=value, default) or json, one line per event")
    serve.add_argument("--proc-root", metavar="DIR", help="procfs to read (default /proc)")
    serve.add_argument("--sys-root", metavar="DIR", help="sysfs to read (default /sys)")
    serve.add_argument("--etc-root", metavar="DIR", help="/etc to read identity from")
    serve.add_argument("--no-privsep", dest="privsep", action="store_false",
                       help="do privileged work (BPF, profiles) in this process instead of a "
                       "helper, keeping its capabilities (development only)")
    serve.add_argument("--static-dir", metavar="DIR",
                       help="built dashboard to serve (default: the packaged one)")
    serve.set_defaults(func=cmd_serve)

    sample = sub.add_parser(
        "sample",
        help="print current metric values once",
        description="Print current values of metrics (all, or the given names/prefixes). "
        "Counters are shown as per-second rates, so two samples are taken --interval apart.",
    )
    sample.add_argument("names", nargs="*", metavar="NAME_OR_PREFIX",
                        help="metric names or dotted prefixes, e.g. kernel.all.cpu disk.dev")
    sample.add_argument("--json", action="store_true",
                        help="JSON for scripts: {name: {descriptor..., instances: {i: v}}}")
    sample.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between the two samples rates need (default 1)")
    sample.add_argument("--proc-root", default="/proc", metavar="DIR")
    sample.add_argument("--sys-root", default="/sys", metavar="DIR")
    sample.add_argument("--etc-root", default="/etc", metavar="DIR")
    sample.set_defaults(func=cmd_sample)

    # Its arguments (--json, --help) are doctor_main's own: passed through unparsed.
    doctor = sub.add_parser("doctor", add_help=False,
                            help="check BPF and perf readiness (exit 0 when modules can run)")
    doctor.set_defaults(func=None)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "doctor":
        from hostscope.bpfmods.doctor import doctor_main

        return doctor_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    return func(args)


def _fail(message: str) -> int:
    print(f"hostscope: error: {message}", file=sys.stderr)
    return 2


# -- serve ---------------------------------------------------------------------------

_NOT_CONFIG = ("command", "func", "config")


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    try:
        config = build_config(getattr(args, "config", None), overrides)
        config.check_bind()
    except ConfigError as exc:
        return _fail(str(exc))
    setup_logging(config.log_level, config.log_format, repeats=config.log_repeats)
    return asyncio.run(run_server(config))


def _url(address: Any) -> str:
    host, port = address[0], address[1]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


async def run_server(config: Config) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit status."""
    from .app import create_app  # the app pulls in aiohttp's web stack: only for serve

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    privileged = None
    if config.privsep:
        from .helper_client import start_privileged

        try:
            privileged = start_privileged(config)
        except (OSError, RuntimeError, ValueError) as exc:
            log.error("cannot start the privileged helper", extra={"error": str(exc)})
            return 1
    app = create_app(config, privileged=privileged)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=config.shutdown_timeout
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
    except OSError as exc:
        log.error(
            "cannot listen",
            extra={"host": config.host, "port": config.port, "error": exc.strerror or str(exc)},
        )
        await runner.cleanup()
        return 1
    log.info("listening", extra={"url": " ".join(_url(a) for a in runner.addresses)})
    await stop.wait()
    started = time.monotonic()
    log.info("shutting down", extra={"signal": received[0] if received else None})
    await runner.cleanup()
    log.info("shut down", extra={"seconds": round(time.monotonic() - started, 3)})
    return 0


# -- sample --------------------------------------------------------------------------


def _clean(value: float | str | None) -> float | str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cmd_sample(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.interval) and 0 < args.interval <= 60):
        return _fail("--interval must be > 0 and <= 60 seconds")
    roots = Roots(proc=Path(args.proc_root), sys=Path(args.sys_root), etc=Path(args.etc_root))
    sampler = build_sampler(roots, interval_s=args.interval)
    try:
        try:
            descs = sampler.registry.resolve(args.names) if args.names else list(sampler.registry)
        except UnknownMetricError as exc:
            return _fail(f"{exc} (list them with: hostscope sample)")
        sampler.sample(force_all=True)
        # Rates (and what is derived from them) need a second sample.
        if any(d.is_counter or d.derived for d in descs):
            time.sleep(args.interval)
            sampler.sample(force_all=True)
        latest = sampler.latest
        if args.json:
            out = {
                d.name: {
                    **d.to_json(),
                    "instances": {i: _clean(v) for i, v in latest.get(d.name, {}).items()},
                }
                for d in descs
            }
            print(json.dumps(out, indent=2, allow_nan=False))
            return 0
        rows: list[tuple[str, str, str]] = []
        for d in descs:
            values = latest.get(d.name)
            if not values:
                rows.append((d.name, "", "-"))
                continue
            for inst, value in values.items():
                rows.append((d.name, inst, format_value(value, d.value_units)))
        name_w = max((len(r[0]) for r in rows), default=0)
        inst_w = max((len(r[1]) for r in rows), default=0)
        for name, inst, text in rows:
            print(f"{name:<{name_w}}  {inst:<{inst_w}}  {text}".rstrip())
        return 0
    finally:
        sampler.close()


def cmd_version(args: argparse.Namespace) -> int:
    del args
    print(f"hostscope {VERSION}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
