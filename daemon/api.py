"""REST endpoints under ``/api/v1`` and ``/healthz`` (docs/protocol.md).

Handlers validate their query parameters, read the sampler's latest values or history
(both only ever mutated on the event loop, so a handler sees one consistent tick) and
raise domain errors; :mod:`.errors` turns those into JSON error answers.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hostscope.metrics.history import align
from hostscope.metrics.model import UnknownMetricError
from hostscope.metrics.processes import MAX_LIMIT, SORT_METRICS, top_processes

from . import encode
from .auth import forbid_outside_scope, request_principal
from .errors import ApiError, BadParameter, TooManyNames
from .keys import AUTH, CLOCK, CONFIG, HOST, HUB, PRIVILEGED, SAMPLER, STARTED, TICKER
from .version import PROTOCOL, VERSION

if TYPE_CHECKING:
    from hostscope.metrics.sampler import Sampler

MAX_NAMES = 200
MAX_HISTORY_S = 86400.0
DEFAULT_HISTORY_S = 300.0
#: Values (series x points) one batch of a /api/v1/history answer reads and encodes
#: before the event loop runs again (~0.6 us each: ~30 ms).
HISTORY_BATCH_CELLS = 50_000
DEFAULT_PROCESSES = 25
#: Longest per-row CPU history a process-table answer carries (``history=S``): the
#: dashboard's sparklines ask for 60 s; ten minutes at the default 2 s process cadence
#: is 300 points a row.
MAX_PROCESS_HISTORY_S = 600
#: Capabilities an embed token's /api/v1/host answer names: PanelCard.vue reads
#: ``capabilities[panel.requires]``, and of the catalogue's ``requires`` only "psi" can
#: apply to a panel an embed token opens (BPF panels need /api/v1/bpf, closed to it).
EMBED_CAPABILITIES = ("psi",)
#: What an embed token gets of each process row (an allowlist, so a field added to the
#: rows later is not shown to runbook pages by default): no ``args``, the command line,
#: which can carry passwords, tokens and file names. ``cmd`` is the kernel's 15-character
#: task name, what ``top`` shows. ``cpu_history`` (``history=S``) is added after this
#: filter: it is the panel's own metric, ``proc.cpu.util``, which the scope opens.
EMBED_PROCESS_FIELDS = ("instance", "pid", "cmd", "container", "cpu", "rss", "io", "threads",
                        "state", "start_time")


# -- parameter parsing ---------------------------------------------------------------


def names_param(request: web.Request, key: str = "names") -> list[str]:
    raw = request.query.getall(key, [])
    names = [n.strip().rstrip(".") for part in raw for n in part.split(",") if n.strip()]
    if not names:
        raise BadParameter(f"'{key}' is required: comma-separated metric names or prefixes")
    if len(names) > MAX_NAMES:
        raise TooManyNames(f"at most {MAX_NAMES} names per request, got {len(names)}")
    return names


def number_param(
    request: web.Request, key: str, default: float, low: float, high: float
) -> float:
    """A finite number in (low, high]; ``default`` when absent."""
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadParameter(f"'{key}' must be a number, got {raw!r}") from None
    if not math.isfinite(value) or not low < value <= high:
        raise BadParameter(f"'{key}' must be > {low:g} and <= {high:g}, got {raw!r}")
    return value


def int_param(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(f"'{key}' must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise BadParameter(f"'{key}' must be between {low} and {high}, got {value}")
    return value


def _clean(value: float | str | None) -> float | str | None:
    """JSON cannot carry NaN or infinities; they mean "no value" here."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ts(t: float | None) -> float | None:
    return None if t is None else round(t, 3)


# -- handlers ------------------------------------------------------------------------


def _check_scope(request: web.Request, names: list[str]) -> None:
    """An embed token reads only the metrics in its scope (403 naming the others)."""
    forbid_outside_scope(request_principal(request), names, request.app[AUTH].panel_metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    registry = request.app[SAMPLER].registry
    prefix = request.query.get("prefix", "").strip().rstrip(".")
    descs = registry.match(prefix) if prefix else list(registry)
    if prefix and not descs:
        raise UnknownMetricError([prefix])
    principal = request_principal(request)
    if principal is not None and principal.embed:
        # The panel's metrics only: the list is what the embedded page may subscribe to.
        panels = request.app[AUTH].panel_metrics
        opened = [d for d in descs if principal.allows_metric(d.name, panels)]
        if prefix and not opened:
            _check_scope(request, [d.name for d in descs])
        descs = opened
    return web.json_response({"metrics": [d.to_json() for d in descs]})


async def fetch_handler(request: web.Request) -> web.Response:
    sampler = request.app[SAMPLER]
    descs = sampler.registry.resolve(names_param(request))
    _check_scope(request, [d.name for d in descs])
    latest = sampler.latest
    values = []
    for desc in descs:
        units = desc.value_units
        instances = latest.get(desc.name, {})
        values.append({
            "name": desc.name,
            "semantics": str(desc.semantics),
            "units": str(units),
            "value_units": units.to_json(),
            "instances": [
                {"instance": inst, "value": _clean(value)} for inst, value in instances.items()
            ],
        })
    return web.json_response({"timestamp": _ts(sampler.latest_timestamp), "values": values})


async def history_handler(request: web.Request) -> web.StreamResponse:
    """History of the named metrics, series-major (``{"step", "t", "series": [...]}``),
    streamed: the time axis first, then the series in batches of about
    :data:`HISTORY_BATCH_CELLS` values, each read from history, encoded and written with
    the event loop free in between. An answer of millions of values (up to
    ``max_history_values``) thus holds a batch in memory at a time, not the whole body,
    and never stalls the stream to every other client for more than a batch's ~30 ms.
    Everything is cut at the newest tick published when the request arrived; a value
    that leaves the ring while the answer is being written is null.
    """
    sampler = request.app[SAMPLER]
    descs = sampler.registry.resolve(names_param(request))
    names = [d.name for d in descs]
    _check_scope(request, names)
    seconds = number_param(request, "seconds", DEFAULT_HISTORY_S, 0.0, MAX_HISTORY_S)
    _check_history_size(request, names, seconds)
    history, now = sampler.history, sampler.latest_timestamp
    stamps: list[float] = []
    step: float | None = None
    keys: list[tuple[str, str]] = []
    if history is not None and now is not None:
        start = now - seconds
        stamps, step = history.timeline(names, start, now, tier_s=seconds)
        order = {name: i for i, name in enumerate(names)}
        held = history.keys()
        keys = sorted((k for k in held if k[0] in order), key=lambda k: (order[k[0]], k[1]))
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(
        f'{{"step":{encode.number(step or sampler.interval_s)},'
        f'"t":[{",".join(encode.timestamp(t) for t in stamps)}],"series":['.encode())
    per_batch = max(1, HISTORY_BATCH_CELLS // max(1, len(stamps)))
    first = True
    for at in range(0, len(keys), per_batch):
        assert history is not None and now is not None  # keys are empty otherwise
        batch = keys[at:at + per_batch]
        wanted: dict[str, set[str]] = {}
        for name, inst in batch:
            wanted.setdefault(name, set()).add(inst)
        slices = history.query_range(list(wanted), now - seconds, now, instances=wanted,
                                     tier_s=seconds)
        held_now = {key for piece in slices for key in piece.series}
        _, columns = align(slices, batch, stamps)
        rows = [  # a series evicted while the answer was being written is left out
            f'{{"name":{encode.string(key[0])},"instance":{encode.string(key[1])},'
            f'"values":[{encode.numbers(column)}]}}'
            for key, column in zip(batch, columns, strict=True) if key in held_now
        ]
        if rows:
            await response.write((("" if first else ",") + ",".join(rows)).encode())
            first = False
        del slices, columns, rows
        await asyncio.sleep(0)
    await response.write(b"]}")
    await response.write_eof()
    return response


def _check_history_size(request: web.Request, names: list[str], seconds: float) -> None:
    """Refuse, before reading anything, an answer bigger than ``max_history_values``.

    The answer is streamed in batches (memory holds a batch, the loop is free between
    batches), but every value still costs ~0.6 us of the event loop's time, so
    ``names=proc&seconds=86400`` on a busy host would keep it a quarter busy for
    minutes, and the answer would be hundreds of MB. The estimate is the current
    instance count times the points of the tier the range is served from (the coarse
    tier, per-minute, past the fine window), an upper bound for everything but instances
    that came and went.
    """
    app = request.app
    history = app[SAMPLER].history
    if history is None:
        return
    latest = app[SAMPLER].latest
    series = sum(len(latest.get(name, ())) for name in names)
    interval = app[SAMPLER].interval_s
    if seconds > history.retention_s and history.coarse_capacity:
        points = min(seconds / history.coarse_step_s, history.coarse_capacity) + 1
    else:
        points = min(seconds, history.retention_s) / interval + 1
    limit = app[CONFIG].max_history_values
    if series * points > limit:
        raise ApiError(
            400, "too_many_values",
            f"{series} series over {seconds:g} s is about {int(series * points)} values, "
            f"more than one answer may hold ({limit}, max_history_values): ask for fewer "
            "names or a shorter range")


async def instances_handler(request: web.Request) -> web.Response:
    name = request.query.get("name", "").strip()
    if not name:
        raise BadParameter("'name' is required: one metric name")
    sampler = request.app[SAMPLER]
    desc = sampler.registry.get(name)
    _check_scope(request, [desc.name])
    return web.json_response(
        {"name": name, "indom": desc.indom, "instances": list(sampler.latest.get(name, {}))}
    )


async def host_handler(request: web.Request) -> web.Response:
    app = request.app
    sampler = app[SAMPLER]
    info = app.get(HOST)
    now = app[CLOCK].wall()
    principal = request_principal(request)
    if principal is not None and principal.embed:
        return web.json_response(_embed_host(app))
    identity: dict[str, Any] = dict(info.identity) if info is not None else {}
    identity["uptime_s"] = info.uptime_s(now) if info is not None else None
    ticker = app[TICKER]
    body: dict[str, Any] = {
        **identity,
        "interval_s": sampler.interval_s,
        "version": VERSION,
        "protocol": PROTOCOL,
        "capabilities": info.capabilities if info is not None else {},
        # The privileged helper (docs/privilege.md); null when privsep is off.
        "helper": app[PRIVILEGED].helper_info(),
        "collectors": [status.to_json() for status in sampler.status.values()],
        # which metrics are stale, since when and why (docs/metrics.md)
        "stale": {name: {**status.stale_json(),
                         "metrics": sorted(m for m, g in sampler.metric_group.items() if g == name)}
                  for name, status in sampler.stale().items()},
        "sampling": {
            "ticks": ticker.ticks,
            "skipped": ticker.skipped,
            "on_loop": ticker.inline_ticks,
            "last_duration_ms": round(ticker.last_duration_s * 1000, 3),
        },
    }
    history = sampler.history
    if history is not None:
        body["history"] = {
            "series": history.series_count,
            "bytes": history.nbytes(),
            "dropped_series": history.dropped_series,
        }
    return web.json_response(body)


def _embed_host(app: web.Application) -> dict[str, Any]:
    """What an embedded panel renders with (its title's host name, the interval, whether
    the capability it requires is there), and nothing about the daemon itself: no kernel,
    no helper pid, no collector errors or stale reasons of metrics outside the scope."""
    info = app.get(HOST)
    capabilities = info.capabilities if info is not None else {}
    return {
        "hostname": info.identity.get("hostname") if info is not None else None,
        "interval_s": app[SAMPLER].interval_s,
        "version": VERSION,
        "protocol": PROTOCOL,
        "capabilities": {
            name: {"available": capabilities[name].get("available"),
                   "reason": capabilities[name].get("reason")}
            for name in EMBED_CAPABILITIES if isinstance(capabilities.get(name), dict)
        },
    }


async def processes_handler(request: web.Request) -> web.Response:
    sort = request.query.get("sort", "cpu")
    if sort not in SORT_METRICS:
        raise BadParameter(f"'sort' must be one of {', '.join(SORT_METRICS)}, got {sort!r}")
    limit = int_param(request, "limit", DEFAULT_PROCESSES, 1, MAX_LIMIT)
    seconds = int_param(request, "history", 0, 0, MAX_PROCESS_HISTORY_S)
    # Absent: every process; present but empty: processes in no container (the host).
    container = request.query.get("container")
    sampler = request.app[SAMPLER]
    rows = top_processes(sampler.latest, sort=sort, limit=limit, container=container)
    principal = request_principal(request)
    if principal is not None and principal.embed:
        # Only a scope naming the process panel gets here (daemon/auth.py).
        rows = [{key: row[key] for key in EMBED_PROCESS_FIELDS if key in row} for row in rows]
    for row in rows:
        for key, value in row.items():
            row[key] = _clean(value)
    timestamp = _ts(sampler.latest_timestamp)
    if not seconds:
        return web.json_response({"timestamp": timestamp, "processes": rows})
    # Read and encoded in one piece (unlike /api/v1/history), so bounded like one of its
    # batches (~30 ms of the event loop): 25 rows x a minute is ~750 values.
    step = max(request.app[CONFIG].process_interval, sampler.interval_s)
    values = len(rows) * (int(seconds / step) + 1)
    if values > HISTORY_BATCH_CELLS:
        raise ApiError(
            400, "too_many_values",
            f"{len(rows)} rows with {seconds} s of history at {step:g} s is about {values} "
            f"values, more than one process-table answer holds ({HISTORY_BATCH_CELLS}): "
            "ask for fewer rows (limit) or seconds (history)")
    axis, columns = _cpu_history(sampler, rows, seconds)
    # Built as text: each row's values are encoded by encode.numbers (rounded, see there).
    rows_text = ",".join(
        encode.with_member(row, "cpu_history", f"[{encode.numbers(column)}]")
        for row, column in zip(rows, columns, strict=True)
    )
    head = encode.dumps({"timestamp": timestamp, "history": axis})
    return web.Response(text=f'{head[:-1]},"processes":[{rows_text}]}}',
                        content_type="application/json")


def _cpu_history(sampler: Sampler, rows: list[dict[str, Any]], seconds: int,
                 ) -> tuple[dict[str, Any], list[list[float | None]]]:
    """(the time axis, each row's CPU on it) over the last ``seconds`` from the history:
    a row's ``cpu_history`` (None where it has no point, all None for a process that
    started since), read for these rows only.

    This is what the table's sparklines draw: before, the dashboard streamed
    ``proc.cpu.util`` for every process to draw 25 rows, so each frame carried a column per
    process on the host (a 1,000-process host: ~8 KB of JSON every 2 s against a 1 KB
    frame budget) and every process start or exit re-sent the column layout (``meta``)."""
    history, now = sampler.history, sampler.latest_timestamp
    metric = SORT_METRICS["cpu"]  # the rows' ``cpu``, over time
    keys = [(metric, str(row["instance"])) for row in rows]
    slices = ([] if history is None or now is None or not rows else history.query_range(
        [metric], now - seconds, now, instances={metric: {key[1] for key in keys}}))
    # One group holds the metric: its slice's timestamps are the axis (none held: empty).
    stamps, columns = align(slices, keys)
    step = slices[0].step_s if slices else sampler.interval_s
    return {"seconds": seconds, "step": step, "t": [_ts(t) for t in stamps]}, columns


async def healthz_handler(request: web.Request) -> web.Response:
    app = request.app
    clock = app[CLOCK]
    ticker = app[TICKER]
    since_tick = (
        None if ticker.last_tick_mono is None else round(clock.mono() - ticker.last_tick_mono, 3)
    )
    # Sampling that stopped (or stalls for many intervals) is what health checks are for.
    stalled = since_tick is not None and since_tick > max(10.0, 10 * app[SAMPLER].interval_s)
    body = {
        "status": "stalled" if stalled else "ok",
        "uptime_s": round(clock.mono() - app[STARTED], 3),
        "clients": len(app[HUB].clients),
        "last_tick_age_s": since_tick,
    }
    return web.json_response(body, status=503 if stalled else 200)


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/api/v1/metrics", metrics_handler)
    router.add_get("/api/v1/fetch", fetch_handler)
    router.add_get("/api/v1/history", history_handler)
    router.add_get("/api/v1/instances", instances_handler)
    router.add_get("/api/v1/host", host_handler)
    router.add_get("/api/v1/processes", processes_handler)
    router.add_get("/healthz", healthz_handler)

