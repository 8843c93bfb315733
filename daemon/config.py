"""Daemon configuration: one typed record, filled from a TOML file and then from flags.

Every setting has exactly one name, used both as the TOML key and (with dashes) as the
command-line flag, so ``port = 7471`` in the file and ``--port 7471`` mean the same thing.
Flags override the file. The file is validated strictly: an unknown key or a value of the
wrong type is rejected with a message naming the key, because a silently ignored typo
(``alow_remote = true``) in a security-relevant setting is worse than refusing to start.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hostscope.metrics.sources import Roots

if TYPE_CHECKING:
    from hostscope.bpfmods.symbol_limits import SymbolCacheLimits

DEFAULT_PORT = 7470
VIEWER = "viewer"
OPERATOR = "operator"
#: Token roles (token files, ``tokens``, ``hostscope token new --role``) in increasing
#: power; a role satisfies every role before it. Enforced by :mod:`.auth`.
ROLES = (VIEWER, OPERATOR)
#: Environment variable holding one operator token (systemd units, CI, tests).
TOKEN_ENV = "HOSTSCOPE_TOKEN"
#: Keys that existed once, with what replaces them: a stale config file gets a pointed
#: message instead of a generic "unknown key".
_REMOVED = {
    "allow_remote": "allow_remote was removed: hostscope now requires a token on every "
    "request; to listen beyond loopback configure tokens (token_file, tokens, or the "
    f"{TOKEN_ENV} environment variable) and preferably tls_cert/tls_key. See docs/security.md",
}
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the key and the source."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything ``hostscope serve`` can be told. Defaults are the safe ones."""

    #: Address to listen on. Loopback unless tokens are configured (see :meth:`check_bind`).
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: Base sampling interval in seconds; every client interval is a multiple of it.
    interval: float = 1.0
    #: Seconds of full-resolution history kept in memory (per-minute means cover 24 h).
    history: float = 3600.0
    #: Cadence of the (expensive) per-process collector, in seconds.
    process_interval: float = 2.0
    #: Cadence of the TCP connection states (``network.tcpconn.*``), in seconds. Each
    #: count makes the kernel walk its whole TCP hash table (~2 ms on an idle host here)
    #: and every socket in it (~0.65 us each): a proxy with 100,000 connections pays
    #: ~65 ms a walk, 1.3 % of a core at the default 5 s; the per-second
    #: ``network.tcp.currestab`` and ``network.sockstat.tcp.*`` cost nothing extra.
    tcpconn_interval: float = 5.0
    #: Seconds a collector call may take before it is abandoned and its metrics shown
    #: stale (docs/metrics.md); 0 = twice the interval, at least 2 s.
    collector_timeout: float = 0.0
    log_level: str = "info"
    log_format: str = "text"
    proc_root: str = "/proc"
    sys_root: str = "/sys"
    etc_root: str = "/etc"
    #: Directory of the built dashboard; None means the copy shipped in the package.
    static_dir: str | None = None
    #: Extra names accepted in the Host header (DNS-rebinding defence), e.g. "myhost".
    allowed_hosts: tuple[str, ...] = ()
    #: Extra exact origins (scheme://host[:port]) allowed to open the websocket and read
    #: the API cross-origin, e.g. another host's dashboard.
    allowed_origins: tuple[str, ...] = ()
    #: Who may embed the dashboard in a frame (CSP frame-ancestors); empty = same origin.
    frame_ancestors: tuple[str, ...] = ()
    #: Frames queued per websocket client before it is dropped as too slow.
    client_queue: int = 64
    #: Seconds the server waits for in-flight requests and websocket closes on shutdown.
    shutdown_timeout: float = 2.0
    #: Offer BPF modules (heat maps, event tables) to clients. false: none can be enabled,
    #: and bcc and the kernel's BTF are never loaded (they cost ~100 MB of memory).
    bpf: bool = True
    # -- limits (docs/robustness.md): every input a client controls is bounded --------
    #: Authenticated websocket connections at once; one more is refused with 503
    #: ``too_many_clients``.
    max_clients: int = 500
    #: Websockets upgraded without credentials that may wait for their ``auth`` message
    #: at once (a few seconds each); one more is refused with 503
    #: ``too_many_pending_auth``. Separate from max_clients, so sockets that never
    #: authenticate cannot keep authenticated clients out.
    max_pending_auth: int = 32
    #: Largest websocket message a client may send, in bytes (bigger: closed with 1009).
    max_message: int = 64 * 1024
    #: Names, prefixes and optional names one websocket connection may hold subscribed
    #: (optional names that match nothing are kept, so without a cap they grow forever).
    max_client_names: int = 1000
    #: Values (series x points) one ``/api/v1/history`` answer may hold; ~8 bytes and
    #: ~0.6 us of event-loop time each, so the default is ~32 MB and a few seconds.
    max_history_values: int = 4_000_000
    #: Series the in-memory history records at most (~20 KB each at the defaults).
    history_series: int = 20000
    #: Identical log events written per minute; further ones are counted, and the
    #: count is added to the next one written (``suppressed=N``).
    log_repeats: int = 20
    #: Finished profile captures kept (a link to one works while it is kept) ...
    profile_keep: int = 20
    #: ... and the most memory they may take together (estimated), in bytes.
    profile_keep_bytes: int = 256 * 1024 * 1024
    #: Profile requests that may wait while one captures; more are answered 409 busy.
    profile_queue: int = 4
    #: Seconds past its duration a capture may take (symbolising) before it is cancelled
    #: and marked failed, so a hung privileged side never wedges the queue.
    profile_grace: float = 30.0
    #: Symbol caches of the profiler (in the helper with privsep): parsed ELF files
    #: (programs, libraries) kept between profiles, and the symbols they hold together
    #: (~150-200 bytes each, names included); least recently used files go first ...
    symbol_cache_elf_files: int = 256
    symbol_cache_elf_symbols: int = 2_000_000
    #: ... and the same for JIT perf maps (/tmp/perf-PID.map of Node, the JVM, Python).
    symbol_cache_perf_maps: int = 32
    symbol_cache_perf_map_symbols: int = 2_000_000
    #: Privilege separation (docs/privilege.md): privileged work (BPF, profiles, other
    #: users' /proc/PID/io) runs in a helper process and this network-facing process
    #: drops every capability. false: all in this process, for development.
    privsep: bool = True
    #: With privsep, started as root: the user the network-facing process switches to
    #: once the helper runs (e.g. "hostscope"), so it owns no root files either. The
    #: systemd unit starts as that user instead and needs no switch.
    user: str | None = None
    #: File of ``ROLE TOKEN-OR-HASH`` lines (roles: viewer, operator); must not be
    #: readable by other users. See docs/security.md.
    token_file: str | None = None
    #: Token hashes in the config file itself: ``"ROLE sha256:HEX"`` entries.
    tokens: tuple[str, ...] = ()
    #: TLS certificate chain and private key (PEM); both or neither.
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Where the secret that signs embed tokens is kept (created 0600 if missing), so
    #: embed links survive restarts; unset, a new secret each start voids old links.
    embed_secret_file: str | None = None

    def roots(self) -> Roots:
        return Roots(proc=Path(self.proc_root), sys=Path(self.sys_root), etc=Path(self.etc_root))

    def symbol_cache(self) -> SymbolCacheLimits:
        """Bounds of the profiler's symbol caches (``symbol_cache_*``)."""
        from hostscope.bpfmods.symbol_limits import SymbolCacheLimits

        return SymbolCacheLimits(
            elf_files=self.symbol_cache_elf_files, elf_symbols=self.symbol_cache_elf_symbols,
            perf_maps=self.symbol_cache_perf_maps,
            perf_map_symbols=self.symbol_cache_perf_map_symbols)

    def auth_configured(self, env: Mapping[str, str]) -> bool:
        """Were tokens configured, rather than left to the one generated at start?"""
        return bool(self.tokens or self.token_file or env.get(TOKEN_ENV))

    def check_bind(self, env: Mapping[str, str] | None = None) -> None:
        """Refuse a non-loopback bind address unless tokens are configured.

        The token generated at start is printed on the daemon's console: fine for the
        person at that console, but a network service needs credentials its users were
        given deliberately (and can be rotated without restarting a URL-sharing ritual).
        """
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        if is_loopback(self.host) or self.auth_configured(env or {}):
            return
        raise ConfigError(
            f"refusing to listen on {self.host!r}: it is not a loopback address and no "
            "tokens are configured, so the only credential would be the random token "
            "printed on this console. Configure tokens first: a token_file of 'ROLE TOKEN' "
            f"lines (mode 600), 'tokens' hashes in the config file, or {TOKEN_ENV}; add "
            "tls_cert/tls_key so tokens do not cross the network in clear text, and list "
            "the names clients use in allowed_hosts. See docs/security.md."
        )


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- validation ------------------------------------------------------------------------

_STR_CHOICES: dict[str, tuple[str, ...]] = {"log_level": LOG_LEVELS, "log_format": LOG_FORMATS}
#: (lowest, highest, lowest is exclusive)
_RANGES: dict[str, tuple[float, float, bool]] = {
    "port": (0, 65535, False),
    "interval": (0.01, 60.0, False),
    "history": (0.0, 86400.0, True),
    "process_interval": (0.0, 3600.0, True),
    "tcpconn_interval": (0.0, 3600.0, True),
    "collector_timeout": (0.0, 3600.0, False),
    "client_queue": (1, 100000, False),
    "shutdown_timeout": (0.0, 60.0, False),
    "max_clients": (1, 1_000_000, False),
    "max_pending_auth": (1, 100_000, False),
    "max_message": (1024, 16 * 1024 * 1024, False),
    "max_client_names": (1, 1_000_000, False),
    "max_history_values": (1000, 1_000_000_000, False),
    "history_series": (1, 100_000_000, False),
    "log_repeats": (1, 1_000_000, False),
    "profile_keep": (1, 1000, False),
    "profile_keep_bytes": (1024 * 1024, 64 * 1024**3, False),
    "profile_queue": (0, 100, False),
    "profile_grace": (1.0, 600.0, False),
    "symbol_cache_elf_files": (16, 100_000, False),
    "symbol_cache_elf_symbols": (10_000, 100_000_000, False),
    "symbol_cache_perf_maps": (1, 10_000, False),
    "symbol_cache_perf_map_symbols": (10_000, 100_000_000, False),
}
#: Keys fixed on the privileged helper's command line (daemon/helper.py validates them
#: with this table too).
SYMBOL_CACHE_KEYS = ("symbol_cache_elf_files", "symbol_cache_elf_symbols",
                     "symbol_cache_perf_maps", "symbol_cache_perf_map_symbols")


# Entries of the browser-facing allowlists. frame_ancestors goes into the CSP header as
# written, so a space, ';' or ',' there would add directives or sources nobody reviewed;
# the other two are compared exactly, so an entry that can never match is a typo to report.
_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]*"
_LABELS = r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*"
#: CSP scheme-source (``https:``).
_CSP_SCHEME_SOURCE = re.compile(_SCHEME + ":")
#: CSP host-source: ``[scheme://](*|[*.]host)[:port|:*][/path]``.
_CSP_HOST_SOURCE = re.compile(
    rf"(?:{_SCHEME}://)?(?:\*|(?:\*\.)?{_LABELS})(?::(?P<port>[0-9]{{1,5}}|\*))?"
    r"(?:/[A-Za-z0-9._~%!$&()*+=:@/-]*)?")
_CSP_KEYWORDS = ("'self'", "'none'")
_PORT = re.compile(r"[0-9]{1,5}")


def _port_ok(port: str) -> bool:
    return bool(_PORT.fullmatch(port)) and 0 < int(port) <= 65535


def _host_port(text: str) -> tuple[str, str | None] | None:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` split; None if malformed."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        if rest and not rest.startswith(":"):
            return None
        return host, rest[1:] if rest else None
    host, colon, port = text.partition(":")
    if not re.fullmatch(_LABELS + r"\.?", host):
        return None
    return host, port if colon else None


def _frame_ancestor_problem(entry: str, entries: tuple[str, ...]) -> str | None:
    if entry.lower() in ("self", "none"):
        return f"would be a host named {entry}; write '{entry.lower()}' with the single quotes"
    if entry in _CSP_KEYWORDS:
        if entry == "'none'" and len(entries) > 1:
            return "'none' must be the only entry (it forbids framing altogether)"
        return None
    if _CSP_SCHEME_SOURCE.fullmatch(entry):
        return None
    host_source = _CSP_HOST_SOURCE.fullmatch(entry)
    if host_source is not None:
        port = host_source.group("port")
        if port is not None and port != "*" and not _port_ok(port):
            return "has a port outside 1-65535"
        return None
    return ("is not a CSP source expression: use 'self', 'none', a scheme (https:) or a "
            "host (https://wiki.example.com, *.example.com:443), one per entry, without "
            "spaces, ';' or ','")


def _origin_problem(entry: str, entries: tuple[str, ...]) -> str | None:
    scheme, sep, rest = entry.partition("://")
    split = _host_port(rest) if sep else None
    if scheme.lower() not in ("http", "https") or split is None or (
            split[1] is not None and not _port_ok(split[1])):
        return ("is not an origin: use scheme://host[:port] with http or https and no path "
                "(e.g. https://dash.example:8443)")
    return None


def _allowed_host_problem(entry: str, entries: tuple[str, ...]) -> str | None:
    if entry == "*":
        return None
    try:  # a bare IPv6 address (the Host header brackets it, the check strips them)
        ipaddress.IPv6Address(entry)
        return None
    except ValueError:
        pass
    with_port = _host_port(entry)
    if with_port is None or (with_port[1] is not None and not _port_ok(with_port[1])):
        return ("is not a host name: use host or host:port (myhost.example, "
                "myhost.example:7470, 10.0.0.5, [::1]:7470), or \"*\" to accept any")
    return None


_ENTRY_CHECKS = {
    "frame_ancestors": _frame_ancestor_problem,
    "allowed_origins": _origin_problem,
    "allowed_hosts": _allowed_host_problem,
}


def _kind(name: str) -> str:
    default = Config.__dataclass_fields__[name].type
    return str(default)


def _check(name: str, value: Any, source: str) -> Any:
    """Validate one value against the field's declared type; return it normalised."""
    kind = _kind(name)
    where = f"{source}: key {name!r}"
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {type(value).__name__}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {type(value).__name__}")
    elif kind == "str":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a non-empty string")
    elif kind == "str | None":
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{where} must be a non-empty string")
    elif kind == "tuple[str, ...]":
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, str) and v for v in value
        ):
            raise ConfigError(f"{where} must be a list of non-empty strings")
        value = tuple(value)
    else:  # pragma: no cover - a new field type without a validator is a programming error
        raise AssertionError(f"no validator for {name}: {kind}")
    if name in _STR_CHOICES and value not in _STR_CHOICES[name]:
        raise ConfigError(f"{where} must be one of {', '.join(_STR_CHOICES[name])}, got {value!r}")
    if name in _ENTRY_CHECKS:
        for entry in value:
            problem = _ENTRY_CHECKS[name](entry, value)
            if problem is not None:
                raise ConfigError(f"{where}: {entry!r} {problem}")
    if name in _RANGES:
        lo, hi, exclusive = _RANGES[name]
        if value > hi or value < lo or (exclusive and value == lo):
            # Integer keys with integer bounds (100000000, not 1e+08: the value to write).
            form = "d" if kind == "int" else "g"
            bound = f"> {lo:{form}}" if exclusive else f">= {lo:{form}}"
            raise ConfigError(f"{where} must be {bound} and <= {hi:{form}}, got {value!r}")
    return value


def known_keys() -> list[str]:
    return [f.name for f in fields(Config)]


def from_mapping(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validated settings from a parsed mapping (a TOML document or flags)."""
    known = set(known_keys())
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in _REMOVED:
            raise ConfigError(f"{source}: {_REMOVED[key]}")
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {key!r} (known keys: {', '.join(sorted(known))})"
            )
        out[key] = _check(key, value, source)
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file; unreadable, malformed or invalid files raise ConfigError."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    import tomllib  # only with a file: a daemon without one never needs the parser

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return from_mapping(data, f"config file {path}")


def build_config(
    file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """The effective configuration: defaults, then the file, then explicit overrides."""
    settings: dict[str, Any] = {}
    if file is not None:
        settings.update(load_file(file))
    if overrides:
        settings.update(from_mapping(overrides, "command line"))
    config = replace(Config(), **settings)
    if config.interval > config.history:
        raise ConfigError("interval must not be longer than history")
    return config
