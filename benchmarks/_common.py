"""What the benchmark scripts share: describing the machine, the packaged photographs, starting a server they
measure and reading its metrics."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def machine() -> str:
    """CPU model, core count, GPU (where ONNX Runtime has CUDA), OS, Python and ONNX Runtime versions."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} cores"]
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None and "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            gpu = "unknown"
        parts.append(f"GPU {gpu}")
    parts += [f"{platform.system()} {platform.release()}", f"Python {platform.python_version()}"]
    if ort is not None:
        parts.append(f"ONNX Runtime {ort.__version__}")
    return ", ".join(parts)


def packaged_photos() -> list[bytes]:
    """The project's packaged photographs (scikit-image's, as ``make models`` writes them), JPEG bytes in name
    order."""
    from peregrine.modelgen.photos import write_photos

    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp))
        return [p.read_bytes() for p in sorted(Path(tmp).glob("*.jpg"))]


def metric_samples(http_port: int) -> list[Any]:
    """Every sample on the server's ``/metrics`` (prometheus_client's parser: name, labels, value)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def write_report(path: Path | None, title: str, text: str) -> None:
    """Write a benchmark's report to ``path`` (when given) under ``title``, with the command line that
    produced it and the machine it ran on."""
    if path is None:
        return
    import shlex

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\n`{shlex.join(['python', *sys.argv])}`\n\nMachine: {machine()}\n\n{text}\n")


def wait_until_ready(proc: subprocess.Popen[bytes], url: str, models: list[str], timeout_s: float = 180) -> None:
    """Block until every model is ready on the server at ``url``; raise if the process exits or time runs out."""
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited during start-up ({proc.returncode})")
            try:
                if all(client.is_model_ready(m) for m in models):
                    return
            except Exception:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready in {timeout_s:g} s")
            time.sleep(0.2)
    finally:
        client.close()


def start_peregrine(repository: Path, model: str, port: int, extra_models: list[str] | None = None,
                    http_port: int = -1) -> subprocess.Popen[bytes]:
    """A Peregrine server subprocess serving only ``model`` (and ``extra_models``), ready when this returns
    (HTTP on ``http_port``; -1: none)."""
    models = [model, *(extra_models or [])]
    cmd = [sys.executable, "-m", "peregrine.server", "--model-repository", str(repository),
           "--grpc-port", str(port), "--http-port", str(http_port), "--model-control-mode", "explicit",
           *[arg for m in models for arg in ("--load-model", m)], "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd)
    try:
        wait_until_ready(proc, f"127.0.0.1:{port}", models, timeout_s=120)
    except BaseException:
        proc.terminate()
        raise
    return proc
