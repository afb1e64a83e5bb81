"""The model builders: valid ONNX, runnable in ONNX Runtime, ultralytics-like, calibrated, deterministic."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
from peregrine.modelgen import (
    BUNDLED_MODELS,
    add_sub_model,
    classifier,
    count_flops,
    count_parameters,
    end2end_detector,
    identity_model,
    yolov5_detector,
    yolov8_detector,
    yolov8_pose,
)
from peregrine.modelgen.cli import main
from peregrine.modelgen.simple import ARITHMETIC_DATATYPES, ONNX_TYPES

CONF = 0.25


def letterbox(rgb: np.ndarray, size: int = 640) -> np.ndarray:
    """HWC uint8 RGB -> [1, 3, size, size] float32 in [0, 1], aspect kept, grey (114) bands, centred."""
    h, w = rgb.shape[:2]
    r = min(size / h, size / w)
    nh, nw = round(h * r), round(w * r)
    canvas = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: letterbox(getattr(skimage.data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")}


@pytest.fixture(scope="module")
def models() -> dict[str, onnx.ModelProto]:
    return {
        "yolov8": yolov8_detector(),
        "yolov5": yolov5_detector(),
        "end2end": end2end_detector(),
        "classifier": classifier(),
    }


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def sessions(models: dict[str, onnx.ModelProto]) -> dict[str, ort.InferenceSession]:
    return {name: session(m) for name, m in models.items()}


def yolov8_candidates(output: np.ndarray) -> np.ndarray:
    """Indices of anchors whose best class score exceeds CONF, for one image of a [84, A] output."""
    return np.flatnonzero(output[4:].max(axis=0) > CONF)


# ---- structure ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["yolov8", "yolov5", "end2end", "classifier"])
def test_models_pass_the_full_checker(models: dict[str, onnx.ModelProto], name: str) -> None:
    model = models[name]
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert model.ir_version == 8
    image = model.graph.input[0]
    assert image.name == "images"
    assert image.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("yolov8", (84, 8400)),
        ("yolov5", (25200, 85)),
        ("end2end", (300, 6)),
        ("classifier", (1000,)),
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes_at_batch_1_and_3(
    sessions: dict[str, ort.InferenceSession], name: str, shape: tuple[int, ...], batch: int
) -> None:
    size = 224 if name == "classifier" else 640
    x = np.random.default_rng(batch).random((batch, 3, size, size), dtype=np.float32)
    (y,) = sessions[name].run(["output0"], {"images": x})
    assert y.dtype == np.float32
    assert y.shape == (batch, *shape)
    assert np.isfinite(y).all()


def test_yolov8_has_ultralytics_layer_types(models: dict[str, onnx.ModelProto]) -> None:
    ops = {n.op_type for n in models["yolov8"].graph.node}
    assert {"Conv", "Sigmoid", "Mul", "Split", "Concat", "Add", "MaxPool", "Resize", "Softmax", "Reshape"} <= ops
    assert "BatchNormalization" not in ops  # folded into the convolutions, as ultralytics exports
    resize = next(n for n in models["yolov8"].graph.node if n.op_type == "Resize")
    assert onnx.helper.get_attribute_value(next(a for a in resize.attribute if a.name == "mode")) == b"nearest"


@pytest.mark.parametrize("name", ["yolov8", "yolov5", "end2end"])
def test_ultralytics_metadata(models: dict[str, onnx.ModelProto], name: str) -> None:
    meta = {p.key: p.value for p in models[name].metadata_props}
    names = ast.literal_eval(meta["names"])
    assert len(names) == 80
    assert names[0] == "person"
    assert names[79] == "toothbrush"
    assert ast.literal_eval(meta["stride"]) == 32
    assert ast.literal_eval(meta["imgsz"]) == [640, 640]
    assert meta["task"] == "detect"
    assert ast.literal_eval(meta["batch"]) == 1
    assert "Peregrine" in meta["author"]
    assert "seed" in meta["description"]


def test_yolov8n_size_matches_ultralytics(models: dict[str, onnx.ModelProto]) -> None:
    # ultralytics reports YOLOv8n (fused) as 3,151,904 parameters and 8.7 GFLOPs at 640.
    flops = count_flops(models["yolov8"])
    params = count_parameters(models["yolov8"])
    assert abs(flops / 8.7e9 - 1) < 0.10, flops
    assert abs(params / 3.2e6 - 1) < 0.05, params
    # and YOLOv5n: 1,867,405 parameters, 4.5 GFLOPs
    assert abs(count_flops(models["yolov5"]) / 4.5e9 - 1) < 0.10
    assert abs(count_parameters(models["yolov5"]) / 1.87e6 - 1) < 0.05


def test_flop_count_scales_with_batch(models: dict[str, onnx.ModelProto]) -> None:
    assert count_flops(models["classifier"], batch=3) == 3 * count_flops(models["classifier"])


# ---- calibration: photographs give tens of content-dependent candidates ----------------------------------
def test_yolov8_gives_tens_of_candidates_on_photographs(
    sessions: dict[str, ort.InferenceSession], photos: dict[str, np.ndarray]
) -> None:
    found = {}
    for name, x in photos.items():
        (y,) = sessions["yolov8"].run(["output0"], {"images": x})
        idx = yolov8_candidates(y[0])
        assert 10 <= idx.size <= 500, (name, idx.size)
        boxes = y[0, :4, idx]  # [K, 4] cx, cy, w, h
        assert (boxes[:, 2:] > 0).all()
        assert (boxes[:, 2:] < 640).all()
        centre_inside = ((boxes[:, :2] >= 0) & (boxes[:, :2] <= 640)).all(axis=1)
        assert centre_inside.mean() > 0.9
        found[name] = set(idx.tolist())
    counts = {name: len(s) for name, s in found.items()}
    assert len(set(counts.values())) > 1, counts
    # different photographs light up different anchors, not a fixed pattern
    overlap = len(found["astronaut"] & found["coffee"]) / len(found["astronaut"] | found["coffee"])
    assert overlap < 0.5


def test_yolov8_candidates_overlap_so_nms_has_work(
    sessions: dict[str, ort.InferenceSession], photos: dict[str, np.ndarray]
) -> None:
    (y,) = sessions["yolov8"].run(["output0"], {"images": photos["astronaut"]})
    idx = yolov8_candidates(y[0])
    cx, cy, w, h = y[0, :4, idx].T
    boxes = np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)
    keep = cv2.dnn.NMSBoxes(boxes.tolist(), y[0, 4:, idx].max(axis=1).tolist(), CONF, 0.45)
    assert 0 < len(keep) < idx.size


def test_yolov8_activations_stay_order_one(models: dict[str, onnx.ModelProto], photos: dict[str, np.ndarray]) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(models["yolov8"])
    stage_out = {}
    for node in model.graph.node:
        stage = node.name.split("/")[1]
        if stage != "model.22":  # the head's outputs are logits and pixels, not activations
            stage_out[stage] = node.output[0]
    for name in stage_out.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    assert len(stage_out) == 22
    values = session(model).run(list(stage_out.values()), {"images": photos["astronaut"]})
    stds = {stage: float(v.std()) for stage, v in zip(stage_out, values, strict=True)}
    assert all(0.1 < s < 10 for s in stds.values()), stds


def test_yolov5_gives_tens_of_candidates(
    sessions: dict[str, ort.InferenceSession], photos: dict[str, np.ndarray]
) -> None:
    counts = {}
    for name in ("astronaut", "coffee"):
        (y,) = sessions["yolov5"].run(["output0"], {"images": photos[name]})
        rows = y[0]
        assert ((rows[:, 4:] >= 0) & (rows[:, 4:] <= 1)).all()  # objectness and classes after sigmoid
        score = rows[:, 4] * rows[:, 5:].max(axis=1)
        idx = np.flatnonzero(score > CONF)
        assert 10 <= idx.size <= 500, (name, idx.size)
        assert (rows[idx, 2:4] > 0).all()
        counts[name] = idx.size
    assert counts["astronaut"] != counts["coffee"]


def test_end2end_is_the_top_k_of_yolov8(
    sessions: dict[str, ort.InferenceSession], photos: dict[str, np.ndarray]
) -> None:
    x = np.concatenate([photos["astronaut"], photos["chelsea"]])
    (dense,) = sessions["yolov8"].run(["output0"], {"images": x})
    (e2e,) = sessions["end2end"].run(["output0"], {"images": x})
    for i in range(2):
        best = dense[i, 4:].max(axis=0)
        order = np.argsort(-best, kind="stable")[:300]
        np.testing.assert_allclose(e2e[i, :, 4], best[order], rtol=1e-5)
        assert (np.diff(e2e[i, :, 4]) <= 0).all()
        np.testing.assert_array_equal(e2e[i, :, 5], dense[i, 4:, order].argmax(axis=1))
        cx, cy, w, h = dense[i, :4, order].T
        np.testing.assert_allclose(
            e2e[i, :, :4], np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), atol=1e-3
        )
        assert (e2e[i, :, 4] > CONF).sum() == yolov8_candidates(dense[i]).size


@pytest.mark.parametrize("kpt_shape", [(17, 3), (5, 2)])
def test_pose_is_the_detector_with_ultralytics_keypoint_decoding(kpt_shape: tuple[int, int]) -> None:
    """yolov8_pose: the same boxes and scores as yolov8_detector of the seed (the keypoint branch is drawn
    after the detector's weights), then K x D rows decoded as ultralytics' Pose.kpts_decode exports them: x, y =
    (raw * 2 + anchor - 0.5) * stride, a score = sigmoid(raw); task and kpt_shape in the metadata."""
    from peregrine.modelgen.yolo import _anchor_grid

    pose = yolov8_pose(0, imgsz=320, class_names=["person"], kpt_shape=kpt_shape)
    meta = {p.key: p.value for p in pose.metadata_props}
    assert (meta["task"], ast.literal_eval(meta["kpt_shape"])) == ("pose", list(kpt_shape))
    # the raw keypoint values [N, K, D, A]: the input of the decoding's first Slice, made an output here
    raw_name = next(n.input[0] for n in pose.graph.node if n.op_type == "Slice" and "model.22.kpt_xy_start" in n.input)
    probe = onnx.ModelProto()
    probe.CopyFrom(pose)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(raw_name, onnx.TensorProto.FLOAT, None))
    x = np.concatenate([letterbox(skimage.data.astronaut(), 320), letterbox(skimage.data.chelsea(), 320)])
    out, raw = session(probe).run(["output0", raw_name], {"images": x})
    (plain,) = session(yolov8_detector(0, imgsz=320, class_names=["person"])).run(["output0"], {"images": x})
    k, d = kpt_shape
    assert out.shape == (2, 5 + k * d, 2100) and raw.shape == (2, k, d, 2100)
    np.testing.assert_array_equal(out[:, :5], plain)
    points, strides = _anchor_grid(320)
    decoded = out[:, 5:].reshape(2, k, d, 2100)
    np.testing.assert_allclose(decoded[:, :, :2], (raw[:, :, :2] * 2 + (points - 0.5)) * strides, rtol=1e-5, atol=1e-3)
    if d == 3:
        np.testing.assert_allclose(decoded[:, :, 2], 1 / (1 + np.exp(-raw[:, :, 2])), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kpt_shape"):
        yolov8_pose(imgsz=128, kpt_shape=(17, 4))


# ---- determinism and arguments ------------------------------------------------------------------------------
def test_seed_changes_the_weights(models: dict[str, onnx.ModelProto]) -> None:
    assert classifier(seed=1).SerializeToString() != models["classifier"].SerializeToString()


def test_builders_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="scale"):
        yolov8_detector(scale="q")
    with pytest.raises(ValueError, match="imgsz"):
        yolov5_detector(imgsz=600)
    with pytest.raises(ValueError, match="max_detections"):
        end2end_detector(imgsz=128, max_detections=400)
    with pytest.raises(ValueError, match="datatype"):
        identity_model("COMPLEX64")
    with pytest.raises(ValueError, match="datatype"):
        add_sub_model("BOOL")


def test_smaller_input_and_custom_classes() -> None:
    model = yolov8_detector(imgsz=320, class_names=["car", "pedestrian"])
    (y,) = session(model).run(["output0"], {"images": np.full((2, 3, 320, 320), 0.5, np.float32)})
    assert y.shape == (2, 6, 2100)
    meta = {p.key: p.value for p in model.metadata_props}
    assert ast.literal_eval(meta["names"]) == {0: "car", 1: "pedestrian"}


def test_a_dynamic_size_yolov8_answers_as_the_fixed_one_and_at_any_size(photos: dict[str, np.ndarray]) -> None:
    """dynamic=True: the anchors come from the feature maps (ultralytics' export with dynamic=True); at 640
    the same output as the bundled fixed-size model, at other sizes the anchors of that size."""
    from peregrine.modelgen.yolo import _anchor_grid

    fixed, dynamic = session(yolov8_detector(0)), session(yolov8_detector(0, dynamic=True))
    x = np.concatenate(list(photos.values())[:2])  # already letterboxed, [1, 3, 640, 640] each
    np.testing.assert_array_equal(fixed.run(["output0"], {"images": x})[0], dynamic.run(["output0"], {"images": x})[0])
    (images,) = dynamic.get_inputs()
    assert images.shape[2:] == ["height", "width"]
    for h, w in ((320, 320), (480, 640)):
        (y,) = dynamic.run(["output0"], {"images": np.full((1, 3, h, w), 0.5, np.float32)})
        assert y.shape == (1, 84, sum((h // s) * (w // s) for s in (8, 16, 32)))
    # The anchors the graph computes at 480 x 640 are make_anchors' for that size.
    model = yolov8_detector(0, dynamic=True)
    anchors, strides = "/model.22/grid/Concat_output_0", "/model.22/grid/Concat_1_output_0"
    model.graph.output.extend([onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                               for n in (anchors, strides)])
    got_points, got_strides = session(model).run([anchors, strides], {"images": np.zeros((1, 3, 480, 640), np.float32)})
    want_points, want_strides = [], []
    for s in (8, 16, 32):
        sy, sx = np.meshgrid(np.arange(480 // s) + 0.5, np.arange(640 // s) + 0.5, indexing="ij")
        want_points.append(np.stack([sx.ravel(), sy.ravel()]))
        want_strides.append(np.full((1, sx.size), s))
    np.testing.assert_array_equal(got_points, np.concatenate(want_points, 1))
    np.testing.assert_array_equal(got_strides, np.concatenate(want_strides, 1))
    square_points, square_strides = _anchor_grid(640)  # and at 640, the fixed model's constants
    got = session(model).run([anchors, strides], {"images": np.zeros((1, 3, 640, 640), np.float32)})
    np.testing.assert_array_equal(got[0], square_points)
    np.testing.assert_array_equal(got[1], square_strides)


# ---- small models ------------------------------------------------------------------------------------------------
def _sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(7)
    if datatype == "BYTES":
        # ONNX Runtime takes str objects for string tensors (bytes objects come back as "b'...'")
        return np.array([f"s{i}" for i in range(int(np.prod(shape)))], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    if datatype == "BF16":
        pytest.skip("NumPy has no bfloat16")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(ONNX_TYPES[datatype])
    return (rng.random(shape) * 50).astype(dtype)


@pytest.mark.parametrize("datatype", sorted(set(ONNX_TYPES) - {"BF16"}))
def test_identity_model_per_datatype(datatype: str) -> None:
    model = identity_model(datatype, (-1, -1))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    s = session(model)
    for shape in ((1, 5), (3, 2)):
        x = _sample(datatype, shape)
        (y,) = s.run(["OUTPUT0"], {"INPUT0": x})
        np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("datatype", ARITHMETIC_DATATYPES)
def test_add_sub_model(datatype: str) -> None:
    model = add_sub_model(datatype, (-1, 16))
    onnx.checker.check_model(model, full_check=True)
    a, b = _sample(datatype, (3, 16)), _sample(datatype, (3, 16))[::-1].copy()
    total, diff = session(model).run(["OUTPUT0", "OUTPUT1"], {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(total, a + b)
    np.testing.assert_array_equal(diff, a - b)


def test_classifier_outputs_probabilities(sessions: dict[str, ort.InferenceSession]) -> None:
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    (p,) = sessions["classifier"].run(["output0"], {"images": x})
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert p.max() > 10 / 1000  # not uniform


# ---- repository writer and CLI --------------------------------------------------------------------------------
def test_cli_writes_the_repository_and_skips_existing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], models: dict[str, onnx.ModelProto]
) -> None:
    config = tmp_path / "yolov8n" / "config.toml"
    config.parent.mkdir()
    config.write_text("# written by hand\n")
    assert main(["--repository", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(BUNDLED_MODELS)
    for spec in BUNDLED_MODELS:
        path = tmp_path / spec.name / "1" / "model.onnx"
        onnx.checker.check_model(onnx.load(path), full_check=True)
    # rebuilt from the same seed: byte-identical to the fixture's models
    for name, key in (("yolov8n", "yolov8"), ("yolov5n", "yolov5"), ("yolov8n_e2e", "end2end")):
        assert (tmp_path / name / "1" / "model.onnx").read_bytes() == models[key].SerializeToString()
    assert config.read_text() == "# written by hand\n"
    assert sorted(p.name for p in (tmp_path / "yolov8n").iterdir()) == ["1", "config.toml"]
    assert sorted(p.name for p in (tmp_path / "yolov8n" / "1").iterdir()) == ["model.onnx"]
    assert (tmp_path / "yolov8n" / "1" / "model.onnx").stat().st_mode & 0o777 == 0o644

    identity = tmp_path / "identity_fp32" / "1" / "model.onnx"
    identity.write_bytes(b"placeholder")
    assert main(["--repository", str(tmp_path)]) == 0
    assert identity.read_bytes() == b"placeholder"
    assert all(line.startswith("skipped") for line in capsys.readouterr().out.splitlines())

    assert main(["--repository", str(tmp_path), "--force", "--model", "identity_fp32"]) == 0
    assert capsys.readouterr().out.startswith("wrote")
    assert identity.read_bytes() == identity_model("FP32", (-1, -1)).SerializeToString()


def test_python_dash_m_builds_the_same_bytes_in_a_fresh_process(
    tmp_path: Path, models: dict[str, onnx.ModelProto]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "peregrine.modelgen", "--repository", str(tmp_path), "--model", "yolov8n"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.startswith("wrote")
    assert (tmp_path / "yolov8n" / "1" / "model.onnx").read_bytes() == models["yolov8"].SerializeToString()
