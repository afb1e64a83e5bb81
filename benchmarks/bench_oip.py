"""Served (Peregrine under Triton's perf_analyzer, gRPC) vs in-process ONNX Runtime, in one run.

For one model of the repository, at each concurrency: perf_analyzer's throughput and p50/p99 against a
Peregrine server started as a subprocess, beside the same model run in-process with ONNX Runtime with
the same session options on the same input shape (measured before and after the served run; the median
of the two is used). Prints a markdown table; `--out FILE` appends it with the command and machine.

    python benchmarks/bench_oip.py --repository models --model yolov8n --concurrency 1 2
"""

from __future__ import annotations

import argparse
import csv
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _common import machine, start_peregrine

ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer" / "bin" / "perf_analyzer"


def session_for(repository: Path, model: str) -> ort.InferenceSession:
    """An ONNX Runtime session with the same options the server uses for this model."""
    from peregrine.server.config import load_model_config
    from peregrine.server.runtime.onnx import OnnxSession

    model_dir = repository / model
    config = load_model_config(model_dir)
    version = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    return OnnxSession(model_dir / str(version) / config.default_model_filename, config).session


def closed_loop(make_call: Callable[[], Callable[[], object]], concurrency: int,
                seconds: float) -> dict[str, float]:
    """`concurrency` threads, each calling its own `make_call()` back to back for `seconds` after one
    warm-up call: throughput (calls/s), p50 and p99 (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter()
    stop = start + seconds

    def worker() -> None:
        call = make_call()
        call()
        local = []
        while time.perf_counter() < stop:
            t = time.perf_counter()
            call()
            local.append(time.perf_counter() - t)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"throughput": len(lat) / elapsed, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99))}


def in_process(sess: ort.InferenceSession, shape: list[int], concurrency: int, seconds: float) -> dict[str, float]:
    """Closed loop with `concurrency` threads calling run() on one session."""
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    return closed_loop(lambda: lambda: sess.run(None, feed), concurrency, seconds)


def perf_analyzer(model: str, port: int, shape: list[int], concurrency: list[int],
                  interval_ms: int, stability: int) -> dict[int, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        batch, *rest = shape
        cmd = [str(PERF_ANALYZER), "-m", model, "-i", "grpc", "-u", f"127.0.0.1:{port}",
               "-b", str(batch), "--shape", f"{model_input(model, port)}:{','.join(map(str, rest))}",
               "--concurrency-range", f"{min(concurrency)}:{max(concurrency)}",
               "--measurement-interval", str(interval_ms), "-s", str(stability), "--max-trials", "20",
               "--input-data", "random", "-f", str(out)]
        print("+", shlex.join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        rows = list(csv.DictReader(out.open()))
    result = {}
    for r in rows:
        c = int(r["Concurrency"])
        if c in concurrency:
            result[c] = {"throughput": float(r["Inferences/Second"]) / batch,
                         "p50": float(r["p50 latency"]) / 1000, "p99": float(r["p99 latency"]) / 1000}
    return result


def tritonclient_loop(model: str, port: int, shape: list[int], concurrency: list[int],
                      seconds: float) -> dict[int, dict[str, float]]:
    """The same closed loop as perf_analyzer's, driven by tritonclient threads (one client each), for
    machines where perf_analyzer cannot run."""
    import tritonclient.grpc as tc

    name = model_input(model, port)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)

    def make_call() -> Callable[[], object]:
        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        inp = tc.InferInput(name, shape, "FP32")
        inp.set_data_from_numpy(x)
        return lambda: client.infer(model, [inp])

    return {c: closed_loop(make_call, c, seconds) for c in concurrency}


def print_server_stats(model: str, port: int) -> None:
    """Where the served time went, by the server's own account (ModelStatistics)."""
    import tritonclient.grpc as tc

    st = tc.InferenceServerClient(f"127.0.0.1:{port}").get_inference_statistics(model).model_stats[0]
    inf = st.inference_stats

    def avg(d: object) -> float:
        return d.ns / max(d.count, 1) / 1e6  # type: ignore[attr-defined]

    print(f"server: {inf.success.count} requests, {st.execution_count} batches; per request ms: "
          f"total {avg(inf.success):.2f}, queue {avg(inf.queue):.2f}, input {avg(inf.compute_input):.2f}, "
          f"infer {avg(inf.compute_infer):.2f}, output {avg(inf.compute_output):.2f}", file=sys.stderr)
    for b in st.batch_stats:
        print(f"  batch {b.batch_size}: {b.compute_infer.count} runs, infer {avg(b.compute_infer):.2f} ms, "
              f"input {avg(b.compute_input):.2f} ms", file=sys.stderr)


def model_input(model: str, port: int) -> str:
    import tritonclient.grpc as tc

    return tc.InferenceServerClient(f"127.0.0.1:{port}").get_model_metadata(model).inputs[0].name


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="yolov8n")
    p.add_argument("--shape", default="1,3,640,640", help="input shape with the batch dimension")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    p.add_argument("--measurement-ms", type=int, default=10000)
    p.add_argument("--in-process-seconds", type=float, default=15.0)
    p.add_argument("--port", type=int, default=8101)
    p.add_argument("--client", choices=["perf_analyzer", "tritonclient"], default="perf_analyzer")
    p.add_argument("--stability-percentage", type=int, default=10, help="perf_analyzer's -s")
    p.add_argument("--out", type=Path, help="append the result table to this markdown file")
    a = p.parse_args()
    shape = [int(s) for s in a.shape.split(",")]
    if a.client == "perf_analyzer" and not PERF_ANALYZER.exists():
        print(f"{PERF_ANALYZER} is missing: run bash benchmarks/tools/install_perf_analyzer.sh", file=sys.stderr)
        return 2

    sess = session_for(a.repository, a.model)
    before = {c: in_process(sess, shape, c, a.in_process_seconds) for c in a.concurrency}
    del sess
    server = start_peregrine(a.repository, a.model, a.port)
    try:
        if a.client == "perf_analyzer":
            served = perf_analyzer(a.model, a.port, shape, a.concurrency, a.measurement_ms, a.stability_percentage)
        else:
            served = tritonclient_loop(a.model, a.port, shape, a.concurrency, a.measurement_ms / 1000 * 3)
        print_server_stats(a.model, a.port)
    finally:
        server.terminate()
        server.wait(30)
    sess = session_for(a.repository, a.model)
    after = {c: in_process(sess, shape, c, a.in_process_seconds) for c in a.concurrency}

    lines = [f"Model `{a.model}`, input {shape}, served measured with {a.client}; {machine()}.", "",
             "| concurrency | served inf/s | in-process inf/s | ratio | served p50 ms | in-process p50 ms "
             "| p50 overhead ms | served p99 ms | in-process p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in a.concurrency:
        inp = {k: statistics.median([before[c][k], after[c][k]]) for k in before[c]}
        s = served[c]
        ratio = s["throughput"] / inp["throughput"]
        lines.append(f"| {c} | {s['throughput']:.2f} | {inp['throughput']:.2f} | {ratio:.3f} | {s['p50']:.2f} "
                     f"| {inp['p50']:.2f} | {s['p50'] - inp['p50']:+.2f} | {s['p99']:.2f} | {inp['p99']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        cmd = "python benchmarks/bench_oip.py " + shlex.join(sys.argv[1:])
        with a.out.open("a") as f:
            f.write(f"\n`{cmd}` ({time.strftime('%Y-%m-%d')}):\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
