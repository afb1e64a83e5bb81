"""The SLO ladder under load: deadline misses and agreement with and without it (issue 20).

Makes the quantized variants of a detector with ``peregrine quantize`` in a copy of the repository, serves the
FP32 detection pipeline twice (plain, and with ``[ladder] rungs`` naming its quantized siblings), measures the
FP32 pipeline's capacity (closed loop, concurrency 4) and its lone-request latency, then offers open-loop load
(Poisson arrivals) stepping from 50% to 200% of that capacity, every request a ``Detect`` of a packaged
photograph with the same deadline (default: 3x the FP32 pipeline's lone-request median). At each step the
plain pipeline and the ladder take the same load one after the other. Reported per step and mode: the share of
requests that missed their deadline (DEADLINE_EXCEEDED, or any other failure), p50/p99 of the answered ones,
the variant mix and the mean agreement of the answers with the FP32 pipeline's own boxes for the same photograph
(box F1 at IoU 0.5, same class; 1.0 when both have no box).

    python benchmarks/bench_ladder.py --out benchmarks/results/ladder.md
    python benchmarks/bench_ladder.py --dynamic --out benchmarks/results/ladder_sizes.md

Any other detector and pipeline of a repository (``--repository``, ``--detector``, ``--pipeline``), with
the images its requests carry (``--images DIR``, default the packaged photographs) and INT8's calibration
images (``--calibration DIR``): e.g. the shapes detector benchmarks/train_shapes.py trains, on its held-out
images.

``--dynamic``: the detector is built with dynamic input sizes (the bundled YOLOv8n's weights, its anchors
computed in the graph, as an ultralytics export with dynamic=True: the same answers at 640), so that its
smaller input sizes can be rungs (default variants then 480,320).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from _common import metric_samples, packaged_photos, start_peregrine, write_report
from peregrine.proto import detection_pb2 as det
from peregrine.proto import detection_pb2_grpc as det_grpc

ROOT = Path(__file__).resolve().parents[1]


def boxes_of(response: det.DetectResponse) -> list[dict[str, Any]]:
    return [{"x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "score": b.score, "class_id": b.class_id,
             "label": b.label} for b in response.results[0].boxes]


def f1(reference: list[dict[str, Any]], candidate: list[dict[str, Any]]) -> float:
    """Box F1 of ``candidate`` against ``reference`` (peregrine quantize's matching)."""
    from peregrine.server.quantize import agreement

    if not reference and not candidate:
        return 1.0
    precision, recall, _, _ = agreement({"x": reference}, {"x": candidate})
    if math.isnan(precision) or precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, list[str]]:
    """A repository with the detector, its pipeline, their quantized siblings and the ladder pipeline."""
    from peregrine.server.quantize import main as quantize

    repo = work / "models"
    repo.mkdir()
    for name in (args.detector, args.pipeline):
        shutil.copytree(args.repository / name, repo / name)
    if args.dynamic:
        import onnx
        from peregrine.modelgen import yolov8_detector

        if args.detector != "yolov8n":
            raise SystemExit("--dynamic builds the bundled yolov8n; give --detector yolov8n")
        onnx.save(yolov8_detector(0, dynamic=True), str(next((repo / args.detector).glob("*/model.onnx"))))
    calibration = ["--calibration", str(args.calibration)] if args.calibration else []
    if quantize(["--model", args.detector, "--repository", str(repo), "--variants", args.variants,
                 *calibration]) != 0:
        raise SystemExit("peregrine quantize failed")
    rungs = [f"{args.pipeline}_{v}" for v in args.variants.split(",")]
    ladder = repo / f"{args.pipeline}_ladder"
    ladder.mkdir()
    config = (repo / args.pipeline / "config.toml").read_text()
    (ladder / "config.toml").write_text(config + "\n[ladder]\nrungs = [" + ", ".join(f'"{r}"' for r in rungs)
                                        + "]\n")
    return repo, rungs


Answer = tuple[str, float, "det.DetectResponse | None"]  # status name, seconds, the answer when OK


async def one(stub: Any, model: str, photo: bytes, timeout: float | None) -> Answer:
    began = time.perf_counter()
    try:
        response = await stub.Detect(det.DetectRequest(model_name=model, images=[det.Image(encoded=photo)]),
                                     timeout=timeout)
    except grpc.aio.AioRpcError as e:
        return e.code().name, time.perf_counter() - began, None
    return "OK", time.perf_counter() - began, response


async def closed_loop(stub: Any, model: str, photos: list[bytes], seconds: float, concurrency: int) -> float:
    """Answers per second with ``concurrency`` requests always in flight."""
    done = 0
    end = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await one(stub, model, photos[(done + k) % len(photos)], None)
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done / (time.perf_counter() - began)


async def open_loop(stub: Any, model: str, photos: list[bytes], rate: float, seconds: float, deadline: float,
                    seed: int) -> list[tuple[str, float, int, det.DetectResponse | None]]:
    """Poisson arrivals at ``rate``/s for ``seconds``, each with ``deadline``; (status, latency, photo, answer)."""
    rng = random.Random(seed)
    tasks = []
    began = time.perf_counter()
    at = 0.0
    while at < seconds:
        delay = began + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        k = rng.randrange(len(photos))
        tasks.append((k, asyncio.ensure_future(one(stub, model, photos[k], deadline))))
        at += rng.expovariate(rate)
    results = []
    for k, task in tasks:
        status, latency, response = await task
        results.append((status, latency, k, response))
    return results


def ladder_counts(http_port: int, ladder: str) -> dict[str, Counter[str]]:
    """The server's ``peregrine_ladder_requests_total`` and ``peregrine_ladder_deadline_misses_total`` of
    ``ladder``, by variant."""
    counts: dict[str, Counter[str]] = {"routed": Counter(), "missed": Counter()}
    for s in metric_samples(http_port):
        if s.labels.get("model") != ladder:
            continue
        if s.name == "peregrine_ladder_requests_total":
            counts["routed"][s.labels["variant"]] += int(s.value)
        elif s.name == "peregrine_ladder_deadline_misses_total":
            counts["missed"][s.labels["variant"]] += int(s.value)
    return counts


def images_of(directory: Path, most: int = 24) -> list[bytes]:
    """The first ``most`` image files of ``directory`` (by name; the suffixes jobs and batch read)."""
    from peregrine.server.jobs.sources import is_image_name

    files = sorted(p for p in directory.iterdir() if p.is_file() and is_image_name(p.name))[:most]
    if not files:
        raise SystemExit(f"--images {directory}: no image files")
    return [p.read_bytes() for p in files]


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


async def measure(args: argparse.Namespace, port: int, plain: str, ladder: str, rungs: list[str]) -> str:
    http_port = port + 1
    photos = images_of(args.images) if args.images else packaged_photos()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = det_grpc.DetectionServiceStub(channel)
        reference = []
        for photo in photos:  # the FP32 pipeline's own boxes, and warm-up of both pipelines
            status, _, response = await one(stub, plain, photo, None)
            assert response is not None, status
            reference.append(boxes_of(response))
            await one(stub, ladder, photo, None)
        lone = [(await one(stub, plain, photos[i % len(photos)], None))[1] for i in range(2 * len(photos))]
        capacity = await closed_loop(stub, plain, photos, args.capacity_seconds, 4)
        # Each rung's own capacity: beyond the fastest one's, no routing can answer every request in time.
        capacities = {}
        for rung in rungs:
            await one(stub, rung, photos[0], None)
            capacities[rung] = await closed_loop(stub, rung, photos, args.capacity_seconds, 4)
            print(f"{rung} capacity {capacities[rung]:.1f}/s", file=sys.stderr)
        deadline = args.deadline_ms / 1e3 if args.deadline_ms else 3 * statistics.median(lone)
        print(f"FP32 capacity {capacity:.1f}/s, lone median {statistics.median(lone) * 1e3:.1f} ms, deadline "
              f"{deadline * 1e3:.0f} ms", file=sys.stderr)
        rows = []
        for step in args.steps:
            for mode, model in (("plain", plain), ("ladder", ladder)):
                if mode not in args.modes:
                    continue
                before = ladder_counts(http_port, ladder)
                results = await open_loop(stub, model, photos, step * capacity, args.seconds, deadline,
                                          seed=int(step * 100))
                await asyncio.sleep(0.5)  # the server closes a call its client gave up on a moment later
                after = ladder_counts(http_port, ladder)
                # The server's view of the ladder's misses: of the requests routed to each rung, how many
                # it answered past their deadline.
                by_rung = ", ".join(f"{v} {after['missed'][v] - before['missed'][v]}/"
                                    f"{after['routed'][v] - before['routed'][v]}"
                                    for v in sorted(after["routed"]) if after["routed"][v] > before["routed"][v])
                answered = [(lat, k, r) for status, lat, k, r in results if status == "OK" and r is not None]
                missed = len(results) - len(answered)
                failures = Counter(status for status, *_ in results if status != "OK")
                mix = Counter(r.variant or plain for _, _, r in answered)
                agree = [f1(reference[k], boxes_of(r)) for _, k, r in answered]
                latencies = [lat * 1e3 for lat, _, _ in answered]
                rows.append(
                    f"| {step:.0%} | {step * capacity:.1f} | {mode} | {len(results)} | {missed / len(results):.1%} "
                    f"| {pct(latencies, 50):.0f} | {pct(latencies, 99):.0f} "
                    f"| {statistics.mean(agree) if agree else math.nan:.3f} "
                    f"| {', '.join(f'{v} {n / len(answered):.0%}' for v, n in sorted(mix.items())) or '—'} "
                    f"| {', '.join(f'{s} {n}' for s, n in sorted(failures.items())) or '—'} "
                    f"| {by_rung if mode == 'ladder' else '—'} |")
                print(rows[-1], file=sys.stderr)
    head = (f"FP32 pipeline `{plain}`: capacity {capacity:.1f} requests/s (closed loop, concurrency 4, "
            f"{args.capacity_seconds:g} s), lone-request median {statistics.median(lone) * 1e3:.1f} ms; every "
            f"request's deadline {deadline * 1e3:.0f} ms; {args.seconds:g} s of Poisson arrivals per step and mode; "
            f"{len(photos)} {'images of ' + str(args.images) if args.images else 'packaged photographs'}. "
            "Each rung alone, the same way: "
            + ", ".join(f"`{r}` {c:.1f}/s ({c / capacity:.0%} of FP32's)" for r, c in capacities.items())
            + ": offered load beyond the fastest rung's capacity cannot all be answered in time, whatever the "
            "routing.\n\n")
    return head + "\n".join([
        "| load | offered /s | mode | requests | missed | p50 ms | p99 ms | agreement | variants | failures "
        "| missed/routed per rung (server) |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "models")
    ap.add_argument("--detector", default="yolov8n")
    ap.add_argument("--pipeline", default="yolov8n_detect")
    ap.add_argument("--variants", help="the rungs below FP32, most accurate first (quantize's names; default "
                                       "int8, or 480,320 with --dynamic)")
    ap.add_argument("--dynamic", action="store_true", help="a dynamic-size build of yolov8n (see above)")
    ap.add_argument("--steps", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 1.0, 1.5, 2.0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--modes", nargs="+", choices=["plain", "ladder"], default=["plain", "ladder"],
                    help="what takes each step's load (default both, one after the other)")
    ap.add_argument("--capacity-seconds", type=float, default=10.0)
    ap.add_argument("--deadline-ms", type=float, default=0.0, help="default: 3x the FP32 lone-request median")
    ap.add_argument("--images", type=Path, help="the images requests carry (default: packaged photographs)")
    ap.add_argument("--calibration", type=Path, help="INT8 calibration images (default: quantize's own)")
    ap.add_argument("--port", type=int, default=8951, help="gRPC; HTTP (for /metrics) on the next one")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.variants = args.variants or ("480,320" if args.dynamic else "int8")
    work = Path(tempfile.mkdtemp(prefix="bench-ladder-"))
    try:
        repo, rungs = prepare(args, work)
        ladder = f"{args.pipeline}_ladder"
        server = start_peregrine(repo, args.pipeline, args.port, [ladder, *rungs], http_port=args.port + 1)
        try:
            text = asyncio.run(measure(args, args.port, args.pipeline, ladder, rungs))
        finally:
            server.terminate()
            server.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(text)
    write_report(args.out, "SLO ladder under load", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
