"""The application factory and the daemon's lifecycle.

``create_app`` wires the parts together and does no network I/O; the sampling loop,
the worker thread and the host identity are started in a ``cleanup_ctx`` (so their
teardown runs only if they started) and stopped in a fixed order:

1. ``on_shutdown``: the hub stops publishing and every websocket is closed with 1001
   GOING_AWAY (they are tracked in a WeakSet, as aiohttp's documentation recommends);
2. aiohttp waits up to ``shutdown_timeout`` for handlers to finish;
3. cleanup: the sampler task is cancelled and awaited, the worker thread joined,
   ``sampler.close()`` called, and every registered detacher (BPF programs, perf events)
   run, newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import WSCloseCode, web

from hostscope.metrics.defaults import build_sampler
from hostscope.metrics.history import History
from hostscope.metrics.sampler import Clock, Sampler, SystemClock

from . import api, prom, static, stream
from .config import Config
from .errors import error_middleware
from .host import read_host_info
from .hub import Hub
from .keys import (
    CLOCK,
    CONFIG,
    DETACHERS,
    HOST,
    HUB,
    PRIVILEGED,
    PROMETHEUS,
    SAMPLER,
    SECURITY,
    STARTED,
    TICKER,
    WEBSOCKETS,
)
from .privileged import Detacher, InProcessOps
from .security import SecurityPolicy, install_headers, security_middlewares
from .ticker import Ticker

log = logging.getLogger("hostscope.daemon")

#: Module the dashboard engineer provides (SVG renders); optional in every build.
RENDER_MODULE = "hostscope.daemon.render"
#: Request bodies are tiny (all endpoints are GET); refuse big ones early.
MAX_REQUEST_BODY = 64 * 1024


def create_app(
    config: Config, *, sampler: Sampler | None = None, clock: Clock | None = None
) -> web.Application:
    """A ready-to-run application for ``config``.

    ``sampler`` defaults to the default collectors over ``config``'s roots with an
    in-memory history of ``config.history`` seconds; ``clock`` to the system clock.
    """
    clock = clock or (sampler.clock if sampler is not None else SystemClock())
    if sampler is None:
        sampler = build_sampler(
            config.roots(),
            interval_s=config.interval,
            process_interval_s=config.process_interval,
            history=History(retention_s=config.history),
            clock=clock,
        )
    policy = SecurityPolicy.build(
        bind_host=config.host,
        allowed_hosts=config.allowed_hosts,
        allowed_origins=config.allowed_origins,
        frame_ancestors=config.frame_ancestors,
    )
    app = web.Application(
        middlewares=[error_middleware, *security_middlewares(policy)],
        client_max_size=MAX_REQUEST_BODY,
    )
    hub = Hub(sampler)
    detachers: list[Detacher] = []
    app[CONFIG] = config
    app[CLOCK] = clock
    app[SAMPLER] = sampler
    app[HUB] = hub
    app[TICKER] = Ticker(sampler, hub.publish, clock=clock)
    app[SECURITY] = policy
    app[DETACHERS] = detachers
    app[PRIVILEGED] = InProcessOps(detachers.append)
    app[WEBSOCKETS] = weakref.WeakSet()
    app[STARTED] = clock.mono()
    app[PROMETHEUS] = prom.build_registry(app, sampler)
    install_headers(app, policy)

    api.add_routes(app)
    stream.add_routes(app)
    prom.add_routes(app)
    static.add_routes(app)
    _add_optional_routes(app, RENDER_MODULE)
    static.add_fallback_route(app)

    app.cleanup_ctx.append(_sampling)
    app.on_shutdown.append(_close_websockets)
    return app


def _add_optional_routes(app: web.Application, module_name: str) -> None:
    """Routes of a module that may not exist in this build (errors inside it surface)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return
    add_routes = getattr(module, "add_routes", None)
    if callable(add_routes):
        add_routes(app)


async def _sampling(app: web.Application) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    # One dedicated thread: collections never overlap and never queue behind other
    # blocking work in the default executor.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hostscope-sampler")
    ticker = app[TICKER]
    ticker.executor = executor
    sampler = app[SAMPLER]
    app[HOST] = await loop.run_in_executor(executor, read_host_info, app[CONFIG].roots())
    task = asyncio.create_task(ticker.run(), name="hostscope-sampler")
    log.info(
        "sampling",
        extra={"interval_s": sampler.interval_s, "collectors": len(sampler.collectors),
               "metrics": len(sampler.registry)},
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Joins a collection still running in the thread (bounded by one collect).
        await loop.run_in_executor(None, executor.shutdown)
        try:
            sampler.close()
        except Exception:
            log.exception("closing the sampler failed")
        _run_detachers(app)
        app[PRIVILEGED].close()
        log.info("stopped")


def _run_detachers(app: web.Application) -> None:
    detachers = app[DETACHERS]
    while detachers:
        detach = detachers.pop()
        try:
            detach()
        except Exception:
            log.exception("detaching failed", extra={"detacher": repr(detach)})


async def _close_websockets(app: web.Application) -> None:
    app[HUB].close()
    sockets = list(app[WEBSOCKETS])
    if not sockets:
        return
    log.info("closing websockets", extra={"count": len(sockets)})

    async def close(ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await asyncio.wait_for(
                ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown", drain=False),
                stream.CLOSE_TIMEOUT_S,
            )

    await asyncio.gather(*(close(ws) for ws in sockets))
