"""A robot/vehicle perception loop on Peregrine: camera -> detection stream -> decision, with a safety watchdog.

The camera (synthetic frames with moving shapes, or a video file through OpenCV) runs at ``--fps`` and its
frames go to the server over one ``DetectStream`` (``DetectionClient.stream``), each with a deadline
(``--deadline-ms``, counted from capture). The server letterboxes, runs the detector, applies NMS and
returns boxes in frame pixels; when it falls behind it drops the oldest waiting frame (latest frame wins)
and never runs a frame past its deadline.

A watchdog thread holds every frame's deadline from the moment it is captured. If no valid result has
arrived when a deadline passes, it takes the safe action at once ("BRAKE": logged and counted), whether
the frame is still in flight, was dropped or failed; a result that says the frame was dropped, expired or
failed brakes at once too, without waiting for the deadline. If the stream itself fails (server gone), the
loop brakes for the frames in flight and opens a new stream. Frames the camera produced while the loop
was not ready to send are skipped (counted).

Run against ``make serve`` (gRPC on 127.0.0.1:8001, detection pipeline ``yolov8n_detect``)::

    python clients/examples/robot_loop.py --fps 10 --duration 10 --deadline-ms 150
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

import numpy as np
from peregrine.client import Detection, DetectionClient, FrameResult, FrameStatus, PeregrineClientError
from peregrine.client.load import LatencyHistogram
from peregrine.client.watchdog import Watchdog

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


# -- the loop ------------------------------------------------------------------------------------------
@dataclass
class Summary:
    frames: int = 0  # captured and handed to the stream
    on_time: int = 0
    brakes: int = 0  # safe actions: no valid result by the deadline (late, dropped, failed or in flight)
    skipped: int = 0  # camera frames not sent because the loop was not ready for them
    outcomes: Counter[str] = field(default_factory=Counter)  # frames without a valid result, by cause
    errors: Counter[str] = field(default_factory=Counter)  # failed frames and failed streams, by gRPC status
    detections: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def format(self, camera_s: float) -> str:
        lat = self.latency.summary_ms()
        errs = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "none"
        return "\n".join([
            f"frames      {self.frames} sent in {camera_s:.1f} s ({self.frames / max(camera_s, 1e-9):.1f} fps), "
            f"{self.skipped} camera frames skipped",
            f"on time     {self.on_time}   watchdog brakes {self.brakes}   errors: {errs}",
            f"not on time {why}",
            f"latency ms  p50 {lat['p50']:.1f}  p99 {lat['p99']:.1f}  max {lat['max']:.1f} "
            "(capture to result, on-time results)",
            f"detections  {self.detections / max(self.on_time, 1):.1f} per frame",
        ])


def decide(detections: list[Detection], frame_width: int) -> str:
    """A toy policy: slow down when something large sits in the middle third of the view."""
    for d in detections:
        centre = (d.x1 + d.x2) / 2
        if frame_width / 3 < centre < 2 * frame_width / 3 and (d.x2 - d.x1) > frame_width / 8:
            return "slow"
    return "cruise"


class Camera:
    """Paces a frame source at ``fps`` and hands out frames with their id and capture time; each frame's
    deadline is armed on the watchdog at capture. Frames that fall due while nobody asks for one are
    skipped. Several streams may take frames one after another (a failed stream's sending thread may
    still be inside :meth:`take`), so taking a frame holds a lock."""

    def __init__(self, frames: Iterator[np.ndarray], fps: float, end: float, deadline_s: float,
                 watchdog: Watchdog, summary: Summary) -> None:
        self.frames = frames
        self.period = 1.0 / fps
        self.end = end
        self.deadline_s = deadline_s
        self.watchdog = watchdog
        self.summary = summary
        self.next_tick = time.monotonic()
        self.captured: dict[int, float] = {}  # frame id -> capture time (monotonic)
        self.width = 0
        self._lock = threading.Lock()

    def _next(self) -> tuple[int, np.ndarray, int] | None:
        with self._lock:
            now = time.monotonic()
            if now >= self.end:
                return None
            if now < self.next_tick:  # the camera's cadence
                time.sleep(self.next_tick - now)
            elif now - self.next_tick > self.period:  # frames came and went while the loop was not ready
                missed = int((now - self.next_tick) / self.period)
                self.summary.skipped += missed
                self.next_tick += missed * self.period
            self.next_tick += self.period
            frame = next(self.frames, None)
            if frame is None:
                return None
            captured = time.monotonic()
            frame_id = self.summary.frames
            self.summary.frames += 1
            self.captured[frame_id] = captured
            self.width = frame.shape[1]
            self.watchdog.arm(frame_id, captured + self.deadline_s)
            return frame_id, frame, int(captured * 1e6)

    def take(self) -> Iterator[tuple[int, np.ndarray, int]]:
        """(frame id, frame, capture time in µs) until the run's end or the source's."""
        while (item := self._next()) is not None:
            yield item


def stream_frames(camera: Camera, first_id: list[int]) -> Iterator[tuple[np.ndarray, int]]:
    """The camera's frames for one stream, as (frame, capture time in µs). The stream numbers its frames
    from 0 while the loop's frame ids run on across streams: ``first_id`` gets the id of its first frame."""
    for frame_id, frame, capture_us in camera.take():
        if not first_id:
            first_id.append(frame_id)
        yield frame, capture_us


def run(args: argparse.Namespace) -> int:
    deadline_s = args.deadline_ms / 1000
    client = DetectionClient(args.url, deadline_s=30.0)
    source = video_frames(args.video) if args.video else SyntheticCamera(seed=args.seed).frames()
    try:
        first = next(source)
        client.detect(first, model=args.model)  # reachable, a detection pipeline, and warm
    except (PeregrineClientError, OSError, StopIteration) as e:
        print(f"robot_loop: cannot start with model '{args.model}' at {args.url}: {e!r}", file=sys.stderr)
        client.close()
        return 2
    summary = Summary()

    def brake(frame_id: int, why: str) -> None:  # the safe action; a real vehicle would command its brakes here
        with summary.lock:
            summary.brakes += 1
            summary.outcomes[why] += 1
        log.warning("frame %d: no valid result within %.0f ms (%s) -> BRAKE", frame_id, args.deadline_ms, why)

    watchdog = Watchdog(lambda frame_id: brake(frame_id, "deadline passed"))
    start = time.monotonic()
    camera = Camera(source, args.fps, start + args.duration, deadline_s, watchdog, summary)
    try:
        while time.monotonic() < camera.end:
            first_id: list[int] = []
            try:
                for result in client.stream(stream_frames(camera, first_id), model=args.model, deadline_s=deadline_s,
                                            max_in_flight=args.max_in_flight, score_threshold=args.score):
                    act(first_id[0] + result.sequence, result, camera, watchdog, summary, brake)
                break  # the camera ended or the time is up: the stream answered every frame
            except PeregrineClientError as e:  # the stream failed: frames in flight brake by the watchdog
                summary.errors[e.code.name] += 1
                log.error("stream failed: %s; opening a new one", e)
                time.sleep(min(0.5, max(camera.end - time.monotonic(), 0)))
    finally:
        watchdog.close()
        client.close()
    print(summary.format(min(time.monotonic(), camera.end) - start))
    return 0


def act(frame_id: int, result: FrameResult, camera: Camera, watchdog: Watchdog, summary: Summary,
        brake: Callable[[int, str], None]) -> None:
    """Act on one frame's result: use it if it is valid and on time, else take the safe action now."""
    latency = time.monotonic() - camera.captured.pop(frame_id, time.monotonic())
    if result.status is not FrameStatus.OK:
        reason = {FrameStatus.DROPPED: "dropped", FrameStatus.DEADLINE_EXCEEDED: "expired on the server"}.get(
            result.status, "failed")
        if result.status is FrameStatus.ERROR and result.error is not None:
            summary.errors[result.error.code.name] += 1
            log.error("frame %d: %s", frame_id, result.error)
        if watchdog.disarm(frame_id):  # no result is no result: brake now rather than at the deadline
            brake(frame_id, reason)
        return
    if not watchdog.disarm(frame_id):  # the result came after the watchdog braked
        with summary.lock:
            summary.outcomes["late result"] += 1
        return
    summary.on_time += 1
    summary.detections += len(result.detections)
    summary.latency.record(latency)
    log.info("frame %d: %d detections, %.1f ms -> %s", frame_id, len(result.detections), latency * 1e3,
             decide(result.detections, camera.width))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="127.0.0.1:8001", help="server host:port (default %(default)s)")
    p.add_argument("--model", default="yolov8n_detect", help="detection pipeline model (default %(default)s)")
    p.add_argument("--video", help="a video file instead of the synthetic camera (needs OpenCV)")
    p.add_argument("--fps", type=float, default=10.0, help="camera frame rate (default %(default)s)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds to run (default %(default)s)")
    p.add_argument("--deadline-ms", type=float, default=100.0,
                   help="per-frame deadline from capture; a miss makes the watchdog brake (default %(default)s)")
    p.add_argument("--max-in-flight", type=int, help="frames the server runs at once (default: the model's)")
    p.add_argument("--score", type=float, help="score threshold (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="synthetic camera seed")
    p.add_argument("-v", "--verbose", action="store_true", help="log every frame")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
