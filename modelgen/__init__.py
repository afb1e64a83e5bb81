"""Builders for Peregrine's bundled ONNX models: seeded YOLO detectors and small test models.

Everything here depends only on NumPy and the `onnx` package; `python -m peregrine.modelgen` (or
`peregrine-build-models`) writes the bundled model repository.
"""

from __future__ import annotations

from .repository import BUNDLED_MODELS, DEFAULT_MODEL, ModelSpec, WriteResult, write_model, write_repository
from .simple import add_sub_model, classifier, identity_model, onnx_type
from .stats import count_flops, count_parameters
from .yolo import end2end_detector, yolov5_detector, yolov8_detector, yolov8_pose

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "ModelSpec",
    "WriteResult",
    "add_sub_model",
    "classifier",
    "count_flops",
    "count_parameters",
    "end2end_detector",
    "identity_model",
    "onnx_type",
    "write_model",
    "write_repository",
    "yolov5_detector",
    "yolov8_detector",
    "yolov8_pose",
]
