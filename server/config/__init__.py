"""Configuration: each model's ``config.toml`` (:mod:`.model`), Triton's load-time overrides
(:mod:`.override`) and the server process's settings (:mod:`.server`)."""

from __future__ import annotations

from .model import (
    CONFIG_FILENAME,
    DetectionConfig,
    DynamicBatchingConfig,
    InstanceGroupConfig,
    ModelConfig,
    OnnxRuntimeConfig,
    QueuePolicyConfig,
    TensorConfig,
    check_batch_buckets,
    load_model_config,
    parse_model_config,
)
from .server import ServerConfig

__all__ = [
    "CONFIG_FILENAME",
    "DetectionConfig",
    "DynamicBatchingConfig",
    "InstanceGroupConfig",
    "ModelConfig",
    "OnnxRuntimeConfig",
    "QueuePolicyConfig",
    "ServerConfig",
    "TensorConfig",
    "check_batch_buckets",
    "load_model_config",
    "parse_model_config",
]
