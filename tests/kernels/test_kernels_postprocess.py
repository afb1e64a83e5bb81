"""Decode, NMS, map back and the fused detect_postprocess against plainly written NumPy references."""

from __future__ import annotations

import kernel_reference as ref
import numpy as np
import peregrine.kernels as K
import pytest


def yolov8_head(rng: np.random.Generator, n: int, classes: int, anchors: int, size: float = 640) -> np.ndarray:
    head = np.empty((n, 4 + classes, anchors), np.float32)
    head[:, 0:2] = rng.uniform(0, size, (n, 2, anchors))
    head[:, 2:4] = rng.uniform(4, size / 4, (n, 2, anchors))
    head[:, 4:] = rng.uniform(0, 1, (n, classes, anchors)) ** 4  # most scores low, a few high
    return head


def yolov5_head(rng: np.random.Generator, n: int, classes: int, anchors: int) -> np.ndarray:
    return np.ascontiguousarray(yolov8_head(rng, n, classes + 1, anchors).transpose(0, 2, 1))


def end2end_head(rng: np.random.Generator, n: int, k: int, classes: int = 80) -> np.ndarray:
    head = np.empty((n, k, 6), np.float32)
    xy = rng.uniform(0, 600, (n, k, 2))
    head[..., 0:2] = xy
    head[..., 2:4] = xy + rng.uniform(1, 100, (n, k, 2))
    head[..., 4] = rng.uniform(0, 1, (n, k))
    head[..., 5] = rng.integers(0, classes, (n, k))
    return head


def random_boxes(rng: np.random.Generator, n: int, k: int, classes: int = 5, tied: bool = False):
    centre = rng.uniform(0, 100, (n, k, 2))
    half = rng.uniform(3, 25, (n, k, 2))
    boxes = np.concatenate([centre - half, centre + half], axis=2).astype(np.float32)
    scores = rng.uniform(0, 1, (n, k)).astype(np.float32)
    if tied:
        scores = np.round(scores, 1)  # many equal scores: ranks fall back to the index
    return boxes, scores, rng.integers(0, classes, (n, k)).astype(np.int32)


def check_candidates(c: K.Candidates, head: np.ndarray, layout: str, conf: float, cap: int, classes=None) -> None:
    for i in range(head.shape[0]):
        boxes, scores, cls, anchors = ref.decode_image(head[i], layout, conf, cap, classes)
        k = len(scores)
        assert c.counts[i] == k
        np.testing.assert_allclose(c.boxes[i, :k], boxes, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(c.scores[i, :k], scores)
        np.testing.assert_array_equal(c.class_ids[i, :k], cls)
        np.testing.assert_array_equal(c.anchor_ids[i, :k], anchors)
        assert (c.scores[i, k:] == 0).all() and (c.class_ids[i, k:] == -1).all() and (c.anchor_ids[i, k:] == -1).all()


@pytest.mark.parametrize(("layout", "classes"), [("yolov8", 80), ("yolov8", 1), ("yolov5", 80), ("yolov5", 1)])
def test_decode_matches_reference(tier: str, rng: np.random.Generator, layout: str, classes: int) -> None:
    head = (yolov8_head if layout == "yolov8" else yolov5_head)(rng, 3, classes, 2100)
    c = K.decode(head, layout, conf=0.3, max_candidates=4096)
    assert c.counts.min() > 0 and c.boxes.shape == (3, 2100, 4)
    check_candidates(c, head, layout, 0.3, 4096)


def test_decode_top_k_class_filter_and_end2end(tier: str, rng: np.random.Generator) -> None:
    head = yolov8_head(rng, 2, 10, 1000)
    head[:, 4:] *= np.float32(0.85)
    head[:, 4:, :50] = 0.9  # equal top scores: ties broken by anchor index
    c = K.decode(head, conf=0.2, max_candidates=40)
    assert c.boxes.shape == (2, 40, 4) and (c.counts == 40).all()
    check_candidates(c, head, "yolov8", 0.2, 40)
    np.testing.assert_array_equal(c.anchor_ids[0], np.arange(40))
    c = K.decode(head, conf=0.1, classes=[3, 7])
    check_candidates(c, head, "yolov8", 0.1, 1000, classes=[3, 7])
    assert set(np.unique(c.class_ids[c.class_ids >= 0])) <= {3, 7}
    e2e = end2end_head(rng, 2, 300)
    c = K.decode(e2e, "end2end", conf=0.5, classes=[1, 2, 3, 50])
    check_candidates(c, e2e, "end2end", 0.5, 8192, classes=[1, 2, 3, 50])


def test_decode_zero_and_all_candidates(tier: str, rng: np.random.Generator) -> None:
    head = yolov8_head(rng, 2, 3, 500)
    none = K.decode(head, conf=1.0)
    assert (none.counts == 0).all() and (none.class_ids == -1).all()
    every = K.decode(head + np.float32(0) * head, conf=0.0)  # scores > 0 almost surely
    check_candidates(every, head, "yolov8", 0.0, 8192)
    assert (every.counts == (head[:, 4:].max(axis=1) > 0).sum(axis=1)).all()
    assert K.decode(head, classes=[]).counts.sum() == 0


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("agnostic", [False, True])
def test_nms_matches_reference(tier: str, rng: np.random.Generator, iou: float, agnostic: bool) -> None:
    boxes, scores, cls = random_boxes(rng, 3, 500, tied=iou == 0.5)
    counts = np.array([500, 321, 0], np.int32)
    keep, kept = K.nms(boxes, scores, cls, counts, iou=iou, max_det=300, agnostic=agnostic)
    assert keep.shape == (3, 300) and kept.dtype == np.int32
    for i in range(3):
        expected = ref.nms_image(boxes[i, : counts[i]], scores[i, : counts[i]], cls[i, : counts[i]], iou, 300, agnostic)
        assert kept[i] == len(expected)
        np.testing.assert_array_equal(keep[i, : kept[i]], expected)
        assert (keep[i, kept[i] :] == -1).all()


# Two boxes a random detector gave on a photograph: IoU 0.69994 as drawn, 0.7000026 once shifted by class
# 14 x 7680 in float32, as ultralytics' NMS shifts boxes before torchvision's nms (which then keeps only the
# first at iou 0.7; classes 0, 1, 3 and 79 keep both; checked with torchvision itself).
NEAR_THRESHOLD = np.array([[191.24977111816406, 20.15349769592285, 226.27976989746094, 84.14183807373047],
                           [190.3264617919922, 28.094146728515625, 228.28831481933594, 94.65707397460938]], np.float32)


@pytest.mark.parametrize(("cls", "agnostic", "kept"), [(14, False, [0]), (0, False, [0, 1]), (3, False, [0, 1]),
                                                       (79, False, [0, 1]), (14, True, [0, 1])])
def test_nms_rounds_as_ultralytics_class_offsets_do(tier: str, cls: int, agnostic: bool, kept: list[int]) -> None:
    """An IoU next to the threshold falls on ultralytics' side: NMS sees each box shifted by its class times
    7680 in float32 (none when agnostic), in K.nms and in the fused detect_postprocess, whose answer is still
    the box as the head gave it."""
    scores = np.array([[0.317, 0.264]], np.float32)
    keep, count = K.nms(NEAR_THRESHOLD[None], scores, np.full((1, 2), cls, np.int32), iou=0.7, max_det=10,
                        agnostic=agnostic)
    assert keep[0, : count[0]].tolist() == kept
    head = np.zeros((1, 84, 100), np.float32)  # yolov8 layout [4 + 80 classes, anchors]: the boxes at anchors 3, 40
    for anchor, box, score in zip((3, 40), NEAR_THRESHOLD, scores[0], strict=True):
        head[0, :4, anchor] = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1])
        head[0, 4 + cls, anchor] = score  # (the corners come back from centre and size unchanged but one ulp)
    dets, counts = K.detect_postprocess(head, "yolov8", conf=0.25, iou=0.7, agnostic=agnostic)
    expected = ref.detect_image(head[0], "yolov8", 0.25, 0.7, 300, None, agnostic)
    assert counts[0] == len(expected) == len(kept)
    np.testing.assert_array_equal(dets[0, : counts[0]], expected)


def test_nms_max_det_nan_and_no_counts(tier: str, rng: np.random.Generator) -> None:
    boxes, scores, cls = random_boxes(rng, 2, 200, classes=1)
    scores[0, ::7] = np.nan
    keep, kept = K.nms(boxes, scores, cls, iou=0.9, max_det=10)
    for i in range(2):
        expected = ref.nms_image(boxes[i], scores[i], cls[i], 0.9, 10)
        assert kept[i] == 10
        np.testing.assert_array_equal(keep[i], expected)
    assert not np.isin(keep[0], np.arange(0, 200, 7)).any()


def test_map_boxes_matches_reference_and_round_trips(tier: str, rng: np.random.Generator) -> None:
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(480, 640), (300, 100)]]
    _, params = K.letterbox(frames, 320)
    sizes = np.array([f.shape[:2] for f in frames], np.int32)
    original = np.stack([np.array([[10, 20, 200, 150], [-50, -5, 2000, 2000]], np.float32)] * 2)
    original[1, 0] = [5, 7, 90, 250]
    model = original * np.tile(params[:, None, :2], (1, 1, 2)) + np.tile(params[:, None, 2:], (1, 1, 2))
    out = np.full(model.shape, np.nan, np.float32)
    K.map_boxes_into(out, model, params, sizes)
    for i in range(2):
        np.testing.assert_allclose(out[i], ref.map_back(model[i], params[i], *sizes[i]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[:, 0], original[:, 0], atol=1e-3)  # inside the image: exact round trip
    np.testing.assert_allclose(out[0, 1], [0, 0, 640, 480], atol=1e-4)  # outside: clipped
    np.testing.assert_array_equal(K.map_boxes(model, params, sizes), out)


@pytest.mark.parametrize(
    ("layout", "classes", "agnostic"),
    [
        ("yolov8", None, False),
        ("yolov8", [0, 2, 5], True),
        ("yolov5", None, False),
        ("end2end", None, False),
        ("end2end", [0, 2, 5], False),
    ],
)
def test_detect_postprocess_matches_reference(
    tier: str, rng: np.random.Generator, layout: str, classes: list[int] | None, agnostic: bool
) -> None:
    n = 3
    head = {
        "yolov8": lambda: yolov8_head(rng, n, 8, 2100),
        "yolov5": lambda: yolov5_head(rng, n, 8, 2100),
        "end2end": lambda: end2end_head(rng, n, 300, 8),
    }[layout]()
    sizes = np.array([[1080, 1920], [480, 640], [640, 640]], np.int32)
    params = np.array([[1 / 3, 1 / 3, 0, 140], [1, 1, 0, 80], [1, 1, 0, 0]], np.float32)
    dets = np.full((n, 50, 6), np.nan, np.float32)
    counts = np.full(n, -77, np.int32)
    K.detect_postprocess_into(
        dets,
        counts,
        head,
        layout,
        conf=0.4,
        iou=0.5,
        classes=classes,
        agnostic=agnostic,
        params=params,
        orig_sizes=sizes,
    )
    for i in range(n):
        expected = ref.detect_image(head[i], layout, 0.4, 0.5, 50, classes, agnostic, params[i], sizes[i])
        assert counts[i] == len(expected) > 0
        np.testing.assert_allclose(dets[i, : counts[i]], expected, rtol=0, atol=1e-4)
        assert (dets[i, counts[i] :] == 0).all()
    plain = K.detect_postprocess(head, layout, conf=0.4, iou=0.5, max_det=50, classes=classes, agnostic=agnostic)
    expected = ref.detect_image(head[0], layout, 0.4, 0.5, 50, classes, agnostic)
    np.testing.assert_allclose(plain.split()[0], expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# End-to-end heads: ultralytics' order, not ours
# ---------------------------------------------------------------------------------------------------------


def ultralytics_end_to_end(pred: np.ndarray, conf: float, max_det: int, classes=None) -> np.ndarray:
    """``ultralytics.utils.ops.non_max_suppression`` for an end-to-end head (one image, [K, 6]) as it is
    written there: ``pred[pred[:, 4] > conf][:max_det]``, then ``out[(out[:, 5:6] == classes).any(1)]``."""
    out = pred[pred[:, 4] > np.float32(conf)][:max_det]
    if classes is not None:
        out = out[(out[:, 5:6] == np.asarray(classes, np.float32)).any(1)]
    return out


def end_to_end_rows_by_hand() -> np.ndarray:
    """[2, 9, 6]: rows whose order tells ultralytics' rule from a score sort: scores not sorted, ties (0.3 and
    0.6 twice), a row below the threshold in between, classes interleaved, a class column that is not an
    integer (2.4). The second image is the first reversed."""
    rows = np.array(
        [
            # x1, y1, x2, y2, score, class
            (10, 10, 50, 50, 0.30, 2),
            (20, 20, 60, 60, 0.90, 0),
            (30, 30, 70, 70, 0.10, 2),  # below conf 0.25
            (40, 40, 80, 80, 0.60, 1),
            (50, 50, 90, 90, 0.30, 2),  # ties with row 0
            (60, 60, 99, 99, 0.95, 2),
            (70, 70, 99, 99, 0.60, 1),  # ties with row 3
            (80, 80, 99, 99, 0.50, 2),
            (90, 90, 99, 99, 0.40, 2.4),
        ],
        np.float32,
    )
    return np.ascontiguousarray(np.stack([rows, rows[::-1]]))


#: (max_det, classes) and the rows each image keeps, in order.
END_TO_END_EXPECTED = [
    (300, None, [0, 1, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 7, 8]),  # a score sort: 5, 1, 3, 6, 7, 8, 0, 4
    (4, None, [0, 1, 3, 4], [0, 1, 2, 3]),  # the first 4 above conf, not the best 4 (5, 1, 3, 6)
    (3, [2], [0], [1]),  # the first 3 (0, 1, 3), then class 2: one row (filter first: 5, 7, 0)
    (300, [2], [0, 4, 5, 7], [1, 3, 4, 8]),  # 2.4 is not class 2
    (5, [1, 2], [0, 3, 4, 5], [1, 2, 3, 4]),
    (2, [7], [], []),
]


def check_end_to_end_by_hand(detect, decode) -> None:  # type: ignore[no-untyped-def]
    """``detect(head, max_det, classes[, max_candidates])`` returns host (dets, counts), ``decode(head,
    max_candidates, classes)`` host Candidates: both must keep the rows of END_TO_END_EXPECTED."""
    head = end_to_end_rows_by_hand()
    for max_det, classes, *expected in END_TO_END_EXPECTED:
        dets, counts = detect(head, max_det=max_det, classes=classes)
        c = decode(head, max_candidates=max_det, classes=classes)
        for i, rows in enumerate(expected):
            want = ultralytics_end_to_end(head[i], 0.25, max_det, classes)
            np.testing.assert_array_equal(ref.end_to_end_rows(head[i], 0.25, max_det, classes), rows)
            np.testing.assert_array_equal(want, head[i, rows])
            assert counts[i] == len(rows), (max_det, classes, i)
            np.testing.assert_array_equal(dets[i, : len(rows), :5], want[:, :5])
            np.testing.assert_array_equal(dets[i, : len(rows), 5], np.rint(want[:, 5]))
            assert (dets[i, len(rows) :] == 0).all()
            assert c.counts[i] == len(rows)
            np.testing.assert_array_equal(c.anchor_ids[i, : len(rows)], rows)
            np.testing.assert_array_equal(c.scores[i, : len(rows)], want[:, 4])
            np.testing.assert_array_equal(c.boxes[i, : len(rows)], want[:, :4])
            np.testing.assert_array_equal(c.class_ids[i, : len(rows)], np.rint(want[:, 5]))
    # image 0 without a filter: 8 rows in the head's order; the 2.4 row reports class 2
    dets, counts = detect(head, max_det=300, classes=None)
    np.testing.assert_array_equal(dets[0, :8, 4], np.float32([0.3, 0.9, 0.6, 0.3, 0.95, 0.6, 0.5, 0.4]))
    assert dets[0, 7, 5] == 2
    # no candidate cap but max_det: max_candidates does not apply to end-to-end heads
    dets, counts = detect(head, max_det=300, classes=None, max_candidates=1)
    np.testing.assert_array_equal(counts, [8, 8])


def test_end_to_end_follows_ultralytics_by_hand(tier: str) -> None:
    def detect(head, max_det, classes, max_candidates=8192):  # type: ignore[no-untyped-def]
        return K.detect_postprocess(
            head, "end2end", conf=0.25, max_det=max_det, classes=classes, max_candidates=max_candidates
        )

    check_end_to_end_by_hand(detect, lambda head, **kw: K.decode(head, "end2end", conf=0.25, **kw))


@pytest.mark.parametrize("classes", [None, [0, 3], [5]])
@pytest.mark.parametrize("max_det", [1, 17, 300])
def test_end_to_end_random_heads_follow_ultralytics(
    tier: str, rng: np.random.Generator, classes: list[int] | None, max_det: int
) -> None:
    """Random heads, unsorted scores with many ties (rounded to 0.05), 8 classes: the rows ultralytics
    keeps, in its order, bit for bit; mapped back with params like the other layouts."""
    head = end2end_head(rng, 3, 300, classes=8)
    head[..., 4] = np.round(head[..., 4] * 20) / 20
    sizes = np.array([[1080, 1920], [480, 640], [640, 640]], np.int32)
    params = np.array([[1 / 3, 1 / 3, 0, 140], [1, 1, 0, 80], [1, 1, 0, 0]], np.float32)
    plain = K.detect_postprocess(head, "end2end", conf=0.3, max_det=max_det, classes=classes, max_candidates=2)
    mapped = K.detect_postprocess(
        head, "end2end", conf=0.3, max_det=max_det, classes=classes, params=params, orig_sizes=sizes
    )
    for i in range(3):
        want = ultralytics_end_to_end(head[i], 0.3, max_det, classes)
        assert plain.counts[i] == mapped.counts[i] == len(want)
        np.testing.assert_array_equal(plain.dets[i, : len(want)], want)
        expected = ref.detect_image(head[i], "end2end", 0.3, 0.5, max_det, classes, False, params[i], sizes[i])
        np.testing.assert_allclose(mapped.dets[i, : len(want)], expected, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(mapped.dets[i, : len(want), 4:], want[:, 4:])
        sorted_scores = np.sort(head[i, head[i, :, 4] > np.float32(0.3), 4])[::-1]
        if max_det == 17:  # the case tells the orders apart: not the 17 best scores, not sorted
            assert not np.array_equal(plain.dets[i, : len(want), 4], sorted_scores[: len(want)])


def test_detect_postprocess_edge_cases(tier: str, rng: np.random.Generator) -> None:
    head = yolov8_head(rng, 2, 1, 300)
    empty = K.detect_postprocess(head, conf=1.0)
    assert (empty.counts == 0).all() and (empty.dets == 0).all()
    assert [len(d) for d in empty.split()] == [0, 0]
    every = K.detect_postprocess(head, conf=0.0, iou=1.0, max_det=1000, max_candidates=100)
    assert (every.counts == 100).all()  # IoU > 1 never happens: all top-100 candidates survive
    dets = K.detect_postprocess(head, conf=0.0, iou=0.45, max_det=7)
    for i in range(2):
        np.testing.assert_allclose(dets.dets[i], ref.detect_image(head[i], "yolov8", 0.0, 0.45, 7), atol=1e-5)


def test_softmax_and_topk_match_reference(tier: str, rng: np.random.Generator) -> None:
    logits = rng.normal(0, 3, (4, 1000)).astype(np.float32)
    probs = K.softmax(logits)
    np.testing.assert_allclose(probs, ref.softmax(logits), rtol=1e-5, atol=1e-9)
    out = np.full_like(logits, np.nan)
    K.softmax_into(out, logits)
    np.testing.assert_array_equal(out, probs)
    tied = np.round(logits, 0)
    values, indices = K.topk(tied, 7)
    expected_values, expected_indices = ref.topk(tied, 7)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(values, expected_values)
    scores, ids = K.classify_postprocess(logits, 5)
    np.testing.assert_array_equal(ids, ref.topk(logits, 5)[1])
    np.testing.assert_allclose(scores, np.sort(ref.softmax(logits), axis=1)[:, ::-1][:, :5], rtol=1e-5)
    one = K.classify_postprocess(np.ones((2, 1), np.float32), 1)
    np.testing.assert_array_equal(one[0], [[1.0], [1.0]])


class TestBadArguments:
    @pytest.mark.parametrize(
        ("head", "layout", "error", "match"),
        [
            (np.ones((1, 84, 10), np.float64), "yolov8", TypeError, "head: expected float32"),
            (np.ones((84, 10), np.float32), "yolov8", ValueError, "head: expected float32"),
            (np.ones((1, 4, 10), np.float32), "yolov8", ValueError, r"head: expected yolov8"),
            (np.ones((1, 10, 5), np.float32), "yolov5", ValueError, r"head: expected yolov5"),
            (np.ones((1, 10, 7), np.float32), "end2end", ValueError, r"head: expected end2end"),
            (np.ones((1, 84, 20), np.float32)[:, :, ::2], "yolov8", ValueError, "head: expected a C-contiguous"),
            (np.ones((1, 84, 10), np.float32), "yolov9000", ValueError, "layout"),
            ([[1.0]], "yolov8", TypeError, "head"),
        ],
    )
    def test_bad_heads(self, tier: str, head: object, layout: str, error: type, match: str) -> None:
        with pytest.raises(error, match=match):
            K.detect_postprocess(head, layout)
        with pytest.raises(error, match=match):
            K.decode(head, layout)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"conf": 1.5}, "conf"),
            ({"conf": -0.1}, "conf"),
            ({"iou": float("nan")}, "iou"),
            ({"max_det": 0}, "max_det"),
            ({"max_candidates": 0}, "max_candidates"),
            ({"classes": [-1]}, "classes"),
            ({"params": np.ones((1, 4), np.float32)}, "params, orig_sizes"),
            ({"params": np.ones((2, 4), np.float32), "orig_sizes": np.ones((2, 2), np.int32)}, r"params: expected"),
            ({"params": np.ones((1, 4), np.float64), "orig_sizes": np.ones((1, 2), np.int32)}, "params"),
            ({"params": np.ones((1, 4), np.float32), "orig_sizes": np.zeros((1, 2), np.int32)}, "orig_sizes"),
            ({"num_threads": -2}, "num_threads"),
        ],
    )
    def test_bad_options(self, tier: str, kwargs: dict, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            K.detect_postprocess(np.full((1, 6, 10), 0.5, np.float32), **kwargs)

    def test_bad_nms_and_outputs(self, tier: str, rng: np.random.Generator) -> None:
        boxes, scores, cls = random_boxes(rng, 2, 10)
        with pytest.raises(ValueError, match="scores: expected"):
            K.nms(boxes, scores[:1], cls)
        with pytest.raises(TypeError, match="class_ids: expected int32"):
            K.nms(boxes, scores, cls.astype(np.int64))
        with pytest.raises(ValueError, match="counts"):
            K.nms(boxes, scores, cls, np.array([11, 0], np.int32))
        with pytest.raises(ValueError, match="iou"):
            K.nms(boxes, scores, cls, iou=2)
        with pytest.raises(ValueError, match="boxes"):
            K.nms(boxes[..., :3].copy(), scores, cls)
        head = np.full((2, 6, 10), 0.5, np.float32)
        with pytest.raises(ValueError, match="dets"):
            K.detect_postprocess_into(np.empty((1, 5, 6), np.float32), np.empty(2, np.int32), head)
        with pytest.raises(TypeError, match="counts"):
            K.detect_postprocess_into(np.empty((2, 5, 6), np.float32), np.empty(2, np.int64), head)
        with pytest.raises(ValueError, match="k: expected"):
            K.topk(scores, 11)
        with pytest.raises(ValueError, match="logits"):
            K.softmax(scores[0])
        with pytest.raises(ValueError, match="out: expected"):
            K.map_boxes_into(
                np.empty((2, 10, 3), np.float32), boxes, np.ones((2, 4), np.float32), np.ones((2, 2), np.int32)
            )

    def test_native_binding_checks_its_own_arguments(self) -> None:
        if not K.has_native():
            pytest.skip("native module not built")
        from peregrine.kernels import _native

        head = np.full((1, 6, 10), 0.5, np.float32)
        with pytest.raises(ValueError, match="layout"):
            _native.detect_postprocess(head, 7, 0.5, 0.5, 10, 10)
        with pytest.raises(ValueError, match="conf"):
            _native.decode(head, 0, 1.5, 10)
        with pytest.raises(TypeError):
            _native.decode(head.astype(np.float64), 0, 0.5, 10)
        with pytest.raises(ValueError, match="counts"):
            _native.nms(
                np.zeros((1, 3, 4), np.float32),
                np.zeros((1, 3), np.float32),
                np.zeros((1, 3), np.int32),
                np.array([4], np.int32),
                0.5,
                10,
            )
        with pytest.raises(ValueError, match="k: expected"):
            _native.topk(np.zeros((1, 3), np.float32), 0)
        with pytest.raises(ValueError, match="dets"):
            _native.detect_postprocess_into(
                np.empty((1, 9, 6), np.float32), np.empty(1, np.int32), head, 0, 0.5, 0.5, 10, 10
            )
