"""Small models for transport, codec and batching tests: identity and add/sub per datatype, a tiny classifier."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from .calibration import calibration_batch
from .graph import FLOAT, GraphBuilder, Tensor, make_model, tensor_info

OPSET = 17

# Open Inference Protocol (KServe v2 / Triton) datatype names -> ONNX element types.
ONNX_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BF16": TensorProto.BFLOAT16,
    "BYTES": TensorProto.STRING,
}
# ONNX Runtime's CPU provider implements Add and Sub for these (not BOOL, BF16 or strings).
ARITHMETIC_DATATYPES = (
    "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
)  # fmt: skip

Dim = int | str | None


def onnx_type(datatype: str) -> int:
    """ONNX element type for an OIP datatype name (`STRING` is accepted for `BYTES`); ValueError otherwise."""
    key = "BYTES" if datatype.upper() == "STRING" else datatype.upper()
    if key not in ONNX_TYPES:
        raise ValueError(f"unknown datatype {datatype!r}, expected one of {sorted(ONNX_TYPES)}")
    return ONNX_TYPES[key]


def _dims(shape: Sequence[Dim]) -> list[int | str]:
    """Fixed dims stay; -1/None become symbolic: the first is `batch`, the others `dim<i>`."""
    dims: list[int | str] = []
    for i, d in enumerate(shape):
        if d is None or (isinstance(d, int) and d < 0):
            dims.append("batch" if i == 0 else f"dim{i}")
        else:
            dims.append(d)
    return dims


def _meta(description: str, **extra: str) -> dict[str, str]:
    return {"author": "Peregrine (peregrine.modelgen)", "description": description, **extra}


def identity_model(
    datatype: str = "FP32",
    shape: Sequence[Dim] = (-1, -1),
    *,
    input_name: str = "INPUT0",
    output_name: str = "OUTPUT0",
) -> onnx.ModelProto:
    """`OUTPUT0 = Identity(INPUT0)` for one OIP datatype (BOOL, UINT8..64, INT8..64, FP16/32/64, BF16, BYTES).

    `shape` dims that are -1 or None are dynamic (the first is named `batch`); strings are symbolic names.
    Raises ValueError for an unknown datatype.
    """
    elem = onnx_type(datatype)
    dims = _dims(shape)
    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], [output_name], name="Identity")],
        f"identity_{datatype.lower()}",
        [tensor_info(input_name, elem, dims)],
        [tensor_info(output_name, elem, dims)],
    )
    return make_model(graph, _meta(f"Peregrine identity model, {datatype.upper()} {dims}"), OPSET)


def add_sub_model(datatype: str = "INT32", shape: Sequence[Dim] = (-1, 16)) -> onnx.ModelProto:
    """Triton's `simple` model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (same datatype, shape).

    Raises ValueError for a datatype ONNX Runtime has no Add/Sub for (see ARITHMETIC_DATATYPES).
    """
    if datatype.upper() not in ARITHMETIC_DATATYPES:
        raise ValueError(f"add_sub_model: datatype {datatype!r} not in {ARITHMETIC_DATATYPES}")
    elem = onnx_type(datatype)
    dims = _dims(shape)
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="Add"),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="Sub"),
        ],
        f"add_sub_{datatype.lower()}",
        [tensor_info("INPUT0", elem, dims), tensor_info("INPUT1", elem, dims)],
        [tensor_info("OUTPUT0", elem, dims), tensor_info("OUTPUT1", elem, dims)],
    )
    return make_model(graph, _meta(f"Peregrine add/sub model, {datatype.upper()} {dims}"), OPSET)


def classifier(seed: int = 0, *, num_classes: int = 1000, imgsz: int = 224) -> onnx.ModelProto:
    """A tiny image classifier: four stride-2 Conv+SiLU blocks, global average pool, Gemm, Softmax.

    Input `images` float32 [batch, 3, imgsz, imgsz] RGB in [0, 1]; output `output0` float32
    [batch, num_classes], probabilities summing to one. Seeded random weights with folded BatchNorm, logits
    scaled to a standard deviation of about 2 so the top class stands out. Raises ValueError for
    imgsz not a multiple of 16.
    """
    if imgsz < 32 or imgsz % 16:
        raise ValueError(f"imgsz must be a multiple of 16 and at least 32, got {imgsz}")
    b = GraphBuilder(seed)
    x = Tensor("images", calibration_batch(imgsz))
    for i, c in enumerate((16, 32, 64, 128)):
        x = b.conv_bn_silu(x, c, 3, 2, f"/model.{i}")
    pooled = b.node("GlobalAveragePool", [x.name], "/model.4/pool/GlobalAveragePool")[0]
    flat = b.node("Flatten", [pooled], "/model.4/Flatten", axis=1)[0]
    features = x.value.mean(axis=(2, 3))
    w = b.rng.standard_normal((num_classes, x.channels)).astype(np.float32)
    # Spread the logits over classes (std ~2): a softmax over 1000 near-equal logits would be flat.
    scale = 2.0 / (float((features @ w.T).std(axis=1).mean()) + 1e-6)
    bias = np.zeros(num_classes, dtype=np.float32)
    wname = b.initializer("model.4.linear.weight", (w * scale).astype(np.float32))
    bname = b.initializer("model.4.linear.bias", bias.astype(np.float32))
    gemm = b.node("Gemm", [flat, wname, bname], "/model.4/linear/Gemm", alpha=1.0, beta=1.0, transB=1)[0]
    b.node("Softmax", [gemm], "/model.4/Softmax", outputs=["output0"], axis=1)
    names = str({i: f"class{i}" for i in range(num_classes)})
    meta = _meta(
        f"Peregrine generated tiny classifier, seeded random weights (seed={seed}); not trained",
        task="classify", imgsz=str([imgsz, imgsz]), names=names, batch="1", stride="16",
    )  # fmt: skip
    images = tensor_info("images", FLOAT, ["batch", 3, imgsz, imgsz])
    output = tensor_info("output0", FLOAT, ["batch", num_classes])
    return b.model([images], [output], "peregrine_classifier", meta, OPSET)
