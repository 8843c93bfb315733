"""``/api/v1/stream``: the websocket protocol of docs/protocol.md.

One task reads a connection's messages (subscribe, unsubscribe, ping, bpf) in order;
one writer task drains its bounded queue to the socket. The hub only ever ``put_nowait``s
into that queue, so a client that stops reading fills its own queue and is closed with
1013 "client too slow" while everyone else keeps their schedule.

Subscribing sends ``meta`` (the column layout), then the backfill from history in
chunks, then live frames. While the backfill is being encoded the client is not live
(the hub skips it); once the chunks are queued, whatever arrived meanwhile is topped up
from history without yielding, and only then does the client go live, so there is
neither a gap nor a duplicate between backfill and live frames.

A ``bpf`` message toggles a BPF module on behalf of the connection (user ``ws:N``); when
the connection ends, for whatever reason (closed, dropped as too slow, shutdown), or
re-authenticates with a token below ``operator`` (a viewer or embed token), every module
it held is released, and one left without users detaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from hostscope.bpfmods.manager import BpfError
from hostscope.metrics.model import UnknownMetricError

from . import bpf_api, encode
from .auth import (
    OPERATOR,
    WS_UNAUTHORIZED,
    PendingSlot,
    Principal,
    client_address,
    forbid_outside_scope,
    principal_json,
    request_principal,
    websocket_login,
)
from .errors import ApiError, BadParameter, TooManyNames, details, translate
from .hub import Client, Hub, interval_multiple
from .keys import (
    AUTH,
    CLOCK,
    CONFIG,
    CONNECTION_IDS,
    HOST,
    HUB,
    PENDING_LOGINS,
    PRIVILEGED,
    SAMPLER,
    SECURITY,
    WEBSOCKETS,
)
from .security import check_websocket_origin
from .version import PROTOCOL, VERSION

log = logging.getLogger("hostscope.daemon")

MAX_NAMES = 200
MAX_INTERVAL_S = 60.0
MAX_BACKFILL_S = 3600.0
DEFAULT_BACKFILL_S = 300.0
HEARTBEAT_S = 25.0
WRITER_LIMIT = 16 * 1024
TRY_AGAIN_LATER = 1013
#: Seconds a client may take to make room for the next backfill frame.
BACKFILL_SEND_TIMEOUT_S = 10.0
#: Backfill frames (~80 KB each) queued ahead of the writer at most: a client that does not
#: read holds a few hundred KB, not its whole queue of backfill frames.
BACKFILL_QUEUED_FRAMES = 4
#: Seconds to wait for a dropped or shut-down client's close handshake.
CLOSE_TIMEOUT_S = 2.0
#: Then this long for it to read what is buffered before the socket is cut.
ABORT_AFTER_S = 5.0


class _Connection:
    """Per-connection state owned by the handler."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, peer: str,
                 principal: Principal) -> None:
        self.request = request
        #: Who the connection acts for: its role gates state-changing messages, an embed
        #: token's scope limits what it may subscribe to.
        self.principal = principal
        self.expiry: asyncio.TimerHandle | None = None
        self.expired: asyncio.Future[None] | None = None
        self.ws = ws
        self.client = Client(
            peer, queue_size=request.app[CONFIG].client_queue, on_overflow=self.overflow
        )
        self.client.notices = not principal.embed
        self.hub: Hub = request.app[HUB]
        self.writer: asyncio.Task[None] | None = None
        #: True while the writer is inside ``send_frame`` (see :meth:`stop_writer`).
        self.sending = False
        self.stopping = False
        self.closer: asyncio.Task[None] | None = None
        #: Holder of the BPF modules this connection enables.
        self.user_id = f"ws:{next(request.app[CONNECTION_IDS])}"
        self.bpf_used = False
        self.bpf_toggle: asyncio.Future[dict[str, Any]] | None = None

    # -- sending ------------------------------------------------------------------

    async def write_loop(self) -> None:
        queue = self.client.queue
        ws = self.ws
        try:
            while not self.stopping:
                frame = await queue.get()
                self.sending = True
                try:
                    await ws.send_frame(frame, WSMsgType.TEXT)
                finally:
                    self.sending = False
                self.client.drained.set()
        except ConnectionError:
            pass  # the peer went away; the reader notices and cleans up

    def stop_writer(self) -> None:
        """Stop the writer, cancelling it only between frames.

        aiohttp compresses a frame over 16 KiB in a shielded task of its own; cancelling
        the writer inside ``send_frame`` leaves that task to fail alone when the peer is
        gone, and asyncio logs "Task exception was never retrieved" at error level, one
        traceback per disconnect (a connect/disconnect storm made thousands). Inside a
        send the writer instead ends when the send returns or fails.
        """
        self.stopping = True
        if self.writer is not None and not self.sending:
            self.writer.cancel()

    def send(self, message: dict[str, Any]) -> None:
        self.client.offer(encode.dumps(message).encode())

    def error(
        self,
        code: str,
        message: str,
        ref: object = None,
        names: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        log.info(
            "bad websocket message",
            extra={"client": self.client.peer, "code": code, "detail": message},
        )
        error: dict[str, Any] = {"type": "error", "code": code, "message": message, "ref": ref}
        if names is not None:
            error["names"] = names  # machine-readable list of the unknown names
        if extra:
            error.update(extra)  # e.g. a BPF error's module and per-setting errors
        self.send(error)

    # -- dropping -----------------------------------------------------------------

    def overflow(self, client: Client) -> None:
        """Called by the hub (synchronously) when the client's queue is full."""
        self.hub.unregister(client)
        self.hub.stats.dropped += 1
        log.warning(
            "client dropped",
            extra={"client": client.peer, "reason": "client too slow",
                   "queued": client.queue.qsize()},
        )
        self.closer = asyncio.ensure_future(self.close(TRY_AGAIN_LATER, b"client too slow"))

    async def close(self, code: int, reason: bytes) -> None:
        """Close with ``code``; cut the connection if the peer does not cooperate.

        The close frame is queued behind whatever the peer has not read yet. A peer that
        resumes reading gets everything and then the close code; one that never reads
        is aborted after :data:`ABORT_AFTER_S` so it cannot pin buffers forever.
        """
        self.stop_writer()
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await asyncio.wait_for(
                self.ws.close(code=code, message=reason, drain=False), CLOSE_TIMEOUT_S
            )
        transport = self.request.transport
        if transport is None:
            return
        if not transport.is_closing():
            transport.close()  # flushes what is buffered, then closes
        for _ in range(int(ABORT_AFTER_S / 0.1)):
            if self.request.transport is None:
                return
            await asyncio.sleep(0.1)
        transport.abort()

    # -- receiving ----------------------------------------------------------------

    async def handle(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError as exc:
            self.error("bad_message", f"not JSON: {exc}")
            return
        except RecursionError:  # "[[[[..." within max_message: found by fuzzing
            self.error("bad_message", "not JSON: nested too deeply")
            return
        if not isinstance(message, dict):
            self.error("bad_message", "a message must be a JSON object with a 'type'")
            return
        kind = message.get("type")
        ref = kind if isinstance(kind, str) else None
        try:
            if kind == "subscribe":
                await self.subscribe(message)
            elif kind == "unsubscribe":
                self.unsubscribe(message)
            elif kind == "ping":
                self.send({"type": "pong", "id": message.get("id")})
            elif kind == "bpf":
                await self.bpf(message)
            elif kind == "auth":
                await self.reauth(message)
            else:
                self.error(
                    "unknown_type",
                    f"unknown message type {kind!r}; expected subscribe, unsubscribe, ping, "
                    "bpf or auth",
                    ref,
                )
        except (ApiError, UnknownMetricError, BadParameter, BpfError) as exc:
            known = translate(exc)
            assert known is not None
            names = exc.names if isinstance(exc, UnknownMetricError) else None
            self.error(known[1], known[2], ref, names, details(exc))
        except Exception:
            # A bug, not the client's fault: say so, keep the connection (as REST's 500).
            log.exception("websocket message failed", extra={"client": self.client.peer})
            self.send({"type": "error", "code": "internal",
                       "message": "internal error (logged on the server)", "ref": ref})

    async def subscribe(self, message: dict[str, Any]) -> None:
        # Either list may be empty as long as together they name something: a widget
        # made only of metrics this host may lack subscribes with "optional" alone.
        names = _names(message, "names", required=False)
        optional = _names(message, "optional", required=False)
        if not names and not optional:
            raise BadParameter("'names' or 'optional' must name at least one metric or prefix")
        if len(names) + len(optional) > MAX_NAMES:
            raise TooManyNames(f"at most {MAX_NAMES} names per subscribe")
        interval = _number(message, "interval", None, MAX_INTERVAL_S)
        backfill = _number(message, "backfill", DEFAULT_BACKFILL_S, MAX_BACKFILL_S, zero_ok=True)
        container = _container(message)
        hub = self.hub
        metrics, absent = hub.resolve(names, optional)  # raises before anything changes
        self.check_scope([*metrics, *absent])

        client = self.client
        held = set(client.metrics) | metrics
        kept_absent = tuple(dict.fromkeys([*client.absent, *absent]))
        limit = self.request.app[CONFIG].max_client_names
        if len(held) + len(kept_absent) > limit:
            raise TooManyNames(
                f"at most {limit} metrics and optional names per connection "
                f"(max_client_names); this subscribe would hold {len(held) + len(kept_absent)}"
                ": unsubscribe some first")
        client.live = False
        client.metrics = tuple(sorted(held))
        client.absent = kept_absent
        if interval is not None:
            client.every = interval_multiple(interval, hub.sampler.interval_s)
        if container is not _UNCHANGED:
            client.container = container  # type: ignore[assignment]
        layout = hub.subscription_changed(client)
        client.offer(hub.meta_frame(client))
        if backfill and backfill > 0:
            backfill = _fit_backfill(backfill, layout.columns, hub.sampler.interval_s,
                                     self.request.app[CONFIG].max_history_values)
        if backfill and backfill > 0:
            async with hub.backfill_slots:
                last: float | None = None
                # Read window by window as frames go out (Hub.backfill): a client that
                # stops reading stops the reading, and holds one window at most.
                async with contextlib.aclosing(hub.backfill(layout, backfill)) as chunks:
                    async for times, columns in chunks:
                        if not await self.push(hub.encode_backfill(layout, times, columns)):
                            return
                        last = times[-1]
                        await asyncio.sleep(0)  # other clients' frames go out between chunks
                # Top up what was published meanwhile until nothing is left; the last check
                # and going live happen without an await, so no tick falls in between.
                while last is not None and not client.closed:
                    more, newest = hub.backfill_since(layout, last)
                    if not more:
                        break
                    for times, columns in more:
                        if not await self.push(hub.encode_backfill(layout, times, columns)):
                            return
                    last = newest
        if client.closed:
            return
        client.live = True

    async def push(self, frame: bytes) -> bool:
        """Queue a backfill frame once the writer has room (the client is not live yet, so
        the hub is not feeding it). At most BACKFILL_QUEUED_FRAMES wait in the queue, so a
        client that does not read holds little; one that makes no room for
        BACKFILL_SEND_TIMEOUT_S is dropped."""
        client = self.client
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BACKFILL_SEND_TIMEOUT_S
        size = client.queue.maxsize
        room = BACKFILL_QUEUED_FRAMES if size <= 0 else min(BACKFILL_QUEUED_FRAMES, size)
        while not client.closed and client.queue.qsize() >= room:
            remaining = deadline - loop.time()
            if remaining <= 0:
                client.closed = True
                self.overflow(client)
                return False
            client.drained.clear()
            # Short waits: a connection closed meanwhile gives its backfill slot back soon.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.drained.wait(), min(0.5, remaining))
        if client.closed:
            return False
        return client.offer(frame)

    def check_scope(self, names: list[str]) -> None:
        forbid_outside_scope(self.principal, names, self.request.app[AUTH].panel_metrics)

    def narrow_to_scope(self) -> list[str]:
        """Unsubscribe what the principal's scope does not open (after re-authentication
        with an embed token: the subscriptions made with the wider token must not go on
        streaming). Returns the names dropped; the caller sends the new ``meta``."""
        principal = self.principal
        if principal.scope is None:
            return []
        panels = self.request.app[AUTH].panel_metrics
        client = self.client
        metrics = tuple(m for m in client.metrics if principal.allows_metric(m, panels))
        absent = tuple(a for a in client.absent if principal.allows_metric(a, panels))
        dropped = sorted({*client.metrics, *client.absent} - {*metrics, *absent})
        if dropped:
            client.metrics, client.absent = metrics, absent
            self.hub.subscription_changed(client)
        return dropped

    def watch_expiry(self) -> None:
        """Close the connection when its (embed) token expires: an expiring token must
        not keep streaming through a socket opened before the expiry."""
        expires = self.principal.expires
        if expires is None:
            return
        left = expires - self.request.app[CLOCK].wall()
        if left > 0:
            self.expiry = asyncio.get_running_loop().call_later(left, self.watch_expiry)
            return
        log.info("client token expired", extra={"client": self.client.peer})
        self.hub.unregister(self.client)
        self.expired = asyncio.ensure_future(
            self.close(WS_UNAUTHORIZED, b"unauthorized: the embed token expired"))

    @property
    def may_hold_bpf(self) -> bool:
        """Only operators toggle (and so hold) BPF modules; embed tokens never do."""
        return self.principal.has(OPERATOR) and not self.principal.embed

    async def reauth(self, message: dict[str, Any]) -> None:
        """A later ``auth`` message changes the connection's role (a viewer pasting an
        operator token); a bad one is an error and leaves the role as it was. An embed
        token narrows the connection to its scope: subscriptions outside it are dropped
        (named in the answer's ``dropped``, then a new ``meta``). Dropping from operator
        to a lower role (a viewer or an embed token) releases every BPF module the
        connection held (named in the answer's ``released``): holds are an operator's,
        and must not outlast the role that took them."""
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise BadParameter("'token' must be a non-empty string")
        app = self.request.app
        could_hold = self.may_hold_bpf
        self.principal = app[AUTH].check(token, self.request.remote or "unknown", app[CLOCK])
        self.client.notices = not self.principal.embed
        dropped = self.narrow_to_scope()
        answer: dict[str, Any] = {"type": "auth", **principal_json(self.principal)}
        if self.principal.embed:
            answer["dropped"] = dropped
        if could_hold and not self.may_hold_bpf:
            answer["released"] = await self.release_for_reauth()
        self.send(answer)
        if dropped:
            log.info("subscriptions outside the new scope dropped",
                     extra={"client": self.client.peer, "count": len(dropped)})
            self.client.offer(self.hub.meta_frame(self.client))
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        self.watch_expiry()

    async def release_for_reauth(self) -> list[str]:
        """Release the holds of a connection whose role dropped below operator; the
        modules it held. Messages are handled in order and the role is already lowered,
        so no toggle of this connection can start meanwhile."""
        if not self.bpf_used:
            return []
        try:
            released = await self.release_bpf()
        except BpfError as exc:
            # The helper is gone (its programs with it; a restarted one does not take
            # this connection's holds back, they were forgotten first). The close
            # releases again.
            log.warning("bpf holds not released on re-authentication",
                        extra={"client": self.client.peer, "detail": str(exc)})
            return []
        self.bpf_used = False
        released = sorted(released)
        if released:
            log.info("bpf holds released: the connection's role dropped below operator",
                     extra={"client": self.client.peer, "bpf_modules": ",".join(released)})
        return released

    async def bpf(self, message: dict[str, Any]) -> None:
        """Toggle a BPF module held by this connection; answer with its status entry."""
        if not self.may_hold_bpf:
            raise ApiError(403, "forbidden", "toggling BPF modules needs the operator role; "
                           f"this connection has {self.principal.role}")
        name = message.get("name")
        if not isinstance(name, str) or not name:
            raise BadParameter("'name' must name a BPF module (GET /api/v1/bpf lists them)")
        enabled, settings = bpf_api.parse_toggle(message, frozenset({"type", "name"}))
        self.bpf_used = True
        # Shielded: if this handler is cancelled mid-compile the toggle still completes,
        # and release_bpf() waits for it, so a hold is never left behind a closed socket.
        toggle = self.bpf_toggle = asyncio.ensure_future(
            bpf_api.toggle(self.request.app, name, enabled, settings, self.user_id))
        entry = await asyncio.shield(toggle)
        self.send({"type": "bpf", "status": entry})

    async def release_bpf(self) -> list[str]:
        """Drop this connection's holds, after a toggle still in flight has finished; the
        modules it held."""
        toggle = self.bpf_toggle
        if toggle is not None:
            if not toggle.done():
                await asyncio.wait([toggle])
            if not toggle.cancelled():
                toggle.exception()  # reported to the client already, or nobody is left
        return await bpf_api.release(self.request.app, self.user_id)

    def unsubscribe(self, message: dict[str, Any]) -> None:
        names = _names(message, "names", required=True)
        client = self.client
        metrics, absent = self.hub.unsubscribe_matches(client, names)
        client.metrics = tuple(m for m in client.metrics if m not in metrics)
        client.absent = tuple(a for a in client.absent if a not in absent)
        self.hub.subscription_changed(client)
        client.offer(self.hub.meta_frame(client))


_UNCHANGED = object()


def _fit_backfill(seconds: float, columns: int, interval_s: float, limit: int) -> float:
    """``seconds`` of backfill, shortened so columns x points stays within ``limit``.

    The same bound as one REST history answer (``max_history_values``): what one
    subscribe can make the daemon read, encode and send (an hour of every metric,
    ~3,400 columns, is 12 million values). Memory is bounded separately, by reading the
    backfill window by window (:meth:`Hub.backfill`). The client gets the most recent
    part.
    """
    points = seconds / interval_s + 1
    if columns * points <= limit:
        return seconds
    return max(0.0, (limit / columns - 1) * interval_s)


def _names(message: dict[str, Any], key: str, *, required: bool) -> list[str]:
    value = message.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadParameter(f"'{key}' must be a list of metric names or prefixes")
    if required and not value:
        raise BadParameter(f"'{key}' must name at least one metric or prefix")
    if len(value) > MAX_NAMES:
        raise TooManyNames(f"at most {MAX_NAMES} names per message, got {len(value)}")
    return [v.rstrip(".") for v in value]


def _number(
    message: dict[str, Any], key: str, default: float | None, high: float, *, zero_ok: bool = False
) -> float | None:
    """Seconds in (0, high] (or [0, high] when ``zero_ok``), ``default`` when absent."""
    value = message.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadParameter(f"'{key}' must be a number of seconds")
    if value > high or value < 0 or (value == 0 and not zero_ok):
        low = ">= 0" if zero_ok else "> 0"
        raise BadParameter(f"'{key}' must be {low} and <= {high:g} seconds, got {value}")
    return float(value)


def _container(message: dict[str, Any]) -> object:
    if "filter" not in message:
        return _UNCHANGED
    flt = message["filter"]
    if flt is None:
        return None
    if not isinstance(flt, dict) or set(flt) - {"container"}:
        raise BadParameter("'filter' must be an object with an optional 'container'")
    container = flt.get("container")
    if container is not None and (not isinstance(container, str) or not container):
        raise BadParameter("'filter.container' must be a container name")
    return container


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(request.remote)


async def stream_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    check_websocket_origin(app[SECURITY], request)
    # Refused before the upgrade, as a JSON 503.
    _check_max_clients(app)
    # A socket without credentials waits for its auth message in a pending slot of its
    # own (max_pending_auth), so silent sockets cannot fill max_clients and lock out the
    # clients that bring a token (daemon/auth.py, PendingLogins).
    slot = None if request_principal(request) is not None else (
        app[PENDING_LOGINS].admit(client_address(request)))
    try:
        return await _upgrade(request, slot)
    finally:
        if slot is not None:
            slot.release()


async def _upgrade(request: web.Request, slot: PendingSlot | None) -> web.StreamResponse:
    app = request.app
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_S,
        max_msg_size=app[CONFIG].max_message,
        compress=True,
        timeout=CLOSE_TIMEOUT_S,
        # Check for a full socket every 16 KiB written (aiohttp's default is 64 KiB): a
        # stalled client is noticed sooner and pins less memory before it is dropped.
        writer_limit=WRITER_LIMIT,
    )
    try:
        await ws.prepare(request)
    except ConnectionError:
        # The client gave up before the upgrade answer was written (a timeout during
        # a connect storm): nothing to serve and not a server error. aiohttp treats the
        # answer it cannot send as a disconnect.
        log.info("client left before the upgrade", extra={"client": _peer(request)})
        return web.Response(status=499, reason="Client Closed Request")
    hub = app[HUB]
    if hub.closed:
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        return ws
    principal = request_principal(request)
    if slot is not None:
        slot.upgraded(ws)
        principal = await websocket_login(request, ws, app[AUTH], app[CLOCK])
        slot.release()
        if principal is None:
            return ws
        try:
            _check_max_clients(app)
        except ApiError as exc:
            # Authenticated, but the client slots filled up while it was pending.
            await ws.close(code=TRY_AGAIN_LATER,
                           message=f"{exc.code}: {exc.message}".encode()[:120])
            return ws
        await ws.send_str(encode.dumps({"type": "auth", **principal_json(principal)}))
    assert principal is not None  # the middleware's, or the auth message's
    # Removed explicitly when the handler ends: a WeakSet alone lets a closed socket
    # count against max_clients until the garbage collector breaks its reference cycles,
    # which on a quiet daemon can take minutes (CI saw slots held for over 30 s).
    app[WEBSOCKETS].add(ws)
    try:
        return await _serve(request, ws, hub, principal)
    finally:
        app[WEBSOCKETS].discard(ws)


def _check_max_clients(app: web.Application) -> None:
    """Counted from the authenticated sockets, dropped ones still closing included: they
    hold buffers until they are gone."""
    config = app[CONFIG]
    if len(app[WEBSOCKETS]) >= config.max_clients:
        raise ApiError(503, "too_many_clients",
                       f"the daemon serves at most {config.max_clients} websocket clients "
                       "(max_clients); try again later")


async def _serve(
    request: web.Request, ws: web.WebSocketResponse, hub: Hub, principal: Principal
) -> web.WebSocketResponse:
    """One authenticated client, from its hello to its last frame."""
    app = request.app
    peer = _peer(request)
    conn = _Connection(request, ws, peer, principal)
    client = conn.client
    hub.register(client)
    conn.writer = asyncio.create_task(conn.write_loop(), name=f"ws-writer {peer}")
    host = app.get(HOST)
    conn.send({
        "type": "hello",
        "protocol": PROTOCOL,
        "host": host.identity.get("hostname") if host is not None else None,
        "interval_s": app[SAMPLER].interval_s,
        "version": VERSION,
    })
    helper = app[PRIVILEGED].helper_info()
    if helper is not None and helper["state"] != "running" and client.notices:
        # Notices go out when the helper's state changes; one who connects meanwhile
        # learns it here (docs/privilege.md).
        conn.send({"type": "notice", "code": f"helper_{helper['state']}", "helper": helper,
                   "message": f"The privileged helper is {helper['state']}: BPF modules "
                   "and profiles are unavailable until it runs again"
                   + (f" ({helper['error']})." if helper.get("error") else ".")})
    log.info("client connected", extra={"client": peer})
    conn.watch_expiry()
    try:
        async for msg in ws:
            if client.closed:
                break
            if msg.type is WSMsgType.TEXT:
                await conn.handle(msg.data)
            elif msg.type is WSMsgType.BINARY:
                conn.error("bad_message", "binary messages are not part of the protocol")
    except ConnectionError:
        # aiohttp answers a ping inside receive(); when the transport is already
        # closing (a dropped client still pinging) that raises here. The peer is gone.
        pass
    finally:
        hub.unregister(client)
        conn.stop_writer()
        if conn.expiry is not None:
            conn.expiry.cancel()
        log.info(
            "client disconnected",
            extra={"client": peer, "code": ws.close_code, "dropped": conn.closer is not None},
        )
        if conn.bpf_used:
            await conn.release_bpf()
    for closing in (conn.closer, conn.expired):
        if closing is not None:
            # Keep the request alive until the client has been closed or aborted.
            with contextlib.suppress(asyncio.CancelledError):
                await closing
    return ws


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/stream", stream_handler)
