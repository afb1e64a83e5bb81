"""Batch buckets and warm-up: what a changing batch shape costs a session, and what warm-up costs a load.

One run measures, in process, on the YOLOv8n-class model (or ``--model-path``):

* **Shapes.** A seeded sequence of batch sizes drawn uniformly from 1..max_batch_size (what a dynamic
  batcher feeds an instance), run three ways after every shape was run once (so first-run costs are
  out of the picture): ``exact`` (one session, each batch at its own size: Peregrine without buckets),
  ``padded, one session`` (each batch padded to the next power of two, one session alternating
  between bucket shapes) and ``padded, session per bucket`` (what Peregrine does on GPU providers).
  Reported: median and p90 ms per batch and ms per real image.
* **Load.** ``TensorModel.load`` of the same model with ``max_batch_size`` as given: without
  warm-up, with Peregrine's warm-up for the device, and with the old warm-up (batch 1 and
  max_batch_size).

    python benchmarks/bench_buckets.py --device cpu --out benchmarks/results/buckets.md
    python benchmarks/bench_buckets.py --device cuda --out benchmarks/results/buckets_gpu.md
"""

from __future__ import annotations

import argparse
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine
from peregrine.server.config import parse_model_config
from peregrine.server.models.tensor import TensorModel
from peregrine.server.runtime.onnx import OnnxSession


def build_model(workdir: Path) -> Path:
    subprocess.run([sys.executable, "-m", "peregrine.modelgen", "--repository", str(workdir),
                    "--model", "yolov8n"], check=True, stdout=sys.stderr)
    return workdir / "yolov8n" / "1" / "model.onnx"


def config_text(device: str, max_batch: int, threads: int, buckets: str = '"auto"') -> str:
    return (f'max_batch_size = {max_batch}\n[instance_group]\ndevice = "{device}"\n'
            f"[onnxruntime]\nintra_op_num_threads = {threads}\n"
            f"[dynamic_batching]\nbatch_buckets = {buckets}\n")


def pow2_buckets(max_batch: int) -> list[int]:
    return sorted({1 << k for k in range(max_batch.bit_length()) if 1 << k <= max_batch} | {max_batch})


def time_shapes(path: Path, device: str, max_batch: int, threads: int, batches: int,
                seed: int) -> dict[str, list[float]]:
    """Seconds per batch for each way of running the same sequence of batch sizes."""
    cfg = parse_model_config(config_text(device, max_batch, threads))
    buckets = pow2_buckets(max_batch)
    draw = random.Random(seed)
    sizes = [draw.randint(1, max_batch) for _ in range(batches)]
    rng = np.random.default_rng(seed)
    data = rng.random((max_batch, 3, 640, 640), dtype=np.float32)
    shared = OnnxSession(path, cfg)
    per_bucket = {b: OnnxSession(path, cfg) for b in buckets}
    out = [o.name for o in shared.session.get_outputs()]

    def bucket(n: int) -> int:
        return next(b for b in buckets if b >= n)

    ways = {
        "exact": lambda n: shared.run({"images": data[:n]}, out),
        "padded, one session": lambda n: shared.run({"images": data[: bucket(n)]}, out),
        "padded, session per bucket": lambda n: per_bucket[bucket(n)].run({"images": data[: bucket(n)]}, out),
    }
    for n in range(1, max_batch + 1):  # every shape once on every session: first-run costs excluded
        ways["exact"](n)
    for b in buckets:
        ways["padded, session per bucket"](b)
    times: dict[str, list[float]] = {w: [] for w in ways}
    for n in sizes:  # interleaved, so that load on the machine hits every way alike
        for w, run in ways.items():
            t = time.perf_counter()
            run(n)
            times[w].append(time.perf_counter() - t)
    times["_sizes"] = [float(n) for n in sizes]
    return times


def time_loads(path: Path, device: str, max_batch: int, threads: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per TensorModel.load: without warm-up, with Peregrine's (every bucket on a GPU, the
    smallest size on the CPU; on a GPU this includes opening a session per bucket), and with the
    warm-up Peregrine had before (batch 1 and max_batch_size, one session)."""
    cfg = parse_model_config(config_text(device, max_batch, threads))
    cold = cfg.model_copy(update={"warmup": False})
    x = np.random.default_rng(0).random((max_batch, 3, 640, 640), dtype=np.float32)
    results: dict[str, list[float]] = {"no warm-up": [], "warm-up (Peregrine)": [], "warm-up 1 and max (before)": []}
    for _ in range(repeats):
        t = time.perf_counter()
        TensorModel.load("yolov8n", 1, path.parent, cold)
        results["no warm-up"].append(time.perf_counter() - t)
        t = time.perf_counter()
        TensorModel.load("yolov8n", 1, path.parent, cfg)
        results["warm-up (Peregrine)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        old = TensorModel.load("yolov8n", 1, path.parent, cold.model_copy(
            update={"dynamic_batching": cold.dynamic_batching.model_copy(update={"batch_buckets": []})}))
        for n in (1, max_batch):
            for session in old.instances.sessions:
                session.run({"images": x[:n]}, ["output0"])
        results["warm-up 1 and max (before)"].append(time.perf_counter() - t)
    return results


def ms(xs: list[float], q: float) -> float:
    return 1000 * float(np.quantile(xs, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model-path", type=Path,
                    help="an ONNX file with input 'images' [N,3,640,640]; default: build yolov8n")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="intra_op_num_threads (0: ORT's default)")
    ap.add_argument("--batches", type=int, default=60, help="batches in the shape sequence")
    ap.add_argument("--load-repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model_path or build_model(Path(tmp))
        start = time.perf_counter()
        shapes = time_shapes(path, args.device, args.max_batch, args.threads, args.batches, args.seed)
        loads = time_loads(path, args.device, args.max_batch, args.threads, args.load_repeats)
        whole = time.perf_counter() - start

    sizes = shapes.pop("_sizes")
    real = sum(sizes)
    lines = [
        "# Batch buckets and warm-up", "",
        "## Command and machine", "```", "python " + shlex.join(sys.argv), "```",
        f"- machine: {machine()}; 1-minute load average at the end {Path('/proc/loadavg').read_text().split()[0]}",
        f"- model: {'YOLOv8n-class from peregrine.modelgen' if not args.model_path else args.model_path.name}, "
        f"FP32 [N,3,640,640]; device {args.device}; max_batch_size {args.max_batch}; "
        f"intra_op_num_threads {args.threads}; whole run {whole:.0f} s", "",
        f"## A changing batch shape ({len(sizes)} batches, sizes uniform in 1..{args.max_batch}, seed {args.seed}, "
        f"{int(real)} real images)", "",
        "Every shape ran once on every session before timing. Buckets: "
        + ", ".join(map(str, pow2_buckets(args.max_batch))) + ".", "",
        "| way | median ms / batch | p90 ms / batch | ms per real image |", "|---|---|---|---|",
    ]
    for way, ts in shapes.items():
        lines.append(f"| {way} | {ms(ts, 0.5):.1f} | {ms(ts, 0.9):.1f} | {1000 * sum(ts) / real:.1f} |")
    lines += ["", f"## Load time (`TensorModel.load`, one instance, {args.load_repeats} repeats)", "",
              "| load | median s | min s | max s |", "|---|---|---|---|"]
    for label, ts in loads.items():
        lines.append(f"| {label} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
