"""The detection pipeline: frames in, boxes out.

    decode (transport thread) -> queue (dynamic batcher) -> letterbox kernel -> ONNX Runtime
    -> decode head + NMS + map back kernel -> boxes in original-image pixels

A :class:`DetectionPipeline` is a model version of the repository (``platform = "peregrine_detection"``):
the OIP transport drives it with an ``IMAGE`` (uint8 [N, H, W, 3]) or ``ENCODED`` (BYTES [N, 1]) input
and gets ``DETECTIONS`` (FP32 [N, K, 6]: x1, y1, x2, y2, score, class id) and ``COUNTS`` (INT32 [N, 1]);
``peregrine.v1.DetectionService`` drives it with :meth:`DetectionPipeline.detect`.

Batching happens on the model step: frames of any size share one batch, each letterboxed into its row
of an input tensor preallocated per instance. On a CUDA instance the frames are staged once in pinned
host memory and uploaded; letterbox, the model (IO binding) and NMS then read and write device memory,
and only the packed detections come back.
"""

from __future__ import annotations

import ast
import logging
import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ... import kernels
from ..config import DetectionConfig, ModelConfig
from ..errors import InvalidArgument, ModelExecutionError, ModelLoadError, PeregrineError
from ..inference import InferRequest, InferResponse, TensorSpec
from ..model import ModelVersion, _gpu, export_size, open_bucket_sessions, resolve_batch_buckets, resolve_batching
from ..runtime.onnx import OnnxSession
from ..stats import ModelStats
from ..tracing import stamp_compute
from . import images

log = logging.getLogger(__name__)

IMAGE, ENCODED = "IMAGE", "ENCODED"
DETECTIONS, COUNTS = "DETECTIONS", "COUNTS"
# Exactly one of the two inputs is given.
PIPELINE_INPUTS = [TensorSpec(IMAGE, "UINT8", (-1, -1, -1, 3), optional=True),
                   TensorSpec(ENCODED, "BYTES", (-1, 1), optional=True)]
PIPELINE_OUTPUTS = [TensorSpec(DETECTIONS, "FP32", (-1, -1, 6)), TensorSpec(COUNTS, "INT32", (-1, 1))]
DEFAULT_MAX_BATCH_SIZE = 8


@dataclass(frozen=True)
class DetectOptions:
    """Post-processing settings of one request (the pipeline's defaults with the request's overrides)."""

    score_threshold: float
    iou_threshold: float
    max_detections: int
    classes: tuple[int, ...] = ()
    agnostic: bool = False


@dataclass
class FrameRequest(InferRequest):
    """A request of decoded frames (each uint8 [H, W, 3], any size) for a detection pipeline."""

    frames: list[np.ndarray] = field(default_factory=list)
    options: DetectOptions | None = None
    decode_ns: int = 0


@dataclass
class StageTimes:
    """Nanoseconds spent per stage by the batch a request ran in."""

    pre_ns: int = 0
    infer_ns: int = 0
    post_ns: int = 0
    batch_size: int = 0


@dataclass
class FrameResult:
    """Per frame, float32 [k, 6] detections (x1, y1, x2, y2, score, class id) in original pixels."""

    detections: list[np.ndarray]
    times: StageTimes
    decode_ns: int = 0
    queue_ns: int = 0
    total_ns: int = 0

    def stages(self) -> dict[str, int]:
        """Nanoseconds per stage: decode, queue, pre, infer, post."""
        t = self.times
        return {"decode": self.decode_ns, "queue": self.queue_ns, "pre": t.pre_ns, "infer": t.infer_ns,
                "post": t.post_ns}


# -- settings resolved at load ---------------------------------------------------------------------
@dataclass(frozen=True)
class HeadInfo:
    input_name: str
    input_dtype: np.dtype[Any]
    height: int
    width: int
    output_name: str
    layout: str
    num_classes: int  # 0 when the head does not say (end-to-end layouts)
    fixed_batch: int  # the model's static batch size, 0 when dynamic


def detect_layout(shape: Sequence[int]) -> str:
    """The head layout of an output of shape [N, d1, d2]: [N, K, 6] end2end, [N, 4+C, A] yolov8 (fewer
    rows than columns), else [N, A, 5+C] yolov5."""
    _, d1, d2 = shape
    if d2 == 6 and d1 != 6:
        return "end2end"
    return "yolov8" if d1 < d2 else "yolov5"


def _num_classes(layout: str, shape: Sequence[int]) -> int:
    lid = kernels.LAYOUTS[layout]
    return shape[1] - 4 if lid == 0 else shape[2] - 5 if lid == 1 else 0


def parse_labels(metadata: dict[str, str]) -> list[str]:
    """Class names from a model's ``names`` metadata (ultralytics writes ``{0: 'person', ...}``)."""
    raw = metadata.get("names")
    if not raw:
        return []
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return []
    if isinstance(value, dict) and all(isinstance(k, int) for k in value):
        return [str(value.get(i, f"class{i}")) for i in range(max(value) + 1)] if value else []
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _inspect(session: OnnxSession, cfg: DetectionConfig, source: str) -> HeadInfo:
    graph_in, graph_out = session.tensor_specs()
    images_in = [t for t in graph_in if len(t.shape) == 4]
    if len(graph_in) != 1 or not images_in:
        described = ", ".join(f"{t.name} {t.describe()}" for t in graph_in)
        raise ModelLoadError(f"{source}: a detection pipeline needs a model with one image input "
                             f"[N, 3, H, W]; the model has {described}")
    spec = images_in[0]
    if spec.datatype not in ("FP32", "FP16") or spec.shape[1] not in (3, -1):
        raise ModelLoadError(f"{source}: input '{spec.name}': expected FP32 or FP16 [N, 3, H, W], "
                             f"got {spec.describe()}")
    if cfg.input_size is not None:
        height, width = cfg.input_size
        if spec.shape[2] not in (-1, height) or spec.shape[3] not in (-1, width):
            raise ModelLoadError(f"{source}: detection.input_size {cfg.input_size} does not fit input "
                                 f"'{spec.name}' {spec.describe()}")
    elif spec.shape[2] > 0 and spec.shape[3] > 0:
        height, width = spec.shape[2], spec.shape[3]
    elif (exported := export_size(session.metadata())) is not None:
        height, width = exported  # an ultralytics export with dynamic=True: the size it was exported at
        log.info("%s: input '%s' %s is dynamic; using the exported size %dx%d from the model's 'imgsz' "
                 "metadata (detection.input_size overrides it)", source, spec.name, spec.describe(), height, width)
    else:
        raise ModelLoadError(f"{source}: input '{spec.name}' {spec.describe()} has a dynamic height or width "
                             "and the model carries no 'imgsz' metadata; set detection.input_size = [height, width]")
    heads = [t for t in graph_out if len(t.shape) == 3]
    if not heads:
        described = ", ".join(f"{t.name} {t.describe()}" for t in graph_out)
        raise ModelLoadError(f"{source}: a detection pipeline needs a 3-D detection head output; the model has "
                             f"{described}")
    dtype = np.dtype(np.float16 if spec.datatype == "FP16" else np.float32)
    fixed = spec.shape[0] if spec.shape[0] > 0 else 0
    # The head's shape from a real run: dynamic dimensions and the layout are only known then.
    probe = np.full((max(fixed, 1), 3, height, width), 114 / 255, dtype)
    try:
        head = session.run({spec.name: probe}, [heads[0].name])[0]
    except Exception as e:
        raise ModelLoadError(f"{source}: the detector failed on a {height}x{width} probe image: {e}") from None
    if head.ndim != 3:
        raise ModelLoadError(f"{source}: output '{heads[0].name}' came back with shape {list(head.shape)}, "
                             "expected 3 dimensions")
    layout = detect_layout(head.shape) if cfg.layout == "auto" else cfg.layout
    lid = kernels.LAYOUTS[layout]
    _, d1, d2 = head.shape
    if (lid == 0 and d1 < 5) or (lid == 1 and d2 < 6) or (lid == 2 and d2 != 6):
        raise ModelLoadError(f"{source}: output '{heads[0].name}' {list(head.shape)} does not fit layout '{layout}'")
    names = len(parse_labels(session.metadata()))
    classes = _num_classes(layout, head.shape)
    if cfg.layout == "auto" and layout == "yolov5" and names and classes != names and d2 - 4 == names:
        # [N, K, 4+C] with as many classes as the model names: boxes and class scores without objectness
        # (DETR-style heads such as RT-DETR), which no layout here decodes. Refuse rather than misread it.
        raise ModelLoadError(
            f"{source}: output '{heads[0].name}' {list(head.shape)} has 4 + {names} columns for the model's "
            f"{names} class names, a head without objectness (DETR-style), which Peregrine does not decode; "
            "supported: yolov8/yolo11 [N, 4+C, A], yolov5 [N, A, 5+C], end2end [N, K, 6] "
            "(set detection.layout to force one)")
    return HeadInfo(spec.name, dtype, height, width, heads[0].name, layout, _num_classes(layout, head.shape), fixed)


# -- running batches -------------------------------------------------------------------------------
class DetectionExecutor:
    """The :class:`~peregrine.server.scheduling.batcher.BatchExecutor` of a detection pipeline."""

    def __init__(self, name: str, sessions: list[OnnxSession], head: HeadInfo, cfg: DetectionConfig,
                 max_batch_size: int, stats: ModelStats, buckets: tuple[int, ...] = (),
                 bucket_sessions: list[dict[int, OnnxSession]] | None = None) -> None:
        self.name = name
        self.sessions = sessions
        self.buckets = buckets
        self.bucket_sessions = bucket_sessions or []
        self.head = head
        self.cfg = cfg
        self.max_batch_size = max_batch_size
        self.stats = stats
        self.swap_rb = cfg.frame_channel_order != cfg.model_channel_order
        rows = max(max_batch_size, 1)
        if head.fixed_batch:
            rows = math.ceil(rows / head.fixed_batch) * head.fixed_batch
        self._rows = rows
        self._host_inputs: list[np.ndarray | None] = [None] * len(sessions)
        self._device = [_DeviceStage(s.device_id) if _on_gpu(s) else None for s in sessions]

    def execute(self, instance: int, requests: Sequence[InferRequest]) -> list[FrameResult]:
        frames = [f for r in requests for f in r.frames]  # type: ignore[attr-defined]
        n = len(frames)
        sizes = np.array([f.shape[:2] for f in frames], np.int32)
        device = self._device[instance]
        times = StageTimes(batch_size=n)
        started = time.perf_counter_ns()
        try:
            if device is not None:
                dets, counts = device.run(self, instance, frames, sizes, requests, times)
            else:
                dets, counts = self._run_host(instance, frames, sizes, requests, times)
        except PeregrineError:
            raise
        except Exception as e:
            log.error("pipeline '%s' failed on a batch of %d frames: %s", self.name, n, e)
            raise ModelExecutionError(self.name, str(e)) from None
        results, row = [], 0
        for r in requests:
            k = len(r.frames)  # type: ignore[attr-defined]
            per_frame = [dets[i, : int(counts[i])] for i in range(row, row + k)]
            results.append(FrameResult(per_frame, times))
            row += k
        self.stats.record_batch(n, len(requests), times.pre_ns, times.infer_ns, times.post_ns, executed=self._padded(n))
        stamp_compute(requests, started, times.pre_ns, times.infer_ns, times.post_ns)
        return results

    # The model runs on the batch padded up to its bucket (the rows past the batch hold earlier frames or
    # zeros: real-looking input, never read back), or to a multiple of the model's static batch size.
    def _padded(self, n: int) -> int:
        fb = self.head.fixed_batch
        if fb:
            return math.ceil(n / fb) * fb
        return next((b for b in self.buckets if b >= n), n)

    def _run_model(self, instance: int, tensor: Any, on_device: bool) -> Any:
        h, fb = self.head, self.head.fixed_batch
        per_bucket = self.bucket_sessions[instance] if self.bucket_sessions else {}
        session = per_bucket.get(len(tensor), self.sessions[instance])
        if not fb or len(tensor) == fb:
            return session.run({h.input_name: tensor}, [h.output_name], outputs_on_device=on_device)[0]
        parts = [session.run({h.input_name: tensor[i : i + fb]}, [h.output_name], outputs_on_device=on_device)[0]
                 for i in range(0, len(tensor), fb)]
        if on_device:
            import cupy

            return cupy.concatenate(parts)
        return np.concatenate(parts)

    def _postprocess(self, head: Any, params: Any, sizes: Any, requests: Sequence[InferRequest],
                     stream: Any = None) -> tuple[Any, Any]:
        """Runs decode + NMS + map back per run of consecutive requests that share options; returns
        (dets [n, max_det, 6], counts [n]) on the head's device."""
        cfg = self.cfg
        if isinstance(head, np.ndarray):
            xp: Any = np
        else:
            import cupy as xp
        n = len(sizes)
        dets = xp.zeros((n, cfg.max_detections, 6), np.float32)
        counts = xp.zeros((n,), np.int32)
        row = 0
        i = 0
        while i < len(requests):
            opts = requests[i].options  # type: ignore[attr-defined]
            j, k = i, 0
            while j < len(requests) and requests[j].options == opts:  # type: ignore[attr-defined]
                k += len(requests[j].frames)  # type: ignore[attr-defined]
                j += 1
            out = kernels.detect_postprocess(
                head[row : row + k], self.head.layout, conf=opts.score_threshold, iou=opts.iou_threshold,
                max_det=opts.max_detections, classes=list(opts.classes) or None, agnostic=opts.agnostic,
                params=params[row : row + k], orig_sizes=sizes[row : row + k],
                max_candidates=cfg.max_candidates, stream=stream,
            )
            dets[row : row + k, : opts.max_detections] = out.dets
            counts[row : row + k] = out.counts
            row += k
            i = j
        return dets, counts

    def _run_host(self, instance: int, frames: list[np.ndarray], sizes: np.ndarray,
                  requests: Sequence[InferRequest], times: StageTimes) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter_ns()
        buf = self._host_inputs[instance]
        if buf is None:
            buf = np.full((self._rows, 3, self.head.height, self.head.width), 0, self.head.input_dtype)
            self._host_inputs[instance] = buf
        n = len(frames)
        params = kernels.letterbox_into(buf[:n], frames, swap_rb=self.swap_rb, scale=self.cfg.scale,
                                        pad_value=self.cfg.pad_value)
        t1 = time.perf_counter_ns()
        head = self._run_model(instance, buf[: self._padded(n)], on_device=False)[:n]
        if head.dtype != np.float32:
            head = head.astype(np.float32)
        head = np.ascontiguousarray(head)
        t2 = time.perf_counter_ns()
        dets, counts = self._postprocess(head, params, sizes, requests)
        t3 = time.perf_counter_ns()
        times.pre_ns, times.infer_ns, times.post_ns = t1 - t0, t2 - t1, t3 - t2
        return dets, counts


def _on_gpu(session: OnnxSession) -> bool:
    """Whether this instance runs the device path: a CUDA session, the CUDA kernels and CuPy."""
    if session.device != "cuda" or not kernels.cuda_available():
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        log.warning("CUDA session without CuPy: the pipeline's pre- and post-processing run on the host")
        return False
    return True


class _DeviceStage:
    """Per-instance device buffers: a pinned host staging area and a device copy of the frames, and the
    model's input tensor. Grown when a batch needs more; never freed while the instance lives."""

    def __init__(self, device_id: int) -> None:
        import cupy

        self.cupy = cupy
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
            requests: Sequence[InferRequest], times: StageTimes) -> tuple[np.ndarray, np.ndarray]:
        cp = self.cupy
        h = ex.head
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
                    self._input = cp.zeros((ex._rows, 3, h.height, h.width), h.input_dtype)
                n = len(frames)
                params = kernels.letterbox_into(self._input[:n], views, swap_rb=ex.swap_rb, scale=ex.cfg.scale,
                                                pad_value=ex.cfg.pad_value, stream=self.stream)
                # ONNX Runtime runs on its own stream: the input must be complete before it starts.
                self.stream.synchronize()
                t1 = time.perf_counter_ns()
                head = ex._run_model(instance, self._input[: ex._padded(n)], on_device=True)[:n]
                if head.dtype != cp.float32:
                    head = head.astype(cp.float32)
                head = cp.ascontiguousarray(head)
                t2 = time.perf_counter_ns()
                dets, counts = ex._postprocess(head, params, sizes, requests, stream=self.stream)
                out = dets.get(stream=self.stream), counts.get(stream=self.stream)
                self.stream.synchronize()
                t3 = time.perf_counter_ns()
            except BaseException:
                # An upload or kernel may still be in flight on the staging buffers the next batch reuses.
                self.stream.synchronize()
                raise
        times.pre_ns, times.infer_ns, times.post_ns = t1 - t0, t2 - t1, t3 - t2
        return out


# -- the model -------------------------------------------------------------------------------------
@dataclass
class DetectionPipeline(ModelVersion):
    """A detection pipeline model version (see the module docstring)."""

    head: HeadInfo | None = None
    labels: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, name: str, version: int, version_dir: Path, config: ModelConfig) -> DetectionPipeline:
        cfg = config.detection
        assert cfg is not None, "a detection pipeline needs a [detection] block"
        path = version_dir / config.default_model_filename
        source = f"{name}/{version}"
        if not path.is_file():
            raise ModelLoadError(f"{source}: no {config.default_model_filename} in {version_dir}")
        sessions = [OnnxSession(path, config, device_id=_gpu(config, i)) for i in range(config.instance_group.count)]
        head = _inspect(sessions[0], cfg, source)
        graph_in, graph_out = sessions[0].tensor_specs()
        if config.max_batch_size is None:
            max_batch = DEFAULT_MAX_BATCH_SIZE if head.fixed_batch == 0 else head.fixed_batch
        else:
            max_batch = config.max_batch_size if head.fixed_batch else resolve_batching(
                config, graph_in, graph_out, source)
        max_batch = max(max_batch, 1)
        metadata = sessions[0].metadata()
        labels = list(cfg.labels) or parse_labels(metadata)
        if head.num_classes and len(labels) < head.num_classes:
            labels += [f"class{i}" for i in range(len(labels), head.num_classes)]
        if cfg.classes and head.num_classes and max(cfg.classes) >= head.num_classes:
            raise ModelLoadError(f"{source}: detection.classes {cfg.classes} names ids the model does not have "
                                 f"(it has {head.num_classes} classes)")
        model = cls(name, version, path, config, sessions, list(PIPELINE_INPUTS), list(PIPELINE_OUTPUTS),
                    max_batch, metadata=metadata, head=head, labels=labels)
        if not head.fixed_batch:
            model.batch_buckets = resolve_batch_buckets(config, max_batch, sessions[0].device, source)
            model.bucket_sessions = open_bucket_sessions(
                sessions, model.batch_buckets, lambda i: OnnxSession(path, config, device_id=_gpu(config, i)))
        if config.warmup:
            model.warm_up()
        log.info("%s: detection pipeline on %s, input %dx%d, layout %s, %d classes, batches up to %d",
                 source, ", ".join(model.providers), head.height, head.width, head.layout, head.num_classes,
                 max_batch)
        return model

    # -- batching hooks ----------------------------------------------------------------------
    def make_executor(self, stats: ModelStats | None = None) -> DetectionExecutor:
        assert self.head is not None and self.config.detection is not None
        return DetectionExecutor(self.name, self.sessions, self.head, self.config.detection,
                                 self.max_batch_size, self.stats if stats is None else stats,
                                 self.batch_buckets, self.bucket_sessions)

    def _size(self, request: InferRequest) -> int:
        return len(request.frames)  # type: ignore[attr-defined]

    def _shape_key(self, request: InferRequest) -> Hashable:
        return None  # frames of any size share a batch

    def warm_up(self) -> None:
        """Run every instance on frames of two sizes at each batch bucket (GPU providers: each bucket's
        session plans its shape once, here), or at batch 1 and the largest batch."""
        executor = self.make_executor(ModelStats())  # warm-up runs are not the model's statistics
        frame = np.full((480, 640, 3), 114, np.uint8)
        tall = np.full((720, 405, 3), 60, np.uint8)
        for n in self.batch_buckets or sorted({1, self.max_batch_size}):
            req = FrameRequest(self.name, frames=[frame if i % 2 else tall for i in range(n)],
                               options=self.default_options())
            for instance in range(len(self.sessions)):
                executor.execute(instance, [req])

    # -- requests ----------------------------------------------------------------------------
    @property
    def settings(self) -> DetectionConfig:
        assert self.config.detection is not None
        return self.config.detection

    def default_options(self) -> DetectOptions:
        cfg = self.settings
        return DetectOptions(cfg.score_threshold, cfg.iou_threshold, cfg.max_detections, tuple(cfg.classes),
                             cfg.agnostic_nms)

    def options(self, score_threshold: Any = None, iou_threshold: Any = None, max_detections: Any = None,
                classes: Sequence[Any] | None = None, prefix: str = "") -> DetectOptions:
        """The pipeline's defaults with a request's overrides, checked (InvalidArgument names the field)."""
        base = self.default_options()

        def unit(name: str, value: Any, default: float) -> float:
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"{prefix}{name}: expected a number in [0, 1], got {value!r}")
            return float(value)

        if max_detections is None:
            max_det = base.max_detections
        elif isinstance(max_detections, bool) or not isinstance(max_detections, int) or not (
                1 <= max_detections <= base.max_detections):
            raise InvalidArgument(f"{prefix}max_detections: expected an integer in 1..{base.max_detections}, "
                                  f"got {max_detections!r}")
        else:
            max_det = max_detections
        cls_ids = base.classes
        if classes:
            n = self.head.num_classes if self.head else 0
            bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, int) or c < 0 or (n and c >= n)]
            if bad:
                limit = f"0..{n - 1}" if n else ">= 0"
                raise InvalidArgument(f"{prefix}classes: expected class ids in {limit}, got {bad}")
            cls_ids = tuple(int(c) for c in classes)
        return DetectOptions(unit("score_threshold", score_threshold, base.score_threshold),
                             unit("iou_threshold", iou_threshold, base.iou_threshold), max_det, cls_ids,
                             base.agnostic)

    def frame_from_bytes(self, data: bytes, field: str) -> np.ndarray:
        return images.decode_image(data, field, self.settings.frame_channel_order, self.settings.max_pixels)

    def frame_from_raw(self, data: bytes, height: int, width: int, channels: int, field: str) -> np.ndarray:
        return images.raw_bytes_frame(data, height, width, channels, field, self.settings.max_pixels)

    def check_count(self, n: int, field: str) -> None:
        if not 1 <= n <= self.max_batch_size:
            raise InvalidArgument(f"{field}: expected 1..{self.max_batch_size} images (max_batch_size), got {n}")

    def validate(self, request: InferRequest) -> FrameRequest:
        """Decode an OIP request (``IMAGE`` or ``ENCODED``, with optional parameters ``score_threshold``,
        ``iou_threshold``, ``max_detections``) into a :class:`FrameRequest`."""
        if isinstance(request, FrameRequest):
            return request
        t0 = time.perf_counter_ns()
        given = sorted(request.inputs)
        if given not in ([IMAGE], [ENCODED]):
            raise InvalidArgument(
                f"model '{self.name}': expected one input, {IMAGE} (UINT8 [N,H,W,3]) or {ENCODED} "
                f"(BYTES [N,1]), got {', '.join(given) or 'none'}"
            )
        for name in request.requested_outputs:
            if name not in (DETECTIONS, COUNTS):
                raise InvalidArgument(f"model '{self.name}': unknown output '{name}'; the model has "
                                      f"{DETECTIONS}, {COUNTS}")
        max_pixels = self.settings.max_pixels
        if IMAGE in request.inputs:
            array = request.inputs[IMAGE]
            if hasattr(array, "__cuda_array_interface__"):  # frames in a CUDA shared-memory region
                import cupy

                array = cupy.asnumpy(array)
            if array.dtype != np.uint8 or array.ndim != 4:
                raise InvalidArgument(f"input '{IMAGE}': expected UINT8 [N,H,W,3], got {array.dtype} "
                                      f"{list(array.shape)}")
            self.check_count(array.shape[0], f"input '{IMAGE}'")
            frames = [images.raw_frame(array[i], f"input '{IMAGE}'[{i}]", max_pixels) for i in range(len(array))]
        else:
            array = request.inputs[ENCODED]
            if array.dtype != object or array.ndim != 2 or array.shape[1] != 1:
                raise InvalidArgument(f"input '{ENCODED}': expected BYTES [N,1], got {array.dtype} {list(array.shape)}")
            self.check_count(array.shape[0], f"input '{ENCODED}'")
            frames = [self.frame_from_bytes(array[i, 0], f"input '{ENCODED}'[{i}]") for i in range(len(array))]
        p = {k: _number(k, v) for k, v in request.parameters.items()
             if k in ("score_threshold", "iou_threshold", "max_detections")}
        options = self.options(p.get("score_threshold"), p.get("iou_threshold"), p.get("max_detections"),
                               prefix="parameters.")
        return FrameRequest(
            request.model_name, request.model_version, request.id, {}, list(request.requested_outputs),
            request.parameters, request.deadline, request.priority, request.ordering_key, request.arrival,
            request.typed_contents, frames=frames, options=options, decode_ns=time.perf_counter_ns() - t0,
            trace=request.trace,
        )

    async def detect(self, request: FrameRequest) -> FrameResult:
        """Queue, run and answer a request of decoded frames."""
        ok = False
        try:
            assert self.batcher is not None, "model not started"
            result: FrameResult = await self.batcher.submit(request)
            ok = True
        finally:
            self.stats.record_request(ok, _since(request.arrival), request.queue_ns)
        result.decode_ns = request.decode_ns
        result.queue_ns = request.queue_ns or 0
        result.total_ns = _since(request.arrival)
        return result

    async def infer(self, request: InferRequest) -> InferResponse:
        assert isinstance(request, FrameRequest), "validate() turns OIP requests into frame requests"
        result = await self.detect(request)
        n = len(result.detections)
        width = max([len(d) for d in result.detections] + [0])
        dets = np.zeros((n, width, 6), np.float32)
        for i, d in enumerate(result.detections):
            dets[i, : len(d)] = d
        counts = np.array([[len(d)] for d in result.detections], np.int32)
        outputs = {DETECTIONS: dets, COUNTS: counts}
        if request.requested_outputs:
            outputs = {k: outputs[k] for k in request.requested_outputs}
        return InferResponse(self.name, str(self.version), request.id, outputs, request.typed_contents)

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else f"class{class_id}"


def _number(name: str, value: Any) -> Any:
    """An OIP parameter as a number: clients without float parameters (tritonclient) send strings."""
    if not isinstance(value, str):
        return value
    try:
        return int(value) if name == "max_detections" else float(value)
    except ValueError:
        raise InvalidArgument(f"parameters.{name}: expected a number, got {value!r}") from None


def _since(monotonic: float) -> int:
    """Nanoseconds since a time.monotonic() stamp."""
    return int((time.monotonic() - monotonic) * 1e9)
