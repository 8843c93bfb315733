"""The ``hostscope`` command: ``serve``, ``sample``, ``doctor`` and ``version``.

``serve`` runs the daemon until SIGTERM or SIGINT, then shuts down gracefully (websockets
closed with 1001, sampler stopped, everything attached detached) within a few seconds.
``token`` makes tokens, their hashes and embed tokens (docs/security.md).
``sample`` prints current values once, for people (with units) or scripts (``--json``).
``doctor`` checks what BPF modules and profiling need here (privileges, bcc, kernel
headers, tracefs, ...) and how to fix what is missing; it is
:func:`hostscope.bpfmods.doctor.doctor_main`, whose arguments and exit status it keeps.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hostscope.metrics.defaults import build_sampler
from hostscope.metrics.format import format_value
from hostscope.metrics.model import UnknownMetricError
from hostscope.metrics.sources import Roots

from . import memory
from .config import (
    DEFAULT_PORT,
    LOG_FORMATS,
    LOG_LEVELS,
    ROLES,
    ConfigError,
    build_config,
)
from .version import VERSION

log = logging.getLogger("hostscope.daemon")

SERVE_EPILOG = f"""\
configuration file (--config FILE, TOML): keys mirror the flags with underscores, e.g.

    host = "127.0.0.1"
    port = {DEFAULT_PORT}
    interval = 1.0            # seconds between samples
    history = 3600            # seconds of full-resolution history in memory
    process_interval = 2.0
    tcpconn_interval = 5.0    # TCP states: each walks the kernel's whole TCP hash
    log_level = "info"        # {", ".join(LOG_LEVELS)}
    log_format = "text"       # {", ".join(LOG_FORMATS)}
    allowed_hosts = ["myhost.example"]             # extra Host header names accepted
    allowed_origins = ["https://dash.example"]     # extra websocket/API origins
    frame_ancestors = ["https://wiki.example"]     # who may embed the dashboard
    privsep = true            # privileged helper; this process drops every capability
    token_file = "/etc/hostscope/tokens"  # 'ROLE TOKEN' lines, mode 600
    tokens = ["viewer sha256:..."]        # or hashes here (hostscope token hash)
    tls_cert = "/etc/hostscope/cert.pem"  # with tls_key: serve HTTPS
    embed_secret_file = "/var/lib/hostscope/embed.key"  # embed links survive restarts

Flags override the file; unknown keys and wrong types are rejected. Every request but
/healthz and the dashboard's files needs a token: with none configured (token_file,
tokens, or the HOSTSCOPE_TOKEN environment variable) a random one is printed as a
ready-to-open URL. Listening beyond loopback needs configured tokens.
See docs/security.md (tokens, roles, TLS) and docs/daemon.md (API, shutdown).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hostscope",
        description="hostscope: a per-host live performance dashboard "
        "(PCP-style metrics over a websocket, REST API, Prometheus /metrics).",
    )
    sub = parser.add_subparsers(dest="command",
                                metavar="{serve,sample,doctor,token,version}")

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
    serve.add_argument("--token-file", metavar="FILE",
                       help="tokens: 'ROLE TOKEN-OR-HASH' lines (viewer/operator), mode 600")
    serve.add_argument("--tls-cert", metavar="PEM", help="TLS certificate chain (with --tls-key)")
    serve.add_argument("--tls-key", metavar="PEM", help="TLS private key")
    serve.add_argument("--embed-secret-file", metavar="FILE",
                       help="secret signing embed tokens, kept so embed links survive restarts")
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

    token = sub.add_parser(
        "token", help="make tokens, token hashes and embed tokens",
        description="Tokens for hostscope serve (see docs/security.md).")
    tsub = token.add_subparsers(dest="token_command", metavar="{new,hash,embed}")
    tnew = tsub.add_parser("new", help="print a new random token (256 bits)")
    tnew.add_argument("--role", choices=ROLES, help="print a token-file line for this role")
    thash = tsub.add_parser("hash", help="print the sha256: hash of a token (read from "
                            "stdin if not given) for token files and 'tokens'")
    thash.add_argument("value", nargs="?", metavar="TOKEN")
    tembed = tsub.add_parser(
        "embed", help="mint an embed token (read-only, scoped, expiring)",
        description="Mint an embed token with the daemon's embed secret file. A running "
        "daemon also mints them: POST /api/v1/embed-tokens (operator role).")
    tembed.add_argument("scope", nargs="+", metavar="PANEL_OR_METRIC",
                        help="panel ids (cpu.util) or metric names/prefixes it opens")
    tembed.add_argument("--ttl", type=float, default=30 * 86400.0, metavar="SECONDS",
                        help="lifetime (default 30 days)")
    tembed.add_argument("--config", metavar="FILE", help="the daemon's TOML configuration")
    tembed.add_argument("--embed-secret-file", metavar="FILE",
                        help="the daemon's embed_secret_file (default: from --config)")
    token.set_defaults(func=cmd_token)

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
    try:
        return func(args)
    except BrokenPipeError:
        # `hostscope sample --json | head`: the reader left, which is not an error
        # worth a traceback. Python's documented recipe: point stdout at /dev/null so
        # the interpreter's final flush does not fail again; 141 is what a shell
        # reports for a command killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _fail(message: str) -> int:
    print(f"hostscope: error: {message}", file=sys.stderr)
    return 2


# -- serve ---------------------------------------------------------------------------

_NOT_CONFIG = ("command", "func", "config")


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    try:
        config = build_config(getattr(args, "config", None), overrides)
        config.check_bind(os.environ)
    except ConfigError as exc:
        return _fail(str(exc))
    # The web stack is imported here only: the rest of the command line (sample, token,
    # version) never loads it.
    with memory.lean_imports(tls=config.tls_cert is not None):
        from . import serve
    try:
        return serve.main(config)
    except ConfigError as exc:
        return _fail(str(exc))


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


def cmd_token(args: argparse.Namespace) -> int:
    from .auth import EmbedSigner, hash_token, load_or_create_secret, new_token
    from .errors import ApiError

    command = getattr(args, "token_command", None)
    if command == "new":
        token = new_token()
        print(f"{args.role} {token}" if args.role else token)
        return 0
    if command == "hash":
        value = args.value if args.value is not None else sys.stdin.readline().strip()
        if not value:
            return _fail("no token given")
        print(hash_token(value))
        return 0
    if command == "embed":
        secret_file = args.embed_secret_file
        try:
            if secret_file is None and args.config is not None:
                secret_file = build_config(args.config).embed_secret_file
            if secret_file is None:
                return _fail("embed tokens are signed with the daemon's embed_secret_file: "
                             "pass --embed-secret-file or --config (or mint one from a "
                             "running daemon: POST /api/v1/embed-tokens)")
            signer = EmbedSigner(load_or_create_secret(secret_file))
            print(signer.mint(args.scope, args.ttl, time.time()))
        except ConfigError as exc:
            return _fail(str(exc))
        except ApiError as exc:
            return _fail(exc.message)
        return 0
    print("usage: hostscope token {new,hash,embed} ...", file=sys.stderr)
    return 2


def cmd_version(args: argparse.Namespace) -> int:
    del args
    print(f"hostscope {VERSION}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
