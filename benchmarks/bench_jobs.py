"""Asynchronous jobs and offline batch (issue 17): images/s of a job on a server, of ``peregrine batch`` in
this process and of a plain ONNX Runtime loop over the same files; and a real-time camera's latency with the
server idle and while a job runs.

- **ORT loop**: for each file, decode (OpenCV), letterbox to 640 (OpenCV resize + pad), run the detector
  with ONNX Runtime at batch 1; no NMS (so the loop is, if anything, favoured).
- **peregrine batch**: ``peregrine batch --model yolov8n_detect --input DIR`` in-process.
- **job**: the same images as a tar submitted to a server subprocess (``--job-spool``); from the first byte
  uploaded to SUCCEEDED, and from RUNNING to SUCCEEDED.
- **real-time**: a camera sending one JPEG Detect every 100 ms to the same pipeline, for ``--seconds`` idle
  and then while a job runs; p50/p99 of each.

    python benchmarks/bench_jobs.py --images 120 --rounds 3 --out benchmarks/results/jobs.md
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, wait_until_ready, write_report

ROOT = Path(__file__).resolve().parent.parent
PIPELINE, DETECTOR = "yolov8n_detect", "yolov8n"


def photographs(n: int) -> list[bytes]:
    """``n`` JPEGs cycled from scikit-image's photographs."""
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"]
    jpegs = []
    for name in names:
        image = getattr(data, name)()
        bgr = np.ascontiguousarray(image[..., :3][..., ::-1])
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        jpegs.append(encoded.tobytes())
    return [jpegs[i % len(jpegs)] for i in range(n)]


def ort_loop(files: list[Path], model: Path) -> float:
    """Images/s of decode + letterbox + ONNX Runtime, one image at a time."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    for path in files:
        image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        h, w = image.shape[:2]
        r = min(640 / h, 640 / w)
        resized = cv2.resize(image, (round(w * r), round(h * r)), interpolation=cv2.INTER_LINEAR)
        canvas = np.full((640, 640, 3), 114, np.uint8)
        top, left = (640 - resized.shape[0]) // 2, (640 - resized.shape[1]) // 2
        canvas[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
        x = (canvas.transpose(2, 0, 1)[None].astype(np.float32)) / 255.0
        session.run(None, {name: x})
    return len(files) / (time.perf_counter() - start)


def batch_in_process(directory: Path, out: Path, repository: Path) -> float:
    """Images/s of ``peregrine batch`` in this process, from its first item to its last (the model's
    loading not counted, as the ORT loop's session creation is not)."""
    from peregrine.server.batch import run

    out.unlink(missing_ok=True)
    summary = run(["--model", PIPELINE, "--repository", str(repository), "--input", str(directory), "--output",
                   str(out), "--no-progress", "--restart"])
    return float(summary["items_per_s"])


def camera(port: int, jpeg: bytes, seconds: float, period: float = 0.1) -> list[float]:
    """A camera: one Detect every ``period`` s for ``seconds``; latencies in ms."""
    import grpc
    from peregrine.proto import detection_pb2 as det
    from peregrine.proto import detection_pb2_grpc as det_grpc

    latencies = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = det_grpc.DetectionServiceStub(ch)
        request = det.DetectRequest(model_name=PIPELINE, images=[det.Image(encoded=jpeg)])
        stop = time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < stop:
            t = time.perf_counter()
            stub.Detect(request, timeout=10)
            latencies.append((time.perf_counter() - t) * 1e3)
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
    return latencies


def job_round(port: int, payload: bytes, n: int) -> tuple[float, float]:
    """Submit the tar as a job, nothing else running: (images/s from upload to end, images/s running)."""
    from peregrine.client.jobs import JobClient

    with JobClient(f"127.0.0.1:{port}") as client:
        start = time.perf_counter()
        job = client.wait(client.submit(payload, PIPELINE).job_id)
        wall = time.perf_counter() - start
        assert job.items_done == n, job
        return n / wall, n / ((job.ended_unix_ms - job.started_unix_ms) / 1000)


def camera_during_job(port: int, payload: bytes, jpeg: bytes, seconds: float) -> list[float]:
    """The camera's latencies while a job runs (the job is cancelled once the camera is done)."""
    from peregrine.client.jobs import JobClient

    with JobClient(f"127.0.0.1:{port}") as client:
        job = client.submit(payload, PIPELINE)
        while client.get(job.job_id).items_done == 0:  # running, past its first checkpoint
            time.sleep(0.05)
        latencies = camera(port, jpeg, seconds)
        if client.get(job.job_id).state == 3:  # RUNNING all along: what was measured was measured under it
            client.cancel(job.job_id)
        else:
            print("warning: the job ended before the camera's window did", file=sys.stderr)
        return latencies


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "models")
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="the camera's window, idle and during a job")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    jpegs = photographs(args.images)
    work = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    images = work / "images"
    images.mkdir()
    for i, jpeg in enumerate(jpegs):
        (images / f"{i:05d}.jpg").write_bytes(jpeg)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(images.iterdir()):
            tar.add(path, arcname=path.name)
    payload = buf.getvalue()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:  # a job longer than the camera's window
        for k in range(max(1, int(args.seconds * 40 / args.images) + 1)):
            for path in sorted(images.iterdir()):
                tar.add(path, arcname=f"{k:03d}-{path.name}")
    big = buf.getvalue()
    files = sorted(images.iterdir())
    port = 8931
    server = subprocess.Popen([sys.executable, "-m", "peregrine.server", "--model-repository", str(args.repository),
                               "--grpc-port", str(port), "--http-port", "-1", "--model-control-mode", "explicit",
                               "--load-model", PIPELINE, "--job-spool", str(work / "spool"), "--log-level", "ERROR"])
    rows: dict[str, list[float]] = {"ort": [], "batch": [], "job_wall": [], "job_running": []}
    idle: list[float] = []
    during: list[float] = []
    try:
        wait_until_ready(server, f"127.0.0.1:{port}", [PIPELINE])
        camera(port, jpegs[0], 1.0)  # warm
        for r in range(args.rounds):  # alternated in each round, so drift hits all alike
            rows["ort"].append(ort_loop(files, args.repository / DETECTOR / "1" / "model.onnx"))
            rows["batch"].append(batch_in_process(images, work / "out.jsonl", args.repository))
            wall, running = job_round(port, payload, args.images)
            rows["job_wall"].append(wall)
            rows["job_running"].append(running)
            idle += camera(port, jpegs[0], args.seconds)
            during += camera_during_job(port, big, jpegs[0], args.seconds)
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rows.items()), file=sys.stderr)
    finally:
        server.terminate()
        server.wait(30)
    med = {k: statistics.median(v) for k, v in rows.items()}
    lines = [
        f"{args.images} JPEGs (scikit-image photographs, 300 to 640 px), {PIPELINE}, {args.rounds} rounds alternated; "
        "medians (every round in brackets).", "",
        "| path | images/s | ÷ in-process batch |", "|---|---|---|",
        *(f"| {label} | {med[k]:.1f} ({', '.join(f'{x:.1f}' for x in rows[k])}) | {med[k] / med['batch']:.2f} |"
          for k, label in (("ort", "plain ONNX Runtime loop (decode, letterbox, run; batch 1, no NMS)"),
                           ("batch", "`peregrine batch` in-process"),
                           ("job_running", "job on a server, RUNNING → SUCCEEDED"),
                           ("job_wall", "job on a server, first byte uploaded → SUCCEEDED"))),
        "", f"Real-time camera (one Detect every 100 ms), {len(idle)} requests idle, {len(during)} during jobs:", "",
        "| | p50 ms | p99 ms |", "|---|---|---|",
        f"| idle | {pct(idle, 50):.1f} | {pct(idle, 99):.1f} |",
        f"| while a job runs | {pct(during, 50):.1f} | {pct(during, 99):.1f} |",
        f"| ratio | {pct(during, 50) / pct(idle, 50):.2f} | {pct(during, 99) / pct(idle, 99):.2f} |",
    ]
    text = "\n".join(lines)
    print(text)
    write_report(args.out, "Jobs and offline batch: throughput, and a camera's latency during a job", text)
    print(f"(machine: {machine()})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
