"""Raw camera frames (``RawImage.encoding``: Bayer, YUV 4:2:2, 16-bit, ...) over real gRPC on loopback.

A frame sent in a camera encoding must give exactly the boxes of the same picture sent as RGB, where "the
same picture" is what cv_bridge would make of it (``cv2.cvtColor`` with cv_bridge's code, computed here with
OpenCV, not with Peregrine's kernels). The detectors have seeded random weights, so boxes move with any pixel:
equal boxes mean equal frames. Bad encodings, steps, sizes and lengths are INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from peregrine.client import DetectionClient, RawFrame
from peregrine.modelgen import yolov5_detector
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from pipeline_support import SMALL, photographs, pipeline_config, write_pipeline
from support import onnx_models

PHOTO = np.ascontiguousarray(photographs()["astronaut"][::2, ::2])  # RGB 256 x 256
H, W = PHOTO.shape[:2]
OPTIONS = [("grpc.max_send_message_length", 1 << 26), ("grpc.max_receive_message_length", 1 << 26)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeregrineServer]:
    root: Path = tmp_path_factory.mktemp("raw_encodings")
    onnx_models.write(root, "yolov5n", yolov5_detector(0, imgsz=SMALL), "max_batch_size = 8\n")
    write_pipeline(root, "det", pipeline_config("yolov5n", max_batch=8))
    write_pipeline(root, "det_bgr", pipeline_config("yolov5n", 'frame_channel_order = "bgr"\n', max_batch=8))
    write_pipeline(root, "det_small", pipeline_config("yolov5n", "max_pixels = 10000\n", max_batch=8))
    s = PeregrineServer(ServerConfig(model_repository=root, grpc_port=0, http_port=None))
    s.start()
    yield s
    s.stop(grace=1.0)


@pytest.fixture(scope="module")
def stub(server: PeregrineServer) -> Iterator[det_grpc.DetectionServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=OPTIONS) as channel:
        yield det_grpc.DetectionServiceStub(channel)


# -- frames as cameras give them, and what cv_bridge makes of them -----------------------------------------
def bayer_rggb(rgb: np.ndarray) -> np.ndarray:
    """A Bayer sensor's samples of the picture: R at (0, 0), G at (0, 1) and (1, 0), B at (1, 1)."""
    raw = np.empty(rgb.shape[:2], np.uint8)
    raw[0::2, 0::2], raw[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    raw[1::2, 0::2], raw[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    return raw


def yuyv(rgb: np.ndarray) -> np.ndarray:
    """YUV 4:2:2 (Y0 U Y1 V) of the picture: OpenCV's YUV squeezed to the limited range, the chroma of each
    pixel pair averaged (any plausible camera frame will do: the reference is cv_bridge's reading of it)."""
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV).astype(np.float32)
    y = 16 + yuv[:, :, 0] * 219 / 255
    u = 128 + (yuv[:, :, 1] - 128) * 224 / 255
    v = 128 + (yuv[:, :, 2] - 128) * 224 / 255
    out = np.empty((rgb.shape[0], rgb.shape[1], 2), np.uint8)
    out[:, :, 0] = np.clip(np.rint(y), 0, 255)
    out[:, 0::2, 1] = np.clip(np.rint((u[:, 0::2] + u[:, 1::2]) / 2), 0, 255)
    out[:, 1::2, 1] = np.clip(np.rint((v[:, 0::2] + v[:, 1::2]) / 2), 0, 255)
    return out


def mono16(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16)
    return grey * 256 + (np.arange(grey.size, dtype=np.uint16).reshape(grey.shape) % 256)  # noisy low byte


def cv_bridge_rgb(encoding: str, samples: np.ndarray) -> np.ndarray:
    """cv_bridge's picture of the samples (bgr8, with OpenCV), as RGB."""
    if encoding == "bayer_rggb8":
        bgr = cv2.cvtColor(samples, cv2.COLOR_BayerBG2BGR)
    elif encoding == "yuyv":
        bgr = cv2.cvtColor(samples, cv2.COLOR_YUV2BGR_YUY2)
    else:
        bgr = cv2.cvtColor((samples >> 8).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def wire(samples: np.ndarray, step: int = 0, big_endian: bool = False) -> bytes:
    if samples.dtype == np.uint16:
        samples = samples.astype(">u2" if big_endian else "<u2")
    rows = samples.reshape(samples.shape[0], -1).view(np.uint8)
    if step > rows.shape[1]:  # padding the server must skip
        rows = np.concatenate([rows, np.full((rows.shape[0], step - rows.shape[1]), 0xEE, np.uint8)], axis=1)
    elif step:  # a step under the row (a bad frame): step * height bytes, so that only the step is wrong
        rows = rows[:, :step]
    return rows.tobytes()


CAMERA = {"bayer_rggb8": bayer_rggb(PHOTO), "yuyv": yuyv(PHOTO), "mono16": mono16(PHOTO)}


def rgb_image(rgb: np.ndarray) -> det.Image:
    return det.Image(raw=det.RawImage(height=rgb.shape[0], width=rgb.shape[1], channels=3, data=rgb.tobytes()))


def camera_image(source: str, step: int = 0, big_endian: bool = False, **fields: object) -> det.Image:
    """The camera frame ``CAMERA[source]`` as a RawImage in that encoding; ``fields`` overwrite its fields."""
    raw = det.RawImage(height=H, width=W, encoding=source, step=step, is_bigendian=big_endian,
                       data=wire(CAMERA[source], step, big_endian))
    for name, value in fields.items():
        setattr(raw, name, value)
    return det.Image(raw=raw)


def boxes(response: det.DetectResponse, i: int = 0) -> list[tuple[float, ...]]:
    return [(b.x1, b.y1, b.x2, b.y2, b.score, b.class_id) for b in response.results[i].boxes]


def detect(stub: det_grpc.DetectionServiceStub, *images: det.Image, model: str = "det") -> det.DetectResponse:
    return stub.Detect(det.DetectRequest(model_name=model, images=list(images)), timeout=60)


# -- the same boxes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", sorted(CAMERA))
def test_a_camera_frame_gives_the_boxes_of_its_rgb_picture(stub: det_grpc.DetectionServiceStub, encoding: str) -> None:
    rgb = cv_bridge_rgb(encoding, CAMERA[encoding])
    response = detect(stub, camera_image(encoding), rgb_image(rgb), rgb_image(np.ascontiguousarray(rgb[:, :, ::-1])))
    assert boxes(response, 1), "the reference picture has no boxes: the comparison would prove nothing"
    assert boxes(response, 0) == boxes(response, 1)
    if encoding != "mono16":  # a grey picture is the same in any channel order
        assert boxes(response, 2) != boxes(response, 1)  # the channel order shows in the boxes
    assert (response.results[0].height, response.results[0].width) == (H, W)


def test_padded_rows_and_big_endian_samples(stub: det_grpc.DetectionServiceStub) -> None:
    want = boxes(detect(stub, rgb_image(cv_bridge_rgb("mono16", CAMERA["mono16"]))))
    padded = camera_image("mono16", step=2 * W + 10, big_endian=True)
    assert boxes(detect(stub, padded)) == want
    bayer = boxes(detect(stub, camera_image("bayer_rggb8")))
    assert boxes(detect(stub, camera_image("bayer_rggb8", step=W + 3))) == bayer


def test_plain_rgb_frames_take_a_step_too(stub: det_grpc.DetectionServiceStub) -> None:
    step = 3 * W + 4
    rows = np.concatenate([PHOTO.reshape(H, -1), np.full((H, 4), 0xEE, np.uint8)], axis=1)
    padded = det.Image(raw=det.RawImage(height=H, width=W, channels=3, step=step, data=rows.tobytes()))
    response = detect(stub, padded, rgb_image(PHOTO))
    assert boxes(response, 0) == boxes(response, 1)


def test_the_pipelines_channel_order_is_kept(stub: det_grpc.DetectionServiceStub) -> None:
    """A pipeline whose raw frames are BGR gets the encoding converted to BGR: the same boxes as RGB elsewhere."""
    rgb_boxes = boxes(detect(stub, camera_image("bayer_rggb8")))
    assert boxes(detect(stub, camera_image("bayer_rggb8"), model="det_bgr")) == rgb_boxes
    bgr = np.ascontiguousarray(cv_bridge_rgb("bayer_rggb8", CAMERA["bayer_rggb8"])[:, :, ::-1])
    assert boxes(detect(stub, rgb_image(bgr), model="det_bgr")) == rgb_boxes  # channels=3 frames: as they are


def test_a_stream_of_camera_frames(stub: det_grpc.DetectionServiceStub) -> None:
    want = boxes(detect(stub, camera_image("yuyv")))

    def frames() -> Iterator[det.StreamFrame]:
        yield det.StreamFrame(model_name="det", sequence=1, image=camera_image("yuyv"))
        yield det.StreamFrame(sequence=2, image=camera_image("yuyv", step=2 * W - 2))  # bad step: this frame only
        yield det.StreamFrame(sequence=3, image=camera_image("yuyv"))

    results = list(stub.DetectStream(frames(), timeout=60))
    assert [r.status for r in results] == [det.StreamResult.OK, det.StreamResult.ERROR, det.StreamResult.OK]
    assert results[1].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "image.raw.step" in results[1].error_message
    for r in (results[0], results[2]):
        assert [(b.x1, b.y1, b.x2, b.y2, b.score, b.class_id) for b in r.detections.boxes] == want


def test_the_python_client_sends_raw_frames(server: PeregrineServer, stub: det_grpc.DetectionServiceStub) -> None:
    want = [(b[0], b[5]) for b in boxes(detect(stub, camera_image("bayer_rggb8")))]
    with DetectionClient(f"127.0.0.1:{server.port}") as client:
        got = client.detect(RawFrame(wire(CAMERA["bayer_rggb8"]), H, W, "bayer_rggb8"), model="det")
        assert [(d.x1, d.class_id) for d in got] == want
        wide = RawFrame(CAMERA["mono16"].astype(">u2"), H, W, "mono16", 2 * W, is_bigendian=True)
        results = list(client.stream([wide], model="det"))
        assert results[0].ok and results[0].detections


# -- bad input -------------------------------------------------------------------------------------------
BAD = {
    "unknown encoding": (camera_image("yuyv", encoding="nv12"), "images[0].raw.encoding"),
    "encoding spelled otherwise": (camera_image("yuyv", encoding="YUYV"), "images[0].raw.encoding"),
    "channels not the encoding's": (camera_image("mono16", channels=3), "images[0].raw.channels"),
    "step under the row": (camera_image("bayer_rggb8", step=W - 1), "images[0].raw.step"),
    "16-bit step of 8-bit rows": (camera_image("mono16", step=W), "images[0].raw.step"),
    "data one byte short": (camera_image("bayer_rggb8", data=wire(CAMERA["bayer_rggb8"])[:-1]),
                            "images[0].raw.data"),
    "data one byte long": (camera_image("bayer_rggb8", data=wire(CAMERA["bayer_rggb8"]) + b"\0"),
                           "images[0].raw.data"),
    "padding missing": (camera_image("mono16", step=2 * W + 2, data=wire(CAMERA["mono16"])), "images[0].raw.data"),
    "odd YUV width": (det.Image(raw=det.RawImage(height=4, width=5, encoding="yuyv", data=bytes(40))),
                      "images[0].raw.width"),
    "no pixels": (det.Image(raw=det.RawImage(height=0, width=8, encoding="mono8")), "images[0].raw"),
    "plain step under the row": (det.Image(raw=det.RawImage(height=2, width=4, channels=3, step=11,
                                                            data=bytes(22))), "images[0].raw.step"),
    "plain padded data short": (det.Image(raw=det.RawImage(height=2, width=4, channels=3, step=13,
                                                           data=bytes(24))), "images[0].raw.data"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_raw_frames_are_invalid_argument_naming_the_field(stub: det_grpc.DetectionServiceStub, case: str) -> None:
    image, field = BAD[case]
    with pytest.raises(grpc.RpcError) as info:
        detect(stub, image)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()
    assert boxes(detect(stub, camera_image("yuyv")))  # and the server goes on


def test_the_pixel_limit_holds_for_camera_frames(stub: det_grpc.DetectionServiceStub) -> None:
    """det_small takes 10,000 pixels: 100 x 100 passes, 101 x 100 does not (read from the stated size)."""
    ok = det.Image(raw=det.RawImage(height=100, width=100, encoding="bayer_rggb8",
                                    data=np.random.default_rng(5).integers(0, 256, 10_000, np.uint8).tobytes()))
    assert detect(stub, ok, model="det_small").results
    big = det.Image(raw=det.RawImage(height=101, width=100, encoding="bayer_rggb8", data=bytes(10_100)))
    with pytest.raises(grpc.RpcError) as info:
        detect(stub, big, model="det_small")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_error_messages_clip_what_the_client_sent(stub: det_grpc.DetectionServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        detect(stub, camera_image("yuyv", encoding="x" * 100_000))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(info.value.details()) < 2000

