"""Accuracy against labels: ground truth in YOLO or COCO format, and COCO's mAP (pycocotools).

``read_labels(path, images, labels)`` reads the ground truth of ``images`` (file paths) from ``path``:

- a directory of YOLO label files, one ``<image stem>.txt`` per image (searched for recursively), each line
  ``class cx cy w h`` normalised to the image's size (ultralytics' format; an image without a file has no
  objects);
- a COCO ``instances`` JSON file (``images`` with ``file_name``, ``annotations`` with ``bbox`` as
  ``[x, y, w, h]`` in pixels, ``categories``): images are matched by file name, categories to the model's
  class ids by name (``labels``, the model's class names).

Objects without area are skipped (no box can overlap them).

``mean_average_precision(truth, detections)`` scores detections (per image, boxes as the pipelines answer:
``x1, y1, x2, y2, score, class_id``) with pycocotools' COCOeval: mAP at IoU 0.50:0.95 and at 0.50, as COCO
and ultralytics report them (every detection counted, not COCO's first 100 per image). Needs the ``accuracy``
extra (pycocotools).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_LABEL_BYTES = 64 * 1024 * 1024  # a labels file (one YOLO .txt or the COCO JSON) larger than this is refused


class LabelError(ValueError):
    """Labels that cannot be read, with the file and what was wrong."""


@dataclass
class GroundTruth:
    """Per image (by file name): its (height, width) and its objects as (x1, y1, x2, y2, class id) in pixels."""

    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    objects: dict[str, list[tuple[float, float, float, float, int]]] = field(default_factory=dict)


def _read(path: Path) -> str:
    if path.stat().st_size > MAX_LABEL_BYTES:
        raise LabelError(f"{path}: over {MAX_LABEL_BYTES} bytes")
    return path.read_text(encoding="utf-8")


def _size(path: Path) -> tuple[int, int]:
    import cv2
    import numpy as np

    image = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise LabelError(f"{path}: not an image OpenCV reads")
    return int(image.shape[0]), int(image.shape[1])


def read_labels(path: Path, images: Sequence[Path], labels: Sequence[str]) -> GroundTruth:
    """The ground truth of ``images`` from a YOLO label directory or a COCO JSON file (see the module)."""
    truth = GroundTruth()
    for image in images:
        truth.sizes[image.name] = _size(image)
        truth.objects[image.name] = []
    if path.is_dir():
        files = {p.stem: p for p in sorted(path.rglob("*.txt"))}
        for image in images:
            if image.stem in files:
                truth.objects[image.name] = _yolo(files[image.stem], truth.sizes[image.name])
    elif path.suffix.lower() == ".json":
        _coco(path, truth, labels)
    else:
        raise LabelError(f"{path}: expected a directory of YOLO .txt label files or a COCO .json file")
    return truth


def _yolo(path: Path, size: tuple[int, int]) -> list[tuple[float, float, float, float, int]]:
    height, width = size
    objects = []
    for number, line in enumerate(_read(path).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:5])
        except (ValueError, TypeError):
            raise LabelError(f"{path}:{number}: expected 'class cx cy w h' (an integer and four numbers), got "
                             f"{line[:80]!r}") from None
        if len(fields) < 5 or cls < 0 or not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            raise LabelError(f"{path}:{number}: expected a class id >= 0 and four numbers in [0, 1], got "
                             f"{line[:80]!r}")
        if w == 0 or h == 0:
            continue  # no area: no detection can overlap it (IoU 0/0)
        objects.append(((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height,
                        cls))
    return objects


def _coco(path: Path, truth: GroundTruth, labels: Sequence[str]) -> None:
    try:
        doc = json.loads(_read(path))
        ids = {img["id"]: Path(img["file_name"]).name for img in doc["images"]}
        names = {c["id"]: c["name"] for c in doc["categories"]}
        annotations = doc["annotations"]
    except (ValueError, KeyError, TypeError) as e:
        raise LabelError(f"{path}: not a COCO instances file ({type(e).__name__}: {e})") from None
    index = {name: i for i, name in enumerate(labels)}
    for a in annotations:
        image = ids.get(a.get("image_id"))
        if image not in truth.objects:
            continue  # an image not among those measured
        name = names.get(a.get("category_id"))
        if name not in index:
            raise LabelError(f"{path}: category {name!r} is not one of the model's classes")
        x, y, w, h = (float(v) for v in a["bbox"])
        if w <= 0 or h <= 0:
            continue
        truth.objects[image].append((x, y, x + w, y + h, index[name]))


def _xywh(box: Mapping[str, Any]) -> list[float]:
    x1, y1, x2, y2 = (float(box[k]) for k in ("x1", "y1", "x2", "y2"))
    return [x1, y1, x2 - x1, y2 - y1]


def mean_average_precision(truth: GroundTruth, detections: Mapping[str, Sequence[Mapping[str, Any]]]
                           ) -> tuple[float, float]:
    """(mAP at IoU 0.50:0.95, mAP at 0.50) of ``detections`` (per image file name) against ``truth``; NaN
    when the ground truth has no object at all."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted(truth.sizes)
    image_ids = {name: i + 1 for i, name in enumerate(names)}
    classes = sorted({o[4] for objs in truth.objects.values() for o in objs}
                     | {int(d["class_id"]) for ds in detections.values() for d in ds})
    if not any(truth.objects.values()):
        return float("nan"), float("nan")
    gt: dict[str, Any] = {
        "images": [{"id": image_ids[n], "height": truth.sizes[n][0], "width": truth.sizes[n][1], "file_name": n}
                   for n in names],
        "categories": [{"id": c, "name": str(c)} for c in classes],
        "annotations": [{"id": k + 1, "image_id": image_ids[n], "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                        for k, (n, (x1, y1, x2, y2, c)) in enumerate((n, o) for n in names for o in truth.objects[n])],
    }
    found = [{"image_id": image_ids[n], "category_id": int(d["class_id"]), "score": float(d["score"]),
              "bbox": _xywh(d)} for n, ds in detections.items() if n in image_ids for d in ds]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        if not found:
            return 0.0, 0.0
        evaluation = COCOeval(coco, coco.loadRes(found), "bbox")
        # COCO keeps 100 detections per image; a detector may answer more (ultralytics keeps 300): all count.
        evaluation.params.maxDets = [max(100, max(Counter(f["image_id"] for f in found).values()))]
        evaluation.evaluate()
        evaluation.accumulate()
    # precision[iou threshold, recall point, class, area range, max detections]; -1 where a class has no
    # ground truth. Area range 0 is "all".
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    return _mean(precision), _mean(precision[0])


def _mean(values: Any) -> float:
    kept = values[values > -1]
    return float(kept.mean()) if kept.size else 0.0
