"""Detection pipeline configuration: validation errors name the key; models that cannot be a pipeline fail
to load with a reason while the server keeps serving; layout, input size and labels are read from the model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnx
import pipeline_support
import pytest
from peregrine.modelgen import end2end_detector, yolov5_detector, yolov8_detector
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.config import parse_model_config
from peregrine.server.core.errors import ModelLoadError
from peregrine.server.models.detection import DetectionModel
from peregrine.server.pipeline.head import detect_layout
from peregrine.server.runtime.metadata import parse_labels
from pipeline_support import pipeline_config, write_pipeline
from support import onnx_models

# Fixtures shared with the other pipeline tests (see pipeline_support).
detection_repo = pipeline_support.detection_repo
detection_server = pipeline_support.detection_server


@pytest.mark.parametrize(("text", "key"), [
    ('platform = "peregrine_detection"', "detection"),
    ('[detection]\nscore_threshold = 0.5', "detection"),
    ('platform = "peregrine_detection"\n[detection]\nscore_threshold = 1.5', "detection.score_threshold"),
    ('platform = "peregrine_detection"\n[detection]\niou_threshold = -1', "detection.iou_threshold"),
    ('platform = "peregrine_detection"\n[detection]\nmax_detections = 0', "detection.max_detections"),
    ('platform = "peregrine_detection"\n[detection]\ninput_size = [640]', "detection.input_size"),
    ('platform = "peregrine_detection"\n[detection]\nlayout = "yolov9"', "detection.layout"),
    ('platform = "peregrine_detection"\n[detection]\nclasses = [-1]', "detection.classes"),
    ('platform = "peregrine_detection"\n[detection]\nstream_max_waiting = 0', "detection.stream_max_waiting"),
    ('platform = "peregrine_detection"\n[detection]\nthreshold = 0.5', "detection.threshold"),
])
def test_config_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ModelLoadError) as e:
        parse_model_config(text, "det/config.toml")
    assert key in e.value.message and "det/config.toml" in e.value.message


def test_layout_from_head_shape() -> None:
    assert detect_layout((1, 84, 8400)) == "yolov8"
    assert detect_layout((1, 6, 2100)) == "yolov8"  # two classes
    assert detect_layout((1, 25200, 85)) == "yolov5"
    assert detect_layout((1, 300, 6)) == "end2end"
    # six columns: a one-class YOLOv5 when the rows are its anchors' at the input's size, else end-to-end
    assert detect_layout((1, 25200, 6), size=(640, 640)) == "yolov5"
    assert detect_layout((1, 6300, 6), size=(320, 320)) == "yolov5"
    assert detect_layout((1, 3 * (80 * 60 + 40 * 30 + 20 * 15), 6), size=(480, 640)) == "yolov5"
    assert detect_layout((1, 3 * (160 * 160 + 80 * 80 + 40 * 40 + 20 * 20), 6), size=(1280, 1280)) == "yolov5"  # P6
    assert detect_layout((1, 300, 6), size=(640, 640)) == "end2end"
    assert detect_layout((1, 25200, 38), 32, size=(640, 640)) == "yolov5"  # one-class yolov5-seg
    # more classes than anchors (a 64 x 64 input has 84): its anchors make it yolov8
    assert detect_layout((1, 84, 84), size=(64, 64)) == "yolov8"
    assert detect_layout((1, 1207, 1029), size=(224, 224)) == "yolov8"  # LVIS's 1203 classes at 224
    assert detect_layout((1, 1207, 1029)) == "yolov5"  # what the shape alone says
    assert detect_layout((1, 84, 8400), size=(640, 640)) == "yolov8"
    assert detect_layout((1, 25200, 85), size=(640, 640)) == "yolov5"


def test_labels_from_metadata() -> None:
    assert parse_labels({"names": "{0: 'person', 1: 'car'}"}) == ["person", "car"]
    assert parse_labels({"names": "['a', 'b']"}) == ["a", "b"]
    assert parse_labels({"names": "{0: 'x', 2: 'z'}"}) == ["x", "class1", "z"]
    assert parse_labels({"names": "not python"}) == []
    assert parse_labels({}) == []


def _load(root: Path, name: str) -> DetectionModel:
    from peregrine.server.config import load_model_config

    cfg = load_model_config(root / name)
    detector = cfg.detection.detector if cfg.detection else None
    return DetectionModel.load(name, 1, root / (detector or name) / "1", cfg)


def test_settings_read_from_each_model(tmp_path: Path) -> None:
    onnx_models.write(tmp_path, "v8", yolov8_detector(0, imgsz=256, class_names=["cone", "robot"]))
    onnx_models.write(tmp_path, "v5", yolov5_detector(0, imgsz=320))
    onnx_models.write(tmp_path, "e2e", end2end_detector(0, imgsz=192, max_detections=50))
    write_pipeline(tmp_path, "p8", pipeline_config("v8", max_batch=2))
    write_pipeline(tmp_path, "p5", pipeline_config("v5", 'labels = ["a", "b"]\n'))
    write_pipeline(tmp_path, "pe", pipeline_config("e2e", "max_detections = 50\n"))
    p8, p5, pe = _load(tmp_path, "p8"), _load(tmp_path, "p5"), _load(tmp_path, "pe")
    assert p8.head is not None and p5.head is not None and pe.head is not None
    assert (p8.head.layout, p8.head.height, p8.head.num_classes, p8.labels) == ("yolov8", 256, 2, ["cone", "robot"])
    assert (p5.head.layout, p5.head.height, p5.head.num_classes) == ("yolov5", 320, 80)
    assert p5.labels[:3] == ["a", "b", "class2"]  # configured labels first, then placeholders
    assert (pe.head.layout, pe.head.height) == ("end2end", 192)
    assert p8.max_batch_size == 2


def test_end_to_end_heads_know_their_classes(tmp_path: Path) -> None:
    """An end-to-end head [N, K, 6] carries class ids, not a score per class: its classes are the ones the
    model's metadata (or the configuration's labels) names, so a class filter naming others is refused."""
    onnx_models.write(tmp_path, "e2e", end2end_detector(0, imgsz=192, max_detections=50))
    write_pipeline(tmp_path, "pe", pipeline_config("e2e", "max_detections = 50\n"))
    pe = _load(tmp_path, "pe")
    assert pe.head.num_classes == 80 and pe.labels[0] == "person"
    write_pipeline(tmp_path, "pe_labels", pipeline_config("e2e", 'max_detections = 50\nlabels = ["a", "b", "c"]\n'))
    assert _load(tmp_path, "pe_labels").head.num_classes == 3
    write_pipeline(tmp_path, "pe_bad", pipeline_config("e2e", "max_detections = 50\nclasses = [80]\n"))
    with pytest.raises(ModelLoadError) as e:
        _load(tmp_path, "pe_bad")
    assert "detection.classes" in e.value.message and "80 classes" in e.value.message
    details = dict(pe.describe().details)
    assert details["detection_layout"] == "end2end" and details["detection_classes"] == "80"
    assert "iou_threshold" in details["detection_nms"] and "not used" in details["detection_nms"]
    assert details["detection_resize"] == "linear"


def test_pipeline_settings_reach_model_config(detection_server: PeregrineServer) -> None:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{detection_server.port}")
    params = client.get_model_config("det_v8", as_json=True)["config"]["parameters"]
    assert params["detection_layout"]["string_value"] == "yolov8"
    assert params["detection_input_size"]["string_value"] == "640x640"
    assert params["detection_resize"]["string_value"] == "linear"
    assert params["detection_nms"]["string_value"].startswith("per-class greedy")
    e2e = client.get_model_config("det_e2e", as_json=True)["config"]["parameters"]
    assert "not used" in e2e["detection_nms"]["string_value"]
    client.close()


def test_dynamic_dims_are_printed_as_triton_does(tmp_path: Path) -> None:
    """A dynamic batch dimension reads N, any other dynamic one -1 (was N for every one: [N,3,N,N])."""
    model = yolov8_detector(0, imgsz=320)
    for dim, name in ((model.graph.input[0].type.tensor_type.shape.dim[2], "height"),
                      (model.graph.input[0].type.tensor_type.shape.dim[3], "width")):
        dim.dim_param = name
    kept = [p for p in model.metadata_props if p.key != "imgsz"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx_models.write(tmp_path, "dyn", model)
    write_pipeline(tmp_path, "p", pipeline_config("dyn"))
    with pytest.raises(ModelLoadError) as e:
        _load(tmp_path, "p")
    assert "FP32 [N,3,-1,-1]" in e.value.message


def test_models_that_cannot_be_pipelines(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    onnx_models.write(tmp_path, "two_inputs", onnx_models.add_sub(["N", 16]))
    onnx_models.write(tmp_path, "flat", onnx_models.identity("FP32", ["N", 3, 64, 64]))
    onnx_models.write(tmp_path, "v5", yolov5_detector(0, imgsz=320))
    write_pipeline(tmp_path, "p_two_inputs", pipeline_config("two_inputs"))
    write_pipeline(tmp_path, "p_no_head", pipeline_config("flat"))
    write_pipeline(tmp_path, "p_missing", pipeline_config("nowhere"))
    write_pipeline(tmp_path, "p_bad_classes", pipeline_config("v5", "classes = [80]\n"))
    write_pipeline(tmp_path, "p_wrong_size", pipeline_config("v5", "input_size = [640, 640]\n"))
    write_pipeline(tmp_path, "p_ok", pipeline_config("v5"))
    server = start_server(tmp_path)
    index = {(row[0]): row for row in server.repository.index()}
    for name in ("p_two_inputs", "p_no_head", "p_missing", "p_bad_classes", "p_wrong_size"):
        assert index[name][2] == "UNAVAILABLE", name
        assert index[name][3], f"{name} has no reason"
    assert index["p_ok"][2] == "READY"
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = det_grpc.DetectionServiceStub(channel)
    frame = np.full((48, 64, 3), 90, np.uint8)
    image = det.Image(raw=det.RawImage(height=48, width=64, channels=3, data=frame.tobytes()))
    with pytest.raises(grpc.RpcError) as info:
        stub.Detect(det.DetectRequest(model_name="p_no_head", images=[image]), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # no version of it is available, as Triton says
    assert "3-D detection head" in info.value.details()  # and why
    assert len(stub.Detect(det.DetectRequest(model_name="p_ok", images=[image]), timeout=10).results) == 1
    channel.close()


def test_dynamic_input_size_needs_input_size(tmp_path: Path) -> None:
    model = yolov8_detector(0, imgsz=320)
    for dim, name in ((model.graph.input[0].type.tensor_type.shape.dim[2], "height"),
                      (model.graph.input[0].type.tensor_type.shape.dim[3], "width"),
                      (model.graph.output[0].type.tensor_type.shape.dim[2], "anchors")):
        dim.dim_param = name
    kept = [p for p in model.metadata_props if p.key != "imgsz"]  # no record of the export size
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx_models.write(tmp_path, "dyn", model)
    write_pipeline(tmp_path, "p", pipeline_config("dyn"))
    with pytest.raises(ModelLoadError) as e:
        _load(tmp_path, "p")
    assert "input_size" in e.value.message
    write_pipeline(tmp_path, "p", pipeline_config("dyn", "input_size = [320, 320]\n"))
    pipeline = _load(tmp_path, "p")
    assert pipeline.head is not None and (pipeline.head.height, pipeline.head.width) == (320, 320)


def test_dynamic_input_size_from_the_export_metadata(tmp_path: Path,
                                                     start_server: Callable[..., PeregrineServer]) -> None:
    """An ultralytics export with dynamic=True has [N, 3, H, W] inputs and records the size it was
    exported at as 'imgsz' metadata: the pipeline runs at that size, and the plain model warms up at it."""
    from peregrine.server.runtime.metadata import export_size

    model = yolov8_detector(0, imgsz=320)
    for dim, name in ((model.graph.input[0].type.tensor_type.shape.dim[2], "height"),
                      (model.graph.input[0].type.tensor_type.shape.dim[3], "width"),
                      (model.graph.output[0].type.tensor_type.shape.dim[2], "anchors")):
        dim.dim_param = name
    assert {p.key: p.value for p in model.metadata_props}["imgsz"] == "[320, 320]"  # as ultralytics writes it
    onnx_models.write(tmp_path, "dyn", model, "max_batch_size = 4\n")
    write_pipeline(tmp_path, "p", pipeline_config("dyn"))
    pipeline = _load(tmp_path, "p")
    assert pipeline.head is not None and (pipeline.head.height, pipeline.head.width) == (320, 320)
    server = start_server(tmp_path)
    index = {row[0]: row for row in server.repository.index()}
    assert index["dyn"][2] == "READY" and index["p"][2] == "READY"
    frame = np.full((240, 320, 3), 90, np.uint8)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        image = det.Image(raw=det.RawImage(height=240, width=320, channels=3, data=frame.tobytes()))
        response = det_grpc.DetectionServiceStub(channel).Detect(det.DetectRequest(model_name="p", images=[image]),
                                                                 timeout=10)
        assert len(response.results) == 1
    assert export_size({"imgsz": "[480, 640]"}) == (480, 640)
    assert export_size({"imgsz": "640"}) == (640, 640)
    for bad in ("", "[640]", "[0, 640]", "[640, 'x']", "not python", "[99999, 640]"):
        assert export_size({"imgsz": bad}) is None, bad


def test_pipeline_batches_padded_to_buckets(tmp_path: Path) -> None:
    """Explicit buckets apply on the CPU too: a batch of 3 frames runs at 4 rows and is answered as 3,
    equal to the unbucketed pipeline's answer; statistics count 3 frames and 1 padding row."""
    onnx_models.write(tmp_path, "v5", yolov5_detector(0, imgsz=320))
    write_pipeline(tmp_path, "plain", pipeline_config("v5", max_batch=8))
    write_pipeline(tmp_path, "bucketed", pipeline_config("v5", max_batch=8) + "batch_buckets = [4, 8]\n")
    plain, bucketed = _load(tmp_path, "plain"), _load(tmp_path, "bucketed")
    assert bucketed.detector.instances.buckets == (4, 8) and plain.detector.instances.buckets == ()
    frames = [np.full((90 + 10 * i, 120, 3), 40 * i, np.uint8) for i in range(3)]
    from peregrine.server.core.types import FrameRequest

    results = []
    for p in (plain, bucketed):
        executor = p.make_executor()
        results.append(executor.execute(0, [FrameRequest(p.name, frames=frames, options=p.default_options())]))
    for a, b in zip(results[0][0].detections, results[1][0].detections, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert bucketed.stats.inference_count == 3 and bucketed.stats.padding_count == 1


def _task_models() -> list[tuple[str, onnx.ModelProto, str, int, int, dict[str, str]]]:
    keypoints = {"kpt_shape": "[17, 3]"}
    return [
        ("yolov8-seg", yolov8_detector(0, imgsz=192), "segment", 32, 32, {}),
        ("yolov8-pose", yolov8_detector(0, imgsz=192, class_names=["person"]), "pose", 51, 0, keypoints),
        ("yolo26-seg", end2end_detector(0, imgsz=192, max_detections=50), "segment", 32, 32, {}),
        ("yolo26-pose", end2end_detector(0, imgsz=192, max_detections=50, class_names=["person"]), "pose", 51, 0,
         keypoints),
        # the yolov5 repository's segmentation export: no task metadata, a prototype-mask output beside the head
        ("yolov5-seg", yolov5_detector(0, imgsz=192), "", 32, 32, {}),
    ]


@pytest.mark.parametrize("case", _task_models(), ids=lambda c: c[0])
def test_segmentation_and_pose_exports_serve_their_boxes(tmp_path: Path, case: tuple) -> None:
    """A segmentation or pose export is its detector's head with mask coefficients or keypoints after each
    box's columns: the pipeline answers with the boxes the detector alone gives, and never reads those
    values as class scores (here they repeat the box's pixel coordinates: read as scores, they would be
    confident boxes of classes the model does not have)."""
    _, detector, task, extra, masks, metadata = case
    onnx_models.write(tmp_path, "det", detector)
    onnx_models.write(tmp_path, "task", onnx_models.with_task_head(detector, task, extra=extra, masks=masks,
                                                                   metadata=metadata))
    write_pipeline(tmp_path, "p_det", pipeline_config("det", "max_detections = 50\nscore_threshold = 0.05\n"))
    write_pipeline(tmp_path, "p_task", pipeline_config("task", "max_detections = 50\nscore_threshold = 0.05\n"))
    plain, served = _load(tmp_path, "p_det"), _load(tmp_path, "p_task")
    assert (served.head.extra, served.head.task) == (extra, task or "segment")
    assert (served.head.layout, served.head.num_classes) == (plain.head.layout, plain.head.num_classes)
    assert served.labels == plain.labels
    assert dict(served.describe().details)["detection_task"] == (task or "segment")
    from peregrine.server.core.types import FrameRequest

    photos = pipeline_support.photographs()
    frames = [photos[k] for k in ("astronaut", "hubble_1080p", "coffee_tiny")]
    found = 0
    for p_result, s_result in zip(*[p.make_executor().execute(0, [FrameRequest(p.name, frames=frames,
                                                                                options=p.default_options())])
                                    for p in (plain, served)], strict=True):
        for want, got in zip(p_result.detections, s_result.detections, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-4)
            assert (got[:, 5] < plain.head.num_classes).all()
            found += len(got)
    assert found > 0  # the comparison saw boxes


@pytest.mark.parametrize("layout", ["yolov8", "end2end"])
def test_a_segmentation_export_answers_the_boxes_that_have_a_mask(tmp_path: Path, layout: str) -> None:
    """ultralytics' SegmentationPredictor answers only the boxes whose mask is not empty: so does the pipeline
    for an export whose metadata says task segment, the same boxes as the reference (pipeline_support's
    segment_reference) on every photograph, some dropped and some kept; the yolov5 repository's export (no
    task metadata, whose predictor answers every box) answers them all."""
    from peregrine.server.core.types import FrameRequest

    detector = (yolov8_detector(0, imgsz=192) if layout == "yolov8"
                else end2end_detector(0, imgsz=192, max_detections=50))
    model = onnx_models.with_task_head(detector, "segment", extra=32, masks=32)
    # prototypes of mixed signs (the coefficients repeat the box's corners): a box's mask is empty or not by
    # where it lies and the colours under it
    rng = np.random.default_rng(7)
    weights = next(i for i in model.graph.initializer if i.name == "task_head.proto_w")
    weights.CopyFrom(onnx.numpy_helper.from_array(rng.normal(0.013, 0.1, (32, 3, 1, 1)).astype(np.float32),
                                                  "task_head.proto_w"))
    yolov5_repo = onnx.ModelProto()
    yolov5_repo.CopyFrom(model)
    props = {p.key: p.value for p in yolov5_repo.metadata_props if p.key != "task"}
    del yolov5_repo.metadata_props[:]
    onnx.helper.set_model_props(yolov5_repo, props)
    onnx_models.write(tmp_path, "seg", model)
    onnx_models.write(tmp_path, "v5seg", yolov5_repo)
    settings = "max_detections = 50\nscore_threshold = 0.05\n"
    write_pipeline(tmp_path, "p_seg", pipeline_config("seg", settings))
    write_pipeline(tmp_path, "p_v5seg", pipeline_config("v5seg", settings))
    served, every = _load(tmp_path, "p_seg"), _load(tmp_path, "p_v5seg")
    assert served.head.proto_name == "output1" and every.head.proto_name == ""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    photos = pipeline_support.photographs()
    frames = list(photos.values())
    answers = [p.make_executor().execute(0, [FrameRequest(p.name, frames=frames, options=p.default_options())])[0]
               for p in (served, every)]
    kept = dropped = 0
    for i, name in enumerate(photos):
        want, empty = pipeline_support.segment_reference(session, frames[i], 192, 192, 32, conf=0.05, max_det=50,
                                                         layout=layout)
        pipeline_support.assert_same_detections(answers[0].detections[i], want, name)
        assert len(answers[1].detections[i]) == len(want) + empty  # every box, masks or not
        kept, dropped = kept + len(want), dropped + empty
    assert kept > 0 and dropped > 0, (kept, dropped)


def test_a_detector_with_another_4d_output_is_not_taken_for_a_segmentation_model(tmp_path: Path) -> None:
    """Without task metadata a 4-D output beside the head suggests a segmentation export (the yolov5
    repository writes no task); but when the head has exactly the columns of a detector of the model's
    named classes, that output is something else and the head is read as a plain detector's."""
    detector = yolov8_detector(0, imgsz=192)
    onnx_models.write(tmp_path, "m", onnx_models.with_task_head(detector, "", extra=0, masks=16))
    write_pipeline(tmp_path, "p", pipeline_config("m"))
    pipeline = _load(tmp_path, "p")
    assert (pipeline.head.task, pipeline.head.extra, pipeline.head.num_classes) == ("detect", 0, 80)


@pytest.mark.parametrize(("task", "metadata", "masks", "reason"), [
    ("obb", {}, 0, "rotated"),
    ("classify", {}, 0, "task 'classify'"),
    ("pose", {}, 0, "kpt_shape"),
    ("pose", {"kpt_shape": "[17]"}, 0, "kpt_shape"),
    ("pose", {"kpt_shape": "[17, 4]"}, 0, "kpt_shape"),  # x, y and at most a visibility score
    ("pose", {"kpt_shape": "[0, 3]"}, 0, "kpt_shape"),
    ("segment", {}, 0, "prototype-mask output"),
])
def test_exports_of_other_tasks_are_refused_with_the_reason(tmp_path: Path, task: str, metadata: dict[str, str],
                                                             masks: int, reason: str) -> None:
    onnx_models.write(tmp_path, "m", onnx_models.with_task_head(yolov8_detector(0, imgsz=192), task, extra=1,
                                                                masks=masks, metadata=metadata))
    write_pipeline(tmp_path, "p", pipeline_config("m"))
    with pytest.raises(ModelLoadError) as e:
        _load(tmp_path, "p")
    assert reason in e.value.message and "p/1" in e.value.message


def test_layout_of_heads_with_values_after_the_boxes() -> None:
    assert detect_layout((1, 116, 8400), 32) == "yolov8"  # yolov8-seg
    assert detect_layout((1, 56, 8400), 51) == "yolov8"  # yolov8-pose
    assert detect_layout((1, 300, 38), 32) == "end2end"  # yolo26-seg
    assert detect_layout((1, 300, 57), 51) == "end2end"  # yolo26-pose
    assert detect_layout((1, 25200, 117), 32) == "yolov5"  # yolov5-seg
    assert detect_layout((1, 300, 38)) == "yolov5"  # without knowing the extra values, it reads as yolov5


@pytest.mark.parametrize("input_size", [(256, 416), (416, 256)])
def test_a_rectangular_input_matches_the_reference(tmp_path: Path, input_size: tuple[int, int]) -> None:
    """A model run at a rectangular size (an export with imgsz=[h, w], here a dynamic one given
    detection.input_size) letterboxes every photograph into it as ultralytics' LetterBox does for a fixed
    shape (one gain, the padding split on both sides): the same boxes as the reference."""
    from peregrine.server.core.types import FrameRequest

    onnx_models.write(tmp_path, "dyn", yolov8_detector(0, imgsz=256, dynamic=True))
    write_pipeline(tmp_path, "p", pipeline_config("dyn", f"input_size = {list(input_size)}\n"))
    pipeline = _load(tmp_path, "p")
    assert (pipeline.head.height, pipeline.head.width) == input_size
    import onnxruntime as ort

    reference = pipeline_support.Reference(
        ort.InferenceSession(str(tmp_path / "dyn" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]),
        "yolov8", *input_size)
    photos = pipeline_support.photographs()
    [result] = pipeline.make_executor().execute(0, [FrameRequest("p", frames=list(photos.values()),
                                                                 options=pipeline.default_options())])
    found = 0
    for name, got in zip(photos, result.detections, strict=True):
        want = reference(photos[name])
        pipeline_support.assert_same_detections(got, want, name)
        found += len(want)
    assert found > 0


@pytest.mark.parametrize("fixed", [1, 3])
def test_a_static_batch_detector_takes_requests_of_several_frames(tmp_path: Path, fixed: int) -> None:
    """ultralytics exports batch 1 by default: such a detector still answers a request of five frames (they
    run in chunks of its batch), with the boxes the dynamic-batch model gives."""
    from peregrine.server.core.types import FrameRequest

    static = yolov8_detector(0, imgsz=192)
    for value_info in (static.graph.input[0], static.graph.output[0]):
        value_info.type.tensor_type.shape.dim[0].dim_value = fixed
    onnx_models.write(tmp_path, "static", static)
    onnx_models.write(tmp_path, "dynamic", yolov8_detector(0, imgsz=192))
    write_pipeline(tmp_path, "p_static", 'platform = "peregrine_detection"\n[detection]\ndetector = "static"\n')
    write_pipeline(tmp_path, "p_dynamic", pipeline_config("dynamic"))
    static_pipeline, dynamic_pipeline = _load(tmp_path, "p_static"), _load(tmp_path, "p_dynamic")
    assert static_pipeline.head.fixed_batch == fixed and static_pipeline.max_batch_size >= 5
    assert static_pipeline.max_batch_size % fixed == 0
    static_pipeline.check_count(5, "images")
    frames = list(pipeline_support.photographs().values())[:5]
    got, want = ([r.detections for r in p.make_executor().execute(
        0, [FrameRequest(p.name, frames=frames, options=p.default_options())])] for p in (static_pipeline,
                                                                                          dynamic_pipeline))
    for i, (a, b) in enumerate(zip(got[0], want[0], strict=True)):
        pipeline_support.assert_same_detections(a, b, str(i))


def test_a_one_class_yolov5_is_not_taken_for_an_end_to_end_head(tmp_path: Path) -> None:
    """A one-class YOLOv5 export ([N, 6300, 6] at 320: cx, cy, w, h, objectness, one score) has the six
    columns of an end-to-end head; its row count, YOLOv5's anchors at the input size, tells it apart."""
    from peregrine.server.core.types import FrameRequest

    detector = yolov5_detector(0, imgsz=320, class_names=["cone"])
    onnx_models.write(tmp_path, "v5one", detector)
    write_pipeline(tmp_path, "p", pipeline_config("v5one"))
    pipeline = _load(tmp_path, "p")
    assert (pipeline.head.layout, pipeline.head.num_classes, pipeline.labels) == ("yolov5", 1, ["cone"])
    reference = pipeline_support.Reference(pipeline_support.ort.InferenceSession(
        detector.SerializeToString(), providers=["CPUExecutionProvider"]), "yolov5", 320, 320)
    photos = pipeline_support.photographs()
    [result] = pipeline.make_executor().execute(0, [FrameRequest("p", frames=list(photos.values()),
                                                                 options=pipeline.default_options())])
    found = 0
    for (name, rgb), got in zip(photos.items(), result.detections, strict=True):
        pipeline_support.assert_same_detections(got, reference(rgb), name)
        found += len(got)
    assert found > 0


def test_a_yolov8_of_more_classes_than_anchors_is_read_by_its_anchors(tmp_path: Path) -> None:
    """At 128 x 128 a YOLOv8 has 336 anchors, fewer than the 4 + 400 rows of a 400-class model: the anchors
    at the input size say which dimension is which (the shape alone reads it as yolov5)."""
    onnx_models.write(tmp_path, "small", yolov8_detector(0, imgsz=128, class_names=[f"c{i}" for i in range(400)]))
    write_pipeline(tmp_path, "p", pipeline_config("small"))
    pipeline = _load(tmp_path, "p")
    assert (pipeline.head.layout, pipeline.head.num_classes) == ("yolov8", 400)
    assert detect_layout((1, 404, 336)) == "yolov5"
