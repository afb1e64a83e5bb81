"""The CUDA tier against OpenCV (byte for byte for resize="linear"/"area") and the same NumPy references as
the CPU tiers.

Runs where CuPy imports and the native module has CUDA kernels and a device:
``python -m pytest tests/kernels -m gpu``. Everywhere else every test here is skipped.
"""

from __future__ import annotations

import kernel_reference as ref
import numpy as np
import peregrine.kernels as K
import pytest
from test_kernels_postprocess import (
    check_end_to_end_by_hand,
    end2end_head,
    random_boxes,
    ultralytics_end_to_end,
    yolov5_head,
    yolov8_head,
)
from test_kernels_preprocess import (
    EDGE_CASES,
    EXACT_MODES,
    cv2_resize,
    normalised_tensor,
    opencv_letterbox,
    opencv_place,
    photographs,
    random_cases,
    random_frame,
    ultralytics_tensor,
)

pytestmark = pytest.mark.gpu


def test_tier_reports_cuda(cp) -> None:
    assert K.active_tier("cuda") == K.NATIVE_CUDA


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("resize", EXACT_MODES)
@pytest.mark.parametrize("size", [(640, 640), (256, 416)])
def test_letterbox_equals_ultralytics_on_photographs(cp, size: tuple[int, int], resize: str, dtype: type) -> None:
    """The default scale: cv2's bytes -> astype(float32) / float32(255), exactly (FP16: that, as float16)."""
    frames = photographs()
    out = cp.full((len(frames), 3, *size), cp.nan, dtype)
    params = K.letterbox_into(out, [cp.asarray(f) for f in frames], resize=resize)
    host = out.get()
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(host[i], ultralytics_tensor(opencv_letterbox(frame, *size, resize=resize), dtype))
        new_w, new_h, left, top, *_ = ref.letterbox_geometry(*frame.shape[:2], *size)
        np.testing.assert_allclose(params[i], ref.letterbox_params(frame.shape, new_w, new_h, left, top), rtol=1e-6)


def test_every_byte_value_is_ultralytics_float32(cp) -> None:
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    frame = np.ascontiguousarray(np.stack([values, values.T, 255 - values], axis=2))
    for resize in EXACT_MODES:
        for dtype in (np.float32, np.float16):
            out, _ = K.letterbox([cp.asarray(frame)], 16, dtype=dtype, resize=resize)
            np.testing.assert_array_equal(out.get()[0], ultralytics_tensor(frame[..., ::-1].transpose(2, 0, 1), dtype))


def device_frame(cp, frame: np.ndarray):  # type: ignore[no-untyped-def]
    """The frame on the device with the same layout: a crop of a wider device buffer when it is strided."""
    if frame.flags.c_contiguous:
        return cp.asarray(frame)
    big = cp.zeros((frame.shape[0] + 1, frame.shape[1] + 5, 3), cp.uint8)
    big[1:, 3 : 3 + frame.shape[1]] = cp.asarray(np.ascontiguousarray(frame))
    view = big[1:, 3 : 3 + frame.shape[1]]
    assert not view.flags.c_contiguous
    return view


@pytest.mark.parametrize("resize", EXACT_MODES)
def test_letterbox_equals_cv2_on_random_sizes(cp, resize: str) -> None:
    for case in random_cases(np.random.default_rng(1300 + len(resize)), 80):
        out = cp.full((1, 3, case.height, case.width), cp.nan, case.dtype)
        K.letterbox_into(
            out, [device_frame(cp, case.frame)], scale=1.0, pad_value=case.pad, swap_rb=case.swap_rb, resize=resize
        )
        expected = opencv_letterbox(case.frame, case.height, case.width, case.pad, resize, case.swap_rb)
        np.testing.assert_array_equal(out.get()[0], expected.astype(case.dtype), err_msg=f"{resize}: {case}")


@pytest.mark.parametrize("resize", EXACT_MODES)
@pytest.mark.parametrize(("shape", "size"), EDGE_CASES, ids=[f"{s[0]}x{s[1]}-{m[0]}x{m[1]}" for s, m in EDGE_CASES])
def test_letterbox_equals_cv2_on_edge_sizes(
    cp, rng: np.random.Generator, resize: str, shape: tuple[int, int], size: tuple[int, int]
) -> None:
    for strided in (False, True):
        frame = random_frame(rng, *shape, strided=strided)
        tensor, _ = K.letterbox([device_frame(cp, frame)], size, scale=1.0, resize=resize)
        expected = opencv_letterbox(frame, *size, resize=resize).astype(np.float32)
        np.testing.assert_array_equal(tensor.get()[0], expected, err_msg=f"{resize} strided={strided}")


@pytest.mark.parametrize("resize", EXACT_MODES)
def test_many_frames_float16_normalised_and_cpu_equal(cp, rng: np.random.Generator, resize: str) -> None:
    """More frames than one launch takes, of mixed sizes, FP16 with mean/std, on a stream: the same bits
    as the native CPU tier (the same table of values), each the double-computed value rounded to float32,
    then to float16."""
    frames = [random_frame(rng, int(h), int(w)) for h, w in rng.integers(1, 90, (70, 2))]
    stream = cp.cuda.Stream(non_blocking=True)
    kwargs = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pad_value=(1, 2, 3), resize=resize)
    out = cp.full((70, 3, 32, 48), cp.nan, cp.float16)
    K.letterbox_into(out, [cp.asarray(f) for f in frames], stream=stream, **kwargs)
    stream.synchronize()
    if K.has_native():
        previous = K.set_cpu_tier(K.NATIVE_CPU)
        try:
            cpu, _ = K.letterbox(frames, (32, 48), dtype=np.float16, **kwargs)
        finally:
            K.set_cpu_tier(previous)
        np.testing.assert_array_equal(out.get(), cpu)
    for i, frame in enumerate(frames):
        new_w, new_h, left, top, *_ = ref.letterbox_geometry(*frame.shape[:2], 32, 48)
        canvas = opencv_place(frame, new_w, new_h, left, top, 32, 48, (3, 2, 1), resize)[..., ::-1]
        expected = normalised_tensor(canvas.transpose(2, 0, 1), 1 / 255, kwargs["mean"], kwargs["std"], np.float16)
        np.testing.assert_array_equal(out.get()[i], expected)


@pytest.mark.parametrize("resize", EXACT_MODES)
def test_resize_and_center_crop_equal_cv2(cp, rng: np.random.Generator, resize: str) -> None:
    frames = [random_frame(rng, h, w) for h, w in [(300, 451), (451, 300)]]
    device = [cp.asarray(f) for f in frames]
    for op, kwargs in ((K.resize, {"size": (100, 150)}), (K.center_crop, {"size": 96, "resize_shorter": 110})):
        gpu, gpu_params = op(device, resize=resize, **kwargs)
        cpu, cpu_params = op(frames, resize=resize, **kwargs)
        np.testing.assert_array_equal(gpu.get(), cpu)
        np.testing.assert_array_equal(gpu_params, cpu_params)
    expected = cv2_resize(frames[0], 150, 100, resize)[..., ::-1].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(K.resize(device, (100, 150), scale=1.0, resize=resize)[0].get()[0], expected)


@pytest.mark.parametrize("size", [(640, 640), (256, 416)])
def test_float_letterbox_within_one_level_of_opencv(cp, size: tuple[int, int]) -> None:
    frames = photographs()
    out = cp.full((len(frames), 3, *size), cp.nan, cp.float32)
    K.letterbox_into(out, [cp.asarray(f) for f in frames], resize="float")
    host = out.get()
    for i, frame in enumerate(frames):
        assert np.abs(host[i] * 255 - opencv_letterbox(frame, *size)).max() <= 1.0 + 1e-3


@pytest.mark.parametrize("shape", [(1, 1), (3, 4000), (4000, 3), (37, 61), (900, 8200)])
def test_float_letterbox_matches_reference(cp, rng: np.random.Generator, shape: tuple[int, int]) -> None:
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    tensor, _ = K.letterbox([cp.asarray(frame)], (96, 128), resize="float")
    np.testing.assert_allclose(tensor.get()[0], ref.letterbox(frame, 96, 128), rtol=0, atol=1e-5)


def test_float_float16_stream_and_many_frames(cp, rng: np.random.Generator) -> None:
    frames = [
        rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in rng.integers(1, 60, (70, 2))
    ]  # more frames than one launch takes
    stream = cp.cuda.Stream(non_blocking=True)
    out = cp.full((70, 3, 32, 48), cp.nan, cp.float16)
    K.letterbox_into(out, [cp.asarray(f) for f in frames], stream=stream, mean=0.5, std=0.25, resize="float")
    stream.synchronize()
    host = out.get().astype(np.float32)
    for i, frame in enumerate(frames):
        expected = ref.letterbox(frame, 32, 48, mean=(0.5,) * 3, std=(0.25,) * 3)
        np.testing.assert_allclose(host[i], expected, rtol=2e-3, atol=2e-3)


def test_float_resize_and_center_crop_match_cpu(cp, rng: np.random.Generator) -> None:
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(300, 451), (451, 300)]]
    device = [cp.asarray(f) for f in frames]
    for op, kwargs in ((K.resize, {"size": (100, 150)}), (K.center_crop, {"size": 96, "resize_shorter": 110})):
        gpu, gpu_params = op(device, resize="float", **kwargs)
        cpu, cpu_params = op(frames, resize="float", **kwargs)
        np.testing.assert_allclose(gpu.get(), cpu, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(gpu_params, cpu_params)


@pytest.mark.parametrize(("layout", "classes"), [("yolov8", 80), ("yolov8", 1), ("yolov5", 80), ("end2end", 0)])
def test_decode_matches_reference(cp, rng: np.random.Generator, layout: str, classes: int) -> None:
    head = {
        "yolov8": lambda: yolov8_head(rng, 3, classes, 2100),
        "yolov5": lambda: yolov5_head(rng, 3, classes, 2100),
        "end2end": lambda: end2end_head(rng, 3, 300),
    }[layout]()
    for conf, cap in ((0.3, 8192), (0.05, 100)):  # the second selects the top 100 of many (radix select)
        c = K.decode(cp.asarray(head), layout, conf=conf, max_candidates=cap)
        for i in range(3):
            boxes, scores, cls, anchors = ref.decode_image(head[i], layout, conf, cap)
            k = len(scores)
            assert int(c.counts[i]) == k
            np.testing.assert_allclose(c.boxes[i, :k].get(), boxes, rtol=0, atol=1e-5)
            np.testing.assert_array_equal(c.scores[i, :k].get(), scores)
            np.testing.assert_array_equal(c.class_ids[i, :k].get(), cls)
            np.testing.assert_array_equal(c.anchor_ids[i, :k].get(), anchors)


def test_decode_ties_and_class_filter(cp, rng: np.random.Generator) -> None:
    head = yolov8_head(rng, 2, 10, 1000)
    head[:, 4:] *= np.float32(0.85)
    head[:, 4:, :50] = 0.9
    c = K.decode(cp.asarray(head), conf=0.2, max_candidates=40)
    np.testing.assert_array_equal(c.anchor_ids[0].get(), np.arange(40))
    c = K.decode(cp.asarray(head), conf=0.1, classes=[3, 7])
    for i in range(2):
        *_, anchors = ref.decode_image(head[i], "yolov8", 0.1, 1000, [3, 7])
        np.testing.assert_array_equal(c.anchor_ids[i, : len(anchors)].get(), anchors)


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("tied", [False, True])
def test_nms_matches_reference(cp, rng: np.random.Generator, agnostic: bool, tied: bool) -> None:
    boxes, scores, cls = random_boxes(rng, 3, 1500, tied=tied)
    scores[1, ::11] = np.nan
    counts = np.array([1500, 777, 0], np.int32)
    for iou, max_det in ((0.5, 300), (0.3, 20), (0.8, 1000)):
        keep, kept = K.nms(
            cp.asarray(boxes),
            cp.asarray(scores),
            cp.asarray(cls),
            cp.asarray(counts),
            iou=iou,
            max_det=max_det,
            agnostic=agnostic,
        )
        keep, kept = keep.get(), kept.get()
        for i in range(3):
            n = counts[i]
            expected = ref.nms_image(boxes[i, :n], scores[i, :n], cls[i, :n], iou, max_det, agnostic)
            assert kept[i] == len(expected)
            np.testing.assert_array_equal(keep[i, : kept[i]], expected)
            assert (keep[i, kept[i] :] == -1).all()


@pytest.mark.parametrize("layout", ["yolov8", "yolov5", "end2end"])
def test_detect_postprocess_matches_reference(cp, rng: np.random.Generator, layout: str) -> None:
    n = 4
    head = {
        "yolov8": lambda: yolov8_head(rng, n, 80, 8400),
        "yolov5": lambda: yolov5_head(rng, n, 80, 8400),
        "end2end": lambda: end2end_head(rng, n, 300),
    }[layout]()
    sizes = np.array([[1080, 1920], [480, 640], [640, 640], [720, 1280]], np.int32)
    params = np.array([[1 / 3, 1 / 3, 0, 140], [1, 1, 0, 80], [1, 1, 0, 0], [0.5, 0.5, 0, 140]], np.float32)
    dets = cp.full((n, 300, 6), cp.nan, cp.float32)
    counts = cp.full(n, -77, cp.int32)
    K.detect_postprocess_into(
        dets, counts, cp.asarray(head), layout, conf=0.25, iou=0.6, params=params, orig_sizes=sizes
    )
    dets, counts = dets.get(), counts.get()
    for i in range(n):
        expected = ref.detect_image(head[i], layout, 0.25, 0.6, 300, None, False, params[i], sizes[i])
        assert counts[i] == len(expected) > 0
        np.testing.assert_allclose(dets[i, : counts[i]], expected, rtol=0, atol=1e-4)
        assert (dets[i, counts[i] :] == 0).all()
    cpu = K.detect_postprocess(head, layout, conf=0.25, iou=0.6, classes=[0, 1, 2], agnostic=True)
    gpu = K.detect_postprocess(cp.asarray(head), layout, conf=0.25, iou=0.6, classes=[0, 1, 2], agnostic=True)
    np.testing.assert_array_equal(gpu.counts.get(), cpu.counts)
    np.testing.assert_allclose(gpu.dets.get(), cpu.dets, rtol=0, atol=1e-4)


def test_end_to_end_follows_ultralytics_by_hand(cp) -> None:
    """Rows kept in the head's order, the first max_det (decode: max_candidates) before the class filter,
    no other cap: the same hand-made cases as the CPU tiers."""

    def detect(head, max_det, classes, max_candidates=8192):  # type: ignore[no-untyped-def]
        d = K.detect_postprocess(
            cp.asarray(head), "end2end", conf=0.25, max_det=max_det, classes=classes, max_candidates=max_candidates
        )
        return d.dets.get(), d.counts.get()

    def decode(head, **kwargs):  # type: ignore[no-untyped-def]
        c = K.decode(cp.asarray(head), "end2end", conf=0.25, **kwargs)
        return K.Candidates(*(a.get() for a in c))

    check_end_to_end_by_hand(detect, decode)


@pytest.mark.parametrize("classes", [None, [0, 3], [5]])
def test_end_to_end_random_heads_follow_ultralytics(cp, rng: np.random.Generator, classes) -> None:  # type: ignore[no-untyped-def]
    """Many rows (more than one select chunk), tied scores, max_det below, at and above the rows over conf
    (the radix selection of the first max_det rows by position): ultralytics' rows, bit for bit, and the
    CPU tier's."""
    head = end2end_head(rng, 4, 3000, classes=8)
    head[..., 4] = np.round(head[..., 4] * 20) / 20
    for max_det in (1, 17, 300, 1000, 3000):
        gpu = K.detect_postprocess(cp.asarray(head), "end2end", conf=0.3, max_det=max_det, classes=classes)
        dets, counts = gpu.dets.get(), gpu.counts.get()
        c = K.decode(cp.asarray(head), "end2end", conf=0.3, max_candidates=max_det, classes=classes)
        for i in range(4):
            want = ultralytics_end_to_end(head[i], 0.3, max_det, classes)
            assert counts[i] == len(want) == int(c.counts[i])
            np.testing.assert_array_equal(dets[i, : len(want)], want)
            np.testing.assert_array_equal(
                c.anchor_ids[i, : len(want)].get(), ref.end_to_end_rows(head[i], 0.3, max_det, classes)
            )
        cpu = K.detect_postprocess(head, "end2end", conf=0.3, max_det=max_det, classes=classes)
        np.testing.assert_array_equal(dets, cpu.dets)


def test_detect_postprocess_edge_cases(cp, rng: np.random.Generator) -> None:
    head = cp.asarray(yolov8_head(rng, 2, 1, 300))
    empty = K.detect_postprocess(head, conf=1.0)
    assert (empty.counts.get() == 0).all() and (empty.dets.get() == 0).all()
    every = K.detect_postprocess(head, conf=0.0, iou=1.0, max_det=1000, max_candidates=100)
    assert (every.counts.get() == 100).all()
    with pytest.raises(ValueError, match="max_candidates"):
        K.detect_postprocess(cp.zeros((1, 6, 100000), cp.float32), max_candidates=100000)


def test_map_boxes_softmax_topk(cp, rng: np.random.Generator) -> None:
    boxes, _, _ = random_boxes(rng, 2, 50)
    params = np.array([[0.5, 0.5, 3, 7], [2, 2, 0, 0]], np.float32)
    sizes = np.array([[100, 120], [60, 40]], np.int32)
    mapped = K.map_boxes(cp.asarray(boxes), params, sizes).get()
    for i in range(2):
        np.testing.assert_allclose(mapped[i], ref.map_back(boxes[i], params[i], *sizes[i]), rtol=0, atol=1e-5)
    logits = rng.normal(0, 3, (4, 1000)).astype(np.float32)
    np.testing.assert_allclose(K.softmax(cp.asarray(logits)).get(), ref.softmax(logits), rtol=1e-5, atol=1e-9)
    tied = np.round(logits, 0)
    values, indices = K.topk(cp.asarray(tied), 7)
    np.testing.assert_array_equal(indices.get(), ref.topk(tied, 7)[1])
    np.testing.assert_array_equal(values.get(), ref.topk(tied, 7)[0])


def test_bad_arguments(cp) -> None:
    frame = np.ones((8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match="frames"):
        K.letterbox([frame, cp.asarray(frame)], 32)
    with pytest.raises(TypeError, match="out"):
        K.letterbox_into(np.empty((1, 3, 8, 8), np.float32), [cp.asarray(frame)])
    with pytest.raises(TypeError, match="scores"):
        K.nms(cp.zeros((1, 3, 4), cp.float32), np.zeros((1, 3), np.float32), cp.zeros((1, 3), cp.int32))
    with pytest.raises(ValueError, match="frames"):
        K.letterbox([cp.ones((8, 16, 3), cp.uint8)[:, ::2]], 32)
    with pytest.raises(ValueError, match="resize"):
        K.letterbox([cp.asarray(frame)], 32, resize="cubic")
