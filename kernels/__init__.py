"""Peregrine pre-/post-processing kernels.

One API for every tier: NumPy arrays run on the native C++ kernels (or the numba tier when the native
module is missing or ``PEREGRINE_KERNELS=numba``), CuPy arrays on the native CUDA kernels.
``active_tier("cpu")`` / ``active_tier("cuda")`` say which tier runs. ``convert_raw`` turns raw camera
frames (Bayer, YUV 4:2:2, 16-bit, ... ``RAW_ENCODINGS``) into RGB frames, on the CPU tiers only.
"""

from __future__ import annotations

from ._classify import classify_postprocess, softmax, softmax_into, topk
from ._convert import RAW_ENCODINGS, RawEncoding, convert_raw, convert_raw_into, raw_encoding
from ._memory import guard_mapping, mapping_faulted, unguard_mapping
from ._postprocess import (
    LAYOUTS,
    Candidates,
    Detections,
    decode,
    detect_postprocess,
    detect_postprocess_into,
    map_boxes,
    map_boxes_into,
    nms,
)
from ._preprocess import (
    PARAM_PAD_X,
    PARAM_PAD_Y,
    PARAM_SCALE_X,
    PARAM_SCALE_Y,
    RESIZE_MODES,
    center_crop,
    center_crop_into,
    letterbox,
    letterbox_into,
    resize,
    resize_into,
)
from ._tiers import NATIVE_CPU, NATIVE_CUDA, NUMBA, active_tier, cuda_available, has_native, set_cpu_tier

__all__ = [
    "LAYOUTS",
    "NATIVE_CPU",
    "NATIVE_CUDA",
    "NUMBA",
    "PARAM_PAD_X",
    "PARAM_PAD_Y",
    "PARAM_SCALE_X",
    "PARAM_SCALE_Y",
    "RAW_ENCODINGS",
    "RESIZE_MODES",
    "Candidates",
    "Detections",
    "RawEncoding",
    "active_tier",
    "center_crop",
    "center_crop_into",
    "classify_postprocess",
    "convert_raw",
    "convert_raw_into",
    "cuda_available",
    "decode",
    "detect_postprocess",
    "detect_postprocess_into",
    "guard_mapping",
    "has_native",
    "letterbox",
    "letterbox_into",
    "map_boxes",
    "map_boxes_into",
    "mapping_faulted",
    "nms",
    "raw_encoding",
    "resize",
    "resize_into",
    "set_cpu_tier",
    "softmax",
    "softmax_into",
    "topk",
    "unguard_mapping",
]
