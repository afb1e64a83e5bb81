"""``POST /v1/detect`` for web clients <-> plain detection requests and results.

Two request forms carry the same fields as the gRPC ``DetectRequest``:

- ``multipart/form-data``: one or more ``image`` file parts (JPEG, PNG, ... as files are), and optional
  text fields ``model_name``, ``model_version``, ``id``, ``score_threshold``, ``iou_threshold``,
  ``max_detections``, ``classes`` (comma-separated class ids), ``priority``, ``timeout_us``;
- ``application/json``: ``{"model_name": ..., "images": ["<base64>", ...] or [{"b64": "<base64>"}, ...],
  "options": {"score_threshold": ..., ...}, "priority": ..., "timeout_us": ...}``. An image may also be a
  camera frame as the driver gives it, the fields of the gRPC ``RawImage``: ``{"raw": {"height": H, "width":
  W, "encoding": "bayer_rggb8", "step": 0, "is_bigendian": false, "data": "<base64>"}}`` (``channels``,
  ``encoding``, ``step`` and ``is_bigendian`` optional, as in the proto). Multipart parts are files, which
  have no height, width or encoding: raw frames go as JSON.

The answer is JSON: ``{"model_name", "model_version", "id", "results": [{"height", "width", "boxes": [{"x1",
"y1", "x2", "y2", "score", "class_id", "label"}]}], "timings": {...}}``, a pose model's boxes with their
``"keypoints": [[x, y, score], ...]``, a segmentation model's with ``"polygon": [[x, y], ...]``. Images are
not decoded here: a raw frame's fields are checked for their JSON types and the proto's ranges, and the
detection model checks its encoding, step and size as for gRPC, naming the same fields
(``images[0].raw.step``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.errors import InvalidArgument, clipped, json_type
from ..core.types import DetectRequest, EncodedImage, FrameResult, OptionOverrides, RawImage

_US = 1000
FIELDS = ("model_name", "model_version", "id", "score_threshold", "iou_threshold", "max_detections", "classes",
          "priority", "timeout_us")
RAW_FIELDS = ("height", "width", "channels", "encoding", "step", "is_bigendian", "data")
JSON_FIELDS = ("images", "options", "model_name", "model_version", "id", "priority", "timeout_us")
OPTION_FIELDS = ("score_threshold", "iou_threshold", "max_detections", "classes")
UINT32_MAX = 2**32 - 1  # the proto's uint32 height, width, channels and step


def _number(value: Any, what: str, integer: bool = False) -> Any:
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            raise InvalidArgument(f"{what}: expected a number, got {clipped(repr(value))}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise InvalidArgument(f"{what}: expected {'an integer' if integer else 'a number'}, got {clipped(repr(value))}")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}: expected a string, got {json_type(value)}")
    return value


def _request(fields: Mapping[str, Any], images: Sequence[EncodedImage | RawImage], options: Mapping[str, Any],
             prefix: str, deadline: float | None) -> DetectRequest:
    if not images:
        raise InvalidArgument("images: expected at least one image, got none")
    classes = options.get("classes", [])
    if isinstance(classes, str):
        classes = [c for c in classes.replace(" ", "").split(",") if c]
    if not isinstance(classes, list):
        raise InvalidArgument(f"{prefix}classes: expected a list of class ids")
    overrides = OptionOverrides(
        _number(options["score_threshold"], f"{prefix}score_threshold") if "score_threshold" in options else None,
        _number(options["iou_threshold"], f"{prefix}iou_threshold") if "iou_threshold" in options else None,
        _number(options["max_detections"], f"{prefix}max_detections", True) if "max_detections" in options else None,
        [_number(c, f"{prefix}classes", True) for c in classes],
        field_prefix=prefix,
    )
    priority = _number(fields.get("priority", 0), "priority", True)
    timeout_us = _number(fields.get("timeout_us", 0), "timeout_us", True)
    if priority < 0 or timeout_us < 0:
        raise InvalidArgument("priority, timeout_us: expected non-negative integers")
    return DetectRequest(_string(fields.get("model_name", ""), "model_name"),
                         _string(fields.get("model_version", ""), "model_version"),
                         _string(fields.get("id", ""), "id"),
                         parameters={"timeout": timeout_us} if timeout_us else {}, deadline=deadline,
                         priority=priority, images=list(images), overrides=overrides)


def decode_form(fields: Mapping[str, str], images: Sequence[bytes], deadline: float | None) -> DetectRequest:
    """A multipart request: its text ``fields`` and the bytes of its ``image`` parts, in order."""
    unknown = [k for k in fields if k not in FIELDS]
    if unknown:
        raise InvalidArgument(f"form field '{clipped(unknown[0])}': not known; expected image parts and some of "
                              f"{', '.join(FIELDS)}")
    encoded = [EncodedImage(bytes(data), f"image[{i}]") for i, data in enumerate(images)]
    return _request(fields, encoded, fields, "", deadline)


def _base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{what}: not valid base64") from None


def _uint32(raw: Mapping[str, Any], key: str, field: str, required: bool = False) -> int:
    if key not in raw and not required:
        return 0
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT32_MAX:
        got = "none" if key not in raw else clipped(repr(value))
        raise InvalidArgument(f"{field}.{key}: expected an integer in [0, {UINT32_MAX}], got {got}")
    return value


def decode_raw(raw: Any, field: str) -> RawImage:
    """Image ``field``'s ``{"raw": {...}}`` object as a :class:`RawImage` (the gRPC ``RawImage``'s fields,
    ``data`` in base64): JSON types and the proto's ranges are checked here, the rest by the model. Raises
    InvalidArgument naming ``<field>.raw.<key>``, as gRPC names the proto's fields."""
    where = f"{field}.raw"
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: expected an object with {', '.join(RAW_FIELDS)}, got {json_type(raw)}")
    unknown = [k for k in raw if k not in RAW_FIELDS]
    if unknown:
        raise InvalidArgument(f"{where}.{clipped(unknown[0])}: not known; expected some of {', '.join(RAW_FIELDS)}")
    height, width = _uint32(raw, "height", where, True), _uint32(raw, "width", where, True)
    channels, step = _uint32(raw, "channels", where), _uint32(raw, "step", where)
    encoding = _string(raw.get("encoding", ""), f"{where}.encoding")
    big = raw.get("is_bigendian", False)
    if not (isinstance(big, bool) or (isinstance(big, int) and big in (0, 1))):  # 0/1: a ROS message's uint8
        raise InvalidArgument(f"{where}.is_bigendian: expected true or false (or 0, 1), got {clipped(repr(big))}")
    text = raw.get("data")
    if not isinstance(text, str):
        raise InvalidArgument(f"{where}.data: expected the frame's bytes in base64, got {json_type(text)}")
    return RawImage(_base64(text, f"{where}.data"), height, width, channels, field, encoding, step, bool(big))


def decode_json(body: Mapping[str, Any], deadline: float | None) -> DetectRequest:
    """A JSON request (encoded images in base64, or raw camera frames: see the module docstring). A key it
    does not know is refused, naming it (a misspelt option would otherwise answer with the defaults)."""
    unknown = [k for k in body if k not in JSON_FIELDS]
    if unknown:
        raise InvalidArgument(f"{clipped(unknown[0])}: not known; expected some of {', '.join(JSON_FIELDS)}")
    images = body.get("images")
    if not isinstance(images, list):
        raise InvalidArgument("images: expected an array of base64 strings, {\"b64\": ...} or {\"raw\": {...}} "
                              "objects")
    decoded: list[EncodedImage | RawImage] = []
    for i, image in enumerate(images):
        if isinstance(image, dict) and "raw" in image:
            if "b64" in image:
                raise InvalidArgument(f"images[{i}]: expected either b64 (an encoded image) or raw (a camera "
                                      "frame), got both")
            decoded.append(decode_raw(image["raw"], f"images[{i}]"))
            continue
        text = image.get("b64") if isinstance(image, dict) else image
        if not isinstance(text, str):
            raise InvalidArgument(f"images[{i}]: expected a base64 string, {{\"b64\": <base64>}} or "
                                  "{\"raw\": {...}}")
        decoded.append(EncodedImage(_base64(text, f"images[{i}]"), f"images[{i}]"))
    options = body.get("options", {})
    if not isinstance(options, dict):
        raise InvalidArgument("options: expected an object")
    unknown = [k for k in options if k not in OPTION_FIELDS]
    if unknown:
        raise InvalidArgument(f"options.{clipped(unknown[0])}: not known; expected some of {', '.join(OPTION_FIELDS)}")
    return _request(body, decoded, options, "options.", deadline)


def boxes(result: FrameResult, frame: int = 0) -> list[dict[str, Any]]:
    """The ``frame``-th image's boxes of the result as JSON objects; a pose model's with their
    ``keypoints``: [[x, y, score], ...] ([x, y] for a model whose keypoints carry no score); a segmentation
    model's with their mask's ``polygon``: [[x, y], ...] (ultralytics' ``masks.xy``)."""
    out = [{"x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": score, "class_id": int(c), "label": result.label(int(c))}
           for x1, y1, x2, y2, score, c in result.detections[frame].tolist()]
    if result.keypoints is not None:
        for box, points in zip(out, result.keypoints[frame].tolist(), strict=True):
            box["keypoints"] = points
    if result.polygons is not None:
        for box, polygon in zip(out, result.polygons[frame], strict=True):
            box["polygon"] = polygon.tolist()
    return out


def encode_result(request: DetectRequest, result: FrameResult) -> dict[str, Any]:
    """The JSON answer to one request."""
    results = [{"height": height, "width": width, "boxes": boxes(result, i)}
               for i, (height, width) in enumerate(result.sizes)]
    t = result.times
    timings = {"decode_us": result.decode_ns // _US, "queue_us": result.queue_ns // _US, "pre_us": t.pre_ns // _US,
               "infer_us": t.infer_ns // _US, "post_us": t.post_ns // _US, "total_us": result.total_ns // _US,
               "batch_size": t.batch_size}
    answer = {"model_name": result.model_name, "model_version": result.model_version, "id": request.id,
              "results": results, "timings": timings}
    if result.variant:
        answer["variant"] = result.variant
    return answer
