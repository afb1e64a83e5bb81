"""Fuzzing image decoding for a fixed budget (issue 14): hypothesis over ``pipeline/images.py`` (random bytes,
real JPEG/PNG/BMP/TIFF/WebP/AVIF/HEIC/JPEG 2000/GIF files from scikit-image mutated, headers that claim huge
sizes, raw frames of random sizes and channel counts), then a few hundred random Detect requests against a real
server.

Only documented outcomes pass: InvalidArgument, or a uint8 [H, W, 3] C-contiguous frame of the size the header
states, within the pixel limit; never another exception; the budget of decoded bytes back to zero after each
request; the process's resident memory within a stated bound; and for the server, a live server that still
gives the same boxes for the same photograph. Every test has a fixed number of examples, derandomized, with no
example database: the same inputs on every run, well under 60 s for the file on two cores.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
import skimage.data
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from peregrine.modelgen import yolov5_detector
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc
from peregrine.server.app import PeregrineServer
from peregrine.server.config import ServerConfig
from peregrine.server.core.errors import InvalidArgument
from peregrine.server.pipeline import images
from PIL import Image
from support import image_files, onnx_models

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
MAX_PIXELS = 1 << 20  # the fuzzed decoder's pixel limit: whatever is accepted decodes in a few ms
RSS_BOUND = 256 << 20  # resident memory may grow this much over the tests that sample it (the server's start included)


# -- seeds: real photographs, small, in every format ------------------------------------------------------
_encode = image_files.encode


def _seeds() -> dict[str, bytes]:
    photo = cv2.resize(skimage.data.chelsea(), (48, 32), interpolation=cv2.INTER_AREA)
    grey = cv2.resize(skimage.data.camera(), (40, 30), interpolation=cv2.INTER_AREA)
    other = np.ascontiguousarray(photo[::-1])
    turned = Image.Exif()
    turned[0x0112] = 6  # EXIF orientation: shown a quarter turn clockwise
    return {
        "jpeg_exif_turned": _encode(photo, "JPEG", exif=turned.tobytes()),
        "png_exif_turned": _encode(photo, "PNG", exif=turned.tobytes()),
        "webp_exif_turned": _encode(photo, "WEBP", exif=turned.tobytes()),
        "jpeg": _encode(photo, "JPEG", quality=85),
        "jpeg_progressive": _encode(photo, "JPEG", progressive=True),
        "jpeg_grey": _encode(np.stack([grey] * 3, axis=2), "JPEG", "L"),
        "jpeg_cmyk": _encode(photo, "JPEG", "CMYK"),
        "png": _encode(photo, "PNG"),
        "png_grey": _encode(np.stack([grey] * 3, axis=2), "PNG", "L"),
        "png_palette": _encode(photo, "PNG", "P", transparency=0),
        "png_one_bit": _encode(photo, "PNG", "1"),
        "png_rgba": _encode(photo, "PNG", "RGBA"),
        "png_16_bit": _encode(photo, "PNG", "I;16"),
        "apng": _encode(photo, "PNG", save_all=True, append_images=[Image.fromarray(other)], duration=40),
        "bmp": _encode(photo, "BMP"),
        "bmp_palette": _encode(photo, "BMP", "P"),
        "tiff": _encode(photo, "TIFF"),
        "tiff_lzw_cmyk": _encode(photo, "TIFF", "CMYK", compression="tiff_lzw"),
        "webp": _encode(photo, "WEBP", quality=80),
        "webp_lossless": _encode(photo, "WEBP", lossless=True),
        "webp_animated": _encode(photo, "WEBP", save_all=True, append_images=[Image.fromarray(other)], duration=40),
        "avif": _encode(photo, "AVIF", quality=80),
        "avif_grey": _encode(np.stack([grey] * 3, axis=2), "AVIF", "L"),
        "heic": image_files.heic(photo),
        "jpeg2000": _encode(photo, "JPEG2000"),
        "jpeg2000_lossy": _encode(photo, "JPEG2000", quality_mode="rates", quality_layers=[20]),
        "jpeg2000_16_bit": _encode(photo, "JPEG2000", "I;16"),
        "gif": _encode(photo, "GIF"),
        "gif_animated": _encode(photo, "GIF", save_all=True, append_images=[Image.fromarray(other)], duration=40),
    }



SEEDS = _seeds()
MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
          b"\x00\x00\x00\x1cftypavif", b"\x00\x00\x00\x18ftypheic", b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"GIF89a"]


# -- strategies ------------------------------------------------------------------------------------------
@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed file with a few bytes flipped, overwritten, inserted, deleted or duplicated, or cut short."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "duplicate", "truncate"]))
        pos = draw(st.integers(0, len(data) - 1)) if data else 0
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "duplicate":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 256))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


_huge = st.one_of(st.integers(0, 3), st.integers(1, 5000), st.sampled_from(
    [1 << 10, 1 << 16, (1 << 16) - 1, 1 << 20, (1 << 20) + 1, 1 << 24, (1 << 31) - 1, 1 << 31, (1 << 32) - 1]))


def _png_with_size(width: int, height: int, crc: bool) -> bytes:
    data = bytearray(SEEDS["png_one_bit"])
    data[16:24] = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
    if crc:
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(SEEDS["jpeg"])
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
    return bytes(data)


def _bmp_with_size(width: int, height: int, top_down: bool) -> bytes:
    data = bytearray(SEEDS["bmp"])
    h = min(height, (1 << 31) - 1)
    data[18:26] = struct.pack("<ii", min(width, (1 << 31) - 1), -h if top_down else h)
    return bytes(data)


def _tiff_with_size(width: int, height: int) -> bytes:
    data = bytearray(SEEDS["tiff"])
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        tag = struct.unpack("<H", data[entry : entry + 2])[0]
        if tag in (256, 257):  # ImageWidth, ImageLength, made LONG
            value = (width if tag == 256 else height) & 0xFFFFFFFF
            data[entry + 2 : entry + 4] = struct.pack("<H", 4)
            data[entry + 8 : entry + 12] = struct.pack("<I", value)
    return bytes(data)


@st.composite
def huge_headers(draw: st.DrawFn) -> bytes:
    """A real file whose header states another size: huge, tiny, zero, or over the kernel's side limit."""
    width, height = draw(_huge), draw(_huge)
    kind = draw(st.sampled_from(["png", "jpeg", "bmp", "tiff"]))
    if kind == "png":
        return _png_with_size(width, height, draw(st.booleans()))
    if kind == "jpeg":
        return _jpeg_with_size(width, height)
    if kind == "bmp":
        return _bmp_with_size(width, height, draw(st.booleans()))
    return _tiff_with_size(width, height)


encoded = st.one_of(
    st.binary(max_size=256),
    st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGICS), st.binary(max_size=256)),
    mutated(),
    huge_headers(),
)


@st.composite
def raw_images(draw: st.DrawFn) -> tuple[bytes, int, int, int]:
    """Raw pixels of a stated size: the data's length right (when small enough to send) or off."""
    height, width = draw(_huge), draw(_huge)
    channels = draw(st.integers(0, 5))
    want = height * width * channels
    length = want if want <= 1 << 16 and draw(st.integers(0, 3)) else draw(st.integers(0, 1 << 12))
    return bytes(length), height, width, channels


# -- the decoder alone -----------------------------------------------------------------------------------
class PeakRss:
    """Resident memory of this process, sampled every 5 ms while in the block."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())


@pytest.fixture(scope="module")
def rss() -> Iterator[PeakRss]:
    with PeakRss() as sampler:
        yield sampler
    assert sampler.peak - sampler.start < RSS_BOUND, f"RSS grew {(sampler.peak - sampler.start) >> 20} MiB"


def _check(pending: list[images.PendingFrame], budget: images.DecodedBytesBudget) -> None:
    """Decode within ``budget``: a frame of the stated size, or InvalidArgument; the budget back to zero."""
    try:
        frames, hold = images.decode_frames(pending, "images", budget=budget)
    except InvalidArgument:
        assert budget.held == 0
        event("refused while decoding")
        return
    event("decoded")
    for p, frame in zip(pending, frames, strict=True):
        assert frame.dtype == np.uint8 and frame.flags.c_contiguous
        assert frame.shape == (p.height, p.width, 3)
        assert p.height * p.width <= MAX_PIXELS and max(p.height, p.width) <= images.MAX_SIDE
    assert budget.held == sum(f.nbytes for f in frames)
    hold.release()
    assert budget.held == 0


def _decode_encoded(data: bytes, order: images.ChannelOrder = "rgb") -> None:
    budget = images.DecodedBytesBudget(1 << 30)
    try:
        pending = [images.open_encoded(data, "images[0].encoded", order, MAX_PIXELS)]
    except InvalidArgument as e:
        assert str(e).startswith("images[0].encoded: ")
        event("refused from the header")
        return
    _check(pending, budget)


@FUZZ
@given(data=encoded, order=st.sampled_from(["rgb", "bgr"]))
def test_any_bytes_decode_to_a_frame_or_invalid_argument(rss: PeakRss, data: bytes, order: images.ChannelOrder) -> None:
    _decode_encoded(data, order)


@settings(FUZZ, max_examples=200)
@given(image=raw_images())
def test_raw_frames_of_any_stated_size(rss: PeakRss, image: tuple[bytes, int, int, int]) -> None:
    data, height, width, channels = image
    budget = images.DecodedBytesBudget(1 << 30)
    try:
        pending = [images.open_raw(data, height, width, channels, "images[0].raw", MAX_PIXELS)]
    except InvalidArgument:
        return
    assert len(data) == height * width * channels
    _check(pending, budget)


@settings(FUZZ, max_examples=100)
@given(shape=st.lists(st.integers(0, 70), min_size=0, max_size=5), dtype=st.sampled_from([np.uint8, np.uint16,
                                                                                          np.float32]))
def test_oip_frames_of_any_shape(rss: PeakRss, shape: list[int], dtype: Any) -> None:
    array = np.zeros(shape, dtype)
    try:
        pending = [images.open_array(array, "input 'IMAGE'[0]", MAX_PIXELS)]
    except InvalidArgument:
        return
    _check(pending, images.DecodedBytesBudget(1 << 30))


@pytest.mark.parametrize("resize", ["linear", "area", "float"])
def test_the_side_limit_is_the_letterbox_kernels(resize: str) -> None:
    """images.MAX_SIDE is what the letterbox takes: frames of any aspect ratio up to it, none over it."""
    from peregrine import kernels

    for shape in [(1, images.MAX_SIDE), (images.MAX_SIDE, 1), (3, images.MAX_SIDE), (images.MAX_SIDE, 2)]:
        out, _ = kernels.letterbox([np.full((*shape, 3), 200, np.uint8)], (32, 48), resize=resize)
        assert out.shape == (1, 3, 32, 48)
        images.check_size("f", *shape, max_pixels=1 << 30)
    for shape in [(1, images.MAX_SIDE + 1), (images.MAX_SIDE + 1, 1)]:
        with pytest.raises(ValueError):
            kernels.letterbox([np.zeros((*shape, 3), np.uint8)], (32, 48), resize=resize)
        with pytest.raises(InvalidArgument):
            images.check_size("f", *shape, max_pixels=1 << 30)


def test_every_seed_decodes_to_the_photograph() -> None:
    """The seeds themselves (every format and mode) decode, to the size they were made at (turned a
    quarter for those whose EXIF orientation says so)."""
    for name, data in SEEDS.items():
        frame = images.decode_image(data, name, max_pixels=MAX_PIXELS)
        sizes = ((48, 32),) if "exif_turned" in name else ((32, 48), (30, 40))
        assert frame.shape[2] == 3 and frame.shape[:2] in sizes, name


def test_pillows_own_pixel_limit_and_warnings_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's process-wide limit (Image.MAX_IMAGE_PIXELS) warns, then raises, below what a model may allow;
    its warnings (here errors: the tests run with -W error) must not decide an answer. With the limit set
    under a seed's size, every seed still decodes, and one over max_pixels is still InvalidArgument."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the seeds have 1200 to 1536 pixels: Pillow warns
    for name, data in SEEDS.items():
        if name.startswith("tiff"):
            continue  # TIFF applies Pillow's limit again as it decodes (see images._pillow_header)
        assert images.decode_image(data, name, max_pixels=MAX_PIXELS).shape[2] == 3, name
    with pytest.raises(InvalidArgument, match="max_pixels"):
        images.decode_image(SEEDS["png"], "png", max_pixels=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = images.decode_image(_encode(np.zeros((4, 4, 3), np.uint8), "PNG", "P", transparency=b"\x00\x10"), "p")
    assert frame.shape == (4, 4, 3)


def test_a_16_bit_png_keeps_its_high_byte() -> None:
    values = np.array([[0, 255, 256, 1000, 65535]], np.uint16)
    out = io.BytesIO()
    Image.fromarray(values).save(out, "PNG")
    frame = images.decode_image(out.getvalue(), "images[0].encoded")
    assert frame[0, :, 0].tolist() == [0, 0, 1, 3, 255] and (frame[..., 0] == frame[..., 2]).all()


def test_a_png_of_text_chunks_costs_nothing() -> None:
    """64 zTXt chunks of 1 MiB each (64 KiB sent): Pillow would inflate them all as it opens the file."""
    text = b"k\x00\x00" + zlib.compress(bytes(1 << 20), 9)
    chunk = len(text).to_bytes(4, "big") + b"zTXt" + text + zlib.crc32(b"zTXt" + text).to_bytes(4, "big")
    png = SEEDS["png"]
    bomb = png[:33] + chunk * 64 + png[33:]
    with PeakRss() as peak:
        frame = images.decode_image(bomb, "images[0].encoded")
    assert frame.shape == (32, 48, 3)
    assert peak.peak - peak.start < 32 << 20


# -- a real server -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeregrineServer]:
    root = tmp_path_factory.mktemp("fuzz_images")
    onnx_models.write(root, "yolov5n", yolov5_detector(0, imgsz=320), "max_batch_size = 4\n")
    (root / "det").mkdir()
    (root / "det" / "config.toml").write_text(
        'platform = "peregrine_detection"\nmax_batch_size = 4\n\n[detection]\ndetector = "yolov5n"\n'
        f"max_pixels = {MAX_PIXELS}\n\n[dynamic_batching]\nmax_queue_delay_us = 1000\n")
    s = PeregrineServer(ServerConfig(model_repository=root, grpc_port=0, http_port=None))
    s.start()
    yield s
    s.stop(grace=1.0)


@pytest.fixture(scope="module")
def stub(server: PeregrineServer) -> Iterator[det_grpc.DetectionServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield det_grpc.DetectionServiceStub(channel)


def _boxes(response: det.DetectResponse) -> list[tuple[float, ...]]:
    return [(b.x1, b.y1, b.x2, b.y2, b.score, b.class_id) for r in response.results for b in r.boxes]


@st.composite
def detect_requests(draw: st.DrawFn) -> det.DetectRequest:
    request = det.DetectRequest(model_name="det")
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["encoded", "seed", "raw"]))
        if kind == "raw":
            data, height, width, channels = draw(raw_images())
            request.images.append(det.Image(raw=det.RawImage(height=min(height, (1 << 32) - 1),
                                                             width=min(width, (1 << 32) - 1),
                                                             channels=channels, data=data)))
        else:
            data = draw(encoded) if kind == "encoded" else SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            request.images.append(det.Image(encoded=data))
    if draw(st.booleans()):
        request.options.score_threshold = draw(st.floats(-1, 2, width=32) | st.just(float("nan")))
    if draw(st.booleans()):
        request.options.max_detections = draw(st.integers(0, 400))
    return request


@settings(FUZZ, max_examples=300)
@given(request=detect_requests())
def test_random_detect_requests_get_documented_answers(
        rss: PeakRss, stub: det_grpc.DetectionServiceStub, request: det.DetectRequest) -> None:
    try:
        response = stub.Detect(request, timeout=30)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
        assert len(e.details()) < 2048
        event("INVALID_ARGUMENT")
        return
    event("OK")
    assert len(response.results) == len(request.images)


def test_the_server_is_live_and_correct_after(server: PeregrineServer, stub: det_grpc.DetectionServiceStub) -> None:
    """Run after the random requests: the same photograph gets the same boxes from this server as from a
    fresh one, and no request still holds decoded bytes."""
    import gc
    import time

    photo = det.DetectRequest(model_name="det", images=[det.Image(encoded=SEEDS["png"]),
                                                        det.Image(encoded=SEEDS["jpeg"])])
    after = _boxes(stub.Detect(photo, timeout=30))
    fresh = PeregrineServer(ServerConfig(model_repository=server.config.model_repository, grpc_port=0,
                                         http_port=None))
    fresh.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{fresh.port}") as channel:
            want = _boxes(det_grpc.DetectionServiceStub(channel).Detect(photo, timeout=30))
    finally:
        fresh.stop(grace=1.0)
    assert after == want
    deadline = time.monotonic() + 5
    while images.IN_FLIGHT.held and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.02)
    assert images.IN_FLIGHT.held == 0



def test_a_broken_or_buried_exif_block_leaves_the_photograph_as_stored() -> None:
    """EXIF is read from a bounded walk of the JPEG's segments and by Pillow's parser; an EXIF block that
    does not parse, states an orientation outside 1..8, or comes after more segments than a camera writes
    (here 5,000 empty APP15 segments: the walk stops after images._JPEG_MAX_SEGMENTS), is not applied,
    and the file decodes as stored."""
    stored = images.decode_image(SEEDS["jpeg"], "f")
    soi, rest = SEEDS["jpeg"][:2], SEEDS["jpeg"][2:]

    def app1(payload: bytes) -> bytes:
        return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload

    turned = Image.Exif()
    turned[0x0112] = 6
    good = app1(turned.tobytes())  # Pillow writes the block with its "Exif\0\0" prefix, as JPEG's APP1 holds it
    assert images.decode_image(soi + good + rest, "f").shape == (48, 32, 3)  # the block itself works
    for bad in (app1(b"Exif\x00\x00" + b"\x00" * 40), app1(b"Exif\x00\x00MM\x00*\xff\xff\xff\xff"),
                app1(b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff"), b"\xff\xef\x00\x02" * 5000 + good):
        frame = images.decode_image(soi + bad + rest, "f")
        assert np.array_equal(frame, stored)
    wrong = Image.Exif()
    wrong[0x0112] = 77
    assert np.array_equal(images.decode_image(_encode(np.ascontiguousarray(stored), "PNG", exif=wrong.tobytes()),
                                              "f"), stored)


def _tiled_tiff(width: int, height: int, tile: int, whole: bool = True) -> bytes:
    """An RGB TIFF of ``width`` x ``height`` pixels stored as one deflated ``tile`` x ``tile`` tile of zeros
    (``whole``: all of the tile's bytes; else only its first KiB, enough for a header to be read)."""
    data = zlib.compress(b"\0" * (tile * tile * 3 if whole else 1024), 9)
    off_bps = 8 + len(data) + (len(data) & 1)
    off_ifd = off_bps + 8
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, off_bps), (259, 3, 1, 8), (262, 3, 1, 2),
               (277, 3, 1, 3), (284, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, 8),
               (325, 4, 1, len(data))]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += (struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1
                else struct.pack("<HHII", tag, kind, count, value))
    return (b"II*\0" + struct.pack("<I", off_ifd) + data + b"\0" * (len(data) & 1) + struct.pack("<HHH", 8, 8, 8)
            + b"\0\0" + ifd + struct.pack("<I", 0))


def test_a_tiff_tile_far_larger_than_its_image_is_refused_from_its_header() -> None:
    """libtiff decodes a tile whole: a 16 x 16 image in one 16384 x 16384 tile (1 MB of file) would cost 768 MB
    outside every decoded-bytes bound. Refused from the header; a tile of ordinary size decodes, and its
    bytes are counted as the decoder's working memory."""
    with pytest.raises(InvalidArgument) as e:
        images.open_encoded(_tiled_tiff(16, 16, 16384, whole=False), "images[0]")
    assert "images[0]" in e.value.message and "16384x16384" in e.value.message
    pending = images.open_encoded(_tiled_tiff(16, 16, 256), "images[0]")
    assert pending.working_bytes >= 256 * 256 * 8
    frame = pending.decode()
    assert frame.shape == (16, 16, 3) and not frame.any()
