"""Tier selection and the argument checks shared by the op families (the Python side of
``bindings/main.cpp`` and ``bindings/common.hpp``); ``_preprocess``, ``_postprocess`` and ``_classify`` dispatch
with them.

* NumPy arrays run on the native CPU kernels (``_native``), or on the numba tier when ``_native`` cannot be
  imported or ``PEREGRINE_KERNELS=numba`` is set.
* Arrays that expose ``__cuda_array_interface__`` (CuPy) run on the native CUDA kernels, on the current
  CuPy stream (or the ``stream`` argument).

The CPU tier is one state, ``_cpu_tier`` here (changed by ``set_cpu_tier``); the families read it as
``_tiers._cpu_tier`` at call time. Argument errors raise ``ValueError`` (shapes, sizes, ranges) or
``TypeError`` (dtypes, array kinds) with a message naming the argument, what was expected and what came,
before any tier runs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

try:
    from . import _native  # type: ignore[attr-defined]  # compiled; absent in a pure-Python checkout
except ImportError:  # the numba tier serves
    _native = None

NATIVE_CPU = "native-cpu"
NATIVE_CUDA = "native-cuda"
NUMBA = "numba"
_NONE = "none"


def _initial_cpu_tier() -> str:
    requested = os.environ.get("PEREGRINE_KERNELS", "auto").strip().lower()
    if requested in ("", "auto"):
        return NATIVE_CPU if _native is not None else NUMBA
    if requested in ("numba",):
        return NUMBA
    if requested in ("native", NATIVE_CPU):
        if _native is None:
            raise ImportError("PEREGRINE_KERNELS=native but peregrine.kernels._native is not importable")
        return NATIVE_CPU
    raise ValueError(f"PEREGRINE_KERNELS: expected auto, native or numba, got {requested!r}")


_cpu_tier = _initial_cpu_tier()


def active_tier(device: str = "cpu") -> str:
    """The tier that runs for arrays on ``device``.

    ``device="cpu"`` (NumPy arrays): ``"native-cpu"`` or ``"numba"``. ``device="cuda"`` (CuPy arrays):
    ``"native-cuda"`` when the native module has CUDA kernels and a device is usable, else ``"none"``.
    """
    if device == "cpu":
        return _cpu_tier
    if device == "cuda":
        return NATIVE_CUDA if cuda_available() else _NONE
    raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")


def set_cpu_tier(tier: str) -> str:
    """Choose the tier for NumPy arrays (``"native-cpu"`` or ``"numba"``); returns the previous one.

    Meant for tests and benchmarks; servers set ``PEREGRINE_KERNELS`` instead.
    """
    global _cpu_tier
    if tier not in (NATIVE_CPU, NUMBA):
        raise ValueError(f"tier: expected {NATIVE_CPU!r} or {NUMBA!r}, got {tier!r}")
    if tier == NATIVE_CPU and _native is None:
        raise RuntimeError("tier 'native-cpu': peregrine.kernels._native is not importable")
    previous, _cpu_tier = _cpu_tier, tier
    return previous


def has_native() -> bool:
    """Whether the native module imports (whatever tier is selected)."""
    return _native is not None


def cuda_available() -> bool:
    """Whether CUDA arrays can be processed: a CUDA build of the native module and at least one device."""
    return _native is not None and _native.has_cuda() and _native.cuda_device_count() > 0


def _numba():
    from . import _numba as module  # imported on first use: numba takes a while to import

    return module


# ------------------------------------------------------------------------------------------------------
# Argument checks shared by the families
# ------------------------------------------------------------------------------------------------------


def _is_device_array(obj: object) -> bool:
    return hasattr(type(obj), "__cuda_array_interface__")


def _describe(obj: object) -> str:
    if isinstance(obj, np.ndarray) or _is_device_array(obj):
        kind = "" if isinstance(obj, np.ndarray) else f"{type(obj).__module__}.{type(obj).__name__} "
        return f"{kind}{obj.dtype} {list(obj.shape)}"  # type: ignore[attr-defined]
    return type(obj).__name__


def _c_contiguous(a: Any) -> bool:
    return bool(a.flags.c_contiguous)


def _check_threads(num_threads: int) -> int:
    if not isinstance(num_threads, (int, np.integer)) or isinstance(num_threads, bool) or num_threads < 0:
        raise ValueError(f"num_threads: expected an int >= 0 (0 = all cores), got {num_threads!r}")
    return int(num_threads)


def _array(obj: Any, name: str, dtype: Any, ndim: int, shape_text: str, device: bool | None = None) -> Any:
    on_device = _is_device_array(obj)
    if not on_device and not isinstance(obj, np.ndarray):
        raise TypeError(f"{name}: expected a numpy or CuPy {np.dtype(dtype)} {shape_text}, got {_describe(obj)}")
    if device is not None and on_device != device:
        where = "a CuPy array (like the other inputs)" if device else "a numpy.ndarray (like the other inputs)"
        raise TypeError(f"{name}: expected {where}, got {_describe(obj)}")
    if obj.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected {np.dtype(dtype)} {shape_text}, got {_describe(obj)}")
    if obj.ndim != ndim:
        raise ValueError(f"{name}: expected {np.dtype(dtype)} {shape_text}, got {_describe(obj)}")
    if not _c_contiguous(obj):
        raise ValueError(f"{name}: expected a C-contiguous array")
    return obj
