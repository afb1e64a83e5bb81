"""A trained detector to measure quantization's agreement on (issue 20), made here from nothing downloaded.

The bundled detectors are untrained (their boxes are noise near the threshold, which any change of numerics
moves), and no trained weights can be fetched on a machine that reaches only package registries. This
script makes one: it draws a detection dataset of flat-coloured shapes (circle, rectangle, triangle, cross)
on textured backgrounds, with YOLO labels, trains ultralytics' YOLOv8n on it from scratch on the CPU, and
exports it with ultralytics to ONNX (dynamic height and width), then writes a model repository with the
detector (``shapes``) and its detection pipeline (``shapes_detect``) that ``peregrine quantize`` and
``bench_ladder.py`` take like any other.

It needs torch and ultralytics, which Peregrine does not depend on: run it with a Python that has them
(``pip install ultralytics``), then the rest with the project's:

    python benchmarks/train_shapes.py --out /tmp/shapes --epochs 30          # torch + ultralytics
    peregrine quantize --model shapes --repository /tmp/shapes/repository --variants fp16,int8 \
        --calibration /tmp/shapes/data/images/train --images /tmp/shapes/data/images/val \
        --labels /tmp/shapes/data/labels/val --report quantize_shapes.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("circle", "rectangle", "triangle", "cross")


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured BGR background: smooth colour fields at a few scales, plus grain."""
    image = np.zeros((h, w, 3), np.float32)
    for cells, weight in ((2, 90.0), (6, 50.0), (24, 25.0)):
        field = rng.uniform(-1, 1, (cells, cells, 3)).astype(np.float32)
        image += weight * cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    image += rng.uniform(60, 190, 3).astype(np.float32) + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def draw(rng: np.random.Generator, image: np.ndarray, kind: int) -> tuple[float, float, float, float] | None:
    """Draw one shape of class ``kind``; its box (x0, y0, x1, y1) in pixels."""
    h, w = image.shape[:2]
    size = int(rng.uniform(0.06, 0.35) * min(h, w))
    cx, cy = int(rng.uniform(size / 2, w - size / 2)), int(rng.uniform(size / 2, h - size / 2))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    half = size // 2
    if kind == 0:
        cv2.circle(image, (cx, cy), half, colour, -1, cv2.LINE_AA)
        return cx - half, cy - half, cx + half, cy + half
    if kind == 1:
        aspect = rng.uniform(0.5, 1.0)
        hw, hh = (half, int(half * aspect)) if rng.random() < 0.5 else (int(half * aspect), half)
        cv2.rectangle(image, (cx - hw, cy - hh), (cx + hw, cy + hh), colour, -1, cv2.LINE_AA)
        return cx - hw, cy - hh, cx + hw, cy + hh
    if kind == 2:
        angle = rng.uniform(0, 2 * np.pi)
        turns = angle + np.arange(3) * 2 * np.pi / 3
        points = np.stack([cx + half * np.cos(turns), cy + half * np.sin(turns)], axis=1).astype(np.int32)
        cv2.fillPoly(image, [points], colour, cv2.LINE_AA)
        return points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()
    bar = max(2, size // 5)
    cv2.rectangle(image, (cx - half, cy - bar), (cx + half, cy + bar), colour, -1, cv2.LINE_AA)
    cv2.rectangle(image, (cx - bar, cy - half), (cx + bar, cy + half), colour, -1, cv2.LINE_AA)
    return cx - half, cy - half, cx + half, cy + half


def dataset(root: Path, split: str, count: int, seed: int, size: tuple[int, int]) -> None:
    """``count`` images (JPEG) of 1 to 6 shapes each, and their YOLO labels (class cx cy w h, normalised)."""
    rng = np.random.default_rng(seed)
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = size if rng.random() < 0.5 else size[::-1]
        image = background(rng, h, w)
        rows = []
        for _ in range(int(rng.integers(1, 7))):
            kind = int(rng.integers(0, len(CLASSES)))
            x0, y0, x1, y1 = draw(rng, image, kind)
            rows.append(f"{kind} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                        f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
        # A shape drawn later may cover one drawn before: such a label stays (as a partly hidden object).
        cv2.imwrite(str(images / f"{split}-{i:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        (labels / f"{split}-{i:05d}.txt").write_text("\n".join(rows) + "\n")


def repository(root: Path, onnx: Path) -> None:
    """The detector and its pipeline, configured as the bundled yolov8n and yolov8n_detect are."""
    (root / "shapes" / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx, root / "shapes" / "1" / "model.onnx")
    (root / "shapes" / "config.toml").write_text(
        "# YOLOv8n trained on drawn shapes by benchmarks/train_shapes.py, exported by ultralytics (dynamic H, W)\n"
        "max_batch_size = 16\n\n[instance_group]\ncount = 1\ndevice = \"auto\"\n")
    (root / "shapes_detect").mkdir(exist_ok=True)
    # Its input size and class names come from the metadata ultralytics' export records (imgsz, names).
    (root / "shapes_detect" / "config.toml").write_text(
        "platform = \"peregrine_detection\"\nmax_batch_size = 16\n\n[detection]\ndetector = \"shapes\"\n"
        "score_threshold = 0.25\niou_threshold = 0.7\nmax_detections = 300\n\n"
        "[instance_group]\ncount = 1\ndevice = \"auto\"\n\n[onnxruntime]\nallow_spinning = false\n\n"
        "[dynamic_batching]\nwindow = \"adaptive\"\nmax_queue_delay_us = 2000\nmax_queue_size = 256\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=int, default=480, help="training images")
    ap.add_argument("--val", type=int, default=96, help="held-out images (validation, and the agreement set)")
    ap.add_argument("--imgsz", type=int, default=320, help="training and export input size")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing to download: the model is built from its yaml
    data = args.out / "data"
    began = time.perf_counter()
    dataset(data, "train", args.train, args.seed, (args.imgsz, args.imgsz * 4 // 3))
    dataset(data, "val", args.val, args.seed + 1, (args.imgsz, args.imgsz * 4 // 3))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    (data / "shapes.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    print(f"dataset: {args.train} + {args.val} images in {time.perf_counter() - began:.0f} s", file=sys.stderr)

    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    model.train(data=str(data / "shapes.yaml"), imgsz=args.imgsz, epochs=args.epochs, batch=args.batch, device="cpu",
                workers=2, plots=False, amp=False, pretrained=False, seed=args.seed, deterministic=True,
                project=str(args.out / "runs"), name="shapes", exist_ok=True, verbose=False)
    metrics = model.val(data=str(data / "shapes.yaml"), imgsz=args.imgsz, device="cpu", plots=False, verbose=False)
    onnx = Path(model.export(format="onnx", imgsz=args.imgsz, dynamic=True, simplify=False))
    repository(args.out / "repository", onnx)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - began:.0f} s; mAP50 {metrics.box.map50:.3f}, "
          f"mAP50-95 {metrics.box.map:.3f} on {args.val} held-out images; repository in {args.out / 'repository'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
