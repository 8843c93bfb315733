"""Profiles over REST: ``/api/v1/profiles`` (docs/profiling.md, "REST API").

Thin: requests are validated and handed to the :class:`~.profiles.ProfileService`
(``app[PROFILES]``), outputs come from :mod:`.flame`, errors are raised as
:class:`~.errors.ProfileApiError` and become JSON in :mod:`.errors`. Building an output of
a big capture takes tens of milliseconds, so it runs in the service's threads; the
full-capture JSON view is built once when the capture finishes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import ApiError, BadParameter, ProfileApiError, parse_json_body
from .keys import CLOCK, CONFIG, PRIVILEGED, PROFILES, SAMPLER, SECURITY
from .profiles import Capture, ProfileService, tree_body

if TYPE_CHECKING:
    from . import flame

#: format -> (content type, file extension)
FORMATS = {
    "json": ("application/json", "json"),
    "folded": ("text/plain", "folded.txt"),
    "svg": ("image/svg+xml", "svg"),
    "speedscope": ("application/json", "speedscope.json"),
}


def create_service(app: web.Application) -> ProfileService:
    """The app's profile service from its config, sampler and privileged operations."""
    config = app[CONFIG]
    sampler = app[SAMPLER]
    proc = config.roots().proc

    def containers() -> Any:
        return sampler.latest.get("cgroup.container.name", {})

    def versions() -> Any:
        return sampler.latest.get("cgroup.version", {})

    def pid_exists(pid: int) -> bool:
        return Path(proc, str(pid)).is_dir()

    return ProfileService(
        app[PRIVILEGED], clock=app[CLOCK], containers=containers, versions=versions,
        pid_exists=pid_exists,
        keep=config.profile_keep, keep_bytes=config.profile_keep_bytes,
        queue=config.profile_queue, grace_s=config.profile_grace)


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: at shutdown the capture in flight is cancelled before the
    privileged operations close (append it after the sampling context)."""
    yield
    await app[PROFILES].close()


def _check_write(request: web.Request) -> None:
    """Refuse cross-site starts and cancels, as BPF toggles do: a foreign page could
    otherwise POST a "simple" request to the loopback daemon."""
    if not request.app[SECURITY].origin_allowed(request):
        raise ApiError(403, "origin_not_allowed",
                       f"Origin {request.headers.get('Origin')!r} may not start or cancel "
                       "profiles; add it to allowed_origins in the config file")


def _summary(service: ProfileService, capture: Capture) -> dict[str, Any]:
    return capture.summary(service.position(capture))


def _seconds_param(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadParameter(f"'{key}' must be seconds after the capture's start, "
                           f"got {raw[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise BadParameter(f"'{key}' must be a non-negative number of seconds")
    return value


def _done(capture: Capture, what: str) -> flame.Profile:
    if capture.profile is None:
        raise ProfileApiError("not_done", f"{what} is {capture.state}, not done: its results "
                              "exist once the capture has finished")
    return capture.profile


async def list_handler(request: web.Request) -> web.Response:
    service = request.app[PROFILES]
    return web.json_response({
        "profiles": [_summary(service, c) for c in service.captures()],
        "limits": service.limits(),
        "kinds": await service.readiness(),
    })


async def create_handler(request: web.Request) -> web.Response:
    _check_write(request)
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "the body must be JSON sent with Content-Type: application/json, e.g. "
                       '{"kind": "cpu", "duration": 30}')
    body = parse_json_body(await request.read())
    service = request.app[PROFILES]
    capture = await service.submit(body)
    return web.json_response(_summary(service, capture), status=202)


async def cancel_handler(request: web.Request) -> web.Response:
    _check_write(request)
    service = request.app[PROFILES]
    capture = await service.cancel(request.match_info["id"])
    return web.json_response(_summary(service, capture))


async def get_handler(request: web.Request) -> web.Response:
    service = request.app[PROFILES]
    capture = service.get(request.match_info["id"])
    fmt = request.query.get("format")
    if fmt is None:
        return web.json_response(_summary(service, capture))
    if fmt not in FORMATS:
        raise BadParameter(f"'format' must be one of {', '.join(FORMATS)}, got {fmt[:40]!r}")
    from . import flame  # imported by the first capture: the daemon may never profile

    profile = _done(capture, "the capture")
    start, end = _seconds_param(request, "start"), _seconds_param(request, "end")
    span = flame.timeline_seconds(profile)
    if start is not None and end is not None and start >= end:
        raise BadParameter(f"'start' ({start:g}) must be before 'end' ({end:g})")
    if (start or 0.0) >= span or (end is not None and end > span + 1e-9):
        raise BadParameter(f"the range must lie within the capture's {span} s")
    base_id = request.query.get("base")
    base = None
    if base_id is not None:
        if fmt not in ("json", "svg"):
            raise BadParameter("'base' (a differential graph) is for format=json or svg")
        base_capture = service.get(base_id)
        base = _done(base_capture, "the base capture")
        if base.unit != profile.unit:
            raise ProfileApiError("base_mismatch", f"cannot compare a {profile.kind} capture "
                                  f"with a {base.kind} one (different units)")
    key = (fmt, start, end, base_id)
    # Only whole-capture outputs are cached (one per format): ranges are many and cheap.
    cacheable = start is None and end is None and base is None
    body = capture.outputs.get(key) if cacheable else None
    if body is None:
        body = await service.run(functools.partial(
            _render, fmt, profile, capture, start=start, end=end, base=base, base_id=base_id))
        if cacheable:
            capture.outputs[key] = body
    content_type, ext = FORMATS[fmt]
    if fmt == "json":
        # The summary changes (eviction, position); the tree does not: joined per request.
        text = '{"profile":' + flame.dumps(_summary(service, capture)) + "," + body[1:]
        return web.Response(text=text, content_type=content_type)
    name = f"hostscope-{profile.kind}-{capture.id[:8]}"
    if start is not None or end is not None:
        name += f"-{start or 0:g}s-{end if end is not None else span:g}s"
    if base_id is not None:
        name += f"-vs-{base_id[:8]}"
    return web.Response(text=body, content_type=content_type, charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="{name}.{ext}"'})


def _render(fmt: str, profile: flame.Profile, capture: Capture, *, start: float | None,
            end: float | None, base: flame.Profile | None, base_id: str | None) -> str:
    from . import flame

    kind = "CPU" if profile.kind == "cpu" else "off-CPU"
    title = f"{kind} {capture.id[:8]}"
    if capture.request.get("pid") is not None:
        title += f" pid {capture.request['pid']}"
    if capture.request.get("container"):
        title += f" {capture.request['container']}"
    if fmt == "json":
        return tree_body(profile, start, end, base, base_id)
    if fmt == "folded":
        return flame.folded(profile, start=start, end=end)
    if fmt == "svg":
        return flame.svg(profile, title=title, start=start, end=end, base=base)
    return flame.dumps(flame.speedscope(profile, name=title, start=start, end=end))


def add_routes(app: web.Application) -> None:
    """Routes, and the service on ``app[PROFILES]`` (the app's ``lifecycle`` context
    closes it)."""
    if PROFILES not in app:
        app[PROFILES] = create_service(app)
    router = app.router
    router.add_get("/api/v1/profiles", list_handler)
    router.add_post("/api/v1/profiles", create_handler)
    router.add_get("/api/v1/profiles/{id}", get_handler)
    router.add_delete("/api/v1/profiles/{id}", cancel_handler)
