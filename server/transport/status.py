"""One place where exceptions become gRPC statuses."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from ..errors import PeregrineError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an exception. Unknown exceptions are INTERNAL with
    a generic message; their traceback goes to the log."""
    if isinstance(error, PeregrineError):
        return grpc.StatusCode[error.code], error.message
    if isinstance(error, concurrent.futures.CancelledError):
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
