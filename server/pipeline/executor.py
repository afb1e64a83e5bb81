"""Running one batch of frames on one instance: letterbox -> ONNX Runtime -> box decoding.

The scheduler's ``BatchExecutor`` of a detection model (the tensor executor of plain models is
:class:`peregrine.server.runtime.executor.TensorExecutor`). Frames of any size share one batch, each
letterboxed into its row of an input tensor preallocated per instance. Two paths, side by side:

- :class:`HostPath` (CPU sessions): letterbox into a host tensor, run, decode on the host.
- :class:`DevicePath` (CUDA sessions with the CUDA kernels and CuPy): the frames are staged once in
  pinned host memory and uploaded; letterbox, the model (IO binding) and NMS then read and write device
  memory, and only the packed detections come back.

The model runs on the batch padded up to its bucket (the rows past the batch hold earlier frames or zeros:
real-looking input, never read back), or to a multiple of the model's static batch size.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from ... import kernels
from ..config.model import DetectionConfig
from ..core.errors import ModelExecutionError, PeregrineError
from ..core.stats import ModelStats
from ..core.types import ComputeTimes, FrameRequest, FrameResult, InferRequest, StageTimes
from ..runtime.instances import Instances
from ..runtime.onnx import OnnxSession
from ..scheduling.buckets import padded_size
from .head import HeadInfo
from .stages import BoxDecoder, Decoded, Letterbox

log = logging.getLogger(__name__)


class Detector:
    """The model step: the detector's sessions and what its head looks like."""

    def __init__(self, instances: Instances, head: HeadInfo) -> None:
        self.instances = instances
        self.head = head

    def padded(self, n: int) -> int:
        """The rows a batch of ``n`` frames runs at."""
        return padded_size(n, self.instances.buckets, self.head.fixed_batch)

    def run(self, instance: int, tensor: Any, on_device: bool) -> list[Any]:
        """The head's output for ``tensor`` [rows, 3, H, W] (NumPy, or CuPy with ``on_device``), then a
        segmentation export's prototype masks when the pipeline reads them (``HeadInfo.proto_name``)."""
        h, fb = self.head, self.head.fixed_batch
        names = [h.output_name, h.proto_name] if h.proto_name else [h.output_name]
        session = self.instances.session_for(instance, len(tensor))
        if not fb or len(tensor) == fb:
            return list(session.run({h.input_name: tensor}, names, outputs_on_device=on_device))
        parts = [session.run({h.input_name: tensor[i : i + fb]}, names, outputs_on_device=on_device)
                 for i in range(0, len(tensor), fb)]
        if on_device:
            import cupy

            return [cupy.concatenate([part[o] for part in parts]) for o in range(len(names))]
        return [np.concatenate([part[o] for part in parts]) for o in range(len(names))]


class HostPath:
    """One CPU instance: a host input tensor, allocated at the first batch and reused."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._input: np.ndarray | None = None

    def run(self, ex: DetectionExecutor, instance: int, frames: list[np.ndarray], sizes: np.ndarray,
            requests: Sequence[FrameRequest], times: StageTimes) -> Decoded:
        h = ex.detector.head
        t0 = time.perf_counter_ns()
        if self._input is None:
            self._input = np.full((self.rows, 3, h.height, h.width), 0, h.input_dtype)
        n = len(frames)
        params = ex.letterbox(self._input[:n], frames)
        t1 = time.perf_counter_ns()
        outputs = ex.detector.run(instance, self._input[: ex.detector.padded(n)], on_device=False)
        head, *protos = (o[:n] for o in outputs)
        if head.dtype != np.float32:
            head = head.astype(np.float32)
        head = np.ascontiguousarray(head)
        t2 = time.perf_counter_ns()
        decoded = ex.decode(head, params, sizes, requests, protos=protos[0] if protos else None)
        t3 = time.perf_counter_ns()
        times.pre_ns, times.infer_ns, times.post_ns = t1 - t0, t2 - t1, t3 - t2
        return decoded


class DevicePath:
    """One CUDA instance: a pinned host staging area and a device copy of the frames, and the model's
    input tensor, on the instance's GPU. Grown when a batch needs more; never freed while the instance
    lives."""

    def __init__(self, rows: int, device_id: int) -> None:
        import cupy

        self.cupy = cupy
        self.rows = rows
        self.device_id = device_id
        with cupy.cuda.Device(device_id):
            self.stream = cupy.cuda.Stream(non_blocking=True)
        self._pinned: np.ndarray | None = None
        self._frames: Any = None
        self._input: Any = None

    def _staging(self, nbytes: int) -> tuple[np.ndarray, Any]:
        cp = self.cupy
        if self._pinned is None or self._pinned.nbytes < nbytes:
            import cupyx

            self._pinned = cupyx.empty_pinned((nbytes,), np.uint8)
            self._frames = cp.empty((nbytes,), cp.uint8)
        return self._pinned, self._frames

    def run(self, ex: DetectionExecutor, instance: int, frames: list[np.ndarray], sizes: np.ndarray,
            requests: Sequence[FrameRequest], times: StageTimes) -> Decoded:
        cp = self.cupy
        h = ex.detector.head
        with cp.cuda.Device(self.device_id), self.stream:
            try:
                t0 = time.perf_counter_ns()
                total = sum(f.nbytes for f in frames)
                pinned, staged = self._staging(total)
                views, offset = [], 0
                for f in frames:  # one host copy into pinned memory, then one upload for the whole batch
                    pinned[offset : offset + f.nbytes] = f.reshape(-1)
                    views.append(staged[offset : offset + f.nbytes].reshape(f.shape))
                    offset += f.nbytes
                staged[:total].set(pinned[:total], stream=self.stream)
                if self._input is None:
                    self._input = cp.zeros((self.rows, 3, h.height, h.width), h.input_dtype)
                n = len(frames)
                params = ex.letterbox(self._input[:n], views, stream=self.stream)
                # ONNX Runtime runs on its own stream: the input must be complete before it starts.
                self.stream.synchronize()
                t1 = time.perf_counter_ns()
                head, *protos = (o[:n] for o in ex.detector.run(instance, self._input[: ex.detector.padded(n)],
                                                                   on_device=True))
                if head.dtype != cp.float32:
                    head = head.astype(cp.float32)
                head = cp.ascontiguousarray(head)
                t2 = time.perf_counter_ns()
                decoded = ex.decode(head, params, sizes, requests, stream=self.stream,
                                    protos=protos[0] if protos else None)
                out = (decoded if isinstance(decoded.dets, np.ndarray)  # a segmentation or pose head's, on the host
                       else decoded._replace(dets=decoded.dets.get(stream=self.stream),
                                             counts=decoded.counts.get(stream=self.stream)))
                self.stream.synchronize()
                t3 = time.perf_counter_ns()
            except BaseException:
                # An upload or kernel may still be in flight on the staging buffers the next batch reuses.
                self.stream.synchronize()
                raise
        times.pre_ns, times.infer_ns, times.post_ns = t1 - t0, t2 - t1, t3 - t2
        return out


def runs_on_device(session: OnnxSession) -> bool:
    """Whether an instance takes the device path: a CUDA session, the CUDA kernels and CuPy."""
    if session.device != "cuda" or not kernels.cuda_available():
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        log.warning("CUDA session without CuPy: the pipeline's pre- and post-processing run on the host")
        return False
    return True


class DetectionExecutor:
    """Runs a batch of frame requests on an instance, on its host or device path; one
    :class:`FrameResult` per request, labelled with ``labels``."""

    def __init__(self, name: str, detector: Detector, cfg: DetectionConfig, max_batch_size: int, stats: ModelStats,
                 labels: Sequence[str] = ()) -> None:
        self.name = name
        self.detector = detector
        self.letterbox = Letterbox(cfg, stretch=detector.head.stretch)
        self.decode = BoxDecoder(detector.head, cfg)
        self.stats = stats
        self.labels = labels
        rows = max(max_batch_size, 1)
        fb = detector.head.fixed_batch
        if fb:
            rows = math.ceil(rows / fb) * fb
        self._rows = rows
        self.paths: list[HostPath | DevicePath] = [self._path(s) for s in detector.instances.sessions]

    def _path(self, session: Any) -> HostPath | DevicePath:
        return DevicePath(self._rows, session.device_id) if runs_on_device(session) else HostPath(self._rows)

    def instance_added(self) -> None:
        """The detector's instances have one more (autoscaling): its own input buffers."""
        self.paths.append(self._path(self.detector.instances.sessions[-1]))

    def instance_removed(self) -> None:
        self.paths.pop()

    def execute(self, instance: int, batch: Sequence[InferRequest]) -> list[FrameResult]:
        requests = cast("Sequence[FrameRequest]", batch)  # what DetectionModel.validate made of them
        frames = [f for r in requests for f in r.frames]
        n = len(frames)
        sizes = np.array([f.shape[:2] for f in frames], np.int32)
        times = StageTimes(batch_size=n)
        started = time.perf_counter_ns()
        try:
            dets, counts, keypoints, polygons = self.paths[instance].run(self, instance, frames, sizes, requests, times)
        except PeregrineError:
            raise
        except Exception as e:
            log.error("pipeline '%s' failed on a batch of %d frames: %s", self.name, n, e)
            raise ModelExecutionError(self.name, str(e)) from None
        # A head may give boxes with x2 < x1 or y2 < y1: they are answered as they are (what the model
        # said), and counted.
        real = np.arange(dets.shape[1])[None, :] < counts[:, None]
        self.stats.record_inverted(int((((dets[..., 2] < dets[..., 0]) | (dets[..., 3] < dets[..., 1])) & real).sum()))
        results, row = [], 0
        for r in requests:
            k = len(r.frames)
            per_frame = [dets[i, : int(counts[i])] for i in range(row, row + k)]
            points = None if keypoints is None else [keypoints[i, : int(counts[i])] for i in range(row, row + k)]
            outlines = None if polygons is None else polygons[row : row + k]
            results.append(FrameResult(per_frame, times, self.labels, [f.shape[:2] for f in r.frames],
                                       keypoints=points, polygons=outlines))
            row += k
        self.stats.record_batch(n, len(requests), times.pre_ns, times.infer_ns, times.post_ns,
                                executed=self.detector.padded(n))
        compute = ComputeTimes(started, times.pre_ns, times.infer_ns, times.post_ns)
        for r in requests:
            r.compute = compute
        return results
