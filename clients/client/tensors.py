"""NumPy arrays <-> Open Inference Protocol tensors, on the client side.

Inputs travel in ``raw_input_contents`` (little-endian, row-major), or stay in a registered shared-memory
region (a :class:`SharedMemoryInput` given instead of an array); BYTES elements are each a 4-byte
little-endian length followed by the bytes. Outputs are decoded from ``raw_output_contents``, from the typed
``contents`` fields for servers that answer that way, or read from the shared-memory region they were
requested into (a :class:`SharedMemoryOutput`). Decoded numeric outputs are read-only views of the
response's bytes (no copy); call ``.copy()`` to modify one.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np
from peregrine.proto import grpc_service_pb2 as pb

from .errors import PeregrineClientError

_LEN = struct.Struct("<I")

# OIP datatype name -> NumPy dtype (little-endian). BYTES arrays hold Python bytes objects.
NUMPY_OF: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
_TYPED_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype name for an array's dtype. Object, ``S`` and ``U`` arrays are BYTES.

    Raises ValueError for a dtype the protocol has no name for (complex, datetime, ...)."""
    dt = array.dtype
    if dt.kind in "OSU":
        return "BYTES"
    for name, np_dt in NUMPY_OF.items():
        if name != "BYTES" and dt.kind == np_dt.kind and dt.itemsize == np_dt.itemsize:
            return name
    raise ValueError(f"dtype {dt} has no Open Inference Protocol datatype; expected bool, (u)int8..64, float16/32/64, "
                     "or bytes/str (BYTES)")


def encode_bytes(array: np.ndarray) -> bytes:
    """OIP's BYTES serialization of every element in row-major order; ``str`` elements are UTF-8 encoded."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        b = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def decode_bytes(raw: bytes | memoryview, shape: Sequence[int], name: str = "", exact: bool = True) -> np.ndarray:
    """The inverse of :func:`encode_bytes`: an object array of ``bytes``. ``exact`` False allows bytes
    after the last element (a tensor read from a larger shared-memory slice).

    Raises PeregrineClientError (DATA_LOSS) when the lengths do not add up to ``raw``."""
    count = math.prod(shape)
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise _bad_output(name, f"BYTES element {i} of {count} has no length prefix")
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > len(view):
            raise _bad_output(name, f"BYTES element {i} claims {n} bytes, {len(view) - pos} remain")
        out[i] = bytes(view[pos:pos + n])
        pos += n
    if exact and pos != len(view):
        raise _bad_output(name, f"{len(view) - pos} bytes left over after {count} BYTES elements")
    return out.reshape(tuple(shape))


def _bad_output(name: str, what: str) -> PeregrineClientError:
    return PeregrineClientError(grpc.StatusCode.DATA_LOSS, f"output '{name}': {what}", "ModelInfer")


def raw_bytes(array: np.ndarray) -> tuple[str, bytes]:
    """(datatype, payload) of one input tensor as it goes into ``raw_input_contents``."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        return datatype, encode_bytes(array)
    target = NUMPY_OF[datatype]
    if array.dtype != target:  # big-endian input: the protocol is little-endian
        array = array.astype(target)
    return datatype, np.ascontiguousarray(array).tobytes()


def set_parameter(param: pb.InferParameter, value: bool | int | float | str) -> None:
    """Store a Python value in an InferParameter (bool, int64, double or string)."""
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise TypeError(f"parameter value {value!r}: expected bool, int, float or str")


def parameter_value(param: pb.InferParameter) -> bool | int | float | str | None:
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


SHM_REGION, SHM_OFFSET, SHM_BYTE_SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"


@dataclass(frozen=True)
class SharedMemoryInput:
    """An input whose data sits in a registered shared-memory region: ``byte_size`` bytes at ``offset`` of
    region ``region``, a ``datatype`` tensor of ``shape``. Made by :meth:`SystemSharedMemory.put` or
    ``input_at``; pass it in ``inputs`` instead of an array."""

    region: str
    datatype: str
    shape: tuple[int, ...]
    offset: int
    byte_size: int


class SharedMemoryReader(Protocol):
    """What an output region must offer: its registered name and a way to read a tensor back."""

    name: str

    def read(self, datatype: str, shape: tuple[int, ...] | list[int], offset: int = 0,
             byte_size: int | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class SharedMemoryOutput:
    """Room for one output in a registered region: ``byte_size`` bytes at ``offset``. Made by
    :meth:`SystemSharedMemory.output_at`; pass it in ``outputs_to_shm``."""

    region: SharedMemoryReader
    offset: int
    byte_size: int


@dataclass
class InferRequest:
    """One inference request, as given to :meth:`InferenceClient.stream_infer`.

    ``inputs`` maps input names to arrays, or to :class:`SharedMemoryInput` for data in a registered
    region; ``outputs`` names the outputs to return (None: all, or only those of ``outputs_to_shm`` when
    that is given); ``outputs_to_shm`` maps output names to the region slices the server writes them to;
    ``priority`` is the model's priority level (1 is the most urgent); ``timeout_us`` is the server-side
    queue timeout in microseconds (the request is answered DEADLINE_EXCEEDED if it has not started by then);
    ``id`` is echoed in the result."""

    model: str
    inputs: Mapping[str, np.ndarray | SharedMemoryInput]
    outputs: Sequence[str] | None = None
    version: str = ""
    parameters: Mapping[str, bool | int | float | str] | None = None
    priority: int | None = None
    timeout_us: int | None = None
    id: str = ""
    outputs_to_shm: Mapping[str, SharedMemoryOutput] | None = None


@dataclass
class StreamResult:
    """One answer of a stream: ``outputs`` when it succeeded, ``error`` (the server's message) when not.
    The stream goes on after a failed request."""

    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def build_request(request: InferRequest) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input in ``raw_input_contents``.

    Raises ValueError for an array whose dtype has no OIP datatype, or a negative priority/timeout."""
    msg = pb.ModelInferRequest(model_name=request.model, model_version=request.version, id=request.id)
    for name, value in request.inputs.items():
        if isinstance(value, SharedMemoryInput):
            tensor = msg.inputs.add(name=name, datatype=value.datatype, shape=value.shape)
            _shm_parameters(tensor, value.region, value.offset, value.byte_size)
            continue
        array = np.asarray(value)
        datatype, payload = raw_bytes(array)
        msg.inputs.add(name=name, datatype=datatype, shape=array.shape)
        msg.raw_input_contents.append(payload)
    to_shm = request.outputs_to_shm or {}
    for name in dict.fromkeys([*(request.outputs or ()), *to_shm]):
        out = msg.outputs.add(name=name)
        if name in to_shm:
            slot = to_shm[name]
            _shm_parameters(out, slot.region.name, slot.offset, slot.byte_size)
    for key, param in (request.parameters or {}).items():
        set_parameter(msg.parameters[key], param)
    # Triton's conventions (tritonclient sends the same): priority as uint64, timeout in microseconds as int64.
    if request.priority is not None:
        if request.priority < 0:
            raise ValueError(f"priority: expected a non-negative level, got {request.priority}")
        msg.parameters["priority"].uint64_param = request.priority
    if request.timeout_us is not None:
        if request.timeout_us < 0:
            raise ValueError(f"timeout_us: expected a non-negative number of microseconds, got {request.timeout_us}")
        msg.parameters["timeout"].int64_param = request.timeout_us
    return msg


def _shm_parameters(tensor: Any, region: str, offset: int, byte_size: int) -> None:
    """The parameters that put a tensor in shared memory (Triton's names and types)."""
    tensor.parameters[SHM_REGION].string_param = region
    tensor.parameters[SHM_BYTE_SIZE].int64_param = byte_size
    if offset:
        tensor.parameters[SHM_OFFSET].int64_param = offset


def _typed_output(tensor: Any, shape: tuple[int, ...]) -> np.ndarray:
    datatype = tensor.datatype
    field_name = _TYPED_FIELD.get(datatype)
    if field_name is None:
        raise _bad_output(tensor.name, f"datatype {datatype} has no typed contents and no raw contents came")
    values = list(getattr(tensor.contents, field_name))
    if len(values) != math.prod(shape):
        raise _bad_output(tensor.name, f"shape {list(shape)} needs {math.prod(shape)} elements, got {len(values)}")
    if datatype == "BYTES":
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape(shape)
    return np.array(values, dtype=NUMPY_OF[datatype]).reshape(shape)


def parse_response(msg: pb.ModelInferResponse,
                   outputs_to_shm: Mapping[str, SharedMemoryOutput] | None = None) -> dict[str, np.ndarray]:
    """Outputs of a ModelInferResponse by name; those in ``outputs_to_shm`` are read from their region
    (numeric ones as views of it, see :meth:`SystemSharedMemory.read`).

    Raises PeregrineClientError (DATA_LOSS) for an unknown datatype or contents that do not match the shape."""
    out: dict[str, np.ndarray] = {}
    raw = msg.raw_output_contents
    to_shm = outputs_to_shm or {}
    for i, tensor in enumerate(msg.outputs):
        shape = tuple(int(d) for d in tensor.shape)
        if tensor.datatype not in NUMPY_OF:
            raise _bad_output(tensor.name, f"unknown datatype '{tensor.datatype}'")
        slot = to_shm.get(tensor.name)
        if slot is not None:
            written = tensor.parameters.get(SHM_BYTE_SIZE)  # Peregrine says how many bytes it wrote
            size = int(written.int64_param) if written is not None else None
            out[tensor.name] = slot.region.read(tensor.datatype, shape, slot.offset, size)
            continue
        if SHM_REGION in tensor.parameters:  # in a region this call did not name: nothing to read here
            continue
        if i >= len(raw):
            out[tensor.name] = _typed_output(tensor, shape)
            continue
        if tensor.datatype == "BYTES":
            out[tensor.name] = decode_bytes(raw[i], shape, tensor.name)
            continue
        dt = NUMPY_OF[tensor.datatype]
        expected = math.prod(shape) * dt.itemsize
        if len(raw[i]) != expected:
            raise _bad_output(tensor.name, f"{tensor.datatype} {list(shape)} needs {expected} bytes, got {len(raw[i])}")
        out[tensor.name] = np.frombuffer(raw[i], dtype=dt).reshape(shape)
    return out


def parse_stream_response(msg: pb.ModelStreamInferResponse,
                          outputs_to_shm: Mapping[str, SharedMemoryOutput] | None = None) -> StreamResult:
    r = msg.infer_response
    if msg.error_message:
        return StreamResult(r.model_name, r.model_version, r.id, error=msg.error_message)
    return StreamResult(r.model_name, r.model_version, r.id, outputs=parse_response(r, outputs_to_shm))
