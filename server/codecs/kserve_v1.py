"""KServe's V1 data plane (TensorFlow Serving's REST predict API) <-> plain requests and responses.

``POST /v1/models/<name>:predict`` takes a JSON object with one of

- ``instances`` (row format): a list with one entry per example; an entry is an object naming each input
  (``{"INPUT0": [1, 2], "INPUT1": [3, 4]}``), or, for a model with one input (or one input of the value's
  kind: BYTES for a string or ``{"b64": ...}``, numeric otherwise), that input's value alone. The entries
  are stacked along a new first (batch) dimension. Answered ``{"predictions": [...]}``, one entry per
  example: the output's value, or an object naming each output when the model has several;
- ``inputs`` (columnar format): each input's whole tensor, batch dimension included, as a value (one
  input) or an object naming them. Answered ``{"outputs": ...}`` in the same form.

A value is a number, a string, ``{"b64": "<base64>"}`` (bytes, for a BYTES input) or nested lists of them,
rectangular; it takes the datatype the model declares for its input, and a value given for an input whose
per-example shape is ``[1]`` may be the element alone (``{"b64": ...}`` for a detection pipeline's
``ENCODED``). BYTES outputs are answered as strings where they are UTF-8, else as ``{"b64": ...}``.
Everything is checked as the V2 path checks it (shapes and datatypes against the model, then the model's own
validation); errors are InvalidArgument naming the field.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from ..core import datatypes
from ..core.errors import InvalidArgument, clipped, json_type
from ..core.types import InferRequest, InferResponse, TensorSpec
from .oip import MAX_RANK, tensor_shape
from .oip_json import typed_array

ROW, COLUMNAR = "instances", "inputs"
# A detection pipeline's outputs (models/detection.py): its counts, and the outputs whose rows they count.
DETECTION_ROWS = ("COUNTS", ("DETECTIONS", "KEYPOINTS"))
_KNOWN_KEYS = {"instances", "inputs", "signature_name"}


def _shape(value: Any, what: str) -> tuple[int, ...]:
    """The shape of a nested list, checked rectangular (every list at a depth as long as the first)."""
    shape: list[int] = []
    level = [value]
    while isinstance(level[0], list):
        if len(shape) >= MAX_RANK:
            raise InvalidArgument(f"{what}: lists nested more than {MAX_RANK} deep")
        n = len(level[0])
        if any(not isinstance(v, list) or len(v) != n for v in level):
            raise InvalidArgument(f"{what}: expected a rectangular array (every list at a depth as long as the "
                                  f"others), got lists of different lengths or lists beside values at depth "
                                  f"{len(shape) + 1}")
        shape.append(n)
        if n == 0:
            break
        level = [x for v in level for x in v]
    if shape and shape[-1] and any(isinstance(v, list) for v in level):
        raise InvalidArgument(f"{what}: expected a rectangular array, got lists beside values")
    return tuple(shape)


def _leaves(value: Any) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    out: list[Any] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        else:
            out.append(v)
    return out


def _bytes_element(v: Any, what: str) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8", "surrogatepass")
    if isinstance(v, dict) and set(v) == {"b64"} and isinstance(v["b64"], str):
        try:
            return base64.b64decode(v["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{what}: b64: not valid base64") from None
    raise InvalidArgument(f"{what}: expected a string or {{\"b64\": \"<base64>\"}} for BYTES, got {json_type(v)}")


def _array(value: Any, spec: TensorSpec, what: str) -> np.ndarray:
    """``value`` as an array of the input's datatype."""
    dt = datatypes.from_name(spec.datatype)
    shape = tensor_shape(list(_shape(value, what)), what)
    leaves = _leaves(value)
    if dt.name == "BYTES":
        out = np.empty(len(leaves), dtype=object)
        for i, v in enumerate(leaves):
            out[i] = _bytes_element(v, what)
        return out.reshape(shape)
    return typed_array(leaves, dt, shape, what)


def _is_bytes_value(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str) or (isinstance(value, dict) and "b64" in value)


def _by_name(value: Any, inputs: tuple[TensorSpec, ...], what: str) -> dict[str, Any]:
    """An entry's values by input name: an object naming inputs, or one value for the model's only input
    (or its only input of the value's kind)."""
    names = {s.name for s in inputs}
    if isinstance(value, dict) and not (set(value) == {"b64"} and "b64" not in names):
        unknown = sorted(set(value) - names)
        if unknown:
            raise InvalidArgument(f"{what}: '{clipped(unknown[0])}' is not an input of the model; its inputs: "
                                  f"{', '.join(sorted(names))}")
        return value
    if len(inputs) == 1:
        return {inputs[0].name: value}
    kind = [s for s in inputs if (s.datatype == "BYTES") == _is_bytes_value(value)]
    if len(kind) != 1:
        raise InvalidArgument(f"{what}: the model has inputs {', '.join(sorted(names))}; send an object naming "
                              "them")
    return {kind[0].name: value}


def _fit(array: np.ndarray, spec: TensorSpec, batched: bool) -> np.ndarray:
    """An element alone for an input whose per-example shape is [1] becomes that one element."""
    per_example = spec.shape[1:] if batched else spec.shape
    have = array.shape[1:] if batched else array.shape
    if tuple(per_example) == (1,) and have == ():
        return array.reshape(*array.shape, 1)
    return array


def decode_predict(model_name: str, model_version: str, body: dict[str, Any], inputs: tuple[TensorSpec, ...],
                   max_batch_size: int, deadline: float | None = None) -> tuple[InferRequest, str]:
    """A predict body as an inference request for the model whose inputs are ``inputs``, and its format
    (:data:`ROW` or :data:`COLUMNAR`), which the answer keeps."""
    unknown = sorted(set(body) - _KNOWN_KEYS)
    if unknown:
        raise InvalidArgument(f"{clipped(unknown[0])}: not a field of a predict request; expected 'instances' "
                              "(row format) or 'inputs' (columnar)")
    if (ROW in body) == (COLUMNAR in body):
        raise InvalidArgument("request body: expected exactly one of 'instances' (row format) and 'inputs' "
                              "(columnar), got " + ("both" if ROW in body else "neither"))
    signature = body.get("signature_name", "serving_default")
    if signature != "serving_default":
        raise InvalidArgument(f"signature_name: the model has one signature, 'serving_default'; got "
                              f"{clipped(repr(signature))}")
    specs = {s.name: s for s in inputs}
    batched = max_batch_size > 0
    arrays: dict[str, np.ndarray] = {}
    if ROW in body:
        instances = body[ROW]
        if not isinstance(instances, list) or not instances:
            raise InvalidArgument(f"instances: expected a non-empty list of examples, got {json_type(instances)}"
                                  + (" (empty)" if isinstance(instances, list) else ""))
        rows = [_by_name(entry, inputs, f"instances[{i}]") for i, entry in enumerate(instances)]
        names = rows[0].keys()
        for i, row in enumerate(rows):
            if row.keys() != names:
                raise InvalidArgument(f"instances[{i}]: names inputs {', '.join(sorted(row))}; instances[0] "
                                      f"names {', '.join(sorted(names))}: every example names the same inputs")
        for name in names:
            array = _array([row[name] for row in rows], specs[name], f"instances[].{clipped(name)}")
            arrays[name] = _fit(array, specs[name], True)
        fmt = ROW
    else:
        for name, value in _by_name(body[COLUMNAR], inputs, "inputs").items():
            arrays[name] = _fit(_array(value, specs[name], f"inputs.{clipped(name)}"), specs[name], batched)
        fmt = COLUMNAR
    request = InferRequest(model_name=model_name, model_version=model_version, inputs=arrays, deadline=deadline)
    return request, fmt


def _json_value(array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind in "SU":
        flat = [_json_bytes(x) for x in array.reshape(-1)]
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    if array.dtype.kind == "f" and not np.isfinite(array).all():  # JSON has no NaN or Infinity
        return np.where(np.isfinite(array), array, None).tolist() if array.ndim else None
    return array.tolist()


def _json_bytes(x: Any) -> Any:
    data = x if isinstance(x, bytes) else str(x).encode("utf-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


def encode_predict(resp: InferResponse, fmt: str,
                   ragged: tuple[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """The answer to a predict request of format ``fmt``. ``ragged`` (counts output, rows outputs): each
    example's rows are cut to its count in a row-format answer (a detection pipeline's DETECTIONS and a pose
    model's KEYPOINTS, padded to the most boxes of any frame, and COUNTS); a columnar answer keeps the
    tensors as they are."""
    outputs = resp.outputs
    if fmt == COLUMNAR:
        if len(outputs) == 1:
            return {"outputs": _json_value(next(iter(outputs.values())))}
        return {"outputs": {name: _json_value(a) for name, a in outputs.items()}}
    batch = {a.shape[0] if a.ndim else -1 for a in outputs.values()}
    n = batch.pop() if len(batch) == 1 else -1
    if n < 0:
        raise InvalidArgument("instances: the model's outputs have no common first (batch) dimension to answer "
                              "one prediction per example; send the request in columnar form ('inputs')")
    if len(outputs) == 1:
        array = next(iter(outputs.values()))
        return {"predictions": [_json_value(array[i]) for i in range(n)]}
    predictions = [{name: _json_value(a[i]) for name, a in outputs.items()} for i in range(n)]
    if ragged is not None and ragged[0] in outputs:
        counts = outputs[ragged[0]].reshape(n, -1)[:, 0]
        for name in (r for r in ragged[1] if r in outputs):
            for i, prediction in enumerate(predictions):
                prediction[name] = _json_value(outputs[name][i][: max(int(counts[i]), 0)])
    return {"predictions": predictions}
