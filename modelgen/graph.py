"""A small ONNX graph builder that runs a NumPy forward pass alongside, to fold calibrated BatchNorm.

Each layer is written once: the builder emits the ONNX node and, at the same time, computes the layer's
output on a calibration batch with NumPy. A `Conv+BatchNorm+SiLU` block draws He-initialised weights, measures
the per-channel mean and variance of the raw convolution on that batch (what BatchNorm's running statistics
would hold after training) and folds them into the convolution's weight and bias, as ultralytics does when it
fuses a model for export. Every stage therefore sees activations of order one whatever the depth or the seed,
and the features still depend on the image, which random weights without normalisation do not guarantee.

Node and initializer names follow what `torch.onnx.export` writes for ultralytics models
(`/model.2/cv1/conv/Conv`, `model.2.cv1.conv.weight`) so the graphs read like real exports in Netron.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

BN_EPS = 1e-3  # ultralytics' BatchNorm2d eps
# Folded BatchNorm affine parameters: gamma ~ U(0.7, 1.3), beta ~ N(1.2, 0.3). A positive beta keeps most
# pre-activations in SiLU's near-linear range, so a feature's scale follows the image's contrast about
# linearly instead of compounding layer after layer. Measured on skimage photographs at seed 0: with
# beta ~ N(-0.2, 0.3) the candidates above 0.25 ranged from 0 (chelsea) to ~2000 (astronaut); with this
# setting they stay between ~20 and ~200 for seeds 0-4, at stage standard deviations of 0.7-1.5.
BN_GAMMA_RANGE = (0.7, 1.3)
BN_BETA_NORMAL = (1.2, 0.3)


@dataclass(frozen=True)
class Tensor:
    """A graph value: its ONNX name and its value on the calibration batch (NCHW float32)."""

    name: str
    value: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.value.shape[1])


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """NCHW convolution without bias (im2col + matmul), float32."""
    n, c, h, wd = x.shape
    cout, cin, kh, kw = w.shape
    if cin != c:
        raise ValueError(f"conv2d: input has {c} channels, weight expects {cin}")
    if kh == kw == 1 and stride == 1 and pad == 0:
        return np.matmul(w.reshape(cout, cin), x.reshape(n, c, h * wd)).reshape(n, cout, h, wd)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    ho, wo = win.shape[2], win.shape[3]
    cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, ho * wo)
    return np.matmul(w.reshape(cout, -1), cols).reshape(n, cout, ho, wo)


def maxpool2d(x: np.ndarray, k: int) -> np.ndarray:
    """Max pooling with kernel k, stride 1, padding k//2 (SPPF's pooling)."""
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    return sliding_window_view(xp, (k, k), axis=(2, 3)).max(axis=(4, 5))


def silu(x: np.ndarray) -> np.ndarray:
    return (x / (1.0 + np.exp(-x))).astype(np.float32)


class GraphBuilder:
    """Collects ONNX nodes and initializers while evaluating the layers on a calibration batch.

    `seed` seeds a legacy `np.random.RandomState`, whose stream NumPy keeps frozen across versions, so a
    seed gives the same weights on any NumPy. All weights are drawn in build order.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.RandomState(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._node_names: dict[str, int] = {}
        self._init_names: set[str] = set()

    # ---- raw emission -------------------------------------------------------------------------------
    def initializer(self, name: str, array: np.ndarray) -> str:
        """Adds a constant tensor; returns its name (which must be unique)."""
        if name in self._init_names:
            raise ValueError(f"duplicate initializer {name!r}")
        self._init_names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str,
        n_outputs: int = 1,
        outputs: Sequence[str] | None = None,
        **attrs: Any,
    ) -> list[str]:
        """Adds a node named like torch's exporter does (a repeat gets `_1`, `_2`, ...); returns its outputs.

        Outputs are named `<node name>_output_<i>` unless `outputs` names them (graph outputs).
        """
        count = self._node_names.get(name, 0)
        self._node_names[name] = count + 1
        if count:
            name = f"{name}_{count}"
        if outputs is None:
            outputs = [f"{name}_output_{i}" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name, **attrs))
        return list(outputs)

    def const_i64(self, name: str, values: Sequence[int]) -> str:
        return self.initializer(name, np.asarray(values, dtype=np.int64))

    # ---- layers with a calibration value ------------------------------------------------------------
    def draw_conv_weight(self, cin: int, cout: int, k: int, gain: float = 2.0) -> np.ndarray:
        """He-normal weight [cout, cin, k, k], float32."""
        std = np.sqrt(gain / (cin * k * k))
        return (self.rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32)

    def emit_conv(self, x: Tensor, weight: np.ndarray, bias: np.ndarray, stride: int, pad: int, prefix: str) -> str:
        """Emits a Conv node with the given folded weight and bias; returns its output name."""
        k = weight.shape[2]
        wname = self.initializer(f"{_param_prefix(prefix)}.weight", weight.astype(np.float32))
        bname = self.initializer(f"{_param_prefix(prefix)}.bias", bias.astype(np.float32))
        return self.node(
            "Conv", [x.name, wname, bname], f"{prefix}/Conv",
            dilations=[1, 1], group=1, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride, stride],
        )[0]  # fmt: skip

    def conv_bn_silu(self, x: Tensor, cout: int, k: int, stride: int, prefix: str, pad: int | None = None) -> Tensor:
        """ultralytics `Conv`: Conv2d(bias=False) + BatchNorm2d + SiLU, with BatchNorm folded into the conv."""
        pad = k // 2 if pad is None else pad
        w = self.draw_conv_weight(x.channels, cout, k)
        raw = conv2d(x.value, w, stride, pad)
        mean = raw.mean(axis=(0, 2, 3), dtype=np.float64)
        var = raw.var(axis=(0, 2, 3), dtype=np.float64)
        gamma = self.rng.uniform(*BN_GAMMA_RANGE, cout)
        beta = self.rng.normal(*BN_BETA_NORMAL, cout)
        scale = (gamma / np.sqrt(var + BN_EPS)).astype(np.float32)
        shift = (beta - mean * scale).astype(np.float32)
        out = self.emit_conv(x, w * scale[:, None, None, None], shift, stride, pad, f"{prefix}/conv")
        y = raw * scale[None, :, None, None] + shift[None, :, None, None]
        return self.silu(Tensor(out, y), f"{prefix}/act")

    def silu(self, x: Tensor, prefix: str) -> Tensor:
        """SiLU as `x * sigmoid(x)`, the Sigmoid+Mul pair torch exports at opsets without a SiLU op."""
        sig = self.node("Sigmoid", [x.name], f"{prefix}/Sigmoid")[0]
        out = self.node("Mul", [x.name, sig], f"{prefix}/Mul")[0]
        return Tensor(out, silu(x.value))

    def head_conv(
        self,
        x: Tensor,
        cout: int,
        prefix: str,
        calibrate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    ) -> Tensor:
        """A plain 1x1 Conv2d with bias (a head's last layer).

        `calibrate(raw)` receives the raw convolution on the calibration batch and returns the per-channel
        (scale, bias) to apply, so the caller decides what the outputs mean (DFL bins, class logits).
        """
        w = self.draw_conv_weight(x.channels, cout, 1, gain=1.0)
        raw = conv2d(x.value, w, 1, 0)
        scale, bias = calibrate(raw)
        scale = scale.astype(np.float32)
        bias = bias.astype(np.float32)
        out = self.emit_conv(x, w * scale[:, None, None, None], bias, 1, 0, prefix)
        return Tensor(out, raw * scale[None, :, None, None] + bias[None, :, None, None])

    def add(self, a: Tensor, b: Tensor, prefix: str) -> Tensor:
        return Tensor(self.node("Add", [a.name, b.name], f"{prefix}/Add")[0], a.value + b.value)

    def concat(self, xs: Sequence[Tensor], prefix: str) -> Tensor:
        out = self.node("Concat", [x.name for x in xs], f"{prefix}/Concat", axis=1)[0]
        return Tensor(out, np.concatenate([x.value for x in xs], axis=1))

    def split(self, x: Tensor, sizes: Sequence[int], prefix: str) -> list[Tensor]:
        sname = self.const_i64(f"{prefix.strip('/')}.split_sizes", sizes)
        outs = self.node("Split", [x.name, sname], f"{prefix}/Split", n_outputs=len(sizes), axis=1)
        bounds = np.cumsum([0, *sizes])
        return [Tensor(o, x.value[:, lo:hi]) for o, lo, hi in zip(outs, bounds[:-1], bounds[1:], strict=True)]

    def maxpool(self, x: Tensor, k: int, prefix: str) -> Tensor:
        out = self.node(
            "MaxPool", [x.name], f"{prefix}/MaxPool",
            ceil_mode=0, dilations=[1, 1], kernel_shape=[k, k], pads=[k // 2] * 4, strides=[1, 1],
        )[0]  # fmt: skip
        return Tensor(out, maxpool2d(x.value, k))

    def upsample2x(self, x: Tensor, prefix: str) -> Tensor:
        """Nearest-neighbour 2x upsample as torch exports `nn.Upsample(scale_factor=2)`: a Resize node."""
        scales = self.initializer(f"{prefix.strip('/')}.scales", np.array([1, 1, 2, 2], dtype=np.float32))
        out = self.node(
            "Resize", [x.name, "", scales], f"{prefix}/Resize",
            coordinate_transformation_mode="asymmetric", cubic_coeff_a=-0.75, mode="nearest", nearest_mode="floor",
        )[0]  # fmt: skip
        return Tensor(out, x.value.repeat(2, axis=2).repeat(2, axis=3))

    # ---- model assembly -----------------------------------------------------------------------------
    def model(
        self,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
        graph_name: str,
        metadata: dict[str, str],
        opset: int,
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, list(inputs), list(outputs), self.initializers)
        return make_model(graph, metadata, opset)


def make_model(graph: onnx.GraphProto, metadata: dict[str, str], opset: int) -> onnx.ModelProto:
    """Wraps a graph into a model with the IR version matching `opset` and the given metadata_props."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="peregrine.modelgen",
        producer_version="0.1.0",
    )
    model.ir_version = _IR_FOR_OPSET.get(opset, onnx.IR_VERSION)
    helper.set_model_props(model, metadata)
    return model


# The IR version each opset shipped with: older ONNX Runtime builds refuse newer IR versions.
_IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


def _param_prefix(prefix: str) -> str:
    return prefix.strip("/").replace("/", ".")


def tensor_info(name: str, elem_type: int, shape: Sequence[int | str | None]) -> onnx.ValueInfoProto:
    """A graph input/output declaration; `str` dims are symbolic (dynamic), `None` is an unnamed dynamic dim."""
    return helper.make_tensor_value_info(name, elem_type, list(shape))


FLOAT = TensorProto.FLOAT
