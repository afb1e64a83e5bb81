"""Peregrine's Python client: Open Inference Protocol (KServe v2) over gRPC, sync and asyncio.

Needs only grpcio, protobuf, NumPy and ``peregrine.proto``::

    from peregrine.client import InferenceClient

    with InferenceClient("127.0.0.1:8001") as client:
        outputs = client.infer("yolov8n", {"images": frame}, deadline_s=0.05)

    from peregrine.client import DetectionClient

    with DetectionClient("127.0.0.1:8001") as client:
        boxes = client.detect("images/astronaut.jpg", deadline_s=0.1)  # [Detection(x1, y1, x2, y2, score, ...)]

The load-testing harness is :mod:`peregrine.client.load` (``python -m peregrine.client.load``).
"""

from __future__ import annotations

from .aio import AsyncInferenceClient
from .channel import DEFAULT_DEADLINE_S, MAX_MESSAGE_BYTES, NO_RETRY, RetryPolicy, TlsOptions
from .detection import (
    Detection,
    DetectionClient,
    DetectResult,
    FrameResult,
    FrameStatus,
    Keypoint,
    RawFrame,
    StageTimings,
)
from .detection_aio import AsyncDetectionClient
from .errors import PeregrineClientError
from .metadata import ModelMetadata, RepositoryModel, ServerMetadata, SharedMemoryStatus, TensorMetadata
from .shm import SystemSharedMemory
from .sync import InferenceClient
from .tensors import InferRequest, SharedMemoryInput, SharedMemoryOutput, StreamResult

__all__ = [
    "DEFAULT_DEADLINE_S",
    "MAX_MESSAGE_BYTES",
    "NO_RETRY",
    "AsyncDetectionClient",
    "AsyncInferenceClient",
    "DetectResult",
    "Detection",
    "DetectionClient",
    "FrameResult",
    "FrameStatus",
    "InferRequest",
    "InferenceClient",
    "Keypoint",
    "ModelMetadata",
    "PeregrineClientError",
    "RawFrame",
    "RepositoryModel",
    "RetryPolicy",
    "ServerMetadata",
    "SharedMemoryInput",
    "SharedMemoryOutput",
    "SharedMemoryStatus",
    "StageTimings",
    "StreamResult",
    "SystemSharedMemory",
    "TensorMetadata",
    "TlsOptions",
]
