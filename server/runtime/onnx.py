"""ONNX Runtime sessions: CPU EP everywhere, CUDA EP (with IO binding) where a GPU and onnxruntime-gpu are.

A provider that was asked for and cannot run is an error at load (device = "cuda"), or, with
device = "auto", a logged fallback to the CPU that is reported in the model's configuration. ORT's own
silent fallback is detected by comparing the session's providers with the ones requested.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..config.model import ModelConfig, OnnxRuntimeConfig
from ..core import datatypes
from ..core.errors import InvalidArgument, ModelLoadError
from ..core.types import TensorSpec

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_GPU_PROVIDERS = (CUDA, TENSORRT)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_dlls_preloaded = False


def _preload_cuda_dlls() -> None:
    """onnxruntime-gpu finds the CUDA/cuDNN libraries of the nvidia-* wheels only after preload_dlls()."""
    global _dlls_preloaded
    if not _dlls_preloaded and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:  # a missing library shows up again, clearly, when the session starts
            log.warning("onnxruntime.preload_dlls() failed: %s", e)
        _dlls_preloaded = True


def _dims(shape: list[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


@dataclass(frozen=True)
class ProviderChoice:
    providers: list[str]
    device: str  # "cpu" or "cuda"
    note: str = ""  # why the choice differs from the preference, if it does


def choose_providers(ort_cfg: OnnxRuntimeConfig, device: str) -> ProviderChoice:
    """The execution providers to ask for, in order. Raises ModelLoadError for a provider that this
    onnxruntime build lacks when the configuration requires it."""
    available = ort.get_available_providers()
    if device == "cpu":
        wanted = [p for p in (ort_cfg.execution_providers or [CPU]) if p not in _GPU_PROVIDERS] or [CPU]
        return ProviderChoice(wanted, "cpu")
    wanted = ort_cfg.execution_providers or [CUDA, CPU]
    missing = [p for p in wanted if p not in available]
    if device == "cuda":
        if missing:
            raise ModelLoadError(
                f"execution provider(s) {', '.join(missing)} are not available in this onnxruntime build "
                f"(available: {', '.join(available)}); install Peregrine with the [gpu] extra"
            )
        return ProviderChoice(wanted, "cuda")
    # auto: use the GPU providers that exist; say so when one was dropped.
    usable = [p for p in wanted if p in available]
    if not any(p in _GPU_PROVIDERS for p in usable):
        note = f"no GPU execution provider in this onnxruntime build (available: {', '.join(available)})"
        return ProviderChoice([CPU], "cpu", note)
    note = f"requested but unavailable: {', '.join(missing)}" if missing else ""
    return ProviderChoice(usable, "cuda", note)


_said_cpu_only = False


@dataclass
class OnnxSession:
    """One ONNX Runtime session on one device; ``run`` is thread-safe and releases the GIL."""

    model_path: Path
    config: ModelConfig
    device_id: int = 0
    session: ort.InferenceSession = field(init=False)
    providers: list[str] = field(init=False)
    device: str = field(init=False)
    provider_note: str = field(init=False, default="")

    def __post_init__(self) -> None:
        ort_cfg = self.config.onnxruntime
        choice = choose_providers(ort_cfg, self.config.instance_group.device)
        self.provider_note = choice.note
        if choice.device == "cuda":
            _preload_cuda_dlls()
        try:
            self.session = self._open(choice.providers)
        except Exception as e:
            if choice.device == "cuda" and self.config.instance_group.device == "auto":
                self.provider_note = f"{', '.join(choice.providers)} failed to start: {e}"
                log.warning("%s: falling back to the CPU: %s", self.model_path, self.provider_note)
                choice = ProviderChoice([CPU], "cpu", self.provider_note)
                self.session = self._open([CPU])
            else:
                raise ModelLoadError(f"{self.model_path.name}: ONNX Runtime could not load the model: {e}") from None
        active = self.session.get_providers()
        dropped = [p for p in choice.providers if p not in active]
        if dropped:
            # ORT falls back silently when a provider fails to initialise; Peregrine does not.
            msg = f"execution provider(s) {', '.join(dropped)} failed to initialise (active: {', '.join(active)})"
            if self.config.instance_group.device == "cuda":
                raise ModelLoadError(msg)
            self.provider_note = msg
            log.warning("%s: %s", self.model_path, msg)
        self.providers = active
        self.device = "cuda" if any(p in _GPU_PROVIDERS for p in active) else "cpu"
        if self.provider_note == choice.note and choice.device == "cpu" and choice.note:
            # device = "auto" on a machine without a GPU build: the expected case, said once per process.
            global _said_cpu_only
            if not _said_cpu_only:
                log.info("device 'auto' runs on the CPU: %s", self.provider_note)
                _said_cpu_only = True
        elif self.provider_note:
            log.warning("%s: %s", self.model_path, self.provider_note)

    def _open(self, providers: list[str]) -> ort.InferenceSession:
        ort_cfg = self.config.onnxruntime
        so = ort.SessionOptions()
        so.intra_op_num_threads = ort_cfg.intra_op_num_threads
        so.inter_op_num_threads = ort_cfg.inter_op_num_threads
        so.graph_optimization_level = _OPT_LEVELS[ort_cfg.graph_optimization_level]
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if ort_cfg.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        so.enable_cpu_mem_arena = ort_cfg.enable_cpu_mem_arena
        if not ort_cfg.allow_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3
        options = []
        for p in providers:
            opts = dict(ort_cfg.provider_options.get(p, {}))
            if p in _GPU_PROVIDERS:
                opts.setdefault("device_id", str(self.device_id))
                # A device_id in the config's provider_options wins; bind and stage on that device too.
                self.device_id = int(opts["device_id"])
            if p == CUDA:
                # ORT's default (EXHAUSTIVE) benchmarks cuDNN algorithms for every new input shape, which
                # costs seconds each time the dynamic batcher forms a batch size it has not run before.
                opts.setdefault("cudnn_conv_algo_search", "HEURISTIC")
            options.append(opts)
        return ort.InferenceSession(os.fspath(self.model_path), sess_options=so, providers=providers,
                                    provider_options=options)

    def tensor_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Inputs and outputs as the ONNX graph declares them (dynamic dimensions are -1)."""

        def spec(arg: Any) -> TensorSpec:
            dt = datatypes.BY_ONNX.get(arg.type)
            if dt is None:
                raise ModelLoadError(f"tensor '{arg.name}' has type {arg.type}, which Peregrine cannot serve")
            return TensorSpec(arg.name, dt.name, _dims(arg.shape))

        return [spec(a) for a in self.session.get_inputs()], [spec(a) for a in self.session.get_outputs()]

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, inputs: dict[str, Any], output_names: list[str], outputs_on_device: bool = False) -> list[Any]:
        """Run one batch. Inputs are NumPy arrays or (on a GPU) arrays exposing
        ``__cuda_array_interface__``; outputs are NumPy arrays, or CuPy arrays when
        ``outputs_on_device`` is set on a GPU session."""
        feed = {k: _to_onnx(v) for k, v in inputs.items()}
        on_device = any(hasattr(v, "__cuda_array_interface__") for v in feed.values())
        if on_device and self.device == "cpu":  # device inputs (CUDA shared memory) for a CPU session
            feed = {k: _to_host(v) for k, v in feed.items()}
            on_device = False
        # IO binding is for device buffers. Host arrays in and out take the same two copies through
        # run(), which measured several times faster than binding host buffers (docs/BENCHMARKS.md).
        if self.device != "cpu" and self.config.onnxruntime.io_binding and (on_device or outputs_on_device):
            return self._run_bound(feed, output_names, outputs_on_device)
        if on_device:  # io_binding = false on a GPU session: run() takes host arrays only
            feed = {k: _to_host(v) for k, v in feed.items()}
        outputs = self.session.run(output_names, feed)
        if outputs_on_device and self.device != "cpu":
            import cupy

            with cupy.cuda.Device(self.device_id):
                outputs = [cupy.asarray(o) for o in outputs]
        return outputs

    def _on_this_device(self, value: Any) -> Any:
        """A C-contiguous device array on this session's GPU: ``value`` itself, or a copy of it when it
        lives on another GPU (a CUDA shared-memory region of another device) or is strided."""
        cai = value.__cuda_array_interface__
        device = getattr(getattr(value, "device", None), "id", self.device_id)
        contiguous = cai.get("strides") is None or getattr(getattr(value, "flags", None), "c_contiguous", False)
        if device == self.device_id and contiguous:
            return value
        import cupy

        src = value if isinstance(value, cupy.ndarray) else cupy.asarray(value)
        if not src.flags.c_contiguous:
            with cupy.cuda.Device(src.device.id):
                src = cupy.ascontiguousarray(src)
                cupy.cuda.get_current_stream().synchronize()
        if src.device.id == self.device_id:
            return src
        with cupy.cuda.Device(self.device_id):
            dst = cupy.empty(src.shape, dtype=src.dtype)
            dst.data.copy_from_device(src.data, src.nbytes)  # a peer copy between the two GPUs
            cupy.cuda.get_current_stream().synchronize()
        return dst

    def _run_bound(self, feed: dict[str, Any], output_names: list[str], on_device: bool) -> list[Any]:
        binding = self.session.io_binding()
        kept = []  # copies made for binding live until the run is over
        for name, value in feed.items():
            cai = getattr(value, "__cuda_array_interface__", None)
            if cai is None:
                binding.bind_cpu_input(name, value)
            else:
                value = self._on_this_device(value)
                kept.append(value)
                cai = value.__cuda_array_interface__
                binding.bind_input(name, "cuda", self.device_id, np.dtype(cai["typestr"]), list(cai["shape"]),
                                   cai["data"][0])
        for name in output_names:
            binding.bind_output(name, "cuda" if on_device else "cpu", self.device_id if on_device else 0)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        if not on_device:
            return binding.copy_outputs_to_cpu()
        del kept
        return [_ortvalue_to_cupy(v, self.device_id) for v in binding.get_outputs()]


def _to_onnx(value: Any) -> Any:
    """ONNX string tensors take Python str (UTF-8 text); OIP BYTES arrive as bytes."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        out = np.empty(value.shape, dtype=object)
        flat, dst = value.reshape(-1), out.reshape(-1)
        for i, x in enumerate(flat):
            try:
                dst[i] = x.decode("utf-8") if isinstance(x, bytes) else x
            except UnicodeDecodeError:
                raise InvalidArgument(
                    f"BYTES element {i} is not UTF-8 text, which ONNX string tensors require"
                ) from None
        return out
    return value


def _to_host(value: Any) -> Any:
    if hasattr(value, "__cuda_array_interface__"):
        import cupy  # only where device arrays exist

        return cupy.asnumpy(value)
    return value


def _ortvalue_to_cupy(value: Any, device_id: int) -> Any:
    import cupy  # only on GPU sessions

    dtype = np.dtype(datatypes.BY_ONNX[value.data_type()].numpy)
    shape = tuple(value.shape())
    nbytes = int(np.prod(shape)) * dtype.itemsize
    # device_id given: CuPy would otherwise look the pointer up, which fails for an empty output's null one
    mem = cupy.cuda.UnownedMemory(value.data_ptr(), nbytes, owner=value, device_id=device_id)
    return cupy.ndarray(shape, dtype=dtype, memptr=cupy.cuda.MemoryPointer(mem, 0))
