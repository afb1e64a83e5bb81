"""The load generator: closed loop (N workers, each sends when its last answer came) or open loop
(requests on a schedule: constant or Poisson arrivals) of unary calls, OIP ``ModelInfer`` or
``peregrine.v1.DetectionService/Detect`` (a :class:`Workload`). Camera mode lives in :mod:`.camera`.

The open loop never waits for the server: each request is launched as its own task at its intended time,
however many are still in flight, and its latency counts from the intended time. A server that stalls
therefore shows up as queueing delay in the latencies instead of as a slower offered load (no coordinated
omission). The measured ``send lag`` (actual minus intended send time) tells whether the generator itself
kept up.

Requests are serialized once; calls send those bytes. OIP answers are not parsed; Detect answers are, for
the server's stage timings (a small message). So the generator's own cost per request stays small.

With ``shared_memory="system"`` (OIP only) the tensors do not travel in the messages: each request in
flight owns a set of system shared-memory regions (one region holding the inputs, written once, and room
for every output), registered once and reused for every request it sends. A closed loop makes one set per
worker before the clock starts; an open loop makes one, and another whenever every set is busy. The sets
are unregistered and unlinked at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import grpc
import numpy as np
from peregrine.proto import detection_pb2 as det
from peregrine.proto import grpc_service_pb2 as pb

from ..channel import DETECTION_SERVICE, OIP_SERVICE, ChannelSettings
from ..shm import SystemSharedMemory
from ..tensors import NUMPY_OF, InferRequest, build_request, raw_bytes
from .report import MAX_SEND_LAG_MS, LatencyHistogram, LoadResult, Records, StageSamples, lag_summary_ms

SPIN_S = 0.0015  # the open loop's last stretch before a send is spent polling the event loop, not sleeping
SHM_ALIGN = 64  # each tensor of a shared-memory set starts on a cache line


@dataclass(frozen=True)
class LoadConfig:
    """One run. ``concurrency`` (closed loop), ``rate`` in requests per second (open loop, ``arrival``
    constant or poisson), or ``cameras`` streams of ``fps`` frames per second (camera mode, over
    DetectStream; ``max_in_flight`` frames per stream on the server, None: the model's default). Times in
    seconds; ``deadline_ms`` is each request's (frame's) deadline, counted from its intended send time
    (None: none); ``drain_s`` is how long to wait for requests still in flight after the last one was sent
    (None: the deadline plus 1 s, or 10 s). ``shared_memory`` "system" sends OIP tensors through system shared
    memory (closed and open loops); ``output_shm_bytes`` is the room per output (None: learned from one
    plain request before the run)."""

    model: str
    settings: ChannelSettings = field(default_factory=ChannelSettings)
    version: str = ""
    mode: Literal["closed", "open", "camera"] = "closed"
    concurrency: int = 1
    rate: float = 0.0
    arrival: Literal["constant", "poisson"] = "constant"
    warmup_s: float = 2.0
    duration_s: float = 10.0
    deadline_ms: float | None = None
    drain_s: float | None = None
    seed: int = 0
    cameras: int = 1
    fps: float = 0.0
    max_in_flight: int | None = None
    shared_memory: Literal["none", "system"] = "none"
    output_shm_bytes: Mapping[str, int] | None = None
    max_send_lag_ms: float = MAX_SEND_LAG_MS  # scheduled runs: above this p99 send lag the run is invalid

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open", "camera"):
            raise ValueError(f"mode: expected 'closed', 'open' or 'camera', got '{self.mode}'")
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError(f"concurrency: expected at least 1, got {self.concurrency}")
        if self.mode == "open" and not self.rate > 0:
            raise ValueError(f"rate: expected a positive number of requests per second, got {self.rate}")
        if self.mode == "camera" and (self.cameras < 1 or not self.fps > 0):
            raise ValueError(f"camera mode: expected at least 1 camera and a positive fps, got {self.cameras} "
                             f"cameras at {self.fps} fps")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight: expected at least 1, got {self.max_in_flight}")
        if self.warmup_s < 0 or not self.duration_s > 0:
            raise ValueError("warmup_s must be >= 0 and duration_s > 0")
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise ValueError(f"deadline_ms: expected a positive number, got {self.deadline_ms}")
        if self.shared_memory not in ("none", "system"):
            raise ValueError(f"shared_memory: expected 'none' or 'system', got '{self.shared_memory}'")
        if self.shared_memory != "none" and self.mode == "camera":
            raise ValueError("shared_memory: camera mode sends frames over DetectStream, without shared memory")


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


# A reader of the server's stage timings in an answer: ({stage: microseconds}, batch size), or None.
TimingsReader = Callable[[bytes], "tuple[dict[str, int], int] | None"]


@dataclass(frozen=True)
class Workload:
    """What the unary loops send: the full gRPC method, the serialized requests (sent in turn), and how
    to read the server's stage timings from an answer (None: answers are not parsed)."""

    method: str
    payloads: Sequence[bytes]
    timings: TimingsReader | None = None
    api: str = "oip"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.payloads:
            raise ValueError("a workload needs at least one request")


def oip_workload(model: str, inputs: Mapping[str, np.ndarray], version: str = "") -> Workload:
    """OIP ``ModelInfer`` with fixed ``inputs``."""
    payload = build_request(InferRequest(model, inputs, version=version)).SerializeToString()
    shapes = ", ".join(f"{k} {a.dtype}{list(a.shape)}" for k, a in inputs.items())
    return Workload(f"/{OIP_SERVICE}/ModelInfer", [payload], description=shapes)


def detect_workload(requests: Sequence[bytes], description: str = "") -> Workload:
    """``DetectionService/Detect`` with these serialized ``DetectRequest`` messages (sent in turn); the
    answers' StageTimings are collected."""

    def timings(answer: bytes) -> tuple[dict[str, int], int]:
        t = det.DetectResponse.FromString(answer).timings
        return stage_us(t), t.batch_size

    return Workload(f"/{DETECTION_SERVICE}/Detect", list(requests), timings, "detect", description)


def stage_us(t: det.StageTimings) -> dict[str, int]:
    """A ``StageTimings`` message as {stage: microseconds}."""
    return {"decode": t.decode_us, "queue": t.queue_us, "pre": t.pre_us, "infer": t.infer_us, "post": t.post_us,
            "total": t.total_us}


class Recorder:
    """Collects requests (frames) whose intended send time falls in the measurement window."""

    def __init__(self, window_start: float, deadline_s: float | None) -> None:
        self.window_start = window_start
        self.deadline_s = deadline_s
        self.histogram = LatencyHistogram()
        self.stages = StageSamples()
        self.intended: list[float] = []
        self.sent: list[float] = []
        self.latency: list[float] = []
        self.status: list[str] = []
        self.camera: list[int] = []
        self.sequence: list[int] = []
        self.in_warmup = 0
        self.ok = 0
        self.errors = 0
        self.dropped = 0
        self.deadline_misses = 0

    def record(self, intended: float, sent: float, done: float, status: str,
               timings: tuple[dict[str, int], int] | None = None, frame: tuple[int, int] | None = None) -> None:
        """One answer. ``status`` is a gRPC status name, or ``DROPPED``; ``timings`` the server's stage
        timings of a successful answer; ``frame`` its (camera, sequence) in camera mode."""
        if intended < self.window_start:
            self.in_warmup += 1
            return
        latency = done - intended
        self.intended.append(intended)
        self.sent.append(sent)
        self.latency.append(latency)
        self.status.append(status)
        if frame is not None:
            self.camera.append(frame[0])
            self.sequence.append(frame[1])
        if status == "DEADLINE_EXCEEDED" or (
                self.deadline_s is not None and status == "OK" and latency > self.deadline_s):
            self.deadline_misses += 1
        if status == "OK":
            self.ok += 1
            self.histogram.record(latency)
            if timings is not None:
                self.stages.add(*timings)
        else:
            self.errors += 1
            self.dropped += status == "DROPPED"

    def result(self, cfg: LoadConfig, api: str, payload: str) -> LoadResult:
        """The run's :class:`LoadResult` (camera-mode fields other than ``dropped`` are left to the caller)."""
        counts = Counter(s for s in self.status if s != "OK")
        intended = np.asarray(self.intended)
        sent = np.asarray(self.sent)
        n = len(self.status)
        records = Records.empty()
        if n:
            frames = len(self.camera) == n
            camera, sequence = (np.asarray(self.camera), np.asarray(self.sequence)) if frames else (None, None)
            records = Records(intended, sent, np.asarray(self.latency), np.asarray(self.status, dtype=str),
                              camera, sequence)
        result = LoadResult(
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
            ok=self.ok,
            errors=dict(counts),
            deadline_misses=self.deadline_misses,
            throughput_rps=self.ok / cfg.duration_s,
            offered_rps=n / cfg.duration_s,
            latency_ms=self.histogram.summary_ms(),
            send_lag_ms=lag_summary_ms(sent - intended) if n else lag_summary_ms(np.zeros(0)),
            histogram=self.histogram,
            records=records,
            api=api,
            cameras=cfg.cameras if cfg.mode == "camera" else None,
            fps=cfg.fps if cfg.mode == "camera" else None,
            dropped=self.dropped,
            stages_ms=self.stages.summary_ms(),
            payload=payload,
        )
        result.check_schedule(cfg.max_send_lag_ms)
        return result


Progress = Callable[[float, Recorder], None]


class ScheduledRun:
    """What every mode shares: the clock, the channel, the measurement window, the progress line and
    sleeping until a scheduled send time. Subclasses drive the calls in :meth:`drive`."""

    def __init__(self, config: LoadConfig, progress: Progress | None = None, progress_interval_s: float = 0.5) -> None:
        self.config = config
        self.clock: Callable[[], float] = time.perf_counter  # monotonic, sub-microsecond
        self.progress = progress
        self.progress_interval_s = progress_interval_s
        self.t0 = 0.0

    def run(self) -> LoadResult:
        """Run to completion (blocking; starts its own event loop)."""
        return asyncio.run(self.run_async())

    async def run_async(self) -> LoadResult:
        cfg = self.config
        channel = cfg.settings.aio_channel()
        try:
            self._metadata = cfg.settings.metadata()
            self.prepare(channel)
            await asyncio.wait_for(channel.channel_ready(), timeout=cfg.settings.timeout(None) or 30.0)
            await self.setup(channel)
            self.t0 = self.clock()
            deadline_s = None if cfg.deadline_ms is None else cfg.deadline_ms / 1e3
            rec = Recorder(cfg.warmup_s, deadline_s)
            end = cfg.warmup_s + cfg.duration_s
            ticker = asyncio.create_task(self._tick(rec)) if self.progress else None
            try:
                await self.drive(rec, end, deadline_s)
            finally:
                if ticker:
                    ticker.cancel()
            if self.progress:
                self.progress(self.now(), rec)
        finally:
            await self.teardown()
            await channel.close()
        return self.finish(rec)

    def prepare(self, channel: grpc.aio.Channel) -> None:
        """Make the call objects on ``channel`` (before it is ready)."""
        raise NotImplementedError

    async def setup(self, channel: grpc.aio.Channel) -> None:
        """Work on the server before the clock starts (the channel is ready)."""

    async def teardown(self) -> None:
        """Undo :meth:`setup` (also after a failed run), before the channel closes."""

    async def drive(self, rec: Recorder, end: float, deadline_s: float | None) -> None:
        """Send everything whose intended time is before ``end`` (seconds from t0) and record the answers."""
        raise NotImplementedError

    def finish(self, rec: Recorder) -> LoadResult:
        raise NotImplementedError

    def now(self) -> float:
        """Seconds since the run started."""
        return self.clock() - self.t0

    def drain_s(self, deadline_s: float | None) -> float:
        """How long to wait for answers after the last send: gRPC (or the server) ends every call by its
        deadline; the extra second keeps the drain from racing it."""
        cfg = self.config
        return cfg.drain_s if cfg.drain_s is not None else (deadline_s + 1.0 if deadline_s else 10.0)

    async def _tick(self, rec: Recorder) -> None:
        assert self.progress is not None
        while True:
            self.progress(self.now(), rec)
            await asyncio.sleep(self.progress_interval_s)

    async def sleep_until(self, offset: float) -> None:
        """Wait until ``offset`` seconds after t0, to within tens of microseconds. The event loop's timers
        wake up to a millisecond late (epoll's resolution), which would add to every latency measured from
        the intended time; so sleep to a millisecond before, then yield to the loop until the moment
        (answers of requests in flight are still taken and stamped meanwhile)."""
        delay = offset - self.now()
        if delay > SPIN_S:
            await asyncio.sleep(delay - SPIN_S)
        while self.now() < offset:
            await asyncio.sleep(0)


class LoadRunner(ScheduledRun):
    """Drives one closed- or open-loop :class:`LoadConfig` against a server: OIP ``ModelInfer`` with fixed
    ``inputs``, or a :class:`Workload`. ``progress`` is called every ``progress_interval_s`` with the
    seconds elapsed and the counts so far."""

    def __init__(self, config: LoadConfig, inputs: Mapping[str, np.ndarray] | Workload,
                 progress: Progress | None = None, progress_interval_s: float = 0.5) -> None:
        if config.mode == "camera":
            raise ValueError("camera mode runs with peregrine.client.load.camera.CameraRunner")
        super().__init__(config, progress, progress_interval_s)
        self.workload = inputs if isinstance(inputs, Workload) else oip_workload(config.model, inputs, config.version)
        self._turn = itertools.cycle(self.workload.payloads)
        self._shm = config.shared_memory == "system"
        if self._shm and isinstance(inputs, Workload):
            raise ValueError("shared_memory: only OIP ModelInfer tensors go through shared memory, not a Workload")
        self.inputs = {} if isinstance(inputs, Workload) else dict(inputs)
        self._free: list[bytes] = []  # shared memory: payloads of the region sets not in use
        self._regions: list[SystemSharedMemory] = []

    def prepare(self, channel: grpc.aio.Channel) -> None:
        # Bytes in, bytes out: no protobuf work per request on the generator's side.
        self._call = channel.unary_unary(self.workload.method)

    async def drive(self, rec: Recorder, end: float, deadline_s: float | None) -> None:
        if self.config.mode == "closed":
            await asyncio.gather(*(self._worker(rec, end, deadline_s) for _ in range(self.config.concurrency)))
        else:
            await self._open_loop(rec, end, deadline_s)

    def finish(self, rec: Recorder) -> LoadResult:
        description = self.workload.description + (" in system shared memory" if self._shm else "")
        return rec.result(self.config, self.workload.api, description)

    async def _one(self, rec: Recorder, intended: float, deadline_s: float | None) -> None:
        """Send one request whose intended send time is ``intended`` (seconds from t0) and record it."""
        sent = self.now()
        timeout = None
        if deadline_s is not None:
            timeout = deadline_s - (sent - intended)
            if timeout <= 0:  # already late before it left: a miss, and no point in sending it
                rec.record(intended, sent, sent, "DEADLINE_EXCEEDED")
                return
        payload = next(self._turn)
        if self._shm:
            # Every set busy (open loop): make another; its registration counts in this request's latency.
            payload = self._free.pop() if self._free else await self._new_shm_set()
        try:
            answer = await self._call(payload, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as e:
            rec.record(intended, sent, self.now(), e.code().name)
            return
        except asyncio.CancelledError:
            rec.record(intended, sent, self.now(), "CANCELLED")
            raise
        finally:
            if self._shm:
                self._free.append(payload)
        done = self.now()
        read = self.workload.timings
        rec.record(intended, sent, done, "OK", read(answer) if read is not None else None)

    async def _worker(self, rec: Recorder, end: float, deadline_s: float | None) -> None:
        while (now := self.now()) < end:
            await self._one(rec, now, deadline_s)

    async def _open_loop(self, rec: Recorder, end: float, deadline_s: float | None) -> None:
        cfg = self.config
        tasks: set[asyncio.Task[None]] = set()
        for intended in arrival_offsets(cfg.rate, cfg.arrival, cfg.seed):
            if intended >= end:
                break
            await self.sleep_until(intended)
            task = asyncio.create_task(self._one(rec, intended, deadline_s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.drain_s(deadline_s))
            for t in pending:  # still unanswered: recorded as CANCELLED with the time they had waited
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)


    # -- shared memory -------------------------------------------------------------------------------
    async def setup(self, channel: grpc.aio.Channel) -> None:
        """Shared memory: learn the output sizes (one plain request, unless configured) and make the first
        region sets."""
        if not self._shm:
            return
        cfg = self.config
        self._register = channel.unary_unary(
            f"/{OIP_SERVICE}/SystemSharedMemoryRegister",
            request_serializer=pb.SystemSharedMemoryRegisterRequest.SerializeToString,
            response_deserializer=pb.SystemSharedMemoryRegisterResponse.FromString)
        self._unregister = channel.unary_unary(
            f"/{OIP_SERVICE}/SystemSharedMemoryUnregister",
            request_serializer=pb.SystemSharedMemoryUnregisterRequest.SerializeToString,
            response_deserializer=pb.SystemSharedMemoryUnregisterResponse.FromString)
        sizes = cfg.output_shm_bytes
        if sizes is None:
            infer = channel.unary_unary(f"/{OIP_SERVICE}/ModelInfer",
                                        response_deserializer=pb.ModelInferResponse.FromString)
            answer = await infer(self.workload.payloads[0], timeout=cfg.settings.timeout(None),
                                 metadata=self._metadata)
            sizes = output_bytes(answer)
        self._output_bytes = dict(sizes)
        for _ in range(cfg.concurrency if cfg.mode == "closed" else 1):
            self._free.append(await self._new_shm_set())

    async def _new_shm_set(self) -> bytes:
        """A new region with the inputs written in and room for every output, registered; the serialized
        request that uses it."""
        cfg = self.config
        layout, offset = {}, 0
        for name, array in self.inputs.items():
            layout[name] = offset
            offset += _aligned(_tensor_bytes(array))
        outputs_at = {}
        for name, size in self._output_bytes.items():
            outputs_at[name] = (offset, size)
            offset += _aligned(size)
        region = SystemSharedMemory.create(f"peregrine-load-{os.getpid()}-{len(self._regions)}", max(offset, 1))
        self._regions.append(region)
        shm_inputs = {name: region.put(array, layout[name]) for name, array in self.inputs.items()}
        slots = {name: region.output_at(off, size) for name, (off, size) in outputs_at.items()}
        await self._register(pb.SystemSharedMemoryRegisterRequest(name=region.name, key=region.key,
                                                                  byte_size=region.byte_size),
                             timeout=cfg.settings.timeout(None), metadata=self._metadata)
        request = InferRequest(cfg.model, shm_inputs, version=cfg.version, outputs_to_shm=slots)
        return build_request(request).SerializeToString()

    async def teardown(self) -> None:
        for region in self._regions:
            with contextlib.suppress(grpc.aio.AioRpcError):  # a server that is gone has nothing left to unmap
                await self._unregister(pb.SystemSharedMemoryUnregisterRequest(name=region.name), timeout=10.0,
                                       metadata=self._metadata)
            region.close()
        self._regions.clear()


def _aligned(n: int) -> int:
    return -(-n // SHM_ALIGN) * SHM_ALIGN


def _tensor_bytes(array: np.ndarray) -> int:
    return len(raw_bytes(array)[1]) if array.dtype.kind in "OSU" else array.nbytes


def output_bytes(response: pb.ModelInferResponse) -> dict[str, int]:
    """Bytes to reserve per output, from one answer: the raw size, twice over (and 64 bytes more) for
    BYTES outputs, whose size varies with their contents."""
    sizes = {}
    raw = response.raw_output_contents
    for i, t in enumerate(response.outputs):
        if t.datatype == "BYTES":
            sizes[t.name] = 2 * len(raw[i]) + 64 if i < len(raw) else 1 << 20
        else:
            sizes[t.name] = math.prod(int(d) for d in t.shape) * NUMPY_OF[t.datatype].itemsize
    return sizes


def run_load(config: LoadConfig, inputs: Mapping[str, np.ndarray] | Workload,
             progress: Progress | None = None) -> LoadResult:
    """Run one closed- or open-loop load test (blocking). Raises grpc.aio.AioRpcError/TimeoutError when the
    server cannot be reached before the run starts; failures during the run are counted, not raised."""
    return LoadRunner(config, inputs, progress=progress).run()

