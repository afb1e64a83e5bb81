"""A KServe peer: KServe's Python ``ModelServer`` serving one ONNX file with ONNX Runtime (CPU EP).

How a KServe user serves an ONNX model in Python: a ``kserve.Model`` whose ``predict`` takes the Open
Inference Protocol request, runs an ``InferenceSession`` and answers binary (raw) outputs. Run in its own
virtual environment (``bench_overhead.py`` makes one with ``kserve`` and ``onnxruntime``); nothing of
Peregrine is imported.

KServe has no ``ModelConfig`` (a Triton extension), which Triton's perf_analyzer reads before it sends
anything. ``--model-config FILE`` answers the gRPC call with the serialized ``ModelConfigResponse`` in FILE
and ``--model-config-json FILE`` answers Triton's REST route ``GET /v2/models/{name}/config`` with FILE's
JSON, verbatim (the benchmarks write both); every other call is KServe's own.

    python benchmarks/peers/kserve_onnx.py --model-name identity_fp32 --onnx models/identity_fp32/1/model.onnx \\
        --grpc_port 8501 --http_port 8500
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
import kserve
import numpy as np
import onnxruntime as ort
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str, threads: int) -> None:
        super().__init__(name)
        self.path = path
        self.threads = threads
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        assert self.session is not None
        return [_metadata(t) for t in self.session.get_inputs()]

    def get_output_types(self) -> list[dict]:
        assert self.session is not None
        return [_metadata(t) for t in self.session.get_outputs()]

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        assert self.session is not None
        feed = {i.name: i.as_numpy() for i in payload.inputs}
        results = self.session.run(self.outputs, feed)
        outputs = []
        for name, value in zip(self.outputs, results, strict=True):
            value = np.ascontiguousarray(value)
            out = InferOutput(name=name, shape=list(value.shape), datatype=_datatype(value.dtype))
            out.set_data_from_numpy(value, binary_data=True)
            outputs.append(out)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id,
                             use_binary_outputs=True)


_ORT_TYPES = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(int64)": "INT64",
              "tensor(int32)": "INT32", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}


def _metadata(node: ort.NodeArg) -> dict:
    """The OIP metadata of an ONNX input or output: dynamic dimensions are -1."""
    return {"name": node.name, "datatype": _ORT_TYPES[node.type],
            "shape": [d if isinstance(d, int) else -1 for d in node.shape]}


def _datatype(dtype: np.dtype) -> str:
    return {np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16", np.dtype(np.int64): "INT64",
            np.dtype(np.int32): "INT32", np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL"}[np.dtype(dtype)]


def answer_model_config(response: bytes) -> None:
    """Add ``ModelConfig`` to every gRPC server KServe builds, answering ``response`` (serialized bytes)."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as stubs

    add_servicer = stubs.add_GRPCInferenceServiceServicer_to_server

    def add(servicer: object, server: grpc.Server) -> None:
        add_servicer(servicer, server)
        async def model_config(request: bytes, context: object) -> bytes:
            return response

        handler = grpc.unary_unary_rpc_method_handler(model_config)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelConfig": handler})])

    stubs.add_GRPCInferenceServiceServicer_to_server = add


def answer_model_config_json(text: str) -> None:
    """Add Triton's ``GET /v2/models/{name}/config`` to KServe's REST app, answering ``text``."""
    from fastapi import Response
    from kserve.model_server import app

    @app.get("/v2/models/{name}/config")
    async def model_config(name: str) -> Response:
        return Response(content=text, media_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--onnx", required=True, help="the ONNX file to serve")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--model-config", type=Path, help="serialized ModelConfigResponse for perf_analyzer")
    parser.add_argument("--model-config-json", type=Path, help="the model configuration as Triton's JSON")
    args, _ = parser.parse_known_args()
    if args.model_config:
        answer_model_config(args.model_config.read_bytes())
    if args.model_config_json:
        answer_model_config_json(args.model_config_json.read_text())
    model = OnnxModel(args.model_name, args.onnx, args.threads)
    model.load()
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start([model])


if __name__ == "__main__":
    main()
