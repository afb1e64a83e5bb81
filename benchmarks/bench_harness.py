"""Cross-check Peregrine's load harness (``peregrine-load``) against Triton's perf_analyzer.

Both drive the same Peregrine server (a subprocess) with the same model, input shape, load and duration;
the script alternates them (perf_analyzer first in odd rounds, the harness first in even ones) so that
drift of the machine hits both, and reports the median of the rounds. Closed loop: perf_analyzer's
``--concurrency-range c:c`` vs ``peregrine-load -c c``; open loop: ``--request-rate-range r:r`` vs
``peregrine-load --rate r``. The goal: throughput and p50 within 15 %.

    python benchmarks/bench_harness.py --model identity_fp32 --shape 16 --concurrency 1 4 \\
        --rate 200 --out benchmarks/results/harness.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, start_peregrine

ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer" / "bin" / "perf_analyzer"
GOAL = 0.15


def input_name(port: int, model: str) -> str:
    from peregrine.client import InferenceClient

    with InferenceClient(f"127.0.0.1:{port}") as client:
        return client.model_metadata(model).inputs[0].name


def run_perf_analyzer(model: str, port: int, name: str, shape: str, load: tuple[str, float],
                      interval_ms: int, stability: int) -> dict[str, float]:
    kind, value = load
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        span = f"{value:g}:{value:g}"
        cmd = [str(PERF_ANALYZER), "-m", model, "-i", "grpc", "-u", f"127.0.0.1:{port}", "--shape",
               f"{name}:{shape}", "--input-data", "random", "--measurement-interval", str(interval_ms),
               "-s", str(stability), "--max-trials", "20", "-f", str(out),
               "--concurrency-range" if kind == "closed" else "--request-rate-range", span]
        print("+", shlex.join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with out.open() as f:
            row = next(csv.DictReader(f))
    return {"throughput": float(row["Inferences/Second"]), "p50": float(row["p50 latency"]) / 1000,
            "p99": float(row["p99 latency"]) / 1000}


def run_harness(model: str, port: int, name: str, shape: str, load: tuple[str, float],
                duration_s: float) -> dict[str, float]:
    kind, value = load
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "h.json"
        cmd = [sys.executable, "-m", "peregrine.client.load", model, "-u", f"127.0.0.1:{port}", "--shape",
               f"{name}:{shape}", "--warmup", "2", "--duration", f"{duration_s:g}", "--no-progress",
               "--json", str(out)]
        cmd += ["-c", f"{value:g}"] if kind == "closed" else ["--rate", f"{value:g}"]
        print("+", shlex.join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        r = json.loads(out.read_text())
    return {"throughput": r["throughput_rps"], "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="identity_fp32")
    p.add_argument("--shape", default="16", help="input shape without the batch dimension (batch is 1)")
    p.add_argument("--concurrency", type=int, nargs="*", default=[1, 4])
    p.add_argument("--rate", type=float, nargs="*", default=[], help="open-loop request rates (req/s)")
    p.add_argument("--measurement-ms", type=int, default=5000, help="perf_analyzer's measurement window")
    p.add_argument("--stability-percentage", type=int, default=25,
                   help="perf_analyzer's -s: how far its last 3 windows may differ (a shared 2-core machine is noisy)")
    p.add_argument("--duration", type=float, default=10.0, help="the harness's measured seconds")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--port", type=int, default=8111)
    p.add_argument("--out", type=Path, help="append the table to this markdown file")
    a = p.parse_args()
    if not PERF_ANALYZER.exists():
        print(f"{PERF_ANALYZER} is missing: run bash benchmarks/tools/install_perf_analyzer.sh", file=sys.stderr)
        return 2
    loads = [("closed", float(c)) for c in a.concurrency] + [("open", r) for r in a.rate]
    load_before = os.getloadavg()[0]
    server = start_peregrine(a.repository, a.model, a.port)
    results: dict[tuple[str, float], dict[str, list[dict[str, float]]]] = {}
    try:
        name = input_name(a.port, a.model)
        for load in loads:
            runs: dict[str, list[dict[str, float]]] = {"pa": [], "harness": []}
            for i in range(a.rounds):
                order = ("pa", "harness") if i % 2 == 0 else ("harness", "pa")
                for who in order:
                    if who == "pa":
                        runs["pa"].append(run_perf_analyzer(a.model, a.port, name, a.shape, load, a.measurement_ms,
                                                              a.stability_percentage))
                    else:
                        runs["harness"].append(run_harness(a.model, a.port, name, a.shape, load, a.duration))
            results[load] = runs
    finally:
        server.terminate()
        server.wait(30)

    busy = f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    lines = [f"Model `{a.model}`, input [1,{a.shape}], {a.rounds} alternating rounds (median); {machine()}; {busy}.",
             "",
             "| load | perf_analyzer inf/s | harness inf/s | diff | perf_analyzer p50 ms | harness p50 ms | diff "
             "| perf_analyzer p99 ms | harness p99 ms | within 15 % |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    all_ok = True
    for (kind, value), runs in results.items():
        pa = {k: statistics.median(r[k] for r in runs["pa"]) for k in ("throughput", "p50", "p99")}
        h = {k: statistics.median(r[k] for r in runs["harness"]) for k in ("throughput", "p50", "p99")}
        dt = h["throughput"] / pa["throughput"] - 1
        d50 = h["p50"] / pa["p50"] - 1
        ok = abs(dt) <= GOAL and abs(d50) <= GOAL
        all_ok &= ok
        label = f"concurrency {value:g}" if kind == "closed" else f"{value:g} req/s (open)"
        lines.append(f"| {label} | {pa['throughput']:.1f} | {h['throughput']:.1f} | {dt:+.1%} | {pa['p50']:.3f} "
                     f"| {h['p50']:.3f} | {d50:+.1%} | {pa['p99']:.3f} | {h['p99']:.3f} | {'yes' if ok else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        cmd = "python benchmarks/bench_harness.py " + shlex.join(sys.argv[1:])
        with a.out.open("a") as f:
            f.write(f"\n`{cmd}` ({time.strftime('%Y-%m-%d')}):\n\n{table}\n")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
