"""One place where exceptions become HTTP statuses and ``{"error": ...}`` bodies, and an HTTP request as
the data plane sees it.

The statuses are Triton's (its HTTP server maps its error codes so): INTERNAL 500, NOT_FOUND 404,
UNAVAILABLE 503, UNIMPLEMENTED 501, and 400 for invalid arguments, existing names and cancelled requests.
Codes Triton has no word for take the HTTP status gRPC's own mapping gives them: UNAUTHENTICATED 401,
PERMISSION_DENIED 403, RESOURCE_EXHAUSTED 429, DEADLINE_EXCEEDED 504, ABORTED 409, FAILED_PRECONDITION 400.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ...core.errors import PeregrineError, status_name

log = logging.getLogger(__name__)

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "ALREADY_EXISTS": 400, "CANCELLED": 400, "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429, "INTERNAL": 500, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def status_of(error: BaseException) -> tuple[int, str]:
    """The HTTP status and client-facing message for an exception. Unknown exceptions are 500 with a
    generic message; their traceback goes to the log."""
    if isinstance(error, PeregrineError):
        return HTTP_STATUS.get(error.code, 500), error.message
    if status_name(error) == "CANCELLED" or isinstance(error, asyncio.CancelledError):
        return 400, "request cancelled"
    log.error("internal error", exc_info=error)
    return 500, "internal error; see the server log"


class HttpCall:
    """An HTTP request as the data plane's :class:`~peregrine.server.dataplane.dataplane.Call`. HTTP has
    no deadline of its own (a request's ``timeout`` parameter bounds its time in the queue)."""

    __slots__ = ("connection", "deadline", "identity", "scope", "started_ns")

    def __init__(self, scope: dict[str, Any], authorization: str | None) -> None:
        self.started_ns = time.monotonic_ns()
        self.scope = scope
        self.deadline: float | None = None
        host, port = scope.get("client") or ("", 0)
        # Named as gRPC names its peers, so that one client is one client (its rate) on either transport.
        address = f"ipv6:[{host}]" if ":" in host else f"ipv4:{host}"
        self.connection = f"{address}:{port}"
        self.identity = f"token:{authorization}" if authorization else f"host:{address}"

    def header(self, name: str) -> str | None:
        """The request header ``name`` (lower case), e.g. W3C ``traceparent``."""
        wanted = name.encode("latin-1")
        for key, value in self.scope.get("headers") or ():
            if key.lower() == wanted:
                return value.decode("latin-1")  # type: ignore[no-any-return]
        return None
