"""JSON answers for requests aiohttp refuses before any handler sees them (a request line or header too long, bytes
that are not HTTP), instead of its ``text/plain`` 400 that echoes the offending bytes back as a Python
``bytearray(b'...')`` (issue 11: a 100 KB path or header did exactly that, and logged a traceback quoting it).

aiohttp's HTTP parser raises these while reading, so no middleware runs for them: the protocol object
(:class:`aiohttp.web_protocol.RequestHandler`) answers through its ``handle_error``. aiohttp has no setting to choose
that class, so :class:`JsonErrorAppRunner` makes the app's low-level server build :class:`JsonErrorRequestHandler`
instead; everything else about the server (the app, its request factory, keep-alive, timeouts) is aiohttp's own.

The answer has the app's error shape (``{"error": {"field", "message"}, "request_id"}``) and never quotes the input:
414 ``path`` for a request line over :data:`MAX_REQUEST_LINE` bytes, 431 ``headers`` for a header over
:data:`MAX_HEADER_FIELD` bytes (or too many headers), 400 ``request`` for anything else the parser refuses.
"""

from __future__ import annotations

import uuid
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web, web_protocol
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from prometheus_client import Counter

from foundation.logs import get_logger

log = get_logger(__name__)

# The two limits differ by design: aiohttp's LineTooLong carries only the limit it hit (and a slice of the input,
# which must not be echoed), so distinct limits are how the answer can say which part of the request was too long.
MAX_REQUEST_LINE = 8190  # aiohttp's default; ids are limited to far less (serving.http_validation)
MAX_HEADER_FIELD = 8192  # one header line, name and value
PROTOCOL_LIMITS: dict[str, Any] = {"max_line_size": MAX_REQUEST_LINE, "max_field_size": MAX_HEADER_FIELD}

PROTOCOL_ERRORS = Counter(
    "streamrec_http_protocol_errors_total",
    "Requests refused by the HTTP parser before routing (too long, malformed), by answer status and field.",
    ("status", "field"),
)


def classify(status: int, exc: BaseException | None, max_line_size: int, max_field_size: int) -> tuple[int, str, str]:
    """(status, field, message) for what the parser raised; the message is ours alone, never the exception's text
    (which quotes the request's bytes)."""
    if status >= 500 or not isinstance(exc, BadHttpMessage):
        # A failure of ours while answering (the app's middleware answers handler errors; this is the rest).
        return 500, "server", "internal error; retry"
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == max_line_size and max_line_size != max_field_size:
            return 414, "path", f"the request line is longer than {max_line_size} bytes"
        if limit == max_field_size:
            return 431, "headers", f"a header is longer than {max_field_size} bytes"
        return 400, "request", "a line of the request is too long"
    if "too many headers" in str(exc).lower():
        return 431, "headers", "the request has too many headers"
    return 400, "request", "the request is not valid HTTP/1.1"


def error_body(status: int, field: str, message: str) -> bytes:
    # The same shape as serving.app's _error: no X-Request-ID could be read, so the id is a new one.
    return orjson.dumps({"error": {"field": field, "message": message}, "request_id": uuid.uuid4().hex})


class JsonErrorRequestHandler(web_protocol.RequestHandler):
    """aiohttp's protocol object, answering what its parser refuses with a JSON error that quotes nothing."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # part of an answer went out already: only closing is left (as aiohttp)
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        status, field, text = classify(status, exc, self.max_line_size, self.max_field_size)
        PROTOCOL_ERRORS.labels(str(status), field).inc()
        if status >= 500:  # ours, not the client's: one structured line with the exception (foundation.logs)
            log.error("unhandled error outside the app", exc_info=exc)
        else:
            # One line, no traceback and no exception text: both would quote the client's bytes (the whole line).
            log.info("request refused by the HTTP parser", status=status, field=field,
                     error=type(exc).__name__ if exc is not None else None)
        response = web.Response(status=status, reason=HTTPStatus(status).phrase, body=error_body(status, field, text),
                                content_type="application/json")
        response.force_close()  # the rest of the stream cannot be trusted to be at a request boundary
        return response


class JsonErrorServer(web.Server):
    """The app's low-level server, making :class:`JsonErrorRequestHandler` protocol objects."""

    def __call__(self) -> web_protocol.RequestHandler:
        # web.Server.__call__ with our class; the keyword arguments are the ones the runner gave the app's server.
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorAppRunner(web.AppRunner):
    """``web.AppRunner`` whose server answers protocol errors in JSON (and with :data:`PROTOCOL_LIMITS`)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **{**PROTOCOL_LIMITS, **kwargs})

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts the app; the server holds its handler and settings
        return JsonErrorServer(server.request_handler, request_factory=server.request_factory,
                               handler_cancellation=server.handler_cancellation, loop=server._loop,
                               **server._kwargs)
