"""Each model's ``config.toml``.

A model directory looks like::

    models/yolov8n/config.toml
    models/yolov8n/1/model.onnx

Every key of ``config.toml`` is optional; inputs and outputs are read from the ONNX graph when the file
omits them. ``docs/MODEL_CONFIG.md`` documents every key and its mapping to Triton's config.pbtxt.
Errors name the file and the key, say what was expected and what came.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core import datatypes
from ..core.errors import ModelLoadError

CONFIG_FILENAME = "config.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorConfig(_Strict):
    """An input or output override. ``dims`` exclude the batch dimension when max_batch_size > 0."""

    name: str
    data_type: str | None = None
    dims: list[int] | None = None
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

    @field_validator("dims")
    @classmethod
    def _dims(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(d < -1 or d == 0 for d in v):
            raise ValueError(f"expected positive sizes or -1 (dynamic), got {v}")
        return v


class InstanceGroupConfig(_Strict):
    count: int = Field(1, ge=1, le=64)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus: list[int] = Field(default_factory=lambda: [0])


class OnnxRuntimeConfig(_Strict):
    """ONNX Runtime session options. 0 threads means ONNX Runtime's default (all cores)."""

    intra_op_num_threads: int = Field(0, ge=0)
    inter_op_num_threads: int = Field(0, ge=0)
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
    default_timeout_us: int = Field(0, ge=0)
    allow_timeout_override: bool = True
    max_queue_size: int = Field(0, ge=0)


class DynamicBatchingConfig(_Strict):
    """Triton's dynamic_batching block, plus Peregrine's adaptive window."""

    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_delay_us: int = Field(0, ge=0)
    max_queue_size: int = Field(0, ge=0)  # 0: unbounded
    priority_levels: int = Field(0, ge=0)
    default_priority_level: int = Field(0, ge=0)
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
        return self


class DetectionConfig(_Strict):
    """The ``[detection]`` block of a detection pipeline model (``platform = "peregrine_detection"``):
    frames in, boxes out. Thresholds and limits are defaults that a request may override."""

    # A detector model in the same repository whose versions this pipeline serves (its ONNX files are
    # opened by the pipeline's own instances); None: the pipeline's own version directories hold them.
    detector: str | None = None
    # Head layout: "auto" reads it from the output's shape ([N, 4+C, A] yolov8, [N, A, 5+C] yolov5,
    # [N, K, 6] end2end); set it when the shape is ambiguous.
    layout: Literal["auto", "yolov8", "yolo11", "yolov5", "end2end", "yolov10"] = "auto"
    # Model input [height, width]; None: read from the model (which then needs static sizes).
    input_size: list[int] | None = None
    score_threshold: float = Field(0.25, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.7, ge=0.0, le=1.0)
    max_detections: int = Field(300, ge=1, le=100_000)
    # Keep only these class ids (empty: all); class-agnostic NMS when agnostic_nms is set.
    classes: list[int] = Field(default_factory=list)
    agnostic_nms: bool = False
    # Class names by id; empty: the model's `names` metadata (ultralytics exports it), else "class<i>".
    labels: list[str] = Field(default_factory=list)
    # Images over this many pixels are rejected before decoding.
    max_pixels: int = Field(8192 * 8192, ge=1)
    # Channel order of raw frames sent by clients and of the model's input tensor.
    frame_channel_order: Literal["rgb", "bgr"] = "rgb"
    model_channel_order: Literal["rgb", "bgr"] = "rgb"
    pad_value: int = Field(114, ge=0, le=255)
    scale: float = 1 / 255
    # How the letterbox resizes: "linear" is cv2.resize(INTER_LINEAR) on the uint8 frame, byte for byte
    # (what ultralytics does, so the default); "area" is cv2's INTER_AREA, byte for byte; "float" blends
    # in floating point without rounding to uint8 (for models validated that way).
    resize: Literal["linear", "area", "float"] = "linear"
    # Decoded candidates kept per image before NMS, by score (ultralytics' max_nms).
    max_candidates: int = Field(30000, ge=1)
    # DetectStream: frames one stream runs at once, and frames kept waiting behind them (the oldest
    # waiting frame is dropped when a new one arrives: latest frame wins).
    stream_max_in_flight: int = Field(2, ge=1, le=64)
    stream_max_waiting: int = Field(1, ge=1, le=64)

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 2 or any(d < 1 for d in v)):
            raise ValueError(f"expected [height, width] in pixels, got {v}")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[int]) -> list[int]:
        if any(c < 0 for c in v):
            raise ValueError(f"expected class ids >= 0, got {v}")
        return v


class ModelConfig(_Strict):
    """One model's configuration (``config.toml``)."""

    name: str | None = None
    # "peregrine_detection": a detection pipeline (decode -> letterbox -> ONNX model -> NMS), see
    # the [detection] block.
    platform: Literal["onnxruntime_onnx", "peregrine_detection"] = "onnxruntime_onnx"
    # None: 8 when every input and output has a dynamic first dimension, else 0 (no batching).
    max_batch_size: int | None = Field(None, ge=0)
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
    detection: DetectionConfig | None = None

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
                raise ValueError(f"expected 'latest', 'all', {{latest = N}} or {{specific = [...]}}, got '{v}'")
        elif set(v) not in ({"latest"}, {"specific"}):
            raise ValueError(f"expected {{latest = N}} or {{specific = [...]}}, got {v}")
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


def _format_validation(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        if not e["loc"] and e["type"] == "value_error":
            parts.append(msg)  # a check across keys: its message names them and says what came
            continue
        parts.append(f"{loc}: {msg} (got {got!r})" if got is not None and e["type"] != "missing" else f"{loc}: {msg}")
    return "; ".join(parts)


def parse_model_config(text: str, source: str = CONFIG_FILENAME) -> ModelConfig:
    """Parse and validate a model's TOML configuration. Raises :class:`ModelLoadError`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ModelLoadError(f"{source}: not valid TOML: {e}") from None
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as e:
        raise ModelLoadError(f"{source}: {_format_validation(e)}") from None


def load_model_config(model_dir: Path) -> ModelConfig:
    """Read ``config.toml`` from a model directory; a missing file means all defaults."""
    path = model_dir / CONFIG_FILENAME
    if not path.exists():
        return ModelConfig()
    return parse_model_config(path.read_text(), f"{model_dir.name}/{CONFIG_FILENAME}")
