"""Every image format ultralytics reads, read as ultralytics reads it: AVIF, JPEG 2000 and GIF as OpenCV's
imdecode decodes them (ultralytics' reader), pixel for pixel; HEIC as Pillow with pi-heif decodes it
(ultralytics' HEIC path). Their sizes come from the header, before decoding; a cut file is INVALID_ARGUMENT;
``Detect`` on them gives the boxes of the frame they decode to. (JPEG, PNG, BMP, TIFF and WebP: see
test_detection_accuracy and tests/hardening/test_fuzz_images.)"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import grpc
import numpy as np
import pipeline_support
import pytest
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.core.errors import InvalidArgument
from peregrine.server.pipeline.images import decode_image, open_encoded
from PIL import Image
from pipeline_support import Reference, assert_same_detections
from support import image_files

detection_repo = pipeline_support.detection_repo
detection_server = pipeline_support.detection_server
references = pipeline_support.references

PHOTO = np.ascontiguousarray(pipeline_support.photographs()["chelsea"][::3, ::3])  # 100 x 151: odd sizes


def _pillow(fmt: str, mode: str = "RGB", **options: object) -> Callable[[np.ndarray], bytes]:
    return lambda rgb: image_files.encode(rgb, fmt, mode, **options)


_heic = image_files.heic


def _animated_gif(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "GIF", save_all=True, append_images=[Image.fromarray(255 - rgb)], duration=40)
    return out.getvalue()


OPENCV_READS = {
    "avif": _pillow("AVIF", quality=75),
    "avif_lossless": _pillow("AVIF", quality=100, subsampling="4:4:4"),
    "avif_grey": _pillow("AVIF", "L"),
    "jpeg2000": _pillow("JPEG2000"),
    "jpeg2000_lossy": _pillow("JPEG2000", quality_mode="rates", quality_layers=[20]),
    "jpeg2000_grey": _pillow("JPEG2000", "L"),
    "jpeg2000_16_bit": _pillow("JPEG2000", "I;16"),
    "gif": _pillow("GIF"),
    "gif_animated": _animated_gif,
}


def _opencv(data: bytes) -> np.ndarray:
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert frame is not None, "OpenCV does not read it"
    return np.ascontiguousarray(frame[:, :, ::-1])


def _pi_heif(data: bytes) -> np.ndarray:
    from pi_heif import open_heif

    return np.ascontiguousarray(np.asarray(open_heif(io.BytesIO(data)).to_pillow().convert("RGB")))


@pytest.mark.parametrize("name", sorted(OPENCV_READS))
def test_formats_decode_as_opencv_decodes_them(name: str) -> None:
    data = OPENCV_READS[name](PHOTO)
    want = _opencv(data)
    pending = open_encoded(data, "images[0].encoded")
    assert (pending.height, pending.width) == want.shape[:2] == PHOTO.shape[:2]  # from the header
    got = decode_image(data, "images[0].encoded")
    assert got.shape == want.shape and got.flags.c_contiguous
    assert np.array_equal(got, want), (name, int(np.abs(got.astype(int) - want).max()))
    assert np.array_equal(decode_image(data, "f", order="bgr"), want[:, :, ::-1])


def test_heic_decodes_as_ultralytics_reads_it() -> None:
    data = _heic(PHOTO)
    pending = open_encoded(data, "images[0].encoded")
    assert (pending.height, pending.width) == PHOTO.shape[:2]
    got = decode_image(data, "images[0].encoded")
    assert np.array_equal(got, _pi_heif(data))
    assert np.abs(got.astype(int) - PHOTO).mean() < 6  # and it is the photograph (lossy)


@pytest.mark.parametrize("name", [*sorted(OPENCV_READS), "heic"])
def test_sizes_are_checked_from_the_header_and_cut_files_refused(name: str) -> None:
    data = _heic(PHOTO) if name == "heic" else OPENCV_READS[name](PHOTO)
    with pytest.raises(InvalidArgument, match="max_pixels"):
        open_encoded(data, "images[0].encoded", max_pixels=PHOTO.shape[0] * PHOTO.shape[1] - 1)
    with pytest.raises(InvalidArgument, match=r"images\[0\]\.encoded"):
        decode_image(data[: len(data) // 2], "images[0].encoded")


def test_an_unknown_format_is_refused_naming_the_ones_read() -> None:
    with pytest.raises(InvalidArgument) as e:
        decode_image(b"P6\n2 2\n255\n" + bytes(12), "images[0].encoded")  # PPM: not read
    assert "AVIF" in e.value.message and "HEIC" in e.value.message and "images[0].encoded" in e.value.message


@pytest.mark.parametrize(("name", "encode", "decode"), [
    ("avif", OPENCV_READS["avif"], _opencv), ("heic", _heic, _pi_heif), ("jpeg2000", OPENCV_READS["jpeg2000"], _opencv),
])
def test_detect_on_each_format_gives_the_boxes_of_its_frame(detection_server: PeregrineServer,
                                                            references: dict[str, Reference], name: str,
                                                            encode: Callable[[np.ndarray], bytes],
                                                            decode: Callable[[bytes], np.ndarray]) -> None:
    rgb = pipeline_support.photographs()["astronaut"]
    data = encode(rgb)
    with grpc.insecure_channel(f"127.0.0.1:{detection_server.port}") as channel:
        reply = det_grpc.DetectionServiceStub(channel).Detect(
            det.DetectRequest(model_name="det_v8", images=[det.Image(encoded=data)]), timeout=60)
    want = references["det_v8"](decode(data))
    result = reply.results[0]
    got = np.array([[b.x1, b.y1, b.x2, b.y2, b.score, b.class_id] for b in result.boxes], np.float32).reshape(-1, 6)
    assert (result.height, result.width) == rgb.shape[:2] and len(want) > 0
    assert_same_detections(got, want, name)
