"""Peregrine's one exception hierarchy.

Every error a client can cause, or that a model can raise, is a :class:`PeregrineError` carrying the
gRPC status it maps to. The transport maps them in one place (this module names the codes as strings so that layers
below the transport never import grpc); any other exception becomes INTERNAL with
a generic message and its traceback goes to the log, never to the client.
"""

from __future__ import annotations

import concurrent.futures

MESSAGE_LIMIT = 4096  # characters of any error message a client is sent or the log is given


class PeregrineError(Exception):
    """Base class: an error with a gRPC status code and a message fit for the client."""

    code: str = "INTERNAL"  # the name of a grpc.StatusCode; the transport maps it

    def __init__(self, message: str) -> None:
        if len(message) > MESSAGE_LIMIT:  # a backstop: names in messages are clipped where they are written
            message = f"{message[:MESSAGE_LIMIT]}… ({len(message)} characters)"
        super().__init__(message)
        self.message = message


class InvalidArgument(PeregrineError):
    """The request is malformed: wrong datatype, shape, size, names or parameters."""

    code = "INVALID_ARGUMENT"


class NotFound(PeregrineError):
    """The named model, version or resource does not exist."""

    code = "NOT_FOUND"


class NotReady(NotFound):
    """The named model exists but none of its versions is ready (loading, failed, unloaded, not loaded yet):
    NOT_FOUND, as Triton answers it ("has no available versions"); a model that loads on demand is loaded."""


class AlreadyExists(PeregrineError):
    code = "ALREADY_EXISTS"


class PermissionDenied(PeregrineError):
    """The server's configuration forbids what the request asks (e.g. a shared-memory key outside the
    allowed prefixes)."""

    code = "PERMISSION_DENIED"


class Unavailable(PeregrineError):
    """The model is not ready, the queue is full, or the server is shutting down."""

    code = "UNAVAILABLE"


class ResourceExhausted(PeregrineError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(PeregrineError):
    """The request's deadline passed before it could run."""

    code = "DEADLINE_EXCEEDED"


class Cancelled(PeregrineError):
    """The caller cancelled the request before it ran."""

    code = "CANCELLED"


class Aborted(PeregrineError):
    """The request was dropped unrun in favour of a newer one (a stream's latest frame wins)."""

    code = "ABORTED"


class FailedPrecondition(PeregrineError):
    code = "FAILED_PRECONDITION"


class OutOfRange(PeregrineError):
    """A position past the end of what exists (a result read from beyond its length)."""

    code = "OUT_OF_RANGE"


class Unimplemented(PeregrineError):
    code = "UNIMPLEMENTED"


class ModelLoadError(PeregrineError):
    """A model or its configuration could not be loaded; the message says why."""

    code = "INVALID_ARGUMENT"


class ModelExecutionError(PeregrineError):
    """The model failed while running a batch. Clients see a generic message; the cause is logged."""

    code = "INTERNAL"

    def __init__(self, model: str, message: str = "") -> None:
        super().__init__(f"model '{model}' failed to execute the request")
        self.detail = message


CLIP_LIMIT = 256  # characters of a client-provided string that a message or log line shows


def clipped(value: object, limit: int = CLIP_LIMIT) -> str:
    """A client-provided string (a model, tensor or parameter name, a version, a key; or any value, as its
    ``repr``) as an error message or log line may show it: at most ``limit`` characters, then an ellipsis
    and the original length; control and other unprintable characters escaped, so that a message stays one
    printable line whatever the client sent."""
    text = value if isinstance(value, str) else repr(value)
    shown = text[:limit]
    if not shown.isprintable():
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    if len(text) <= limit and len(shown) <= limit:
        return shown
    return f"{shown[:limit]}… ({len(text)} characters)"


def status_name(error: BaseException) -> str:
    """The name of the gRPC status an exception maps to (``"INVALID_ARGUMENT"``, ...): a PeregrineError's
    own code, CANCELLED for a cancelled future, INTERNAL for anything else."""
    if isinstance(error, PeregrineError):
        return error.code
    if isinstance(error, concurrent.futures.CancelledError):
        return "CANCELLED"
    return "INTERNAL"


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages ("got null", not "got NoneType")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
