"""Scaling with load (issue 18): instance autoscaling's reaction to a load step, and throughput with 1, 2 and 3
local replicas behind client-side round-robin.

Both parts serve the bundled detection pipeline with one ONNX Runtime thread per instance (so that an instance
is one core's worth of work and more instances or replicas can use more cores), every request a ``Detect`` of a
packaged photograph.

**Autoscaling**: one server, the pipeline with ``[instance_group.autoscale]`` min 1, max ``--max-instances``.
After its one-instance capacity is measured (closed loop, concurrency 1), open-loop load (Poisson) at
``--step`` times that capacity starts at t = 0 and stops at ``--load-seconds``. The server's
``peregrine_model_instances`` gauge is scraped every 100 ms. Reported: when the instance was added and removed,
and the latency of the answers per second of the run (p50 and p99), so the step, the scale-up and the recovery
show.

**Replicas**: 1, 2 and 3 server processes on this machine, each with one instance, a client naming all of them
(``peregrine.client.channel``'s multi-address target: gRPC ``round_robin`` on the client, as a headless
Service gives on Kubernetes), closed loop at concurrency 2 per replica for ``--replica-seconds``; images/s.

    python benchmarks/bench_scale.py --out benchmarks/results/scale.md
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
from _common import packaged_photos, wait_until_ready, write_report
from peregrine.client.channel import ChannelSettings, grpc_target
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "cam"
ONE_THREAD = '[onnxruntime]\nintra_op_num_threads = 1\nallow_spinning = false\n'


def repository(work: Path, source: Path, detector: str, autoscale: str) -> Path:
    repo = work / "models"
    repo.mkdir(parents=True)
    shutil.copytree(source / detector, repo / detector)
    (repo / PIPELINE).mkdir()
    (repo / PIPELINE / "config.toml").write_text(
        f'platform = "peregrine_detection"\nmax_batch_size = 1\n[detection]\ndetector = "{detector}"\n'
        f'[instance_group]\ncount = 1\ndevice = "cpu"\n{autoscale}{ONE_THREAD}')
    return repo


def serve(repo: Path, port: int, http_port: int = -1) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "peregrine.server", "--model-repository", str(repo),
                             "--grpc-port", str(port), "--http-port", str(http_port), "--log-level", "WARNING"])
    wait_until_ready(proc, f"127.0.0.1:{port}", [PIPELINE])
    return proc


async def detect(stub: det_grpc.DetectionServiceStub, photo: bytes) -> float:
    began = time.perf_counter()
    await stub.Detect(det.DetectRequest(model_name=PIPELINE, images=[det.Image(encoded=photo)]), timeout=60)
    return time.perf_counter() - began


async def closed_loop(target: str, images: list[bytes], seconds: float, concurrency: int) -> float:
    settings = ChannelSettings(target=target)
    async with settings.aio_channel() as channel:
        stub = det_grpc.DetectionServiceStub(channel)
        for photo in images:
            await detect(stub, photo)  # warm, and every replica connected
        done = 0
        end = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal done
            while time.perf_counter() < end:
                await detect(stub, images[(done + k) % len(images)])
                done += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return done / (time.perf_counter() - began)


def instances_of(http_port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    m = re.search(r'^peregrine_model_instances\{model="cam",version="1"\} (\S+)', text, re.M)
    return int(float(m.group(1))) if m else 0


async def load_step(port: int, http_port: int, images: list[bytes], rate: float, load_s: float,
                    after_s: float) -> tuple[list[tuple[float, float]], list[tuple[float, int]]]:
    """Open-loop load at ``rate``/s for ``load_s`` seconds, then quiet for ``after_s``; (answer time, latency)
    and (time, instances) samples, times from the start of the load."""
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    began = time.perf_counter()

    def scrape() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter() - began, instances_of(http_port)))
            time.sleep(0.1)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    answers: list[tuple[float, float]] = []
    rng = random.Random(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = det_grpc.DetectionServiceStub(channel)

        async def one(k: int) -> None:
            latency = await detect(stub, images[k % len(images)])
            answers.append((time.perf_counter() - began, latency))

        tasks = []
        at = 0.0
        k = 0
        while at < load_s:
            delay = began + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(k)))
            k += 1
            at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        await asyncio.sleep(max(0.0, began + load_s + after_s - time.perf_counter()))
    stop.set()
    scraper.join()
    return answers, samples


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))] if ordered else math.nan


def autoscaling(args: argparse.Namespace, images: list[bytes]) -> str:
    autoscale = (f"[instance_group.autoscale]\nmin = 1\nmax = {args.max_instances}\nqueue_up = 1.0\n"
                 f"queue_down = 0.25\nup_after_s = {args.up_after_s}\ndown_after_s = {args.down_after_s}\n"
                 f"cooldown_s = 1.0\ninterval_s = 0.5\n")
    with tempfile.TemporaryDirectory() as tmp:
        repo = repository(Path(tmp), args.repository, args.detector, autoscale)
        proc = serve(repo, args.port, args.port + 1)
        try:
            one = asyncio.run(closed_loop(f"127.0.0.1:{args.port}", images, 5.0, 1))
            lone = 1 / one
            rate = args.step * one
            print(f"one instance: {one:.1f}/s; step to {rate:.1f}/s", file=sys.stderr)
            answers, samples = asyncio.run(load_step(args.port, args.port + 1, images, rate, args.load_seconds,
                                                     args.down_after_s + 6))
        finally:
            proc.terminate()
            proc.wait(30)
    up = next((t for t, n in samples if n >= 2), math.nan)
    down = next((t for t, n in samples if t > args.load_seconds and n <= 1), math.nan)
    rows = []
    for second in range(math.ceil(max(t for t, _ in answers))):
        window = [lat * 1e3 for t, lat in answers if second <= t < second + 1]
        n_inst = max((n for t, n in samples if second <= t < second + 1), default=0)
        if window:
            rows.append(f"| {second}-{second + 1} | {len(window)} | {statistics.median(window):.0f} | "
                        f"{pct(window, 99):.0f} | {n_inst} |")
    settled = next((s for s in range(math.ceil(up) if not math.isnan(up) else 0, int(args.load_seconds))
                    if all(statistics.median([lat for t, lat in answers if w <= t < w + 1] or [math.inf])
                           <= 3 * lone for w in range(s, int(args.load_seconds)))), None)
    head = (f"One instance (one ONNX Runtime thread): {one:.1f} images/s, {lone * 1e3:.0f} ms each. Load step at "
            f"t = 0 to {rate:.1f} requests/s ({args.step:g} x one instance, Poisson) for {args.load_seconds:g} s, "
            f"then none. Autoscale: min 1, max {args.max_instances}, queue_up 1 per instance, up_after_s "
            f"{args.up_after_s:g}, down_after_s {args.down_after_s:g}, interval 0.5 s.\n\n"
            f"- second instance in service at t = **{up:.1f} s** (the gauge, scraped every 100 ms)\n"
            f"- latency back under 3 x one image's time from second "
            f"{settled if settled is not None else '— (never, within the step)'} of the step\n"
            f"- back to one instance **{down - args.load_seconds:.1f} s** after the load stopped\n\n")
    return head + "\n".join(["| second | answers | p50 ms | p99 ms | instances |", "|---|---|---|---|---|", *rows])


def replicas(args: argparse.Namespace, images: list[bytes]) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = repository(Path(tmp), args.repository, args.detector, "")
        results: dict[int, list[float]] = {1: [], 2: [], 3: []}
        for _ in range(args.rounds):
            for count in (1, 2, 3):
                ports = [args.port + 10 + i for i in range(count)]
                procs = [serve(repo, p) for p in ports]
                try:
                    target = grpc_target([f"127.0.0.1:{p}" for p in ports])
                    rate = asyncio.run(closed_loop(target, images, args.replica_seconds, 2 * count))
                finally:
                    for p in procs:
                        p.terminate()
                    for p in procs:
                        p.wait(30)
                results[count].append(rate)
                print(f"{count} replicas: {rate:.1f}/s", file=sys.stderr)
        base = statistics.median(results[1])
        for count, rates in results.items():
            med = statistics.median(rates)
            rows.append(f"| {count} | {med:.1f} ({', '.join(f'{r:.1f}' for r in rates)}) | {med / base:.2f} |")
    return "\n".join([f"Closed loop, concurrency 2 per replica, {args.replica_seconds:g} s per run, {args.rounds} "
                      "rounds (1, 2, 3 replicas alternated); medians (every round in brackets).", "",
                      "| replicas | images/s | ÷ one replica |", "|---|---|---|", *rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "models")
    ap.add_argument("--detector", default="yolov8n")
    ap.add_argument("--part", choices=("all", "autoscale", "replicas"), default="all")
    ap.add_argument("--max-instances", type=int, default=2)
    ap.add_argument("--step", type=float, default=1.6, help="the load step, times one instance's capacity")
    ap.add_argument("--load-seconds", type=float, default=20.0)
    ap.add_argument("--up-after-s", type=float, default=1.0)
    ap.add_argument("--down-after-s", type=float, default=5.0)
    ap.add_argument("--replica-seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=8971)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    images = packaged_photos()
    parts = []
    if args.part in ("all", "autoscale"):
        parts.append("## Autoscaling: reaction to a load step\n\n" + autoscaling(args, images))
    if args.part in ("all", "replicas"):
        parts.append("## Replicas behind client-side round-robin\n\n" + replicas(args, images))
    text = "\n\n".join(parts)
    print(text)
    write_report(args.out, "Scaling with load", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
