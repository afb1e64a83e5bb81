"""Peregrine's detections equal ultralytics' on real photographs, for every head layout, batch sizes 1 to 16
and mixed image sizes, through DetectionService and through OIP. The reference is ultralytics' predictor
written out plainly with OpenCV and NumPy (tests/pipeline/pipeline_support.py): cv2.resize on the uint8
frame, class-offset NMS, max_det, agnostic NMS, the candidate cap, the classes filter."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import numpy as np
import pipeline_support
import pytest
import tritonclient.grpc as triton
from peregrine.modelgen.coco import COCO80
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from pipeline_support import Reference, assert_same_detections, jpeg, photographs, png

# Fixtures shared with the other pipeline tests (see pipeline_support).
detection_repo = pipeline_support.detection_repo
detection_server = pipeline_support.detection_server
references = pipeline_support.references

PHOTOS = photographs()
OPTIONS = [("grpc.max_send_message_length", 1 << 28), ("grpc.max_receive_message_length", 1 << 28)]


@pytest.fixture(scope="module")
def stub(detection_server: PeregrineServer) -> det_grpc.DetectionServiceStub:
    channel = grpc.insecure_channel(f"127.0.0.1:{detection_server.port}", options=OPTIONS)
    return det_grpc.DetectionServiceStub(channel)


def raw(rgb: np.ndarray) -> det.Image:
    return det.Image(raw=det.RawImage(height=rgb.shape[0], width=rgb.shape[1], channels=3, data=rgb.tobytes()))


def as_array(result: det.ImageDetections) -> np.ndarray:
    return np.array([[b.x1, b.y1, b.x2, b.y2, b.score, b.class_id] for b in result.boxes], np.float32).reshape(-1, 6)


@pytest.mark.parametrize("model", ["det_v8", "det_v5", "det_e2e"])
def test_one_request_of_mixed_sizes_matches_reference(stub: det_grpc.DetectionServiceStub, model: str,
                                                      references: dict[str, Reference]) -> None:
    names = list(PHOTOS)
    response = stub.Detect(det.DetectRequest(model_name=model, images=[raw(PHOTOS[n]) for n in names]), timeout=120)
    assert [r.height for r in response.results] == [PHOTOS[n].shape[0] for n in names]
    assert [r.width for r in response.results] == [PHOTOS[n].shape[1] for n in names]
    total = 0
    for name, result in zip(names, response.results, strict=True):
        want = references[model](PHOTOS[name])
        assert_same_detections(as_array(result), want, f"{model}/{name}")
        total += len(want)
    assert total >= 20, "the photographs should give the detectors something to find"
    assert response.timings.batch_size == len(names)


@pytest.mark.parametrize("model", ["det_v8", "det_v5", "det_e2e"])
@pytest.mark.parametrize("batch", [1, 3, 7, 16])
def test_every_batch_size_matches_reference(stub: det_grpc.DetectionServiceStub, references: dict[str, Reference],
                                            model: str, batch: int) -> None:
    """A request of ``batch`` images of mixed sizes runs as one batch; each image's boxes are ultralytics'."""
    names = [list(PHOTOS)[(i * 3 + batch) % len(PHOTOS)] for i in range(batch)]
    response = stub.Detect(det.DetectRequest(model_name=model, images=[raw(PHOTOS[n]) for n in names]), timeout=120)
    assert response.timings.batch_size == batch
    for name, result in zip(names, response.results, strict=True):
        assert_same_detections(as_array(result), references[model](PHOTOS[name]), f"{model}/{batch}/{name}")


@pytest.mark.parametrize("model", ["det_v8", "det_v5", "det_e2e"])
def test_classes_and_max_detections_follow_ultralytics(stub: det_grpc.DetectionServiceStub,
                                                       references: dict[str, Reference], model: str) -> None:
    rgb = PHOTOS["astronaut"]
    everything = references[model](rgb, conf=0.1)
    assert len(everything) > 3, "the photograph should give the detector something to find"
    wanted = sorted({int(c) for c in everything[:3, 5]})
    options = det.DetectOptions(score_threshold=0.1, classes=wanted, max_detections=7)
    response = stub.Detect(det.DetectRequest(model_name=model, images=[raw(rgb)], options=options), timeout=60)
    want = references[model](rgb, conf=0.1, classes=wanted, max_det=7)
    assert_same_detections(as_array(response.results[0]), want, model)
    assert {b.class_id for b in response.results[0].boxes} <= set(wanted)


def test_agnostic_nms_follows_ultralytics(stub: det_grpc.DetectionServiceStub,
                                          references: dict[str, Reference]) -> None:
    """A pipeline with agnostic_nms suppresses overlapping boxes across classes, as ultralytics' agnostic
    NMS does (no class offsets), and keeps fewer boxes than per-class NMS on the same image."""
    found = 0
    for name in ("astronaut", "coffee", "motorcycle"):
        rgb = PHOTOS[name]
        response = stub.Detect(det.DetectRequest(model_name="det_v5_agnostic", images=[raw(rgb)]), timeout=60)
        want = references["det_v5"](rgb, agnostic=True)
        assert_same_detections(as_array(response.results[0]), want, name)
        assert len(want) <= len(references["det_v5"](rgb))
        found += len(want)
    assert found > 0


def test_batch_of_sixteen_jpeg_and_png(stub: det_grpc.DetectionServiceStub, references: dict[str, Reference]) -> None:
    """A request of 16 encoded images (JPEG and PNG, eight sizes and more) runs as one batch of 16."""
    names = (list(PHOTOS) * 2)[:16]
    images = [det.Image(encoded=jpeg(PHOTOS[n]) if i % 2 else png(PHOTOS[n])) for i, n in enumerate(names)]
    response = stub.Detect(det.DetectRequest(model_name="det_v8", images=images), timeout=120)
    assert response.timings.batch_size == 16
    for i, (name, result) in enumerate(zip(names, response.results, strict=True)):
        decoded = PHOTOS[name]
        if i % 2:  # what the server decoded: the JPEG's pixels, not the original's
            decoded = cv2.imdecode(np.frombuffer(jpeg(PHOTOS[name]), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert_same_detections(as_array(result), references["det_v8"](np.ascontiguousarray(decoded)), name)


def _with_orientation(rgb: np.ndarray, fmt: str, orientation: int) -> bytes:
    """``rgb`` stored as a camera stores a turned photograph: the pixels as they are, the way to show them
    in the file's EXIF orientation tag."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_applied_as_ultralytics_reader_applies_it(fmt: str) -> None:
    """ultralytics reads files with OpenCV's imdecode, which turns and mirrors a photograph as its EXIF
    orientation says: Peregrine's frame is that one, pixel for pixel, for all eight orientations (and the
    stored one for values outside 1..8)."""
    from peregrine.server.pipeline.images import decode_image, open_encoded

    rgb = np.ascontiguousarray(PHOTOS["coffee"][::5, ::5])  # 80 x 120: a turn shows
    for orientation in range(0, 10):
        data = _with_orientation(rgb, fmt, orientation)
        want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        got = decode_image(data, "images[0]")
        assert got.shape == want.shape and np.array_equal(got, want), (fmt, orientation)
        pending = open_encoded(data, "images[0]")
        assert (pending.height, pending.width) == want.shape[:2]  # sizes checked from the header, turned
        assert got.flags.c_contiguous


def test_a_turned_phone_photograph_gets_the_boxes_of_the_photograph_as_shown(
        stub: det_grpc.DetectionServiceStub, references: dict[str, Reference]) -> None:
    """A JPEG stored sideways with orientation 6 (how phones store portrait shots): the boxes are those of
    the upright photograph, in its pixels, as ultralytics gives them for the file."""
    upright = PHOTOS["astronaut_portrait"]  # 512 x 256
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # 256 x 512: turned back a quarter, as the sensor saw it
    data = _with_orientation(stored, "JPEG", 6)
    shown = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert shown.shape == upright.shape
    response = stub.Detect(det.DetectRequest(model_name="det_v8", images=[det.Image(encoded=data)]), timeout=60)
    want = references["det_v8"](np.ascontiguousarray(shown))
    assert len(want) > 0
    assert_same_detections(as_array(response.results[0]), want, "orientation 6")


def test_concurrent_single_frames_are_batched(detection_server: PeregrineServer, stub: det_grpc.DetectionServiceStub,
                                              references: dict[str, Reference]) -> None:
    """Single-frame requests sent together share batches (batch size > 1 is seen), each answered right."""
    names = list(PHOTOS) * 2

    def one(name: str) -> det.DetectResponse:
        return stub.Detect(det.DetectRequest(model_name="det_v5", images=[raw(PHOTOS[name])]), timeout=60)

    with ThreadPoolExecutor(len(names)) as pool:
        responses = list(pool.map(one, names))
    for name, response in zip(names, responses, strict=True):
        assert_same_detections(as_array(response.results[0]), references["det_v5"](PHOTOS[name]), name)
    assert max(r.timings.batch_size for r in responses) > 1


def test_request_thresholds_override_defaults(stub: det_grpc.DetectionServiceStub,
                                              references: dict[str, Reference]) -> None:
    rgb = PHOTOS["astronaut"]
    options = det.DetectOptions(score_threshold=0.5, iou_threshold=0.3, max_detections=5)
    response = stub.Detect(det.DetectRequest(model_name="det_v8", images=[raw(rgb)], options=options), timeout=60)
    got = as_array(response.results[0])
    assert_same_detections(got, references["det_v8"](rgb, conf=0.5, iou=0.3, max_det=5))
    assert 0 < len(got) <= 5
    only = stub.Detect(det.DetectRequest(model_name="det_v8", images=[raw(rgb)],
                                         options=det.DetectOptions(classes=[int(got[0, 5])])), timeout=60)
    assert {b.class_id for b in only.results[0].boxes} == {int(got[0, 5])}


def test_labels_come_from_model_metadata(stub: det_grpc.DetectionServiceStub) -> None:
    response = stub.Detect(det.DetectRequest(model_name="det_v8", images=[raw(PHOTOS["chelsea"])]), timeout=60)
    assert response.results[0].boxes
    for box in response.results[0].boxes:
        assert box.label == COCO80[box.class_id]


def test_timings_add_up(stub: det_grpc.DetectionServiceStub) -> None:
    response = stub.Detect(det.DetectRequest(model_name="det_v8", images=[det.Image(encoded=jpeg(PHOTOS["rocket"]))]),
                           timeout=60)
    t = response.timings
    assert t.decode_us > 0 and t.pre_us > 0 and t.infer_us > 0 and t.post_us > 0
    assert t.total_us >= t.decode_us + t.queue_us + t.pre_us + t.infer_us + t.post_us


@pytest.mark.parametrize("model", ["det_v8", "det_e2e"])
def test_oip_pipeline_model_matches_reference(detection_server: PeregrineServer, model: str,
                                              references: dict[str, Reference]) -> None:
    """The same pipeline through tritonclient: IMAGE (uint8) and ENCODED (bytes) inputs."""
    client = triton.InferenceServerClient(f"127.0.0.1:{detection_server.port}")
    meta = client.get_model_metadata(model, as_json=True)
    assert [i["name"] for i in meta["inputs"]] == ["IMAGE", "ENCODED"]
    assert [o["name"] for o in meta["outputs"]] == ["DETECTIONS", "COUNTS"]
    config = client.get_model_config(model, as_json=True)["config"]
    assert all(i.get("optional") for i in config["input"])

    rgb = PHOTOS["motorcycle"]
    image = triton.InferInput("IMAGE", [1, *rgb.shape], "UINT8")
    image.set_data_from_numpy(rgb[None])
    result = client.infer(model, [image])
    counts = result.as_numpy("COUNTS")
    assert counts.shape == (1, 1)
    assert_same_detections(result.as_numpy("DETECTIONS")[0, : counts[0, 0]], references[model](rgb))

    names = ["coffee", "chelsea", "hubble_1080p"]
    encoded = triton.InferInput("ENCODED", [len(names), 1], "BYTES")
    encoded.set_data_from_numpy(np.array([[png(PHOTOS[n])] for n in names], dtype=object))
    result = client.infer(model, [encoded], parameters={"score_threshold": "0.4"})
    dets, counts = result.as_numpy("DETECTIONS"), result.as_numpy("COUNTS")
    for i, name in enumerate(names):
        assert_same_detections(dets[i, : counts[i, 0]], references[model](PHOTOS[name], conf=0.4), name)
