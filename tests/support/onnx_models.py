"""Small ONNX models for the tests, written with the onnx helper API."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

ALL_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto], initializers: list[onnx.TensorProto] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def identity(datatype: str, shape: list[int | str | None]) -> onnx.ModelProto:
    t = ONNX_TYPES[datatype]
    return _model([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
                  [helper.make_tensor_value_info("INPUT0", t, shape)],
                  [helper.make_tensor_value_info("OUTPUT0", t, shape)])


def add_sub(shape: list[int | str | None]) -> onnx.ModelProto:
    """Triton's classic 'simple' model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32)."""
    t = TensorProto.INT32
    return _model(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        [helper.make_tensor_value_info("INPUT0", t, shape), helper.make_tensor_value_info("INPUT1", t, shape)],
        [helper.make_tensor_value_info("OUTPUT0", t, shape), helper.make_tensor_value_info("OUTPUT1", t, shape)],
    )


def gather(width: int = 4) -> onnx.ModelProto:
    """OUTPUT0[n, 0] = DATA[n, INDEX[n, 0]]. An INDEX outside 0..width-1 makes ONNX Runtime fail at run
    time: a request whose content, not its shape, breaks the model."""
    return _model(
        [helper.make_node("GatherElements", ["DATA", "INDEX"], ["OUTPUT0"], axis=1)],
        [helper.make_tensor_value_info("DATA", TensorProto.FLOAT, ["N", width]),
         helper.make_tensor_value_info("INDEX", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", 1])],
    )


def write(repo: Path, name: str, model: onnx.ModelProto | bytes, config: str | None = None,
          version: int = 1) -> Path:
    d = repo / name / str(version)
    d.mkdir(parents=True, exist_ok=True)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    (d / "model.onnx").write_bytes(data)
    if config is not None:
        (repo / name / "config.toml").write_text(config)
    return repo / name


def matmul_chain(width: int = 384, depth: int = 8) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 @ W @ W ... (``depth`` times), FP32 [N, width]: a model that takes real time per
    request (about a millisecond on one core at the defaults), for tests that need a queue to build."""
    import numpy as np

    w = helper.make_tensor("W", TensorProto.FLOAT, [width, width],
                           (np.eye(width, dtype=np.float32) * 0.5).reshape(-1).tolist())
    names = ["INPUT0", *[f"h{i}" for i in range(depth - 1)], "OUTPUT0"]
    nodes = [helper.make_node("MatMul", [names[i], "W"], [names[i + 1]]) for i in range(depth)]
    return _model(nodes, [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", width])],
                  [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", width])], [w])
