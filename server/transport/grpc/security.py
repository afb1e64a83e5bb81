"""gRPC transport security: TLS (optionally mutual) and the bearer-token interceptor.

Both are off by default. Certificates and token files are re-read when they change on disk
(:class:`~peregrine.server.security.tokens.WatchedFile`), so they rotate without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ...security.tokens import TokenStore, WatchedFile, category_of, check_categories

log = logging.getLogger(__name__)


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _denied(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED, before the servicer runs, to calls of a guarded category that carry no
    ``authorization: Bearer <token>`` metadata or a token the store does not hold."""

    def __init__(self, tokens: TokenStore, open_categories: Iterable[str] = ("health",)) -> None:
        self.tokens = tokens
        self.open = frozenset(check_categories(open_categories))

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        category = category_of(details.method)
        if category in self.open:
            return handler
        token = _bearer(details.invocation_metadata)
        method = details.method.rsplit("/", 1)[-1]
        if token is None:
            message = f"{method} ({category}) needs metadata 'authorization: Bearer <token>'; the call carried none"
        elif not token:
            message = f"{method} ({category}): metadata 'authorization' must read 'Bearer <token>'"
        else:
            scope = self.tokens.scope(token)
            if scope is False:
                message = f"{method} ({category}): the bearer token in 'authorization' is not accepted"
            elif scope is None or category in scope:
                return handler
            else:
                return _denied(handler, grpc.StatusCode.PERMISSION_DENIED,
                               f"{method} ({category}): this token may call only {', '.join(sorted(scope))}")
        return _denied(handler, grpc.StatusCode.UNAUTHENTICATED, message)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the server's certificate chain and key, and optionally the CA that signs client
    certificates (then clients must present one: mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def _configuration(self) -> Any:
        pair = (self.key.read_bytes(), self.cert.read_bytes())
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def credentials(self, reload_interval: float = 1.0) -> grpc.ServerCredentials:
        """Server credentials that pick up new certificate files at the next handshake after they change."""
        watched = [WatchedFile(p, reload_interval) for p in (self.cert, self.key, self.client_ca) if p]

        def fetch() -> Any:
            if not any([w.changed() for w in watched]):  # a list: stat every file, keep all stamps current
                return None
            try:
                config = self._configuration()
            except OSError as e:
                log.error("keeping the previous TLS certificates: %s", e)
                return None
            log.info("reloaded TLS certificates from %s", self.cert)
            return config

        return grpc.dynamic_ssl_server_credentials(self._configuration(), fetch,
                                                   require_client_authentication=self.client_ca is not None)
