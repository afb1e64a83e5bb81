"""CUDA shared memory for real: a separate process owns the device buffers (a CUDA IPC handle opens only in
another process than the one that made it), the in-process server opens them, the model reads its input
from and writes its output to device memory. Skipped where there is no GPU and CuPy (CI); run with
``pytest -m gpu`` on a GPU machine. The no-GPU answer (UNAVAILABLE) is tested in test_shared_memory.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as tc
from peregrine.server.app import PeregrineServer
from peregrine.server.dataplane.shm import cuda_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU and CuPy")]

OWNER = """
import sys
import cupy as cp
x = cp.arange(16, dtype=cp.float32).reshape(1, 16) * 3
out = cp.zeros((1, 16), cp.float32)
cp.cuda.runtime.deviceSynchronize()
print(cp.cuda.runtime.ipcGetMemHandle(x.data.ptr).hex(), cp.cuda.runtime.ipcGetMemHandle(out.data.ptr).hex(),
      flush=True)
sys.stdin.readline()
print(",".join(str(v) for v in cp.asnumpy(out).ravel()), flush=True)
sys.stdin.readline()
"""


def test_cuda_round_trip(url: str, server: PeregrineServer) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert owner.stdin is not None and owner.stdout is not None
    client = tc.InferenceServerClient(url)
    try:
        h_in, h_out = (bytes.fromhex(h) for h in owner.stdout.readline().split())
        client.register_cuda_shared_memory("gpu_in", _b64(h_in), 0, 64)
        client.register_cuda_shared_memory("gpu_out", _b64(h_out), 0, 64)
        assert set(client.get_cuda_shared_memory_status().regions) == {"gpu_in", "gpu_out"}
        inp = tc.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_shared_memory("gpu_in", 64)
        out = tc.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("gpu_out", 64)
        result = client.infer("identity_fp32", [inp], outputs=[out])
        assert result.get_response().raw_output_contents == [b""]
        owner.stdin.write("\n")
        owner.stdin.flush()
        got = np.array([float(v) for v in owner.stdout.readline().split(",")], np.float32)
        np.testing.assert_array_equal(got, np.arange(16, dtype=np.float32) * 3)
        client.unregister_cuda_shared_memory()
        assert len(client.get_cuda_shared_memory_status().regions) == 0
        # The scheduler still holds the last request it ran, and with it a CuPy array over the region, so the
        # handle stays open; the next request to the model lets it go, and the handle closes.
        plain = tc.InferInput("INPUT0", [1, 16], "FP32")
        plain.set_data_from_numpy(np.zeros((1, 16), np.float32))
        client.infer("identity_fp32", [plain])
        assert server.shared_memory.mapped() == []
    finally:
        client.close()
        owner.stdin.write("\n")
        owner.stdin.close()
        owner.wait(30)


def _b64(raw: bytes) -> bytes:
    """tritonclient takes the handle base64-encoded (as its cuda_shared_memory.get_raw_handle gives it)."""
    import base64

    return base64.b64encode(raw)
