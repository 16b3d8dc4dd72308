"""The one place where errors become HTTP statuses, and the reading of request bodies.

Every error a REST client sees is JSON, `{"error": "<message>"}` (TF Serving's REST form, which
the Open Inference Protocol's REST API shares), with the status `http_status` gives: the error's
gRPC code mapped once here, plus the few HTTP-only refusals below (body too large, wrong content
type, a client too slow to send its body) and queue full, which asks the client to slow down
(429) rather than to go elsewhere. Anything unexpected is logged with its traceback and
answered 500, naming what failed. Every message is cut to what a client may see
(service/errors.py `client_message`: no filesystem path, at most 1 KiB). An error message ends
with the client's request id when it sent one: the Open Inference Protocol body's `id` (which
the infer handler stores in the request under OIP_REQUEST_ID) or an X-Request-Id header.
`observed` runs an inference handler with its request id at hand and, when the request is
sampled, traced (service/otel.py).
Loop-bound (aiohttp handlers and middleware).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from plexserve.codecs.oip_json import dumps
from plexserve.errors import QueueFull, ServingError, ShuttingDown, client_message
from plexserve.tracing import REQUEST_ID, with_request_id

if TYPE_CHECKING:
    from plexserve.otel import RequestTrace, Tracing

log = logging.getLogger(__name__)

JSON = "application/json"
# Bodies these content types announce are read as the endpoint's JSON (or, with Triton's
# binary extension, JSON then raw tensors): curl's `-d` sends form-urlencoded and browsers'
# fetch() text/plain with JSON inside, and TF Serving's documented examples rely on both.
ACCEPTED_CONTENT_TYPES = frozenset(
    {JSON, "application/octet-stream", "application/x-www-form-urlencoded", "text/plain"}
)


class UnsupportedMediaType(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class BodyTooLarge(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BodyReadTimeout(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class BodyUnreadable(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


OIP_REQUEST_ID = web.RequestKey("plexserve.oip_request_id", str)  # the OIP body's `id`


def request_id(request: web.Request) -> str:
    """The OIP body's `id` once the body is read, else the X-Request-Id header ("": neither)."""
    stored: str = request.get(OIP_REQUEST_ID, "")
    return stored or request.headers.get(REQUEST_ID) or ""


_STATUS_OF_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,  # as TF Serving and Triton answer it over HTTP
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_STATUS_OF_CLASS: dict[type[ServingError], int] = {
    QueueFull: 429,
    UnsupportedMediaType: 415,
    BodyReadTimeout: 408,
}


def http_status(error: ServingError) -> int:
    for kind, status in _STATUS_OF_CLASS.items():
        if isinstance(error, kind):
            return status
    return _STATUS_OF_CODE.get(error.code, 500)


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(value), status=status, content_type=JSON)


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": client_message(message)}, status)


def _route_error(error: web.HTTPException, request: web.Request) -> web.Response:
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        response = error_response(
            405, f"{request.method} is not allowed on {request.path}; use {allowed}"
        )
        response.headers["Allow"] = allowed
        return response
    if isinstance(error, web.HTTPNotFound):
        return error_response(404, f"no endpoint {request.method} {request.path}")
    return error_response(error.status, error.reason)


def error_middleware(accepting: Callable[[], bool]) -> Middleware:
    """Errors to JSON answers. Once the server stops taking requests (`accepting()` false), a
    POST (inference, model control) is answered 503 without being read, the rest (health,
    metadata, metrics) as before, and every answer closes its connection so that clients
    reconnect to another replica."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.method == "POST" and not accepting():
                raise ShuttingDown(
                    "the server is shutting down and takes no new requests: send them to "
                    "another replica"
                )
            response = await handler(request)
        except ServingError as error:
            response = error_response(
                http_status(error), with_request_id(error.message, request_id(request))
            )
            if isinstance(error, BodyTooLarge | BodyReadTimeout):
                response.force_close()  # the rest of the body is not read: drop it
        except web.HTTPException as error:  # aiohttp's own: no such route, wrong method
            response = _route_error(error, request)
        except Exception as error:  # noqa: BLE001 - converted once, here
            what = f"{request.method} {request.path} failed"
            rid = request_id(request)
            log.error("%s", with_request_id(what, rid), exc_info=error)
            response = error_response(
                500, with_request_id(f"{what}: {type(error).__name__}: {error}", rid)
            )
        if not accepting():
            response.force_close()
        return response

    return middleware


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole body: refused (415) when its content type is not one the endpoints read,
    refused (413) as soon as it is known to exceed `limit` bytes, and abandoned (408) when no
    byte of it arrives for `timeout` seconds."""
    content_type = request.content_type
    if content_type not in ACCEPTED_CONTENT_TYPES and not content_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {content_type} is not accepted: send JSON as application/json (or "
            "JSON followed by binary tensors as application/octet-stream)"
        )
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(
            f"the request body has {declared} bytes, more than the server's limit of {limit} "
            "bytes (its maximum message size)"
        )
    content = request.content
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout) as scope:
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(
                        f"the request body exceeds the server's limit of {limit} bytes "
                        "(its maximum message size)"
                    )
                chunks.append(chunk)
                scope.reschedule(loop.time() + timeout)
    except TimeoutError:
        expected = f" of {declared}" if declared is not None else ""
        raise BodyReadTimeout(
            f"the request body stalled: {size}{expected} bytes arrived, then nothing for "
            f"{timeout:g} s"
        ) from None
    except web.RequestPayloadError as error:
        raise BodyUnreadable(f"the request body could not be read: {error}") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# An inference handler's body: (request id getter, trace or None) -> the response.
Inference = Callable[[Callable[[], str], "RequestTrace | None"], Awaitable[web.Response]]


async def observed(
    request: web.Request,
    tracing: Tracing | None,
    route: str,
    protocol: str,
    model: str,
    version: str,
    handle: Inference,
) -> web.Response:
    """Run `handle` with the request's id at hand and, when the server traces and the request
    is sampled, its trace: a server span named after `route` (the path template), ended with the
    status the middleware will answer. Its decode span starts here: REST decoding includes
    reading and parsing the body."""
    ids = functools.partial(request_id, request)
    trace = None
    if tracing is not None:
        trace = tracing.start_http(
            request.method, route, request.path, request.headers, protocol, model, version
        )
        if trace is not None:
            trace.decode_from = time.monotonic()
    status, message = 499, "the client went away"
    try:
        response = await handle(ids, trace)
        status = response.status
        return response
    except ServingError as error:
        status, message = http_status(error), error.message
        raise
    except Exception as error:
        status, message = 500, f"{type(error).__name__}: {error}"
        raise
    finally:
        if trace is not None:
            trace.end_http(status, message, ids())
