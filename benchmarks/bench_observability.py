"""What observability costs the request path (issue 19): one server with metrics, drift and tracing on
against one with all of them off, under the same load, measured in alternating rounds.

- **on**: metrics served and recorded (``/metrics`` scraped every ``--scrape-s`` seconds, as Prometheus
  would), drift sketched (``--drift-sample-rate``, default 0.1, the rate docs/OBSERVABILITY.md suggests) and
  every request traced with OpenTelemetry (``--otel-sample-ratio 1``) and exported over OTLP/HTTP to a
  small receiver this script runs on loopback (it answers each export and counts the spans: no collector
  is needed and nothing leaves the machine);
- **off**: ``--allow-metrics=false`` (nothing recorded, ``/metrics`` answers 404: the scraper still asks),
  no drift, ``--otel-exporter off``.

Both are subprocesses of this tree serving the bundled models. Loads, each at concurrency 1 and 4:
``yolov8n_detect`` through ``Detect`` with one photograph (the project's load harness,
``peregrine.client.load``, closed loop) and ``identity_fp32`` [1,16] through ``ModelInfer`` (Triton's
perf_analyzer when ``.tools/perf_analyzer`` is there, else the load harness). Rounds alternate which server
goes first; reported are medians over rounds of throughput and p99, and on/off ratios of those medians.

Two processes of the same server with the same flags differ by a few percent for as long as they run (where
their memory happens to lie): ``--restart-every N`` starts a fresh pair every N rounds, alternating which
starts first, so that the medians span several pairs and no one process's luck decides the ratio.
``--on none`` starts two servers with everything off: what the machine's noise alone gives the ratio.

    python benchmarks/bench_observability.py --out benchmarks/results/observability.md
    python benchmarks/bench_observability.py --on metrics drift         # what tracing leaves out
    python benchmarks/bench_observability.py --otel-sample-ratio 0.01   # tracing one request in 100
    python benchmarks/bench_observability.py --rounds 12 --restart-every 1 --on none   # A/A: the noise
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import metric_samples, wait_until_ready, write_report

ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer" / "bin" / "perf_analyzer"
PIPELINE, IDENTITY = "yolov8n_detect", "identity_fp32"


# -- an OTLP/HTTP receiver -------------------------------------------------------------------------------
class SpanReceiver:
    """Answers OTLP/HTTP trace exports on loopback (``endpoint``) with an empty success and counts the
    spans they carry: the on server's exporter has a real peer, and the report shows spans did leave."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp

        receiver = self
        self.spans = 0
        self.exports = 0
        ok = otlp.ExportTraceServiceResponse().SerializeToString()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = otlp.ExportTraceServiceRequest.FromString(body)
                receiver.exports += 1
                receiver.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(ok)))
                self.end_headers()
                self.wfile.write(ok)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.http.server_address[1]}/v1/traces"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()


# -- the two servers ----------------------------------------------------------------------------------
def server_flags(parts: set[str], args: argparse.Namespace, receiver: SpanReceiver, drift_dir: Path) -> list[str]:
    """The command-line flags of a server with ``parts`` of observability on (the others off)."""
    flags = [] if "metrics" in parts else ["--allow-metrics=false"]
    if "drift" in parts:
        flags += ["--drift-sample-rate", str(args.drift_sample_rate), "--drift-window", "500", "--drift-dir",
                  str(drift_dir)]
    if "tracing" in parts:
        flags += ["--otel-exporter", "otlp-http", "--otel-endpoint", receiver.endpoint, "--otel-sample-ratio",
                  str(args.otel_sample_ratio)]
    else:
        flags += ["--otel-exporter", "off"]
    return flags


def start(repository: Path, grpc_port: int, http_port: int, flags: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "peregrine.server", "--model-repository", str(repository), "--grpc-port",
           str(grpc_port), "--http-port", str(http_port), "--model-control-mode", "explicit", "--load-model",
           PIPELINE, "--load-model", IDENTITY, "--log-level", "WARNING", *flags]
    proc = subprocess.Popen(cmd)
    try:
        wait_until_ready(proc, f"127.0.0.1:{grpc_port}", [PIPELINE, IDENTITY], timeout_s=180)
    except BaseException:
        proc.terminate()
        raise
    return proc


@contextmanager
def serving(order: tuple[str, str], ports: dict[str, tuple[int, int]], repository: Path,
            flags: dict[str, list[str]]) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """The two servers, started in ``order`` and stopped when the block is done."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in order:
            procs[name] = start(repository, *ports[name], flags[name])
        yield procs
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)


@contextmanager
def scraping(http_ports: list[int], every_s: float) -> Iterator[list[int]]:
    """GET /metrics of every server every ``every_s`` seconds in a thread, as Prometheus would (the off
    server answers 404); yields the byte counts of the on server's answers."""
    stop = threading.Event()
    sizes: list[int] = []

    def loop() -> None:
        while not stop.wait(every_s):
            for port in http_ports:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                        sizes.append(len(answer.read()))
                except OSError:  # 404 from a server with metrics off, or none listening while a pair restarts
                    pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield sizes
    finally:
        stop.set()
        thread.join(15)


# -- loads ------------------------------------------------------------------------------------------------
def detect_load(port: int, concurrency: int, seconds: float, jpeg: bytes) -> dict[str, float]:
    from peregrine.client.channel import ChannelSettings
    from peregrine.client.load.runner import LoadConfig, detect_workload, run_load
    from peregrine.proto import detection_pb2 as det

    request = det.DetectRequest(model_name=PIPELINE, images=[det.Image(encoded=jpeg)]).SerializeToString()
    config = LoadConfig(PIPELINE, ChannelSettings(f"127.0.0.1:{port}"), concurrency=concurrency, warmup_s=1.0,
                        duration_s=seconds)
    result = run_load(config, detect_workload([request], "one photograph"))
    if result.errors:
        raise RuntimeError(f"Detect on :{port}: errors {result.errors}")
    return {"throughput": result.throughput_rps, "p99": result.latency_ms["p99"]}


def identity_load(port: int, concurrency: int, seconds: float) -> dict[str, float]:
    if PERF_ANALYZER.exists():
        from bench_overhead import perf

        return perf(IDENTITY, port, [1, 16], concurrency, int(seconds * 1000))
    from peregrine.client.channel import ChannelSettings
    from peregrine.client.load.runner import LoadConfig, oip_workload, run_load

    config = LoadConfig(IDENTITY, ChannelSettings(f"127.0.0.1:{port}"), concurrency=concurrency, warmup_s=1.0,
                        duration_s=seconds)
    inputs = {"INPUT0": np.random.default_rng(0).random((1, 16), dtype=np.float32)}
    result = run_load(config, oip_workload(IDENTITY, inputs))
    return {"throughput": result.throughput_rps, "p99": result.latency_ms["p99"]}


def photograph() -> bytes:
    from skimage import data

    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def answered(http_port: int, model: str) -> int:
    """How many requests ``model`` has answered successfully (the statistics extension: on with metrics off)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{model}/stats", timeout=10) as answer:
        stats = json.load(answer)["model_stats"]
    return sum(s["inference_stats"]["success"]["count"] for s in stats)


def counter(port: int, name: str) -> float:
    """The sum of a family's samples on the server's /metrics."""
    return sum(s.value for s in metric_samples(port) if s.name == name)


# -- the run ------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "models", help="built models (make models)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0,
                    help="perf_analyzer's measurement window for identity_fp32 (it takes at least three)")
    ap.add_argument("--detect-seconds", type=float, default=12.0,
                    help="measured seconds of each Detect load (a CPU answers ~10-20 a second: a p99 needs hundreds)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--on", nargs="+", default=["metrics", "drift", "tracing"],
                    choices=["metrics", "drift", "tracing", "none"],
                    help="what the on server has on (default all three; the off server has none; 'none': "
                         "both off, the noise alone)")
    ap.add_argument("--restart-every", type=int, default=0, metavar="N",
                    help="start a fresh pair of servers every N rounds (default 0: one pair for the whole run)")
    ap.add_argument("--drift-sample-rate", type=float, default=0.1)
    ap.add_argument("--otel-sample-ratio", type=float, default=1.0, help="share of requests the on server traces")
    ap.add_argument("--scrape-s", type=float, default=5.0, help="scrape interval of /metrics")
    ap.add_argument("--skip", action="append", default=[], choices=["detect", "identity"])
    ap.add_argument("--port", type=int, default=8751, help="first of four ports (gRPC and HTTP of each server)")
    ap.add_argument("--out", type=Path, help="write the report here (markdown)")
    args = ap.parse_args()
    loads: dict[str, Callable[[int, int], dict[str, float]]] = {}
    jpeg = photograph()
    if "detect" not in args.skip:
        loads[f"{PIPELINE} Detect"] = lambda port, c: detect_load(port, c, args.detect_seconds, jpeg)
    if "identity" not in args.skip:
        loads[f"{IDENTITY} ModelInfer"] = lambda port, c: identity_load(port, c, args.seconds)

    on_parts = set(args.on) - {"none"}
    receiver = SpanReceiver()
    ports = {"on": (args.port, args.port + 1), "off": (args.port + 2, args.port + 3)}
    results: dict[tuple[str, str, int], list[dict[str, float]]] = defaultdict(list)
    counts = {"sampled": 0.0, "staged": 0.0, "pairs": 0}
    every = args.restart_every or args.rounds
    with tempfile.TemporaryDirectory(prefix="peregrine-observability-") as tmp, \
            scraping([ports["on"][1], ports["off"][1]], args.scrape_s) as scrapes:
        try:
            for first in range(0, args.rounds, every):
                order = ("on", "off") if counts["pairs"] % 2 == 0 else ("off", "on")
                with serving(order, ports, args.repository,
                             {"on": server_flags(on_parts, args, receiver, Path(tmp)),
                              "off": server_flags(set(), args, receiver, Path(tmp))}) as procs:
                    counts["pairs"] += 1
                    for r in range(first, min(first + every, args.rounds)):
                        for load, run in loads.items():
                            for c in args.concurrency:
                                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                                    model, pid = load.split()[0], procs[name].pid
                                    cpu, count = cpu_seconds(pid), answered(ports[name][1], model)
                                    m = run(ports[name][0], c)
                                    # The server's CPU time per request answered: what it spends, whatever
                                    # the two shared cores let each server's throughput be in its turn.
                                    m["cpu_us"] = ((cpu_seconds(pid) - cpu) * 1e6
                                                   / max(answered(ports[name][1], model) - count, 1))
                                    results[(load, name, c)].append(m)
                                    print(f"round {r + 1} {load} c={c} {name}: {m['throughput']:.1f}/s "
                                          f"p99 {m['p99']:.2f} ms, server CPU {m['cpu_us']:.0f} us/request",
                                          file=sys.stderr)
                    if "metrics" in on_parts:
                        counts["sampled"] += counter(ports["on"][1], "peregrine_drift_frames_sampled_total")
                        counts["staged"] += counter(ports["on"][1], "peregrine_pipeline_stage_seconds_count")
        finally:
            time.sleep(0.5)  # the on server's exporter sends its last batch when it stops
            receiver.close()

    lines = ["| load | concurrency | on infer/s | off infer/s | on/off throughput | each round's on/off | on p99 ms | "
             "off p99 ms | on/off p99 | server CPU µs/request on | off | on/off |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for load in loads:
        for c in args.concurrency:
            med = {n: {k: statistics.median(m[k] for m in results[(load, n, c)])
                       for k in ("throughput", "p99", "cpu_us")} for n in ("on", "off")}
            # Each round's pair was measured back to back: the spread of their ratios is the machine's noise.
            pairs = [on["throughput"] / off["throughput"]
                     for on, off in zip(results[(load, "on", c)], results[(load, "off", c)], strict=True)]
            lines.append(f"| {load} | {c} | {med['on']['throughput']:.1f} | {med['off']['throughput']:.1f} | "
                         f"{med['on']['throughput'] / med['off']['throughput']:.3f} | "
                         f"{min(pairs):.2f} to {max(pairs):.2f} | {med['on']['p99']:.2f} | "
                         f"{med['off']['p99']:.2f} | {med['on']['p99'] / med['off']['p99']:.3f} | "
                         f"{med['on']['cpu_us']:.0f} | {med['off']['cpu_us']:.0f} | "
                         f"{med['on']['cpu_us'] / med['off']['cpu_us']:.3f} |")
    driver = "perf_analyzer" if PERF_ANALYZER.exists() else "peregrine.client.load"
    parts = []
    if "metrics" in on_parts:
        parts.append(f"metrics (scraped every {args.scrape_s:g} s: {len(scrapes)} scrapes, last "
                     f"{scrapes[-1] if scrapes else 0} bytes; {counts['staged']:.0f} stage observations)")
    if "drift" in on_parts:
        sketched = f" ({counts['sampled']:.0f} frames sampled)" if "metrics" in on_parts else ""
        parts.append(f"drift at {args.drift_sample_rate:g}{sketched}")
    if "tracing" in on_parts:
        parts.append(f"OpenTelemetry at ratio {args.otel_sample_ratio:g} over OTLP/HTTP ({receiver.spans} spans in "
                     f"{receiver.exports} exports received)")
    pairs_run = "one pair of servers" if counts["pairs"] == 1 else f"{counts['pairs']} pairs of servers"
    lines += ["", f"Medians of {args.rounds} alternating rounds over {pairs_run}; {IDENTITY} [1,16] driven by {driver} "
              f"({args.seconds:g} s windows), {PIPELINE} by peregrine.client.load (closed loop, one 512x512 image, "
              f"{args.detect_seconds:g} s). "
              f"On: {', '.join(parts) or 'none of them (an A/A run)'}; off: none of them."]
    table = "\n".join(lines)
    print(table)
    write_report(args.out, "Observability on vs off (issue 19)", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
