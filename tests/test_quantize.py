"""``peregrine quantize``: FP16 and INT8 variants written beside the model and its pipeline, served as they
are, and measured against FP32 in a report; what cannot be done is refused with the reason (issue 20)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.quantize import Row, agreement, main, pareto
from support import jobs

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def repo_and_photos(tmp_path: Path) -> tuple[Path, Path]:
    repo = jobs.repository(tmp_path / "models")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in jobs.PHOTOS:
        (photos / f"{name}.jpg").write_bytes(jobs.photo(name))
    return repo, photos


def test_variants_are_written_served_and_measured(repo_and_photos: tuple[Path, Path], tmp_path: Path,
                                                  start_server: Callable[..., PeregrineServer]) -> None:
    repo, photos = repo_and_photos
    report = tmp_path / "report.md"
    labels = yolo_labels_of_fp32(repo, photos, tmp_path)
    assert main(["--model", "v5", "--repository", str(repo), "--calibration", str(photos), "--report",
                 str(report), "--labels", str(labels)]) == 0
    for name in ("v5_fp16", "v5_int8", "cam_fp16", "cam_int8"):
        assert (repo / name / "config.toml").is_file()
    assert 'detector = "v5_int8"' in (repo / "cam_int8" / "config.toml").read_text()
    import onnx

    int8 = onnx.load(str(repo / "v5_int8" / "1" / "model.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in int8.graph.node}
    from peregrine.server.quantize import head_nodes

    float_weights = {i.name for i in int8.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    head_convs = [n for n in int8.graph.node if n.op_type == "Conv" and n.name in head_nodes(int8)]
    assert head_convs and all(n.input[1] in float_weights for n in head_convs)  # the head kept FP32
    body_convs = [n for n in int8.graph.node if n.op_type == "Conv" and n not in head_convs]
    assert body_convs and not any(n.input[1] in float_weights for n in body_convs)  # the rest INT8
    fp16 = onnx.load(str(repo / "v5_fp16" / "1" / "model.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O kept FP32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    # Served as they are.
    server = start_server(repo)
    stub = det_grpc.DetectionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    for name in ("cam_fp16", "cam_int8"):
        answer = stub.Detect(det.DetectRequest(model_name=name, images=[det.Image(encoded=jobs.photo("coffee"))]))
        assert answer.results[0].height == 400
    # The report: one row per pipeline, numbers in range, the FP32 one agreeing with itself.
    text = report.read_text()
    rows = re.findall(r"^\| (cam\w*) \| ([\d.]+|—) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", text,
                      re.M)
    assert [r[0] for r in rows] == ["cam", "cam_fp16", "cam_int8"]
    assert rows[0][1:3] == ("1.000", "1.000")
    # mAP against labels that are the FP32 pipeline's own boxes: near 1 for it (its boxes without area match
    # nothing), in [0, 1] for the variants.
    maps = re.findall(r"^\| (cam\w*) \|.*\| (?:yes)? \| ([\d.]+|—) \| ([\d.]+|—) \|$", text, re.M)
    assert [m[0] for m in maps] == ["cam", "cam_fp16", "cam_int8"]
    assert float(maps[0][1]) > 0.9 and float(maps[0][2]) > 0.9
    assert all(0 <= float(v) <= 1 for m in maps[1:] for v in m[1:])
    assert all((r[1] == "—" or 0 <= float(r[1]) <= 1) and 0 <= float(r[2]) <= 1 and float(r[4]) > 0 for r in rows)
    assert report.with_suffix(".png").exists()
    # Again: the variants exist.
    assert main(["--model", "v5", "--repository", str(repo), "--calibration", str(photos)]) == 2


def yolo_labels_of_fp32(repo: Path, photos: Path, tmp_path: Path) -> Path:
    """YOLO label files holding the FP32 pipeline's own boxes for each photograph."""
    import json

    from peregrine.server.batch import run

    out = tmp_path / "fp32.jsonl"
    run(["--model", "cam", "--repository", str(repo), "--input", str(photos), "--output", str(out), "--no-progress"])
    labels = tmp_path / "labels"
    labels.mkdir()
    for line in map(json.loads, out.read_text().splitlines()):
        h, w = line["height"], line["width"]
        rows = [f"{b['class_id']} {(b['x1'] + b['x2']) / 2 / w:.6f} {(b['y1'] + b['y2']) / 2 / h:.6f} "
                f"{(b['x2'] - b['x1']) / w:.6f} {(b['y2'] - b['y1']) / h:.6f}" for b in line["boxes"]
                if b["x2"] > b["x1"] and b["y2"] > b["y1"]]
        (labels / f"{Path(line['source']).stem}.txt").write_text("\n".join(rows) + "\n")
    return labels


def test_what_cannot_be_done_is_refused(repo_and_photos: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    repo, photos = repo_and_photos
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, why in [(["--model", "nope", "--calibration", str(photos)], "no model directory 'nope'"),
                      (["--model", "cam", "--calibration", str(photos)], "has no ONNX file"),
                      (["--model", "v5", "--variants", "int4", "--calibration", str(photos)], "--variants"),
                      (["--model", "id", "--variants", "int8", "--calibration", str(photos)], "one FP32 NCHW input"),
                      (["--model", "v5", "--variants", "int8", "--calibration", str(empty)], "no images"),
                      (["--model", "v5", "--variants", "fp16", "--calibration", str(photos), "--labels", str(empty)],
                       "give --report too"),
                      (["--model", "v5", "--variants", "fp16", "--calibration", str(photos), "--report",
                        str(tmp_path / "r.md"), "--labels", str(tmp_path / "none"), "--force"], "does not exist")]:
        assert main([*argv, "--repository", str(repo)]) == 2
        assert why in capsys.readouterr().err


def test_agreement_and_pareto_with_literal_boxes() -> None:
    box = {"x1": 0, "y1": 0, "x2": 10, "y2": 10, "score": 0.9, "class_id": 1, "label": "a"}
    moved = {**box, "x1": 1, "score": 0.8}  # IoU 0.9
    far = {**box, "x1": 50, "x2": 60}
    other = {**box, "class_id": 2, "label": "b"}
    reference = {"i": [box, other]}
    precision, recall, shift, per_class = agreement(reference, {"i": [moved, far]})
    assert (precision, recall) == (0.5, 0.5) and shift == pytest.approx(0.1) and per_class == {"a": 1.0, "b": 0.0}
    rows = [Row("fp32", 1, 1, 0, {}, 10, 1), Row("fp16", 1, 0.99, 0, {}, 12, 1), Row("int8", 1, 0.9, 0, {}, 6, 1)]
    assert pareto(rows) == {"fp32", "int8"}
    assert np.isnan(agreement(reference, {"i": []})[0])  # no boxes: no precision


def test_int8_keeps_the_detection_head_in_fp32() -> None:
    """The head (the last learned convolution of each branch and every node after it) is what decides which
    boxes pass the threshold; INT8 quantizes everything before it."""
    from peregrine.modelgen import yolov8_detector
    from peregrine.server.quantize import head_nodes

    model = yolov8_detector(0, imgsz=128)
    head = head_nodes(model)
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    last = {n for n in convs if n.endswith(("cv2.0.2/Conv", "cv2.1.2/Conv", "cv2.2.2/Conv", "cv3.0.2/Conv",
                                           "cv3.1.2/Conv", "cv3.2.2/Conv"))}
    assert len(last) == 6 and last <= head
    assert head & convs == last | {n for n in convs if "/dfl/" in n}  # no backbone or neck convolution
    assert {n.op_type for n in model.graph.node if n.name in head} >= {"Concat", "Softmax", "Sigmoid", "Split"}


def test_smaller_input_sizes_of_a_dynamic_detector(tmp_path: Path, start_server: Callable[..., PeregrineServer],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``--variants 480,320``: pipelines that letterbox to 480 and 320 for the same dynamic-size detector,
    answering in image pixels as the original does; a detector fixed at one size is refused."""
    import tomllib

    from support import onnx_models

    repo = tmp_path / "models"
    onnx_models.write(repo, "dyn", onnx_models.dynamic_detector(640), "max_batch_size = 4\n")
    (repo / "dyn_detect").mkdir()
    (repo / "dyn_detect" / "config.toml").write_text(
        'platform = "peregrine_detection"\nmax_batch_size = 4\n\n[detection]\ndetector = "dyn"\nlayout = "end2end"\n'
        "score_threshold = 0.2\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee", "astronaut"):  # 400 x 600 and 512 x 512
        (photos / f"{name}.jpg").write_bytes(jobs.photo(name))
    report = tmp_path / "sizes.md"
    assert main(["--model", "dyn", "--repository", str(repo), "--variants", "480,320", "--calibration", str(photos),
                 "--report", str(report)]) == 0
    for side in (480, 320):
        config = tomllib.loads((repo / f"dyn_detect_{side}" / "config.toml").read_text())
        assert config["detection"]["input_size"] == [side, side] and config["detection"]["detector"] == "dyn"
    assert not (repo / "dyn_480").exists()  # the detector is shared, not copied
    server = start_server(repo)
    stub = det_grpc.DetectionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    boxes = {}
    for name in ("dyn_detect", "dyn_detect_480", "dyn_detect_320"):
        answer = stub.Detect(det.DetectRequest(model_name=name, images=[det.Image(encoded=jobs.photo("coffee"))]))
        boxes[name] = sorted((d.class_id, d.x1, d.y1, d.x2, d.y2) for d in answer.results[0].boxes)
    # In image pixels (600 wide, 400 high, padded top and bottom): the middle half and the top-left quarter
    # of the letterboxed square, whatever its size.
    assert len(boxes["dyn_detect"]) == 2
    for name in ("dyn_detect_480", "dyn_detect_320"):
        for a, b in zip(boxes["dyn_detect"], boxes[name], strict=True):
            assert a[0] == b[0] and np.allclose(a[1:], b[1:], atol=2.0)
    middle = boxes["dyn_detect"][0]
    assert np.allclose(middle[1:], (150, 50, 450, 350), atol=2.0)
    rows = dict(re.findall(r"^\| (dyn_detect\w*) \| [\d.—]+ \| ([\d.]+) \|", report.read_text(), re.M))
    assert rows == {"dyn_detect": "1.000", "dyn_detect_480": "1.000", "dyn_detect_320": "1.000"}
    # A detector fixed at one size, and sizes that are no multiple of 32, are refused.
    fixed = jobs.repository(tmp_path / "fixed")
    assert main(["--model", "v5", "--repository", str(fixed), "--variants", "256", "--calibration", str(photos)]) == 2
    assert "fixed height or width" in capsys.readouterr().err
    assert main(["--model", "dyn", "--repository", str(repo), "--variants", "500", "--calibration", str(photos)]) == 2
    assert "multiples of 32" in capsys.readouterr().err


def test_the_head_is_kept_fp32_in_a_graph_whose_nodes_have_no_names() -> None:
    """INT8 keeps the detection head FP32 by excluding its nodes by name. ONNX lets nodes go unnamed (here the
    columns a segmentation export adds after the boxes, and its prototype convolution): they are named first,
    and the walk back from the outputs finds the whole head, not the head as far as its first unnamed node
    (which left the plain detector's head quantized: recall 0.015 against FP32 instead of 0.70)."""
    from peregrine.modelgen import yolov8_detector
    from peregrine.server.quantize import head_nodes, name_nodes
    from support import onnx_models

    plain = yolov8_detector(0, imgsz=192)
    seg = onnx_models.with_task_head(plain, "segment", extra=32, masks=32)
    assert sum(not node.name for node in seg.graph.node) == 5
    assert name_nodes(seg) and not name_nodes(seg)  # named once; then nothing to do
    assert len({node.name for node in seg.graph.node}) == len(seg.graph.node)
    head = head_nodes(seg)
    assert head_nodes(plain) < head and len(head) == len(head_nodes(plain)) + 5


@pytest.mark.parametrize("ranked", [False, True])
def test_an_rtdetr_export_s_variants_stay_rtdetr(repo_and_photos: tuple[Path, Path], ranked: bool) -> None:
    """INT8 and FP16 variants of an RT-DETR export (either form: ``ranked``, ultralytics 8.4's) keep what
    makes the pipeline read it as one (its output, class names and ``head`` metadata), and answer close to
    FP32; calibration feeds its photographs stretched to the input, as its pipeline does."""
    from peregrine.server.config import load_model_config
    from peregrine.server.core.types import FrameRequest
    from peregrine.server.models.detection import DetectionModel
    from pipeline import pipeline_support
    from support import onnx_models

    repo, photos = repo_and_photos
    onnx_models.write(repo, "rt", onnx_models.rtdetr_like(topk=ranked))
    pipeline_support.write_pipeline(repo, "rt_cam", pipeline_support.pipeline_config("rt"))
    assert main(["--model", "rt", "--repository", str(repo), "--calibration", str(photos),
                 "--variants", "fp16,int8"]) == 0
    frames = [pipeline_support.photographs()[k] for k in ("astronaut", "coffee", "motorcycle")]
    answers = {}
    for name in ("rt_cam", "rt_cam_fp16", "rt_cam_int8"):
        cfg = load_model_config(repo / name)
        pipeline = DetectionModel.load(name, 1, repo / cfg.detection.detector / "1", cfg)
        head = pipeline.head
        assert (head.layout, head.ranked, head.stretch, len(pipeline.labels)) == ("rtdetr", ranked, True, 80)
        [result] = pipeline.make_executor().execute(0, [FrameRequest(name, frames=frames,
                                                                     options=pipeline.default_options())])
        answers[name] = result.detections
    def boxes(name: str) -> dict[str, list[dict[str, object]]]:
        return {str(i): [{"x1": float(d[0]), "y1": float(d[1]), "x2": float(d[2]), "y2": float(d[3]),
                          "score": float(d[4]), "class_id": int(d[5]), "label": str(int(d[5]))} for d in dets]
                for i, dets in enumerate(answers[name])}

    assert sum(len(d) for d in answers["rt_cam"]) > 10
    for variant in ("rt_cam_fp16", "rt_cam_int8"):
        precision, recall, _, _ = agreement(boxes("rt_cam"), boxes(variant))
        assert precision > 0.8 and recall > 0.8, (variant, precision, recall)


def test_calibration_stretches_what_an_rtdetr_pipeline_stretches() -> None:
    """Either form of ultralytics' RT-DETR export (4 + C columns for C names; ``head`` RTDETRDecoder, 8.4's
    ranked rows) and a layout set to rtdetr are calibrated stretched; YOLO heads letterboxed."""
    from peregrine.server.config.model import DetectionConfig
    from peregrine.server.quantize import stretches

    auto, names = DetectionConfig(), {"names": "{0: 'a', 1: 'b'}"}
    assert stretches(auto, [1, 300, 6], names)  # 4 + 2 class scores a query
    assert stretches(auto, [1, 300, 6], {"head": "RTDETRDecoder", "names": repr({i: str(i) for i in range(80)})})
    assert not stretches(auto, [1, 300, 6], {"head": "Detect", "names": repr({i: str(i) for i in range(80)})})
    assert not stretches(auto, [1, 84, 8400], {"names": repr({i: str(i) for i in range(80)})})
    assert stretches(DetectionConfig(layout="rtdetr"), [1, 84, 8400], {})
    assert not stretches(DetectionConfig(layout="end2end"), [1, 300, 6], {"head": "RTDETRDecoder"})


def test_calibration_feeds_photographs_as_the_model_s_pipeline_does(tmp_path: Path) -> None:
    """INT8 calibration sees what the pipeline will feed the model: its [detection] settings (here BGR
    input, black padding), its decoder (any format it reads: WebP here) and its letterbox."""
    import cv2
    from peregrine.server.quantize import _detection_config, calibration_input
    from PIL import Image

    repo = jobs.repository(tmp_path / "models")
    config = repo / "cam" / "config.toml"
    config.write_text(config.read_text() + 'model_channel_order = "bgr"\npad_value = 0\n')
    detection = _detection_config(repo, "v5")
    assert (detection.model_channel_order, detection.pad_value) == ("bgr", 0)

    rgb = np.random.default_rng(3).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    path = tmp_path / "photo.webp"
    Image.fromarray(rgb).save(path, lossless=True)
    # By hand: 200 x 100 scaled by 1.6 to 320 x 160, 80 rows of padding above and below, channels reversed.
    canvas = np.zeros((320, 320, 3), np.uint8)
    canvas[80:240] = cv2.resize(rgb, (320, 160), interpolation=cv2.INTER_LINEAR)
    expected = canvas[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255
    np.testing.assert_allclose(calibration_input(path, 320, 320, detection), expected, atol=1e-6)
