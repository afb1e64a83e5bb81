"""Peregrine pre-/post-processing kernels.

One API for every tier: NumPy arrays run on the native C++ kernels (or the numba tier when the native
module is missing or ``PEREGRINE_KERNELS=numba``), CuPy arrays on the native CUDA kernels.
``active_tier("cpu")`` / ``active_tier("cuda")`` say which tier runs.
"""

from __future__ import annotations

from ._dispatch import (
    NATIVE_CPU,
    NATIVE_CUDA,
    NUMBA,
    PARAM_PAD_X,
    PARAM_PAD_Y,
    PARAM_SCALE_X,
    PARAM_SCALE_Y,
    active_tier,
    center_crop,
    center_crop_into,
    cuda_available,
    has_native,
    letterbox,
    letterbox_into,
    resize,
    resize_into,
    set_cpu_tier,
)

__all__ = [
    "NATIVE_CPU",
    "NATIVE_CUDA",
    "NUMBA",
    "PARAM_PAD_X",
    "PARAM_PAD_Y",
    "PARAM_SCALE_X",
    "PARAM_SCALE_Y",
    "active_tier",
    "center_crop",
    "center_crop_into",
    "cuda_available",
    "has_native",
    "letterbox",
    "letterbox_into",
    "resize",
    "resize_into",
    "set_cpu_tier",
]
