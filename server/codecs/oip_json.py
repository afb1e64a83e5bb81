"""The Open Inference Protocol over HTTP/REST (KServe v2 JSON, with Triton's binary tensor extension) <->
plain requests and responses.

An inference request body is a JSON object, optionally followed by binary tensors: the JSON's length is then
given by the ``Inference-Header-Content-Length`` header, and each input sent in binary states its size in
``parameters.binary_data_size``; those inputs' bytes follow the JSON in input order and are decoded without
copying (``np.frombuffer`` views of the body). Outputs travel as JSON ``data`` unless the client asks for
binary (``parameters.binary_data`` per output, or ``parameters.binary_data_output`` for all): then the
response JSON gives each one's ``binary_data_size`` and their bytes follow it.

The same rules as :mod:`.oip` hold: every size a request states is checked against what it carries before
anything is allocated; tensors in shared memory are resolved through the request's
:class:`~peregrine.server.dataplane.shm.RequestRegions`; errors are InvalidArgument naming the field.
Metadata, configuration and statistics answers are the gRPC messages printed as Triton prints them
(:func:`message_json`): field names as in the ``.proto``, 64-bit integers as JSON numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf import descriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from ..core import datatypes
from ..core.errors import InvalidArgument, Unimplemented, clipped, json_type
from ..core.types import InferRequest, InferResponse
from .oip import (
    CLASSIFICATION,
    MAX_RANK,
    SHM_BYTE_SIZE,
    SHM_OFFSET,
    SHM_REGION,
    VARIANT,
    class_count,
    decode_bytes_tensor,
    decode_shm_input,
    encode_bytes_tensor,
    request_priority,
    shm_payloads,
    tensor_shape,
)

if TYPE_CHECKING:
    from ..dataplane.shm import RequestRegions

HEADER_LENGTH = "inference-header-content-length"  # Triton's header, lower case as HTTP/1.1 servers give it
BINARY_SIZE = "binary_data_size"
_INT64 = (descriptor.FieldDescriptor.TYPE_INT64, descriptor.FieldDescriptor.TYPE_UINT64,
          descriptor.FieldDescriptor.TYPE_SINT64, descriptor.FieldDescriptor.TYPE_FIXED64,
          descriptor.FieldDescriptor.TYPE_SFIXED64)


# -- JSON bodies -----------------------------------------------------------------------------------
def parse_object(body: bytes | memoryview, what: str = "request body") -> dict[str, Any]:
    """A JSON object from ``body``; InvalidArgument when it is not one (an empty body is ``{}``)."""
    if not len(body):
        return {}
    try:
        value = json.loads(bytes(body), parse_constant=_not_json)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise InvalidArgument(f"{what}: not valid JSON ({clipped(str(e))})") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what}: expected a JSON object, got {json_type(value)}")
    return value


def _not_json(name: str) -> Any:
    """Python's json module reads NaN, Infinity and -Infinity, which JSON does not have (Triton's parser
    refuses them too)."""
    raise ValueError(f"{name} is not a JSON value")


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def message_json(msg: Message) -> dict[str, Any]:
    """A protobuf message as Triton's REST API prints it: every field, names as in the ``.proto``, enums by
    name, 64-bit integers as numbers (protobuf's own JSON makes them strings)."""
    return _numbers(msg.DESCRIPTOR, MessageToDict(msg, preserving_proto_field_name=True,
                                                   always_print_fields_with_no_presence=True))


def _numbers(desc: descriptor.Descriptor, value: dict[str, Any]) -> dict[str, Any]:
    for name, v in value.items():
        field = desc.fields_by_name.get(name)
        if field is None:
            continue
        if field.message_type is not None:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                inner = entry.fields_by_name["value"]
                if inner.message_type is not None:
                    for item in v.values():
                        _numbers(inner.message_type, item)
                elif inner.type in _INT64:
                    value[name] = {k: int(x) for k, x in v.items()}
            elif isinstance(v, list):
                for item in v:
                    _numbers(entry, item)
            elif isinstance(v, dict):
                _numbers(entry, v)
        elif field.type in _INT64:
            value[name] = [int(x) for x in v] if isinstance(v, list) else int(v)
    return value


# -- inference requests ----------------------------------------------------------------------------
def _integer(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{what}: expected a non-negative integer, got {clipped(repr(value))}")
    return value


def _parameters(tensor: dict[str, Any], what: str) -> dict[str, Any]:
    params = tensor.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidArgument(f"{what}.parameters: expected an object, got {json_type(params)}")
    return params


def _shm_params(params: dict[str, Any], what: str) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) when the parameters put a tensor in shared memory, else None."""
    if SHM_REGION not in params:
        stray = [k for k in (SHM_OFFSET, SHM_BYTE_SIZE) if k in params]
        if stray:
            raise InvalidArgument(f"{what}: parameters.{stray[0]} given without parameters.{SHM_REGION}")
        return None
    region = params[SHM_REGION]
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"{what}: parameters.{SHM_REGION}: expected the name of a registered region, "
                              f"got {clipped(repr(region))}")
    if SHM_BYTE_SIZE not in params:
        raise InvalidArgument(f"{what}: parameters.{SHM_BYTE_SIZE}: expected the size in bytes along with "
                              f"{SHM_REGION}, got none")
    return (region, _integer(params.get(SHM_OFFSET, 0), f"{what}: parameters.{SHM_OFFSET}"),
            _integer(params[SHM_BYTE_SIZE], f"{what}: parameters.{SHM_BYTE_SIZE}"))


def _flat(data: Any, depth: int = 0) -> Iterator[Any]:
    """The elements of a (possibly nested, row-major) JSON array."""
    if depth > MAX_RANK:
        raise InvalidArgument(f"data: nested more than {MAX_RANK} deep")
    for item in data:
        if isinstance(item, list):
            yield from _flat(item, depth + 1)
        else:
            yield item


def _decode_json_data(data: Any, dt: datatypes.DataType, shape: tuple[int, ...], what: str) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidArgument(f"{what}: data: expected a JSON array, got {json_type(data)}")
    count = math.prod(shape)
    values = list(_flat(data))
    if len(values) != count:
        raise InvalidArgument(f"{what}: shape {list(shape)} needs {count} elements, got {len(values)} in data")
    if dt.name == "BYTES":
        out = np.empty(count, dtype=object)
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise InvalidArgument(f"{what}: data[{i}]: expected a string for BYTES, got {json_type(v)}")
            out[i] = v.encode("utf-8")
        return out.reshape(shape)
    return typed_array(values, dt, shape, f"{what}: data")


def typed_array(values: list[Any], dt: datatypes.DataType, shape: tuple[int, ...], what: str) -> np.ndarray:
    """JSON numbers (or true/false) of a tensor that is not BYTES, row-major, as an array of ``dt``:
    InvalidArgument naming ``what`` for a value of the wrong kind or out of the type's range."""
    kinds = (bool,) if dt.name == "BOOL" else (int, float) if dt.numpy.kind == "f" else (int,)
    if any(not isinstance(v, kinds) or (isinstance(v, bool) and dt.name != "BOOL") for v in values):
        expected = "true/false" if dt.name == "BOOL" else "numbers" if dt.numpy.kind == "f" else "integers"
        raise InvalidArgument(f"{what}: expected {expected} for {dt.name}")
    try:
        with np.errstate(over="raise"):
            array = np.array(values, dtype=dt.numpy).reshape(shape)
    except (OverflowError, ValueError, FloatingPointError):
        raise InvalidArgument(f"{what}: holds values outside {dt.name}'s range") from None
    if dt.numpy.kind == "f" and not np.isfinite(array).all():  # 1e400: a JSON number past every float
        raise InvalidArgument(f"{what}: holds values outside {dt.name}'s range")
    return array


def decode_infer_request(model_name: str, model_version: str, header: dict[str, Any], binary: memoryview,
                         deadline: float | None = None, regions: RequestRegions | None = None) -> InferRequest:
    """An inference request from its JSON ``header`` and the ``binary`` bytes that followed it (empty when
    the body was JSON only), for the model the URL names."""
    if not model_name:
        raise InvalidArgument("model name: expected a model name in the URL, got an empty string")
    inputs_json = header.get("inputs")
    if not isinstance(inputs_json, list):
        got = "no 'inputs' field" if "inputs" not in header else json_type(inputs_json)
        raise InvalidArgument(f"inputs: expected an array of tensors, got {got}")
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument(f"id: expected a string, got {json_type(request_id)}")
    params = header.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidArgument(f"parameters: expected an object, got {json_type(params)}")
    inputs: dict[str, Any] = {}
    offset = 0
    for i, tensor in enumerate(inputs_json):
        if not isinstance(tensor, dict):
            raise InvalidArgument(f"inputs[{i}]: expected an object, got {json_type(tensor)}")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"inputs[{i}].name: expected a tensor name, got {clipped(repr(name))}")
        what = f"input '{clipped(name)}'"
        if name in inputs:
            raise InvalidArgument(f"{what} appears more than once")
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str) or datatype not in datatypes.BY_NAME:
            raise InvalidArgument(f"{what}: unknown datatype {clipped(repr(datatype))}, expected one of "
                                  f"{', '.join(datatypes.BY_NAME)}")
        dt = datatypes.from_name(datatype)
        dims = tensor.get("shape")
        if not isinstance(dims, list) or any(not isinstance(d, int) or isinstance(d, bool) for d in dims):
            raise InvalidArgument(f"{what}: shape: expected an array of integers, got {clipped(repr(dims))}")
        shape = tensor_shape(dims, what)
        tparams = _parameters(tensor, what)
        where = _shm_params(tparams, what)
        has_data = "data" in tensor
        if where is not None:
            if has_data or BINARY_SIZE in tparams:
                raise InvalidArgument(f"{what}: has data and parameters.{SHM_REGION}; send one")
            inputs[name] = decode_shm_input(regions, where, dt, shape, name)
        elif BINARY_SIZE in tparams:
            if has_data:
                raise InvalidArgument(f"{what}: has both data and parameters.{BINARY_SIZE}; send one")
            size = _integer(tparams[BINARY_SIZE], f"{what}: parameters.{BINARY_SIZE}")
            if offset + size > len(binary):
                raise InvalidArgument(f"{what}: parameters.{BINARY_SIZE} is {size} but only {len(binary) - offset} "
                                      "bytes of binary data are left after the JSON")
            raw = binary[offset:offset + size]
            offset += size
            inputs[name] = _decode_binary(raw, dt, shape, name)
        elif has_data:
            inputs[name] = _decode_json_data(tensor["data"], dt, shape, what)
        else:
            raise InvalidArgument(f"{what}: no data; expected data, parameters.{BINARY_SIZE} or "
                                  f"parameters.{SHM_REGION}")
    if offset != len(binary):
        raise InvalidArgument(f"request body: {len(binary) - offset} bytes after the JSON that no input's "
                              f"parameters.{BINARY_SIZE} accounts for")
    priority = request_priority(params)
    classification: dict[str, int] = {}
    requested = _requested_outputs(header, regions, classification)
    return InferRequest(model_name=model_name, model_version=model_version, id=request_id, inputs=inputs,
                        requested_outputs=[name for name, _ in requested], classification=classification,
                        parameters=params, deadline=deadline, priority=priority)


def _decode_binary(raw: memoryview, dt: datatypes.DataType, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    if dt.name == "BYTES":
        return decode_bytes_tensor(raw, count, name).reshape(shape)
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise InvalidArgument(f"input '{clipped(name)}': {dt.name} {list(shape)} needs {expected} bytes, got "
                              f"{len(raw)} (parameters.{BINARY_SIZE})")
    array = np.frombuffer(raw, dtype=dt.numpy).reshape(shape)
    return array if array.flags.aligned else array.copy()


def _requested_outputs(header: dict[str, Any], regions: RequestRegions | None,
                       classification: dict[str, int]) -> list[tuple[str, bool | None]]:
    """(name, binary: True, False or None for the request's default) of each requested output; outputs put
    in shared memory are reserved in ``regions``, class counts (Triton's classification) put in
    ``classification``."""
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidArgument(f"outputs: expected an array, got {json_type(outputs)}")
    requested: list[tuple[str, bool | None]] = []
    seen: set[str] = set()
    for i, o in enumerate(outputs):
        if not isinstance(o, dict):
            raise InvalidArgument(f"outputs[{i}]: expected an object, got {json_type(o)}")
        name = o.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"outputs[{i}].name: expected an output name, got {clipped(repr(name))}")
        what = f"output '{clipped(name)}'"
        if name in seen:
            raise InvalidArgument(f"{what} is requested more than once")
        seen.add(name)
        params = _parameters(o, what)
        if CLASSIFICATION in params and (k := class_count(params[CLASSIFICATION], what)):
            classification[name] = k
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidArgument(f"{what}: parameters.binary_data: expected true or false")
        where = _shm_params(params, what)
        if where is not None:
            if regions is None:
                raise Unimplemented(f"{what}: parameters.{SHM_REGION}: this endpoint does not take shared memory")
            regions.output(name, *where)
        requested.append((name, binary))
    return requested


def binary_outputs(header: dict[str, Any]) -> tuple[bool, dict[str, bool]]:
    """What the client asked for its outputs: binary by default (``parameters.binary_data_output``), and
    per output (``outputs[].parameters.binary_data``). The request was checked by :func:`decode_infer_request`."""
    params = header.get("parameters") or {}
    default = params.get("binary_data_output", False) is True
    per = {}
    for o in header.get("outputs") or ():
        binary = (o.get("parameters") or {}).get("binary_data")
        if isinstance(binary, bool):
            per[o["name"]] = binary
    return default, per


# -- inference responses ---------------------------------------------------------------------------
def encode_infer_response(resp: InferResponse, header: dict[str, Any],
                          regions: RequestRegions | None = None) -> tuple[bytes, int | None]:
    """The response body and, when binary outputs follow the JSON, the JSON's length (for the
    ``Inference-Header-Content-Length`` header). Outputs reserved in ``regions.outputs`` are written to
    their shared-memory region and listed with neither data nor parameters, as in Triton."""
    default, per = binary_outputs(header)
    targets = regions.outputs if regions is not None else {}
    payloads = shm_payloads(resp, targets)
    outputs = []
    blobs: list[Any] = []
    for name, array in resp.outputs.items():
        dt = datatypes.from_numpy(array.dtype)
        out: dict[str, Any] = {"name": name, "datatype": dt.name, "shape": list(array.shape)}
        if name in payloads:
            # Written to its region and listed bare, as Triton lists it: Triton's C++ HTTP client (and so
            # perf_analyzer) reads any output `parameters` as the binary-data header, binary_data_size and all.
            targets[name].write(payloads[name])
        elif per.get(name, default):
            blob: Any = encode_bytes_tensor(array) if dt.name == "BYTES" else np.ascontiguousarray(array)
            size = len(blob) if dt.name == "BYTES" else blob.nbytes
            out["parameters"] = {BINARY_SIZE: size}
            blobs.append(blob if dt.name == "BYTES" else memoryview(blob).cast("B"))
        elif dt.name == "BYTES":
            out["data"] = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                           for x in array.reshape(-1)]
        else:
            out["data"] = array.reshape(-1).tolist()
        outputs.append(out)
    body: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        body["id"] = resp.id
    if resp.variant:
        body["parameters"] = {VARIANT: resp.variant}
    body["outputs"] = outputs
    text = dumps(body)
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)


# -- small admin bodies ----------------------------------------------------------------------------
def trace_changes(body: dict[str, Any]) -> dict[str, list[str]]:
    """Trace settings to change from a ``/trace/setting`` body: each value a string, a list of strings, or
    null (back to the global setting)."""
    changes: dict[str, list[str]] = {}
    for key, value in body.items():
        if value is None:
            changes[key] = []
        elif isinstance(value, str):
            changes[key] = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            changes[key] = list(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            changes[key] = [str(value)]
        else:
            raise InvalidArgument(f"{clipped(key)}: expected a string, an array of strings or null")
    return changes


def trace_settings(settings: dict[str, list[str]]) -> dict[str, Any]:
    """Trace settings as Triton's REST API answers them: ``trace_level`` a list, the others one string."""
    return {k: list(v) if k == "trace_level" or len(v) != 1 else v[0] for k, v in settings.items()}
