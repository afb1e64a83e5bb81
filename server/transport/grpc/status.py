"""One place where exceptions become gRPC statuses, and a gRPC call as the data plane sees it."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from ...core.errors import PeregrineError, status_name

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an exception. Unknown exceptions are INTERNAL with
    a generic message; their traceback goes to the log."""
    name = status_name(error)
    if isinstance(error, PeregrineError):
        return grpc.StatusCode[name], error.message
    if name == "CANCELLED":
        return grpc.StatusCode.CANCELLED, "request cancelled"
    log.error("internal error", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


def unary(method: F) -> F:
    """Wrap a unary servicer method so every exception leaves as the right gRPC status."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as e:
            if isinstance(e, grpc.RpcError) or type(e).__name__ == "_AbortError":
                raise  # context.abort() already set the status
            code, message = status_of(e)
            context.abort(code, message)

    return wrapper  # type: ignore[return-value]


class GrpcCall:
    """A gRPC call as the data plane's :class:`~peregrine.server.dataplane.dataplane.Call`: when it
    arrived, its deadline on the monotonic clock, and its end."""

    __slots__ = ("context", "deadline", "started_ns")

    def __init__(self, context: grpc.ServicerContext) -> None:
        self.started_ns = time.monotonic_ns()
        self.context = context
        remaining = context.time_remaining()
        self.deadline = None if remaining is None else time.monotonic() + remaining

    def on_end(self, callback: Callable[[], object]) -> bool:
        return bool(self.context.add_callback(callback))

    def is_active(self) -> bool:
        return bool(self.context.is_active())
