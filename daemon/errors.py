"""The one place errors become HTTP answers.

Handlers raise domain errors (an unknown metric name, a bad parameter) and never build
error responses themselves. :func:`error_middleware` turns every failure into the
protocol's JSON shape ``{"error": {"code", "message"}}`` with a 4xx status for bad input,
so a client can always parse the answer and a typo never shows up as a 500. Anything
unexpected becomes ``500 internal`` with its traceback logged: that is a bug to fix, not a
condition to handle.

BPF manager errors keep their own stable ``code`` (``unknown_module``,
``invalid_settings``, ...) and add their details (``module``, and ``errors``, one message
per bad setting) next to ``code`` and ``message``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hostscope.bpfmods.manager import BpfError
from hostscope.metrics.model import UnknownMetricError

log = logging.getLogger("hostscope.daemon")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Status of aiohttp's own HTTP errors (no route, wrong method, ...) -> protocol code.
_STATUS_CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    421: "host_not_allowed",
    429: "rate_limited",
}

#: BpfError.code -> HTTP status. A module that cannot run here, or runs with other
#: settings for other viewers, or is off when its table is asked for, is a conflict with
#: the host's state (409), not bad input; a failed compile or attach is the server's.
_BPF_STATUS = {
    "unknown_module": 404,
    "invalid_settings": 400,
    "bpf_error": 400,  # the base class: a bad argument (e.g. a table limit)
    "unavailable": 409,
    "settings_conflict": 409,
    "not_running": 409,
    "start_failed": 500,
    "helper_unavailable": 503,  # the privileged helper is restarting (docs/privilege.md)
}


#: Profile error code (the privileged side's ProfileError codes and the profile
#: service's own) -> HTTP status. A target that does not exist is 404; a request the host
#: cannot serve now (busy, profiling unavailable, a capture not in the right state) is a
#: conflict (409); a capture that failed or hung is the server's (500, 504).
PROFILE_STATUS = {
    "invalid_request": 400,
    "unknown_profile": 404,
    "unknown_container": 404,
    "unsupported_container": 409,
    "no_such_process": 404,
    "no_such_cgroup": 404,
    "busy": 409,
    "unavailable": 409,
    "not_running": 409,
    "not_done": 409,
    "base_mismatch": 409,
    "unknown_capture": 500,
    "capture_failed": 500,
    "cancelled": 409,
    "timeout": 504,
    "shutting_down": 503,
}


class ApiError(Exception):
    """An error with a definite HTTP status and protocol code, raised by handlers."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        #: Headers the answer must carry (WWW-Authenticate on 401, Retry-After on 429).
        self.headers = dict(headers or {})


class ProfileApiError(ApiError):
    """A profile request that cannot be served; the status follows from the code
    (:data:`PROFILE_STATUS`), so the service and the privileged side only name codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(PROFILE_STATUS.get(code, 500), code, message)


class BadParameter(ValueError):
    """A request parameter failed validation (400 ``bad_parameter``).

    A subclass, not plain ValueError, so a ValueError escaping from deeper code stays
    visible as a 500 instead of being blamed on the client.
    """


class TooManyNames(BadParameter):
    """More names in one request than the protocol allows (400 ``too_many_names``)."""


def parse_json_body(data: bytes | str) -> Any:
    """A request body or message parsed as JSON, or ``ApiError(400, "bad_request")``.

    The one place bodies are decoded, because ``json.loads`` fails two ways: ValueError
    (malformed, not UTF-8) and RecursionError (``[[[[...`` nested past the decoder's
    limit fits easily in a 64 KiB body); a handler catching only the first answered the
    second with a 500 and a logged traceback (found by tests/test_fuzz_api.py).
    """
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "bad_request", "the body is not JSON: nested too deeply") from None


def error_body(
    code: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    return {"error": {"code": code, "message": message, **(details or {})}}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    return web.json_response(error_body(code, message, details), status=status)


def translate(exc: BaseException) -> tuple[int, str, str] | None:
    """(status, code, message) for a known domain error, None for anything else.

    Shared with the websocket handler, which reports the same errors as ``error``
    messages instead of HTTP statuses.
    """
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, UnknownMetricError):
        return 404, "unknown_metric", str(exc)
    if isinstance(exc, TooManyNames):
        return 400, "too_many_names", str(exc)
    if isinstance(exc, BadParameter):
        return 400, "bad_parameter", str(exc)
    if isinstance(exc, json.JSONDecodeError):
        return 400, "bad_request", f"malformed JSON: {exc.msg}"
    if isinstance(exc, BpfError):
        return _BPF_STATUS.get(exc.code, 500), exc.code, str(exc)
    return None


def details(exc: BaseException) -> dict[str, Any]:
    """Machine-readable fields a known error adds to ``code`` and ``message``."""
    if isinstance(exc, BpfError):
        return {k: v for k, v in exc.to_json().items() if k not in ("code", "message")}
    return {}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are answers, not errors
            raise
        code = _STATUS_CODES.get(exc.status, "bad_request" if exc.status < 500 else "internal")
        message = exc.reason if exc.text is None or exc.text.startswith(str(exc.status)) \
            else exc.text
        response = error_response(exc.status, code, message)
        # Keep headers that carry meaning (Allow on 405), drop the text ones.
        for name in ("Allow",):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception as exc:
        known = translate(exc)
        if known is not None:
            status, code, message = known
            response = error_response(status, code, message, details(exc))
            if isinstance(exc, ApiError):
                response.headers.update(exc.headers)
            return response
        log.exception(
            "unhandled error", extra={"path": request.path, "method": request.method}
        )
        return error_response(500, "internal", "internal error (logged on the server)")
