"""CuPy glue for the native CUDA kernels: reads device pointers, allocates outputs and scratch with CuPy
(on the caller's device and stream, from CuPy's memory pool) and launches on that stream.

Called only by the family modules (``_preprocess``, ``_postprocess``, ``_classify``) after they have checked
dtypes and shapes; the kernels never allocate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _native  # type: ignore[attr-defined]  # compiled module

try:
    import cupy
except ImportError:  # pragma: no cover - only reached with a CUDA array and no CuPy
    cupy = None

_shared_memory: dict[int, int] = {}


def _require() -> None:
    if cupy is None:
        raise RuntimeError("CUDA arrays need CuPy (pip install cupy-cuda13x)")
    if _native is None or not _native.has_cuda():
        raise RuntimeError("peregrine.kernels._native was built without CUDA (PEREGRINE_CUDA=OFF or no nvcc)")
    if _native.cuda_device_count() == 0:
        raise RuntimeError("no usable CUDA device or driver")


@contextlib.contextmanager
def _on(arrays: list[Any], stream: Any) -> Iterator[int]:
    """Enter the arrays' device and ``stream`` (a CuPy stream, or an int handle entered as an
    ExternalStream), so that uploads and CuPy allocations in the block are ordered on it; yield its handle."""
    _require()
    devices = {a.device.id for a in arrays if hasattr(a, "__cuda_array_interface__") and hasattr(a, "device")}
    if len(devices) > 1:
        raise ValueError(f"inputs: expected arrays on one CUDA device, got devices {sorted(devices)}")
    device = devices.pop() if devices else cupy.cuda.Device().id
    with cupy.cuda.Device(device):
        if stream is None:
            yield cupy.cuda.get_current_stream().ptr
        elif isinstance(stream, (cupy.cuda.Stream, cupy.cuda.ExternalStream)):
            with stream:
                yield stream.ptr
        elif isinstance(stream, int):
            with cupy.cuda.ExternalStream(stream):
                yield stream
        else:
            raise TypeError(f"stream: expected a cupy.cuda.Stream, an int handle or None, got {type(stream).__name__}")


def _upload(a: Any) -> Any:
    """A host array copied to the current device on the current stream (inside ``_on``); device arrays as they are."""
    return cupy.asarray(a) if isinstance(a, np.ndarray) else a


def _ptr(a: Any) -> int:
    return 0 if a is None else int(a.__cuda_array_interface__["data"][0])


def _check_out(out: Any, name: str, dtype: Any, shape: tuple[int, ...]) -> Any:
    if not hasattr(type(out), "__cuda_array_interface__"):
        raise TypeError(f"{name}: expected a CuPy array like the inputs, got {type(out).__name__}")
    if out.dtype != np.dtype(dtype) or tuple(out.shape) != shape:
        raise ValueError(f"{name}: expected {np.dtype(dtype)} {list(shape)}, got {out.dtype} {list(out.shape)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")
    return out


def _check_shared(capacity: int, max_det: int, what: str) -> None:
    device = cupy.cuda.Device().id
    if device not in _shared_memory:
        _shared_memory[device] = _native.cuda_detect_max_shared_bytes()
    need = _native.cuda_detect_shared_bytes(capacity, max_det)
    if need > _shared_memory[device]:
        raise ValueError(
            f"{what}: {capacity} candidates and max_det {max_det} need {need} bytes of shared memory per block, "
            f"this GPU has {_shared_memory[device]}; lower max_candidates (at most 16384 on H100)"
        )


def _scratch(n: int, anchors: int) -> tuple[Any, Any, Any]:
    size = max(1, n * anchors)
    return cupy.empty(size, cupy.uint64), cupy.empty(size, cupy.int32), cupy.empty(max(1, n), cupy.int32)


def _mask(mask: np.ndarray | None) -> tuple[Any, int]:
    if mask is None:
        return None, 0
    return cupy.asarray(mask), int(mask.shape[0])


def resize_nchw(
    out: Any,
    frames: list[Any],
    placements: np.ndarray,
    height: int,
    width: int,
    transform: Any,
    resize: str,
    dtype: Any,
    stream: Any,
) -> Any:
    with _on([*frames, out], stream) as handle:
        n = len(frames)
        if out is None:
            out = cupy.empty((n, 3, height, width), np.dtype(dtype))
        descs = [(_ptr(f), int(f.shape[0]), int(f.shape[1]), int(f.strides[0])) for f in frames]
        lut = None if transform.lut is None else _upload(transform.lut)  # on this stream, like detection's params
        _native.cuda_resize_nchw(
            _ptr(out),
            out.dtype == np.float16,
            descs,
            placements,
            height,
            width,
            transform.src_channel,
            transform.mul,
            transform.add,
            transform.pad,
            resize,
            handle,
            _ptr(lut),
        )
    return out


def decode(
    head: Any, layout: int, anchors: int, conf: float, max_candidates: int, mask: np.ndarray | None, stream: Any
) -> tuple[Any, ...]:
    with _on([head], stream) as handle:
        n = int(head.shape[0])
        classes = int(head.shape[1] - 4) if layout == 0 else int(head.shape[2] - 5) if layout == 1 else 0
        cap = max(1, min(max_candidates, anchors))
        _check_shared(cap, 0, "max_candidates")
        boxes = cupy.empty((n, cap, 4), cupy.float32)
        scores = cupy.empty((n, cap), cupy.float32)
        class_ids = cupy.empty((n, cap), cupy.int32)
        anchor_ids = cupy.empty((n, cap), cupy.int32)
        counts = cupy.empty(n, cupy.int32)
        keys, scratch_classes, scratch_counts = _scratch(n, anchors)
        allowed, allowed_size = _mask(mask)
        _native.cuda_decode(
            _ptr(head),
            layout,
            n,
            anchors,
            classes,
            conf,
            max_candidates,
            _ptr(allowed),
            allowed_size,
            _ptr(boxes),
            _ptr(scores),
            _ptr(class_ids),
            _ptr(anchor_ids),
            _ptr(counts),
            cap,
            _ptr(keys),
            _ptr(scratch_classes),
            _ptr(scratch_counts),
            handle,
        )
    return boxes, scores, class_ids, anchor_ids, counts


def nms(
    boxes: Any, scores: Any, class_ids: Any, counts: Any, iou: float, max_det: int, agnostic: bool, stream: Any
) -> tuple[Any, Any]:
    with _on([boxes, scores, class_ids, counts], stream) as handle:
        n, k = int(boxes.shape[0]), int(boxes.shape[1])
        _check_shared(max(1, k), max_det, "boxes")
        keep = cupy.empty((n, max_det), cupy.int32)
        kept = cupy.empty(n, cupy.int32)
        keys, scratch_classes, scratch_counts = _scratch(n, k)
        _native.cuda_nms(
            _ptr(boxes),
            _ptr(scores),
            _ptr(class_ids),
            _ptr(counts),
            n,
            k,
            iou,
            max_det,
            agnostic,
            _ptr(keep),
            _ptr(kept),
            _ptr(keys),
            _ptr(scratch_classes),
            _ptr(scratch_counts),
            handle,
        )
    return keep, kept


def map_boxes(out: Any, boxes: Any, params: Any, sizes: Any, stream: Any) -> Any:
    with _on([boxes, out, params, sizes], stream) as handle:
        params, sizes = _upload(params), _upload(sizes)
        if out is None:
            out = cupy.empty_like(boxes)
        _check_out(out, "out", np.float32, tuple(boxes.shape))
        _native.cuda_map_boxes(
            _ptr(boxes), _ptr(out), int(boxes.shape[0]), int(boxes.shape[1]), _ptr(params), _ptr(sizes), handle
        )
    return out


def detect_postprocess(
    dets: Any,
    counts: Any,
    head: Any,
    layout: int,
    anchors: int,
    conf: float,
    iou: float,
    max_det: int,
    max_candidates: int,
    mask: np.ndarray | None,
    agnostic: bool,
    params: Any,
    sizes: Any,
    stream: Any,
) -> tuple[Any, Any]:
    with _on([head, dets, counts, params, sizes], stream) as handle:
        params, sizes = _upload(params), _upload(sizes)
        n = int(head.shape[0])
        classes = int(head.shape[1] - 4) if layout == 0 else int(head.shape[2] - 5) if layout == 1 else 0
        limit = max_det if layout == 2 else max_candidates  # end-to-end heads: the first max_det rows
        _check_shared(max(1, min(limit, anchors)), max_det, "max_det" if layout == 2 else "max_candidates")
        if dets is None:
            dets = cupy.empty((n, max_det, 6), cupy.float32)
            counts = cupy.empty(n, cupy.int32)
        keys, scratch_classes, scratch_counts = _scratch(n, anchors)
        allowed, allowed_size = _mask(mask)
        _native.cuda_detect_postprocess(
            _ptr(head),
            layout,
            n,
            anchors,
            classes,
            conf,
            iou,
            max_det,
            max_candidates,
            _ptr(allowed),
            allowed_size,
            agnostic,
            _ptr(params),
            _ptr(sizes),
            _ptr(dets),
            _ptr(counts),
            _ptr(keys),
            _ptr(scratch_classes),
            _ptr(scratch_counts),
            handle,
        )
    return dets, counts


def softmax(out: Any, logits: Any, stream: Any) -> Any:
    with _on([logits, out], stream) as handle:
        if out is None:
            out = cupy.empty_like(logits)
        _native.cuda_softmax(_ptr(logits), _ptr(out), int(logits.shape[0]), int(logits.shape[1]), handle)
    return out


def topk(values: Any, k: int, stream: Any) -> tuple[Any, Any]:
    with _on([values], stream) as handle:
        n = int(values.shape[0])
        out_values = cupy.empty((n, k), cupy.float32)
        out_indices = cupy.empty((n, k), cupy.int32)
        _native.cuda_topk(_ptr(values), n, int(values.shape[1]), k, _ptr(out_values), _ptr(out_indices), handle)
    return out_values, out_indices
