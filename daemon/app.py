"""The application factory and the daemon's lifecycle.

``create_app`` wires the parts together and does no network I/O; the sampling loop,
the worker thread and the host identity are started in a ``cleanup_ctx`` (so their
teardown runs only if they started) and stopped in a fixed order:

1. ``on_shutdown``: the hub stops publishing and every websocket is closed with 1001
   GOING_AWAY (they are tracked in a WeakSet, as aiohttp's documentation recommends);
   each closed connection releases the BPF modules it held;
2. aiohttp waits up to ``shutdown_timeout`` for handlers to finish;
3. cleanup: the BPF readiness check is abandoned and the BPF worker pool takes no new work; the
   sampler task is cancelled and awaited, the worker thread joined, ``sampler.close()``
   called, every registered detacher (perf events, helpers) run, newest first, and the
   privileged operations closed, which detaches every BPF module (waiting for a compile
   in progress), so no program stays loaded after a SIGTERM.

The BPF modules' collectors are part of the sampler from the start (a module that is
off reports nothing). Startup only runs the cheap BPF readiness checks in the background
(privileges, tracefs, bcc *found*, headers, BTF file present): it imports no bcc and
parses no BTF, so a daemon nobody asks for BPF costs no more memory than one with
``bpf = false``. Listing modules resolves BTF facts in a short-lived child process; the
first enable imports bcc (see docs/daemon.md, "Cost").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import itertools
import logging
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import WSCloseCode, web

from hostscope.metrics.defaults import default_collectors
from hostscope.metrics.history import History
from hostscope.metrics.model import MetricRegistry
from hostscope.metrics.sampler import Clock, Sampler, SystemClock

from . import api, bpf_api, encode, profiles_api, prom, static, stream
from .auth import Auth, PendingLogins, auth_middleware, build_auth
from .auth import add_routes as add_auth_routes
from .config import Config
from .errors import error_middleware
from .host import read_host_info
from .hub import Hub
from .keys import (
    AUTH,
    BPF_EXECUTOR,
    CLOCK,
    CONFIG,
    CONNECTION_IDS,
    DETACHERS,
    HOST,
    HUB,
    PENDING_LOGINS,
    PRIVILEGED,
    PROMETHEUS,
    SAMPLER,
    SECURITY,
    STARTED,
    TICKER,
    WEBSOCKETS,
)
from .privileged import Detacher, InProcessOps, PrivilegedOps
from .security import SecurityPolicy, install_headers, security_middlewares
from .ticker import Ticker

log = logging.getLogger("hostscope.daemon")

#: Module the dashboard engineer provides (SVG renders); optional in every build.
RENDER_MODULE = "hostscope.daemon.render"
#: Request bodies are tiny (BPF toggles are the only ones); refuse big ones early.
MAX_REQUEST_BODY = 64 * 1024
#: Threads for BPF operations: concurrent compiles of different modules, plus room for
#: status and table reads while they run.
BPF_WORKERS = 4


def create_app(
    config: Config,
    *,
    sampler: Sampler | None = None,
    clock: Clock | None = None,
    privileged: PrivilegedOps | None = None,
    auth: Auth | None = None,
) -> web.Application:
    """A ready-to-run application for ``config``.

    ``privileged`` defaults to :class:`InProcessOps` over ``config``'s roots (owning the
    daemon's one BPF manager). ``sampler`` defaults to the default collectors plus the
    BPF modules' collectors (``privileged.bpf_collectors()``) over ``config``'s roots,
    with an in-memory history of ``config.history`` seconds; a sampler passed in should
    include those collectors if BPF metrics are wanted. ``clock`` defaults to the system
    clock. ``auth`` defaults to the tokens ``config`` names (see docs/security.md), or a
    random operator token (``app[AUTH].generated``) if it names none; ``hostscope serve``
    passes one that also knows ``HOSTSCOPE_TOKEN``.
    """
    clock = clock or (sampler.clock if sampler is not None else SystemClock())
    detachers: list[Detacher] = []
    if privileged is None:
        privileged = InProcessOps(detachers.append, roots=config.roots(), bpf=config.bpf,
                                  symbol_cache=config.symbol_cache())
    if sampler is None:
        sampler = Sampler(
            [*default_collectors(config.roots(), process_interval_s=config.process_interval,
                                 io_reader=privileged.proc_io_reader(),
                                 tcpconn_interval_s=config.tcpconn_interval),
             *privileged.bpf_collectors()],
            registry=MetricRegistry(),
            interval_s=config.interval,
            clock=clock,
            history=History(retention_s=config.history, max_series=config.history_series),
            self_metrics=True,
        )
    policy = SecurityPolicy.build(
        bind_host=config.host,
        allowed_hosts=config.allowed_hosts,
        allowed_origins=config.allowed_origins,
        frame_ancestors=config.frame_ancestors,
    )
    if auth is None:
        auth = build_auth(config)
    if not auth.panel_metrics:
        auth.panel_metrics, auth.process_panels = _panel_scopes()
    app = web.Application(
        middlewares=[error_middleware, *security_middlewares(policy),
                     auth_middleware(auth, clock, policy.origin_allowed)],
        client_max_size=MAX_REQUEST_BODY,
    )
    hub = Hub(sampler)
    app[CONFIG] = config
    app[CLOCK] = clock
    app[SAMPLER] = sampler
    app[HUB] = hub
    app[TICKER] = Ticker(sampler, hub.publish, clock=clock,
                         timeout_s=config.collector_timeout or None)
    app[SECURITY] = policy
    app[AUTH] = auth
    app[DETACHERS] = detachers
    app[PRIVILEGED] = privileged
    # Threads start on first use; nothing runs until the app does.
    app[BPF_EXECUTOR] = ThreadPoolExecutor(max_workers=BPF_WORKERS,
                                           thread_name_prefix="hostscope-bpf")
    app[CONNECTION_IDS] = itertools.count(1)
    app[WEBSOCKETS] = weakref.WeakSet()
    app[PENDING_LOGINS] = PendingLogins(config.max_pending_auth)
    app[STARTED] = clock.mono()
    app[PROMETHEUS] = prom.build_registry(app, sampler)
    install_headers(app, policy)

    api.add_routes(app)
    add_auth_routes(app)
    stream.add_routes(app)
    bpf_api.add_routes(app)
    profiles_api.add_routes(app)
    prom.add_routes(app)
    static.add_routes(app)
    _add_optional_routes(app, RENDER_MODULE)
    static.add_fallback_route(app)

    app.cleanup_ctx.append(_sampling)
    # After sampling: started once the host is known, torn down first.
    app.cleanup_ctx.append(_bpf)
    # Torn down before sampling's cleanup closes the privileged operations: the capture
    # in flight is cancelled first.
    app.cleanup_ctx.append(profiles_api.lifecycle)
    app.cleanup_ctx.append(_helper_notices)
    app.on_shutdown.append(_close_websockets)
    return app


async def _helper_notices(app: web.Application) -> AsyncIterator[None]:
    """Tell every connected dashboard when the privileged helper is lost or restarted
    (websocket ``{"type": "notice", "code", "message", "helper"}``, docs/protocol.md).
    The helper's supervisor thread reports; the loop fans the frame out."""
    add_listener = getattr(app[PRIVILEGED], "add_listener", None)
    if add_listener is None:  # in-process: there is no helper to lose
        yield
        return
    loop = asyncio.get_running_loop()
    active = True

    def broadcast(event: dict[str, Any]) -> None:
        if not active:
            return
        frame = encode.dumps({"type": "notice", **event}).encode()
        for client in list(app[HUB].clients):
            if client.notices:
                client.offer(frame)

    def listener(event: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(broadcast, event)

    add_listener(listener)
    try:
        yield
    finally:
        active = False


def _panel_scopes() -> tuple[dict[str, tuple[str, ...]], frozenset[str]]:
    """Metrics of each catalogue panel, which embed-token scopes may name by panel id, and
    the ids of the panels that show the process table (they open /api/v1/processes)."""
    try:
        render = importlib.import_module(RENDER_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != RENDER_MODULE:
            raise
        return {}, frozenset()
    panels = render.load_catalogue().panels.values()
    return ({p.id: tuple(s.metric for s in p.series) for p in panels},
            frozenset(p.id for p in panels if p.kind == "processes"))


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
    # Host identity is read off the loop on its own thread; collections run on the
    # ticker's worker thread (daemon/ticker.py), which a hung collector cannot stall.
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
        await loop.run_in_executor(None, executor.shutdown)
        # Joins a collection still running on the sampling thread (at most 1 s).
        await loop.run_in_executor(None, ticker.close)
        try:
            sampler.close()
        except Exception:
            log.exception("closing the sampler failed")
        _run_detachers(app)
        try:
            # Blocking (detaching, waiting for a compile in progress): off the loop.
            await loop.run_in_executor(None, app[PRIVILEGED].close)
        except Exception:
            log.exception("closing the privileged operations failed")
        log.info("stopped")


async def _bpf(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_check_bpf(app), name="hostscope-bpf-readiness")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Queued operations are cancelled; running ones finish in their threads, and
        # closing the manager (next, in the sampling cleanup) waits for any start.
        app[BPF_EXECUTOR].shutdown(wait=False, cancel_futures=True)


async def _check_bpf(app: web.Application) -> None:
    """Make ``capabilities.bpf`` of ``/api/v1/host`` say what ``hostscope doctor`` says,
    from the cheap checks only. No prewarm: importing bcc keeps ~60 MB resident, and
    parsing BTF here kept ~40 MB more, for hosts where nobody ever enables a module; the
    first enable pays ~0.5 s instead (within the 3 s first-column target)."""
    ops = app[PRIVILEGED]
    try:
        readiness = await bpf_api.run_blocking(app, functools.partial(ops.bpf_readiness,
                                                                      resolve=False))
    except Exception as exc:  # BPF trouble must never stop the daemon
        log.exception("BPF readiness check failed")
        readiness = {"available": False,
                     "reason": f"checking BPF readiness failed: {type(exc).__name__}: {exc}"}
    host = app.get(HOST)
    if host is not None:
        host.set_bpf_readiness(readiness)
    if readiness.get("available"):
        log.info("bpf ready")
    else:
        log.info("bpf unavailable", extra={"reason": readiness.get("reason")})


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
    sockets = [*app[WEBSOCKETS], *app[PENDING_LOGINS].sockets]
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
