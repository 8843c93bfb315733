"""The hub: fans each sampler tick out to websocket clients without ever waiting on one.

Data flow: sampler tick -> :meth:`Hub.publish` (synchronous, on the event loop) -> one
bounded queue per client -> that client's writer task -> socket. ``publish`` only calls
``put_nowait``; a client whose queue is full is handed to its ``on_overflow`` callback
(the stream handler closes it with 1013) and never delays the sampler or anyone else.

Cost does not grow with viewers:

* Clients are grouped by subscription (metrics + container filter). The column layout of
  a subscription is rebuilt only when the instance set of one of its metrics changed
  (tracked per metric with a version number bumped by a C-speed set comparison), so a
  steady state costs one dict lookup per client per tick.
* Layouts are interned: clients whose subscriptions produce the same columns share one
  :class:`Layout`, and a tick's ``samples`` frame is encoded once per layout and the same
  bytes are queued to all of them. The layout id is the ``seq`` of ``meta`` and
  ``samples`` messages, which is what makes the bytes shareable.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from hostscope.metrics.collectors.cgroup import container_matches
from hostscope.metrics.history import align
from hostscope.metrics.model import UnknownMetricError
from hostscope.metrics.sampler import Sampler, Tick

from . import encode

#: Instance domains narrowed by ``filter.container``, and the string metric that names
#: each instance's container.
CONTAINER_SOURCE = {"proc": "proc.id.container", "cgroup": "cgroup.container.name"}
#: Backfill frames hold at most this many timestamps, and about BACKFILL_CELLS values
#: (encoding 10,000 values takes ~4 ms, the longest the loop is held per frame).
BACKFILL_TIMESTAMPS = 600
BACKFILL_CELLS = 10_000
#: Meta frames kept for clients that share a layout (entries, and bytes in all).
META_CACHE_ENTRIES = 256
META_CACHE_BYTES = 8 * 1024 * 1024
#: History is read for backfill in batches of about this many values (~10 ms each).
BACKFILL_QUERY_CELLS = 50_000
#: A backfill reads history in time windows of about this many values (whole frames),
#: each sent before the next is read: about the most one backfill holds at once (~1 MB
#: as Python floats and lists; read whole, a backfill held up to max_history_values,
#: 4 million values or ~130 MB, and four could be in flight).
BACKFILL_WINDOW_CELLS = 30_000
#: Backfills being read and sent at once, daemon-wide: bounds the CPU that many clients
#: subscribing at once take, and with the windows above the memory (clients that never
#: read hold their slot until dropped, BACKFILL_SEND_TIMEOUT_S, without reading further).
BACKFILLS_IN_FLIGHT = 4

LayoutKey = tuple[tuple[str, tuple[str, ...]], ...]
SubKey = tuple[tuple[str, ...], str | None]
#: (timestamps, one column of values per series) of one backfill frame.
Chunk = tuple[list[float], list[list[float | None]]]

_G6 = "%.6g".__mod__


@dataclass(eq=False, slots=True)
class Layout:
    """An interned column layout: (metric, instances) groups in column order."""

    id: int
    key: LayoutKey
    users: int = 0

    @property
    def columns(self) -> int:
        return sum(len(insts) for _, insts in self.key)

    def series(self) -> list[list[str]]:
        return [[metric, inst] for metric, insts in self.key for inst in insts]


class Client:
    """One websocket connection's subscription state and send queue (no I/O here)."""

    def __init__(
        self, peer: str, *, queue_size: int, on_overflow: Callable[[Client], None]
    ) -> None:
        self.peer = peer
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.on_overflow = on_overflow
        #: Set by the connection's writer after each frame it sends (backfill pacing).
        self.drained = asyncio.Event()
        #: Send on ticks whose sequence number is a multiple of this.
        self.every = 1
        self.metrics: tuple[str, ...] = ()
        #: Optional names/prefixes that match no metric on this host (yet).
        self.absent: tuple[str, ...] = ()
        self.container: str | None = None
        self.layout: Layout | None = None
        #: False while a subscription is being set up (meta, backfill): the hub skips it.
        self.live = False
        self.closed = False
        #: The subscription key the hub counts this client under (None: not counted).
        self.counted_key: SubKey | None = None
        #: The stale metrics last sent to this client (in ``meta`` or ``stale``).
        self.stale_sent: dict[str, dict[str, object]] = {}
        #: Whether notices about the daemon itself (the privileged helper's state, pid
        #: and errors) are sent: not to embed-token connections, which see their panels'
        #: data only.
        self.notices = True

    @property
    def sub_key(self) -> SubKey:
        return self.metrics, self.container

    def offer(self, frame: bytes) -> bool:
        """Queue a frame without waiting; on overflow hand the client to ``on_overflow``."""
        if self.closed:
            return False
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.closed = True
            self.on_overflow(self)
            return False
        return True


@dataclass(slots=True)
class _Cached:
    generation: int
    versions: tuple[int, ...]
    layout: Layout


@dataclass(slots=True)
class HubStats:
    frames_encoded: int = 0
    frames_queued: int = 0
    meta_sent: int = 0
    dropped: int = 0
    layouts_built: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Hub:
    """Subscription bookkeeping and fan-out for every websocket client."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.backfill_slots = asyncio.Semaphore(BACKFILLS_IN_FLIGHT)
        self.clients: dict[Client, None] = {}
        self.stats = HubStats()
        self.closed = False
        self._inst_sets: dict[str, frozenset[str]] = {}
        self._inst_version: dict[str, int] = {}
        self._group_metrics: dict[str, frozenset[str]] = {}
        self._generation = 0
        self._layout_cache: dict[SubKey, _Cached] = {}
        self._sub_users: dict[SubKey, int] = {}
        self._interned: dict[LayoutKey, Layout] = {}
        self._next_layout_id = 1
        self._desc_json: dict[str, dict[str, object]] = {}
        self._meta_cache: dict[tuple[object, ...], bytes] = {}
        self._meta_bytes = 0
        self._registry_size = len(sampler.registry)
        self._stale_version = sampler.stale_version

    # -- clients and subscriptions --------------------------------------------------

    def register(self, client: Client) -> None:
        self.clients[client] = None

    def unregister(self, client: Client) -> None:
        client.closed = True
        if client in self.clients:
            del self.clients[client]
            self._set_layout(client, None)
            self._count_key(client, None)

    def resolve(
        self, names: Iterable[str], optional: Iterable[str] = ()
    ) -> tuple[set[str], list[str]]:
        """Metric names for ``names`` (all must match) and ``optional`` (may not).

        Returns (metric names, optional entries that matched nothing). Raises
        :class:`UnknownMetricError` naming every unknown entry of ``names``.
        """
        registry = self.sampler.registry
        found = {d.name for d in registry.resolve(names)}
        absent: list[str] = []
        for item in optional:
            matched = registry.match(item)
            if matched:
                found.update(d.name for d in matched)
            else:
                absent.append(item)
        return found, absent

    def unsubscribe_matches(
        self, client: Client, names: Iterable[str]
    ) -> tuple[set[str], set[str]]:
        """(metrics, absent entries) of ``client`` matched by ``names``; raises if one
        name matches nothing the client is subscribed to."""
        metrics: set[str] = set()
        absent: set[str] = set()
        unknown: list[str] = []
        for name in names:
            prefix = name + "."
            hit = {m for m in client.metrics if m == name or m.startswith(prefix)}
            hit_absent = {a for a in client.absent if a == name or a.startswith(prefix)}
            if not hit and not hit_absent:
                unknown.append(name)
            metrics |= hit
            absent |= hit_absent
        if unknown:
            raise UnknownMetricError(unknown)
        return metrics, absent

    def subscription_changed(self, client: Client) -> Layout:
        """Recompute ``client``'s layout after its subscription changed; returns it."""
        self._count_key(client, client.sub_key)
        layout = self.current_layout(client)
        self._set_layout(client, layout)
        return layout

    # -- per-tick work --------------------------------------------------------------

    def publish(self, tick: Tick) -> None:
        """Queue ``tick`` to every due client. Never awaits; O(layouts) encodes."""
        if self.closed:
            return
        self._track_instances(tick)
        if len(self.sampler.registry) != self._registry_size:
            self._registry_size = len(self.sampler.registry)
            self._resolve_absent()
        if self.sampler.stale_version != self._stale_version:
            self._stale_version = self.sampler.stale_version
            self._send_stale()
        frames: dict[int, bytes] = {}
        seq = tick.seq
        for client in list(self.clients):
            if not client.live or client.closed or seq % client.every or not client.metrics:
                continue
            layout = self.current_layout(client)
            if layout is not client.layout:
                self._set_layout(client, layout)
                self.stats.meta_sent += 1
                if not client.offer(self.meta_frame(client)):
                    continue
            frame = frames.get(layout.id)
            if frame is None:
                frame = frames[layout.id] = self._encode_live(layout, tick)
                self.stats.frames_encoded += 1
            if client.offer(frame):
                self.stats.frames_queued += 1

    def _send_stale(self) -> None:
        """Tell each client whose subscribed metrics became stale or fresh (rare)."""
        for client in list(self.clients):
            if client.closed or not client.metrics:
                continue
            stale = self.sampler.stale_metrics(client.metrics)
            if stale != client.stale_sent:
                client.stale_sent = stale
                client.offer(encode.dumps({"type": "stale", "stale": stale}).encode())

    def close(self) -> None:
        self.closed = True

    def _track_instances(self, tick: Tick) -> None:
        """Bump the version of every metric whose instance set changed in ``tick``."""
        changed = False
        versions = self._inst_version
        for group, sample in tick.groups.items():
            cooked = sample.cooked
            previous = self._group_metrics.get(group)
            if previous is None or previous != cooked.keys():
                for gone in (previous or frozenset()) - cooked.keys():
                    self._inst_sets.pop(gone, None)
                    versions[gone] = versions.get(gone, 0) + 1
                    changed = True
                self._group_metrics[group] = frozenset(cooked)
            for name, values in cooked.items():
                known = self._inst_sets.get(name)
                if known is None or known != values.keys():
                    self._inst_sets[name] = frozenset(values)
                    versions[name] = versions.get(name, 0) + 1
                    changed = True
        if changed:
            self._generation += 1

    def _resolve_absent(self) -> None:
        """Metrics registered after start (BPF modules) satisfy optional subscriptions."""
        registry = self.sampler.registry
        for client in self.clients:
            if not client.absent:
                continue
            still: list[str] = []
            added: set[str] = set()
            for item in client.absent:
                matched = registry.match(item)
                if matched:
                    added.update(d.name for d in matched)
                else:
                    still.append(item)
            if added:
                client.metrics = tuple(sorted(set(client.metrics) | added))
                client.absent = tuple(still)
                self._count_key(client, client.sub_key)
                # Forget the layout so the next publish sends a fresh meta.
                self._release(client.layout)
                client.layout = None

    # -- layouts --------------------------------------------------------------------

    def _versions(self, client: Client) -> tuple[int, ...]:
        get = self._inst_version.get
        names: Iterable[str] = client.metrics
        if client.container is not None:
            names = (*client.metrics, *CONTAINER_SOURCE.values())
        return tuple(get(name, 0) for name in names)

    def current_layout(self, client: Client) -> Layout:
        """The layout ``client``'s subscription has now (cached until instances change)."""
        key = client.sub_key
        cached = self._layout_cache.get(key)
        if cached is not None:
            if cached.generation == self._generation:
                return cached.layout
            versions = self._versions(client)
            if versions == cached.versions:
                cached.generation = self._generation
                return cached.layout
        else:
            versions = self._versions(client)
        layout = self._intern(self._build_key(client.metrics, client.container))
        self._layout_cache[key] = _Cached(self._generation, versions, layout)
        self.stats.layouts_built += 1
        return layout

    def _build_key(self, metrics: tuple[str, ...], container: str | None) -> LayoutKey:
        latest = self.sampler.latest
        registry = self.sampler.registry
        groups: list[tuple[str, tuple[str, ...]]] = []
        for name in metrics:
            values = latest.get(name)
            if not values:
                continue
            instances = tuple(values)
            if container is not None:
                source = CONTAINER_SOURCE.get(registry.get(name).indom or "")
                if source is not None:
                    owner = latest.get(source, {})
                    instances = tuple(
                        i for i in instances if container_matches(owner.get(i), container)
                    )
            if instances:
                groups.append((name, instances))
        return tuple(groups)

    def _intern(self, key: LayoutKey) -> Layout:
        layout = self._interned.get(key)
        if layout is None:
            layout = Layout(self._next_layout_id, key)
            self._next_layout_id += 1
            self._interned[key] = layout
        return layout

    def _set_layout(self, client: Client, layout: Layout | None) -> None:
        if client.layout is layout:
            return
        self._release(client.layout)
        if layout is not None:
            if self._interned.setdefault(layout.key, layout) is not layout:
                layout = self._interned[layout.key]
            layout.users += 1
        client.layout = layout

    def _release(self, layout: Layout | None) -> None:
        if layout is None:
            return
        layout.users -= 1
        if layout.users <= 0 and self._interned.get(layout.key) is layout:
            del self._interned[layout.key]
            for key in [k for k, c in self._layout_cache.items() if c.layout is layout]:
                del self._layout_cache[key]
            # Its meta frames can never be sent again (a layout's id is not reused). A
            # subscription to per-process metrics retires a layout whenever a process
            # starts or exits; without this the cache filled to its bound (~4 MB of
            # RSS under process churn) with frames of layouts gone.
            for key in [k for k in self._meta_cache if k[0] == layout.id]:
                self._meta_bytes -= len(self._meta_cache.pop(key))

    def _count_key(self, client: Client, key: SubKey | None) -> None:
        """Move ``client`` to subscription ``key``; forget layouts nobody subscribes to."""
        old = client.counted_key
        if old == key:
            return
        if old is not None:
            users = self._sub_users[old] - 1
            if users:
                self._sub_users[old] = users
            else:
                del self._sub_users[old]
                self._layout_cache.pop(old, None)
        if key is not None:
            self._sub_users[key] = self._sub_users.get(key, 0) + 1
        client.counted_key = key

    # -- encoding -------------------------------------------------------------------

    def describe(self, name: str) -> dict[str, object]:
        desc = self._desc_json.get(name)
        if desc is None:
            desc = self._desc_json[name] = self.sampler.registry.get(name).to_json()
        return desc

    def meta_frame(self, client: Client) -> bytes:
        layout = client.layout
        layout_id = layout.id if layout is not None else 0
        key = (layout_id, client.every, client.metrics, client.absent,
               self.sampler.stale_version)
        frame = self._meta_cache.get(key)
        stale = self.sampler.stale_metrics(client.metrics)
        client.stale_sent = stale
        if frame is None:
            message = {
                "type": "meta",
                "seq": layout_id,
                "interval_s": round(client.every * self.sampler.interval_s, 6),
                "series": layout.series() if layout is not None else [],
                "metrics": {name: self.describe(name) for name in client.metrics},
                "absent": list(client.absent),
                "stale": stale,
            }
            frame = encode.dumps(message).encode()
            # Bounded here, where entries are made: a subscription to per-process
            # metrics gets a new layout (and meta) whenever a process starts or exits,
            # and a meta frame of every metric is ~300 KB, so an unbounded cache grew by
            # hundreds of MB an hour with nobody changing a subscription.
            if (len(self._meta_cache) >= META_CACHE_ENTRIES
                    or self._meta_bytes + len(frame) > META_CACHE_BYTES):
                self._meta_cache.clear()
                self._meta_bytes = 0
            self._meta_cache[key] = frame
            self._meta_bytes += len(frame)
        return frame

    def _encode_live(self, layout: Layout, tick: Tick) -> bytes:
        group_of = self.sampler.metric_group
        groups = tick.groups
        cols: list[str] = []
        append = cols.append
        for name, instances in layout.key:
            sample = groups.get(group_of[name])
            values = sample.cooked.get(name) if sample is not None else None
            if values is None:
                cols.extend(["null"] * len(instances))
                continue
            get = values.get
            for inst in instances:
                v = get(inst)
                if v is None:
                    append("null")
                elif type(v) is float or type(v) is int:
                    append(_G6(v) if v - v == 0 else "null")
                else:
                    append(encode.number(v))
        return encode.samples_frame(layout.id, (tick.timestamp,), cols, backfill=False)

    async def backfill(self, layout: Layout, seconds: float) -> AsyncIterator[Chunk]:
        """History of ``layout``'s columns over the last ``seconds``, oldest first, in
        frame-sized chunks, read from history window by window as the caller consumes it.

        A window spans about :data:`BACKFILL_WINDOW_CELLS` values (columns x points), so
        however long the history and however many columns, one backfill holds at most a
        window of values at a time: a client that stops reading stops the reading too,
        and never-readers re-subscribing to every metric cost a window each, not an hour
        of everything (the soak measured RSS climbing 116 -> 186 MB in 5 minutes when
        backfills were read whole). Within a window, history is read in batches of about
        :data:`BACKFILL_QUERY_CELLS` values with the event loop free in between.
        Everything is cut at the newest tick published when the call started;
        :meth:`backfill_since` returns what came after (pass it the last chunk's newest
        timestamp).
        """
        history = self.sampler.history
        now = self.sampler.latest_timestamp
        if history is None or now is None or not layout.key or seconds <= 0:
            return
        interval = self.sampler.interval_s
        columns = max(1, layout.columns)
        per_frame = _frame_points(columns)
        frames = max(1, BACKFILL_WINDOW_CELLS // (columns * per_frame))
        window_s = frames * per_frame * interval
        start = now - seconds
        oldest = history.oldest((name for name, _ in layout.key), seconds)
        if oldest is None:
            return
        # History younger than the range (a daemon up for minutes asked for an hour):
        # start just before its oldest point rather than read empty windows.
        start = max(start, math.nextafter(oldest, -math.inf))
        while start < now:
            end = min(now, start + window_s)
            parts: list[tuple[list[float], list[list[float | None]]]] = []
            batch: list[tuple[str, tuple[str, ...]]] = []
            cells = 0
            points = (end - start) / interval + 1
            for group in layout.key:
                batch.append(group)
                cells += len(group[1]) * points
                if cells >= BACKFILL_QUERY_CELLS:
                    parts.append(self._read_history(tuple(batch), start, end, seconds))
                    batch, cells = [], 0
                    await asyncio.sleep(0)
            if batch:
                parts.append(self._read_history(tuple(batch), start, end, seconds))
            stamps, values = _combine(parts)
            del parts
            for chunk in _chunk(stamps, values):
                yield chunk
            start = end

    def backfill_since(self, layout: Layout, after: float) -> tuple[list[Chunk], float]:
        """Chunks of what was published after ``after`` (synchronous: a few ticks)."""
        now = self.sampler.latest_timestamp
        if self.sampler.history is None or now is None or now <= after or not layout.key:
            return [], after
        stamps, columns = self._read_history(layout.key, after, now, now - after)
        return _chunk(stamps, columns), (stamps[-1] if stamps else after)

    def _read_history(
        self, part: LayoutKey, start: float, end: float, span_s: float
    ) -> tuple[list[float], list[list[float | None]]]:
        """(timestamps in (start, end], one column per (metric, instance) of ``part``).

        ``span_s`` is the length of the whole read this window belongs to: it picks the
        history tier (the coarse one where the fine tier is shorter), the same for every
        window. Groups of different collectors are merged on their timestamps (every
        collector collected in a tick shares the tick's timestamp); a column is None
        where its collector did not run.
        """
        history = self.sampler.history
        assert history is not None
        instances = {name: set(insts) for name, insts in part}
        slices = history.query_range(list(instances), start, end, instances=instances,
                                     tier_s=span_s)
        return align(slices, [(name, inst) for name, insts in part for inst in insts])

    @staticmethod
    def encode_backfill(
        layout: Layout, times: list[float], columns: list[list[float | None]]
    ) -> bytes:
        return encode.samples_frame(
            layout.id, times, (encode.numbers(c) for c in columns), backfill=True
        )


def _combine(
    parts: list[tuple[list[float], list[list[float | None]]]],
) -> tuple[list[float], list[list[float | None]]]:
    """Columns of several history reads side by side on the union of their timestamps."""
    if len(parts) == 1:
        return parts[0]
    stamps = sorted({t for part_stamps, _ in parts for t in part_stamps})
    position = {t: i for i, t in enumerate(stamps)}
    columns: list[list[float | None]] = []
    for part_stamps, part_columns in parts:
        if part_stamps == stamps:
            columns.extend(part_columns)
            continue
        where = [position[t] for t in part_stamps]
        for column in part_columns:
            full: list[float | None] = [None] * len(stamps)
            for pos, value in zip(where, column, strict=True):
                full[pos] = value
            columns.append(full)
    return stamps, columns


def _frame_points(columns: int) -> int:
    """Timestamps per backfill frame: at most BACKFILL_TIMESTAMPS, and about BACKFILL_CELLS
    values (so encoding one frame takes a few milliseconds)."""
    return max(1, min(BACKFILL_TIMESTAMPS, BACKFILL_CELLS // max(1, columns)))


def _chunk(stamps: list[float], columns: list[list[float | None]]) -> list[Chunk]:
    """Frame-sized pieces (:func:`_frame_points` timestamps each)."""
    per_frame = _frame_points(len(columns))
    return [
        (stamps[i : i + per_frame], [c[i : i + per_frame] for c in columns])
        for i in range(0, len(stamps), per_frame)
    ]


def interval_multiple(requested: float, base: float) -> int:
    """How many base ticks make up a requested client interval (rounded up)."""
    return max(1, math.ceil(requested / base - 1e-9))

