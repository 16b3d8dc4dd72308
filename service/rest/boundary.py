"""The one place where errors become HTTP statuses, and the reading of request bodies.

Every error a REST client sees is JSON, `{"error": "<message>"}` (TF Serving's REST form, which
the Open Inference Protocol's REST API shares), with the status `http_status` gives: the error's
gRPC code mapped once here, plus the few HTTP-only refusals below (body too large, wrong content
type, a client too slow to send its body) and queue full, which asks the client to slow down
(429) rather than to go elsewhere. Anything unexpected is logged with its traceback and
answered 500, naming what failed. Every message is cut to what a client may see
(service/errors.py `client_message`: no filesystem path, at most 1 KiB). Loop-bound (aiohttp
handlers and middleware).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.codecs.oip_json import dumps
from service.errors import QueueFull, ServingError, client_message

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
    """Errors to JSON answers; once the server stops taking requests (`accepting()` false),
    every answer closes its connection so that clients reconnect to another replica."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ServingError as error:
            response = error_response(http_status(error), error.message)
            if isinstance(error, BodyTooLarge | BodyReadTimeout):
                response.force_close()  # the rest of the body is not read: drop it
        except web.HTTPException as error:  # aiohttp's own: no such route, wrong method
            response = _route_error(error, request)
        except Exception as error:  # noqa: BLE001 - converted once, here
            log.error("%s %s failed", request.method, request.path, exc_info=error)
            response = error_response(
                500, f"{request.method} {request.path} failed: {type(error).__name__}: {error}"
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
