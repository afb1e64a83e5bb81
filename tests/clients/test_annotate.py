"""``peregrine-annotate``: boxes, labels and scores drawn on images, compared pixel by pixel with a reference
drawing made here with OpenCV's own primitives; from a live server's Detect answer and from JSON Lines."""

from __future__ import annotations

import json
from pathlib import Path

import client_support
import cv2
import numpy as np
import pytest
import skimage.data
from peregrine.client import Detection, DetectionClient, Keypoint
from peregrine.client.annotate import annotate_image, detection_of, draw_detections, main
from peregrine.client.keypoints import COCO_SKELETON
from peregrine.server.app import PeregrineServer

detection_server = client_support.detection_server

# ultralytics' palette, classes 0, 1 and 2: FF3838, FF9D97 and FF701F as BGR.
RED, PINK, ORANGE = (0x38, 0x38, 0xFF), (0x97, 0x9D, 0xFF), (0x1F, 0x70, 0xFF)


def coffee_bgr() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.coffee()[:, :, ::-1])  # 400 x 600


def reference(image: np.ndarray, boxes: list[tuple[tuple[int, int, int, int], tuple[int, int, int], str, bool]],
              thickness: int, font_scale: float) -> np.ndarray:
    """The drawing the module promises, step by step: box, then a filled tab above it (inside when at the top
    edge) with the label in black on light colours, white on dark ones."""
    out = image.copy()
    for (x1, y1, x2, y2), colour, text, dark_text in boxes:
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness - 1)
        top = y1 - (th + base + 2) if y1 >= th + base + 2 else y1
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + th + base + 2), colour, -1)
        cv2.putText(out, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0) if dark_text else (255, 255, 255), thickness - 1, cv2.LINE_AA)
    return out


def test_drawing_matches_the_reference_pixel_for_pixel() -> None:
    image = coffee_bgr()
    dets = [
        Detection(100.4, 80.6, 300.2, 250.5, 0.91, 0, "person"),   # corners round to whole pixels
        Detection(-20.0, 0.0, 120.0, 90.0, 0.42, 2, "car"),        # clipped; at the top edge: tab inside
        Detection(350.0, 200.0, 700.0, 450.0, 0.30, 1, ""),        # clipped right and bottom; no name
    ]
    out = draw_detections(image, dets)
    # 400x600: thickness round(500 * 0.003) = 2, font scale 0.5; drawn lowest score first.
    expected = reference(image, [
        ((350, 200, 599, 399), PINK, "class1 0.30", True),        # a light tab: black text
        ((0, 0, 120, 90), ORANGE, "car 0.42", False),
        ((100, 81, 300, 250), RED, "person 0.91", False),
    ], thickness=2, font_scale=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    # What the reference means, checked on its own: edges in the class colour, untouched pixels elsewhere,
    # and the input left as it was.
    assert tuple(out[250, 200]) == RED and tuple(out[160, 100]) == RED and tuple(out[300, 599]) == PINK
    np.testing.assert_array_equal(out[300:380, 10:90], image[300:380, 10:90])
    np.testing.assert_array_equal(image, coffee_bgr())


def test_a_pose_models_keypoints_are_drawn_with_the_person_skeleton() -> None:
    """A pose box's keypoints: a filled dot (radius thickness + 2) at each whose visibility is at least 0.5 (or
    that has none), COCO's limbs between two shown keypoints of 17; a hidden keypoint and its limbs not drawn."""
    image = coffee_bgr()
    points = [Keypoint(150.0 + 10 * (k % 5), 100.0 + 8 * k, 0.9) for k in range(17)]
    points[9] = Keypoint(160.0, 172.0, 0.2)  # the left wrist, hidden
    box = Detection(100.0, 80.0, 300.0, 260.0, 0.9, 0, "person", tuple(points))
    out = draw_detections(image, [box])
    expected = reference(image, [((100, 80, 300, 260), RED, "person 0.90", False)], thickness=2, font_scale=0.5)
    shown = [p.score >= 0.5 for p in points]
    at = [(round(p.x), round(p.y)) for p in points]
    for a, b in COCO_SKELETON:
        if shown[a] and shown[b]:
            cv2.line(expected, at[a], at[b], RED, 2, cv2.LINE_AA)
    for k, p in enumerate(at):
        if shown[k]:
            cv2.circle(expected, p, 4, RED, -1, cv2.LINE_AA)  # (the label tab above the box overlaps none)
    np.testing.assert_array_equal(out, expected)
    assert tuple(out[at[0][1], at[0][0]]) == RED and tuple(out[at[9][1], at[9][0]]) != RED
    # Keypoints without scores (kpt_shape [K, 2]) are all drawn; five points: no skeleton.
    hand = tuple(Keypoint(200.0, 100.0 + 20 * k) for k in range(5))
    plain = Detection(100.0, 80.0, 300.0, 260.0, 0.9, 0, "hand", hand)
    drawn = draw_detections(image, [plain])
    assert all(tuple(drawn[100 + 20 * k, 200]) == RED for k in range(5))
    assert tuple(drawn[110, 200]) != RED  # between two dots: no line
    # JSON Lines carry them as [x, y(, score)] lists.
    line = {"x1": 1, "y1": 2, "x2": 3, "y2": 4, "score": 0.5, "class_id": 0, "keypoints": [[5, 6, 0.7], [7, 8]]}
    assert detection_of(line).keypoints == (Keypoint(5.0, 6.0, 0.7), Keypoint(7.0, 8.0, None))
    with pytest.raises(ValueError, match="detection"):
        detection_of({**line, "keypoints": [[5]]})


def test_a_segmentation_models_polygon_is_drawn_as_a_closed_outline() -> None:
    image = coffee_bgr()
    polygon = ((120.0, 100.0), (200.0, 110.0), (180.0, 200.0), (130.0, 180.0))
    box = Detection(110.0, 90.0, 210.0, 210.0, 0.9, 0, "cup", (), polygon)
    out = draw_detections(image, [box])
    expected = reference(image, [((110, 90, 210, 210), RED, "cup 0.90", False)], thickness=2, font_scale=0.5)
    cv2.polylines(expected, [np.array(polygon, np.int32).reshape(-1, 1, 2)], True, RED, 1, cv2.LINE_AA)
    np.testing.assert_array_equal(out, expected)
    assert tuple(out[100, 120]) != tuple(image[100, 120])  # a vertex of the outline
    assert tuple(out[150, 160]) == tuple(image[150, 160])  # not filled
    line = {"x1": 1, "y1": 2, "x2": 3, "y2": 4, "score": 0.5, "class_id": 0, "polygon": [[1, 2], [3, 4], [1, 4]]}
    assert detection_of(line).polygon == ((1.0, 2.0), (3.0, 4.0), (1.0, 4.0))


def test_grey_images_are_drawn_in_colour_and_bad_ones_refused() -> None:
    grey = skimage.data.camera()
    out = draw_detections(grey, [Detection(10, 50, 200, 220, 0.5, 0, "person")])
    assert out.shape == (*grey.shape, 3) and tuple(out[220, 100]) == RED
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(grey.astype(np.float32), [])


def test_cli_draws_a_servers_answer(detection_server: PeregrineServer, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "coffee.png"
    cv2.imwrite(str(photo), coffee_bgr())
    url = f"127.0.0.1:{detection_server.port}"
    assert main([str(photo), "-o", str(tmp_path / "out.png"), "-u", url, "--model", "det"]) == 0
    with DetectionClient(url, deadline_s=30.0) as client:
        boxes = client.detect(photo, model="det")
    assert len(boxes) > 3  # the seeded detector finds tens of boxes in photographs
    assert f"{len(boxes)} boxes" in capsys.readouterr().out
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out.png")), draw_detections(coffee_bgr(), boxes))
    # An unknown model is the server's NOT_FOUND, reported with exit status 1.
    assert main([str(photo), "-o", str(tmp_path / "x.png"), "-u", url, "--model", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_cli_draws_json_lines_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), coffee_bgr())
    cv2.imwrite(str(tmp_path / "b.png"), coffee_bgr()[::-1].copy())
    box = {"x1": 10, "y1": 40, "x2": 110, "y2": 140, "score": 0.8, "class_id": 2, "label": "car"}
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"image": "a.png", "detections": [box, {**box, "score": 0.2}]}) + "\n\n"
                       + json.dumps({"path": str(tmp_path / "b.png"), "detections": []}) + "\n")
    out = tmp_path / "drawn"
    assert main(["--results", str(results), "-o", str(out), "--score-threshold", "0.5"]) == 0
    np.testing.assert_array_equal(cv2.imread(str(out / "a.png")),
                                  draw_detections(coffee_bgr(), [Detection(10, 40, 110, 140, 0.8, 2, "car")]))
    np.testing.assert_array_equal(cv2.imread(str(out / "b.png")), coffee_bgr()[::-1])
    annotate_image(tmp_path / "a.png", [], tmp_path / "same.png")
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "same.png")), coffee_bgr())

    results.write_text('{"image": "a.png", "detections": [{"x1": 1}]}\n')
    assert main(["--results", str(results), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "results.jsonl:1" in err and "missing field 'y1'" in err


def test_cli_draws_the_lines_batch_and_jobs_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `source` and `boxes` (peregrine batch's and a job's JSON Lines); a failed item's line has nothing to draw.
    cv2.imwrite(str(tmp_path / "a.png"), coffee_bgr())
    box = {"x1": 30.5, "y1": 60.0, "x2": 250.0, "y2": 300.0, "score": 0.7, "class_id": 1, "label": "bicycle"}
    results = tmp_path / "d.jsonl"
    results.write_text(json.dumps({"index": 0, "source": "a.png", "height": 400, "width": 600, "boxes": [box]})
                       + "\n" + json.dumps({"index": 1, "source": "gone.png", "error": "not an image"}) + "\n")
    out = tmp_path / "drawn"
    assert main(["--results", str(results), "-o", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["a.png"] and "1 boxes" in capsys.readouterr().out
    np.testing.assert_array_equal(cv2.imread(str(out / "a.png")),
                                  draw_detections(coffee_bgr(), [Detection(30.5, 60, 250, 300, 0.7, 1, "bicycle")]))
