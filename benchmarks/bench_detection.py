"""The detection pipeline end to end: 1080p JPEG frames in, boxes out, served vs in-process, in one run.

* **In-process**: the same pipeline (same config, same ONNX file) loaded in this process; each frame is
  decoded and run alone (decode -> letterbox -> model -> NMS), one after the other: per-stage medians and
  the end-to-end latency with no transport and no queue.
* **Served, cameras**: a Peregrine server (subprocess) driven by ``peregrine-load --cameras K``: K cameras,
  each a ``DetectStream`` sending F frames/s on schedule (open loop), each frame with a deadline.
  Latency percentiles, dropped frames, deadline misses and the server's per-stage medians.
* **Served, OIP** (optional, ``--perf-analyzer PATH``): the pipeline model driven by Triton's
  perf_analyzer at K x F requests/s (``ENCODED`` input), for a peer-tool view of the same load.

Ratios reported: served p50 / in-process p50 at one camera, and the share of end-to-end time spent
outside the model (``1 - infer / end-to-end``, medians).

    python benchmarks/bench_detection.py --repository models --cameras 1 4 16 --fps 30 \
        --duration 20 --out benchmarks/results/detection.md
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import start_peregrine, write_report

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "hubble_deep_field", "retina",
          "immunohistochemistry")


def frames_1080p(quality: int = 90) -> list[bytes]:
    """Eight real photographs, resized to 1920x1080 and JPEG-encoded."""
    import cv2
    import simplejpeg
    import skimage.data

    out = []
    for name in PHOTOS:
        rgb = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
        rgb = np.ascontiguousarray(cv2.resize(rgb[:, :, :3], (1920, 1080), interpolation=cv2.INTER_AREA))
        out.append(simplejpeg.encode_jpeg(rgb, quality=quality, colorspace="RGB"))
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- in-process ------------------------------------------------------------------------------------
def in_process(repository: Path, model: str, jpegs: list[bytes], count: int) -> dict[str, Any]:
    from peregrine.server.config import load_model_config
    from peregrine.server.core.types import EncodedImage, FrameRequest
    from peregrine.server.models.detection import DetectionModel

    cfg = load_model_config(repository / model)
    assert cfg.detection is not None
    files = repository / (cfg.detection.detector or model)
    version = max(int(p.name) for p in files.iterdir() if p.name.isdigit())
    pipeline = DetectionModel.load(model, version, files / str(version), cfg)
    executor = pipeline.make_executor()
    stages: dict[str, list[float]] = {k: [] for k in ("decode", "pre", "infer", "post", "total")}
    for i in range(count):
        t0 = time.perf_counter_ns()
        frame = pipeline.decode_image(EncodedImage(jpegs[i % len(jpegs)], "frame"))
        t1 = time.perf_counter_ns()
        result = executor.execute(0, [FrameRequest(model, frames=[frame], options=pipeline.default_options())])[0]
        t2 = time.perf_counter_ns()
        if i < 3:  # warm-up frames
            continue
        stages["decode"].append((t1 - t0) / 1e6)
        stages["pre"].append(result.times.pre_ns / 1e6)
        stages["infer"].append(result.times.infer_ns / 1e6)
        stages["post"].append(result.times.post_ns / 1e6)
        stages["total"].append((t2 - t0) / 1e6)
    return {"stages_ms": {k: statistics.median(v) for k, v in stages.items()},
            "p50_ms": pct(stages["total"], 50), "p99_ms": pct(stages["total"], 99),
            "fps": 1000 / statistics.mean(stages["total"]), "providers": pipeline.describe().providers}


# -- served: cameras through the load harness ------------------------------------------------------
def cameras(url: str, model: str, frames_dir: Path, k: int, fps: float, duration: float, deadline_ms: float,
            workdir: Path) -> dict[str, Any]:
    out = workdir / f"camera_{k}.json"
    cmd = [sys.executable, "-m", "peregrine.client.load", model, "--url", url, "--cameras", str(k), "--fps", str(fps),
           "--image", str(frames_dir), "--duration", str(duration), "--warmup", "3",
           "--deadline-ms", str(deadline_ms), "--json", str(out), "--no-progress"]
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


# -- served: OIP through perf_analyzer -------------------------------------------------------------
def perf_analyzer(exe: str, url: str, model: str, jpegs: list[bytes], rate: float, workdir: Path,
                  window_ms: int) -> dict[str, float]:
    data = workdir / "jpeg.json"
    # BYTES tensors travel serialized (4-byte little-endian length, then the bytes); b64 carries them raw.
    data.write_text(json.dumps({"data": [
        {"ENCODED": {"b64": base64.b64encode(struct.pack("<I", len(j)) + j).decode(), "shape": [1]}} for j in jpegs
    ]}))
    report = workdir / f"pa_{rate:g}.csv"
    cmd = [exe, "-m", model, "-u", url, "-i", "grpc", "--input-data", str(data), "--shape", "ENCODED:1",
           "--request-rate-range", f"{rate:g}", "--request-distribution", "constant", "-p", str(window_ms),
           "-s", "25", "--max-trials", "6", "-f", str(report), "--verbose-csv"]
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    if not report.exists():
        return {}
    row = next(csv.DictReader(report.open()))
    us = {k: float(v) for k, v in row.items() if v and k and k[0].isalpha() and v.replace(".", "").isdigit()}
    return {"throughput": us.get("Inferences/Second", float("nan")), "p50_ms": us.get("p50 latency", 0) / 1e3,
            "p99_ms": us.get("p99 latency", 0) / 1e3, "queue_ms": us.get("Server Queue", 0) / 1e3,
            "infer_ms": us.get("Server Compute Infer", 0) / 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=Path("models"))
    ap.add_argument("--model", default="yolov8n_detect")
    ap.add_argument("--cameras", type=int, nargs="*", default=[1, 4, 16],
                    help="camera counts at --fps (none: only the calm one-camera run)")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--deadline-ms", type=float, default=100.0, help="per-frame deadline (default 100 ms on a CPU)")
    ap.add_argument("--in-process-frames", type=int, default=40)
    ap.add_argument("--calm-fps", type=float,
                    help="one camera at this rate, under capacity, for the served/in-process ratios "
                         "(default: half the in-process frame rate)")
    ap.add_argument("--perf-analyzer", help="also drive the OIP pipeline model with this perf_analyzer")
    ap.add_argument("--pa-window-ms", type=int, default=8000)
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    jpegs = frames_1080p()
    local = in_process(args.repository, args.model, jpegs, args.in_process_frames)
    url = f"127.0.0.1:{args.port}"
    served: dict[int, dict[str, Any]] = {}
    oip: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        frames_dir = work / "frames"
        frames_dir.mkdir()
        for i, j in enumerate(jpegs):
            (frames_dir / f"frame{i}.jpg").write_bytes(j)
        proc = start_peregrine(args.repository, args.model, args.port)
        calm_fps = args.calm_fps or round(local["fps"] / 2, 1)
        try:
            calm = cameras(url, args.model, frames_dir, 1, calm_fps, args.duration, args.deadline_ms, work)
            for k in args.cameras:
                served[k] = cameras(url, args.model, frames_dir, k, args.fps, args.duration, args.deadline_ms, work)
                if args.perf_analyzer:
                    oip[k] = perf_analyzer(args.perf_analyzer, url, args.model, jpegs, k * args.fps, work,
                                           args.pa_window_ms)
        finally:
            proc.terminate()
            proc.wait(30)
    lines = report(args, local, served, oip, calm, calm_fps)
    text = "\n".join(lines)
    print(text)
    write_report(args.out, "Detection pipeline end to end", text)
    return 0


def failed(run: dict[str, Any]) -> int:
    """Frames that failed otherwise than dropped or past their deadline (the harness counts those too)."""
    return sum(n for status, n in run.get("errors", {}).items() if status not in ("DROPPED", "DEADLINE_EXCEEDED"))


def report(args: argparse.Namespace, local: dict[str, Any], served: dict[int, dict[str, Any]],
           oip: dict[int, dict[str, float]], calm: dict[str, Any], calm_fps: float) -> list[str]:
    s = local["stages_ms"]
    lines = [
        f"In-process ({', '.join(local['providers'])}), one 1080p JPEG at a time: p50 {local['p50_ms']:.1f} ms, "
        f"p99 {local['p99_ms']:.1f} ms, {local['fps']:.1f} frames/s; stage medians: decode {s['decode']:.2f}, "
        f"pre {s['pre']:.2f}, infer {s['infer']:.2f}, post {s['post']:.2f} ms.",
        "",
        f"Served over gRPC, `DetectStream` cameras at {args.fps:g} fps each (open loop), deadline "
        f"{args.deadline_ms:g} ms:",
        "",
        "| cameras | offered fps | answered fps | p50 ms | p99 ms | p99.9 ms | dropped | deadline missed | errors |"
        " decode | queue | pre | infer | post (server medians, ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, r in served.items():
        lat, st = r.get("latency_ms", {}), r.get("stages_ms", {})
        lines.append(
            f"| {k} | {k * args.fps:g} | {r.get('throughput_rps', float('nan')):.1f} | "
            f"{lat.get('p50', float('nan')):.1f} | "
            f"{lat.get('p99', float('nan')):.1f} | {lat.get('p99.9', float('nan')):.1f} | {r.get('dropped', 0)} | "
            f"{r.get('deadline_misses', 0)} | {failed(r)} | "
            + " | ".join(f"{st.get(x, {}).get('p50', float('nan')):.2f}"
                         for x in ("decode", "queue", "pre", "infer", "post")) + " |"
        )
    p50 = calm.get("latency_ms", {}).get("p50", float("nan"))
    infer = calm.get("stages_ms", {}).get("infer", {}).get("p50", float("nan"))
    lag = calm.get("send_lag_ms", {}).get("p99", float("nan"))
    lines += ["", f"One camera under capacity ({calm_fps:g} fps, {calm.get('throughput_rps', float('nan')):.1f} "
                  f"answered/s, client send lag p99 {lag:.1f} ms): p50 {p50:.1f} ms, p99 "
                  f"{calm.get('latency_ms', {}).get('p99', float('nan')):.1f} ms. Served p50 / in-process p50 = "
                  f"{p50 / local['p50_ms']:.2f}; share of end-to-end time outside the model = 1 - infer/p50 = "
                  f"{1 - infer / p50:.2f} served ({1 - s['infer'] / local['p50_ms']:.2f} in-process). "
                  "Server stage medians: "
                  + ", ".join(f"{x} {calm.get('stages_ms', {}).get(x, {}).get('p50', float('nan')):.2f}"
                              for x in ("decode", "queue", "pre", "infer", "post")) + " ms."]
    for k, r in served.items():
        statuses = ", ".join(f"{name} {n}" for name, n in sorted(r.get("errors", {}).items()))
        lines.append(f"- {k} camera(s): not OK by status: {statuses or 'none'}; client send lag p99 "
                     f"{r.get('send_lag_ms', {}).get('p99', float('nan')):.1f} ms")
    if oip:
        lines += ["", "Served as an OIP model (`ENCODED` input) under perf_analyzer at the same total rates:", "",
                  "| rate (req/s) | throughput | p50 ms | p99 ms | server queue ms | server infer ms |",
                  "|---|---|---|---|---|---|"]
        for k, r in oip.items():
            lines.append(f"| {k * args.fps:g} | {r.get('throughput', float('nan')):.1f} | {r.get('p50_ms', 0):.1f} | "
                         f"{r.get('p99_ms', 0):.1f} | {r.get('queue_ms', 0):.1f} | {r.get('infer_ms', 0):.1f} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
