"""``POST /v1/detect`` for web clients: a multipart upload or base64 in JSON, on the bundled detection
pipeline; the boxes are those the gRPC ``Detect`` call gives for the same photograph."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid

import cv2
import grpc
import pytest
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from skimage import data

pytestmark = pytest.mark.timeout(180)




@pytest.fixture(scope="module")
def photo() -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def _post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _multipart(fields: dict[str, str], images: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for i, image in enumerate(images):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="f{i}.jpg"\r\n'
                     "Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _grpc_boxes(server: PeregrineServer, photo: bytes, **options: float) -> list[tuple[float, ...]]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = det_grpc.DetectionServiceStub(channel).Detect(det.DetectRequest(
            model_name="yolov8n_detect", images=[det.Image(encoded=photo)], options=det.DetectOptions(**options)),
            timeout=60)
    return [(b.x1, b.y1, b.x2, b.y2, b.score, b.class_id) for b in response.results[0].boxes]


def _boxes(result: dict) -> list[tuple[float, ...]]:
    return [(b["x1"], b["y1"], b["x2"], b["y2"], b["score"], b["class_id"]) for b in result["boxes"]]


def test_multipart_upload(detect_server: PeregrineServer, photo: bytes) -> None:
    url = f"http://127.0.0.1:{detect_server.http_port}/v1/detect"
    body, content_type = _multipart({"model_name": "yolov8n_detect", "score_threshold": "0.2", "id": "m1"},
                                    [photo, photo])
    status, answer = _post(url, body, content_type)
    assert status == 200, answer
    assert answer["model_name"] == "yolov8n_detect" and answer["id"] == "m1" and len(answer["results"]) == 2
    first = answer["results"][0]
    assert (first["height"], first["width"]) == data.astronaut().shape[:2]
    assert _boxes(first) == _boxes(answer["results"][1])
    want = _grpc_boxes(detect_server, photo, score_threshold=0.2)
    assert len(want) > 0
    assert [tuple(round(v, 3) for v in b) for b in _boxes(first)] == [tuple(round(v, 3) for v in b) for b in want]
    assert all(isinstance(b["label"], str) for b in first["boxes"])
    assert answer["timings"]["total_us"] > 0


def test_json_base64(detect_server: PeregrineServer, photo: bytes) -> None:
    url = f"http://127.0.0.1:{detect_server.http_port}/v1/detect"
    encoded = base64.b64encode(photo).decode()
    body = {"images": [encoded, {"b64": encoded}], "options": {"max_detections": 3, "score_threshold": 0.2}}
    status, answer = _post(url, json.dumps(body).encode(), "application/json")
    assert status == 200, answer
    assert answer["model_name"] == "yolov8n_detect"  # the server's only pipeline when none is named
    assert [len(r["boxes"]) for r in answer["results"]] == [3, 3]


def test_detect_errors(detect_server: PeregrineServer, photo: bytes) -> None:
    url = f"http://127.0.0.1:{detect_server.http_port}/v1/detect"
    for body in ({"images": ["not base64!"]}, {"images": []}, {"images": [base64.b64encode(b"junk").decode()]},
                 {"images": [base64.b64encode(photo).decode()], "options": {"score_threshold": "high"}}):
        status, answer = _post(url, json.dumps(body).encode(), "application/json")
        assert status == 400 and "error" in answer, body
    status, answer = _post(url, json.dumps({"model_name": "nope", "images": [base64.b64encode(photo).decode()]})
                           .encode(), "application/json")
    assert status == 404 and "error" in answer
    body, content_type = _multipart({"unknown_field": "1"}, [photo])
    status, answer = _post(url, body, content_type)
    assert status == 400 and "error" in answer
    # JSON as the form: a key it does not know (a misspelt option) is refused by name, not ignored
    image = base64.b64encode(photo).decode()
    for body, name in (({"images": [image], "options": {"scor_threshold": 0.9}}, "options.scor_threshold"),
                       ({"images": [image], "score_threshold": 0.9}, "score_threshold: not known")):
        status, answer = _post(url, json.dumps(body).encode(), "application/json")
        assert status == 400 and name in answer["error"], answer
