"""The tensors a load run sends: random data shaped from the model's metadata, a real image fitted to
the model's image input, or arrays from ``.npy`` files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..images import letterbox_hwc, letterbox_nchw
from ..metadata import ModelMetadata, TensorMetadata
from ..tensors import NUMPY_OF


def resolve_shape(tensor: TensorMetadata, override: Sequence[int] | None, batch_size: int) -> tuple[int, ...]:
    """The concrete shape to send for ``tensor``. A leading -1 is the batch dimension (``batch_size``);
    ``override`` is the full shape, or the shape without the batch dimension (perf_analyzer's ``--shape``).

    Raises ValueError for a dynamic dimension left without a size, or an override that contradicts a
    fixed dimension."""
    meta = list(tensor.shape)
    if override is not None:
        dims = list(override)
        if len(dims) == len(meta) - 1 and meta and meta[0] == -1:
            dims = [batch_size, *dims]
        if len(dims) != len(meta):
            raise ValueError(f"input '{tensor.name}': shape {list(override)} has {len(override)} dimensions, "
                             f"the model's {meta} has {len(meta)}")
        for i, (m, d) in enumerate(zip(meta, dims, strict=True)):
            if d <= 0 or (m != -1 and m != d):
                raise ValueError(f"input '{tensor.name}': dimension {i} must be {m if m != -1 else 'positive'}, "
                                 f"got {d} in {dims}")
        return tuple(dims)
    if meta and meta[0] == -1:
        meta[0] = batch_size
    if -1 in meta:
        raise ValueError(f"input '{tensor.name}' has dynamic dimensions {list(tensor.shape)}; give a size with "
                         f"--shape {tensor.name}:" + ",".join("D" if d == -1 else str(d) for d in tensor.shape))
    return tuple(meta)


def random_tensor(datatype: str, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Seeded random data of an OIP datatype: floats in [0, 1), integers in 0..100, random booleans,
    BYTES elements of 16 printable ASCII characters."""
    shape = tuple(shape)
    if datatype == "BYTES":
        flat = [bytes(rng.integers(32, 127, size=16, dtype=np.uint8)) for _ in range(int(np.prod(shape)))]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(shape)
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    dt = NUMPY_OF.get(datatype)
    if dt is None:
        raise ValueError(f"datatype '{datatype}' is not an OIP datatype this harness can generate")
    if dt.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dt)
    return rng.integers(0, 101, size=shape).astype(dt)


def image_input(meta: ModelMetadata) -> TensorMetadata:
    """The model's image input: its only input, or the only 4-D input with 3 channels (NCHW or NHWC).

    Raises ValueError when there is no single such input (name it with --image-input)."""
    if len(meta.inputs) == 1:
        return meta.inputs[0]
    found = [t for t in meta.inputs if len(t.shape) == 4 and 3 in (t.shape[1], t.shape[3])]
    if len(found) != 1:
        raise ValueError(f"model '{meta.name}': cannot tell which input is the image "
                         f"({[t.name for t in meta.inputs]}); name it with --image-input")
    return found[0]


def image_tensor(image: np.ndarray, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """An RGB uint8 ``[H,W,3]`` image fitted (letterboxed) to an ``[N,3,H,W]`` (floats scaled to [0, 1], or
    uint8) or ``[N,H,W,3]`` uint8 input, repeated over the batch.

    Raises ValueError for any other layout or datatype."""
    if len(shape) != 4:
        raise ValueError(f"image input must be 4-D [N,3,H,W] or [N,H,W,3], got {list(shape)}")
    n = shape[0]
    if shape[1] == 3 and datatype in ("FP32", "FP16"):
        one, _ = letterbox_nchw(image, shape[2], shape[3])
        return np.repeat(one.astype(NUMPY_OF[datatype]), n, axis=0)
    if datatype == "UINT8" and shape[3] == 3:
        boxed, _ = letterbox_hwc(image, shape[1], shape[2])
        return np.repeat(boxed[None], n, axis=0)
    if datatype == "UINT8" and shape[1] == 3:
        boxed, _ = letterbox_hwc(image, shape[2], shape[3])
        return np.repeat(boxed.transpose(2, 0, 1)[None], n, axis=0)
    raise ValueError(f"image input: expected FP32/FP16 [N,3,H,W] or UINT8 [N,H,W,3]/[N,3,H,W], "
                     f"got {datatype} {list(shape)}")


def make_inputs(meta: ModelMetadata, *, batch_size: int = 1, shapes: Mapping[str, Sequence[int]] | None = None,
                image: np.ndarray | None = None, image_input_name: str | None = None,
                arrays: Mapping[str, np.ndarray] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """One request's inputs for ``meta``: ``arrays`` as given, the ``image`` for the image input, random
    data for the rest. Raises ValueError (unknown input name, datatype mismatch, unresolved shape)."""
    shapes = dict(shapes or {})
    arrays = dict(arrays or {})
    names = {t.name for t in meta.inputs}
    unknown = (set(shapes) | set(arrays)) - names
    if unknown:
        raise ValueError(f"model '{meta.name}' has no input {sorted(unknown)}; inputs: {sorted(names)}")
    target = None
    if image is not None:
        target = meta.input(image_input_name) if image_input_name else image_input(meta)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in meta.inputs:
        if t.name in arrays:
            a = arrays[t.name]
            want = NUMPY_OF.get(t.datatype)
            if t.datatype != "BYTES" and want is not None and a.dtype != want:
                raise ValueError(f"input '{t.name}': the model takes {t.datatype}, the array is {a.dtype}")
            out[t.name] = a
            continue
        shape = resolve_shape(t, shapes.get(t.name), batch_size)
        if target is not None and t.name == target.name:
            assert image is not None
            out[t.name] = image_tensor(image, t.datatype, shape)
        else:
            out[t.name] = random_tensor(t.datatype, shape, rng)
    return out
