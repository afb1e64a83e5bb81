"""Camera mode: K cameras, each one ``DetectStream`` sending F frames per second, open loop.

Camera ``i`` sends frame ``k`` at ``i / (K * F) + k / F`` seconds after the start (the cameras are spread
evenly over a frame period, as unsynchronised cameras are), whatever the server is doing: a slow server
makes frames wait, be dropped or miss their deadlines, never makes the cameras slower. A frame's latency
counts from its intended send time to its result. Each frame carries ``deadline_us`` (``--deadline-ms``)
and the intended send time as its capture time.

The stream's fixed part (model, options, deadline, image) is serialized once per image; a frame is that
prefix followed by its own ``sequence`` and ``capture_time_us``: concatenated protobuf messages parse as
one message, so no image is copied into a new message per frame. Results are parsed (small messages)
for their status and the server's stage timings.

When a stream fails (e.g. the server restarts), its unanswered frames are recorded with the stream's
status and the camera opens a new stream for its next frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from peregrine.proto import detection_pb2 as det

from ..channel import DETECTION_SERVICE
from ..detection import ImageInput, image_message
from ..errors import status_code
from .report import LoadResult
from .runner import LoadConfig, Progress, Recorder, ScheduledRun, stage_us

_STATUS_NAMES = {det.StreamResult.OK: "OK", det.StreamResult.DROPPED: "DROPPED",
                 det.StreamResult.DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED"}


@dataclass
class _Stream:
    """One DetectStream call of a camera and its frames not yet answered: sequence -> (intended, sent)."""

    call: grpc.aio.StreamStreamCall
    pending: dict[int, tuple[float, float]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    dropped_total: int = 0


class CameraRunner(ScheduledRun):
    """Drives a camera-mode :class:`LoadConfig` (``cameras``, ``fps``, ``deadline_ms``, ``max_in_flight``)
    with ``images`` sent in turn (encoded bytes or uint8 arrays, see :mod:`.frames`); ``options`` and
    ``priority`` go with every frame. ``description`` says what the images are, for the report."""

    def __init__(self, config: LoadConfig, images: Sequence[ImageInput], *, options: det.DetectOptions | None = None,
                 priority: int = 0, description: str = "", progress: Progress | None = None,
                 progress_interval_s: float = 0.5) -> None:
        if config.mode != "camera":
            raise ValueError(f"CameraRunner runs camera mode, not '{config.mode}'")
        if not images:
            raise ValueError("camera mode needs at least one image")
        super().__init__(config, progress, progress_interval_s)
        deadline_us = round(config.deadline_ms * 1000) if config.deadline_ms else 0
        self.prefixes = [
            det.StreamFrame(model_name=config.model, model_version=config.version, image=image_message(img),
                            options=options, deadline_us=deadline_us, max_in_flight=config.max_in_flight or 0,
                            priority=priority).SerializeToString()
            for img in images
        ]
        self.description = description
        self.server_dropped_total = 0

    def prepare(self, channel: grpc.aio.Channel) -> None:
        # Requests go out as the bytes built here (no serializer); results are parsed.
        self._open = channel.stream_stream(f"/{DETECTION_SERVICE}/DetectStream",
                                           response_deserializer=det.StreamResult.FromString)

    async def drive(self, rec: Recorder, end: float, deadline_s: float | None) -> None:
        await asyncio.gather(*(self._camera(i, rec, end, deadline_s) for i in range(self.config.cameras)))

    def finish(self, rec: Recorder) -> LoadResult:
        result = rec.result(self.config, "stream", self.description)
        result.server_dropped_total = self.server_dropped_total
        return result

    # -- one camera ------------------------------------------------------------------------------
    def _new_stream(self, camera: int, rec: Recorder) -> _Stream:
        stream = _Stream(self._open(metadata=self._metadata))
        stream.reader = asyncio.create_task(self._read(camera, stream, rec))
        return stream

    async def _camera(self, camera: int, rec: Recorder, end: float, deadline_s: float | None) -> None:
        cfg = self.config
        period = 1.0 / cfg.fps
        phase = camera * period / cfg.cameras
        streams: list[_Stream] = []
        sequence = 0
        while (intended := phase + sequence * period) < end:
            await self.sleep_until(intended)
            if not streams or streams[-1].call.done():
                streams.append(self._new_stream(camera, rec))
            stream = streams[-1]
            tail = det.StreamFrame(sequence=sequence, capture_time_us=round(intended * 1e6)).SerializeToString()
            frame = self.prefixes[sequence % len(self.prefixes)] + tail
            sent = self.now()
            stream.pending[sequence] = (intended, sent)
            try:
                await stream.call.write(frame)
            except (grpc.RpcError, asyncio.InvalidStateError):
                # The stream ended under the write: the frame was not sent. Its reader records the
                # stream's status for the frames it leaves; this one is recorded here unless it did.
                if stream.pending.pop(sequence, None) is not None:
                    rec.record(intended, sent, self.now(), await self._code(stream), frame=(camera, sequence))
            sequence += 1
        await self._close(camera, streams, rec, deadline_s)

    async def _close(self, camera: int, streams: list[_Stream], rec: Recorder, deadline_s: float | None) -> None:
        """Half-close the live stream, wait for the answers still due, then cancel what is left (recorded
        as CANCELLED, with the time it had waited)."""
        if not streams:
            return
        live = streams[-1]
        if not live.call.done():
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):  # its reader records the end
                await live.call.done_writing()
        readers = [s.reader for s in streams if s.reader is not None]
        _, late = await asyncio.wait(readers, timeout=self.drain_s(deadline_s))
        now = self.now()
        for s in streams:
            s.call.cancel()
            for seq, (intended, sent) in sorted(s.pending.items()):
                rec.record(intended, sent, now, "CANCELLED", frame=(camera, seq))
            s.pending.clear()
        for task in late:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        self.server_dropped_total += sum(s.dropped_total for s in streams)

    async def _read(self, camera: int, stream: _Stream, rec: Recorder) -> None:
        try:
            async for msg in stream.call:
                entry = stream.pending.pop(msg.sequence, None)
                if entry is None:
                    continue
                done = self.now()
                stream.dropped_total = max(stream.dropped_total, msg.dropped_total)
                status = _STATUS_NAMES.get(msg.status) or status_code(msg.error_code).name
                timings = (stage_us(msg.timings), msg.timings.batch_size) if msg.status == det.StreamResult.OK \
                    else None
                rec.record(entry[0], entry[1], done, status, timings, (camera, msg.sequence))
        except grpc.RpcError:
            pass
        except asyncio.CancelledError:
            return
        if stream.call.done() and stream.pending:
            # The stream ended with frames unanswered: they failed with the stream's status.
            code = await self._code(stream)
            now = self.now()
            for seq, (intended, sent) in sorted(stream.pending.items()):
                rec.record(intended, sent, now, code, frame=(camera, seq))
            stream.pending.clear()

    @staticmethod
    async def _code(stream: _Stream) -> str:
        code = await stream.call.code()
        # A stream that ended OK with frames unanswered lost them: the server owes an answer per frame.
        return "UNKNOWN" if code is grpc.StatusCode.OK else code.name


def run_camera(config: LoadConfig, images: Sequence[ImageInput], *, options: det.DetectOptions | None = None,
               priority: int = 0, description: str = "", progress: Progress | None = None) -> LoadResult:
    """Run one camera-mode load test (blocking). Raises grpc.aio.AioRpcError/TimeoutError when the server
    cannot be reached before the run starts; failures during the run are counted, not raised."""
    return CameraRunner(config, images, options=options, priority=priority, description=description,
                        progress=progress).run()
