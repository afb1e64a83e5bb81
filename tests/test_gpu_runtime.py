"""ONNX Runtime on a GPU: CUDA EP selection, IO binding with device buffers, served results equal the CPU's.

Skipped where onnxruntime-gpu or a GPU is absent (CI); run on a GPU machine with `pytest -m gpu`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from peregrine.server.config import parse_model_config
from peregrine.server.runtime.onnx import CUDA, OnnxSession
from support import onnx_models

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.gpu


def _gpu_available() -> bool:
    if CUDA not in ort.get_available_providers():
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


requires_gpu = pytest.mark.skipif(not _gpu_available(), reason="needs onnxruntime-gpu, CuPy and a CUDA GPU")


@pytest.fixture
def conv_model(tmp_path: Path) -> Path:
    """A small conv net with a dynamic batch, enough to exercise cuDNN."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["c"], ["output0"])],
        "conv",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 8, 64, 64])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return onnx_models.write(tmp_path, "conv", model) / "1" / "model.onnx"


@requires_gpu
def test_cuda_session_matches_cpu(conv_model: Path) -> None:
    gpu = OnnxSession(conv_model, parse_model_config("[instance_group]\ndevice = 'cuda'"))
    cpu = OnnxSession(conv_model, parse_model_config("[instance_group]\ndevice = 'cpu'"))
    assert gpu.device == "cuda" and gpu.providers[0] == CUDA
    x = np.random.default_rng(1).random((4, 3, 64, 64), dtype=np.float32)
    got = gpu.run({"images": x}, ["output0"])[0]
    want = cpu.run({"images": x}, ["output0"])[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@requires_gpu
def test_io_binding_reads_and_writes_device_memory(conv_model: Path) -> None:
    import cupy

    gpu = OnnxSession(conv_model, parse_model_config("[instance_group]\ndevice = 'cuda'"))
    x = np.random.default_rng(2).random((2, 3, 64, 64), dtype=np.float32)
    dev = cupy.asarray(x)
    out = gpu.run({"images": dev}, ["output0"], outputs_on_device=True)[0]
    assert isinstance(out, cupy.ndarray) and out.shape == (2, 8, 64, 64)
    host = gpu.run({"images": x}, ["output0"])[0]
    np.testing.assert_allclose(cupy.asnumpy(out), host, rtol=1e-5, atol=1e-6)


@requires_gpu
def test_served_on_gpu_equals_cpu(conv_model: Path, start_server) -> None:
    import tritonclient.grpc as tc

    repo = conv_model.parent.parent.parent
    (repo / "conv" / "config.toml").write_text("[instance_group]\ndevice = 'cuda'\n[dynamic_batching]\n")
    server = start_server(repo)
    c = tc.InferenceServerClient(f"127.0.0.1:{server.port}")
    cfg = c.get_model_config("conv").config
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert cfg.parameters["execution_providers"].string_value.startswith(CUDA)
    x = np.random.default_rng(3).random((3, 3, 64, 64), dtype=np.float32)
    inp = tc.InferInput("images", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = c.infer("conv", [inp]).as_numpy("output0")
    cpu = OnnxSession(conv_model, parse_model_config("[instance_group]\ndevice = 'cpu'"))
    np.testing.assert_allclose(got, cpu.run({"images": x}, ["output0"])[0], rtol=1e-3, atol=1e-4)


def test_cuda_device_without_gpu_build_is_a_clear_load_error(conv_model: Path) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    from peregrine.server.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="CUDAExecutionProvider"):
        OnnxSession(conv_model, parse_model_config("[instance_group]\ndevice = 'cuda'"))


@requires_gpu
def test_device_inputs_without_io_binding_and_strided_inputs(conv_model: Path) -> None:
    """io_binding = false on a GPU session still takes device arrays (copied to the host for run()) and
    gives device outputs when asked; a strided device array is bound as a contiguous copy."""
    import cupy

    x = np.random.default_rng(4).random((2, 3, 64, 64), dtype=np.float32)
    want = OnnxSession(conv_model, parse_model_config("[instance_group]\ndevice = 'cpu'")).run(
        {"images": x}, ["output0"])[0]
    unbound = OnnxSession(conv_model, parse_model_config(
        "[instance_group]\ndevice = 'cuda'\n[onnxruntime]\nio_binding = false"))
    out = unbound.run({"images": cupy.asarray(x)}, ["output0"], outputs_on_device=True)[0]
    assert isinstance(out, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(out), want, rtol=1e-3, atol=1e-4)
    bound = OnnxSession(conv_model, parse_model_config("[instance_group]\ndevice = 'cuda'"))
    wide = cupy.zeros((2, 3, 64, 128), cupy.float32)
    wide[..., ::2] = cupy.asarray(x)
    strided = wide[..., ::2]
    assert not strided.flags.c_contiguous
    got = bound.run({"images": strided}, ["output0"])[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
