"""Letterbox / resize / center crop against OpenCV, byte for byte, on every CPU tier.

``resize="linear"`` (the default) and ``"area"`` must give exactly the uint8 pixels of ``cv2.resize`` (then
ultralytics' ``copyMakeBorder`` padding for the letterbox): with ``scale=1.0`` and no mean/std the float
outputs are those integers, so they compare with ``assert_array_equal``. ``resize="float"`` (the float blend)
is checked against the NumPy reference in ``kernel_reference``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import kernel_reference as ref
import numpy as np
import peregrine.kernels as K
import pytest
from skimage import data

INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}
EXACT_MODES = ["linear", "area"]


def photographs() -> list[np.ndarray]:
    """Real photographs as BGR uint8 frames of different sizes."""
    return [np.ascontiguousarray(f()[..., ::-1]) for f in (data.astronaut, data.chelsea, data.coffee, data.rocket)]


def cv2_resize(frame: np.ndarray, new_w: int, new_h: int, resize: str = "linear") -> np.ndarray:
    """cv2.resize as ultralytics calls it (not called when the size does not change)."""
    frame = np.ascontiguousarray(frame)
    if (frame.shape[1], frame.shape[0]) == (new_w, new_h):
        return frame
    return cv2.resize(frame, (new_w, new_h), interpolation=INTERPOLATION[resize])


def opencv_letterbox(
    frame: np.ndarray, height: int, width: int, pad: int = 114, resize: str = "linear", swap_rb: bool = True
) -> np.ndarray:
    """ultralytics' LetterBox(auto=False) with OpenCV, then BGR->RGB and HWC->CHW: uint8 [3, H, W]."""
    new_w, new_h, left, top, right, bottom, _ = ref.letterbox_geometry(*frame.shape[:2], height, width)
    resized = cv2_resize(frame, new_w, new_h, resize)
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad, pad, pad))
    return (padded[..., ::-1] if swap_rb else padded).transpose(2, 0, 1)


def opencv_place(
    frame: np.ndarray, new_w: int, new_h: int, left: int, top: int, height: int, width: int, pad, resize: str
) -> np.ndarray:
    """cv2.resize to (new_w, new_h), pasted at (left, top) on a pad canvas (cropped where it sticks out):
    uint8 [H, W, 3] in the frame's channel order."""
    resized = cv2_resize(frame, new_w, new_h, resize)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = pad
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(height, top + new_h), min(width, left + new_w)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = resized[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


def poisoned(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    return np.full(shape, np.nan, dtype)


def random_frame(rng: np.random.Generator, h: int, w: int, strided: bool = False) -> np.ndarray:
    """Seeded uint8 [h, w, 3]; strided: a crop of a wider and taller buffer (rows padded, offset start)."""
    if not strided:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    big = rng.integers(0, 256, (h + 3, w + int(rng.integers(1, 9)), 3), dtype=np.uint8)
    frame = big[2 : 2 + h, 1 : 1 + w]
    assert not frame.flags.c_contiguous or h == 1
    return frame


@dataclass
class Case:
    frame: np.ndarray
    height: int
    width: int
    pad: int
    swap_rb: bool
    dtype: type

    def __str__(self) -> str:
        kind = "strided " if not self.frame.flags.c_contiguous else ""
        return (
            f"{kind}{self.frame.shape[0]}x{self.frame.shape[1]} -> {self.height}x{self.width}, pad {self.pad}, "
            f"swap_rb {self.swap_rb}, {np.dtype(self.dtype).name}"
        )


#: Frame size -> model size pairs that take every path of cv2.resize: 1-pixel frames, single rows and
#: columns, odd sizes, huge downscales (fractional area), upscales (area with an upscale is bilinear),
#: exact 2x (cv2 switches INTER_LINEAR to its 2x2 box) and 3x, no resize at all (a copy).
EDGE_CASES = [
    ((1, 1), (64, 64)),
    ((1, 317), (96, 128)),
    ((317, 1), (96, 128)),
    ((2, 3), (1, 1)),
    ((5, 7), (640, 640)),
    ((7, 5), (641, 639)),
    ((37, 61), (96, 128)),
    ((61, 37), (97, 131)),
    ((480, 640), (240, 320)),
    ((360, 640), (120, 320)),
    ((640, 640), (640, 640)),
    ((641, 639), (320, 320)),
    ((1080, 1920), (640, 640)),
    ((3000, 4000), (64, 64)),
    ((3000, 4000), (640, 640)),
]


def random_cases(rng: np.random.Generator, n: int) -> Iterator[Case]:
    """Seeded letterbox cases: random frame and model sizes (some exact integer factors, some 1-pixel wide
    or tall, some strided), random pad value and channel order, FP32 or FP16."""
    for _ in range(n):
        kind = rng.integers(0, 5)
        if kind == 0:
            h, w = rng.integers(1, 40, 2)
        elif kind == 1:
            h, w = (1, rng.integers(1, 700)) if rng.random() < 0.5 else (rng.integers(1, 700), 1)
        else:
            h, w = rng.integers(2, 500, 2)
        height, width = (int(v) for v in rng.integers(1, 300, 2))
        if rng.random() < 0.2:  # integer factors: cv2's box paths
            k = int(rng.integers(1, 5))
            height, width = max(1, int(h) // k), max(1, int(w) // k)
            h, w = height * k, width * k
        yield Case(
            random_frame(rng, int(h), int(w), strided=bool(rng.random() < 0.3)),
            height,
            width,
            int(rng.integers(0, 256)),
            bool(rng.random() < 0.5),
            np.float16 if rng.random() < 0.3 else np.float32,
        )


def check_letterbox(case: Case, resize: str) -> None:
    out = poisoned((1, 3, case.height, case.width), case.dtype)
    K.letterbox_into(out, [case.frame], scale=1.0, pad_value=case.pad, swap_rb=case.swap_rb, resize=resize)
    expected = opencv_letterbox(case.frame, case.height, case.width, case.pad, resize, case.swap_rb)
    np.testing.assert_array_equal(out[0], expected.astype(case.dtype), err_msg=f"{resize}: {case}")


# ---------------------------------------------------------------------------------------------------------
# resize="linear" / "area": cv2's bytes
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resize", EXACT_MODES)
def test_letterbox_equals_cv2_on_random_sizes(tier: str, resize: str) -> None:
    for case in random_cases(np.random.default_rng(1300 + len(resize)), 80):
        check_letterbox(case, resize)


@pytest.mark.parametrize("resize", EXACT_MODES)
@pytest.mark.parametrize(("shape", "size"), EDGE_CASES, ids=[f"{s[0]}x{s[1]}-{m[0]}x{m[1]}" for s, m in EDGE_CASES])
def test_letterbox_equals_cv2_on_edge_sizes(
    tier: str, rng: np.random.Generator, resize: str, shape: tuple[int, int], size: tuple[int, int]
) -> None:
    for strided in (False, True):
        check_letterbox(Case(random_frame(rng, *shape, strided=strided), *size, 114, True, np.float32), resize)


@pytest.mark.parametrize("resize", EXACT_MODES)
def test_batch_of_mixed_sizes_equals_cv2(tier: str, rng: np.random.Generator, resize: str) -> None:
    shapes = [(480, 640), (97, 33), (1, 50), (50, 1), (128, 128), (300, 451), (64, 96)]
    frames = [random_frame(rng, h, w, strided=i % 2 == 1) for i, (h, w) in enumerate(shapes)]
    for dtype in (np.float32, np.float16):
        out = poisoned((len(frames), 3, 128, 128), dtype)
        params = K.letterbox_into(out, frames, scale=1.0, pad_value=(7, 7, 7), resize=resize)
        for i, frame in enumerate(frames):
            expected = opencv_letterbox(frame, 128, 128, 7, resize).astype(dtype)
            np.testing.assert_array_equal(out[i], expected, err_msg=f"{resize} frame {i} {frame.shape}")
            new_w, new_h, left, top, *_ = ref.letterbox_geometry(*frame.shape[:2], 128, 128)
            np.testing.assert_allclose(params[i], ref.letterbox_params(frame.shape, new_w, new_h, left, top), rtol=1e-6)


@pytest.mark.parametrize("resize", EXACT_MODES)
def test_per_channel_pad_and_channel_order(tier: str, rng: np.random.Generator, resize: str) -> None:
    frame = random_frame(rng, 70, 201)
    for swap_rb in (False, True):
        tensor, _ = K.letterbox([frame], (96, 128), scale=1.0, pad_value=(10, 20, 30), swap_rb=swap_rb, resize=resize)
        new_w, new_h, left, top, *_ = ref.letterbox_geometry(70, 201, 96, 128)
        canvas = opencv_place(
            frame, new_w, new_h, left, top, 96, 128, (10, 20, 30)[::-1] if swap_rb else (10, 20, 30), resize
        )
        expected = (canvas[..., ::-1] if swap_rb else canvas).transpose(2, 0, 1)
        np.testing.assert_array_equal(tensor[0], expected.astype(np.float32))


def ultralytics_tensor(pixels: np.ndarray, dtype=np.float32) -> np.ndarray:
    """ultralytics' conversion of the letterboxed uint8 image: ``im.float() / 255`` (float32, correctly rounded
    division), then ``.half()`` for FP16 models."""
    return (pixels.astype(np.float32) / np.float32(255)).astype(dtype)


def normalised_tensor(pixels: np.ndarray, scale: float, mean, std, dtype=np.float32) -> np.ndarray:
    """[3, H, W] uint8 -> (v * scale - mean[c]) / std[c] computed in double, rounded once to float32 (FP16:
    rounded from that float32)."""
    v = pixels.astype(np.float64)
    m = np.asarray(mean, np.float64)[:, None, None]
    s = np.asarray(std, np.float64)[:, None, None]
    return ((v * scale - m) / s).astype(np.float32).astype(dtype)


def test_every_byte_value_is_ultralytics_float32(tier: str) -> None:
    """All 256 byte values through every conversion path (a copy, a box, a bilinear resize; FP32 and FP16):
    float32(v) / float32(255) exactly, which float32(v) * float32(1/255) is not for 126 of them."""
    v = np.arange(256, dtype=np.float32)
    assert int((v * np.float32(1 / 255) != v / np.float32(255)).sum()) == 126  # what the old conversion missed
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    frame = np.ascontiguousarray(np.stack([values, values.T, 255 - values], axis=2))
    for resize in EXACT_MODES:
        for dtype in (np.float32, np.float16):
            out, _ = K.letterbox([frame], 16, dtype=dtype, resize=resize)  # the same size: a copy
            np.testing.assert_array_equal(out[0], ultralytics_tensor(frame[..., ::-1].transpose(2, 0, 1), dtype))
            big = np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1)  # 32x32 -> 16x16: cv2's 2x2 box, same values
            out, _ = K.letterbox([big], 16, dtype=dtype, resize=resize)
            np.testing.assert_array_equal(out[0], ultralytics_tensor(frame[..., ::-1].transpose(2, 0, 1), dtype))
            pad, _ = K.letterbox([frame[:8]], 16, dtype=dtype, resize=resize, pad_value=(0, 114, 255))
            np.testing.assert_array_equal(pad[0, :, 0, 0], ultralytics_tensor(np.array([0, 114, 255]), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("resize", EXACT_MODES)
def test_default_scale_is_ultralytics_float32(tier: str, resize: str, dtype: type) -> None:
    """The usual call (scale 1/255, pad 114): out == cv2.resize bytes -> copyMakeBorder ->
    astype(float32) / float32(255) exactly (0 ULP), pad included; FP16: that float32 as float16."""
    frames = photographs()
    out = poisoned((len(frames), 3, 640, 640), dtype)
    params = K.letterbox_into(out, frames, resize=resize)
    for i, frame in enumerate(frames):
        expected = ultralytics_tensor(opencv_letterbox(frame, 640, 640, resize=resize), dtype)
        np.testing.assert_array_equal(out[i], expected)
        new_w, new_h, left, top, *_ = ref.letterbox_geometry(*frame.shape[:2], 640, 640)
        np.testing.assert_allclose(params[i], ref.letterbox_params(frame.shape, new_w, new_h, left, top), rtol=1e-6)
    for case in random_cases(np.random.default_rng(1400 + len(resize)), 40):
        out = poisoned((1, 3, case.height, case.width), dtype)
        K.letterbox_into(out, [case.frame], pad_value=case.pad, swap_rb=case.swap_rb, resize=resize)
        pixels = opencv_letterbox(case.frame, case.height, case.width, case.pad, resize, case.swap_rb)
        np.testing.assert_array_equal(out[0], ultralytics_tensor(pixels, dtype), err_msg=f"{resize}: {case}")


def test_linear_is_the_default(tier: str) -> None:
    frames = photographs()
    default, _ = K.letterbox(frames, 320)
    linear, _ = K.letterbox(frames, 320, resize="linear")
    blended, _ = K.letterbox(frames, 320, resize="float")
    np.testing.assert_array_equal(default, linear)
    assert not np.array_equal(default, blended)  # the float blend is not rounded to uint8


@pytest.mark.parametrize("resize", EXACT_MODES)
@pytest.mark.parametrize(
    ("scale", "mean", "std"),
    [
        (1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
        (1 / 127.5, (1.0, 1.0, 1.0), None),  # [-1, 1]
        (1.0, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),  # ImageNet in pixel units
        (1 / 255, None, (0.5, 0.25, 2.0)),  # a pure scaling per channel
    ],
)
def test_mean_std_normalisation(tier: str, rng: np.random.Generator, resize: str, scale: float, mean, std) -> None:
    """out == float32((cv2 byte * scale - mean) / std) computed in double, pixels and pad alike; FP16 rounded
    from that float32."""
    frames = [random_frame(rng, h, w) for h, w in [(50, 70), (90, 33), (64, 64)]]
    pad = (10, 20, 30)
    mean3 = (0.0,) * 3 if mean is None else mean
    std3 = (1.0,) * 3 if std is None else std
    for dtype in (np.float32, np.float16):
        tensor, _ = K.letterbox(
            frames, (64, 80), scale=scale, mean=mean, std=std, pad_value=pad, swap_rb=False, dtype=dtype, resize=resize
        )
        for i, frame in enumerate(frames):
            new_w, new_h, left, top, *_ = ref.letterbox_geometry(*frame.shape[:2], 64, 80)
            canvas = opencv_place(frame, new_w, new_h, left, top, 64, 80, pad, resize)
            expected = normalised_tensor(canvas.transpose(2, 0, 1), scale, mean3, std3, dtype)
            np.testing.assert_array_equal(tensor[i], expected, err_msg=f"{np.dtype(dtype).name} frame {i}")
            np.testing.assert_allclose(  # and that is the plain float64 formula, to float32 precision
                tensor[i].astype(np.float64),
                ref.to_tensor(canvas.astype(np.float64), False, scale, mean3, std3),
                rtol=1e-3 if dtype == np.float16 else 1e-6,
                atol=1e-3 if dtype == np.float16 else 1e-6,
            )


@pytest.mark.parametrize("resize", EXACT_MODES)
def test_resize_equals_cv2(tier: str, rng: np.random.Generator, resize: str) -> None:
    frames = [*photographs(), random_frame(rng, 123, 77, strided=True), random_frame(rng, 1, 9)]
    for size in [(300, 500), (64, 64), (1000, 17)]:
        tensor, params = K.resize(frames, size, swap_rb=False, scale=1.0, resize=resize)
        for i, frame in enumerate(frames):
            expected = cv2_resize(frame, size[1], size[0], resize).transpose(2, 0, 1)
            np.testing.assert_array_equal(tensor[i], expected.astype(np.float32), err_msg=f"{frame.shape} -> {size}")
            np.testing.assert_allclose(params[i], [size[1] / frame.shape[1], size[0] / frame.shape[0], 0, 0], rtol=1e-6)


@pytest.mark.parametrize("resize", EXACT_MODES)
@pytest.mark.parametrize(
    ("shape", "resize_shorter", "size"),
    [
        ((300, 451), None, (224, 224)),
        ((300, 451), 256, (224, 224)),
        ((451, 300), 200, (224, 160)),
        ((100, 90), 300, (224, 224)),
        ((500, 480), 230, (224, 300)),
    ],
)
def test_center_crop_equals_cv2(
    tier: str,
    rng: np.random.Generator,
    resize: str,
    shape: tuple[int, int],
    resize_shorter: int | None,
    size: tuple[int, int],
) -> None:
    frame = random_frame(rng, *shape, strided=True)
    out = poisoned((1, 3, *size))
    params = K.center_crop_into(out, [frame], resize_shorter=resize_shorter, pad_value=7, scale=1.0, resize=resize)
    h, w = shape
    if resize_shorter is None:
        r = max(size[0] / h, size[1] / w)
        new_w, new_h = max(size[1], round(w * r)), max(size[0], round(h * r))
    elif w <= h:  # torchvision Resize(int)
        new_w, new_h = resize_shorter, int(resize_shorter * h / w)
    else:
        new_h, new_w = resize_shorter, int(resize_shorter * w / h)
    left, top = -round((new_w - size[1]) / 2), -round((new_h - size[0]) / 2)
    canvas = opencv_place(frame, new_w, new_h, left, top, *size, 7, resize)
    np.testing.assert_array_equal(out[0], canvas[..., ::-1].transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_allclose(params[0], [new_w / w, new_h / h, left, top], rtol=1e-6)


@pytest.mark.parametrize("resize", EXACT_MODES)
def test_frame_larger_than_8k(tier: str, rng: np.random.Generator, resize: str) -> None:
    frame = np.empty((900, 8200, 3), np.uint8)
    frame[:] = rng.integers(0, 256, (1, 8200, 3), dtype=np.uint8)  # cheap to make, still varies per column
    frame[::7] = rng.integers(0, 256, (1, 8200, 3), dtype=np.uint8)
    tensor, _ = K.letterbox([frame], 320, swap_rb=False, scale=1.0, resize=resize)
    expected = opencv_letterbox(frame, 320, 320, resize=resize, swap_rb=False)
    np.testing.assert_array_equal(tensor[0], expected.astype(np.float32))


def test_tiers_agree_bit_for_bit(rng: np.random.Generator) -> None:
    """Native and numba give the same floats for any transform (no fused multiply-adds in either)."""
    if not K.has_native():
        pytest.skip("native module not built")
    frames = [random_frame(rng, h, w, strided=h % 2 == 1) for h, w in [(71, 130), (130, 97), (300, 200), (20, 20)]]
    kwargs = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pad_value=(1, 2, 3))
    for resize in EXACT_MODES:
        for dtype in (np.float32, np.float16):
            results = []
            for tier in (K.NATIVE_CPU, K.NUMBA):
                previous = K.set_cpu_tier(tier)
                try:
                    results.append(K.letterbox(frames, (100, 150), dtype=dtype, resize=resize, **kwargs)[0])
                finally:
                    K.set_cpu_tier(previous)
            np.testing.assert_array_equal(results[0], results[1], err_msg=f"{resize} {np.dtype(dtype).name}")


def test_native_threads_agree(rng: np.random.Generator) -> None:
    if not K.has_native():
        pytest.skip("native module not built")
    frames = [random_frame(rng, h, 97) for h in (71, 130, 55)]
    previous = K.set_cpu_tier(K.NATIVE_CPU)
    try:
        for resize in ("linear", "area", "float"):
            one, _ = K.letterbox(frames, 100, num_threads=1, resize=resize)
            many, _ = K.letterbox(frames, 100, num_threads=3, resize=resize)
            np.testing.assert_array_equal(one, many)
    finally:
        K.set_cpu_tier(previous)


# ---------------------------------------------------------------------------------------------------------
# Placement and modes that do not depend on the resize
# ---------------------------------------------------------------------------------------------------------


def test_four_d_batch_and_empty_batch(tier: str, rng: np.random.Generator) -> None:
    batch = rng.integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    tensor, params = K.letterbox(batch, 64)
    listed, _ = K.letterbox(list(batch), 64)
    np.testing.assert_array_equal(tensor, listed)
    assert params.shape == (3, 4) and params.dtype == np.float32
    empty, empty_params = K.letterbox([], 64)
    assert empty.shape == (0, 3, 64, 64) and empty_params.shape == (0, 4)


@pytest.mark.parametrize("resize", ["linear", "area", "float"])
def test_no_scaleup_keeps_small_frames(tier: str, rng: np.random.Generator, resize: str) -> None:
    frame = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    tensor, params = K.letterbox([frame], 64, scaleup=False, swap_rb=False, scale=1.0, resize=resize)
    np.testing.assert_array_equal(params[0], [1, 1, 17, 22])
    np.testing.assert_array_equal(tensor[0, :, 22:42, 17:47], frame.transpose(2, 0, 1))
    assert (tensor[0, :, :22] == 114).all()


# ---------------------------------------------------------------------------------------------------------
# resize="float": the float blend (INTER_LINEAR coordinates, no rounding to uint8)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(640, 640), (320, 320), (256, 416)])
def test_float_letterbox_within_one_level_of_opencv(tier: str, size: tuple[int, int]) -> None:
    frames = photographs()
    out = poisoned((len(frames), 3, *size))
    K.letterbox_into(out, frames, resize="float")
    for i, frame in enumerate(frames):
        expected = opencv_letterbox(frame, *size).astype(np.float32)
        assert np.abs(out[i] * 255 - expected).max() <= 1.0 + 1e-3


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (3, 5), (37, 61), (61, 37), (3, 4000), (4000, 3), (480, 640), (641, 639)],
)
def test_float_letterbox_matches_reference(tier: str, rng: np.random.Generator, shape: tuple[int, int]) -> None:
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = poisoned((1, 3, 96, 128))
    params = K.letterbox_into(out, [frame], resize="float")
    np.testing.assert_allclose(out[0], ref.letterbox(frame, 96, 128), rtol=0, atol=2e-6)
    new_w, new_h, left, top, *_ = ref.letterbox_geometry(*shape, 96, 128)
    np.testing.assert_allclose(params[0], ref.letterbox_params(shape, new_w, new_h, left, top), rtol=1e-6)


def test_float_batch_of_different_sizes_and_normalisation(tier: str, rng: np.random.Generator) -> None:
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(50, 70), (90, 33), (64, 64)]]
    frames.append(random_frame(rng, 41, 29, strided=True))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tensor, _ = K.letterbox(frames, (64, 80), mean=mean, std=std, pad_value=(10, 20, 30), swap_rb=False, resize="float")
    for i, frame in enumerate(frames):
        new_w, new_h, left, top, *_ = ref.letterbox_geometry(*frame.shape[:2], 64, 80)
        resized = ref.bilinear_resize(frame, new_w, new_h)
        canvas = np.empty((64, 80, 3))
        canvas[:] = (10, 20, 30)
        canvas[top : top + new_h, left : left + new_w] = resized
        expected = ref.to_tensor(canvas, False, 1 / 255, mean, std)
        np.testing.assert_allclose(tensor[i], expected, rtol=0, atol=2e-5)


def test_float_float16_output(tier: str, rng: np.random.Generator) -> None:
    frame = rng.integers(0, 256, (45, 77, 3), dtype=np.uint8)
    out = np.full((1, 3, 64, 64), np.nan, np.float16)
    K.letterbox_into(out, [frame], resize="float")
    expected = ref.letterbox(frame, 64, 64)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out[0].astype(np.float32), expected, rtol=1e-3, atol=1e-4)
    tensor, _ = K.letterbox([frame], 64, dtype=np.float16, resize="float")
    assert tensor.dtype == np.float16
    np.testing.assert_array_equal(tensor, out)


@pytest.mark.parametrize(("resize_shorter", "size"), [(None, (224, 224)), (256, (224, 224)), (200, (224, 160))])
def test_float_center_crop_matches_reference(
    tier: str, rng: np.random.Generator, resize_shorter: int | None, size: tuple[int, int]
) -> None:
    frame = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    tensor, params = K.center_crop([frame], size, resize_shorter=resize_shorter, pad_value=7, resize="float")
    h, w = frame.shape[:2]
    if resize_shorter is None:
        r = max(size[0] / h, size[1] / w)
        new_w, new_h = max(size[1], round(w * r)), max(size[0], round(h * r))
    else:  # torchvision Resize(int) with h < w
        new_h, new_w = resize_shorter, int(resize_shorter * w / h)
    left, top = -round((new_w - size[1]) / 2), -round((new_h - size[0]) / 2)
    expected = ref.to_tensor(ref.place(ref.bilinear_resize(frame, new_w, new_h), left, top, *size, 7), True, 1 / 255)
    np.testing.assert_allclose(tensor[0], expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(params[0], [new_w / w, new_h / h, left, top], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------------------------------------


class TestBadArguments:
    def frame(self) -> np.ndarray:
        return np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)

    @pytest.mark.parametrize(
        ("frames", "error", "match"),
        [
            ([np.zeros((8, 8, 3), np.float32) + 1], TypeError, r"frames\[0\]: expected uint8"),
            ([np.ones((8, 8, 2), np.uint8)], ValueError, r"frames\[0\].*3 channels"),
            ([np.ones((8, 8, 4), np.uint8)], ValueError, r"frames\[0\].*3 channels"),
            ([np.ones((8, 8), np.uint8)], ValueError, r"frames\[0\]"),
            ([np.ones((0, 8, 3), np.uint8)], ValueError, r"frames\[0\]: expected a non-empty"),
            ([np.ones((8, 16, 3), np.uint8)[:, ::2]], ValueError, r"frames\[0\]: expected a C-contiguous"),
            ([np.ones((3, 8, 8), np.uint8).transpose(1, 2, 0)], ValueError, r"frames\[0\]: expected a C-contiguous"),
            ([np.ones((16, 8, 3), np.uint8)[::-2]], ValueError, r"frames\[0\]: .*rows of contiguous pixels"),
            ([[1, 2, 3]], TypeError, r"frames\[0\]"),
            (np.ones((8, 8, 3), np.uint8), ValueError, r"frames: expected a sequence"),
            ("abc", TypeError, r"frames"),
        ],
    )
    def test_bad_frames(self, tier: str, frames: object, error: type, match: str) -> None:
        with pytest.raises(error, match=match):
            K.letterbox(frames, 32)

    def test_bad_out(self, tier: str) -> None:
        frames = [self.frame(), self.frame()]
        with pytest.raises(ValueError, match=r"out: expected \[2, 3, H, W\]"):
            K.letterbox_into(np.empty((1, 3, 16, 16), np.float32), frames)
        with pytest.raises(TypeError, match="out: expected float32 or float16"):
            K.letterbox_into(np.empty((2, 3, 16, 16), np.float64), frames)
        with pytest.raises(ValueError, match="out: expected a C-contiguous"):
            K.letterbox_into(np.empty((2, 3, 16, 32), np.float32)[..., ::2], frames)
        readonly = np.empty((2, 3, 16, 16), np.float32)
        readonly.flags.writeable = False
        with pytest.raises(ValueError, match="out: expected a writeable"):
            K.letterbox_into(readonly, frames)
        with pytest.raises(TypeError, match=r"out: expected a numpy\.ndarray"):
            K.letterbox_into([[0.0]], frames)

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"size": 0}, ValueError, "size"),
            ({"size": (10, 10, 10)}, ValueError, "size"),
            ({"dtype": np.int32}, TypeError, "dtype"),
            ({"std": (1, 0, 1)}, ValueError, "std"),
            ({"mean": (1, 2)}, ValueError, "mean"),
            ({"scale": float("nan")}, ValueError, "scale"),
            ({"num_threads": -1}, ValueError, "num_threads"),
            ({"resize": "cubic"}, ValueError, r"resize: expected one of 'linear', 'area', 'float', got 'cubic'"),
            ({"resize": "LINEAR"}, ValueError, "resize"),
            ({"resize": None}, ValueError, "resize"),
        ],
    )
    def test_bad_options(self, tier: str, kwargs: dict, error: type, match: str) -> None:
        with pytest.raises(error, match=match):
            K.letterbox([self.frame()], **kwargs)

    def test_every_function_checks_resize(self, tier: str) -> None:
        frames = [self.frame()]
        out = np.empty((1, 3, 8, 8), np.float32)
        calls = [
            lambda: K.letterbox(frames, 8, resize="nearest"),
            lambda: K.letterbox_into(out, frames, resize="nearest"),
            lambda: K.resize(frames, 8, resize="nearest"),
            lambda: K.resize_into(out, frames, resize="nearest"),
            lambda: K.center_crop(frames, 8, resize="nearest"),
            lambda: K.center_crop_into(out, frames, resize="nearest"),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="resize: expected one of 'linear', 'area', 'float'"):
                call()

    def test_native_binding_checks_its_own_arguments(self) -> None:
        if not K.has_native():
            pytest.skip("native module not built")
        from peregrine.kernels import _native

        frame = self.frame()
        ok = dict(src_channel=(2, 1, 0), mul=(1.0, 1.0, 1.0), add=(0.0, 0.0, 0.0), pad=(0.0, 0.0, 0.0))
        placement = np.array([[8, 8, 0, 0]], np.int32)
        with pytest.raises(ValueError, match=r"placements\[0\]"):
            _native.resize_nchw([frame], np.array([[0, 8, 0, 0]], np.int32), 8, 8, **ok)
        with pytest.raises(ValueError, match="placements: expected shape"):
            _native.resize_nchw([frame], np.zeros((2, 4), np.int32), 8, 8, **ok)
        with pytest.raises(TypeError):
            _native.resize_nchw([frame], np.ones((1, 4), np.int64), 8, 8, **ok)
        with pytest.raises(ValueError, match="src_channel"):
            _native.resize_nchw([frame], placement, 8, 8, **{**ok, "src_channel": (0, 1, 3)})
        with pytest.raises(TypeError, match=r"frames\[0\]"):
            _native.resize_nchw([frame.astype(np.float32)], placement, 8, 8, **ok)
        with pytest.raises(ValueError, match="size"):
            _native.resize_nchw([frame], placement, 0, 8, **ok)
        with pytest.raises(ValueError, match="resize: expected 'linear', 'area' or 'float', got 'bogus'"):
            _native.resize_nchw([frame], placement, 8, 8, **ok, resize="bogus")
        with pytest.raises(ValueError, match=r"frames\[0\]: expected a C-contiguous"):
            _native.resize_nchw([np.ones((8, 16, 3), np.uint8)[:, ::2]], placement, 8, 8, **ok)
        tensor = _native.resize_nchw([frame], placement, 8, 8, **ok)  # linear by default: a copy here
        np.testing.assert_array_equal(tensor[0], frame[..., ::-1].transpose(2, 0, 1))
        with pytest.raises(ValueError, match=r"lut: expected shape \[3, 256\]"):
            _native.resize_nchw([frame], placement, 8, 8, **ok, lut=np.zeros((3, 255), np.float32))
        with pytest.raises(TypeError):
            _native.resize_nchw([frame], placement, 8, 8, **ok, lut=np.zeros((3, 256), np.float64))
        # the table decides every value; lut_scale is only a hint, checked against it (a wrong one changes nothing)
        lut = np.random.default_rng(3).normal(size=(3, 256)).astype(np.float32)
        expected = np.stack([lut[c][frame[..., 2 - c]] for c in range(3)])
        for lut_scale in [(0.0,) * 3, (1 / 255,) * 3, (1.0, 2.0, 3.0)]:
            for dtype in ("float32", "float16"):
                tensor = _native.resize_nchw([frame], placement, 8, 8, **ok, dtype=dtype, lut=lut, lut_scale=lut_scale)
                np.testing.assert_array_equal(tensor[0], expected.astype(dtype))


def test_a_dimension_of_length_one_may_have_any_stride(tier: str) -> None:
    """NumPy calls a [1, 1, 3] view of an RGBA pixel C-contiguous (strides [4, 4, 1]): a length-1 dimension's
    stride is never used, and the kernels take such frames as they are (found by fuzzing raw RGBA frames)."""
    rng = np.random.default_rng(7)
    frames = [rng.integers(1, 255, (1, 1, 4), np.uint8)[:, :, :3],  # strides [4, 4, 1]
              rng.integers(1, 255, (5, 1, 4), np.uint8)[:, :, :3].copy()]
    assert frames[0].strides == (4, 4, 1) and frames[0].flags.c_contiguous
    out = poisoned((2, 3, 32, 32))
    K.letterbox_into(out, frames, swap_rb=False, scale=1.0)
    for got, frame in zip(out, frames, strict=True):
        np.testing.assert_array_equal(got, opencv_letterbox(frame, 32, 32, swap_rb=False).astype(np.float32))
