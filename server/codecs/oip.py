"""Open Inference Protocol inference messages <-> plain requests and responses.

The only module that turns ``ModelInferRequest``/``ModelInferResponse`` into arrays and back. Raw tensors are
decoded without copying: ``np.frombuffer`` views of the request's bytes. Tensors in shared memory
(parameters ``shared_memory_region``/``_offset``/``_byte_size``) are views of the registered region,
resolved through the request's :class:`~peregrine.server.dataplane.shm.RequestRegions`; outputs requested into a
region are written there and answered without bytes. Errors name the tensor, what was expected and what
came, and map to INVALID_ARGUMENT (NOT_FOUND for a region that is not registered).

A request is hostile until proven otherwise: every size it states (shape, element count, shared-memory
slice) is checked against the bytes it actually carries, and against :data:`MAX_RANK` and
:data:`MAX_ELEMENTS`, before anything is allocated; counts are Python integers, so they never overflow.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from peregrine.proto import grpc_service_pb2 as pb

from ..core import datatypes
from ..core.errors import InvalidArgument, Unimplemented, clipped
from ..core.types import InferRequest, InferResponse

if TYPE_CHECKING:
    from ..dataplane.shm import RequestRegions

SHM_REGION, SHM_OFFSET, SHM_BYTE_SIZE = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"
VARIANT = "variant"  # a response parameter: the SLO ladder's variant that answered (its model's name)
# A ModelStreamInfer response parameter (bool): the last response to its request. Triton sets it on every
# stream response; streaming clients written for decoupled models read until it is true. Models here answer
# each request once, so every response is its request's last.
FINAL_RESPONSE = "triton_final_response"
CLASSIFICATION = "classification"  # an output parameter: answer it as its top K classes (Triton's extension)


def class_count(value: object, what: str) -> int:
    """An output's ``classification`` parameter checked: a whole number, 0 (none) or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{what}: parameters.{CLASSIFICATION}: expected a class count (an integer >= 0), "
                              f"got {clipped(repr(value))}")
    return value

_LEN = struct.Struct("<I")

# Bounds on what a tensor may declare, whatever it carries (docs/SECURITY.md, limits). NumPy takes at most
# 64 dimensions; no model has more than a handful. A tensor of zero elements may not declare absurd
# dimensions either: where its other dimensions multiply past what NumPy can index, NumPy (and any code that
# sizes a buffer from a shape) overflows.
MAX_RANK = 32
MAX_ELEMENTS = 1 << 40


def parameter_value(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def set_parameter(p: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)


def decode_bytes_tensor(raw: bytes | memoryview | np.ndarray, count: int, name: str) -> np.ndarray:
    """Decode OIP's BYTES serialization (each element a 4-byte little-endian length, then the bytes) from
    ``raw`` (bytes, or a uint8 array of a shared-memory region) into a 1-D object array of ``count`` bytes.

    Every element takes at least its 4-byte length, so a ``count`` the bytes cannot hold is refused before
    anything is allocated: the decoded array never holds more than about 7x the bytes present (an object
    pointer and a small bytes object per element; worst for 2-byte elements). Raises InvalidArgument
    naming ``name``."""
    data = raw if isinstance(raw, bytes) else memoryview(raw).cast("B")  # type: ignore[arg-type]
    size = len(data)
    what = f"input '{clipped(name)}'"
    if count > size // 4:
        raise InvalidArgument(
            f"{what}: BYTES of {count} elements needs at least {4 * count} bytes (a 4-byte length each), "
            f"got {size}"
        )
    out = np.empty(count, dtype=object)
    unpack = _LEN.unpack_from
    pos = 0
    for i in range(count):
        if pos + 4 > size:
            raise InvalidArgument(
                f"{what}: BYTES element {i} of {count} has no length prefix ({size - pos} bytes left at offset {pos})"
            )
        (n,) = unpack(data, pos)
        pos += 4
        if pos + n > size:
            raise InvalidArgument(f"{what}: BYTES element {i} claims {n} bytes but only {size - pos} remain")
        out[i] = bytes(data[pos : pos + n])  # a slice of bytes is bytes already: bytes() returns it as it is
        pos += n
    if pos != size:
        raise InvalidArgument(f"{what}: {size - pos} bytes left over after {count} BYTES elements")
    return out


def encode_bytes_tensor(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        b = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def tensor_shape(dims: Sequence[int], what: str) -> tuple[int, ...]:
    """A tensor's shape as a client sent it, checked: at most :data:`MAX_RANK` dimensions, none negative,
    and the dimensions other than 0 multiplying to at most :data:`MAX_ELEMENTS` (Python integers: no
    overflow). ``what`` names the tensor in the InvalidArgument raised otherwise."""
    if len(dims) > MAX_RANK:
        raise InvalidArgument(f"{what}: shape has {len(dims)} dimensions, expected at most {MAX_RANK}")
    shape = tuple(int(d) for d in dims)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{what}: shape {list(shape)} has a negative dimension")
    product = 1
    for d in shape:
        product *= d or 1
        if product > MAX_ELEMENTS:
            raise InvalidArgument(f"{what}: shape {list(shape)} is too large: its dimensions other than 0 "
                                  f"multiply past {MAX_ELEMENTS} elements")
    return shape


def _datatype(tensor: Any, what: str) -> datatypes.DataType:
    try:
        return datatypes.from_name(tensor.datatype)
    except KeyError:
        known = ", ".join(datatypes.BY_NAME)
        raise InvalidArgument(
            f"{what}: unknown datatype '{clipped(tensor.datatype)}', expected one of {known}"
        ) from None


def _decode_raw(raw: bytes, dt: datatypes.DataType, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    if dt.name == "BYTES":
        return decode_bytes_tensor(raw, count, name).reshape(shape)
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input '{clipped(name)}': {dt.name} {list(shape)} needs {expected} bytes, got {len(raw)} "
            "in raw_input_contents"
        )
    return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)


def _decode_typed(tensor: Any, dt: datatypes.DataType, shape: tuple[int, ...], what: str) -> np.ndarray:
    if dt.contents_field is None:
        raise InvalidArgument(
            f"{what}: {dt.name} has no typed contents field in the protocol; send it in raw_input_contents"
        )
    contents = tensor.contents
    present = [f.name for f, _ in contents.ListFields()]
    stray = [f for f in present if f != dt.contents_field]
    if stray:
        raise InvalidArgument(
            f"{what}: datatype {dt.name} expects contents.{dt.contents_field}, got contents.{stray[0]}"
        )
    values = getattr(contents, dt.contents_field)
    count = math.prod(shape)
    if len(values) != count:  # before anything is allocated: the count is what the message carries
        raise InvalidArgument(
            f"{what}: shape {list(shape)} needs {count} elements, got {len(values)} in contents.{dt.contents_field}"
        )
    if dt.name == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    wide = np.array(values, dtype=np.float64 if dt.numpy.kind == "f" else None)
    if dt.numpy.kind in "iu" and wide.size:
        info = np.iinfo(dt.numpy)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidArgument(
                f"{what}: contents.{dt.contents_field} holds values outside {dt.name}'s range "
                f"[{info.min}, {info.max}]"
            )
    return wide.astype(dt.numpy).reshape(shape)


def _shm_params(tensor: Any, what: str) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) when the tensor's parameters put it in shared memory, else None."""
    params = tensor.parameters
    if SHM_REGION not in params:
        stray = [k for k in (SHM_OFFSET, SHM_BYTE_SIZE) if k in params]
        if stray:
            raise InvalidArgument(f"{what}: parameters.{stray[0]} given without parameters.{SHM_REGION}")
        return None
    region = params[SHM_REGION]
    if region.WhichOneof("parameter_choice") != "string_param" or not region.string_param:
        raise InvalidArgument(f"{what}: parameters.{SHM_REGION}: expected a string_param naming a registered "
                              f"region, got {region.WhichOneof('parameter_choice') or 'an empty string'}")

    def integer(key: str, default: int | None) -> int:
        if key not in params:
            if default is None:
                raise InvalidArgument(f"{what}: parameters.{key}: expected the size in bytes along with "
                                      f"{SHM_REGION}, got none")
            return default
        which = params[key].WhichOneof("parameter_choice")
        value = getattr(params[key], which) if which else None
        if which not in ("int64_param", "uint64_param") or value < 0:  # type: ignore[operator]
            raise InvalidArgument(f"{what}: parameters.{key}: expected a non-negative int64_param, "
                                  f"got {which or 'nothing'} {clipped(repr(value))}")
        return int(value)  # type: ignore[arg-type]

    return region.string_param, integer(SHM_OFFSET, 0), integer(SHM_BYTE_SIZE, None)


def decode_shm_input(regions: RequestRegions | None, where: tuple[str, int, int], dt: datatypes.DataType,
                shape: tuple[int, ...], name: str) -> Any:
    """An input read from shared memory: a read-only NumPy view of a system region (a copy only when the
    offset leaves the data misaligned for its type), or a CuPy array over a CUDA region."""
    what = f"input '{clipped(name)}'"
    if regions is None:
        raise Unimplemented(f"{what}: parameters.{SHM_REGION}: this endpoint does not take shared memory")
    region, offset, byte_size = where
    count = math.prod(shape)
    if dt.name != "BYTES" and byte_size != count * dt.itemsize:
        raise InvalidArgument(f"{what}: {dt.name} {list(shape)} needs {count * dt.itemsize} bytes, "
                              f"got {SHM_BYTE_SIZE} {byte_size}")
    if dt.name == "BYTES" and count > byte_size // 4:  # checked again on the bytes; refused here before the lease
        raise InvalidArgument(f"{what}: BYTES of {count} elements needs at least {4 * count} bytes (a 4-byte "
                              f"length each), got {SHM_BYTE_SIZE} {byte_size}")
    memory = regions.input(region, offset, byte_size, what)
    on_device = hasattr(memory, "__cuda_array_interface__")
    if dt.name == "BYTES":
        from ..dataplane.shm import to_host

        return decode_bytes_tensor(to_host(memory), count, name).reshape(shape)
    if on_device:
        if offset % dt.itemsize:
            raise InvalidArgument(f"{what}: {SHM_OFFSET} {offset} in a CUDA region must be a multiple of "
                                  f"{dt.name}'s {dt.itemsize} bytes")
        return memory.view(dt.numpy).reshape(shape)
    array = memory.view(dt.numpy).reshape(shape)
    if not array.flags.aligned:
        array = array.copy()
    array.flags.writeable = False
    return array


def request_priority(params: dict[str, Any]) -> int:
    """The request's ``priority`` parameter (0: the model's default), after checking it and ``timeout``
    (microseconds); the same rules whatever the wire format."""
    priority = params.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
        raise InvalidArgument(f"parameters.priority: expected a non-negative integer, got {clipped(repr(priority))}")
    timeout_us = params.get("timeout")
    if timeout_us is not None and (not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us < 0):
        raise InvalidArgument(
            f"parameters.timeout: expected a non-negative integer (microseconds), got {clipped(repr(timeout_us))}"
        )
    return priority


def decode_infer_request(
    msg: pb.ModelInferRequest, deadline: float | None = None, ordering_key: str = "",
    regions: RequestRegions | None = None,
) -> InferRequest:
    """Turn a ModelInferRequest into an :class:`InferRequest` (arrays are views where possible).

    ``regions`` resolves tensors in shared memory: inputs become views of their region, and requested
    outputs that name a region are reserved in ``regions.outputs`` for :func:`encode_infer_response`.
    As in Triton, ``raw_input_contents`` holds one entry per input that is not in shared memory."""
    if not msg.model_name:
        raise InvalidArgument("model_name: expected a model name, got an empty string")
    in_shm = {}
    for i, tensor in enumerate(msg.inputs):
        where = _shm_params(tensor, f"input '{clipped(tensor.name or i)}'")
        if where is not None:
            in_shm[i] = where
    n_raw = len(msg.raw_input_contents)
    n_carried = len(msg.inputs) - len(in_shm)
    if n_raw and n_raw != n_carried:
        raise InvalidArgument(
            f"raw_input_contents: expected one entry per input not in shared memory ({n_carried}), got {n_raw}"
        )
    inputs: dict[str, Any] = {}
    raw_index = 0
    for i, tensor in enumerate(msg.inputs):
        if not tensor.name:
            raise InvalidArgument(f"inputs[{i}].name: expected a tensor name, got an empty string")
        what = f"input '{clipped(tensor.name)}'"
        if tensor.name in inputs:
            raise InvalidArgument(f"{what} appears more than once")
        dt = _datatype(tensor, what)
        shape = tensor_shape(tensor.shape, what)
        has_typed = tensor.HasField("contents") and bool(tensor.contents.ListFields())
        if i in in_shm:
            if has_typed:
                raise InvalidArgument(f"{what}: has both typed contents and parameters.{SHM_REGION}; send one")
            inputs[tensor.name] = decode_shm_input(regions, in_shm[i], dt, shape, tensor.name)
        elif n_raw:
            if has_typed:
                raise InvalidArgument(f"{what}: has both typed contents and raw_input_contents; send one")
            inputs[tensor.name] = _decode_raw(msg.raw_input_contents[raw_index], dt, shape, tensor.name)
            raw_index += 1
        elif has_typed or math.prod(shape) == 0:
            inputs[tensor.name] = _decode_typed(tensor, dt, shape, what)
        else:
            raise InvalidArgument(
                f"{what}: no data; expected raw_input_contents, typed contents or parameters.{SHM_REGION}"
            )
    params = {k: parameter_value(v) for k, v in msg.parameters.items()}
    priority = request_priority(params)
    requested: list[str] = []
    classification: dict[str, int] = {}
    seen: set[str] = set()
    for i, o in enumerate(msg.outputs):
        if not o.name:
            raise InvalidArgument(f"outputs[{i}].name: expected an output name, got an empty string")
        what = f"output '{clipped(o.name)}'"
        if o.name in seen:
            raise InvalidArgument(f"{what} is requested more than once")
        seen.add(o.name)
        requested.append(o.name)
        if CLASSIFICATION in o.parameters and (k := class_count(parameter_value(o.parameters[CLASSIFICATION]), what)):
            classification[o.name] = k
        where = _shm_params(o, what)
        if where is not None:
            if regions is None:
                raise Unimplemented(f"{what}: parameters.{SHM_REGION}: this endpoint does not take shared memory")
            regions.output(o.name, *where)
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        requested_outputs=requested,
        classification=classification,
        parameters=params,
        deadline=deadline,
        priority=priority,
        ordering_key=ordering_key,
    )


def shm_payloads(resp: InferResponse, targets: dict[str, Any]) -> dict[str, Any]:
    """The bytes of each output reserved in shared memory (``regions.outputs``), every one checked against
    its region before any is written; InvalidArgument when one does not fit."""
    payloads: dict[str, Any] = {}
    for name, target in targets.items():
        array = resp.outputs.get(name)
        if array is None:
            continue
        dt = datatypes.from_numpy(array.dtype)
        payload: Any = encode_bytes_tensor(array) if dt.name == "BYTES" else _contiguous(array)
        target.check_fits(len(payload) if dt.name == "BYTES" else payload.nbytes, f"{dt.name} {list(array.shape)}")
        payloads[name] = payload
    return payloads


class EncodedInferResponse:
    """A ModelInferResponse whose ``raw_output_contents`` stay the outputs' own buffers until the message is
    serialized, where each is written once, straight into the wire bytes. Through protobuf each would be
    copied three times (``tobytes``, into the message, out of it): for a 4.9 MB output that is most of what
    answering costs. Serializes to exactly the bytes of the equivalent message (``to_message``)."""

    __slots__ = ("message", "raw")

    def __init__(self, message: pb.ModelInferResponse, raw: list[Any]) -> None:
        self.message = message  # everything but raw_output_contents
        self.raw = raw  # one bytes-like object per output, in the order of message.outputs

    def SerializeToString(self) -> bytes:  # protobuf's name: gRPC's response serializer calls it
        parts: list[Any] = [self.message.SerializeToString()]
        for buffer in self.raw:
            parts.append(_RAW_OUTPUT_TAG + _varint(_nbytes(buffer)))
            parts.append(buffer)
        return b"".join(parts)

    def ByteSize(self) -> int:
        return self.message.ByteSize() + sum(1 + len(_varint(_nbytes(b))) + _nbytes(b) for b in self.raw)

    def to_message(self) -> pb.ModelInferResponse:
        """The same response as a protobuf message (a copy of every output)."""
        msg = pb.ModelInferResponse()
        msg.CopyFrom(self.message)
        msg.raw_output_contents.extend(bytes(b) for b in self.raw)
        return msg


class EncodedStreamResponse:
    """A ModelStreamInferResponse carrying an :class:`EncodedInferResponse` (``infer_response``, field 2)."""

    __slots__ = ("infer_response",)

    def __init__(self, infer_response: EncodedInferResponse) -> None:
        self.infer_response = infer_response

    def SerializeToString(self) -> bytes:
        inner = self.infer_response.SerializeToString()
        return _STREAM_RESPONSE_TAG + _varint(len(inner)) + inner


# Wire tags (field number << 3 | length-delimited): ModelInferResponse.raw_output_contents = 6,
# ModelStreamInferResponse.infer_response = 2.
_RAW_OUTPUT_TAG = bytes([6 << 3 | 2])
_STREAM_RESPONSE_TAG = bytes([2 << 3 | 2])


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _nbytes(buffer: Any) -> int:
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


def encode_infer_response(resp: InferResponse, regions: RequestRegions | None = None) -> EncodedInferResponse:
    """Encode an answer as Triton does over gRPC: every output in ``raw_output_contents``, whatever form its
    inputs came in (typed ``contents`` included; clients written for Triton read only the raw bytes).

    Outputs reserved in ``regions.outputs`` are written into their shared-memory region; as in Triton, the
    response lists them (name, datatype, shape) with an empty ``raw_output_contents`` entry, and Peregrine
    adds the region, offset and the number of bytes written as the output's parameters. Raises
    InvalidArgument, before anything is written, when an output does not fit its region."""
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id)
    if resp.variant:
        set_parameter(msg.parameters[VARIANT], resp.variant)
    targets = regions.outputs if regions is not None else {}
    payloads = shm_payloads(resp, targets)
    raw: list[Any] = []
    for name, array in resp.outputs.items():
        dt = datatypes.from_numpy(array.dtype)
        out = msg.outputs.add(name=name, datatype=dt.name, shape=array.shape)
        if name in payloads:
            target = targets[name]
            written = target.write(payloads[name])
            set_parameter(out.parameters[SHM_REGION], target.region)
            set_parameter(out.parameters[SHM_OFFSET], target.offset)
            set_parameter(out.parameters[SHM_BYTE_SIZE], written)
            raw.append(b"")
        elif dt.name == "BYTES":
            raw.append(encode_bytes_tensor(array))
        else:
            raw.append(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
    return EncodedInferResponse(msg, raw)


def _contiguous(array: Any) -> Any:
    """A C-contiguous array with the same contents (NumPy or CuPy, whichever ``array`` is)."""
    if hasattr(array, "__cuda_array_interface__"):
        return array if array.flags.c_contiguous else array.copy()
    return np.ascontiguousarray(array)
