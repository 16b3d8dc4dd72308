"""Errors that carry their gRPC status code from where they are raised.

Anything in the core raises one of these; the front ends convert them to a status exactly once,
at the boundary (service/grpc/boundary.py). Any other exception is a bug and becomes INTERNAL
with a logged traceback. The message is what the client sees, so it names the bad thing.

What a client sees of any message passes through `client_message` at the boundaries: at most
MAX_MESSAGE_BYTES (gRPC drops a status whose message does not fit its metadata limit, and the
client then sees RESOURCE_EXHAUSTED instead of the code it earned), and no absolute filesystem
path (the log keeps those). Lists of names a client sent are cut short where they are built
(`name_list`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import grpc

MAX_MESSAGE_BYTES = 1024
LISTED_NAMES = 10
# An absolute path of at least two parts, not inside another token ("application/json", a
# relative "mlp/1") and not a route of the HTTP port (/v1/..., /v2/...), which messages name.
_ABSOLUTE_PATH = re.compile(
    r"(?<![\w.~<>\[\]|/-])/(?!v[12]/)(?:[^\s/'\"\[\](),;:]+/)+([^\s/'\"\[\](),;:]*)"
)


def name_list(names: Iterable[object], limit: int = LISTED_NAMES) -> str:
    """`names` as a list in a message, cut after `limit`: "['a', 'b', ... and 9998 more]"."""
    names = list(names)
    shown = ", ".join(repr(name) for name in names[:limit])
    more = len(names) - limit
    return f"[{shown}, ... and {more} more]" if more > 0 else f"[{shown}]"


def without_paths(text: str) -> str:
    """`text` with every absolute filesystem path cut to its last part ("/srv/models/a/1/x.pb"
    becomes ".../x.pb")."""
    return _ABSOLUTE_PATH.sub(lambda m: f".../{m.group(1)}", text)


def client_message(text: str) -> str:
    """What a client may see of `text`: no filesystem path, at most MAX_MESSAGE_BYTES bytes of
    UTF-8 (cut with "... and N more characters")."""
    if "/" in text:
        text = without_paths(text)
    if len(text) <= MAX_MESSAGE_BYTES // 4 or len(text.encode()) <= MAX_MESSAGE_BYTES:
        return text
    kept = text.encode()[: MAX_MESSAGE_BYTES - 40].decode(errors="ignore")
    return f"{kept}... and {len(text) - len(kept)} more characters"


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
