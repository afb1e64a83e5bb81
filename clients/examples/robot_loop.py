"""A robot/vehicle perception loop on Peregrine: camera -> detector -> decision, with a safety watchdog.

Each frame goes to the server with a deadline. A watchdog thread is armed for every frame; if no valid
result has arrived when the deadline passes, it takes the safe action at once ("BRAKE": logged and
counted), whether the call is still in flight or failed. The camera is synthetic (moving shapes drawn with
NumPy) or a video file (OpenCV). Frames that come while the loop is still busy are skipped: the loop
always works on the newest frame.

For now frames travel over the Open Inference Protocol (``ModelInfer``, model ``yolov8n``, input
``images`` [1,3,640,640] FP32): letterboxing happens here and the YOLOv8 head is decoded here. Once the
server's typed detection service exists, ``DetectionClient.stream`` replaces both.

Run against ``make serve`` (gRPC on 127.0.0.1:8001)::

    python clients/examples/robot_loop.py --fps 10 --duration 10 --deadline-ms 100
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
from peregrine.client import Detection, InferenceClient, PeregrineClientError
from peregrine.client.images import LetterboxParams, letterbox_nchw
from peregrine.client.load import LatencyHistogram

log = logging.getLogger("robot_loop")


# -- cameras -------------------------------------------------------------------------------------------
class SyntheticCamera:
    """Frames of ``height`` x ``width`` RGB with a few shapes moving across a road-like background."""

    def __init__(self, width: int = 1280, height: int = 720, shapes: int = 4, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        self.pos = rng.uniform([0, height * 0.3], [width, height * 0.9], size=(shapes, 2))
        self.vel = rng.uniform(-12, 12, size=(shapes, 2))
        self.size = rng.uniform(40, 160, size=shapes)
        self.color = rng.integers(40, 255, size=(shapes, 3), dtype=np.uint8)
        sky = np.linspace(200, 120, height // 3, dtype=np.float32)
        road = np.linspace(90, 60, height - height // 3, dtype=np.float32)
        shade = np.concatenate([sky, road]).astype(np.uint8)
        self.background = np.repeat(np.repeat(shade[:, None, None], width, axis=1), 3, axis=2)
        self.yy, self.xx = np.mgrid[0:height, 0:width]

    def frames(self) -> Iterator[np.ndarray]:
        while True:
            frame = self.background.copy()
            for i in range(len(self.size)):
                self.pos[i] += self.vel[i]
                for axis, limit in ((0, self.width), (1, self.height)):
                    if not 0 <= self.pos[i, axis] < limit:
                        self.vel[i, axis] *= -1
                        self.pos[i, axis] = np.clip(self.pos[i, axis], 0, limit - 1)
                x, y, s = int(self.pos[i, 0]), int(self.pos[i, 1]), int(self.size[i])
                if i % 2:  # a box
                    frame[max(y - s // 2, 0):y + s // 2, max(x - s, 0):x + s] = self.color[i]
                else:  # a disc
                    y0, y1, x0, x1 = max(y - s, 0), min(y + s, self.height), max(x - s, 0), min(x + s, self.width)
                    disc = (self.yy[y0:y1, x0:x1] - y) ** 2 + (self.xx[y0:y1, x0:x1] - x) ** 2 <= s * s
                    frame[y0:y1, x0:x1][disc] = self.color[i]
            yield frame


def video_frames(path: str) -> Iterator[np.ndarray]:
    """RGB frames of a video file (needs OpenCV); ends with the file."""
    import cv2

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise OSError(f"{path}: OpenCV cannot open this video")
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield np.ascontiguousarray(bgr[:, :, ::-1])
    finally:
        cap.release()


# -- the watchdog --------------------------------------------------------------------------------------
class Watchdog:
    """Armed per frame with an absolute deadline (time.monotonic()); if it is not disarmed in time, its
    thread calls ``on_miss(frame_id)`` at the deadline. ``disarm`` returns False when it already fired."""

    def __init__(self, on_miss: Callable[[int], None]) -> None:
        self._on_miss = on_miss
        self._cond = threading.Condition()
        self._armed: tuple[int, float] | None = None
        self._fired: set[int] = set()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def arm(self, frame_id: int, deadline: float) -> None:
        with self._cond:
            self._armed = (frame_id, deadline)
            self._cond.notify()

    def disarm(self, frame_id: int) -> bool:
        with self._cond:
            if self._armed is not None and self._armed[0] == frame_id:
                self._armed = None
            if frame_id in self._fired:
                self._fired.discard(frame_id)
                return False
            return True

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                if self._armed is None:
                    self._cond.wait()
                    continue
                frame_id, deadline = self._armed
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._armed = None
                self._fired.add(frame_id)
                self._on_miss(frame_id)


# -- YOLOv8 head, decoded on the client until the server-side post-kernel is reachable ---------------
def decode_yolov8(output: np.ndarray, params: LetterboxParams, score_threshold: float = 0.25,
                  iou_threshold: float = 0.45, max_detections: int = 100) -> list[Detection]:
    """Boxes of one image from a YOLOv8 ``[1, 4 + C, A]`` output (cx, cy, w, h in model pixels, then class
    scores after sigmoid), thresholded, class-aware NMS, mapped back to the original frame."""
    pred = output[0].T  # [A, 4 + C]
    scores = pred[:, 4:]
    cls = scores.argmax(axis=1)
    best = scores[np.arange(len(cls)), cls]
    keep = best >= score_threshold
    if not keep.any():
        return []
    cxcywh, best, cls = pred[keep, :4], best[keep], cls[keep]
    boxes = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)
    order = best.argsort()[::-1]
    # Class-aware NMS in one pass: boxes of different classes are moved apart so they never overlap.
    shifted = boxes + (cls * 4096.0)[:, None]
    kept: list[int] = []
    while order.size and len(kept) < max_detections:
        i = order[0]
        kept.append(int(i))
        rest = order[1:]
        lt = np.maximum(shifted[i, :2], shifted[rest, :2])
        rb = np.minimum(shifted[i, 2:], shifted[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        iou = inter / (_area(shifted[i]) + _area(shifted[rest]) - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    original = params.to_original(boxes[kept])
    return [Detection(*map(float, b), score=float(best[k]), class_id=int(cls[k]))
            for b, k in zip(original, kept, strict=True)]


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


# -- the loop ------------------------------------------------------------------------------------------
@dataclass
class Summary:
    frames: int = 0
    on_time: int = 0
    brakes: int = 0  # safe actions: no valid result by the deadline (late, failed or still in flight)
    skipped: int = 0  # camera frames not processed because the loop was busy
    errors: Counter[str] = field(default_factory=Counter)
    detections: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def format(self, elapsed_s: float) -> str:
        lat = self.latency.summary_ms()
        errs = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        return "\n".join([
            f"frames      {self.frames} processed in {elapsed_s:.1f} s ({self.frames / elapsed_s:.1f} fps), "
            f"{self.skipped} camera frames skipped",
            f"on time     {self.on_time}   watchdog brakes {self.brakes}   errors: {errs}",
            f"latency ms  p50 {lat['p50']:.1f}  p99 {lat['p99']:.1f}  max {lat['max']:.1f} (on-time results)",
            f"detections  {self.detections / max(self.on_time, 1):.1f} per frame",
        ])


def decide(detections: list[Detection], frame_width: int) -> str:
    """A toy policy: slow down when something large sits in the middle third of the view."""
    for d in detections:
        centre = (d.x1 + d.x2) / 2
        if frame_width / 3 < centre < 2 * frame_width / 3 and (d.x2 - d.x1) > frame_width / 8:
            return "slow"
    return "cruise"


def run(args: argparse.Namespace) -> int:
    client = InferenceClient(args.url, deadline_s=10.0)
    try:
        meta = client.model_metadata(args.model)
    except PeregrineClientError as e:
        print(f"robot_loop: cannot reach model '{args.model}' at {args.url}: {e}", file=sys.stderr)
        return 2
    _, _, height, width = meta.input(args.input).shape
    frames = video_frames(args.video) if args.video else SyntheticCamera(seed=args.seed).frames()
    summary = Summary()

    def brake(frame_id: int) -> None:  # the safe action; a real vehicle would command its brakes here
        summary.brakes += 1
        log.warning("frame %d: no valid result within %.0f ms -> BRAKE", frame_id, args.deadline_ms)

    watchdog = Watchdog(brake)
    period = 1.0 / args.fps
    deadline_s = args.deadline_ms / 1000
    start = time.monotonic()
    next_tick = start
    try:
        for frame_id, frame in enumerate(frames):
            now = time.monotonic()
            if now - start >= args.duration:
                break
            if now < next_tick:  # the camera's cadence
                time.sleep(next_tick - now)
            elif now - next_tick > period:  # busy past a whole frame: those frames were missed
                missed = int((now - next_tick) / period)
                summary.skipped += missed
                next_tick += missed * period
            next_tick += period
            sent = time.monotonic()
            watchdog.arm(frame_id, sent + deadline_s)
            tensor, params = letterbox_nchw(frame, height, width)
            summary.frames += 1
            try:
                remaining = max(sent + deadline_s - time.monotonic(), 1e-3)  # letterboxing used some of it
                out = client.infer(args.model, {args.input: tensor}, outputs=[args.output], deadline_s=remaining)
            except PeregrineClientError as e:
                summary.errors[e.code.name] += 1
                if e.code is not grpc.StatusCode.DEADLINE_EXCEEDED:
                    log.error("frame %d: %s", frame_id, e)
                if watchdog.disarm(frame_id):  # failed before the deadline: no result is no result, brake now
                    brake(frame_id)
                continue
            latency = time.monotonic() - sent
            if not watchdog.disarm(frame_id):  # the result came after the watchdog braked
                summary.errors["LATE"] += 1
                continue
            detections = decode_yolov8(out[args.output], params, args.score)
            summary.on_time += 1
            summary.detections += len(detections)
            summary.latency.record(latency)
            log.info("frame %d: %d detections, %.1f ms -> %s", frame_id, len(detections), latency * 1e3,
                     decide(detections, frame.shape[1]))
    finally:
        watchdog.close()
        client.close()
    print(summary.format(time.monotonic() - start))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="127.0.0.1:8001", help="server host:port (default %(default)s)")
    p.add_argument("--model", default="yolov8n")
    p.add_argument("--input", default="images", help="model input name (default %(default)s)")
    p.add_argument("--output", default="output0", help="model output name (default %(default)s)")
    p.add_argument("--video", help="a video file instead of the synthetic camera (needs OpenCV)")
    p.add_argument("--fps", type=float, default=10.0, help="camera frame rate (default %(default)s)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to run (default %(default)s)")
    p.add_argument("--deadline-ms", type=float, default=100.0,
                   help="per-frame deadline; a miss makes the watchdog brake (default %(default)s)")
    p.add_argument("--score", type=float, default=0.25, help="score threshold (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="synthetic camera seed")
    p.add_argument("-v", "--verbose", action="store_true", help="log every frame")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
