"""Benchmark of peregrine.kernels.convert_raw (raw camera frames to RGB/BGR) against cv2.cvtColor.

Not a test: prints a markdown table. Each round times every contender back to back, alternating, ``--repeat``
calls each (median per round); the table gives the median over rounds and the median of the per-round ratios.
Both sides convert a 1920x1080 frame into a preallocated BGR buffer (``convert_raw_into``, ``cvtColor(...,
dst=)``), the kernel from the message's bytes, OpenCV from an array over them (16-bit: after its own
narrowing to 8 bits, as the recordings reader did). "1 thread" runs both single-threaded; "all cores" lets
both use their thread pools.

    python benchmarks/bench_convert.py --rounds 7 --repeat 30
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import cv2
import numpy as np
import peregrine.kernels as K

HEIGHT, WIDTH = 1080, 1920
CASES = {  # encoding -> (samples per pixel, bytes per sample, cvtColor code)
    "bayer_rggb8": (1, 1, cv2.COLOR_BayerBG2BGR),
    "yuyv": (2, 1, cv2.COLOR_YUV2BGR_YUY2),
    "bayer_rggb16": (1, 2, cv2.COLOR_BayerBG2BGR),
    "mono16": (1, 2, cv2.COLOR_GRAY2BGR),
}


def contenders(encoding: str, threads: int, rng: np.random.Generator) -> dict[str, Callable[[], object]]:
    samples, size, code = CASES[encoding]
    dtype = np.uint16 if size == 2 else np.uint8
    frame = rng.integers(0, np.iinfo(dtype).max + 1, (HEIGHT, WIDTH, samples), dtype=dtype)
    data = frame.tobytes()
    out = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    dst = np.empty_like(out)
    view = np.frombuffer(data, dtype).reshape(frame.shape if samples > 1 else frame.shape[:2])

    def native() -> object:
        return K.convert_raw_into(out, data, encoding, HEIGHT, WIDTH, order="bgr", num_threads=threads)

    def opencv() -> object:
        pixels = (view >> 8).astype(np.uint8) if size == 2 else view
        return cv2.cvtColor(pixels, code, dst=dst)

    return {"peregrine": native, "cv2.cvtColor": opencv}


def run(encoding: str, threads: int, rounds: int, repeat: int) -> dict[str, list[float]]:
    cv2.setNumThreads(1 if threads == 1 else -1)
    fns = contenders(encoding, threads, np.random.default_rng(7))
    for fn in fns.values():  # warm up (numba compiles on first use when that tier runs)
        fn()
    per_round: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))  # alternate who goes first
        for name in order:
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                fns[name]()
                times.append(time.perf_counter() - start)
            per_round[name].append(statistics.median(times) * 1e3)
    return per_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=30, help="calls per contender per round (median taken)")
    parser.add_argument("--encodings", default=",".join(CASES), help="comma-separated (default: all)")
    args = parser.parse_args()
    print(f"Command: `python {' '.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])}`  ")
    print(f"{os.cpu_count()} logical cores ({platform.machine()}), load average {os.getloadavg()[0]:.1f} at start, "
          f"OpenCV {cv2.__version__}, tier {K.active_tier()}\n")
    print("| 1920x1080 frame | threads | peregrine ms | cv2.cvtColor ms | cv2 / peregrine (median of rounds) |")
    print("|---|---|---|---|---|")
    for encoding in args.encodings.split(","):
        for threads, label in ((1, "1"), (0, "all cores")):
            times = run(encoding, threads, args.rounds, args.repeat)
            ours, theirs = times["peregrine"], times["cv2.cvtColor"]
            ratio = statistics.median(t / o for o, t in zip(ours, theirs, strict=True))
            print(f"| {encoding} | {label} | {statistics.median(ours):.2f} | {statistics.median(theirs):.2f} | "
                  f"{ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
