"""The one place errors become HTTP answers.

Handlers raise domain errors (an unknown metric name, a bad parameter) and never build
error responses themselves. :func:`error_middleware` turns every failure into the
protocol's JSON shape ``{"error": {"code", "message"}}`` with a 4xx status for bad input,
so a client can always parse the answer and a typo never shows up as a 500. Anything
unexpected becomes ``500 internal`` with its traceback logged: that is a bug to fix, not a
condition to handle.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

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
}


class ApiError(Exception):
    """An error with a definite HTTP status and protocol code, raised by handlers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class BadParameter(ValueError):
    """A request parameter failed validation (400 ``bad_parameter``).

    A subclass, not plain ValueError, so a ValueError escaping from deeper code stays
    visible as a 500 instead of being blamed on the client.
    """


class TooManyNames(BadParameter):
    """More names in one request than the protocol allows (400 ``too_many_names``)."""


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response(error_body(code, message), status=status)


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
    return None


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
            return error_response(status, code, message)
        log.exception(
            "unhandled error", extra={"path": request.path, "method": request.method}
        )
        return error_response(500, "internal", "internal error (logged on the server)")
