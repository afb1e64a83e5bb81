"""Drift: whether what the cameras see, and what the detector answers, still look like the reference.

For a sample of a detection model's frames (``sample_rate``), a :class:`Sketch` counts fixed-bin histograms of
what comes in (pixels per frame, brightness, contrast, the mean of each channel, a 16-bin luma histogram) and
what goes out (detections per frame, their scores, classes and box sizes as a share of the frame). Fixed bins
make sketches add up and compare without keeping any frame. Every ``window`` sampled frames the window's sketch
is compared with the reference, feature by feature, by the population stability index (PSI; 0.1 is a shift to
watch, 0.25 a large one) and, where scipy is installed, a chi-square two-sample test on the bin counts; the
PSIs are exported as gauges, and a window over ``threshold`` logs one warning naming the features that moved.

The reference is a baseline file (``peregrine drift baseline``: the sketch of a directory of images through the
model) or, without one, the model's first window after it loads. ``peregrine drift report`` compares two
sketches (a baseline, a window the server wrote) in Markdown, with a PNG of the histograms.

Off the request path: a sampled frame is reduced on the request's thread to a strided thumbnail (at most
about 16 K pixels) and its boxes, and handed to a thread of its own through a
bounded queue; when the queue is full the sample is dropped (counted), never waited for.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Feature -> bin edges (the last bin takes everything above; values below the first edge go in bin 0).
_LOG_PIXELS = np.arange(10, 26, 1.0)  # log2(pixels): 1 K .. 32 M
EDGES: dict[str, np.ndarray] = {
    "pixels": _LOG_PIXELS,
    "brightness": np.linspace(0, 256, 17),
    "contrast": np.linspace(0, 128, 17),
    "mean_r": np.linspace(0, 256, 17),
    "mean_g": np.linspace(0, 256, 17),
    "mean_b": np.linspace(0, 256, 17),
    "luma": np.linspace(0, 256, 17),  # the pixels' luma itself: a colour-free descriptor of the scene
    "detections": np.array([0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 1e9]),
    "score": np.linspace(0, 1.0001, 11),
    "box_area": np.array([0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0001]),
}
CLASS_BINS = 100  # class ids 0..98, and 99 for every id above
INPUT_FEATURES = ("pixels", "brightness", "contrast", "mean_r", "mean_g", "mean_b", "luma")
OUTPUT_FEATURES = ("detections", "score", "class", "box_area")
FEATURES = INPUT_FEATURES + OUTPUT_FEATURES
THUMBNAIL_PIXELS = 16384


@dataclass
class Sketch:
    """Bin counts per feature (see the module docstring); ``frames`` sampled frames went into it."""

    frames: int = 0
    counts: dict[str, np.ndarray] = field(default_factory=lambda: {
        **{f: np.zeros(len(EDGES[f]), np.int64) for f in EDGES}, "class": np.zeros(CLASS_BINS, np.int64)})

    def add(self, thumbnail: np.ndarray, pixels: int, boxes: np.ndarray) -> None:
        """One frame: its thumbnail (uint8 [h, w, 3], RGB), its size in pixels and its boxes ([k, 6]: x1, y1,
        x2, y2, score, class id, in the frame's pixels)."""
        rgb = thumbnail.reshape(-1, 3).astype(np.float32)
        luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        self._count("pixels", [math.log2(max(pixels, 1))])
        self._count("brightness", [float(luma.mean())])
        self._count("contrast", [float(luma.std())])
        for i, channel in enumerate(("mean_r", "mean_g", "mean_b")):
            self._count(channel, [float(rgb[:, i].mean())])
        self._count("luma", luma)
        self._count("detections", [len(boxes)])
        if len(boxes):
            self._count("score", boxes[:, 4])
            self.counts["class"] += np.bincount(np.clip(boxes[:, 5].astype(np.int64), 0, CLASS_BINS - 1),
                                                minlength=CLASS_BINS)
            area = np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0, None) / max(pixels, 1)
            self._count("box_area", area)
        self.frames += 1

    def _count(self, feature: str, values: Iterable[float] | np.ndarray) -> None:
        edges = EDGES[feature]
        index = np.clip(np.searchsorted(edges, np.asarray(values, np.float64), side="right") - 1, 0, len(edges) - 1)
        self.counts[feature] += np.bincount(index, minlength=len(edges))

    def to_json(self) -> dict[str, Any]:
        return {"frames": self.frames, "counts": {f: c.tolist() for f, c in self.counts.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sketch:
        sketch = cls(frames=int(data["frames"]))
        for feature, counts in data["counts"].items():
            if feature in sketch.counts and len(counts) == len(sketch.counts[feature]):
                sketch.counts[feature] = np.asarray(counts, np.int64)
        return sketch

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> Sketch:
        return cls.from_json(json.loads(path.read_text()))


def psi(reference: np.ndarray, current: np.ndarray, floor: float = 1e-4) -> float:
    """The population stability index of two bin counts: sum over bins of (p - q) ln(p / q), shares floored
    at ``floor`` so that an empty bin counts as rare, not as infinitely far. 0 when either has no counts."""
    if reference.sum() == 0 or current.sum() == 0:
        return 0.0
    p = np.maximum(current / current.sum(), floor)
    q = np.maximum(reference / reference.sum(), floor)
    return float(np.sum((p - q) * np.log(p / q)))


def chi_square_p(reference: np.ndarray, current: np.ndarray) -> float | None:
    """The p-value of a chi-square test that both counts come from one distribution (bins empty in both
    left out); None without scipy or with fewer than two bins used."""
    try:
        from scipy.stats import chi2_contingency
    except ImportError:
        return None
    used = (reference + current) > 0
    if used.sum() < 2 or reference.sum() == 0 or current.sum() == 0:
        return None
    return float(chi2_contingency(np.stack([reference[used], current[used]]))[1])


def compare(reference: Sketch, current: Sketch) -> dict[str, dict[str, float | None]]:
    """Per feature: its PSI and chi-square p-value, the current sketch against the reference."""
    return {f: {"psi": psi(reference.counts[f], current.counts[f]),
                "p_value": chi_square_p(reference.counts[f], current.counts[f])} for f in FEATURES}


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A strided copy of a frame with at most about THUMBNAIL_PIXELS pixels (nothing is interpolated)."""
    h, w = frame.shape[:2]
    step = max(1, math.ceil(math.sqrt(h * w / THUMBNAIL_PIXELS)))
    return np.ascontiguousarray(frame[::step, ::step, :3])


@dataclass(frozen=True)
class DriftSettings:
    """``sample_rate`` 0 turns drift off (the default)."""

    sample_rate: float = 0.0
    window: int = 500  # sampled frames per window
    threshold: float = 0.25  # a feature's PSI over this in a window logs a warning
    baselines: dict[str, Path] = field(default_factory=dict)  # model -> baseline sketch file
    directory: Path | None = None  # where each window's sketch is written, <model>-<n>.json
    queue_size: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"drift sample rate: expected 0..1, got {self.sample_rate}")
        if self.window < 10 or self.threshold <= 0:
            raise ValueError("drift window must be at least 10 frames and the threshold positive")


@dataclass
class ModelDrift:
    """One model's state: its reference, the window being filled, the last comparison."""

    reference: Sketch | None
    window: Sketch = field(default_factory=Sketch)
    windows: int = 0
    last: dict[str, dict[str, float | None]] = field(default_factory=dict)
    sampled: int = 0
    dropped: int = 0


class DriftMonitor:
    """Samples frames of every detection model, compares windows with their reference (module docstring)."""

    def __init__(self, settings: DriftSettings) -> None:
        self.settings = settings
        self.models: dict[str, ModelDrift] = {}
        self._queue: queue.Queue[tuple[str, np.ndarray, int, np.ndarray] | None] = queue.Queue(settings.queue_size)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="peregrine-drift", daemon=True)
        self._random = random.Random()
        self._thread.start()

    def observe(self, model: str, frames: list[np.ndarray], detections: list[np.ndarray]) -> None:
        """A request's frames and its boxes (called on the request's path: only the sampled ones cost)."""
        for frame, boxes in zip(frames, detections, strict=False):
            if self._random.random() >= self.settings.sample_rate:
                continue
            state = self._state(model)
            try:
                self._queue.put_nowait((model, thumbnail(frame), frame.shape[0] * frame.shape[1], boxes.copy()))
                state.sampled += 1
            except queue.Full:
                state.dropped += 1

    def _state(self, model: str) -> ModelDrift:
        state = self.models.get(model)
        if state is None:
            with self._lock:
                state = self.models.get(model)
                if state is None:
                    path = self.settings.baselines.get(model)
                    state = self.models[model] = ModelDrift(Sketch.load(path) if path else None)
        return state

    def _run(self) -> None:
        while (sample := self._queue.get()) is not None:
            model, thumb, pixels, boxes = sample
            try:
                self._add(model, thumb, pixels, boxes)
            except Exception:  # a broken sample must not stop the monitor
                log.exception("drift: a sample of model '%s' could not be counted", model)
            finally:
                self._queue.task_done()

    def _add(self, model: str, thumb: np.ndarray, pixels: int, boxes: np.ndarray) -> None:
        state = self._state(model)
        state.window.add(thumb, pixels, boxes)
        if state.window.frames < self.settings.window:
            return
        window, state.window = state.window, Sketch()
        state.windows += 1
        if self.settings.directory is not None:
            self.settings.directory.mkdir(parents=True, exist_ok=True)
            window.save(self.settings.directory / f"{model}-{state.windows}.json")
        if state.reference is None:  # the first window after load is the reference
            state.reference = window
            log.info("drift: model '%s' has its reference (its first %d sampled frames)", model, window.frames)
            return
        state.last = compare(state.reference, window)
        moved = {f: r["psi"] for f, r in state.last.items() if (r["psi"] or 0) > self.settings.threshold}
        if moved:
            log.warning("drift: model '%s', window %d: %s moved (PSI over %.2f) against its reference", model,
                        state.windows, ", ".join(f"{f} {v:.2f}" for f, v in sorted(moved.items())),
                        self.settings.threshold)

    def flush(self) -> None:
        """Wait until every sample queued so far is counted (tests, reports)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)


# The process's monitor (one per server process, as the decoded-frames budget is): None while drift is off.
_monitor: DriftMonitor | None = None


def install(monitor: DriftMonitor) -> None:
    """Make ``monitor`` the one detection models report to."""
    global _monitor
    _monitor = monitor


def uninstall(monitor: DriftMonitor) -> None:
    """Drift off, if ``monitor`` is the one installed."""
    global _monitor
    if _monitor is monitor:
        _monitor = None


def installed(monitor: DriftMonitor) -> bool:
    """Whether ``monitor`` is the one detection models report to now."""
    return _monitor is monitor


def observe(model: str, frames: list[np.ndarray], detections: list[np.ndarray]) -> None:
    """Report a request's frames and boxes, when drift is on (a no-op, one check, when it is off)."""
    if _monitor is not None:
        _monitor.observe(model, frames, detections)


class DriftCollector:
    """The monitor's figures for Prometheus (docs/METRICS.md): the last window's PSI per model and feature,
    and the sampled, dropped and compared counts."""

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        psi_family = GaugeMetricFamily("peregrine_drift_psi", "Population stability index of the last window "
                                       "against the reference, per feature", labels=["model", "feature"])
        sampled = CounterMetricFamily("peregrine_drift_frames_sampled", "Frames sampled for drift",
                                      labels=["model"])
        dropped = CounterMetricFamily("peregrine_drift_frames_dropped", "Sampled frames dropped (the drift "
                                      "queue was full)", labels=["model"])
        windows = CounterMetricFamily("peregrine_drift_windows", "Windows completed", labels=["model"])
        for model, state in sorted(self.monitor.models.items()):
            for feature, result in state.last.items():
                psi_family.add_metric([model, feature], result["psi"] or 0.0)
            sampled.add_metric([model], state.sampled)
            dropped.add_metric([model], state.dropped)
            windows.add_metric([model], state.windows)
        yield from (psi_family, sampled, dropped, windows)
