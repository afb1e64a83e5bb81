"""Each model's ``config.toml``.

A model directory looks like::

    models/yolov8n/config.toml
    models/yolov8n/1/model.onnx

Every key of ``config.toml`` is optional; inputs and outputs are read from the ONNX graph when the file
omits them. ``docs/MODEL_CONFIG.md`` documents every key and its mapping to Triton's config.pbtxt.
Errors name the file and the key, say what was expected and what came.

Every number has an upper bound (the ``MAX_*`` constants, documented in docs/MODEL_CONFIG.md): a load
override arrives from a client, and a value past what the server can hold, or past what Triton's
ModelConfig message can carry, is refused at parse time rather than failing later.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core import datatypes
from ..core.errors import ModelLoadError, clipped

CONFIG_FILENAME = "config.toml"

# Upper bounds (docs/MODEL_CONFIG.md, "Bounds").
MAX_CONFIG_BYTES = 1 << 20  # config.toml, or a load override's JSON
MAX_CONFIG_DEPTH = 32  # nesting of tables/arrays (objects/lists in JSON); a real configuration needs about 5
MAX_BATCH_SIZE = 1 << 20  # max_batch_size, preferred_batch_sizes, batch_buckets
MAX_BATCH_SIZES = 64  # entries in preferred_batch_sizes and in batch_buckets (each bucket can be a session)
MAX_INSTANCES = 64  # instance_group.count
MAX_GPUS = 64  # entries in instance_group.gpus
MAX_DEVICE_ID = 255  # a CUDA device ordinal in instance_group.gpus
MAX_THREADS = 1024  # onnxruntime intra/inter_op_num_threads
MAX_QUEUE_DELAY_US = 60_000_000  # dynamic_batching.max_queue_delay_us: one minute
MAX_QUEUE_SIZE = 1_000_000  # max_queue_size, here and in queue policies
MAX_TIMEOUT_US = 3_600_000_000  # default_timeout_us of a queue policy: one hour
MAX_PRIORITY_LEVELS = 1_000  # priority_levels (and so default_priority_level and priority_queue_policy keys)
MAX_VERSIONS = 1_000_000  # version_policy {latest = N}, and entries in {specific = [...]}
MAX_VERSION = (1 << 63) - 1  # a version number (int64, as in Triton)
MAX_RANK = 32  # entries in an [[input]]/[[output]] dims
MAX_DIM = (1 << 31) - 1  # one entry of dims
MAX_NAME_BYTES = 255  # default_model_filename: one file name
MAX_PIXELS = 1 << 30  # detection.max_pixels (32768 x 32768)
MAX_CANDIDATES = 1_000_000  # detection.max_candidates
MAX_INPUT_SIDE = 1 << 15  # detection.input_size, each side
MAX_CLASS_ID = 1_000_000  # detection.classes, each id
MAX_LADDER_RUNGS = 8  # ladder.rungs: variants below the model itself


def nesting_depth(value: Any, limit: int = MAX_CONFIG_DEPTH) -> int:
    """How deep dicts and lists nest in a parsed configuration (a scalar is 0), counted without recursion,
    and at most ``limit + 1``: the walk stops once past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    """An input or output override. ``dims`` exclude the batch dimension when max_batch_size > 0."""

    name: str
    data_type: str | None = None
    dims: list[int] | None = None
    # The shape the model itself takes or gives (Triton's `reshape`), without the batch dimension when
    # max_batch_size > 0: clients send and receive `dims`, the session sees `reshape`, same elements.
    reshape: list[int] | None = None
    # Inputs only: Triton's `format` (image layout), reported by ModelConfig; "none" when not an image.
    format: Literal["none", "nhwc", "nchw"] = "none"
    # Inputs only: answer INVALID_ARGUMENT when a float input holds NaN or infinity.
    reject_non_finite: bool = False

    @field_validator("data_type")
    @classmethod
    def _known_type(cls, v: str | None) -> str | None:
        if v is None:
            return v
        name = v.removeprefix("TYPE_").replace("STRING", "BYTES")
        if name not in datatypes.BY_NAME:
            raise ValueError(f"expected one of {', '.join(datatypes.BY_NAME)}, got '{v}'")
        return name

    @field_validator("dims", "reshape")
    @classmethod
    def _dims(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) > MAX_RANK or any(d < -1 or d == 0 or d > MAX_DIM for d in v)):
            raise ValueError(f"expected at most {MAX_RANK} sizes in 1..{MAX_DIM} or -1 (dynamic)")
        return v

    @model_validator(mode="after")
    def _reshape(self) -> TensorConfig:
        if self.reshape is not None:
            if self.dims is None:
                raise ValueError(f"tensor '{self.name}': reshape needs dims (the shape clients use)")
            if sum(d == -1 for d in self.dims) != sum(d == -1 for d in self.reshape) or (
                    -1 not in self.dims and math.prod(self.dims) != math.prod(self.reshape)):
                raise ValueError(f"tensor '{self.name}': reshape {self.reshape} must hold as many elements as "
                                 f"dims {self.dims}")
        return self


class AutoscaleConfig(_Strict):
    """Instance autoscaling (docs/LIFECYCLE.md): instances move between `min` and `max` with queue depth and
    latency; `count` is where a model starts."""

    min: int = Field(1, ge=1, le=MAX_INSTANCES)
    max: int = Field(..., ge=1, le=MAX_INSTANCES)
    slo_ms: float | None = Field(None, gt=0)  # mean latency to keep under; none: queue depth alone
    queue_up: float = Field(2.0, gt=0)  # queued requests per instance that ask for one more instance
    queue_down: float = Field(0.25, ge=0)  # at most this many per instance: one fewer will do
    up_after_s: float = Field(2.0, ge=0)  # how long the need must last
    down_after_s: float = Field(30.0, ge=0)
    cooldown_s: float = Field(10.0, ge=0)  # no change for this long after a change
    interval_s: float = Field(1.0, ge=0.05, le=60)  # how often the model is sampled

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        if self.queue_down >= self.queue_up:
            raise ValueError(f"queue_down ({self.queue_down}) must be below queue_up ({self.queue_up})")
        return self


class InstanceGroupConfig(_Strict):
    count: int = Field(1, ge=1, le=MAX_INSTANCES)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus: list[Annotated[int, Field(ge=0, le=MAX_DEVICE_ID)]] = Field(default_factory=lambda: [0],
                                                                      max_length=MAX_GPUS)
    autoscale: AutoscaleConfig | None = None

    @model_validator(mode="after")
    def _within(self) -> InstanceGroupConfig:
        a = self.autoscale
        if a is not None and not a.min <= self.count <= a.max:
            raise ValueError(f"count ({self.count}) must be within autoscale min..max ({a.min}..{a.max})")
        return self


class OnnxRuntimeConfig(_Strict):
    """ONNX Runtime session options. 0 threads means ONNX Runtime's default (all cores)."""

    intra_op_num_threads: int = Field(0, ge=0, le=MAX_THREADS)
    inter_op_num_threads: int = Field(0, ge=0, le=MAX_THREADS)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    # In order of preference; default: CUDA (and TensorRT when listed) then CPU on device=cuda/auto.
    execution_providers: list[str] | None = None
    provider_options: dict[str, dict[str, str]] = Field(default_factory=dict)
    enable_cpu_mem_arena: bool = True
    # ORT's worker threads spin while waiting for work: lowest latency for the model alone, but the
    # spinning takes cores from work running beside it (image decoding in a detection pipeline).
    allow_spinning: bool = True
    # Bind inputs and outputs with IO binding on GPU providers.
    io_binding: bool = True


class QueuePolicyConfig(_Strict):
    """Triton's ModelQueuePolicy: what happens to a request that waits longer than its timeout."""

    timeout_action: Literal["reject", "delay"] = "reject"
    default_timeout_us: int = Field(0, ge=0, le=MAX_TIMEOUT_US)
    allow_timeout_override: bool = True
    max_queue_size: int = Field(0, ge=0, le=MAX_QUEUE_SIZE)


class DynamicBatchingConfig(_Strict):
    """Triton's dynamic_batching block, plus Peregrine's adaptive window."""

    preferred_batch_sizes: list[Annotated[int, Field(le=MAX_BATCH_SIZE)]] = Field(default_factory=list,
                                                                                  max_length=MAX_BATCH_SIZES)
    max_queue_delay_us: int = Field(0, ge=0, le=MAX_QUEUE_DELAY_US)
    max_queue_size: int = Field(0, ge=0, le=MAX_QUEUE_SIZE)  # 0: unbounded
    priority_levels: int = Field(0, ge=0, le=MAX_PRIORITY_LEVELS)
    default_priority_level: int = Field(0, ge=0, le=MAX_PRIORITY_LEVELS)
    preserve_ordering: bool = False
    default_queue_policy: QueuePolicyConfig = Field(default_factory=QueuePolicyConfig)
    priority_queue_policy: dict[int, QueuePolicyConfig] = Field(default_factory=dict)
    # "fixed": wait up to max_queue_delay_us for a fuller batch. "adaptive": learn the batch cost and
    # stop waiting when waiting would cost a deadline or no longer pays in throughput.
    window: Literal["fixed", "adaptive"] = "fixed"
    # Batch sizes the model is executed at: a batch of n elements runs padded to the smallest bucket
    # >= n, so a GPU provider sees a few shapes instead of every size (ORT's CUDA EP plans its
    # convolutions again for each new shape). "auto": powers of two up to max_batch_size, plus
    # max_batch_size and the preferred sizes, on GPU providers; no buckets on the CPU. []: no buckets.
    # max_batch_size is always added; sizes above it are an error.
    batch_buckets: list[int] | Literal["auto"] = "auto"

    @field_validator("batch_buckets", mode="before")
    @classmethod
    def _buckets(cls, v: object) -> object:
        if v == "auto":
            return v
        if not isinstance(v, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in v):
            raise ValueError("expected a list of batch sizes or 'auto'")  # the formatter adds what came
        if any(b <= 0 for b in v):
            raise ValueError("expected positive batch sizes")
        if len(v) > MAX_BATCH_SIZES or any(b > MAX_BATCH_SIZE for b in v):
            raise ValueError(f"expected at most {MAX_BATCH_SIZES} sizes, each at most {MAX_BATCH_SIZE}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _levels(self) -> DynamicBatchingConfig:
        if self.priority_levels and not 1 <= self.default_priority_level <= self.priority_levels:
            raise ValueError(
                f"default_priority_level must be in 1..priority_levels ({self.priority_levels}), "
                f"got {self.default_priority_level}"
            )
        if any(b <= 0 for b in self.preferred_batch_sizes):
            raise ValueError(f"preferred_batch_sizes must be positive, got {self.preferred_batch_sizes}")
        bad = [level for level in self.priority_queue_policy if not 1 <= level <= self.priority_levels]
        if bad:
            raise ValueError(f"priority_queue_policy: expected levels in 1..priority_levels "
                             f"({self.priority_levels}), got {clipped(bad)}")
        return self


class DetectionConfig(_Strict):
    """The ``[detection]`` block of a detection pipeline model (``platform = "peregrine_detection"``):
    frames in, boxes out. Thresholds and limits are defaults that a request may override."""

    # A detector model in the same repository whose versions this pipeline serves (its ONNX files are
    # opened by the pipeline's own instances); None: the pipeline's own version directories hold them.
    detector: str | None = None
    # Head layout: "auto" reads it from the output's shape ([N, 4+C, A] yolov8, [N, A, 5+C] yolov5,
    # [N, K, 6] end2end, [N, K, 4+C] rtdetr for a model naming C classes); set it when the shape is ambiguous.
    layout: Literal["auto", "yolov8", "yolo11", "yolov5", "end2end", "yolov10", "rtdetr"] = "auto"
    # Model input [height, width]; None: read from the model (which then needs static sizes).
    input_size: list[int] | None = None
    score_threshold: float = Field(0.25, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.7, ge=0.0, le=1.0)
    max_detections: int = Field(300, ge=1, le=100_000)
    # Keep only these class ids (empty: all); class-agnostic NMS when agnostic_nms is set.
    classes: list[Annotated[int, Field(le=MAX_CLASS_ID)]] = Field(default_factory=list)
    agnostic_nms: bool = False
    # Class names by id; empty: the model's `names` metadata (ultralytics exports it), else "class<i>".
    labels: list[str] = Field(default_factory=list)
    # Images over this many pixels are rejected before decoding.
    max_pixels: int = Field(8192 * 8192, ge=1, le=MAX_PIXELS)
    # A request whose images decode to more bytes than this (height x width x 3 each, read from their
    # headers) is rejected before decoding; at most 1 TiB.
    max_decoded_bytes_per_request: int = Field(256 * 1024 * 1024, ge=1, le=1 << 40)
    # Channel order of raw frames sent by clients and of the model's input tensor.
    frame_channel_order: Literal["rgb", "bgr"] = "rgb"
    model_channel_order: Literal["rgb", "bgr"] = "rgb"
    pad_value: int = Field(114, ge=0, le=255)
    scale: float = Field(1 / 255, allow_inf_nan=False)
    # How the letterbox resizes: "linear" is cv2.resize(INTER_LINEAR) on the uint8 frame, byte for byte
    # (what ultralytics does, so the default); "area" is cv2's INTER_AREA, byte for byte; "float" blends
    # in floating point without rounding to uint8 (for models validated that way).
    resize: Literal["linear", "area", "float"] = "linear"
    # Decoded candidates kept per image before NMS, by score (ultralytics' max_nms).
    max_candidates: int = Field(30000, ge=1, le=MAX_CANDIDATES)
    # DetectStream: frames one stream runs at once, and frames kept waiting behind them (the oldest
    # waiting frame is dropped when a new one arrives: latest frame wins).
    stream_max_in_flight: int = Field(2, ge=1, le=64)
    stream_max_waiting: int = Field(1, ge=1, le=64)

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 2 or any(not 1 <= d <= MAX_INPUT_SIDE for d in v)):
            raise ValueError(f"expected [height, width] in pixels, each in 1..{MAX_INPUT_SIDE}")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[int]) -> list[int]:
        if any(c < 0 for c in v):
            raise ValueError(f"expected class ids >= 0, got {v}")
        return v


class LadderConfig(_Strict):
    """The SLO ladder (docs/QUANTIZATION.md): variants of this model that may answer a request its deadline
    would not let this model answer in time, most accurate first (e.g. the siblings ``peregrine quantize``
    makes). Each rung takes the same inputs and gives the same outputs; a rung that is not loaded is skipped."""

    rungs: list[str] = Field(..., min_length=1, max_length=MAX_LADDER_RUNGS)
    # A rung is expected to meet a deadline when its estimated completion time, times 1 + headroom, fits.
    headroom: float = Field(0.2, ge=0.0, le=10.0)
    # The share of its device the ladder's requests may ask for before its mix is pushed down
    # (scheduling/ladder.py); unset: 0.6 on a CPU, whose cores the models share with decoding and the
    # server itself, 0.85 on a GPU.
    sustainable: float | None = Field(None, gt=0.0, le=1.0)

    @field_validator("rungs")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or len(name.encode()) > MAX_NAME_BYTES or "/" in name or name.startswith("."):
                raise ValueError(f"expected model names (1 to {MAX_NAME_BYTES} bytes, no '/'), got '{clipped(name)}'")
        if len(set(v)) != len(v):
            raise ValueError(f"expected each rung once, got {v}")
        return v


class ModelConfig(_Strict):
    """One model's configuration (``config.toml``)."""

    name: str | None = None
    # "peregrine_detection": a detection pipeline (decode -> letterbox -> ONNX model -> NMS), see
    # the [detection] block.
    platform: Literal["onnxruntime_onnx", "peregrine_detection"] = "onnxruntime_onnx"
    # None: 8 when every input and output has a dynamic first dimension, else 0 (no batching).
    max_batch_size: int | None = Field(None, ge=0, le=MAX_BATCH_SIZE)
    default_model_filename: str = "model.onnx"
    # "latest" (1 version), "all", {latest = N}, or {specific = [1, 3]}.
    version_policy: str | dict[str, int | list[int]] = "latest"
    instance_group: InstanceGroupConfig = Field(default_factory=InstanceGroupConfig)
    onnxruntime: OnnxRuntimeConfig = Field(default_factory=OnnxRuntimeConfig)
    input: list[TensorConfig] = Field(default_factory=list)
    output: list[TensorConfig] = Field(default_factory=list)
    dynamic_batching: DynamicBatchingConfig | None = None
    warmup: bool = True
    parameters: dict[str, str] = Field(default_factory=dict)
    # Triton's response_cache { enable }: answers of this model may be served from the response cache.
    response_cache: bool = False
    # Model lifecycle (docs/LIFECYCLE.md): "startup" loads with the server; "on_demand" on its first request
    # (which waits for the load, within its deadline).
    load: Literal["startup", "on_demand"] = "startup"
    # Unload after this many seconds without a request (0: never): sessions and their memory are released,
    # and the next request loads the model again.
    idle_unload_s: float = Field(0.0, ge=0.0, le=30 * 24 * 3600)
    detection: DetectionConfig | None = None
    ladder: LadderConfig | None = None

    @model_validator(mode="after")
    def _pipeline(self) -> ModelConfig:
        if self.platform == "peregrine_detection" and self.detection is None:
            raise ValueError("platform 'peregrine_detection' needs a [detection] block")
        if self.detection is not None and self.platform != "peregrine_detection":
            raise ValueError(f"a [detection] block needs platform = 'peregrine_detection', got '{self.platform}'")
        return self

    @model_validator(mode="after")
    def _buckets_fit(self) -> ModelConfig:
        db = self.dynamic_batching
        if db is None or db.batch_buckets == "auto" or not db.batch_buckets:
            return self
        if self.max_batch_size is not None:  # an inferred max_batch_size is checked when the model loads
            check_batch_buckets(db.batch_buckets, self.max_batch_size)
        return self

    @field_validator("version_policy")
    @classmethod
    def _policy(cls, v: str | dict[str, int | list[int]]) -> str | dict[str, int | list[int]]:
        if isinstance(v, str):
            if v not in ("latest", "all"):
                raise ValueError("expected 'latest', 'all', {latest = N} or {specific = [...]}")
        elif set(v) not in ({"latest"}, {"specific"}):
            raise ValueError("expected {latest = N} or {specific = [...]}")
        elif "latest" in v:
            n = v["latest"]
            if not isinstance(n, int) or not 1 <= n <= MAX_VERSIONS:
                raise ValueError(f"expected {{latest = N}} with N in 1..{MAX_VERSIONS}")
        else:
            wanted = v["specific"]
            if (not isinstance(wanted, list) or len(wanted) > MAX_VERSIONS
                    or not all(0 <= x <= MAX_VERSION for x in wanted)):
                raise ValueError(f"expected {{specific = [...]}} with at most {MAX_VERSIONS} versions, each in "
                                 f"0..{MAX_VERSION}")
        return v

    @field_validator("default_model_filename")
    @classmethod
    def _filename(cls, v: str) -> str:
        if (not v or len(v.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES or "/" in v or "\\" in v
                or v in (".", "..") or "\0" in v):
            raise ValueError(f"expected a file name inside the version directory (no '/', '\\' or '..', at "
                             f"most {MAX_NAME_BYTES} bytes)")
        return v

    def select_versions(self, available: list[int]) -> list[int]:
        """The versions this policy serves, from those present on disk."""
        ordered = sorted(available)
        v = self.version_policy
        if v == "all":
            return ordered
        if v == "latest":
            return ordered[-1:]
        assert isinstance(v, dict)
        if "latest" in v:
            n = v["latest"]
            assert isinstance(n, int)
            return ordered[-n:] if n > 0 else []
        wanted = v["specific"]
        assert isinstance(wanted, list)
        return [x for x in ordered if x in wanted]


def check_batch_buckets(buckets: list[int], max_batch_size: int) -> None:
    """Raise ValueError unless explicit batch buckets fit the model's max_batch_size."""
    if max_batch_size == 0:
        raise ValueError(
            f"dynamic_batching.batch_buckets: expected none (the model does not batch: max_batch_size is 0), "
            f"got {buckets}"
        )
    too_large = [b for b in buckets if b > max_batch_size]
    if too_large:
        raise ValueError(
            f"dynamic_batching.batch_buckets: expected sizes in 1..max_batch_size ({max_batch_size}), "
            f"got {buckets}"
        )


def _format_validation(err: ValidationError, limit: int = 8) -> str:
    """One line per problem (the first ``limit``), each naming the key; keys and values that came from the
    configuration are clipped (:func:`~peregrine.server.core.errors.clipped`)."""
    parts = []
    errors = err.errors()
    for e in errors[:limit]:
        loc = clipped(".".join(str(p) for p in e["loc"])) or "(top level)"
        got = e.get("input")
        msg = clipped(e["msg"].removeprefix("Value error, "), 1024)
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        if not e["loc"] and e["type"] == "value_error":
            parts.append(msg)  # a check across keys: its message names them and says what came
            continue
        parts.append(f"{loc}: {msg} (got {clipped(repr(got))})" if got is not None and e["type"] != "missing"
                     else f"{loc}: {msg}")
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)


def parse_model_config(text: str, source: str = CONFIG_FILENAME) -> ModelConfig:
    """Parse and validate a model's TOML configuration. Raises :class:`ModelLoadError`, and only that,
    whatever ``text`` holds (too long, nested too deep, numbers past the bounds above)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{source}: expected at most {MAX_CONFIG_BYTES} bytes, got {len(text)} characters")
    try:
        raw = tomllib.loads(text)
    except RecursionError:
        raise ModelLoadError(f"{source}: not valid TOML: nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    except ValueError as e:  # TOMLDecodeError, and integers of more digits than int() takes
        raise ModelLoadError(f"{source}: not valid TOML: {clipped(str(e), 1024)}") from None
    if nesting_depth(raw) > MAX_CONFIG_DEPTH:
        raise ModelLoadError(f"{source}: tables and arrays nested deeper than {MAX_CONFIG_DEPTH} levels")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as e:
        raise ModelLoadError(f"{source}: {_format_validation(e)}") from None


def load_model_config(model_dir: Path) -> ModelConfig:
    """Read a model directory's configuration: ``config.toml``, or Triton's ``config.pbtxt`` (mapped, see
    :mod:`.triton`); no file means all defaults. Raises ModelLoadError (also when both files are present)."""
    from .files import read_model_config  # the reader of both formats imports this module

    return read_model_config(model_dir).config
