"""Structured logging: one line per event, ``key=value`` text or JSON.

Log calls pass their fields through ``extra`` (``log.info("client dropped",
extra={"client": peer, "reason": "too slow"})``), so the same event reads well on a
terminal and parses in a log pipeline. Expected conditions (a client dropped, a bad
message, a collector failing) are logged as one line without a traceback; tracebacks
are reserved for bugs (``log.exception``), and even then the line stays one line (the
traceback is escaped into the ``exc`` field).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(
    logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__
) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _timestamp(record: logging.LogRecord) -> str:
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{base}.{int(record.msecs):03d}Z"


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\\\t'):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    )
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info logger=hostscope.daemon msg="listening" url=http://...``"""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_timestamp(record)}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts += [f"{k}={_quote(v)}" for k, v in _fields(record).items()]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same fields as the text format."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class RepeatFilter(logging.Filter):
    """At most ``burst`` records of one event per ``window_s``; the rest are counted.

    An event is (logger, level, first line of the message template; asyncio puts the
    task's repr after the first line of its "Task exception was never retrieved"
    messages): clients can provoke some of them
    (``bad websocket message``, ``client dropped``) as fast as they can send, and a
    log that grows by megabytes a minute hides everything else and fills the disk.
    The first record of an event after a suppressed stretch carries
    ``suppressed=N``, the number of records of that event not written since the
    previous one, so nothing is lost from the count. Events are few (one per log call
    site), so the table stays small; it is cleared if it ever exceeds ``max_events``.
    """

    def __init__(
        self, burst: int = 20, window_s: float = 60.0, *,
        clock: Callable[[], float] = time.monotonic, max_events: int = 1024,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self.max_events = max_events
        #: event -> [window start, records written in it, records suppressed since]
        self._events: dict[tuple[str, int, object], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, str) and "\n" in msg:
            msg = msg.split("\n", 1)[0]
        key = (record.name, record.levelno, msg)
        now = self.clock()
        state = self._events.get(key)
        if state is None:
            if len(self._events) >= self.max_events:
                self._events.clear()
            state = self._events[key] = [now, 0.0, 0.0]
        elif now - state[0] >= self.window_s:
            state[0], state[1] = now, 0.0
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        if state[2]:
            record.suppressed = int(state[2])
            state[2] = 0.0
        return True


def setup_logging(
    level: str = "info", fmt: str = "text", stream: TextIO | None = None, *,
    repeats: int | None = None,
) -> None:
    """Configure the root logger for the daemon or CLI (called once, from main).

    ``repeats``: identical events written per minute (:class:`RepeatFilter`); None
    writes every record.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    if repeats is not None:
        handler.addFilter(RepeatFilter(repeats))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log is one line per HTTP request: noise at info level.
    logging.getLogger("aiohttp.access").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )
