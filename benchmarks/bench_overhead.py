"""Per-request overhead, side by side in one run (issue 15): Peregrine against KServe and the bare floor.

Servers, each a subprocess on loopback, measured in turn round after round (A, B, C, D, A, B, ...) so that
load on the machine hits all alike; Triton's perf_analyzer drives every one:

- Peregrine (this tree), serving identity_fp32, a copy of it with the response cache on, and yolov8n;
- KServe's Python ModelServer serving the same identity ONNX file (``peers/kserve_onnx.py``), installed
  into its own virtual environment under ``.bench/`` on first use (``--kserve-version``);
- the floor: ``floor_server.py``, a bare Python gRPC server echoing its input (grpc.aio and threaded).

Tables (medians over rounds; ratios are of medians measured in the same run):

1. identity FP32 [1,16] at concurrency 1 and 4: throughput and p50/p99 of each server, Peregrine/KServe;
2. large tensors each way (1.2 MB, 4.9 MB) at concurrency 1: Peregrine against the floor;
3. yolov8n FP32 [1,3,640,640] at concurrency 1: served over gRPC, served with system shared memory, and
   in-process ONNX Runtime with the server's session options;
4. the response cache: a hit's p50 against the identity model's;
5. 1,000 idle ModelStreamInfer streams open: unary p50/p99 and the server's RSS, before and during.

    python benchmarks/bench_overhead.py --rounds 3 --out benchmarks/results/overhead.md
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, start_peregrine, wait_until_ready, write_report

ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer" / "bin" / "perf_analyzer"
BENCH = ROOT / ".bench"
IDENTITY = "identity_fp32"
CACHED = "identity_cached"
YOLO = "yolov8n"
YOLO_OUTPUT_BYTES = 84 * 8400 * 4


# -- servers -------------------------------------------------------------------------------------------
def model_repository(source: Path, into: Path) -> Path:
    """identity_fp32 and yolov8n from ``source``, and identity_cached: identity_fp32 with the cache on."""
    for name in (IDENTITY, YOLO):
        shutil.copytree(source / name, into / name)
    shutil.copytree(source / IDENTITY, into / CACHED)
    config = into / CACHED / "config.toml"
    config.write_text(config.read_text() + "\nresponse_cache = true\n")
    return into


def kserve_venv(version: str) -> Path:
    """A virtual environment with KServe and ONNX Runtime (made once, under .bench/)."""
    venv = BENCH / f"venv-kserve-{version}"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"making {venv} (kserve=={version}, onnxruntime)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"kserve=={version}", "onnxruntime", "numpy"],
                       check=True)
    return python


def identity_config_bytes() -> bytes:
    """identity_fp32's ModelConfigResponse, as KServe's peer answers perf_analyzer (see peers/kserve_onnx.py)."""
    import floor_server

    return floor_server.config().SerializeToString()  # type: ignore[no-any-return]


def start_kserve(python: Path, onnx: Path, port: int, config: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([str(python), str(ROOT / "benchmarks" / "peers" / "kserve_onnx.py"),
                             "--model_name", IDENTITY, "--onnx", str(onnx), "--grpc_port", str(port),
                             "--http_port", str(port + 1), "--model-config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_ready(proc, f"127.0.0.1:{port}", [IDENTITY], timeout_s=120)
    return proc


def start_floor(mode: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "floor_server.py"), "--mode", mode,
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_ready(proc, f"127.0.0.1:{port}", [IDENTITY], timeout_s=60)
    return proc


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- measuring -----------------------------------------------------------------------------------------
def perf(model: str, port: int, shape: list[int], concurrency: int, interval_ms: int,
         extra: tuple[str, ...] = ()) -> dict[str, float]:
    """One perf_analyzer measurement: throughput (infer/s), p50 and p99 (ms). perf_analyzer gives up when
    three windows in a row disagree by more than 25%; on a noisy machine the large tensors do, and then the
    measurement is taken again accepting any spread (the median of rounds absorbs it)."""
    try:
        return _perf(model, port, shape, concurrency, interval_ms, extra, 25)
    except subprocess.CalledProcessError:
        print(f"unstable: {model} {shape} c={concurrency} on :{port}; measuring again at -s 1000", file=sys.stderr)
        return _perf(model, port, shape, concurrency, interval_ms, extra, 1000)


def _perf(model: str, port: int, shape: list[int], concurrency: int, interval_ms: int, extra: tuple[str, ...],
          stability: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        batch, *rest = shape
        name = "images" if model == YOLO else "INPUT0"
        cmd = [str(PERF_ANALYZER), "-m", model, "-i", "grpc", "-u", f"127.0.0.1:{port}", "-b", str(batch),
               "--shape", f"{name}:{','.join(map(str, rest))}", "--concurrency-range", str(concurrency),
               "--measurement-interval", str(interval_ms), "-s", str(stability), "--max-trials", "10",
               "--input-data", "random", "-f", str(out), *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        row = next(csv.DictReader(out.open()))
    return {"throughput": float(row["Inferences/Second"]) / batch, "p50": float(row["p50 latency"]) / 1000,
            "p99": float(row["p99 latency"]) / 1000}


def in_process(repository: Path, seconds: float) -> dict[str, float]:
    """yolov8n in this process, one thread back to back, with the server's session options."""
    from bench_oip import closed_loop, session_for

    session = session_for(repository, YOLO)
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)}
    return closed_loop(lambda: lambda: session.run(None, feed), 1, seconds)


class IdleStreams:
    """``count`` ModelStreamInfer streams held open without sending anything, from a thread of their own
    (``per_channel`` streams per connection)."""

    def __init__(self, port: int, count: int, per_channel: int = 100) -> None:
        self.port, self.count, self.per_channel = port, count, per_channel
        self.opened = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> IdleStreams:
        self._thread.start()
        if not self.opened.wait(120):
            raise RuntimeError("the idle streams did not open in 120 s")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def _run(self) -> None:
        import grpc
        from peregrine.proto import grpc_service_pb2 as pb
        from peregrine.proto import grpc_service_pb2_grpc as pb_grpc

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        stop = self._stop

        async def nothing():  # type: ignore[no-untyped-def]
            await stop.wait()
            return
            yield pb.ModelInferRequest()

        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
                    for _ in range(-(-self.count // self.per_channel))]
        calls = [pb_grpc.GRPCInferenceServiceStub(channels[i // self.per_channel]).ModelStreamInfer(nothing())
                 for i in range(self.count)]
        await asyncio.gather(*(c.wait_for_connection() for c in calls))
        await asyncio.sleep(1.0)  # let the server take every stream in
        self.opened.set()
        await stop.wait()
        for c in calls:
            c.cancel()
        for ch in channels:
            await ch.close()


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def fmt(rows: list[dict[str, float]]) -> str:
    return (f"{median(rows, 'throughput'):,.0f} | {median(rows, 'p50'):.3f} | {median(rows, 'p99'):.3f}")


# -- the run ---------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "models", help="built models (make models)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--measurement-ms", type=int, default=3000)
    ap.add_argument("--kserve-version", default="0.21.0")
    ap.add_argument("--streams", type=int, default=1000, help="idle streams for table 5")
    ap.add_argument("--skip", action="append", default=[], choices=["kserve", "large", "yolo", "streams"],
                    help="leave a part out (repeatable)")
    ap.add_argument("--out", type=Path, help="write the report here (markdown)")
    args = ap.parse_args()
    if not PERF_ANALYZER.exists():
        sys.exit("perf_analyzer is missing: bash benchmarks/tools/install_perf_analyzer.sh")

    ports = {"peregrine": 8711, "kserve": 8721, "floor-aio": 8731, "floor-threaded": 8741}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    results: dict[tuple[str, ...], list[dict[str, float]]] = defaultdict(list)
    tmp = Path(tempfile.mkdtemp(prefix="peregrine-overhead-"))
    try:
        repo = model_repository(args.repository, tmp / "models")
        extra = [] if "yolo" in args.skip else [YOLO]
        procs["peregrine"] = start_peregrine(repo, IDENTITY, ports["peregrine"], [CACHED, *extra])
        if "kserve" not in args.skip:
            config = tmp / "identity.config"
            config.write_bytes(identity_config_bytes())
            procs["kserve"] = start_kserve(kserve_venv(args.kserve_version), repo / IDENTITY / "1" / "model.onnx",
                                           ports["kserve"], config)
        procs["floor-aio"] = start_floor("aio", ports["floor-aio"])
        procs["floor-threaded"] = start_floor("threaded", ports["floor-threaded"])
        ms = args.measurement_ms
        sizes = {"1.2 MB": [1, 300_000], "4.9 MB": [1, 1_228_800]}
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for server in procs:
                for c in (1, 4):
                    results[("small", server, str(c))].append(perf(IDENTITY, ports[server], [1, 16], c, ms))
            results[("cache", "hit")].append(perf(CACHED, ports["peregrine"], [1, 16], 1, ms,
                                                  ("--input-data", "zero")))
            results[("cache", "identity")].append(perf(IDENTITY, ports["peregrine"], [1, 16], 1, ms,
                                                       ("--input-data", "zero")))
            if "large" not in args.skip:
                for label, shape in sizes.items():
                    for server in ("peregrine", "floor-aio", "floor-threaded"):
                        results[("large", label, server)].append(perf(IDENTITY, ports[server], shape, 1, ms))
            if "yolo" not in args.skip:
                results[("yolo", "grpc")].append(perf(YOLO, ports["peregrine"], [1, 3, 640, 640], 1, 2 * ms))
                results[("yolo", "shm")].append(perf(
                    YOLO, ports["peregrine"], [1, 3, 640, 640], 1, 2 * ms,
                    ("--shared-memory", "system", "--output-shared-memory-size", str(YOLO_OUTPUT_BYTES))))
                results[("yolo", "in-process")].append(in_process(args.repository, 2 * ms / 1000))
        if "streams" not in args.skip:
            pid = procs["peregrine"].pid
            before_rss = rss_mb(pid)
            idle = [perf(IDENTITY, ports["peregrine"], [1, 16], 1, ms) for _ in range(args.rounds)]
            with IdleStreams(ports["peregrine"], args.streams):
                during_rss = rss_mb(pid)
                busy = [perf(IDENTITY, ports["peregrine"], [1, 16], 1, ms) for _ in range(args.rounds)]
                after_rss = rss_mb(pid)
            results[("streams", "none")] = idle
            results[("streams", "open")] = busy
            rss = (before_rss, during_rss, after_rss)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    out: list[str] = [f"Machine: {machine()}. {args.rounds} rounds, perf_analyzer measurement windows of "
                      f"{args.measurement_ms} ms; medians over rounds (infer/s, p50 ms, p99 ms).", ""]
    out += ["### 1. identity FP32 [1,16]", "",
            "| server | c=1 infer/s | p50 | p99 | c=4 infer/s | p50 | p99 |", "|---|---|---|---|---|---|---|"]
    for server in procs:
        out.append(f"| {server} | {fmt(results[('small', server, '1')])} | {fmt(results[('small', server, '4')])} |")
    small: Callable[[str, str, str], float] = lambda s, c, k: median(results[("small", s, c)], k)  # noqa: E731
    if "kserve" in procs:
        ratio = [small("peregrine", c, "throughput") / small("kserve", c, "throughput") for c in ("1", "4")]
        out += ["", "| ratio | c=1 | c=4 |", "|---|---|---|",
                f"| Peregrine/KServe throughput | {ratio[0]:.2f} | {ratio[1]:.2f} |"]
    for floor in ("floor-aio", "floor-threaded"):
        gap = [small("peregrine", c, "p50") - small(floor, c, "p50") for c in ("1", "4")]
        out.append(f"| Peregrine p50 - {floor} p50 (ms) | {gap[0]:+.3f} | {gap[1]:+.3f} |")
    if "large" not in args.skip:
        out += ["", "### 2. large tensors each way, c=1", "",
                "| size | server | infer/s | p50 | p99 | p50 / floor-aio p50 |", "|---|---|---|---|---|---|"]
        for label in sizes:
            floor_p50 = median(results[("large", label, "floor-aio")], "p50")
            for server in ("peregrine", "floor-aio", "floor-threaded"):
                rows = results[("large", label, server)]
                out.append(f"| {label} | {server} | {fmt(rows)} | {median(rows, 'p50') / floor_p50:.2f} |")
    if "yolo" not in args.skip:
        ip = results[("yolo", "in-process")]
        out += ["", "### 3. yolov8n FP32, c=1", "", "| path | infer/s | p50 | p99 | / in-process |",
                "|---|---|---|---|---|"]
        for key, label in (("grpc", "served, tensors in the gRPC message"), ("shm", "served, system shared memory"),
                           ("in-process", "in-process ONNX Runtime")):
            rows = results[("yolo", key)]
            out.append(f"| {label} | {fmt(rows)} | {median(rows, 'throughput') / median(ip, 'throughput'):.2f} |")
    hit, ident = results[("cache", "hit")], results[("cache", "identity")]
    out += ["", "### 4. response cache, c=1, the same input every time", "", "| model | infer/s | p50 | p99 |",
            "|---|---|---|---|", f"| identity_fp32 (no cache) | {fmt(ident)} |",
            f"| identity_cached (hits) | {fmt(hit)} |"]
    if "streams" not in args.skip:
        out += ["", f"### 5. {args.streams} idle ModelStreamInfer streams open, unary identity c=1", "",
                "| streams open | infer/s | p50 | p99 |", "|---|---|---|---|",
                f"| 0 | {fmt(results[('streams', 'none')])} |",
                f"| {args.streams} | {fmt(results[('streams', 'open')])} |",
                "", f"Server RSS: {rss[0]:.0f} MB before, {rss[1]:.0f} MB with the streams open, "
                f"{rss[2]:.0f} MB after measuring with them (growth {rss[2] - rss[0]:+.0f} MB)."]
    text = "\n".join(out)
    print(text)
    write_report(args.out, "Per-request overhead: Peregrine, KServe and the bare floor (issue 15)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
