"""The HTTP port's connection bounds, which uvicorn does not keep: how many connections are open at once, how
long a request's head (request line and headers) may take to arrive and how large it may be. Without them a
client that opens connections and sends half a request line keeps each one, and the server's descriptors,
for ever (and gRPC's new clients with them); one with a 100 MiB header costs the loop seconds to parse it.

:class:`BoundedHttpToolsProtocol` is uvicorn's httptools protocol with these bounds (docs/SECURITY.md,
"Limits"): past ``max_connections`` a new connection is closed at once; a head larger than
``MAX_HEAD_BYTES`` is answered 431 and the connection closed; a head not complete ``HEAD_TIMEOUT_S`` after
the connection opened (or after the previous response, on a kept-alive connection, once its next request
began) is answered 408 and closed. The body is bounded elsewhere (``--http-max-input-size``, the
bytes-in-flight budget, counted as it is read: routes.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ...config.server import CONNECTIONS_CEILING

MAX_HEAD_BYTES = 64 * 1024  # request line and headers: twice nginx's default (4 buffers of 8 KiB)
HEAD_TIMEOUT_S = 10.0
REFUSED_LINGER_S = 1.0  # a refused connection's bytes still coming are read and dropped this long


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    # Per server (the transport makes a class for it, see bounded_protocol): the bounds, and the connections
    # closed at once for being over max_connections.
    max_connections = CONNECTIONS_CEILING
    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_s = HEAD_TIMEOUT_S
    refused = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            type(self).refused += 1
            transport.abort()
            return
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.head_timeout_s, self._head_late)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # answered already: what still comes is read and dropped until the close
            return
        in_head = self._in_head
        super().data_received(data)
        if in_head and self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, f"request line and headers: more than the {self.max_head_bytes} bytes this server "
                                  "takes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request on a kept-alive connection: its head is timed too
            self._in_head = True
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_late)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:  # not a connection refused before it was made
            self._cancel_head_timer()
            super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"request line and headers: not complete within {self.head_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = ('{"error":"' + message + '"}').encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        # Closed with the client's bytes unread, the connection would be reset and the answer lost with it:
        # the write side is shut, what still comes is dropped, and the connection closes a moment later.
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(REFUSED_LINGER_S, self.transport.close)


def bounded_protocol(max_connections: int) -> type[Any]:
    """A protocol class for one server, with its own connection bound and refusal count."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"max_connections": max_connections,
                                                                          "refused": 0})
