"""A detection pipeline model (``platform = "peregrine_detection"``): frames in, boxes out.

    decode (caller's thread: pipeline.images) -> queue (scheduling.batcher) -> letterbox (pipeline.stages)
    -> ONNX Runtime (runtime) -> decode head + NMS + map back (pipeline.stages) -> boxes in frame pixels

Composed of a detector (its instances and head, :mod:`peregrine.server.pipeline`), the pipeline's
executor and a scheduler. The OIP transport drives it with an ``IMAGE`` (uint8 [N, H, W, 3]) or
``ENCODED`` (BYTES [N, 1]) input and gets ``DETECTIONS`` (FP32 [N, K, 6]: x1, y1, x2, y2, score, class
id) and ``COUNTS`` (INT32 [N, 1]), and from a pose model ``KEYPOINTS`` too (FP32 [N, K, P, D]: each box's P
keypoints, x, y and a visibility score when D is 3); ``peregrine.v1.DetectionService`` drives it with a
:class:`~peregrine.server.core.types.DetectRequest` and gets a :class:`~peregrine.server.core.types.FrameResult`.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..config.model import DetectionConfig, ModelConfig
from ..core.errors import InvalidArgument, ModelLoadError, clipped
from ..core.stats import ModelStats, failure_reason
from ..core.types import (
    DetectOptions,
    DetectRequest,
    EncodedImage,
    FrameRequest,
    FrameResult,
    InferRequest,
    InferResponse,
    ModelDescription,
    OptionOverrides,
    TensorSpec,
)
from ..observability import drift
from ..pipeline import images
from ..pipeline.executor import DetectionExecutor, Detector
from ..pipeline.head import HeadInfo, inspect_head
from ..runtime.instances import Instances, open_sessions
from ..runtime.metadata import parse_labels
from ..scheduling.ladder import RungOutlook
from .base import describe
from .loading import (
    DEFAULT_MAX_BATCH_SIZE,
    Scheduler,
    attach_autoscaler,
    model_file,
    resolve_batch_buckets,
    resolve_batching,
)

log = logging.getLogger(__name__)

IMAGE, ENCODED = "IMAGE", "ENCODED"
DETECTIONS, COUNTS, KEYPOINTS = "DETECTIONS", "COUNTS", "KEYPOINTS"
# Exactly one of the two inputs is given.
PIPELINE_INPUTS = [TensorSpec(IMAGE, "UINT8", (-1, -1, -1, 3), optional=True),
                   TensorSpec(ENCODED, "BYTES", (-1, 1), optional=True)]
PIPELINE_OUTPUTS = [TensorSpec(DETECTIONS, "FP32", (-1, -1, 6)), TensorSpec(COUNTS, "INT32", (-1, 1))]
_OIP_OPTIONS = ("score_threshold", "iou_threshold", "max_detections")


def pipeline_outputs(head: HeadInfo) -> list[TensorSpec]:
    """The OIP outputs of a pipeline over ``head``: a pose model's add KEYPOINTS [N, K, P, D], rows as
    DETECTIONS'."""
    if head.task != "pose":
        return PIPELINE_OUTPUTS
    return [*PIPELINE_OUTPUTS, TensorSpec(KEYPOINTS, "FP32", (-1, -1, *head.keypoints))]


@dataclass
class DetectionModel:
    """One loaded version of a detection pipeline (see the module docstring)."""

    validate_decodes: ClassVar[bool] = True  # validate() decodes images: the data plane runs it off the loop

    name: str
    version: int
    config: ModelConfig
    detector: Detector
    max_batch_size: int
    labels: list[str] = field(default_factory=list)
    stats: ModelStats = field(default_factory=ModelStats)
    path: Path | None = None  # the detector's ONNX file: autoscaling opens more instances of it
    scheduler: Scheduler = field(init=False)
    # What each validated request holds of the in-flight budget, by id() of its FrameRequest.
    _holds: dict[int, images.Hold] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        executor = self._executor = self.make_executor()
        self.scheduler = Scheduler(self.name, self.config, self.max_batch_size, self.detector.instances.buckets,
                                   executor, len(self.detector.instances), self._shape_key, self._size,
                                   self.detector.instances.device)
        attach_autoscaler(self.scheduler, self.name, self.config, self.detector.instances, self.path, executor,
                          self.stats)

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, version: int, version_dir: Path, config: ModelConfig) -> DetectionModel:
        cfg = config.detection
        assert cfg is not None, "a detection pipeline needs a [detection] block"
        source = f"{name}/{version}"
        path = model_file(name, version, version_dir, config)
        sessions = open_sessions(path, config)
        head = inspect_head(sessions[0], cfg, source)
        graph_in, graph_out = sessions[0].tensor_specs()
        if config.max_batch_size is None:
            # A static batch (ultralytics exports batch 1 by default) still takes requests of several frames:
            # they run in chunks of it (Detector.run).
            fb = head.fixed_batch
            max_batch = DEFAULT_MAX_BATCH_SIZE if fb == 0 else -(-DEFAULT_MAX_BATCH_SIZE // fb) * fb
        else:
            max_batch = config.max_batch_size if head.fixed_batch else resolve_batching(
                config, graph_in, graph_out, source)
        max_batch = max(max_batch, 1)
        labels = list(cfg.labels) or parse_labels(sessions[0].metadata())
        if head.num_classes and len(labels) < head.num_classes:
            labels += [f"class{i}" for i in range(len(labels), head.num_classes)]
        if cfg.classes and head.num_classes and max(cfg.classes) >= head.num_classes:
            raise ModelLoadError(f"{source}: detection.classes {cfg.classes} names ids the model does not have "
                                 f"(it has {head.num_classes} classes)")
        buckets = () if head.fixed_batch else resolve_batch_buckets(config, max_batch, sessions[0].device, source)
        instances = Instances.with_buckets(sessions, buckets, path, config)
        model = cls(name, version, config, Detector(instances, head), max_batch, labels, path=path)
        if config.warmup:
            try:
                model.warm_up()
            except Exception as e:  # made-up frames: a failure here never makes the model unavailable
                log.warning("%s: warm-up on synthetic frames failed, serving the model without it: %s", source, e)
        log.info("%s: detection pipeline on %s, input %dx%d, layout %s, %d classes, batches up to %d",
                 source, ", ".join(instances.providers), head.height, head.width, head.layout, head.num_classes,
                 max_batch)
        return model

    def make_executor(self, stats: ModelStats | None = None) -> DetectionExecutor:
        """An executor of this pipeline's batches, counting into ``stats`` (default: the model's)."""
        return DetectionExecutor(self.name, self.detector, self.settings, self.max_batch_size,
                                 self.stats if stats is None else stats, self.labels)

    def warm_up(self) -> None:
        """Run every instance on frames of two sizes at each batch bucket (GPU providers: each bucket's
        session plans its shape once, here), or at batch 1 and the largest batch."""
        executor = self.make_executor(ModelStats())  # warm-up runs are not the model's statistics ...
        executor.paths = self._executor.paths  # ... but they touch the buffers that will serve
        frame = np.full((480, 640, 3), 114, np.uint8)
        tall = np.full((720, 405, 3), 60, np.uint8)
        one = FrameRequest(self.name, frames=[frame], options=self.default_options())
        for n in self.detector.instances.buckets or sorted({1, self.max_batch_size}):
            req = FrameRequest(self.name, frames=[frame if i % 2 else tall for i in range(n)],
                               options=self.default_options())
            for instance in range(len(self.detector.instances)):
                executor.execute(instance, [req])
        # One frame once more, timed now that everything is warm: the batcher's cost models start from it,
        # not from whatever the first request meets (the SLO ladder routes by them from the first request).
        began = time.perf_counter()
        executor.execute(0, [one])
        self.scheduler.seed(1, time.perf_counter() - began)

    async def start(self) -> None:
        await self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()

    def describe(self) -> ModelDescription:
        head, cfg = self.head, self.settings
        if head.layout in ("end2end", "yolov10", "rtdetr"):
            nms = "none: the head is end-to-end (NMS-free), iou_threshold and agnostic_nms are not used"
        else:
            nms = f"{'class-agnostic' if cfg.agnostic_nms else 'per-class'} greedy, iou_threshold {cfg.iou_threshold}"
        details = (("detection_task", head.task), ("detection_layout", head.layout),
                   ("detection_input_size", f"{head.height}x{head.width}"),
                   ("detection_classes", str(head.num_classes)), ("detection_resize", cfg.resize),
                   ("detection_fit", "stretch" if head.stretch else "letterbox"),
                   ("detection_nms", nms))
        if head.task == "pose":
            details += (("detection_keypoints", "x".join(map(str, head.keypoints))),)
        return describe(self.name, self.version, self.config.platform, PIPELINE_INPUTS, pipeline_outputs(head),
                        self.max_batch_size, self.config, self.detector.instances, details)

    @property
    def queue_depth(self) -> int:
        return self.scheduler.queue_depth

    def outlook(self, now: float) -> RungOutlook:
        return self.scheduler.outlook(now)

    @property
    def head(self) -> HeadInfo:
        return self.detector.head

    @property
    def settings(self) -> DetectionConfig:
        assert self.config.detection is not None
        return self.config.detection

    # -- batching hooks -------------------------------------------------------------------------
    def _size(self, request: InferRequest) -> int:
        return len(request.frames)  # type: ignore[attr-defined]

    def _shape_key(self, request: InferRequest) -> Hashable:
        return None  # frames of any size share a batch

    # -- requests -------------------------------------------------------------------------------
    def default_options(self) -> DetectOptions:
        cfg = self.settings
        return DetectOptions(cfg.score_threshold, cfg.iou_threshold, cfg.max_detections, tuple(cfg.classes),
                             cfg.agnostic_nms)

    def options(self, overrides: OptionOverrides) -> DetectOptions:
        """The pipeline's defaults with a request's overrides, checked (InvalidArgument names the field)."""
        base = self.default_options()
        prefix = overrides.field_prefix

        def unit(name: str, value: Any, default: float) -> float:
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"{prefix}{name}: expected a number in [0, 1], got {clipped(repr(value))}")
            return float(value)

        max_detections = overrides.max_detections
        if max_detections is None:
            max_det = base.max_detections
        elif isinstance(max_detections, bool) or not isinstance(max_detections, int) or not (
                1 <= max_detections <= base.max_detections):
            raise InvalidArgument(f"{prefix}max_detections: expected an integer in 1..{base.max_detections}, "
                                  f"got {max_detections!r}")
        else:
            max_det = max_detections
        cls_ids = base.classes
        if overrides.classes:
            n = self.head.num_classes
            bad = [c for c in overrides.classes
                   if isinstance(c, bool) or not isinstance(c, int) or c < 0 or (n and c >= n)]
            if bad:
                limit = f"0..{n - 1}" if n else ">= 0"
                raise InvalidArgument(f"{prefix}classes: expected class ids in {limit}, got {bad}")
            cls_ids = tuple(int(c) for c in overrides.classes)
        return DetectOptions(unit("score_threshold", overrides.score_threshold, base.score_threshold),
                             unit("iou_threshold", overrides.iou_threshold, base.iou_threshold), max_det, cls_ids,
                             base.agnostic)

    def check_count(self, n: int, field: str) -> None:
        if not 1 <= n <= self.max_batch_size:
            raise InvalidArgument(f"{field}: expected 1..{self.max_batch_size} images (max_batch_size), got {n}")

    def open_image(self, image: Any) -> images.PendingFrame:
        """A client's image (:class:`EncodedImage` or :class:`RawImage`), its size read and checked, not yet
        decoded. Raises InvalidArgument naming the image's field."""
        cfg = self.settings
        if isinstance(image, EncodedImage):
            return images.open_encoded(image.data, f"{image.field}.encoded", cfg.frame_channel_order, cfg.max_pixels)
        return images.open_raw(image.data, image.height, image.width, image.channels, f"{image.field}.raw",
                               cfg.max_pixels, encoding=image.encoding, step=image.step,
                               is_bigendian=image.is_bigendian, order=cfg.frame_channel_order)

    def decode_image(self, image: Any) -> np.ndarray:
        """A client's image as a uint8 [H, W, 3] frame in the pipeline's channel order (one image, outside
        any request's budget). Raises InvalidArgument naming the image's field."""
        return self.open_image(image).decode()

    def validate(self, request: InferRequest) -> FrameRequest:
        """The request as decoded frames with checked options: a :class:`DetectRequest` (its images
        decoded), or an OIP request (``IMAGE`` or ``ENCODED``, with optional parameters ``score_threshold``,
        ``iou_threshold``, ``max_detections``). Runs in the caller's thread: decoding never blocks the loop.

        Every image's size is read (from its header) and checked before any is decoded: against
        ``max_pixels`` and the letterbox kernel's side limit per image, ``max_decoded_bytes_per_request``
        for them all (InvalidArgument), then held from the server's in-flight budget until the request is
        answered (ResourceExhausted when it does not fit). So whatever passes here, the kernels take."""
        if isinstance(request, FrameRequest):
            return request
        t0 = time.perf_counter_ns()
        if isinstance(request, DetectRequest):
            self.check_count(len(request.images), "images")
            pending = [self.open_image(img) for img in request.images]
            options = self.options(request.overrides)
            field_name = "images"
        else:
            pending, field_name = self._oip_images(request)
            p = {k: _number(k, v) for k, v in request.parameters.items() if k in _OIP_OPTIONS}
            options = self.options(OptionOverrides(p.get("score_threshold"), p.get("iou_threshold"),
                                                   p.get("max_detections"), field_prefix="parameters."))
        frames, hold = images.decode_frames(pending, field_name, self.settings.max_decoded_bytes_per_request)
        prepared = FrameRequest(
            model_name=request.model_name, model_version=request.model_version, id=request.id,
            requested_outputs=list(request.requested_outputs), parameters=request.parameters,
            deadline=request.deadline, priority=request.priority, background=request.background,
            ordering_key=request.ordering_key,
            arrival=request.arrival, trace=request.trace,
            frames=frames, options=options, decode_ns=time.perf_counter_ns() - t0,
        )
        # The frames' bytes are given back when the request is answered (detect), or, for a request that
        # never runs (a stream frame past its deadline, a call that ended first), when it is freed.
        self._holds[id(prepared)] = hold
        weakref.finalize(prepared, self._release, id(prepared))
        return prepared

    def _release(self, key: int) -> None:
        hold = self._holds.pop(key, None)
        if hold is not None:
            hold.release()

    def _oip_images(self, request: InferRequest) -> tuple[list[images.PendingFrame], str]:
        given = sorted(request.inputs)
        if given not in ([IMAGE], [ENCODED]):
            raise InvalidArgument(
                f"model '{self.name}': expected one input, {IMAGE} (UINT8 [N,H,W,3]) or {ENCODED} "
                f"(BYTES [N,1]), got {', '.join(given) or 'none'}"
            )
        names = [spec.name for spec in pipeline_outputs(self.head)]
        for name in request.requested_outputs:
            if name not in names:
                raise InvalidArgument(f"model '{self.name}': unknown output '{clipped(name)}'; the model has "
                                      f"{', '.join(names)}")
        cfg = self.settings
        if IMAGE in request.inputs:
            array = request.inputs[IMAGE]
            if array.dtype != np.uint8 or array.ndim != 4:
                raise InvalidArgument(f"input '{IMAGE}': expected UINT8 [N,H,W,3], got {array.dtype} "
                                      f"{list(array.shape)}")
            self.check_count(array.shape[0], f"input '{IMAGE}'")
            if hasattr(array, "__cuda_array_interface__"):  # frames in a CUDA shared-memory region
                # Checked on the shape first: the copy to the host is what the limits bound.
                for i in range(len(array)):
                    images.check_size(f"input '{IMAGE}'[{i}]", int(array.shape[1]), int(array.shape[2]),
                                      cfg.max_pixels)
                images.check_request_bytes(len(array) * int(array.shape[1]) * int(array.shape[2]) * 3,
                                           f"input '{IMAGE}'", cfg.max_decoded_bytes_per_request)
                import cupy

                array = cupy.asnumpy(array)
            return [images.open_array(array[i], f"input '{IMAGE}'[{i}]", cfg.max_pixels)
                    for i in range(len(array))], f"input '{IMAGE}'"
        array = request.inputs[ENCODED]
        if array.dtype != object or array.ndim != 2 or array.shape[1] != 1:
            raise InvalidArgument(f"input '{ENCODED}': expected BYTES [N,1], got {array.dtype} {list(array.shape)}")
        self.check_count(array.shape[0], f"input '{ENCODED}'")
        return [images.open_encoded(array[i, 0], f"input '{ENCODED}'[{i}]", cfg.frame_channel_order, cfg.max_pixels)
                for i in range(len(array))], f"input '{ENCODED}'"

    async def detect(self, request: FrameRequest) -> FrameResult:
        """Queue, run and answer a request of decoded frames."""
        ok = False
        reason = "OTHER"  # why it failed, in Triton's words (failure_reason)
        try:
            result: FrameResult = await self.scheduler.submit(request)
            ok = True
        except BaseException as e:
            reason = failure_reason(e)
            raise
        finally:
            self._release(id(request))  # answered: its frames leave the in-flight budget
            self.stats.record_request(ok, _since(request.arrival), request.queue_ns, reason)
        drift.observe(self.name, request.frames, result.detections)  # sampled, off the path when on
        result.model_name, result.model_version = self.name, str(self.version)
        result.decode_ns = request.decode_ns
        result.queue_ns = request.queue_ns or 0
        result.total_ns = _since(request.arrival)
        return result

    async def infer(self, request: InferRequest) -> InferResponse:
        """An OIP answer (``DETECTIONS`` padded to the most boxes of any frame, ``COUNTS``; a pose model's
        ``KEYPOINTS`` padded as ``DETECTIONS``)."""
        assert isinstance(request, FrameRequest), "validate() turns OIP requests into frame requests"
        result = await self.detect(request)
        outputs = {DETECTIONS: _padded(result.detections, (6,)),
                   COUNTS: np.array([[len(d)] for d in result.detections], np.int32)}
        if result.keypoints is not None:
            outputs[KEYPOINTS] = _padded(result.keypoints, self.head.keypoints)
        if request.requested_outputs:
            outputs = {k: outputs[k] for k in request.requested_outputs}
        return InferResponse(self.name, str(self.version), request.id, outputs)


def _padded(rows: list[np.ndarray], tail: tuple[int, ...]) -> np.ndarray:
    """Per-frame rows [k_i, *tail] as one float32 [N, max k_i, *tail] tensor, zeros past each frame's own."""
    out = np.zeros((len(rows), max([len(r) for r in rows] + [0]), *tail), np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _number(name: str, value: Any) -> Any:
    """An OIP parameter as a number: clients without float parameters (tritonclient) send strings."""
    if not isinstance(value, str):
        return value
    try:
        return int(value) if name == "max_detections" else float(value)
    except ValueError:
        raise InvalidArgument(f"parameters.{clipped(name)}: expected a number, got {clipped(repr(value))}") from None


def _since(monotonic: float) -> int:
    """Nanoseconds since a time.monotonic() stamp."""
    return int((time.monotonic() - monotonic) * 1e9)
