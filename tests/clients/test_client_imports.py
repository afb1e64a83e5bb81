"""The client library stays light: importing it loads neither ONNX Runtime, the kernels, nor the server."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import peregrine.client
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in ("onnxruntime", "onnx", "numba", "cv2", "pydantic", "hdrh", "tqdm", "matplotlib")
               or m.startswith(("peregrine.server", "peregrine.kernels")))
print(",".join(heavy))
"""


def test_importing_the_client_pulls_in_nothing_heavy() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""
