"""Writes generated models into a model repository: `<root>/<name>/1/model.onnx`.

Only the ONNX files are written; each model's `config.toml` beside them is written by hand and never touched.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from .simple import identity_model
from .yolo import end2end_detector, yolov5_detector, yolov8_detector

MODEL_VERSION = "1"
MODEL_FILENAME = "model.onnx"


@dataclass(frozen=True)
class ModelSpec:
    """A model of the bundled repository: its directory name and how to build it from a seed."""

    name: str
    build: Callable[[int], onnx.ModelProto]
    summary: str


BUNDLED_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("yolov8n", lambda seed: yolov8_detector(seed), "YOLOv8n detector, [N,3,640,640] -> [N,84,8400]"),
    ModelSpec("yolov5n", lambda seed: yolov5_detector(seed), "YOLOv5n detector, [N,3,640,640] -> [N,25200,85]"),
    ModelSpec("yolov8n_e2e", lambda seed: end2end_detector(seed), "NMS-free YOLOv8n, [N,3,640,640] -> [N,300,6]"),
    ModelSpec("identity_fp32", lambda seed: identity_model("FP32", (-1, -1)), "identity, FP32 [-1,-1]"),
)
DEFAULT_MODEL = "yolov8n"


@dataclass(frozen=True)
class WriteResult:
    """What happened to one model: written (with size and build time) or skipped because it existed."""

    name: str
    path: Path
    written: bool
    size_bytes: int
    seconds: float


def model_path(root: Path, name: str) -> Path:
    return root / name / MODEL_VERSION / MODEL_FILENAME


def write_model(root: Path, spec: ModelSpec, *, seed: int = 0, force: bool = False) -> WriteResult:
    """Builds `spec` into `<root>/<name>/1/model.onnx` unless the file exists (and `force` is false).

    The file is written to a temporary name and renamed, so a server scanning the repository never reads
    a half-written model.
    """
    path = model_path(root, spec.name)
    if path.exists() and not force:
        return WriteResult(spec.name, path, False, path.stat().st_size, 0.0)
    start = time.monotonic()
    data = spec.build(seed).SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{MODEL_FILENAME}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a server running as another user must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return WriteResult(spec.name, path, True, len(data), time.monotonic() - start)


def write_repository(
    root: Path, *, names: Sequence[str] | None = None, seed: int = 0, force: bool = False
) -> Iterator[WriteResult]:
    """Writes the bundled models (or those in `names`) one by one, yielding each result as it is done.

    Raises KeyError for a name that is not a bundled model.
    """
    specs = {spec.name: spec for spec in BUNDLED_MODELS}
    for name in names or list(specs):
        if name not in specs:
            raise KeyError(f"unknown model {name!r}, expected one of {sorted(specs)}")
        yield write_model(root, specs[name], seed=seed, force=force)
