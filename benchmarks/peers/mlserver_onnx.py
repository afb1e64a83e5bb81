"""An MLServer peer: MLServer's REST server (its own HTTP stack on FastAPI/uvicorn) serving one ONNX file
with ONNX Runtime (CPU EP) through a custom runtime, as an MLServer user serves ONNX (MLServer ships no ONNX
runtime of its own). Run in its own virtual environment (``bench_rest.mlserver_venv``); nothing of Peregrine
is imported.

MLServer has no ``/v2/models/{name}/config`` (a Triton extension), which Triton's perf_analyzer reads before
it sends anything: a custom handler answers it with the JSON file given (the benchmark writes it), every
other route is MLServer's own. Inference runs in the server's process (``parallel_workers`` 0), MLServer's
fastest setting for a small model.

    python benchmarks/peers/mlserver_onnx.py --model-name identity_fp32 --onnx models/identity_fp32/1/model.onnx \\
        --http-port 8830 --grpc-port 8831 --model-config-json config.json --dir /tmp/mlserver
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RUNTIME = '''
import json
import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse

CONFIG = json.loads(open(os.environ["PEER_MODEL_CONFIG_JSON"]).read())
NAME = os.environ["PEER_MODEL_NAME"]


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self.session.run(self.output_names, feed)
        outputs = []
        for name, value in zip(self.output_names, results):
            out = NumpyCodec.encode_output(name, np.ascontiguousarray(value))
            out.parameters = None  # Triton's clients read binary_data_size from any output parameters
            outputs.append(out)
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)

    @custom_handler(rest_path=f"/v2/models/{NAME}/config", rest_method="GET")
    async def triton_config(self) -> dict:
        return CONFIG
'''


def _metadata(onnx: Path) -> dict[str, list[dict[str, object]]]:
    """The model's inputs and outputs as MLServer's metadata (dynamic dimensions -1)."""
    import onnxruntime as ort

    types = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(int64)": "INT64", "tensor(int32)": "INT32",
             "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])

    def describe(nodes: list[ort.NodeArg]) -> list[dict[str, object]]:
        return [{"name": n.name, "datatype": types[n.type], "shape": [d if isinstance(d, int) else -1 for d in n.shape]}
                for n in nodes]

    return {"inputs": describe(session.get_inputs()), "outputs": describe(session.get_outputs())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--onnx", required=True, type=Path)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--model-config-json", required=True, type=Path)
    ap.add_argument("--dir", required=True, type=Path, help="where MLServer's settings and the runtime go")
    args = ap.parse_args()
    model_dir = args.dir / args.model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "onnx_peer.py").write_text(RUNTIME)
    (args.dir / "settings.json").write_text(json.dumps({
        "http_port": args.http_port, "grpc_port": args.grpc_port, "metrics_port": args.http_port + 100,
        "parallel_workers": 0, "debug": False}))
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": args.model_name, "implementation": "onnx_peer.OnnxModel",
        "parameters": {"uri": str(args.onnx.resolve())}, **_metadata(args.onnx)}))
    env = {**os.environ, "PEER_MODEL_CONFIG_JSON": str(args.model_config_json.resolve()),
           "PEER_MODEL_NAME": args.model_name, "PYTHONPATH": str(model_dir)}
    mlserver = Path(sys.executable).parent / "mlserver"
    return subprocess.call([str(mlserver), "start", str(args.dir)], env=env)


if __name__ == "__main__":
    sys.exit(main())
