"""Cold starts (issue 18): process start → first result, and (Peregrine) model unloaded → first result, for the
bundled detector (yolov8n, [1,3,640,640] FP32), beside KServe's and MLServer's process start for the same ONNX
file, in one run, alternated, medians.

- **process start**: from spawning the server to the first successful ModelInfer (gRPC; REST for MLServer),
  the client retrying every 50 ms.
- **warm from zero** (Peregrine): the model configured ``load = "on_demand"``, ``idle_unload_s = 2``; after
  it has unloaded itself, the time of the next request, which waits for the load (docs/LIFECYCLE.md).

    python benchmarks/bench_coldstart.py --rounds 3 --out benchmarks/results/coldstart.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_report
from bench_overhead import ROOT, kserve_venv
from bench_rest import mlserver_venv

MODEL = "yolov8n"


def _grpc_infer(port: int) -> bool:
    import tritonclient.grpc as tc

    try:
        client = tc.InferenceServerClient(f"127.0.0.1:{port}")
        x = tc.InferInput("images", [1, 3, 640, 640], "FP32")
        x.set_data_from_numpy(np.zeros((1, 3, 640, 640), np.float32))
        client.infer(MODEL, [x], client_timeout=60)
        client.close()
        return True
    except Exception:
        return False


def _rest_infer(port: int) -> bool:
    body = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 640, 640],
                                   "data": [0.0] * (3 * 640 * 640)}]}).encode()
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60).read()
        return True
    except OSError:
        return False


def until_answer(start: float, proc: subprocess.Popen[bytes], ask: object, port: int) -> float:
    while not ask(port):  # type: ignore[operator]
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode})")
        if time.perf_counter() - start > 180:
            raise RuntimeError("no answer within 180 s")
        time.sleep(0.05)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "models")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kserve-version", default="0.21.0")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    onnx = args.repository / MODEL / "1" / "model.onnx"
    tmp = Path(tempfile.mkdtemp(prefix="peregrine-coldstart-"))
    repo = tmp / "models"
    shutil.copytree(args.repository / MODEL, repo / MODEL)
    config = repo / MODEL / "config.toml"
    config.write_text('load = "on_demand"\nidle_unload_s = 2\n' + config.read_text())
    (tmp / "config.json").write_text(json.dumps({"name": MODEL, "max_batch_size": 16, "input": [
        {"name": "images", "data_type": "TYPE_FP32", "dims": ["3", "640", "640"]}]}))
    kserve, mlserver = kserve_venv(args.kserve_version), mlserver_venv()
    rows: dict[str, list[float]] = {"Peregrine": [], "Peregrine, warm from zero": [], "KServe": [], "MLServer": []}
    for r in range(args.rounds):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "peregrine.server", "--model-repository", str(repo),
                                 "--grpc-port", "8851", "--http-port", "-1", "--log-level", "ERROR"])
        try:
            rows["Peregrine"].append(until_answer(start, proc, _grpc_infer, 8851))
            time.sleep(4.0)  # idle: it unloads itself after 2 s
            start = time.perf_counter()
            rows["Peregrine, warm from zero"].append(until_answer(start, proc, _grpc_infer, 8851))
        finally:
            proc.terminate()
            proc.wait(30)
        start = time.perf_counter()
        proc = subprocess.Popen([str(kserve), str(ROOT / "benchmarks" / "peers" / "kserve_onnx.py"), "--model_name",
                                 MODEL, "--onnx", str(onnx), "--grpc_port", "8861", "--http_port", "8862"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            rows["KServe"].append(until_answer(start, proc, _grpc_infer, 8861))
        finally:
            proc.terminate()
            proc.wait(30)
        start = time.perf_counter()
        proc = subprocess.Popen([str(mlserver), str(ROOT / "benchmarks" / "peers" / "mlserver_onnx.py"),
                                 "--model-name", MODEL, "--onnx", str(onnx), "--http-port", "8872", "--grpc-port",
                                 "8873", "--model-config-json", str(tmp / "config.json"), "--dir",
                                 str(tmp / f"mlserver-{r}")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            rows["MLServer"].append(until_answer(start, proc, _rest_infer, 8872))
        finally:
            proc.terminate()
            proc.wait(30)
            subprocess.run(["pkill", "-f", f"mlserver start {tmp / f'mlserver-{r}'}"], check=False)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()), file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    lines = [f"{MODEL} ({onnx.stat().st_size / 1e6:.1f} MB ONNX), {args.rounds} rounds; medians (every round).", "",
             "| server | first result, s |", "|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.2f} ({', '.join(f'{x:.2f}' for x in v)}) |" for k, v in rows.items()]
    text = "\n".join(lines)
    print(text)
    write_report(args.out, "Cold starts: process start and warm from zero (issue 18)", text)
    print(f"(machine: {machine()})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
