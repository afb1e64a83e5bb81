"""A pose export's keypoints, served with its boxes as ultralytics' PosePredictor answers them: each kept box's
K x D values after its detection columns, x and y mapped back to the frame as its corners are
(``scale_coords``: the letterbox's padding off, over its gain, clipped to the frame), a visibility score as it
is; then on every surface that answers boxes (Detect, DetectStream, REST, OIP's KEYPOINTS output, KServe V1)."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pipeline_support
import pytest
import tritonclient.grpc as tg
from peregrine.client import DetectionClient
from peregrine.modelgen import end2end_detector, yolov8_detector, yolov8_pose
from peregrine.server.app import PeregrineServer
from peregrine.server.config import load_model_config
from peregrine.server.core.types import FrameRequest
from peregrine.server.models.detection import DetectionModel
from pipeline_support import pipeline_config, write_pipeline
from support import onnx_models

SETTINGS = "max_detections = 50\nscore_threshold = 0.05\n"


def _pose_model(layout: str, kpt_shape: tuple[int, int]) -> onnx.ModelProto:
    """A pose export of the test detector: its keypoint values repeat each box's raw coordinates (yolov8: centre
    x, centre y, width, height; end-to-end: x1, y1, x2, y2), so the first keypoint of a box is its centre
    (yolov8) or its top-left corner (end-to-end), which the test can check without any reference."""
    detector = (yolov8_detector(0, imgsz=192, class_names=["person"]) if layout == "yolov8"
                else end2end_detector(0, imgsz=192, max_detections=50, class_names=["person"]))
    return onnx_models.with_task_head(detector, "pose", extra=kpt_shape[0] * kpt_shape[1],
                                      metadata={"kpt_shape": str(list(kpt_shape))})


def _load(root: Path, name: str) -> DetectionModel:
    cfg = load_model_config(root / name)
    assert cfg.detection is not None
    return DetectionModel.load(name, 1, root / cfg.detection.detector / "1", cfg)


def _partner(got: np.ndarray, box: np.ndarray) -> int:
    """The row of ``got`` [k, 6] whose corners are nearest ``box``'s."""
    return int(np.abs(got[:, :4] - box[:4]).max(axis=1).argmin())


@pytest.mark.parametrize(("layout", "kpt_shape"), [("yolov8", (17, 3)), ("end2end", (17, 3)), ("yolov8", (5, 2)),
                                                   ("modelgen", (17, 3))],
                         ids=["yolov8-17x3", "end2end-17x3", "yolov8-5x2", "yolov8n-pose"])
def test_a_pose_export_answers_each_box_with_its_keypoints(tmp_path: Path, layout: str,
                                                           kpt_shape: tuple[int, int]) -> None:
    """Against PosePredictor written out (pipeline_support.pose_reference), on every photograph; "yolov8n-pose":
    peregrine.modelgen's pose model, whose keypoints are decoded in the graph as ultralytics exports them."""
    model = (yolov8_pose(0, imgsz=192) if layout == "modelgen" else _pose_model(layout, kpt_shape))
    onnx_models.write(tmp_path, "pose", model)
    write_pipeline(tmp_path, "p", pipeline_config("pose", SETTINGS))
    pipeline = _load(tmp_path, "p")
    assert pipeline.head.keypoints == kpt_shape and pipeline.head.task == "pose"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    photos = pipeline_support.photographs()
    frames = list(photos.values())
    result = pipeline.make_executor().execute(0, [FrameRequest("p", frames=frames,
                                                               options=pipeline.default_options())])[0]
    assert result.keypoints is not None and len(result.keypoints) == len(frames)
    seen = 0
    head = "end2end" if layout == "end2end" else "yolov8"
    for i, name in enumerate(photos):
        want_boxes, want_points = pipeline_support.pose_reference(session, frames[i], 192, 192, kpt_shape,
                                                                  conf=0.05, max_det=50, layout=head)
        got, points = result.detections[i], result.keypoints[i]
        pipeline_support.assert_same_detections(got, want_boxes, name)
        assert points.shape == (len(got), *kpt_shape) and points.dtype == np.float32
        for box, want in zip(want_boxes, want_points, strict=True):
            np.testing.assert_allclose(points[_partner(got, box)], want, atol=pipeline_support.CORNER_PX,
                                       err_msg=name)
        height, width = frames[i].shape[:2]
        assert (points[..., 0] >= 0).all() and (points[..., 0] <= width).all()  # clipped to the frame
        assert (points[..., 1] >= 0).all() and (points[..., 1] <= height).all()
        if layout == "modelgen":
            seen += len(got)
            continue
        # The first keypoint repeats the box's own coordinates: where the box is not clipped, its centre
        # (yolov8) or its top-left corner (end-to-end), mapped back.
        inside = (got[:, 0] > 0) & (got[:, 1] > 0) & (got[:, 2] < width) & (got[:, 3] < height)
        expected = (got[:, 0:2] + got[:, 2:4]) / 2 if layout == "yolov8" else got[:, 0:2]
        np.testing.assert_allclose(points[inside, 0, :2], expected[inside], atol=0.01, rtol=1e-4, err_msg=name)
        seen += int(inside.sum())
    assert seen > 0


def test_a_detector_answers_no_keypoints(tmp_path: Path) -> None:
    onnx_models.write(tmp_path, "det", yolov8_detector(0, imgsz=192))
    write_pipeline(tmp_path, "p", pipeline_config("det", SETTINGS))
    pipeline = _load(tmp_path, "p")
    frame = pipeline_support.photographs()["astronaut"]
    result = pipeline.make_executor().execute(0, [FrameRequest("p", frames=[frame],
                                                               options=pipeline.default_options())])[0]
    assert result.keypoints is None and len(result.detections[0]) > 0


# -- served ------------------------------------------------------------------------------------------------
@pytest.fixture
def pose_server(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> PeregrineServer:
    onnx_models.write(tmp_path, "pose", _pose_model("yolov8", (17, 3)))
    onnx_models.write(tmp_path, "det", yolov8_detector(0, imgsz=192))
    write_pipeline(tmp_path, "pose_detect", pipeline_config("pose", SETTINGS))
    write_pipeline(tmp_path, "plain_detect", pipeline_config("det", SETTINGS))
    return start_server(tmp_path, http_port=0)


def _post(server: PeregrineServer, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def test_keypoints_on_every_surface(pose_server: PeregrineServer) -> None:
    """Detect (through the Python client), DetectStream, REST /v1/detect, OIP's KEYPOINTS output and KServe V1
    give each box the same keypoints; the model's metadata lists the output; a detector's answers carry none."""
    photos = pipeline_support.photographs()
    frames = [photos["astronaut"], photos["coffee_tiny"]]
    jpegs = [pipeline_support.png(f) for f in frames]  # lossless: every surface decodes the same pixels
    with DetectionClient(f"127.0.0.1:{pose_server.port}") as client:
        answer = client.detect_many(jpegs, model="pose_detect")
        streamed = [r.detections for r in client.stream(jpegs, model="pose_detect")]
        plain = client.detect(jpegs[0], model="plain_detect")
    assert len(answer[0]) > 0 and all(len(d.keypoints) == 17 for d in answer[0])
    assert all(p.score is not None for d in answer[0] for p in d.keypoints)
    assert streamed == answer
    assert plain and all(d.keypoints == () for d in plain)
    detect_points = [np.array([[[p.x, p.y, p.score] for p in d.keypoints] for d in boxes], np.float32)
                     for boxes in answer]

    rest = _post(pose_server, "/v1/detect", {"model_name": "pose_detect",
                                              "images": [base64.b64encode(j).decode() for j in jpegs]})
    for i, image in enumerate(rest["results"]):
        np.testing.assert_allclose(np.array([b["keypoints"] for b in image["boxes"]], np.float32).reshape(-1, 17, 3),
                                   detect_points[i].reshape(-1, 17, 3), rtol=1e-6)
    rest_plain = _post(pose_server, "/v1/detect", {"model_name": "plain_detect",
                                                    "images": [base64.b64encode(jpegs[0]).decode()]})
    assert rest_plain["results"][0]["boxes"] and "keypoints" not in rest_plain["results"][0]["boxes"][0]

    oip = tg.InferenceServerClient(f"127.0.0.1:{pose_server.port}")
    try:
        meta = oip.get_model_metadata("pose_detect", as_json=True)
        assert {"name": "KEYPOINTS", "datatype": "FP32", "shape": ["-1", "-1", "17", "3"]} in meta["outputs"]
        assert "KEYPOINTS" not in [o["name"] for o in oip.get_model_metadata("plain_detect", as_json=True)["outputs"]]
        inp = tg.InferInput("ENCODED", [2, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[j] for j in jpegs], dtype=object))
        out = oip.infer("pose_detect", [inp])
        counts = out.as_numpy("COUNTS")[:, 0]
        keypoints = out.as_numpy("KEYPOINTS")
        assert keypoints.shape == (2, max(counts), 17, 3)
        for i in range(2):
            np.testing.assert_array_equal(keypoints[i, : counts[i]], detect_points[i].reshape(-1, 17, 3))
            assert not keypoints[i, counts[i] :].any()  # padding past a frame's own boxes
        with pytest.raises(tg.InferenceServerException) as e:
            oip.infer("plain_detect", [inp], outputs=[tg.InferRequestedOutput("KEYPOINTS")])
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "'KEYPOINTS'" in e.value.message() and "DETECTIONS, COUNTS" in e.value.message()
    finally:
        oip.close()

    v1 = _post(pose_server, "/v1/models/pose_detect:predict",
               {"instances": [{"b64": base64.b64encode(j).decode()} for j in jpegs]})
    for i, prediction in enumerate(v1["predictions"]):
        assert len(prediction["KEYPOINTS"]) == prediction["COUNTS"][0] == len(answer[i])  # its own rows
        np.testing.assert_array_equal(np.array(prediction["KEYPOINTS"], np.float32).reshape(-1, 17, 3),
                                      detect_points[i].reshape(-1, 17, 3))


def test_keypoints_of_a_model_without_visibility_scores(tmp_path: Path,
                                                       start_server: Callable[..., PeregrineServer]) -> None:
    """kpt_shape [K, 2]: x and y alone; the proto's score is absent (None in the client), JSON pairs."""
    onnx_models.write(tmp_path, "pose", _pose_model("yolov8", (5, 2)))
    write_pipeline(tmp_path, "pose_detect", pipeline_config("pose", SETTINGS))
    server = start_server(tmp_path, http_port=0)
    png = pipeline_support.png(pipeline_support.photographs()["astronaut"])
    with DetectionClient(f"127.0.0.1:{server.port}") as client:
        boxes = client.detect(png)
    assert boxes and all(len(d.keypoints) == 5 and all(p.score is None for p in d.keypoints) for d in boxes)
    rest = _post(server, "/v1/detect", {"images": [base64.b64encode(png).decode()]})
    assert all(len(b["keypoints"]) == 5 and all(len(p) == 2 for p in b["keypoints"])
               for b in rest["results"][0]["boxes"])
    oip = tg.InferenceServerClient(f"127.0.0.1:{server.port}")
    meta = oip.get_model_metadata("pose_detect", as_json=True)
    oip.close()
    assert {"name": "KEYPOINTS", "datatype": "FP32", "shape": ["-1", "-1", "5", "2"]} in meta["outputs"]


@pytest.mark.parametrize("values", [3, 2])
def test_keypoints_wire_bytes_parse_as_the_messages_built_field_by_field(values: int) -> None:
    """The Detect encoder writes keypoints as wire bytes for all boxes at once: the same messages as ones built
    with the generated API, zeros, negatives, NaN and infinities included; score present exactly when D is 3."""
    from peregrine.proto import detection_pb2 as det
    from peregrine.server.codecs.detection import encode_detect_response
    from peregrine.server.core.types import FrameResult, StageTimes

    rng = np.random.default_rng(1)
    points = rng.normal(0, 300, (4, 17, values)).astype(np.float32)
    points[0, 0] = 0.0
    points[1, 2, 0], points[2, 3, 1], points[3, 4, -1] = np.nan, np.inf, -np.inf
    boxes = np.concatenate([rng.random((4, 5), np.float32) * 100, np.arange(4, dtype=np.float32)[:, None]], 1)
    result = FrameResult([boxes, boxes[:0]], StageTimes(batch_size=2), ["a", "b"], [(480, 640), (10, 10)],
                         keypoints=[points, points[:0]])
    got = encode_detect_response(det.DetectRequest(id="r"), result)
    want = det.ImageDetections(height=480, width=640)
    for box, kp in zip(boxes.tolist(), points.tolist(), strict=True):
        b = want.boxes.add(x1=box[0], y1=box[1], x2=box[2], y2=box[3], score=box[4], class_id=int(box[5]),
                           label=result.label(int(box[5])))
        for p in kp:
            b.keypoints.add(x=p[0], y=p[1], **({"score": p[2]} if values == 3 else {}))
    assert len(got.results) == 2 and len(got.results[1].boxes) == 0
    # NaN != NaN: compare the serialised messages, which hold the same bits
    assert got.results[0].SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    parsed = det.DetectResponse.FromString(got.SerializeToString())
    assert all(p.HasField("score") == (values == 3) for b in parsed.results[0].boxes for p in b.keypoints)
    assert parsed.results[0].boxes[0].keypoints[0].x == 0.0
