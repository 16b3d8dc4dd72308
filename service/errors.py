"""Errors that carry their gRPC status code from where they are raised.

Anything in the core raises one of these; the front ends convert them to a status exactly once,
at the boundary (service/grpc/boundary.py). Any other exception is a bug and becomes INTERNAL
with a logged traceback. The message is what the client sees, so it names the bad thing.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidInput(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class SignatureNotFound(ServingError):
    """A signature the model does not serve (TF Serving answers FAILED_PRECONDITION)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unimplemented(ServingError):
    """A call plexserve does not offer; the message says what to use instead."""

    code = grpc.StatusCode.UNIMPLEMENTED


class ModelNotReady(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class QueueFull(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class ShuttingDown(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class QueueDeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ExecutionFailed(ServingError):
    """The model ran but failed or returned something unusable (INTERNAL)."""

    code = grpc.StatusCode.INTERNAL


class LoadFailed(ServingError):
    """A load ended without an AVAILABLE version: the files cannot be served as they are."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ModelControlDisabled(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnsupportedModel(ServingError):
    """A SavedModel that plexserve cannot serve (refused at load)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
