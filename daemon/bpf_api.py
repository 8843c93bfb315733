"""BPF modules over the API: list, toggle, read tables (docs/protocol.md, "BPF modules").

Every operation goes through ``app[PRIVILEGED]`` (:class:`~.privileged.PrivilegedOps`),
whose BPF calls take and return plain JSON, and runs in ``app[BPF_EXECUTOR]``: compiling
a module takes a few hundred milliseconds of clang, and even status may wait for bcc's
first import, so nothing here blocks the event loop.

Modules are reference counted per *user*: a toggle from a websocket holds the module for
that connection (``ws:N``) until it disables it or disconnects; a REST toggle holds it
for the client named in the ``X-Hostscope-Client`` header (``rest:NAME``, or ``rest``
without the header) until that client disables it. :func:`toggle` is the one way a
module is switched; both transports call it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from hostscope.bpfmods.manager import UnknownModuleError

from .api import int_param
from .errors import ApiError, BadParameter, parse_json_body
from .keys import BPF_EXECUTOR, PRIVILEGED, SECURITY

log = logging.getLogger("hostscope.daemon")

T = TypeVar("T")

#: Header naming the REST client that holds a module (a dashboard instance, a script).
CLIENT_HEADER = "X-Hostscope-Client"
MAX_CLIENT_ID = 64
#: Holder of REST toggles that do not name themselves.
DEFAULT_REST_USER = "rest"
DEFAULT_TABLE_ROWS = 100
MAX_TABLE_ROWS = 10_000
#: Keys of a toggle request (REST body; websocket messages add "type" and "name").
TOGGLE_KEYS = frozenset({"enabled", "settings"})
_CLIENT_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class ShuttingDown(ApiError):
    """The daemon is stopping: its BPF worker threads take no new work (closing the
    manager detaches every module anyway)."""

    def __init__(self) -> None:
        super().__init__(503, "shutting_down", "the daemon is shutting down")


async def run_blocking(app: web.Application, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the BPF worker threads, never on the event loop."""
    loop = asyncio.get_running_loop()
    try:
        future = loop.run_in_executor(app[BPF_EXECUTOR], fn, *args)
    except RuntimeError:  # "cannot schedule new futures after shutdown"
        raise ShuttingDown() from None
    return await future


def module_entry(status: Mapping[str, Any], described: Mapping[str, Any]) -> dict[str, Any]:
    """One module as clients see it: live status plus its static description.

    ``settings`` is what the module runs with (null when off); ``settings_schema`` what it
    accepts; ``tables`` maps each table name to what its rows are.
    """
    return {
        **status,
        "reason": status.get("reason") or None,
        "help": described["help"],
        "metrics": described["metrics"],
        "settings_schema": described["settings"],
        "tables": described["tables"],
        "attach_plans": described["attach_plans"],
    }


def _describe_one(ops: Any, name: str) -> dict[str, Any]:
    return next((d for d in ops.bpf_describe() if d["name"] == name), {
        "help": "", "metrics": [], "settings": [], "tables": {}, "attach_plans": []})


# -- the one toggle ------------------------------------------------------------------


async def toggle(
    app: web.Application,
    name: str,
    enabled: bool,
    settings: Mapping[str, Any] | None,
    user_id: str,
) -> dict[str, Any]:
    """Switch module ``name`` on or off for ``user_id``; the module's entry afterwards.

    The single entry point for toggles from every transport. Callers have checked the
    operator role already (REST: the auth middleware, which guards every non-GET under
    /api/; websocket: the connection's role), see daemon/auth.py.
    """
    ops = app[PRIVILEGED]

    def work() -> dict[str, Any]:
        if enabled:
            status = ops.bpf_enable(name, settings, user_id)
        else:
            status = ops.bpf_disable(name, user_id)
        return module_entry(status, _describe_one(ops, name))

    entry = await run_blocking(app, work)
    log.info("bpf module toggled", extra={"bpf_module": name, "enabled": enabled,
                                          "user": user_id, "state": entry["state"],
                                          "users": len(entry["users"])})
    return entry


async def release(app: web.Application, user_id: str) -> list[str]:
    """Drop every hold of ``user_id`` (a websocket closed); modules left without users
    detach. During shutdown there is nothing to do: closing the manager detaches all."""
    try:
        left = await run_blocking(app, app[PRIVILEGED].bpf_release, user_id)
    except ShuttingDown:
        return []
    if left:
        log.info("bpf holds released", extra={"user": user_id, "bpf_modules": ",".join(left)})
    return left


def parse_toggle(message: Mapping[str, Any], extra_keys: frozenset[str] = frozenset()
                 ) -> tuple[bool, dict[str, Any] | None]:
    """(enabled, settings) of a toggle request; BadParameter with a clear message if the
    request is malformed. Settings themselves are validated by the module (400
    ``invalid_settings``, one message per problem)."""
    unknown = sorted(set(message) - TOGGLE_KEYS - extra_keys)
    if unknown:
        raise BadParameter(f"unknown key(s) {', '.join(map(repr, unknown))}; a toggle is "
                           '{"enabled": true|false, "settings": {...}}')
    if "enabled" not in message:
        raise BadParameter("'enabled' is required: true to enable the module, false to "
                           "disable it")
    enabled = message["enabled"]
    if not isinstance(enabled, bool):
        raise BadParameter(f"'enabled' must be true or false, got {json.dumps(enabled)[:40]}")
    settings = message.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise BadParameter("'settings' must be an object of setting name to value (or "
                           "omitted for the defaults)")
    return enabled, settings


def rest_user(request: web.Request) -> str:
    """The holder of a REST toggle: ``rest:NAME`` from the client header, else ``rest``.

    Names are short tokens so they can never collide with websocket holders (``ws:N``):
    a REST client cannot release another viewer's hold by naming it.
    """
    raw = request.headers.get(CLIENT_HEADER)
    if raw is None:
        return DEFAULT_REST_USER
    if not 0 < len(raw) <= MAX_CLIENT_ID or not set(raw) <= _CLIENT_ID_CHARS:
        raise BadParameter(f"{CLIENT_HEADER} must be 1-{MAX_CLIENT_ID} characters of "
                           "A-Z a-z 0-9 _ -")
    return f"rest:{raw}"


def check_toggle_request(request: web.Request) -> None:
    """Refuse cross-site toggles.

    A page on another site can make the browser POST to 127.0.0.1 (a "simple" request
    needs no CORS preflight). Requiring ``application/json`` forces a preflight, which
    this daemon never answers; and a browser's ``Origin`` must be this daemon's own or an
    ``allowed_origins`` entry, as for websockets.
    """
    if not request.app[SECURITY].origin_allowed(request):
        raise ApiError(403, "origin_not_allowed",
                       f"Origin {request.headers.get('Origin')!r} may not toggle BPF modules; "
                       "add it to allowed_origins in the config file")
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "the body must be JSON sent with Content-Type: application/json, e.g. "
                       '{"enabled": true, "settings": {}}')


# -- handlers ------------------------------------------------------------------------


async def list_handler(request: web.Request) -> web.Response:
    ops = request.app[PRIVILEGED]

    def work() -> dict[str, Any]:
        readiness = ops.bpf_readiness()
        described = {d["name"]: d for d in ops.bpf_describe()}
        return {
            "available": readiness["available"],
            "reason": readiness["reason"],
            "modules": [module_entry(s, described[s["name"]]) for s in ops.bpf_status()],
        }

    return web.json_response(await run_blocking(request.app, work))


async def module_handler(request: web.Request) -> web.Response:
    ops = request.app[PRIVILEGED]
    name = request.match_info["name"]

    def work() -> dict[str, Any]:
        entries = {s["name"]: s for s in ops.bpf_status()}
        if name not in entries:
            raise UnknownModuleError(repr(name)[:60], "no such BPF module (known: "
                                     f"{', '.join(entries)})")
        return module_entry(entries[name], _describe_one(ops, name))

    return web.json_response(await run_blocking(request.app, work))


async def toggle_handler(request: web.Request) -> web.Response:
    check_toggle_request(request)
    user = rest_user(request)
    body = parse_json_body(await request.read())
    if not isinstance(body, dict):
        raise BadParameter('the body must be a JSON object: {"enabled": true|false, '
                           '"settings": {...}}')
    enabled, settings = parse_toggle(body)
    entry = await toggle(request.app, request.match_info["name"], enabled, settings, user)
    return web.json_response(entry)


async def table_handler(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", DEFAULT_TABLE_ROWS, 1, MAX_TABLE_ROWS)
    name, table = request.match_info["name"], request.match_info["table"]
    ops = request.app[PRIVILEGED]
    return web.json_response(await run_blocking(request.app, ops.bpf_table, name, table, limit))


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/api/v1/bpf", list_handler)
    router.add_get("/api/v1/bpf/{name}", module_handler)
    router.add_post("/api/v1/bpf/{name}", toggle_handler)
    router.add_get("/api/v1/bpf/{name}/tables/{table}", table_handler)
