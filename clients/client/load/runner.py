"""The load generator: closed loop (N workers, each sends when its last answer came) or open loop
(requests on a schedule: constant or Poisson arrivals).

The open loop never waits for the server: each request is launched as its own task at its intended time,
however many are still in flight, and its latency counts from the intended time. A server that stalls
therefore shows up as queueing delay in the latencies instead of as a slower offered load (no coordinated
omission). The measured ``send lag`` (actual minus intended send time) tells whether the generator itself
kept up.

The request is serialized once; calls send those bytes and do not parse the answers, so the generator's
own cost per request stays small.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import grpc
import numpy as np

from ..channel import OIP_SERVICE, ChannelSettings
from ..tensors import InferRequest, build_request
from .report import LatencyHistogram, LoadResult, Records, lag_summary_ms

SPIN_S = 0.0015  # the open loop's last stretch before a send is spent polling the event loop, not sleeping


@dataclass(frozen=True)
class LoadConfig:
    """One run. ``concurrency`` (closed loop) or ``rate`` in requests per second (open loop, ``arrival``
    constant or poisson). Times in seconds; ``deadline_ms`` is each request's deadline, counted from its
    intended send time (None: none); ``drain_s`` is how long to wait for requests still in flight after
    the last one was sent (None: the deadline plus 1 s, or 10 s)."""

    model: str
    settings: ChannelSettings = field(default_factory=ChannelSettings)
    version: str = ""
    mode: Literal["closed", "open"] = "closed"
    concurrency: int = 1
    rate: float = 0.0
    arrival: Literal["constant", "poisson"] = "constant"
    warmup_s: float = 2.0
    duration_s: float = 10.0
    deadline_ms: float | None = None
    drain_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError(f"concurrency: expected at least 1, got {self.concurrency}")
        if self.mode == "open" and not self.rate > 0:
            raise ValueError(f"rate: expected a positive number of requests per second, got {self.rate}")
        if self.warmup_s < 0 or not self.duration_s > 0:
            raise ValueError("warmup_s must be >= 0 and duration_s > 0")
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise ValueError(f"deadline_ms: expected a positive number, got {self.deadline_ms}")


def arrival_offsets(rate: float, arrival: str, seed: int = 0) -> Iterator[float]:
    """Intended send times in seconds from the start: ``k / rate`` (constant) or a Poisson process of
    that rate (exponential gaps from a seeded generator). Endless; the caller stops it."""
    if arrival == "constant":
        for k in itertools.count():
            yield k / rate
    elif arrival == "poisson":
        rng = np.random.default_rng(seed)
        t = 0.0
        while True:
            yield t
            t += float(rng.exponential(1.0 / rate))
    else:
        raise ValueError(f"arrival: expected 'constant' or 'poisson', got '{arrival}'")


class Recorder:
    """Collects requests whose intended send time falls in the measurement window."""

    def __init__(self, window_start: float, deadline_s: float | None) -> None:
        self.window_start = window_start
        self.deadline_s = deadline_s
        self.histogram = LatencyHistogram()
        self.intended: list[float] = []
        self.sent: list[float] = []
        self.latency: list[float] = []
        self.status: list[str] = []
        self.in_warmup = 0
        self.ok = 0
        self.errors = 0
        self.deadline_misses = 0

    def record(self, intended: float, sent: float, done: float, code: grpc.StatusCode) -> None:
        if intended < self.window_start:
            self.in_warmup += 1
            return
        latency = done - intended
        self.intended.append(intended)
        self.sent.append(sent)
        self.latency.append(latency)
        self.status.append(code.name)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED or (
                self.deadline_s is not None and code is grpc.StatusCode.OK and latency > self.deadline_s):
            self.deadline_misses += 1
        if code is grpc.StatusCode.OK:
            self.ok += 1
            self.histogram.record(latency)
        else:
            self.errors += 1


Progress = Callable[[float, Recorder], None]


class LoadRunner:
    """Drives one :class:`LoadConfig` against a server with fixed ``inputs``. ``progress`` is called
    every ``progress_interval_s`` with the seconds elapsed and the counts so far."""

    def __init__(self, config: LoadConfig, inputs: Mapping[str, np.ndarray], progress: Progress | None = None,
                 progress_interval_s: float = 0.5) -> None:
        self.config = config
        self.payload = build_request(InferRequest(config.model, inputs, version=config.version)).SerializeToString()
        self.clock: Callable[[], float] = time.perf_counter  # monotonic, sub-microsecond
        self.progress = progress
        self.progress_interval_s = progress_interval_s

    def run(self) -> LoadResult:
        """Run to completion (blocking; starts its own event loop)."""
        return asyncio.run(self.run_async())

    async def run_async(self) -> LoadResult:
        cfg = self.config
        channel = cfg.settings.aio_channel()
        try:
            # Bytes in, bytes out: no protobuf work per request on the generator's side.
            self._infer = channel.unary_unary(f"/{OIP_SERVICE}/ModelInfer")
            self._metadata = cfg.settings.metadata()
            await asyncio.wait_for(channel.channel_ready(), timeout=cfg.settings.timeout(None) or 30.0)
            self.t0 = self.clock()
            deadline_s = None if cfg.deadline_ms is None else cfg.deadline_ms / 1e3
            rec = Recorder(cfg.warmup_s, deadline_s)
            end = cfg.warmup_s + cfg.duration_s
            ticker = asyncio.create_task(self._tick(rec)) if self.progress else None
            try:
                if cfg.mode == "closed":
                    await asyncio.gather(*(self._worker(rec, end, deadline_s) for _ in range(cfg.concurrency)))
                else:
                    await self._open_loop(rec, end, deadline_s)
            finally:
                if ticker:
                    ticker.cancel()
            if self.progress:
                self.progress(self.clock() - self.t0, rec)
        finally:
            await channel.close()
        return self._result(rec)

    async def _tick(self, rec: Recorder) -> None:
        assert self.progress is not None
        while True:
            self.progress(self.clock() - self.t0, rec)
            await asyncio.sleep(self.progress_interval_s)

    async def _one(self, rec: Recorder, intended: float, deadline_s: float | None) -> None:
        """Send one request whose intended send time is ``intended`` (seconds from t0) and record it."""
        sent = self.clock() - self.t0
        timeout = None
        if deadline_s is not None:
            timeout = deadline_s - (sent - intended)
            if timeout <= 0:  # already late before it left: a miss, and no point in sending it
                rec.record(intended, sent, sent, grpc.StatusCode.DEADLINE_EXCEEDED)
                return
        code = grpc.StatusCode.OK
        try:
            await self._infer(self.payload, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            code = e.code()
        except asyncio.CancelledError:
            rec.record(intended, sent, self.clock() - self.t0, grpc.StatusCode.CANCELLED)
            raise
        rec.record(intended, sent, self.clock() - self.t0, code)

    async def _worker(self, rec: Recorder, end: float, deadline_s: float | None) -> None:
        while (now := self.clock() - self.t0) < end:
            await self._one(rec, now, deadline_s)

    async def _open_loop(self, rec: Recorder, end: float, deadline_s: float | None) -> None:
        cfg = self.config
        tasks: set[asyncio.Task[None]] = set()
        for intended in arrival_offsets(cfg.rate, cfg.arrival, cfg.seed):
            if intended >= end:
                break
            await self._sleep_until(intended)
            task = asyncio.create_task(self._one(rec, intended, deadline_s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            # With a deadline, gRPC ends every call by then; the extra second keeps the drain from racing it.
            drain = cfg.drain_s if cfg.drain_s is not None else (deadline_s + 1.0 if deadline_s else 10.0)
            _, pending = await asyncio.wait(tasks, timeout=drain)
            for t in pending:  # still unanswered: recorded as CANCELLED with the time they had waited
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _sleep_until(self, offset: float) -> None:
        """Wait until ``offset`` seconds after t0, to within tens of microseconds. The event loop's timers
        wake up to a millisecond late (epoll's resolution), which would add to every latency measured from
        the intended time; so sleep to a millisecond before, then yield to the loop until the moment
        (answers of requests in flight are still taken and stamped meanwhile)."""
        delay = offset - (self.clock() - self.t0)
        if delay > SPIN_S:
            await asyncio.sleep(delay - SPIN_S)
        while self.clock() - self.t0 < offset:
            await asyncio.sleep(0)

    def _result(self, rec: Recorder) -> LoadResult:
        cfg = self.config
        counts = Counter(s for s in rec.status if s != "OK")
        intended = np.asarray(rec.intended)
        sent = np.asarray(rec.sent)
        n = len(rec.status)
        return LoadResult(
            target=cfg.settings.target,
            model=cfg.model,
            mode=cfg.mode,
            concurrency=cfg.concurrency if cfg.mode == "closed" else None,
            rate=cfg.rate if cfg.mode == "open" else None,
            arrival=cfg.arrival if cfg.mode == "open" else None,
            warmup_s=cfg.warmup_s,
            duration_s=cfg.duration_s,
            deadline_ms=cfg.deadline_ms,
            sent=n,
            ok=rec.ok,
            errors=dict(counts),
            deadline_misses=rec.deadline_misses,
            throughput_rps=rec.ok / cfg.duration_s,
            offered_rps=n / cfg.duration_s,
            latency_ms=rec.histogram.summary_ms(),
            send_lag_ms=lag_summary_ms(sent - intended) if n else lag_summary_ms(np.zeros(0)),
            histogram=rec.histogram,
            records=Records(intended, sent, np.asarray(rec.latency), np.asarray(rec.status, dtype=str))
            if n else Records.empty(),
        )


def run_load(config: LoadConfig, inputs: Mapping[str, np.ndarray], progress: Progress | None = None) -> LoadResult:
    """Run one load test (blocking). Raises grpc.aio.AioRpcError/TimeoutError when the server cannot be
    reached before the run starts; failures during the run are counted, not raised."""
    return LoadRunner(config, inputs, progress=progress).run()

