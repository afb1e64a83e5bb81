"""Dynamic batching under load: a YOLOv8n-class model served by Peregrine, driven by tritonclient.

One run measures, on this machine:

* in-process ONNX Runtime throughput at batch 1, 2, 4, 8 (same session options as the server);
* a Peregrine server (subprocess, its own GIL) serving the same ONNX file under three configurations:
  ``off`` (no ``[dynamic_batching]``), ``fixed`` (a fixed window) and ``adaptive`` (``window = "adaptive"``);
* a closed loop at concurrency 1, 2, 4, 8 against each (median of ``--repeats`` runs, interleaved);
* an open loop (Poisson arrivals) at 50/80/95% of the measured capacity, each request carrying a gRPC
  deadline so that the server drops what cannot be answered in time; latency percentiles and the
  deadline-miss rate (late or DEADLINE_EXCEEDED);
* optionally the same closed and open loops against a peer server (MLServer, in its own virtual
  environment) serving the same ONNX file with the same ONNX Runtime options and adaptive batching.

Prints a markdown report; ``--out FILE`` writes it with the command line and the machine.

    python -m venv PEER_VENV && PEER_VENV/bin/pip install mlserver onnxruntime "uvloop<0.22"
    python benchmarks/bench_batching.py --out benchmarks/results/batching.md \
        --peer-python PEER_VENV/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
MODES = ("off", "fixed", "adaptive")


# -- the model and the repository ------------------------------------------------------------------
def build_model(workdir: Path) -> Path:
    """The YOLOv8n-class detector from Peregrine's model builder ([N,3,640,640] -> [N,84,8400])."""
    subprocess.run([sys.executable, "-m", "peregrine.modelgen", "--repository", str(workdir),
                    "--model", "yolov8n"], check=True, stdout=sys.stderr)
    return workdir / "yolov8n" / "1" / "model.onnx"


def write_repository(root: Path, onnx_path: Path, threads: int, max_batch: int, delay_us: int,
                     device: str = "cpu") -> None:
    """Three models over one ONNX file: batching off, a fixed window, the adaptive window."""
    common = textwrap.dedent(f"""\
        max_batch_size = {max_batch}
        [instance_group]
        count = 1
        device = "{device}"
        [onnxruntime]
        intra_op_num_threads = {threads}
        inter_op_num_threads = 1
        """)
    tables = {
        "off": "",
        "fixed": f"[dynamic_batching]\nmax_queue_delay_us = {delay_us}\n",
        "adaptive": f'[dynamic_batching]\nmax_queue_delay_us = {delay_us}\nwindow = "adaptive"\n',
    }
    for mode, table in tables.items():
        d = root / f"yolo_{mode}"
        (d / "1").mkdir(parents=True, exist_ok=True)
        target = d / "1" / "model.onnx"
        if not target.exists():
            target.symlink_to(onnx_path.resolve())
        (d / "config.toml").write_text(common + table)


def make_input(batch: int = 1) -> np.ndarray:
    return np.random.default_rng(0).random((batch, 3, 640, 640), dtype=np.float32)


# -- in-process ONNX Runtime -----------------------------------------------------------------------
def in_process(onnx_path: Path, threads: int, batches: list[int], seconds: float,
               device: str = "cpu") -> dict[int, float]:
    """Images per second of one session, single caller, at each batch size (the server's CUDA options
    on ``device="cuda"``: heuristic cuDNN algorithm search)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    providers: list[Any] = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}))
    sess = ort.InferenceSession(str(onnx_path), so, providers=providers)
    name = sess.get_inputs()[0].name
    out = {}
    for n in batches:
        x = make_input(n)
        sess.run(None, {name: x})
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or count < 2:
            sess.run(None, {name: x})
            count += 1
        out[n] = count * n / (time.perf_counter() - start)
    return out


# -- servers -------------------------------------------------------------------------------------
@contextmanager
def peregrine_server(repository: Path, port: int) -> Iterator[str]:
    cmd = [sys.executable, "-m", "peregrine.server", "--model-repository", str(repository),
           "--grpc-port", str(port), "--http-port", "-1", "--log-level", "WARNING"]
    with running(cmd, f"127.0.0.1:{port}", [f"yolo_{m}" for m in MODES]) as url:
        yield url


@contextmanager
def running(cmd: list[str], url: str, models: list[str], env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Iterator[str]:
    print("+", shlex.join(cmd), file=sys.stderr)
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=sys.stderr, stderr=sys.stderr)
    try:
        wait_until_ready(proc, url, models)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


MLSERVER_RUNTIME = '''
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(extra.get("threads", 1))
        so.inter_op_num_threads = 1
        self._sess = ort.InferenceSession(self.settings.parameters.uri, so, providers=["CPUExecutionProvider"])
        self._input = self._sess.get_inputs()[0].name
        self._output = self._sess.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self._sess.run([self._output], {self._input: x})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output(self._output, y)])
'''


@contextmanager
def mlserver(python: Path, workdir: Path, onnx_path: Path, threads: int, max_batch: int, delay_us: int,
             port: int) -> Iterator[str]:
    """MLServer serving the same ONNX file with its adaptive batching (max_batch_time = the window)."""
    d = workdir / "mlserver"
    (d / "yolov8n").mkdir(parents=True, exist_ok=True)
    (d / "runtime.py").write_text(MLSERVER_RUNTIME)
    (d / "settings.json").write_text(json.dumps({
        "grpc_port": port, "http_port": port + 1, "metrics_port": port + 2, "parallel_workers": 1,
        "grpc_max_message_length": 256 * 1024 * 1024, "debug": False,
    }))
    (d / "yolov8n" / "model-settings.json").write_text(json.dumps({
        "name": "yolov8n", "implementation": "runtime.OnnxModel",
        "max_batch_size": max_batch, "max_batch_time": delay_us / 1e6,
        "parameters": {"uri": str(onnx_path.resolve()), "extra": {"threads": threads}},
    }))
    mlserver_bin = python.parent / "mlserver"
    env = dict(os.environ, PYTHONPATH=str(d))
    with running([str(mlserver_bin), "start", str(d)], f"127.0.0.1:{port}", ["yolov8n"], env=env, cwd=d) as url:
        yield url


# -- load generators -----------------------------------------------------------------------------
@dataclass
class Closed:
    throughput: float
    p50: float
    p99: float


def closed_loop(url: str, model: str, concurrency: int, seconds: float) -> Closed:
    """``concurrency`` threads, each sending the next request when the last is answered."""
    import tritonclient.grpc as tc

    x = make_input()
    latencies: list[float] = []
    lock = threading.Lock()
    warmed = threading.Barrier(concurrency + 1)
    go = threading.Event()
    window: list[float] = []

    def worker() -> None:
        client = tc.InferenceServerClient(url)
        inp = tc.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.infer(model, [inp])  # connect and warm up outside the measurement
        warmed.wait()
        go.wait()
        local = []
        while time.perf_counter() < window[1]:
            t = time.perf_counter()
            client.infer(model, [inp])
            local.append(time.perf_counter() - t)
        with lock:
            latencies.extend(local)
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    warmed.wait()
    start = time.perf_counter()
    window[:] = [start, start + seconds]
    go.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return Closed(len(lat) / elapsed, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))


@dataclass
class Open:
    rate: float
    sent: int
    latencies_ms: list[float] = field(default_factory=list)  # of every request; a failed one is infinite

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return float(np.percentile(self.latencies_ms, q, method="higher"))

    def miss_rate(self, deadline_ms: float) -> float:
        """Requests not answered OK within ``deadline_ms``."""
        return sum(1 for t in self.latencies_ms if t > deadline_ms) / max(self.sent, 1)


@dataclass
class OpenRuns:
    """Repeats of one open-loop point: every statistic is the median over the repeats."""

    runs: list[Open]

    @property
    def rate(self) -> float:
        return self.runs[0].rate

    @property
    def sent(self) -> int:
        return int(statistics.median(r.sent for r in self.runs))

    def pct(self, q: float) -> float:
        return float(np.median([r.pct(q) for r in self.runs]))

    def miss_rate(self, deadline_ms: float) -> float:
        return float(np.median([r.miss_rate(deadline_ms) for r in self.runs]))


def open_loop(url: str, model: str, rate: float, seconds: float, deadline_s: float | None, seed: int) -> Open:
    """Poisson arrivals at ``rate`` per second; with ``deadline_s`` each request carries it as its gRPC
    deadline (the server then drops what is still queued when it passes)."""
    import tritonclient.grpc as tc

    x = make_input()
    client = tc.InferenceServerClient(url)
    inp = tc.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer(model, [inp])
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, size=int(rate * seconds * 1.5) + 10))
    arrivals = arrivals[arrivals < seconds]
    outcome = Open(rate, len(arrivals))
    done = threading.Semaphore(0)
    lock = threading.Lock()

    def callback(sent_at: float) -> Callable[[object, object], None]:
        def cb(result: object, error: object) -> None:
            latency = time.perf_counter() - sent_at
            with lock:
                outcome.latencies_ms.append(latency * 1000 if error is None else float("inf"))
            done.release()

        return cb

    start = time.perf_counter()
    for t in arrivals:
        delay = start + t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client.async_infer(model, [inp], callback(time.perf_counter()), client_timeout=deadline_s)
    for _ in range(len(arrivals)):
        if not done.acquire(timeout=(deadline_s or 0) + 60):
            raise RuntimeError("responses did not arrive")
    client.close()
    return outcome


# -- the report ----------------------------------------------------------------------------------
def fmt_ms(v: float) -> str:
    return "miss" if v == float("inf") else f"{v:.0f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, help="ONNX model with a dynamic batch dimension (default: build YOLOv8n)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every session (default 1)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the server and in-process ORT run")
    p.add_argument("--delay-us", type=int, default=10_000, help="max_queue_delay_us of fixed/adaptive")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--closed-seconds", type=float, default=3.5)
    p.add_argument("--repeats", type=int, default=3, help="closed-loop repeats (median)")
    p.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    p.add_argument("--open-seconds", type=float, default=10.0)
    p.add_argument("--open-repeats", type=int, default=2, help="open-loop repeats (median)")
    p.add_argument("--deadline-ms", type=float, default=100.0)
    p.add_argument("--in-process-seconds", type=float, default=3.0)
    p.add_argument("--port", type=int, default=8301)
    p.add_argument("--peer-python", type=Path, help="python of a venv with mlserver + onnxruntime")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    wall = time.perf_counter()
    top = max(a.loads)

    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        work = Path(tmp)
        onnx_path = a.onnx or build_model(work / "built")
        repo = work / "repo"
        write_repository(repo, onnx_path, a.threads, a.max_batch, a.delay_us, a.device)
        batches = [b for b in (1, 2, 4, 8) if b <= a.max_batch]

        ort_before = in_process(onnx_path, a.threads, batches, a.in_process_seconds, a.device)
        closed: dict[tuple[str, int], list[Closed]] = {}
        with peregrine_server(repo, a.port) as url:
            for _ in range(a.repeats):
                for c in a.concurrency:
                    for mode in MODES:
                        closed.setdefault((mode, c), []).append(
                            closed_loop(url, f"yolo_{mode}", c, a.closed_seconds))
            med = {k: median_closed(v) for k, v in closed.items()}
            capacity = max(r.throughput for r in med.values())
            single_ms = med[("off", 1)].p50
            scaled_ms = float(round(3 * single_ms))
            # Pure queueing latency (no deadline on the wire), then the deadline enforced at the top load.
            runs: dict[tuple[str, float], list[Open]] = {}
            for rep in range(a.open_repeats):
                for load in a.loads:
                    for m in MODES:
                        runs.setdefault((m, load), []).append(
                            open_loop(url, f"yolo_{m}", load * capacity, a.open_seconds, None,
                                      seed=rep * 1000 + int(load * 100)))
            opened = {k: OpenRuns(v) for k, v in runs.items()}
            enforced = {(m, dl): open_loop(url, f"yolo_{m}", top * capacity, a.open_seconds, dl / 1000,
                                           seed=int(top * 100)) for dl in (a.deadline_ms, scaled_ms) for m in MODES}
            batch_sizes = batch_histograms(url)
        ort_after = in_process(onnx_path, a.threads, batches, a.in_process_seconds, a.device)
        ort_tput = {n: statistics.median([ort_before[n], ort_after[n]]) for n in batches}

        peer_closed: dict[int, Closed] = {}
        peer_open: dict[float, OpenRuns] = {}
        peer_note = "not run (no --peer-python)"
        if a.peer_python:
            try:
                with mlserver(a.peer_python, work, onnx_path, a.threads, a.max_batch, a.delay_us, a.port + 10) as url:
                    for c in a.concurrency:
                        peer_closed[c] = median_closed([closed_loop(url, "yolov8n", c, a.closed_seconds)
                                                        for _ in range(a.repeats)])
                    peer_capacity = max(r.throughput for r in peer_closed.values())
                    # Offered Peregrine's 80% load, MLServer would be past its capacity: it gets 80% of its own.
                    peer_open[-0.8] = OpenRuns([open_loop(url, "yolov8n", 0.8 * peer_capacity, a.open_seconds, None,
                                                          seed=rep * 1000 + 80) for rep in range(a.open_repeats)])
                version = subprocess.run([str(a.peer_python), "-c", "import mlserver; print(mlserver.__version__)"],
                                         capture_output=True, text=True).stdout.strip()
                peer_note = (f"MLServer {version} (own venv), custom ONNX Runtime runtime with the same session "
                             f"options, adaptive batching max_batch_size={a.max_batch}, "
                             f"max_batch_time={a.delay_us / 1e6:g} s, parallel_workers=1")
            except Exception as e:  # the peer is optional: record why it is missing
                peer_note = f"failed: {e}"

    report = render(a, time.perf_counter() - wall, ort_tput, med, capacity, single_ms, scaled_ms, opened,
                    enforced, batch_sizes, peer_closed, peer_open, peer_note)
    print(report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(report)
    return 0


def batch_histograms(url: str) -> dict[str, dict[int, int]]:
    """Batches run per batch size, per model, over the whole run (ModelStatistics)."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(url)
    out = {m: {b.batch_size: b.compute_infer.count for b in client.get_inference_statistics(f"yolo_{m}")
               .model_stats[0].batch_stats} for m in MODES}
    client.close()
    return out


def median_closed(runs: list[Closed]) -> Closed:
    return Closed(*(statistics.median(getattr(r, f) for r in runs) for f in ("throughput", "p50", "p99")))


def render(a: argparse.Namespace, seconds: float, ort_tput: dict[int, float], med: dict[tuple[str, int], Closed],
           capacity: float, single_ms: float, scaled_ms: float, opened: dict[tuple[str, float], OpenRuns],
           enforced: dict[tuple[str, float], Open], batch_sizes: dict[str, dict[int, int]],
           peer_closed: dict[int, Closed], peer_open: dict[float, OpenRuns], peer_note: str) -> str:
    out: list[str] = ["# Dynamic batching benchmark", ""]
    say = out.append
    top = max(a.loads)
    say("## Command and machine")
    say("```")
    say(shlex.join(["python", *sys.argv]))
    say("```")
    say(f"- machine: {machine()}; 1-minute load average at the end {os.getloadavg()[0]:.2f}")
    say(f"- model: {a.onnx or 'YOLOv8n-class detector from peregrine.modelgen'}, FP32 [1,3,640,640] per "
        f"request, output [1,84,8400]; ONNX Runtime CPU EP, intra_op_num_threads={a.threads}, one instance")
    say(f"- server: `python -m peregrine.server` in a subprocess; client: tritonclient gRPC from this process; "
        f"max_batch_size={a.max_batch}; fixed and adaptive: max_queue_delay_us={a.delay_us}")
    say(f"- closed loop: {a.closed_seconds:g} s per point, median of {a.repeats} interleaved repeats; open loop: "
        f"{a.open_seconds:g} s per point, median of {a.open_repeats} interleaved repeats; deadline-enforced runs "
        f"once each; whole run {seconds:.0f} s")
    say("")
    say("## In-process ONNX Runtime (images/s; median of one run before and one after the served runs)")
    batches = sorted(ort_tput)
    say("| batch | " + " | ".join(str(n) for n in batches) + " |")
    say("|---|" + "---|" * len(batches))
    say("| images/s | " + " | ".join(f"{ort_tput[n]:.2f}" for n in batches) + " |")
    say("")
    say("## Closed loop (requests/s; p50 / p99 ms)")
    cols = [*MODES, *(["MLServer"] if peer_closed else [])]
    say("| concurrency | " + " | ".join(cols) + " |")
    say("|---|" + "---|" * len(cols))
    for c in a.concurrency:
        rows = [med[(m, c)] for m in MODES] + ([peer_closed[c]] if peer_closed else [])
        say(f"| {c} | " + " | ".join(f"{r.throughput:.2f}; {r.p50:.0f} / {r.p99:.0f}" for r in rows) + " |")
    say("")
    say(f"Capacity (best closed-loop throughput above) {capacity:.2f} requests/s; single-request latency "
        f"(batching off, c=1, p50) {single_ms:.0f} ms; scaled deadline = 3 x that = {scaled_ms:.0f} ms.")
    say("")
    say("## Open loop, Poisson arrivals, no deadline on the wire")
    say(f"p50 / p99 / p99.9 ms; then the share of requests answered later than {a.deadline_ms:g} ms and than "
        f"{scaled_ms:.0f} ms. n = requests sent per repeat; with n < 1000, p99.9 is the maximum.")
    say("")
    say("| load | rate/s | n | " + " | ".join(MODES) + " |")
    say("|---|---|---|" + "---|" * len(MODES))
    for load in a.loads:
        first = opened[(MODES[0], load)]
        cells = [f"{fmt_ms(r.pct(50))} / {fmt_ms(r.pct(99))} / {fmt_ms(r.pct(99.9))}; "
                 f"{100 * r.miss_rate(a.deadline_ms):.0f}%, {100 * r.miss_rate(scaled_ms):.1f}%"
                 for r in (opened[(m, load)] for m in MODES)]
        say(f"| {load:.0%} | {first.rate:.2f} | {first.sent} | " + " | ".join(cells) + " |")
    say("")
    say("Batches run over the whole run, by size (ModelStatistics batch_stats): " + "; ".join(
        f"{m}: " + ", ".join(f"{n}x{c}" for n, c in sorted(h.items())) for m, h in batch_sizes.items()))
    say("")
    say(f"## Deadline enforced (gRPC deadline on every request), {top:.0%} load")
    say("Miss rate = not answered OK in time (DEADLINE_EXCEEDED from the queue, or late); p50 of those answered.")
    say("")
    say("| deadline ms | " + " | ".join(MODES) + " |")
    say("|---|" + "---|" * len(MODES))
    for dl in (a.deadline_ms, scaled_ms):
        cells = []
        for m in MODES:
            r = enforced[(m, dl)]
            ok = [t for t in r.latencies_ms if t <= dl]
            cells.append(f"{100 * r.miss_rate(dl):.1f}% (p50 {np.median(ok):.0f} ms)" if ok else
                         f"{100 * r.miss_rate(dl):.1f}%")
        say(f"| {dl:g} | " + " | ".join(cells) + " |")
    say("")
    say("## Ratios")
    best_ort_n = max(ort_tput, key=lambda n: ort_tput[n])
    best_ort = ort_tput[best_ort_n]
    say(f"- best served throughput / best in-process ORT throughput: {capacity:.2f} / {best_ort:.2f} "
        f"(batch {best_ort_n}) = **{capacity / best_ort:.2f}** (goal >= 0.9)")
    if 0.8 in a.loads:
        for m in MODES:
            p99 = opened[(m, 0.8)].pct(99)
            say(f"- p99 at 80% load / single-request latency, {m}: {fmt_ms(p99)} / {single_ms:.0f} = "
                f"**{p99 / single_ms:.2f}** (goal <= 3)")
        ra, rf = opened[("adaptive", 0.8)], opened[("fixed", 0.8)]
        say(f"- adaptive / fixed window, open loop 80%: p50 **{ra.pct(50) / rf.pct(50):.2f}**, "
            f"p99 **{ra.pct(99) / rf.pct(99):.2f}**")
    c1, cmax = min(a.concurrency), max(a.concurrency)
    say(f"- adaptive / fixed window, closed loop c={c1} p50: {med[('adaptive', c1)].p50:.0f} / "
        f"{med[('fixed', c1)].p50:.0f} = **{med[('adaptive', c1)].p50 / med[('fixed', c1)].p50:.2f}**; "
        f"throughput at c={cmax}: **{med[('adaptive', cmax)].throughput / med[('fixed', cmax)].throughput:.2f}**")
    if peer_closed:
        best_peer = max(r.throughput for r in peer_closed.values())
        best_ours = max(med[(m, c)].throughput for m in ("fixed", "adaptive") for c in a.concurrency)
        say(f"- Peregrine (batching on) / MLServer, best closed-loop throughput: {best_ours:.2f} / {best_peer:.2f} "
            f"= **{best_ours / best_peer:.2f}**")
        c = c1
        say(f"- Peregrine (adaptive) / MLServer, closed loop c={c} p50: {med[('adaptive', c)].p50:.0f} / "
            f"{peer_closed[c].p50:.0f} = **{med[('adaptive', c)].p50 / peer_closed[c].p50:.2f}**")
        if -0.8 in peer_open:
            r = peer_open[-0.8]
            say(f"- MLServer at 80% of its own capacity ({r.rate:.2f} requests/s, n={r.sent}): p50 / p99 "
                f"{fmt_ms(r.pct(50))} / {fmt_ms(r.pct(99))} ms; p99 / Peregrine's single-request latency "
                f"**{r.pct(99) / single_ms:.2f}**")
    say(f"- peer: {peer_note}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
