"""The client's one exception: a failed call, with the gRPC status it ended with."""

from __future__ import annotations

import grpc


class PeregrineClientError(Exception):
    """A call failed. ``code`` is the :class:`grpc.StatusCode` (from the server, or from the client's own
    gRPC stack: ``DEADLINE_EXCEEDED`` when the call's deadline passed, ``UNAVAILABLE`` when the server
    cannot be reached); ``details`` is the server's message; ``method`` names the RPC, e.g. ``"ModelInfer"``."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = "") -> None:
        self.code = code
        self.details = details
        self.method = method
        where = f"{method}: " if method else ""
        super().__init__(f"{where}{code.name}: {details}")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, method: str = "") -> PeregrineClientError:
        """Wrap a :class:`grpc.RpcError` (sync or ``grpc.aio``) raised by a call."""
        code_fn = getattr(error, "code", None)
        details_fn = getattr(error, "details", None)
        code = code_fn() if callable(code_fn) else None
        details = details_fn() if callable(details_fn) else None
        return cls(code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN,
                   details or str(error), method)


def status_code(code: int) -> grpc.StatusCode:
    """The :class:`grpc.StatusCode` of a ``google.rpc.Code`` number (UNKNOWN for a number gRPC does not know)."""
    return _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)


_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}
