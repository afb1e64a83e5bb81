"""Ultralytics' RT-DETR export served as ultralytics' RTDETRPredictor answers: the frame stretched to the
input (no letterbox), each query's box (fractions of the input) and best class score, no NMS, the boxes in
the queries' order and not clipped; or, for an export whose decoder ranks its own answers (ultralytics 8.4:
[N, K, 6] rows of box, score, class index), those rows as they come. The model is a stand-in with RT-DETR's
output and metadata (tests/support/onnx_models.rtdetr_like); the reference is
pipeline_support.rtdetr_reference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pipeline_support
import pytest
from peregrine.modelgen.coco import COCO80
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig, load_model_config
from peregrine.server.core.errors import ModelLoadError
from peregrine.server.core.types import FrameRequest
from peregrine.server.models.detection import DetectionModel
from pipeline_support import pipeline_config, rtdetr_reference, write_pipeline
from support import onnx_models


def _load(root: Path, name: str) -> DetectionModel:
    cfg = load_model_config(root / name)
    detector = cfg.detection.detector if cfg.detection else None
    return DetectionModel.load(name, 1, root / (detector or name) / "1", cfg)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _detect(pipeline: DetectionModel, frames: list[np.ndarray], **options: object) -> list[np.ndarray]:
    opts = dataclasses.replace(pipeline.default_options(), **options)
    [result] = pipeline.make_executor().execute(0, [FrameRequest(pipeline.name, frames=frames, options=opts)])
    return list(result.detections)


@pytest.fixture(scope="module")
def rtdetr_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rtdetr")
    onnx_models.write(root, "rtdetr", onnx_models.rtdetr_like(), "max_batch_size = 8\n")
    onnx_models.write(root, "rtdetr_b1", onnx_models.rtdetr_like(batch=1))  # ultralytics' default export
    write_pipeline(root, "det_rtdetr", pipeline_config("rtdetr", max_batch=8))
    write_pipeline(root, "det_rtdetr_b1", pipeline_config("rtdetr_b1", max_batch=8))
    onnx_models.write(root, "ranked", onnx_models.rtdetr_like(topk=True), "max_batch_size = 8\n")
    write_pipeline(root, "det_ranked", pipeline_config("ranked", max_batch=8))
    return root


def test_an_rtdetr_export_is_read_as_one(rtdetr_repo: Path) -> None:
    pipeline = _load(rtdetr_repo, "det_rtdetr")
    head = pipeline.head
    assert (head.layout, head.num_classes, head.stretch, head.height, head.width) == ("rtdetr", 80, True, 640, 640)
    details = dict(pipeline.describe().details)
    assert details["detection_layout"] == "rtdetr" and details["detection_fit"] == "stretch"
    assert details["detection_nms"].startswith("none")
    assert pipeline.labels[0] == "person" and len(pipeline.labels) == 80


def test_boxes_are_ultralytics_rtdetr_predictor_s(rtdetr_repo: Path) -> None:
    """Every photograph (1080p, portrait, 60x40, ...) in one batch: the same boxes, scores and classes in
    the same order as the reference, boxes past the frame's edges included."""
    pipeline = _load(rtdetr_repo, "det_rtdetr")
    session = _session(onnx_models.rtdetr_like())
    # (the tall one is for letterboxing's per-side scale: a stretch has none, and this model sees nothing in it)
    photos = {k: v for k, v in pipeline_support.photographs().items() if k != "rocket_tall"}
    got = _detect(pipeline, list(photos.values()))
    past_edges = 0
    for (name, rgb), boxes in zip(photos.items(), got, strict=True):
        want = rtdetr_reference(session, rgb)
        assert len(want) > 0, name
        np.testing.assert_allclose(boxes, want, atol=1e-3, rtol=1e-5, err_msg=name)
        h, w = rgb.shape[:2]
        past_edges += int(((boxes[:, :2] < 0) | (boxes[:, 2] > w)[:, None] | (boxes[:, 3] > h)[:, None]).any(1).sum())
    assert past_edges > 0  # not clipped, as ultralytics leaves them


def test_request_options_apply_as_ultralytics_applies_them(rtdetr_repo: Path) -> None:
    pipeline = _load(rtdetr_repo, "det_rtdetr")
    session = _session(onnx_models.rtdetr_like())
    rgb = pipeline_support.photographs()["motorcycle"]
    everything = rtdetr_reference(session, rgb, conf=0.3)
    classes = sorted({int(c) for c in everything[:, 5]})[:2]
    [got] = _detect(pipeline, [rgb], score_threshold=0.3, classes=tuple(classes))
    want = rtdetr_reference(session, rgb, conf=0.3, classes=tuple(classes))
    assert 0 < len(want) < len(everything)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-5)
    [first] = _detect(pipeline, [rgb], score_threshold=0.3, max_detections=3)
    np.testing.assert_allclose(first, everything[:3], atol=1e-3, rtol=1e-5)  # the first three queries
    # the class filter comes before the cap: the first three of those classes, wherever they are
    last = [int(everything[-1, 5])]
    [only] = _detect(pipeline, [rgb], score_threshold=0.3, max_detections=3, classes=tuple(last))
    np.testing.assert_allclose(only, rtdetr_reference(session, rgb, conf=0.3, classes=last)[:3], atol=1e-3, rtol=1e-5)


def test_a_batch_one_export_takes_several_frames(rtdetr_repo: Path) -> None:
    photos = pipeline_support.photographs()
    frames = [photos[k] for k in ("astronaut", "hubble_1080p", "coffee_tiny")]
    one, dynamic = _load(rtdetr_repo, "det_rtdetr_b1"), _load(rtdetr_repo, "det_rtdetr")
    assert one.head.fixed_batch == 1
    for a, b in zip(_detect(one, frames), _detect(dynamic, frames), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_detect_over_grpc_answers_with_the_reference_boxes(rtdetr_repo: Path) -> None:
    rgb = pipeline_support.photographs()["astronaut_portrait"]
    data = pipeline_support.jpeg(rgb)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    want = rtdetr_reference(_session(onnx_models.rtdetr_like()), np.ascontiguousarray(decoded))
    server = PeregrineServer(ServerConfig(model_repository=rtdetr_repo, grpc_port=0, http_port=0))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = det_grpc.DetectionServiceStub(channel)
            reply = stub.Detect(det.DetectRequest(model_name="det_rtdetr", images=[det.Image(encoded=data)]),
                                timeout=60)
    finally:
        server.stop(grace=1.0)
    boxes = reply.results[0].boxes
    got = np.array([[d.x1, d.y1, d.x2, d.y2, d.score, d.class_id] for d in boxes], np.float32)
    assert [d.label for d in boxes[:3]] == [COCO80[int(c)] for c in want[:3, 5]]
    pipeline_support.assert_same_detections(got, want, "Detect")


def test_an_rtdetr_layout_can_be_set_for_a_model_that_names_no_classes(tmp_path: Path) -> None:
    model = onnx_models.rtdetr_like()
    props = {p.key: p.value for p in model.metadata_props if p.key != "names"}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx_models.write(tmp_path, "m", model)
    write_pipeline(tmp_path, "auto", pipeline_config("m"))
    write_pipeline(tmp_path, "set", pipeline_config("m", 'layout = "rtdetr"\n'))
    assert _load(tmp_path, "auto").head.layout == "yolov5"  # nothing says how many classes: read as yolov5
    pipeline = _load(tmp_path, "set")
    assert (pipeline.head.layout, pipeline.head.num_classes) == ("rtdetr", 80)
    rgb = pipeline_support.photographs()["coffee"]
    [got] = _detect(pipeline, [rgb])
    np.testing.assert_allclose(got, rtdetr_reference(_session(model), rgb), atol=1e-3, rtol=1e-5)


def test_a_head_that_reads_as_rtdetr_but_gives_pixel_boxes_is_refused(tmp_path: Path) -> None:
    """4 + C columns for C named classes, but boxes that are not fractions of the input: not misread."""
    model = onnx_models.rtdetr_like()
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["fractions" if o == "output0" else o for o in node.output]
    graph.initializer.append(onnx.helper.make_tensor("times", onnx.TensorProto.FLOAT, [], [640.0]))
    graph.node.append(onnx.helper.make_node("Mul", ["fractions", "times"], ["output0"]))
    onnx_models.write(tmp_path, "m", model)
    write_pipeline(tmp_path, "p", pipeline_config("m"))
    with pytest.raises(ModelLoadError) as e:
        _load(tmp_path, "p")
    assert "fractions of the input" in e.value.message and "detection.layout" in e.value.message


# -- ultralytics 8.4: the decoder ranks its answers ---------------------------------------------------------
def test_a_ranked_export_is_served_as_ultralytics_8_4_serves_it(rtdetr_repo: Path) -> None:
    """[N, 300, 6] rows of the best (query, class) pairs, box as fractions, score, class index: read as
    RT-DETR (not as a YOLO end-to-end head's pixel corners) from the ``head`` metadata, and answered as
    ultralytics' predictor answers them: the same boxes in the same order, for every photograph, with a
    class filter before the cap."""
    pipeline = _load(rtdetr_repo, "det_ranked")
    head = pipeline.head
    assert (head.layout, head.ranked, head.num_classes, head.stretch) == ("rtdetr", True, 80, True)
    assert dict(pipeline.describe().details)["detection_nms"].startswith("none")
    session = _session(onnx_models.rtdetr_like(topk=True))
    photos = {k: v for k, v in pipeline_support.photographs().items() if k != "rocket_tall"}
    got = _detect(pipeline, list(photos.values()))
    for (name, rgb), boxes in zip(photos.items(), got, strict=True):
        want = rtdetr_reference(session, rgb)
        assert len(want) > 0, name
        np.testing.assert_allclose(boxes, want, atol=1e-3, rtol=1e-5, err_msg=name)
        assert (np.diff(boxes[:, 4]) <= 0).all()  # the decoder's ranking, kept
    rgb = photos["motorcycle"]
    everything = rtdetr_reference(session, rgb, conf=0.3)
    last = [int(everything[-1, 5])]
    [only] = _detect(pipeline, [rgb], score_threshold=0.3, max_detections=2, classes=tuple(last))
    np.testing.assert_allclose(only, rtdetr_reference(session, rgb, conf=0.3, classes=last)[:2], atol=1e-3, rtol=1e-5)


def test_a_two_class_ranked_export_is_told_from_a_two_class_query_head(tmp_path: Path) -> None:
    """Six columns are both 4 + 2 class scores (before 8.4) and the ranked rows: the ``head`` metadata and the
    probe's answer (whole class indices, descending scores) tell them apart, and each is served as what it is."""
    onnx_models.write(tmp_path, "ranked", onnx_models.rtdetr_like(topk=True, classes=2))
    onnx_models.write(tmp_path, "queries", onnx_models.rtdetr_like(classes=2))
    write_pipeline(tmp_path, "p_ranked", pipeline_config("ranked"))
    write_pipeline(tmp_path, "p_queries", pipeline_config("queries"))
    rgb = pipeline_support.photographs()["astronaut"]
    for name, model, ranked in (("p_ranked", onnx_models.rtdetr_like(topk=True, classes=2), True),
                                ("p_queries", onnx_models.rtdetr_like(classes=2), False)):
        pipeline = _load(tmp_path, name)
        assert (pipeline.head.layout, pipeline.head.ranked, pipeline.head.num_classes) == ("rtdetr", ranked, 2)
        [got] = _detect(pipeline, [rgb], score_threshold=0.05)
        want = rtdetr_reference(_session(model), rgb, conf=0.05)
        assert len(want) > 0
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-5, err_msg=name)


def test_an_rtdetr_decoder_export_whose_rows_are_not_ranked_is_refused(tmp_path: Path) -> None:
    """``head`` RTDETRDecoder with six columns that are not ranked rows (scores not descending): refused
    with the reason, not guessed."""
    model = onnx_models.rtdetr_like(classes=2)  # 4 + 2 scores a query
    props = {p.key: p.value for p in model.metadata_props}
    props["head"] = "RTDETRDecoder"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx_models.write(tmp_path, "m", model)
    write_pipeline(tmp_path, "p", pipeline_config("m"))
    with pytest.raises(ModelLoadError) as e:
        _load(tmp_path, "p")
    assert "RTDETRDecoder" in e.value.message and "ranked rows" in e.value.message
