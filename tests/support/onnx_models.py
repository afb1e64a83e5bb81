"""Small ONNX models for the tests, written with the onnx helper API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from peregrine.modelgen.coco import COCO80

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


def with_task_head(detector: onnx.ModelProto, task: str, *, extra: int, masks: int = 0,
                   metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """A detector's graph made into what ultralytics exports for a segmentation or pose model: each box's
    detection columns, then ``extra`` more values (mask coefficients, keypoints) that repeat the box's
    coordinates, so that a reader taking them for class scores would find confident boxes of classes the
    model does not have (``extra`` 0: the head as it was); with ``masks``, a 4-D output ``output1``
    [N, masks, H/4, W/4], a segmentation model's prototype masks. The ``task`` metadata is set (removed when
    empty) and ``metadata`` merged in."""
    model = onnx.ModelProto()
    model.CopyFrom(detector)
    graph = model.graph
    head = graph.output[0]
    dims = head.type.tensor_type.shape.dim
    layout = {p.key: p.value for p in model.metadata_props}.get("peregrine_layout", "yolov8")
    axis = 1 if layout == "yolov8" else 2
    if extra:
        _append_to_head(graph, head.name, axis, extra)
        dims[axis].dim_value += extra
    if masks:
        size = graph.input[0].type.tensor_type.shape.dim[2].dim_value
        graph.initializer.append(helper.make_tensor("task_head.proto_w", TensorProto.FLOAT, [masks, 3, 1, 1],
                                                    [0.1] * (masks * 3)))
        graph.node.append(helper.make_node("Conv", [graph.input[0].name, "task_head.proto_w"], ["output1"],
                                           strides=[4, 4]))
        graph.output.append(helper.make_tensor_value_info("output1", TensorProto.FLOAT,
                                                          ["batch", masks, size // 4, size // 4]))
    props = {p.key: p.value for p in model.metadata_props}
    props.pop("task", None)
    if task:
        props["task"] = task
    props.update(metadata or {})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def _append_to_head(graph: onnx.GraphProto, head: str, axis: int, extra: int) -> None:
    """``extra`` values after each box's columns of output ``head`` (along ``axis``): its box coordinates,
    repeated."""
    for node in graph.node:
        node.output[:] = ["detection_columns" if o == head else o for o in node.output]
    graph.initializer.extend([
        helper.make_tensor("task_head.starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor("task_head.box_end", TensorProto.INT64, [1], [4]),
        helper.make_tensor("task_head.extra_end", TensorProto.INT64, [1], [extra]),
        helper.make_tensor("task_head.axis", TensorProto.INT64, [1], [axis]),
        helper.make_tensor("task_head.repeats", TensorProto.INT64, [3],
                           [1, -(-extra // 4), 1] if axis == 1 else [1, 1, -(-extra // 4)]),
    ])
    graph.node.extend([
        helper.make_node("Slice", ["detection_columns", "task_head.starts", "task_head.box_end", "task_head.axis"],
                         ["task_head.box"]),
        helper.make_node("Tile", ["task_head.box", "task_head.repeats"], ["task_head.tiled"]),
        helper.make_node("Slice", ["task_head.tiled", "task_head.starts", "task_head.extra_end", "task_head.axis"],
                         ["task_head.extra"]),
        helper.make_node("Concat", ["detection_columns", "task_head.extra"], [head], axis=axis),
    ])


def rtdetr_like(seed: int = 0, imgsz: int = 640, queries: int = 300, batch: int | str = "batch",
                topk: bool = False, classes: int = 80) -> onnx.ModelProto:
    """A detector with the output ultralytics exports for RT-DETR: ``output0`` [N, queries, 4 + C], per
    query a box (centre x, centre y, width, height as fractions of the input, each a sigmoid) and C class
    scores (sigmoids, no objectness), with names (COCO's for 80), ``task`` detect and ``imgsz`` metadata. Its
    body is not RT-DETR's transformer: 32 x 32 patches of the image (a convolution, then tanh) give a query
    each, a linear layer and sigmoids the columns, so every box and score depends on the image as a real one
    does, and a few queries per photograph score above 0.25. ``batch``: a number for a static batch.

    ``topk``: as ultralytics exports it since its decoder ranks its own answers (8.4): ``output0`` [N,
    queries, 6], the best ``queries`` of all (query, class) scores in descending order, each row the query's
    box, the score and the class index (a float), and ``head`` RTDETRDecoder in the metadata."""
    rng = np.random.default_rng(seed)
    names = list(COCO80) if classes == 80 else [f"kind{i}" for i in range(classes)]
    features, cells, cols = 32, (imgsz // 32) ** 2, 4 + classes
    assert cells >= queries, f"a {imgsz} input has {cells} patches, fewer than {queries} queries"
    conv_w = rng.normal(0, 1, (features, 3, 32, 32))
    conv_w = ((conv_w - conv_w.mean(axis=(1, 2, 3), keepdims=True)) / 8).astype(np.float32)  # texture, not brightness
    conv_b = rng.normal(0, 0.5, features).astype(np.float32)
    # boxes spread over the whole input (some past its edges), scores mostly low
    head_w = np.concatenate([rng.normal(0, 0.3, (features, 4)), rng.normal(0, 0.25, (features, cols - 4))], axis=1)
    head_w = head_w.astype(np.float32)
    head_b = np.concatenate([rng.normal(0, 0.5, 4), np.full(cols - 4, -4.0)]).astype(np.float32)
    f = helper.make_tensor
    initializers = [
        helper.make_tensor("conv_w", TensorProto.FLOAT, conv_w.shape, conv_w.ravel()),
        helper.make_tensor("conv_b", TensorProto.FLOAT, conv_b.shape, conv_b.ravel()),
        helper.make_tensor("head_w", TensorProto.FLOAT, head_w.shape, head_w.ravel()),
        helper.make_tensor("head_b", TensorProto.FLOAT, head_b.shape, head_b.ravel()),
        f("flat", TensorProto.INT64, [3], [0, features, cells]),
        f("q_start", TensorProto.INT64, [1], [0]), f("q_end", TensorProto.INT64, [1], [queries]),
        f("q_axis", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "conv_w", "conv_b"], ["patches"], strides=[32, 32]),
        helper.make_node("Tanh", ["patches"], ["act"]),
        helper.make_node("Reshape", ["act", "flat"], ["flat_act"]),  # [N, F, cells]
        helper.make_node("Transpose", ["flat_act"], ["tokens"], perm=[0, 2, 1]),  # [N, cells, F]
        helper.make_node("Slice", ["tokens", "q_start", "q_end", "q_axis"], ["query"]),
        helper.make_node("MatMul", ["query", "head_w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "head_b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs" if topk else "output0"]),
    ]
    if topk:  # RTDETRDecoder.postprocess: top-k over the flattened (query, class) scores, boxes gathered
        initializers += [
            f("b_start", TensorProto.INT64, [1], [0]), f("b_end", TensorProto.INT64, [1], [4]),
            f("s_end", TensorProto.INT64, [1], [cols]), f("last", TensorProto.INT64, [1], [2]),
            f("flat2", TensorProto.INT64, [2], [0, -1]), f("k", TensorProto.INT64, [1], [queries]),
            f("nc", TensorProto.INT64, [], [classes]), f("four", TensorProto.INT64, [3], [1, 1, 4]),
            f("axis2", TensorProto.INT64, [1], [2]),
        ]
        nodes += [
            helper.make_node("Slice", ["probs", "b_start", "b_end", "last"], ["boxes"]),  # [N, Q, 4]
            helper.make_node("Slice", ["probs", "b_end", "s_end", "last"], ["scores"]),  # [N, Q, C]
            helper.make_node("Reshape", ["scores", "flat2"], ["flat_scores"]),  # [N, Q * C]
            helper.make_node("TopK", ["flat_scores", "k"], ["top", "index"], axis=-1, largest=1, sorted=1),
            helper.make_node("Div", ["index", "nc"], ["query_idx"]),
            helper.make_node("Mul", ["query_idx", "nc"], ["query_base"]),
            helper.make_node("Sub", ["index", "query_base"], ["class_idx"]),
            helper.make_node("Unsqueeze", ["query_idx", "axis2"], ["query_col"]),
            helper.make_node("Expand", ["query_col", "four"], ["gather_at"]),
            helper.make_node("GatherElements", ["boxes", "gather_at"], ["top_boxes"], axis=1),
            helper.make_node("Unsqueeze", ["top", "axis2"], ["top_col"]),
            helper.make_node("Cast", ["class_idx"], ["class_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["class_f", "axis2"], ["class_col"]),
            helper.make_node("Concat", ["top_boxes", "top_col", "class_col"], ["output0"], axis=2),
        ]
    model = _model(nodes, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, imgsz, imgsz])],
                   [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, queries, 6 if topk else cols])],
                   initializers)
    props = {"description": "Ultralytics rtdetr-l model (test stand-in)", "task": "detect", "stride": "32",
             "batch": str(batch if isinstance(batch, int) else 1), "imgsz": f"[{imgsz}, {imgsz}]",
             "names": repr(dict(enumerate(names)))}
    if topk:
        props.update({"head": "RTDETRDecoder", "version": "8.4.190", "end2end": "False"})
    helper.set_model_props(model, props)
    return model
