"""Serving the built dashboard (Vite output in ``daemon/static/``).

* ``/assets/*`` have content hashes in their names, so they are cached forever
  (``immutable``); a new build produces new names.
* ``index.html`` and the single-page-app routes (``/``, ``/embed``, any other path without
  a file extension) are served with ``no-cache`` so a new build is picked up on reload.
* Other files at the top of the build (``favicon.svg``) are served with ``no-cache``.
* If the dashboard has not been built, ``/`` answers 503 with a page saying how to build
  it, while the API keeps working: a missing frontend must not look like a dead daemon.

The build directory is checked on each request (one ``stat``), so building the frontend
while the daemon runs needs no restart.
"""

from __future__ import annotations

import html
from pathlib import Path, PurePosixPath

from aiohttp import web

from .errors import ApiError
from .keys import CONFIG

PACKAGE_STATIC = Path(__file__).parent / "static"
IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
#: Paths that belong to the API and must never fall through to the SPA.
_NOT_SPA = ("/api/", "/assets/")

NOT_BUILT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hostscope: dashboard not built</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:44em;margin:3em auto;padding:0 1em}}
code{{background:#eee;padding:.1em .3em}}</style></head>
<body><h1>The hostscope dashboard is not built</h1>
<p>The daemon is running and its API works (try <a href="/api/v1/host">/api/v1/host</a>
or <a href="/metrics">/metrics</a>), but there is no built dashboard in
<code>{where}</code>.</p>
<p>Build it from a source checkout with <code>./dev run</code> (installs everything, builds
and serves), or by hand:</p>
<pre><code>cd frontend &amp;&amp; npm ci &amp;&amp; npm run build</code></pre>
<p>then reload this page. Installed packages ship the built dashboard; point
<code>--static-dir</code> elsewhere to serve another build.</p>
</body></html>
"""


def static_dir(app: web.Application) -> Path:
    configured = app[CONFIG].static_dir
    return Path(configured) if configured else PACKAGE_STATIC


def _safe_path(root: Path, relative: str) -> Path | None:
    """``root / relative`` if it stays inside ``root`` and is a file, else None."""
    parts = PurePosixPath(relative).parts
    if not parts or any(p in ("..", ".") or p.startswith("/") or "\\" in p for p in parts):
        return None
    candidate = root.joinpath(*parts)
    try:
        resolved = candidate.resolve(strict=True)
        if not resolved.is_relative_to(root.resolve()) or not resolved.is_file():
            return None
    except OSError:
        return None
    return resolved


def _index(request: web.Request) -> web.StreamResponse:
    root = static_dir(request.app)
    index = root / "index.html"
    if not index.is_file():
        page = NOT_BUILT_PAGE.format(where=html.escape(str(root)))
        return web.Response(
            text=page, status=503, content_type="text/html",
            headers={"Cache-Control": NO_CACHE},
        )
    return web.FileResponse(index, headers={"Cache-Control": NO_CACHE})


async def index_handler(request: web.Request) -> web.StreamResponse:
    return _index(request)


async def asset_handler(request: web.Request) -> web.StreamResponse:
    path = _safe_path(static_dir(request.app) / "assets", request.match_info["path"])
    if path is None:
        raise ApiError(404, "not_found", f"no such asset: {request.path}")
    return web.FileResponse(path, headers={"Cache-Control": IMMUTABLE})


async def fallback_handler(request: web.Request) -> web.StreamResponse:
    """Top-level build files, else the SPA for extension-less paths, else 404."""
    path = request.path
    if path.startswith(_NOT_SPA):
        raise ApiError(404, "not_found", f"no such endpoint: {path}")
    tail = request.match_info["tail"]
    last = tail.rsplit("/", 1)[-1]
    if "." in last:
        found = _safe_path(static_dir(request.app), tail)
        if found is None or found.name == "index.html":
            raise ApiError(404, "not_found", f"no such file: {path}")
        return web.FileResponse(found, headers={"Cache-Control": NO_CACHE})
    return _index(request)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index_handler)
    app.router.add_get("/assets/{path:.+}", asset_handler)


def add_fallback_route(app: web.Application) -> None:
    """The catch-all, registered after every other module's routes."""
    app.router.add_get("/{tail:.*}", fallback_handler)
