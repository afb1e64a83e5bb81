"""Hostile clients against a real server: peak RSS, file descriptors and a good client's latency (issue 14).

The server runs as a subprocess (identity_fp32 and the yolov8n detection pipeline); a sampler reads its
RSS and open descriptors every 50 ms. For each attack a good client (unary identity [1,16], back to back)
is timed for a few seconds idle, then while the attack runs; after the attack the server must still
answer. Each row: the outcome, peak RSS and its growth over the idle RSS, peak descriptors, and the good
client's p50/p99 idle and under attack.

    python benchmarks/bench_abuse.py --out benchmarks/results/abuse.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import wait_until_ready, write_report
from bench_overhead import IdleStreams

ROOT = Path(__file__).resolve().parent.parent
IDENTITY, DETECTOR = "identity_fp32", "yolov8n"


class Sampler:
    """Peak RSS (bytes) and open descriptors of a process, sampled every 50 ms while running."""

    def __init__(self, pid: int) -> None:
        self.pid, self.rss, self.fds = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> tuple[int, int]:
        rss = 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        return rss, len(os.listdir(f"/proc/{self.pid}/fd"))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss, fds = self.now()
            except OSError:
                return  # the process is gone
            self.rss, self.fds = max(self.rss, rss), max(self.fds, fds)
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self.rss, self.fds = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def good_client(port: int, seconds: float) -> list[float]:
    """A good client's latencies (ms), unary identity [1,16] back to back for ``seconds``."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    x = tc.InferInput("INPUT0", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    out, stop = [], time.monotonic() + seconds
    while time.monotonic() < stop:
        t = time.perf_counter()
        try:
            client.infer(IDENTITY, [x], client_timeout=5)
            out.append((time.perf_counter() - t) * 1e3)
        except Exception:
            out.append(float("inf"))  # a failure counts as slower than anything
    client.close()
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- the attacks (each returns what it saw) ----------------------------------------------------------------
def stub(port: int) -> tuple[grpc.Channel, object, object]:
    from peregrine.proto import grpc_service_pb2 as pb
    from peregrine.proto import grpc_service_pb2_grpc as pb_grpc

    ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 1 << 30)])
    return ch, pb_grpc.GRPCInferenceServiceStub(ch), pb


def bytes_bomb(port: int, http: int) -> str:
    ch, s, pb = stub(port)
    codes = set()
    for _ in range(20):  # a 34-byte request declaring 2^29 strings
        req = pb.ModelInferRequest(model_name=IDENTITY)
        req.inputs.add(name="INPUT0", datatype="BYTES", shape=[1 << 29])
        req.raw_input_contents.append(b"")
        try:
            s.ModelInfer(req, timeout=10)
        except grpc.RpcError as e:
            codes.add(e.code().name)
    ch.close()
    return "refused: " + ", ".join(sorted(codes))


def png_bombs(port: int, http: int) -> str:
    from peregrine.proto import detection_pb2 as det
    from peregrine.proto import detection_pb2_grpc as det_grpc
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (8192, 8192)).save(buf, "PNG")
    bomb = buf.getvalue()
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    codes = set()
    for _ in range(3):
        try:
            det_grpc.DetectionServiceStub(ch).Detect(det.DetectRequest(
                model_name=DETECTOR, images=[det.Image(encoded=bomb)] * 16), timeout=30)
            codes.add("OK")
        except grpc.RpcError as e:
            codes.add(e.code().name)
    ch.close()
    return f"16 x 8192² 1-bit PNGs ({len(bomb) * 16 // 1024} KB a request): " + ", ".join(sorted(codes))


def unknown_names(port: int, http: int) -> str:
    ch, s, pb = stub(port)
    for i in range(2000):
        with contextlib.suppress(grpc.RpcError):
            s.ModelInfer(pb.ModelInferRequest(model_name=f"nope-{i}-{uuid.uuid4().hex}"), timeout=5)
    ch.close()
    t = time.perf_counter()
    size = len(urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=30).read())
    return f"2,000 names: /metrics {size / 1024:.0f} KB, scraped in {(time.perf_counter() - t) * 1e3:.0f} ms"


def shm_truncated(port: int, http: int) -> str:
    import tritonclient.grpc as tc

    name = f"/abuse-{os.getpid()}"
    fd = os.open(f"/dev/shm{name}", os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 64)
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    client.register_system_shared_memory("abuse", name, 64)
    os.ftruncate(fd, 0)  # truncate -s0 under the server's mapping
    x = tc.InferInput("INPUT0", [1, 16], "FP32")
    x.set_shared_memory("abuse", 64)
    try:
        client.infer(IDENTITY, [x])
        outcome = "answered"
    except Exception as e:
        outcome = f"refused: {getattr(e, 'status', lambda: '?')()}"
    client.unregister_system_shared_memory("abuse")
    os.close(fd)
    os.unlink(f"/dev/shm{name}")
    return outcome


def idle_streams(port: int, http: int) -> str:
    with IdleStreams(port, 1000):
        time.sleep(3.0)
    return "1,000 idle ModelStreamInfer streams held 3 s"


def unread_streams(port: int, http: int) -> str:
    ch_s = []
    pulled = [0] * 4
    _, _, pb = stub(port)
    from peregrine.proto import grpc_service_pb2_grpc as pb_grpc

    req = pb.ModelInferRequest(model_name=IDENTITY)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1 << 20])
    req.raw_input_contents.append(np.ones(1 << 20, np.float32).tobytes())

    def push(i: int):  # type: ignore[no-untyped-def]
        for _ in range(200):
            pulled[i] += 1
            yield req

    calls = []
    for i in range(4):
        ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 1 << 30),
                                                                 ("grpc.max_receive_message_length", 1 << 30)])
        ch_s.append(ch)
        calls.append(pb_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(push(i), timeout=30))
    time.sleep(4.0)
    for c in calls:
        c.cancel()
    for ch in ch_s:
        ch.close()
    return f"4 streams pushing 4 MiB requests, never reading: {sum(pulled)} requests pulled by the clients"


ATTACKS: list[tuple[str, Callable[[int, int], str]]] = [
    ("4: BYTES shape [2^29], empty contents, x20", bytes_bomb),
    ("5: decompression bombs", png_bombs),
    ("6: unknown model names", unknown_names),
    ("1: shared memory truncated under the mapping", shm_truncated),
    ("2: 1,000 idle streams", idle_streams),
    ("8: streams pushing without reading", unread_streams),
]


def _extend(into: list[float], port: int, seconds: float) -> None:
    into.extend(good_client(port, seconds))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=ROOT / "models")
    ap.add_argument("--seconds", type=float, default=3.0, help="good-client window, idle and under attack")
    ap.add_argument("--only", nargs="*", default=[], help="the findings to run (e.g. 8), all by default")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    attacks = [(n, a) for n, a in ATTACKS if not args.only or n.split(":")[0] in args.only]
    port, http = 8911, 8912
    log = tempfile.TemporaryFile()  # noqa: SIM115  # the server's stderr, for as long as it runs
    server = subprocess.Popen([sys.executable, "-m", "peregrine.server", "--model-repository", str(args.repository),
                               "--grpc-port", str(port), "--http-port", str(http), "--model-control-mode",
                               "explicit", "--load-model", IDENTITY, "--load-model", DETECTOR, "--log-level",
                               "ERROR"], stderr=log)
    rows = []
    try:
        wait_until_ready(server, f"127.0.0.1:{port}", [IDENTITY, DETECTOR])
        good_client(port, 1.0)  # warm
        for name, attack in attacks:
            idle = good_client(port, args.seconds)
            base_rss = Sampler(server.pid).now()[0]
            during: list[float] = []
            with Sampler(server.pid) as sampler:
                client = threading.Thread(target=_extend, args=(during, port, args.seconds + 1))
                client.start()
                try:
                    outcome = attack(port, http)
                except Exception as e:
                    outcome = f"attack failed: {e!r}"[:200]
                client.join()
            alive = server.poll() is None and bool(good_client(port, 0.3))
            rows.append((name, outcome if alive else f"{outcome}; SERVER DOWN ({server.returncode})",
                         sampler.rss, sampler.rss - base_rss, sampler.fds, pct(idle, 50), pct(idle, 99),
                         pct(during, 50), pct(during, 99)))
            print(rows[-1], file=sys.stderr)
            if not alive:
                break
    finally:
        server.terminate()
        server.wait(30)
    out = [f"Good client: unary identity [1,16] back to back, {args.seconds:g} s idle then during the attack.", "",
           "| attack (issue 14 finding) | outcome | peak RSS MB | growth MB | peak fds | good p50 idle / attack ms "
           "| good p99 idle / attack ms | p99 within 2x |", "|---|---|---|---|---|---|---|---|"]
    for name, outcome, rss, grown, fds, p50i, p99i, p50a, p99a in rows:
        out.append(f"| {name} | {outcome} | {rss / 2**20:.0f} | {grown / 2**20:+.0f} | {fds} | {p50i:.2f} / {p50a:.2f} "
                   f"| {p99i:.2f} / {p99a:.2f} | {'yes' if p99a <= 2 * p99i else 'no'} |")
    text = "\n".join(out)
    print(text)
    write_report(args.out, "Hostile clients: memory, descriptors and a good client's latency (issue 14)", text)
    return 0 if all("SERVER DOWN" not in r[1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
