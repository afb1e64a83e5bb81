"""Peregrine pre-/post-processing kernels.

One API for every tier: NumPy arrays run on the native C++ kernels (or the numba tier when the native
module is missing or ``PEREGRINE_KERNELS=numba``), CuPy arrays on the native CUDA kernels.
``active_tier("cpu")`` / ``active_tier("cuda")`` say which tier runs.
"""

from __future__ import annotations

from ._dispatch import (
    LAYOUTS,
    NATIVE_CPU,
    NATIVE_CUDA,
    NUMBA,
    PARAM_PAD_X,
    PARAM_PAD_Y,
    PARAM_SCALE_X,
    PARAM_SCALE_Y,
    Candidates,
    Detections,
    active_tier,
    center_crop,
    center_crop_into,
    classify_postprocess,
    cuda_available,
    decode,
    detect_postprocess,
    detect_postprocess_into,
    has_native,
    letterbox,
    letterbox_into,
    map_boxes,
    map_boxes_into,
    nms,
    resize,
    resize_into,
    set_cpu_tier,
    softmax,
    softmax_into,
    topk,
)

__all__ = [
    "LAYOUTS",
    "NATIVE_CPU",
    "NATIVE_CUDA",
    "NUMBA",
    "PARAM_PAD_X",
    "PARAM_PAD_Y",
    "PARAM_SCALE_X",
    "PARAM_SCALE_Y",
    "Candidates",
    "Detections",
    "active_tier",
    "center_crop",
    "center_crop_into",
    "classify_postprocess",
    "cuda_available",
    "decode",
    "detect_postprocess",
    "detect_postprocess_into",
    "has_native",
    "letterbox",
    "letterbox_into",
    "map_boxes",
    "map_boxes_into",
    "nms",
    "resize",
    "resize_into",
    "set_cpu_tier",
    "softmax",
    "softmax_into",
    "topk",
]
