"""Browser-facing security: Host and Origin checks, security headers, strict CORS.

Tokens (daemon/auth.py) guard the data; these checks guard against a web page in the
user's browser talking to the daemon, with or without the user's cookie:

* **DNS rebinding**: ``evil.example`` resolves to 127.0.0.1 after the page loads, making
  the daemon same-origin with the attacker. The only defence is checking the ``Host``
  header against the names the daemon is really reached by, on every request.
* **Cross-site websockets**: browsers do not apply the same-origin policy to websocket
  upgrades, so the ``Origin`` header must match exactly (Glances and Netdata were bitten by
  both; see docs/daemon.md).
* **Framing and content sniffing**: CSP ``frame-ancestors``, ``nosniff``.

No permissive CORS is ever sent: only origins configured in ``allowed_origins`` (another
host's hostscope dashboard) get an exact ``Access-Control-Allow-Origin`` echo, and only
they get an answer to a CORS preflight (which a request carrying ``Authorization`` needs).
No ``Access-Control-Allow-Credentials``: cross-origin dashboards send a Bearer token, never
this daemon's cookie. Authentication itself is daemon/auth.py.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from .errors import ApiError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_WILDCARD_BINDS = ("0.0.0.0", "::", "")
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
PREFLIGHT_METHODS = "GET, HEAD, POST, DELETE"
PREFLIGHT_HEADERS = "Authorization, Content-Type, X-Hostscope-Client"


def host_name(header: str) -> str:
    """The host part of a Host header (``[::1]:7470`` -> ``::1``), lower-cased."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else header
    if header.count(":") == 1:
        header = header.partition(":")[0]
    return header.rstrip(".")


@dataclass(frozen=True, slots=True)
class SecurityPolicy:
    """What the middlewares enforce; built once from the configuration."""

    allowed_hosts: frozenset[str]
    allowed_origins: frozenset[str]
    csp: str
    any_host: bool = False

    @classmethod
    def build(
        cls,
        *,
        bind_host: str,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        frame_ancestors: Iterable[str] = (),
    ) -> SecurityPolicy:
        hosts = {host_name(h) for h in _LOCAL_NAMES}
        extra = [h for h in allowed_hosts if h != "*"]
        hosts.update(host_name(h) for h in extra)
        if bind_host in _WILDCARD_BINDS:
            # Reachable under the machine's own name; other names must be configured.
            hosts.add(socket.gethostname().lower())
        else:
            hosts.add(host_name(bind_host))
        origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        ancestors = " ".join(frame_ancestors) or "'self'"
        connect = " ".join(["'self'", "ws:", "wss:", *sorted(origins)])
        csp = (
            "default-src 'self'; "
            f"connect-src {connect}; "
            "img-src 'self' data: blob:; "
            "style-src 'self' 'unsafe-inline'; "
            "worker-src 'self' blob:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; "
            f"frame-ancestors {ancestors}"
        )
        return cls(frozenset(hosts), origins, csp, any_host="*" in allowed_hosts)

    def host_allowed(self, header: str | None) -> bool:
        if self.any_host:
            return True
        if not header:
            return False
        return host_name(header) in self.allowed_hosts

    def origin_allowed(self, request: web.Request) -> bool:
        """Exact Origin check for websocket upgrades.

        A missing Origin means a non-browser client (scripts, the CLI, other services):
        browsers always send one on websocket upgrades, so only they are restricted.
        """
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        same = f"{request.scheme}://{request.host}".lower()
        return origin == same or origin in self.allowed_origins


def security_middlewares(policy: SecurityPolicy) -> list[Handler]:
    """The Host-check middleware bound to ``policy`` (no global state)."""

    @web.middleware
    async def host_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not policy.host_allowed(request.headers.get("Host")):
            raise ApiError(
                421,
                "host_not_allowed",
                f"Host {request.headers.get('Host', '')!r} is not one this daemon answers "
                "to (DNS rebinding defence); add it to allowed_hosts in the config file",
            )
        return await handler(request)

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return await handler(request)
        origin = (request.headers.get("Origin") or "").rstrip("/").lower()
        if origin not in policy.allowed_origins or not (
            request.path.startswith("/api/") or request.path == "/metrics"
        ):
            raise ApiError(403, "origin_not_allowed",
                           f"Origin {request.headers.get('Origin')!r} may not call this daemon "
                           "cross-origin; add it to allowed_origins in the config file")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": request.headers["Origin"],
            "Access-Control-Allow-Methods": PREFLIGHT_METHODS,
            "Access-Control-Allow-Headers": PREFLIGHT_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        })

    return [host_check, preflight]


def check_websocket_origin(policy: SecurityPolicy, request: web.Request) -> None:
    if not policy.origin_allowed(request):
        raise ApiError(
            403,
            "origin_not_allowed",
            f"websocket Origin {request.headers.get('Origin')!r} is not allowed; add it to "
            "allowed_origins in the config file",
        )


def install_headers(app: web.Application, policy: SecurityPolicy) -> None:
    """Add security headers (and exact-origin CORS) to every response, errors included."""

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("Content-Security-Policy", policy.csp)
        origin = request.headers.get("Origin")
        if (
            origin is not None
            and (request.path.startswith("/api/") or request.path == "/metrics")
            and origin.rstrip("/").lower() in policy.allowed_origins
            and "Access-Control-Allow-Origin" not in headers
        ):
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = "Retry-After, WWW-Authenticate"
            headers.add("Vary", "Origin")

    app.on_response_prepare.append(on_prepare)
