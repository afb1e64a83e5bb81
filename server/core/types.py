"""Plain data passed between the layers: tensor specs, requests, results and model descriptions.

Nothing here knows about protobuf or ONNX Runtime: codecs build requests from the wire, the data plane
hands them to a model, the scheduler queues them, executors read their arrays and fill in their results.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..config.model import ModelConfig


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output. ``shape`` includes the batch dimension when the model batches;
    -1 marks a dynamic dimension."""

    name: str
    datatype: str  # OIP datatype name
    shape: tuple[int, ...]
    reject_non_finite: bool = False
    optional: bool = False  # an input a request may leave out (Triton's ModelInput.optional)

    def describe(self) -> str:
        """``FP32 [N,3,640,640]``: a dynamic first (batch) dimension is N, other dynamic ones -1."""
        dims = ["N" if d == -1 and i == 0 else str(d) for i, d in enumerate(self.shape)]
        return f"{self.datatype} [{','.join(dims)}]"


@dataclass(frozen=True)
class ComputeTimes:
    """When the batch a request ran in started (``time.perf_counter_ns()``) and how long its stages took,
    in nanoseconds: input (assembly or pre-processing), infer (the model), output (split or post-processing)."""

    start_ns: int
    input_ns: int
    infer_ns: int
    output_ns: int


@dataclass
class InferRequest:
    """One decoded inference request.

    ``inputs`` hold arrays that may be read-only views of the request's bytes; nothing downstream
    writes to them. ``deadline`` is on the :func:`time.monotonic` clock, ``None`` for no deadline.
    """

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    requested_outputs: list[str] = field(default_factory=list)
    # Triton's classification extension: requested output -> class count (its top values as BYTES strings)
    classification: dict[str, int] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    priority: int = 0
    background: bool = False  # an asynchronous job's item: scheduled behind real-time requests
    # Requests that share a key keep their order when the model preserves ordering (one stream, one client).
    ordering_key: str = ""
    arrival: float = field(default_factory=time.monotonic)
    queue_ns: int | None = None  # set by the scheduler when the request leaves the queue
    compute: ComputeTimes | None = None  # set by the executor that ran the request's batch
    trace: Any = None  # an observability.tracing.Trace when this request is traced (Triton's trace extension)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]
    variant: str = ""  # the SLO ladder's variant that made it (its model's name); "": the model has no ladder


# -- detection -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes (JPEG, PNG, ...) as a client sent them, not yet decoded. ``field`` names
    where it came from, for error messages."""

    data: bytes
    field: str


@dataclass(frozen=True)
class RawImage:
    """Raw pixels and their stated layout, as a client sent them, not yet checked: HWC uint8 with
    ``channels`` when ``encoding`` is empty, else a camera frame in that ``sensor_msgs/image_encodings``
    encoding with rows of ``step`` bytes (0: packed) and 16-bit samples in ``is_bigendian`` byte order."""

    data: bytes
    height: int
    width: int
    channels: int
    field: str
    encoding: str = ""
    step: int = 0
    is_bigendian: bool = False


@dataclass(frozen=True)
class OptionOverrides:
    """Post-processing settings a request asks for (None: the model's default), as sent; the model checks
    them. ``field_prefix`` says where they came from, for error messages ("options.", "parameters.")."""

    score_threshold: Any = None
    iou_threshold: Any = None
    max_detections: Any = None
    classes: Sequence[Any] = ()
    field_prefix: str = "options."


@dataclass(frozen=True)
class DetectOptions:
    """Post-processing settings of one request (the pipeline's defaults with the request's overrides)."""

    score_threshold: float
    iou_threshold: float
    max_detections: int
    classes: tuple[int, ...] = ()
    agnostic: bool = False


@dataclass
class DetectRequest(InferRequest):
    """A typed detection request (``Detect`` or one ``DetectStream`` frame) before its images are decoded:
    the detection model decodes and checks them into a :class:`FrameRequest`. ``max_in_flight`` is what
    a stream asks for its window (0: the model's default); ``sequence`` a stream frame's number."""

    images: list[EncodedImage | RawImage] = field(default_factory=list)
    overrides: OptionOverrides = field(default_factory=OptionOverrides)
    sequence: int = 0
    max_in_flight: int = 0


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
    """Per frame, float32 [k, 6] detections (x1, y1, x2, y2, score, class id) in original pixels and the
    frame's (height, width), with the class names of the model that made them (``labels[class_id]``;
    ``class<i>`` past their end) and the model version that ran; a pose model's, per frame its boxes'
    keypoints too: float32 [k, K, D] (x, y in original pixels, then a visibility score when D is 3); a
    segmentation model's, per frame its boxes' mask polygons."""

    detections: list[np.ndarray]
    times: StageTimes
    labels: Sequence[str] = ()
    sizes: list[tuple[int, int]] = field(default_factory=list)
    model_name: str = ""
    model_version: str = ""
    decode_ns: int = 0
    queue_ns: int = 0
    total_ns: int = 0
    variant: str = ""  # the SLO ladder's variant that made it (its model's name); "": the model has no ladder
    keypoints: list[np.ndarray] | None = None  # a pose model's, one [k, K, D] a frame; None for other models
    # a segmentation model's: per frame, per box, its mask's polygon float32 [P, 2] (x, y in original pixels)
    polygons: list[list[np.ndarray]] | None = None

    def stages(self) -> dict[str, int]:
        """Nanoseconds per stage: decode, queue, pre, infer, post."""
        t = self.times
        return {"decode": self.decode_ns, "queue": self.queue_ns, "pre": t.pre_ns, "infer": t.infer_ns,
                "post": t.post_ns}

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else f"class{class_id}"


# -- what a loaded model version is -----------------------------------------------------------------
@dataclass(frozen=True)
class ModelDescription:
    """A loaded model version as metadata, configuration and statistics calls report it."""

    name: str
    version: int
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    config: ModelConfig  # as loaded (config.toml with any load-time override)
    instances: int
    device: str  # where the instances run: "cpu" or "cuda"
    gpus: tuple[int, ...]  # the GPUs of the instances (empty on the CPU)
    providers: tuple[str, ...]  # ONNX Runtime execution providers, in order
    provider_note: str = ""  # why the providers differ from the configured preference, if they do
    batch_buckets: tuple[int, ...] = ()  # sizes batches are padded up to; empty: none
    details: tuple[tuple[str, str], ...] = ()  # what a kind of model adds to its configuration's parameters
