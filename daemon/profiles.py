"""The profile service: a queue of captures, their progress, and a bounded store.

The unprivileged daemon never profiles itself: each capture is started, polled and
fetched through :class:`~.privileged.PrivilegedOps` (``profile_start/poll/fetch/cancel``),
which may be this process (``InProcessOps``) or the privileged helper. Those calls block
and may hang (a wedged helper, a perf process that does not exit), so every one runs in
this service's own threads under a deadline: a capture that does not finish within its
duration plus ``grace_s`` is cancelled, marked failed with a ``timeout`` error, and its
slot freed. A hung call can keep a thread; the loop never waits for it.

One capture runs at a time per host (the privileged side allows one; perf events of two
would also skew each other). Requests that arrive meanwhile wait in a bounded FIFO queue
(``queue``); beyond it they are answered 409 ``busy``. A request that can start at once is
started before the POST answers, so "no such process" or "unavailable" come back as the
POST's own error instead of a failed entry.

Finished captures are kept (newest last) until more than ``keep`` of them exist or their
estimated size passes ``keep_bytes``; then the oldest finished ones go. Ids are 128-bit
random tokens: a link to a capture works for as long as it is kept, and cannot be guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from hostscope.metrics.collectors.cgroup import container_matches
from hostscope.metrics.sampler import Clock

from .errors import ProfileApiError
from .privileged import PrivilegedOps

if TYPE_CHECKING:
    from . import flame

log = logging.getLogger("hostscope.daemon")

T = TypeVar("T")

KINDS = ("cpu", "offcpu")
MIN_DURATION_S = 5.0
MAX_DURATION_S = 120.0
DEFAULT_DURATION_S = {"cpu": 30.0, "offcpu": 10.0}
MIN_FREQUENCY_HZ = 1
MAX_FREQUENCY_HZ = 999
DEFAULT_FREQUENCY_HZ = 49
#: Highest PID Linux can hand out (PID_MAX_LIMIT on 64-bit).
MAX_PID = 4_194_304
MAX_CONTAINER_NAME = 512
REQUEST_KEYS = frozenset({"kind", "duration", "frequency", "pid", "container"})
#: Length of :func:`new_id`'s ids (16 random bytes, URL-safe base64).
ID_LENGTH = 22
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
#: Seconds a readiness answer is reused (it only changes when the host changes).
READINESS_TTL_S = 30.0
#: Interval of start retries while the privileged side winds a cancelled capture down.
BUSY_RETRY_S = 0.2
#: Poll interval once a capture's duration has passed (symbolising, fetching).
FAST_POLL_S = 0.05
FINAL_STATES = frozenset({"done", "failed", "cancelled"})


def new_id() -> str:
    return secrets.token_urlsafe(16)


def valid_id(text: str) -> bool:
    return len(text) == ID_LENGTH and set(text) <= _ID_CHARS


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_request(body: Any) -> dict[str, Any]:
    """A validated capture request in API form ``{"kind", "duration", "frequency", "pid",
    "container"}`` (defaults filled in); :class:`ProfileApiError` ``invalid_request``
    naming the problem otherwise. ``frequency`` applies to cpu captures; off-CPU ones
    record every switch and report it as null."""
    def bad(message: str) -> ProfileApiError:
        return ProfileApiError("invalid_request", message)

    if not isinstance(body, Mapping):
        raise bad('the body must be a JSON object: {"kind": "cpu"|"offcpu", "duration": s, '
                  '"frequency": hz, "pid": n | "container": name}')
    unknown = sorted(set(body) - REQUEST_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(repr(k)[:40] for k in unknown[:5])}; known: "
                  f"{', '.join(sorted(REQUEST_KEYS))}")
    kind = body.get("kind", "cpu")
    if kind not in KINDS:
        raise bad(f"'kind' must be \"cpu\" or \"offcpu\", got {str(kind)[:40]!r}")
    duration = body.get("duration")
    if duration is None:
        duration = DEFAULT_DURATION_S[kind]
    if not _number(duration) or not math.isfinite(duration) \
            or not MIN_DURATION_S <= duration <= MAX_DURATION_S:
        raise bad(f"'duration' must be a number of seconds from {MIN_DURATION_S:g} to "
                  f"{MAX_DURATION_S:g}, got {str(duration)[:40]}")
    frequency = body.get("frequency")
    if kind == "cpu":
        if frequency is None:
            frequency = DEFAULT_FREQUENCY_HZ
        if not isinstance(frequency, int) or isinstance(frequency, bool) \
                or not MIN_FREQUENCY_HZ <= frequency <= MAX_FREQUENCY_HZ:
            raise bad(f"'frequency' must be an integer from {MIN_FREQUENCY_HZ} to "
                      f"{MAX_FREQUENCY_HZ} Hz, got {str(frequency)[:40]}")
    else:
        frequency = None
    pid, container = body.get("pid"), body.get("container")
    if pid is not None and container is not None:
        raise bad("give 'pid' or 'container', not both")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)
                            or not 1 <= pid <= MAX_PID):
        raise bad(f"'pid' must be a process id from 1 to {MAX_PID}, got {str(pid)[:40]}")
    if container is not None and (not isinstance(container, str) or not container
                                  or len(container) > MAX_CONTAINER_NAME):
        raise bad(f"'container' must be a container, pod, unit or cgroup name (1 to "
                  f"{MAX_CONTAINER_NAME} characters)")
    return {"kind": kind, "duration": float(duration), "frequency": frequency, "pid": pid,
            "container": container}


def resolve_container(names: Mapping[str, Any], wanted: str,
                      versions: Mapping[str, Any] | None = None) -> str:
    """The cgroup path of the container ``wanted`` from the sampler's latest
    ``cgroup.container.name`` values ({cgroup path: readable name}).

    A readable name (``docker:ab12...``, ``nginx.service``) or a cgroup path the
    collector reports; several matches (a name below a raw path) resolve to the
    outermost cgroup, which holds the others. Captures filter by cgroup v2 (the
    profiler matches the unified hierarchy's cgroup ids), so with ``versions`` (the
    latest ``cgroup.version`` values) a cgroup only v1 hierarchies have is not taken;
    one that matches nothing else is refused as ``unsupported_container``, saying why.
    """
    found = [path for path, name in names.items()
             if path == wanted or container_matches(name if isinstance(name, str) else None,
                                                    wanted)]
    if not found:
        known = sorted({n for n in names.values() if isinstance(n, str)})
        hint = f" (known: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''})" \
            if known else " (no containers or cgroups sampled yet)"
        raise ProfileApiError("unknown_container",
                              f"no container, unit or cgroup named {wanted[:80]!r}{hint}")
    if versions is not None:
        unified = [p for p in found if versions.get(p) != "v1"]
        if not unified:
            raise ProfileApiError(
                "unsupported_container",
                f"{wanted[:80]!r} is only in cgroup v1 hierarchies on this host, and captures "
                "filter by cgroup v2 (the unified hierarchy); profile one of its processes "
                "by pid, or the whole host")
        found = unified
    return min(found, key=lambda p: (p.count("/"), p))


@dataclass(eq=False)
class Capture:
    """One capture, from request to result, as the store keeps it."""

    id: str
    request: dict[str, Any]
    created_at: float
    state: str = "queued"
    progress: float = 0.0
    capture_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, str] | None = None
    profile: flame.Profile | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    #: Rendered outputs by key (format, start, end, base id): the full-capture JSON is
    #: built as the capture finishes so the first view costs only the send.
    outputs: dict[tuple[Any, ...], str] = field(default_factory=dict)
    #: Privileged-side request (API names translated, container resolved to a cgroup).
    private: dict[str, Any] = field(default_factory=dict)
    #: Monotonic times the service saw each step (started, symbolizing, done, fetched,
    #: built): where the wait between capture end and view goes.
    marks: dict[str, float] = field(default_factory=dict)

    def timings(self) -> dict[str, Any]:
        """Seconds per step as seen from here: ``capture`` (start to the first
        symbolizing/done poll), ``symbolize`` (to done), ``fetch``, ``build`` (parse, tree,
        timeline, JSON; wall) and ``build_cpu`` (its CPU time); ``end_seen``: from the end
        of sampling to the first poll that saw it over; ``privileged``: the capture
        side's own step times. Polling adds up to one interval to the first two."""
        m = self.marks

        def span(a: str, b: str) -> float | None:
            return round(m[b] - m[a], 3) if a in m and b in m else None

        return {"capture": span("started", "symbolizing"),
                "symbolize": span("symbolizing", "done"),
                "fetch": span("done", "fetched"), "build": span("fetched", "built"),
                "build_cpu": self.meta.get("build_cpu_s"), "end_seen": self._end_seen(),
                "privileged": dict(self.meta.get("privileged_timings", {}))}

    def _end_seen(self) -> float | None:
        """Seconds from the end of sampling (ProfileData's ``started_at + duration_s``,
        the privileged side's clock) to the first poll here that saw it over."""
        seen = self.marks.get("symbolizing_wall")
        start, duration = self.meta.get("started_at"), self.meta.get("duration_s")
        if seen is None or start is None or duration is None:
            return None
        return round(seen - (start + duration), 3)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def summary(self, position: int | None = None) -> dict[str, Any]:
        meta = self.meta
        return {
            "id": self.id,
            "kind": self.request["kind"],
            "state": self.state,
            "progress": round(self.progress, 3),
            "position": position,
            "request": dict(self.request),
            "method": meta.get("method"),
            "event": meta.get("event"),
            "unit": meta.get("unit"),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_s": meta.get("duration_s"),
            "total": meta.get("total"),
            "lost": meta.get("lost"),
            "error": self.error,
            "notes": list(meta.get("notes", ())),
            "timings": self.timings(),
        }


def _error_of(exc: BaseException) -> ProfileApiError:
    """The privileged side's ProfileError (or anything else) as a ProfileApiError.

    Duck-typed on ``code``/``message``: over the helper's RPC the exception class is the
    RPC's, not the profiler's, but the code survives.
    """
    if isinstance(exc, ProfileApiError):
        return exc
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(code, str):
        return ProfileApiError(code, message)
    return ProfileApiError("capture_failed", f"{type(exc).__name__}: {message}")


class ProfileService:
    """Queue, runner and store of captures for one daemon (see the module docstring).

    ``containers`` returns the sampler's latest ``cgroup.container.name`` values and
    ``versions`` its ``cgroup.version`` values (see :func:`resolve_container`);
    ``pid_exists`` answers whether a PID is alive (checked before queueing, so a typo is
    a 404 now rather than a failed entry later).
    """

    def __init__(
        self,
        ops: PrivilegedOps,
        *,
        clock: Clock,
        containers: Callable[[], Mapping[str, Any]],
        pid_exists: Callable[[int], bool],
        versions: Callable[[], Mapping[str, Any]] | None = None,
        keep: int = 20,
        keep_bytes: int = 256 * 1024 * 1024,
        queue: int = 4,
        grace_s: float = 30.0,
        poll_interval_s: float = 0.25,  # ~4 Hz while capturing
        call_timeout_s: float = 15.0,
    ) -> None:
        self._ops = ops
        self._clock = clock
        self._containers = containers
        self._versions = versions
        self._pid_exists = pid_exists
        self.keep = keep
        self.keep_bytes = keep_bytes
        self.queue_limit = queue
        self.grace_s = grace_s
        self.poll_interval_s = poll_interval_s
        self.call_timeout_s = call_timeout_s
        self._captures: dict[str, Capture] = {}
        self._queue: deque[Capture] = deque()
        self._current: Capture | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Cancellations in flight, by capture id: a DELETE arriving meanwhile waits for
        #: the first one instead of cancelling again on the privileged side.
        self._cancelling: dict[str, asyncio.Task[Capture]] = {}
        self._readiness: tuple[float, dict[str, Any]] | None = None
        self._closing = False
        # Threads of their own: a hung privileged call must not starve the BPF toggles'
        # pool, and they never queue behind a BPF compile.
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hostscope-prof")

    # -- blocking calls, bounded ------------------------------------------------------

    async def _call(self, timeout: float, fn: Callable[..., T], *args: Any) -> T:
        if self._closing:
            raise ProfileApiError("shutting_down", "the daemon is shutting down")
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError:  # executor shut down
            raise ProfileApiError("shutting_down", "the daemon is shutting down") from None
        return await asyncio.wait_for(future, timeout)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the service's threads (output builders: CPU work that would
        otherwise stall the loop for tens of milliseconds on a big capture)."""
        return await self._call(max(self.call_timeout_s, 60.0), fn, *args)

    # -- readiness ---------------------------------------------------------------------

    async def readiness(self) -> dict[str, Any]:
        """{kind: {"available", "method", "reason"}}, refreshed every READINESS_TTL_S."""
        now = self._clock.mono()
        if self._readiness is not None and now - self._readiness[0] < READINESS_TTL_S:
            return self._readiness[1]
        try:
            raw = await self._call(self.call_timeout_s, self._ops.profile_readiness)
            kinds = {k: {"available": bool(raw.get(k, {}).get("available")),
                         "method": raw.get(k, {}).get("method"),
                         "reason": raw.get(k, {}).get("reason")} for k in KINDS}
        except Exception as exc:  # noqa: BLE001 - profiling trouble must never break the listing
            reason = f"checking profiling readiness failed: {_error_of(exc).message}"
            if isinstance(exc, TimeoutError):
                reason = "checking profiling readiness timed out"
            log.warning("profile readiness failed", extra={"reason": reason})
            kinds = {k: {"available": False, "method": None, "reason": reason} for k in KINDS}
        self._readiness = (now, kinds)
        return kinds

    # -- store -------------------------------------------------------------------------

    def get(self, capture_id: str) -> Capture:
        capture = self._captures.get(capture_id) if valid_id(capture_id) else None
        if capture is None:
            raise ProfileApiError("unknown_profile", "no such profile (it may have been "
                                  f"evicted: the daemon keeps the last {self.keep})")
        return capture

    def captures(self) -> list[Capture]:
        """Every kept capture, newest first."""
        return list(reversed(self._captures.values()))

    def position(self, capture: Capture) -> int | None:
        """1-based place in the wait queue; None when not waiting."""
        try:
            return self._queue.index(capture) + 1
        except ValueError:
            return None

    def stored_bytes(self) -> int:
        return sum(c.size for c in self._captures.values())

    def limits(self) -> dict[str, Any]:
        return {
            "duration": {"min": MIN_DURATION_S, "max": MAX_DURATION_S,
                         "default": dict(DEFAULT_DURATION_S)},
            "frequency": {"min": MIN_FREQUENCY_HZ, "max": MAX_FREQUENCY_HZ,
                          "default": DEFAULT_FREQUENCY_HZ},
            "keep": self.keep,
            "keep_bytes": self.keep_bytes,
            "queue": self.queue_limit,
            "grace_s": self.grace_s,
        }

    def _evict(self) -> None:
        finished = [c for c in self._captures.values() if c.final]
        total = self.stored_bytes()
        # The newest finished capture stays even over the byte budget: the user who just
        # waited for it gets to see it.
        while len(finished) > 1 and (len(finished) > self.keep or total > self.keep_bytes):
            oldest = finished.pop(0)
            total -= oldest.size
            del self._captures[oldest.id]
            log.info("profile evicted", extra={"profile": oldest.id})

    # -- submit / cancel -------------------------------------------------------------

    async def submit(self, body: Any) -> Capture:
        """Validate, then start now (errors answer the caller) or queue; 409 busy when
        the queue is full."""
        request = parse_request(body)
        kinds = await self.readiness()
        ready = kinds[request["kind"]]
        if not ready["available"]:
            raise ProfileApiError("unavailable", f"{request['kind']} profiling is unavailable "
                                  f"here: {ready['reason'] or 'no reason given'}")
        private: dict[str, Any] = {"kind": request["kind"], "duration_s": request["duration"]}
        if request["frequency"] is not None:
            private["frequency_hz"] = request["frequency"]
        if request["pid"] is not None:
            if not self._pid_exists(request["pid"]):
                raise ProfileApiError("no_such_process", f"no process {request['pid']}")
            private["pid"] = request["pid"]
        if request["container"] is not None:
            private["cgroup"] = resolve_container(
                self._containers(), request["container"],
                self._versions() if self._versions is not None else None)
        if self._closing:
            raise ProfileApiError("shutting_down", "the daemon is shutting down")
        capture = Capture(id=new_id(), request=request, private=private,
                          created_at=round(self._clock.wall(), 3))
        if self._current is None and not self._queue:
            self._current = capture
            try:
                await self._start(capture)
            except BaseException:
                self._current = None
                self._next()
                raise
            self._captures[capture.id] = capture
            self._spawn(self._drive(capture))
        elif len(self._queue) >= self.queue_limit:
            running = self._current
            raise ProfileApiError(
                "busy", "a capture is already running"
                + (f" ({running.request['kind']}, {running.request['duration']:g} s)"
                   if running else "")
                + f" and {len(self._queue)} wait (queue limit {self.queue_limit}); "
                "try again when it finishes")
        else:
            self._queue.append(capture)
            self._captures[capture.id] = capture
        log.info("profile requested", extra={"profile": capture.id, **request,
                                             "state": capture.state})
        return capture

    async def cancel(self, capture_id: str) -> Capture:
        """Cancel a queued or running capture. Idempotent while it is being cancelled:
        concurrent DELETEs all answer with the cancelled capture, and only the first
        reaches the privileged side."""
        capture = self.get(capture_id)
        task = self._cancelling.get(capture.id)
        if task is None:
            if capture.final:
                raise ProfileApiError("not_running", f"the capture is already {capture.state}")
            task = self._cancelling[capture.id] = asyncio.ensure_future(self._cancel(capture))
            task.add_done_callback(lambda _: self._cancelling.pop(capture.id, None))
        # Shielded: a client that leaves does not stop the cancellation half way.
        return await asyncio.shield(task)

    async def _cancel(self, capture: Capture) -> Capture:
        if capture in self._queue:
            self._queue.remove(capture)
        elif capture.capture_id is not None:
            # The runner notices the state and stops polling; the privileged side stops
            # its perf events now. A capture that finished meanwhile is not an error.
            with contextlib.suppress(Exception):
                await self._call(self.call_timeout_s, self._ops.profile_cancel,
                                 capture.capture_id)
        self._finish(capture, "cancelled", {"code": "cancelled",
                                            "message": "cancelled by a client"})
        log.info("profile cancelled", extra={"profile": capture.id})
        if self._current is capture and capture.capture_id is not None:
            # Its runner leaves at its next wake-up; the slot is free now. (While its
            # start is still in flight, the runner frees the slot after cancelling it.)
            self._current = None
            self._evict()
            self._next()
        return capture

    # -- running -----------------------------------------------------------------------

    async def _start(self, capture: Capture) -> None:
        """Start ``capture`` on the privileged side.

        Only this service starts captures there, so "busy" from it means the remains of
        a capture this service already cancelled or gave up on (a BPF compile cannot be
        interrupted; a timed-out capture may still be winding down): retried for up to
        ``grace_s`` rather than failing the next request in line.
        """
        capture.state = "running"
        give_up = self._clock.mono() + self.grace_s
        while True:
            try:
                capture.capture_id = await self._call(
                    self.call_timeout_s, self._ops.profile_start, dict(capture.private))
                break
            except TimeoutError:
                raise ProfileApiError("timeout", "the privileged side did not answer the "
                                      f"start within {self.call_timeout_s:g} s") from None
            except Exception as exc:
                err = _error_of(exc)
                if err.code != "busy" or capture.final or self._clock.mono() >= give_up:
                    raise err from exc
            await asyncio.sleep(BUSY_RETRY_S)
        capture.started_at = round(self._clock.wall(), 3)
        capture.marks["started"] = self._clock.mono()

    def _finish(self, capture: Capture, state: str, error: dict[str, str] | None) -> None:
        if capture.final:
            return
        capture.state = state
        capture.error = error
        capture.finished_at = round(self._clock.wall(), 3)
        if state == "done":
            capture.progress = 1.0

    def _next(self) -> None:
        """Start the next queued capture if the slot is free."""
        if self._current is not None or not self._queue or self._closing:
            return
        capture = self._queue.popleft()
        self._current = capture
        self._spawn(self._start_and_drive(capture))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name="hostscope-profile")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_and_drive(self, capture: Capture) -> None:
        try:
            await self._start(capture)
        except Exception as exc:  # noqa: BLE001 - any start failure is the entry's error
            err = _error_of(exc)
            self._finish(capture, "failed", {"code": err.code, "message": err.message})
            self._current = None
            self._evict()
            self._next()
            return
        await self._drive(capture)

    async def _drive(self, capture: Capture) -> None:
        try:
            await self._watch(capture)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the entry, the slot freed
            err = _error_of(exc)
            log.warning("profile failed", extra={"profile": capture.id, "code": err.code,
                                                 "reason": err.message})
            self._finish(capture, "failed", {"code": err.code, "message": err.message})
        finally:
            if self._current is capture:
                self._current = None
            self._evict()
            self._next()

    async def _watch(self, capture: Capture) -> None:
        """Poll until the capture is final or its deadline passes."""
        begun = self._clock.mono()
        # Near the end, poll fast: the result is wanted the moment it exists (the view
        # target is 1 s from capture end), and symbolising takes only a few polls.
        fast_from = begun + capture.request["duration"] - 0.1
        deadline = begun + capture.request["duration"] + self.grace_s
        capture_id = capture.capture_id
        assert capture_id is not None
        if capture.final:  # cancelled while starting
            with contextlib.suppress(Exception):
                await self._call(self.call_timeout_s, self._ops.profile_cancel, capture_id)
            return
        while not capture.final:
            fast = self._clock.mono() >= fast_from
            await asyncio.sleep(min(self.poll_interval_s, FAST_POLL_S) if fast
                                else self.poll_interval_s)
            if capture.final:
                return
            left = deadline - self._clock.mono()
            try:
                if left <= 0:
                    raise TimeoutError
                status = await self._call(min(left, self.call_timeout_s),
                                          self._ops.profile_poll, capture_id)
            except TimeoutError:
                await self._timed_out(capture)
                return
            if capture.final:
                return
            state = status.get("state")
            progress = status.get("progress")
            if _number(progress) and math.isfinite(progress):
                capture.progress = min(1.0, max(0.0, float(progress)))
            if state == "symbolizing":
                self._mark_ended(capture)
            if state in ("running", "symbolizing"):
                capture.state = state
            elif state == "done":
                self._mark_ended(capture)
                capture.marks["done"] = self._clock.mono()
                await self._collect(capture, capture_id, deadline)
                return
            elif state in ("failed", "cancelled"):
                error = status.get("error") or {}
                self._finish(capture, state, {
                    "code": str(error.get("code") or "capture_failed"),
                    "message": str(error.get("message") or f"the capture {state}")})
                return
            else:
                raise ProfileApiError("capture_failed",
                                      f"the privileged side reported state {str(state)[:40]!r}")

    def _mark_ended(self, capture: Capture) -> None:
        """The first poll that sees the capture past its sampling (symbolizing or done)."""
        if "symbolizing" not in capture.marks:
            capture.marks["symbolizing"] = self._clock.mono()
            capture.marks["symbolizing_wall"] = self._clock.wall()

    async def _timed_out(self, capture: Capture) -> None:
        limit = capture.request["duration"] + self.grace_s
        log.warning("profile timed out", extra={"profile": capture.id, "limit_s": limit})
        self._finish(capture, "failed", {
            "code": "timeout",
            "message": f"the capture did not finish within its duration plus "
                       f"{self.grace_s:g} s ({limit:g} s): the privileged side may be stuck; "
                       "it was cancelled and the slot freed"})
        if capture.capture_id is not None:
            with contextlib.suppress(Exception):
                await self._call(min(5.0, self.call_timeout_s), self._ops.profile_cancel,
                                 capture.capture_id)

    async def _collect(self, capture: Capture, capture_id: str, deadline: float) -> None:
        left = max(self.call_timeout_s, deadline - self._clock.mono())
        try:
            data = await self._call(left, self._ops.profile_fetch, capture_id)
        except TimeoutError:
            await self._timed_out(capture)
            return
        if capture.final:
            return
        capture.marks["fetched"] = self._clock.mono()
        profile, meta, json_body = await self.run(digest, data)
        capture.marks["built"] = self._clock.mono()
        capture.profile = profile
        capture.meta = meta
        capture.outputs[("json", None, None, None)] = json_body
        from . import flame  # imported by the first capture: the daemon may never profile

        capture.size = flame.estimate_bytes(profile) + len(json_body)
        started = data.get("started_at")
        if _number(started):
            capture.started_at = round(float(started), 3)
        self._finish(capture, "done", None)
        log.info("profile done", extra={"profile": capture.id, "total": meta["total"],
                                        "stacks": len(profile.stacks)})

    # -- shutdown ----------------------------------------------------------------------

    async def close(self) -> None:
        """Cancel the capture in flight (so no perf event outlives the daemon), drop the
        queue, stop the runner."""
        current = self._current
        for capture in list(self._queue):
            self._finish(capture, "cancelled", {"code": "shutting_down",
                                                "message": "the daemon shut down"})
        self._queue.clear()
        if current is not None and current.capture_id is not None and not current.final:
            with contextlib.suppress(Exception):
                await self._call(5.0, self._ops.profile_cancel, current.capture_id)
            self._finish(current, "cancelled", {"code": "shutting_down",
                                                "message": "the daemon shut down"})
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)


def digest(data: Mapping[str, Any]) -> tuple[flame.Profile, dict[str, Any], str]:
    """Parse fetched ProfileData and pre-build the full-capture JSON view (blocking)."""
    from . import flame  # imported by the first capture: the daemon may never profile

    cpu0 = time.thread_time()
    profile = flame.parse_profile(data)
    notes = [n for n in data.get("notes", ()) if isinstance(n, str)]
    meta = {
        "method": data.get("method") if isinstance(data.get("method"), str) else None,
        "event": data.get("event") if isinstance(data.get("event"), str) else None,
        "unit": profile.unit,
        "total": profile.total,
        "lost": profile.lost,
        "duration_s": profile.duration_s,
        "started_at": profile.started_at,
        "notes": notes,
        # The privileged side's own step times (compile, read maps, symbolise), if given.
        "privileged_timings": {k: v for k, v in (data.get("timings") or {}).items()
                               if isinstance(k, str) and _number(v)}
        if isinstance(data.get("timings"), Mapping) else {},
    }
    body = tree_body(profile, None, None, None, None)
    # CPU time of this thread: the wall time of a build on a loaded host says little.
    meta["build_cpu_s"] = round(time.thread_time() - cpu0, 4)
    return profile, meta, body


def tree_body(profile: flame.Profile, start: float | None, end: float | None,
              base: flame.Profile | None, base_id: str | None) -> str:
    """The ``format=json`` answer minus the summary (added per request: it changes)."""
    from . import flame  # imported by the first capture: the daemon may never profile

    tree = flame.build_tree(profile, start=start, end=end, base=base)
    rng = None if start is None and end is None else {"start": start, "end": end}
    return flame.dumps({
        "tree": tree,
        "timeline": flame.timeline(profile),
        "range": rng,
        "base": None if base is None else {"id": base_id, "total": base.total},
    })

