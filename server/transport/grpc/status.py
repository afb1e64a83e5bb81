"""One place where exceptions become gRPC statuses, and a gRPC call as the data plane sees it."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc

from ...core.errors import InvalidArgument, PeregrineError, status_name

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an exception. Unknown exceptions are INTERNAL with
    a generic message; their traceback goes to the log."""
    name = status_name(error)
    if isinstance(error, PeregrineError):
        return grpc.StatusCode[name], error.message
    if name == "CANCELLED" or isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "request cancelled"
    log.error("internal error", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


def unary(method: F) -> F:
    """Wrap a unary servicer coroutine so every exception leaves as the right gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            check(request)
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise  # context.abort() already set the status
        except Exception as e:
            code, message = status_of(e)
            await context.abort(code, message)

    return wrapper  # type: ignore[return-value]


# The metadata of the call the running task serves, as grpc looked its handler up with it (server._Service
# sets it; each call runs in a task of its own). None: not set there (then the context is asked).
CALL_METADATA: ContextVar[tuple[Any, ...] | None] = ContextVar("peregrine_call_metadata", default=None)


class GrpcCall:
    """A gRPC call as the data plane's :class:`~peregrine.server.dataplane.dataplane.Call`: when it
    arrived, its deadline on the monotonic clock, its connection and the identity of its client."""

    __slots__ = ("_identity", "_metadata", "connection", "context", "deadline", "started_ns")

    def header(self, name: str) -> str | None:
        """The call's metadata entry ``name`` (lower case), e.g. W3C ``traceparent``."""
        metadata = self._metadata
        if metadata is None:
            metadata = self._metadata = self.context.invocation_metadata() or ()
        for key, value in metadata:
            if key == name:
                return value.decode() if isinstance(value, bytes) else str(value)
        return None

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.started_ns = time.monotonic_ns()
        self.context = context
        remaining = context.time_remaining()
        self.deadline = None if remaining is None else time.monotonic() + remaining
        self.connection: str = context.peer() or ""
        self._identity: str | None = None
        self._metadata = CALL_METADATA.get()

    @property
    def identity(self) -> str:
        """The client: its bearer token (``authorization`` metadata) when it sends one, else its address
        without the port (all connections from one host are one client)."""
        if self._identity is None:
            token = self.header("authorization") or ""
            self._identity = f"token:{token}" if token else f"host:{self.connection.rsplit(':', 1)[0]}"
        return self._identity


class Malformed:
    """What arrives in place of a request whose bytes are not a valid message of its type: the handlers
    answer it INVALID_ARGUMENT (a stream answers that message and goes on) instead of grpc's UNKNOWN."""

    model_name = model_version = id = ""
    sequence = capture_time_us = 0
    frame_id = ""

    def __init__(self, kind: str, data: bytes, error: Exception) -> None:
        self.kind = kind
        self.nbytes = len(data)
        self.reason = str(error)

    def ByteSize(self) -> int:  # protobuf's name: handlers size it like a message
        return self.nbytes

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"request: {self.nbytes} bytes that are not a valid {self.kind} message "
                               f"({self.reason})")


def tolerant(deserializer: Callable[[bytes], Any], kind: str) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: bytes that do not parse become :class:`Malformed`."""

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as e:  # protobuf's DecodeError, and anything a corrupt message makes it raise
            return Malformed(kind, data, e)

    return deserialize


def check(request: Any) -> None:
    """Raise INVALID_ARGUMENT for a request that did not parse."""
    if isinstance(request, Malformed):
        raise request.error()
