"""Peregrine's boxes against ultralytics' own ``predict`` on the same ONNX export and the same image files.

The test suite checks the pipeline against ultralytics' predictor written out with OpenCV and NumPy
(tests/pipeline/pipeline_support.py), because the project does not depend on torch. This script checks it
against ultralytics itself, in two steps, so that each runs with the Python that has what it needs:

    # 1. with a Python that has ultralytics (pip install ultralytics onnxruntime): its predictions
    python benchmarks/parity_ultralytics.py predict --model best.onnx --images photos/ --out ultralytics.jsonl

    # 2. with the project's Python: the same export served by a detection pipeline, then compared
    python benchmarks/parity_ultralytics.py compare --model best.onnx --images photos/ --reference ultralytics.jsonl

Both take ``--conf``, ``--iou``, ``--max-det`` (ultralytics' defaults: 0.25, 0.7, 300), ``--agnostic`` and
``--classes 0,2`` and must be given the same ones. ``predict`` runs ``YOLO(model).predict(image_path,
rect=False)`` at the export's own size (a dynamic export: ``--imgsz``, default 640, which ``compare`` gives the
pipeline as ``input_size``); ``compare``
writes a repository with the export and a ``peregrine_detection`` pipeline over it into a temporary
directory, runs it over the images with ``peregrine batch`` (the data plane a server runs, no port) and
reports per image any difference in the number of boxes, a class, a corner by more than ``--corner-px``
(default 0: the same float32 numbers) or a score by more than ``--score`` (default 0); for a pose model,
each box's keypoints too (x, y within ``--corner-px``, their visibility within ``--score``), and for a
segmentation model each box's mask polygon (``masks.xy``: every point within ``--corner-px``). The exit status is 1
when an image differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def predict(args: argparse.Namespace) -> int:
    import onnxruntime as ort
    from ultralytics import YOLO

    shape = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    imgsz = tuple(shape[2:]) if all(isinstance(d, int) for d in shape[2:]) else args.imgsz  # a fixed export's own
    model = YOLO(str(args.model))  # its task (detect, segment, pose) from the export's metadata
    with open(args.out, "w") as out:
        for path in images_in(args.images):
            result = model.predict(str(path), imgsz=imgsz, conf=args.conf, iou=args.iou, max_det=args.max_det,
                                   agnostic_nms=args.agnostic, classes=args.classes or None, rect=False,
                                   verbose=False)[0]
            boxes = result.boxes
            rows = [{"x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "score": s, "class_id": int(c)}
                    for b, s, c in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True)]
            if result.keypoints is not None:  # a pose model's: [x, y(, visibility)] per keypoint, per box
                for row, points in zip(rows, result.keypoints.data.tolist(), strict=True):
                    row["keypoints"] = points
            if result.masks is not None:  # a segmentation model's: each box's mask outline, masks.xy
                for row, polygon in zip(rows, result.masks.xy, strict=True):
                    row["polygon"] = polygon.tolist()
            out.write(json.dumps({"source": str(path.relative_to(args.images)), "height": result.orig_shape[0],
                                  "width": result.orig_shape[1], "boxes": rows}) + "\n")
    print(f"wrote {args.out}")
    return 0


def _repository(root: Path, model: Path, args: argparse.Namespace) -> None:
    import onnx

    (root / "detector" / "1").mkdir(parents=True)
    (root / "detector" / "1" / "model.onnx").write_bytes(model.read_bytes())
    (root / "detector" / "config.toml").write_text("max_batch_size = 16\n")
    graph = onnx.load(str(model), load_external_data=False)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    dynamic = any(d.dim_value <= 0 for d in dims[2:])
    size = f"input_size = [{args.imgsz}, {args.imgsz}]\n" if dynamic else ""
    (root / "detect").mkdir()
    (root / "detect" / "config.toml").write_text(
        'platform = "peregrine_detection"\nmax_batch_size = 16\n\n[detection]\ndetector = "detector"\n'
        f"score_threshold = {args.conf}\niou_threshold = {args.iou}\nmax_detections = {args.max_det}\n"
        f"agnostic_nms = {str(args.agnostic).lower()}\nclasses = {args.classes}\n{size}")


def _differences(got: dict[str, Any], want: dict[str, Any], corner_px: float, score: float) -> str | None:
    if (got["height"], got["width"]) != (want["height"], want["width"]):
        return f"size {got['height']}x{got['width']}, ultralytics {want['height']}x{want['width']}"
    mine = sorted(got["boxes"], key=lambda b: -b["score"])
    theirs = sorted(want["boxes"], key=lambda b: -b["score"])
    if len(mine) != len(theirs):
        return f"{len(mine)} boxes, ultralytics {len(theirs)}"
    used = [False] * len(mine)
    for k, ref in enumerate(theirs):  # matched greedily: boxes of equal score may come in either order
        for i, box in enumerate(mine):
            if used[i] or box["class_id"] != ref["class_id"] or abs(box["score"] - ref["score"]) > score:
                continue
            if (max(abs(box[c] - ref[c]) for c in ("x1", "y1", "x2", "y2")) <= corner_px
                    and _same_keypoints(box.get("keypoints"), ref.get("keypoints"), corner_px, score)
                    and _same_keypoints(box.get("polygon"), ref.get("polygon"), corner_px, score)):
                used[i] = True
                break
        else:
            return f"ultralytics' box {k} {ref} has no match"
    return None


def _same_keypoints(got: list[list[float]] | None, want: list[list[float]] | None, px: float, score: float) -> bool:
    """Whether a box's keypoints (or polygon points) match ultralytics' (x, y within ``px``, a keypoint's
    visibility within ``score``)."""
    if got is None or want is None:
        return got is want
    return len(got) == len(want) and all(
        len(g) == len(w) and max(abs(g[0] - w[0]), abs(g[1] - w[1])) <= px
        and all(abs(a - b) <= score for a, b in zip(g[2:], w[2:], strict=True))
        for g, w in zip(got, want, strict=True))


def compare(args: argparse.Namespace) -> int:
    reference = {json.loads(line)["source"]: json.loads(line) for line in args.reference.read_text().splitlines()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repository"
        _repository(root, args.model, args)
        output = Path(tmp) / "peregrine.jsonl"
        run = [sys.executable, "-c", "from peregrine.server.commands import main; raise SystemExit(main())",
               "batch", "--model", "detect", "--repository", str(root), "--input", str(args.images),
               "--output", str(output), "--no-progress"]
        subprocess.run(run, check=True, stdout=subprocess.DEVNULL)
        served = {}
        for line in output.read_text().splitlines():
            item = json.loads(line)
            served[str(Path(item["source"]).resolve().relative_to(args.images.resolve()))] = item
    differing = boxes = 0
    for name, want in sorted(reference.items()):
        got = served.get(name)
        problem = "not answered" if got is None else _differences(got, want, args.corner_px, args.score)
        boxes += len(want["boxes"])
        if problem:
            differing += 1
            print(f"{name}: {problem}")
    print(f"{len(reference)} images, {boxes} boxes of ultralytics: {differing} images differ "
          f"(corners within {args.corner_px:g} px, scores within {args.score:g})")
    return 1 if differing else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    for name in ("predict", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--model", type=Path, required=True, help="an ultralytics ONNX export")
        p.add_argument("--images", type=Path, required=True)
        p.add_argument("--imgsz", type=int, default=640, help="input size of a dynamic export")
        p.add_argument("--conf", type=float, default=0.25)
        p.add_argument("--iou", type=float, default=0.7)
        p.add_argument("--max-det", type=int, default=300)
        p.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
        p.add_argument("--classes", type=lambda s: [int(c) for c in s.split(",") if c], default=[],
                       help="keep only these class ids, e.g. 0,2")
        if name == "predict":
            p.add_argument("--out", type=Path, required=True)
        else:
            p.add_argument("--reference", type=Path, required=True, help="what predict wrote")
            p.add_argument("--corner-px", type=float, default=0.0)
            p.add_argument("--score", type=float, default=0.0)
    args = ap.parse_args()
    return predict(args) if args.step == "predict" else compare(args)


if __name__ == "__main__":
    raise SystemExit(main())
