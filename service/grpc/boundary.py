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

from service.errors import ServingError, client_message

log = logging.getLogger(__name__)

S = TypeVar("S")
Method = Callable[[S, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_of(error: BaseException, what: str) -> tuple[grpc.StatusCode, str]:
    """The (code, message) a client sees for `error` raised while doing `what`."""
    if isinstance(error, ServingError):
        return error.code, client_message(error.message)
    log.error("%s failed", what, exc_info=error)
    return grpc.StatusCode.INTERNAL, client_message(
        f"{what} failed: {type(error).__name__}: {error}"
    )


def grpc_errors(method: Method[S]) -> Method[S]:
    @functools.wraps(method)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as error:  # noqa: BLE001 - converted once, here
            code, message = status_of(error, method.__name__)
        await context.abort(code, message)

    return wrapper
