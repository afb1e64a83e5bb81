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

``--switch`` measures inside one process instead, under one continuous load: one server started with the on
server's parts, switched between on and off every ``--flip-s`` seconds over ``/v1/observability`` (off
there: nothing recorded in metrics, drift not sampled, tracing detached, as the off server's flags do;
``/metrics`` is still served and scraped in both), in the order on, off, off, on, on, off, ... so that each
pair of neighbouring slots has each mode once and each goes first equally often. Every request is timed by
the client (perf_analyzer's ``--profile-export-file``; for ``Detect``, closed-loop threads here) and belongs
to the slot it started in (the first ``--guard-ms`` of a slot are left out, and so is a request that ends in
the next slot). Throughput is a slot's requests over its length; the ratio reported is the median over
pairs of neighbouring slots, which share whatever state the machine is in, and the CPU per request is the
server's (``/proc``) over each slot. Two processes' placement moves the ratio of two servers by a few
percent; slots a second apart in one process leave the work. Even so, one process's median moves by a few
percent from the next's (where its code and data happen to lie): ``--servers N`` measures N fresh processes one
after another and pools their pairs, and ``--cpus SERVER LOAD`` pins the server and the load generator to
CPUs of their own, so that neither takes the other's core.

    python benchmarks/bench_observability.py --out benchmarks/results/observability.md
    python benchmarks/bench_observability.py --on metrics drift         # what tracing leaves out
    python benchmarks/bench_observability.py --otel-sample-ratio 0.01   # tracing one request in 100
    python benchmarks/bench_observability.py --rounds 12 --restart-every 1 --on none   # A/A: the noise
    python benchmarks/bench_observability.py --switch --otel-sample-ratio 0.01     # one process, switched
    python benchmarks/bench_observability.py --switch --on none                    # its A/A control
    python benchmarks/bench_observability.py --switch --servers 8 --cpus 1 0       # 8 processes, pinned
"""

from __future__ import annotations

import argparse
import itertools
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
from typing import Any

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


def start(repository: Path, grpc_port: int, http_port: int, flags: list[str],
          cpus: tuple[set[int], set[int]] | None = None) -> subprocess.Popen[bytes]:
    """A server of this tree on the bundled models; ``cpus``: (the server's, the clients') CPUs to pin to."""
    cmd = [sys.executable, "-m", "peregrine.server", "--model-repository", str(repository), "--grpc-port",
           str(grpc_port), "--http-port", str(http_port), "--model-control-mode", "explicit", "--load-model",
           PIPELINE, "--load-model", IDENTITY, "--log-level", "WARNING", *flags]
    server_cpus = cpus[0] if cpus else None
    proc = subprocess.Popen(cmd, preexec_fn=(lambda: os.sched_setaffinity(0, server_cpus)) if server_cpus else None)
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


def report(out: Path | None, title: str, lines: list[str]) -> int:
    table = "\n".join(lines)
    print(table)
    write_report(out, title, table)
    return 0


# -- one process, switched (--switch) -----------------------------------------------------------------------
def switch(http_port: int, settings: dict[str, object]) -> None:
    """Switch the server's observability at run time (``/v1/observability``) and check it took."""
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v1/observability",
                                     data=json.dumps(settings).encode())
    with urllib.request.urlopen(request, timeout=10) as answer:
        now = json.load(answer)
    if any(now[k] != v for k, v in settings.items()):
        raise RuntimeError(f"/v1/observability answered {now} after {settings}")


class Flipper:
    """Switches a server on and off every ``slot_s`` in a thread (on, off, off, on, on, ...), noting when
    each slot began (wall clock, ns: what perf_analyzer stamps requests with) and the server's CPU time then."""

    def __init__(self, http_port: int, pid: int, settings: dict[str, dict[str, object]], slot_s: float) -> None:
        self.http_port, self.pid, self.settings, self.slot_s = http_port, pid, settings, slot_s
        self.slots: list[tuple[int, str, float]] = []  # (began ns, mode, server CPU s then)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            mode = "on" if n % 4 in (0, 3) else "off"
            switch(self.http_port, self.settings[mode])
            self.slots.append((time.time_ns(), mode, cpu_seconds(self.pid)))
            n += 1
            self._stop.wait(self.slot_s)
        self.slots.append((time.time_ns(), "end", cpu_seconds(self.pid)))

    def __enter__(self) -> Flipper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def identity_timed(port: int, concurrency: int, seconds: float) -> list[tuple[int, int]]:
    """(start, end) of every request perf_analyzer timed over about ``seconds`` of closed-loop load."""
    if not PERF_ANALYZER.exists():
        raise SystemExit("--switch needs perf_analyzer in .tools (make perf-analyzer)")
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "profile.json"
        # Three windows (the fewest perf_analyzer takes) of a third of the time each, whatever their spread;
        # zeros as input keep the export small (it holds every request's tensors).
        subprocess.run([str(PERF_ANALYZER), "-m", IDENTITY, "-i", "grpc", "-u", f"127.0.0.1:{port}", "-b", "1",
                        "--shape", "INPUT0:16", "--concurrency-range", str(concurrency), "--measurement-interval",
                        str(int(seconds * 1000 / 3)), "-s", "1000", "--max-trials", "3", "--input-data", "zero",
                        "--profile-export-file", str(export)], check=True, stdout=subprocess.DEVNULL)
        requests = json.loads(export.read_text())["experiments"][0]["requests"]
    return [(r["timestamp"], r["response_timestamps"][-1]) for r in requests if r["response_timestamps"]]


def detect_timed(port: int, concurrency: int, seconds: float, jpeg: bytes) -> list[tuple[int, int]]:
    """(start, end) of every Detect of ``concurrency`` closed-loop threads over ``seconds`` (after 1 s)."""
    import grpc
    from peregrine.proto import detection_pb2 as det
    from peregrine.proto import detection_pb2_grpc as det_grpc

    request = det.DetectRequest(model_name=PIPELINE, images=[det.Image(encoded=jpeg)])
    timed: list[tuple[int, int]] = []
    begin = time.time_ns() + 1_000_000_000
    end = begin + int(seconds * 1e9)

    def loop() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = det_grpc.DetectionServiceStub(channel)
            while (started := time.time_ns()) < end:
                stub.Detect(request, timeout=30)
                if started >= begin:
                    timed.append((started, time.time_ns()))

    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return timed


def slotted(timed: list[tuple[int, int]], slots: list[tuple[int, str, float]], guard_ns: int
            ) -> list[dict[str, Any]]:
    """Each slot the requests covered: its mode, throughput, latencies (ms) and server CPU per request."""
    first, last = min(s for s, _ in timed), max(e for _, e in timed)
    starts = np.array(sorted(timed))
    out = []
    for n, ((began, mode, cpu), (ended, _, cpu_end)) in enumerate(itertools.pairwise(slots)):
        if began + guard_ns < first or ended > last:
            continue  # the load did not cover the slot
        lo, hi = np.searchsorted(starts[:, 0], [began + guard_ns, ended])
        inside = starts[lo:hi]
        inside = inside[inside[:, 1] <= ended]  # ended in its own slot
        seconds = (ended - began - guard_ns) / 1e9
        if not len(inside):
            continue
        out.append({"slot": n, "mode": mode, "throughput": len(inside) / seconds,
                    "latency_ms": (inside[:, 1] - inside[:, 0]) / 1e6,
                    "cpu_us": (cpu_end - cpu) * seconds / ((ended - began) / 1e9) * 1e6 / len(inside)})
    return out


def pair_ratios(slots: list[dict[str, Any]], key: str) -> list[float]:
    """on/off of ``key`` for each pair of neighbouring slots the load covered: slots 2k and 2k + 1, (on, off)
    or (off, on) by the flipper's order."""
    by_slot = {s["slot"]: s for s in slots}
    ratios = []
    for n, first in by_slot.items():
        second = by_slot.get(n + 1)
        if n % 2 == 0 and second is not None:
            on, off = (first, second) if first["mode"] == "on" else (second, first)
            ratios.append(on[key] / off[key])
    return ratios


def flipped_main(args: argparse.Namespace, on_parts: set[str], receiver: SpanReceiver, jpeg: bytes) -> int:
    settings: dict[str, dict[str, object]] = {
        "on": {"metrics": "metrics" in on_parts, "otel": "tracing" in on_parts,
               "drift_sample_rate": args.drift_sample_rate if "drift" in on_parts else 0},
        "off": {"metrics": False, "otel": False, "drift_sample_rate": 0}}
    grpc_port, http_port = args.port, args.port + 1
    loads: list[tuple[str, float, int, Callable[[int, float], list[tuple[int, int]]]]] = []
    if "detect" not in args.skip:
        loads.append((f"{PIPELINE} Detect", args.detect_flip_s, args.detect_pairs,
                      lambda c, seconds: detect_timed(grpc_port, c, seconds, jpeg)))
    if "identity" not in args.skip:
        loads.append((f"{IDENTITY} ModelInfer", args.flip_s, args.pairs,
                      lambda c, seconds: identity_timed(grpc_port, c, seconds)))
    pooled: dict[tuple[str, int], dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    with tempfile.TemporaryDirectory(prefix="peregrine-observability-") as tmp, \
            scraping([http_port], args.scrape_s) as scrapes:
        try:
            for k in range(args.servers):  # a fresh process each: one process's placement is luck of its own
                proc = start(args.repository, grpc_port, http_port,
                             server_flags(on_parts | {"metrics"}, args, receiver, Path(tmp)), args.cpus)
                try:
                    for load, slot_s, pairs, run in loads:
                        for c in args.concurrency:
                            with Flipper(http_port, proc.pid, settings, slot_s) as flipper:
                                timed = run(c, 2 * pairs * slot_s + slot_s)
                            slots = slotted(timed, flipper.slots, int(args.guard_ms * 1e6))
                            ratios = pair_ratios(slots, "throughput")
                            row = pooled[(load, c)]
                            row["slots"] += slots
                            row["ratios"] += ratios
                            row["cpu"] += pair_ratios(slots, "cpu_us")
                            row["servers"].append(statistics.median(ratios))
                            print(f"server {k + 1}: {load} c={c}: on/off {row['servers'][-1]:.3f} "
                                  f"({len(ratios)} pairs)", file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait(30)
        finally:
            time.sleep(0.5)
            receiver.close()
    lines = ["| load | concurrency | on infer/s | off infer/s | on/off throughput (median of pairs) | middle half "
             "of pairs | pairs | each server's median | on p99 ms | off p99 ms | on/off p99 | server CPU µs/request "
             "on | off | on/off |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (load, c), row in pooled.items():
        mode = {m: [s for s in row["slots"] if s["mode"] == m] for m in ("on", "off")}
        tput = {m: statistics.median(s["throughput"] for s in v) for m, v in mode.items()}
        p99 = {m: float(np.percentile(np.concatenate([s["latency_ms"] for s in v]), 99)) for m, v in mode.items()}
        cpus = {m: statistics.median(s["cpu_us"] for s in v) for m, v in mode.items()}
        q1, _, q3 = statistics.quantiles(row["ratios"], n=4)
        each = ", ".join(f"{r:.3f}" for r in row["servers"])
        lines.append(f"| {load} | {c} | {tput['on']:.1f} | {tput['off']:.1f} | "
                     f"**{statistics.median(row['ratios']):.3f}** | {q1:.3f} to {q3:.3f} | {len(row['ratios'])} | "
                     f"{each} | {p99['on']:.2f} | {p99['off']:.2f} | {p99['on'] / p99['off']:.3f} | "
                     f"{cpus['on']:.0f} | {cpus['off']:.0f} | {statistics.median(row['cpu']):.3f} |")
        print(lines[-1], file=sys.stderr)
    parts = [p for p in ("metrics", "drift", "tracing") if p in on_parts]
    described = {"metrics": "metrics recorded", "drift": f"drift at {args.drift_sample_rate:g}",
                 "tracing": f"OpenTelemetry at ratio {args.otel_sample_ratio:g} over OTLP/HTTP "
                            f"({receiver.spans} spans received)"}
    lines += ["", f"One server under one closed-loop load per row, switched at run time between on and off "
              f"(slots of {args.flip_s:g} s for {IDENTITY} [1,16] under perf_analyzer, {args.detect_flip_s:g} s for "
              f"{PIPELINE} Detect of one 512x512 photograph; the first {args.guard_ms:g} ms of each left out); "
              f"/metrics scraped every {args.scrape_s:g} s ({len(scrapes)} scrapes); {args.servers} server "
              f"process{'es' if args.servers > 1 else ''} one after another, their pairs pooled"
              f"{pinned(args.cpus)}. "
              f"On: {', '.join(described[p] for p in parts) or 'none of them (an A/A run)'}; off: none of them."]
    return report(args.out, "Observability on vs off, switched in one process (issue 19)", lines)


def cpu_list(text: str) -> set[int]:
    """CPUs as taskset writes them: "0", "0,2", "2-3"."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def pinned(cpus: tuple[set[int], set[int]] | None) -> str:
    if not cpus:
        return ""
    return (f"; the server pinned to CPU {','.join(map(str, sorted(cpus[0])))}, the load to CPU "
            f"{','.join(map(str, sorted(cpus[1])))}")


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
    ap.add_argument("--switch", action="store_true",
                    help="one server under one load, switched on and off every --flip-s at run time (see above)")
    ap.add_argument("--flip-s", type=float, default=1.0, help="--switch: a slot's length for identity_fp32")
    ap.add_argument("--detect-flip-s", type=float, default=4.0, help="--switch: a slot's length for Detect")
    ap.add_argument("--pairs", type=int, default=30, help="--switch: pairs of slots for identity_fp32")
    ap.add_argument("--detect-pairs", type=int, default=12, help="--switch: pairs of slots for Detect")
    ap.add_argument("--guard-ms", type=float, default=100.0,
                    help="--switch: the start of each slot left out (the switch settling)")
    ap.add_argument("--servers", type=int, default=1,
                    help="--switch: fresh server processes measured one after another, their pairs pooled")
    ap.add_argument("--cpus", nargs=2, metavar=("SERVER", "LOAD"), type=cpu_list,
                    help="--switch: pin the server to these CPUs and the load (perf_analyzer, Detect's threads) "
                         "to those (taskset's lists, e.g. 1 0): the two then never trade cores")
    ap.add_argument("--port", type=int, default=8751, help="first of four ports (gRPC and HTTP of each server)")
    ap.add_argument("--out", type=Path, help="write the report here (markdown)")
    args = ap.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, args.cpus[1])  # this process's Detect threads and the perf_analyzer it runs
    loads: dict[str, Callable[[int, int], dict[str, float]]] = {}
    jpeg = photograph()
    if "detect" not in args.skip:
        loads[f"{PIPELINE} Detect"] = lambda port, c: detect_load(port, c, args.detect_seconds, jpeg)
    if "identity" not in args.skip:
        loads[f"{IDENTITY} ModelInfer"] = lambda port, c: identity_load(port, c, args.seconds)

    on_parts = set(args.on) - {"none"}
    receiver = SpanReceiver()
    ports = {"on": (args.port, args.port + 1), "off": (args.port + 2, args.port + 3)}
    if args.switch:
        return flipped_main(args, on_parts, receiver, jpeg)
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
    return report(args.out, "Observability on vs off (issue 19)", lines)


if __name__ == "__main__":
    sys.exit(main())
