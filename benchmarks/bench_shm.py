"""Plain gRPC vs system shared memory, served by Peregrine, beside in-process ONNX Runtime, in one run.

For each model (the bundled detector and the FP32 identity model), a Peregrine server is started as a
subprocess and driven at each concurrency by Triton's perf_analyzer twice per repeat: tensors in the
gRPC messages, then ``--shared-memory system`` (inputs written into the regions once, outputs written
there by the server). Repeats alternate the two modes so that the machine's noise falls on both; the
tables give medians over repeats. In-process ONNX Runtime (same session options, same input shape) is
measured in every repeat, while the server idles, and each repeat's served / in-process ratio uses it.

Reported per model, mode and concurrency: throughput, served / in-process throughput, p50/p99 latency,
the transport share of the end-to-end latency: (client send + network and server send/receive +
client receive) / the whole, from perf_analyzer's own breakdown (the server's side comes from
ModelStatistics: queue and compute input/infer/output are not transport, the rest is), and the model
share: the server's compute-infer time / the whole. Both shares come from the same measurement windows,
so they hold where the machine's speed drifts between the in-process and the served runs; at c=1 the
model share is the served / in-process ratio the machine would give if it kept one speed.

    python benchmarks/bench_shm.py --repository models --concurrency 1 2 --repeats 3 --out benchmarks/results/shm.md

``--client tritonclient`` drives the same closed loop with tritonclient threads (each with its own
regions) where perf_analyzer cannot run; its transport share comes from the server's statistics.
``--shared-memory cuda`` puts the regions in device memory of GPU 0 instead (tritonclient's CUDA
shared-memory utilities, or perf_analyzer's ``--shared-memory cuda``): the model reads its input from and
writes its output to the GPU, with no copy through the host on the server's side.

    python benchmarks/bench_shm.py --repository models --models yolov8n --client tritonclient \
        --shared-memory cuda --concurrency 1 2 --repeats 2 --out benchmarks/results/shm_gpu.md
"""

from __future__ import annotations

import argparse
import csv
import math
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, start_peregrine
from bench_oip import PERF_ANALYZER, closed_loop, in_process, session_for

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHAPES = {"yolov8n": "1,3,640,640", "identity_fp32": "1,1228800"}  # 4.9 MB of FP32 in, each
TRANSPORT = ("Client Send", "Network+Server Send/Recv", "Client Recv")
SERVER = ("Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output")
MODES = ("grpc", "shm")


def output_bytes(port: int, model: str, shape: list[int]) -> int:
    """The largest output of one plain request, in bytes (perf_analyzer's --output-shared-memory-size)."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    name = client.get_model_metadata(model).inputs[0].name
    inp = tc.InferInput(name, shape, "FP32")
    inp.set_data_from_numpy(np.zeros(shape, np.float32))
    result = client.infer(model, [inp])
    client.close()
    return max(len(r) for r in result.get_response().raw_output_contents)


def perf_analyzer(model: str, port: int, shape: list[int], concurrency: list[int], interval_ms: int,
                  stability: int, shm_output_bytes: int | None, kind: str = "system") -> dict[int, dict[str, float]]:
    """One perf_analyzer run over the concurrency range; ``shm_output_bytes`` set: --shared-memory ``kind``
    (system or cuda)."""
    import tritonclient.grpc as tc

    name = tc.InferenceServerClient(f"127.0.0.1:{port}").get_model_metadata(model).inputs[0].name
    batch, *rest = shape
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        cmd = [str(PERF_ANALYZER), "-m", model, "-i", "grpc", "-u", f"127.0.0.1:{port}", "-b", str(batch),
               "--shape", f"{name}:{','.join(map(str, rest))}",
               "--concurrency-range", f"{min(concurrency)}:{max(concurrency)}",
               "--measurement-interval", str(interval_ms), "-s", str(stability), "--max-trials", "20",
               "--input-data", "random", "-f", str(out)]
        if shm_output_bytes is not None:
            cmd += ["--shared-memory", kind, "--output-shared-memory-size", str(shm_output_bytes)]
        print("+", shlex.join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        rows = list(csv.DictReader(out.open()))
    result = {}
    for r in rows:
        c = int(r["Concurrency"])
        if c not in concurrency:
            continue
        transport = sum(float(r[k]) for k in TRANSPORT)
        server = sum(float(r[k]) for k in SERVER)
        result[c] = {"throughput": float(r["Inferences/Second"]) / batch, "p50": float(r["p50 latency"]) / 1000,
                     "p99": float(r["p99 latency"]) / 1000, "transport_share": transport / (transport + server),
                     "model_share": float(r["Server Compute Infer"]) / (transport + server)}
    return result


def _server_request_ms(port: int, model: str) -> tuple[int, float, float]:
    """(successful requests, their total time in ms, total model run time in ms) by the server's account."""
    import tritonclient.grpc as tc

    st = tc.InferenceServerClient(f"127.0.0.1:{port}").get_inference_statistics(model).model_stats[0]
    inf = st.inference_stats
    return inf.success.count, inf.success.ns / 1e6, inf.compute_infer.ns / 1e6


def _system_regions(client: Any, tag: str, x: np.ndarray, out_bytes: int) -> Callable[[], None]:
    """An input region holding ``x`` and an output region, in system shared memory, registered with the
    server under ``in_<tag>``/``out_<tag>``; returns what unregisters and destroys them."""
    import tritonclient.utils.shared_memory as shm

    h_in = shm.create_shared_memory_region(f"in_{tag}", f"/bench_in_{tag}", x.nbytes, create_only=True)
    h_out = shm.create_shared_memory_region(f"out_{tag}", f"/bench_out_{tag}", out_bytes, create_only=True)
    shm.set_shared_memory_region(h_in, [x])
    client.register_system_shared_memory(f"in_{tag}", f"/bench_in_{tag}", x.nbytes)
    client.register_system_shared_memory(f"out_{tag}", f"/bench_out_{tag}", out_bytes)

    def done() -> None:
        client.unregister_system_shared_memory(f"in_{tag}")
        client.unregister_system_shared_memory(f"out_{tag}")
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)
    return done


def _cuda_regions(client: Any, tag: str, x: np.ndarray, out_bytes: int) -> Callable[[], None]:
    """The same in device memory of GPU 0, through tritonclient's CUDA shared-memory utilities (the client
    process owns the buffers; the server opens their IPC handles)."""
    import tritonclient.utils.cuda_shared_memory as cudashm

    h_in = cudashm.create_shared_memory_region(f"in_{tag}", x.nbytes, 0)
    h_out = cudashm.create_shared_memory_region(f"out_{tag}", out_bytes, 0)
    cudashm.set_shared_memory_region(h_in, [x])
    client.register_cuda_shared_memory(f"in_{tag}", cudashm.get_raw_handle(h_in), 0, x.nbytes)
    client.register_cuda_shared_memory(f"out_{tag}", cudashm.get_raw_handle(h_out), 0, out_bytes)

    def done() -> None:
        client.unregister_cuda_shared_memory(f"in_{tag}")
        client.unregister_cuda_shared_memory(f"out_{tag}")
        cudashm.destroy_shared_memory_region(h_in)
        cudashm.destroy_shared_memory_region(h_out)
    return done


def tritonclient_loop(model: str, port: int, shape: list[int], concurrency: list[int], seconds: float,
                      use_shm: str | None) -> dict[int, dict[str, float]]:
    """perf_analyzer's closed loop with tritonclient threads; with ``use_shm`` ("system" or "cuda") each
    thread owns an input and an output region, written/registered once."""
    import tritonclient.grpc as tc

    url = f"127.0.0.1:{port}"
    name = tc.InferenceServerClient(url).get_model_metadata(model).inputs[0].name
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    out_bytes = output_bytes(port, model, shape) if use_shm else 0
    cleanup: list[Callable[[], None]] = []
    lock = threading.Lock()

    def make_call() -> Callable[[], object]:
        client = tc.InferenceServerClient(url)
        inp = tc.InferInput(name, shape, "FP32")
        outputs = None
        if use_shm:
            tag = uuid.uuid4().hex[:8]
            done = (_cuda_regions if use_shm == "cuda" else _system_regions)(client, tag, x, out_bytes)
            inp.set_shared_memory(f"in_{tag}", x.nbytes)
            meta = client.get_model_metadata(model)
            outputs = []
            for o in meta.outputs:  # the bundled models have one output
                req = tc.InferRequestedOutput(o.name)
                req.set_shared_memory(f"out_{tag}", out_bytes)
                outputs.append(req)
            with lock:
                cleanup.append(done)
        else:
            inp.set_data_from_numpy(x)
        return lambda: client.infer(model, [inp], outputs=outputs)

    result = {}
    try:
        for c in concurrency:
            n0, ms0, run0 = _server_request_ms(port, model)
            r = closed_loop(make_call, c, seconds)
            n1, ms1, run1 = _server_request_ms(port, model)
            server_ms = (ms1 - ms0) / max(n1 - n0, 1)
            mean_ms = c / r["throughput"] * 1000  # closed loop: each worker waits for its answer
            r["transport_share"] = max(0.0, 1 - server_ms / mean_ms)
            r["model_share"] = (run1 - run0) / max(n1 - n0, 1) / mean_ms
            result[c] = r
    finally:
        for f in cleanup:
            f()
    return result


def _median(runs: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    return {c: {k: statistics.median(r[c][k] for r in runs) for k in runs[0][c]} for c in runs[0]}


def bench_model(a: argparse.Namespace, model: str, shape: list[int]) -> str:
    """Per repeat: in-process ONNX Runtime (while the server idles), then plain gRPC, then shared memory.
    Each repeat's ratio uses that repeat's own in-process baseline, so a slow stretch of the machine
    weighs on both sides of it."""
    sess = session_for(a.repository, model)
    runs: dict[str, list[dict[int, dict[str, float]]]] = {m: [] for m in MODES}
    base_runs: list[dict[int, dict[str, float]]] = []
    server = start_peregrine(a.repository, model, a.port)
    try:
        out_bytes = output_bytes(a.port, model, shape)
        for _ in range(a.repeats):
            base_runs.append({c: in_process(sess, shape, c, a.in_process_seconds) for c in a.concurrency})
            for mode in MODES:
                if a.client == "perf_analyzer":
                    run = perf_analyzer(model, a.port, shape, a.concurrency, a.measurement_ms,
                                        a.stability_percentage, out_bytes if mode == "shm" else None,
                                        a.shared_memory)
                else:
                    run = tritonclient_loop(model, a.port, shape, a.concurrency, a.measurement_ms / 1000 * 3,
                                            a.shared_memory if mode == "shm" else None)
                for c in a.concurrency:
                    run[c]["ratio"] = run[c]["throughput"] / base_runs[-1][c]["throughput"]
                runs[mode].append(run)
    finally:
        server.terminate()
        server.wait(30)
    base = _median(base_runs)
    lines = [f"Model `{model}`, input FP32 {shape} ({math.prod(shape) * 4 / 1e6:.1f} MB), output "
             f"{out_bytes / 1e6:.1f} MB; medians of {a.repeats} repeats (range in brackets), served measured "
             f"with {a.client}.", "",
             "| concurrency | tensors travel | served inf/s | in-process inf/s | served / in-process | p50 ms "
             "| p99 ms | transport share of latency | model share of latency |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in a.concurrency:
        for mode in MODES:
            s = _median(runs[mode])[c]
            spread = [r[c]["ratio"] for r in runs[mode]]
            lines.append(f"| {c} | {'in gRPC messages' if mode == 'grpc' else a.shared_memory + ' shared memory'} "
                         f"| {s['throughput']:.2f} | {base[c]['throughput']:.2f} "
                         f"| {s['ratio']:.3f} ({min(spread):.3f}-{max(spread):.3f}) | {s['p50']:.2f} "
                         f"| {s['p99']:.2f} | {s['transport_share']:.1%} | {s['model_share']:.1%} |")
    lines.append("\nIn-process ONNX Runtime p50 ms: "
                 + ", ".join(f"c={c} {base[c]['p50']:.2f}" for c in a.concurrency) + ".")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_SHAPES))
    p.add_argument("--shape", action="append", default=[], metavar="MODEL=N,D1,...",
                   help="input shape with the batch dimension (defaults: " +
                   ", ".join(f"{k}={v}" for k, v in DEFAULT_SHAPES.items()) + ")")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--measurement-ms", type=int, default=5000)
    p.add_argument("--stability-percentage", type=int, default=25, help="perf_analyzer's -s")
    p.add_argument("--in-process-seconds", type=float, default=8.0)
    p.add_argument("--port", type=int, default=8111)
    p.add_argument("--client", choices=["perf_analyzer", "tritonclient"], default="perf_analyzer")
    p.add_argument("--shared-memory", choices=["system", "cuda"], default="system",
                   help="where the shared-memory mode's regions live (cuda: device memory of GPU 0)")
    p.add_argument("--out", type=Path, help="append the tables to this markdown file")
    a = p.parse_args()
    shapes = dict(DEFAULT_SHAPES)
    for item in a.shape:
        model, _, dims = item.partition("=")
        shapes[model] = dims
    if a.client == "perf_analyzer" and not PERF_ANALYZER.exists():
        print(f"{PERF_ANALYZER} is missing: run bash benchmarks/tools/install_perf_analyzer.sh", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%d")
    tables = []
    for model in a.models:
        shape = [int(d) for d in shapes[model].split(",")]
        tables.append(bench_model(a, model, shape))
        print(tables[-1], flush=True)
    text = "\n\n".join(tables)
    if a.out:
        cmd = "python benchmarks/bench_shm.py " + shlex.join(sys.argv[1:])
        with a.out.open("a") as f:
            f.write(f"\n`{cmd}` ({started}); {machine()}:\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
