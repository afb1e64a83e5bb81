"""Datatype names of the Open Inference Protocol and their NumPy / ONNX / model-config equivalents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DataType:
    """One OIP datatype. ``itemsize`` is 0 for BYTES (variable length)."""

    name: str  # OIP name, e.g. "FP32"
    numpy: np.dtype
    onnx: str  # ONNX Runtime type string, e.g. "tensor(float)"
    config: str  # model-config enum name, e.g. "TYPE_FP32"
    contents_field: str | None  # InferTensorContents field, None where OIP has none

    @property
    def itemsize(self) -> int:
        return 0 if self.name == "BYTES" else self.numpy.itemsize


_ALL = [
    DataType("BOOL", np.dtype(np.bool_), "tensor(bool)", "TYPE_BOOL", "bool_contents"),
    DataType("UINT8", np.dtype(np.uint8), "tensor(uint8)", "TYPE_UINT8", "uint_contents"),
    DataType("UINT16", np.dtype(np.uint16), "tensor(uint16)", "TYPE_UINT16", "uint_contents"),
    DataType("UINT32", np.dtype(np.uint32), "tensor(uint32)", "TYPE_UINT32", "uint_contents"),
    DataType("UINT64", np.dtype(np.uint64), "tensor(uint64)", "TYPE_UINT64", "uint64_contents"),
    DataType("INT8", np.dtype(np.int8), "tensor(int8)", "TYPE_INT8", "int_contents"),
    DataType("INT16", np.dtype(np.int16), "tensor(int16)", "TYPE_INT16", "int_contents"),
    DataType("INT32", np.dtype(np.int32), "tensor(int32)", "TYPE_INT32", "int_contents"),
    DataType("INT64", np.dtype(np.int64), "tensor(int64)", "TYPE_INT64", "int64_contents"),
    DataType("FP16", np.dtype(np.float16), "tensor(float16)", "TYPE_FP16", None),
    DataType("FP32", np.dtype(np.float32), "tensor(float)", "TYPE_FP32", "fp32_contents"),
    DataType("FP64", np.dtype(np.float64), "tensor(double)", "TYPE_FP64", "fp64_contents"),
    DataType("BYTES", np.dtype(np.object_), "tensor(string)", "TYPE_STRING", "bytes_contents"),
]

BY_NAME: dict[str, DataType] = {d.name: d for d in _ALL}
BY_ONNX: dict[str, DataType] = {d.onnx: d for d in _ALL}
BY_CONFIG: dict[str, DataType] = {d.config: d for d in _ALL}
# BYTES is the only datatype stored as Python objects; every other NumPy dtype maps one to one.
BY_NUMPY: dict[np.dtype, DataType] = {d.numpy: d for d in _ALL}


def from_name(name: str) -> DataType:
    """The datatype for an OIP name; raises KeyError for an unknown name."""
    return BY_NAME[name]


def from_numpy(dtype: np.dtype) -> DataType:
    """The datatype for a NumPy dtype; str/bytes arrays map to BYTES."""
    if dtype.kind in ("U", "S", "O"):
        return BY_NAME["BYTES"]
    return BY_NUMPY[np.dtype(dtype)]
