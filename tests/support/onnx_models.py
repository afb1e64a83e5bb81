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


def dynamic_detector(exported: int = 640) -> onnx.ModelProto:
    """An end-to-end detector ([N, 2, 6]: x1, y1, x2, y2, score, class) whose input height and width are
    dynamic, as an ultralytics export with ``dynamic=True``: its boxes are fractions of the input it is fed
    (the middle half, score from the image's mean brightness, class 0; the top-left quarter, 0.9, class 1),
    so that in image pixels they are the same at any input size. ``imgsz`` metadata: ``exported``."""
    f = helper.make_tensor
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Gather", ["shape", "i2"], ["h_i"]),
        helper.make_node("Gather", ["shape", "i3"], ["w_i"]),
        helper.make_node("Cast", ["h_i"], ["h"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["w_i"], ["w"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "ax1"], ["col"]),  # [N, 1]
        helper.make_node("Mul", ["col", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "one"], ["ones"]),
        helper.make_node("Mul", ["col", "half"], ["score_a0"]),
        helper.make_node("Add", ["score_a0", "point3"], ["score_a"]),
    ]
    columns: dict[str, list[str]] = {"a": [], "b": []}
    for box, fractions in (("a", (0.25, 0.25, 0.75, 0.75)), ("b", (0.0, 0.0, 0.5, 0.5))):
        for k, side in enumerate(("w", "h", "w", "h")[:len(fractions)]):
            name = f"{box}{k}"
            nodes.append(helper.make_node("Mul", [side, f"c_{name}"], [f"{name}_s"]))
            nodes.append(helper.make_node("Mul", ["ones", f"{name}_s"], [name]))
            columns[box].append(name)
    nodes += [helper.make_node("Mul", ["ones", "point9"], ["score_b"]),
              helper.make_node("Concat", [*columns["a"], "score_a", "zeros"], ["row_a"], axis=1),
              helper.make_node("Concat", [*columns["b"], "score_b", "ones"], ["row_b"], axis=1),
              helper.make_node("Unsqueeze", ["row_a", "ax1"], ["box_a"]),
              helper.make_node("Unsqueeze", ["row_b", "ax1"], ["box_b"]),
              helper.make_node("Concat", ["box_a", "box_b"], ["output0"], axis=1)]
    constants = [f("i2", TensorProto.INT64, [1], [2]), f("i3", TensorProto.INT64, [1], [3]),
                 f("ax1", TensorProto.INT64, [1], [1]), f("zero", TensorProto.FLOAT, [], [0.0]),
                 f("one", TensorProto.FLOAT, [], [1.0]), f("half", TensorProto.FLOAT, [], [0.5]),
                 f("point3", TensorProto.FLOAT, [], [0.3]), f("point9", TensorProto.FLOAT, [], [0.9])]
    for box, fractions in (("a", (0.25, 0.25, 0.75, 0.75)), ("b", (0.0, 0.0, 0.5, 0.5))):
        constants += [f(f"c_{box}{k}", TensorProto.FLOAT, [], [v]) for k, v in enumerate(fractions)]
    model = _model(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                   [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 2, 6])], constants)
    helper.set_model_props(model, {"imgsz": f"[{exported}, {exported}]", "names": "{0: 'middle', 1: 'corner'}"})
    return model
