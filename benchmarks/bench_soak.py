"""Soak: does the server's memory stay flat under sustained traffic on every call path?

Starts one Peregrine server (a subprocess) on the bundled repository and drives it, one phase after
another, through each way of calling it; meanwhile it samples the server's resident memory (VmRSS) once a
second. A path that keeps something per request shows as a steady slope. Phases:

* ``oip``: ModelInfer on the detector (FP32 [1,3,640,640] in, [1,84,8400] out), 2 concurrent clients;
* ``oip-stream``: one ModelStreamInfer stream carrying the same requests back to back;
* ``detect``: Detect with 1080p JPEG photographs, 2 concurrent clients;
* ``camera``: DetectStream, 2 cameras at ``--fps``.

The slope is a least-squares fit over the second half of each phase (after allocators and caches settle),
in MB per minute; the report also gives RSS at the start and end of each phase.

    python benchmarks/bench_soak.py --duration 60 --out benchmarks/results/soak.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from _common import start_peregrine, write_report
from bench_detection import frames_1080p

PHASES = ("oip", "oip-stream", "detect", "camera")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Sampler:
    """Samples a process's RSS once a second in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append((time.monotonic(), rss_mb(self.pid)))

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def load(url: str, model: str, duration: float, *args: str) -> None:
    cmd = [sys.executable, "-m", "peregrine.client.load", model, "--url", url, "--warmup", "0",
           "--duration", str(duration), "--no-progress", *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def oip_stream(url: str, model: str, duration: float) -> None:
    from peregrine.client import InferenceClient, InferRequest

    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    end = time.monotonic() + duration

    def requests() -> Iterator[InferRequest]:
        while time.monotonic() < end:
            yield InferRequest(model, {"images": x})

    with InferenceClient(url) as client:
        for result in client.stream_infer(requests()):
            if result.error:
                raise RuntimeError(f"stream request failed: {result.error}")


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    half = samples[len(samples) // 2:]
    if len(half) < 3:
        return float("nan")
    t = np.array([s[0] for s in half])
    m = np.array([s[1] for s in half])
    return float(np.polyfit(t - t[0], m, 1)[0] * 60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=Path("models"))
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per phase (default %(default)s)")
    ap.add_argument("--fps", type=float, default=4.0, help="camera phase: frames/s per camera (default %(default)s)")
    ap.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    ap.add_argument("--port", type=int, default=8793)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        frames = Path(tmp)
        for i, jpeg in enumerate(frames_1080p()):
            (frames / f"frame{i}.jpg").write_bytes(jpeg)
        url = f"127.0.0.1:{a.port}"
        # The pipeline and the detector it runs on (its own sessions), both loaded.
        proc = start_peregrine(a.repository, "yolov8n_detect", a.port, extra_models=["yolov8n"])
        drivers: dict[str, Callable[[], None]] = {
            "oip": lambda: load(url, "yolov8n", a.duration, "-c", "2"),
            "oip-stream": lambda: oip_stream(url, "yolov8n", a.duration),
            "detect": lambda: load(url, "yolov8n_detect", a.duration, "--detect", "-c", "2", "--image", str(frames)),
            "camera": lambda: load(url, "yolov8n_detect", a.duration, "--cameras", "2", "--fps", str(a.fps),
                                   "--image", str(frames)),
        }
        rows = []
        try:
            for phase in a.phases:
                start = rss_mb(proc.pid)
                sampler = Sampler(proc.pid)
                t0 = time.monotonic()
                drivers[phase]()
                samples = sampler.stop()
                end = rss_mb(proc.pid)
                rows.append((phase, time.monotonic() - t0, start, end, max(m for _, m in samples) if samples else end,
                             slope_mb_per_min(samples)))
                print(f"{phase}: RSS {start:.0f} -> {end:.0f} MB, slope {rows[-1][-1]:+.1f} MB/min", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)

    lines = ["| phase | seconds | RSS at start MB | RSS at end MB | peak MB | slope, second half (MB/min) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {p} | {s:.0f} | {b:.0f} | {e:.0f} | {k:.0f} | {sl:+.1f} |" for p, s, b, e, k, sl in rows]
    text = "\n".join(lines)
    print(text)
    write_report(a.out, "Soak: server memory under sustained traffic", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
