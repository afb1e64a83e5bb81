"""Parameter and FLOP counts of ONNX models, computed the way ultralytics reports them.

ultralytics' "GFLOPs" is 2 x the multiply-accumulates of Conv2d/Linear layers (thop), bias and
activations excluded; `count_flops` counts the same over Conv and Gemm nodes, reading the output shapes from
ONNX shape inference with symbolic (batch) dimensions taken as `batch`.
"""

from __future__ import annotations

import math

import onnx
from onnx import shape_inference


def count_parameters(model: onnx.ModelProto) -> int:
    """Number of weight and bias elements feeding Conv and Gemm nodes (what `sum(p.numel())` counts)."""
    sizes = {init.name: math.prod(init.dims) for init in model.graph.initializer}
    names = {
        name
        for node in model.graph.node
        if node.op_type in ("Conv", "Gemm")
        for name in node.input[1:]
        if name in sizes
    }
    return sum(sizes[name] for name in names)


def count_flops(model: onnx.ModelProto, batch: int = 1) -> int:
    """2 x multiply-accumulates of all Conv and Gemm nodes for one forward pass of `batch` inputs.

    Raises ValueError when shape inference cannot give a node's output shape (a dynamic spatial size).
    """
    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
    weights = {init.name: init for init in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        out = shapes.get(node.output[0])
        w = weights.get(node.input[1])
        if out is None or w is None:
            raise ValueError(f"cannot count FLOPs of node {node.name!r}: output shape or weight unknown")
        if node.op_type == "Conv":
            # weight [Cout, Cin/groups, kh, kw]: each output element takes Cin/groups*kh*kw MACs
            macs = math.prod(out) * math.prod(w.dims[1:])
        else:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            k = w.dims[1] if trans_b else w.dims[0]
            macs = math.prod(out) * k
        total += 2 * macs
    return total
