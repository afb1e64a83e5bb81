"""Triton's classification extension: an output requested with ``classification`` = K (``tritonclient``'s
``InferRequestedOutput(name, class_count=K)``) is answered as its K largest values per batch entry, as BYTES
strings ``"value:index"``, in descending order of value, shape [batch, K] (a model that does not batch:
[K]). K larger than an entry's number of values gives them all. Values print as Triton prints them
(C++'s ``std::to_string``: six decimals for floating point, integers as they are); equal values keep
their index order. Models here carry no label files, so no ``":label"`` follows.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import InvalidArgument

INLINE_CLASSES = 4096  # strings made on the event loop; more are made in a worker thread


def classify_outputs(outputs: dict[str, np.ndarray], counts: dict[str, int], batched: bool) -> dict[str, np.ndarray]:
    """``outputs`` with those named in ``counts`` answered as their top classes (:func:`classify`)."""
    return {name: classify(array, counts[name], batched, f"output '{name}'") if name in counts else array
            for name, array in outputs.items()}


def strings_to_make(outputs: dict[str, np.ndarray], counts: dict[str, int], batched: bool) -> int:
    """How many strings :func:`classify_outputs` makes of ``outputs``: one per class kept, per batch entry."""
    total = 0
    for name, k in counts.items():
        if (array := outputs.get(name)) is not None:
            rows = _rows(array, batched)
            total += rows.shape[0] * min(k, rows.shape[1])
    return total


def _rows(array: np.ndarray, batched: bool) -> np.ndarray:
    """``array`` as one row of values per batch entry (one row when the model does not batch)."""
    return array.reshape(array.shape[0] if batched and array.ndim else 1, -1)


def classify(array: np.ndarray, k: int, batched: bool, what: str) -> np.ndarray:
    """The ``k`` largest values of each batch entry of ``array`` (all of it when not ``batched``) as
    Triton's classification strings, BYTES [batch, k] or [k]. InvalidArgument for a BYTES output."""
    if array.dtype == object:
        raise InvalidArgument(f"{what}: parameters.classification: a BYTES output has no values to rank")
    rows = _rows(array, batched)
    k = min(k, rows.shape[1])
    floating = np.issubdtype(rows.dtype, np.floating)
    out = np.empty((rows.shape[0], k), dtype=object)
    for r, row in enumerate(rows):
        order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
        for c, i in enumerate(order):
            value = f"{float(row[i]):f}" if floating else str(int(row[i]))
            out[r, c] = f"{value}:{int(i)}".encode()
    return out if batched else out.reshape(k)
