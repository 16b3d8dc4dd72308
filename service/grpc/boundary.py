"""The one place where core errors become gRPC statuses.

`grpc_errors` wraps an async unary servicer method: a ServingError aborts with its own code and
message; anything else is logged with its traceback and aborts INTERNAL, naming what failed.
Every message is cut to what a client may see (service/errors.py `client_message`: no
filesystem path, at most 1 KiB). A client's mistake is not logged here: the access log counts it;
an ERROR with a traceback is for the server's own faults.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from plexserve.errors import ServingError, client_message
from plexserve.tracing import with_request_id

log = logging.getLogger(__name__)

S = TypeVar("S")
Method = Callable[[S, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_of(error: BaseException, what: str, request_id: str = "") -> tuple[grpc.StatusCode, str]:
    """The (code, message) a client sees for `error` raised while doing `what`; the message
    ends with the client's request id when it sent one (service/tracing.py)."""
    if isinstance(error, ServingError):
        return error.code, with_request_id(client_message(error.message), request_id)
    log.error("%s failed", with_request_id(what, request_id), exc_info=error)
    message = client_message(f"{what} failed: {type(error).__name__}: {error}")
    return grpc.StatusCode.INTERNAL, with_request_id(message, request_id)


def grpc_errors(method: Method[S]) -> Method[S]:
    @functools.wraps(method)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as error:  # noqa: BLE001 - converted once, here
            code, message = status_of(error, method.__name__)
        await context.abort(code, message)

    return wrapper
