"""A/B of the per-request path: the server of a base git revision against the working tree's, in one run.

Both servers run as subprocesses on the same model repository; Triton's perf_analyzer drives them in
turn, round after round (A, B, A, B, ...), so that load on the machine hits both alike. Reported per
server: median over rounds of throughput, p50 and p99, and the B/A ratios. For refactors that must
not cost the request path anything (docs/BENCHMARKS.md).

The base revision's ``server/`` is checked out into ``.bench/ab-<rev>/`` and put first on PYTHONPATH in
front of the installed package, so it runs with the installed kernels and generated protocol: fine for
changes to the Python server, not for changes to the native kernels or the protos.

    python benchmarks/bench_ab.py --base HEAD --repository models --model identity_fp32 --shape 1 16 \\
        --concurrency 1 --rounds 5
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer" / "bin" / "perf_analyzer"


def base_overlay(rev: str) -> Path:
    """A directory holding ``peregrine/server`` as it is at ``rev`` (a git worktree under .bench/)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    tree = ROOT / ".bench" / f"ab-{sha}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True,
                       stdout=sys.stderr)
    overlay = ROOT / ".bench" / f"ab-{sha}-site"
    (overlay / "peregrine").mkdir(parents=True, exist_ok=True)
    link = overlay / "peregrine" / "server"
    if not link.exists():
        link.symlink_to(tree / "server", target_is_directory=True)
    return overlay


def start(repository: Path, model: str, port: int, overlay: Path | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if overlay is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(overlay), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "peregrine.server", "--model-repository", str(repository), "--grpc-port",
           str(port), "--http-port", "-1", "--model-control-mode", "explicit", "--load-model", model,
           "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, env=env)
    try:
        wait_until_ready(proc, f"127.0.0.1:{port}", [model], timeout_s=120)
    except BaseException:
        proc.terminate()
        raise
    return proc


def measure(model: str, port: int, shape: list[int], concurrency: int, interval_ms: int,
            streaming: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        batch, *rest = shape
        cmd = [str(PERF_ANALYZER), "-m", model, "-i", "grpc", "-u", f"127.0.0.1:{port}", "-b", str(batch),
               "--shape", f"INPUT0:{','.join(map(str, rest))}", "--concurrency-range", str(concurrency),
               "--measurement-interval", str(interval_ms), "-s", "25", "--max-trials", "10",
               "--input-data", "random", "-f", str(out), *(["--streaming"] if streaming else [])]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        row = next(csv.DictReader(out.open()))
    return {"throughput": float(row["Inferences/Second"]) / batch, "p50": float(row["p50 latency"]) / 1000,
            "p99": float(row["p99 latency"]) / 1000}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="HEAD", help="git revision of server A (default HEAD)")
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="identity_fp32")
    p.add_argument("--shape", type=int, nargs="+", default=[1, 16], help="batch, then the input's dims")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--measurement-ms", type=int, default=4000)
    p.add_argument("--streaming", action="store_true", help="ModelStreamInfer instead of ModelInfer")
    p.add_argument("--port", type=int, default=8301)
    p.add_argument("--out", type=Path, help="append the table, with the command and machine, to this file")
    a = p.parse_args()
    if not PERF_ANALYZER.exists():
        print(f"{PERF_ANALYZER} is missing: run bash benchmarks/tools/install_perf_analyzer.sh", file=sys.stderr)
        return 2
    servers = {"A": start(a.repository, a.model, a.port, base_overlay(a.base)),
               "B": start(a.repository, a.model, a.port + 1, None)}
    ports = {"A": a.port, "B": a.port + 1}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for r in range(a.rounds):
            for c in a.concurrency:
                for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    m = measure(a.model, ports[name], a.shape, c, a.measurement_ms, a.streaming)
                    runs.setdefault((name, c), []).append(m)
                    print(f"round {r + 1} c={c} {name}: {m['throughput']:.0f}/s p50 {m['p50']:.3f} ms "
                          f"p99 {m['p99']:.3f} ms", file=sys.stderr)
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(30)
    call = "ModelStreamInfer" if a.streaming else "ModelInfer"
    lines = [f"A = `{a.base}`, B = working tree; {call} {a.model} {a.shape}; medians of {a.rounds} alternating "
             f"rounds of {a.measurement_ms} ms", "",
             "| concurrency | A infer/s | B infer/s | B/A | A p50 ms | B p50 ms | A p99 ms | B p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for c in a.concurrency:
        med = {n: {k: statistics.median(m[k] for m in runs[(n, c)]) for k in ("throughput", "p50", "p99")}
               for n in ("A", "B")}
        lines.append(f"| {c} | {med['A']['throughput']:.0f} | {med['B']['throughput']:.0f} | "
                     f"{med['B']['throughput'] / med['A']['throughput']:.3f} | {med['A']['p50']:.3f} | "
                     f"{med['B']['p50']:.3f} | {med['A']['p99']:.3f} | {med['B']['p99']:.3f} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        with a.out.open("a") as f:
            f.write(f"\n`python benchmarks/bench_ab.py {shlex.join(sys.argv[1:])}` on {machine()}:\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
