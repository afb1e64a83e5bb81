"""A segmentation export's masks, served as the polygon ultralytics' ``Results.masks.xy`` gives for each box:
the mask at the input size (prototypes times coefficients, bilinear, above 0, zero outside the box), its outer
contours joined into one path, mapped back to the frame as the box's corners are; on Detect, REST and the
Python client."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pipeline_support
import pytest
from peregrine.client import DetectionClient
from peregrine.modelgen import end2end_detector, yolov8_detector
from peregrine.server.app import PeregrineServer
from peregrine.server.config import load_model_config
from peregrine.server.core.types import FrameRequest
from peregrine.server.models.detection import DetectionModel
from peregrine.server.pipeline.masks import join
from pipeline_support import pipeline_config, write_pipeline
from support import onnx_models

SETTINGS = "max_detections = 50\nscore_threshold = 0.05\n"
SIZE = 192


def _segment_model(layout: str) -> onnx.ModelProto:
    """A segmentation export of the test detector with prototypes of mixed signs (the coefficients repeat the
    box's coordinates): masks of one or several parts, or empty, by where a box lies and the colours under it."""
    detector = (yolov8_detector(0, imgsz=SIZE) if layout == "yolov8"
                else end2end_detector(0, imgsz=SIZE, max_detections=50))
    model = onnx_models.with_task_head(detector, "segment", extra=32, masks=32)
    weights = next(i for i in model.graph.initializer if i.name == "task_head.proto_w")
    rng = np.random.default_rng(7)
    weights.CopyFrom(onnx.numpy_helper.from_array(rng.normal(0.013, 0.1, (32, 3, 1, 1)).astype(np.float32),
                                                  "task_head.proto_w"))
    return model


def _reference(session: ort.InferenceSession, rgb: np.ndarray, layout: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """ultralytics' SegmentationPredictor and ``masks.xy``, written out: each kept box's mask at the input size
    (``cv2.resize`` INTER_LINEAR, which samples as torch's bilinear, > 0, zero outside the box), the boxes
    whose mask is empty dropped; each mask's contours found on the whole input, several joined, then mapped
    back (``scale_coords``). Returns the boxes [k, 6] and their polygons."""
    tensor, gain, pad = pipeline_support.letterbox(rgb, SIZE, SIZE)
    head, protos = session.run(None, {session.get_inputs()[0].name: tensor})[:2]
    dets, coefficients = pipeline_support._kept_with_values(head[0], 32, 0.05, pipeline_support.IOU, 50, layout)
    m, mh, mw = protos[0].shape
    logits = (coefficients @ protos[0].reshape(m, -1)).reshape(-1, mh, mw)
    cols, rows = np.arange(SIZE, dtype=np.float32), np.arange(SIZE, dtype=np.float32)
    kept, polygons = [], []
    h, w = rgb.shape[:2]
    for j, (x1, y1, x2, y2) in enumerate(dets[:, :4]):
        inside = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
        mask = (cv2.resize(logits[j], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) > 0) & inside
        if not mask.any():
            continue
        contours = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        points = (join([c.reshape(-1, 2) for c in contours]) if len(contours) > 1
                  else contours[0].reshape(-1, 2)).astype(np.float32)
        points[:, 0] = ((points[:, 0] - pad[0]) / gain[0]).clip(0, w)
        points[:, 1] = ((points[:, 1] - pad[1]) / gain[1]).clip(0, h)
        kept.append(j)
        polygons.append(points)
    return pipeline_support.scale_boxes(dets[kept], gain, pad, h, w), polygons


def _load(root: Path, name: str) -> DetectionModel:
    cfg = load_model_config(root / name)
    assert cfg.detection is not None
    return DetectionModel.load(name, 1, root / cfg.detection.detector / "1", cfg)


@pytest.mark.parametrize("layout", ["yolov8", "end2end"])
def test_a_segmentation_export_answers_each_box_with_its_mask_polygon(tmp_path: Path, layout: str) -> None:
    model = _segment_model(layout)
    onnx_models.write(tmp_path, "seg", model)
    write_pipeline(tmp_path, "p", pipeline_config("seg", SETTINGS))
    pipeline = _load(tmp_path, "p")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    photos = pipeline_support.photographs()
    frames = list(photos.values())
    result = pipeline.make_executor().execute(0, [FrameRequest("p", frames=frames,
                                                               options=pipeline.default_options())])[0]
    assert result.polygons is not None and result.keypoints is None
    compared = parts = 0
    for i, name in enumerate(photos):
        want_boxes, want_polygons = _reference(session, frames[i], layout)
        got = result.detections[i]
        pipeline_support.assert_same_detections(got, want_boxes, name)
        assert len(result.polygons[i]) == len(got)
        for box, want in zip(want_boxes, want_polygons, strict=True):
            polygon = result.polygons[i][int(np.abs(got[:, :4] - box[:4]).max(axis=1).argmin())]
            assert polygon.dtype == np.float32 and polygon.shape == want.shape, name
            np.testing.assert_allclose(polygon, want, atol=pipeline_support.CORNER_PX, err_msg=name)
            compared += 1
            parts += len(np.unique(want, axis=0)) < len(want)  # a joined path revisits its ties
    assert compared > 0 and parts > 0, (compared, parts)


def test_join_ties_two_contours_at_their_closest_points() -> None:
    """Two squares side by side: tied at the first closest pair in row-major order (the first square's
    (1, 1), the second's (5, 1)); each walked from its tie round to it again, the first then the second."""
    first = np.array([[0, 0], [0, 1], [1, 1], [1, 0]])
    second = np.array([[5, 0], [5, 1], [6, 1], [6, 0]])
    path = join([first, second])
    assert path.tolist() == [[1, 1], [1, 0], [0, 0], [0, 1], [1, 1], [5, 1], [6, 1], [6, 0], [5, 0], [5, 1]]


def test_a_detector_answers_no_polygons(tmp_path: Path) -> None:
    onnx_models.write(tmp_path, "det", yolov8_detector(0, imgsz=SIZE))
    write_pipeline(tmp_path, "p", pipeline_config("det", SETTINGS))
    pipeline = _load(tmp_path, "p")
    frame = pipeline_support.photographs()["astronaut"]
    result = pipeline.make_executor().execute(0, [FrameRequest("p", frames=[frame],
                                                               options=pipeline.default_options())])[0]
    assert result.polygons is None


def test_polygons_on_detect_rest_and_the_client(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    onnx_models.write(tmp_path, "seg", _segment_model("yolov8"))
    write_pipeline(tmp_path, "seg_detect", pipeline_config("seg", SETTINGS))
    server = start_server(tmp_path, http_port=0)
    png = pipeline_support.png(pipeline_support.photographs()["astronaut"])
    with DetectionClient(f"127.0.0.1:{server.port}") as client:
        boxes = client.detect(png)
    assert boxes and all(len(d.polygon) >= 3 and d.keypoints == () for d in boxes)
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}/v1/detect",
                                     data=json.dumps({"images": [base64.b64encode(png).decode()]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        rest = json.loads(r.read())["results"][0]["boxes"]
    assert [[tuple(p) for p in b["polygon"]] for b in rest] == [list(d.polygon) for d in boxes]
    for d in boxes:  # each outline lies in its box
        xs, ys = [p[0] for p in d.polygon], [p[1] for p in d.polygon]
        assert d.x1 - 1 <= min(xs) and max(xs) <= d.x2 + 1 and d.y1 - 1 <= min(ys) and max(ys) <= d.y2 + 1
