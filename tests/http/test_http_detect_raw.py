"""Raw camera frames in ``POST /v1/detect`` (issue 21): ``{"raw": {...}}`` in the JSON carries the gRPC
``RawImage``'s fields, ``data`` in base64. Over real HTTP and gRPC on loopback, on the bundled detection
pipeline: the boxes are those gRPC ``Detect`` gives for the same frame, and a bad frame is refused with 400
and the message gRPC gives (INVALID_ARGUMENT) for the same fault, naming the same field."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from skimage import data

pytestmark = pytest.mark.timeout(180)

MODEL = "yolov8n_detect"


@pytest.fixture
def server(detect_server: PeregrineServer) -> PeregrineServer:
    return detect_server  # tests/http/conftest.py: the bundled repository's yolov8n_detect


def frames() -> dict[str, dict[str, Any]]:
    """The astronaut as cameras give it: an RGGB Bayer sensor's mosaic (rows padded to a stride), YUYV
    (YUV 4:2:2) and big-endian 16-bit RGB, each as a ``RawImage``'s fields."""
    rgb = data.astronaut()
    height, width = rgb.shape[:2]
    mosaic = np.zeros((height, width + 16), np.uint8)  # 16 bytes of padding per row
    mosaic[0::2, 0:width:2], mosaic[0::2, 1:width:2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    mosaic[1::2, 0:width:2], mosaic[1::2, 1:width:2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    yuyv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUYV)  # [H, W, 2]: Y0 U Y1 V
    wide = rgb.astype(">u2") * 257
    return {
        "bayer_rggb8": {"height": height, "width": width, "encoding": "bayer_rggb8", "step": width + 16,
                        "is_bigendian": False, "data": mosaic.tobytes()},
        "yuyv": {"height": height, "width": width, "encoding": "yuyv", "step": 0, "is_bigendian": False,
                 "data": np.ascontiguousarray(yuyv).tobytes()},
        "rgb16": {"height": height, "width": width, "encoding": "rgb16", "step": width * 6, "is_bigendian": True,
                  "data": wide.tobytes()},
    }


def post(server: PeregrineServer, body: Any) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v1/detect", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def as_json(frame: dict[str, Any]) -> dict[str, Any]:
    return {"raw": {**frame, "data": base64.b64encode(frame["data"]).decode()}}


def grpc_detect(server: PeregrineServer, frame: dict[str, Any]) -> det.DetectResponse:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return det_grpc.DetectionServiceStub(channel).Detect(det.DetectRequest(
            model_name=MODEL, images=[det.Image(raw=det.RawImage(**frame))]), timeout=60)


def grpc_error(server: PeregrineServer, frame: dict[str, Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        grpc_detect(server, frame)
    return info.value


def test_raw_frames_give_the_boxes_grpc_gives(server: PeregrineServer) -> None:
    cases = frames()
    status, answer = post(server, {"model_name": MODEL, "images": [as_json(f) for f in cases.values()]})
    assert status == 200, answer
    assert len(answer["results"]) == len(cases)
    for (encoding, frame), result in zip(cases.items(), answer["results"], strict=True):
        want = grpc_detect(server, frame).results[0]
        assert (result["height"], result["width"]) == (want.height, want.width) == (512, 512)
        assert len(want.boxes) > 0, encoding
        got = [(b["x1"], b["y1"], b["x2"], b["y2"], b["score"], b["class_id"], b["label"]) for b in result["boxes"]]
        # Both carry the pipeline's float32 values exactly (JSON as the doubles they convert to).
        assert got == [(b.x1, b.y1, b.x2, b.y2, b.score, b.class_id, b.label) for b in want.boxes], encoding
    # An encoded image and a raw frame in one request; is_bigendian as a ROS message's 0/1.
    _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    wide = {"raw": {**as_json(cases["rgb16"])["raw"], "is_bigendian": 1}}
    status, answer = post(server, {"images": [base64.b64encode(jpeg.tobytes()).decode(), wide]})
    assert status == 200, answer
    assert [len(r["boxes"]) > 0 for r in answer["results"]] == [True, True]


def test_bad_frames_are_refused_as_grpc_refuses_them(server: PeregrineServer) -> None:
    """The checks of the frame itself are the model's: REST's 400 carries gRPC's INVALID_ARGUMENT message."""
    good = frames()["bayer_rggb8"]
    faults = {
        "encoding": {**good, "encoding": "bayer_rggb"},
        "step": {**good, "step": good["width"] - 1},
        "data": {**good, "data": good["data"][:-1]},
        "width": {**frames()["yuyv"], "width": 511, "step": 0},
        "channels": {**good, "channels": 3},
    }
    for field, frame in faults.items():
        status, answer = post(server, {"model_name": MODEL, "images": [as_json(good), as_json(frame)]})
        error = grpc_error(server, frame)
        assert status == 400 and error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, answer)
        assert answer["error"].startswith(f"images[1].raw.{field}: "), answer
        assert answer["error"] == error.details().replace("images[0]", "images[1]"), field


@pytest.mark.parametrize(("raw", "field"), [
    ({"data": "not base64!"}, "data"),
    ({"data": 5}, "data"),
    ({"data": None}, "data"),
    ({"height": -1}, "height"),
    ({"width": 2**32}, "width"),
    ({"height": "512"}, "height"),
    ({"step": 1.5}, "step"),
    ({"channels": True}, "channels"),
    ({"is_bigendian": 2}, "is_bigendian"),
    ({"is_bigendian": "false"}, "is_bigendian"),
    ({"encoding": 7}, "encoding"),
    ({"stride": 512}, "stride"),
])
def test_json_types_and_ranges(server: PeregrineServer, raw: dict[str, Any], field: str) -> None:
    frame = {**as_json(frames()["bayer_rggb8"])["raw"], **raw}
    frame = {k: v for k, v in frame.items() if v is not None}
    status, answer = post(server, {"images": [{"raw": frame}]})
    assert status == 400 and answer["error"].startswith(f"images[0].raw.{field}: "), answer


def test_the_shape_of_a_raw_image(server: PeregrineServer) -> None:
    good = as_json(frames()["bayer_rggb8"])
    missing = {k: v for k, v in good["raw"].items() if k != "height"}
    for image, names in (({"raw": missing}, "images[0].raw.height: "), ({"raw": [1, 2]}, "images[0].raw: "),
                         ({**good, "b64": good["raw"]["data"]}, "images[0]: ")):
        status, answer = post(server, {"images": [image]})
        assert status == 400 and answer["error"].startswith(names), answer
