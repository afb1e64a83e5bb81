"""Letterbox / resize / center crop against OpenCV on photographs and against the NumPy reference."""

from __future__ import annotations

import cv2
import kernel_reference as ref
import numpy as np
import peregrine.kernels as K
import pytest
from skimage import data


def photographs() -> list[np.ndarray]:
    """Real photographs as BGR uint8 frames of different sizes."""
    return [np.ascontiguousarray(f()[..., ::-1]) for f in (data.astronaut, data.chelsea, data.coffee, data.rocket)]


def opencv_letterbox(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """ultralytics' LetterBox + BGR->RGB + HWC->CHW with OpenCV, as uint8 [3, H, W]."""
    new_w, new_h, left, top, right, bottom, _ = ref.letterbox_geometry(*frame.shape[:2], height, width)
    resized = frame
    if (frame.shape[1], frame.shape[0]) != (new_w, new_h):
        resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    return padded[..., ::-1].transpose(2, 0, 1)


def poisoned(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    return np.full(shape, np.nan, dtype)


@pytest.mark.parametrize("size", [(640, 640), (320, 320), (256, 416)])
def test_letterbox_matches_opencv_on_photographs(tier: str, size: tuple[int, int]) -> None:
    frames = photographs()
    out = poisoned((len(frames), 3, *size))
    params = K.letterbox_into(out, frames)
    for i, frame in enumerate(frames):
        expected = opencv_letterbox(frame, *size).astype(np.float32)
        assert np.abs(out[i] * 255 - expected).max() <= 1.0 + 1e-3
        *_, left, top, _, _, r = ref.letterbox_geometry(*frame.shape[:2], *size)
        np.testing.assert_allclose(params[i], [r, r, left, top], rtol=1e-6)


def test_resize_matches_opencv_on_photographs(tier: str) -> None:
    frames = photographs()
    tensor, params = K.resize(frames, (300, 500), swap_rb=False)
    for i, frame in enumerate(frames):
        expected = cv2.resize(frame, (500, 300), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        assert np.abs(tensor[i] * 255 - expected).max() <= 1.0 + 1e-3
        np.testing.assert_allclose(params[i], [500 / frame.shape[1], 300 / frame.shape[0], 0, 0], rtol=1e-6)


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (3, 5), (37, 61), (61, 37), (3, 4000), (4000, 3), (480, 640), (641, 639)],
)
def test_letterbox_matches_reference(tier: str, rng: np.random.Generator, shape: tuple[int, int]) -> None:
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = poisoned((1, 3, 96, 128))
    params = K.letterbox_into(out, [frame])
    np.testing.assert_allclose(out[0], ref.letterbox(frame, 96, 128), rtol=0, atol=2e-6)
    _, _, left, top, _, _, r = ref.letterbox_geometry(*shape, 96, 128)
    np.testing.assert_allclose(params[0], [r, r, left, top], rtol=1e-6)


def test_batch_of_different_sizes_and_normalisation(tier: str, rng: np.random.Generator) -> None:
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(50, 70), (90, 33), (64, 64)]]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tensor, _ = K.letterbox(frames, (64, 80), mean=mean, std=std, pad_value=(10, 20, 30), swap_rb=False)
    for i, frame in enumerate(frames):
        new_w, new_h, left, top, *_ = ref.letterbox_geometry(*frame.shape[:2], 64, 80)
        resized = ref.bilinear_resize(frame, new_w, new_h)
        canvas = np.empty((64, 80, 3))
        canvas[:] = (10, 20, 30)
        canvas[top : top + new_h, left : left + new_w] = resized
        expected = ref.to_tensor(canvas, False, 1 / 255, mean, std)
        np.testing.assert_allclose(tensor[i], expected, rtol=0, atol=2e-5)


def test_float16_output(tier: str, rng: np.random.Generator) -> None:
    frame = rng.integers(0, 256, (45, 77, 3), dtype=np.uint8)
    out = np.full((1, 3, 64, 64), np.nan, np.float16)
    K.letterbox_into(out, [frame])
    expected = ref.letterbox(frame, 64, 64)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out[0].astype(np.float32), expected, rtol=1e-3, atol=1e-4)
    tensor, _ = K.letterbox([frame], 64, dtype=np.float16)
    assert tensor.dtype == np.float16
    np.testing.assert_array_equal(tensor, out)


def test_four_d_batch_and_empty_batch(tier: str, rng: np.random.Generator) -> None:
    batch = rng.integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    tensor, params = K.letterbox(batch, 64)
    listed, _ = K.letterbox(list(batch), 64)
    np.testing.assert_array_equal(tensor, listed)
    assert params.shape == (3, 4) and params.dtype == np.float32
    empty, empty_params = K.letterbox([], 64)
    assert empty.shape == (0, 3, 64, 64) and empty_params.shape == (0, 4)


def test_no_scaleup_keeps_small_frames(tier: str, rng: np.random.Generator) -> None:
    frame = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    tensor, params = K.letterbox([frame], 64, scaleup=False, swap_rb=False, scale=1.0)
    np.testing.assert_array_equal(params[0], [1, 1, 17, 22])
    np.testing.assert_allclose(tensor[0, :, 22:42, 17:47], frame.transpose(2, 0, 1), atol=1e-4)
    assert (tensor[0, :, :22] == 114).all()


@pytest.mark.parametrize(("resize_shorter", "size"), [(None, (224, 224)), (256, (224, 224)), (200, (224, 160))])
def test_center_crop_matches_reference(
    tier: str, rng: np.random.Generator, resize_shorter: int | None, size: tuple[int, int]
) -> None:
    frame = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)
    tensor, params = K.center_crop([frame], size, resize_shorter=resize_shorter, pad_value=7)
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


def test_frame_larger_than_8k(tier: str, rng: np.random.Generator) -> None:
    frame = np.empty((900, 8200, 3), np.uint8)
    frame[:] = rng.integers(0, 256, (1, 8200, 3), dtype=np.uint8)  # cheap to make, still varies per column
    frame[::7] = rng.integers(0, 256, (1, 8200, 3), dtype=np.uint8)
    tensor, _ = K.letterbox([frame], 320, swap_rb=False)
    new_w, new_h, left, top, *_ = ref.letterbox_geometry(900, 8200, 320, 320)
    expected = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    got = tensor[0, :, top : top + new_h, left : left + new_w] * 255
    assert np.abs(got - expected).max() <= 1.0 + 1e-3


def test_native_threads_agree(rng: np.random.Generator) -> None:
    if not K.has_native():
        pytest.skip("native module not built")
    frames = [rng.integers(0, 256, (h, 97, 3), dtype=np.uint8) for h in (71, 130, 55)]
    previous = K.set_cpu_tier(K.NATIVE_CPU)
    try:
        one, _ = K.letterbox(frames, 100, num_threads=1)
        many, _ = K.letterbox(frames, 100, num_threads=3)
    finally:
        K.set_cpu_tier(previous)
    np.testing.assert_array_equal(one, many)


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
        ],
    )
    def test_bad_options(self, tier: str, kwargs: dict, error: type, match: str) -> None:
        with pytest.raises(error, match=match):
            K.letterbox([self.frame()], **kwargs)

    def test_native_binding_checks_its_own_arguments(self) -> None:
        if not K.has_native():
            pytest.skip("native module not built")
        from peregrine.kernels import _native

        frame = self.frame()
        ok = dict(src_channel=(2, 1, 0), mul=(1.0, 1.0, 1.0), add=(0.0, 0.0, 0.0), pad=(0.0, 0.0, 0.0))
        with pytest.raises(ValueError, match=r"placements\[0\]"):
            _native.resize_nchw([frame], np.array([[0, 8, 0, 0]], np.int32), 8, 8, **ok)
        with pytest.raises(ValueError, match="placements: expected shape"):
            _native.resize_nchw([frame], np.zeros((2, 4), np.int32), 8, 8, **ok)
        with pytest.raises(TypeError):
            _native.resize_nchw([frame], np.ones((1, 4), np.int64), 8, 8, **ok)
        with pytest.raises(ValueError, match="src_channel"):
            _native.resize_nchw([frame], np.array([[8, 8, 0, 0]], np.int32), 8, 8, **{**ok, "src_channel": (0, 1, 3)})
        with pytest.raises(TypeError, match=r"frames\[0\]"):
            _native.resize_nchw([frame.astype(np.float32)], np.array([[8, 8, 0, 0]], np.int32), 8, 8, **ok)
        with pytest.raises(ValueError, match="size"):
            _native.resize_nchw([frame], np.array([[8, 8, 0, 0]], np.int32), 0, 8, **ok)
