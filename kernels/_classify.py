"""Classification post-processing, the Python side of ``bindings/classify.cpp``: ``softmax`` (and
``softmax_into``), ``topk`` and the fused ``classify_postprocess``.

Arguments are checked here, then the tier is picked by where the logits live (see ``_tiers``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _tiers
from ._tiers import NATIVE_CPU, _array, _check_threads, _describe, _is_device_array, _native, _numba


def _logits(x: Any, name: str) -> Any:
    _array(x, name, np.float32, 2, "[N, C]")
    if x.shape[1] < 1:
        raise ValueError(f"{name}: expected float32 [N, C] with C >= 1, got {_describe(x)}")
    return x


def softmax(logits: Any, *, num_threads: int = 0, stream: Any = None) -> Any:
    """Row-wise softmax of float32 [N, C] logits (max subtracted first), on the logits' device."""
    _logits(logits, "logits")
    num_threads = _check_threads(num_threads)
    if _is_device_array(logits):
        from . import _cuda

        return _cuda.softmax(None, logits, stream)
    return softmax_into(np.empty_like(logits), logits, num_threads=num_threads)


def softmax_into(out: Any, logits: Any, *, num_threads: int = 0, stream: Any = None) -> Any:
    """``softmax`` writing into ``out`` (float32 [N, C]; may be ``logits``). Returns out."""
    _logits(logits, "logits")
    num_threads = _check_threads(num_threads)
    device = _is_device_array(logits)
    _array(out, "out", np.float32, 2, "[N, C]", device)
    if tuple(out.shape) != tuple(logits.shape):
        raise ValueError(f"out: expected float32 {list(logits.shape)}, got {_describe(out)}")
    if device:
        from . import _cuda

        return _cuda.softmax(out, logits, stream)
    if not out.flags.writeable:
        raise ValueError("out: expected a writeable array")
    if _tiers._cpu_tier == NATIVE_CPU:
        _native.softmax_into(out, logits, num_threads)
    else:
        _numba().softmax(logits, out)
    return out


def topk(values: Any, k: int = 5, *, num_threads: int = 0, stream: Any = None) -> tuple[Any, Any]:
    """Row-wise top-k of float32 [N, C] by value desc then index asc (NaN last).

    Returns (values float32 [N, k], indices int32 [N, k]) on the input's device; 1 <= k <= C.
    """
    _logits(values, "values")
    num_threads = _check_threads(num_threads)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= values.shape[1]:
        raise ValueError(f"k: expected an int in [1, C={values.shape[1]}], got {k!r}")
    k = int(k)
    if _is_device_array(values):
        from . import _cuda

        return _cuda.topk(values, k, stream)
    if _tiers._cpu_tier == NATIVE_CPU:
        return _native.topk(values, k, num_threads)
    out_values = np.empty((values.shape[0], k), np.float32)
    out_indices = np.empty((values.shape[0], k), np.int32)
    _numba().topk(values, k, out_values, out_indices)
    return out_values, out_indices


def classify_postprocess(
    logits: Any, k: int = 5, *, apply_softmax: bool = True, num_threads: int = 0, stream: Any = None
) -> tuple[Any, Any]:
    """Softmax (unless the model already outputs probabilities) then top-k: (scores float32 [N, k],
    class ids int32 [N, k])."""
    probs = softmax(logits, num_threads=num_threads, stream=stream) if apply_softmax else logits
    return topk(probs, k, num_threads=num_threads, stream=stream)
