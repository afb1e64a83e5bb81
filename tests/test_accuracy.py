"""Accuracy against labels (server/accuracy.py): YOLO and COCO ground truth, COCO's mAP with literal boxes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from peregrine.server.accuracy import GroundTruth, LabelError, mean_average_precision, read_labels

pytest.importorskip("pycocotools")


def box(x1: float, y1: float, x2: float, y2: float, cls: int = 0, score: float = 0.9) -> dict[str, float]:
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "class_id": cls, "score": score}


def truth(*objects: tuple[float, float, float, float, int]) -> GroundTruth:
    return GroundTruth({"a.jpg": (100, 200)}, {"a.jpg": list(objects)})


def test_perfect_shifted_and_missing_detections() -> None:
    gt = truth((10, 10, 50, 50, 0), (100, 20, 180, 90, 1))
    perfect = mean_average_precision(gt, {"a.jpg": [box(10, 10, 50, 50), box(100, 20, 180, 90, 1)]})
    assert perfect == pytest.approx((1, 1))
    # Class 1 found at IoU 0.5 exactly (a box twice as wide): counts at 0.50, not above 0.55.
    half = mean_average_precision(gt, {"a.jpg": [box(10, 10, 50, 50), box(100, 20, 260, 90, 1)]})
    assert half[1] == pytest.approx(1.0) and half[0] == pytest.approx((10 + 1) / 20)
    # Class 1 missed: its AP is 0, the mean over the two classes 0.5.
    assert mean_average_precision(gt, {"a.jpg": [box(10, 10, 50, 50)]}) == pytest.approx((0.5, 0.5))
    assert mean_average_precision(gt, {"a.jpg": []}) == (0.0, 0.0)
    # A false positive scored above the true one halves the precision where recall reaches 1.
    fp_first = mean_average_precision(truth((10, 10, 50, 50, 0)),
                                      {"a.jpg": [box(60, 60, 90, 90, score=0.95), box(10, 10, 50, 50, score=0.5)]})
    assert fp_first[1] == pytest.approx(0.5, abs=0.01)


def test_more_than_a_hundred_boxes_per_image_all_count() -> None:
    objects = [(float(x), 0.0, x + 1.0, 1.0, 0) for x in range(0, 300, 2)]  # 150 objects
    gt = GroundTruth({"a.jpg": (10, 400)}, {"a.jpg": objects})
    found = [box(x1, y1, x2, y2, score=0.5 + i / 1000) for i, (x1, y1, x2, y2, _) in enumerate(objects)]
    assert mean_average_precision(gt, {"a.jpg": found}) == pytest.approx((1, 1))


def _image(path: Path, height: int, width: int) -> Path:
    cv2.imwrite(str(path), np.zeros((height, width, 3), np.uint8))
    return path


def test_yolo_labels_are_normalised_to_each_image(tmp_path: Path) -> None:
    images = [_image(tmp_path / "a.png", 100, 200), _image(tmp_path / "b.png", 50, 50)]
    labels = tmp_path / "labels"
    (labels / "sub").mkdir(parents=True)
    (labels / "sub" / "a.txt").write_text("3 0.5 0.5 0.2 0.4\n\n1 0.1 0.1 0 0.1\n")  # the second has no area
    gt = read_labels(labels, images, [])
    assert gt.sizes == {"a.png": (100, 200), "b.png": (50, 50)}
    assert gt.objects == {"a.png": [(80.0, 30.0, 120.0, 70.0, 3)], "b.png": []}
    (labels / "sub" / "a.txt").write_text("3 0.5 0.5 1.2 0.4\n")
    with pytest.raises(LabelError, match=r"a\.txt:1: .*\[0, 1\]"):
        read_labels(labels, images, [])
    (labels / "sub" / "a.txt").write_text("person 0.5 0.5 0.2 0.4\n")
    with pytest.raises(LabelError, match=r"a\.txt:1: expected 'class cx cy w h'"):
        read_labels(labels, images, [])


def test_coco_labels_match_the_model_classes_by_name(tmp_path: Path) -> None:
    images = [_image(tmp_path / "a.png", 100, 200)]
    doc = {"images": [{"id": 7, "file_name": "dir/a.png"}, {"id": 8, "file_name": "other.png"}],
           "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
           "annotations": [{"image_id": 7, "category_id": 3, "bbox": [10, 20, 30, 40]},
                           {"image_id": 8, "category_id": 1, "bbox": [0, 0, 5, 5]}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    assert read_labels(path, images, ["person", "bicycle", "car"]).objects == {"a.png": [(10.0, 20.0, 40.0, 60.0, 2)]}
    with pytest.raises(LabelError, match="'car' is not one of the model's classes"):
        read_labels(path, images, ["person"])
    path.write_text("[]")
    with pytest.raises(LabelError, match="not a COCO instances file"):
        read_labels(path, images, ["person"])
    with pytest.raises(LabelError, match="expected a directory of YOLO"):
        read_labels(tmp_path / "a.png", images, [])
