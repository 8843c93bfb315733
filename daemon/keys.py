"""Typed application keys: everything the daemon stores on its ``web.Application``.

One module, so a reader sees all shared state at a glance and every access is typed.
Nothing here does I/O; values are set by :func:`hostscope.daemon.app.create_app`.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiohttp import web

from hostscope.metrics.sampler import Clock, Sampler

from .auth import Auth, PendingLogins
from .config import Config
from .host import HostInfo
from .hub import Hub
from .privileged import PrivilegedOps
from .profiles import ProfileService
from .security import SecurityPolicy
from .ticker import Ticker

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

CONFIG = web.AppKey("config", Config)
CLOCK = web.AppKey("clock", Clock)
SAMPLER = web.AppKey("sampler", Sampler)
HUB = web.AppKey("hub", Hub)
TICKER = web.AppKey("ticker", Ticker)
#: Identity and capabilities, read once at startup (None until then).
HOST = web.AppKey("host", HostInfo)
SECURITY = web.AppKey("security", SecurityPolicy)
#: Tokens, embed-token signer and the failure limiter (daemon/auth.py).
AUTH = web.AppKey("auth", Auth)
PRIVILEGED = web.AppKey("privileged", PrivilegedOps)
#: Callables run (newest first) at shutdown: BPF programs, perf events, helpers.
DETACHERS = web.AppKey("detachers", list[Callable[[], None]])
#: Open websockets, closed with 1001 GOING_AWAY on shutdown (aiohttp's guidance).
WEBSOCKETS = web.AppKey("websockets", weakref.WeakSet[web.WebSocketResponse])
#: Websockets upgraded without credentials, waiting for their auth message (bounded by
#: ``max_pending_auth``, not counted in WEBSOCKETS or against ``max_clients``).
PENDING_LOGINS = web.AppKey("pending_logins", PendingLogins)
#: The /metrics registry, built by the first scrape (prometheus_client is imported then).
PROMETHEUS = web.AppKey("prometheus", Callable[[], "CollectorRegistry"])
#: Monotonic time the app started, for /healthz uptime.
STARTED = web.AppKey("started", float)
#: Threads for blocking BPF operations (compile + attach, detach, map reads): a pool of
#: its own, so a burst of toggles never queues behind (or delays) other blocking work.
BPF_EXECUTOR = web.AppKey("bpf_executor", ThreadPoolExecutor)
#: Source of websocket connection ids ("ws:N"), the holders of BPF modules they enabled.
CONNECTION_IDS = web.AppKey("connection_ids", itertools.count)
#: Profile captures: queue, runner and store (daemon/profiles.py).
PROFILES = web.AppKey("profiles", ProfileService)
