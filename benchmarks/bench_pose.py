"""What a pose model's keypoints cost the detection pipeline: the same detector with and without its keypoint
branch, in one run.

``peregrine.modelgen`` builds a YOLOv8n detector (one class, ``person``) and the YOLOv8n-pose model of the same
seed, whose boxes are the detector's exactly (17 x 3 keypoints after them; or ``--pose-model``/``--detect-model``,
an ultralytics pose export and its detector). Both are loaded as detection pipelines in this process and run
on the same batches of the packaged photographs, alternating (ABAB...), and these are reported per pipeline
(medians over the rounds):

* ``post``: the pipeline's post stage for the batch (head decoding, NMS, mapping back; the pose pipeline's
  keypoints gathered and mapped as well, on the host);
* ``infer``: the model (the keypoint branch's own cost, for scale);
* ``encode``: the batch's ``DetectResponse`` built and serialised (a pose box carries 17 ``Keypoint``
  messages).

    python benchmarks/bench_pose.py --imgsz 640 --batch 16 --rounds 30 --out benchmarks/results/pose.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from _common import packaged_photos, write_report
from peregrine.modelgen import yolov8_detector, yolov8_pose
from peregrine.proto import detection_pb2 as det
from peregrine.server.codecs.detection import encode_detect_response
from peregrine.server.config import load_model_config
from peregrine.server.core.types import FrameRequest
from peregrine.server.models.detection import DetectionModel

PIPELINE = """platform = "peregrine_detection"
max_batch_size = {batch}

[detection]
detector = "{detector}"
score_threshold = {conf}
"""


def _pipeline(root: Path, name: str, model: bytes, args: argparse.Namespace) -> DetectionModel:
    (root / f"{name}_model" / "1").mkdir(parents=True)
    (root / f"{name}_model" / "1" / "model.onnx").write_bytes(model)
    (root / f"{name}_model" / "config.toml").write_text(f"max_batch_size = {args.batch}\n")
    (root / name).mkdir()
    (root / name / "config.toml").write_text(PIPELINE.format(batch=args.batch, detector=f"{name}_model",
                                                             conf=args.conf))
    cfg = load_model_config(root / name)
    return DetectionModel.load(name, 1, root / f"{name}_model" / "1", cfg)


def _round(pipeline: DetectionModel, executor: Any, frames: list[np.ndarray]) -> tuple[dict[str, float], Any]:
    result = executor.execute(0, [FrameRequest(pipeline.name, frames=frames, options=pipeline.default_options())])[0]
    t0 = time.perf_counter_ns()
    encode_detect_response(det.DetectRequest(), result).SerializeToString()
    encode_us = (time.perf_counter_ns() - t0) / 1e3
    return {"post": result.times.post_ns / 1e3, "infer": result.times.infer_ns / 1e3, "encode": encode_us}, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=640, help="input size of the generated models")
    ap.add_argument("--batch", type=int, default=16, help="frames a batch")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--pose-model", type=Path, help="an ultralytics pose export instead of the generated one")
    ap.add_argument("--detect-model", type=Path, help="with --pose-model: its detector (for the comparison)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.pose_model:
        if not args.detect_model:
            ap.error("--pose-model needs --detect-model")
        pose_bytes, detect_bytes = args.pose_model.read_bytes(), args.detect_model.read_bytes()
    else:
        pose_bytes = yolov8_pose(0, imgsz=args.imgsz).SerializeToString()
        detect_bytes = yolov8_detector(0, imgsz=args.imgsz, class_names=["person"]).SerializeToString()
    photos = [cv2.cvtColor(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for j in packaged_photos()]
    frames = [photos[i % len(photos)] for i in range(args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        pipelines = {"detect": _pipeline(Path(tmp), "detect", detect_bytes, args),
                     "pose": _pipeline(Path(tmp), "pose", pose_bytes, args)}
        executors = {name: p.make_executor() for name, p in pipelines.items()}
        for name, p in pipelines.items():  # first runs out of the picture
            _round(p, executors[name], frames)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in pipelines}
        results: dict[str, Any] = {}
        for _ in range(args.rounds):
            for name, p in pipelines.items():
                times, results[name] = _round(p, executors[name], frames)
                samples[name].append(times)
    boxes = sum(len(d) for d in results["pose"].detections)
    same = all(np.array_equal(a, b) for a, b in zip(results["pose"].detections, results["detect"].detections,
                                                     strict=True))
    rows = ["| pipeline | post µs | infer µs | encode µs |", "|---|---|---|---|"]
    medians = {name: {k: statistics.median(s[k] for s in samples[name]) for k in ("post", "infer", "encode")}
               for name in pipelines}
    for name in pipelines:
        m = medians[name]
        rows.append(f"| {name} | {m['post']:.0f} | {m['infer']:.0f} | {m['encode']:.0f} |")
    ratio = medians["pose"]["post"] / medians["detect"]["post"]
    text = "\n".join([
        f"- models: {'generated YOLOv8n and YOLOv8n-pose (seed 0)' if not args.pose_model else args.pose_model.name}"
        f", input {args.imgsz}, batches of {args.batch} photographs, conf {args.conf}, {args.rounds} rounds ABAB",
        f"- boxes a batch: {boxes} (the same boxes from both: {same})",
        "", *rows, "",
        f"pose post / detect post: {ratio:.2f}; keypoints' post cost: "
        f"{(medians['pose']['post'] - medians['detect']['post']) / args.batch:.0f} µs a frame"])
    print(text)
    write_report(args.out, "Pose keypoints: the pipeline's post stage with and without them", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
