"""Which kind of model version a repository entry becomes, by its ``platform``."""

from __future__ import annotations

from pathlib import Path

from ..config.model import ModelConfig
from .base import ModelVersion
from .detection import DetectionModel
from .tensor import TensorModel

KINDS: dict[str, type[ModelVersion]] = {
    "onnxruntime_onnx": TensorModel,
    "peregrine_detection": DetectionModel,
}


def load_version(name: str, version: int, version_dir: Path, config: ModelConfig) -> ModelVersion:
    """Load one version of a model as the kind its platform names (blocking; raises ModelLoadError)."""
    return KINDS[config.platform].load(name, version, version_dir, config)
