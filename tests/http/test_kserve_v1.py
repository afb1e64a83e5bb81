"""KServe's V1 data plane on the HTTP port (TensorFlow Serving's REST predict API), as KServe's V1 clients
and `curl` send it: the model list, a model's readiness, and ``:predict`` in row (``instances``) and columnar
(``inputs``) form, with the same answers as the V2 path; a detection pipeline takes ``{"b64": ...}`` frames.
Malformed bodies get 400 with a message naming the field."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import cv2
import numpy as np
import pytest
import tritonclient.http as th
from peregrine.server.app import PeregrineServer
from peregrine.server.codecs import kserve_v1
from peregrine.server.core.types import InferResponse
from skimage import data


def _call(server: PeregrineServer, path: str, body: Any = None) -> tuple[int, Any]:
    payload = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=payload,
                                 method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_the_model_list_and_a_models_readiness(http_server: PeregrineServer) -> None:
    status, body = _call(http_server, "/v1/models")
    assert status == 200 and {"simple", "identity_fp32", "identity_bytes"} <= set(body["models"])
    assert _call(http_server, "/v1/models/simple") == (200, {"name": "simple", "ready": True})
    status, body = _call(http_server, "/v1/models/nope")
    assert status == 404 and "nope" in body["error"]
    status, body = _call(http_server, "/v1/models/simple:explain", {"instances": [[1]]})
    assert status == 501 and "explanations are not served" in body["error"]


def test_a_model_that_is_not_ready_is_503(server: PeregrineServer) -> None:
    status, body = _call(server, "/v1/models/broken")  # the standard repository's model that fails to load
    assert status == 503 and "broken" in body["error"], body


def test_row_format_stacks_the_instances_and_answers_one_prediction_each(http_server: PeregrineServer) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.ones((2, 16), np.int32)
    status, body = _call(http_server, "/v1/models/simple:predict", {
        "instances": [{"INPUT0": a[i].tolist(), "INPUT1": b[i].tolist()} for i in range(2)]})
    assert status == 200, body
    assert [p["OUTPUT0"] for p in body["predictions"]] == (a + b).tolist()
    assert [p["OUTPUT1"] for p in body["predictions"]] == (a - b).tolist()

    # One input: an instance is its value alone, and the answer the output's value alone.
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    status, body = _call(http_server, "/v1/models/identity_fp32:predict", {"instances": x.tolist()})
    assert status == 200 and body == {"predictions": x.tolist()}


def test_columnar_format_takes_whole_tensors(http_server: PeregrineServer) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    status, body = _call(http_server, "/v1/models/simple:predict", {"inputs": {"INPUT0": a.tolist(),
                                                                              "INPUT1": a.tolist()}})
    assert status == 200 and body == {"outputs": {"OUTPUT0": (a * 2).tolist(), "OUTPUT1": (a * 0).tolist()}}
    status, body = _call(http_server, "/v1/models/identity_fp32:predict", {"inputs": [[1.5, 2.5]]})
    assert status == 200 and body == {"outputs": [[1.5, 2.5]]}


def test_bytes_travel_as_strings_or_b64(http_server: PeregrineServer) -> None:
    raw = "b64 héllo".encode()
    status, body = _call(http_server, "/v1/models/identity_bytes:predict", {
        "instances": [["text", {"b64": base64.b64encode(raw).decode()}]]})
    assert status == 200, body
    assert body == {"predictions": [["text", "b64 héllo"]]}
    status, body = _call(http_server, "/v1/models/identity_bytes:predict", {"instances": [[{"b64": "no!"}]]})
    assert status == 400 and "not valid base64" in body["error"]


def test_bytes_that_are_not_utf8_are_answered_in_b64() -> None:
    resp = InferResponse("m", "1", "", {"OUT": np.array([[b"\xff\x00", b"ok"]], dtype=object)})
    assert kserve_v1.encode_predict(resp, kserve_v1.ROW) == {"predictions": [[{"b64": "/wA="}, "ok"]]}
    nan = InferResponse("m", "1", "", {"OUT": np.array([[1.0, np.nan]], np.float32)})
    assert kserve_v1.encode_predict(nan, kserve_v1.COLUMNAR) == {"outputs": [[1.0, None]]}


@pytest.mark.parametrize(("body", "words"), [
    ({}, ["exactly one of 'instances'", "neither"]),
    ({"instances": [[1.0]], "inputs": [[1.0]]}, ["both"]),
    ({"instances": []}, ["instances", "non-empty"]),
    ({"instances": {"INPUT0": 1}}, ["instances", "list"]),
    ({"instances": [[1.0]], "extra": 1}, ["extra", "not a field"]),
    ({"instances": [[1.0]], "signature_name": "other"}, ["signature_name", "serving_default"]),
    ({"instances": [[1.0, 2.0], [3.0]]}, ["rectangular"]),
    ({"instances": [[1.0, [2.0]]]}, ["rectangular"]),
    ({"instances": [["one"]]}, ["expected numbers", "FP32"]),
    ({"instances": [[1e400]]}, ["request JSON", "Infinity"]),
    ({"instances": [[1e39]]}, ["outside FP32's range"]),
    ({"instances": [{"INPUT9": [1.0]}]}, ["'INPUT9' is not an input", "INPUT0"]),
    ({"inputs": [[True]]}, ["expected numbers"]),
    (b"[1, 2]", ["request JSON", "object"]),
    (b"{not json", ["request JSON"]),
])
def test_malformed_predict_bodies_are_400_naming_the_field(http_server: PeregrineServer, body: Any,
                                                           words: list[str]) -> None:
    status, answer = _call(http_server, "/v1/models/identity_fp32:predict", body)
    assert status == 400, answer
    for word in words:
        assert word in answer["error"], answer["error"]


def test_a_shape_the_model_does_not_take_is_refused_by_the_model(http_server: PeregrineServer) -> None:
    status, answer = _call(http_server, "/v1/models/simple:predict", {"instances": [{"INPUT0": [1] * 16}]})
    assert status == 400 and "INPUT1" in answer["error"], answer
    status, answer = _call(http_server, "/v1/models/simple:predict", {
        "instances": [{"INPUT0": [1] * 15, "INPUT1": [1] * 15}]})
    assert status == 400 and "INPUT0" in answer["error"], answer
    status, answer = _call(http_server, "/v1/models/simple:predict", {"instances": [[1] * 16]})
    assert status == 400 and "send an object naming them" in answer["error"], answer



@pytest.mark.timeout(180)
def test_a_detection_pipeline_takes_b64_frames_and_answers_as_v2_does(detect_server: PeregrineServer) -> None:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    jpeg = encoded.tobytes()
    status, body = _call(detect_server, "/v1/models/yolov8n_detect:predict",
                         {"instances": [{"b64": base64.b64encode(jpeg).decode()}] * 2})
    assert status == 200, body

    client = th.InferenceServerClient(f"127.0.0.1:{detect_server.http_port}")
    inp = th.InferInput("ENCODED", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[jpeg], [jpeg]], dtype=object))
    v2 = client.infer("yolov8n_detect", [inp])
    client.close()
    assert len(body["predictions"]) == 2
    for i, prediction in enumerate(body["predictions"]):
        np.testing.assert_array_equal(np.array(prediction["DETECTIONS"], np.float32).reshape(-1, 6),
                                      v2.as_numpy("DETECTIONS")[i].reshape(-1, 6))
        assert prediction["COUNTS"] == v2.as_numpy("COUNTS")[i].tolist()

    # Frames with different numbers of boxes: each prediction has its own rows (V2 pads to the most of any).
    small = cv2.imencode(".png", np.full((64, 64, 3), 127, np.uint8))[1].tobytes()
    status, body = _call(detect_server, "/v1/models/yolov8n_detect:predict",
                         {"instances": [{"b64": base64.b64encode(f).decode()} for f in (jpeg, small)]})
    assert status == 200, body
    counts = [p["COUNTS"][0] for p in body["predictions"]]
    assert counts[0] > counts[1] and [len(p["DETECTIONS"]) for p in body["predictions"]] == counts
    np.testing.assert_array_equal(np.array(body["predictions"][0]["DETECTIONS"], np.float32),
                                  v2.as_numpy("DETECTIONS")[0][: counts[0]])
