"""Admission control: what the server lets clients make it hold, decided when a request or stream arrives.

- **Bytes in flight**, all clients together and per connection: the bytes of the requests read and not yet
  answered. A unary request that does not fit is answered RESOURCE_EXHAUSTED at once (it is never queued);
  a stream that holds too much stops reading (gRPC's flow control holds the client) until answers free room.
- **Streams open**, in total and per connection: one more is RESOURCE_EXHAUSTED.
- **Rate**, per client identity (its bearer token, else its address): a token bucket of ``rate`` requests a
  second and ``burst`` at once; a request over it is RESOURCE_EXHAUSTED. Off when ``rate`` is 0.

Everything here runs on the server's event loop (one thread), so it takes no locks; the gauges it keeps are
read by metrics scrapes from another thread, which only ever see whole integers.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from ..core.errors import ResourceExhausted

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The bounds of :class:`Admission` (docs/SECURITY.md, "Limits")."""

    max_inflight_bytes: int = 2048 * MIB  # all requests and streams together
    max_inflight_bytes_per_connection: int = 1024 * MIB
    max_stream_bytes: int = 64 * MIB  # read and not yet answered, per stream (at least one message)
    max_streams: int = 8192
    max_streams_per_connection: int = 1024
    rate: float = 0.0  # requests per second per client identity; 0: no limit
    burst: int = 0  # requests at once per client identity (0: one second's worth)
    max_clients_tracked: int = 65536  # rate buckets kept (least recently used dropped)

    def __post_init__(self) -> None:
        for name in ("max_inflight_bytes", "max_inflight_bytes_per_connection", "max_stream_bytes", "max_streams",
                     "max_streams_per_connection", "max_clients_tracked"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)}")
        if self.rate < 0 or self.burst < 0:
            raise ValueError(f"rate limit: expected rate >= 0 and burst >= 0, got {self.rate}, {self.burst}")


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class Admission:
    """The counters behind the limits (see the module docstring)."""

    limits: Limits = field(default_factory=Limits)
    clock: object = time.monotonic
    inflight_bytes: int = 0
    streams: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: {"bytes": 0, "streams": 0, "rate": 0})
    _bytes_by_connection: dict[str, int] = field(default_factory=dict)
    _streams_by_connection: dict[str, int] = field(default_factory=dict)
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _room: asyncio.Event | None = None

    # -- rate -----------------------------------------------------------------------------------
    def check_rate(self, identity: str) -> None:
        """Take one request from ``identity``'s bucket; RESOURCE_EXHAUSTED when it is empty."""
        rate = self.limits.rate
        if not rate:
            return
        burst = float(self.limits.burst or max(1, int(rate)))
        now = self.clock()  # type: ignore[operator]
        bucket = self._buckets.pop(identity, None) or _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        self._buckets[identity] = bucket  # most recently used last
        if len(self._buckets) > self.limits.max_clients_tracked:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1:
            self.rejected["rate"] += 1
            raise ResourceExhausted(f"rate limit: this client sends more than {rate:g} requests a second "
                                    f"(burst {burst:g}); retry later")
        bucket.tokens -= 1

    # -- bytes in flight ------------------------------------------------------------------------
    def fits(self, connection: str, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit both bounds."""
        return (self.inflight_bytes + nbytes <= self.limits.max_inflight_bytes
                and self._bytes_by_connection.get(connection, 0) + nbytes
                <= self.limits.max_inflight_bytes_per_connection)

    def hold(self, connection: str, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` for a request of ``connection`` until :meth:`release`; RESOURCE_EXHAUSTED (and
        nothing held) when they do not fit."""
        if not self.fits(connection, nbytes):
            self.rejected["bytes"] += 1
            raise ResourceExhausted(
                f"{what}: {nbytes} bytes do not fit the bytes in flight (server: {self.inflight_bytes} of "
                f"{self.limits.max_inflight_bytes}; this connection: {self._bytes_by_connection.get(connection, 0)} "
                f"of {self.limits.max_inflight_bytes_per_connection}); retry later")
        self.take(connection, nbytes)

    def take(self, connection: str, nbytes: int) -> None:
        """Count ``nbytes`` held, whether they fit or not (a stream's one message over the bound)."""
        self.inflight_bytes += nbytes
        self._bytes_by_connection[connection] = self._bytes_by_connection.get(connection, 0) + nbytes

    def release(self, connection: str, nbytes: int) -> None:
        self.inflight_bytes -= nbytes
        left = self._bytes_by_connection.get(connection, 0) - nbytes
        if left > 0:
            self._bytes_by_connection[connection] = left
        else:
            self._bytes_by_connection.pop(connection, None)
        if self._room is not None:
            self._room.set()

    async def wait_for_room(self) -> None:
        """Wait until some held bytes are released (streams waiting to read)."""
        if self._room is None:
            self._room = asyncio.Event()
        self._room.clear()
        await self._room.wait()

    # -- streams ----------------------------------------------------------------------------------
    def open_stream(self, connection: str) -> None:
        per = self._streams_by_connection.get(connection, 0)
        if self.streams >= self.limits.max_streams or per >= self.limits.max_streams_per_connection:
            self.rejected["streams"] += 1
            raise ResourceExhausted(
                f"streams: {self.streams} open on the server (at most {self.limits.max_streams}), {per} on this "
                f"connection (at most {self.limits.max_streams_per_connection}); close one first")
        self.streams += 1
        self._streams_by_connection[connection] = per + 1

    def close_stream(self, connection: str) -> None:
        self.streams -= 1
        left = self._streams_by_connection.get(connection, 0) - 1
        if left > 0:
            self._streams_by_connection[connection] = left
        else:
            self._streams_by_connection.pop(connection, None)
