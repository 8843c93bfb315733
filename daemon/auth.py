"""Authentication and roles: tokens, embed tokens, the auth middleware, failure limits.

hostscope shows every process's command line and can load BPF programs, so nothing but
``/healthz`` and the dashboard's static files (which hold no data) is served without a
token -- on loopback too, because any local user and any web page the user visits
(DNS rebinding, cross-site requests) can reach loopback. Notebook servers taught the
model: a random token is generated at start and printed as a ready-to-open URL, unless
tokens are configured.

Roles, lowest first:

* ``viewer``: read metrics (GET under ``/api/``), the websocket stream, ``/metrics``,
  panel renders;
* ``operator``: also everything that changes state: any other method under ``/api/``
  (BPF toggles, profiles) and websocket messages that change state (``bpf``).

An **embed token** is a viewer token narrowed to a few panels or metrics and a lifetime,
signed (HMAC-SHA256) with a per-daemon secret, so runbook pages can carry it in a link
without carrying a real token. It is checked on the routes an embedded panel uses only.

Tokens are stored as SHA-256 hashes and compared with :func:`hmac.compare_digest`. A
256-bit random token needs no slow hash (bcrypt guards *guessable* passwords); hashing
only keeps the token file and the configuration from holding a usable credential.
Failed attempts are counted per client address and answered 429 past a limit.

Where a token may be presented (first found wins): ``Authorization: Bearer TOKEN``;
the ``token`` query parameter, on panel renders only (an ``<img>`` cannot send headers);
the cookie set by ``/?token=...``; or, on the websocket, the first message
``{"type": "auth", "token": ...}``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web

from hostscope.metrics.sampler import Clock

from .config import OPERATOR, ROLES, TOKEN_ENV, VIEWER, Config, ConfigError
from .errors import ApiError, parse_json_body

log = logging.getLogger("hostscope.daemon")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HASH_PREFIX = "sha256:"
#: A configured plain token shorter than this is refused: guessable in a few days of
#: rate-limited attempts is not a secret.
MIN_TOKEN_CHARS = 16
EMBED_PREFIX = "e1."
#: Longest lifetime of an embed token (a year): runbook links outlive daemons.
MAX_EMBED_TTL_S = 366 * 86400.0
MAX_SCOPE = 50
COOKIE_PREFIX = "hostscope_token"
COOKIE_MAX_AGE_S = 7 * 86400
#: Failed attempts allowed per client address per window before 429.
MAX_FAILURES = 20
FAILURE_WINDOW_S = 60.0
#: Client addresses remembered by the limiter (oldest forgotten first): bounded memory
#: whatever the number of attackers.
MAX_TRACKED_CLIENTS = 4096
#: Seconds a websocket opened without credentials has to send its ``auth`` message. A
#: browser sends it as soon as the socket opens; a few seconds cover a slow link without
#: letting silent sockets sit on their pending-auth slots (``max_pending_auth``) for long.
WS_AUTH_TIMEOUT_S = 3.0
#: Websockets one client address may have waiting to authenticate at once (within
#: ``max_pending_auth`` in all), so one address cannot take every pending slot. Behind a
#: reverse proxy every client has the proxy's address and only the total applies.
PENDING_AUTH_PER_ADDRESS = 8
#: Websocket close codes (4000-4999 are the application's): unauthorised, rate-limited.
WS_UNAUTHORIZED = 4401
WS_RATE_LIMITED = 4429

#: The authenticated principal of a request (set by the middleware).
REQUEST_PRINCIPAL = web.RequestKey("principal", "Principal")
#: Set when a websocket upgrade carried a stale cookie: its 101 answer deletes it.
CLEAR_COOKIE = web.RequestKey("clear_cookie", bool)

#: Routes an embed token opens, beyond the websocket and renders: what an embedded panel
#: loads (frontend/src/stores/host.ts: host and metrics first, history when its window
#: grows). Each answers an embed token only about the metrics in its scope
#: (:func:`forbid_outside_scope`), and /api/v1/host only what a panel renders with.
_EMBED_PATHS = ("/api/v1/host", "/api/v1/metrics", "/api/v1/auth", "/api/v1/fetch",
                "/api/v1/history", "/api/v1/instances")
_RENDER_PREFIX = "/api/v1/render/"
STREAM_PATH = "/api/v1/stream"
#: Open to an embed token whose scope names a process-table panel (``kind: "processes"``
#: in daemon/panels.json), which answers it without command lines (daemon/api.py).
PROCESSES_PATH = "/api/v1/processes"
_SAFE_METHODS = ("GET", "HEAD")
#: Metrics no embed token opens, whatever its scope names: command lines carry secrets
#: (passwords in arguments), and embed links travel in wikis and runbooks. A scope of
#: ``proc`` opens every other per-process metric.
CLOSED_TO_EMBED = frozenset({"proc.psinfo.psargs"})


def hash_token(token: str) -> str:
    """The stored form of a token: ``sha256:`` and the hex digest."""
    return HASH_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """256 random bits, URL-safe (it travels in ``/?token=`` links)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for. ``scope`` is None for full tokens; for embed tokens it
    names the panels and metrics (or metric prefixes) the token opens."""

    role: str
    scope: frozenset[str] | None = None
    expires: float | None = None

    def has(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def embed(self) -> bool:
        return self.scope is not None

    def opens_processes(self, process_panels: Iterable[str]) -> bool:
        """May this principal read the process table? Full tokens may; an embed token only
        if its scope names a process-table panel (a metric name or prefix is not enough:
        the table carries more than the ``proc.cpu.util`` its panel names)."""
        return self.scope is None or not self.scope.isdisjoint(process_panels)

    def allows_metric(self, name: str, panel_metrics: Mapping[str, Iterable[str]]) -> bool:
        """Is metric ``name`` inside this principal's scope?

        A scope entry matches itself and the metrics under it (``disk.dev`` opens
        ``disk.dev.read_bytes``); a panel id opens the metrics its series name. No scope
        opens :data:`CLOSED_TO_EMBED`.
        """
        if self.scope is None:
            return True
        if name in CLOSED_TO_EMBED:
            return False
        for entry in self.scope:
            if name == entry or name.startswith(entry + "."):
                return True
            if name in panel_metrics.get(entry, ()):
                return True
        return False


def forbid_outside_scope(principal: Principal | None, names: Iterable[str],
                         panel_metrics: Mapping[str, Iterable[str]]) -> None:
    """ApiError 403 naming the metrics an embed token's scope does not open (nothing for
    full tokens): one rule for every route and the websocket."""
    if principal is None or principal.scope is None:
        return
    outside = [n for n in names if not principal.allows_metric(n, panel_metrics)]
    if outside:
        raise ApiError(403, "forbidden", f"the embed token does not open "
                       f"{', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''}")


# -- token store -------------------------------------------------------------------------


class TokenStore:
    """Hashed tokens and their roles."""

    def __init__(self) -> None:
        self._entries: list[tuple[bytes, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, role: str, token_or_hash: str, source: str) -> None:
        """Add a ``sha256:HEX`` hash, or a plain token (hashed here)."""
        if role not in ROLES:
            raise ConfigError(f"{source}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        if token_or_hash.startswith(HASH_PREFIX):
            hexdigest = token_or_hash[len(HASH_PREFIX):]
            try:
                digest = bytes.fromhex(hexdigest)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ConfigError(f"{source}: {HASH_PREFIX} must be followed by 64 hex digits")
        else:
            if len(token_or_hash) < MIN_TOKEN_CHARS:
                raise ConfigError(
                    f"{source}: a token must be at least {MIN_TOKEN_CHARS} characters "
                    "(make one with: hostscope token new)"
                )
            digest = hashlib.sha256(token_or_hash.encode("utf-8")).digest()
        self._entries.append((digest, role))

    def add_lines(self, text: str, source: str) -> None:
        """Lines of ``ROLE TOKEN-OR-HASH``; blank lines and ``#`` comments skipped."""
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigError(
                    f"{source} line {number}: expected 'ROLE TOKEN' or 'ROLE sha256:HEX' "
                    f"(roles: {', '.join(ROLES)})"
                )
            self.add(parts[0], parts[1], f"{source} line {number}")

    def role_of(self, token: str) -> str | None:
        """The role of ``token``, None if unknown. Compares against every entry, each
        with :func:`hmac.compare_digest`, so timing says nothing about which matched."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        for stored, role in self._entries:
            if hmac.compare_digest(digest, stored) and (
                found is None or ROLES.index(role) > ROLES.index(found)
            ):
                found = role
        return found


def load_token_file(path: str | Path, store: TokenStore) -> None:
    """Read a token file into ``store``, refusing one other users can read or write."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            info = os.fstat(fh.fileno())
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror or exc}") from None
    if info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(
            f"token file {path} is readable or writable by every user (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); tokens in it would be anyone's. "
            f"Run: chmod 600 {path}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"token file {path} is not UTF-8 text") from None
    store.add_lines(text, f"token file {path}")


# -- embed tokens ------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class EmbedSigner:
    """Mints and checks embed tokens: ``e1.<payload>.<hmac>``, base64url.

    The payload is ``{"s": [scope...], "exp": unix seconds}``; the signature covers the
    encoded payload, so any change to scope or expiry invalidates the token.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the embed secret must be at least 32 bytes")
        self._secret = secret

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def mint(self, scope: Iterable[str], ttl_s: float, now: float) -> str:
        names = sorted(set(scope))
        if not names or len(names) > MAX_SCOPE or not all(
            isinstance(n, str) and 0 < len(n) <= 200 for n in names
        ):
            raise ApiError(400, "bad_parameter",
                           f"'scope' must list 1-{MAX_SCOPE} panel ids or metric names")
        if not (math.isfinite(ttl_s) and 0 < ttl_s <= MAX_EMBED_TTL_S):
            raise ApiError(400, "bad_parameter",
                           f"'ttl' must be > 0 and <= {MAX_EMBED_TTL_S:g} seconds")
        body = {"s": names, "exp": int(now + ttl_s)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{EMBED_PREFIX}{payload}.{self._sign(payload)}"

    def verify(self, token: str, now: float) -> Principal | None:
        """The principal an embed token stands for; None if forged, malformed or expired."""
        if not token.startswith(EMBED_PREFIX):
            return None
        payload, _, signature = token[len(EMBED_PREFIX):].partition(".")
        try:
            payload.encode("ascii")
        except UnicodeEncodeError:
            return None
        if not hmac.compare_digest(self._sign(payload).encode(), signature.encode("utf-8",
                                                                                  "replace")):
            return None
        try:
            body = json.loads(_unb64(payload))
            scope = frozenset(str(s) for s in body["s"])
            expires = float(body["exp"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if expires <= now:
            return None
        return Principal(VIEWER, scope=scope, expires=expires)


def load_or_create_secret(path: str | Path) -> bytes:
    """The embed secret persisted in ``path`` (created 0600 on first start), so embed
    links survive restarts. A file others can read is refused like a token file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create embed secret file {path}: "
                          f"{exc.strerror or exc}") from None
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    try:
        info = path.stat()
        text = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read embed secret file {path}: {exc}") from None
    if info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(f"embed secret file {path} is readable or writable by every user; "
                          f"run: chmod 600 {path}")
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise ConfigError(f"embed secret file {path} must hold at least 64 hex digits "
                          "(delete it and a new one is made; old embed links stop working)")
    return secret


# -- failure limiting --------------------------------------------------------------------


class FailureLimiter:
    """Failed attempts per client address in a sliding window, in bounded memory.

    Only *distinct* wrong tokens count: the same wrong token again (a browser retrying
    with a cookie from before a restart, a script with an old token) guesses nothing new,
    and counting it would lock out the person who then opens the new token URL.
    """

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S,
                 max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict())
        #: Digests of recently refused tokens per client (bounded like the clients).
        self._seen: collections.OrderedDict[tuple[str, bytes], None] = (
            collections.OrderedDict())

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, client: str, now: float) -> float | None:
        """Seconds until ``client`` may try again, None if it may now."""
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        if len(times) < self.max_failures:
            return None
        return max(times[0] + self.window_s - now, 0.001)

    def failed(self, client: str, now: float, token: str | None = None) -> None:
        """Count a failure of ``client``; a ``token`` it was already refused is not
        counted again."""
        if token is not None:
            key = (client, hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest())
            if key in self._seen:
                self._seen.move_to_end(key)
                return
            self._seen[key] = None
            while len(self._seen) > self.max_clients * 4:
                self._seen.popitem(last=False)
        times = self._failures.get(client)
        if times is None:
            times = self._failures[client] = collections.deque(maxlen=self.max_failures)
        self._failures.move_to_end(client)
        times.append(now)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)


# -- websockets waiting to authenticate ----------------------------------------------------


class PendingLogins:
    """Websockets upgraded without credentials that have not sent their ``auth`` message
    yet, bounded in all (``max_pending_auth``) and per client address.

    They are not counted against ``max_clients``: otherwise anyone who can reach the port
    could hold every client slot with sockets that never authenticate, each for
    :data:`WS_AUTH_TIMEOUT_S`, and keep everyone with a token out. Clients that bring
    their credentials to the upgrade (Bearer header, cookie) never wait here.
    """

    def __init__(self, limit: int, per_address: int = PENDING_AUTH_PER_ADDRESS) -> None:
        self.limit = limit
        self.per_address = per_address
        self._by_address: dict[str, int] = {}
        self.total = 0
        #: The upgraded sockets still waiting (closed with the others at shutdown).
        self.sockets: set[web.WebSocketResponse] = set()

    def admit(self, address: str) -> PendingSlot:
        """A slot for a socket from ``address``; ApiError 503 when none is free."""
        held = self._by_address.get(address, 0)
        if self.total >= self.limit:
            why = (f"{self.total} websockets are already waiting to authenticate "
                   f"(max_pending_auth = {self.limit})")
        elif held >= min(self.per_address, self.limit):
            why = (f"{held} websockets from {address} are already waiting to authenticate "
                   f"(at most {min(self.per_address, self.limit)} per address)")
        else:
            self._by_address[address] = held + 1
            self.total += 1
            return PendingSlot(self, address)
        log.warning("websocket refused", extra={"client": address,
                                                "reason": "too many waiting to authenticate"})
        wait = math.ceil(WS_AUTH_TIMEOUT_S)
        raise ApiError(503, "too_many_pending_auth",
                       f"{why}; send the token with the upgrade ('Authorization: Bearer "
                       f"TOKEN' or the cookie) or try again in {wait} s",
                       headers={"Retry-After": str(wait)})

    def _release(self, slot: PendingSlot) -> None:
        if slot.ws is not None:
            self.sockets.discard(slot.ws)
        left = self._by_address[slot.address] - 1
        if left:
            self._by_address[slot.address] = left
        else:
            del self._by_address[slot.address]
        self.total -= 1


class PendingSlot:
    """One socket's place in :class:`PendingLogins`, given back once (authenticated,
    refused, timed out or gone)."""

    def __init__(self, logins: PendingLogins, address: str) -> None:
        self._logins: PendingLogins | None = logins
        self.address = address
        self.ws: web.WebSocketResponse | None = None

    def upgraded(self, ws: web.WebSocketResponse) -> None:
        if self._logins is not None:
            self.ws = ws
            self._logins.sockets.add(ws)

    def release(self) -> None:
        logins, self._logins = self._logins, None
        if logins is not None:
            logins._release(self)


# -- the authenticator -------------------------------------------------------------------


@dataclass(slots=True)
class Auth:
    """Everything the daemon checks credentials with, built once at start."""

    tokens: TokenStore
    signer: EmbedSigner
    limiter: FailureLimiter = field(default_factory=FailureLimiter)
    #: The token generated at start when none was configured (printed in the URL).
    generated: str | None = None
    #: Metrics each panel id names (embed scopes may list panel ids).
    panel_metrics: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Ids of the panels that show the process table (an embed scope naming one opens
    #: /api/v1/processes, without command lines).
    process_panels: frozenset[str] = frozenset()

    def check(self, token: str, client: str, clock: Clock) -> Principal:
        """The principal for ``token``; ApiError 401 (counted) or 429 otherwise.

        Embed-token expiry is wall time (it is written in links); failure windows are
        monotonic time.
        """
        now = clock.mono()
        self.check_limit(client, now)
        principal: Principal | None
        if token.startswith(EMBED_PREFIX):
            principal = self.signer.verify(token, clock.wall())
        else:
            role = self.tokens.role_of(token)
            principal = Principal(role) if role is not None else None
        if principal is None:
            self.limiter.failed(client, now, token)
            log.warning("authentication failed", extra={"client": client})
            raise ApiError(401, "unauthorized",
                           "the token is not valid (or the embed token expired)",
                           headers={"WWW-Authenticate": 'Bearer realm="hostscope", '
                                    'error="invalid_token"'})
        return principal

    def check_limit(self, client: str, now: float) -> None:
        wait = self.limiter.retry_after(client, now)
        if wait is not None:
            raise ApiError(429, "rate_limited",
                           f"too many failed authentication attempts from {client}; "
                           f"retry in {math.ceil(wait)} s",
                           headers={"Retry-After": str(math.ceil(wait))})


def build_auth(config: Config, env: Mapping[str, str] | None = None,
               panel_metrics: Mapping[str, Iterable[str]] | None = None) -> Auth:
    """Tokens from ``config.tokens``, ``config.token_file`` and ``env[HOSTSCOPE_TOKEN]``;
    with none of them, one random operator token (``Auth.generated``)."""
    store = TokenStore()
    for entry in config.tokens:
        parts = entry.split()
        if len(parts) != 2 or not parts[1].startswith(HASH_PREFIX):
            raise ConfigError(
                "config key 'tokens': each entry must be 'ROLE sha256:HEX' (a hash, never "
                "the token itself; make one with: hostscope token hash)"
            )
        store.add(parts[0], parts[1], "config key 'tokens'")
    if config.token_file is not None:
        load_token_file(config.token_file, store)
    env_token = (env or {}).get(TOKEN_ENV)
    if env_token:
        store.add(OPERATOR, env_token.strip(), f"environment variable {TOKEN_ENV}")
    generated = None
    if not len(store):
        generated = new_token()
        store.add(OPERATOR, generated, "generated token")
    if config.embed_secret_file is not None:
        secret = load_or_create_secret(config.embed_secret_file)
    else:
        secret = secrets.token_bytes(32)
    return Auth(store, EmbedSigner(secret), generated=generated,
                panel_metrics={k: tuple(v) for k, v in (panel_metrics or {}).items()})


# -- per-request decision ----------------------------------------------------------------


def required_role(request: web.Request) -> str | None:
    """The role a request needs; None for public routes.

    Public: ``/healthz`` and everything outside ``/api/`` and ``/metrics`` (the
    dashboard's files: they hold no data) and CORS preflights (they carry no credentials
    by design; the answer says only what an allowed origin may send).
    """
    path = request.path
    if request.method == "OPTIONS":
        return None
    if path == "/metrics" or path.startswith("/api/"):
        return VIEWER if request.method in _SAFE_METHODS else OPERATOR
    return None


def cookie_name(request: web.Request) -> str:
    """Per port: cookies ignore ports, and two daemons on one host must not clobber
    each other's token."""
    port = request.url.port or (443 if request.secure else 80)
    return f"{COOKIE_PREFIX}_{port}"


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer TOKEN'",
                       headers={"WWW-Authenticate": 'Bearer realm="hostscope"'})
    return token.strip()


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


def request_principal(request: web.Request) -> Principal | None:
    """The principal the auth middleware found (None on public routes and for a
    websocket that will authenticate with its first message)."""
    return request.get(REQUEST_PRINCIPAL)


def _embed_allowed(request: web.Request, principal: Principal, auth: Auth) -> bool:
    path = request.path
    if request.method not in _SAFE_METHODS:
        return False
    if path in _EMBED_PATHS or path == STREAM_PATH:
        return True
    if path == PROCESSES_PATH:
        return principal.opens_processes(auth.process_panels)
    if path.startswith(_RENDER_PREFIX) and path.endswith(".svg"):
        panel = path[len(_RENDER_PREFIX):-len(".svg")]
        assert principal.scope is not None
        if panel in principal.scope:
            return True
        metrics = auth.panel_metrics.get(panel, ())
        return bool(metrics) and all(
            principal.allows_metric(m, auth.panel_metrics) for m in metrics)
    return False


def auth_middleware(auth: Auth, clock: Clock,
                    origin_allowed: Callable[[web.Request], bool]) -> Handler:
    """The one place that decides, per request, whether its credentials suffice.

    ``origin_allowed`` is the Origin check applied to state-changing requests
    (cross-site request forgery).
    """

    @web.middleware
    async def check_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/" and "token" in request.query:
            _token_url(request, auth, clock)
        needed = required_role(request)
        if needed is None:
            return await handler(request)
        client = client_address(request)
        token = bearer_token(request)
        from_cookie = False
        if token is None and request.path.startswith(_RENDER_PREFIX):
            token = request.query.get("token") or None
            if token is not None and not token.startswith(EMBED_PREFIX):
                # URLs end up in logs, histories and Referer headers: only a scoped,
                # expiring token may travel in one.
                raise ApiError(401, "unauthorized",
                               "only embed tokens may be sent in the URL; send other tokens "
                               "as 'Authorization: Bearer TOKEN'",
                               headers={"WWW-Authenticate": 'Bearer realm="hostscope"'})
        if token is None:
            token = request.cookies.get(cookie_name(request)) or None
            from_cookie = token is not None
        if token is None:
            if request.path == STREAM_PATH and needed == VIEWER:
                return await handler(request)  # the first message must authenticate
            auth.check_limit(client, clock.mono())
            raise ApiError(401, "unauthorized",
                           "a token is required: send 'Authorization: Bearer TOKEN', or open "
                           "the URL with ?token= that 'hostscope serve' printed",
                           headers={"WWW-Authenticate": 'Bearer realm="hostscope"'})
        try:
            principal = auth.check(token, client, clock)
        except ApiError as exc:
            if from_cookie and exc.status == 401:
                # A stale cookie (the daemon restarted with a new token): drop it so the
                # browser stops sending it and the dashboard asks for the new one.
                if request.path == STREAM_PATH and needed == VIEWER:
                    # A refused upgrade is only a 1006 to a page; upgraded, the socket
                    # gets the first-message chance and then a 4401 it can act on.
                    request[CLEAR_COOKIE] = True
                    return await handler(request)
                exc.headers["Set-Cookie"] = _clear_cookie(request)
            raise
        if principal.embed and not _embed_allowed(request, principal, auth):
            raise ApiError(403, "forbidden",
                           "an embed token only opens the panels it names (renders, the "
                           "stream, metrics, fetch, history and instances of their "
                           "metrics, /api/v1/host and /api/v1/auth, and /api/v1/processes "
                           "if it names the process panel)")
        if not principal.has(needed):
            raise ApiError(403, "forbidden",
                           f"this needs the {needed} role; the token has {principal.role}")
        if needed == OPERATOR:
            check_origin_for_change(request, origin_allowed(request))
        request[REQUEST_PRINCIPAL] = principal
        return await handler(request)

    return check_auth


def _clear_cookie(request: web.Request) -> str:
    return f"{cookie_name(request)}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"


async def _clear_stale_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """On the 101 of a websocket upgraded despite a stale cookie (see the middleware)."""
    if request.get(CLEAR_COOKIE):
        response.headers["Set-Cookie"] = _clear_cookie(request)


def install(app: web.Application) -> None:
    """Signal handlers the middleware relies on."""
    app.on_response_prepare.append(_clear_stale_cookie)


def _token_url(request: web.Request, auth: Auth, clock: Clock) -> NoReturn:
    """``/?token=...``: remember the token in a cookie, then redirect to the same address
    without it, so it leaves the address bar and the history."""
    query = request.query.copy()
    token = query.pop("token")
    auth.check(token, client_address(request), clock)  # 401/429 on a bad token
    location = str(request.rel_url.with_query(query)) if query else request.path
    response = web.HTTPSeeOther(location, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        cookie_name(request), token, max_age=COOKIE_MAX_AGE_S, path="/", httponly=True,
        samesite="Strict", secure=request.secure,
    )
    raise response


def check_origin_for_change(request: web.Request, origin_ok: bool) -> None:
    """Cross-site request forgery: a state-changing request from a browser must come from
    this daemon's own page or an allowed origin (the cookie is SameSite=Strict too)."""
    if not origin_ok:
        raise ApiError(403, "origin_not_allowed",
                       f"Origin {request.headers.get('Origin')!r} may not change state here; "
                       "add it to allowed_origins in the config file")


def principal_json(principal: Principal) -> dict[str, Any]:
    out: dict[str, Any] = {"role": principal.role}
    if principal.scope is not None:
        out["scope"] = sorted(principal.scope)
        out["expires"] = principal.expires
    return out


async def websocket_login(request: web.Request, ws: web.WebSocketResponse,
                          auth: Auth, clock: Clock) -> Principal | None:
    """Authenticate a websocket opened without credentials by its first message,
    ``{"type": "auth", "token": ...}``: how a browser authenticates to another host's
    daemon (it cannot set headers on a websocket, and that host's cookie is not sent).

    Returns None after closing the socket (4401 unauthorised, 4429 rate-limited).
    """
    client = client_address(request)
    principal: Principal | None = None
    code, reason = WS_UNAUTHORIZED, "unauthorized: send {\"type\": \"auth\", \"token\": ...} first"
    try:
        msg = await ws.receive(timeout=WS_AUTH_TIMEOUT_S)
        if msg.type is web.WSMsgType.TEXT:
            message = json.loads(msg.data)
            token = message.get("token") if isinstance(message, dict) else None
            if (isinstance(message, dict) and message.get("type") == "auth"
                    and isinstance(token, str) and token):
                principal = auth.check(token, client, clock)
            elif isinstance(message, dict) and message.get("type") == "auth":
                reason = "unauthorized: 'token' must be a non-empty string"
    except TimeoutError:
        reason = "unauthorized: no auth message in time"
    except (ValueError, RecursionError):
        pass  # not JSON: the reason above says what was expected
    except ApiError as exc:
        code = WS_RATE_LIMITED if exc.status == 429 else WS_UNAUTHORIZED
        reason = f"{exc.code}: {exc.message}"
    if principal is None:
        if not ws.closed:
            await ws.close(code=code, message=reason.encode()[:120])
        return None
    return principal


# -- routes ------------------------------------------------------------------------------

#: Default and longest lifetime asked of POST /api/v1/embed-tokens.
DEFAULT_EMBED_TTL_S = 30 * 86400.0


async def embed_token_handler(request: web.Request) -> web.Response:
    """``POST /api/v1/embed-tokens`` (operator): ``{"scope": [panel ids or metric names],
    "ttl": seconds}`` -> the token, its expiry and a ready ``/embed`` link."""
    from .keys import AUTH, CLOCK

    body = parse_json_body(await request.read())
    if not isinstance(body, dict) or set(body) - {"scope", "ttl"}:
        raise ApiError(400, "bad_parameter",
                       'the body must be {"scope": ["cpu.util", ...], "ttl": seconds}')
    scope = body.get("scope")
    if not isinstance(scope, list) or not all(isinstance(s, str) for s in scope):
        raise ApiError(400, "bad_parameter", "'scope' must be a list of panel ids or metric "
                       "names")
    ttl = body.get("ttl", DEFAULT_EMBED_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise ApiError(400, "bad_parameter", "'ttl' must be a number of seconds")
    now = request.app[CLOCK].wall()
    token = request.app[AUTH].signer.mint(scope, float(ttl), now)
    panels = [s for s in sorted(set(scope)) if s in request.app[AUTH].panel_metrics]
    link = f"/embed?panels={','.join(panels)}&token={token}" if panels else None
    return web.json_response({"token": token, "scope": sorted(set(scope)),
                              "expires": int(now + float(ttl)), "embed_url": link})


async def whoami_handler(request: web.Request) -> web.Response:
    """``GET /api/v1/auth``: the role (and scope) of the credentials sent, so the
    dashboard can offer operator controls only to operators."""
    principal = request_principal(request)
    assert principal is not None  # the middleware let only authenticated requests here
    return web.json_response(principal_json(principal))


def add_routes(app: web.Application) -> None:
    install(app)
    app.router.add_post("/api/v1/embed-tokens", embed_token_handler)
    app.router.add_get("/api/v1/auth", whoami_handler)
