"""OIP over REST: Peregrine's HTTP port against KServe's and MLServer's REST servers, and against its own gRPC
(issue 16).

The servers are subprocesses on loopback, driven in turn by Triton's perf_analyzer (``-i http``, and
``-i grpc`` for the gRPC rows), round after round; medians of the rounds. KServe and MLServer run in virtual
environments of their own (``bench_overhead.kserve_venv``, :func:`mlserver_venv`) serving the same ONNX file
through ``peers/kserve_onnx.py`` and ``peers/mlserver_onnx.py``, each with Triton's ``/config`` route added so
that perf_analyzer can read the model. MLServer does not take Triton's binary tensor extension, so it is
driven with JSON tensors, and Peregrine's REST port is measured with JSON too for that comparison.

    python benchmarks/bench_rest.py --rounds 3 --out benchmarks/results/rest.md
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, wait_until_ready, write_report
from bench_overhead import IDENTITY, PERF_ANALYZER, ROOT, identity_config_bytes, kserve_venv


def start_peregrine(repository: Path, grpc_port: int, http_port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "peregrine.server", "--model-repository", str(repository),
                             "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--model-control-mode",
                             "explicit", "--load-model", IDENTITY, "--log-level", "WARNING"])
    wait_until_ready(proc, f"127.0.0.1:{grpc_port}", [IDENTITY])
    return proc


def start_kserve(python: Path, onnx: Path, grpc_port: int, http_port: int, tmp: Path) -> subprocess.Popen[bytes]:
    from google.protobuf import json_format
    from peregrine.proto import grpc_service_pb2 as pb

    raw = tmp / "config.bin"
    raw.write_bytes(identity_config_bytes())
    config = pb.ModelConfigResponse.FromString(raw.read_bytes()).config
    as_json = tmp / "config.json"
    as_json.write_text(json_format.MessageToJson(config, preserving_proto_field_name=True))
    proc = subprocess.Popen([str(python), str(ROOT / "benchmarks" / "peers" / "kserve_onnx.py"),
                             "--model_name", IDENTITY, "--onnx", str(onnx), "--grpc_port", str(grpc_port),
                             "--http_port", str(http_port), "--model-config", str(raw),
                             "--model-config-json", str(as_json)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_ready(proc, f"127.0.0.1:{grpc_port}", [IDENTITY], timeout_s=120)
    return proc


def mlserver_venv() -> Path:
    """A virtual environment with MLServer and ONNX Runtime (made once, under .bench/)."""
    venv = ROOT / ".bench" / "venv-mlserver"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"making {venv} (mlserver, onnxruntime)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "mlserver>=1.6", "onnxruntime", "numpy"],
                       check=True)
    return python


def start_mlserver(python: Path, onnx: Path, http_port: int, tmp: Path) -> subprocess.Popen[bytes]:
    import time
    import urllib.request

    proc = subprocess.Popen([str(python), str(ROOT / "benchmarks" / "peers" / "mlserver_onnx.py"), "--model-name",
                             IDENTITY, "--onnx", str(onnx), "--http-port", str(http_port), "--grpc-port",
                             str(http_port + 1), "--model-config-json", str(tmp / "config.json"), "--dir",
                             str(tmp / "mlserver")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{IDENTITY}/ready", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("MLServer did not become ready") from None
            time.sleep(0.5)


def perf(protocol: str, port: int, concurrency: int, interval_ms: int, json_tensors: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        cmd = [str(PERF_ANALYZER), "-m", IDENTITY, "-i", protocol, "-u", f"127.0.0.1:{port}", "--shape",
               "INPUT0:16", "--concurrency-range", str(concurrency), "--measurement-interval", str(interval_ms),
               "-s", "50", "--max-trials", "10", "--input-data", "random", "-f", str(out)]
        if json_tensors:
            cmd += ["--input-tensor-format", "json", "--output-tensor-format", "json"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        row = next(csv.DictReader(out.open()))
    return {"throughput": float(row["Inferences/Second"]), "p50": float(row["p50 latency"]) / 1000,
            "p99": float(row["p99 latency"]) / 1000}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "models")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--measurement-ms", type=int, default=3000)
    ap.add_argument("--kserve-version", default="0.21.0")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="peregrine-rest-"))
    procs = []
    rows: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    try:
        procs.append(start_peregrine(args.repository, 8811, 8812))
        procs.append(start_kserve(kserve_venv(args.kserve_version), args.repository / IDENTITY / "1" / "model.onnx",
                                  8821, 8822, tmp))
        # MLServer answers /config with the JSON start_kserve wrote into tmp.
        procs.append(start_mlserver(mlserver_venv(), args.repository / IDENTITY / "1" / "model.onnx", 8832, tmp))
        runs = [("Peregrine REST", "http", 8812, False), ("KServe REST", "http", 8822, False),
                ("Peregrine REST, JSON tensors", "http", 8812, True),
                ("MLServer REST, JSON tensors", "http", 8832, True),
                ("Peregrine gRPC", "grpc", 8811, False), ("KServe gRPC", "grpc", 8821, False)]
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for name, protocol, port, json_tensors in runs:
                for c in (1, 4):
                    rows[(name, c)].append(perf(protocol, port, c, args.measurement_ms, json_tensors))
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, c: int, key: str) -> float:
        return statistics.median(x[key] for x in rows[(name, c)])

    out = [f"Machine: {machine()}. identity_fp32 [1,16], perf_analyzer, {args.rounds} rounds of "
           f"{args.measurement_ms} ms windows, medians.", "",
           "| server | c=1 infer/s | p50 ms | p99 ms | c=4 infer/s | p50 ms | p99 ms |",
           "|---|---|---|---|---|---|---|"]
    for name, _, _, _ in runs:
        cells = [f"{med(name, c, 'throughput'):,.0f} | {med(name, c, 'p50'):.3f} | {med(name, c, 'p99'):.3f}"
                 for c in (1, 4)]
        out.append(f"| {name} | {' | '.join(cells)} |")
    ratio = [med("Peregrine REST", c, "throughput") / med("KServe REST", c, "throughput") for c in (1, 4)]
    ml = [med("Peregrine REST, JSON tensors", c, "throughput") / med("MLServer REST, JSON tensors", c, "throughput")
          for c in (1, 4)]
    out += ["", f"Peregrine/KServe over REST (binary tensors): {ratio[0]:.2f} at c=1, {ratio[1]:.2f} at c=4.",
            f"Peregrine/MLServer over REST (JSON tensors): {ml[0]:.2f} at c=1, {ml[1]:.2f} at c=4."]
    text = "\n".join(out)
    print(text)
    write_report(args.out, "OIP over REST: Peregrine and KServe (issue 16)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
