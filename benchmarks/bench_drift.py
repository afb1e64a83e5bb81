"""What drift monitoring costs (issue 19): on the request path, per sampled frame (the strided thumbnail and
the queue hand-off) and per request when the frame is not sampled (one random draw); off the path, per
sample (the sketch's counting, on the monitor's own thread). Medians of ``--repeat`` runs of ``--frames``.

    python benchmarks/bench_drift.py --out benchmarks/results/drift.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_report
from peregrine.server.observability import drift


def per_frame_us(monitor: drift.DriftMonitor, frame: np.ndarray, boxes: np.ndarray, frames: int) -> float:
    start = time.perf_counter()
    for _ in range(frames):
        monitor.observe("m", [frame], [boxes])
    elapsed = time.perf_counter() - start
    monitor.flush()
    return elapsed / frames * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(0, 1000, (20, 4)), rng.uniform(0, 1, (20, 1)),
                            rng.integers(0, 80, (20, 1))], axis=1).astype(np.float32)
    rows = []
    for label, shape in (("640x480", (480, 640, 3)), ("1080p", (1080, 1920, 3))):
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        sampled, skipped, counted = [], [], []
        for _ in range(args.repeat):
            on = drift.DriftMonitor(drift.DriftSettings(sample_rate=1.0, window=10 ** 9, queue_size=10 ** 6))
            sampled.append(per_frame_us(on, frame, boxes, args.frames))
            on.close()
            off = drift.DriftMonitor(drift.DriftSettings(sample_rate=1e-9, window=10 ** 9))
            skipped.append(per_frame_us(off, frame, boxes, args.frames * 10))
            off.close()
            sketch, thumb = drift.Sketch(), drift.thumbnail(frame)
            start = time.perf_counter()
            for _ in range(args.frames):
                sketch.add(thumb, frame.shape[0] * frame.shape[1], boxes)
            counted.append((time.perf_counter() - start) / args.frames * 1e6)
        rows.append((label, statistics.median(sampled), statistics.median(skipped), statistics.median(counted)))
    lines = ["| frame | on the request path, sampled frame (µs) | on the request path, frame not sampled (µs) "
             "| off the path: counting one sample (µs) |", "|---|---|---|---|"]
    lines += [f"| {label} | {a:.1f} | {b:.2f} | {c:.0f} |" for label, a, b, c in rows]
    text = "\n".join(lines)
    print(text)
    write_report(args.out, "Drift monitoring: what it costs", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
