"""Raw camera frames to RGB/BGR (``convert_raw``) against ``cv2.cvtColor``, byte for byte, on every CPU tier.

The reference is what cv_bridge does to make bgr8 of each ``sensor_msgs`` encoding: the cvtColor code per
encoding (ROS's bayer_rggb is OpenCV's BayerBG: OpenCV names a pattern by its second row's second and third
samples), 16-bit samples cut to their most significant byte first. Inputs are seeded random bytes (every
value, no smooth picture to hide an off-by-one neighbour), outputs are poisoned before the call.
"""

from __future__ import annotations

import cv2
import numpy as np
import peregrine.kernels as K
import pytest

BAYER_CODES = {"rggb": cv2.COLOR_BayerBG2BGR, "bggr": cv2.COLOR_BayerRG2BGR, "gbrg": cv2.COLOR_BayerGR2BGR,
               "grbg": cv2.COLOR_BayerGB2BGR}
# encoding -> (samples per pixel, bytes per sample, cvtColor code to BGR or None)
PLAIN = {
    "rgb8": (3, 1, cv2.COLOR_RGB2BGR), "bgr8": (3, 1, None), "8UC3": (3, 1, None),
    "rgba8": (4, 1, cv2.COLOR_RGBA2BGR), "bgra8": (4, 1, cv2.COLOR_BGRA2BGR), "8UC4": (4, 1, cv2.COLOR_BGRA2BGR),
    "mono8": (1, 1, cv2.COLOR_GRAY2BGR), "8UC1": (1, 1, cv2.COLOR_GRAY2BGR),
    "mono16": (1, 2, cv2.COLOR_GRAY2BGR), "16UC1": (1, 2, cv2.COLOR_GRAY2BGR),
    "rgb16": (3, 2, cv2.COLOR_RGB2BGR), "bgr16": (3, 2, None),
}
YUV = {"yuv422": cv2.COLOR_YUV2BGR_UYVY, "uyvy": cv2.COLOR_YUV2BGR_UYVY, "yuv422_yuy2": cv2.COLOR_YUV2BGR_YUY2,
       "yuyv": cv2.COLOR_YUV2BGR_YUY2, "yuy2": cv2.COLOR_YUV2BGR_YUY2}
BAYER = {f"bayer_{p}{bits}": (code, bits // 8) for p, code in BAYER_CODES.items() for bits in (8, 16)}
ALL = [*PLAIN, *YUV, *BAYER]


def samples_of(encoding: str) -> tuple[int, int]:
    """(samples per pixel, bytes per sample) as sent."""
    if encoding in PLAIN:
        return PLAIN[encoding][:2]
    return (2, 1) if encoding in YUV else (1, BAYER[encoding][1])


def random_frame(rng: np.random.Generator, encoding: str, height: int, width: int) -> np.ndarray:
    """Samples [height, width, samples] as the camera gives them: uint8, or uint16 (native byte order)."""
    samples, size = samples_of(encoding)
    dtype = np.uint16 if size == 2 else np.uint8
    return rng.integers(0, np.iinfo(dtype).max + 1, (height, width, samples), dtype=dtype)


def opencv_bgr(encoding: str, frame: np.ndarray) -> np.ndarray:
    """cv_bridge's bgr8 of the samples, with OpenCV."""
    pixels = (frame >> 8).astype(np.uint8) if frame.dtype == np.uint16 else frame
    if encoding in YUV:
        return cv2.cvtColor(np.ascontiguousarray(pixels), YUV[encoding])
    if encoding in BAYER:
        return cv2.cvtColor(np.ascontiguousarray(pixels[:, :, 0]), BAYER[encoding][0])
    code = PLAIN[encoding][2]
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return np.ascontiguousarray(pixels) if code is None else cv2.cvtColor(np.ascontiguousarray(pixels), code)


def wire_bytes(frame: np.ndarray, big_endian: bool = False, step: int = 0, pad_value: int = 0xA5) -> bytes:
    """The frame's rows as a driver sends them: 16-bit samples in the given byte order, rows padded to ``step``
    bytes with ``pad_value`` (padding must never show in the output)."""
    if frame.dtype == np.uint16:
        frame = frame.astype(">u2" if big_endian else "<u2")
    rows = frame.reshape(frame.shape[0], -1).view(np.uint8)
    if step and step > rows.shape[1]:
        padded = np.full((rows.shape[0], step), pad_value, np.uint8)
        padded[:, : rows.shape[1]] = rows
        rows = padded
    return rows.tobytes()


def poisoned(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 0x5A, np.uint8)


def convert_both(data: bytes, encoding: str, height: int, width: int, **kw: object) -> tuple[np.ndarray, np.ndarray]:
    """(BGR, RGB) converted into poisoned buffers."""
    bgr = K.convert_raw_into(poisoned(height, width), data, encoding, height, width, order="bgr", **kw)
    rgb = K.convert_raw_into(poisoned(height, width), data, encoding, height, width, order="rgb", **kw)
    return bgr, rgb


def test_the_encodings_are_cv_bridges() -> None:
    assert set(K.RAW_ENCODINGS) == set(ALL)
    assert len(K.RAW_ENCODINGS) == len(ALL)


@pytest.mark.parametrize("encoding", ALL)
def test_each_encoding_matches_opencv(tier: str, rng: np.random.Generator, encoding: str) -> None:
    for height, width in ((37, 62), (64, 48), (5, 4)):
        frame = random_frame(rng, encoding, height, width)
        want = opencv_bgr(encoding, frame)
        bgr, rgb = convert_both(wire_bytes(frame), encoding, height, width)
        np.testing.assert_array_equal(bgr, want, err_msg=f"{encoding} {height}x{width} bgr")
        np.testing.assert_array_equal(rgb, want[:, :, ::-1], err_msg=f"{encoding} {height}x{width} rgb")


@pytest.mark.parametrize("encoding", ["bayer_rggb8", "bayer_gbrg16", "yuyv", "yuv422", "rgb8", "mono16"])
def test_full_hd_frames_match_opencv(tier: str, rng: np.random.Generator, encoding: str) -> None:
    """1080p: many row blocks over the thread pool, and OpenCV's vectorized paths on its side."""
    frame = random_frame(rng, encoding, 1080, 1920)
    bgr, _ = convert_both(wire_bytes(frame), encoding, 1080, 1920)
    np.testing.assert_array_equal(bgr, opencv_bgr(encoding, frame))
    one = K.convert_raw(wire_bytes(frame), encoding, 1080, 1920, order="bgr", num_threads=1)
    np.testing.assert_array_equal(one, bgr)


@pytest.mark.parametrize("encoding", ["rgb8", "bgra8", "mono8", "mono16", "bgr16", "uyvy", "yuy2", "bayer_bggr8",
                                      "bayer_grbg16"])
def test_padded_rows(tier: str, rng: np.random.Generator, encoding: str) -> None:
    height, width = 23, 30
    frame = random_frame(rng, encoding, height, width)
    samples, size = samples_of(encoding)
    step = width * samples * size + 7
    data = wire_bytes(frame, step=step)
    want = opencv_bgr(encoding, frame)
    bgr, _ = convert_both(data, encoding, height, width, step=step)
    np.testing.assert_array_equal(bgr, want)
    # The last row may stop after its pixels (its padding is never read); bytes past the last row are ignored.
    short = data[: step * (height - 1) + width * samples * size]
    np.testing.assert_array_equal(K.convert_raw(short, encoding, height, width, step=step, order="bgr"), want)
    np.testing.assert_array_equal(K.convert_raw(data + b"\xff" * 9, encoding, height, width, step=step, order="bgr"),
                                  want)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "rgb16", "bgr16", "bayer_rggb16", "bayer_bggr16"])
def test_big_endian_16_bit(tier: str, rng: np.random.Generator, encoding: str) -> None:
    frame = random_frame(rng, encoding, 19, 26)
    want = opencv_bgr(encoding, frame)
    big, _ = convert_both(wire_bytes(frame, big_endian=True), encoding, 19, 26, is_bigendian=True)
    little, _ = convert_both(wire_bytes(frame, big_endian=False), encoding, 19, 26, is_bigendian=False)
    np.testing.assert_array_equal(big, want)
    np.testing.assert_array_equal(little, want)
    # The flag matters: read in the other order, the low bytes (random here) come out.
    wrong = K.convert_raw(wire_bytes(frame, big_endian=True), encoding, 19, 26, order="bgr")
    assert not np.array_equal(wrong, want)


@pytest.mark.parametrize("pattern", sorted(BAYER_CODES))
@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 9), (2, 2), (2, 7), (9, 2), (3, 3), (3, 8), (4, 3),
                                               (7, 9), (8, 11), (13, 13)])
def test_bayer_odd_and_tiny_sizes(tier: str, rng: np.random.Generator, pattern: str, height: int, width: int) -> None:
    """Any size, as OpenCV: odd sides continue the pattern; a side under 3 pixels gives a black frame."""
    encoding = f"bayer_{pattern}8"
    frame = random_frame(rng, encoding, height, width)
    bgr, _ = convert_both(wire_bytes(frame), encoding, height, width)
    np.testing.assert_array_equal(bgr, opencv_bgr(encoding, frame))
    if height < 3 or width < 3:
        assert not bgr.any()


def test_yuv_needs_an_even_width(tier: str) -> None:
    with pytest.raises(ValueError, match=r"^width: expected an even width"):
        K.convert_raw(bytes(2 * 7 * 3), "yuyv", 3, 7)


@pytest.mark.parametrize(("kwargs", "match", "error"), [
    ({"encoding": "rgb9"}, r"^encoding: expected one of rgb8, ", ValueError),
    ({"encoding": "RGB8"}, r"^encoding: ", ValueError),  # the exact spellings only
    ({"encoding": None}, r"^encoding: ", ValueError),
    ({"step": 29}, r"^step: expected 0 \(packed\) or at least 30 bytes per row", ValueError),
    ({"step": -1}, r"^step: ", ValueError),
    ({"data": bytes(30 * 3 - 1)}, r"^data: expected at least 90 bytes", ValueError),
    ({"data": [0] * 90}, r"^data: expected bytes", TypeError),
    ({"height": 0}, r"^height: ", ValueError),
    ({"width": (1 << 20) + 1}, r"^width: ", ValueError),
    ({"order": "rgba"}, r"^order: ", ValueError),
    ({"num_threads": -1}, r"^num_threads: ", ValueError),
])
def test_bad_arguments_name_the_argument(tier: str, kwargs: dict, match: str, error: type) -> None:
    args = {"data": bytes(90), "encoding": "rgb8", "height": 3, "width": 10, "step": 0, "order": "rgb",
            "num_threads": 0} | kwargs
    with pytest.raises(error, match=match):
        K.convert_raw(args.pop("data"), args.pop("encoding"), args.pop("height"), args.pop("width"), **args)


def test_bad_outputs(tier: str) -> None:
    data = bytes(2 * 4 * 3)
    with pytest.raises(ValueError, match=r"^out: expected uint8 \[2, 4, 3\]"):
        K.convert_raw_into(np.empty((2, 4, 4), np.uint8), data, "rgb8", 2, 4)
    with pytest.raises(ValueError, match=r"^out: "):
        K.convert_raw_into(np.empty((2, 4, 3), np.float32), data, "rgb8", 2, 4)
    readonly = np.empty((2, 4, 3), np.uint8)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out: expected a C-contiguous, writeable array"):
        K.convert_raw_into(readonly, data, "rgb8", 2, 4)


def test_numpy_data_is_read_as_its_bytes(tier: str, rng: np.random.Generator) -> None:
    frame = random_frame(rng, "mono16", 6, 8)
    np.testing.assert_array_equal(K.convert_raw(frame, "mono16", 6, 8, order="bgr"), opencv_bgr("mono16", frame))
    with pytest.raises(ValueError, match=r"^data: expected bytes or a C-contiguous array"):
        K.convert_raw(frame[:, ::2], "mono16", 6, 4)


def test_the_native_binding_checks_its_arguments() -> None:
    """The binding refuses what the Python side would (a direct caller gets a ValueError, not a crash)."""
    if not K.has_native():
        pytest.skip("the native module is not built")
    from peregrine.kernels import _native

    out = np.empty((4, 4, 3), np.uint8)
    data = np.zeros(16, np.uint8)
    with pytest.raises(ValueError, match=r"^data: expected at least 16 bytes"):
        _native.convert_raw_into(out, data[:15], 4, 4, 4, 3, 1, 1, False, False, 0, 0, False)
    with pytest.raises(ValueError, match=r"^step: expected at least 4"):
        _native.convert_raw_into(out, data, 4, 4, 3, 3, 1, 1, False, False, 0, 0, False)
    with pytest.raises(ValueError, match=r"^layout: "):
        _native.convert_raw_into(out, data, 4, 4, 4, 7, 1, 1, False, False, 0, 0, False)
    with pytest.raises(ValueError, match=r"^width: expected an even width"):
        _native.convert_raw_into(np.empty((2, 3, 3), np.uint8), data, 2, 3, 6, 2, 1, 1, False, False, 0, 0, False)
    with pytest.raises(ValueError, match=r"^out: expected uint8 \[4, 4, 3\]"):
        _native.convert_raw_into(np.empty((4, 4), np.uint8), data, 4, 4, 4, 3, 1, 1, False, False, 0, 0, False)
